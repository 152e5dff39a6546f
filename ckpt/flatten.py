"""Flatten a checkpoint's object tree into named tensors plus JSON metadata, and back.

safetensors holds a flat map of names to tensors and a ``__metadata__`` map of strings to
strings. :func:`flatten` turns any tree ``ckpt.open`` gives (a state dict, a training checkpoint
with model, optimizer, epoch and hyper-parameters) into

* ``tensors``: dotted name -> tensor, each tensor written once;
* ``aliases``: dotted name -> the name it is written under (tied weights: two paths, one view of
  one storage);
* ``tree``: the tree with every tensor replaced by a reference to its name, as JSON (``None``
  when the tree is a plain flat state dict, which safetensors holds as it is);
* ``notes``: what changed on the way (partially overlapping views written as their own tensors).

The metadata schema (``ckpt.convert/1``)
----------------------------------------
When the tree is not a flat ``{str: tensor}`` dict of plain tensors (or there are aliases or
notes), ``__metadata__["ckpt.convert/1"]`` holds a JSON object::

    {"schema": "ckpt.convert/1",
     "tree": <node>,                      # the object tree (absent for a flat state dict)
     "aliases": {"lm_head.weight": "embed.weight"},   # name -> name it is stored under
     "notes": ["..."],
     "source": {"format": "torch-zip", "file": "model.pt"}}

A ``<node>`` is plain JSON for ``None``, ``bool``, ``str``, ``int``, finite ``float``, a
``list`` (a JSON array) and a ``dict`` whose keys are all strings not starting with ``$``
(a JSON object). Everything else is an object with a ``"$"`` tag:

* ``{"$": "tensor", "name": N}``: the tensor stored (or aliased) under name ``N``; with
  ``"param": true`` for an ``nn.Parameter`` and ``"requires_grad": true`` when set;
* ``{"$": "dict", "items": [[k, v], ...]}``: a dict with non-string keys (optimizer state is
  keyed by ints) or a key starting with ``$``;
* ``{"$": "odict", "items": [[k, v], ...], "metadata": <node>}``: an ``OrderedDict`` (a
  ``state_dict()``), with its ``_metadata`` attribute when it has one;
* ``{"$": "tuple" | "set", "items": [...]}``;
* ``{"$": "float", "v": "nan" | "inf" | "-inf"}``, ``{"$": "complex", "re": x, "im": y}``,
  ``{"$": "bytes" | "bytearray", "hex": "..."}``;
* ``{"$": "size", "v": [...]}``, ``{"$": "dtype", "v": "float32"}``,
  ``{"$": "device", "v": "cuda:0"}``.

Tensor names join the keys of the path with ``.`` (list items by index), as
:func:`ckpt.walk.join_path` does: ``optimizer.state.0.exp_avg``. Two paths that give one name
(``{"a.b": t, "a": {"b": u}}``) are an error naming it; so are values the schema cannot hold
(objects of classes outside the allowlist).

>>> from ckpt.dtypes import DTYPES
>>> from ckpt.tensors import StorageRef, TensorRef
>>> s = StorageRef("0", DTYPES["float32"], "cpu", 4)
>>> w = TensorRef(s, DTYPES["float32"], (4,), (1,), 0)
>>> f = flatten({"model": {"w": w}, "epoch": 3})
>>> list(f.tensors), f.tree
(['model.w'], {'model': {'w': {'$': 'tensor', 'name': 'model.w'}}, 'epoch': 3})
"""

from __future__ import annotations

import fnmatch
import json
import math
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

from . import dtypes as _dt
from .errors import CheckpointError, UnsupportedFeatureError
from .tensors import TensorRef
from .values import Device, Size, TorchConstant
from .walk import join_path

SCHEMA = "ckpt.convert/1"
METADATA_KEY = SCHEMA


class Flattened:
    """The result of :func:`flatten` (see the module docs)."""

    def __init__(self) -> None:
        self.tensors: dict[str, Any] = {}
        self.aliases: dict[str, str] = {}
        self.tree: Any = None
        self.notes: list[str] = []
        self.excluded: list[str] = []
        self.params: set[str] = set()

    @property
    def is_flat(self) -> bool:
        return self.tree is None and not self.aliases and not self.notes

    def metadata_json(self, source: dict[str, Any] | None = None) -> str | None:
        """The ``ckpt.convert/1`` JSON string, or None when the tree needs none."""
        if self.is_flat:
            return None
        doc: dict[str, Any] = {"schema": SCHEMA}
        if self.tree is not None:
            doc["tree"] = self.tree
        if self.aliases:
            doc["aliases"] = self.aliases
        if self.notes:
            doc["notes"] = self.notes
        if source:
            doc["source"] = source
        return json.dumps(doc, separators=(",", ":"), allow_nan=False)


def is_tensor(value: Any) -> bool:
    """A lazy tensor of ``ckpt.open``, or any object offering the tensor-source interface of
    :mod:`ckpt.convert` (``dtype``, ``shape``, ``nbytes``, ``read_into(buffer)``)."""
    return type(value) is TensorRef or (hasattr(value, "read_into") and hasattr(value, "nbytes"))


def select(name: str, only: Iterable[str], exclude: Iterable[str]) -> bool:
    """True if ``name`` passes ``--only`` (any glob matches, or none given) and no ``--exclude`` glob."""
    only = list(only)
    if only and not any(fnmatch.fnmatchcase(name, g) for g in only):
        return False
    return not any(fnmatch.fnmatchcase(name, g) for g in exclude)


def subtree(root: Any, key: str) -> Any:
    """The value at dotted path ``key`` (``state_dict``, ``model.encoder``); a dict key holding
    dots is matched whole first."""
    node = root
    rest = key
    while rest:
        if isinstance(node, dict):
            if rest in node:
                return node[rest]
            head = rest.partition(".")[0]
            # the longest key that is a prefix of the rest at a dot
            parts = rest.split(".")
            for i in range(len(parts), 0, -1):
                cand = ".".join(parts[:i])
                if cand in node:
                    node, rest = node[cand], ".".join(parts[i:])
                    break
                if cand.isdigit() and int(cand) in node:
                    node, rest = node[int(cand)], ".".join(parts[i:])
                    break
            else:
                raise CheckpointError(f"--key {key!r}: no key {head!r} here (keys: "
                                      + ", ".join(repr(k) for k in list(node)[:8]) + ")")
        elif isinstance(node, (list, tuple)):
            head, _, rest = rest.partition(".")
            if not head.isdigit() or int(head) >= len(node):
                raise CheckpointError(f"--key {key!r}: {head!r} is not an index of a {len(node)}-item list")
            node = node[int(head)]
        else:
            raise CheckpointError(f"--key {key!r}: reached a {type(node).__name__}, which has no keys")
    return node


def flatten(
    root: Any,
    *,
    only: Iterable[str] = (),
    exclude: Iterable[str] = (),
    max_depth: int = 512,
) -> Flattened:
    """Flatten ``root`` (see the module docs). Tensors not selected by ``only``/``exclude`` are
    left out, and their places in the tree with them."""
    only = list(only)
    exclude = list(exclude)
    out = Flattened()
    views: dict[tuple[Any, ...], str] = {}  # (storage id, dtype, shape, stride, offset) -> name
    by_storage: dict[int, list[tuple[str, Any]]] = {}
    owners: dict[str, str] = {}  # name -> path it came from (collisions)
    active: set[int] = set()

    def tensor(value: Any, keys: tuple[Any, ...]) -> Any:
        name = join_path(keys) if keys else "tensor"
        if not select(name, only, exclude):
            out.excluded.append(name)
            return _DROP
        if name in owners:
            raise CheckpointError(f"two values flatten to the same name {name!r}; safetensors names must be unique",
                                  record=name)
        owners[name] = name
        node: dict[str, Any] = {"$": "tensor", "name": name}
        ref = value
        if type(ref) is TensorRef:
            if ref.is_parameter:
                node["param"] = True
                out.params.add(name)
            if ref.requires_grad:
                node["requires_grad"] = True
            if ref.attrs:
                out.notes.append(f"{name}: Python attributes saved with the tensor were dropped "
                                 f"({', '.join(map(str, list(ref.attrs)[:5]))})")
            if ref.storage is not None and ref.storage.nbytes:
                key = (id(ref.storage), ref.dtype, ref.shape, ref.stride, ref.offset)
                first = views.get(key)
                if first is not None:
                    out.aliases[name] = first
                    return node
                views[key] = name
                start, stop = ref.byte_range()
                peers = by_storage.setdefault(id(ref.storage), [])
                for other, (ostart, ostop) in peers:
                    if start < ostop and ostart < stop and start != stop and ostart != ostop:
                        out.notes.append(
                            f"{name} and {other} are different views of overlapping bytes of one storage; "
                            "each was written as its own tensor (they no longer share memory)"
                        )
                        break
                peers.append((name, (start, stop)))
        out.tensors[name] = ref
        return node

    def encode(value: Any, keys: tuple[Any, ...]) -> Any:
        if is_tensor(value):
            return tensor(value, keys)
        t = type(value)
        if value is None or t is bool or t is str or t is int:
            return value
        if t is float:
            if math.isfinite(value):
                return value
            return {"$": "float", "v": "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")}
        if t is complex:
            return {"$": "complex", "re": encode(value.real, keys), "im": encode(value.imag, keys)}
        if t is bytes or t is bytearray:
            return {"$": "bytes" if t is bytes else "bytearray", "hex": value.hex()}
        if t is Size:
            return {"$": "size", "v": list(value)}
        if t is _dt.DType:
            return {"$": "dtype", "v": value.name}
        if t is Device:
            return {"$": "device", "v": str(value)}
        if t is TorchConstant and value.kind == "dtype":
            return {"$": "dtype", "v": value.name.split(".", 1)[-1]}
        if len(keys) >= max_depth:
            raise CheckpointError(f"the object tree nests deeper than {max_depth} levels at {join_path(keys)[:200]!r}")
        if id(value) in active:
            raise UnsupportedFeatureError(f"the object tree holds a cycle at {join_path(keys)[:200]!r}; "
                                          "safetensors metadata cannot hold it")
        if t is dict or t is OrderedDict:
            active.add(id(value))
            try:
                items = []
                for k, v in value.items():
                    if not (k is None or type(k) in (str, int, bool, float)):
                        raise UnsupportedFeatureError(
                            f"a dict key of type {type(k).__name__} at {join_path(keys)[:200]!r} cannot be kept in "
                            "safetensors metadata")
                    enc = encode(v, (*keys, k))
                    if enc is not _DROP:
                        items.append((k, enc))
                if t is OrderedDict:
                    node: dict[str, Any] = {"$": "odict", "items": [[encode(k, keys), v] for k, v in items]}
                    meta = getattr(value, "_metadata", None)
                    if meta is not None:
                        node["metadata"] = encode(meta, (*keys, "_metadata"))
                    return node
                if all(type(k) is str and not k.startswith("$") for k, _ in items):
                    return dict(items)
                return {"$": "dict", "items": [[encode(k, keys), v] for k, v in items]}
            finally:
                active.discard(id(value))
        if t is list or t is tuple or t is set or t is frozenset:
            active.add(id(value))
            try:
                seq = sorted(value, key=repr) if t in (set, frozenset) else value
                enc_items = [encode(v, (*keys, i)) for i, v in enumerate(seq)]
                enc_items = [None if e is _DROP else e for e in enc_items]
                if t is list:
                    return enc_items
                return {"$": "tuple" if t is tuple else "set", "items": enc_items}
            finally:
                active.discard(id(value))
        raise UnsupportedFeatureError(
            f"{join_path(keys)[:200] or 'the root'!r} is a {type(value).__name__} ({str(value)[:80]}), which safetensors "
            "metadata cannot hold; select the part to convert with --key, or leave it out",
            record=join_path(keys)[:200] or None,
        )

    flat = (type(root) is dict or type(root) is OrderedDict) and all(type(k) is str for k in root)
    if flat:
        for k, v in root.items():
            if not is_tensor(v) or (type(v) is TensorRef and (v.is_parameter or v.requires_grad or v.attrs)):
                flat = False
                break
        if flat and type(root) is OrderedDict and getattr(root, "_metadata", None) is not None:
            flat = False
    tree = encode(root, ())
    if tree is _DROP:
        tree = None
    if flat and not out.aliases:
        out.tree = None
    else:
        out.tree = tree
    return out


class _Drop:
    def __repr__(self) -> str:
        return "<dropped>"


_DROP = _Drop()


def unflatten(doc: dict[str, Any], tensors: dict[str, Any], *,
              make_param: Callable[[Any, bool, bool], Any] | None = None) -> Any:
    """Rebuild the tree of a ``ckpt.convert/1`` document from ``tensors`` (name -> tensor).

    ``make_param(tensor, is_parameter, requires_grad)`` gives a tensor those flags (the default
    makes a :class:`TensorRef` carrying them and leaves anything else as it is). Aliases resolve
    to the very tensor object of their target, so a writer keeps them sharing one storage.
    """
    aliases = doc.get("aliases") or {}
    if type(aliases) is not dict:
        raise CheckpointError(f"{SCHEMA} metadata: aliases must be an object")

    def lookup(name: Any) -> Any:
        if type(name) is not str:
            raise CheckpointError(f"{SCHEMA} metadata: a tensor name must be a string")
        seen = 0
        target = name
        while target not in tensors and target in aliases and seen < 64:
            target = aliases[target]
            seen += 1
        if target not in tensors:
            raise CheckpointError(f"{SCHEMA} metadata names tensor {name!r}, which the file does not hold",
                                  record=name)
        return tensors[target]

    made: dict[tuple[int, bool, bool], Any] = {}

    def tensor(node: dict[str, Any]) -> Any:
        t = lookup(node.get("name"))
        param = node.get("param") is True
        grad = node.get("requires_grad") is True
        if not param and not grad:
            return t
        k = (id(t), param, grad)
        if k not in made:
            made[k] = (make_param or _ref_param)(t, param, grad)
        return made[k]

    def decode(node: Any, depth: int) -> Any:
        if depth > 1000:
            raise CheckpointError(f"{SCHEMA} metadata nests too deeply")
        t = type(node)
        if node is None or t in (bool, str, int, float):
            return node
        if t is list:
            return [decode(v, depth + 1) for v in node]
        if t is not dict:
            raise CheckpointError(f"{SCHEMA} metadata holds a {t.__name__}")
        tag = node.get("$")
        if tag is None:
            return {k: decode(v, depth + 1) for k, v in node.items()}
        if tag == "tensor":
            return tensor(node)
        if tag in ("dict", "odict"):
            items = node.get("items")
            if type(items) is not list or not all(type(i) is list and len(i) == 2 for i in items):
                raise CheckpointError(f"{SCHEMA} metadata: {tag} items must be [key, value] pairs")
            pairs = [(decode(k, depth + 1), decode(v, depth + 1)) for k, v in items]
            if tag == "dict":
                return dict(pairs)
            od: OrderedDict[Any, Any] = OrderedDict(pairs)
            if "metadata" in node:
                od._metadata = decode(node["metadata"], depth + 1)  # type: ignore[attr-defined]
            return od
        if tag in ("tuple", "set"):
            items = node.get("items")
            if type(items) is not list:
                raise CheckpointError(f"{SCHEMA} metadata: {tag} items must be a list")
            vals = [decode(v, depth + 1) for v in items]
            return tuple(vals) if tag == "tuple" else set(vals)
        v = node.get("v")
        if tag == "float" and v in ("nan", "inf", "-inf"):
            return float(v)
        if tag == "complex":
            return complex(decode(node.get("re"), depth + 1), decode(node.get("im"), depth + 1))
        if tag in ("bytes", "bytearray") and type(node.get("hex")) is str:
            return bytes.fromhex(node["hex"]) if tag == "bytes" else bytearray.fromhex(node["hex"])
        if tag == "size" and type(v) is list:
            return Size(v)
        if tag == "dtype" and type(v) is str:
            try:
                return _dt.dtype(v)
            except KeyError:
                raise CheckpointError(f"{SCHEMA} metadata names an unknown dtype {v!r}") from None
        if tag == "device" and type(v) is str:
            typ, _, index = v.partition(":")
            return Device(typ, int(index) if index.isdigit() else None)
        raise CheckpointError(f"{SCHEMA} metadata holds an unknown node {str(node)[:80]}")

    return decode(doc["tree"], 0)


def _ref_param(t: Any, param: bool, grad: bool) -> Any:
    if type(t) is not TensorRef:
        return t
    ref = TensorRef(t.storage, t.dtype, t.shape, t.stride, t.offset, grad)
    if param:
        ref.is_parameter = True
    return ref


def parse_metadata(value: str) -> dict[str, Any]:
    """The ``ckpt.convert/1`` document stored in ``__metadata__`` (checked to be an object)."""
    try:
        doc = json.loads(value)
    except (ValueError, RecursionError) as e:
        raise CheckpointError(f"__metadata__[{SCHEMA!r}] is not valid JSON ({e})") from None
    if type(doc) is not dict or doc.get("schema") != SCHEMA:
        raise CheckpointError(f"__metadata__[{SCHEMA!r}] is not a {SCHEMA} document")
    return doc
