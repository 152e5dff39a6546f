"""Build real torch objects from a checkpoint, as ``torch.load(weights_only=True)`` would.

Imported only by :func:`ckpt.load` with the torch flavour; this is the one module of the library
that imports torch, and it does so when a builder is made, never at import time of ``ckpt``.
Storages are read (or mapped) when the pickle first refers to them, moved by ``map_location``
exactly as torch moves them, and shared by every tensor that views them.
"""

from __future__ import annotations

import os
from typing import Any

from .dtypes import DType
from .errors import CorruptCheckpointError, UnsupportedFeatureError
from .limits import DEFAULT_LIMITS, Limits
from .pickle_vm import Trusted
from .rebuild import COMPRESSED_LAYOUTS, Builder, check_nested_components
from .tensors import StorageRef, TensorRef, contiguous_strides
from .reader import Reader
from .values import Device


_SMALL = 1 << 20


def _torch() -> Any:
    try:
        import torch
    except ImportError:  # pragma: no cover - exercised in the no-torch test environment
        from .errors import CheckpointError

        raise CheckpointError(
            "loading as torch tensors needs torch; install ckpt[torch], or use ckpt.load(..., as_='numpy')"
        ) from None
    return torch


def restore_location(map_location: Any) -> Any:
    """A ``(storage, tag) -> storage`` function with the semantics of torch's ``map_location``."""
    torch = _torch()
    default = torch.serialization.default_restore_location
    if map_location is None:
        return default
    if isinstance(map_location, dict):
        return lambda storage, tag: default(storage, map_location.get(tag, tag))
    if isinstance(map_location, (str, bytes)):
        target = map_location.decode() if isinstance(map_location, bytes) else map_location
        return lambda storage, tag: default(storage, target)
    if isinstance(map_location, torch.device):
        target = str(map_location)
        return lambda storage, tag: default(storage, target)
    if callable(map_location):
        def call(storage: Any, tag: str) -> Any:
            result = map_location(storage, tag)
            return default(storage, tag) if result is None else result

        return call
    raise TypeError(f"map_location must be None, a str, a torch.device, a dict or a callable, not {type(map_location).__name__}")


def is_meta_location(map_location: Any) -> bool:
    torch = _torch()
    if isinstance(map_location, str):
        return map_location == "meta"
    return isinstance(map_location, torch.device) and map_location.type == "meta"


class StorageHandle:
    """A loaded storage while the pickle runs: its torch ``UntypedStorage``, what the file said
    about it, and its device. Cheaper than the ``TypedStorage`` torch makes for every storage;
    only a storage the file stores bare (not inside a tensor) needs that, see
    :func:`holds_storage_handle`."""

    __slots__ = ("ust", "ref", "device", "raw", "first")

    def __init__(self, ust: Any, ref: StorageRef, device: Any, raw: bytearray | None = None) -> None:
        self.ust = ust  # None while the bytes wait in ``raw`` (see TorchBuilder._ust)
        self.ref = ref
        self.device = device
        self.raw = raw
        self.first: Any = None  # the tensor made straight from ``raw``, whose storage is this one


def holds_storage_handle(root: Any) -> bool:
    """Whether a loaded object still holds a :class:`StorageHandle` anywhere (a bare storage, which
    torch returns as a ``TypedStorage``): then load again with ``typed_storages=True``. Visits
    every container once; tensors' Python attributes included."""
    from .walk import children, is_container

    seen: set[int] = set()
    todo = [root]
    while todo:
        obj = todo.pop()
        t = type(obj)
        if t is StorageHandle:
            return True
        if is_container(obj):
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            todo.extend(v for _, v in children(obj))
            if isinstance(obj, dict) and obj.__class__ is not dict:
                todo.extend(getattr(obj, "__dict__", {}).values())
        elif getattr(obj, "__dict__", None):
            if id(obj) not in seen:
                seen.add(id(obj))
                todo.extend(obj.__dict__.values())
    return False


class TorchBuilder(Builder):
    """Makes torch tensors, parameters, dtypes, devices and sizes while the pickle runs."""

    flavor = "torch"

    def __init__(
        self,
        reader: Reader,
        *,
        map_location: Any = None,
        mmap: bool = False,
        mode: str = "strict",
        limits: Limits = DEFAULT_LIMITS,
        typed_storages: bool = False,
    ) -> None:
        self.torch = _torch()
        self.typed_storages = typed_storages
        super().__init__(mode=mode, limits=limits)
        self._settings = {"map_location": map_location, "mmap": mmap, "mode": mode, "limits": limits,
                          "typed_storages": typed_storages}
        self.reader = reader
        self.restore = restore_location(map_location)
        self.meta = is_meta_location(map_location)
        self.byteswap = reader.needs_byteswap
        self._cpu = self.torch.device("cpu")
        # Small CPU storages may wait as bytes when placing them on the CPU changes nothing.
        self.defer = not mmap and not self.meta and (
            map_location is None or (str(map_location) == "cpu" and not isinstance(map_location, dict))
        )
        self._loaded: dict[str, Any] = {}
        self._protos: dict[tuple[Any, Any], Any] = {}  # an empty tensor per (dtype, device) to make views from
        self._typed: dict[int, tuple[Any, StorageHandle]] = {}  # id(TypedStorage) -> (it, its handle)
        self._overall = None
        if mmap and not self.meta and reader.fileno() is not None:
            path = reader.path
            self._overall = self.torch.UntypedStorage.from_file(os.fspath(path), False, os.path.getsize(path))

    def for_reader(self, reader: Reader) -> TorchBuilder:
        """A builder with the same settings for another file (a shard of a sharded checkpoint)."""
        return TorchBuilder(reader, **self._settings)

    # -- storages --------------------------------------------------------------------------

    def finish_storage(self, ref: StorageRef) -> Any:
        """A :class:`StorageHandle` (cheap), or with ``typed_storages`` the ``TypedStorage`` torch
        itself returns for a bare storage (see :func:`holds_storage_handle`)."""
        handle = self._loaded.get(ref.key)
        if handle is None:
            raw = self._read_deferred(ref) if self.defer else None
            if raw is not None:
                handle = StorageHandle(None, ref, self._cpu, raw)
                self._loaded[ref.key] = handle
            else:
                ust = self._load_storage(ref)
                handle = StorageHandle(ust, ref, ust.device)
                # torch's own rule: a storage without data (empty, or on meta) is not shared between
                # tensors, while an empty mmap slice (a real pointer) is
                if ust.data_ptr() != 0:
                    self._loaded[ref.key] = handle
        if self.typed_storages:
            typed = self.torch.storage.TypedStorage(
                wrap_storage=self._ust(handle), dtype=getattr(self.torch, ref.dtype.name), _internal=True
            )
            self._typed[id(typed)] = (typed, handle)
            return typed
        return handle

    def storage_ref(self, obj: Any) -> StorageRef:
        return self._handle(obj).ref

    def _handle(self, obj: Any) -> StorageHandle:
        if type(obj) is StorageHandle:
            return obj
        entry = self._typed.get(id(obj))
        if entry is None or entry[0] is not obj:
            raise CorruptCheckpointError(f"a tensor's storage argument is a {type(obj).__name__}, not a storage")
        return entry[1]

    def _read_deferred(self, ref: StorageRef) -> bytearray | None:
        """The bytes of a small, non-empty CPU storage that needs no byteswap or move, kept as Python
        memory so the first tensor over all of it is made in one step (``torch.frombuffer``);
        None for every other storage."""
        if not 0 < ref.nbytes < _SMALL or ref.location != "cpu" or (self.byteswap and ref.dtype.itemsize > 1):
            return None
        data = self.reader.read_small(ref)
        if data is None:
            return None
        return bytearray(data)

    def _ust(self, handle: StorageHandle) -> Any:
        """The handle's UntypedStorage, made from its pending bytes if needed."""
        ust = handle.ust
        if ust is None:
            if handle.first is not None:
                ust = handle.first.untyped_storage()
            else:
                ust = self.torch.frombuffer(handle.raw, dtype=self.torch.uint8).untyped_storage()
            handle.ust = ust
            handle.raw = None
        return ust

    def _load_storage(self, ref: StorageRef) -> Any:
        torch = self.torch
        dtype = getattr(torch, ref.dtype.name)
        view = self.reader.storage_base(ref)
        if view is not None:  # a slice of another storage (legacy storage views): share its memory
            base, offset = view
            return self._ust(self._handle(self.finish_storage(base)))[offset : offset + ref.nbytes]
        if self.meta:
            ust = torch.UntypedStorage(ref.nbytes, device="meta")
        else:
            offset = self.reader.data_offset(ref) if self._overall is not None else None
            if offset is not None:
                ust = self._overall[offset : offset + ref.nbytes]
            elif ref.nbytes < _SMALL:
                # Python-owned memory: cheaper to make than a torch tensor for small storages.
                data = self.reader.read_small(ref)
                if data is not None:
                    raw = bytearray(data)
                else:
                    raw = bytearray(ref.nbytes)
                    self.reader.readinto(ref, memoryview(raw))
                if raw:
                    ust = torch.frombuffer(raw, dtype=torch.uint8).untyped_storage()
                else:
                    ust = torch.UntypedStorage(0)
            else:
                buf = torch.empty(ref.nbytes, dtype=torch.uint8)
                self.reader.readinto(ref, memoryview(buf.numpy()))
                ust = buf.untyped_storage()
            if self.byteswap and ref.dtype.itemsize > 1:
                ust.byteswap(dtype)
            ust = self.restore(ust, ref.location)
        return ust

    # -- tensors ---------------------------------------------------------------------------

    def finish_tensor(self, ref: TensorRef, storage: Any = None) -> Any:
        torch = self.torch
        try:
            if ref.storage is None:
                dtype = getattr(torch, ref.dtype.name)
                t = torch.empty_strided(ref.shape, ref.stride, dtype=dtype, device="meta")
            else:
                handle = storage if type(storage) is StorageHandle else self._handle(storage)
                if handle.raw is not None and handle.first is None and ref.offset == 0:
                    t = self._whole(handle, ref)
                    if t is not None:
                        return self._finish(t, ref)
                ust = self._ust(handle)
                device = handle.device
                proto = self._protos.get((ref.dtype, device))
                if proto is None:
                    dtype = getattr(torch, ref.dtype.name)
                    proto = self._protos[(ref.dtype, device)] = torch.empty((0,), dtype=dtype, device=device)
                t = proto.new().set_(ust, ref.offset, ref.shape, ref.stride)
        except (RuntimeError, OverflowError) as e:  # e.g. "numel: integer multiplication overflow"
            raise CorruptCheckpointError(
                f"torch cannot make the tensor view {ref.dtype.name}{list(ref.shape)} ({e})",
                record=ref.storage.record if ref.storage is not None else None,
            ) from None
        return self._finish(t, ref)

    def _whole(self, handle: StorageHandle, ref: TensorRef) -> Any:
        """A contiguous tensor over all of a pending storage, in one step; None if the view is not that."""
        raw = handle.raw
        shape = ref.shape
        n = 1
        for s in shape:
            n *= s
        if n * ref.dtype.itemsize != len(raw) or ref.stride != contiguous_strides(shape):
            return None
        t = self.torch.frombuffer(raw, dtype=getattr(self.torch, ref.dtype.name))
        if len(shape) != 1:
            t = t.view(shape)
        handle.first = t
        return t

    def _finish(self, t: Any, ref: TensorRef) -> Any:
        if ref.requires_grad:
            try:
                t.requires_grad = True
            except RuntimeError as e:
                raise CorruptCheckpointError(f"tensor cannot require gradients ({e})") from None
        if ref._extra is not None and ref.metadata:
            self.torch._C._set_tensor_metadata(t, ref.metadata)
        return self.remember(t, ref)

    def parameter(self, ref: TensorRef, data: Any, requires_grad: bool) -> Any:
        try:
            p = self.torch.nn.Parameter(data, requires_grad)
        except RuntimeError as e:
            raise CorruptCheckpointError(f"cannot make a parameter ({e})") from None
        return self.remember(p, ref)

    def set_attrs(self, obj: Any, ref: TensorRef, attrs: dict[str, Any]) -> Any:
        for key, value in attrs.items():
            try:
                setattr(obj, key, value)
            except (AttributeError, TypeError, RuntimeError) as e:
                raise CorruptCheckpointError(f"cannot restore tensor attribute {key!r} ({e})") from None
        return obj

    def set_plain_attrs(self, obj: Any, attrs: dict[str, Any]) -> Any:
        return self.set_attrs(obj, None, attrs)  # type: ignore[arg-type]

    def as_subclass(self, obj: Any, new_type: Any) -> Any:
        if type(new_type) is Trusted:
            return self.remember(obj.as_subclass(new_type.obj), self.tensor_ref(obj))
        return super().as_subclass(obj, new_type)

    # -- sparse, quantized and nested tensors ------------------------------------------------

    def sparse_tensor(
        self, layout: str, parts: dict[str, Any], refs: dict[str, TensorRef], size: tuple[int, ...],
        coalesced: bool | None,
    ) -> Any:
        """The sparse tensor torch's loader makes, after the invariant checks torch skips by
        default (every index in range, compressed indices sorted): a bad index is an error here,
        not a crash later."""
        torch = self.torch
        layout_obj = getattr(torch, layout.split(".", 1)[1])
        values = parts["values"]
        check = values.device.type != "meta"
        try:
            if layout == "torch.sparse_coo":
                if check:
                    torch._validate_sparse_coo_tensor_args(
                        parts["indices"], values, size, coalesced, check_pinning=False
                    )
                t = torch.sparse_coo_tensor(
                    parts["indices"], values, size, check_invariants=False, is_coalesced=coalesced
                )
            else:
                first, second = COMPRESSED_LAYOUTS[layout][:2]
                if check:
                    torch._validate_sparse_compressed_tensor_args(
                        parts[first], parts[second], values, size, layout_obj, check_pinning=False
                    )
                t = torch.sparse_compressed_tensor(
                    parts[first], parts[second], values, size, layout=layout_obj, check_invariants=False
                )
        except RuntimeError as e:
            raise CorruptCheckpointError(f"invalid {layout} tensor ({str(e).splitlines()[0]})") from None
        return t

    def quantized_tensor(self, storage: Any, ref: TensorRef, quantizer: dict[str, Any]) -> Any:
        """The quantized tensor torch's ``_rebuild_qtensor`` makes (its checks were done already)."""
        torch = self.torch
        dtype = getattr(torch, ref.dtype.name)
        handle = self._handle(storage)
        self._ust(handle)
        device = handle.device
        if device.type == "meta":
            raise UnsupportedFeatureError("quantized tensors cannot be made on the meta device (torch cannot either)")
        try:
            if "scale" in quantizer:
                t = torch._empty_affine_quantized(
                    ref.shape, scale=quantizer["scale"], zero_point=quantizer["zero_point"], dtype=dtype, device=device
                )
            else:
                scales, zero_points = quantizer["scales"], quantizer["zero_points"]
                if type(scales) is list and type(zero_points) is list:
                    floating = quantizer["qscheme"] == "torch.per_channel_affine_float_qparams"
                    scales = torch.tensor(scales, dtype=torch.float if floating else torch.double, device=device)
                    zero_points = torch.tensor(
                        zero_points, dtype=torch.float if floating else torch.long, device=device
                    )
                t = torch._empty_per_channel_affine_quantized(
                    ref.shape, scales=scales, zero_points=zero_points, axis=quantizer["axis"], dtype=dtype,
                    device=device,
                )
            t.set_(handle.ust, ref.offset, ref.shape, ref.stride)
        except (RuntimeError, TypeError) as e:
            raise CorruptCheckpointError(f"invalid quantized tensor ({str(e).splitlines()[0]})") from None
        return self.remember(t, ref)

    def nested_tensor(self, parts: dict[str, Any], refs: dict[str, TensorRef]) -> Any:
        """The nested tensor torch makes, after checking every component lies inside the buffer
        (torch's ``_nested_view_from_buffer`` trusts the file)."""
        torch = self.torch
        buffer = parts["buffer"]
        if buffer.device.type != "meta":
            check_nested_components(
                parts["sizes"].tolist(), parts["strides"].tolist(), parts["offsets"].tolist(), buffer.numel()
            )
        try:
            return torch._nested_view_from_buffer(buffer, parts["sizes"], parts["strides"], parts["offsets"])
        except RuntimeError as e:
            raise CorruptCheckpointError(f"invalid nested tensor ({str(e).splitlines()[0]})") from None

    # -- values ----------------------------------------------------------------------------

    def dtype_value(self, row: DType) -> Any:
        return getattr(self.torch, row.name)

    def size_value(self, dims: tuple[int, ...]) -> Any:
        return self.torch.Size(dims)

    def device_value(self, dev: Device) -> Any:
        try:
            return self.torch.device(dev.type, dev.index) if dev.index is not None else self.torch.device(dev.type)
        except RuntimeError as e:
            raise CorruptCheckpointError(f"unknown device {dev} ({e})") from None

    def constant(self, kind: str, name: str) -> Any:
        return getattr(self.torch, name.split(".", 1)[1])

