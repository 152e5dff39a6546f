"""Lazy tensor and storage references: what a checkpoint holds, before any tensor byte is read.

A :class:`StorageRef` names a run of bytes in the file (a zip record) with the dtype and device
the file declared; a :class:`TensorRef` is a strided view of one. Every view is checked against
its storage when it is made, so reading it later can never run past the storage.

>>> from ckpt.dtypes import DTYPES
>>> s = StorageRef("0", DTYPES["float32"], "cpu", 6, "m/data/0")
>>> t = TensorRef(s, DTYPES["float32"], (2, 3), (3, 1), 0)
>>> t.numel, t.nbytes, t.is_contiguous
(6, 24, True)
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from .dtypes import DType
from .errors import CorruptCheckpointError

if TYPE_CHECKING:
    import numpy as np


class StorageType:
    """The value a pickle gets for ``torch.FloatStorage`` (typed) or ``torch.storage.UntypedStorage``."""

    __slots__ = ("name", "dtype", "untyped")

    def __init__(self, name: str, dtype: DType, untyped: bool) -> None:
        self.name = name
        self.dtype = dtype
        self.untyped = untyped

    def __repr__(self) -> str:
        return f"<storage type {self.name}>"


class StorageRef:
    """One storage of a checkpoint: ``nbytes`` bytes in ``record``, declared as ``numel`` × ``dtype``.

    ``location`` is the device tag torch stored (``cpu``, ``cuda:1``, ...). ``reader`` is set by
    the format reader and returns the bytes (``read()``) or fills a buffer (``readinto()``).
    """

    __slots__ = ("key", "dtype", "location", "numel", "nbytes", "record", "reader")

    def __init__(
        self,
        key: str,
        dtype: DType,
        location: str,
        numel: int,
        record: str | None = None,
        reader: StorageReader | None = None,
    ) -> None:
        self.key = key
        self.dtype = dtype
        self.location = location
        self.numel = numel
        self.nbytes = numel * dtype.itemsize
        self.record = record
        self.reader = reader

    def read(self) -> bytes:
        """The storage's bytes, exactly ``nbytes`` long (CRC-checked where the format has CRCs)."""
        if self.reader is None:
            raise CorruptCheckpointError("storage has no data source", record=self.record)
        buf = bytearray(self.nbytes)
        self.reader.readinto(self, memoryview(buf))
        return bytes(buf)

    def readinto(self, buf: memoryview) -> None:
        if self.reader is None:
            raise CorruptCheckpointError("storage has no data source", record=self.record)
        self.reader.readinto(self, buf)

    def __repr__(self) -> str:
        return f"<storage {self.key} {self.dtype.name}[{self.numel}] on {self.location}, {self.nbytes} bytes>"


class StorageReader:
    """Interface of a format reader's byte source for storages."""

    byteorder: str = "little"

    def readinto(self, storage: StorageRef, buf: memoryview) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def data_offset(self, storage: StorageRef) -> int | None:  # pragma: no cover - interface
        """File offset of the storage's first byte if it is stored uncompressed, else ``None``."""
        raise NotImplementedError


class TensorRef:
    """A tensor as the file describes it: a view (``shape``, ``stride``, ``offset`` in elements) of a storage.

    ``storage`` is ``None`` for meta tensors (no data). ``is_parameter`` is True for
    ``nn.Parameter``; ``attrs`` holds Python attributes saved with a tensor or parameter;
    ``subclass`` names a tensor subclass the file asked for (kept as a name, never imported);
    ``metadata`` is torch's conj/neg bits; ``quantizer`` describes a quantized tensor's scales.
    """

    # The rare fields live in one dict so that making the common tensor stays cheap.
    __slots__ = ("storage", "dtype", "shape", "stride", "offset", "requires_grad", "_extra")

    def __init__(
        self,
        storage: StorageRef | None,
        dtype: DType,
        shape: tuple[int, ...],
        stride: tuple[int, ...],
        offset: int,
        requires_grad: bool = False,
        device: str | None = None,
    ) -> None:
        self.storage = storage
        self.dtype = dtype
        self.shape = shape
        self.stride = stride
        self.offset = offset
        self.requires_grad = requires_grad
        self._extra: dict[str, Any] | None = None if device is None else {"device": device}

    def _get(self, name: str, default: Any = None) -> Any:
        return default if self._extra is None else self._extra.get(name, default)

    def _set(self, name: str, value: Any) -> None:
        if self._extra is None:
            self._extra = {}
        self._extra[name] = value

    is_parameter = property(lambda self: self._get("is_parameter", False), lambda self, v: self._set("is_parameter", v))
    attrs = property(lambda self: self._get("attrs"), lambda self, v: self._set("attrs", v))
    subclass = property(lambda self: self._get("subclass"), lambda self, v: self._set("subclass", v))
    metadata = property(lambda self: self._get("metadata"), lambda self, v: self._set("metadata", v))
    quantizer = property(lambda self: self._get("quantizer"))
    """For a quantized tensor: ``qscheme`` and ``scale``/``zero_point`` or ``scales``/``zero_points``/``axis``."""

    @property
    def device(self) -> str:
        """The stored device tag (what ``map_location`` would see)."""
        device = self._get("device")
        if device is not None:
            return device  # type: ignore[no-any-return]
        return self.storage.location if self.storage is not None else "meta"

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes the view's elements occupy (``numel × itemsize``), as ``Tensor.nbytes``."""
        return self.numel * self.dtype.itemsize

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def is_contiguous(self) -> bool:
        return is_contiguous(self.shape, self.stride)

    def byte_range(self) -> tuple[int, int]:
        """``(start, stop)`` byte offsets of the smallest run of the storage that holds every element."""
        item = self.dtype.itemsize
        if self.numel == 0:
            return self.offset * item, self.offset * item
        last = self.offset + sum((s - 1) * st for s, st in zip(self.shape, self.stride))
        return self.offset * item, (last + 1) * item

    def numpy(self, *, unsupported_dtype: str = "upcast") -> np.ndarray:
        """Read the tensor into a new numpy array (see :func:`ckpt.load` for ``unsupported_dtype``)."""
        from .numpy_out import tensor_to_numpy

        return tensor_to_numpy(self, unsupported_dtype=unsupported_dtype)

    def __repr__(self) -> str:
        kind = "parameter" if self.is_parameter else "tensor"
        return f"<{kind} {self.dtype.name}{list(self.shape)} on {self.device}>"


def contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides = []
    acc = 1
    for s in reversed(shape):
        strides.append(acc)
        acc *= max(s, 1)
    return tuple(reversed(strides))


def is_contiguous(shape: tuple[int, ...], stride: tuple[int, ...]) -> bool:
    """Whether a view of this shape and stride is C-contiguous, as ``Tensor.is_contiguous()``
    says (strides of size-1 dimensions do not count; a view of at most one element always is)."""
    return stride == contiguous_strides(shape) or math.prod(shape) <= 1 or _contiguous_ignoring_ones(shape, stride)


def _contiguous_ignoring_ones(shape: tuple[int, ...], stride: tuple[int, ...]) -> bool:
    expected = 1
    for s, st in zip(reversed(shape), reversed(stride)):
        if s == 1:
            continue
        if st != expected:
            return False
        expected *= s
    return True


def _int_tuple(value: Any, what: str) -> tuple[int, ...]:
    if type(value) is int:  # torch accepts a bare int for 1-d
        value = (value,)
    if not isinstance(value, (tuple, list)):
        raise CorruptCheckpointError(f"tensor {what} must be a tuple of ints, not {type(value).__name__}")
    out = tuple(value)
    for v in out:
        if type(v) is not int:
            raise CorruptCheckpointError(f"tensor {what} holds a {type(v).__name__}, not an int")
    return out


_INT64_LIMIT = 1 << 63


def make_view(
    storage: StorageRef,
    dtype: DType,
    offset: Any,
    size: Any,
    stride: Any,
    requires_grad: Any = False,
) -> TensorRef:
    """A checked :class:`TensorRef`: sizes, strides and offset must be non-negative ints and the view
    must lie inside the storage. Raises :class:`CorruptCheckpointError` otherwise."""
    if type(size) is not tuple:
        size = _int_tuple(size, "size")
    if type(stride) is not tuple:
        stride = _int_tuple(stride, "stride")
    if type(offset) is not int:
        raise CorruptCheckpointError(f"tensor storage offset must be an int, not a {type(offset).__name__}")
    if offset < 0:
        raise CorruptCheckpointError(f"tensor storage offset must not be negative ({offset})")
    if len(size) != len(stride):
        raise CorruptCheckpointError(f"tensor has {len(size)} sizes but {len(stride)} strides")
    if type(requires_grad) is not bool:
        raise CorruptCheckpointError("tensor requires_grad must be a bool")
    numel = 1
    last = offset
    for s, st in zip(size, stride):
        if type(s) is not int or type(st) is not int or s < 0 or st < 0:
            _int_tuple(size, "size")
            _int_tuple(stride, "stride")
            raise CorruptCheckpointError(
                f"tensor has a negative size or stride (size {size}, stride {stride})"
            )
        numel *= s
        if s:
            last += (s - 1) * st
    item = dtype.itemsize
    stop = (last + 1) * item if numel else offset * item
    if stop > storage.nbytes:
        raise CorruptCheckpointError(
            f"tensor view {dtype.name}{list(size)} (stride {list(stride)}, offset {offset}) needs "
            f"{stop:,} bytes of a storage that holds {storage.nbytes:,}: the view is out of bounds",
            record=storage.record,
        )
    if numel * item >= _INT64_LIMIT:  # zero strides can make huge views of small storages
        raise CorruptCheckpointError(
            f"tensor view {dtype.name}{list(size)} holds {numel:,} elements, more than any tensor can "
            "(int64 overflow)", record=storage.record,
        )
    return TensorRef(storage, dtype, size, stride, offset, requires_grad)
