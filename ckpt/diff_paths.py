"""Flatten a checkpoint to dotted paths, the common ground on which ``ckpt diff`` matches two files.

Every format ckpt reads becomes the same thing here: a :class:`Flat` view, ``{dotted path:
tensor}`` and ``{dotted path: value}``. A nested training checkpoint and a flat safetensors file
made from it meet on paths such as ``model.layers.0.weight`` or ``optimizer.state.0.exp_avg``.

* Dict keys and list/tuple indices are joined with ``.`` (as ``ckpt inspect`` prints them).
  Lists and tuples of scalars (``betas``, ``params``) and empty containers are one value each.
* A container reachable from several places is listed at each of them (as ``torch.load``'s
  result shows it); a container that contains itself is cut at the cycle.
* :data:`RESOLVERS` lets a format fill in what it could not store as such: tensors it wrote once
  for several names (tied weights become *aliases*) and non-tensor values it kept as metadata.
  The safetensors reader and ``ckpt convert`` register one for the ``__metadata__`` they write, so a
  checkpoint and its conversion compare as the same.
* ``key`` (``--key``) picks a subtree by path prefix, ``only``/``exclude`` select by glob.

>>> flat = flatten({"model": {"w": 1, "b": [0.9, 0.999]}, "step": 3, "log": []})
>>> sorted(flat.values.items())
[('log', []), ('model.b', [0.9, 0.999]), ('model.w', 1), ('step', 3)]
>>> select(flat, key="model").values
{'w': 1, 'b': [0.9, 0.999]}
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import CheckpointError, ResourceLimitError
from .tensors import TensorRef
from .values import InertObject
from .walk import MAPPINGS, children, is_container, is_scalar_collection, key_str

if TYPE_CHECKING:
    from .checkpoint import Checkpoint

MAX_ENTRIES = 20_000_000
"""Most paths one side may expand to (containers shared many times over multiply paths)."""


@dataclass
class Flat:
    """One side of a diff: tensors and non-tensor values by dotted path, in file order.

    ``containers`` maps the path of every dict/list/object to its type name (``kinds`` for inert
    objects); ``notes`` says what was merged or cut while flattening.
    """

    tensors: dict[str, TensorRef] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)
    containers: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    aliases: dict[str, str] = field(default_factory=dict)
    """Paths that a resolver said stand for another path's tensor (alias -> target)."""

    def __len__(self) -> int:
        return len(self.tensors) + len(self.values)


@dataclass
class Resolution:
    """What a format resolver adds to a flattened checkpoint.

    * ``aliases``: ``{path: target path}``: the tensor at ``target`` also stands at ``path``
      (tied weights a converter wrote once).
    * ``values``: ``{path: value}``: non-tensor values the format kept as metadata (epoch, step,
      optimizer ``param_groups``), as dotted paths like any other value.
    * ``root``: the whole object tree the file stands for (``ckpt convert``'s recorded tree, its
      tensors being the file's own lazy tensors); when given, the flattened view is rebuilt from
      it, tensors it does not reach are kept at their stored paths, and ``aliases`` and
      ``values`` add to it as usual.
    * ``notes``: anything the user should know about how the file was read.
    """

    aliases: dict[str, str] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    root: Any = field(default=None)
    has_root: bool = False

    def __post_init__(self) -> None:
        if self.root is not None:
            self.has_root = True


Resolver = Callable[["Checkpoint"], "Resolution | None"]

RESOLVERS: dict[str, list[Resolver]] = {}
"""Resolvers by checkpoint format (``Checkpoint.format``): each gets the opened checkpoint and
returns a :class:`Resolution` or None when it has nothing to add."""


def register_resolver(fmt: str) -> Callable[[Resolver], Resolver]:
    """Decorator: run ``fn(checkpoint)`` for every checkpoint of format ``fmt`` that diff flattens.

    >>> @register_resolver("example-format")
    ... def tied(ck):
    ...     return Resolution(aliases={"lm_head.weight": "embed.weight"})
    >>> RESOLVERS.pop("example-format") == [tied]
    True
    """

    def add(fn: Resolver) -> Resolver:
        RESOLVERS.setdefault(fmt, []).append(fn)
        return fn

    return add


def _atomic(value: Any) -> bool:
    t = type(value)
    if t in MAPPINGS:
        return not value
    return is_scalar_collection(value)


def flatten(root: Any, *, max_depth: int = 512, max_entries: int = MAX_ENTRIES) -> Flat:
    """Every tensor and value reachable from ``root`` by dotted path (see the module docs).

    Raises :class:`~ckpt.errors.ResourceLimitError` if the tree nests deeper than ``max_depth``
    or expands to more than ``max_entries`` paths.
    """
    flat = Flat()
    tensors, values, containers = flat.tensors, flat.values, flat.containers
    dup: list[str] = []
    count = 0

    def put(table: dict[str, Any], path: str, value: Any) -> None:
        if path in tensors or path in values:
            dup.append(path)
            return
        table[path] = value

    # stack of (path prefix, children iterator, id of the container, depth)
    if type(root) is TensorRef:
        tensors[""] = root
        if not root.attrs:
            return flat
        stack = [("", iter(root.attrs.items()), id(root), 1)]
    elif is_container(root) and not _atomic(root):
        containers[""] = _kind(root)
        if type(root) is InertObject:
            values[""] = root
        stack = [("", children(root), id(root), 1)]
    else:
        values[""] = root
        return flat
    ancestors = {id(root)}
    while stack:
        prefix, it, cid, depth = stack[-1]
        for key, value in it:
            count += 1
            if count > max_entries:
                raise ResourceLimitError(
                    f"the object tree expands to more than {max_entries:,} paths (containers shared "
                    "many times over?); diff compares paths one by one and stops here"
                )
            name = key_str(key)
            path = f"{prefix}.{name}" if prefix else name
            t = type(value)
            if t is TensorRef:
                put(tensors, path, value)
                if value.attrs and id(value) not in ancestors:
                    stack.append((path, iter(value.attrs.items()), id(value), depth + 1))
                    ancestors.add(id(value))
                    break
            elif is_container(value) and not _atomic(value):
                if id(value) in ancestors:
                    flat.notes.append(f"{path} contains itself (a cycle); compared down to there")
                    put(values, path, _Cycle())
                    continue
                if depth >= max_depth:
                    raise ResourceLimitError(f"the object tree nests deeper than {max_depth} levels at {path[:200]!r}")
                containers[path] = _kind(value)
                if t is InertObject:
                    put(values, path, value)
                stack.append((path, children(value), id(value), depth + 1))
                ancestors.add(id(value))
                break
            else:
                put(values, path, value)
        else:
            stack.pop()
            ancestors.discard(cid)
    if dup:
        shown = ", ".join(repr(p) for p in dup[:3]) + (f" and {len(dup) - 3} more" if len(dup) > 3 else "")
        flat.notes.append(
            f"{len(dup)} dotted paths occur twice ({shown}: a key with dots beside nested keys); the first "
            "of each is compared"
        )
    return flat


class _Cycle:
    """Stands for a container that contains itself (cut there)."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Cycle)

    def __hash__(self) -> int:
        return 0

    def __repr__(self) -> str:
        return "<cycle>"


def _kind(value: Any) -> str:
    if type(value) is InertObject:
        return value.global_name
    return type(value).__name__


def resolve(flat: Flat, checkpoint: Checkpoint) -> Flat:
    """Apply the registered resolvers of ``checkpoint``'s format to ``flat`` (in place)."""
    for fn in RESOLVERS.get(checkpoint.format, ()):
        res = fn(checkpoint)
        if res is None:
            continue
        apply_resolution(flat, res)
    return flat


def apply_resolution(flat: Flat, res: Resolution) -> None:
    """Add a resolver's aliases and values to ``flat``; paths already present win. A resolution
    with a ``root`` first replaces ``flat``'s contents with the flattened root."""
    if res.has_root:
        _rebuild(flat, res.root)
    for alias, target in res.aliases.items():
        t = flat.tensors.get(target)
        if t is None:
            flat.notes.append(f"alias {alias!r} points at {target!r}, which holds no tensor")
            continue
        if alias not in flat.tensors and alias not in flat.values:
            flat.tensors[alias] = t
            flat.aliases[alias] = target
    for path, value in res.values.items():
        if path not in flat.tensors and path not in flat.values:
            flat.values[path] = value
    flat.notes.extend(res.notes)


def _rebuild(flat: Flat, root: Any) -> None:
    stored = flat.tensors
    tree = flatten(root)
    reached = {id(t.storage) for t in tree.tensors.values() if t.storage is not None}
    reached_ids = {id(t) for t in tree.tensors.values()}
    left = [p for p, t in stored.items() if id(t) not in reached_ids
            and (t.storage is None or id(t.storage) not in reached)]
    for path in left:
        if path not in tree.tensors and path not in tree.values:
            tree.tensors[path] = stored[path]
    if left:
        shown = ", ".join(repr(p) for p in left[:3]) + (f" and {len(left) - 3} more" if len(left) > 3 else "")
        tree.notes.append(f"{len(left)} stored tensors are not in the recorded tree ({shown}); compared at their stored names")
    first: dict[tuple[int, int, tuple[int, ...], tuple[int, ...], Any], str] = {}
    for path, t in tree.tensors.items():
        k = (id(t.storage) if t.storage is not None else id(t), t.offset, t.shape, t.stride, t.dtype)
        if k in first:
            tree.aliases[path] = first[k]
        else:
            first[k] = path
    flat.tensors, flat.values, flat.containers = tree.tensors, tree.values, tree.containers
    flat.aliases = tree.aliases
    flat.notes.extend(tree.notes)


def select(flat: Flat, *, key: str | None = None) -> Flat:
    """The part of ``flat`` under dotted path ``key``, with ``key.`` removed from its paths.

    Raises :class:`~ckpt.errors.CheckpointError` when nothing lies there.
    """
    if not key:
        return flat
    prefix = key + "."
    cut = len(prefix)

    def sub(table: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for path, value in table.items():
            if path == key:
                out[""] = value
            elif path.startswith(prefix):
                out[path[cut:]] = value
        return out

    picked = Flat(tensors=sub(flat.tensors), values=sub(flat.values), containers=sub(flat.containers),
                  notes=list(flat.notes),
                  aliases={k[cut:]: v[cut:] for k, v in flat.aliases.items() if k.startswith(prefix) and v.startswith(prefix)})
    if not picked.tensors and not picked.values and not picked.containers:
        top = sorted({p.split(".", 1)[0] for p in (*flat.tensors, *flat.values) if p})
        shown = ", ".join(top[:12]) + (", ..." if len(top) > 12 else "")
        raise CheckpointError(f"key {key!r} matches nothing", hint=f"top-level keys: {shown or 'none'}")
    return picked


def glob_matcher(patterns: Sequence[str]) -> Callable[[str], bool] | None:
    """One predicate for several ``fnmatch`` globs (``*`` crosses dots), or None for no patterns."""
    if not patterns:
        return None
    regex = re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))
    return lambda path: regex.match(path) is not None


def filter_paths(flat: Flat, *, only: Iterable[str] = (), exclude: Iterable[str] = ()) -> Flat:
    """Keep the paths that match one of ``only`` (if any) and none of ``exclude``."""
    keep = glob_matcher(list(only))
    drop = glob_matcher(list(exclude))
    if keep is None and drop is None:
        return flat

    def ok(path: str) -> bool:
        return (keep is None or keep(path)) and (drop is None or not drop(path))

    return Flat(
        tensors={p: t for p, t in flat.tensors.items() if ok(p)},
        values={p: v for p, v in flat.values.items() if ok(p)},
        containers=flat.containers,
        notes=flat.notes,
        aliases={p: t for p, t in flat.aliases.items() if ok(p)},
    )


def renamed(flat: Flat, renames: dict[str, str]) -> Flat:
    """``flat`` with path prefixes renamed (``{"optimizer.state.3": "optimizer.state.1"}``)."""
    if not renames:
        return flat

    def move(path: str) -> str:
        for old, new in renames.items():
            if path == old:
                return new
            if path.startswith(old + "."):
                return new + path[len(old):]
        return path

    return Flat(
        tensors={move(p): t for p, t in flat.tensors.items()},
        values={move(p): v for p, v in flat.values.items()},
        containers={move(p): c for p, c in flat.containers.items()},
        notes=flat.notes,
        aliases={move(p): move(t) for p, t in flat.aliases.items()},
    )
