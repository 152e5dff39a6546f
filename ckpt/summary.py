"""``ckpt.inspect``: what a checkpoint holds, from its directory and pickle alone.

The :class:`Summary` is what ``ckpt inspect`` renders and what ``--json`` prints (schema
``ckpt.inspect/1``, documented in ``docs/json-schema.md``). Building it reads no tensor bytes.

>>> s = ckpt.inspect("model.pt")                                  # doctest: +SKIP
>>> s.totals["tensors"], s.totals["numel"], s.kind                # doctest: +SKIP
(4, 18, 'state_dict')
"""

from __future__ import annotations

import fnmatch
import math
import os
from itertools import repeat
from operator import attrgetter
from json.encoder import encode_basestring_ascii as _quote
from collections import Counter, OrderedDict
from collections.abc import Iterable, Iterator
from typing import Any

from .checkpoint import PathLike, open
from .dtypes import DType
from .limits import DEFAULT_LIMITS, Limits
from .policy import Finding
from .recognize import recognize_optimizer, recognize_state_dict, recognize_training
from .tensors import StorageRef, TensorRef, is_contiguous
from .torch_zip import gc_paused
from .values import Device, EnumMember, GlobalRef, InertObject, ListRecord, Record, Size, TorchConstant
from .jsonable import brief, json_scalar
from .walk import MAPPINGS, is_scalar_collection, join_path, walk

SCHEMA = "ckpt.inspect/1"
_ROW_KEY_BUDGET = 2_000_000
_UNIT_STRIDE = (1,)  # key parts over all listed rows (~ tens of MB at most)


class TensorInfo:
    """One tensor of a summary, at one dotted path (``same_as`` names the first path of a tensor
    object reachable from several places)."""

    __slots__ = ("path", "keys", "ref", "numel", "same_as")

    def __init__(self, path: str, keys: tuple[Any, ...], ref: TensorRef, same_as: str | None) -> None:
        self.path = path
        self.keys = keys
        self.ref = ref
        shape = ref.shape
        self.numel = shape[0] if len(shape) == 1 else ref.numel
        self.same_as = same_as

    dtype = property(lambda self: self.ref.dtype.name)
    shape = property(lambda self: self.ref.shape)
    stride = property(lambda self: self.ref.stride)
    offset = property(lambda self: self.ref.offset)
    device = property(lambda self: self.ref.device)
    requires_grad = property(lambda self: self.ref.requires_grad)
    parameter = property(lambda self: self.ref.is_parameter)
    subclass = property(lambda self: self.ref.subclass)
    nbytes = property(lambda self: self.numel * self.ref.dtype.itemsize)
    contiguous = property(lambda self: self.ref.stride == _UNIT_STRIDE or is_contiguous(self.ref.shape, self.ref.stride))

    @property
    def storage(self) -> str | None:
        return self.ref.storage.key if self.ref.storage is not None else None

    def as_json(self) -> dict[str, Any]:
        ref = self.ref
        storage = ref.storage
        extra = ref._extra
        shape = ref.shape
        stride = ref.stride
        out = {
            "path": self.path,
            "keys": [k if type(k) is str or type(k) is int else repr(k) for k in self.keys],
            "dtype": ref.dtype.name,
            "shape": list(shape),
            "stride": list(stride),
            "offset": ref.offset,
            "storage": storage.key if storage is not None else None,
            "device": storage.location if extra is None and storage is not None else ref.device,
            "numel": self.numel,
            "nbytes": self.numel * ref.dtype.itemsize,
            "requires_grad": ref.requires_grad,
            "parameter": extra is not None and ref.is_parameter,
            "contiguous": self.contiguous,
        }
        if extra is not None:
            if ref.subclass:
                out["subclass"] = ref.subclass
        if self.same_as:
            out["same_as"] = self.same_as
        return out


_BACKGROUND_SCAN_BYTES = 1 << 20
"""Files at least this big are scanned in a forked process while :func:`inspect` reads them."""

_HEAD_KEYS = ("schema", "path", "file_size", "format", "kind", "filter", "totals", "structure")
"""The keys :meth:`Summary.as_json` gives before ``tensors``."""

def _row_parts(dtype: DType, shape: tuple[int, ...], stride: tuple[int, ...]) -> tuple[str, str, str]:
    """The JSON text around a row's offset and requires_grad for tensors of this dtype, shape
    and stride: dtype to ``"offset":``, then ``"numel"`` and ``"nbytes"``, then the rest."""
    numel = shape[0] if len(shape) == 1 else math.prod(shape)
    contiguous = stride == _UNIT_STRIDE or is_contiguous(shape, stride)
    return (
        f'"dtype":"{dtype.name}","shape":[{",".join(map(str, shape))}],"stride":[{",".join(map(str, stride))}],"offset":',
        f',"numel":{numel},"nbytes":{numel * dtype.itemsize},"requires_grad":',
        ',"parameter":false,"contiguous":' + ("true}" if contiguous else "false}"),
    )


def _rows_text(tensors: list[TensorInfo], dumps: Any, parts: dict[tuple[Any, ...], tuple[str, str, str]],
               quoted: dict[str, str]) -> str:
    """``",".join`` of every row's compact JSON (``t.as_json()`` through ``dumps``), made
    directly for plain tensors (string keys, a storage, no extra attributes, not a second path
    to a tensor already listed): the parts shared by tensors of one dtype, shape and stride are
    made once and kept in ``parts``, quoted device names in ``quoted``."""
    rows = []
    append = rows.append
    for t in tensors:
        ref = t.ref
        storage = ref.storage
        keys = t.keys
        if ref._extra is not None or storage is None or t.same_as or type(storage.key) is not str \
                or type(storage.location) is not str:
            append(dumps(t.as_json()))
            continue
        if len(keys) == 1 and type(keys[0]) is str:
            qkeys = qpath = _quote(t.path)
        else:
            if not all(type(k) is str for k in keys):
                append(dumps(t.as_json()))
                continue
            qpath = _quote(t.path)
            qkeys = ",".join(map(_quote, keys))
        sig = (ref.dtype.name, ref.shape, ref.stride)  # a name hashes faster than its DType row
        part = parts.get(sig)
        if part is None:
            part = parts[sig] = _row_parts(ref.dtype, ref.shape, ref.stride)
        location = quoted.get(storage.location)
        if location is None:
            location = quoted[storage.location] = _quote(storage.location)
        append(f'{{"path":{qpath},"keys":[{qkeys}],{part[0]}{ref.offset},"storage":{_quote(storage.key)},'
               f'"device":{location}{part[1]}{"true" if ref.requires_grad else "false"}{part[2]}')
    return ",".join(rows)


class ValueInfo:
    """One non-tensor value at a dotted path: its type name, a JSON-safe ``value`` (scalars,
    short strings and lists; ``None`` otherwise) and a short ``repr``."""

    __slots__ = ("path", "keys", "type", "value", "repr")

    def __init__(self, path: str, keys: tuple[Any, ...], type: str, value: Any, repr: str) -> None:
        self.path = path
        self.keys = keys
        self.type = type
        self.value = value
        self.repr = repr

    def as_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "keys": [_json_key(k) for k in self.keys],
            "type": self.type,
            "value": self.value,
            "repr": self.repr,
        }


class Summary:
    """Everything ``ckpt inspect`` shows about one checkpoint (see :meth:`as_json` for the fields)."""

    def __init__(
        self,
        *,
        path: str,
        file_size: int,
        facts: dict[str, Any],
        kind: str,
        structure: list[dict[str, Any]],
        tensors: list[TensorInfo],
        values: list[ValueInfo],
        storages: dict[str, dict[str, Any]],
        totals: dict[str, Any],
        findings: list[Finding],
        refs: list[dict[str, str]] | None = None,
        elided: list[str] | None = None,
        filter: str | None = None,
        unlisted: dict[str, int] | None = None,
    ) -> None:
        self.path = path
        self.file_size = file_size
        self.facts = facts
        self.kind = kind
        self.structure = structure
        self.tensors = tensors
        self.values = values
        self.storages = storages
        self.totals = totals
        self.findings = findings
        self.refs = refs or []
        self.elided = elided or []
        self.filter = filter
        self.unlisted = unlisted or {"tensors": 0, "values": 0}
        self.anomalies: list[Finding] = []
        """What :func:`ckpt.scan` found about the file besides globals (container and pickle
        anomalies: bytes outside any record, CRC mismatches, stacked or nested pickles, ...)."""

    def as_json(self) -> dict[str, Any]:
        with gc_paused():
            return self._as_json()

    def json_text(self) -> str:
        """``json.dumps(self.as_json(), separators=(",", ":"), allow_nan=False)``, the same text,
        made about three times faster: the tensor rows of a plain tensor (the common case in big
        state dicts) are formatted directly instead of going through a dict each."""
        return "".join(self._json_pieces())

    def write_json(self, stream: Any) -> None:
        """Write :meth:`json_text` to the text stream ``stream`` piece by piece, never holding
        all of it (the rows of 100,000 tensors are ~25 MB of text).

        >>> ckpt.inspect("model.pt").write_json(sys.stdout)          # doctest: +SKIP
        """
        for piece in self._json_pieces():
            stream.write(piece)

    def _json_pieces(self, rows_per_piece: int = 8192) -> Iterator[str]:
        import json

        with gc_paused():
            whole = self._as_json(rows=False)
            head = {k: whole[k] for k in _HEAD_KEYS}
            tail = {k: whole[k] for k in whole if k not in head and k != "tensors"}
            dumps = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode
            yield f"{dumps(head)[:-1]},\"tensors\":["
            tensors = self.tensors
            parts: dict[tuple[Any, ...], tuple[str, str, str]] = {}
            quoted: dict[str, str] = {}
            for i in range(0, len(tensors), rows_per_piece):
                yield ("," if i else "") + _rows_text(tensors[i : i + rows_per_piece], dumps, parts, quoted)
            yield f"],{dumps(tail)[1:]}"

    def _as_json(self, rows: bool = True) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "path": self.path,
            "file_size": self.file_size,
            "format": self.facts,
            "kind": self.kind,
            "filter": self.filter,
            "totals": self.totals,
            "structure": self.structure,
            "tensors": [t.as_json() for t in self.tensors] if rows else [],
            "values": [v.as_json() for v in self.values],
            "storages": list(self.storages.values()),
            "shared_objects": self.refs,
            "elided": self.elided,
            "unlisted": self.unlisted,
            "findings": [f.as_json() for f in self.findings],
            "anomalies": [_anomaly_json(f) for f in self.anomalies],
        }


def inspect(
    path: PathLike,
    *,
    allow: Iterable[str] = (),
    filter: str | None = None,
    limits: Limits = DEFAULT_LIMITS,
    scan: bool = True,
) -> Summary:
    """Summarise a checkpoint without executing anything or reading tensor bytes.

    Globals outside the allowlist do not stop the summary: they become inert stand-ins and are
    listed in ``findings`` (unless named in ``allow``). ``filter`` is a glob on dotted paths
    (``model.layers.*.weight``) that limits the tensors and values listed and totalled.

    ``scan`` (the default) also runs :func:`ckpt.scan`'s static analysis of the file, so inspect
    shows the same findings ``ckpt scan`` does: globals in every pickle of the file (not only
    ``data.pkl``) with the same verdicts, and the container and pickle ``anomalies``. A file of
    1 MB or more is analysed in a forked process meanwhile (see
    :func:`ckpt.scanner.scan_file_in_background`); the result is the same.
    """
    with gc_paused():  # 100,000 tensors make ~a million acyclic objects: collections would rescan them all
        return _inspect(path, allow=allow, filter=filter, limits=limits, scan=scan)


def _inspect(path: PathLike, *, allow: Iterable[str], filter: str | None, limits: Limits, scan: bool) -> Summary:
    background = None
    if scan and os.path.isfile(path) and os.path.getsize(path) >= _BACKGROUND_SCAN_BYTES:
        from .scanner import scan_file_in_background

        # the scan reads the same file on another CPU while the pickle is interpreted here
        background = scan_file_in_background(path, allow=allow, limits=limits, storage_headers=False)
    try:
        with open(path, policy="inspect", allow=allow, limits=limits) as ck:
            summary = summarize(ck.root, path=os.fspath(path), facts=ck.facts, findings=ck.findings,
                                storages=ck.storages, filter=filter, limits=limits,
                                file_size=ck.reader.file_size)
            folder = getattr(ck.reader, "folder", None)
    except BaseException:
        if background is not None:
            background.cancel()
        raise
    if background is not None:
        if summary.facts.get("format") not in ("sharded", "dcp"):
            merge_scan(summary, background.result())
            return summary
        background.cancel()  # an index or a .metadata: the scan below looks at the files it names
    if scan:
        from .scanner import scan_file

        if summary.facts.get("format") == "sharded" and folder:
            targets = [(os.path.join(folder, *row["file"].split("/")), row["file"]) for row in summary.facts["shards"]]
        elif summary.facts.get("format") == "dcp":
            # .metadata, then each .distcp file blob by blob as .metadata lays it out
            targets = [] if not folder else sorted(
                (os.path.join(folder, name), name) for name in os.listdir(folder)
                if name == ".metadata" or name.endswith(".distcp")
            )
        else:
            targets = [(os.fspath(path), None)]
        for target, label in targets:
            merge_scan(summary, scan_file(target, allow=allow, limits=limits, storage_headers=False), label)
    return summary


def merge_scan(summary: Summary, report: Any, label: str | None = None) -> None:
    """Add what :func:`ckpt.scan` found to ``summary``: the globals the interpreter did not already
    report (the worse verdict wins where both name one), and its other findings and errors as
    ``anomalies``. ``label`` (a shard's file name) prefixes the records of a sharded checkpoint."""
    if label is not None:
        report.findings = [f._replace(record=f"{label} > {f.record}" if f.record else label) for f in report.findings]
        for e in report.errors:
            e["record"] = f"{label} > {e['record']}" if e.get("record") else label
    # One finding per global: readers name their pickles their own way (a legacy file's streams,
    # a TorchScript record), so a global the interpreter already reported is not listed again;
    # the worse verdict wins.
    where = {f.name: i for i, f in enumerate(summary.findings)}
    order = ("unknown", "dangerous")
    for f in report.findings:
        if f.kind != "global":
            if f.name != "torchscript.code":  # inspect's header lists an archive's code files itself
                summary.anomalies.append(f)
            continue
        i = where.get(f.name)
        if i is None:
            where[f.name] = len(summary.findings)
            summary.findings.append(f)
        elif order.index(f.verdict) > order.index(summary.findings[i].verdict):
            summary.findings[i] = f
    for e in report.errors:
        summary.anomalies.append(Finding("unknown", "scan.error", e.get("record"), e.get("offset"),
                                         f"the scan could not analyse the file whole: {e['message']}", "scan"))


def summarize(
    root: Any,
    *,
    path: str,
    facts: dict[str, Any],
    findings: list[Finding],
    storages: dict[str, StorageRef],
    filter: str | None = None,
    limits: Limits = DEFAULT_LIMITS,
    file_size: int = 0,
) -> Summary:
    """Build a :class:`Summary` from an opened checkpoint's tree (any format reader's output)."""
    match = _matcher(filter)
    tensors: list[TensorInfo] = []
    values: list[ValueInfo] = []
    refs: list[dict[str, str]] = []
    elided: list[str] = []
    mappings: list[tuple[tuple[Any, ...], Any]] = [((), root)] if type(root) in MAPPINGS else []
    first_path: dict[int, str] = {}
    runs: dict[tuple[Any, ...], list[int]] = {}  # container -> [tensors listed in runs, their numel]
    views: Counter[str] = Counter()  # tensors (first paths only) viewing each storage
    unlisted_refs: list[TensorRef] = []
    unlisted = {"tensors": 0, "values": 0}
    # Rows keep their keys and dotted path, so a deep and wide pickle could make them cost
    # leaves x depth: past a budget of key parts, rows are counted (tensors still totalled), not listed.
    budget = _ROW_KEY_BUDGET

    def list_tensor(keys: tuple[Any, ...], ref: TensorRef) -> None:
        nonlocal budget
        if budget < 0:
            if match is None:
                unlisted["tensors"] += 1
                unlisted_refs.append(ref)
            return
        path_s = join_path(keys)
        if match is not None and not match(path_s):
            return
        budget -= len(keys)
        same = first_path.get(id(ref))
        if same is None:
            first_path[id(ref)] = path_s
            if ref.storage is not None:
                views[ref.storage.key] += 1
        tensors.append(TensorInfo(path_s, keys, ref, same))

    for event in walk(root, max_depth=limits.max_walk_depth, atomic=is_scalar_collection, batch=True):
        kind = event.kind
        if kind == "tensors":
            pairs = event.value
            prefix = event.keys
            if match is None and budget >= len(pairs) * (len(prefix) + 1):
                added = _add_run(tensors, first_path, views, prefix, pairs)
                if added is not None:
                    budget -= len(pairs) * (len(prefix) + 1)
                    run = runs.setdefault(prefix, [0, 0])
                    run[0] += len(pairs)
                    run[1] += added
                    continue
            for key, ref in pairs:
                list_tensor((*prefix, key), ref)
        elif kind == "tensor":
            list_tensor(event.keys, event.value)
        elif kind == "value":
            if budget < 0:
                unlisted["values"] += match is None
                continue
            path_s = event.path
            if match is not None and not match(path_s):
                continue
            budget -= len(event.keys)
            values.append(_value_info(path_s, event.keys, event.value))
        elif kind == "container":
            t = type(event.value)
            if t in MAPPINGS:
                mappings.append((event.keys, event.value))
            if (t is InertObject or t is Record or t is ListRecord) and (match is None or match(event.path)):
                values.append(_value_info(event.path, event.keys, event.value))
        elif kind == "ref":
            refs.append({"path": event.path, "same_as": event.target or ""})
        elif kind == "elided":
            elided.append(event.path)

    structure = _structure(mappings, runs)
    for ref in unlisted_refs:  # not listed, still counted
        if id(ref) not in first_path and ref.storage is not None:
            first_path[id(ref)] = ""
            views[ref.storage.key] += 1
    totals = _totals(tensors, storages, views, unlisted_refs)
    shared = _shared_storages(tensors, storages, {k for k, n in views.items() if n > 1} if views and max(
        views.values()) > 1 else set())
    kind = _root_kind(root, structure)
    return Summary(
        path=path, file_size=file_size, facts=facts, kind=kind, structure=structure,
        tensors=tensors, values=values, storages=shared, totals=totals, findings=list(findings),
        refs=refs, elided=elided, filter=filter, unlisted=unlisted,
    )


def _add_run(
    tensors: list[TensorInfo], first_path: dict[int, str], views: Counter[str], prefix: tuple[Any, ...],
    pairs: list[tuple[Any, TensorRef]],
) -> int | None:
    """List a run of tensors of one container at once (what the one-by-one loop does for each),
    when each is a distinct object not seen before under string keys, and return their number of
    elements; None, changing nothing, otherwise."""
    keys, refs = zip(*pairs)
    ids = list(map(id, refs))
    if set(map(type, keys)) != {str} or len(set(ids)) != len(ids) or not first_path.keys().isdisjoint(ids):
        return None
    if prefix:
        base = join_path(prefix) + "."
        paths = [base + k for k in keys]
        key_tuples = [(*prefix, k) for k in keys]
    else:
        paths = keys
        key_tuples = list(zip(keys))  # (key,) each
    first_path.update(zip(ids, paths))
    try:
        views.update(list(map(_STORAGE_KEY, refs)))
    except AttributeError:  # a meta tensor: no storage
        views.update([r.storage.key for r in refs if r.storage is not None])
    start = len(tensors)
    tensors.extend(map(TensorInfo, paths, key_tuples, refs, repeat(None)))
    return sum(map(_NUMEL, tensors[start:]))


def _matcher(pattern: str | None) -> Any:
    if not pattern:
        return None
    regex = fnmatch.translate(pattern)
    import re

    compiled = re.compile(regex)
    return lambda p: compiled.match(p) is not None


def describe_type(value: Any) -> str:
    t = type(value)
    if t is InertObject:
        return value.global_name
    if t is GlobalRef:
        return "global"
    if t is DType:
        return "dtype"
    if t is Device:
        return "device"
    if t is Size:
        return "torch.Size"
    if t is TorchConstant:
        return value.kind
    if t is StorageRef:
        return "storage"
    if t is OrderedDict:
        return "OrderedDict"
    if t is Record or t is ListRecord or t is EnumMember:
        return value.type
    module = t.__module__
    if module == "numpy.dtypes":
        return "numpy.dtype"
    if module == "numpy":
        return f"numpy.{t.__name__}"
    if t is type:
        return "type"
    if module in ("datetime", "pathlib", "collections"):
        return f"{module}.{t.__name__}"
    return t.__name__


def _value_info(path: str, keys: tuple[Any, ...], value: Any) -> ValueInfo:
    t = type(value)
    json_value: Any = None
    if value is None or t in (bool, int):
        json_value = value
    elif t is float:
        json_value = value if value == value and abs(value) != float("inf") else None
    elif t is str and len(value) <= 1000:
        json_value = value
    elif t is DType:
        json_value = value.torch_name
    elif t is Device:
        json_value = str(value)
    elif t is Size:
        json_value = list(value)
    elif t is TorchConstant:
        json_value = value.name
    elif t is GlobalRef:
        json_value = value.qualname
    elif (t is list or t is tuple or t is ListRecord) and len(value) <= 1000:
        json_value = [json_scalar(v, 3) for v in value]
    else:
        json_value = _profiled_json(value)
    return ValueInfo(path=path, keys=keys, type=describe_type(value), value=json_value, repr=brief(value))


def _profiled_json(value: Any) -> Any:
    """The faithful JSON form of a value a profile rebuilt (numpy scalar, dtype, datetime, path,
    enum member, type), else None."""
    t = type(value)
    module = t.__module__
    if t is EnumMember:
        return value.value if type(value.value) in (str, int, bool) else None
    if t is type:
        return f"{value.__module__}.{value.__qualname__}"
    if module == "numpy.dtypes":
        return value.str
    if module == "numpy":
        if t.__name__ != "ndarray" and getattr(value, "shape", None) == () and hasattr(value, "item"):  # a scalar
            item = value.item()
            if type(item) in (bool, int, str) or (type(item) is float and item == item and abs(item) != float("inf")):
                return item
            return None
        return None
    if module == "datetime":
        return value.isoformat() if hasattr(value, "isoformat") else str(value)
    if module == "pathlib":
        return str(value)
    return None


def _structure(
    mappings: list[tuple[tuple[Any, ...], Any]], runs: dict[tuple[Any, ...], list[int]]
) -> list[dict[str, Any]]:
    """What each mapping is (model state dict, optimizer, training checkpoint), children
    recognised before parents. ``runs`` gives, for a container, the tensors listed from it in
    runs and their elements: a dict whose every item came in runs is a state dict."""
    found: dict[tuple[Any, ...], dict[str, Any]] = {}
    for keys, obj in reversed(mappings):  # children before parents
        run = runs.get(keys)
        if run is not None and run[0] == len(obj) and type(obj) in (dict, OrderedDict):
            info = recognize_state_dict(obj, numel=run[1])  # string keys, plain tensors: checked by the runs
        else:
            info = recognize_optimizer(obj) or recognize_state_dict(obj)
        if info is None:
            child_info = {k: found[(*keys, k)] for k in obj if (*keys, k) in found}
            info = recognize_training(obj, child_info)
        if info is not None:
            found[keys] = info
    rows = []
    optimizers: list[tuple[Any, ...]] = []
    for keys, _ in mappings:
        info = found.get(keys)
        if info is None or any(keys[: len(o)] == o for o in optimizers):
            continue  # an optimizer's per-parameter state is part of the optimizer, not a model
        if info["kind"] == "optimizer":
            optimizers.append(keys)
        rows.append({"path": join_path(keys), **info})
    return rows


def _totals(
    tensors: list[TensorInfo], storages: dict[str, StorageRef], views: dict[str, int],
    unlisted: list[TensorRef] = (),  # type: ignore[assignment]
) -> dict[str, Any]:
    by_dtype: dict[str, dict[str, int]] = {}
    by_device: dict[str, int] = {}
    groups = _groups(tensors)  # (dtype, device) -> [tensors, numel]
    seen = {id(t.ref) for t in tensors} if unlisted else set()
    for ref in unlisted:
        if id(ref) not in seen:
            seen.add(id(ref))
            key = (ref.dtype, ref.device)
            group = groups.setdefault(key, [0, 0])
            group[0] += 1
            group[1] += ref.numel
    numel = nbytes = count = 0
    for (dt, device), (n_tensors, n) in groups.items():
        b = n * dt.itemsize
        count += n_tensors
        numel += n
        nbytes += b
        row = by_dtype.get(dt.name)
        if row is None:
            row = by_dtype[dt.name] = {"tensors": 0, "numel": 0, "nbytes": 0}
        row["tensors"] += n_tensors
        row["numel"] += n
        row["nbytes"] += b
        by_device[device] = by_device.get(device, 0) + n_tensors
    return {
        "tensors": count,
        "numel": numel,
        "nbytes": nbytes,
        "storages": len(views),
        "storage_bytes": _storage_bytes(storages, views),
        "by_dtype": by_dtype,
        "by_device": by_device,
    }


def _storage_bytes(storages: dict[str, StorageRef], keys: Iterable[str]) -> int:
    """The bytes of the storages named by ``keys`` that the file has."""
    try:
        return sum(map(_NBYTES, map(storages.__getitem__, keys)))
    except KeyError:
        return sum(storages[k].nbytes for k in keys if k in storages)


def _groups(tensors: list[TensorInfo]) -> dict[tuple[DType, str], list[int]]:
    """``(dtype, device) -> [tensors, numel]`` over the tensors listed first at their path (not
    ``same_as``), in order of first appearance."""
    firsts = [t for t in tensors if not t.same_as]
    refs = list(map(_REF, firsts))
    if refs and list(map(_EXTRA, refs)).count(None) == len(refs) and None not in list(map(_STORAGE, refs)):
        # plain tensors (the device is the storage's), often all of one dtype on one device
        dtypes, devices = set(map(_DTYPE_NAME, refs)), set(map(_LOCATION, refs))
        if len(dtypes) == 1 and len(devices) == 1:
            return {(refs[0].dtype, devices.pop()): [len(refs), sum(map(_NUMEL, firsts))]}
    groups: dict[tuple[DType, str], list[int]] = {}
    for t in firsts:
        ref = t.ref
        key = (ref.dtype, ref.storage.location if ref._extra is None and ref.storage is not None else ref.device)
        group = groups.get(key)
        if group is None:
            groups[key] = [1, t.numel]
        else:
            group[0] += 1
            group[1] += t.numel
    return groups


_REF, _EXTRA, _STORAGE, _STORAGE_KEY, _DTYPE_NAME, _LOCATION, _NUMEL, _NBYTES = map(
    attrgetter, ("ref", "_extra", "storage", "storage.key", "dtype.name", "storage.location", "numel", "nbytes")
)


def _shared_storages(
    tensors: list[TensorInfo], storages: dict[str, StorageRef], shared: set[str]
) -> dict[str, dict[str, Any]]:
    """Storages viewed by more than one tensor, with the paths of those tensors."""
    rows: dict[str, dict[str, Any]] = {}
    if not shared:
        return rows
    for t in tensors:
        key = t.storage
        if key not in shared or t.same_as:
            continue
        row = rows.get(key)
        if row is None:
            s = storages.get(key)
            row = rows[key] = {
                "key": key,
                "dtype": s.dtype.name if s else None,
                "nbytes": s.nbytes if s else None,
                "device": s.location if s else None,
                "record": s.record if s else None,
                "tensors": [],
            }
        row["tensors"].append(t.path)
    return rows


def _root_kind(root: Any, structure: list[dict[str, Any]]) -> str:
    if type(root) is TensorRef:
        return "tensor"
    for row in structure:
        if row["path"] == "":
            return str(row["kind"])
    return "other"


def _anomaly_json(f: Finding) -> dict[str, Any]:
    return {"kind": f.kind, "rule": f.name, "verdict": f.verdict, "record": f.record, "offset": f.offset,
            "message": f.message}


def _json_key(key: Any) -> Any:
    return key if type(key) in (str, int) else repr(key)
