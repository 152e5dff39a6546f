"""Shared helpers of the test suite: fixture paths, the recorded torch answers, deep comparison.

Fixtures are made by real torch (``tests/fixtures/make_fixtures.py``); next to each
``tests/fixtures/<name>.pt`` lies ``tests/fixtures/expected/<name>.json``, what
``torch.load(weights_only=True)`` returned when it was made (its format is described in the
generator's docstring). Tests compare ckpt with live torch where torch is installed, and with
the recorded answers everywhere (the numpy flavour needs no torch).

Helpers are plain functions of this module, handed to tests by the session fixture ``helpers``
(``helpers.compare_loaded(a, b)``, ...), so that no test imports ``conftest`` by name.
A test that asks for an ``oracle_name`` argument runs once per recorded fixture.
"""

from __future__ import annotations

collect_ignore = ["fixtures/make_fixtures.py", "fixtures/make_format_fixtures.py"]  # scripts that regenerate fixtures, not tests

import importlib.util
import json
import math
import struct
import sys
import types
from collections import Counter, OrderedDict
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"
EXPECTED = FIXTURES / "expected"
ORACLE_NAMES = sorted(p.stem for p in EXPECTED.glob("*.json"))
HAS_TORCH = importlib.util.find_spec("torch") is not None

# numpy dtype of each torch dtype numpy has; the others are "exotic" (see ckpt.numpy_out)
NUMPY_DTYPES = {
    "float64": "<f8", "float32": "<f4", "float16": "<f2", "complex128": "<c16", "complex64": "<c8",
    "bool": "|b1", "int8": "|i1", "int16": "<i2", "int32": "<i4", "int64": "<i8",
    "uint8": "|u1", "uint16": "<u2", "uint32": "<u4", "uint64": "<u8",
}
RAW_UINT = {1: "|u1", 2: "<u2", 4: "<u4", 8: "<u8"}


# -- where things are ----------------------------------------------------------------------------


@lru_cache(maxsize=None)
def _expected_text(name: str) -> str:
    return (EXPECTED / f"{name}.json").read_text()


def expected(name: str) -> dict[str, Any]:
    """The recorded torch answer for fixture ``name`` (a fresh copy each call)."""
    return json.loads(_expected_text(name))


def fixture_path(name: str) -> Path:
    """The checkpoint file of fixture ``name`` (``examples/sample.pt`` for ``sample``)."""
    return REPO / expected(name)["file"]


def require_torch() -> Any:
    """``torch``, or skip the calling test where it is not installed."""
    return pytest.importorskip("torch")


def twin_path(exp: dict[str, Any]) -> Path | None:
    """The fixture torch's answer was taken from, when torch refuses the fixture itself."""
    src = exp.get("expected_from")
    if src and (FIXTURES / f"{src}.pt").exists():
        return FIXTURES / f"{src}.pt"
    return None


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "oracle_name" in metafunc.fixturenames:
        metafunc.parametrize("oracle_name", ORACLE_NAMES)


# -- bytes of views ----------------------------------------------------------------------------


def torch_view_bytes(t: Any) -> bytes:
    """A torch tensor's elements as stored (row-major gather of its storage; conj/neg not applied)."""
    import torch

    raw = torch.empty(0, dtype=torch.uint8).set_(t.untyped_storage()).numpy()
    item = t.element_size()
    arr = np.ndarray(
        tuple(t.shape), dtype=np.dtype(f"V{item}"), buffer=raw,
        offset=t.storage_offset() * item, strides=tuple(s * item for s in t.stride()),
    )
    return np.ascontiguousarray(arr).tobytes()


def array_bytes(a: np.ndarray) -> bytes:
    """A numpy array's elements in row-major order, native byte order."""
    a = np.asarray(a)
    if not a.dtype.isnative:
        a = a.astype(a.dtype.newbyteorder("="))
    return np.ascontiguousarray(a).tobytes()


def same_values(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal values, NaN equal to NaN whatever its payload (for value conversions)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.dtype.kind in "fc":
        return bool(np.array_equal(a, b, equal_nan=True))
    return bool(np.array_equal(a, b))


# -- errors that say where ---------------------------------------------------------------------


class Difference(AssertionError):
    """Raised at the first difference found, with the path of keys leading to it."""


def path_str(path: tuple[Any, ...]) -> str:
    return "root" + "".join(f"[{k!r}]" if not isinstance(k, str) or not k.startswith(".") else k for k in path)


def _fail(path: tuple[Any, ...], message: str) -> None:
    raise Difference(f"at {path_str(path)}: {message}")


def _float_bits(x: float) -> bytes:
    return struct.pack("<d", x)


# -- ckpt's torch result against torch's torch result -----------------------------------------------


class _TorchComparer:
    """Deep comparison of two torch.load-like results; identities must correspond one to one."""

    def __init__(self, *, check_bytes: bool, check_storage_identity: bool, check_empty_storages: bool) -> None:
        import torch

        self.torch = torch
        self.check_bytes = check_bytes
        self.check_storage_identity = check_storage_identity
        self.check_empty_storages = check_empty_storages
        self.a_to_b: dict[int, int] = {}
        self.b_to_a: dict[int, int] = {}
        self.st_a_to_b: dict[int, int] = {}
        self.st_b_to_a: dict[int, int] = {}
        self.keep: list[Any] = []

    def _pair(self, a: Any, b: Any, path: tuple[Any, ...], what: str) -> bool:
        """Record that ``a`` corresponds to ``b``; True if the pair was seen before."""
        ia, ib = id(a), id(b)
        if ia in self.a_to_b or ib in self.b_to_a:
            if self.a_to_b.get(ia) != ib or self.b_to_a.get(ib) != ia:
                _fail(path, f"{what} identity differs: one side shares an object here that the other does not")
            return True
        self.a_to_b[ia] = ib
        self.b_to_a[ib] = ia
        self.keep += [a, b]
        return False

    def _storage_pair(self, sa: Any, sb: Any, path: tuple[Any, ...]) -> None:
        if not self.check_storage_identity or (not self.check_empty_storages and sa.nbytes() == 0):
            return
        ca, cb = sa._cdata, sb._cdata
        if self.st_a_to_b.get(ca, cb) != cb or self.st_b_to_a.get(cb, ca) != ca:
            _fail(path, "storage sharing differs (one side shares a storage the other does not)")
        self.st_a_to_b[ca] = cb
        self.st_b_to_a[cb] = ca
        self.keep += [sa, sb]

    def cmp(self, a: Any, b: Any, path: tuple[Any, ...] = ()) -> None:
        torch = self.torch
        ta, tb = type(a), type(b)
        if ta is not tb:
            _fail(path, f"type {ta.__module__}.{ta.__qualname__} != {tb.__module__}.{tb.__qualname__}")
        if a is None or ta in (str, bool, int, bytes):
            if a != b:
                _fail(path, f"{a!r} != {b!r}")
            return
        if ta is float:
            if _float_bits(a) != _float_bits(b):
                _fail(path, f"float {a!r} != {b!r} (bitwise)")
            return
        if ta is complex:
            if _float_bits(a.real) + _float_bits(a.imag) != _float_bits(b.real) + _float_bits(b.imag):
                _fail(path, f"complex {a!r} != {b!r} (bitwise)")
            return
        if ta in (torch.dtype, torch.device, torch.layout, torch.qscheme, torch.Size):
            if a != b:
                _fail(path, f"{a!r} != {b!r}")
            return
        if isinstance(a, torch.Tensor):
            self.cmp_tensor(a, b, path)
            return
        if ta is torch.storage.TypedStorage:
            if self._pair(a, b, path, "storage object"):
                return
            for attr in ("dtype", "device"):
                if getattr(a, attr) != getattr(b, attr):
                    _fail(path, f"storage {attr} {getattr(a, attr)} != {getattr(b, attr)}")
            if a.size() != b.size() or a.nbytes() != b.nbytes():
                _fail(path, f"storage size {a.size()} != {b.size()}")
            self._storage_pair(a._untyped_storage, b._untyped_storage, path)
            if self.check_bytes and a.device.type != "meta":
                ra = torch.empty(0, dtype=torch.uint8).set_(a._untyped_storage).numpy().tobytes()
                rb = torch.empty(0, dtype=torch.uint8).set_(b._untyped_storage).numpy().tobytes()
                if ra != rb:
                    _fail(path, "storage bytes differ")
            return
        if self._pair(a, b, path, ta.__name__):
            return
        if ta is bytearray:
            if a != b:
                _fail(path, f"{a!r} != {b!r}")
            return
        if ta in (dict, OrderedDict, Counter):
            ka, kb = list(a.keys()), list(b.keys())
            if len(ka) != len(kb) or any(type(x) is not type(y) or x != y for x, y in zip(ka, kb)):
                _fail(path, f"keys {ka!r} != {kb!r}")
            for k in ka:
                self.cmp(a[k], b[k], (*path, k))
            self.cmp_attrs(getattr(a, "__dict__", {}), getattr(b, "__dict__", {}), path)
            return
        if ta in (list, tuple):
            if len(a) != len(b):
                _fail(path, f"length {len(a)} != {len(b)}")
            for i, (x, y) in enumerate(zip(a, b)):
                self.cmp(x, y, (*path, i))
            return
        if ta in (set, frozenset):
            if a != b or sorted(map(repr, a)) != sorted(map(repr, b)):
                _fail(path, f"{a!r} != {b!r}")
            return
        _fail(path, f"no comparison for {ta.__qualname__}")

    def cmp_attrs(self, da: dict[str, Any], db: dict[str, Any], path: tuple[Any, ...]) -> None:
        if sorted(da) != sorted(db):
            _fail(path, f"attributes {sorted(da)} != {sorted(db)}")
        for k in da:
            self.cmp(da[k], db[k], (*path, f".{k}"))

    def cmp_tensor(self, a: Any, b: Any, path: tuple[Any, ...]) -> None:
        if self._pair(a, b, path, "tensor"):
            return
        for attr, get in (
            ("dtype", lambda t: t.dtype),
            ("shape", lambda t: tuple(t.shape)),
            ("stride", lambda t: t.stride()),
            ("storage_offset", lambda t: t.storage_offset()),
            ("device", lambda t: t.device),
            ("requires_grad", lambda t: t.requires_grad),
            ("is_leaf", lambda t: t.is_leaf),
            ("is_conj", lambda t: t.is_conj()),
            ("is_neg", lambda t: t.is_neg()),
            ("grad", lambda t: t.grad),
            ("storage nbytes", lambda t: t.untyped_storage().nbytes()),
            ("layout", lambda t: t.layout),
        ):
            va, vb = get(a), get(b)
            if va != vb:
                _fail(path, f"tensor {attr} {va!r} != {vb!r}")
        self._storage_pair(a.untyped_storage(), b.untyped_storage(), path)
        if self.check_bytes and a.device.type != "meta" and torch_view_bytes(a) != torch_view_bytes(b):
            _fail(path, f"tensor values differ (bitwise): {a!r} != {b!r}")
        self.cmp_attrs(dict(a.__dict__), dict(b.__dict__), path)


def compare_loaded(
    actual: Any, reference: Any, *, check_bytes: bool = True, check_storage_identity: bool = True,
    check_empty_storages: bool = True,
) -> None:
    """Raise :class:`Difference` at the first way ``actual`` differs from ``reference``.

    Both are torch.load-like results: same types (dict vs OrderedDict, list vs tuple, Parameter
    vs Tensor), keys in order, attributes (``_metadata``), floats bitwise, tensors' dtype/shape/
    stride/offset/device/requires_grad/conj/neg/values bitwise, and identities: an object shared
    (or cyclic) on one side is shared exactly alike on the other, and two tensors share a storage
    on one side exactly where they do on the other. ``check_empty_storages=False`` ignores the
    sharing of empty storages (torch shares them under mmap=True only).
    """
    _TorchComparer(
        check_bytes=check_bytes, check_storage_identity=check_storage_identity,
        check_empty_storages=check_empty_storages,
    ).cmp(actual, reference)


# -- a result against the recorded JSON -------------------------------------------------------------


class _ExpectedComparer:
    """Compares a ckpt result (torch or numpy flavour) with the recorded encoding of torch's."""

    def __init__(self, exp: dict[str, Any], flavor: str, *, unsupported_dtype: str = "upcast",
                 check_bytes: bool = True, original: dict[str, dict[str, Any]] | None = None,
                 check_empty_storages: bool = True) -> None:
        self.exp = exp
        self.rows = exp["tensors"]
        self.flavor = flavor
        self.unsupported_dtype = unsupported_dtype
        self.check_bytes = check_bytes
        self.original = original or {}
        self.check_empty_storages = check_empty_storages
        self.ids: dict[int, Any] = {}
        self.objects: dict[int, Any] = {}
        self.group_of: dict[int, int] = {}
        self.group_base: dict[int, Any] = {}
        self.keep: list[Any] = []

    def _bind(self, n: int, obj: Any, path: tuple[Any, ...]) -> None:
        if n in self.ids:
            _fail(path, f"object {n} met twice")
        for other, o in self.ids.items():
            if o is obj:
                _fail(path, f"one object stands for both recorded objects {other} and {n}")
        self.ids[n] = obj

    def cmp(self, actual: Any, node: Any, path: tuple[Any, ...] = ()) -> None:
        if node is None or type(node) in (str, bool, int):
            if type(actual) is not type(node) or actual != node:
                _fail(path, f"{actual!r} != recorded {node!r}")
            return
        kind = node["t"]
        getattr(self, f"cmp_{kind}")(actual, node, path)

    def cmp_ref(self, actual: Any, node: dict[str, Any], path: tuple[Any, ...]) -> None:
        if self.ids.get(node["id"]) is not actual:
            _fail(path, f"expected the same object as recorded object {node['id']} (shared or cyclic)")

    def cmp_float(self, actual: Any, node: dict[str, Any], path: tuple[Any, ...]) -> None:
        if type(actual) is not float:
            _fail(path, f"{actual!r} is not a float (recorded {node['repr']})")
        if node["hex"] == "nan":
            if not math.isnan(actual):
                _fail(path, f"{actual!r} != recorded nan")
        elif _float_bits(actual) != _float_bits(float.fromhex(node["hex"])):
            _fail(path, f"{actual!r} != recorded float {node['repr']} (bitwise)")

    def cmp_complex(self, actual: Any, node: dict[str, Any], path: tuple[Any, ...]) -> None:
        if type(actual) is not complex:
            _fail(path, f"{actual!r} is not a complex")
        self.cmp_float(actual.real, node["re"], (*path, ".real"))
        self.cmp_float(actual.imag, node["im"], (*path, ".imag"))

    def cmp_bytes(self, actual: Any, node: dict[str, Any], path: tuple[Any, ...]) -> None:
        if type(actual) is not bytes or actual.hex() != node["hex"]:
            _fail(path, f"{actual!r} != recorded bytes {node['hex']}")

    def cmp_bytearray(self, actual: Any, node: dict[str, Any], path: tuple[Any, ...]) -> None:
        if type(actual) is not bytearray or bytes(actual).hex() != node["hex"]:
            _fail(path, f"{actual!r} != recorded bytearray {node['hex']}")
        self._bind(node["id"], actual, path)

    def cmp_Size(self, actual: Any, node: dict[str, Any], path: tuple[Any, ...]) -> None:
        if self.flavor == "torch":
            import torch

            ok = type(actual) is torch.Size
        else:
            from ckpt.values import Size

            ok = type(actual) is Size
        if not ok or list(actual) != node["v"]:
            _fail(path, f"{actual!r} != recorded torch.Size({node['v']})")

    def cmp_dtype(self, actual: Any, node: dict[str, Any], path: tuple[Any, ...]) -> None:
        if self.flavor == "torch":
            import torch

            ok = type(actual) is torch.dtype and actual == getattr(torch, node["v"])
        else:
            from ckpt.dtypes import DType

            ok = type(actual) is DType and actual.name == node["v"]
        if not ok:
            _fail(path, f"{actual!r} != recorded dtype {node['v']}")

    def cmp_device(self, actual: Any, node: dict[str, Any], path: tuple[Any, ...]) -> None:
        if self.flavor == "torch":
            import torch

            ok = type(actual) is torch.device and actual == torch.device(node["v"])
        else:
            from ckpt.values import Device

            ok = type(actual) is Device and str(actual) == node["v"]
        if not ok:
            _fail(path, f"{actual!r} != recorded device {node['v']}")

    def cmp_layout(self, actual: Any, node: dict[str, Any], path: tuple[Any, ...]) -> None:
        if self.flavor == "torch":
            import torch

            ok = type(actual) is torch.layout and str(actual) == node["v"]
        else:
            from ckpt.values import TorchConstant

            ok = type(actual) is TorchConstant and actual.name == node["v"]
        if not ok:
            _fail(path, f"{actual!r} != recorded layout {node['v']}")

    cmp_qscheme = cmp_layout

    def _container(self, actual: Any, node: dict[str, Any], path: tuple[Any, ...], types_: tuple[type, ...]) -> None:
        if type(actual) not in types_:
            _fail(path, f"type {type(actual).__qualname__} != recorded {node['t']}")
        self._bind(node["id"], actual, path)

    def cmp_dict(self, actual: Any, node: dict[str, Any], path: tuple[Any, ...]) -> None:
        want = {"dict": dict, "OrderedDict": OrderedDict, "Counter": Counter}[node["t"]]
        self._container(actual, node, path, (want,))
        items = list(actual.items())
        if len(items) != len(node["items"]):
            _fail(path, f"{len(items)} items != recorded {len(node['items'])}")
        for (k, v), (ek, ev) in zip(items, node["items"]):
            self.cmp(k, ek, (*path, f"<key {k!r}>"))
            self.cmp(v, ev, (*path, k))
        attrs = dict(getattr(actual, "__dict__", {}))
        recorded = node.get("attrs", {})
        if sorted(attrs) != sorted(recorded):
            _fail(path, f"attributes {sorted(attrs)} != recorded {sorted(recorded)}")
        for k, ev in recorded.items():
            self.cmp(attrs[k], ev, (*path, f".{k}"))

    cmp_OrderedDict = cmp_dict
    cmp_Counter = cmp_dict

    def cmp_list(self, actual: Any, node: dict[str, Any], path: tuple[Any, ...]) -> None:
        self._container(actual, node, path, ({"list": list, "tuple": tuple}[node["t"]],))
        if len(actual) != len(node["items"]):
            _fail(path, f"length {len(actual)} != recorded {len(node['items'])}")
        for i, (v, ev) in enumerate(zip(actual, node["items"])):
            self.cmp(v, ev, (*path, i))

    cmp_tuple = cmp_list

    def cmp_set(self, actual: Any, node: dict[str, Any], path: tuple[Any, ...]) -> None:
        self._container(actual, node, path, ({"set": set, "frozenset": frozenset}[node["t"]],))
        if len(actual) != len(node["items"]):
            _fail(path, f"{len(actual)} members != recorded {len(node['items'])}")
        remaining = list(actual)
        for ev in node["items"]:
            for i, v in enumerate(remaining):
                try:
                    _ExpectedComparer(self.exp, self.flavor).cmp(v, ev, path)
                except Difference:
                    continue
                del remaining[i]
                break
            else:
                _fail(path, f"no member matches recorded {ev!r}")

    cmp_frozenset = cmp_set

    def cmp_inert(self, actual: Any, node: dict[str, Any], path: tuple[Any, ...]) -> None:
        from ckpt.values import InertObject

        if type(actual) is not InertObject or actual.global_name != node["global"]:
            _fail(path, f"{actual!r} != recorded inert {node['global']}")
        self.cmp(actual.state, node["state"], (*path, ".state"))

    def cmp_storage(self, actual: Any, node: dict[str, Any], path: tuple[Any, ...]) -> None:
        self._bind(node["id"], actual, path)
        if self.flavor == "torch":
            import torch

            if type(actual) is not torch.storage.TypedStorage:
                _fail(path, f"{type(actual).__qualname__} is not a TypedStorage")
            if str(actual.dtype).removeprefix("torch.") != node["dtype"] or actual.size() != node["size"]:
                _fail(path, f"storage {actual.dtype}[{actual.size()}] != recorded {node['dtype']}[{node['size']}]")
            if str(actual.device) != node["device"]:
                _fail(path, f"storage device {actual.device} != recorded {node['device']}")
            raw = torch.empty(0, dtype=torch.uint8).set_(actual._untyped_storage).numpy().tobytes()
            self._group(node["group"], actual._untyped_storage, path)
        else:
            if type(actual) is not np.ndarray or actual.dtype != np.uint8:
                _fail(path, f"a storage should be a uint8 array in the numpy flavour, not {type(actual)}")
            raw = actual.tobytes()
        if self.check_bytes and raw.hex() != node["data"]:
            _fail(path, "storage bytes differ from the recorded ones")

    def _group(self, group: int | None, storage: Any, path: tuple[Any, ...]) -> None:
        if group is None or (not self.check_empty_storages and storage.nbytes() == 0):
            return
        cdata = storage._cdata
        known = self.group_of.get(cdata)
        if known is None:
            if group in self.group_base:
                _fail(path, f"storage group {group} is split over several storages")
            self.group_of[cdata] = group
            self.group_base[group] = storage
            self.keep.append(storage)
        elif known != group:
            _fail(path, f"shares a storage with group {known}, recorded group {group}")

    def cmp_tensor(self, actual: Any, node: dict[str, Any], path: tuple[Any, ...]) -> None:
        obj = node["object"]
        if obj in self.objects:
            if self.objects[obj] is not actual:
                _fail(path, f"expected the same tensor object as recorded object {obj}")
            return
        for other, o in self.objects.items():
            if o is actual:
                _fail(path, f"one tensor stands for recorded tensors {other} and {obj}")
        self.objects[obj] = actual
        self.keep.append(actual)
        row = self.rows[node["index"]]
        if self.flavor == "torch":
            self.cmp_torch_tensor(actual, row, path)
        else:
            self.cmp_numpy_array(actual, row, path)

    def cmp_torch_tensor(self, t: Any, row: dict[str, Any], path: tuple[Any, ...]) -> None:
        import torch

        want_type = torch.nn.Parameter if row["is_parameter"] else torch.Tensor
        checks = [
            ("type", type(t), want_type),
            ("dtype", str(t.dtype).removeprefix("torch."), row["dtype"]),
            ("shape", list(t.shape), row["shape"]),
            ("stride", list(t.stride()), row["stride"]),
            ("storage_offset", t.storage_offset(), row["storage_offset"]),
            ("device", str(t.device), row["device"]),
            ("requires_grad", t.requires_grad, row["requires_grad"]),
            ("conj", t.is_conj(), row["conj"]),
            ("neg", t.is_neg(), row["neg"]),
            ("storage nbytes", t.untyped_storage().nbytes(), row["storage"]["nbytes"]),
        ]
        for what, got, want in checks:
            if got != want:
                _fail(path, f"tensor {what} {got!r} != recorded {want!r}")
        if t.device.type != "meta":
            self._group(row["storage"]["group"], t.untyped_storage(), path)
            if self.check_bytes and torch_view_bytes(t).hex() != row["data"]:
                _fail(path, f"tensor values differ from the recorded ones: {t!r}")
        attrs = dict(t.__dict__)
        recorded = row.get("attrs", {})
        if sorted(attrs) != sorted(recorded):
            _fail(path, f"tensor attributes {sorted(attrs)} != recorded {sorted(recorded)}")
        for k, ev in recorded.items():
            self.cmp(attrs[k], ev, (*path, f".{k}"))

    def cmp_numpy_array(self, a: Any, row: dict[str, Any], path: tuple[Any, ...]) -> None:
        if type(a) is not np.ndarray:
            _fail(path, f"a tensor should be a numpy array, not {type(a).__qualname__}")
        if list(a.shape) != row["shape"]:
            _fail(path, f"shape {list(a.shape)} != recorded {row['shape']}")
        dt = row["dtype"]
        row = {**row, **self.original.get(row["path"], {})}
        recorded = row["data"]
        if dt in NUMPY_DTYPES:
            want = np.dtype(NUMPY_DTYPES[dt])
            kind = "exact"
        elif dt in UPCAST_TARGETS and self.unsupported_dtype == "upcast":
            want = np.dtype(UPCAST_TARGETS[dt])
            kind = "upcast"
        else:
            want = np.dtype(RAW_UINT[row["itemsize"]])
            kind = "raw"
        if a.dtype.newbyteorder("=") != want.newbyteorder("="):
            _fail(path, f"numpy dtype {a.dtype} != {want} for torch {dt} ({kind})")
        if not self.check_bytes:
            return
        if kind == "upcast":
            ref = np.frombuffer(bytes.fromhex(row["upcast"]["data"]), dtype=want).reshape(a.shape)
            if not same_values(np.asarray(a, dtype=want), ref):
                _fail(path, f"upcast values {a!r} != torch's conversion {ref!r}")
        elif array_bytes(a).hex() != recorded:
            _fail(path, f"array values differ from the recorded ones: {a!r}")
        swapped = self.exp["facts"].get("byteorder") not in (None, sys.byteorder) and row["itemsize"] > 1
        if kind != "upcast" and not swapped and row["storage"]["nbytes"]:
            # views of one storage share one buffer, as torch's tensors share one storage
            base = _root_base(a)
            group = row["storage"]["group"]
            known = self.group_of.get(id(base))
            if known is None:
                if group in self.group_base:
                    _fail(path, f"storage group {group} is split over several buffers")
                self.group_of[id(base)] = group
                self.group_base[group] = base
                self.keep.append(base)
            elif known != group:
                _fail(path, f"shares a buffer with group {known}, recorded group {group}")


UPCAST_TARGETS = {
    "bfloat16": "<f4", "float8_e5m2": "<f4", "float8_e4m3fn": "<f4", "float8_e5m2fnuz": "<f4",
    "float8_e4m3fnuz": "<f4", "float8_e8m0fnu": "<f4", "complex32": "<c8",
}


def _root_base(a: np.ndarray) -> Any:
    while isinstance(a, np.ndarray) and a.base is not None:
        a = a.base
    return a


def compare_to_expected(actual: Any, exp: dict[str, Any], flavor: str = "torch", **kw: Any) -> None:
    """Raise :class:`Difference` at the first way ``actual`` differs from the recorded answer.

    ``flavor`` is ``torch`` (``ckpt.load``) or ``numpy`` (``ckpt.load(as_="numpy")``, with
    ``unsupported_dtype=``). ``check_bytes=False`` skips values (meta tensors);
    ``original`` maps tensor paths to ``{"data": hex, "upcast": {...}}`` that replace the
    recorded values (numpy flavour only). ``check_empty_storages=False`` ignores the sharing of
    empty storages (torch shares them under mmap=True only).
    """
    _ExpectedComparer(exp, flavor, **kw).cmp(actual, exp["root"])


@pytest.fixture(scope="session")
def helpers() -> types.SimpleNamespace:
    """The helper functions of this module, for tests (see the module docs)."""
    return types.SimpleNamespace(
        REPO=REPO, FIXTURES=FIXTURES, EXPECTED=EXPECTED, ORACLE_NAMES=ORACLE_NAMES, HAS_TORCH=HAS_TORCH,
        expected=expected, fixture_path=fixture_path, twin_path=twin_path, require_torch=require_torch,
        compare_loaded=compare_loaded, compare_to_expected=compare_to_expected, Difference=Difference,
        torch_view_bytes=torch_view_bytes, array_bytes=array_bytes, same_values=same_values,
    )
