"""Numpy views of checkpoint tensors, for callers without torch.

numpy has no bfloat16, float8, float4 or complex32. ``unsupported_dtype`` says what to do with them:

* ``"upcast"`` (default): convert exactly to the smallest numpy type that holds every value
  (bfloat16 and the float8 family to float32, complex32 to complex64). The result is a new
  array, so such tensors no longer share memory with their storage.
* ``"raw"``: the stored bits as an unsigned integer array of the same width (bfloat16 -> uint16,
  float8 -> uint8), sharing memory like every other dtype.
* ``"error"``: raise :class:`~ckpt.errors.UnsupportedFeatureError`.

float4_e2m1fn_x2 (two 4-bit values per byte), quantized and bits dtypes have no upcast: they are
returned raw under ``"upcast"`` too, except float4 which raises unless ``"raw"`` is asked for.

>>> import numpy as np
>>> decode_bits(np.array([0x3F80, 0xC000], dtype=np.uint16), "bfloat16").tolist()
[1.0, -2.0]
"""

from __future__ import annotations

import mmap as _mmap
import sys
from functools import lru_cache
from typing import Any

import numpy as np

from .dtypes import DType
from .errors import CorruptCheckpointError, UnsupportedFeatureError
from .limits import DEFAULT_LIMITS, Limits
from .rebuild import COMPRESSED_LAYOUTS, Builder, check_nested_components
from .tensors import StorageRef, TensorRef
from .reader import Reader
from .values import Record

UNSUPPORTED_DTYPE_CHOICES = ("upcast", "raw", "error")

_RAW = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}

# (exponent bits, mantissa bits, bias, special-value rule) of each 8-bit float
_FP8 = {
    "float8_e4m3fn": (4, 3, 7, "fn"),
    "float8_e5m2": (5, 2, 15, "ieee"),
    "float8_e4m3fnuz": (4, 3, 8, "fnuz"),
    "float8_e5m2fnuz": (5, 2, 16, "fnuz"),
}


@lru_cache(maxsize=None)
def fp8_table(name: str) -> np.ndarray:
    """float32 value of each of the 256 bit patterns of an 8-bit float format."""
    table = np.empty(256, dtype=np.float32)
    if name == "float8_e8m0fnu":
        for b in range(256):
            table[b] = np.nan if b == 255 else np.float32(2.0 ** (b - 127))
        return table
    ebits, mbits, bias, rule = _FP8[name]
    emax, mmax = (1 << ebits) - 1, (1 << mbits) - 1
    for b in range(256):
        sign = -1.0 if b & 0x80 else 1.0
        e = (b >> mbits) & emax
        m = b & mmax
        if rule == "fnuz" and b == 0x80:
            value = np.nan
        elif rule == "ieee" and e == emax:
            value = sign * np.inf if m == 0 else np.nan
        elif rule == "fn" and e == emax and m == mmax:
            value = np.nan
        elif e == 0:
            value = sign * (m / (1 << mbits)) * 2.0 ** (1 - bias)
        else:
            value = sign * (1 + m / (1 << mbits)) * 2.0 ** (e - bias)
        table[b] = value
    return table


def decode_bits(raw: np.ndarray, dtype_name: str) -> np.ndarray:
    """Exact numpy values of raw stored bits of a dtype numpy lacks (see module docs)."""
    # np.asarray: on a 0-d array, shifts and fancy indexing return numpy scalars, not arrays
    if dtype_name == "bfloat16":
        return np.asarray(raw.astype(np.uint32) << 16).view(np.float32)
    if dtype_name in _FP8 or dtype_name == "float8_e8m0fnu":
        return np.asarray(fp8_table(dtype_name)[raw])
    if dtype_name == "complex32":
        halves = raw.view(np.float16).astype(np.float32)
        return halves.view(np.complex64)
    raise UnsupportedFeatureError(f"{dtype_name} has no numpy equivalent to convert to")


def stored_dtype(dt: DType, byteorder: str = "little") -> np.dtype:
    """The numpy dtype of the stored elements: the exact one, or the unsigned type of that width."""
    base = np.dtype(dt.numpy) if dt.numpy else np.dtype(_RAW[dt.itemsize])
    if base.itemsize > 1:
        base = base.newbyteorder("<" if byteorder == "little" else ">")
    return base


def _native(arr: np.ndarray) -> np.ndarray:
    return arr if arr.dtype.isnative else arr.astype(arr.dtype.newbyteorder("="))


def view_array(ref: TensorRef, base: np.ndarray, *, byteorder: str, unsupported_dtype: str) -> np.ndarray:
    """The numpy array for ``ref`` over ``base`` (its storage's bytes as uint8).

    A view of ``base`` where numpy has the dtype (or ``raw`` is asked); a new array when values
    are upcast or byte-swapped.
    """
    dt = ref.dtype
    exotic = dt.numpy is None
    if exotic and unsupported_dtype == "error":
        raise UnsupportedFeatureError(
            f"numpy has no {dt.name}; pass unsupported_dtype='upcast' or 'raw'", record=_rec(ref)
        )
    upcast = exotic and unsupported_dtype == "upcast"
    if upcast and dt.name == "float4_e2m1fn_x2":
        raise UnsupportedFeatureError(
            "float4_e2m1fn_x2 packs two 4-bit floats per byte and has no exact numpy upcast; "
            "pass unsupported_dtype='raw' for the packed bytes", record=_rec(ref)
        )
    item = dt.itemsize
    strides = tuple(s * item for s in ref.stride)
    offset = ref.offset * item
    if upcast and dt.name == "complex32":
        halves = np.ndarray(
            (*ref.shape, 2), dtype=np.dtype("<f2" if byteorder == "little" else ">f2"),
            buffer=base, offset=offset, strides=(*strides, 2),
        )
        pairs = np.ascontiguousarray(halves.astype(np.float32))
        return pairs.view(np.complex64).reshape(ref.shape)
    if dt.kind == "complex" and exotic and byteorder != sys.byteorder:
        # raw complex32 from a foreign byte order: swap each 2-byte half (torch's swap unit for
        # complex), not the whole 4-byte word, which would exchange the real and imaginary parts
        halves = np.ndarray(
            (*ref.shape, 2), dtype=np.dtype("<u2" if byteorder == "little" else ">u2"),
            buffer=base, offset=offset, strides=(*strides, 2),
        )
        return np.ascontiguousarray(halves.astype("=u2")).view(np.uint32).reshape(ref.shape)
    arr = np.ndarray(ref.shape, dtype=stored_dtype(dt, byteorder), buffer=base, offset=offset, strides=strides)
    arr = _native(arr)
    if upcast and (dt.name == "bfloat16" or dt.name in _FP8 or dt.name == "float8_e8m0fnu"):
        return decode_bits(arr, dt.name)
    return arr


def _rec(ref: TensorRef) -> str | None:
    return ref.storage.record if ref.storage is not None else None


def tensor_to_numpy(ref: TensorRef, *, unsupported_dtype: str = "upcast") -> np.ndarray:
    """A new numpy array holding ``ref``'s values (reads its storage)."""
    if ref.storage is None:
        raise UnsupportedFeatureError("a meta tensor has no data to read")
    reader = ref.storage.reader
    byteorder = getattr(reader, "byteorder", "little")
    base = np.frombuffer(bytearray(ref.storage.read()), dtype=np.uint8)
    arr = view_array(ref, base, byteorder=byteorder, unsupported_dtype=unsupported_dtype)
    return np.array(arr, copy=True) if arr.base is not None else arr


class NumpyBuilder(Builder):
    """Makes numpy arrays (tensors views share their storage's buffer, as in torch)."""

    flavor = "numpy"

    def __init__(
        self,
        reader: Reader,
        *,
        mmap: bool = False,
        unsupported_dtype: str = "upcast",
        mode: str = "strict",
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        if unsupported_dtype not in UNSUPPORTED_DTYPE_CHOICES:
            raise ValueError(f"unsupported_dtype must be one of {UNSUPPORTED_DTYPE_CHOICES}")
        super().__init__(mode=mode, limits=limits)
        self._settings = {"mmap": mmap, "unsupported_dtype": unsupported_dtype, "mode": mode, "limits": limits}
        self.reader = reader
        self.unsupported_dtype = unsupported_dtype
        self._loaded: dict[str, np.ndarray] = {}
        self._map: Any = None
        if mmap:
            fd = reader.fileno()
            if fd is not None and reader.file_size:
                self._map = _mmap.mmap(fd, 0, access=_mmap.ACCESS_COPY)

    def for_reader(self, reader: Reader) -> NumpyBuilder:
        """A builder with the same settings for another file (a shard of a sharded checkpoint)."""
        return NumpyBuilder(reader, **self._settings)

    def finish_storage(self, ref: StorageRef) -> Any:
        arr = self._loaded.get(ref.key)
        if arr is None:
            view = self.reader.storage_base(ref)
            offset = self.reader.data_offset(ref) if self._map is not None and view is None else None
            if view is not None:  # a slice of another storage (legacy storage views): share its memory
                base, start = view
                arr = self.finish_storage(base)[start : start + ref.nbytes]
            elif offset is not None:
                arr = np.frombuffer(self._map, dtype=np.uint8, count=ref.nbytes, offset=offset)
            else:
                data = self.reader.read_small(ref)
                if data is not None:
                    arr = np.frombuffer(bytearray(data), dtype=np.uint8)
                else:
                    arr = np.empty(ref.nbytes, dtype=np.uint8)
                    self.reader.readinto(ref, memoryview(arr))
            if ref.nbytes:
                self._loaded[ref.key] = arr
            self.remember(arr, ref)
        return arr

    def finish_tensor(self, ref: TensorRef, storage: Any = None) -> Any:
        if ref.storage is None:
            raise UnsupportedFeatureError("meta tensors have no data and no numpy form")
        arr = view_array(ref, storage, byteorder=self.reader.byteorder, unsupported_dtype=self.unsupported_dtype)
        return self.remember(arr, ref)

    def parameter(self, ref: TensorRef, data: Any, requires_grad: bool) -> Any:
        return data

    def set_attrs(self, obj: Any, ref: TensorRef, attrs: dict[str, Any]) -> Any:
        return obj

    # -- sparse, quantized and nested tensors: no numpy equivalent, so plain data ----------------

    def sparse_tensor(
        self, layout: str, parts: dict[str, Any], refs: dict[str, TensorRef], size: tuple[int, ...],
        coalesced: bool | None,
    ) -> Any:
        """A ``torch.sparse_*`` :class:`~ckpt.values.Record` of numpy arrays (``indices`` and
        ``values`` for COO; ``crow_indices``/``col_indices`` or ``ccol_indices``/``row_indices`` and
        ``values`` for the compressed layouts), ``size`` and ``is_coalesced``; the indices are
        checked as torch's invariant checks would."""
        if layout == "torch.sparse_coo":
            check_coo_indices(parts["indices"], size, coalesced)
        else:
            check_compressed_indices(layout, parts, size)
        out = Record(layout, parts)
        out["size"] = tuple(size)
        if layout == "torch.sparse_coo":
            out["is_coalesced"] = coalesced
        return out

    def quantized_tensor(self, storage: Any, ref: TensorRef, quantizer: dict[str, Any]) -> Any:
        """A ``torch.quantized`` :class:`~ckpt.values.Record`: ``int_repr`` (the stored integers,
        int8/uint8/int32), ``qscheme`` and ``scale``/``zero_point`` or ``scales``/``zero_points``
        (arrays) and ``axis``."""
        raw = view_array(ref, storage, byteorder=self.reader.byteorder, unsupported_dtype="raw")
        ints = raw.view({"qint8": np.int8, "quint8": np.uint8, "qint32": np.int32}[ref.dtype.name])
        out = Record("torch.quantized", {"int_repr": ints, **quantizer})
        out["qscheme"] = quantizer["qscheme"].split(".", 1)[1]
        for key in ("scales", "zero_points"):
            if type(out.get(key)) is list:
                out[key] = np.array(out[key])
        return out

    def nested_tensor(self, parts: dict[str, Any], refs: dict[str, TensorRef]) -> Any:
        """A nested tensor as a list of numpy arrays, one per component (views of the buffer)."""
        buffer = parts["buffer"]
        sizes, strides, offsets = (np.asarray(parts[k]).tolist() for k in ("sizes", "strides", "offsets"))
        check_nested_components(sizes, strides, offsets, buffer.shape[0])
        step = buffer.strides[0]
        out = []
        for shape, stride, offset in zip(sizes, strides, offsets):
            start = buffer[offset:] if offset < buffer.shape[0] else buffer[:0]
            out.append(np.lib.stride_tricks.as_strided(
                start, shape=tuple(shape), strides=tuple(s * step for s in stride), writeable=False
            ) if all(shape) else np.empty(tuple(shape), dtype=buffer.dtype))
        return out


def check_coo_indices(indices: np.ndarray, size: tuple[int, ...], coalesced: bool | None) -> None:
    """Every COO index inside ``size``; if the file says coalesced, indices sorted and unique."""
    sparse_dim, nnz = indices.shape
    if not nnz:
        return
    bounds = np.array(size[:sparse_dim], dtype=np.int64).reshape(sparse_dim, 1)
    bad = (indices < 0) | (indices >= bounds)
    if bad.any():
        d, j = (int(x[0]) for x in np.nonzero(bad))
        raise CorruptCheckpointError(
            f"sparse COO index {int(indices[d, j])} at dimension {d} is out of range for size {list(size)}"
        )
    if coalesced and nnz > 1:
        diff = indices[:, 1:] - indices[:, :-1]
        nonzero = diff != 0
        first = nonzero.argmax(axis=0)
        if not nonzero.any(axis=0).all() or (diff[first, np.arange(nnz - 1)] < 0).any():
            raise CorruptCheckpointError("a sparse COO tensor says it is coalesced but its indices are not sorted and unique")


def check_compressed_indices(layout: str, parts: dict[str, np.ndarray], size: tuple[int, ...]) -> None:
    """torch's compressed-layout invariants: each batch's compressed indices start at 0, never
    decrease and end at nnz; plain indices lie in range and increase strictly within a row."""
    first, second, cdim, blocked = COMPRESSED_LAYOUTS[layout]
    comp = np.asarray(parts[first]).astype(np.int64)
    plain = np.asarray(parts[second]).astype(np.int64)
    values = parts["values"]
    nb = comp.ndim - 1
    nnz = plain.shape[-1]
    block = values.shape[nb + 1 : nb + 3] if blocked else (1, 1)
    extent = size[nb + 1 - cdim] // block[1 - cdim]
    comp2 = comp.reshape(-1, comp.shape[-1])
    plain2 = plain.reshape(-1, nnz)
    for b in range(comp2.shape[0]):
        c, p = comp2[b], plain2[b]
        if c[0] != 0 or c[-1] != nnz or (np.diff(c) < 0).any():
            raise CorruptCheckpointError(
                f"a {layout} tensor's {first} must start at 0, never decrease and end at {nnz} (the number of values)"
            )
        if nnz and ((p < 0) | (p >= extent)).any():
            raise CorruptCheckpointError(f"a {layout} tensor's {second} has an index out of range 0..{extent - 1}")
        if nnz > 1:
            row = np.searchsorted(c, np.arange(nnz), side="right") - 1
            same = row[1:] == row[:-1]
            if (np.diff(p)[same] <= 0).any():
                raise CorruptCheckpointError(f"a {layout} tensor's {second} must increase strictly within each row")
