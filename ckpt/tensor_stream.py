"""A tensor's bytes, contiguous and little-endian, chunk by chunk; and dtype casts on the way.

Converting a checkpoint never holds the model: each tensor is read from its source file in
chunks (:data:`CHUNK`), packed if the tensor is a non-contiguous view, byte-swapped if the file
is big-endian, cast if asked, and written out.

The tensor-source interface
---------------------------
Anything :func:`ckpt.convert` reads tensors from is either a :class:`~ckpt.tensors.TensorRef`
of ``ckpt.open`` or an object with

* ``dtype`` (a :class:`ckpt.dtypes.DType`), ``shape`` (a tuple of ints), ``nbytes`` (int);
* ``read_into(buffer)``: fill ``buffer`` (a writable memoryview of exactly ``nbytes``) with the
  tensor's elements, contiguous (C order), little-endian;
* optionally ``iter_chunks(size)``: yield the same bytes in pieces of about ``size`` bytes, each
  a whole number of elements (for tensors assembled from several pieces, e.g. the chunks of a
  ``torch.distributed.checkpoint`` tensor), so that bounded memory holds for huge tensors;
* every piece handed out is a buffer of its own, never changed afterwards (writers may keep it
  and write it on another thread while the next is read);
* optionally ``source_ranges()``: ``[(fd, offset, size), ...]`` where those bytes lie as they are,
  in order, or None (see :func:`source_ranges`): writers copy them file to file.

>>> import numpy as np
>>> from ckpt.dtypes import DTYPES
>>> raw = np.array([1.0, 1.00390625, float("nan")], "<f4").tobytes()
>>> bytes(cast_bytes(raw, DTYPES["float32"], DTYPES["bfloat16"])).hex()
'803f803fc07f'
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from . import dtypes as _dt
from .errors import CorruptCheckpointError, UnsupportedFeatureError
from .tensors import StorageRef, TensorRef

CHUNK = 16 << 20
CASTABLE = ("float64", "float32", "float16", "bfloat16")
"""Floating dtypes ``--dtype`` casts (the float8/float4 families and complex are left as they are)."""
CAST_NAMES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32",
              "bfloat16": "bfloat16", "float16": "float16", "float32": "float32"}


def cast_target(dtype: _dt.DType, cast: _dt.DType | None) -> _dt.DType:
    """The dtype a tensor of ``dtype`` is written as when casting floats to ``cast``."""
    if cast is None or dtype.name not in CASTABLE:
        return dtype
    return cast


def positioned(ref: StorageRef) -> tuple[int, int] | None:
    """``(fd, file offset)`` of a storage stored uncompressed, little-endian, in a file that can be
    read by offset; None otherwise."""
    reader = ref.reader
    if reader is None or getattr(reader, "byteorder", "little") != "little":
        return None
    try:
        offset = reader.data_offset(ref)
        fd = reader.fileno()
    except (AttributeError, NotImplementedError):
        return None
    if offset is None or fd is None:
        return None
    size = getattr(reader, "file_size", None)
    if isinstance(size, int) and offset + ref.nbytes > size:
        raise CorruptCheckpointError("the file ends inside this storage (truncated?)", record=ref.record)
    return fd, offset


def source_range(t: Any) -> tuple[int, int, int] | None:
    """``(fd, offset, size)`` when ``t``'s bytes lie as they are (contiguous, little-endian,
    uncompressed) in one file: they can be copied file to file."""
    if type(t) is not TensorRef or t.storage is None or not t.is_contiguous:
        return None
    pos = positioned(t.storage)
    if pos is None:
        return None
    start, stop = t.byte_range()
    return pos[0], pos[1] + start, stop - start


def source_ranges(t: Any) -> list[tuple[int, int, int]] | None:
    """``[(fd, offset, size), ...]``, in order, when all of ``t``'s bytes lie as they are in files
    (see :func:`source_range`; a tensor assembled from pieces, such as a DCP tensor, may give
    several); None when they must be read and packed."""
    if type(t) is TensorRef:
        one = source_range(t)
        if one is not None:
            return [one]
        ref = t.storage
        whole = ref is not None and t.is_contiguous and t.offset == 0 and t.nbytes == ref.nbytes
        pieces = getattr(ref.reader, "storage_ranges", None) if whole and ref is not None else None
        return pieces(ref) if pieces is not None else None
    ranges = getattr(t, "source_ranges", None)
    return ranges() if ranges is not None else None


def _pread_exact(fd: int, size: int, offset: int, record: str | None) -> bytes:
    data = os.pread(fd, size, offset)
    if len(data) != size:
        got = bytearray(data)
        while len(got) < size:
            more = os.pread(fd, size - len(got), offset + len(got))
            if not more:
                raise CorruptCheckpointError("the file ends inside this tensor's data (truncated?)", record=record)
            got += more
        return bytes(got)
    return data


class Recycler:
    """Buffers for storages read whole, kept for reuse: a fresh buffer costs a page fault per
    page (a quarter of a second per 800 MB here), a reused one nothing.

    :meth:`take` hands out a buffer (and remembers it as :attr:`last`); :meth:`give` returns one
    once nothing reads it any more. At most ``keep`` wait to be reused.

    >>> r = Recycler()
    >>> a = r.take(10); r.give(r.last); b = r.take(8)
    >>> b.obj is a.obj and len(b) == 8
    True
    """

    def __init__(self, keep: int = 3) -> None:
        self.keep = keep
        self._free: list[bytearray] = []
        self.last: bytearray | None = None

    def take(self, n: int) -> memoryview:
        """A buffer of ``n`` bytes (contents undefined)."""
        for i, buf in enumerate(self._free):
            if n <= len(buf) <= 2 * n + (1 << 20):
                del self._free[i]
                self.last = buf
                return memoryview(buf)[:n]
        buf = self.last = bytearray(n)
        return memoryview(buf)

    def give(self, buf: bytearray) -> None:
        """Take ``buf`` back (called when the last write of its bytes has landed)."""
        if len(self._free) < self.keep:
            self._free.append(buf)


def tensor_chunks(t: Any, chunk: int = CHUNK, buffers: Recycler | None = None) -> Iterator[bytes | memoryview]:
    """The contiguous little-endian bytes of tensor ``t``, in chunks of whole elements. A storage
    read whole is read into a buffer of ``buffers`` when given (see :class:`Recycler`)."""
    if type(t) is not TensorRef:
        it = getattr(t, "iter_chunks", None)
        if it is not None:
            yield from it(chunk)
            return
        buf = bytearray(t.nbytes)
        t.read_into(memoryview(buf))
        yield memoryview(buf)
        return
    if t.storage is None:
        raise UnsupportedFeatureError("a meta tensor holds no data to convert", record=None)
    if t.quantizer is not None:
        raise UnsupportedFeatureError("quantized tensors cannot be converted (safetensors has no quantized dtypes)")
    item = t.dtype.itemsize
    step = max(item, chunk - chunk % max(item, 16))
    nbytes = t.nbytes
    if nbytes == 0:
        return
    ref = t.storage
    start, stop = t.byte_range()
    if t.is_contiguous:
        pos = positioned(ref)
        if pos is not None:
            fd, base = pos
            done = 0
            while done < nbytes:
                n = min(step, nbytes - done)
                yield _pread_exact(fd, n, base + start + done, ref.record)
                done += n
            return
    # compressed, big-endian, or a strided view: the storage's span in memory, then packed
    data = _storage_span(ref, start, stop, buffers)
    if not t.is_contiguous:
        import numpy as np

        raw = np.dtype(f"V{item}") if item not in (1, 2, 4, 8) else np.dtype(f"<u{item}")
        arr = np.lib.stride_tricks.as_strided(
            np.frombuffer(data, dtype=raw), shape=t.shape, strides=tuple(s * item for s in t.stride), writeable=False,
        )
        data = memoryview(np.ascontiguousarray(arr)).cast("B")
    view = memoryview(data)
    for i in range(0, nbytes, step):
        yield view[i : i + step]


def _storage_span(ref: StorageRef, start: int, stop: int, buffers: Recycler | None = None) -> memoryview:
    """Bytes ``[start, stop)`` of a storage, little-endian (swapped from a big-endian file)."""
    pos = positioned(ref)
    if pos is not None:
        data: Any = _pread_exact(pos[0], stop - start, pos[1] + start, ref.record)
    else:
        whole = buffers.take(ref.nbytes) if buffers is not None else memoryview(bytearray(ref.nbytes))
        ref.readinto(whole)
        data = whole[start:stop]
        reader = ref.reader
        if getattr(reader, "byteorder", "little") != "little" and ref.dtype.itemsize > 1:
            import numpy as np

            size = ref.dtype.swap_size
            data = np.frombuffer(data, dtype=f"<u{size}").byteswap().tobytes()
    return memoryview(data)


def cast_chunks(chunks: Iterator[bytes | memoryview], src: _dt.DType, dst: _dt.DType) -> Iterator[bytes | memoryview]:
    """Chunks of ``src`` elements cast to ``dst`` (unchanged when the dtypes are equal)."""
    if src == dst:
        yield from chunks
        return
    for c in chunks:
        yield cast_bytes(c, src, dst)


def cast_bytes(data: bytes | memoryview, src: _dt.DType, dst: _dt.DType) -> memoryview:
    """Cast little-endian ``src`` elements to ``dst`` as torch's ``Tensor.to`` does on the CPU:
    round to nearest even; float64 goes through float32 first (as torch converts double to
    half and bfloat16). Every non-NaN value gets torch's bits. A NaN stays a NaN of the same
    sign, quiet (``sign|0x7FC0`` in bfloat16, ``sign|0x7E00`` in float16): torch's own NaN bits
    vary with the source dtype, the tensor's length and the CPU's vector unit, so they are not
    something a file can promise."""
    import numpy as np

    if src.name not in CASTABLE or dst.name not in CASTABLE:
        raise UnsupportedFeatureError(f"ckpt casts between {', '.join(CASTABLE)}, not {src.name} to {dst.name}")
    if src.name == "bfloat16":
        a = (np.frombuffer(data, "<u2").astype("<u4") << 16).view("<f4")
    else:
        a = np.frombuffer(data, np.dtype(src.numpy))
    if dst.name == "float32":
        return memoryview(a.astype("<f4")).cast("B")
    if dst.name == "float64":
        return memoryview(a.astype("<f8")).cast("B")
    if a.dtype != np.float32:
        a = a.astype("<f4")
    if dst.name == "float16":
        with np.errstate(over="ignore"):
            h = a.astype("<f2").view("<u2")
        nan = np.isnan(a)
        if nan.any():
            h[nan] = (h[nan] & 0x8000) | 0x7E00
        return memoryview(h).cast("B")
    # bfloat16
    u = a.view("<u4")
    out = ((u + (((u >> 16) & 1) + 0x7FFF)) >> 16).astype("<u2")
    nan = np.isnan(a)
    if nan.any():
        out[nan] = ((u[nan] >> 16) & 0x8000) | 0x7FC0
    return memoryview(out).cast("B")
