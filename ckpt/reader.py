"""The interface every format reader implements, and the table that picks one by content.

A reader turns one file (or folder) into the middle model of ckpt: it runs the file's pickle or
header through a :class:`~ckpt.rebuild.Builder` (lazy references, torch or numpy objects) and
serves storage bytes by offset. ``ckpt.open``, ``ckpt.load`` and ``ckpt.inspect`` only talk to
this interface, so a new format is a new reader registered in :data:`READERS`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .limits import Limits
from .tensors import StorageReader, StorageRef

if TYPE_CHECKING:
    from .policy import Finding, Policy
    from .rebuild import Builder
    from .zipread import RangedFile


class Reader(StorageReader):
    """One opened checkpoint file, as a format reader sees it."""

    path: str
    limits: Limits
    byteorder: str = "little"
    key_prefix: str = ""
    """Prepended to the key of every storage the reader makes: a multi-file reader (sharded
    checkpoints) sets it per file so that keys of different files never collide."""

    def facts(self) -> dict[str, Any]:
        """Format details for ``Checkpoint.facts`` and inspect's ``format`` object (``format`` key first)."""
        raise NotImplementedError

    def load(self, builder: Builder, policy: Policy, findings: list[Finding]) -> Any:
        """The object the file holds, built by ``builder``; findings (inspect policy) are appended."""
        raise NotImplementedError

    @property
    def storages(self) -> dict[str, StorageRef]:
        """Every storage the last :meth:`load` referenced, by key."""
        raise NotImplementedError

    @property
    def file_size(self) -> int:
        raise NotImplementedError

    def read_small(self, storage: StorageRef) -> bytes | None:
        """A fast path for small storages: their bytes, or None to use ``readinto``."""
        return None

    def defer_crc_checks(self) -> None:
        """Let integrity checks of big storages run while later ones are read (see finish_checks)."""

    def finish_crc_checks(self) -> None:
        """Wait for deferred checks; raises :class:`~ckpt.CorruptCheckpointError` on a mismatch."""

    def fileno(self) -> int | None:
        """A file descriptor to memory-map the file with, or None if it cannot be mapped."""
        return None

    def storage_base(self, storage: StorageRef) -> tuple[StorageRef, int] | None:
        """``(base, byte offset)`` when ``storage`` is a slice of another storage of the file (legacy
        storage views), so that builders share memory between them as torch does; else None."""
        return None

    @property
    def needs_byteswap(self) -> bool:
        return self.byteorder != sys.byteorder

    def close(self) -> None:
        raise NotImplementedError


ReaderFactory = Callable[["RangedFile", str, Limits, bytes], Reader]

READERS: dict[str, ReaderFactory] = {}
"""Reader factories by the kind :func:`ckpt.sniff.sniff` gives a file: ``(file, path, limits, head)``."""


def register(kind: str) -> Callable[[ReaderFactory], ReaderFactory]:
    """Decorator: make ``factory`` the reader for files :func:`~ckpt.sniff.sniff` calls ``kind``."""

    def add(factory: ReaderFactory) -> ReaderFactory:
        READERS[kind] = factory
        return factory

    return add
