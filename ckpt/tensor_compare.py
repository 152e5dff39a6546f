"""Compare the values of two lazy tensors, streaming their bytes in chunks, without torch.

:func:`compare_tensors` answers three questions about a pair of :class:`~ckpt.tensors.TensorRef`
of the same shape, in order of cost:

1. **Are they bitwise identical?** When the dtypes and conj/neg bits agree, the raw bytes of the
   two views are compared chunk by chunk (positioned reads straight from the files; nothing is
   decoded). Most pairs in a "did anything change?" diff stop here. Strided views and foreign
   byte orders are compared element by element as stored bits, still without decoding.
2. **By how much do they differ?** Otherwise both sides are decoded chunk by chunk to a common
   numpy type (bfloat16 and the float8 family upcast exactly, via :mod:`ckpt.numpy_out`; float16
   computed in float32 so that differences cannot overflow) and reduced to
   :class:`~ckpt.tensor_stats.Stats`: max abs diff, max rel diff, mean abs diff, differing
   elements, NaN/Inf counts and changes.
3. **Are they close?** ``torch.allclose`` semantics: ``|a - b| <= atol + rtol * |b|`` elementwise
   (``b`` is the second checkpoint), equal infinities are close, NaN is close to nothing unless
   ``equal_nan``; defaults ``rtol=1e-5``, ``atol=1e-8`` as in torch.

Memory stays at a few chunks per pair for tensors that are contiguous in files ckpt can read by
offset (torch zip records are stored uncompressed): positioned reads, a few hundred kilobytes at a
time. A strided view is read as the byte span it covers (at most its storage). Integrity: when both tensors fill their whole zip records, the
stored CRC-32s must agree with what the byte comparison found (equal bytes with different CRCs,
or different bytes with equal CRCs, mean one file is damaged: the record is then checked and a
:class:`~ckpt.errors.CorruptCheckpointError` raised); ``verify=True`` checks every record's CRC.

This module imports no numpy: a diff of identical checkpoints never needs it. Decoding lives in
:mod:`ckpt.tensor_stats`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .crc import crc32
from .errors import CheckpointError, CorruptCheckpointError
from .tensors import StorageRef, TensorRef
from .zipread import STORED

if TYPE_CHECKING:
    from .tensor_stats import Stats

CHUNK_BYTES = 256 << 10
"""Bytes per positioned read in the raw comparison (small enough to stay in the CPU's cache)."""

SMALL = 64 << 10
"""Spans up to this long are compared with one positioned read per side."""

MAX_THREADS = 4
"""Most threads that decode one differing pair (numpy releases the GIL in its loops)."""

PARALLEL_MIN = 4 << 20
"""Spans at least this long are compared in parts, one per thread (see :class:`Buffers`)."""

PROGRESS_STEP = 16 << 20
"""Bytes compared between two progress reports inside one pair."""

ProgressFn = Callable[[int], None]
"""Called with a number of bytes just compared (both sides together)."""


@dataclass
class Outcome:
    """What :func:`compare_tensors` found: ``status`` is ``identical`` (same dtype, bitwise equal
    elements), ``close`` (allclose under the tolerances, or values equal after upcasting),
    ``different``, or ``not_compared`` (``note`` says why); ``stats`` when values were decoded."""

    status: str
    stats: Stats | None = None
    note: str | None = None
    bytes_read: int = 0


# -- reading bytes ------------------------------------------------------------------------------


def _zip_entry(storage: StorageRef) -> Any:
    """The zip record behind a storage of a torch zip checkpoint (None for other formats, and for
    archives written without CRCs)."""
    reader = storage.reader
    if not isinstance(reader, _torch_zip_reader()) or storage.record is None or not reader.archive.has_crcs:
        return None
    return reader.archive.entry(storage.record)


_ZIP_READER: list[type] = []


def _torch_zip_reader() -> type:
    if not _ZIP_READER:
        from .torch_zip import TorchZipReader

        _ZIP_READER.append(TorchZipReader)
    return _ZIP_READER[0]


class Span:
    """The bytes a tensor's elements occupy in its storage (``TensorRef.byte_range``), readable in
    pieces: by positioned reads from the file where the storage is stored uncompressed, else from
    the whole storage read once (and CRC-checked) by its reader."""

    def __init__(self, ref: TensorRef, verified: set[int]) -> None:
        storage = ref.storage
        if storage is None:
            raise CheckpointError("a meta tensor has no data")
        self.ref = ref
        self.storage = storage
        self.start, self.stop = ref.byte_range()
        self.length = self.stop - self.start
        self.whole_record = self.start == 0 and self.stop == storage.nbytes
        self._verified = verified
        self._fd: int | None = None
        self._base = 0
        self._buffer: bytearray | None = None
        reader = storage.reader
        if reader is None:
            raise CorruptCheckpointError("storage has no data source", record=storage.record)
        self._entry = _zip_entry(storage)
        fileno = getattr(reader, "fileno", None)
        fd = fileno() if fileno is not None else None
        if fd is None or not hasattr(os, "preadv"):
            return
        if self._entry is not None:
            # torch zip: the record's local header; small records through the archive's read-ahead
            # window (cheap for the many small records of a large state dict, read in file order)
            small = self._entry.size <= SMALL
            offset = None if self._entry.method != STORED else reader.archive.data_offset(self._entry, readahead=small)
        else:
            offset = reader.data_offset(storage)
        if offset is not None:
            self._fd = fd
            self._base = offset + self.start

    @property
    def byteorder(self) -> str:
        return getattr(self.storage.reader, "byteorder", "little")

    def readinto(self, pos: int, buf: memoryview) -> None:
        """Fill ``buf`` with the span's bytes from ``pos`` (relative to the span's start)."""
        n = len(buf)
        if self._fd is None:
            buf[:] = memoryview(self._whole())[self.start + pos : self.start + pos + n]
            return
        done = 0
        while done < n:
            got = os.preadv(self._fd, [buf[done:]], self._base + pos + done)
            if got <= 0:
                raise CorruptCheckpointError(
                    "the file ended inside this record (truncated or changed while being read)",
                    path=getattr(self.storage.reader, "path", None), record=self.storage.record,
                )
            done += got

    def _whole(self) -> bytearray:
        """The whole storage, read once by its reader (filled before it is shared with threads)."""
        if self._buffer is None:
            whole = bytearray(self.storage.nbytes)
            self.storage.readinto(memoryview(whole))  # CRC-checked by the reader
            self._buffer = whole
        return self._buffer

    def read_small(self) -> bytes:
        """The whole span with one positioned read (for short spans; falls back on short reads)."""
        data = os.pread(self._fd, self.length, self._base) if self._fd is not None else b""
        return data if len(data) == self.length else bytes(self.read(0, self.length))

    def read(self, pos: int, n: int) -> bytearray:
        buf = bytearray(n)
        self.readinto(pos, memoryview(buf))
        return buf

    def stored_crc(self) -> int | None:
        """The record's stored CRC-32 when this span is the whole of a CRC-carrying zip record."""
        if not self.whole_record or self._entry is None:
            return None
        return int(self._entry.crc)

    def verify(self) -> None:
        """Check the storage's record against its stored CRC-32 (once per record), streaming."""
        storage = self.storage
        key = id(storage)
        if key in self._verified:
            return
        entry = self._entry
        if entry is None:
            self._verified.add(key)
            return
        if self._fd is None:
            self._whole()  # the reader checks the CRC
            self._verified.add(key)
            return
        crc = 0
        buf = bytearray(min(storage.nbytes, 1 << 22) or 1)
        view = memoryview(buf)
        pos = 0
        base = self._base - self.start
        while pos < storage.nbytes:
            k = min(len(buf), storage.nbytes - pos)
            got = os.preadv(self._fd, [view[:k]], base + pos)
            if got != k:
                raise CorruptCheckpointError("record is truncated", path=getattr(storage.reader, "path", None),
                                             record=storage.record)
            crc = crc32(view[:k], crc)  # ISA-L's where installed (ckpt.crc)
            pos += k
        if crc != entry.crc:
            raise CorruptCheckpointError(
                f"CRC-32 mismatch (stored {entry.crc:08x}, computed {crc:08x}): the record is damaged",
                path=getattr(storage.reader, "path", None), record=storage.record,
            )
        self._verified.add(key)


# -- the comparison ---------------------------------------------------------------------------------


def raw_comparable(a: TensorRef, b: TensorRef, sa: Span, sb: Span) -> bool:
    """True when the stored elements can be compared bit for bit before any decoding."""
    return a.dtype is b.dtype and (a.metadata or {}) == (b.metadata or {})


def bytes_comparable(a: TensorRef, b: TensorRef, sa: Span, sb: Span, nbytes: int) -> bool:
    """True when the two views' bytes (``nbytes`` each) can be compared as two runs of bytes."""
    return (
        sa.length == nbytes and sb.length == nbytes
        and (a.dtype.itemsize == 1 or sa.byteorder == sb.byteorder)
        and (a.ndim <= 1 or a.is_contiguous) and (b.ndim <= 1 or b.is_contiguous)
    )


class Buffers:
    """Scratch space shared by every tensor pair of one diff: chunk buffers for raw comparisons
    (one pair per thread), the threads that compare the parts of a long span, and the numpy
    workspace (with its threads) for pairs that need decoding."""

    def __init__(self, size: int | None = None, *, threads: int | None = None) -> None:
        self.size = size = size or CHUNK_BYTES
        self.a = bytearray(size)
        self.b = bytearray(size)
        self.threads = threads if threads is not None else min(os.cpu_count() or 1, MAX_THREADS)
        self.workspace: Any = None
        """A :class:`~ckpt.tensor_stats.Workspace`, made when a pair first needs decoding."""
        self._pairs: list[tuple[bytearray, bytearray]] = []
        self._pool: Any = None

    def pair(self, i: int) -> tuple[bytearray, bytearray]:
        """Buffer pair ``i`` (0 is ``a``/``b``; the others are made on first use)."""
        if i == 0:
            return self.a, self.b
        while len(self._pairs) < i:
            self._pairs.append((bytearray(self.size), bytearray(self.size)))
        return self._pairs[i - 1]

    def pool(self) -> Any:
        """The threads (``threads - 1`` of them) that compare the other parts of a long span."""
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(max_workers=max(1, self.threads - 1), thread_name_prefix="ckpt-diff")
        return self._pool

    def close(self) -> None:
        """Stop the worker threads (if any were started)."""
        if self.workspace is not None:
            self.workspace.close()
            self.workspace = None
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> Buffers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _bytes_equal(sa: Span, sb: Span, progress: ProgressFn, buffers: Buffers | None = None) -> bool:
    """Chunked comparison of two equally long contiguous spans: positioned reads of both into two
    small buffers that stay in the CPU cache, compared with memcmp (``bytearray ==``). This costs
    about what reading both files costs (measured: less CPU than comparing them in memory maps,
    whose page faults cost as much as the copies they save, and no SIGBUS if a file shrinks).
    A span of at least :data:`PARALLEL_MIN` bytes is cut into one part per thread of ``buffers``
    (the reads and memcmp release the GIL); the first difference found stops every part."""
    buffers = buffers or Buffers(min(CHUNK_BYTES, max(sa.length, 1)), threads=1)
    n = sa.length
    parts = min(buffers.threads, n // (PARALLEL_MIN // 2)) if sa._fd is not None and sb._fd is not None else 1
    if parts < 2:
        return _range_equal(sa, sb, 0, n, buffers.pair(0), progress, None)
    chunk = buffers.size
    cuts = [0, *((n * i // parts) // chunk * chunk for i in range(1, parts)), n]
    differs: list[bool] = []  # set by the first part that finds a difference: the others stop
    pool = buffers.pool()
    futures = [pool.submit(_range_equal, sa, sb, cuts[i], cuts[i + 1], buffers.pair(i), None, differs)
               for i in range(1, parts)]
    try:
        same = _range_equal(sa, sb, cuts[0], cuts[1], buffers.pair(0), progress, differs)
        for f in futures:
            same = f.result() and same
    except BaseException:
        differs.append(True)
        for f in futures:
            f.cancel()
        raise
    if same:
        progress(2 * (n - cuts[1]))
    return same


def _range_equal(sa: Span, sb: Span, lo: int, hi: int, pair: tuple[bytearray, bytearray],
                 progress: ProgressFn | None, differs: list[bool] | None) -> bool:
    """Whether bytes ``[lo, hi)`` of the two spans are equal (see :func:`_bytes_equal`)."""
    chunk = len(pair[0])
    ba, bb = pair
    va, vb = memoryview(ba), memoryview(bb)
    fa, fb = sa._fd, sb._fd
    oa, ob = sa._base, sb._base
    preadv = os.preadv if hasattr(os, "preadv") else None
    pos = lo
    unreported = 0
    try:
        while pos < hi:
            if differs:
                return False
            k = hi - pos if hi - pos < chunk else chunk
            pa = va[:k] if k < chunk else va
            pb = vb[:k] if k < chunk else vb
            if fa is None or preadv is None or preadv(fa, [pa], oa + pos) != k:
                sa.readinto(pos, pa)  # the careful path: whole-storage reads, short reads, errors
            if fb is None or preadv is None or preadv(fb, [pb], ob + pos) != k:
                sb.readinto(pos, pb)
            same = ba == bb if k == chunk else ba.startswith(pb)
            unreported += 2 * k
            if progress is not None and unreported >= PROGRESS_STEP:
                progress(unreported)
                unreported = 0
            if not same:
                if differs is not None:
                    differs.append(True)
                return False
            pos += k
        return True
    finally:
        if progress is not None:
            progress(unreported)


def _check_crcs(sa: Span, sb: Span, equal: bool) -> None:
    """Equal bytes must come with equal stored CRC-32s and different bytes with different ones;
    when they do not, one record is damaged: find it (raises CorruptCheckpointError)."""
    ca, cb = sa.stored_crc(), sb.stored_crc()
    if ca is None or cb is None or (ca == cb) == equal:
        return
    sa.verify()
    sb.verify()
    # both records match their CRCs: equal CRCs over different bytes (a true collision) is possible


def compare_tensors(
    a: TensorRef,
    b: TensorRef,
    *,
    rtol: float = 1e-5,
    atol: float = 1e-8,
    equal_nan: bool = False,
    verify: bool = False,
    verified: set[int] | None = None,
    progress: ProgressFn | None = None,
    buffers: Buffers | None = None,
) -> Outcome:
    """Compare the values of two tensors of the same shape (see the module docs).

    ``verify`` checks the CRC-32 of every record read (once each; ``verified`` holds the storages
    already checked, shared across calls). ``progress`` is called with bytes compared.
    ``buffers``: scratch buffers to reuse across calls.
    """
    if a.shape != b.shape:
        return Outcome("not_compared", note="shapes differ")
    meta_a, meta_b = a.storage is None, b.storage is None
    if meta_a or meta_b:
        if meta_a and meta_b:
            return Outcome("identical" if a.dtype is b.dtype else "close", note="meta tensors: no data to compare")
        return Outcome("not_compared", note="one side is a meta tensor (no data)")
    verified = set() if verified is None else verified
    sa, sb = Span(a, verified), Span(b, verified)
    if verify:
        sa.verify()
        sb.verify()
    numel = a.numel
    if numel == 0:
        return Outcome("identical" if a.dtype is b.dtype else "close")
    nbytes_a = numel * a.dtype.itemsize
    total = nbytes_a + numel * b.dtype.itemsize
    reported = 0

    def tick(n: int) -> None:
        nonlocal reported
        n = min(n, total - reported)
        if n > 0 and progress is not None:
            reported += n
            progress(n)

    raw = raw_comparable(a, b, sa, sb)
    if raw and bytes_comparable(a, b, sa, sb, nbytes_a):
        if sa.length <= SMALL and sa._fd is not None and sb._fd is not None:
            equal = sa.read_small() == sb.read_small()  # the many small tensors of a big state dict
        else:
            equal = _bytes_equal(sa, sb, tick, buffers)
        _check_crcs(sa, sb, equal)
        if equal:
            tick(total)
            return Outcome("identical", bytes_read=total)
        raw = False  # known to differ: go straight to the values
    from .tensor_stats import Workspace, compare_values

    if buffers is not None and buffers.workspace is None:
        buffers.workspace = Workspace(threads=buffers.threads)
    status, stats, note = compare_values(a, b, sa, sb, rtol=rtol, atol=atol, equal_nan=equal_nan, tick=tick,
                                         raw_first=raw, ws=buffers.workspace if buffers is not None else None)
    tick(total)
    return Outcome(status, stats, note, bytes_read=total)


def read_scalar(ref: TensorRef) -> Any:
    """The value of a one-element tensor (an optimizer's ``step``), or None if it has no data."""
    if ref.storage is None or ref.numel != 1:
        return None
    from .tensor_stats import read_value

    return read_value(ref, Span(ref, set()))
