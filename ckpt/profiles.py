"""Profiles: how ckpt rebuilds, as inert data, the non-tensor objects real checkpoints hold.

torch's safe loader refuses numpy scalars, ``argparse.Namespace``, Lightning's ``AttributeDict``,
OmegaConf configs, DeepSpeed's enums and loss scalers, ``pathlib`` paths, ``datetime`` values, ...,
and users answer by switching safety off. A *profile* says, for one ``module.name`` exactly, what
ckpt builds instead, in its own code and never by importing the class: the table below is data,
and adding a class is one :class:`Profile` line (its name, its group, the kind of value it becomes
and, for objects, the fields its BUILD state may set and how each is checked).

Profiles come in groups (:data:`GROUPS`). The *value* groups (:data:`DEFAULT_GROUPS`: built-in
values and type names, ``datetime``, ``pathlib``, ``collections``, ``typing``, ``numpy``) rebuild
plain values: the same value ``pickle`` would give (a path as its pure twin, equal to it), so
``ckpt.load`` reads them by default. The *record* groups (``argparse``, ``lightning``,
``omegaconf``, ``deepspeed``) rebuild stand-ins, :class:`~ckpt.values.Record` (a dict of the
object's fields), :class:`~ckpt.values.ListRecord` and :class:`~ckpt.values.EnumMember`: they are
inert too, but they are not the class the file's author saved, so ``ckpt.load`` reads them only
when asked (``allow=["argparse.Namespace"]`` or ``profiles=[..., "argparse"]``). ``ckpt inspect``
always shows every profiled object as data; it lists the ones ``ckpt.load`` would refuse as
findings, as for any global outside the default allowlist.

>>> BY_NAME["argparse.Namespace"].group, BY_NAME["argparse.Namespace"].kind
('argparse', 'object')
>>> sorted(DEFAULT_GROUPS)
['builtins', 'collections', 'datetime', 'numpy', 'pathlib', 'typing']
"""

from __future__ import annotations

import datetime as _datetime
import pathlib as _pathlib
from collections import Counter, OrderedDict, defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import CorruptCheckpointError
from .pickle_vm import Op, check_hashable, settled
from .values import EnumMember, GlobalRef, InertObject, ListRecord, Record

if TYPE_CHECKING:
    from .rebuild import Builder

GROUPS: dict[str, str] = {
    "builtins": "Python built-in values (bytes, frozenset, slice, range, Ellipsis) and built-in types named as values",
    "typing": "typing names stored as values (typing.Any, typing.Dict, ...), as OmegaConf metadata holds them",
    "datetime": "datetime, date, time, timedelta and fixed-offset timezone values",
    "pathlib": "pathlib paths, as pure paths (no file-system access)",
    "collections": "collections.defaultdict whose factory is a built-in type",
    "numpy": "numpy scalars, arrays (never object arrays), dtypes and scalar/dtype classes",
    "argparse": "argparse.Namespace, as a record of its attributes",
    "lightning": "Lightning's AttributeDict hyper-parameters, as a record of their items",
    "omegaconf": "OmegaConf DictConfig/ListConfig, as a record of their values (and their node and metadata classes)",
    "deepspeed": "DeepSpeed's ZeroStageEnum and loss scalers, as enum members and records",
}
DEFAULT_GROUPS: frozenset[str] = frozenset({"builtins", "typing", "datetime", "pathlib", "collections", "numpy"})
"""Groups ``ckpt.load`` and ``ckpt.open`` use unless told otherwise: their results are plain values."""

Check = Callable[[Any], bool]


def _number(v: Any) -> bool:
    return type(v) in (int, float, bool) or type(v).__module__ == "numpy"


def _int(v: Any) -> bool:
    return type(v) is int


def _bool(v: Any) -> bool:
    return type(v) is bool


def _anything(v: Any) -> bool:
    return True


def _optional(check: Check) -> Check:
    return lambda v: v is None or check(v)


@dataclass(frozen=True)
class Profile:
    """How one global (``name``, exactly as ``module.name``) is rebuilt.

    ``kind``: ``value`` (the global stands for a fixed value: a type, a constant), ``call`` (a
    call of it is ``make(builder, *args)``, ckpt's own function), ``object``/``dict``/``list``
    (``NEWOBJ``/``REDUCE`` with no arguments makes a :class:`~ckpt.values.Record` /
    item-taking record / :class:`~ckpt.values.ListRecord`, which BUILD fills), ``enum`` (a call
    with the member's value makes an :class:`~ckpt.values.EnumMember`).
    ``fields`` (object kinds) maps the BUILD-state fields that are checked to their check; with
    ``only_fields`` no other field is accepted. ``on_build`` replaces the default BUILD (fields
    become items). ``members`` (enums) maps each value to its member name; other values are refused.
    ``becomes`` says what it turns into, for the documentation.
    """

    name: str
    group: str
    kind: str
    becomes: str
    make: Callable[..., Any] | None = None
    value: Callable[[], Any] | None = None
    fields: Mapping[str, Check] = field(default_factory=dict)
    only_fields: bool = False
    on_build: Callable[[Any, Any], None] | None = None
    members: Mapping[Any, str] | None = None

    @property
    def module(self) -> str:
        return self.name.rsplit(".", 1)[0]

    @property
    def attr(self) -> str:
        return self.name.rsplit(".", 1)[1]

    @property
    def default(self) -> bool:
        """Read by ``ckpt.load`` without being asked for."""
        return self.group in DEFAULT_GROUPS

    # -- what the resolver hands the VM ------------------------------------------------------

    def bind(self, builder: Builder) -> Any:
        """The value a pickle gets for this global, with constructors bound to ``builder``."""
        kind = self.kind
        if kind == "value":
            assert self.value is not None
            return self.value()
        if kind == "call":
            make = self.make
            assert make is not None
            op = Op(self.name, lambda *args: make(builder, *args))
        elif kind in ("object", "dict", "list"):
            op = Op(self.name, self._new, newobj=self._new)
        elif kind == "enum":
            op = Op(self.name, self._member)
        else:  # pragma: no cover - the table is checked by the tests
            raise ValueError(f"unknown profile kind {kind!r}")
        return GlobalRef(self.module, self.attr, op)

    def _new(self, *args: Any, **kwargs: Any) -> Any:
        if args or kwargs:
            raise CorruptCheckpointError(f"{self.name} is created without arguments; the file passes {len(args)}")
        if self.kind == "list":
            return ListRecord(self.name, profile=self)
        return Record(self.name, takes_items=self.kind == "dict", profile=self)

    def _member(self, value: Any = None, *rest: Any) -> EnumMember:
        if rest:
            raise CorruptCheckpointError(f"{self.name} takes one value")
        if self.members is not None and (type(value) not in (int, str, float) or value not in self.members):
            raise CorruptCheckpointError(
                f"{value!r} is not a value of {self.name} (known: {sorted(self.members)})"
            )
        return EnumMember(self.name, value, self.members.get(value) if self.members else None)

    # -- BUILD on a record -------------------------------------------------------------------

    def build(self, record: Any, state: Any) -> None:
        """Apply a BUILD state to a record this profile made (its fields become items)."""
        if self.on_build is not None:
            self.on_build(record, state)
            return
        if type(record) is not Record:
            raise CorruptCheckpointError(f"BUILD on a {self.name} record is not allowed")
        record.update(self.state_fields(state))

    def state_fields(self, state: Any) -> dict[str, Any]:
        """The fields of a BUILD state (``__dict__``, or ``(__dict__, slots)``), checked."""
        fields = _state_dict(state, self.name)
        for key, value in fields.items():
            check = self.fields.get(key)
            if check is None:
                if self.only_fields:
                    raise CorruptCheckpointError(f"{self.name} has no field {key!r}")
            elif not check(settled(value)):
                raise CorruptCheckpointError(f"{self.name} field {key!r} holds an unexpected {type(value).__name__}")
        return fields


def _state_dict(state: Any, name: str) -> dict[str, Any]:
    if type(state) is tuple and len(state) == 2:
        merged: dict[str, Any] = {}
        for part in state:
            if part is not None:
                merged.update(_state_dict(part, name))
        return merged
    if type(state) is not dict:
        raise CorruptCheckpointError(f"the BUILD state of a {name} must be a dict, not a {type(state).__name__}")
    for key in state:
        if type(key) is not str or key.startswith("__"):
            raise CorruptCheckpointError(f"a {name} may not have the field {key!r}")
    return state


# -- builtins ------------------------------------------------------------------------------------


def _frozenset(b: Builder, items: Any = ()) -> frozenset[Any]:
    if type(items) not in (list, tuple, set, frozenset):
        raise CorruptCheckpointError(f"frozenset() of a {type(items).__name__}")
    for x in items:
        check_hashable(x, b.limits.max_key_nesting)
    return frozenset(items)


def _slice(b: Builder, *args: Any) -> slice:
    if not 1 <= len(args) <= 3 or any(type(a) not in (int, type(None)) for a in args):
        raise CorruptCheckpointError("slice() takes one to three ints or None")
    return slice(*args)


def _bytes(b: Builder, source: Any = b"", encoding: Any = None) -> bytes:
    """``bytes()``: how protocols 0-2 pickle ``b''`` (numpy's empty arrays too); also a list of byte
    values, or text with a latin-1 encoding."""
    if type(source) is bytes and encoding is None:
        return source
    if type(source) is list and encoding is None and all(type(x) is int and 0 <= x < 256 for x in source):
        return bytes(source)
    if type(source) is str and type(encoding) is str and encoding.lower() in ("latin1", "latin-1", "iso-8859-1"):
        return source.encode("latin-1")
    raise CorruptCheckpointError("bytes() takes nothing, a list of byte values, or latin-1 text")


def _range(b: Builder, *args: Any) -> range:
    if not 1 <= len(args) <= 3 or any(type(a) is not int for a in args) or (len(args) == 3 and args[2] == 0):
        raise CorruptCheckpointError("range() takes one to three ints (a non-zero step)")
    return range(*args)


# built-in types a checkpoint may name as values (a defaultdict's factory, an OmegaConf object_type)
_TYPES: dict[str, type] = {t.__name__: t for t in (list, dict, tuple, int, float, str, bool)}
_FACTORIES: dict[str, Any] = {
    **{f"builtins.{n}": t for n, t in _TYPES.items()},
    "builtins.set": set, "builtins.frozenset": frozenset, "builtins.complex": complex,
    "builtins.bytearray": bytearray, "collections.OrderedDict": OrderedDict, "collections.Counter": Counter,
}


def _defaultdict(b: Builder, factory: Any = None, *rest: Any) -> Any:
    """``defaultdict(factory)``: only built-in types as factories (a factory is called on every
    missing key); any other factory leaves an inert record."""
    if rest:
        raise CorruptCheckpointError("defaultdict() takes a factory and nothing else")
    if factory is None:
        return defaultdict(None)
    if type(factory) is type and factory in _FACTORIES.values():
        return defaultdict(factory)
    name = factory.name if type(factory) is Op else factory.qualname if type(factory) is GlobalRef else None
    if name in _FACTORIES:
        return defaultdict(_FACTORIES[name])
    return InertObject("collections.defaultdict", args=(factory,))


# -- datetime --------------------------------------------------------------------------------------


def _tz(tzinfo: Any) -> Any:
    if tzinfo is None or type(tzinfo) is _datetime.timezone:
        return tzinfo
    raise CorruptCheckpointError(f"a time zone must be a datetime.timezone, not {type(tzinfo).__name__}")


def _packed(data: Any, n: int, what: str) -> bytes:
    raw = data.encode("latin-1") if type(data) is str else data
    if type(raw) not in (bytes, bytearray) or len(raw) != n:
        raise CorruptCheckpointError(f"{what} is pickled as {n} bytes")
    return bytes(raw)


def _datetime_value(b: Builder, data: Any, tzinfo: Any = None) -> Any:
    if type(tzinfo) in (InertObject, GlobalRef):
        return InertObject("datetime.datetime", args=(data, tzinfo))
    r = _packed(data, 10, "a datetime")
    return _datetime.datetime(r[0] * 256 + r[1], r[2] & 0x7F, r[3], r[4], r[5], r[6],
                              int.from_bytes(r[7:10], "big"), _tz(tzinfo), fold=r[2] >> 7)


def _date_value(b: Builder, data: Any) -> Any:
    r = _packed(data, 4, "a date")
    return _datetime.date(r[0] * 256 + r[1], r[2], r[3])


def _time_value(b: Builder, data: Any, tzinfo: Any = None) -> Any:
    if type(tzinfo) in (InertObject, GlobalRef):
        return InertObject("datetime.time", args=(data, tzinfo))
    r = _packed(data, 6, "a time")
    return _datetime.time(r[0] & 0x7F, r[1], r[2], int.from_bytes(r[3:6], "big"), _tz(tzinfo), fold=r[0] >> 7)


def _timedelta_value(b: Builder, days: Any = 0, seconds: Any = 0, microseconds: Any = 0) -> Any:
    if any(type(x) is not int for x in (days, seconds, microseconds)):
        raise CorruptCheckpointError("timedelta() takes three ints")
    return _datetime.timedelta(days, seconds, microseconds)


def _timezone_value(b: Builder, offset: Any, name: Any = None) -> Any:
    if type(offset) is not _datetime.timedelta or (name is not None and type(name) is not str):
        raise CorruptCheckpointError("timezone() takes a timedelta and an optional name")
    return _datetime.timezone(offset) if name is None else _datetime.timezone(offset, name)


# -- pathlib -----------------------------------------------------------------------------------------


def _path(flavour: type) -> Callable[..., Any]:
    def make(b: Builder, *parts: Any) -> Any:
        if len(parts) > 10_000 or any(type(p) is not str for p in parts):
            raise CorruptCheckpointError("a path is pickled as its parts, which are strings")
        return flavour(*parts)

    return make


# -- numpy ------------------------------------------------------------------------------------------


def _np_value(path: str) -> Callable[[], Any]:
    def get() -> Any:
        import numpy

        obj: Any = numpy
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if obj is None or obj is numpy.object_ or getattr(obj, "__name__", "") == "ObjectDType":
            return GlobalRef(*("numpy." + path).rsplit(".", 1))  # not in this numpy: a plain reference
        return obj

    return get


_NUMPY_SCALARS = (
    "bool", "bool_", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "intc", "uintc",
    "intp", "uintp", "int_", "uint", "long", "ulong", "longlong", "ulonglong", "short", "ushort", "byte", "ubyte",
    "half", "single", "double", "longdouble", "float16", "float32", "float64", "float128", "float_",
    "complex64", "complex128", "complex256", "complex_", "csingle", "cdouble", "clongdouble",
    "str_", "bytes_", "void", "datetime64", "timedelta64",
)
_NUMPY_DTYPE_CLASSES = (
    "BoolDType", "Int8DType", "Int16DType", "Int32DType", "Int64DType", "UInt8DType", "UInt16DType",
    "UInt32DType", "UInt64DType", "ByteDType", "UByteDType", "ShortDType", "UShortDType", "IntDType", "UIntDType",
    "LongDType", "ULongDType", "LongLongDType", "ULongLongDType", "Float16DType", "Float32DType", "Float64DType",
    "LongDoubleDType", "Complex64DType", "Complex128DType", "CLongDoubleDType", "BytesDType", "StrDType",
    "VoidDType", "DateTime64DType", "TimeDelta64DType",
)


def _numpy_call(method: str) -> Callable[..., Any]:
    return lambda b, *args: getattr(b.numpy_values, method)(*args)


# -- OmegaConf -----------------------------------------------------------------------------------------

OMEGACONF_VALUE_NODES = tuple(
    f"omegaconf.nodes.{n}" for n in (
        "AnyNode", "StringNode", "IntegerNode", "FloatNode", "BooleanNode", "BytesNode", "PathNode", "EnumNode",
        "InterpolationResultNode",
    )
)


def _node_value(node: Any) -> Any:
    """The value an OmegaConf node holds (a container stays itself: it is a record already)."""
    for _ in range(2):  # a UnionNode wraps one value node
        if type(node) is not Record:
            return node
        if node.type in OMEGACONF_VALUE_NODES and "_val" in node:
            return node["_val"]
        if node.type == "omegaconf.base.UnionNode" and "_content" in node:
            node = node["_content"]
            continue
        return node
    return node


def _container_state(record: Any, state: Any, want: type) -> Any:
    fields = _state_dict(state, record.type)
    content = fields.get("_content")
    record.info.update((k, v) for k, v in fields.items() if k not in ("_content", "_parent", "_flags_cache"))
    if content is None or type(content) is str:  # None, '???' (missing) or an interpolation
        record.info["content"] = content
        return None
    if type(content) is not want:
        raise CorruptCheckpointError(f"the _content of a {record.type} must be a {want.__name__}")
    return content


def _dictconfig_build(record: Any, state: Any) -> None:
    if type(record) is not Record:
        raise CorruptCheckpointError("BUILD on a DictConfig record is not allowed")
    content = _container_state(record, state, dict)
    if content:
        for key, node in content.items():
            record[key] = _node_value(node)


def _listconfig_build(record: Any, state: Any) -> None:
    if type(record) is not ListRecord:
        raise CorruptCheckpointError("BUILD on a ListConfig record is not allowed")
    content = _container_state(record, state, list)
    if content:
        record.extend(_node_value(node) for node in content)


_METADATA_FIELDS: dict[str, Check] = {
    "ref_type": _anything, "object_type": _anything, "optional": _bool, "key": _anything,
    "flags": _optional(lambda v: type(v) is dict), "flags_root": _bool, "resolver_cache": _anything,
    "key_type": _anything, "element_type": _anything,
}
_NODE_FIELDS: dict[str, Check] = {"_metadata": _anything, "_parent": _anything, "_val": _anything}

# -- DeepSpeed ----------------------------------------------------------------------------------------

_LOSS_SCALER_FIELDS: dict[str, Check] = {"cur_scale": _number, "dynamic": _bool}
_DYNAMIC_LOSS_SCALER_FIELDS: dict[str, Check] = {
    **_LOSS_SCALER_FIELDS, "cur_iter": _int, "last_overflow_iter": _int, "scale_factor": _number,
    "scale_window": _int, "min_scale": _number, "delayed_shift": _int, "cur_hysteresis": _int,
    "consecutive_hysteresis": _bool, "raise_error_at_min_scale": _bool, "dtype": _anything,
}

# -- the table -------------------------------------------------------------------------------------------


def _table() -> list[Profile]:
    P = Profile
    rows: list[Profile] = [
        P("builtins.frozenset", "builtins", "call", "a `frozenset` of hashable plain values", make=_frozenset),
        P("builtins.slice", "builtins", "call", "a `slice` of ints or None", make=_slice),
        P("builtins.range", "builtins", "call", "a `range` of ints (pickled as `__builtin__.xrange` too)", make=_range),
        P("builtins.bytes", "builtins", "call", "`bytes` (`b''` pickles as `bytes()` at protocols 0-2)", make=_bytes),
        P("builtins.Ellipsis", "builtins", "value", "`Ellipsis`", value=lambda: Ellipsis),
        *(P(f"builtins.{n}", "builtins", "value", f"the type `{n}`, as a value (it is never called)",
            value=(lambda t=t: t)) for n, t in _TYPES.items()),
        *(P(f"typing.{n}", "typing", "value", f"`typing.{n}`, as a value",
            value=(lambda n=n: getattr(__import__("typing"), n))) for n in ("Any", "Dict", "List", "Tuple", "Optional")),
        P("datetime.datetime", "datetime", "call", "a `datetime` (naive, or with a fixed-offset `timezone`)",
          make=_datetime_value),
        P("datetime.date", "datetime", "call", "a `date`", make=_date_value),
        P("datetime.time", "datetime", "call", "a `time` (naive, or with a fixed-offset `timezone`)", make=_time_value),
        P("datetime.timedelta", "datetime", "call", "a `timedelta`", make=_timedelta_value),
        P("datetime.timezone", "datetime", "call", "a fixed-offset `timezone`", make=_timezone_value),
        P("collections.defaultdict", "collections", "call",
          "a `defaultdict` whose factory is a built-in type (list, dict, set, int, ...); any other factory "
          "gives an inert record", make=_defaultdict),
        P("numpy.dtype", "numpy", "call",
          "a numpy dtype, from its type string and checked state (never an object dtype)",
          make=_numpy_call("dtype")),
        P("numpy.ndarray", "numpy", "value", "the `numpy.ndarray` class, as `_reconstruct`'s argument",
          value=_np_value("ndarray")),
    ]
    for module in ("pathlib", "pathlib._local"):
        for cls, flavour in (("PurePath", _pathlib.PurePosixPath), ("PurePosixPath", _pathlib.PurePosixPath),
                             ("Path", _pathlib.PurePosixPath), ("PosixPath", _pathlib.PurePosixPath),
                             ("PureWindowsPath", _pathlib.PureWindowsPath), ("WindowsPath", _pathlib.PureWindowsPath)):
            rows.append(P(f"{module}.{cls}", "pathlib", "call", f"a `{flavour.__name__}` (equal to the {cls})",
                          make=_path(flavour)))
    for core in ("numpy.core", "numpy._core"):
        rows += [
            P(f"{core}.multiarray.scalar", "numpy", "call", "a numpy scalar, from its dtype and bytes",
              make=_numpy_call("scalar")),
            P(f"{core}.multiarray._reconstruct", "numpy", "call",
              "a numpy array, from the shape, dtype and bytes of its BUILD state (`numpy.ndarray` only)",
              make=_numpy_call("reconstruct")),
            P(f"{core}.numeric._frombuffer", "numpy", "call", "a numpy array from its bytes (protocol 5)",
              make=_numpy_call("frombuffer")),
        ]
    rows += [P(f"numpy.{n}", "numpy", "value", f"the numpy scalar type `numpy.{n}`, as a value",
               value=_np_value(n)) for n in _NUMPY_SCALARS]
    rows += [P(f"numpy.dtypes.{n}", "numpy", "value", f"the numpy dtype class `{n}`, as a value",
               value=_np_value(f"dtypes.{n}")) for n in _NUMPY_DTYPE_CLASSES]
    rows += [
        P("argparse.Namespace", "argparse", "object", "a `Record` of the namespace's attributes"),
        *(P(name, "lightning", "dict", "a `Record` of the hyper-parameters (its items)") for name in (
            "pytorch_lightning.utilities.parsing.AttributeDict",
            "lightning_fabric.utilities.data.AttributeDict",
            "lightning.fabric.utilities.data.AttributeDict",
        )),
        P("omegaconf.dictconfig.DictConfig", "omegaconf", "object",
          "a `Record` of the config's values (nested configs are records too; interpolations stay strings, "
          "unresolved); metadata in `.info`", on_build=_dictconfig_build),
        P("omegaconf.listconfig.ListConfig", "omegaconf", "list",
          "a `ListRecord` (a list) of the config's values", on_build=_listconfig_build),
        *(P(name, "omegaconf", "object", "a `Record` of the node (`_val` is its value)", fields=_NODE_FIELDS)
          for name in OMEGACONF_VALUE_NODES),
        P("omegaconf.base.UnionNode", "omegaconf", "object", "a `Record` of the node", fields=_NODE_FIELDS),
        P("omegaconf.base.Metadata", "omegaconf", "object", "a `Record` of the node metadata",
          fields=_METADATA_FIELDS),
        P("omegaconf.base.ContainerMetadata", "omegaconf", "object", "a `Record` of the container metadata",
          fields=_METADATA_FIELDS),
        P("deepspeed.runtime.zero.config.ZeroStageEnum", "deepspeed", "enum",
          "an `EnumMember` (disabled, optimizer_states, gradients, weights)",
          members={0: "disabled", 1: "optimizer_states", 2: "gradients", 3: "weights"}),
        P("deepspeed.runtime.fp16.loss_scaler.LossScaler", "deepspeed", "object",
          "a `Record` of the scaler's state (`cur_scale`, `dynamic`)", fields=_LOSS_SCALER_FIELDS),
        P("deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler", "deepspeed", "object",
          "a `Record` of the scaler's state (`cur_scale`, `cur_iter`, `scale_window`, ...)",
          fields=_DYNAMIC_LOSS_SCALER_FIELDS),
    ]
    return rows


PROFILES: tuple[Profile, ...] = tuple(_table())
BY_NAME: dict[str, Profile] = {p.name: p for p in PROFILES}


def groups(selection: str | Iterable[str] | None) -> frozenset[str]:
    """The profile groups a ``profiles=`` argument selects.

    ``None`` or ``"default"``: :data:`DEFAULT_GROUPS`; ``"all"``: every group; ``"none"``: none
    (torch's own allowlist only); or an iterable of group names.

    >>> sorted(groups(["default", "argparse"]))[:2]
    ['argparse', 'builtins']
    """
    if selection is None or selection == "default":
        return DEFAULT_GROUPS
    if selection == "all":
        return frozenset(GROUPS)
    if selection == "none":
        return frozenset()
    if isinstance(selection, str):
        selection = [selection]
    out: set[str] = set()
    for name in selection:
        if name == "default":
            out |= DEFAULT_GROUPS
        elif name == "all":
            out |= set(GROUPS)
        elif name in GROUPS:
            out.add(name)
        else:
            raise ValueError(f"unknown profile group {name!r}; the groups are {sorted(GROUPS)}, 'default' and 'all'")
    return frozenset(out)
