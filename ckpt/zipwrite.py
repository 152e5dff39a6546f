"""A zip writer that writes, byte for byte, what torch's own writer writes.

torch.save hands its records to ``caffe2::serialize::PyTorchStreamWriter``, which drives miniz
(``mz_zip_writer_add_mem_ex_v2`` with ``MZ_ZIP_FLAG_WRITE_ZIP64``). :class:`TorchZipWriter`
reproduces that writer's output exactly:

* every record is stored (method 0) under ``<archive name>/``; its local header has zero time,
  date, CRC and sizes, the UTF-8 flag, and (for a non-empty record) the data-descriptor flag;
* the local header's extra field ends with torch's ``FB`` padding field (``getPadding``), so that
  every record's data starts at a multiple of the alignment (64); a zip64 extra field comes first
  when the record's size or its header offset reaches 4 GiB;
* a data descriptor (16 bytes, or 24 with zip64) follows each non-empty record;
* the central directory carries no padding, a zip64 extra field only where needed, and is
  followed by a zip64 end record, a zip64 locator and the classic end record (torch always
  writes the zip64 pair);
* :meth:`TorchZipWriter.finish` adds ``version`` and ``byteorder`` when missing and the
  ``.data/serialization_id`` record, computed as torch computes it: a 20-digit combined hash of
  the record names, iterated in the order of the C++ ``std::unordered_set`` torch keeps them in
  (see :func:`serialization_id`), and a 20-digit combination of the CRC-32s of the data
  descriptors written.

Record data can be written from memory, streamed in chunks, or copied from another file by
offset (``copy_file_range``, so copying a tensor never passes through Python), with a CRC-32
given by the caller when it is already known.

>>> import io, zipfile
>>> buf = io.BytesIO()
>>> w = TorchZipWriter(ZipSink.for_file(buf), "m")
>>> w.write_record("data.pkl", b"\\x80\\x02N.")
>>> size = w.finish()
>>> [i.filename for i in zipfile.ZipFile(buf).infolist()]
['m/data.pkl', 'm/version', 'm/byteorder', 'm/.data/serialization_id']
"""

from __future__ import annotations

import errno
import os
import struct
import sys
import threading
import zlib
from collections.abc import Callable
from typing import IO, Any

from .crc import RELEASES_GIL, crc32

ALIGNMENT = 64
"""torch's default storage alignment (``torch.utils.serialization.config.save.storage_alignment``)."""
_PAGE = 4096

VERSION_RECORD = b"3\n"
"""What torch.save writes as ``version`` (caffe2 ``kMinProducedFileFormatVersion`` = 3)."""

_U32 = 0xFFFFFFFF
_U64 = (1 << 64) - 1
_FLAG_DESCRIPTOR = 0x0008
_FLAG_UTF8 = 0x0800
_LOCAL = struct.Struct("<4s5H3L2H")
_CENTRAL = struct.Struct("<4s6H3L5H2L")
_DESCRIPTOR32 = struct.Struct("<4s3L")
_DESCRIPTOR64 = struct.Struct("<4sL2Q")
_ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")
_ZIP64_LOCATOR = struct.Struct("<4sLQL")
_EOCD = struct.Struct("<4s4H2LH")
SIG_DESCRIPTOR = b"PK\x07\x08"

_SMALL_WRITE = 1 << 16
_COPY_CHUNK = 1 << 30
_WRITE_CHUNK = 1 << 20
"""The most one write call hands the kernel. A bigger write makes the page cache allocate 2 MiB
folios, and where the host has taken back the guest's free memory (a VM with free page
reporting, like the development machine) each of those costs a fault on the host: 800 MB written
2 MiB or more at a time took 2.0 to 3.5 s there, 1 MiB at a time 0.5 s, as ``cp`` does."""
_READ_CHUNK = 8 << 20


# -- the serialization id ---------------------------------------------------------------------------

_MASK64 = _U64
_MUL = (0xC6A4A793 << 32) + 0x5BD1E995
_STRING_HASH_SEED = 0xC70F6907

# Bucket counts a libstdc++ unordered_set goes through as elements are inserted one by one
# (``_Prime_rehash_policy`` with max load factor 1: 13 buckets at the first insert, then the next
# prime of its table >= twice the count when the element count would exceed the bucket count).
_BUCKETS = (
    13, 29, 59, 127, 257, 541, 1109, 2357, 5087, 10273, 20753, 42043, 85229, 172933, 351061,
    712697, 1447153, 2938679, 5967347, 12117689, 24607243, 49969847, 101473717, 206062531,
    418451333, 849749479, 1725587117, 3504151727, 8589934583,
)


def _shift_mix(v: int) -> int:
    return v ^ (v >> 47)


def string_hash(data: bytes) -> int:
    """``std::hash<std::string>`` of libstdc++ on a 64-bit little-endian host (``std::_Hash_bytes``
    with seed 0xc70f6907, a MurmurHash64A variant).

    >>> string_hash(b"data.pkl") == string_hash(b"data.pkl") != string_hash(b"version")
    True
    """
    n = len(data)
    h = (_STRING_HASH_SEED ^ (n * _MUL)) & _MASK64
    aligned = n & ~7
    for i in range(0, aligned, 8):
        word = int.from_bytes(data[i : i + 8], "little")
        h ^= (_shift_mix((word * _MUL) & _MASK64) * _MUL) & _MASK64
        h = (h * _MUL) & _MASK64
    if n & 7:
        h ^= int.from_bytes(data[aligned:], "little")
        h = (h * _MUL) & _MASK64
    h = (_shift_mix(h) * _MUL) & _MASK64
    return _shift_mix(h)


def hash_combine(seed: int, value: int) -> int:
    """``c10::hash_combine`` (Boost's formula) on 64-bit ``size_t``."""
    return (seed ^ ((value + 0x9E3779B9 + (seed << 6) + (seed >> 2)) & _MASK64)) & _MASK64


def unordered_set_order(hashes: list[int]) -> list[int]:
    """Indices of ``hashes`` in the order a libstdc++ ``std::unordered_set`` iterates elements
    inserted in list order (unique keys, cached hash codes).

    The set keeps one singly linked list; a key whose bucket is empty goes to the front of the
    list, one whose bucket is occupied goes right after the node before that bucket's first node;
    a rehash relinks the nodes, in list order, by the same rules.
    """
    before_begin = -1
    nxt: dict[int, int | None] = {before_begin: None}
    buckets: dict[int, int] = {}
    count = 0
    level = -1
    nbuckets = 1
    for node, code in enumerate(hashes):
        if level < 0 or count + 1 > _BUCKETS[level]:
            level += 1
            if level >= len(_BUCKETS):  # pragma: no cover - billions of records
                raise OverflowError("too many records for the serialization id")
            nbuckets = _BUCKETS[level]
            p = nxt[before_begin]
            nxt[before_begin] = None
            buckets = {}
            begin_bucket = 0
            while p is not None:
                following = nxt[p]
                b = hashes[p] % nbuckets
                if b not in buckets:
                    nxt[p] = nxt[before_begin]
                    nxt[before_begin] = p
                    buckets[b] = before_begin
                    if nxt[p] is not None:
                        buckets[begin_bucket] = p
                    begin_bucket = b
                else:
                    prev = buckets[b]
                    nxt[p] = nxt[prev]
                    nxt[prev] = p
                p = following
        b = code % nbuckets
        if b in buckets:
            prev = buckets[b]
            nxt[node] = nxt[prev]
            nxt[prev] = node
        else:
            first = nxt[before_begin]
            nxt[node] = first
            nxt[before_begin] = node
            if first is not None:
                buckets[hashes[first] % nbuckets] = node
            buckets[b] = before_begin
        count += 1
    order = []
    p = nxt[before_begin]
    while p is not None:
        order.append(p)
        p = nxt[p]
    return order


def serialization_id(names: list[str], combined_crc: int) -> str:
    """The 40 digits torch writes as ``.data/serialization_id``.

    ``names`` are the records written so far (without the archive folder), in write order;
    ``combined_crc`` is :func:`hash_combine` folded over the CRC-32 of every data descriptor
    written (see :class:`TorchZipWriter`).
    """
    hashes = [string_hash(n.encode("utf-8")) for n in names]
    combined = 0
    for i in unordered_set_order(hashes):
        combined = hash_combine(combined, hashes[i])
    return f"{combined:020d}{combined_crc:020d}"


def archive_name_for(path: str) -> str:
    """The top folder torch.save gives the archive it writes to ``path`` (a ``str`` path).

    torch passes ASCII paths to its C++ writer, which takes the text after the last ``/`` or
    ``\\`` minus its last extension; for any other path Python opens the file and the writer
    names the archive ``archive``. An empty name is an error in torch too.

    >>> archive_name_for("runs/my.model.pt"), archive_name_for("noext"), archive_name_for("ünï.pt")
    ('my.model', 'noext', 'archive')
    """
    try:
        path.encode("ascii")
    except UnicodeEncodeError:
        return "archive"
    start = 0
    for i, ch in enumerate(path):
        if ch in "/\\":
            start = i + 1
    name = path[start:]
    dot = name.rfind(".")
    if dot >= 0:
        name = name[:dot]
    if not name:
        raise ValueError(f"invalid file name: {path} (torch.save needs a name before the extension)")
    return name


# -- output ---------------------------------------------------------------------------------------


class ZipSink:
    """Where archive bytes go: a file descriptor (fast paths: direct writes, in-kernel copies) or
    any object with a ``write`` method. Small writes are buffered."""

    def __init__(self, *, fd: int | None = None, fileobj: IO[bytes] | None = None) -> None:
        if (fd is None) == (fileobj is None):
            raise ValueError("a sink needs exactly one of fd and fileobj")
        self.fd = fd
        self.fileobj = fileobj
        self._buf = bytearray()
        self.position = 0
        """Bytes passed to the sink so far (offsets in the archive)."""
        self._origin = 0
        if fd is not None:
            try:  # where the archive starts in the file: kernel copies write at absolute offsets
                self._origin = os.lseek(fd, 0, os.SEEK_CUR)
            except OSError:
                self._origin = 0
        self.pending: list[tuple[int, int, int, int]] = []
        """Ranges reserved by :meth:`copy_later`: (source fd, source offset, offset in the file, size)."""
        self.on_written: Callable[[int], None] | None = None
        """Called with the number of bytes each large write or copy passed on (see save's
        background writeback)."""
        self.eager_copies = False
        """When True, ranges reserved by :meth:`copy_later` start copying at once (overlapping
        whatever the caller computes next): in the kernel, in order, on the copy thread; through
        user space on the through-copy threads where source and destination are shifted within a
        page. :meth:`run_copies` waits for them."""
        self._copy_pool: Any = None
        self._through_pool: Any = None
        self._started: list[tuple[Any, int]] = []
        self._behind: list[tuple[Any, int]] = []
        self._behind_bytes = 0

    @classmethod
    def for_fd(cls, fd: int) -> ZipSink:
        return cls(fd=fd)

    @classmethod
    def for_file(cls, fileobj: IO[bytes]) -> ZipSink:
        return cls(fileobj=fileobj)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        n = len(data)
        if n < _SMALL_WRITE:
            self._buf += data
            if len(self._buf) >= _SMALL_WRITE:
                self.flush()
        else:
            self.flush()
            self._write_all(memoryview(data).cast("B"))
            if self.on_written is not None:
                self.on_written(n)
        self.position += n

    def _write_all(self, view: memoryview) -> None:
        done = 0
        n = len(view)
        while done < n:
            piece = view[done : done + _WRITE_CHUNK]
            if self.fd is not None:
                got = os.write(self.fd, piece)
            else:
                assert self.fileobj is not None
                got = self.fileobj.write(piece)
                if got is None:  # a file object that does not report what it wrote wrote it all
                    got = len(piece)
            if got <= 0:
                raise OSError("the output accepted no bytes")
            done += got

    def flush(self) -> None:
        if self._buf:
            buf = self._buf
            self._buf = bytearray()
            self._write_all(memoryview(buf))

    def skip(self, size: int) -> None:
        """Move ``size`` bytes ahead without writing them (a hole in a file)."""
        self.flush()
        if self.fd is not None:
            os.lseek(self.fd, size, os.SEEK_CUR)
        else:
            assert self.fileobj is not None
            self.fileobj.seek(size, os.SEEK_CUR)
        self.position += size

    def copy_later(self, src_fd: int, offset: int, size: int) -> None:
        """Reserve the next ``size`` bytes for bytes of ``src_fd`` at ``offset``, copied by
        :meth:`run_copies` (several at once, in the kernel). Only for a file descriptor; other
        sinks copy at once."""
        if self.fd is None or not hasattr(os, "copy_file_range"):
            self.copy_from(src_fd, offset, size)
            return
        self.flush()
        if size:
            os.lseek(self.fd, size, os.SEEK_CUR)
            if self.eager_copies:
                self._start_copy(src_fd, offset, self._origin + self.position, size)
            else:
                self.pending.append((src_fd, offset, self._origin + self.position, size))
        self.position += size

    @property
    def queued(self) -> int:
        """Copies reserved or started that :meth:`run_copies` will report the progress of."""
        return len(self.pending) + len(self._started)

    def _pool(self) -> Any:
        if self._copy_pool is None:
            from concurrent.futures import ThreadPoolExecutor

            # one thread: copies into one file serialise on its inode lock, and a second copier
            # only fights the caller's own writes for it (DCP consolidation: 2.1 s with two, 1.5 s with one)
            self._copy_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ckpt-copy")
        return self._copy_pool

    def _start_copy(self, src_fd: int, src_off: int, dst_off: int, size: int) -> None:
        if (src_off - dst_off) % _PAGE:  # copied through user space: on the threads that overlap
            self._start_through(src_fd, src_off, dst_off, size, False)
            return
        pool = self._pool()
        for start, n in _pieces(dst_off, size):
            future = pool.submit(_copy_range, self.fd, src_fd, src_off + start, dst_off + start, n)
            self._started.append((future, n))

    @property
    def can_copy_with_crc(self) -> bool:
        """Whether :meth:`copy_with_crc_later` works here (a file descriptor, eager copies)."""
        return self.fd is not None and self.eager_copies

    def copy_with_crc_later(self, src_fd: int, offset: int, size: int) -> CrcOfPieces:
        """Reserve the next ``size`` bytes for the bytes of ``src_fd`` at ``offset``, and start
        copying them through buffers on a few threads that compute their CRC-32 on the way: the
        source is read once. (For sources without CRCs, safetensors: 1 GB of 8 MB records took
        0.32 to 0.36 s on two threads here, where computing the CRCs ahead and copying in the
        kernel took 0.45 to 0.6 s.) Returns the CRC-32 to come; :meth:`run_copies` waits for the
        copies. Only where :attr:`can_copy_with_crc`."""
        if not self.can_copy_with_crc:
            raise RuntimeError("copy_with_crc_later needs a file descriptor and eager copies")
        assert self.fd is not None
        self.flush()
        os.lseek(self.fd, size, os.SEEK_CUR)
        parts = self._start_through(src_fd, offset, self._origin + self.position, size, True)
        self.position += size
        return CrcOfPieces(parts)

    def _start_through(self, src_fd: int, src_off: int, dst_off: int, size: int, with_crc: bool) -> list[Any]:
        """Start copying a range through user space, piece by piece (see :func:`_through_pieces`)
        on the through-copy threads; returns the pieces' futures (their CRC-32s if ``with_crc``)."""
        pool = self._through()
        parts = []
        for start, n in _through_pieces(size):
            future = pool.submit(_copy_through, self.fd, src_fd, src_off + start, dst_off + start, n, with_crc)
            self._started.append((future, n))
            parts.append(future)
        return parts

    def _through(self) -> Any:
        if self._through_pool is None:
            from concurrent.futures import ThreadPoolExecutor

            # copies through user space overlap one thread's read (and CRC) with another's write:
            # 1 GB took 0.33 s on two threads, 0.55 s on one
            workers = max(2, min(4, os.cpu_count() or 1))
            self._through_pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ckpt-copy-through")
        return self._through_pool

    def patch(self, position: int, data: bytes) -> None:
        """Write ``data`` over bytes already reserved at ``position`` in the archive (a file
        descriptor's: only :meth:`copy_with_crc_later` leaves bytes to fill in)."""
        assert self.fd is not None
        _pwrite_all(self.fd, memoryview(data), self._origin + position)

    def write_behind(self, data: bytes | bytearray | memoryview) -> None:
        """:meth:`write`, except that with :attr:`eager_copies` a buffer of 1 MiB or more is written
        at its place by the copy thread while the caller prepares the next (the caller must not
        change it afterwards; at most :data:`_BEHIND_BYTES` wait at a time). :meth:`run_copies`
        waits for them; the caller reports their progress itself."""
        view = memoryview(data).cast("B")
        n = len(view)
        if self.fd is None or not self.eager_copies or n < _BEHIND_MIN:
            self.write(view)
            return
        self.flush()
        os.lseek(self.fd, n, os.SEEK_CUR)
        self._behind.append((self._pool().submit(_pwrite_all, self.fd, view, self._origin + self.position), n))
        self._behind_bytes += n
        self.position += n
        while self._behind_bytes > _BEHIND_BYTES:
            self._land_behind()

    def after_behind(self, fn: Callable[[], None]) -> None:
        """Call ``fn`` once every buffer passed to :meth:`write_behind` so far has been written
        (at once if none waits)."""
        if self._behind and self._copy_pool is not None:
            self._copy_pool.submit(fn)  # one thread, first in first out: after those writes
        else:
            fn()

    def _land_behind(self) -> None:
        future, n = self._behind.pop(0)
        self._behind_bytes -= n
        future.result()
        if self.on_written is not None:
            self.on_written(n)

    def _finish_started(self, progress: Callable[[int], None] | None) -> None:
        started, self._started = self._started, []
        pools = [self._copy_pool, self._through_pool]
        self._copy_pool = self._through_pool = None
        try:
            while self._behind:
                self._land_behind()
            for future, n in started:
                future.result()
                self._copied(n, progress)
        except BaseException:
            for future, _ in started + self._behind:
                future.cancel()
            self._behind, self._behind_bytes = [], 0
            raise
        finally:
            for pool in pools:
                if pool is not None:
                    pool.shutdown(wait=True, cancel_futures=True)

    def run_copies(self, progress: Callable[[int], None] | None = None) -> None:
        """Fill every range :meth:`copy_later` reserved. The copies run on a few threads
        (``copy_file_range`` releases the GIL): a storage whose offset in the new file is not its
        offset in the old one modulo the page size copies at about half the speed of an aligned
        copy, and copying several at once wins that back where there are cores to spare."""
        if self._started or self._behind or self._copy_pool is not None or self._through_pool is not None:
            self._finish_started(progress)
        if self.pending and all((src_off - dst_off) % _PAGE == 0 for _fd, src_off, dst_off, _n in self.pending):
            self._run_aligned_copies(progress)
            return
        jobs = []
        for src_fd, src_off, dst_off, size in self.pending:
            for start, n in _pieces(dst_off, size):
                jobs.append((src_fd, src_off + start, dst_off + start, n))
        self.pending = []
        if not jobs:
            return
        fd = self.fd
        assert fd is not None
        # Shifted copies run in parallel to win back their speed; page-aligned ones run at the
        # disk's speed on one thread (more threads only add CPU time).
        shifted = any((src_off - dst_off) % _PAGE for _fd, src_off, dst_off, _n in jobs)
        workers = min(4, os.cpu_count() or 1, len(jobs)) if shifted else 1
        if workers <= 1:
            for job in jobs:
                _copy_range(fd, *job)
                self._copied(job[3], progress)
            return
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ckpt-copy") as pool:
            futures = [pool.submit(_copy_range, fd, *job) for job in jobs]
            try:
                for f, job in zip(futures, jobs):
                    f.result()
                    self._copied(job[3], progress)
            except BaseException:
                for f in futures:
                    f.cancel()
                raise

    def _run_aligned_copies(self, progress: Callable[[int], None] | None) -> None:
        """Page-aligned copies (see ``keep_page_phase``), as few and as long as possible: records
        that follow each other in both files with the same gap between them (their zip headers)
        are copied as one range, the source's headers included, and this file's own headers are
        then written back over them. The kernel copies a long range in page-aligned pieces about
        1.5x faster than the same bytes as one call per record, whose ends fall inside pages."""
        fd = self.fd
        assert fd is not None
        pending, self.pending = self.pending, []
        runs: list[list[tuple[int, int, int, int]]] = []
        for job in pending:
            if runs:
                src_fd, src_off, dst_off, size = runs[-1][-1]
                gap = job[1] - (src_off + size)
                if job[0] == src_fd and 0 <= gap <= _MAX_GAP and job[2] - (dst_off + size) == gap:
                    runs[-1].append(job)
                    continue
            runs.append([job])
        for run in runs:
            src_fd, first_src, first_dst, _ = run[0]
            last = run[-1]
            span = last[1] + last[3] - first_src
            # this file's bytes between the records (headers, descriptors), to restore after the copy
            gaps = []
            try:
                for a, b in zip(run, run[1:]):
                    start = a[2] + a[3]
                    gaps.append((start, os.pread(fd, b[2] - start, start)))
            except OSError:  # a sink opened write-only: one copy per record
                for job in run:
                    _copy_range(fd, *job)
                    self._copied(job[3], progress)
                continue
            for done, n in _pieces(first_dst, span):
                _copy_range(fd, src_fd, first_src + done, first_dst + done, n)
            for start, data in gaps:
                if os.pwrite(fd, data, start) != len(data):
                    raise OSError("short write while restoring a record header")
            for job in run:
                self._copied(job[3], progress)

    def _copied(self, n: int, progress: Callable[[int], None] | None) -> None:
        if self.on_written is not None:
            self.on_written(n)
        if progress is not None:
            progress(n)

    def copy_from(self, src_fd: int, offset: int, size: int) -> None:
        """Append ``size`` bytes of ``src_fd`` from ``offset``, in the kernel where possible."""
        self.flush()
        done = _kernel_copy(self.fd, src_fd, offset, None, size) if self.fd is not None else 0
        while done < size:
            chunk = os.pread(src_fd, min(size - done, _READ_CHUNK), offset + done)
            if not chunk:
                raise OSError(f"the source ended {size - done:,} bytes early")
            self._write_all(memoryview(chunk))
            done += len(chunk)
        self.position += size
        if self.on_written is not None:
            self.on_written(size)


_PARALLEL_COPY = 64 << 20
_BEHIND_MIN = 1 << 20
_BEHIND_BYTES = 16 << 20  # written-behind buffers waiting at most (memory: about this much more)


_THROUGH_PIECE = 8 << 20


def _through_pieces(size: int) -> list[tuple[int, int]]:
    """``(start, length)`` pieces of a copy whose CRC-32 is computed piece by piece: every piece
    after the first exactly :data:`_THROUGH_PIECE` long (so :class:`CrcOfPieces` can combine
    them).

    >>> _through_pieces(20 << 20)
    [(0, 4194304), (4194304, 8388608), (12582912, 8388608)]
    >>> _through_pieces(0)
    []
    """
    if size <= 0:
        return []
    first = size % _THROUGH_PIECE or _THROUGH_PIECE
    return [(0, first)] + [(start, _THROUGH_PIECE) for start in range(first, size, _THROUGH_PIECE)]


class CrcOfPieces:
    """The CRC-32 of consecutive pieces whose own CRC-32s are computed apart (futures), all but
    the first :data:`_THROUGH_PIECE` long (see :func:`_through_pieces`)."""

    def __init__(self, parts: list[Any]) -> None:
        self.parts = parts
        self._value: int | None = None

    def result(self) -> int:
        """Waits for every piece; raises what a piece's copy raised."""
        if self._value is None:
            first, *rest = self.parts
            crc = first.result()
            for part in rest:
                crc = crc32_shift(crc, _THROUGH_PIECE // _CRC_PIECE) ^ part.result()
            self._value = crc
        return self._value


def _pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    done = 0
    while done < len(view):
        got = os.pwrite(fd, view[done : done + _WRITE_CHUNK], offset + done)
        if got <= 0:
            raise OSError("the output accepted no bytes")
        done += got


_FOLIO = 2 << 20


def _pieces(dst_off: int, size: int) -> list[tuple[int, int]]:
    """``(start, length)`` pieces of a copy of ``size`` bytes to ``dst_off``, each at most
    :data:`_PARALLEL_COPY` long, every piece but the first starting on a 2 MiB boundary of the
    destination (the first ends on one). The kernel moves a copy through in fixed-size steps from
    where the call starts: started on a boundary, each step fills whole page-cache folios; started
    elsewhere, every step straddles two (copies of 1.6 GB took 0.70 s against 0.93 s here,
    whatever the source offset; 1 GB of 8 MB records 0.39 to 0.50 s against 0.50 to 0.58 s).

    >>> _pieces(15872, 8_000_000)
    [(0, 2081280), (2081280, 5918720)]
    """
    out = []
    done = 0
    while done < size:
        phase = (dst_off + done) % _FOLIO
        n = min(size - done, _FOLIO - phase if phase else _PARALLEL_COPY)
        out.append((done, n))
        done += n
    return out
_MAX_GAP = 1 << 16  # zip headers and padding between two records copied as one range


def _phase_block(size: int) -> int:
    """How far a record of ``size`` bytes copied from another file keeps its source's offset (see
    ``keep_page_phase``): within a 4 KiB page for records of 1 MiB and more, so the padding added
    is at most 1/256 of the record; smaller records keep torch's padding (a file of many small
    tensors converted from safetensors, which has no headers to keep in step, would otherwise grow
    by up to a page per tensor)."""
    return _PAGE if size >= 1 << 20 else 0


def _copy_range(dst_fd: int, src_fd: int, src_off: int, dst_off: int, size: int) -> None:
    """Copy ``size`` bytes between two files at the given offsets: in the kernel when the two
    offsets agree modulo a page; through a small buffer otherwise (the kernel splits every page
    of a shifted copy in two, and took 0.84 to 1.74 s for 1.6 GB here where positioned reads and
    writes of 1 MiB took 0.68 to 0.73 s, against 0.58 to 0.66 s for an aligned kernel copy)."""
    done = _kernel_copy(dst_fd, src_fd, src_off, dst_off, size) if (src_off - dst_off) % _PAGE == 0 else 0
    if done < size:
        _copy_through(dst_fd, src_fd, src_off + done, dst_off + done, size - done)


def _kernel_copy(dst_fd: int, src_fd: int, src_off: int, dst_off: int | None, size: int) -> int:
    """``copy_file_range`` of up to ``size`` bytes (to ``dst_off``, or at ``dst_fd``'s position
    when None); returns how many it copied: fewer at the source's end, 0 where the kernel cannot
    copy between these files (the caller copies the rest through user space)."""
    if not hasattr(os, "copy_file_range"):
        return 0
    done = 0
    try:
        while done < size:
            at = None if dst_off is None else dst_off + done
            got = os.copy_file_range(src_fd, dst_fd, min(size - done, _COPY_CHUNK), src_off + done, at)
            if got <= 0:
                break
            done += got
    except OSError as e:
        if done or e.errno not in _NO_KERNEL_COPY:
            raise
    return done


_local = threading.local()


def _copy_through(dst_fd: int, src_fd: int, src_off: int, dst_off: int, size: int, with_crc: bool = False) -> int:
    """Positioned reads into one reused 1 MiB buffer per thread, each written at its place;
    returns the CRC-32 of the bytes copied if ``with_crc``, else 0."""
    buf = getattr(_local, "buffer", None)
    if buf is None:
        buf = _local.buffer = memoryview(bytearray(_THROUGH_CHUNK))
    crc = 0
    done = 0
    while done < size:
        want = min(size - done, _THROUGH_CHUNK)
        got = os.preadv(src_fd, [buf[:want]], src_off + done) if hasattr(os, "preadv") else _pread_into(
            src_fd, buf[:want], src_off + done)
        if got <= 0:
            raise OSError(f"the source ended {size - done:,} bytes early")
        view = buf[:got]
        if with_crc:
            crc = crc32(view, crc)
        _pwrite_all(dst_fd, view, dst_off + done)
        done += got
    return crc


def _pread_into(fd: int, view: memoryview, offset: int) -> int:
    chunk = os.pread(fd, len(view), offset)
    view[: len(chunk)] = chunk
    return len(chunk)


_THROUGH_CHUNK = 1 << 20


# copy_file_range refuses some pairs of files (other file systems on old kernels, special files):
# then the bytes go through user space instead.
_NO_KERNEL_COPY = {getattr(errno, n) for n in ("EXDEV", "EINVAL", "ENOSYS", "EOPNOTSUPP", "EBADF", "ETXTBSY")
                   if hasattr(errno, n)}


# -- the archive ------------------------------------------------------------------------------------


class TorchZipWriter:
    """Writes a torch zip archive record by record (see the module docs for the layout).

    Either :meth:`write_record` (bytes in memory), or :meth:`begin` / :meth:`write` or
    :meth:`copy` ... / :meth:`end` (streamed). Then :meth:`finish`, which returns the file size.
    """

    def __init__(
        self, sink: ZipSink, archive_name: str, *, alignment: int = ALIGNMENT, keep_page_phase: bool = False,
    ) -> None:
        """``keep_page_phase``: a record copied from another file (``begin(..., source_offset=)``)
        of 1 MiB or more is padded so that its data keeps its offset within a page (up to 4 KiB of
        padding more than torch writes): the kernel copies page-aligned data at twice the speed of
        shifted data. The records are those torch writes; only the padding differs."""
        if not archive_name:
            raise ValueError("the archive needs a name")
        if alignment < 1 or alignment & (alignment - 1) or alignment > 4096:
            raise ValueError("alignment must be a power of two up to 4096")
        self.sink = sink
        self.alignment = alignment
        self.prefix = archive_name.encode("utf-8") + b"/"
        self.written: list[str] = []
        self._names: set[str] = set()
        self._central: list[tuple[_Record, int | CrcOfPieces]] = []
        """Each record and its CRC-32 (or the CRC still being computed): the directory entries."""
        self._folds: list[int | CrcOfPieces] = []
        """What the serialization id folds in, in order (CRCs still being computed among them)."""
        self._descriptors: list[tuple[int, _Record, CrcOfPieces]] = []
        """Data descriptors reserved for CRC-32s still being computed: (position, record, CRC)."""
        self._current: _Record | None = None
        self.finished = False
        self.keep_page_phase = keep_page_phase

    # -- records --------------------------------------------------------------------------------

    def write_record(self, name: str, data: bytes | bytearray | memoryview) -> None:
        """One whole record from memory."""
        view = memoryview(data).cast("B")
        self.begin(name, len(view))
        self.write(view)
        self.end()

    def begin(self, name: str, size: int, *, source_offset: int | None = None) -> None:
        """Start record ``name`` of exactly ``size`` bytes: writes its local header.
        ``source_offset``: where the record's data lies in the file it will be copied from (see
        ``keep_page_phase``)."""
        if self._current is not None:
            raise RuntimeError(f"record {self._current.name!r} is not finished")
        if self.finished:
            raise RuntimeError("the archive is finished")
        if name in self._names:
            raise ValueError(f"record {name!r} written twice")
        if size < 0:
            raise ValueError("negative record size")
        full = self.prefix + name.encode("utf-8")
        if len(full) > 0xFFFF:
            raise ValueError(f"record name {name!r} is too long for a zip archive")
        offset = self.sink.position
        zip64 = size >= _U32 or offset >= _U32
        zip64_extra = b""
        if zip64:
            fields = []
            if size >= _U32:
                fields += [size, 0]  # miniz writes the compressed size before it knows it: 0
            if offset >= _U32:
                fields.append(offset)
            zip64_extra = struct.pack(f"<2H{len(fields)}Q", 1, 8 * len(fields), *fields)
        start = offset + _LOCAL.size + len(full) + 4 + len(zip64_extra)
        pad = -start % self.alignment
        if self.keep_page_phase and source_offset is not None and source_offset % self.alignment == 0:
            block = _phase_block(size)
            if block:
                pad = (source_offset - start) % block
        extra = zip64_extra + b"FB" + struct.pack("<H", pad) + b"Z" * pad
        flags = _FLAG_UTF8 | (_FLAG_DESCRIPTOR if size else 0)
        self.sink.write(_LOCAL.pack(b"PK\x03\x04", 0, flags, 0, 0, 0, 0, 0, 0, len(full), len(extra)))
        self.sink.write(full)
        self.sink.write(extra)
        self._current = _Record(name, full, size, offset, flags, zip64)
        # torch folds into the serialization id the CRC field of every write that starts like a
        # data descriptor, which includes a record name or a record's data that happen to.
        self._note_write(full)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append bytes to the current record (its CRC-32 is computed as they pass)."""
        rec = self._need_record()
        view = memoryview(data).cast("B")
        if rec.done + len(view) > rec.size:
            raise ValueError(f"record {rec.name!r} is {rec.size:,} bytes; more were written")
        if rec.done == 0:
            rec.head = bytes(view[:8])
        elif len(rec.head) < 8:
            rec.head += bytes(view[: 8 - len(rec.head)])
        if rec.crc is None:
            self.sink.write(view)
        elif len(view) >= _PARALLEL_CRC:
            rec.crc = _write_with_crc(self.sink, view, rec.crc)
        else:
            rec.crc = crc32(view, rec.crc)
            self.sink.write(view)
        rec.done += len(view)

    def copy(self, src_fd: int, offset: int, size: int, *, crc: int | None = None) -> None:
        """Append ``size`` bytes of another file to the current record without reading them into
        Python, when ``crc`` (their CRC-32) is known (the copy itself may happen later, in the
        kernel, before :meth:`finish` returns: see :meth:`ZipSink.run_copies`); otherwise they
        are read to compute it."""
        rec = self._need_record()
        if rec.done + size > rec.size:
            raise ValueError(f"record {rec.name!r} is {rec.size:,} bytes; more were written")
        if crc is None or rec.done:
            pos = offset
            end = offset + size
            while pos < end:
                chunk = os.pread(src_fd, min(end - pos, _READ_CHUNK), pos)
                if not chunk:
                    raise OSError(f"the source ended {end - pos:,} bytes early")
                self.write(chunk)
                pos += len(chunk)
            return
        if size:
            rec.head = os.pread(src_fd, min(size, 8), offset)
        self.sink.copy_later(src_fd, offset, size)
        rec.done = size
        rec.crc = None
        rec.given_crc = crc

    def copy_computing_crc(self, src_fd: int, offset: int, size: int) -> bool:
        """The current record's whole data from another file whose CRC-32 is not known, read once
        and copied on the sink's threads, which compute the CRC on the way; the record's data
        descriptor, its directory entry and the serialization id get it in :meth:`finish`.
        Returns False, having done nothing, where the sink cannot (see
        :attr:`ZipSink.can_copy_with_crc`): :meth:`copy` then reads the bytes to compute it."""
        rec = self._need_record()
        if not self.sink.can_copy_with_crc or rec.done or size != rec.size or size == 0:
            return False
        rec.head = os.pread(src_fd, min(size, 8), offset)
        rec.pending_crc = self.sink.copy_with_crc_later(src_fd, offset, size)
        rec.done = size
        rec.crc = None
        return True

    def skip(self, size: int) -> None:
        """Leave ``size`` bytes of the current record unwritten (a hole, CRC-32 0): torch's
        ``write_record_metadata``, which its ``skip_data()`` mode uses to lay out a file first."""
        rec = self._need_record()
        if rec.done or size != rec.size:
            raise ValueError("skip() stands for a whole record's data")
        self.sink.skip(size)
        rec.done = size
        rec.crc = None
        rec.given_crc = 0
        rec.head = b""

    def end(self) -> None:
        """Finish the current record: data descriptor and central directory entry."""
        rec = self._need_record()
        if rec.done != rec.size:
            raise ValueError(f"record {rec.name!r} is {rec.size:,} bytes but {rec.done:,} were written")
        if rec.size >= 8 and rec.head[:4] == SIG_DESCRIPTOR:
            self._folds.append(int.from_bytes(rec.head[4:8], "little"))
        pending = rec.pending_crc
        crc: int | CrcOfPieces
        if pending is not None:
            self._descriptors.append((self.sink.position, rec, pending))
            self.sink.skip(len(_descriptor(rec, 0)))  # written by finish()
            crc = pending
        else:
            given = rec.given_crc if rec.crc is None else rec.crc
            assert given is not None
            if rec.size:
                self.sink.write(_descriptor(rec, given))
            crc = given
        if rec.size:
            self._folds.append(crc)
        self._central.append((rec, crc))
        self.written.append(rec.name)
        self._names.add(rec.name)
        self._current = None

    def _need_record(self) -> _Record:
        if self._current is None:
            raise RuntimeError("no record is open; call begin() first")
        return self._current

    def _note_write(self, data: bytes) -> None:
        if len(data) >= 8 and data[:4] == SIG_DESCRIPTOR:
            self._folds.append(int.from_bytes(data[4:8], "little"))

    def _combined_crc(self) -> int:
        combined = 0
        for item in self._folds:
            combined = hash_combine(combined, _crc_value(item))
        return combined

    def __contains__(self, name: object) -> bool:
        return name in self._names

    # -- the end ----------------------------------------------------------------------------------

    def finish(self) -> int:
        """Write what ``writeEndOfFile`` writes: ``version`` and ``byteorder`` if missing, the
        serialization id, the central directory and the end records. Returns the archive size."""
        if self._current is not None:
            raise RuntimeError(f"record {self._current.name!r} is not finished")
        self.sink.run_copies()
        for position, rec, pending in self._descriptors:
            self.sink.patch(position, _descriptor(rec, pending.result()))
        self._descriptors = []
        if "version" not in self._names and ".data/version" not in self._names:
            self.write_record("version", VERSION_RECORD)
        if "byteorder" not in self._names:
            self.write_record("byteorder", sys.byteorder.encode("ascii"))
        if ".data/serialization_id" not in self._names:
            self.write_record(".data/serialization_id", serialization_id(self.written, self._combined_crc()).encode("ascii"))
        sink = self.sink
        cd_offset = sink.position
        central = b"".join(_central_entry(rec, _crc_value(crc)) for rec, crc in self._central)
        sink.write(central)
        count = len(self._central)
        z64_at = sink.position
        sink.write(_ZIP64_EOCD.pack(b"PK\x06\x06", _ZIP64_EOCD.size - 12, 0x031E, 0x002D, 0, 0,
                                    count, count, len(central), cd_offset))
        sink.write(_ZIP64_LOCATOR.pack(b"PK\x06\x07", 0, z64_at, 1))
        sink.write(_EOCD.pack(b"PK\x05\x06", 0, 0, min(count, 0xFFFF), min(count, 0xFFFF),
                              min(len(central), _U32), min(cd_offset, _U32), 0))
        sink.flush()
        self.finished = True
        return sink.position


_PARALLEL_CRC = 4 << 20
_CRC_PIECE = 1 << 20
_crc_shift: list[int] | None = None
_crc_pool: Any = None  # a thread pool, made on the first big record


def _shift_operator() -> list[int]:
    """The GF(2)-linear map ``c -> crc32(A + B)`` needs from ``c = crc32(A)`` when ``B`` is one
    piece long: column ``i`` is ``crc32(zeros, 1 << i) ^ crc32(zeros, 0)`` (zlib's crc32_combine,
    which Python's zlib does not expose)."""
    global _crc_shift
    if _crc_shift is None:
        zeros = bytes(_CRC_PIECE)
        base = zlib.crc32(zeros, 0)
        _crc_shift = [zlib.crc32(zeros, 1 << i) ^ base for i in range(32)]
    return _crc_shift


def crc32_shift(crc: int, pieces: int = 1) -> int:
    """The linear part of ``crc32(B, crc)`` for ``B`` of ``pieces`` MiB: ``crc32(A + B)`` is
    ``crc32_shift(crc32(A), n) ^ crc32(B)`` when ``B`` is ``n`` MiB long.

    >>> a, b = b"x" * 5, bytes(range(256)) * 8192
    >>> crc32_shift(zlib.crc32(a), 2) ^ zlib.crc32(b) == zlib.crc32(a + b)
    True
    """
    op = _shift_operator()
    for _ in range(pieces):
        out = 0
        i = 0
        while crc:
            if crc & 1:
                out ^= op[i]
            crc >>= 1
            i += 1
        crc = out
    return crc


def crc32_combine(crc_a: int, crc_b: int) -> int:
    """CRC-32 of ``A + B`` from those of ``A`` and of ``B``, for ``B`` exactly 1 MiB long.

    >>> a, b = b"x" * 5, bytes(range(256)) * 4096
    >>> crc32_combine(zlib.crc32(a), zlib.crc32(b)) == zlib.crc32(a + b)
    True
    """
    return crc32_shift(crc_a) ^ crc_b


def _pool() -> Any:
    global _crc_pool
    if _crc_pool is None:
        from concurrent.futures import ThreadPoolExecutor

        _crc_pool = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 2), thread_name_prefix="ckpt-crc32")
    return _crc_pool


def _crc_pieces(view: memoryview) -> list[Any]:
    """Start computing the CRC-32 of each whole 1 MiB piece of ``view`` on the thread pool."""
    pieces = len(view) // _CRC_PIECE
    submit = _pool().submit
    return [submit(crc32, view[i * _CRC_PIECE : (i + 1) * _CRC_PIECE]) for i in range(pieces)]


def _crc_finish(view: memoryview, crc: int, futures: list[Any]) -> int:
    for f in futures:
        crc = crc32_combine(crc, f.result())
    return crc32(view[len(futures) * _CRC_PIECE :], crc)


def parallel_crc32(view: memoryview, crc: int = 0) -> int:
    """``crc32(view, crc)``, computed 1 MiB at a time on all cores where the checksum releases the
    GIL (zlib's does); ISA-L's single thread outruns several of zlib's, and runs alone."""
    if len(view) < 2 * _CRC_PIECE or (os.cpu_count() or 1) < 2 or not RELEASES_GIL:
        return crc32(view, crc)
    return _crc_finish(view, crc, _crc_pieces(view))


def _write_with_crc(sink: ZipSink, view: memoryview, crc: int) -> int:
    """Write ``view`` while the thread pool computes its CRC-32 piece by piece (zlib and the
    write both release the GIL, so a big record costs about the slower of the two, not their sum)."""
    futures = _crc_pieces(view)
    try:
        sink.write(view)
    except BaseException:
        for f in futures:
            f.cancel()
        raise
    return _crc_finish(view, crc, futures)


def _crc_value(crc: int | CrcOfPieces) -> int:
    """A CRC-32, waiting for it if it is still being computed."""
    return crc if type(crc) is int else crc.result()  # type: ignore[union-attr]


def _descriptor(rec: _Record, crc: int) -> bytes:
    if rec.zip64:
        return _DESCRIPTOR64.pack(SIG_DESCRIPTOR, crc, rec.size, rec.size)
    return _DESCRIPTOR32.pack(SIG_DESCRIPTOR, crc, rec.size, rec.size)


def _central_entry(rec: _Record, crc: int) -> bytes:
    fields = []
    if rec.size >= _U32:
        fields += [rec.size, rec.size]
    if rec.offset >= _U32:
        fields.append(rec.offset)
    extra = struct.pack(f"<2H{len(fields)}Q", 1, 8 * len(fields), *fields) if fields else b""
    return _CENTRAL.pack(
        b"PK\x01\x02", 0, 0, rec.flags, 0, 0, 0, crc, min(rec.size, _U32), min(rec.size, _U32),
        len(rec.full), len(extra), 0, 0, 0, 0, min(rec.offset, _U32),
    ) + rec.full + extra


class _Record:
    __slots__ = ("name", "full", "size", "offset", "flags", "zip64", "done", "crc", "given_crc", "head",
                 "pending_crc")

    def __init__(self, name: str, full: bytes, size: int, offset: int, flags: int, zip64: bool) -> None:
        self.name = name
        self.full = full
        self.size = size
        self.offset = offset
        self.flags = flags
        self.zip64 = zip64
        self.done = 0
        self.crc: int | None = 0
        self.given_crc: int | None = None
        self.pending_crc: CrcOfPieces | None = None
        self.head = b""
