"""Small rendering helpers shared by the commands (sizes, numbers, grouping of long tensor lists)."""

from __future__ import annotations

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


def group_depth(keys_list: Sequence[Sequence[Any]], max_rows: int) -> int | None:
    """The deepest prefix length at which the rows fit in ``max_rows`` groups (None if all fit)."""
    if len(keys_list) <= max_rows:
        return None
    deepest = max((len(k) for k in keys_list), default=0)
    for depth in range(deepest - 1, 0, -1):
        groups = {tuple(k[:depth]) for k in keys_list}
        if len(groups) <= max_rows:
            return depth
    return 1
