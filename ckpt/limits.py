"""Resource limits that protect memory and time against hostile files.

Every number read from a file is checked against the file itself first (an offset past the end is
corrupt whatever the limits); these limits bound what a *consistent* but absurd file may make ckpt
allocate or walk. Pass your own :class:`Limits` to raise them for unusual but trusted files.

>>> Limits().max_pickle_bytes
2147483648
>>> Limits(max_pickle_bytes=1 << 20).max_pickle_bytes
1048576
"""

from __future__ import annotations

from typing import NamedTuple


class Limits(NamedTuple):
    """Bounds on what one file may make ckpt allocate or walk (each field documented below)."""

    max_pickle_bytes: int = 2 << 30
    """Largest pickle record ckpt will read into memory (``data.pkl`` is read whole)."""

    max_records: int = 4_000_000
    """Largest number of zip entries in one archive."""

    max_central_directory_bytes: int = 1 << 30
    """Largest zip central directory ckpt will read."""

    max_compression_ratio: int = 100
    """Largest size/compressed-size ratio accepted for a deflated record over 1 MiB (torch never
    compresses records; a record that inflates far beyond its compressed size is a zip bomb)."""

    max_key_nesting: int = 100
    """Deepest tuple nesting accepted inside a dict key or set member (hashing recurses in C)."""

    max_walk_depth: int = 512
    """Nesting depth below which inspect stops descending and reports the subtree as elided."""

    max_json_bytes: int = 100_000_000
    """Largest JSON ckpt parses: a safetensors header (the safetensors library's own cap) or a
    sharded checkpoint's index."""


DEFAULT_LIMITS = Limits()
