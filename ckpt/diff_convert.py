"""Read back what ``ckpt convert`` records in safetensors metadata, so a conversion diffs as its source.

safetensors holds only a flat map of names to tensors. ``ckpt convert`` (issue 5) keeps the rest
in ``__metadata__["ckpt.convert/1"]``, a JSON document::

    {"schema": "ckpt.convert/1",
     "tree": <node>,                                   # the source's object tree (optional)
     "aliases": {"lm_head.weight": "embed.weight"},    # name -> name it is stored under (optional)
     "notes": ["..."], "source": {...}}                # optional, shown as notes / ignored

The document's schema (its tagged ``<node>`` objects for tensors, dicts with non-string keys,
tuples, non-finite floats, dtypes, devices, ...) is defined and decoded by :mod:`ckpt.flatten`,
the converter's own module; this module only finds the document and turns what it holds into a
:class:`~ckpt.diff_paths.Resolution`.

The resolvers registered here (formats ``safetensors`` and ``sharded``: the index's ``metadata``
or any shard's ``__metadata__``) rebuild the tree with the file's own lazy tensors in it, so diff
flattens it exactly as it flattens the original ``.pt``: ``optimizer.state.0.exp_avg``, ``epoch``,
tied weights at both their paths. With only ``aliases``, the aliases are added to the flat names.

The document is untrusted input: it is decoded as data (nothing is imported or called), its
nesting is bounded, and one that does not parse is *not* fatal: the file is compared as stored,
with a note saying why the metadata was ignored.

>>> doc = {"schema": "ckpt.convert/1", "tree": {"epoch": 3, "betas": {"$": "tuple", "items": [0.9, 0.999]}}}
>>> decode_tree(doc, {})
{'epoch': 3, 'betas': (0.9, 0.999)}
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from .diff_paths import Resolution, register_resolver
from .flatten import METADATA_KEY, SCHEMA
from .tensors import TensorRef

if TYPE_CHECKING:
    from .checkpoint import Checkpoint

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


def _nesting_ok(node: Any, limit: int) -> bool:
    """True when ``node`` (parsed JSON) nests at most ``limit`` levels (checked without recursion)."""
    stack = [(node, 0)]
    while stack:
        value, depth = stack.pop()
        if depth > limit:
            return False
        if type(value) is dict:
            stack.extend((v, depth + 1) for v in value.values())
        elif type(value) is list:
            stack.extend((v, depth + 1) for v in value)
    return True


def decode_tree(doc: dict[str, Any], tensors: dict[str, TensorRef]) -> Any:
    """The object tree of ``doc`` with tensor nodes replaced by ``tensors[name]`` (aliases
    followed), decoded by ``ckpt convert``'s own :func:`ckpt.flatten.unflatten`, so that diff reads
    the document exactly as the converter reads it back. Raises :class:`MetadataError`."""
    from .errors import CheckpointError
    from .flatten import unflatten

    if "tree" not in doc:
        raise MetadataError("has no tree")
    if not _nesting_ok(doc["tree"], MAX_DEPTH):
        raise MetadataError(f"the tree nests deeper than {MAX_DEPTH} levels")
    try:
        return unflatten(doc, tensors)
    except CheckpointError as e:
        raise MetadataError(str(e).removeprefix(f"{SCHEMA} metadata").strip(" :")) from None
    except (RecursionError, TypeError, ValueError, AttributeError, KeyError) as e:
        raise MetadataError(f"cannot be decoded ({type(e).__name__}: {str(e)[:120]})") from None


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
    if not isinstance(root, dict):
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
