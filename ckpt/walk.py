"""Walk a checkpoint's object tree without recursion, visiting every container once.

Pickles may share one object between several places and may contain cycles; a "billion laughs"
pickle shares containers so that the number of *paths* explodes while the number of *objects*
stays small. :func:`walk` visits each container once (a second encounter yields a ``ref`` event
pointing at the first path), so its cost is linear in the size of the pickle, and it never
recurses, so deep nesting cannot exhaust the stack.

Dotted paths join keys with ``.``; list and tuple items are named by index:

>>> [(e.path, e.kind) for e in walk({"a": [1, {"b": 2}]})]
[('a', 'container'), ('a.0', 'value'), ('a.1', 'container'), ('a.1.b', 'value')]
"""

from __future__ import annotations

from collections import Counter, OrderedDict, defaultdict
from collections.abc import Callable, Iterator
from typing import Any

from .errors import ResourceLimitError
from .tensors import TensorRef
from .values import InertObject, ListRecord, Record

MAPPINGS = (dict, OrderedDict, Counter, defaultdict, Record)
SEQUENCES = (list, tuple, ListRecord)
SETS = (set, frozenset)


class Event:
    """One step of a walk.

    ``kind``: ``tensor``, ``value`` (a leaf), ``container`` (entering a dict/list/tuple/set/inert
    object), ``ref`` (a container already visited at ``target``), ``elided`` (deeper than the
    walk's depth limit), ``tensors`` (with ``walk(batch=True)``: a run of tensors, ``keys`` being
    their container's and ``value`` a list of ``(key, tensor)``).
    """

    __slots__ = ("kind", "keys", "value", "target")

    def __init__(self, kind: str, keys: tuple[Any, ...], value: Any, target: str | None = None) -> None:
        self.kind = kind
        self.keys = keys
        self.value = value
        self.target = target

    @property
    def path(self) -> str:
        return join_path(self.keys)

    @property
    def depth(self) -> int:
        return len(self.keys)

    def __repr__(self) -> str:
        return f"<{self.kind} {self.path!r}>"


def key_str(key: Any) -> str:
    if type(key) is str:
        return key
    if type(key) is int or type(key) is bool:
        return str(key)
    return repr(key)


def join_path(keys: tuple[Any, ...]) -> str:
    if len(keys) == 1 and type(keys[0]) is str:  # a flat state dict: the common case
        return keys[0]  # type: ignore[no-any-return]
    return ".".join([k if type(k) is str else key_str(k) for k in keys])


def is_container(value: Any) -> bool:
    t = type(value)
    return t in MAPPINGS or t in SEQUENCES or t in SETS or t is InertObject


def children(value: Any) -> Iterator[tuple[Any, Any]]:
    """``(key, child)`` pairs of a container, in order."""
    t = type(value)
    if t in MAPPINGS:
        return iter(value.items())
    if t in SEQUENCES:
        return enumerate(value)
    if t in SETS:
        return enumerate(value)
    if t is InertObject:
        return _inert_children(value)
    return iter(())


def _inert_children(obj: InertObject) -> Iterator[tuple[Any, Any]]:
    for i, a in enumerate(obj.args):
        yield f"args[{i}]", a
    if obj.kwargs:
        for k, v in obj.kwargs.items():
            yield k, v
    state = obj.state
    if type(state) in MAPPINGS:
        yield from state.items()
    elif state is not None:
        yield "state", state
    for i, item in enumerate(obj.listitems):
        yield i, item
    for k, v in obj.dictitems:
        yield k, v


def _children_or_attrs(value: Any) -> Iterator[tuple[Any, Any]]:
    if type(value) is TensorRef:
        return iter((value.attrs or {}).items())
    return children(value)


SCALARS = (str, int, float, bool, complex, type(None), bytes)


def is_scalar_collection(value: Any) -> bool:
    """A list/tuple/set holding only scalars (``betas=(0.9, 0.999)``, ``params=[0, 1, 2]``)."""
    t = type(value)
    return (t in SEQUENCES or t in SETS) and all(type(v) in SCALARS for v in value)


def walk(
    root: Any,
    *,
    max_depth: int = 512,
    include_root: bool = False,
    atomic: Callable[[Any], bool] | None = None,
    batch: bool = False,
) -> Iterator[Event]:
    """Yield :class:`Event` s for everything reachable from ``root``, depth first, in file order.

    Containers for which ``atomic(container)`` is true are yielded as ``value`` events and not
    entered (e.g. :func:`is_scalar_collection` to show ``betas`` as one value). With ``batch``,
    consecutive children of a container that are tensors without attributes come as one
    ``tensors`` event: its ``keys`` are the container's, its ``value`` a list of ``(key, tensor)``
    (a state dict of 100,000 tensors is one event, not 100,000).

    >>> [(e.kind, e.keys, len(e.value)) for e in walk({"a": {"w": t, "b": t}}, batch=True)]  # doctest: +SKIP
    [('container', ('a',), 2), ('tensors', ('a',), 2)]
    """
    seen: dict[int, tuple[Any, ...]] = {}
    if not is_container(root):
        if type(root) is TensorRef:
            yield Event("tensor", (), root)
            if not root.attrs:
                return
        else:
            yield Event("value", (), root)
            return
    seen[id(root)] = ()
    if include_root and type(root) is not TensorRef:
        yield Event("container", (), root)
    stack: list[tuple[tuple[Any, ...], Iterator[tuple[Any, Any]]]] = [((), _children_or_attrs(root))]
    run: list[tuple[Any, TensorRef]] = []
    while stack:
        prefix, it = stack[-1]
        for key, value in it:
            if type(value) is TensorRef and batch and value._extra is None:
                run.append((key, value))
                continue
            if run:
                yield Event("tensors", prefix, run)
                run = []
            keys = (*prefix, key)
            if type(value) is TensorRef:
                yield Event("tensor", keys, value)
                if value.attrs and id(value) not in seen:
                    # Python attributes saved with a tensor (``p.mask = tensor``) belong to the
                    # file like any other value: walk them once, under the tensor's path
                    seen[id(value)] = keys
                    stack.append((keys, iter(value.attrs.items())))
                    break
            elif is_container(value):
                if atomic is not None and atomic(value):
                    yield Event("value", keys, value)
                    continue
                first = seen.get(id(value))
                if first is not None:
                    yield Event("ref", keys, value, join_path(first))
                    continue
                seen[id(value)] = keys
                yield Event("container", keys, value)
                if len(keys) >= max_depth:
                    yield Event("elided", keys, value)
                    continue
                stack.append((keys, children(value)))
                break
            else:
                yield Event("value", keys, value)
        else:
            if run:
                yield Event("tensors", prefix, run)
                run = []
            stack.pop()


def iter_tensors(root: Any, *, max_depth: int = 512) -> Iterator[tuple[str, tuple[Any, ...], TensorRef]]:
    """``(path, keys, tensor)`` for every tensor reachable from ``root``.

    Raises :class:`~ckpt.errors.ResourceLimitError` if the tree nests deeper than ``max_depth``
    (so no tensor is ever silently skipped).
    """
    for event in walk(root, max_depth=max_depth):
        if event.kind == "tensor":
            yield event.path, event.keys, event.value
        elif event.kind == "elided":
            raise ResourceLimitError(
                f"the object tree nests deeper than {max_depth} levels at {event.path[:200]!r}"
            )
