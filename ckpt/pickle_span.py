"""Where a pickle inside a stream ends, found by reading its opcodes without running any of them.

Legacy torch files are several pickles back to back followed by raw storage bytes, and nothing
says how long each pickle is. :func:`pickle_end` walks one pickle's opcodes (each opcode's
argument has a known length, or ends at a newline) until its ``STOP``, reading the file forward
in growing chunks, and returns the offset just past it. Nothing is interpreted: no global is
looked up, no value is built. The caller then hands exactly those bytes to the restricted
interpreter (:class:`~ckpt.pickle_vm.Unpickler`), which must stop at the same place.

>>> import pickle
>>> from ckpt.zipread import RangedFile
>>> data = pickle.dumps([1, "two"], protocol=2) + pickle.dumps(3.0, protocol=0) + b"raw bytes"
>>> first = pickle_end(RangedFile.from_bytes(data), 0)
>>> first, pickle_end(RangedFile.from_bytes(data), first) == len(data) - len(b"raw bytes")
(20, True)
"""

from __future__ import annotations

from typing import Protocol

from .errors import CorruptCheckpointError, ResourceLimitError


class Source(Protocol):
    """What :func:`pickle_end` reads from: a :class:`~ckpt.zipread.RangedFile`, or a cache over one."""

    size: int

    def pread(self, offset: int, length: int) -> bytes: ...


# Argument layout of every opcode of protocols 0 to 5 (pickletools' table), by opcode byte:
#   0: none; n > 0: n fixed bytes; LINE: one newline-terminated line; LINE2: two lines;
#   ("len", n, signed): an n-byte little-endian length, then that many bytes.
LINE = -1
LINE2 = -2
_ARGS: dict[int, object] = {}
for _ops, _arg in (
    (b"(.012NRQabdelostu})]\x81\x85\x86\x87\x88\x89\x8f\x90\x91\x92\x93\x94\x97\x98", 0),
    (b"Khq\x80\x82", 1),
    (b"M\x83", 2),
    (b"Jjr\x84", 4),
    (b"G\x95", 8),
    (b"ILFSVgpP", LINE),
    (b"ci", LINE2),
):
    for _op in _ops:
        _ARGS[_op] = _arg
for _op, _n, _signed in (
    (ord("U"), 1, False), (0x8C, 1, False), (ord("C"), 1, False), (0x8A, 1, False),
    (ord("T"), 4, True), (ord("X"), 4, False), (ord("B"), 4, False), (0x8B, 4, True),
    (0x8D, 8, False), (0x8E, 8, False), (0x96, 8, False),
):
    _ARGS[_op] = ("len", _n, _signed)

STOP = ord(".")
_FIRST_CHUNK = 1 << 16
_MAX_CHUNK = 1 << 24


def pickle_end(
    file: Source,
    start: int,
    *,
    limit: int = 1 << 31,
    path: str | None = None,
    what: str = "pickle",
) -> int:
    """The offset just past the ``STOP`` opcode of the pickle that starts at ``start``.

    Reads forward from ``start`` in chunks (64 KiB, doubling), so a small pickle costs one read.
    Raises :class:`~ckpt.errors.CorruptCheckpointError` if the file ends first or an unknown
    opcode appears, and :class:`~ckpt.errors.ResourceLimitError` if the pickle would be longer
    than ``limit`` bytes (``what`` names the pickle in messages).
    """
    size = file.size
    buf = b""
    base = start  # file offset of buf[0]
    chunk = _FIRST_CHUNK
    pos = 0  # index into buf

    def corrupt(message: str) -> CorruptCheckpointError:
        return CorruptCheckpointError(f"the {what} {message}", path=path)

    def need(n: int) -> None:
        """Make ``buf`` hold at least ``n`` bytes from ``pos`` on, or fail."""
        nonlocal buf, base, pos, chunk
        if pos + n <= len(buf):
            return
        if base + pos + n - start > limit:
            raise ResourceLimitError(
                f"the {what} is longer than {limit:,} bytes (Limits.max_pickle_bytes)", path=path
            )
        if base + pos + n > size:
            raise corrupt(
                f"starting at offset {start:,} runs past the end of the file ({size:,} bytes): the file "
                "is truncated (an incomplete download?) or damaged"
            )
        keep = buf[pos:]  # drop what was scanned, keep the opcode being read
        base += pos
        pos = 0
        read_at = base + len(keep)
        amount = min(max(chunk, n - len(keep)), size - read_at)
        chunk = min(chunk * 2, _MAX_CHUNK)
        buf = keep + file.pread(read_at, amount)
        if len(buf) < n:
            raise corrupt("is truncated (the file could not be read to its end)")

    def line_end() -> int:
        """Index in ``buf`` of the next newline at or after ``pos``, reading more as needed."""
        scanned = pos
        while True:
            nl = buf.find(b"\n", scanned)
            if nl >= 0:
                return nl
            have = len(buf) - pos
            need(have + 1)
            scanned = pos + have

    while True:
        if pos >= len(buf):
            need(1)
        op = buf[pos]
        pos += 1
        arg = _ARGS.get(op)
        if arg is None:
            raise corrupt(f"holds an unknown opcode 0x{op:02x} at offset {base + pos - 1:,}")
        if op == STOP:
            if base + pos - start > limit:
                raise ResourceLimitError(
                    f"the {what} is longer than {limit:,} bytes (Limits.max_pickle_bytes)", path=path
                )
            return base + pos
        if arg == 0:
            continue
        if type(arg) is int:
            if arg > 0:
                if pos + arg > len(buf):
                    need(arg)
                pos += arg
            else:
                for _ in range(-arg):
                    nl = line_end()
                    pos = nl + 1
            continue
        _, width, signed = arg  # type: ignore[misc]
        if pos + width > len(buf):
            need(width)
        length = int.from_bytes(buf[pos : pos + width], "little", signed=signed)
        if length < 0:
            raise corrupt(f"declares a negative length at offset {base + pos:,}")
        pos += width
        if base + pos + length > size:
            raise corrupt(
                f"declares {length:,} bytes at offset {base + pos:,}, past the end of the file: the file "
                "is truncated or damaged"
            )
        if base + pos + length - start > limit:
            raise ResourceLimitError(
                f"the {what} is longer than {limit:,} bytes (Limits.max_pickle_bytes)", path=path
            )
        if pos + length <= len(buf):
            pos += length
        else:  # skip a long string without holding it: continue reading after it
            base += pos + length
            buf = b""
            pos = 0
