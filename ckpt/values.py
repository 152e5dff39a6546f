"""Plain values ckpt builds in place of the objects a pickle asks for.

None of these classes runs anything: they record what the file said. ``GlobalRef`` stands for a
global the file named (a class or function ckpt will not import); ``InertObject`` records a call or
instantiation of one (its arguments, the state BUILD gave it, items appended or set on it).

>>> ref = GlobalRef("argparse", "Namespace")
>>> obj = InertObject(ref.qualname, args=(), kwargs=None)
>>> obj.state = {"lr": 0.1}
>>> obj
<inert argparse.Namespace state={'lr': 0.1}>
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from typing import Any


class GlobalRef:
    """A global the pickle named (``module.name``) and ckpt did not import.

    ``op`` is set for names ckpt has a :mod:`profile <ckpt.profiles>` for: calling the global then
    runs ckpt's own constructor (an :class:`~ckpt.pickle_vm.Op`) instead of recording the call,
    while the global stored as a value (a class object kept as data) stays this reference.
    """

    __slots__ = ("module", "name", "op")

    def __init__(self, module: str, name: str, op: Any = None) -> None:
        self.module = module
        self.name = name
        self.op = op

    @property
    def qualname(self) -> str:
        return f"{self.module}.{self.name}"

    def __repr__(self) -> str:
        return f"<global {self.qualname}>"


class InertObject:
    """What a pickle asked to build from a global ckpt does not run: a record, never the object.

    ``how`` says which opcode asked: ``reduce`` (a call), ``newobj`` (``cls.__new__``), ``inst``
    (protocol 0 instantiation). ``state`` is what BUILD passed (``None`` if none);
    ``listitems``/``dictitems`` what APPEND/SETITEM added.
    """

    __slots__ = ("global_name", "args", "kwargs", "how", "state", "listitems", "dictitems")

    def __init__(
        self,
        global_name: str,
        *,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        how: str = "reduce",
    ) -> None:
        self.global_name = global_name
        self.args = args
        self.kwargs = kwargs
        self.how = how
        self.state: Any = None
        self.listitems: list[Any] = []
        self.dictitems: list[tuple[Any, Any]] = []

    def __repr__(self) -> str:
        parts = [f"<inert {self.global_name}"]
        if self.args:
            parts.append(f"args={_brief(self.args)}")
        if self.kwargs:
            parts.append(f"kwargs={_brief(self.kwargs)}")
        if self.state is not None:
            parts.append(f"state={_brief(self.state)}")
        if self.listitems:
            parts.append(f"items={len(self.listitems)}")
        if self.dictitems:
            parts.append(f"entries={len(self.dictitems)}")
        return " ".join(parts) + ">"


def _brief(value: Any, limit: int = 60) -> str:
    return brief_repr(value, limit)


_REPR_DEPTH = 3
_REPR_ITEMS = 6
_REPR_INT_BITS = 4096
_CONTAINERS = (list, tuple, set, frozenset, dict, OrderedDict, Counter)  # exact types: Size keeps its repr


def brief_repr(value: Any, limit: int = 60) -> str:
    """A short ``repr`` whose cost is bounded whatever ``value`` holds.

    Values come from files: containers may be shared many times over ("billion laughs"), cyclic or
    nested a million deep, and ints may have more digits than ``repr`` will print. At most
    ``_REPR_ITEMS`` items of ``_REPR_DEPTH`` levels are shown, an inert object inside another
    value is shown by its name only, and nothing is ever rendered in full before truncation.

    >>> brief_repr([[1, 2], {"a": (3,)}])
    "[[1, 2], {'a': (3,)}]"
    >>> brief_repr(list(range(100)))
    '[0, 1, 2, 3, 4, 5, ...]'
    """
    try:
        text = _bounded(value, _REPR_DEPTH, limit)
    except Exception:  # a repr must never break a message or a summary
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _bounded(value: Any, depth: int, limit: int) -> str:
    t = type(value)
    if t is str or t is bytes or t is bytearray:
        return repr(value[:limit]) + ("..." if len(value) > limit else "")
    if t is int:
        bits = value.bit_length()
        return repr(value) if bits <= _REPR_INT_BITS else f"<int of {bits} bits>"
    if t is InertObject:
        return f"<inert {value.global_name}>"
    if t in _CONTAINERS:
        name = t.__name__
        if depth <= 0:
            return f"<{name} of {len(value)}>"
        if isinstance(value, dict):
            items = [f"{_bounded(k, depth - 1, limit)}: {_bounded(v, depth - 1, limit)}"
                     for k, v in _first(dict.items(value))]
            open_, close = ("{", "}") if t is dict else (f"{name}({{", "})")
        else:
            items = [_bounded(x, depth - 1, limit) for x in _first(value)]
            if isinstance(value, list):
                open_, close = "[", "]"
            elif isinstance(value, tuple):
                open_, close = "(", ",)" if len(value) == 1 else ")"
            else:
                open_, close = f"{name}({{", "})"
        if len(value) > _REPR_ITEMS:
            items.append("...")
        return open_ + ", ".join(items) + close
    return repr(value)


def _first(items: Any) -> list[Any]:
    out = []
    for x in items:
        if len(out) == _REPR_ITEMS:
            break
        out.append(x)
    return out


class Device:
    """A ``torch.device`` as data: ``type`` (``cuda``) and optional ``index``.

    >>> str(Device("cuda", 1)), str(Device("cpu"))
    ('cuda:1', 'cpu')
    """

    __slots__ = ("type", "index")

    def __init__(self, type: str, index: int | None = None) -> None:
        self.type = type
        self.index = index

    def __str__(self) -> str:
        return self.type if self.index is None else f"{self.type}:{self.index}"

    def __repr__(self) -> str:
        return f"device({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Device) and (self.type, self.index) == (other.type, other.index)

    def __hash__(self) -> int:
        return hash((self.type, self.index))


class Size(tuple):  # type: ignore[type-arg]
    """A ``torch.Size`` as data: a tuple of ints."""

    def __repr__(self) -> str:
        return f"Size({list(self)!r})"


class TorchConstant:
    """A named torch constant that is not a dtype: a layout (``torch.sparse_coo``), a qscheme, ..."""

    __slots__ = ("kind", "name")

    def __init__(self, kind: str, name: str) -> None:
        self.kind = kind
        self.name = name

    def __repr__(self) -> str:
        return self.name

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TorchConstant) and (self.kind, self.name) == (other.kind, other.name)

    def __hash__(self) -> int:
        return hash((self.kind, self.name))


class Record(dict):  # type: ignore[type-arg]
    """An object of a class ckpt has a profile for, rebuilt as data: its fields are the items.

    ``type`` is the ``module.name`` the file named (``argparse.Namespace``); ``info`` holds what
    the object carried besides its fields (an OmegaConf container's metadata, ...). Fields read as
    attributes too, as on the original object (``args.lr``); nothing of the class is imported.

    >>> r = Record("argparse.Namespace", {"lr": 0.1})
    >>> r.lr, r["lr"], r.type
    (0.1, 0.1, 'argparse.Namespace')
    """

    __slots__ = ("type", "info", "takes_items", "profile")

    def __init__(self, type: str, fields: Any = (), *, takes_items: bool = False, profile: Any = None) -> None:
        super().__init__(fields)
        self.type = type
        self.info: dict[str, Any] = {}
        self.takes_items = takes_items
        self.profile = profile

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):  # copy, pickle and friends probe for special methods
            raise AttributeError(name)
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"the record has no field {name!r}") from None

    def __reduce__(self) -> Any:
        return _remake, (Record, self.type, dict(self), self.info, self.takes_items)

    def __ckpt_build__(self, state: Any) -> None:
        if self.profile is None:
            from .errors import CorruptCheckpointError

            raise CorruptCheckpointError(f"BUILD on a {self.type} record is not allowed")
        self.profile.build(self, state)

    def __repr__(self) -> str:
        return f"{self.type}({dict.__repr__(self)})"

    __hash__ = None  # type: ignore[assignment]


class ListRecord(list):  # type: ignore[type-arg]
    """A list-like object of a profiled class (an OmegaConf ``ListConfig``), rebuilt as a list.

    ``type`` and ``info`` as in :class:`Record`.
    """

    __slots__ = ("type", "info", "profile")

    def __init__(self, type: str, items: Any = (), *, profile: Any = None) -> None:
        super().__init__(items)
        self.type = type
        self.info: dict[str, Any] = {}
        self.profile = profile

    def __ckpt_build__(self, state: Any) -> None:
        if self.profile is None:
            from .errors import CorruptCheckpointError

            raise CorruptCheckpointError(f"BUILD on a {self.type} record is not allowed")
        self.profile.build(self, state)

    def __repr__(self) -> str:
        return f"{self.type}({list.__repr__(self)})"

    def __reduce__(self) -> Any:
        return _remake, (ListRecord, self.type, list(self), self.info, None)


def _remake(cls: type, type_name: str, content: Any, info: dict[str, Any], takes_items: Any) -> Any:
    """Copy and pickle support for :class:`Record` and :class:`ListRecord` (profile not kept)."""
    out = cls(type_name, content) if takes_items is None else cls(type_name, content, takes_items=takes_items)
    out.info = info
    return out


class EnumMember:
    """A member of an enum class ckpt has a profile for: ``(type, value)``, with the member's name
    where the profile knows it.

    >>> EnumMember("deepspeed.runtime.zero.config.ZeroStageEnum", 2, "gradients")
    <ZeroStageEnum.gradients: 2>
    """

    __slots__ = ("type", "value", "name")

    def __init__(self, type: str, value: Any, name: str | None = None) -> None:
        self.type = type
        self.value = value
        self.name = name

    def __eq__(self, other: object) -> bool:
        return isinstance(other, EnumMember) and (self.type, self.value) == (other.type, other.value)

    def __hash__(self) -> int:
        return hash((self.type, self.value))

    def __repr__(self) -> str:
        short = self.type.rsplit(".", 1)[-1]
        return f"<{short}.{self.name if self.name is not None else '?'}: {self.value!r}>"
