"""Safe, short, JSON-ready renderings of arbitrary checkpoint values.

Values come from untrusted files: they may nest deeply, contain cycles or non-finite floats.
Nothing here recurses without bound, and the results always serialise as valid JSON.

>>> json_scalar(float("nan")), json_scalar((0.9, 0.999)), brief(list(range(100)))
('nan', [0.9, 0.999], 'list of 100')
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from typing import Any

from .dtypes import DType
from .tensors import TensorRef
from .values import Device, EnumMember, GlobalRef, InertObject, ListRecord, Record, Size, TorchConstant, brief_repr

SCALARS = (str, int, float, bool, complex, type(None), bytes)
_CONTAINERS = (list, tuple, set, frozenset, dict, OrderedDict, Counter)


def json_scalar(value: Any, depth: int = 0) -> Any:
    """A JSON-safe rendering: plain scalars as themselves (non-finite floats as strings), short
    lists of scalars as lists, tensors as ``{"dtype", "shape"}``, anything else as :func:`brief`."""
    t = type(value)
    if value is None or t is bool or t is str:
        return value
    if t is int:
        return value if value.bit_length() <= 4096 else brief_repr(value)  # JSON refuses > 4300 digits
    if t is float:
        return value if value == value and abs(value) != float("inf") else repr(value)
    if (t is list or t is tuple) and len(value) <= 16 and depth < 3:
        return [json_scalar(v, depth + 1) for v in value]
    if t is TensorRef:
        return {"dtype": value.dtype.name, "shape": list(value.shape)}
    return brief(value)


def numpy_brief(value: Any) -> str:
    """``numpy.ndarray float32[2, 3]``, ``numpy.float64 0.5``, ``dtype('<f4')``: short forms of numpy values."""
    if type(value).__module__ == "numpy.dtypes":  # a dtype
        return repr(value)
    if type(value).__name__ == "ndarray":
        return f"numpy.ndarray {value.dtype}{list(value.shape)}"
    if getattr(value, "shape", None) == () and hasattr(value, "item"):  # a numpy scalar
        return f"numpy.{type(value).__name__} {value.item()!r}"
    return repr(value)  # a dtype


def finite_number(value: Any) -> int | float | None:
    """``value`` if it is an int or a finite float, else None."""
    if type(value) is int:
        return value
    if type(value) is float and value == value and abs(value) != float("inf"):
        return value
    return None


def brief(value: Any, limit: int = 80) -> str:
    """A short, safe, one-line rendering of a value (never recursing without bound)."""
    t = type(value)
    if t in (str, int, float, bool, complex) or value is None:
        text = brief_repr(value, limit)
    elif t is bytes or t is bytearray:
        text = f"{t.__name__}[{len(value)}] {bytes(value[:16])!r}" + ("..." if len(value) > 16 else "")
    elif t is DType:
        text = value.torch_name
    elif t is Device:
        text = f"device({str(value)!r})"
    elif t is Size:
        text = f"torch.Size({list(value)})" if len(value) <= 16 else f"torch.Size of {len(value)} dims"
    elif t is GlobalRef:
        text = value.qualname
    elif t is TorchConstant or t is TensorRef:
        text = repr(value)
    elif t is InertObject:
        text = f"<inert {value.global_name}>"
    elif t is Record:
        text = f"{value.type} of {len(value)} field{'s' if len(value) != 1 else ''}"
    elif t is ListRecord:
        text = f"{value.type} of {len(value)}"
    elif t is EnumMember:
        text = repr(value)
    elif t.__module__ in ("numpy", "numpy.dtypes"):
        text = numpy_brief(value)
    elif t is type:
        text = f"<class {value.__module__}.{value.__qualname__}>"
    elif t.__module__ in ("datetime", "pathlib") or t in (slice, range) or value is Ellipsis:
        text = repr(value)
    elif t in (list, tuple, set, frozenset) and len(value) <= 8 and all(type(v) in SCALARS for v in value):
        text = brief_repr(value, limit)
    elif t in _CONTAINERS:
        text = f"{'OrderedDict' if t is OrderedDict else t.__name__} of {len(value)}"
    else:
        text = f"<{t.__module__}.{t.__qualname__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."
