"""Small rendering helpers shared by the commands (sizes, numbers, grouping of long tensor lists)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from itertools import chain
from typing import Any


def human_bytes(n: int | None) -> str:
    """``1536`` -> ``'1.5 KiB'``."""
    if n is None:
        return "-"
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        value /= 1024
        if value < 1024 or unit == "PiB":
            return f"{value:.1f} {unit}"
    return f"{n} B"  # pragma: no cover


def human_count(n: int) -> str:
    """``1234567`` -> ``'1.23M'`` (exact below ten thousand)."""
    if n < 10_000:
        return str(n)
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)  # pragma: no cover


def shape_str(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(s) for s in shape) + "]"


_NUMBER_SEGMENT = re.compile(r"(?<=\.)\d+(?=\.|$)|^\d+(?=\.|$)")
_DIGITS = re.compile(r"\d+")


_ZERO_DIGITS = bytes.maketrans(b"123456789", b"000000000")
_ANY_DIGIT = re.compile(r"\d")


def _shapes(paths: Sequence[str]) -> dict[str, list[int]]:
    """Indices of ``paths`` by shape: the name with every ASCII digit made ``0``."""
    joined = "\n".join(paths).encode("utf-8", "surrogatepass")
    if joined.count(b"\n") != len(paths) - 1:  # a name holds a line break: one at a time
        shaped = [p.encode("utf-8", "surrogatepass").translate(_ZERO_DIGITS) for p in paths]
    else:
        shaped = joined.translate(_ZERO_DIGITS).split(b"\n")
    by_shape: dict[bytes, list[int]] = {}
    for i, shape in enumerate(shaped):
        members = by_shape.get(shape)
        if members is None:
            by_shape[shape] = [i]
        else:
            members.append(i)
    return {shape.decode("utf-8", "surrogatepass"): members for shape, members in by_shape.items()}


def _group_by_pattern(
    pattern: re.Pattern[str], paths: Sequence[str], shapes: dict[str, list[int]], limit: int | None = None
) -> dict[str, list[int]] | None:
    """Indices of ``paths`` grouped by ``pattern.sub("*", path)``, in order of first appearance;
    None as soon as there are more than ``limit`` groups.

    The patterns only look at where digit runs are, so the regex runs once per shape (see
    :func:`_shapes`) rather than once per name: 100,000 ``layer{i}.weight`` names have a handful.
    """
    merged: dict[str, list[list[int]]] = {}
    for shape, members in shapes.items():
        key = pattern.sub("*", shape)
        if key != shape and _ANY_DIGIT.search(key) is None:  # every digit replaced: one key
            merged.setdefault(key, []).append(members)
        else:
            names = _substituted([paths[i] for i in members], pattern, shape) if key != shape else [
                paths[i] for i in members
            ]
            if limit is not None and len(merged) + len(members) > limit:
                if len(merged) + len(set(names) - merged.keys()) > limit:  # names already grouped add none
                    return None
            local: dict[str, list[int]] = {}
            for i, name in zip(members, names):
                group = local.get(name)
                if group is None:
                    local[name] = [i]
                else:
                    group.append(i)
            for name, group in local.items():
                merged.setdefault(name, []).append(group)
        if limit is not None and len(merged) > limit:
            return None
    return {key: parts[0] if len(parts) == 1 else sorted(chain.from_iterable(parts)) for key, parts in merged.items()}


def _substituted(names: list[str], pattern: re.Pattern[str], shape: str) -> list[str]:
    """``[pattern.sub("*", n) for n in names]`` for names of one shape: the pattern only looks at
    where digits and dots are, which the shape keeps, so it matches at the same places in every
    name and those places are cut out by slicing."""
    spans = [m.span() for m in pattern.finditer(shape)]
    if len(spans) == 1:
        a, b = spans[0]
        return [n[:a] + "*" + n[b:] for n in names]
    out = []
    for n in names:
        pieces, last = [], 0
        for a, b in spans:
            pieces += (n[last:a], "*")
            last = b
        pieces.append(n[last:])
        out.append("".join(pieces))
    return out


def group_tensors(paths: Sequence[str], *, depth: int | None, max_rows: int) -> tuple[dict[str, list[int]], str]:
    """Group dotted paths for a compact table: ``({group name: [indices]}, how it grouped)``.

    With ``depth``, by the first ``depth`` parts of the name. Otherwise the first of these that
    fits ``max_rows``: numbered parts replaced by ``*`` (``layers.3.mlp.weight`` ->
    ``layers.*.mlp.weight``), every digit run replaced (``conv2`` -> ``conv*``), the deepest prefix
    that fits; failing all, the finest grouping (the caller shows its first rows).

    >>> groups, how = group_tensors(["l.0.w", "l.1.w", "l.0.b", "head"], depth=None, max_rows=3)
    >>> list(groups), how
    (['l.*.w', 'l.*.b', 'head'], 'numbered parts shown as *')
    """
    def by_keys(keys: Sequence[str]) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for i, k in enumerate(keys):
            group = out.get(k)
            if group is None:
                out[k] = [i]
            else:
                group.append(i)
        return out

    def by_prefix(level: int) -> dict[str, list[int]]:
        grouped = by_keys([".".join(p.split(".")[:level]) for p in paths])
        return {
            (prefix + ".*" if any(paths[i] != prefix for i in members) else prefix): members
            for prefix, members in grouped.items()
        }

    if depth is not None:
        return by_prefix(depth), f"grouped by the first {depth} name parts"
    shapes = _shapes(paths)
    groups = _group_by_pattern(_NUMBER_SEGMENT, paths, shapes, max_rows)
    if groups is not None:
        return groups, "numbered parts shown as *"
    groups = _group_by_pattern(_DIGITS, paths, shapes, max_rows)
    if groups is not None:
        return groups, "numbers shown as *"
    deepest = max((p.count(".") + 1 for p in paths), default=1)
    for level in range(deepest - 1, 0, -1):
        grouped = by_prefix(level)
        if len(grouped) <= max_rows:
            return grouped, f"grouped by the first {level} name parts"
    finer = _group_by_pattern(_NUMBER_SEGMENT, paths, shapes)
    assert finer is not None
    return finer, f"numbered parts shown as *; first {max_rows} of {len(finer)} groups"
