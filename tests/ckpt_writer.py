"""Write small torch zip checkpoints from numpy arrays, without torch (for tests that must run in
the no-torch environment too).

The pickle is written opcode by opcode (protocol 2), the way torch.save lays it out: tensors are
``torch._utils._rebuild_tensor_v2`` (``_v3`` for the dtypes torch stores as UntypedStorage) over
persistent ids ``('storage', <storage class>, key, location, numel)``; storages are ``data/<key>``
records. It is *not* torch's writer (no alignment, no serialization id): ckpt reads it, torch
mostly would too, and that is all the tests need.

>>> import numpy as np, tempfile, os
>>> path = os.path.join(tempfile.mkdtemp(), "x.pt")
>>> write(path, {"w": T(np.arange(6, dtype=np.float32).reshape(2, 3)), "epoch": 3})
"""

from __future__ import annotations

import struct
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from ckpt.dtypes import DTYPES

_NUMPY_TO_TORCH = {
    "float64": "float64", "float32": "float32", "float16": "float16", "int64": "int64", "int32": "int32",
    "int16": "int16", "int8": "int8", "uint8": "uint8", "bool": "bool", "complex128": "complex128",
    "complex64": "complex64", "uint16": "uint16", "uint32": "uint32", "uint64": "uint64",
}


@dataclass
class T:
    """A tensor to write: ``array`` holds its values (or its raw bits, with ``dtype`` naming a torch
    dtype numpy lacks, e.g. ``T(bits_uint16, "bfloat16")``).

    ``storage``: write into this storage key (several tensors may share one; the first one's
    ``array`` gives the storage's bytes unless ``storage_bytes`` is given); ``shape``/``stride``/
    ``offset`` make a view (elements) instead of the whole array. ``location``: the device tag.
    """

    array: np.ndarray
    dtype: str | None = None
    requires_grad: bool = False
    parameter: bool = False
    storage: str | None = None
    shape: tuple[int, ...] | None = None
    stride: tuple[int, ...] | None = None
    offset: int = 0
    location: str = "cpu"
    meta: bool = False


class Global:
    """A bare global reference ``module.name`` (e.g. one outside ckpt's allowlist)."""

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name


class Call:
    """``module.name(*args)`` as REDUCE (an object built from a global)."""

    def __init__(self, module: str, name: str, *args: Any) -> None:
        self.g, self.args = Global(module, name), args


class _Writer:
    def __init__(self, byteorder: str) -> None:
        self.storages: dict[str, bytes] = {}
        self.byteorder = byteorder
        self.next_key = 0
        self.memo: dict[int, int] = {}
        self.keep: list[Any] = []

    # -- scalars and containers ------------------------------------------------------------

    def str_(self, s: str) -> bytes:
        b = s.encode("utf-8")
        return b"X" + struct.pack("<I", len(b)) + b

    def int_(self, v: int) -> bytes:
        if -(2**31) <= v < 2**31:
            return b"J" + struct.pack("<i", v)
        n = (v.bit_length() + 8) // 8
        return b"\x8a" + bytes([n]) + v.to_bytes(n, "little", signed=True)

    def glob(self, module: str, name: str) -> bytes:
        return b"c" + module.encode() + b"\n" + name.encode() + b"\n"

    def tuple_(self, items: Any) -> bytes:
        return b"(" + b"".join(self.pk(x) for x in items) + b"t"

    def pk(self, v: Any) -> bytes:
        if v is None:
            return b"N"
        if v is True:
            return b"\x88"
        if v is False:
            return b"\x89"
        if type(v) is int:
            return self.int_(v)
        if type(v) is float:
            return b"G" + struct.pack(">d", v)
        if type(v) is str:
            return self.str_(v)
        if isinstance(v, T):  # memoised, so that one tensor object written twice stays one object
            if id(v) in self.memo:
                return b"h" + bytes([self.memo[id(v)]])
            return self.tensor(v) + self._put(v)
        if isinstance(v, Global):
            return self.glob(v.module, v.name)
        if isinstance(v, Call):
            return self.glob(v.g.module, v.g.name) + self.tuple_(v.args) + b"R"
        # containers: memoised so that the same object written twice is shared in the pickle
        if id(v) in self.memo:
            return b"h" + bytes([self.memo[id(v)]])
        if type(v) is tuple:
            body = self.tuple_(v)
        elif type(v) is list:
            body = b"]" + self._put(v) + (b"(" + b"".join(self.pk(x) for x in v) + b"e" if v else b"")
            return body
        elif type(v) is OrderedDict:
            body = self.glob("collections", "OrderedDict") + b")R" + self._put(v)
            if v:
                body += b"(" + b"".join(self.pk(k) + self.pk(x) for k, x in v.items()) + b"u"
            return body
        elif type(v) is dict:
            body = b"}" + self._put(v)
            if v:
                body += b"(" + b"".join(self.pk(k) + self.pk(x) for k, x in v.items()) + b"u"
            return body
        else:
            raise TypeError(f"ckpt_writer cannot write a {type(v).__name__}")
        return body + self._put(v)

    def _put(self, v: Any) -> bytes:
        if len(self.memo) >= 255:
            return b""
        self.memo[id(v)] = len(self.memo)
        self.keep.append(v)
        return b"q" + bytes([self.memo[id(v)]])

    # -- tensors --------------------------------------------------------------------------

    def tensor(self, t: T) -> bytes:
        name = t.dtype or _NUMPY_TO_TORCH[t.array.dtype.name]
        dt = DTYPES[name]
        if t.meta:
            body = (self.glob("torch._utils", "_rebuild_meta_tensor_no_storage") + b"(" + self.glob("torch", name)
                    + self.tuple_(t.array.shape) + self.tuple_(_strides(t.array.shape)) + self.pk(t.requires_grad)
                    + b"tR")
            return body
        arr = t.array if t.array.flags.c_contiguous else np.ascontiguousarray(t.array)  # (keeps 0-d arrays 0-d)
        if self.byteorder == "big" and arr.dtype.itemsize > 1 and arr.dtype.kind != "V":
            if arr.dtype.kind == "c":  # torch swaps each half of a complex number
                half = arr.dtype.itemsize // 2
                raw = arr.view(np.dtype(f"<f{half}")).astype(np.dtype(f">f{half}")).tobytes()
            else:
                raw = arr.astype(arr.dtype.newbyteorder(">")).tobytes()
        else:
            raw = arr.tobytes()
        key = t.storage
        if key is None:
            key = str(self.next_key)
            self.next_key += 1
        if key not in self.storages:
            self.storages[key] = raw
        numel = len(self.storages[key]) // dt.itemsize
        shape = t.shape if t.shape is not None else arr.shape
        stride = t.stride if t.stride is not None else _strides(shape)
        if dt.storage_class:
            pid = b"(" + self.str_("storage") + self.glob("torch", dt.storage_class) + self.str_(key) + \
                self.str_(t.location) + self.int_(numel) + b"tQ"
            body = (self.glob("torch._utils", "_rebuild_tensor_v2") + b"(" + pid + self.int_(t.offset)
                    + self.tuple_(shape) + self.tuple_(stride) + self.pk(t.requires_grad)
                    + self.glob("collections", "OrderedDict") + b")R" + b"tR")
        else:
            pid = b"(" + self.str_("storage") + self.glob("torch.storage", "UntypedStorage") + self.str_(key) + \
                self.str_(t.location) + self.int_(len(self.storages[key])) + b"tQ"
            body = (self.glob("torch._utils", "_rebuild_tensor_v3") + b"(" + pid + self.int_(t.offset)
                    + self.tuple_(shape) + self.tuple_(stride) + self.pk(t.requires_grad)
                    + self.glob("collections", "OrderedDict") + b")R" + self.glob("torch", name) + b"tR")
        if t.parameter:
            body = (self.glob("torch._utils", "_rebuild_parameter") + b"(" + body + self.pk(t.requires_grad)
                    + self.glob("collections", "OrderedDict") + b")R" + b"tR")
        return body


def _strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    out, acc = [], 1
    for s in reversed(shape):
        out.append(acc)
        acc *= max(s, 1)
    return tuple(reversed(out))


def write(path: Any, root: Any, *, archive: str = "archive", byteorder: str = "little",
          compress: bool = False) -> None:
    """Write ``root`` (containers, scalars, :class:`T` tensors, :class:`Global`/:class:`Call`) as a
    torch zip checkpoint at ``path``."""
    w = _Writer(byteorder)
    pickle_bytes = b"\x80\x02" + w.pk(root) + b"."
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:
        z.writestr(f"{archive}/data.pkl", pickle_bytes)
        z.writestr(f"{archive}/byteorder", byteorder)
        for key, data in w.storages.items():
            z.writestr(f"{archive}/data/{key}", data, compress_type=method)
        z.writestr(f"{archive}/version", "3\n")
