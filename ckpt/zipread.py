"""A strict, lazy zip reader for checkpoint archives.

It reads the end records and the central directory only; record bytes are reached later by
offset (positioned reads), one record at a time. Every number is checked against the file before
use: offsets and sizes must lie inside the file, a record's local header must agree with its
central entry, names must be unique. Compressed (deflate) records are inflated only up to the size
their entry declares, so a zip bomb cannot make ckpt allocate more than the caller asked for.

Unlike torch (which builds miniz without CRC checks), every read verifies the record's CRC-32
unless the archive carries no CRCs at all (``torch.serialization.set_crc32_options(False)``).

>>> import io, zipfile
>>> buf = io.BytesIO()
>>> with zipfile.ZipFile(buf, "w") as z:
...     z.writestr("a/x", b"hello")
>>> arc = ZipArchive(RangedFile.from_bytes(buf.getvalue()), name="demo.zip")
>>> arc.read(arc.entry("a/x"))
b'hello'
"""

from __future__ import annotations

import errno
import os
import stat
import struct
import threading
import zlib
from typing import IO, Any

from .crc import crc32
from .errors import CheckpointError, CorruptCheckpointError, ResourceLimitError, UnsupportedFormatError
from .limits import DEFAULT_LIMITS, Limits

_EOCD = struct.Struct("<4s4H2LH")  # sig, disk, cd disk, entries here, entries, cd size, cd off, comment len
_ZIP64_LOCATOR = struct.Struct("<4sLQL")
_ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")
_CENTRAL = struct.Struct("<4s4H2H3L5H2L")
# The fields of a central header that ZipArchive keeps or checks: signature, flags, method, CRC,
# sizes, name/extra/comment lengths, local header offset (version, times and attributes skipped).
_CENTRAL_KEPT = struct.Struct("<4s4x2H4x3L3H8xL")
_LOCAL = struct.Struct("<4s5H3L2H")
_LOCAL_FIELDS = struct.Struct("<8xH16xHH").unpack_from  # method, name length, extra length

SIG_LOCAL = b"PK\x03\x04"
SIG_CENTRAL = b"PK\x01\x02"
SIG_EOCD = b"PK\x05\x06"
SIG_ZIP64_EOCD = b"PK\x06\x06"
SIG_ZIP64_LOCATOR = b"PK\x06\x07"

STORED = 0
DEFLATED = 8
_CHUNK = 1 << 24
_WINDOW = 1 << 18
_DEFLATE_MAX_RATIO = 1032  # deflate cannot inflate more than about 1032:1
_SMALL_READ = 1 << 15
_PIPELINE = 1 << 24  # records this big are read and checksummed in parallel
_PIPELINE_PIECE = 1 << 22
_ASYNC_CRC = 1 << 20


class RangedFile:
    """Positioned reads of one file (``os.pread``), safe to share between threads.

    ``from_bytes`` wraps an in-memory buffer with the same interface (used by tests and for
    archives nested inside other files).
    """

    def __init__(self, fileobj: IO[bytes] | None, size: int, *, data: bytes | None = None) -> None:
        self._file = fileobj
        self._data = data
        self.size = size
        self._lock = threading.Lock()
        self._fd = fileobj.fileno() if fileobj is not None and hasattr(os, "pread") else None

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> RangedFile:
        """Open ``path`` for positioned reads. A FIFO, character device or socket is refused with an
        ``OSError`` before it is opened (opening a FIFO blocks until a writer comes; reading never ends)."""
        mode = os.stat(path).st_mode
        if stat.S_ISFIFO(mode) or stat.S_ISCHR(mode) or stat.S_ISSOCK(mode):
            raise OSError(errno.EINVAL, "not a regular file: a FIFO, device or socket", os.fspath(path))
        f = open(path, "rb")
        try:
            size = os.fstat(f.fileno()).st_size
        except BaseException:
            f.close()
            raise
        return cls(f, size)

    @classmethod
    def from_bytes(cls, data: bytes) -> RangedFile:
        return cls(None, len(data), data=bytes(data))

    def pread(self, offset: int, length: int) -> bytes:
        """Exactly ``length`` bytes at ``offset`` (fewer only at end of file)."""
        if self._data is not None:
            return self._data[offset : offset + length]
        if self._fd is not None:
            out = os.pread(self._fd, length, offset)
            if len(out) == length or not out:
                return out
            parts = [out]
            got = len(out)
            while got < length:
                more = os.pread(self._fd, length - got, offset + got)
                if not more:
                    break
                parts.append(more)
                got += len(more)
            return b"".join(parts)
        if self._file is None:
            raise CheckpointError("the checkpoint was closed; open it again to read tensor data")
        with self._lock:
            self._file.seek(offset)
            return self._file.read(length)

    def readinto(self, offset: int, buf: memoryview) -> int:
        """Fill ``buf`` from ``offset``; returns the number of bytes read."""
        n = len(buf)
        if self._data is None and self._file is None:
            raise CheckpointError("the checkpoint was closed; open it again to read tensor data")
        if self._data is not None:
            chunk = self._data[offset : offset + n]
            buf[: len(chunk)] = chunk
            return len(chunk)
        if self._fd is not None and hasattr(os, "preadv"):
            done = 0
            while done < n:
                got = os.preadv(self._fd, [buf[done : done + (1 << 30)]], offset + done)
                if got <= 0:
                    break
                done += got
            return done
        done = 0
        while done < n:
            chunk = self.pread(offset + done, min(n - done, _CHUNK))
            if not chunk:
                break
            buf[done : done + len(chunk)] = chunk
            done += len(chunk)
        return done

    def fileno(self) -> int | None:
        return self._file.fileno() if self._file is not None else None

    def locate(self, offset: int) -> tuple[int, int] | None:
        """``(file descriptor, offset in that file)`` of byte ``offset``, for copies made in the
        kernel; None for an in-memory file."""
        fd = self.fileno()
        return None if fd is None else (fd, offset)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
            self._fd = None


class WindowFile(RangedFile):
    """A byte range ``[start, start + size)`` of another :class:`RangedFile`, read by position."""

    def __init__(self, parent: RangedFile, start: int, size: int) -> None:
        super().__init__(None, size)
        self._parent = parent
        self._start = start

    def pread(self, offset: int, length: int) -> bytes:
        if offset >= self.size or length <= 0:
            return b""
        return self._parent.pread(self._start + offset, min(length, self.size - offset))

    def readinto(self, offset: int, buf: memoryview) -> int:
        n = max(0, min(len(buf), self.size - offset))
        if n == 0:
            return 0
        return self._parent.readinto(self._start + offset, buf[:n])

    def fileno(self) -> int | None:
        return None

    def locate(self, offset: int) -> tuple[int, int] | None:
        return self._parent.locate(self._start + offset)

    def close(self) -> None:
        pass  # the parent file belongs to whoever opened it


class ZipEntry:
    """One record as the central directory describes it.

    ``data_offset`` is the offset of the record's first data byte: -1 until its local header has
    been read and checked.
    """

    __slots__ = ("name", "method", "flags", "crc", "compressed_size", "size", "header_offset", "index", "data_offset")

    def __init__(
        self, name: str, method: int, flags: int, crc: int, compressed_size: int, size: int,
        header_offset: int, index: int, data_offset: int = -1,
    ) -> None:
        self.name = name
        self.method = method
        self.flags = flags
        self.crc = crc
        self.compressed_size = compressed_size
        self.size = size
        self.header_offset = header_offset
        self.index = index
        self.data_offset = data_offset

    def __repr__(self) -> str:
        return f"<zip entry {self.name!r} {self.size} bytes at {self.header_offset}>"


def _decode_name(raw: bytes, flags: int) -> str:
    return raw.decode("utf-8" if flags & 0x800 else "cp437", errors="surrogateescape")


class ZipArchive:
    """The central directory of a zip file, with checked, lazy access to each record."""

    def __init__(self, file: RangedFile, *, name: str, limits: Limits = DEFAULT_LIMITS) -> None:
        self.file = file
        self.name = name
        self.limits = limits
        self._order: list[bytes] = []
        self._raw: dict[bytes, tuple[int, ...]] = {}
        self._entries: dict[bytes, ZipEntry] = {}
        self._all: list[ZipEntry] | None = None
        self._window: tuple[int, bytes] = (0, b"")
        self._checks: Any = None  # a thread pool checking CRCs while the next records are read
        self.zip64 = False
        self.comment = b""
        self.end_of_central_directory = 0
        self._read_directory()
        self.has_crcs = any(t[2] for t in self._raw.values() if t[4])

    # -- directory -------------------------------------------------------------------------

    def _corrupt(self, message: str, record: str | None = None) -> CorruptCheckpointError:
        return CorruptCheckpointError(message, path=self.name, record=record)

    def _read_directory(self) -> None:
        size = self.file.size
        # Most archives (torch's among them) have no comment: try the last bytes alone first, so
        # opening a small checkpoint does not read its tensor data.
        tail_len = min(size, _EOCD.size + _ZIP64_LOCATOR.size)
        tail_start = size - tail_len
        tail = self.file.pread(tail_start, tail_len)
        if tail[-_EOCD.size : -_EOCD.size + 4] != SIG_EOCD or tail[-2:] != b"\0\0":
            tail_len = min(size, _EOCD.size + 0xFFFF)
            tail_start = size - tail_len
            tail = self.file.pread(tail_start, tail_len)
        pos = tail.rfind(SIG_EOCD)
        while pos >= 0:
            if pos + _EOCD.size <= len(tail):
                comment_len = _EOCD.unpack_from(tail, pos)[7]
                if pos + _EOCD.size + comment_len == len(tail):
                    break
            pos = tail.rfind(SIG_EOCD, 0, pos)
        if pos < 0:
            last = tail.rfind(SIG_EOCD)
            if last >= 0 and last + _EOCD.size <= len(tail):
                extra = len(tail) - last - _EOCD.size - _EOCD.unpack_from(tail, last)[7]
                if extra > 0:
                    raise self._corrupt(
                        f"{extra:,} bytes follow the end of the zip archive (data appended to the file)"
                    )
            raise self._corrupt(
                "no zip end-of-central-directory record: the file is truncated "
                "(an incomplete download?) or is not a zip archive"
            )
        eocd_at = tail_start + pos
        _, disk, cd_disk, n_here, n_total, cd_size, cd_offset, comment_len = _EOCD.unpack_from(tail, pos)
        self.comment = tail[pos + _EOCD.size : pos + _EOCD.size + comment_len]
        if disk or cd_disk or n_here != n_total:
            raise UnsupportedFormatError("multi-disk (spanned) zip archives are not supported", path=self.name)
        if eocd_at >= _ZIP64_LOCATOR.size:
            loc = self.file.pread(eocd_at - _ZIP64_LOCATOR.size, _ZIP64_LOCATOR.size)
            if loc[:4] == SIG_ZIP64_LOCATOR:
                _, _, z64_at, _ = _ZIP64_LOCATOR.unpack(loc)
                if z64_at + _ZIP64_EOCD.size > eocd_at - _ZIP64_LOCATOR.size:
                    raise self._corrupt("zip64 end record offset points outside the file")
                rec = self.file.pread(z64_at, _ZIP64_EOCD.size)
                if rec[:4] != SIG_ZIP64_EOCD:
                    raise self._corrupt("zip64 locator does not point to a zip64 end record")
                fields = _ZIP64_EOCD.unpack(rec)
                n_here, n_total, cd_size, cd_offset = fields[6], fields[7], fields[8], fields[9]
                if n_here != n_total:
                    raise UnsupportedFormatError("multi-disk zip64 archives are not supported", path=self.name)
                self.zip64 = True
                eocd_at = z64_at
        if n_total > self.limits.max_records:
            raise ResourceLimitError(
                f"the archive declares {n_total:,} records (limit {self.limits.max_records:,})",
                path=self.name,
            )
        if cd_size > self.limits.max_central_directory_bytes:
            raise ResourceLimitError(
                f"central directory of {cd_size:,} bytes exceeds the limit", path=self.name
            )
        if cd_offset + cd_size != eocd_at:
            if cd_offset + cd_size > eocd_at:
                raise self._corrupt("central directory extends past its end record: truncated or damaged")
            raise self._corrupt(
                f"{eocd_at - cd_offset - cd_size} unexplained bytes between the central directory and "
                "its end record (data outside any member; a polyglot or damaged file)"
            )
        self.end_of_central_directory = eocd_at
        cd = self.file.pread(cd_offset, cd_size)
        if len(cd) != cd_size:
            raise self._corrupt("central directory is truncated")
        self._parse_central(cd, n_total, cd_offset)

    def _parse_central(self, cd: bytes, count: int, cd_offset: int) -> None:
        # Only the fields needed to check and find records are kept, as tuples keyed by the raw
        # name; ZipEntry objects are made when a record is asked for (archives may hold 100,000s).
        unpack = _CENTRAL_KEPT.unpack_from
        hsize = _CENTRAL.size
        pos = 0
        raw_entries = self._raw
        end = len(cd)
        for index in range(count):
            if pos + hsize > end:
                raise self._corrupt(f"central directory ends after {index} of {count} records")
            sig, flags, method, crc, csize, usize, nlen, xlen, clen, offset = unpack(cd, pos)
            name_end = pos + hsize + nlen
            following = name_end + xlen + clen
            if sig != SIG_CENTRAL or following > end:
                raise self._corrupt(f"central directory record {index} is damaged or runs past the directory")
            raw = cd[pos + hsize : name_end]
            if csize == 0xFFFFFFFF or usize == 0xFFFFFFFF or offset == 0xFFFFFFFF:
                usize, csize, offset = self._zip64_extra(
                    cd[name_end : name_end + xlen], usize, csize, offset, _decode_name(raw, flags)
                )
            if flags & 0x1 or offset + 30 + nlen + csize > cd_offset or (
                method == DEFLATED and usize > csize * _DEFLATE_MAX_RATIO + 1024
            ):
                self._refuse(raw, flags, method, csize, usize, offset, nlen, cd_offset)
            if raw in raw_entries:
                raise self._corrupt(
                    "two records share this name; the archive is ambiguous (readers disagree on "
                    "which one counts)",
                    record=_decode_name(raw, flags),
                )
            raw_entries[raw] = (method, flags, crc, csize, usize, offset, index)
            pos = following
        if pos != end:
            raise self._corrupt("central directory holds more bytes than its records")
        self._order = list(raw_entries)

    def _refuse(self, raw: bytes, flags: int, method: int, csize: int, usize: int, offset: int, nlen: int,
                cd_offset: int) -> None:
        """Raise the error for a record that is encrypted, runs into the central directory, or
        declares more than deflate can produce (checked in that order)."""
        name = _decode_name(raw, flags)
        if flags & 0x1:
            raise UnsupportedFormatError(
                "record is encrypted; checkpoints are never encrypted", path=self.name, record=name,
            )
        if offset + 30 + nlen + csize > cd_offset:
            raise self._corrupt(
                f"record of {csize:,} bytes at offset {offset:,} would run into the central directory "
                "(truncated or damaged file)", record=name,
            )
        raise self._corrupt(
            f"deflated record declares {usize:,} bytes from {csize:,}: more than deflate can produce",
            record=name,
        )

    def _zip64_extra(
        self, extra: bytes, usize: int, csize: int, offset: int, name: str
    ) -> tuple[int, int, int]:
        p = 0
        while p + 4 <= len(extra):
            tag, ln = struct.unpack_from("<2H", extra, p)
            body = extra[p + 4 : p + 4 + ln]
            if tag == 1:
                q = 0
                try:
                    if usize == 0xFFFFFFFF:
                        (usize,) = struct.unpack_from("<Q", body, q)
                        q += 8
                    if csize == 0xFFFFFFFF:
                        (csize,) = struct.unpack_from("<Q", body, q)
                        q += 8
                    if offset == 0xFFFFFFFF:
                        (offset,) = struct.unpack_from("<Q", body, q)
                except struct.error:
                    raise self._corrupt("zip64 extra field is too short", record=name) from None
                return usize, csize, offset
            p += 4 + ln
        raise self._corrupt("sizes marked zip64 but no zip64 extra field", record=name)

    # -- access ------------------------------------------------------------------------------

    def _make_entry(self, raw: bytes) -> ZipEntry:
        entry = self._entries.get(raw)
        if entry is None:
            method, flags, crc, csize, usize, offset, index = self._raw[raw]
            entry = ZipEntry(_decode_name(raw, flags), method, flags, crc, csize, usize, offset, index)
            self._entries[raw] = entry
        return entry

    @property
    def entries(self) -> list[ZipEntry]:
        """Every record, in central-directory order."""
        if self._all is None:
            self._all = [self._make_entry(raw) for raw in self._order]
        return self._all

    def __len__(self) -> int:
        return len(self._order)

    def entry_at(self, index: int) -> ZipEntry:
        """The ``index``-th record of the central directory."""
        return self._make_entry(self._order[index])

    def raw_names(self) -> list[bytes]:
        """Record names as stored (bytes), in central-directory order; cheap for huge archives."""
        return self._order

    def names(self) -> list[str]:
        return [e.name for e in self.entries]

    def get(self, name: str) -> ZipEntry | None:
        """The record called ``name``, or None."""
        raw = name.encode("utf-8", "surrogateescape")
        if raw not in self._raw:
            try:
                raw = name.encode("cp437")
            except UnicodeEncodeError:
                return None
            if raw not in self._raw or _decode_name(raw, self._raw[raw][1]) != name:
                return None
        return self._make_entry(raw)

    def size_of(self, name: str) -> int | None:
        """The uncompressed size of record ``name`` (None if absent), without building its entry."""
        raw = self._raw.get(name.encode("utf-8", "surrogateescape"))
        if raw is None:
            found = self.get(name)
            return None if found is None else found.size
        return raw[4]

    def sizes_of(self, names: list[str]) -> list[int | None]:
        """``[self.size_of(n) for n in names]``, made faster for many names."""
        joined = "\n".join(names)
        if joined.count("\n") == len(names) - 1:  # no name holds a line break: encode all at once
            raws = joined.encode("utf-8", "surrogateescape").split(b"\n") if names else []
        else:
            raws = [n.encode("utf-8", "surrogateescape") for n in names]
        found = list(map(self._raw.get, raws))
        if None in found:
            return [self.size_of(n) for n in names]
        return [raw[4] for raw in found]

    def entry(self, name: str) -> ZipEntry:
        found = self.get(name)
        if found is None:
            raise self._corrupt("record is missing from the archive", record=name)
        return found

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def data_offset(self, entry: ZipEntry, *, readahead: bool = False) -> int:
        """Offset of the record's data, after checking its local header against the central one.

        ``readahead`` serves the header from a window that also covers the records after it
        (for reading many small records in file order)."""
        if entry.data_offset >= 0:
            return entry.data_offset
        want = _LOCAL.size + len(entry.name)
        head = self._read_small(entry.header_offset, want) if readahead else self.file.pread(entry.header_offset, want)
        if len(head) < _LOCAL.size or head[:4] != SIG_LOCAL:
            raise self._corrupt("local header is missing or damaged", record=entry.name)
        _, _need, _flags, method, _t, _d, _crc, _cs, _us, nlen, xlen = _LOCAL.unpack_from(head)
        raw_name = head[_LOCAL.size : _LOCAL.size + nlen]
        if len(raw_name) != nlen:
            raw_name = self.file.pread(entry.header_offset + _LOCAL.size, nlen)
        names = {raw_name.decode("utf-8", "surrogateescape"), raw_name.decode("cp437")}
        if method != entry.method or entry.name not in names:
            raise self._corrupt(
                "local header disagrees with the central directory (name or compression)",
                record=entry.name,
            )
        start = entry.header_offset + _LOCAL.size + nlen + xlen
        if start + entry.compressed_size > self.file.size:
            raise self._corrupt(
                f"record needs {entry.compressed_size:,} bytes at offset {start:,} but the file ends "
                f"at {self.file.size:,} (truncated download?)",
                record=entry.name,
            )
        entry.data_offset = start
        return start

    def _check_method(self, entry: ZipEntry) -> None:
        if (
            entry.method == DEFLATED and entry.size > 1 << 20
            and entry.size > self.limits.max_compression_ratio * max(entry.compressed_size, 1)
        ):
            raise ResourceLimitError(
                f"compressed record would inflate {entry.compressed_size:,} bytes to {entry.size:,} "
                f"(over {self.limits.max_compression_ratio}:1; a zip bomb?). Raise "
                "Limits.max_compression_ratio if you trust this file",
                path=self.name, record=entry.name,
            )
        if entry.method not in (STORED, DEFLATED):
            raise UnsupportedFormatError(
                f"compression method {entry.method} is not supported (torch writes stored records)",
                path=self.name,
                record=entry.name,
            )
        if entry.method == STORED and entry.compressed_size != entry.size:
            raise self._corrupt("stored record's sizes disagree", record=entry.name)

    def read(self, entry: ZipEntry, *, max_size: int | None = None, verify_crc: bool = True) -> bytes:
        """The record's bytes, inflated if needed and CRC-checked.

        ``max_size`` refuses records that declare more bytes than the caller can use.
        """
        if max_size is not None and entry.size > max_size:
            raise ResourceLimitError(
                f"record declares {entry.size:,} bytes, more than the {max_size:,} allowed",
                path=self.name,
                record=entry.name,
            )
        self._check_method(entry)
        self.data_offset(entry)  # the local header is checked before anything is allocated
        buf = bytearray(entry.size)
        self.readinto(entry, memoryview(buf), verify_crc=verify_crc)
        return bytes(buf)

    def readinto(
        self, entry: ZipEntry, out: memoryview, *, verify_crc: bool = True, readahead: bool = False
    ) -> None:
        """Fill ``out`` (exactly ``entry.size`` bytes long) with the record's bytes.

        ``readahead``: small records are served from a read-ahead window (see :meth:`data_offset`)."""
        self._check_method(entry)
        if len(out) != entry.size:
            raise self._corrupt(
                f"record holds {entry.size:,} bytes where {len(out):,} are needed", record=entry.name
            )
        start = self.data_offset(entry, readahead=readahead)
        if readahead and entry.method == STORED and entry.size <= _SMALL_READ:
            chunk = self._read_small(start, entry.size)
            out[: len(chunk)] = chunk
            if len(chunk) != entry.size:
                raise self._corrupt("record is truncated", record=entry.name)
        elif entry.method == STORED and verify_crc and self.has_crcs and entry.size >= _PIPELINE:
            self._read_checked(entry, start, out)
            return
        elif entry.method == STORED and verify_crc and self.has_crcs and self._checks is not None and (
            entry.size >= _ASYNC_CRC
        ):
            got = self.file.readinto(start, out)
            if got != entry.size:
                raise self._corrupt("record is truncated", record=entry.name)
            self._checks[1].append(self._checks[0].submit(self.check_crc, entry, out))
            return
        elif entry.method == STORED:
            got = self.file.readinto(start, out)
            if got != entry.size:
                raise self._corrupt("record is truncated", record=entry.name)
        else:
            self._inflate_into(entry, start, out)
        if verify_crc and self.has_crcs:
            self.check_crc(entry, out)

    def defer_crc_checks(self) -> None:
        """From now on, check the CRC-32 of records over 1 MiB on a second thread while the next
        records are read; :meth:`finish_crc_checks` waits for them and raises the first mismatch."""
        if self._checks is None:
            from concurrent.futures import ThreadPoolExecutor

            self._checks = (ThreadPoolExecutor(max_workers=1), [])

    def finish_crc_checks(self) -> None:
        """Wait for the deferred CRC checks; raise :class:`CorruptCheckpointError` on a mismatch."""
        if self._checks is None:
            return
        pool, pending = self._checks
        self._checks = None
        try:
            for job in pending:
                job.result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _read_checked(self, entry: ZipEntry, start: int, out: memoryview) -> None:
        """Read a big stored record and check its CRC-32 at once: a second thread checksums each
        piece while the next is read (both release the GIL), so the check costs little time."""
        from concurrent.futures import ThreadPoolExecutor

        crc = [0]

        def checksum(piece: memoryview) -> None:
            crc[0] = crc32(piece, crc[0])  # one worker: pieces are checksummed in order

        view = out.cast("B") if out.format != "B" else out
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = []
            for done in range(0, entry.size, _PIPELINE_PIECE):
                piece = view[done : done + _PIPELINE_PIECE]
                if self.file.readinto(start + done, piece) != len(piece):
                    raise self._corrupt("record is truncated", record=entry.name)
                pending.append(pool.submit(checksum, piece))
            for job in pending:
                job.result()
        if crc[0] != entry.crc:
            raise self._corrupt(
                f"CRC-32 mismatch (stored {entry.crc:08x}, computed {crc[0]:08x}): the record is damaged; "
                "torch would load it silently, ckpt does not",
                record=entry.name,
            )

    def read_small(self, name: str, *, verify_crc: bool = True) -> bytes | None:
        """The bytes of a small stored record, through the read-ahead window, or None when the
        record is not small and stored or anything about it needs a closer look: then
        :meth:`readinto` reads it (and reports any problem). Checks as :meth:`readinto` does."""
        raw = name.encode("utf-8", "surrogateescape")
        info = self._raw.get(raw)
        if info is None:
            return None
        method, _flags, crc, _csize, usize, offset, _index = info
        if method != STORED or usize > _SMALL_READ:
            return None
        head = self._read_small(offset, _LOCAL.size + len(raw))
        if head[:4] != SIG_LOCAL:
            return None
        local_method, nlen, xlen = _LOCAL_FIELDS(head)
        start = offset + _LOCAL.size + nlen + xlen
        if local_method != STORED or head[_LOCAL.size :] != raw or start + usize > self.file.size:
            return None
        data = self._read_small(start, usize)
        if len(data) != usize or (verify_crc and self.has_crcs and crc32(data) != crc):
            return None
        return data

    def _read_small(self, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset`` through a read-ahead window: checkpoints with many small
        tensors read their local headers and records in file order, one syscall per window."""
        start, window = self._window
        if start <= offset and offset + length <= start + len(window):
            return window[offset - start : offset - start + length]
        window = self.file.pread(offset, max(length, _WINDOW))
        self._window = (offset, window)
        return window[:length]

    def check_crc(self, entry: ZipEntry, data: memoryview | bytes) -> None:
        crc = 0
        view = memoryview(data).cast("B")
        for i in range(0, len(view), _CHUNK):
            crc = crc32(view[i : i + _CHUNK], crc)
        if crc != entry.crc:
            raise self._corrupt(
                f"CRC-32 mismatch (stored {entry.crc:08x}, computed {crc:08x}): the record is damaged; "
                "torch would load it silently, ckpt does not",
                record=entry.name,
            )

    def _inflate_into(self, entry: ZipEntry, start: int, out: memoryview) -> None:
        d = zlib.decompressobj(-15)
        produced = 0
        consumed = 0
        total_in = entry.compressed_size
        try:
            while consumed < total_in:
                chunk = self.file.pread(start + consumed, min(_CHUNK, total_in - consumed))
                if not chunk:
                    raise self._corrupt("compressed record is truncated", record=entry.name)
                consumed += len(chunk)
                while chunk:
                    room = entry.size - produced
                    piece = d.decompress(chunk, room + 1)
                    if len(piece) > room:
                        raise self._corrupt(
                            "compressed record inflates past its declared size (a zip bomb?)",
                            record=entry.name,
                        )
                    out[produced : produced + len(piece)] = piece
                    produced += len(piece)
                    chunk = d.unconsumed_tail
                    if d.eof:
                        break
                if d.eof:
                    break
        except zlib.error as e:
            raise self._corrupt(f"compressed record is damaged ({e})", record=entry.name) from None
        if produced != entry.size or not d.eof:
            raise self._corrupt(
                f"compressed record inflates to {produced:,} bytes, not the {entry.size:,} declared",
                record=entry.name,
            )

    def close(self) -> None:
        if self._checks is not None:
            self._checks[0].shutdown(wait=True, cancel_futures=True)
            self._checks = None
        self.file.close()
