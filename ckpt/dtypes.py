"""The one table of dtypes that every reader and writer consults.

Each :class:`DType` row gives the torch name, bytes per element, the legacy storage class torch
pickles for it (``None`` for the dtypes torch stores as ``UntypedStorage``), the safetensors code,
and the numpy dtype string where numpy has an exact native equivalent.

>>> DTYPES["float32"].itemsize, DTYPES["float32"].storage_class, DTYPES["float32"].safetensors
(4, 'FloatStorage', 'F32')
>>> by_storage_class("BFloat16Storage").name
'bfloat16'
"""

from __future__ import annotations

from typing import NamedTuple


class DType(NamedTuple):
    """One dtype as torch knows it.

    ``kind`` is one of ``float``, ``int``, ``uint``, ``bool``, ``complex``, ``quantized``, ``bits``.
    ``swap_size`` is the unit torch byteswaps in (half the itemsize for complex).
    ``storable`` is False for dtypes that exist only as names (``torch.uint3``) and cannot hold data.
    """

    name: str
    itemsize: int
    kind: str
    storage_class: str | None = None
    safetensors: str | None = None
    numpy: str | None = None
    storable: bool = True

    @property
    def torch_name(self) -> str:
        return f"torch.{self.name}"

    @property
    def is_floating_point(self) -> bool:
        return self.kind == "float"

    @property
    def swap_size(self) -> int:
        return self.itemsize // 2 if self.kind == "complex" else self.itemsize

    @property
    def uses_untyped_storage(self) -> bool:
        """True for the "v3" dtypes torch pickles with ``UntypedStorage`` and ``_rebuild_tensor_v3``."""
        return self.storage_class is None

    def __repr__(self) -> str:
        return f"ckpt.dtype({self.name})"

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (dtype, (self.name,))


_ROWS = [
    # name, itemsize, kind, storage class, safetensors, numpy
    DType("float64", 8, "float", "DoubleStorage", "F64", "<f8"),
    DType("float32", 4, "float", "FloatStorage", "F32", "<f4"),
    DType("float16", 2, "float", "HalfStorage", "F16", "<f2"),
    DType("bfloat16", 2, "float", "BFloat16Storage", "BF16", None),
    DType("int64", 8, "int", "LongStorage", "I64", "<i8"),
    DType("int32", 4, "int", "IntStorage", "I32", "<i4"),
    DType("int16", 2, "int", "ShortStorage", "I16", "<i2"),
    DType("int8", 1, "int", "CharStorage", "I8", "|i1"),
    DType("uint8", 1, "uint", "ByteStorage", "U8", "|u1"),
    DType("bool", 1, "bool", "BoolStorage", "BOOL", "|b1"),
    DType("complex128", 16, "complex", "ComplexDoubleStorage", None, "<c16"),
    DType("complex64", 8, "complex", "ComplexFloatStorage", "C64", "<c8"),
    DType("complex32", 4, "complex", None, None, None),
    DType("qint8", 1, "quantized", "QInt8Storage"),
    DType("qint32", 4, "quantized", "QInt32Storage"),
    DType("quint8", 1, "quantized", "QUInt8Storage"),
    DType("quint4x2", 1, "quantized", "QUInt4x2Storage"),
    DType("quint2x4", 1, "quantized", "QUInt2x4Storage"),
    DType("float8_e5m2", 1, "float", None, "F8_E5M2"),
    DType("float8_e4m3fn", 1, "float", None, "F8_E4M3"),
    DType("float8_e5m2fnuz", 1, "float", None, "F8_E5M2FNUZ"),
    DType("float8_e4m3fnuz", 1, "float", None, "F8_E4M3FNUZ"),
    DType("float8_e8m0fnu", 1, "float", None, "F8_E8M0"),
    DType("float4_e2m1fn_x2", 1, "float", None, "F4"),  # safetensors counts F4 elements: 2 per byte
    DType("bits8", 1, "bits"),
    DType("bits16", 2, "bits"),
    DType("bits1x8", 1, "bits"),
    DType("bits2x4", 1, "bits"),
    DType("bits4x2", 1, "bits"),
    DType("uint16", 2, "uint", None, "U16", "<u2"),
    DType("uint32", 4, "uint", None, "U32", "<u4"),
    DType("uint64", 8, "uint", None, "U64", "<u8"),
    *(DType(f"uint{n}", 1, "uint", storable=False) for n in range(1, 8)),
    *(DType(f"int{n}", 1, "int", storable=False) for n in range(1, 8)),
]

DTYPES: dict[str, DType] = {row.name: row for row in _ROWS}
"""Every dtype by its torch name (without the ``torch.`` prefix)."""

_BY_STORAGE_CLASS = {row.storage_class: row for row in _ROWS if row.storage_class}
_BY_SAFETENSORS = {row.safetensors: row for row in _ROWS if row.safetensors}

UINT8 = DTYPES["uint8"]


def dtype(name: str) -> DType:
    """The row for a torch dtype name, with or without the ``torch.`` prefix.

    >>> dtype("torch.bfloat16").itemsize
    2
    """
    key = name[6:] if name.startswith("torch.") else name
    try:
        return DTYPES[key]
    except KeyError:
        raise KeyError(f"unknown dtype {name!r}") from None


def by_storage_class(class_name: str) -> DType:
    """The dtype a legacy storage class such as ``FloatStorage`` holds."""
    return _BY_STORAGE_CLASS[class_name]


def storage_class_names() -> list[str]:
    """Every legacy ``<X>Storage`` class name that torch pickles."""
    return list(_BY_STORAGE_CLASS)


def by_safetensors(code: str) -> DType:
    """The dtype of a safetensors dtype code such as ``BF16``."""
    return _BY_SAFETENSORS[code]


def to_torch(dt: DType):  # type: ignore[no-untyped-def]
    """The real ``torch.dtype`` for a row (imports torch)."""
    import torch

    return getattr(torch, dt.name)
