"""``ckpt.save``: write the bytes ``torch.save`` writes, without needing torch.

``ckpt.save(obj, "x.pt")`` writes exactly the file ``torch.save(obj, "x.pt")`` writes: the same
``data.pkl`` (pickled by :mod:`ckpt.pickle_write` as CPython's pickler pickles it, with torch's
own reductions for tensors), the same records in the same order with the same alignment padding,
CRC-32s, data descriptors, serialization id and zip directory (:mod:`ckpt.zipwrite`).

What it takes:

* plain values and containers (``dict``, ``list``, ``tuple``, ``OrderedDict`` with its
  ``_metadata``, ``set``, ``Counter``, ``str``, ``bytes``, numbers, ``None``);
* torch tensors, parameters, storages, dtypes, sizes and devices (torch is used only if it is
  already imported: a ``torch.Tensor`` cannot exist otherwise);
* numpy arrays, written as the tensor ``torch.from_numpy(array)`` would be (each array its own
  storage, holding the span of memory the array covers; arrays with negative strides are
  written as a contiguous copy, non-native byte order as native);
* the lazy values of :func:`ckpt.open` and the numpy flavour of :func:`ckpt.load`:
  :class:`~ckpt.tensors.TensorRef` (streamed storage by storage from the source file, straight
  from file to file where the kernel allows; two views of one storage stay one storage),
  ckpt's dtypes, sizes and devices.

Anything ``torch.load(weights_only=True)`` could not read back (a custom class, a numpy scalar, a
tensor subclass, ``b""``) raises :class:`~ckpt.errors.UnsavableObjectError` naming where it is,
before the file is touched. Writing a path is atomic: a temporary file beside the destination,
flushed, fsynced (unless ``fsync=False``), then renamed over it; on any failure (a bad object, a
full disk, Ctrl-C) the destination is left as it was and the temporary file is removed.

>>> import ckpt, numpy as np                                      # doctest: +SKIP
>>> ckpt.save({"w": np.ones((2, 3), np.float32)}, "w.pt")         # doctest: +SKIP
>>> with ckpt.open("big.pt") as ck:                               # doctest: +SKIP
...     ckpt.save({k: v for k, v in ck.root.items() if "lora" in k}, "lora.pt")
"""

from __future__ import annotations

import copyreg
import os
import stat
import sys
import threading
import types
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO, Any

from .crc import crc32
from . import dtypes as _dt
from .errors import CheckpointError, CorruptCheckpointError, UnsavableObjectError
from .pickle_write import Global, PersistentId, Pickler, Reduction, TensorRecord
from .rebuild import Builder, canonical_name
from .tensors import StorageRef, TensorRef
from .values import Device, Size, TorchConstant
from .zipwrite import ALIGNMENT, TorchZipWriter, ZipSink, archive_name_for

PathLike = str | os.PathLike[str]
Progress = Callable[[int, int], None]
"""``progress(done, total)``: bytes of tensor data written so far, of the total."""

FORMAT_VERSION = b"1"

G_REBUILD_V2 = Global.of("torch._utils", "_rebuild_tensor_v2")
G_REBUILD_V3 = Global.of("torch._utils", "_rebuild_tensor_v3")
G_PARAMETER = Global.of("torch._utils", "_rebuild_parameter")
G_PARAMETER_STATE = Global.of("torch._utils", "_rebuild_parameter_with_state")
G_META = Global.of("torch._utils", "_rebuild_meta_tensor_no_storage")
G_FROM_TYPE = Global.of("torch._tensor", "_rebuild_from_type_v2")
G_TENSOR = Global.of("torch", "Tensor")
G_UNTYPED = Global.of("torch.storage", "UntypedStorage")
G_SIZE = Global.of("torch", "Size")
G_DEVICE = Global.of("torch", "device")
G_LAYOUT = Global.of("torch.serialization", "_get_layout")
G_ORDERED_DICT = Global.of("collections", "OrderedDict")

# Location tags torch makes from string literals (one object each, so the pickle memo shares
# them between storages); any other tag (``cuda:0``) torch builds afresh for every storage.
_LITERAL_TAGS = {t: t for t in ("cpu", "mps", "meta", "cuda", "hpu", "xpu", "mtia")}
_STORAGE = "storage"  # the literal torch's persistent_id uses (interned: the same object)

_READ_CHUNK = 8 << 20


def _fresh(text: str) -> str:
    """A new ``str`` object equal to ``text`` (torch builds these per call; the memo must not
    find an older one)."""
    return text.encode("utf-8", "surrogatepass").decode("utf-8", "surrogatepass") if len(text) > 1 else text


_ALLOWED: frozenset[str] | None = None


def allowed_globals() -> frozenset[str]:
    """Every ``module.name`` ckpt.save may write: the globals ckpt's loader accepts, which are
    globals torch's ``weights_only`` loader accepts."""
    global _ALLOWED
    if _ALLOWED is None:
        _ALLOWED = frozenset(Builder().table)
    return _ALLOWED


def check_global(g: Global) -> None:
    module, name = canonical_name(g.module, g.name)
    if f"{module}.{name}" not in allowed_globals():
        raise UnsavableObjectError(
            f"{g.qualname} is not on the allowlist, so torch.load(weights_only=True) could not read it back",
        )


# -- where storage bytes come from --------------------------------------------------------------


class _Source:
    nbytes: int

    def write_to(self, writer: TorchZipWriter, progress: Callable[[int], None]) -> None:
        raise NotImplementedError


class _MemorySource(_Source):
    """Bytes already in memory (a CPU torch storage, a numpy array's span)."""

    def __init__(self, view: Callable[[], memoryview], nbytes: int) -> None:
        self._view = view
        self.nbytes = nbytes

    def write_to(self, writer: TorchZipWriter, progress: Callable[[int], None]) -> None:
        view = self._view() if self.nbytes else memoryview(b"")
        if len(view) != self.nbytes:  # pragma: no cover - a storage resized while saving
            raise UnsavableObjectError("a storage changed size while it was being saved")
        step = 64 << 20
        for i in range(0, self.nbytes, step):
            writer.write(view[i : i + step])
            progress(min(step, self.nbytes - i))


class _RefSource(_Source):
    """A storage of an opened checkpoint: copied from its file, storage by storage (byte-swapped,
    as torch.load swaps it, when the file's byte order is not the one being written)."""

    def __init__(self, ref: StorageRef, byteorder: str) -> None:
        self.ref = ref
        self.nbytes = ref.nbytes
        self.byteorder = byteorder
        self._raw: tuple[int, int, int | None] | None | bool = False  # _raw_record's answer, once asked

    def raw(self) -> tuple[int, int, int | None] | None:
        """:func:`_raw_record` of the storage (worked out once)."""
        if self._raw is False:
            self._raw = _raw_record(self.ref)
        return self._raw  # type: ignore[return-value]

    def swap(self) -> int:
        """The byte-swap width the storage needs (1: none, its file's byte order is the one written)."""
        ref = self.ref
        foreign = getattr(ref.reader, "byteorder", self.byteorder) != self.byteorder
        return ref.dtype.swap_size if foreign and ref.dtype.itemsize > 1 else 1

    def copied_as_is(self) -> tuple[int, int, int | None] | None:
        """``(fd, offset, CRC-32 or None)`` when the storage's bytes are copied from its file as they
        are (not empty, no byte swap, stored uncompressed); None otherwise."""
        if self.ref.reader is None or self.nbytes == 0 or self.swap() > 1:
            return None
        return self.raw()

    def copied_without_crc(self) -> bool:
        """Whether the storage is copied as it is from a file without CRC-32s (safetensors): with
        :meth:`TorchZipWriter.copy_computing_crc` where the sink allows."""
        raw = self.copied_as_is()
        return raw is not None and raw[2] is None

    def write_to(self, writer: TorchZipWriter, progress: Callable[[int], None]) -> None:
        ref = self.ref
        reader = ref.reader
        if reader is None:
            raise CheckpointError("a tensor's storage has no data source", record=ref.record)
        swap = self.swap()
        raw = self.raw()
        if raw is not None:
            fd, offset, crc = raw
            if swap == 1:
                # Later, on the sink's threads (ZipSink.run_copies reports the progress as copies
                # land): in the kernel when the CRC is known; read once, the zip's CRC computed on
                # the way, when there is none to check (safetensors). A zip that is not a file
                # descriptor copies at once, reading the source to compute a missing CRC.
                pending = writer.sink.queued
                if crc is not None or not writer.copy_computing_crc(fd, offset, ref.nbytes):
                    writer.copy(fd, offset, ref.nbytes, crc=crc)
                if writer.sink.queued == pending:
                    progress(ref.nbytes)
                return
            # Read it through: compute the CRC for the copy, check the source's on the way.
            step = _READ_CHUNK - _READ_CHUNK % 8
            check = 0
            done = 0
            while done < ref.nbytes:
                chunk = os.pread(fd, min(step, ref.nbytes - done), offset + done)
                if not chunk:
                    raise CorruptCheckpointError("record is truncated", path=_path_of(reader), record=ref.record)
                check = crc32(chunk, check)
                writer.write(_byteswapped(chunk, swap) if swap > 1 else chunk)
                done += len(chunk)
                progress(len(chunk))
            if crc is not None and check != crc:
                raise CorruptCheckpointError(
                    f"CRC-32 mismatch (stored {crc:08x}, computed {check:08x}): the record is damaged",
                    path=_path_of(reader), record=ref.record,
                )
            return
        chunks = getattr(reader, "iter_chunks", None)
        if chunks is not None:  # a reader that streams (ckpt.convert's casts and packed views)
            done = 0
            for chunk in chunks(ref):
                writer.write(chunk)
                done += len(chunk)
                progress(len(chunk))
            if done != ref.nbytes:
                raise CheckpointError(f"a storage gave {done:,} bytes, not {ref.nbytes:,}", record=ref.record)
            return
        buf = bytearray(ref.nbytes)
        reader.readinto(ref, memoryview(buf))  # compressed or foreign: one storage in memory
        writer.write(_byteswapped(bytes(buf), swap) if swap > 1 else buf)
        progress(ref.nbytes)


def _path_of(reader: Any) -> str | None:
    return getattr(reader, "path", None)


def _raw_record(ref: StorageRef) -> tuple[int, int, int | None] | None:
    """``(fd, data offset, CRC-32 or None)`` when the storage lies uncompressed in a torch zip
    file that can be read by offset; None otherwise."""
    from .safetensors_reader import SafetensorsReader
    from .torch_zip import TorchZipReader
    from .zipread import STORED

    reader = ref.reader
    if isinstance(reader, SafetensorsReader) and reader.byteorder == "little":
        fd = reader.fileno()  # uncompressed, no CRC: read through in chunks, the zip's CRC computed
        return None if fd is None else (fd, reader.data_offset(ref) or 0, None)
    if not isinstance(reader, TorchZipReader) or ref.record is None:
        return None
    fd = reader.fileno()
    if fd is None:
        return None
    entry = reader.archive.entry(ref.record)
    if entry.method != STORED or entry.size != ref.nbytes:
        return None
    offset = reader.archive.data_offset(entry)
    return fd, offset, entry.crc if reader.archive.has_crcs else None


def _byteswapped(data: bytes, size: int) -> bytes:
    import numpy as np

    return np.frombuffer(data, dtype=f"<u{size}").byteswap().tobytes()


# -- turning objects into torch's reductions ------------------------------------------------------


class _Saver:
    """Pickles one object as torch.save would and collects the storages to write."""

    def __init__(self, *, location: Callable[[StorageRef], str] | None = None, byteorder: str = sys.byteorder) -> None:
        self.location = location
        self.byteorder = byteorder
        self.torch = sys.modules.get("torch")
        self.np = sys.modules.get("numpy")
        self.keys: dict[Any, str] = {}
        self.sources: dict[str, _Source] = {}
        self.storage_dtypes: dict[Any, Any] = {}
        self.keep: list[Any] = []

    def dumps(self, obj: Any) -> bytes:
        from .torch_zip import gc_paused

        with gc_paused():  # the pickler's memo holds every object: collections would rescan it
            return Pickler(reduce=self.reduce, check_global=check_global).dumps(obj)

    # -- the hook ------------------------------------------------------------------------------

    def reduce(self, obj: Any) -> Any:
        t = type(obj)
        if t is TensorRef:
            return self.tensor_ref(obj)
        if t is StorageRef:
            return self.ref_storage_pid(obj)
        if t is _dt.DType:
            return Global.of("torch", obj.name)
        if t is Size:
            return Reduction(G_SIZE, ((*obj,),))
        if t is Device:
            return Reduction(G_DEVICE, (_fresh(obj.type),) if obj.index is None else (_fresh(obj.type), obj.index))
        if t is TorchConstant:
            if obj.kind == "layout":
                return Reduction(G_LAYOUT, (_fresh(obj.name),))
            return Global.of("torch", obj.name.split(".", 1)[1])
        np = self.np
        if np is not None and t is np.ndarray:
            return self.ndarray(obj)
        torch = self.torch
        if torch is not None:
            if isinstance(obj, torch.Tensor):
                return self.torch_tensor(obj)
            if isinstance(obj, (torch.storage.TypedStorage, torch.UntypedStorage)):
                return self.torch_storage_pid(obj)
            if t.__module__.split(".", 1)[0] == "torch" or isinstance(obj, (types.FunctionType, type)):
                return self.generic(obj)
        if isinstance(obj, (types.FunctionType, types.BuiltinFunctionType, type)):
            return self.generic(obj)
        if np is not None and isinstance(obj, np.generic):
            raise UnsavableObjectError(
                f"a numpy scalar ({t.__name__}) cannot be read by torch.load(weights_only=True)",
                hint="convert it with .item(), or wrap it in a 0-d array",
            )
        return None

    def generic(self, obj: Any) -> Any:
        """An object torch knows how to pickle: the reduction it gives, in ckpt's terms."""
        if isinstance(obj, (types.FunctionType, types.BuiltinFunctionType, type)):
            return Global.of(obj.__module__, obj.__qualname__)
        reducer = copyreg.dispatch_table.get(type(obj))
        try:
            rv = reducer(obj) if reducer is not None else obj.__reduce_ex__(2)
        except Exception as e:  # torch refuses (named tensors, ...): so does ckpt
            raise UnsavableObjectError(f"torch cannot pickle this {type(obj).__qualname__} ({e})") from None
        if isinstance(rv, str):
            return Global.of(getattr(obj, "__module__", None) or type(obj).__module__, rv)
        func, args, *rest = rv
        if not isinstance(func, Global):
            func = self.generic(func)
        state = rest[0] if len(rest) > 0 else None
        listitems = rest[1] if len(rest) > 1 else None
        dictitems = rest[2] if len(rest) > 2 else None
        return Reduction(func, args, state, listitems, dictitems)

    # -- tensors -------------------------------------------------------------------------------

    def _record(
        self, storage_type: Global, key: str, location: str, numel: int, dtype: _dt.DType, offset: int,
        shape: tuple[int, ...], stride: tuple[int, ...], requires_grad: bool, metadata: dict[str, bool] | None,
    ) -> TensorRecord:
        """torch's ``_rebuild_tensor_v2`` (legacy dtypes) or ``_v3`` (the others, with the dtype)."""
        if dtype.uses_untyped_storage:
            func = G_REBUILD_V3
            tail: tuple[Any, ...] = (Global.of("torch", dtype.name),)
        else:
            func = G_REBUILD_V2
            tail = ()
        if metadata:
            tail += (metadata,)
        return TensorRecord(func, storage_type, key, location, numel, offset, shape, stride, requires_grad, tail)

    def tensor_ref(self, ref: TensorRef) -> Reduction | TensorRecord:
        if ref.quantizer is not None:
            raise UnsavableObjectError(
                "quantized tensors cannot be written by ckpt yet",
                hint="load the file with torch and save it with torch.save",
            )
        if ref.subclass:
            raise UnsavableObjectError(
                f"a tensor of subclass {ref.subclass} cannot be read by torch.load(weights_only=True)",
                hint="save it as a plain tensor",
            )
        inner_grad = False if ref.is_parameter else ref.requires_grad
        inner: Reduction | TensorRecord
        if ref.storage is None:
            inner = Reduction(G_META, (Global.of("torch", ref.dtype.name), (*ref.shape,), (*ref.stride,), inner_grad))
        else:
            metadata = None
            if ref.metadata:  # as torch._C._get_tensor_metadata makes it: new strings, neg first
                metadata = {_fresh(k): True for k in ("neg", "conj") if ref.metadata.get(k)}
            inner = self._record(*self.ref_storage(ref.storage, ref.dtype), ref.dtype, ref.offset, ref.shape,
                                 ref.stride, inner_grad, metadata)
        attrs = ref.attrs
        if ref.is_parameter:
            if attrs:
                return Reduction(G_PARAMETER_STATE, (inner, ref.requires_grad, OrderedDict(), dict(attrs)))
            return Reduction(G_PARAMETER, (inner, ref.requires_grad, OrderedDict()))
        if attrs:
            if type(inner) is TensorRecord:
                args = (PersistentId((_STORAGE, inner.storage_type, inner.key, inner.location, inner.numel)),
                        inner.offset, (*inner.size,), (*inner.stride,), inner.requires_grad, OrderedDict(), *inner.tail)
                return Reduction(G_FROM_TYPE, (inner.func, G_TENSOR, args, dict(attrs)))
            return Reduction(G_FROM_TYPE, (inner.func, G_TENSOR, inner.args, dict(attrs)))
        return inner

    def ref_storage(self, ref: StorageRef, dtype: _dt.DType) -> tuple[Global, str, str, int]:
        """``(storage type, key, location, numel)`` of a storage of an opened checkpoint viewed as
        ``dtype``, as torch views a tensor's storage: typed for the legacy dtypes, untyped bytes
        for the others."""
        # torch.load does not share a storage without data between the tensors that view it, so
        # torch.save of what it loads writes one empty record per view: so does ckpt.
        k = ("ref", id(ref)) if ref.nbytes else ("empty", len(self.keys))
        key = self.keys.get(k)
        if key is None:
            key = self.keys[k] = str(len(self.keys))
            self.keep.append(ref)
            self.sources[key] = _RefSource(ref, self.byteorder)
        untyped = dtype.uses_untyped_storage
        if ref.nbytes:
            as_dtype = _dt.UINT8 if untyped else dtype
            seen = self.storage_dtypes.setdefault(k, as_dtype)
            if seen is not as_dtype:
                raise UnsavableObjectError(
                    "Cannot save multiple tensors or storages that view the same data as different types "
                    f"({seen.name} and {as_dtype.name}, storage {ref.key!r})"
                )
        location = self.location(ref) if self.location is not None else ref.location
        tag = _LITERAL_TAGS.get(location) or _fresh(location)
        if untyped:
            return G_UNTYPED, key, tag, ref.nbytes
        return Global.of("torch", dtype.storage_class or ""), key, tag, ref.nbytes // dtype.itemsize

    def ref_storage_pid(self, ref: StorageRef) -> PersistentId:
        """A bare storage of an opened checkpoint (torch reads every storage back typed)."""
        return PersistentId((_STORAGE, *self.ref_storage(ref, ref.dtype)))

    def ndarray(self, arr: Any) -> TensorRecord:
        np = self.np
        assert np is not None
        row = _numpy_dtype_row(arr.dtype)
        if row is None:
            raise UnsavableObjectError(
                f"a numpy array of dtype {arr.dtype} has no torch equivalent",
                hint="torch stores bool, int8-64, uint8-64, float16/32/64 and complex64/128",
            )
        item = arr.dtype.itemsize
        if not arr.dtype.isnative:
            arr = arr.astype(arr.dtype.newbyteorder("="))
        if any(s < 0 or s % item for s in arr.strides):
            arr = np.ascontiguousarray(arr)
        k = ("ndarray", id(arr))
        key = self.keys.get(k)
        if key is None:
            key = self.keys[k] = str(len(self.keys))
            self.keep.append(arr)
            extent = 0 if arr.size == 0 else item + sum((n - 1) * s for n, s in zip(arr.shape, arr.strides))
            self.sources[key] = _MemorySource(lambda a=arr, n=extent: _array_span(a, n), extent)
        else:
            extent = self.sources[key].nbytes
        stride = tuple(s // item for s in arr.strides)
        if row.uses_untyped_storage:
            return self._record(G_UNTYPED, key, "cpu", extent, row, 0, arr.shape, stride, False, None)
        cls = Global.of("torch", row.storage_class or "")
        return self._record(cls, key, "cpu", extent // item, row, 0, arr.shape, stride, False, None)

    def torch_tensor(self, t: Any) -> Any:
        torch = self.torch
        assert torch is not None
        if (
            type(t) is not torch.Tensor or t.__dict__ or t.layout != torch.strided or t.is_quantized
            or t.is_nested or t.device.type not in ("cpu", "cuda", "mps", "hpu", "xpu")
        ):
            return self.generic(t)
        storage = t.untyped_storage()
        row = _TORCH_DTYPE_ROWS.get(t.dtype)
        if row is None:
            row = _TORCH_DTYPE_ROWS[t.dtype] = _dt.DTYPES[str(t.dtype).split(".", 1)[1]]
        metadata = torch._utils.get_tensor_metadata(t) if t.is_conj() or t.is_neg() else None
        return self._record(*self.torch_storage(storage, row, t.dtype), row, t.storage_offset(), tuple(t.size()),
                            t.stride(), t.requires_grad, metadata)

    def torch_storage(self, storage: Any, row: _dt.DType, torch_dtype: Any) -> tuple[Global, str, str, int]:
        """``(storage type, key, location, numel)`` of a tensor's (untyped) storage, as torch's
        ``persistent_id`` gives them for the storage torch's ``__reduce_ex__`` passes."""
        if row.uses_untyped_storage:
            return self._torch_pid(storage, self.torch.uint8, G_UNTYPED, storage.nbytes())  # type: ignore[union-attr]
        return self._torch_pid(storage, torch_dtype, Global.of("torch", row.storage_class or ""),
                               storage.nbytes() // row.itemsize)

    def torch_storage_pid(self, obj: Any) -> PersistentId:
        """torch's ``persistent_id`` (serialization.py ``_save``) for a bare storage."""
        torch = self.torch
        assert torch is not None
        if isinstance(obj, torch.storage.TypedStorage):
            parts = self._torch_pid(obj._untyped_storage, obj.dtype, Global.of("torch", obj._pickle_storage_type()),
                                    obj._size())
        else:
            parts = self._torch_pid(obj, torch.uint8, G_UNTYPED, obj.nbytes())
        return PersistentId((_STORAGE, *parts))

    def _torch_pid(self, storage: Any, torch_dtype: Any, storage_type: Global, numel: int) -> tuple[Global, str, str, int]:
        device = storage.device
        if device.type != "meta" and storage.data_ptr() != 0:
            seen = self.storage_dtypes.setdefault(("ptr", storage.data_ptr()), torch_dtype)
            if seen != torch_dtype:
                raise UnsavableObjectError(
                    "Cannot save multiple tensors or storages that view the same data as different types"
                )
        k = ("torch", storage._cdata)
        key = self.keys.get(k)
        if key is None:
            key = self.keys[k] = str(len(self.keys))
            self.keep.append(storage)
            self.sources[key] = _torch_source(storage)
        # torch's tagger for the CPU returns its literal "cpu"; other tags may be built per call
        location = "cpu" if device.type == "cpu" else self.torch.serialization.location_tag(storage)  # type: ignore[union-attr]
        return storage_type, key, location, numel


_TORCH_DTYPE_ROWS: dict[Any, _dt.DType] = {}


def _torch_source(storage: Any) -> _Source:
    def view() -> memoryview:
        import torch

        cpu = storage if storage.device.type == "cpu" else storage.cpu()
        if cpu.nbytes() <= _SMALL_COPY:  # a copy is cheaper than a tensor and a numpy view
            import ctypes

            return memoryview(ctypes.string_at(cpu.data_ptr(), cpu.nbytes()))
        return memoryview(torch.empty(0, dtype=torch.uint8).set_(cpu).numpy()).cast("B")

    return _MemorySource(view, storage.nbytes())


_SMALL_COPY = 1 << 16


def _array_span(arr: Any, nbytes: int) -> memoryview:
    """The ``nbytes`` of memory from ``arr``'s first element (what torch.from_numpy's storage holds)."""
    import numpy as np

    iface = dict(arr.__array_interface__)
    iface.update(shape=(nbytes,), strides=None, typestr="|u1", descr=[("", "|u1")])

    class _Span:
        __array_interface__ = iface
        base = arr

    return memoryview(np.asarray(_Span())).cast("B")


_NUMPY_ROWS: dict[str, _dt.DType] | None = None


def _numpy_dtype_row(dtype: Any) -> _dt.DType | None:
    global _NUMPY_ROWS
    if _NUMPY_ROWS is None:
        import numpy as np

        _NUMPY_ROWS = {np.dtype(r.numpy).str: r for r in _dt.DTYPES.values() if r.numpy}
    native = dtype.newbyteorder("=") if not dtype.isnative else dtype
    return _NUMPY_ROWS.get(native.str)


# -- writing ----------------------------------------------------------------------------------------


def progress_steps(total: int, progress: Progress | None) -> Callable[[int], None]:
    """``step(n)``: add ``n`` bytes to a running count and report ``progress(done, total)``.

    >>> seen = []; step = progress_steps(10, lambda d, t: seen.append(d)); step(4); step(6); seen
    [4, 10]
    """
    done = 0

    def step(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress(done, total)

    return step


def write_archive(
    saver: _Saver, pickle_bytes: bytes, writer: TorchZipWriter, progress: Progress | None = None,
) -> int:
    """Write the records torch.save writes, in its order; returns the archive size."""
    writer.write_record("data.pkl", pickle_bytes)
    writer.write_record(".format_version", FORMAT_VERSION)
    writer.write_record(".storage_alignment", str(writer.alignment).encode("ascii"))
    writer.write_record("byteorder", saver.byteorder.encode("ascii"))
    total = sum(s.nbytes for s in saver.sources.values())
    step = progress_steps(total, progress)
    if progress is not None:
        progress(0, total)
    if writer.sink.fd is not None and any(type(s) is _RefSource and s.copied_without_crc() for s in saver.sources.values()):
        writer.sink.eager_copies = True  # copy each record, computing its CRC, while later ones are laid out
    try:
        for key, source in saver.sources.items():
            writer.begin(f"data/{key}", source.nbytes, source_offset=_copied_from(source) if writer.keep_page_phase else None)
            source.write_to(writer, step)
            writer.end()
    except BaseException:
        if writer.sink.eager_copies:
            try:
                writer.sink.run_copies(None)  # let started copies end before the file is removed
            except Exception:
                pass
        raise
    writer.sink.run_copies(step)  # the storages copied file to file (progress is reported as they land)
    return writer.finish()


def _copied_from(source: _Source) -> int | None:
    """The file offset a storage will be copied from as it is (None if it is written otherwise)."""
    if type(source) is not _RefSource:
        return None
    raw = source.copied_as_is()
    return None if raw is None else raw[1]


def save(obj: Any, f: PathLike | IO[bytes], *, fsync: bool = True, progress: Progress | None = None) -> None:
    """Write ``obj`` in torch's zip format: the bytes ``torch.save(obj, f)`` writes.

    ``f`` is a path (written atomically: see the module docs) or a binary file object (written
    in place, archive folder ``archive`` as torch names it). ``fsync=False`` skips the fsync
    before the rename (faster; the rename is still atomic, but a power cut may lose the new
    file). ``progress(done, total)`` is called as tensor bytes are written.

    Raises :class:`~ckpt.errors.UnsavableObjectError` for anything ``torch.load(weights_only=True)``
    could not read back, before anything is written.

    >>> ckpt.save({"step": 3, "w": ck.root["w"]}, "small.pt")      # doctest: +SKIP
    """
    saver = _Saver()
    pickle_bytes = saver.dumps(obj)
    if hasattr(f, "write") and not isinstance(f, (str, os.PathLike)):
        writer = TorchZipWriter(ZipSink.for_file(f), "archive", alignment=ALIGNMENT)  # type: ignore[arg-type]
        write_archive(saver, pickle_bytes, writer, progress)
        return
    path = os.fspath(f)  # type: ignore[arg-type]
    if not isinstance(path, str):
        raise TypeError("ckpt.save takes a str or os.PathLike path, or a binary file object")
    save_to_path(saver, pickle_bytes, path, fsync=fsync, progress=progress)


def save_to_path(saver: _Saver, pickle_bytes: bytes, path: str, *, fsync: bool = True,
                 progress: Progress | None = None, keep_page_phase: bool = False) -> int:
    """Write what ``saver`` planned to ``path`` atomically (see :func:`save`); returns the size.
    ``keep_page_phase``: records copied from files keep their offset within a page (faster kernel
    copies, more padding than torch writes; see :class:`~ckpt.zipwrite.TorchZipWriter`)."""
    with output_file(path, fsync=fsync) as sink:
        return write_archive(saver, pickle_bytes,
                             TorchZipWriter(sink, archive_name_for(path), keep_page_phase=keep_page_phase), progress)


_WRITEBACK_EVERY = 32 << 20
_SYNC_FILE_RANGE_WRITE = 2


def _sync_file_range() -> Any:
    """Linux's ``sync_file_range`` (not in the ``os`` module), or None."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


class _Writeback:
    """Starts writing a file's data back to disk while more is being written, so that the fsync
    before the rename finds little left to do: a big save then costs about the slower of writing
    and flushing, not their sum. Every 32 MB: ``sync_file_range(SYNC_FILE_RANGE_WRITE)`` on Linux
    (starts the writeback and returns); elsewhere, ``fdatasync`` in a thread."""

    _kick: Any = False  # resolved once: the libc function, or None

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.pending = 0
        self.thread: threading.Thread | None = None
        if _Writeback._kick is False:
            _Writeback._kick = _sync_file_range()

    def __call__(self, nbytes: int) -> None:
        self.pending += nbytes
        if self.pending < _WRITEBACK_EVERY:
            return
        self.pending = 0
        kick = _Writeback._kick
        if kick is not None and kick(self.fd, 0, 0, _SYNC_FILE_RANGE_WRITE) == 0:
            return
        if self.thread is not None and self.thread.is_alive():
            return
        self.thread = threading.Thread(target=self._sync, name="ckpt-writeback", daemon=True)
        self.thread.start()

    def _sync(self) -> None:
        try:
            os.fdatasync(self.fd)
        except OSError:  # the final fsync reports real failures
            pass


@contextmanager
def output_file(path: str, *, fsync: bool = True) -> Iterator[ZipSink]:
    """:func:`atomic_output` as a :class:`~ckpt.zipwrite.ZipSink`, with background writeback when
    the file will be fsynced (the writeback thread is done before the file is synced and closed)."""
    with atomic_output(path, fsync=fsync) as fd:
        sink = ZipSink.for_fd(fd)
        writeback = _Writeback(fd) if fsync and hasattr(os, "fdatasync") else None
        sink.on_written = writeback
        try:
            yield sink
        finally:
            if writeback is not None and writeback.thread is not None:
                writeback.thread.join()


@contextmanager
def atomic_output(path: str, *, fsync: bool = True) -> Iterator[int]:
    """A file descriptor to write ``path``'s new content to; it replaces ``path`` only when the
    block succeeds. The data goes to a temporary file beside ``path`` (same file system, so the
    rename is atomic), which is flushed, fsynced and renamed, and removed if anything fails."""
    target = os.path.realpath(path) if os.path.islink(path) else path
    folder = os.path.dirname(target) or "."
    if not os.path.isdir(folder):
        raise CheckpointError(f"cannot write here: folder {folder!r} does not exist", path=path)
    mode = None
    try:
        st = os.stat(target)
    except FileNotFoundError:
        pass
    except OSError as e:
        raise CheckpointError(f"cannot write here ({e.strerror})", path=path) from None
    else:
        if not stat.S_ISREG(st.st_mode):
            raise CheckpointError("the destination exists and is not a regular file", path=path)
        mode = stat.S_IMODE(st.st_mode)
    base = os.path.basename(target)[:200]
    fd = -1
    tmp = ""
    for _ in range(100):
        tmp = os.path.join(folder, f".{base}.{os.urandom(6).hex()}.tmp")
        try:
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)  # read: zipwrite._run_aligned_copies
            break
        except FileExistsError:
            continue
        except OSError as e:
            raise CheckpointError(f"cannot create a file in {folder!r} ({e.strerror})", path=path) from None
    else:  # pragma: no cover
        raise CheckpointError("cannot find a free temporary file name", path=path)
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        yield fd
        if fsync:
            os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, target)
        tmp = ""
        if fsync:
            _fsync_folder(folder)
    except OSError as e:
        raise CheckpointError(
            f"writing failed ({e.strerror or e}); the destination was left as it was", path=path
        ) from e
    finally:
        if fd >= 0:
            os.close(fd)
        if tmp:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def _fsync_folder(folder: str) -> None:
    try:
        dfd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms that cannot open folders
        return
    try:
        os.fsync(dfd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(dfd)
