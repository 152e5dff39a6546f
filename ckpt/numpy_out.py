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
from .errors import UnsupportedFeatureError
from .limits import DEFAULT_LIMITS, Limits
from .rebuild import Builder
from .tensors import StorageRef, TensorRef
from .reader import Reader

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
