"""numpy scalars, arrays and dtypes inside a pickle, rebuilt by ckpt from their bytes and descriptors.

numpy pickles these as calls into its own machinery (``numpy._core.multiarray.scalar``,
``_reconstruct`` + ``ndarray.__setstate__``, ``numpy.dtype`` + ``dtype.__setstate__``,
``numpy._core.numeric._frombuffer`` at protocol 5; numpy 1.x names the same functions under
``numpy.core``). ckpt never calls any of them: it checks every descriptor (kind, size, byte order,
fields, offsets, subarray shapes, datetime units) and every length, then builds the dtype with
``numpy.dtype(...)`` from plain strings and ints and the array over a writable copy of exactly
``numel × itemsize`` bytes. Object dtypes (``O``), which hold pickled Python objects,
are refused everywhere, also inside structured dtypes and subarrays.

Structured dtypes (named fields, titles, explicit offsets, aligned structs) and subarray dtypes are
read; each field must lie inside the item, and dtypes may nest at most :data:`MAX_DTYPE_DEPTH`
levels. Dtype metadata dicts are kept; the ``flags`` word of the pickled state is checked to be
an int and otherwise recomputed by numpy (only its aligned-struct bit is used).

>>> import numpy as np
>>> b = _Numpy(strict=True)
>>> p = b.dtype("f4", False, True); p.finish((3, ">", None, None, None, -1, -1, 0))
dtype('>f4')
>>> b.scalar(np.dtype("<f8"), b"\\x00\\x00\\x00\\x00\\x00\\x00\\xf8?")
np.float64(1.5)
"""

from __future__ import annotations

import re
from typing import Any

from .errors import CorruptCheckpointError, UnsupportedFeatureError
from .pickle_vm import Pending, settled
from .values import InertObject

MAX_DTYPE_DEPTH = 32
"""Deepest nesting of structured/subarray dtypes accepted (numpy's own printing recurses)."""
MAX_ITEMSIZE = (1 << 31) - 1
MAX_NDIM = 64
MAX_FIELDS = 1 << 16

_SPEC = re.compile(r"([biufcSUVOMm])([0-9]{1,10})\Z")
_SIZES = {"b": {1}, "i": {1, 2, 4, 8}, "u": {1, 2, 4, 8}, "f": {2, 4, 8, 12, 16}, "c": {8, 16, 24, 32},
          "M": {8}, "m": {8}}
_DATETIME_UNITS = {"Y", "M", "W", "D", "h", "m", "s", "ms", "us", "ns", "ps", "fs", "as", "generic"}
_ALIGNED_STRUCT = 0x80

OBJECT_REFUSED = (
    "numpy object arrays and object dtypes (dtype 'O') hold pickled Python objects, which ckpt never "
    "rebuilds"
)


def _np() -> Any:
    import numpy

    return numpy


def _corrupt(message: str) -> CorruptCheckpointError:
    return CorruptCheckpointError(message)


def _raw_bytes(value: Any, what: str) -> bytes:
    """Bytes a numpy pickle carries: ``bytes``/``bytearray``, or a latin-1 ``str`` (Python 2 pickles)."""
    t = type(value)
    if t is bytes or t is bytearray:
        return bytes(value)
    if t is str:
        try:
            return value.encode("latin-1")
        except UnicodeEncodeError:
            raise _corrupt(f"{what} is text that is not latin-1 bytes") from None
    raise _corrupt(f"{what} must be bytes, not {t.__name__}")


def _shape(value: Any, what: str) -> tuple[int, ...]:
    if type(value) is int:
        value = (value,)
    if type(value) not in (tuple, list) or len(value) > MAX_NDIM:
        raise _corrupt(f"{what} must be a tuple of at most {MAX_NDIM} ints")
    for d in value:
        if type(d) is not int or d < 0:
            raise _corrupt(f"{what} holds {d!r}, not a non-negative int")
    return tuple(value)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


class _Numpy:
    """The numpy constructors of one builder (``strict``: refusals raise; else become inert)."""

    def __init__(self, *, strict: bool) -> None:
        self.strict = strict
        self._depth: dict[int, tuple[Any, int]] = {}

    # -- dtypes ----------------------------------------------------------------------------------

    def _refuse_object(self, name: str, args: tuple[Any, ...]) -> Any:
        if self.strict:
            raise UnsupportedFeatureError(OBJECT_REFUSED, hint="read it with ckpt inspect to see what it holds")
        return InertObject(name, args=args)

    def depth(self, dt: Any) -> int:
        entry = self._depth.get(id(dt))
        return entry[1] if entry is not None and entry[0] is dt else 0

    def _remember(self, dt: Any, depth: int) -> Any:
        if depth > MAX_DTYPE_DEPTH:
            raise _corrupt(f"a numpy dtype nests deeper than {MAX_DTYPE_DEPTH} levels")
        if depth:
            self._depth[id(dt)] = (dt, depth)
        return dt

    def as_dtype(self, value: Any, what: str) -> Any:
        """A finished numpy dtype from a pickle value (refusing object dtypes)."""
        np = _np()
        value = settled(value)
        if type(value) is InertObject:
            return value
        if not isinstance(value, np.dtype):
            raise _corrupt(f"{what} must be a numpy dtype, not {type(value).__name__}")
        if value.hasobject:
            raise UnsupportedFeatureError(OBJECT_REFUSED)
        return value

    def dtype(self, spec: Any, align: Any = False, copy: Any = True) -> Any:
        """``numpy.dtype(spec, align, copy)`` as numpy pickles it; BUILD then gives the state."""
        if type(spec) is not str:
            raise _corrupt(f"numpy.dtype takes a type string such as 'f8', not {type(spec).__name__}")
        if type(align) not in (bool, int) or type(copy) not in (bool, int):
            raise _corrupt("numpy.dtype's align and copy arguments must be bools")
        m = _SPEC.match(spec)
        if m is None:
            raise _corrupt(f"{spec!r} is not a numpy type string (kind letter and size, e.g. 'f8')")
        kind, size = m.group(1), int(m.group(2))
        if kind == "O":
            return self._refuse_object("numpy.dtype", (spec, align, copy))
        if kind in _SIZES and size not in _SIZES[kind]:
            raise _corrupt(f"numpy type string {spec!r}: kind {kind!r} has no {size}-byte size")
        if size > MAX_ITEMSIZE:
            raise _corrupt(f"numpy type string {spec!r} declares an item larger than {MAX_ITEMSIZE} bytes")
        default = self._plain(kind, size, "=", None)
        return Pending("numpy.dtype", default, lambda state: self._finish_dtype(kind, size, bool(align), state))

    def _plain(self, kind: str, size: int, order: str, unit: tuple[str, int] | None) -> Any:
        np = _np()
        if kind in "SV":
            text = f"{kind}{size}"
        elif kind in "Mm":
            text = f"{order}{kind}8"
            if unit is not None and unit[0] != "generic":
                text += f"[{unit[1] if unit[1] != 1 else ''}{unit[0]}]"
        elif size == 1:
            text = f"|{kind}1"
        else:
            text = f"{order}{kind}{size}"
        try:
            return np.dtype(text)
        except TypeError:
            raise UnsupportedFeatureError(f"numpy dtype {text!r} does not exist on this platform") from None

    def _finish_dtype(self, kind: str, size: int, align: bool, state: Any) -> Any:
        np = _np()
        if type(state) is not tuple or len(state) not in (8, 9):
            raise _corrupt("numpy dtype state must be the 8- or 9-item tuple numpy writes (versions 3 and 4)")
        version, order, subarray, names, fields, elsize, alignment, flags = state[:8]
        if version not in (3, 4) or type(version) is not int:
            raise UnsupportedFeatureError(f"numpy dtype state version {version!r} (numpy writes 3 and 4)")
        if order not in ("<", ">", "|", "="):
            raise _corrupt(f"numpy dtype byte order {order!r} is not one of < > | =")
        if type(elsize) is not int or type(alignment) is not int or type(flags) is not int:
            raise _corrupt("numpy dtype elsize, alignment and flags must be ints")
        extra = state[8] if len(state) == 9 else None
        metadata, unit = self._metadata(kind, extra)
        if kind in "biufcMm" and order == "|" and size > 1:
            raise _corrupt(f"numpy dtype {kind}{size} needs a byte order, not '|'")
        if kind in "biufc" or kind in "Mm":
            if subarray is not None or names is not None or fields is not None:
                raise _corrupt(f"numpy dtype {kind}{size} cannot have fields or a subarray")
            if elsize not in (-1, size):
                raise _corrupt(f"numpy dtype {kind}{size} declares {elsize} bytes per item")
            dt = self._plain(kind, size, order if order != "|" else "=", unit)
        elif kind in "SU":
            if subarray is not None or names is not None or fields is not None:
                raise _corrupt(f"numpy dtype {kind}{size} cannot have fields or a subarray")
            want = size * (4 if kind == "U" else 1)
            if elsize != want:
                raise _corrupt(f"numpy dtype {kind}{size} declares {elsize} bytes per item, not {want}")
            dt = self._plain(kind, size, order if order != "|" else "=", None)
        else:  # V: raw bytes, a structured dtype or a subarray
            if elsize != size:
                raise _corrupt(f"numpy dtype V{size} declares {elsize} bytes per item")
            dt = self._void(size, subarray, names, fields, bool(flags & _ALIGNED_STRUCT) or align)
        if metadata is not None:
            dt = np.dtype(dt, metadata=dict(metadata))
        if dt.hasobject:
            raise UnsupportedFeatureError(OBJECT_REFUSED)
        return dt

    def _metadata(self, kind: str, extra: Any) -> tuple[dict[Any, Any] | None, tuple[str, int] | None]:
        """(metadata dict, datetime unit) from the 9th state item of a version-4 dtype."""
        if extra is None:
            return None, None
        if kind in "Mm":
            if type(extra) is not tuple or len(extra) != 2:
                raise _corrupt("a datetime dtype's state must end with (metadata, (unit, count, 1, 1))")
            meta, info = extra
            if type(info) is not tuple or len(info) != 4:
                raise _corrupt("a datetime dtype's unit must be (unit, count, 1, 1)")
            unit = settled(info[0])
            unit = unit.decode("ascii", "replace") if type(unit) in (bytes, bytearray) else unit
            count = info[1]
            if unit not in _DATETIME_UNITS or type(count) is not int or not 1 <= count < (1 << 31):
                raise _corrupt(f"{unit!r}/{count!r} is not a numpy datetime unit")
            if meta is not None and type(meta) is not dict:
                raise _corrupt("numpy dtype metadata must be a dict")
            return meta, (unit, count)
        if type(extra) is not dict:
            raise _corrupt("numpy dtype metadata must be a dict")
        return extra, None

    def _void(self, size: int, subarray: Any, names: Any, fields: Any, aligned: bool) -> Any:
        np = _np()
        if subarray is not None:
            if names is not None or fields is not None:
                raise _corrupt("a numpy subarray dtype cannot also have fields")
            if type(subarray) is not tuple or len(subarray) != 2:
                raise _corrupt("a numpy subarray must be (dtype, shape)")
            base = self.as_dtype(subarray[0], "a subarray's base")
            shape = _shape(subarray[1], "a subarray's shape")
            if base.itemsize * _numel(shape) != size:
                raise _corrupt(f"subarray {shape} of {base} does not fill its {size}-byte item")
            return self._remember(np.dtype((base, shape)), self.depth(base) + 1)
        if names is None and fields is None:
            return np.dtype(f"V{size}")
        if type(names) is not tuple or type(fields) is not dict or len(names) > MAX_FIELDS:
            raise _corrupt("a structured numpy dtype needs a tuple of names and a dict of fields")
        if len(set(names)) != len(names):
            raise _corrupt("a structured numpy dtype names a field twice")
        formats, offsets, titles, depth = [], [], [], 0
        for name in names:
            if type(name) is not str:
                raise _corrupt("numpy field names must be strings")
            entry = fields.get(name)
            if type(entry) is not tuple or len(entry) not in (2, 3):
                raise _corrupt(f"numpy field {name!r} must be (dtype, offset[, title])")
            sub = self.as_dtype(entry[0], f"field {name!r}")
            offset = entry[1]
            if type(offset) is not int or offset < 0 or offset + sub.itemsize > size:
                raise _corrupt(f"numpy field {name!r} at offset {offset!r} does not lie inside its {size}-byte item")
            title = entry[2] if len(entry) == 3 else None
            if title is not None and type(title) is not str:
                raise _corrupt(f"numpy field {name!r} has a title that is not a string")
            formats.append(sub)
            offsets.append(offset)
            titles.append(title)
            depth = max(depth, self.depth(sub))
        spec: dict[str, Any] = {"names": list(names), "formats": formats, "offsets": offsets, "itemsize": size}
        if any(t is not None for t in titles):
            spec["titles"] = titles
        try:
            dt = np.dtype(spec, align=aligned)
        except (TypeError, ValueError):
            if not aligned:
                raise
            dt = np.dtype(spec)  # offsets a file's aligned flag claims but numpy would not align
        return self._remember(dt, depth + 1)

    # -- values ----------------------------------------------------------------------------------

    def scalar(self, dtype: Any, data: Any = None) -> Any:
        """``numpy.core.multiarray.scalar(dtype, data)``: one element from its bytes."""
        np = _np()
        dt = self.as_dtype(dtype, "numpy.scalar's dtype")
        if type(dt) is InertObject:
            return InertObject("numpy.core.multiarray.scalar", args=(dtype, data))
        raw = _raw_bytes(data, "a numpy scalar's data")
        if len(raw) != dt.itemsize:
            raise _corrupt(f"a numpy {dt} scalar needs {dt.itemsize} bytes, the file gives {len(raw)}")
        if not dt.itemsize:
            return np.zeros(1, dt)[0]
        return np.frombuffer(bytearray(raw), dtype=dt)[0]

    def reconstruct(self, cls: Any, shape: Any = (0,), typecode: Any = b"b") -> Any:
        """``numpy.core.multiarray._reconstruct(ndarray, (0,), b'b')``; BUILD then gives the data."""
        np = _np()
        if cls is not np.ndarray:
            name = getattr(cls, "qualname", None) or type(cls).__name__
            if self.strict:
                raise UnsupportedFeatureError(f"numpy arrays of class {name} are not read (only numpy.ndarray)")
            return InertObject("numpy.core.multiarray._reconstruct", args=(cls, shape, typecode))
        _shape(shape, "_reconstruct's shape")
        if type(typecode) not in (bytes, str):
            raise _corrupt("_reconstruct's type code must be bytes")
        return Pending("numpy.ndarray", np.empty((0,), np.int8), self._finish_array)

    def _finish_array(self, state: Any) -> Any:
        if type(state) is not tuple or len(state) not in (4, 5):
            raise _corrupt("numpy array state must be (version, shape, dtype, is_fortran, data)")
        if len(state) == 5:
            if state[0] != 1 or type(state[0]) is not int:
                raise UnsupportedFeatureError(f"numpy array state version {state[0]!r} (numpy writes 1)")
            state = state[1:]
        shape, dtype, fortran, data = state
        dt = self.as_dtype(dtype, "a numpy array's dtype") if type(data) is not list else None
        if dt is None or type(dt) is InertObject:
            if self.strict:
                raise UnsupportedFeatureError(OBJECT_REFUSED)
            return InertObject("numpy.ndarray", args=(shape, dtype, fortran, data))
        if type(fortran) not in (bool, int) or fortran not in (0, 1):
            raise _corrupt("a numpy array's is_fortran flag must be a bool")
        return self._array(_raw_bytes(data, "a numpy array's data"), dt, _shape(shape, "a numpy array's shape"),
                           "F" if fortran else "C")

    def frombuffer(self, buf: Any, dtype: Any, shape: Any, order: Any = "C") -> Any:
        """``numpy.core.numeric._frombuffer(buffer, dtype, shape, order)`` (protocol 5 pickles)."""
        dt = self.as_dtype(dtype, "a numpy array's dtype")
        if type(dt) is InertObject:
            return InertObject("numpy.core.numeric._frombuffer", args=(buf, dtype, shape, order))
        if order not in ("C", "F"):
            raise _corrupt(f"numpy array order {order!r} is not 'C' or 'F'")
        return self._array(_raw_bytes(buf, "a numpy array's buffer"), dt, _shape(shape, "a numpy array's shape"), order)

    def _array(self, raw: bytes, dt: Any, shape: tuple[int, ...], order: str) -> Any:
        np = _np()
        n = _numel(shape)
        if n * dt.itemsize != len(raw):
            raise _corrupt(
                f"a numpy {dt} array of shape {shape} needs {n * dt.itemsize:,} bytes, the file gives {len(raw):,}"
            )
        if not n or not dt.itemsize:
            return np.empty(shape, dtype=dt, order=order)
        # a writable copy of exactly these bytes (padding of aligned structs included)
        return np.frombuffer(bytearray(raw), dtype=dt, count=n).reshape(shape, order=order)
