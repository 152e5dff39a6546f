"""Value differences between two tensors, decoded with numpy, chunk by chunk (no torch).

Used by :mod:`ckpt.tensor_compare` once two tensors are known not to be bitwise identical (or
cannot be compared as raw bytes). Both sides are decoded to a common numpy type (bfloat16 and the
float8 family upcast exactly, float4_e2m1fn_x2 unpacked to its two 4-bit values per byte, float16
computed in float32 so that differences cannot overflow, integers and bools compared exactly) and
reduced to :class:`Stats`.

``torch.allclose`` semantics: ``|a - b| <= atol + rtol * |b|`` elementwise (``b`` is the second
checkpoint), equal infinities are close, NaN is close to nothing unless ``equal_nan``.

>>> import numpy as np
>>> s = Stats("float32", 4)
>>> s.add_float(np.array([1, 2, 3, 4], np.float32), np.array([1, 2, 3, 8], np.float32), 1e-5, 1e-8, False)
>>> s.differing, s.max_abs, s.max_rel, s.mean_abs, s.allclose
(1, 4.0, 0.5, 1.0, False)
"""

from __future__ import annotations

import math
from functools import lru_cache
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .dtypes import DType
from .numpy_out import decode_bits, fp8_table, stored_dtype
from .tensors import TensorRef

if TYPE_CHECKING:
    from .tensor_compare import Span

CHUNK_ELEMENTS = 1 << 18

def _quiet() -> Any:
    """Differences of infinities, divisions by zero and overflowing differences are expected: the
    statistics handle them; numpy must not warn about them."""
    return np.errstate(divide="ignore", invalid="ignore", over="ignore")
"""Elements per side decoded and reduced at a time when values differ."""

# 4-bit e2m1 values (float4_e2m1fn_x2 packs two per byte, low nibble first)
_FP4 = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0],
                dtype=np.float32)


class Workspace:
    """Reusable arrays, so that decoding and reducing a chunk allocates nothing (a fresh
    multi-megabyte array per chunk costs page faults and zeroing, more than the arithmetic)."""

    def __init__(self, *, threads: int = 1) -> None:
        self._arrays: dict[tuple[str, np.dtype], np.ndarray] = {}
        self.threads = max(1, threads)
        self._helpers: list[Workspace] = []
        self._pool: Any = None

    @property
    def pool(self) -> Any:
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(max_workers=max(1, self.threads - 1), thread_name_prefix="ckpt-diff")
        return self._pool

    def workers(self, numel: int, chunk: int) -> list[Workspace]:
        """This workspace and helpers (one per extra thread) for a pair of ``numel`` elements:
        a pair of fewer than two chunks per thread is not worth splitting."""
        n = max(1, min(self.threads, numel // (2 * chunk)))
        while len(self._helpers) < n - 1:
            self._helpers.append(Workspace())
        return [self, *self._helpers[: n - 1]]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def array(self, name: str, n: int, dtype: Any) -> np.ndarray:
        """A scratch array of ``n`` elements (contents undefined), the same one for the same name."""
        dt = np.dtype(dtype)
        arr = self._arrays.get((name, dt))
        if arr is None or arr.size < n:
            arr = np.empty(max(n, 1), dtype=dt)
            self._arrays[(name, dt)] = arr
        return arr[:n]


@dataclass
class Stats:
    """Accumulated differences between two equally shaped tensors (elementwise, ``a`` vs ``b``).

    * ``compared_as``: the numpy type the values were compared in (``"raw"`` for dtypes without
      numeric meaning, compared as stored bits).
    * ``numel``: elements compared (for float4_e2m1fn_x2, 4-bit values: two per element).
    * ``differing``: elements whose values differ (NaN vs NaN is not a difference).
    * ``max_abs`` / ``max_rel`` / ``mean_abs``: over the elements where neither side is NaN;
      ``max_rel`` is ``|a - b| / |b|`` (infinite where ``b`` is 0 and ``a`` is not).
    * ``close``: every element passed ``torch.isclose`` with the given tolerances so far (once
      one fails, later chunks skip the check: only the verdict is kept, not a count).
    * ``nan`` / ``inf``: counts ``(in a, in b)``; ``nan_changed`` / ``inf_changed``: positions
      that are NaN (infinite) on one side only.
    """

    compared_as: str
    numel: int
    differing: int = 0
    max_abs: float = 0.0
    max_rel: float = 0.0
    sum_abs: float = 0.0
    counted: int = 0
    close: bool = True
    nan: list[int] = field(default_factory=lambda: [0, 0])
    inf: list[int] = field(default_factory=lambda: [0, 0])
    nan_changed: int = 0
    inf_changed: int = 0

    @property
    def mean_abs(self) -> float:
        return self.sum_abs / self.counted if self.counted else 0.0

    @property
    def differing_share(self) -> float:
        return self.differing / self.numel if self.numel else 0.0

    @property
    def allclose(self) -> bool | None:
        """``torch.allclose(a, b, rtol, atol, equal_nan)``; None when compared as raw bits."""
        return None if self.compared_as == "raw" else self.close

    @property
    def has_nonfinite(self) -> bool:
        return any(self.nan) or any(self.inf)

    # -- accumulation, one chunk at a time --------------------------------------------------

    def add_raw(self, a: np.ndarray, b: np.ndarray) -> None:
        """Stored bits of a chunk (dtypes with no numeric comparison)."""
        self.differing += int(np.count_nonzero(a != b))

    def add_int(self, a: np.ndarray, b: np.ndarray, rtol: float, atol: float, ws: Workspace | None = None) -> None:
        """Integer or bool chunks: exact equality, statistics in float64."""
        n_diff = int(np.count_nonzero(a != b))
        self.counted += len(a)
        if not n_diff:
            return
        self.differing += n_diff
        self._reduce_finite(a.astype(np.float64), b.astype(np.float64), rtol, atol, ws or Workspace())

    def add_float(
        self, a: np.ndarray, b: np.ndarray, rtol: float, atol: float, equal_nan: bool, ws: Workspace | None = None
    ) -> None:
        """Float or complex chunks of the same numpy type."""
        n = len(a)
        if not n:
            return
        ws = ws or Workspace()
        if a.dtype.kind != "f":
            self._add_complex(a, b, rtol, atol, equal_nan, ws)
            return
        # Eight passes over the chunk, in an order that needs no |b|: d = a - b; d / b (whose
        # extremes give the max relative difference); |d| in place; max; nonzero count; sum.
        d = ws.array("ad", n, a.dtype)
        rel = ws.array("rel", n, a.dtype)
        np.subtract(a, b, out=d)
        np.divide(d, b, out=rel)  # x/0 and 0/0 are expected (callers silence the warnings)
        np.abs(d, out=d)
        top = float(d.max())
        if not math.isfinite(top):
            self._add_nonfinite(a, b, d.copy(), rtol, atol, equal_nan)
            return
        # No NaN or infinity on either side (they would make a NaN or inf difference).
        self.counted += n
        if top == 0:
            return  # equal values, maybe with different bits (0.0 and -0.0)
        mask = ws.array("mask", n, np.bool_)
        np.greater(d, 0, out=mask)  # for finite IEEE values, a - b == 0 iff a == b
        self.differing += int(np.count_nonzero(mask))
        # 0/0 (equal zeros) is NaN and ignored by fmax/fmin; x/0 is infinite, as it should be
        hi, lo = float(np.fmax.reduce(rel)), float(np.fmin.reduce(rel))
        top_rel = max(hi if hi == hi else 0.0, -lo if lo == lo else 0.0)
        self._reduce(d, b, top, top_rel, rtol, atol, ws)

    def _add_complex(self, a: np.ndarray, b: np.ndarray, rtol: float, atol: float, equal_nan: bool,
                     ws: Workspace) -> None:
        n = len(a)
        rtype = np.dtype(np.float64 if a.dtype.itemsize == 16 else np.float32)
        ad = ws.array("ad", n, rtype)
        np.abs(np.subtract(a, b, out=ws.array("dc", n, a.dtype)), out=ad)
        top = float(ad.max())
        if not math.isfinite(top):
            self._add_nonfinite(a, b, ad.copy(), rtol, atol, equal_nan)
            return
        self.counted += n
        if top == 0:
            return
        self.differing += int(np.count_nonzero(ad > 0))
        absb = np.abs(b)
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = ad / absb
        top_rel = float(np.fmax.reduce(rel))
        self._reduce(ad, b, top, top_rel if top_rel == top_rel else 0.0, rtol, atol, ws)

    def _reduce_finite(self, a: np.ndarray, b: np.ndarray, rtol: float, atol: float, ws: Workspace) -> None:
        ad = np.abs(np.subtract(a, b))
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = ad / np.abs(b)
        top_rel = float(np.fmax.reduce(rel))
        self._reduce(ad, b, float(ad.max()), top_rel if top_rel == top_rel else 0.0, rtol, atol, ws)

    def _reduce(
        self, ad: np.ndarray, b: np.ndarray, top: float, top_rel: float, rtol: float, atol: float, ws: Workspace
    ) -> None:
        """Statistics of finite differences ``ad`` = ``|a - b|`` with the chunk's largest ``top``
        and largest relative ``top_rel`` (``counted`` and ``differing`` already updated)."""
        self.max_abs = max(self.max_abs, top)
        self.max_rel = max(self.max_rel, top_rel)
        # einsum's vectorised sum is twice as fast as ndarray.sum's pairwise one, as accurate here
        self.sum_abs += float(np.einsum("i->", ad)) if ad.ndim == 1 else float(ad.sum())
        if not self.close or top <= atol or top_rel <= rtol:
            return  # already not close; or every element is within atol, or within rtol of b
        tol = ws.array("tol", len(ad), ad.dtype)
        if b.dtype.kind == "c":
            np.copyto(tol, np.abs(b), casting="unsafe")
        else:
            np.abs(b, out=tol)
        np.multiply(tol, rtol, out=tol)
        tol += atol
        mask = ws.array("mask", len(ad), np.bool_)
        np.greater(ad, tol, out=mask)
        self.close = not mask.any()

    def _add_nonfinite(
        self, a: np.ndarray, b: np.ndarray, ad: np.ndarray, rtol: float, atol: float, equal_nan: bool
    ) -> None:
        nan_a, nan_b = np.isnan(a), np.isnan(b)
        inf_a, inf_b = np.isinf(a), np.isinf(b)
        self.nan[0] += int(np.count_nonzero(nan_a))
        self.nan[1] += int(np.count_nonzero(nan_b))
        self.inf[0] += int(np.count_nonzero(inf_a))
        self.inf[1] += int(np.count_nonzero(inf_b))
        self.nan_changed += int(np.count_nonzero(nan_a != nan_b))
        self.inf_changed += int(np.count_nonzero(inf_a != inf_b))
        both_nan = nan_a & nan_b
        eq = (a == b) | both_nan
        self.differing += int(np.count_nonzero(~eq))
        valid = ~(nan_a | nan_b)
        self.counted += int(np.count_nonzero(valid))
        absb = np.abs(b)
        changed = valid & ~eq
        # equal values (inf == inf included) differ by 0; inf - inf of opposite signs is inf
        diffs = np.where(changed, np.where(np.isnan(ad), np.inf, ad), 0)
        if diffs.size:
            self.max_abs = max(self.max_abs, float(diffs.max()))
            self.sum_abs += float(diffs.sum(dtype=np.float64))
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = np.where(changed, diffs / absb, 0)
        rel = np.where(np.isnan(rel), np.inf, rel)  # a finite and b infinite: inf / inf
        if rel.size:
            self.max_rel = max(self.max_rel, float(rel.max()))
        close = (a == b) | (np.isfinite(diffs) & (diffs <= atol + rtol * absb) & valid)
        if equal_nan:
            close |= both_nan
        self.close = self.close and bool(close.all())

    def merge(self, other: Stats) -> None:
        """Add the statistics of another range of the same tensor pair."""
        self.differing += other.differing
        self.max_abs = max(self.max_abs, other.max_abs)
        self.max_rel = max(self.max_rel, other.max_rel)
        self.sum_abs += other.sum_abs
        self.counted += other.counted
        self.close = self.close and other.close
        for mine, theirs in ((self.nan, other.nan), (self.inf, other.inf)):
            mine[0] += theirs[0]
            mine[1] += theirs[1]
        self.nan_changed += other.nan_changed
        self.inf_changed += other.inf_changed

    def as_json(self) -> dict[str, Any]:
        return {
            "compared_as": self.compared_as,
            "numel": self.numel,
            "differing": self.differing,
            "differing_share": self.differing_share,
            "max_abs_diff": json_float(self.max_abs) if self.compared_as != "raw" else None,
            "max_rel_diff": json_float(self.max_rel) if self.compared_as != "raw" else None,
            "mean_abs_diff": json_float(self.mean_abs) if self.compared_as != "raw" else None,
            "allclose": self.allclose,
            "nan": list(self.nan),
            "inf": list(self.inf),
            "nan_changed": self.nan_changed,
            "inf_changed": self.inf_changed,
        }


def json_float(x: float) -> float | str:
    """A float for strict JSON: finite as is, else ``"inf"``, ``"-inf"`` or ``"nan"``."""
    if math.isfinite(x):
        return x
    return "nan" if x != x else ("inf" if x > 0 else "-inf")


# -- decoding -------------------------------------------------------------------------------------


@lru_cache(maxsize=None)
def numeric_type(dt: DType) -> np.dtype | None:
    """The numpy type a dtype's values decode to exactly, or None if it has no numeric meaning."""
    if dt.kind in ("quantized", "bits"):
        return None
    if dt.numpy:
        return np.dtype(dt.numpy).newbyteorder("=")
    if dt.name == "complex32":
        return np.dtype(np.complex64)
    if dt.kind == "float":  # bfloat16, float8 family, float4
        return np.dtype(np.float32)
    return None


def compute_type(a: np.dtype, b: np.dtype) -> np.dtype:
    """The numpy type two decoded sides are compared in: their common type, float16 widened to
    float32 (differences must not overflow), integers and bools kept (compared exactly)."""
    common = np.result_type(a, b)
    if common == np.float16:
        return np.dtype(np.float32)
    if common.kind == "c" and common.itemsize < 8:
        return np.dtype(np.complex64)
    return common


def decode(raw: np.ndarray, ref: TensorRef, byteorder: str, ws: Workspace | None = None,
           side: str = "a") -> np.ndarray:
    """Values of raw stored elements (as :func:`~ckpt.numpy_out.stored_dtype` gives them), exact.

    With a workspace, upcast values are written into its arrays (named after ``side``)."""
    dt = ref.dtype
    if not raw.dtype.isnative:
        raw = raw.astype(raw.dtype.newbyteorder("="))
    n = raw.size
    if dt.numpy:
        values = raw
    elif dt.name == "bfloat16":
        out = ws.array(f"dec{side}", n, np.uint32) if ws is not None else np.empty(n, np.uint32)
        np.left_shift(raw, 16, out=out, dtype=np.uint32)
        values = out.view(np.float32)
    elif dt.name == "float4_e2m1fn_x2":
        values = ws.array(f"dec{side}", 2 * n, np.float32) if ws is not None else np.empty(2 * n, np.float32)
        values[0::2] = _FP4[raw & 0x0F]
        values[1::2] = _FP4[raw >> 4]
    elif dt.name == "complex32":
        halves = raw.view(np.uint16) if raw.dtype.itemsize == 4 else raw
        values = halves.view(np.float16).astype(np.float32).view(np.complex64)
    elif dt.kind == "float" and dt.itemsize == 1:  # the float8 family: a 256-entry table
        values = ws.array(f"dec{side}", n, np.float32) if ws is not None else np.empty(n, np.float32)
        np.take(fp8_table(dt.name), raw, out=values)
    else:
        values = decode_bits(raw, dt.name)
    meta = ref.metadata or {}
    if meta.get("conj") and values.dtype.kind == "c":
        values = np.conj(values)
    if meta.get("neg"):
        values = np.negative(values)
    return values


# -- element streams ------------------------------------------------------------------------------


class Elements:
    """A tensor's stored elements in logical (row-major) order, served as raw numpy chunks.

    A contiguous tensor is read chunk by chunk, by positioned reads into workspace buffers; a
    strided view has its elements gathered once into a contiguous array by :meth:`open`.
    :meth:`chunk` serves any range (so that several threads can share one tensor).
    """

    def __init__(self, ref: TensorRef, span: Span) -> None:
        self.ref = ref
        self.span = span
        self.dt = ref.dtype
        self.item = ref.dtype.itemsize
        self.numel = ref.numel
        self.contiguous = ref.is_contiguous and span.length == ref.nbytes
        self.byteorder = span.byteorder
        self.per = 2 if self.dt.name == "complex32" else 1
        self.rdt = self.raw_dtype()
        self.flat: np.ndarray | None = None

    def raw_dtype(self) -> np.dtype:
        if self.dt.name == "complex32":
            # two float16 halves; swap each half on a foreign byte order (torch's swap unit)
            return np.dtype("<u2" if self.byteorder == "little" else ">u2")
        return stored_dtype(self.dt, self.byteorder)

    def open(self) -> None:
        if self.contiguous:
            return
        # A strided view: read the span it covers and gather its elements in logical order
        # (chunks must line up with the other side's, whatever its layout).
        base = np.frombuffer(self.span.read(0, self.span.length), dtype=np.uint8)
        strides = tuple(s * self.item for s in self.ref.stride)
        arr = np.ndarray(self.ref.shape, dtype=np.dtype(f"V{self.item}"), buffer=base,
                         offset=(self.ref.offset * self.item) - self.span.start, strides=strides)
        self.flat = np.ascontiguousarray(arr).reshape(-1).view(self.rdt)

    def chunk(self, start: int, k: int, ws: Workspace | None, side: str) -> np.ndarray:
        """Raw elements ``[start, start + k)`` (complex32: pairs of uint16 halves), valid until the
        next chunk is read into the same workspace."""
        per = self.per
        if self.flat is not None:
            return self.flat[start * per : (start + k) * per]
        size = k * self.item
        buf = ws.array(f"read{side}", size, np.uint8) if ws is not None else np.empty(size, np.uint8)
        self.span.readinto(start * self.item, memoryview(buf))
        return np.frombuffer(buf, dtype=self.rdt, count=k * per)

    def close(self) -> None:
        self.flat = None

    def chunks(self, elements: int, ws: Workspace | None = None, side: str = "a") -> Iterator[np.ndarray]:
        """Every element in chunks of ``elements`` (the last one shorter), in order."""
        self.open()
        try:
            for pos in range(0, self.numel, elements):
                yield self.chunk(pos, min(elements, self.numel - pos), ws, side)
        finally:
            self.close()


def raw_equal(ea: Elements, eb: Elements, ws: Workspace | None = None) -> bool:
    """Element-by-element equality of stored bits, in logical order and native byte order."""
    for ca, cb in zip(ea.chunks(CHUNK_ELEMENTS, ws, "a"), eb.chunks(CHUNK_ELEMENTS, ws, "b")):
        if not ca.dtype.isnative:
            ca = ca.astype(ca.dtype.newbyteorder("="))
        if not cb.dtype.isnative:
            cb = cb.astype(cb.dtype.newbyteorder("="))
        if not np.array_equal(ca, cb):
            return False
    return True



def compare_values(
    a: TensorRef, b: TensorRef, sa: Span, sb: Span, *, rtol: float, atol: float, equal_nan: bool,
    tick: Callable[[int], None], raw_first: bool, ws: Workspace | None = None,
) -> tuple[str, Stats | None, str | None]:
    """``(status, stats, note)`` for two equally shaped tensors with data (see the module docs).

    ``raw_first``: check bitwise equality of the stored elements before decoding (same dtype,
    views or byte orders that prevent a plain byte comparison); equal pairs are never decoded.
    """
    with _quiet():  # inf - inf, x/0, overflowing differences: all handled
        return _compare_values(a, b, sa, sb, rtol, atol, equal_nan, tick, raw_first, ws or Workspace())


def _compare_values(
    a: TensorRef, b: TensorRef, sa: Span, sb: Span, rtol: float, atol: float, equal_nan: bool,
    tick: Callable[[int], None], raw_first: bool, ws: Workspace,
) -> tuple[str, Stats | None, str | None]:
    ea, eb = Elements(a, sa), Elements(b, sb)
    numel = a.numel
    if raw_first and raw_equal(ea, eb, ws):
        return "identical", None, None
    na, nb = numeric_type(a.dtype), numeric_type(b.dtype)
    if na is None or nb is None:
        if a.dtype is not b.dtype:
            return "not_compared", None, f"{a.dtype.name} and {b.dtype.name} values have no common numeric type"
        stats = Stats("raw", numel)
        for ca, cb in zip(ea.chunks(CHUNK_ELEMENTS, ws, "a"), eb.chunks(CHUNK_ELEMENTS, ws, "b")):
            stats.add_raw(ca, cb)
            tick(ca.nbytes + cb.nbytes)
        return ("different" if stats.differing else "identical"), stats, f"{a.dtype.name} compared as stored bits"
    ctype = compute_type(na, nb)
    scale = 2 if a.dtype.name == "float4_e2m1fn_x2" else 1
    ea.open()
    try:
        eb.open()
        # Split the elements into one contiguous range per worker: ranges run in parallel
        # (numpy releases the GIL in its loops), each with its own scratch arrays.
        workers = ws.workers(numel, CHUNK_ELEMENTS)
        per = -(-numel // len(workers))
        per = -(-per // CHUNK_ELEMENTS) * CHUNK_ELEMENTS
        ranges = [(i * per, min(numel, (i + 1) * per)) for i in range(len(workers)) if i * per < numel]
        partial = [Stats(ctype.name, 0) for _ in ranges]

        def run(i: int, wsx: Workspace, report: bool) -> None:
            start, stop = ranges[i]
            st = partial[i]
            for pos in range(start, stop, CHUNK_ELEMENTS):
                k = min(CHUNK_ELEMENTS, stop - pos)
                ca, cb = ea.chunk(pos, k, wsx, "a"), eb.chunk(pos, k, wsx, "b")
                va = _as(decode(ca, a, ea.byteorder, wsx, "a"), ctype, wsx, "a")
                vb = _as(decode(cb, b, eb.byteorder, wsx, "b"), ctype, wsx, "b")
                if ctype.kind in "biu":
                    st.add_int(va, vb, rtol, atol, wsx)
                else:
                    st.add_float(va, vb, rtol, atol, equal_nan, wsx)
                if report:
                    tick(ca.nbytes + cb.nbytes)

        with _quiet():  # errstate is per thread: helpers set their own
            others = [ws.pool.submit(_in_errstate, run, i, workers[i], False) for i in range(1, len(ranges))]
            try:
                run(0, workers[0], True)
            finally:
                for f in others:
                    f.result()
    finally:
        ea.close()
        eb.close()
    stats = Stats(ctype.name, numel * scale)
    for st in partial:
        stats.merge(st)
    # values equal but bits not (0.0 and -0.0, NaN payloads, another dtype) are "close"
    return ("close" if stats.close else "different"), stats, None


def _in_errstate(fn: Callable[..., None], *args: Any) -> None:
    with _quiet():
        fn(*args)


def _as(values: np.ndarray, ctype: np.dtype, ws: Workspace, side: str) -> np.ndarray:
    if values.dtype == ctype:
        return values
    out = ws.array(f"cast{side}", values.size, ctype)
    np.copyto(out, values, casting="unsafe")
    return out


def read_value(ref: TensorRef, span: Span) -> Any:
    """The value of a one-element tensor as a Python number, or None without a numeric type."""
    if numeric_type(ref.dtype) is None:
        return None
    e = Elements(ref, span)
    raw = np.frombuffer(span.read(0, span.length), dtype=e.raw_dtype())
    return decode(raw, ref, span.byteorder).reshape(-1)[0].item()
