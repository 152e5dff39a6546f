"""``ckpt.diff``: compare two checkpoints, structure, values and optimizer state, in any format.

>>> report = ckpt.diff("before.pt", "after.pt")                  # doctest: +SKIP
>>> report.same, report.counts["tensors"]["different"]           # doctest: +SKIP
(False, 3)
>>> [t.path for t in report.changed_tensors()][:2]               # doctest: +SKIP
['layers.3.mlp.weight', 'layers.3.mlp.bias']

Both files are opened with the strict policy (an unsafe global stops the diff unless allowed),
flattened to dotted paths (:mod:`ckpt.diff_paths`), and matched path by path. Tensors are
compared one pair at a time, streaming their bytes (:mod:`ckpt.tensor_compare`): bitwise equal
pairs are never decoded, memory stays near one chunk per side for contiguous tensors. Optimizer
state is summarised per parameter (:mod:`ckpt.diff_optim`).

The report (:class:`DiffReport`) is what ``ckpt diff`` renders and what ``--json`` prints (schema
``ckpt.diff/1``, documented in ``docs/json-schema.md``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .checkpoint import Checkpoint, PathLike, open
from .diff_optim import compare_optimizer, find_optimizers, name_renames
from .diff_paths import Flat, filter_paths, flatten, renamed, resolve, select
from . import diff_convert  # noqa: F401  (registers the ckpt.convert/1 metadata resolvers)
from .dtypes import DType
from .jsonable import brief, json_scalar
from .limits import DEFAULT_LIMITS, Limits
from .tensors import StorageRef, TensorRef
from .values import GlobalRef, InertObject, Size
from .walk import MAPPINGS

if TYPE_CHECKING:  # numpy is imported when a diff runs, not with ckpt
    from .tensor_stats import Stats

SCHEMA = "ckpt.diff/1"

STATUSES = ("identical", "close", "different", "not_compared")
"""Value verdicts of a tensor pair: bitwise ``identical``; ``close`` (allclose, or equal values
with different bits or dtypes); ``different``; ``not_compared`` (shapes differ, one side has no
data, or no common numeric type)."""

ATTRIBUTE_CHANGES = ("dtype", "shape")
"""Changes of a common tensor that make two checkpoints different (besides its values)."""

NOTED_CHANGES = ("device", "requires_grad", "parameter")
"""Changes that are reported but do not make checkpoints different: formats such as safetensors
do not record them, so a checkpoint and its conversion would otherwise never compare the same."""

ProgressCallback = Callable[[int, int], None]
"""``progress(done_bytes, total_bytes)``, called as tensor bytes are compared."""


@dataclass
class TensorDiff:
    """One tensor path present in both checkpoints.

    ``status`` is one of :data:`STATUSES`; ``changes`` lists attribute changes (``dtype``,
    ``shape``, ``device``, ``requires_grad``, ``parameter``); ``stats`` the value differences
    when the values were decoded (None for identical pairs); ``same_as`` the first path at which
    the same pair of tensors was compared (tied weights, aliases).
    """

    path: str
    a: TensorRef
    b: TensorRef
    status: str
    changes: list[str] = field(default_factory=list)
    stats: Stats | None = None
    note: str | None = None
    same_as: str | None = None
    ignore_dtype: bool = False

    @property
    def is_difference(self) -> bool:
        """True when this pair makes the checkpoints different: values not close, a shape change,
        or a dtype change (unless the diff ignores dtype changes)."""
        if self.status in ("different", "not_compared") or "shape" in self.changes:
            return True
        return "dtype" in self.changes and not self.ignore_dtype

    @property
    def magnitude(self) -> float:
        """How large the change is, for sorting: infinite for shape changes and NaN/Inf changes."""
        if self.status == "not_compared":
            return math.inf
        s = self.stats
        if s is None:
            return 0.0
        if s.nan_changed or s.inf_changed:
            return math.inf
        if s.compared_as == "raw":
            return float(s.differing_share)
        return float(s.max_abs)

    def as_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "status": self.status,
            "changes": list(self.changes),
            "a": _tensor_json(self.a),
            "b": _tensor_json(self.b),
            "stats": self.stats.as_json() if self.stats is not None else None,
            "note": self.note,
            "same_as": self.same_as,
        }


@dataclass
class ValueDiff:
    """A non-tensor value that differs, or a path holding a tensor on one side and a value on the other."""

    path: str
    a: Any
    b: Any
    kind: str = "changed"
    """``changed``, or ``type_changed`` (tensor on one side, value on the other)."""
    equal_value: bool = False
    """For ``type_changed``: a one-element tensor equal to the value on the other side."""

    def as_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "kind": self.kind,
            "a": _value_json(self.a),
            "b": _value_json(self.b),
            "equal_value": self.equal_value,
        }


@dataclass
class Side:
    """One checkpoint of a diff: where it came from and what was compared of it."""

    path: str
    format: str
    key: str | None
    tensors: int
    values: int
    notes: list[str]

    def as_json(self) -> dict[str, Any]:
        return {"path": self.path, "format": self.format, "key": self.key, "tensors": self.tensors,
                "values": self.values, "notes": list(self.notes)}


@dataclass
class DiffReport:
    """Everything ``ckpt diff`` shows about two checkpoints.

    ``tensors``: every tensor path in both (see :class:`TensorDiff`), largest change first;
    ``only_a`` / ``only_b``: paths in one checkpoint only (``{"path", "kind", ...}`` rows);
    ``values``: non-tensor values that differ; ``optimizers``: per optimizer found on both
    sides, what changed per parameter and param group.
    """

    a: Side
    b: Side
    rtol: float
    atol: float
    equal_nan: bool
    only: list[str]
    exclude: list[str]
    verify: bool
    ignore_dtype: bool
    tensors: list[TensorDiff]
    only_a: list[dict[str, Any]]
    only_b: list[dict[str, Any]]
    values: list[ValueDiff]
    values_compared: int
    optimizers: list[dict[str, Any]]
    bytes_compared: int = 0
    tensors_only: bool = False

    @property
    def same(self) -> bool:
        """True when nothing differs beyond the tolerances: same paths, dtypes and shapes, every
        common tensor identical or close, every common value equal."""
        return not (self.only_a or self.only_b or self.values or any(t.is_difference for t in self.tensors))

    def changed_tensors(self) -> list[TensorDiff]:
        """The common tensors that are not identical or carry a change, largest change first."""
        return [t for t in self.tensors if t.status != "identical" or t.changes]

    @property
    def counts(self) -> dict[str, Any]:
        tensors = {s: 0 for s in STATUSES}
        changes = {c: 0 for c in (*ATTRIBUTE_CHANGES, *NOTED_CHANGES)}
        differing = numel = 0
        for t in self.tensors:
            tensors[t.status] += 1
            for c in t.changes:
                changes[c] += 1
            if t.stats is not None and t.same_as is None:
                differing += t.stats.differing
                numel += t.stats.numel
            elif t.status == "identical" and t.same_as is None:
                numel += t.a.numel
        return {
            "tensors": {"common": len(self.tensors), **tensors,
                        "only_a": sum(1 for e in self.only_a if e["kind"] == "tensor"),
                        "only_b": sum(1 for e in self.only_b if e["kind"] == "tensor")},
            "changes": changes,
            "values": {"common": self.values_compared, "changed": len(self.values),
                       "only_a": sum(1 for e in self.only_a if e["kind"] == "value"),
                       "only_b": sum(1 for e in self.only_b if e["kind"] == "value")},
            "elements": {"compared": numel, "differing": differing},
            "bytes_compared": self.bytes_compared,
        }

    def as_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "same": self.same,
            "a": self.a.as_json(),
            "b": self.b.as_json(),
            "options": {"rtol": self.rtol, "atol": self.atol, "equal_nan": self.equal_nan,
                        "only": list(self.only), "exclude": list(self.exclude), "verify": self.verify,
                        "ignore_dtype": self.ignore_dtype, "tensors_only": self.tensors_only},
            "counts": self.counts,
            "tensors": [t.as_json() for t in self.tensors],
            "only_a": list(self.only_a),
            "only_b": list(self.only_b),
            "values": [v.as_json() for v in self.values],
            "optimizers": list(self.optimizers),
        }


# -- the comparison ------------------------------------------------------------------------------


def diff(
    a: PathLike | Checkpoint,
    b: PathLike | Checkpoint,
    *,
    rtol: float = 1e-5,
    atol: float = 1e-8,
    equal_nan: bool = False,
    only: Iterable[str] = (),
    exclude: Iterable[str] = (),
    key: str | None | tuple[str | None, str | None] = None,
    allow: Iterable[str] = (),
    ignore_dtype: bool = False,
    tensors_only: bool = False,
    verify: bool = False,
    limits: Limits = DEFAULT_LIMITS,
    progress: ProgressCallback | None = None,
) -> DiffReport:
    """Compare checkpoint ``a`` with checkpoint ``b`` (paths or opened :class:`~ckpt.Checkpoint`).

    * ``rtol`` / ``atol`` / ``equal_nan``: ``torch.allclose``'s tolerances and defaults; a pair
      within them is ``close`` and does not make the checkpoints different.
    * ``only`` / ``exclude``: globs on dotted paths (``*`` crosses dots) selecting what is compared.
    * ``key``: compare only the subtree at this dotted path (``"state_dict"`` of a Lightning
      checkpoint); a pair ``(key_a, key_b)`` picks a different subtree on each side.
    * ``allow``: globals to accept as inert data; any other global outside the allowlist raises
      :class:`~ckpt.UnsafeGlobalError`, as :func:`ckpt.load` does. Nothing is ever executed.
    * ``tensors_only``: compare tensors only; non-tensor values (epochs, hyper-parameters, the
      module objects of a TorchScript archive) are left out, and so is the optimizer summary,
      which needs them: "are these the same weights?".
    * ``ignore_dtype``: a dtype change alone does not make the checkpoints different (it is still
      reported, and the values are compared after upcasting): "is this bfloat16 copy within
      tolerance of the float32 original?".
    * ``verify``: check the CRC-32 of every zip record read (slower; without it, stored CRCs are
      still checked against what the byte comparison finds).
    * ``progress(done, total)``: called with tensor bytes compared so far.

    Raises :class:`~ckpt.CheckpointError` for unreadable or unsafe files.
    """
    if not (rtol >= 0 and atol >= 0):
        raise ValueError("rtol and atol must be non-negative numbers")
    only, exclude = list(only), list(exclude)
    key_a, key_b = key if isinstance(key, tuple) else (key, key)
    allow = list(allow)
    opened: list[Checkpoint] = []
    try:
        ck_a = _open(a, allow, limits, opened)
        ck_b = _open(b, allow, limits, opened)
        flat_a = _side(ck_a, key_a, limits)
        flat_b = _side(ck_b, key_b, limits)
        opt_a = find_optimizers(flat_a.tensors, flat_a.values)
        opt_b = find_optimizers(flat_b.tensors, flat_b.values)
        renames: dict[str, str] = {}
        by_name: set[str] = set()
        for path in opt_a.keys() & opt_b.keys():
            r = name_renames(opt_a[path], opt_b[path])
            if r:
                renames.update(r)
                by_name.add(path)
        if renames:
            flat_b = renamed(flat_b, renames)
            opt_b = find_optimizers(flat_b.tensors, flat_b.values)
        flat_a = filter_paths(flat_a, only=only, exclude=exclude)
        flat_b = filter_paths(flat_b, only=only, exclude=exclude)
        if tensors_only:
            flat_a.values, flat_b.values = {}, {}
            opt_a, opt_b = {}, {}
        report = _compare(flat_a, flat_b, rtol=rtol, atol=atol, equal_nan=equal_nan, verify=verify,
                          progress=progress)
        report.ignore_dtype = ignore_dtype
        report.tensors_only = tensors_only
        for t in report.tensors:
            t.ignore_dtype = ignore_dtype
        report.a = _side_info(ck_a, a, key_a, flat_a)
        report.b = _side_info(ck_b, b, key_b, flat_b)
        report.rtol, report.atol, report.equal_nan = rtol, atol, equal_nan
        report.only, report.exclude, report.verify = only, exclude, verify
        by_path = {t.path: t for t in report.tensors}
        for path in sorted(opt_a.keys() & opt_b.keys()):
            report.optimizers.append(
                compare_optimizer(path, opt_a[path], opt_b[path], by_path, values_equal, path in by_name)
            )
        return report
    finally:
        for ck in opened:
            ck.close()


def _open(src: PathLike | Checkpoint, allow: list[str], limits: Limits, opened: list[Checkpoint]) -> Checkpoint:
    if isinstance(src, Checkpoint):
        return src
    ck = open(src, policy="strict", allow=allow, limits=limits)
    opened.append(ck)
    return ck


def _side(ck: Checkpoint, key: str | None, limits: Limits) -> Flat:
    flat = flatten(ck.root, max_depth=limits.max_walk_depth)
    resolve(flat, ck)
    try:
        return select(flat, key=key)
    except Exception as e:
        from .errors import CheckpointError

        if isinstance(e, CheckpointError):
            raise e.with_context(path=ck.path) from None
        raise


def _side_info(ck: Checkpoint, src: Any, key: str | None, flat: Flat) -> Side:
    path = ck.path if isinstance(src, Checkpoint) else os.fspath(src)
    return Side(path=path, format=ck.format, key=key, tensors=len(flat.tensors), values=len(flat.values),
                notes=list(flat.notes))


def _compare(
    fa: Flat, fb: Flat, *, rtol: float, atol: float, equal_nan: bool, verify: bool,
    progress: ProgressCallback | None,
) -> DiffReport:
    only_a: list[dict[str, Any]] = []
    only_b: list[dict[str, Any]] = []
    value_diffs: list[ValueDiff] = []
    pairs: list[tuple[str, TensorRef, TensorRef]] = []
    for path, ta in fa.tensors.items():
        tb = fb.tensors.get(path)
        if tb is not None:
            pairs.append((path, ta, tb))
        elif path in fb.values:
            value_diffs.append(_kind_change(path, ta, fb.values[path]))
        else:
            only_a.append(_only_row(path, ta))
    for path, tb in fb.tensors.items():
        if path in fa.tensors:
            continue
        if path in fa.values:
            value_diffs.append(_kind_change(path, fa.values[path], tb))
        else:
            only_b.append(_only_row(path, tb))
    values_compared = 0
    for path, va in fa.values.items():
        if path in fb.tensors:
            continue
        if path not in fb.values:
            only_a.append(_only_row(path, va))
            continue
        values_compared += 1
        vb = fb.values[path]
        if not values_equal(va, vb):
            value_diffs.append(ValueDiff(path, va, vb))
    for path, vb in fb.values.items():
        if path not in fa.values and path not in fa.tensors:
            only_b.append(_only_row(path, vb))

    total = 0
    seen_pairs: set[tuple[int, int]] = set()
    for _, ta, tb in pairs:
        k = (id(ta), id(tb))
        if k not in seen_pairs and ta.shape == tb.shape and ta.storage is not None and tb.storage is not None:
            seen_pairs.add(k)
            total += ta.nbytes + tb.nbytes
    done = 0

    step = max(total // 500, 1 << 20)
    shown = 0

    def tick(n: int) -> None:
        nonlocal done, shown
        done += n
        if progress is not None and done - shown >= step:
            shown = done
            progress(done, total)

    if progress is not None:
        progress(0, total)
    from .tensor_compare import Buffers, compare_tensors

    verified: set[int] = set()
    first: dict[tuple[int, int], TensorDiff] = {}
    results: list[TensorDiff] = []
    compared = 0
    with Buffers() as buffers:
        for path, ta, tb in pairs:
            changes = _attribute_changes(ta, tb)
            k = (id(ta), id(tb))
            prior = first.get(k)
            if prior is not None:
                results.append(TensorDiff(path, ta, tb, prior.status, changes, prior.stats, prior.note, prior.path))
                continue
            outcome = compare_tensors(ta, tb, rtol=rtol, atol=atol, equal_nan=equal_nan, verify=verify,
                                      verified=verified, progress=tick, buffers=buffers)
            compared += outcome.bytes_read
            td = TensorDiff(path, ta, tb, outcome.status, changes, outcome.stats, outcome.note)
            first[k] = td
            results.append(td)
    if progress is not None:
        progress(total, total)
    order = {s: i for i, s in enumerate(("not_compared", "different", "close", "identical"))}
    results.sort(key=lambda t: (order[t.status] if t.status != "identical" or not t.changes else 2.5,
                                -t.magnitude))
    return DiffReport(
        a=Side("", "", None, 0, 0, []), b=Side("", "", None, 0, 0, []),
        rtol=rtol, atol=atol, equal_nan=equal_nan, only=[], exclude=[], verify=verify, ignore_dtype=False,
        tensors=results, only_a=only_a, only_b=only_b, values=value_diffs,
        values_compared=values_compared, optimizers=[], bytes_compared=compared,
    )


def _attribute_changes(a: TensorRef, b: TensorRef) -> list[str]:
    changes = []
    if a.dtype is not b.dtype:
        changes.append("dtype")
    if a.shape != b.shape:
        changes.append("shape")
    if a.device != b.device:
        changes.append("device")
    if a.requires_grad != b.requires_grad:
        changes.append("requires_grad")
    if a.is_parameter != b.is_parameter:
        changes.append("parameter")
    return changes


def _kind_change(path: str, a: Any, b: Any) -> ValueDiff:
    """A tensor on one side, a value on the other: compare a one-element tensor with the number."""
    tensor, value = (a, b) if type(a) is TensorRef else (b, a)
    equal = False
    if type(value) in (int, float, bool, complex):
        from .tensor_compare import read_scalar

        try:
            number = read_scalar(tensor)
        except Exception:
            number = None
        equal = number is not None and values_equal(number, value)
    return ValueDiff(path, a, b, kind="type_changed", equal_value=equal)


# -- values ------------------------------------------------------------------------------------


_NUMBERS = (int, float, complex)
_SEQUENCES = (list, tuple, Size)
_SETS = (set, frozenset)


def values_equal(x: Any, y: Any) -> bool:
    """Equality of non-tensor values across formats: numbers by value (NaN equals NaN; a bool
    only equals a bool), lists and tuples (and ``torch.Size``) elementwise, dtypes, devices and
    named globals by name, inert objects by the global they name (their contents are compared
    path by path).

    >>> values_equal((0.9, 0.999), [0.9, 0.999]), values_equal(1, 1.0), values_equal(True, 1)
    (True, True, False)
    """
    tx, ty = type(x), type(y)
    if tx is bool or ty is bool:
        return tx is ty and x == y
    if tx in _NUMBERS and ty in _NUMBERS:
        if x != x and y != y:
            return True
        return bool(x == y)
    if tx in _SEQUENCES and ty in _SEQUENCES:
        return len(x) == len(y) and all(values_equal(p, q) for p, q in zip(x, y))
    if tx in _SETS and ty in _SETS:
        return len(x) == len(y) and sorted(map(repr, x)) == sorted(map(repr, y))
    if tx in MAPPINGS and ty in MAPPINGS:
        return not x and not y  # only empty mappings are values; others are compared path by path
    if tx is not ty:
        return False
    if tx is InertObject:
        return bool(x.global_name == y.global_name and x.how == y.how)
    if tx is DType:
        return x is y
    if tx is GlobalRef:
        return bool(x.qualname == y.qualname)
    if tx is StorageRef:
        return x.dtype is y.dtype and x.numel == y.numel
    try:
        return bool(x == y)
    except Exception:  # a value whose comparison fails is not equal to anything
        return False


def _value_json(value: Any) -> Any:
    if type(value) is TensorRef:
        return {"tensor": _tensor_json(value)}
    return {"value": json_scalar(value), "type": type(value).__name__ if type(value) is not InertObject
            else value.global_name, "repr": brief(value)}


def _tensor_json(t: TensorRef) -> dict[str, Any]:
    return {"dtype": t.dtype.name, "shape": list(t.shape), "device": t.device, "requires_grad": t.requires_grad,
            "parameter": t.is_parameter}


def _only_row(path: str, value: Any) -> dict[str, Any]:
    if type(value) is TensorRef:
        return {"path": path, "kind": "tensor", "dtype": value.dtype.name, "shape": list(value.shape),
                "nbytes": value.nbytes, "value": None}
    return {"path": path, "kind": "value", "dtype": None, "shape": None, "nbytes": None,
            "value": _value_json(value)}


__all__ = ["DiffReport", "TensorDiff", "ValueDiff", "Side", "diff", "values_equal", "SCHEMA"]
