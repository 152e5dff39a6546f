"""Small rendering helpers shared by the commands (sizes, numbers, grouping of long tensor lists)."""

from __future__ import annotations

import re
from collections.abc import Sequence
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
    def by(key_of: Any) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for i, p in enumerate(paths):
            out.setdefault(key_of(p), []).append(i)
        return out

    def by_prefix(level: int) -> dict[str, list[int]]:
        grouped = by(lambda p: ".".join(p.split(".")[:level]))
        return {
            (prefix + ".*" if any(paths[i] != prefix for i in members) else prefix): members
            for prefix, members in grouped.items()
        }

    if depth is not None:
        return by_prefix(depth), f"grouped by the first {depth} name parts"
    groups = by(lambda p: _NUMBER_SEGMENT.sub("*", p))
    if len(groups) <= max_rows:
        return groups, "numbered parts shown as *"
    finer = groups
    groups = by(lambda p: _DIGITS.sub("*", p))
    if len(groups) <= max_rows:
        return groups, "numbers shown as *"
    deepest = max((p.count(".") + 1 for p in paths), default=1)
    for level in range(deepest - 1, 0, -1):
        grouped = by_prefix(level)
        if len(grouped) <= max_rows:
            return grouped, f"grouped by the first {level} name parts"
    return finer, f"numbered parts shown as *; first {max_rows} of {len(finer)} groups"
