"""Read back what ``ckpt convert`` records in safetensors metadata, so a conversion diffs as its source.

safetensors holds only a flat map of names to tensors. ``ckpt convert`` (issue 5) keeps the rest
in ``__metadata__["ckpt.convert/1"]``, a JSON document::

    {"schema": "ckpt.convert/1",
     "tree": <node>,                                   # the source's object tree (optional)
     "aliases": {"lm_head.weight": "embed.weight"},    # name -> name it is stored under (optional)
     "notes": ["..."], "source": {...}}                # optional, shown as notes / ignored

A ``<node>`` is plain JSON (null, bool, str, int, finite float, list, dict with string keys not
starting with ``$``) or a tagged object: ``{"$": "tensor", "name": N}`` (with optional
``"param"``/``"requires_grad"``), ``{"$": "dict" | "odict", "items": [[k, v], ...]}``,
``{"$": "tuple" | "set", "items": [...]}``, ``{"$": "float", "v": "nan" | "inf" | "-inf"}``,
``{"$": "complex", "re": x, "im": y}``, ``{"$": "bytes", "hex": "..."}``, ``{"$": "size" |
"dtype" | "device", "v": ...}``. That is the shape the convert branch defines; if it changes,
this decoder changes with it (the diff tests use a hand-made document of this shape).

The resolvers registered here (formats ``safetensors`` and ``sharded``: the index's ``metadata``
or any shard's ``__metadata__``) rebuild the tree with the file's own lazy tensors in it, so diff
flattens it exactly as it flattens the original ``.pt``: ``optimizer.state.0.exp_avg``, ``epoch``,
tied weights at both their paths. With only ``aliases``, the aliases are added to the flat names.

The document is untrusted input: it is decoded as data (nothing is imported or called), its
nesting is bounded, and one that does not parse is *not* fatal: the file is compared as stored,
with a note saying why the metadata was ignored.

>>> import json
>>> doc = {"schema": "ckpt.convert/1", "tree": {"epoch": 3, "betas": {"$": "tuple", "items": [0.9, 0.999]}}}
>>> decode_tree(doc, {})
{'epoch': 3, 'betas': (0.9, 0.999)}
"""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from . import dtypes as _dt
from .diff_paths import Resolution, register_resolver
from .tensors import TensorRef
from .values import Device, Size

if TYPE_CHECKING:
    from .checkpoint import Checkpoint

SCHEMA = "ckpt.convert/1"
METADATA_KEY = SCHEMA
"""The ``__metadata__`` key (safetensors) or index ``metadata`` key (sharded) of the document."""

MAX_DEPTH = 200
"""Deepest nesting of a tree node accepted (real checkpoints nest a handful of levels)."""


class MetadataError(ValueError):
    """A ``ckpt.convert/1`` document that cannot be decoded (the diff notes it and goes on)."""


def parse(text: Any) -> dict[str, Any]:
    """The document from its stored form (a JSON string, or an object in a sharded index)."""
    if type(text) is str:
        try:
            doc = json.loads(text)
        except (ValueError, RecursionError) as e:
            raise MetadataError(f"not valid JSON ({str(e)[:120]})") from None
    else:
        doc = text
    if type(doc) is not dict:
        raise MetadataError("not a JSON object")
    if doc.get("schema") != SCHEMA:
        raise MetadataError(f"schema is {str(doc.get('schema'))[:60]!r}, not {SCHEMA!r}")
    if "aliases" in doc and (type(doc["aliases"]) is not dict
                             or not all(type(k) is str and type(v) is str for k, v in doc["aliases"].items())):
        raise MetadataError("aliases must map names to names")
    return doc


def _target(name: Any, tensors: dict[str, TensorRef], aliases: dict[str, str]) -> str:
    if type(name) is not str:
        raise MetadataError("a tensor node's name must be a string")
    target, hops = name, 0
    while target not in tensors and target in aliases and hops < 64:
        target = aliases[target]
        hops += 1
    if target not in tensors:
        raise MetadataError(f"names tensor {name[:200]!r}, which the file does not hold")
    return target


def decode_tree(doc: dict[str, Any], tensors: dict[str, TensorRef]) -> Any:
    """The object tree of ``doc`` with tensor nodes replaced by ``tensors[name]`` (aliases
    followed). A parameter node gets a copy of the tensor flagged as a parameter, shared by every
    node naming the same tensor with the same flags. Raises :class:`MetadataError`."""
    aliases: dict[str, str] = doc.get("aliases") or {}
    flagged: dict[tuple[str, bool, bool], TensorRef] = {}

    def tensor(node: dict[str, Any]) -> TensorRef:
        name = _target(node.get("name"), tensors, aliases)
        param, grad = node.get("param") is True, node.get("requires_grad") is True
        t = tensors[name]
        if not param and not grad:
            return t
        k = (name, param, grad)
        if k not in flagged:
            ref = TensorRef(t.storage, t.dtype, t.shape, t.stride, t.offset, grad)
            if param:
                ref.is_parameter = True
            flagged[k] = ref
        return flagged[k]

    def items(node: dict[str, Any], tag: str) -> list[Any]:
        got = node.get("items")
        if type(got) is not list:
            raise MetadataError(f"a {tag} node's items must be a list")
        return got

    def decode(node: Any, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise MetadataError(f"the tree nests deeper than {MAX_DEPTH} levels")
        t = type(node)
        if node is None or t in (bool, str, int, float):
            return node
        if t is list:
            out = []
            for v in node:
                out.append(decode(v, depth + 1))
            return out
        if t is not dict:
            raise MetadataError(f"the tree holds a {t.__name__}")
        tag = node.get("$")
        if tag is None:
            d = {}
            for k, v in node.items():
                d[k] = decode(v, depth + 1)
            return d
        if tag == "tensor":
            return tensor(node)
        if tag in ("dict", "odict"):
            pairs = []
            for pair in items(node, tag):
                if type(pair) is not list or len(pair) != 2:
                    raise MetadataError(f"{tag} items must be [key, value] pairs")
                k = decode(pair[0], depth + 1)
                try:
                    hash(k)
                except TypeError:
                    raise MetadataError(f"a {tag} key is a {type(k).__name__}") from None
                pairs.append((k, decode(pair[1], depth + 1)))
            return OrderedDict(pairs) if tag == "odict" else dict(pairs)
        if tag in ("tuple", "set"):
            vals = [decode(v, depth + 1) for v in items(node, tag)]
            if tag == "tuple":
                return tuple(vals)
            try:
                return set(vals)
            except TypeError:
                raise MetadataError("a set holds an unhashable value") from None
        v = node.get("v")
        if tag == "float" and v in ("nan", "inf", "-inf"):
            return float(v)
        if tag == "complex" and type(node.get("re")) in (int, float) and type(node.get("im")) in (int, float):
            return complex(node["re"], node["im"])
        if tag == "bytes" and type(node.get("hex")) is str:
            try:
                return bytes.fromhex(node["hex"])
            except ValueError:
                raise MetadataError("a bytes node holds no hex string") from None
        if tag == "size" and type(v) is list and all(type(x) is int for x in v):
            return Size(v)
        if tag == "dtype" and type(v) is str:
            try:
                return _dt.dtype(v)
            except KeyError:
                raise MetadataError(f"names an unknown dtype {v[:40]!r}") from None
        if tag == "device" and type(v) is str:
            typ, _, index = v.partition(":")
            return Device(typ, int(index) if index.isdigit() else None)
        raise MetadataError(f"holds an unknown node {json.dumps(node)[:80]}")

    if "tree" not in doc:
        raise MetadataError("has no tree")
    try:
        return decode(doc["tree"], 0)
    except RecursionError:
        raise MetadataError("the tree nests too deeply") from None


def resolution(doc_text: Any, tensors: dict[str, TensorRef], where: str) -> Resolution:
    """What the document stored at ``where`` adds to a file holding ``tensors`` (by stored name).

    With a tree: ``Resolution.root`` is the rebuilt tree (tensors the tree does not name are kept
    at their stored names); without: the aliases. A document that does not decode gives a note."""
    try:
        doc = parse(doc_text)
        aliases = dict(doc.get("aliases") or {})
        recorded = doc.get("notes")
        notes = [f"{where}: {n[:500]}" for n in recorded if type(n) is str][:20] if type(recorded) is list else []
        if "tree" not in doc:
            resolved = {a: _target(a, tensors, aliases) for a in aliases}
            return Resolution(aliases=resolved, notes=notes)
        root = decode_tree(doc, tensors)
    except MetadataError as e:
        return Resolution(notes=[f"{where} ({SCHEMA}) ignored: {e}; the file is compared as stored"])
    return Resolution(root=root, has_root=True, notes=notes)


def _stored(ck: Checkpoint) -> dict[str, TensorRef]:
    root = ck.root
    if type(root) is not dict and type(root) is not OrderedDict:
        return {}
    return {k: v for k, v in root.items() if type(k) is str and type(v) is TensorRef}


@register_resolver("safetensors")
def _safetensors(ck: Checkpoint) -> Resolution | None:
    metadata = getattr(ck.reader, "metadata", None) or {}
    if METADATA_KEY not in metadata:
        return None
    return resolution(metadata[METADATA_KEY], _stored(ck), "__metadata__")


@register_resolver("sharded")
def _sharded(ck: Checkpoint) -> Resolution | None:
    reader = ck.reader
    index_meta = getattr(reader, "metadata", None) or {}
    if METADATA_KEY in index_meta:
        return resolution(index_meta[METADATA_KEY], _stored(ck), "the index's metadata")
    for shard, shard_reader in (getattr(reader, "_readers", None) or {}).items():
        metadata = getattr(shard_reader, "metadata", None) or {}
        if METADATA_KEY in metadata:
            return resolution(metadata[METADATA_KEY], _stored(ck), f"{shard}'s __metadata__")
    return None
