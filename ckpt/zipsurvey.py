"""A tolerant survey of a zip archive: every record and every anomaly, reported instead of raised.

:class:`ckpt.zipread.ZipArchive` is strict: it refuses ambiguous or damaged archives, which is what
loading needs. A scanner needs the opposite: go on past the anomaly, look at *everything* any zip
reader might see, and say what is wrong. :func:`survey` reads the end records, the central directory
and every local header (never record data), and returns a :class:`ZipSurvey` whose ``anomalies``
name each problem: local and central headers that disagree, duplicate names, names that escape the
archive folder when extracted, encryption flags, unknown compression methods, bytes that belong to
no record (before the first record, between records, after the end record), overlapping records,
and counts that disagree with the directory. Record bytes are read later, by offset, with
:func:`read_record` (inflating at most ``max_size`` bytes).

>>> import io, zipfile
>>> buf = io.BytesIO()
>>> with zipfile.ZipFile(buf, "w") as z:
...     z.writestr("a/x", b"hello")
>>> s = survey(RangedFile.from_bytes(buf.getvalue()))
>>> [e.name for e in s.entries], s.anomalies
(['a/x'], [])
"""

from __future__ import annotations

import re
import struct
import zlib
from typing import Any

from .limits import DEFAULT_LIMITS, Limits
from .zipread import (
    _CENTRAL, _EOCD, _LOCAL, _ZIP64_EOCD, _ZIP64_LOCATOR, SIG_CENTRAL, SIG_EOCD, SIG_LOCAL,
    SIG_ZIP64_EOCD, SIG_ZIP64_LOCATOR, RangedFile,
)

STORED, DEFLATED, BZIP2, LZMA = 0, 8, 12, 14
METHODS = {STORED: "stored", DEFLATED: "deflate", BZIP2: "bzip2", LZMA: "lzma"}
SIG_DESCRIPTOR = b"PK\x07\x08"
_COALESCE_GAP = 4096
_COALESCE_MAX = 1 << 20
_DRIVE = re.compile(r"^[A-Za-z]:")
_SUSPICIOUS_NAME = re.compile(r"\.\.|[\\\x00]|^/|^.:", re.S)
suspicious = _SUSPICIOUS_NAME.search
_LOCAL_UNPACK = _LOCAL.unpack_from
_DESC16 = struct.Struct("<4xL2L").unpack_from
_DESC = {16: _DESC16, 24: struct.Struct("<4xL2Q").unpack_from,
         12: struct.Struct("<L2L").unpack_from, 20: struct.Struct("<L2Q").unpack_from}




class Record:
    """One central-directory entry, with what its local header says: ``data_offset`` is the first
    data byte (from the local header's own name and extra lengths) and ``end`` one past the
    record's last byte, data descriptor included (-1 while unknown)."""

    __slots__ = ("index", "name", "raw_name", "flags", "method", "crc", "compressed_size", "size",
                 "header_offset", "zip64", "data_offset", "end", "local_ok")

    def __init__(self, index: int, name: str, raw_name: bytes, flags: int, method: int, crc: int,
                 compressed_size: int, size: int, header_offset: int) -> None:
        self.index = index
        self.name = name
        self.raw_name = raw_name
        self.flags = flags
        self.method = method
        self.crc = crc
        self.compressed_size = compressed_size
        self.size = size
        self.header_offset = header_offset
        self.zip64 = False
        self.data_offset = -1
        self.end = -1
        self.local_ok = False

    @property
    def encrypted(self) -> bool:
        return bool(self.flags & 0x41)

    @property
    def is_dir(self) -> bool:
        return self.name.endswith("/")

    def __repr__(self) -> str:
        return f"<zip record {self.index} {self.name!r} {self.size} bytes>"


class ZipSurvey:
    """What :func:`survey` found: the records in central-directory order and every anomaly.

    ``anomalies`` are ``(code, record name or None, message)`` (codes: ``ckpt.scanner.RULES``,
    ``zip.*``); ``start`` is where the first record begins; ``complete`` is False when the
    directory could not be read whole (``error`` says why); ``coverage`` says whether every local
    header was read and the byte-coverage checks ran. Large regular archives are surveyed by numpy
    (``arrays`` then holds one column per field and ``names`` the record names); their
    :class:`Record` objects are made only when asked for (:meth:`record`, or :attr:`entries`)."""

    def __init__(self, eocd_offset: int = 0) -> None:
        self._entries: list[Record] | None = []
        self.anomalies: list[tuple[str, str | None, str]] = []
        self.eocd_offset = eocd_offset
        self.cd_offset = 0
        self.cd_size = 0
        self.zip64 = False
        self.comment = b""
        self.declared_count = 0
        self.start = 0
        self.complete = True
        self.coverage = False
        self.error: str | None = None
        self.arrays: dict[str, Any] | None = None
        self.names: list[str] = []
        self._made: dict[int, Record] = {}

    def note(self, code: str, record: str | None, message: str) -> None:
        self.anomalies.append((code, record, message))

    def __len__(self) -> int:
        return len(self.names) if self.arrays is not None else len(self._entries or [])

    def record(self, i: int) -> Record:
        """The ``i``-th record of the central directory (made on first use for numpy surveys)."""
        if self.arrays is None:
            return self._entries[i]  # type: ignore[index]
        rec = self._made.get(i)
        if rec is None:
            a = self.arrays
            name = self.names[i]
            rec = Record(i, name, name.encode("ascii"), int(a["flags"][i]), int(a["method"][i]), int(a["crc"][i]),
                         int(a["csize"][i]), int(a["usize"][i]), int(a["hoff"][i]))
            rec.data_offset = int(a["data"][i])
            rec.end = int(a["end"][i])
            rec.local_ok = bool(a["ok"][i])
            self._made[i] = rec
        return rec

    def sync(self, rec: Record) -> None:
        """Write back what a one-by-one header check learned about a numpy-surveyed record."""
        if self.arrays is not None:
            a = self.arrays
            a["data"][rec.index] = rec.data_offset
            a["end"][rec.index] = rec.end
            a["ok"][rec.index] = rec.local_ok

    @property
    def entries(self) -> list[Record]:
        """Every record, in central-directory order."""
        if self.arrays is not None:
            return [self.record(i) for i in range(len(self.names))]
        if self._entries is None:
            self._entries = []
        return self._entries

    @property
    def has_crcs(self) -> bool:
        if self.arrays is not None:
            a = self.arrays
            return bool(((a["crc"] != 0) & (a["usize"] != 0)).any())
        return any(e.crc for e in self.entries if e.size)


def find_end(file: RangedFile) -> tuple[int, bytes] | None:
    """``(offset, tail)`` of the last end-of-central-directory record whose comment length fits, or
    None when the file has none (it is not a zip archive)."""
    size = file.size
    tail_len = min(size, _EOCD.size + 0xFFFF)
    tail_start = size - tail_len
    tail = file.pread(tail_start, tail_len)
    pos = tail.rfind(SIG_EOCD)
    best = None
    while pos >= 0:
        if pos + _EOCD.size <= len(tail):
            comment_len = _EOCD.unpack_from(tail, pos)[7]
            if pos + _EOCD.size + comment_len <= len(tail):
                best = pos
                if pos + _EOCD.size + comment_len == len(tail):
                    break
        pos = tail.rfind(SIG_EOCD, 0, pos)
    if best is None:
        return None
    return tail_start + best, tail[best:]


def survey(file: RangedFile, *, limits: Limits = DEFAULT_LIMITS, headers: bool = True) -> ZipSurvey | None:
    """Survey the archive in ``file``; None when it has no end record (not a zip archive).

    ``headers=False`` reads the end records and the central directory only; call
    :func:`read_headers` later for the records whose local headers are wanted (the byte-coverage
    checks then do not run)."""
    found = find_end(file)
    if found is None:
        return None
    eocd_at, tail = found
    s = ZipSurvey(eocd_offset=eocd_at)
    _, disk, cd_disk, n_here, n_total, cd_size, cd_offset, comment_len = _EOCD.unpack_from(tail, 0)
    s.comment = tail[_EOCD.size : _EOCD.size + comment_len]
    after = file.size - (eocd_at + _EOCD.size + comment_len)
    if after:
        s.note("zip.outside-data", None, f"{after:,} bytes follow the zip end record (data outside any record; a polyglot or appended payload?)")
    if s.comment:
        s.note("zip.comment", None, f"the archive carries a {len(s.comment):,}-byte comment (torch never writes one; bytes outside any record)")
    if disk or cd_disk or n_here != n_total:
        s.note("zip.multi-disk", None, "the end record describes a multi-disk (spanned) archive")
    cd_end = eocd_at
    if eocd_at >= _ZIP64_LOCATOR.size:
        loc = file.pread(eocd_at - _ZIP64_LOCATOR.size, _ZIP64_LOCATOR.size)
        if loc[:4] == SIG_ZIP64_LOCATOR:
            _, _, z64_at, _ = _ZIP64_LOCATOR.unpack(loc)
            rec = file.pread(z64_at, _ZIP64_EOCD.size) if z64_at + _ZIP64_EOCD.size <= eocd_at else b""
            if rec[:4] != SIG_ZIP64_EOCD:
                s.note("zip.bad-end-record", None, "the zip64 locator does not point to a zip64 end record")
            else:
                fields = _ZIP64_EOCD.unpack(rec)
                n_total, cd_size, cd_offset = fields[7], fields[8], fields[9]
                s.zip64 = True
                cd_end = z64_at
                if z64_at + _ZIP64_EOCD.size + fields[1] - 44 != eocd_at - _ZIP64_LOCATOR.size:
                    s.note("zip.outside-data", None, "bytes between the zip64 end record and its locator")
    s.declared_count = n_total
    s.cd_offset, s.cd_size = cd_offset, cd_size
    if n_total > limits.max_records:
        s.complete = False
        s.error = f"the archive declares {n_total:,} records (limit {limits.max_records:,})"
        return s
    if cd_size > limits.max_central_directory_bytes:
        s.complete = False
        s.error = f"central directory of {cd_size:,} bytes exceeds the limit"
        return s
    if cd_offset + cd_size > cd_end:
        s.complete = False
        s.error = "the central directory runs past its end record (truncated or damaged archive)"
        return s
    shift = 0
    if cd_offset + cd_size < cd_end:
        gap = cd_end - cd_offset - cd_size
        if (n_total and file.pread(cd_offset, 4) != SIG_CENTRAL and file.pread(cd_offset + gap, 4) == SIG_CENTRAL):
            # offsets relative to the archive's own start: it was appended to other data (Python's
            # zipfile reads such archives; so does the scanner)
            shift = gap
            cd_offset += gap
            s.cd_offset = cd_offset
            s.note("zip.outside-data", None,
                   f"the archive starts {gap:,} bytes into the file: it was appended to other data")
        else:
            s.note("zip.outside-data", None, f"{gap:,} bytes between the central directory and its end record")
    cd = file.pread(cd_offset, cd_size)
    if n_total >= _NUMPY_FROM and _fast_central(s, cd, n_total, shift):
        if headers:
            _fast_local(s, file)
            _fast_coverage(s)
            s.coverage = True
        return s
    _parse_central(s, cd, n_total, cd_offset)
    if shift:
        for e in s.entries:
            e.header_offset += shift
    if headers:
        _read_local_headers(s, file, s.entries)
        _coverage(s, file)
        s.coverage = True
    return s


def read_headers(s: ZipSurvey, file: RangedFile, records: list[Record]) -> None:
    """Read and check the local headers (and data descriptors) of ``records`` only, one small read
    each, never touching record data."""
    for rec in records:
        if rec.data_offset >= 0:
            continue
        want = _LOCAL.size + len(rec.raw_name)
        head = file.pread(rec.header_offset, want)
        _check_local(s, rec, head, rec.header_offset, file)


def _decode_name(raw: bytes, flags: int) -> str:
    return raw.decode("utf-8" if flags & 0x800 else "cp437", errors="surrogateescape")


def _parse_central(s: ZipSurvey, cd: bytes, count: int, cd_offset: int) -> None:
    unpack = _CENTRAL.unpack_from
    hsize = _CENTRAL.size
    pos = 0
    seen: set[bytes] = set()
    entries = s.entries
    end = len(cd)
    for index in range(count):
        if pos + hsize > end or cd[pos : pos + 4] != SIG_CENTRAL:
            s.note("zip.count-mismatch", None, f"the end record declares {count:,} records but the directory holds {index:,}")
            s.complete = False
            s.error = f"the central directory is damaged after {index:,} of {count:,} records"
            return
        (_sig, _made, _need, flags, method, _time, _date, crc, csize, usize,
         nlen, xlen, clen, _disk, _iattr, _eattr, offset) = unpack(cd, pos)
        name_end = pos + hsize + nlen
        if name_end + xlen + clen > end:
            s.complete = False
            s.error = f"central directory record {index} runs past the directory"
            return
        raw = cd[pos + hsize : name_end]
        name = raw.decode("utf-8" if flags & 0x800 else "cp437", errors="surrogateescape")
        rec = Record(index, name, raw, flags, method, crc, csize, usize, offset)
        entries.append(rec)
        pos = name_end + xlen + clen
        if csize == 0xFFFFFFFF or usize == 0xFFFFFFFF or offset == 0xFFFFFFFF:
            if not _zip64_extra(rec, cd[name_end : name_end + xlen]):
                s.note("zip.header-mismatch", name, "sizes are marked zip64 but the record has no zip64 extra field")
        if suspicious(name) is not None:
            _check_name(s, rec)
        if flags & 0x41 or method or raw in seen:
            _check_record(s, rec, raw in seen)
        seen.add(raw)
    if pos != end:
        s.note("zip.outside-data", None, f"the central directory holds {end - pos:,} bytes more than its {count:,} records")


def _check_record(s: ZipSurvey, rec: Record, duplicate: bool) -> None:
    name = rec.name
    if rec.encrypted:
        s.note("zip.encrypted", name, "the record is encrypted (torch never encrypts; its contents cannot be checked)")
    if rec.method not in METHODS:
        s.note("zip.unsupported-method", name, f"compression method {rec.method} (not stored, deflate, bzip2 or lzma)")
    elif rec.method == STORED and rec.compressed_size != rec.size:
        s.note("zip.header-mismatch", name, f"a stored record with compressed size {rec.compressed_size:,} but size {rec.size:,}")
    if duplicate:
        s.note("zip.duplicate-name", name,
               "two records share this name: zip readers disagree on which one counts (both were scanned)")


def _zip64_extra(rec: Record, extra: bytes) -> bool:
    p = 0
    while p + 4 <= len(extra):
        tag, ln = struct.unpack_from("<2H", extra, p)
        body = extra[p + 4 : p + 4 + ln]
        if tag == 1:
            q = 0
            try:
                if rec.size == 0xFFFFFFFF:
                    (rec.size,) = struct.unpack_from("<Q", body, q)
                    q += 8
                if rec.compressed_size == 0xFFFFFFFF:
                    (rec.compressed_size,) = struct.unpack_from("<Q", body, q)
                    q += 8
                if rec.header_offset == 0xFFFFFFFF:
                    (rec.header_offset,) = struct.unpack_from("<Q", body, q)
            except struct.error:
                return False
            rec.zip64 = True
            return True
        p += 4 + ln
    return False


def unsafe_name(name: str) -> str | None:
    """Why extracting a record called ``name`` would write outside the target folder, or None."""
    if ".." not in name and "\\" not in name and "\0" not in name and name[:1] != "/" and name[1:2] != ":":
        return None
    if "\0" in name:
        return "contains a NUL byte"
    if name.startswith(("/", "\\")) or _DRIVE.match(name):
        return "is an absolute path"
    parts = re.split(r"[\\/]", name)
    if ".." in parts:
        return "climbs out of the archive folder with '..'"
    if "\\" in name:
        return "uses backslashes (Windows tools read them as folders)"
    return None


def _check_name(s: ZipSurvey, rec: Record) -> None:
    why = unsafe_name(rec.name)
    if why:
        s.note("zip.unsafe-name", rec.name, f"the record name {why}: extracting the archive writes outside its folder")


def _read_local_headers(s: ZipSurvey, file: RangedFile, entries: list[Record]) -> None:
    """Read every local header and data descriptor (neighbouring small records in one read) and
    compare them with the central directory. Record data is read only where it lies between
    headers that are close together (small records), never for large records."""
    order = sorted(entries, key=lambda e: e.header_offset)

    # where each record ends at most, assuming a local extra field of under 128 bytes (torch pads
    # with up to 64); a large record's data is not covered (its descriptor is read on its own)
    reach = [
        e.header_offset + 158 + len(e.raw_name) + (e.compressed_size + 24 if e.compressed_size < _COALESCE_GAP else 0)
        for e in order
    ]
    i = 0
    while i < len(order):
        start = order[i].header_offset
        stop = reach[i]
        j = i
        while j + 1 < len(order) and order[j + 1].header_offset - stop < _COALESCE_GAP and reach[j + 1] - start < _COALESCE_MAX:
            j += 1
            if reach[j] > stop:
                stop = reach[j]
        block = file.pread(start, stop - start)
        size = len(block)
        for rec in order[i : j + 1]:
            # the usual record (torch's): a matching header with a data descriptor inside the block
            at = rec.header_offset - start
            if block[at : at + 4] == SIG_LOCAL and at + 30 <= size:
                _, _need, flags, method, _t, _d, _crc, _cs, _us, nlen, xlen = _LOCAL_UNPACK(block, at)
                if (
                    flags & 0x8 and flags == rec.flags and method == rec.method and not rec.zip64
                    and block[at + 30 : at + 30 + nlen] == rec.raw_name
                ):
                    data = rec.header_offset + 30 + nlen + xlen
                    rel = data + rec.compressed_size - start
                    if rel + 16 <= size and block[rel : rel + 4] == SIG_DESCRIPTOR and _DESC16(block, rel) == (rec.crc, rec.compressed_size, rec.size):
                        rec.data_offset = data
                        rec.end = data + rec.compressed_size + 16
                        rec.local_ok = True
                        continue
            _check_local(s, rec, block, start, file)
        i = j + 1


def _check_local(s: ZipSurvey, rec: Record, block: bytes, block_start: int, file: RangedFile) -> None:
    at = rec.header_offset - block_start
    if block[at : at + 4] != SIG_LOCAL or len(block) < at + _LOCAL.size:
        s.note("zip.header-mismatch", rec.name, "the local header is missing or damaged")
        return
    _, _need, flags, method, _t, _d, crc, csize, usize, nlen, xlen = _LOCAL_UNPACK(block, at)
    raw = block[at + 30 : at + 30 + nlen]
    if len(raw) != nlen:
        raw = file.pread(rec.header_offset + 30, nlen)
    ok = (
        raw == rec.raw_name and method == rec.method and not (flags ^ rec.flags) & 0x49
        and (flags & 0x8 or (crc == rec.crc and (usize == 0xFFFFFFFF or csize == 0xFFFFFFFF
                                                 or (csize == rec.compressed_size and usize == rec.size))))
    )
    if not ok:
        problems = []
        if raw != rec.raw_name:
            problems.append(f"name {raw.decode('utf-8', 'replace')!r}")
        if method != rec.method:
            problems.append(f"compression method {method}")
        if (flags ^ rec.flags) & 0x49:
            problems.append(f"flags 0x{flags:04x} (directory: 0x{rec.flags:04x})")
        if not flags & 0x8:
            if crc != rec.crc:
                problems.append(f"CRC {crc:08x}")
            if (csize, usize) != (rec.compressed_size, rec.size):
                problems.append(f"sizes {csize:,}/{usize:,}")
        s.note("zip.header-mismatch", rec.name,
               "the local header disagrees with the central directory: " + ", ".join(problems))
    rec.data_offset = start = rec.header_offset + 30 + nlen + xlen
    end = start + rec.compressed_size
    if end > file.size:
        s.note("zip.truncated", rec.name, f"the record needs bytes up to {end:,} but the file ends at {file.size:,}")
        rec.end = file.size
        return
    if flags & 0x8:
        wide = rec.zip64 or usize == 0xFFFFFFFF
        want = 24 if wide else 16
        rel = end - block_start
        desc = block[rel : rel + want] if rel + want <= len(block) else file.pread(end, want)
        if desc[:4] != SIG_DESCRIPTOR:
            want -= 4
            desc = desc[: want]
        if len(desc) < want:
            s.note("zip.truncated", rec.name, "the data descriptor is cut off by the end of the file")
            rec.end = file.size
            return
        if _DESC[want](desc) != (rec.crc, rec.compressed_size, rec.size):
            s.note("zip.header-mismatch", rec.name, "the data descriptor disagrees with the central directory (CRC or sizes)")
        end += want
    rec.end = end
    rec.local_ok = bool(ok)


def _coverage(s: ZipSurvey, file: RangedFile) -> None:
    """Bytes that belong to no record, and records that overlap."""
    spans = sorted((e.header_offset, e.end, e.name) for e in s.entries if e.end >= 0)
    s.start = spans[0][0] if spans else s.cd_offset
    if s.start > 0:
        s.note("zip.outside-data", None, f"{s.start:,} bytes come before the first record (data outside any record; a polyglot?)")
    reach = s.start
    last_name = None
    for begin, end, name in spans:
        if begin < reach:
            s.note("zip.overlap", name, f"the record overlaps {last_name!r} (records sharing bytes: a zip bomb or an ambiguous archive)")
        elif begin > reach:
            s.note("zip.outside-data", name, f"{begin - reach:,} bytes before this record belong to no record")
        if end > reach:
            reach = end
            last_name = name
    if spans and reach < s.cd_offset:
        s.note("zip.outside-data", None, f"{s.cd_offset - reach:,} bytes between the last record and the central directory")
    elif spans and reach > s.cd_offset:
        s.note("zip.overlap", None, "records run into the central directory")


def outside_ranges(s: ZipSurvey, file_size: int) -> list[tuple[int, int]]:
    """Byte ranges of the file that belong to no record and no directory structure."""
    if s.arrays is not None:
        import numpy as np

        a = s.arrays
        keep = np.flatnonzero(a["end"] >= 0)
        order = keep[np.argsort(a["hoff"][keep], kind="stable")]
        H, E = a["hoff"][order], a["end"][order]
        top = np.maximum.accumulate(E) if len(E) else E
        out = []
        if len(H) and H[0] > 0:
            out.append((0, int(H[0])))
        for k in np.flatnonzero(H[1:] > top[:-1]).tolist():
            out.append((int(top[k]), int(H[k + 1])))
        reach = int(top[-1]) if len(top) else 0
        if s.cd_offset > reach:
            out.append((reach, s.cd_offset))
        tail_end = s.eocd_offset + _EOCD.size + len(s.comment)
        if file_size > tail_end:
            out.append((tail_end, file_size))
        return out
    else:
        spans = sorted((e.header_offset, e.end) for e in s.entries if e.end >= 0)
    out = []
    reach = 0
    for begin, end in spans:
        if begin > reach:
            out.append((reach, begin))
        reach = max(reach, end)
    if s.cd_offset > reach:
        out.append((reach, s.cd_offset))
    tail_end = s.eocd_offset + _EOCD.size + len(s.comment)
    if file_size > tail_end:
        out.append((tail_end, file_size))
    return out


class RecordError(Exception):
    """A record cannot be read (encrypted, unknown method, damaged compressed data, too large)."""


def read_record(file: RangedFile, rec: Record, *, max_size: int, limit_prefix: int | None = None) -> bytes:
    """The record's bytes, decompressed. ``limit_prefix`` reads only the first bytes (a peek)."""
    if rec.encrypted:
        raise RecordError("the record is encrypted")
    if rec.data_offset < 0:
        raise RecordError("the record's local header is unreadable")
    want = rec.size if limit_prefix is None else min(rec.size, limit_prefix)
    if want > max_size:
        raise RecordError(f"the record declares {rec.size:,} bytes, more than the {max_size:,} a scan reads")
    if rec.method == STORED:
        data = file.pread(rec.data_offset, want)
        if len(data) != want:
            raise RecordError("the record is truncated")
        return data
    if rec.method not in METHODS:
        raise RecordError(f"compression method {rec.method} is not supported")
    out = bytearray()
    consumed = 0
    try:
        if rec.method == DEFLATED:
            d = zlib.decompressobj(-15)
            while consumed < rec.compressed_size and len(out) <= want and not d.eof:
                buf = file.pread(rec.data_offset + consumed, min(1 << 20, rec.compressed_size - consumed))
                if not buf:
                    raise RecordError("the compressed record is truncated")
                consumed += len(buf)
                while buf and len(out) <= want and not d.eof:
                    out += d.decompress(buf, want - len(out) + 1)
                    buf = d.unconsumed_tail
        else:
            import bz2

            dec: Any = bz2.BZ2Decompressor() if rec.method == BZIP2 else _ZipLzma()
            while consumed < rec.compressed_size and len(out) <= want and not dec.eof:
                buf = file.pread(rec.data_offset + consumed, min(1 << 20, rec.compressed_size - consumed))
                if not buf:
                    raise RecordError("the compressed record is truncated")
                consumed += len(buf)
                out += dec.decompress(buf, want - len(out) + 1)
                while not dec.needs_input and not dec.eof and len(out) <= want:
                    out += dec.decompress(b"", want - len(out) + 1)
    except (zlib.error, OSError, EOFError, ValueError) as e:  # lzma.LZMAError is an Exception: see below
        raise RecordError(f"the compressed record is damaged ({e})") from None
    except Exception as e:  # LZMAError, without importing lzma up front
        if type(e).__name__ != "LZMAError":
            raise
        raise RecordError(f"the compressed record is damaged ({e})") from None
    if limit_prefix is None:
        if len(out) > want:
            raise RecordError("the record inflates past its declared size (a zip bomb?)")
        if len(out) != want:
            raise RecordError(f"the record inflates to {len(out):,} bytes, not the {want:,} declared")
    return bytes(out[:want])


class _ZipLzma:
    """LZMA as zip stores it: a 4-byte header (version, properties size) then raw LZMA1 data."""

    def __init__(self) -> None:
        self._d: Any = None
        self._head = b""

    @property
    def eof(self) -> bool:
        return self._d is not None and self._d.eof

    @property
    def needs_input(self) -> bool:
        return self._d is None or self._d.needs_input

    def decompress(self, data: bytes, max_length: int = -1) -> bytes:
        if self._d is None:
            self._head += data
            if len(self._head) < 4:
                return b""
            (psize,) = struct.unpack_from("<H", self._head, 2)
            if len(self._head) < 4 + psize:
                return b""
            import lzma

            props = lzma._decode_filter_properties(lzma.FILTER_LZMA1, self._head[4 : 4 + psize])  # type: ignore[attr-defined]
            self._d = lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=[props])
            data = self._head[4 + psize :]
        return self._d.decompress(data, max_length)


# -- the numpy survey of large regular archives ---------------------------------------------------

_NUMPY_FROM = 256
"""Archives with at least this many records are surveyed by numpy (one pass per field, not one
Python step per record); anything the vectorised checks cannot prove falls back to the one-by-one
code, record by record or for the whole archive."""


def _u16(a: Any, q: Any) -> Any:
    import numpy as np

    return a[q].astype(np.int64) | (a[q + 1].astype(np.int64) << 8)


def _u32(a: Any, q: Any) -> Any:
    return _u16(a, q) | (_u16(a, q + 2) << 16)


def _flat_index(starts: Any, lens: Any) -> Any:
    """Indices of the bytes ``[starts[i], starts[i] + lens[i])`` for every ``i``, concatenated."""
    import numpy as np

    total = int(lens.sum())
    before = np.cumsum(lens) - lens
    return np.repeat(starts - before, lens) + np.arange(total, dtype=np.int64)


def _fast_central(s: ZipSurvey, cd: bytes, count: int, shift: int) -> bool:
    """The central directory by numpy; False (nothing recorded) when it is not a plain chain of
    ``count`` records with ASCII names and no zip64 fields (the Python path then reads it)."""
    import numpy as np

    a = np.frombuffer(cd, dtype=np.uint8)
    size = len(a)
    if size < 46 * count:
        return False
    m = size - 45
    P = np.flatnonzero((a[:m] == 0x50) & (a[1 : m + 1] == 0x4B) & (a[2 : m + 2] == 1) & (a[3 : m + 3] == 2))
    if len(P) != count or P[0] != 0:
        return False  # a name or extra field holding the signature, or a damaged chain
    n, x, c = _u16(a, P + 28), _u16(a, P + 30), _u16(a, P + 32)
    nxt = P + 46 + n + x + c
    if nxt[-1] != size or not np.array_equal(nxt[:-1], P[1:]):
        return False
    cols = {
        "flags": _u16(a, P + 8), "method": _u16(a, P + 10), "crc": _u32(a, P + 16),
        "csize": _u32(a, P + 20), "usize": _u32(a, P + 24), "hoff": _u32(a, P + 42), "n": n,
    }
    if ((cols["csize"] == 0xFFFFFFFF) | (cols["usize"] == 0xFFFFFFFF) | (cols["hoff"] == 0xFFFFFFFF)).any():
        return False  # zip64 fields: read one by one
    flat = a[_flat_index(P + 46, n)].tobytes()
    if not flat.isascii():
        return False  # non-ASCII names: decoded one by one (UTF-8 or cp437 by their flag)
    text = flat.decode("ascii")
    ends = np.cumsum(n).tolist()
    names = [text[i:j] for i, j in zip([0, *ends[:-1]], ends)]
    cols["hoff"] = cols["hoff"] + shift
    cols["data"] = np.full(count, -1, dtype=np.int64)
    cols["end"] = np.full(count, -1, dtype=np.int64)
    cols["ok"] = np.zeros(count, dtype=bool)
    cols["cpos"] = P
    s.arrays = cols
    s.names = names
    s._cd = a  # type: ignore[attr-defined]
    # the checks _parse_central makes record by record, on the few records they concern
    joined = "\n" + "\n".join(names)
    if ".." in joined or "\\" in joined or "\0" in joined or "\n/" in joined or re.search(r"\n[^\n]:", joined):
        for i, name in enumerate(names):
            if suspicious(name) is not None:
                _check_name(s, s.record(i))
    if len(set(names)) != count:
        seen: set[str] = set()
        for i, name in enumerate(names):
            if name in seen:
                _check_record(s, s.record(i), True)
            seen.add(name)
    odd = ((cols["flags"] & 0x41) != 0) | (cols["method"] != 0) | (cols["csize"] != cols["usize"])
    for i in np.flatnonzero(odd).tolist():
        _check_record(s, s.record(i), False)
    return True


def _fast_local(s: ZipSurvey, file: RangedFile) -> None:
    """Every local header and data descriptor, checked against the directory by numpy, reading
    neighbouring small records in one go (as :func:`_read_local_headers` does); the records the
    vectorised check cannot settle are checked one by one."""
    import numpy as np

    A = s.arrays
    assert A is not None
    cd = s._cd  # type: ignore[attr-defined]
    count = len(s.names)
    order = np.argsort(A["hoff"], kind="stable")
    H = A["hoff"][order]
    nn = A["n"][order]
    cs = A["csize"][order]
    reach = H + 158 + nn + np.where(cs < _COALESCE_GAP, cs + 24, 0)
    top = np.maximum.accumulate(reach)
    breaks = np.flatnonzero(H[1:] - top[:-1] >= _COALESCE_GAP) + 1
    groups = [0, *breaks.tolist(), count]
    todo: list[int] = []
    for g0, g1 in zip(groups[:-1], groups[1:]):
        pos = g0
        while pos < g1:
            start = int(H[pos])
            j = int(np.searchsorted(H, start + _COALESCE_MAX // 2, side="left"))
            j = min(max(j, pos + 1), g1)
            stop = int(reach[pos:j].max())
            block = np.frombuffer(file.pread(start, stop - start), dtype=np.uint8)
            _fast_block(s, A, cd, order[pos:j], H[pos:j] - start, block, start, file.size, todo)
            pos = j
    for i, rec in s._made.items():  # records made before their headers were read: refresh them
        rec.data_offset, rec.end, rec.local_ok = int(A["data"][i]), int(A["end"][i]), bool(A["ok"][i])
    for i in todo:  # settled one by one: the exact messages, and write-back into the columns
        rec = s.record(i)
        head = file.pread(rec.header_offset, _LOCAL.size + len(rec.raw_name))
        _check_local(s, rec, head, rec.header_offset, file)
        s.sync(rec)


def _fast_block(
    s: ZipSurvey, A: dict[str, Any], cd: Any, idx: Any, rel: Any, b: Any, base: int, file_size: int, todo: list[int],
) -> None:
    import numpy as np

    fits = rel + 30 <= len(b)
    for i in idx[~fits].tolist():
        todo.append(i)
    idx, rel = idx[fits], rel[fits]
    if not len(idx):
        return
    sig = (b[rel] == 0x50) & (b[rel + 1] == 0x4B) & (b[rel + 2] == 3) & (b[rel + 3] == 4)
    lflags, lmethod = _u16(b, rel + 6), _u16(b, rel + 8)
    lcrc, lcs, lus = _u32(b, rel + 14), _u32(b, rel + 18), _u32(b, rel + 22)
    ln, lx = _u16(b, rel + 26), _u16(b, rel + 28)
    flags, n, crc, csize, usize = A["flags"][idx], A["n"][idx], A["crc"][idx], A["csize"][idx], A["usize"][idx]
    ok = sig & (lmethod == A["method"][idx]) & (((lflags ^ flags) & 0x49) == 0) & (ln == n) & (rel + 30 + n <= len(b))
    described = (lflags & 0x8) != 0
    ok &= described | ((lcrc == crc) & (((lcs == csize) & (lus == usize)) | (lcs == 0xFFFFFFFF) | (lus == 0xFFFFFFFF)))
    # names: the local copy byte for byte against the central one
    cand = np.flatnonzero(ok & (n > 0))  # (empty names are equal already: ln == n == 0)
    if len(cand):
        lens = n[cand]
        eq = b[_flat_index(rel[cand] + 30, lens)] == cd[_flat_index(A["cpos"][idx[cand]] + 46, lens)]
        bad = np.add.reduceat((~eq).astype(np.int64), np.cumsum(lens) - lens)
        ok[cand[bad != 0]] = False
    data = base + rel + 30 + ln + lx
    end = data + csize
    ok &= end <= file_size
    # data descriptors (torch writes them): signature, CRC and sizes after the data
    drel = end - base
    inside = described & (drel + 16 <= len(b)) & ok
    di = np.flatnonzero(inside)
    if len(di):
        q = drel[di]
        dsig = (b[q] == 0x50) & (b[q + 1] == 0x4B) & (b[q + 2] == 7) & (b[q + 3] == 8)
        good = dsig & (_u32(b, q + 4) == crc[di]) & (_u32(b, q + 8) == csize[di]) & (_u32(b, q + 12) == usize[di])
        ok[di[~good]] = False
        end[di] += 16
    ok &= ~described | inside  # a descriptor outside the block: checked one by one
    A["data"][idx[ok]] = data[ok]
    A["end"][idx[ok]] = end[ok]
    A["ok"][idx[ok]] = True
    todo.extend(idx[~ok].tolist())


def _fast_coverage(s: ZipSurvey) -> None:
    """:func:`_coverage` on the columns: bytes before, between and after the records, overlaps."""
    import numpy as np

    A = s.arrays
    assert A is not None
    keep = np.flatnonzero(A["end"] >= 0)
    if not len(keep):
        s.start = s.cd_offset
        return
    order = keep[np.argsort(A["hoff"][keep], kind="stable")]
    H, E = A["hoff"][order], A["end"][order]
    s.start = int(H[0])
    if s.start > 0:
        s.note("zip.outside-data", None, f"{s.start:,} bytes come before the first record (data outside any record; a polyglot?)")
    top = np.maximum.accumulate(E)
    for k in np.flatnonzero(H[1:] < top[:-1]).tolist():
        s.note("zip.overlap", s.names[order[k + 1]], "the record overlaps another one (records sharing bytes: a zip bomb or an ambiguous archive)")
    for k in np.flatnonzero(H[1:] > top[:-1]).tolist():
        s.note("zip.outside-data", s.names[order[k + 1]], f"{int(H[k + 1] - top[k]):,} bytes before this record belong to no record")
    reach = int(top[-1])
    if reach < s.cd_offset:
        s.note("zip.outside-data", None, f"{s.cd_offset - reach:,} bytes between the last record and the central directory")
    elif reach > s.cd_offset:
        s.note("zip.overlap", None, "records run into the central directory")
