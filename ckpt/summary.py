"""``ckpt.inspect``: what a checkpoint holds, from its directory and pickle alone.

The :class:`Summary` is what ``ckpt inspect`` renders and what ``--json`` prints (schema
``ckpt.inspect/1``, documented in ``docs/json-schema.md``). Building it reads no tensor bytes.

>>> s = ckpt.inspect("model.pt")                                  # doctest: +SKIP
>>> s.totals["tensors"], s.totals["numel"], s.kind                # doctest: +SKIP
(4, 18, 'state_dict')
"""

from __future__ import annotations

import fnmatch
import os
from collections import Counter, OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .checkpoint import PathLike, open
from .dtypes import DType
from .limits import DEFAULT_LIMITS, Limits
from .policy import Finding
from .recognize import recognize_optimizer, recognize_state_dict, recognize_training
from .tensors import StorageRef, TensorRef
from .values import Device, GlobalRef, InertObject, Size, TorchConstant
from .walk import MAPPINGS, SCALARS, is_scalar_collection, join_path, walk

SCHEMA = "ckpt.inspect/1"


@dataclass(slots=True)
class TensorInfo:
    path: str
    keys: tuple[Any, ...]
    dtype: str
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    offset: int
    storage: str | None
    device: str
    numel: int
    nbytes: int
    requires_grad: bool
    parameter: bool
    contiguous: bool
    subclass: str | None = None
    same_as: str | None = None

    def as_json(self) -> dict[str, Any]:
        out = {
            "path": self.path,
            "keys": [_json_key(k) for k in self.keys],
            "dtype": self.dtype,
            "shape": list(self.shape),
            "stride": list(self.stride),
            "offset": self.offset,
            "storage": self.storage,
            "device": self.device,
            "numel": self.numel,
            "nbytes": self.nbytes,
            "requires_grad": self.requires_grad,
            "parameter": self.parameter,
            "contiguous": self.contiguous,
        }
        if self.subclass:
            out["subclass"] = self.subclass
        if self.same_as:
            out["same_as"] = self.same_as
        return out


@dataclass(slots=True)
class ValueInfo:
    path: str
    keys: tuple[Any, ...]
    type: str
    value: Any
    """JSON-safe value for scalars and short strings, else ``None`` (see ``repr``)."""
    repr: str

    def as_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "keys": [_json_key(k) for k in self.keys],
            "type": self.type,
            "value": self.value,
            "repr": self.repr,
        }


@dataclass
class Summary:
    """Everything ``ckpt inspect`` shows about one checkpoint."""

    path: str
    file_size: int
    facts: dict[str, Any]
    kind: str
    structure: list[dict[str, Any]]
    tensors: list[TensorInfo]
    values: list[ValueInfo]
    storages: dict[str, dict[str, Any]]
    totals: dict[str, Any]
    findings: list[Finding]
    refs: list[dict[str, str]] = field(default_factory=list)
    elided: list[str] = field(default_factory=list)
    filter: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "path": self.path,
            "file_size": self.file_size,
            "format": self.facts,
            "kind": self.kind,
            "filter": self.filter,
            "totals": self.totals,
            "structure": self.structure,
            "tensors": [t.as_json() for t in self.tensors],
            "values": [v.as_json() for v in self.values],
            "storages": list(self.storages.values()),
            "shared_objects": self.refs,
            "elided": self.elided,
            "findings": [f.as_json() for f in self.findings],
        }


def inspect(
    path: PathLike,
    *,
    allow: Iterable[str] = (),
    filter: str | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> Summary:
    """Summarise a checkpoint without executing anything or reading tensor bytes.

    Globals outside the allowlist do not stop the summary: they become inert stand-ins and are
    listed in ``findings`` (unless named in ``allow``). ``filter`` is a glob on dotted paths
    (``model.layers.*.weight``) that limits the tensors and values listed and totalled.
    """
    with open(path, policy="inspect", allow=allow, limits=limits) as ck:
        return summarize(ck.root, path=os.fspath(path), facts=ck.facts, findings=ck.findings,
                         storages=ck.storages, filter=filter, limits=limits,
                         file_size=ck.reader.archive.file.size)


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
    for event in walk(root, max_depth=limits.max_walk_depth, atomic=is_scalar_collection):
        kind = event.kind
        if kind == "tensor":
            path_s = event.path
            if match is not None and not match(path_s):
                continue
            ref: TensorRef = event.value
            same = first_path.get(id(ref))
            if same is None:
                first_path[id(ref)] = path_s
            tensors.append(_tensor_info(path_s, event.keys, ref, same))
        elif kind == "value":
            path_s = event.path
            if match is not None and not match(path_s):
                continue
            values.append(_value_info(path_s, event.keys, event.value))
        elif kind == "container":
            if type(event.value) in MAPPINGS:
                mappings.append((event.keys, event.value))
            elif type(event.value) is InertObject and (match is None or match(event.path)):
                values.append(_value_info(event.path, event.keys, event.value))
        elif kind == "ref":
            refs.append({"path": event.path, "same_as": event.target or ""})
        elif kind == "elided":
            elided.append(event.path)

    structure = _structure(mappings)
    totals = _totals(tensors, storages)
    storage_rows = _storage_rows(tensors, storages)
    kind = _root_kind(root, structure)
    return Summary(
        path=path, file_size=file_size, facts=facts, kind=kind, structure=structure,
        tensors=tensors, values=values, storages=storage_rows, totals=totals, findings=list(findings),
        refs=refs, elided=elided, filter=filter,
    )


def _matcher(pattern: str | None) -> Any:
    if not pattern:
        return None
    regex = fnmatch.translate(pattern)
    import re

    compiled = re.compile(regex)
    return lambda p: compiled.match(p) is not None


def _tensor_info(path: str, keys: tuple[Any, ...], ref: TensorRef, same: str | None) -> TensorInfo:
    return TensorInfo(
        path=path, keys=keys, dtype=ref.dtype.name, shape=ref.shape, stride=ref.stride,
        offset=ref.offset, storage=ref.storage.key if ref.storage is not None else None,
        device=ref.device, numel=ref.numel, nbytes=ref.nbytes, requires_grad=ref.requires_grad,
        parameter=ref.is_parameter, contiguous=ref.is_contiguous, subclass=ref.subclass, same_as=same,
    )


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
    return t.__name__


def brief(value: Any, limit: int = 80) -> str:
    """A short, safe, one-line rendering of a value (never recursing without bound)."""
    t = type(value)
    if t is str:
        text = repr(value)
    elif t in (int, float, bool, complex) or value is None:
        text = repr(value)
    elif t is bytes or t is bytearray:
        text = f"{t.__name__}[{len(value)}] {bytes(value[:16])!r}" + ("..." if len(value) > 16 else "")
    elif t is DType:
        text = value.torch_name
    elif t is Device:
        text = f"device({str(value)!r})"
    elif t is GlobalRef:
        text = value.qualname
    elif t is InertObject:
        text = repr(value)
    elif t in (list, tuple, set, frozenset) and len(value) <= 8 and all(type(v) in SCALARS for v in value):
        text = repr(value)
    elif t in (list, tuple, set, frozenset, dict, OrderedDict, Counter):
        text = f"{describe_type(value)} of {len(value)}"
    else:
        try:
            text = repr(value)
        except Exception:  # a repr must never break a summary
            text = f"<{t.__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
    elif (t is list or t is tuple) and len(value) <= 1000:
        json_value = [_json_value(v) for v in value]
    return ValueInfo(path=path, keys=keys, type=describe_type(value), value=json_value, repr=brief(value))


def _json_value(v: Any) -> Any:
    t = type(v)
    if v is None or t in (bool, int, str):
        return v
    if t is float and v == v and abs(v) != float("inf"):
        return v
    return repr(v)


def _structure(mappings: list[tuple[tuple[Any, ...], Any]]) -> list[dict[str, Any]]:
    found: dict[tuple[Any, ...], dict[str, Any]] = {}
    for keys, obj in reversed(mappings):  # children before parents
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


def _totals(tensors: list[TensorInfo], storages: dict[str, StorageRef]) -> dict[str, Any]:
    by_dtype: dict[str, dict[str, int]] = {}
    by_device: dict[str, int] = {}
    numel = nbytes = 0
    used: set[str] = set()
    for t in tensors:
        if t.same_as:
            continue
        numel += t.numel
        nbytes += t.nbytes
        row = by_dtype.setdefault(t.dtype, {"tensors": 0, "numel": 0, "nbytes": 0})
        row["tensors"] += 1
        row["numel"] += t.numel
        row["nbytes"] += t.nbytes
        by_device[t.device] = by_device.get(t.device, 0) + 1
        if t.storage is not None:
            used.add(t.storage)
    storage_bytes = sum(storages[k].nbytes for k in used if k in storages)
    return {
        "tensors": sum(1 for t in tensors if not t.same_as),
        "numel": numel,
        "nbytes": nbytes,
        "storages": len(used),
        "storage_bytes": storage_bytes,
        "by_dtype": by_dtype,
        "by_device": by_device,
    }


def _storage_rows(tensors: list[TensorInfo], storages: dict[str, StorageRef]) -> dict[str, dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    for t in tensors:
        if t.storage is None or t.same_as:
            continue
        row = rows.get(t.storage)
        if row is None:
            s = storages.get(t.storage)
            row = rows[t.storage] = {
                "key": t.storage,
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


def _json_key(key: Any) -> Any:
    return key if type(key) in (str, int) else repr(key)
