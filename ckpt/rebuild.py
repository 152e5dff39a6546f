"""The constructors ckpt owns: what each allowlisted global becomes, and the builder that makes it.

:class:`Builder` maps every global ckpt accepts by default (``module.name``, exactly; no prefix
matching, no dotted-name walking) to an :class:`~ckpt.pickle_vm.Op` or a value. The base builder
makes lazy values (:class:`~ckpt.tensors.TensorRef` for tensors, ckpt's own dtype/device/size
values); subclasses turn them into torch or numpy objects at the same points torch does, so one
pass over the pickle gives the final object and keeps sharing and cycles exactly as the file has
them.

>>> b = Builder()
>>> sorted(n for n in b.table if n.startswith("collections."))
['collections.Counter', 'collections.OrderedDict']
"""

from __future__ import annotations

import _compat_pickle
from collections import Counter, OrderedDict
from typing import Any

from . import dtypes as _dt
from .errors import CorruptCheckpointError, UnsupportedFeatureError
from .limits import DEFAULT_LIMITS, Limits
from .pickle_vm import Op, check_hashable
from .tensors import StorageRef, StorageType, TensorRef, make_view
from .values import Device, GlobalRef, InertObject, Size, TorchConstant, brief_repr

LAYOUTS = (
    "torch.strided", "torch.sparse_coo", "torch.sparse_csr", "torch.sparse_csc",
    "torch.sparse_bsr", "torch.sparse_bsc", "torch._mkldnn", "torch.jagged",
)
QSCHEMES = (
    "per_tensor_affine", "per_tensor_symmetric", "per_channel_affine", "per_channel_symmetric",
    "per_channel_affine_float_qparams",
)
# Tensor kinds torch's weights_only loader rebuilds that ckpt does not rebuild yet.
UNSUPPORTED_REBUILDS = {
    "torch._utils._rebuild_qtensor": "quantized tensors",
    "torch._utils._rebuild_sparse_tensor": "sparse tensors",
    "torch._utils._rebuild_nested_tensor": "nested tensors",
    "torch._utils._rebuild_wrapper_subclass": "tensor wrapper subclasses",
    "torch._utils._rebuild_device_tensor_from_numpy": "device tensors saved through numpy",
    "torch._utils._rebuild_device_tensor_from_cpu_tensor": "device tensors saved through a CPU copy",
}
_UNIT_STRIDE = (1,)
_TENSOR_CLASS_NAMES = ("Double", "Float", "Half", "BFloat16", "Long", "Int", "Short", "Char", "Byte", "Bool")
_LATIN1 = {"latin1", "latin-1", "iso-8859-1", "iso8859-1", "l1"}

# Renames torch applies before looking a global up (modules moved since old checkpoints were written).
_TORCH_RENAMES = {"torch.tensor": "torch._tensor"}


def canonical_name(module: str, name: str) -> tuple[str, str]:
    """The Python 3 spelling of a global a (possibly Python 2) pickle names.

    >>> canonical_name("__builtin__", "set")
    ('builtins', 'set')
    """
    if (module, name) in _compat_pickle.NAME_MAPPING:
        module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    elif module in _compat_pickle.IMPORT_MAPPING:
        module = _compat_pickle.IMPORT_MAPPING[module]
    return _TORCH_RENAMES.get(module, module), name


class Builder:
    """Builds the values a checkpoint's pickle asks for, lazily (no tensor bytes read).

    ``mode`` is ``strict`` (unsupported tensor kinds raise) or ``inspect`` (they become inert
    records so the rest of the file can still be shown).
    """

    flavor = "lazy"

    def __init__(self, *, mode: str = "strict", limits: Limits = DEFAULT_LIMITS) -> None:
        self.mode = mode
        self.limits = limits
        self._made: dict[int, tuple[Any, Any]] = {}
        self.table: dict[str, Any] = self._make_table()

    # -- the allowlist -----------------------------------------------------------------------

    def _make_table(self) -> dict[str, Any]:
        t: dict[str, Any] = {}

        def op(name: str, fn: Any, **kw: Any) -> None:
            t[name] = Op(name, fn, **kw)

        op("collections.OrderedDict", self.ordered_dict)
        op("collections.Counter", self.counter)
        op("builtins.set", self.make_set)
        op("builtins.complex", self.make_complex)
        op("builtins.bytearray", self.make_bytearray)
        op("_codecs.encode", self.codecs_encode)
        op("torch.Size", self.size)
        op("torch.device", self.device)
        op("torch.serialization._get_layout", self.layout)
        op("torch._utils._rebuild_tensor", self.rebuild_tensor_v1)
        op("torch._utils._rebuild_tensor_v2", self.rebuild_tensor_v2)
        op("torch._utils._rebuild_tensor_v3", self.rebuild_tensor_v3)
        op("torch._utils._rebuild_parameter", self.rebuild_parameter)
        op("torch._utils._rebuild_parameter_with_state", self.rebuild_parameter_with_state)
        op("torch._utils._rebuild_meta_tensor_no_storage", self.rebuild_meta_tensor)
        op("torch._tensor._rebuild_from_type_v2", self.rebuild_from_type_v2)
        op("torch.nn.parameter.Parameter", self._not_callable("torch.nn.parameter.Parameter"),
           newobj=self.parameter_new)
        op("torch.Tensor", self._not_callable("torch.Tensor"))
        for name, feature in UNSUPPORTED_REBUILDS.items():
            op(name, self._unsupported(name, feature))
        for row in _dt.DTYPES.values():
            t[row.torch_name] = self.dtype_value(row)
            if row.storage_class:
                t[f"torch.{row.storage_class}"] = StorageType(row.storage_class, row, untyped=False)
                if row.kind != "quantized":
                    t[f"torch.cuda.{row.storage_class}"] = StorageType(row.storage_class, row, untyped=False)
        t["torch.storage.UntypedStorage"] = StorageType("UntypedStorage", _dt.UINT8, untyped=True)
        for q in QSCHEMES:
            t[f"torch.{q}"] = self.constant("qscheme", f"torch.{q}")
        for prefix in ("torch", "torch.cuda"):
            for cls in _TENSOR_CLASS_NAMES:
                name = f"{prefix}.{cls}Tensor"
                op(name, self._unsupported(name, "legacy tensor-class constructors"))
        return t

    # -- hooks the torch and numpy builders override -----------------------------------------

    def finish_storage(self, ref: StorageRef) -> Any:
        """What a persistent id becomes (called once per reference, cached by the reader)."""
        return ref

    def remember(self, obj: Any, ref: StorageRef | TensorRef) -> Any:
        """Record that flavour object ``obj`` was made from ``ref`` (for :meth:`storage_ref`/:meth:`tensor_ref`)."""
        self._made[id(obj)] = (obj, ref)
        return obj

    def _ref_of(self, obj: Any, kind: type) -> Any:
        if type(obj) is kind:
            return obj
        entry = self._made.get(id(obj))
        if entry is None or entry[0] is not obj or type(entry[1]) is not kind:
            return None
        return entry[1]

    def storage_ref(self, obj: Any) -> StorageRef:
        """The :class:`StorageRef` behind what :meth:`finish_storage` returned."""
        ref = self._ref_of(obj, StorageRef)
        if ref is None:
            raise CorruptCheckpointError(f"a tensor's storage argument is a {type(obj).__name__}, not a storage")
        return ref

    def finish_tensor(self, ref: TensorRef, storage: Any = None) -> Any:
        """What a checked view becomes; ``storage`` is what :meth:`finish_storage` gave for it."""
        return ref

    def tensor_ref(self, obj: Any) -> TensorRef:
        """The :class:`TensorRef` behind a tensor this builder made."""
        ref = self._ref_of(obj, TensorRef)
        if ref is None:
            raise CorruptCheckpointError(f"expected a tensor, got a {type(obj).__name__}")
        return ref

    def dtype_value(self, row: _dt.DType) -> Any:
        return row

    def size_value(self, dims: tuple[int, ...]) -> Any:
        return Size(dims)

    def device_value(self, dev: Device) -> Any:
        return dev

    def constant(self, kind: str, name: str) -> Any:
        return TorchConstant(kind, name)

    def parameter(self, ref: TensorRef, data: Any, requires_grad: bool) -> Any:
        """A parameter made from ``data`` (the flavor's tensor built from ``ref``)."""
        out = _copy_ref(ref)
        out.is_parameter = True
        out.requires_grad = requires_grad
        return out

    def set_attrs(self, obj: Any, ref: TensorRef, attrs: dict[str, Any]) -> Any:
        target = obj if type(obj) is TensorRef else ref
        target.attrs = {**(target.attrs or {}), **attrs}
        return obj

    def as_subclass(self, obj: Any, new_type: Any) -> Any:
        """Re-type a rebuilt tensor as ``new_type`` (``torch.Tensor``, Parameter or an unknown class)."""
        name = _type_name(new_type)
        if name == "torch.Tensor":
            return obj
        ref = self.tensor_ref(obj)
        if name == "torch.nn.parameter.Parameter":
            return self.parameter(ref, obj, ref.requires_grad)
        if type(obj) is not TensorRef:
            return obj  # torch/numpy flavours: an allowed (not trusted) subclass loads as a plain tensor
        out = _copy_ref(ref)
        out.subclass = name
        return out

    # -- generic Python values --------------------------------------------------------------

    def ordered_dict(self, items: Any = ()) -> OrderedDict[Any, Any]:
        out: OrderedDict[Any, Any] = OrderedDict()
        if not items and type(items) in (tuple, list):
            return out
        for k, v in _pairs(items):
            check_hashable(k, self.limits.max_key_nesting)
            out[k] = v
        return out

    def counter(self, items: Any = None) -> Counter[Any]:
        out: Counter[Any] = Counter()
        if items is not None:
            for k, v in _pairs(items):
                check_hashable(k, self.limits.max_key_nesting)
                out[k] = v
        return out

    def make_set(self, items: Any = ()) -> set[Any]:
        if not isinstance(items, (list, tuple, set, frozenset)):
            raise CorruptCheckpointError(f"set() of a {type(items).__name__}")
        for x in items:
            check_hashable(x, self.limits.max_key_nesting)
        return set(items)

    def make_complex(self, real: Any = 0, imag: Any = 0) -> complex:
        if type(real) not in (int, float, bool) or type(imag) not in (int, float, bool):
            raise CorruptCheckpointError("complex() takes two numbers")
        return complex(real, imag)

    def make_bytearray(self, source: Any = b"", encoding: Any = None) -> bytearray:
        if type(source) is bytes and encoding is None:
            return bytearray(source)
        if type(source) is str and type(encoding) is str and encoding.lower() in _LATIN1 | {"utf-8", "ascii"}:
            return bytearray(source, encoding)
        if type(source) is list and all(type(x) is int and 0 <= x < 256 for x in source):
            return bytearray(source)
        raise CorruptCheckpointError("bytearray() takes bytes, or text and an encoding")

    def codecs_encode(self, text: Any, encoding: Any = "utf-8") -> bytes:
        if type(text) is not str or type(encoding) is not str or encoding.lower() not in _LATIN1:
            raise CorruptCheckpointError("_codecs.encode is accepted only as pickle uses it: text, 'latin1'")
        return text.encode("latin-1")

    # -- torch values -------------------------------------------------------------------------

    def size(self, dims: Any = ()) -> Any:
        if not isinstance(dims, (tuple, list)) or any(type(d) is not int for d in dims):
            raise CorruptCheckpointError("torch.Size takes a tuple of ints")
        return self.size_value(tuple(dims))

    def device(self, kind: Any, index: Any = None) -> Any:
        if type(kind) is not str:
            raise CorruptCheckpointError("torch.device takes a device string")
        if index is None and ":" in kind:
            kind, _, idx = kind.partition(":")
            if not idx.isdigit():
                raise CorruptCheckpointError(f"bad device index in {kind}:{idx}")
            index = int(idx)
        if index is not None and (type(index) is not int or index < 0):
            raise CorruptCheckpointError("torch.device index must be a non-negative int")
        if not kind or not kind.replace("_", "").isalnum() or len(kind) > 64:
            raise CorruptCheckpointError(f"{kind!r} is not a device type")
        return self.device_value(Device(kind, index))

    def layout(self, name: Any) -> Any:
        if type(name) is not str or name not in LAYOUTS:
            raise CorruptCheckpointError(f"unknown layout {brief_repr(name)}")
        return self.constant("layout", name)

    # -- tensors ------------------------------------------------------------------------------

    def rebuild_tensor_v1(self, storage: Any, offset: Any, size: Any, stride: Any) -> Any:
        ref = self.storage_ref(storage)
        return self._tensor(storage, ref, ref.dtype, offset, size, stride, False, None)

    def rebuild_tensor_v2(
        self, storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any,
        backward_hooks: Any, metadata: Any = None,
    ) -> Any:
        ref = storage if type(storage) is StorageRef else self.storage_ref(storage)
        dt = ref.dtype
        if metadata is None and dt.storable:
            if (
                stride == _UNIT_STRIDE and type(size) is tuple and len(size) == 1 and type(offset) is int
                and type(requires_grad) is bool and type(size[0]) is int and offset >= 0 and size[0] >= 0
                and (offset + size[0]) * dt.itemsize <= ref.nbytes
            ):  # the common 1-d contiguous view: the same checks as make_view, inline
                t = TensorRef(ref, dt, size, _UNIT_STRIDE, offset, requires_grad)
                return self.finish_tensor(t, storage)
            return self.finish_tensor(make_view(ref, dt, offset, size, stride, requires_grad), storage)
        return self._tensor(storage, ref, dt, offset, size, stride, requires_grad, metadata)

    def rebuild_tensor_v3(
        self, storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any,
        backward_hooks: Any, dtype: Any, metadata: Any = None,
    ) -> Any:
        ref = self.storage_ref(storage)
        row = self._dtype_row(dtype)
        return self._tensor(storage, ref, row, offset, size, stride, requires_grad, metadata)

    def _dtype_row(self, value: Any) -> _dt.DType:
        if isinstance(value, _dt.DType):
            return value
        t = type(value)
        # a torch.dtype (what the torch builder makes of GLOBAL torch.<dtype>) or a name; never str()
        # an arbitrary value from the file (a shared or deep container makes str() explode)
        name = str(value) if t.__module__ == "torch" and t.__name__ == "dtype" else value
        if type(name) is not str:
            raise CorruptCheckpointError(f"a {t.__name__} is not a dtype")
        try:
            return _dt.dtype(name)
        except KeyError:
            raise CorruptCheckpointError(f"{brief_repr(name)} is not a dtype") from None

    def _tensor(
        self, storage: Any, ref: StorageRef, dtype: _dt.DType, offset: Any, size: Any, stride: Any,
        requires_grad: Any, metadata: Any,
    ) -> Any:
        if not dtype.storable:
            raise CorruptCheckpointError(f"dtype {dtype.name} cannot hold data")
        if isinstance(size, Size) or type(size).__name__ == "Size":
            size = tuple(size)
        t = make_view(ref, dtype, offset, size, stride, requires_grad)
        if metadata:
            if type(metadata) is not dict or not set(metadata) <= {"conj", "neg"}:
                raise CorruptCheckpointError("tensor metadata may only set the conj and neg bits")
            t.metadata = {k: bool(v) for k, v in metadata.items()}
        return self.finish_tensor(t, storage)

    def rebuild_parameter(self, data: Any, requires_grad: Any, backward_hooks: Any = None) -> Any:
        if type(requires_grad) is not bool:
            raise CorruptCheckpointError("parameter requires_grad must be a bool")
        return self.parameter(self.tensor_ref(data), data, requires_grad)

    def rebuild_parameter_with_state(
        self, data: Any, requires_grad: Any, backward_hooks: Any, state: Any
    ) -> Any:
        param = self.rebuild_parameter(data, requires_grad, backward_hooks)
        return self.set_attrs(param, self.tensor_ref(param), _attr_state(state))

    def parameter_new(self, data: Any = None, requires_grad: Any = True) -> Any:
        if data is None:
            raise UnsupportedFeatureError("uninitialized parameters (no data) are not supported")
        return self.rebuild_parameter(data, requires_grad)

    def rebuild_meta_tensor(self, dtype: Any, size: Any, stride: Any, requires_grad: Any = False) -> Any:
        row = self._dtype_row(dtype)
        empty = StorageRef("meta", row, "meta", 0)
        shape = tuple(size) if isinstance(size, (tuple, list)) else size
        strides = tuple(stride) if isinstance(stride, (tuple, list)) else stride
        # A meta tensor has no data: check its numbers as a view of an unbounded storage.
        empty.nbytes = 1 << 62
        t = make_view(empty, row, 0, shape, strides, requires_grad)
        t.storage = None
        t._set("device", "meta")
        return self.finish_tensor(t)

    def rebuild_from_type_v2(self, func: Any, new_type: Any, args: Any, state: Any) -> Any:
        if type(func) is not Op or func.fn not in (
            self.rebuild_tensor_v1, self.rebuild_tensor_v2, self.rebuild_tensor_v3,
            self.rebuild_parameter, self.rebuild_meta_tensor,
        ):
            raise CorruptCheckpointError("_rebuild_from_type_v2 must wrap a tensor rebuild function")
        if type(args) is not tuple:
            raise CorruptCheckpointError("_rebuild_from_type_v2 arguments must be a tuple")
        obj = func.fn(*args)
        obj = self.as_subclass(obj, new_type)
        attrs = _attr_state(state)
        if attrs:
            obj = self.set_attrs(obj, self.tensor_ref(obj), attrs)
        return obj

    # -- refusals ------------------------------------------------------------------------------

    def _unsupported(self, name: str, feature: str) -> Any:
        def refuse(*args: Any) -> Any:
            if self.mode == "inspect":
                return InertObject(name, args=args)
            raise UnsupportedFeatureError(f"{feature} ({name}) are not supported yet")

        return refuse

    def _not_callable(self, name: str) -> Any:
        def refuse(*args: Any) -> Any:
            if self.mode == "inspect":
                return InertObject(name, args=args)
            raise UnsupportedFeatureError(f"calling {name} directly is not supported")

        return refuse


def _type_name(value: Any) -> str:
    if type(value) is Op:
        return value.name
    if type(value) is GlobalRef:
        return value.qualname
    raise CorruptCheckpointError(f"a tensor type must be a class, not a {type(value).__name__}")


def _copy_ref(ref: TensorRef) -> TensorRef:
    out = TensorRef(ref.storage, ref.dtype, ref.shape, ref.stride, ref.offset, ref.requires_grad)
    if ref._extra:
        out._extra = dict(ref._extra)
        if ref.attrs:
            out.attrs = dict(ref.attrs)
    return out


def _pairs(items: Any) -> list[tuple[Any, Any]]:
    if isinstance(items, dict):
        return list(items.items())
    if not isinstance(items, (list, tuple)):
        raise CorruptCheckpointError(f"expected key/value pairs, got a {type(items).__name__}")
    out = []
    for item in items:
        if not isinstance(item, (list, tuple)) or len(item) != 2:
            raise CorruptCheckpointError("expected key/value pairs")
        out.append((item[0], item[1]))
    return out


def _attr_state(state: Any) -> dict[str, Any]:
    """Python attributes saved with a tensor (``__dict__`` or ``(__dict__, slots)``), refusing special names."""
    if state is None:
        return {}
    if type(state) is tuple:
        if len(state) != 2:
            raise CorruptCheckpointError("tensor state must be a dict or a (dict, slots) pair")
        merged: dict[str, Any] = {}
        for part in state:
            if part is not None:
                merged.update(_attr_state(part))
        return merged
    if type(state) not in (dict, OrderedDict):
        raise CorruptCheckpointError(f"tensor state must be a dict, not a {type(state).__name__}")
    for key in state:
        if type(key) is not str or not key.isidentifier() or key.startswith("__"):
            raise CorruptCheckpointError(f"tensor attribute {brief_repr(key)} may not be set")
    return dict(state)
