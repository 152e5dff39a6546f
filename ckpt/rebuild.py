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
from .values import Device, GlobalRef, InertObject, Record, Size, TorchConstant, brief_repr

LAYOUTS = (
    "torch.strided", "torch.sparse_coo", "torch.sparse_csr", "torch.sparse_csc",
    "torch.sparse_bsr", "torch.sparse_bsc", "torch._mkldnn", "torch.jagged",
)
QSCHEMES = (
    "per_tensor_affine", "per_tensor_symmetric", "per_channel_affine", "per_channel_symmetric",
    "per_channel_affine_float_qparams",
)
COMPRESSED_LAYOUTS = {
    # layout: (names of the compressed and plain index tensors, compressed dimension, blocked)
    "torch.sparse_csr": ("crow_indices", "col_indices", 0, False),
    "torch.sparse_csc": ("ccol_indices", "row_indices", 1, False),
    "torch.sparse_bsr": ("crow_indices", "col_indices", 0, True),
    "torch.sparse_bsc": ("ccol_indices", "row_indices", 1, True),
}
QUANTIZED_READ = ("qint8", "quint8", "qint32")
# Tensor kinds torch's weights_only loader rebuilds that ckpt does not rebuild yet.
UNSUPPORTED_REBUILDS = {
    "torch._utils._rebuild_wrapper_subclass": "tensor wrapper subclasses",
    "torch._utils._rebuild_device_tensor_from_numpy": "device tensors saved through numpy",
    "torch._utils._rebuild_device_tensor_from_cpu_tensor": "device tensors saved through a CPU copy",
}
_UNIT_STRIDE = (1,)
_UNBOUND = object()
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
        self._bound: dict[str, Any] = {}
        self._numpy_values: Any = None

    # -- profiles (ckpt.profiles): what non-tensor objects become --------------------------------

    def profile_value(self, qualname: str) -> Any:
        """What a pickle gets for a global ckpt has a :mod:`profile <ckpt.profiles>` for (``None`` if
        none); bound to this builder, made once per name."""
        value = self._bound.get(qualname, _UNBOUND)
        if value is _UNBOUND:
            from .profiles import BY_NAME

            profile = BY_NAME.get(qualname)
            value = None if profile is None else profile.bind(self)
            self._bound[qualname] = value
        return value

    @property
    def numpy_values(self) -> Any:
        """ckpt's constructors for numpy values (:mod:`ckpt.numpy_values`), made on first use."""
        if self._numpy_values is None:
            from .numpy_values import _Numpy

            self._numpy_values = _Numpy(strict=self.mode == "strict")
        return self._numpy_values

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
        op("torch._utils._rebuild_sparse_tensor", self.rebuild_sparse_tensor)
        op("torch._utils._rebuild_qtensor", self.rebuild_qtensor)
        op("torch._utils._rebuild_nested_tensor", self.rebuild_nested_tensor)
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

    def set_plain_attrs(self, obj: Any, attrs: dict[str, Any]) -> Any:
        """Python attributes saved with a sparse or nested tensor: kept in the record's ``info``."""
        if type(obj) is Record:
            obj.info["attrs"] = attrs
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

    def sparse_tensor(
        self, layout: str, parts: dict[str, Any], refs: dict[str, TensorRef], size: tuple[int, ...],
        coalesced: bool | None,
    ) -> Any:
        """A checked sparse tensor. Lazy flavour: a :class:`~ckpt.values.Record` named after the
        layout (``torch.sparse_coo``, ...) holding its index and value tensors, its ``size`` and
        (COO) ``is_coalesced``; the index values are checked where they are read (``ckpt.load``)."""
        out = Record(layout, parts)
        out["size"] = self.size_value(size)
        if layout == "torch.sparse_coo":
            out["is_coalesced"] = coalesced
        return out

    def quantized_tensor(self, storage: Any, ref: TensorRef, quantizer: dict[str, Any]) -> Any:
        """A checked quantized tensor. Lazy flavour: the :class:`TensorRef` of its stored integers
        (dtype ``qint8``/``quint8``/``qint32``), with ``quantizer`` (qscheme, scale/zero point or
        per-channel scales/zero points/axis) recorded on it."""
        ref._set("quantizer", quantizer)
        return self.finish_tensor(ref, storage)

    def nested_tensor(self, parts: dict[str, Any], refs: dict[str, TensorRef]) -> Any:
        """A nested (strided) tensor. Lazy flavour: a ``torch.nested`` :class:`Record` of its
        ``buffer`` and its ``sizes``/``strides``/``offsets`` tensors (the components' shapes are
        data in the file, so they are known only once those tensors are read)."""
        return Record("torch.nested", parts)

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
            self.rebuild_parameter, self.rebuild_meta_tensor, self.rebuild_qtensor, self.rebuild_sparse_tensor,
            self.rebuild_nested_tensor,
        ):
            raise CorruptCheckpointError("_rebuild_from_type_v2 must wrap a tensor rebuild function")
        if type(args) is not tuple:
            raise CorruptCheckpointError("_rebuild_from_type_v2 arguments must be a tuple")
        obj = func.fn(*args)
        obj = self.as_subclass(obj, new_type)
        attrs = _attr_state(state)
        if attrs:
            ref = self._ref_of(obj, TensorRef)
            if ref is None:  # a sparse or nested tensor: no single view stands for it
                return self.set_plain_attrs(obj, attrs)
            obj = self.set_attrs(obj, ref, attrs)
        return obj

    # -- sparse, quantized and nested tensors ------------------------------------------------

    def _layout_name(self, layout: Any) -> str:
        if type(layout) is TorchConstant:
            return layout.name
        text = str(layout)
        if text not in LAYOUTS:
            raise CorruptCheckpointError(f"a sparse tensor's layout must be a torch layout, not {text[:80]!r}")
        return text

    def _dims(self, size: Any, what: str) -> tuple[int, ...]:
        if not isinstance(size, (tuple, list)) or any(type(d) is not int or d < 0 for d in size):
            raise CorruptCheckpointError(f"{what} must be a tuple of non-negative ints")
        return tuple(size)

    def rebuild_sparse_tensor(self, layout: Any, data: Any) -> Any:
        """``_rebuild_sparse_tensor(layout, data)``: COO ``(indices, values, size[, is_coalesced])``
        or compressed ``(compressed_indices, plain_indices, values, size)``; every shape is checked
        against ``size`` here, the index values by the flavour that reads them."""
        name = self._layout_name(layout)
        if type(data) is not tuple:
            raise CorruptCheckpointError("a sparse tensor's data must be a tuple")
        coalesced = None
        if name == "torch.sparse_coo":
            if len(data) == 3:
                indices, values, size = data
            elif len(data) == 4:
                indices, values, size, coalesced = data
            else:
                raise CorruptCheckpointError("a COO sparse tensor is (indices, values, size[, is_coalesced])")
            if coalesced is not None and type(coalesced) is not bool:
                raise CorruptCheckpointError("a COO sparse tensor's is_coalesced must be a bool or None")
            parts = {"indices": indices, "values": values}
        elif name in COMPRESSED_LAYOUTS:
            if len(data) != 4:
                raise CorruptCheckpointError(f"a {name} tensor is (compressed_indices, plain_indices, values, size)")
            first, second = COMPRESSED_LAYOUTS[name][:2]
            parts = {first: data[0], second: data[1], "values": data[2]}
            size = data[3]
        else:
            raise UnsupportedFeatureError(f"sparse tensors with layout {name} are not supported")
        refs = {k: self.tensor_ref(v) for k, v in parts.items()}
        dims = self._dims(size, "a sparse tensor's size")
        if name == "torch.sparse_coo":
            _check_coo_shapes(refs, dims)
        else:
            _check_compressed_shapes(name, refs, dims)
        return self.sparse_tensor(name, parts, refs, dims, coalesced)

    def rebuild_qtensor(
        self, storage: Any, offset: Any, size: Any, stride: Any, quantizer_params: Any, requires_grad: Any,
        backward_hooks: Any = None,
    ) -> Any:
        """``_rebuild_qtensor``: a view of a quantized storage with its quantizer. As in torch 2.13,
        the per-channel axis must be a dimension and the scales and zero points must have
        ``size[axis]`` entries; per-tensor scale and zero point must be a finite float and an int."""
        ref = self.storage_ref(storage)
        dt = ref.dtype
        if dt.kind != "quantized":
            raise CorruptCheckpointError(f"a quantized tensor's storage holds {dt.name}, not a quantized dtype")
        if dt.name not in QUANTIZED_READ:
            raise UnsupportedFeatureError(
                f"quantized tensors of the sub-byte dtype {dt.name} are not supported (torch itself mis-sizes them)"
            )
        if requires_grad is not False:
            raise CorruptCheckpointError("a quantized tensor cannot require gradients")
        view = make_view(ref, dt, offset, size, stride, False)
        if type(quantizer_params) is not tuple or not quantizer_params:
            raise CorruptCheckpointError("a quantized tensor's quantizer parameters must be a tuple")
        scheme = quantizer_params[0]
        scheme = scheme.name if type(scheme) is TorchConstant else str(scheme)
        if scheme == "torch.per_tensor_affine":
            if len(quantizer_params) != 3:
                raise CorruptCheckpointError("per-tensor quantizer parameters are (qscheme, scale, zero_point)")
            _, scale, zero_point = quantizer_params
            if type(scale) is not float or scale != scale or abs(scale) == float("inf") or type(zero_point) is not int:
                raise CorruptCheckpointError("a per-tensor quantizer needs a finite float scale and an int zero point")
            quantizer: dict[str, Any] = {"qscheme": scheme, "scale": scale, "zero_point": zero_point}
        elif scheme in ("torch.per_channel_affine", "torch.per_channel_affine_float_qparams"):
            if len(quantizer_params) != 4:
                raise CorruptCheckpointError("per-channel quantizer parameters are (qscheme, scales, zero_points, axis)")
            _, scales, zero_points, axis = quantizer_params
            if type(axis) is not int or not 0 <= axis < len(view.shape):
                raise CorruptCheckpointError(
                    f"per-channel quantizer axis {axis!r} is out of range for size {list(view.shape)}"
                )
            want = view.shape[axis]
            for what, value in (("scales", scales), ("zero_points", zero_points)):
                n = len(value) if type(value) is list else self.tensor_ref(value).numel
                if n != want:
                    raise CorruptCheckpointError(
                        f"per-channel quantizer {what} has {n} entries; size[axis] = {want}"
                    )
                if type(value) is not list and self.tensor_ref(value).ndim != 1:
                    raise CorruptCheckpointError(f"per-channel quantizer {what} must be a 1-d tensor")
            quantizer = {"qscheme": scheme, "scales": scales, "zero_points": zero_points, "axis": axis}
        else:
            raise UnsupportedFeatureError(f"quantized tensors with qscheme {scheme} cannot be read (torch refuses them too)")
        return self.quantized_tensor(storage, view, quantizer)

    def rebuild_nested_tensor(self, buffer: Any, sizes: Any, strides: Any, offsets: Any) -> Any:
        """``_rebuild_nested_tensor(buffer, sizes, strides, storage_offsets)``: shapes checked here
        (a 1-d buffer; int64 ``sizes``/``strides`` of one row per component, ``offsets`` of one
        entry per component); the flavour that reads them checks every component lies in the buffer."""
        parts = {"buffer": buffer, "sizes": sizes, "strides": strides, "offsets": offsets}
        refs = {k: self.tensor_ref(v) for k, v in parts.items()}
        if refs["buffer"].ndim != 1:
            raise CorruptCheckpointError("a nested tensor's buffer must be 1-d")
        s, st, off = refs["sizes"], refs["strides"], refs["offsets"]
        if any(r.dtype.name != "int64" for r in (s, st, off)):
            raise CorruptCheckpointError("a nested tensor's sizes, strides and offsets must be int64 tensors")
        if s.ndim != 2 or st.shape != s.shape or off.shape != s.shape[:1]:
            raise CorruptCheckpointError(
                "a nested tensor needs sizes and strides of one row per component and one offset per component"
            )
        return self.nested_tensor(parts, refs)

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


def _check_coo_shapes(refs: dict[str, TensorRef], size: tuple[int, ...]) -> None:
    indices, values = refs["indices"], refs["values"]
    if indices.dtype.name != "int64" or indices.ndim != 2:
        raise CorruptCheckpointError("a COO sparse tensor's indices must be a 2-d int64 tensor")
    sparse_dim, nnz = indices.shape
    if values.ndim < 1 or values.shape[0] != nnz:
        raise CorruptCheckpointError(f"a COO sparse tensor has {nnz} indices but values of shape {list(values.shape)}")
    if len(size) != sparse_dim + values.ndim - 1 or tuple(values.shape[1:]) != size[sparse_dim:]:
        raise CorruptCheckpointError(
            f"a COO sparse tensor of size {list(size)} cannot have {sparse_dim} sparse dimensions and values of "
            f"shape {list(values.shape)}"
        )


def _check_compressed_shapes(layout: str, refs: dict[str, TensorRef], size: tuple[int, ...]) -> None:
    first, second, cdim, blocked = COMPRESSED_LAYOUTS[layout]
    comp, plain, values = refs[first], refs[second], refs["values"]
    if comp.dtype.name not in ("int32", "int64") or plain.dtype is not comp.dtype:
        raise CorruptCheckpointError(f"a {layout} tensor's indices must both be int32 or both int64")
    if comp.ndim < 1 or plain.ndim != comp.ndim:
        raise CorruptCheckpointError(f"a {layout} tensor's index tensors must have the same number of dimensions")
    batch = tuple(comp.shape[:-1])
    nb = len(batch)
    nnz = plain.shape[-1]
    block = tuple(values.shape[nb + 1 : nb + 3]) if blocked else (1, 1)
    dense = values.ndim - nb - (3 if blocked else 1)
    if tuple(plain.shape[:-1]) != batch or dense < 0 or tuple(values.shape[: nb + 1]) != (*batch, nnz):
        raise CorruptCheckpointError(
            f"a {layout} tensor's indices ({list(comp.shape)}, {list(plain.shape)}) and values "
            f"({list(values.shape)}) do not agree"
        )
    if len(size) != nb + 2 + dense or tuple(size[:nb]) != batch or tuple(size[nb + 2 :]) != tuple(values.shape[values.ndim - dense :]):
        raise CorruptCheckpointError(f"a {layout} tensor of size {list(size)} does not match its indices and values")
    if any(b == 0 for b in block) or size[nb] % block[0] or size[nb + 1] % block[1]:
        raise CorruptCheckpointError(f"a {layout} tensor's size {list(size)} is not a multiple of its block {list(block)}")
    if comp.shape[-1] != size[nb + cdim] // block[cdim] + 1:
        raise CorruptCheckpointError(
            f"a {layout} tensor's {first} has {comp.shape[-1]} entries per batch; size {list(size)} needs "
            f"{size[nb + cdim] // block[cdim] + 1}"
        )


def check_nested_components(sizes: list[list[int]], strides: list[list[int]], offsets: list[int], numel: int) -> None:
    """Refuse a nested tensor whose components (``sizes[i]``, ``strides[i]`` from ``offsets[i]``)
    do not lie inside a buffer of ``numel`` elements."""
    for i, (shape, stride, offset) in enumerate(zip(sizes, strides, offsets)):
        if offset < 0 or any(d < 0 for d in shape) or any(s < 0 for s in stride):
            raise CorruptCheckpointError(f"nested tensor component {i} has a negative size, stride or offset")
        last = offset
        empty = False
        for d, s in zip(shape, stride):
            if d == 0:
                empty = True
            last += (d - 1) * s
        if (not empty and last >= numel) or offset > numel:
            raise CorruptCheckpointError(
                f"nested tensor component {i} (size {shape}, stride {stride}, offset {offset}) runs past its "
                f"buffer of {numel} elements"
            )
