"""The zip layer of ``ckpt.save``: byte for byte what torch's C++ writer (PyTorchStreamWriter over
miniz) writes, checked against ``torch._C.PyTorchFileWriter`` itself; plus what needs no torch
(the archive reads back with Python's zipfile and with ckpt's reader, CRCs included)."""

from __future__ import annotations

import ctypes
import ctypes.util
import io
import os
import random
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ckpt.zipread import RangedFile, ZipArchive
from ckpt.zipwrite import (
    TorchZipWriter,
    ZipSink,
    archive_name_for,
    hash_combine,
    serialization_id,
    string_hash,
    unordered_set_order,
)

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                           HealthCheck.function_scoped_fixture])

Records = list[tuple[str, bytes]]


def ckpt_archive(path: Path, records: Records, *, archive: str | None = None) -> bytes:
    """The records written by ckpt's writer to ``path`` (archive named as torch names it)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        w = TorchZipWriter(ZipSink.for_fd(fd), archive or archive_name_for(str(path)))
        for name, data in records:
            w.write_record(name, data)
        w.finish()
    finally:
        os.close(fd)
    return path.read_bytes()


def torch_archive(path: Path, records: Records) -> bytes:
    """The same records written by torch's own C++ writer."""
    torch = pytest.importorskip("torch")
    w = torch._C.PyTorchFileWriter(str(path), True, 64)
    for name, data in records:
        w.write_record(name, data, len(data))
    w.write_end_of_file()
    del w
    return path.read_bytes()


# -- no torch needed ------------------------------------------------------------------------------


def test_archive_reads_back_with_zipfile_and_ckpt(tmp_path: Path) -> None:
    records = [("data.pkl", b"\x80\x02N."), ("data/0", bytes(range(200))), ("data/1", b""), ("x/y", b"z" * 70)]
    raw = ckpt_archive(tmp_path / "m.pt", records)
    z = zipfile.ZipFile(io.BytesIO(raw))
    assert z.testzip() is None  # every CRC-32 right
    names = [i.filename for i in z.infolist()]
    assert names == ["m/data.pkl", "m/data/0", "m/data/1", "m/x/y", "m/version", "m/byteorder",
                     "m/.data/serialization_id"]
    assert z.read("m/version") == b"3\n" and z.read("m/byteorder") in (b"little", b"big")
    assert z.read("m/.data/serialization_id").isdigit() and len(z.read("m/.data/serialization_id")) == 40
    arc = ZipArchive(RangedFile.from_bytes(raw), name="m.pt")
    assert arc.zip64  # torch's writer always ends with the zip64 records
    for name, data in records:
        entry = arc.entry("m/" + name)
        assert arc.read(entry) == data
        assert arc.data_offset(entry) % 64 == 0  # torch's alignment, for mmap


def test_local_headers_have_torchs_fields(tmp_path: Path) -> None:
    raw = ckpt_archive(tmp_path / "t.pt", [("data.pkl", b"abc"), ("data/0", b"")])
    sig, need, flags, method, time_, date, crc, csize, usize, nlen, xlen = struct.unpack_from("<4s5H3L2H", raw, 0)
    assert (sig, need, flags, method, time_, date, crc, csize, usize) == (b"PK\x03\x04", 0, 0x808, 0, 0, 0, 0, 0, 0)
    name = raw[30 : 30 + nlen]
    extra = raw[30 + nlen : 30 + nlen + xlen]
    assert name == b"t/data.pkl" and extra[:2] == b"FB" and set(extra[4:]) == {ord("Z")}
    assert (30 + nlen + xlen) % 64 == 0
    assert raw[64:67] == b"abc" and raw[67:71] == b"PK\x07\x08"
    assert struct.unpack_from("<3L", raw, 71) == (zlib.crc32(b"abc"), 3, 3)
    # an empty record: no descriptor, no descriptor flag
    z = zipfile.ZipFile(io.BytesIO(raw))
    assert z.getinfo("t/data/0").flag_bits == 0x800


@pytest.mark.parametrize("path,name", [
    ("t.pt", "t"), ("runs/my.model.pt", "my.model"), ("a b-c.tar.gz", "a b-c.tar"), ("noext", "noext"),
    ("dir.d/x", "x"), ("C:\\w\\m.pth", "m"), ("ünï.pt", "archive"), ("dïr/m.pt", "archive"),
])
def test_archive_names(path: str, name: str) -> None:
    assert archive_name_for(path) == name


def test_empty_archive_name_is_refused_like_torch() -> None:
    with pytest.raises(ValueError, match="invalid file name"):
        archive_name_for("runs/.pt")


def test_string_hash_is_libstdcxx_hash_bytes() -> None:
    """``std::hash<std::string>`` is ``std::_Hash_bytes(p, n, 0xc70f6907)``: compare with the library."""
    name = ctypes.util.find_library("stdc++")
    if name is None:
        pytest.skip("no libstdc++ to compare with")
    lib = ctypes.CDLL(name)
    fn = getattr(lib, "_ZSt11_Hash_bytesPKvmm", None)
    if fn is None or ctypes.sizeof(ctypes.c_size_t) != 8:
        pytest.skip("libstdc++ without a 64-bit _Hash_bytes")
    fn.restype = ctypes.c_size_t
    fn.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_size_t]
    rng = random.Random(0)
    for n in list(range(40)) + [63, 64, 65, 1000]:
        data = bytes(rng.randrange(256) for _ in range(n))
        assert string_hash(data) == fn(data, n, 0xC70F6907), n


def test_unordered_set_order_is_a_permutation_and_rehashes() -> None:
    rng = random.Random(1)
    for n in (0, 1, 12, 13, 14, 29, 30, 100, 3000):
        hashes = [rng.getrandbits(64) for _ in range(n)]
        order = unordered_set_order(hashes)
        assert sorted(order) == list(range(n))


def test_hash_combine_wraps_at_64_bits() -> None:
    assert hash_combine(0, 0) == 0x9E3779B9
    assert hash_combine((1 << 64) - 1, (1 << 64) - 1) < 1 << 64


def test_serialization_id_of_a_known_file() -> None:
    """torch.save(torch.tensor([1., 2., 3.]), "t.pt") writes this id (docs: torch-formats.md §1.8)."""
    names = ["data.pkl", ".format_version", ".storage_alignment", "byteorder", "data/0", "version"]
    pkl_crc, data_crc = 0x9464EB0B, 0xB20E96B1
    crcs = [pkl_crc, zlib.crc32(b"1"), zlib.crc32(b"64"), zlib.crc32(b"little"), data_crc, zlib.crc32(b"3\n")]
    combined = 0
    for c in crcs:
        combined = hash_combine(combined, c)
    assert serialization_id(names, combined) == "1572819951185464302605823121648058084398"


@pytest.mark.parametrize("n", [0, 1, (1 << 20) - 1, 1 << 20, (2 << 20) + 7, (9 << 20) + 12345])
def test_parallel_crc32_is_zlibs(n: int) -> None:
    """Big records get their CRC-32 1 MiB at a time on a thread pool, combined as zlib's
    crc32_combine does; the result is zlib.crc32's, from any starting value."""
    from ckpt.zipwrite import _write_with_crc, parallel_crc32

    data = random.Random(n).randbytes(n)
    for start in (0, 0xDEADBEEF):
        assert parallel_crc32(memoryview(data), start) == zlib.crc32(data, start)
        buf = io.BytesIO()
        sink = ZipSink.for_file(buf)
        assert _write_with_crc(sink, memoryview(data), start) == zlib.crc32(data, start)
        sink.flush()
        assert buf.getvalue() == data


def test_writer_refuses_misuse(tmp_path: Path) -> None:
    w = TorchZipWriter(ZipSink.for_file(io.BytesIO()), "a")
    w.begin("x", 3)
    with pytest.raises(RuntimeError):
        w.begin("y", 1)
    with pytest.raises(ValueError):
        w.write(b"toolong")
    w.write(b"abc")
    w.end()
    with pytest.raises(ValueError):
        w.write_record("x", b"again")
    w.begin("short", 5)
    w.write(b"ab")
    with pytest.raises(ValueError):
        w.end()


# -- against torch's writer -------------------------------------------------------------------------


@pytest.mark.torch
def test_a_torch_save_file_rebuilt_record_by_record_is_identical(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    obj = {"w": torch.arange(6.0).reshape(2, 3), "e": torch.empty(0), "p": torch.tensor([0x08074B50, 1], dtype=torch.int32)}
    path = tmp_path / "src.pt"
    torch.save(obj, path)
    z = zipfile.ZipFile(path)
    records = [(i.filename.split("/", 1)[1], z.read(i)) for i in z.infolist()
               if i.filename.split("/", 1)[1] not in ("version", ".data/serialization_id")]
    out = tmp_path / "out"
    out.mkdir()
    assert ckpt_archive(out / "src.pt", records) == path.read_bytes()


names = st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126, blacklist_characters="/\\"), min_size=1, max_size=12)
payloads = st.one_of(
    st.binary(max_size=300),
    st.binary(min_size=8, max_size=40).map(lambda b: b"PK\x07\x08" + b),  # starts like a data descriptor
    st.just(b""),
)


@pytest.mark.torch
@SETTINGS
@given(st.lists(st.tuples(names, payloads), max_size=30, unique_by=lambda r: r[0]))
def test_any_records_match_torchs_writer(tmp_path_factory: Any, records: Records) -> None:
    pytest.importorskip("torch")
    d = tmp_path_factory.mktemp("w")
    (d / "a").mkdir()
    (d / "b").mkdir()
    records = [(n, b) for n, b in records if n not in ("version", "byteorder")]
    assert ckpt_archive(d / "a" / "m.pt", records) == torch_archive(d / "b" / "m.pt", records)


@pytest.mark.torch
@pytest.mark.parametrize("archive", ["PK\x07\x08name", "x"])
def test_record_names_that_look_like_descriptors(tmp_path: Path, archive: str) -> None:
    """torch folds the CRC field of any write that starts like a data descriptor into the
    serialization id, record names included: so does ckpt."""
    records = [("data.pkl", b"\x80\x02N."), ("PK\x07\x08abcd", b"xyz" * 10)]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = ckpt_archive(tmp_path / "a" / f"{archive}.pt", records)
    b = torch_archive(tmp_path / "b" / f"{archive}.pt", records)
    assert a == b


@pytest.mark.torch
@pytest.mark.slow
def test_more_than_65535_records_match_torch(tmp_path: Path) -> None:
    """Past 65,535 records only the zip64 end records hold the count."""
    records = [("data.pkl", b"\x80\x02N.")] + [(f"data/{i}", b"" if i % 3 else bytes([i % 251])) for i in range(66_000)]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = ckpt_archive(tmp_path / "a" / "m.pt", records)
    b = torch_archive(tmp_path / "b" / "m.pt", records)
    assert a == b
    arc = ZipArchive(RangedFile.from_bytes(a), name="m.pt")
    assert len(arc) == 66_004


@pytest.mark.torch
@pytest.mark.slow
def test_zip64_record_and_offsets_match_torch(tmp_path: Path) -> None:
    """A record of 4 GiB + 10 bytes and records after the 4 GiB mark: zip64 extra fields and
    24-byte descriptors, as torch writes them (holes instead of data, via write_record_metadata,
    so the test writes no 4 GiB of bytes)."""
    torch = pytest.importorskip("torch")
    big = (1 << 32) + 10
    layout = [("data.pkl", b"\x80\x02N."), ("data/0", big), ("data/1", b"after"), ("data/2", b"")]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a_path = tmp_path / "a" / "z.pt"
    b_path = tmp_path / "b" / "z.pt"
    fd = os.open(a_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        w = TorchZipWriter(ZipSink.for_fd(fd), "z")
        for name, data in layout:
            if isinstance(data, int):
                w.begin(name, data)
                w.skip(data)
                w.end()
            else:
                w.write_record(name, data)
        w.finish()
    finally:
        os.close(fd)
    tw = torch._C.PyTorchFileWriter(str(b_path), True, 64)
    for name, data in layout:
        if isinstance(data, int):
            tw.write_record_metadata(name, data)
        else:
            tw.write_record(name, data, len(data))
    tw.write_end_of_file()
    del tw
    assert a_path.stat().st_size == b_path.stat().st_size > big
    with open(a_path, "rb") as fa, open(b_path, "rb") as fb:
        fa.seek(big)
        fb.seek(big)
        assert fa.read() == fb.read()  # everything after the hole: headers, descriptors, directory
        fa.seek(0)
        fb.seek(0)
        assert fa.read(4096) == fb.read(4096)  # the headers before the hole (the hole is a hole in both)
    arc = ZipArchive(RangedFile.open(a_path), name="z.pt")
    assert arc.entry("z/data/0").size == big and arc.read(arc.entry("z/data/1")) == b"after"
    arc.close()


def test_aligned_copies_coalesce_and_keep_this_files_headers(tmp_path: Path) -> None:
    """Copies whose offsets agree modulo a page are made as one range, the source's bytes between
    them included; the sink's own bytes there are written back, whether the fd can be read or not."""
    import os

    from ckpt.zipwrite import ZipSink

    src = tmp_path / "src.bin"
    src.write_bytes(bytes(range(256)) * 64)  # 16 KiB
    for flags in (os.O_RDWR, os.O_WRONLY):
        out = tmp_path / f"out{flags}.bin"
        fd = os.open(out, flags | os.O_CREAT | os.O_TRUNC, 0o600)
        sfd = os.open(src, os.O_RDONLY)
        try:
            sink = ZipSink(fd=fd)
            sink.write(b"H" * 100)            # our header, then a hole for src[100:1100]
            sink.copy_later(sfd, 100, 1000)
            sink.write(b"mine")               # between two copies: must survive
            sink.copy_later(sfd, 1104, 3000)
            sink.flush()
            sink.run_copies()
        finally:
            os.close(sfd)
            os.close(fd)
        data = out.read_bytes()
        want = src.read_bytes()
        assert data[:100] == b"H" * 100 and data[1100:1104] == b"mine"
        assert data[100:1100] == want[100:1100] and data[1104:4104] == want[1104:4104]


@pytest.mark.parametrize("dst_off, size", [(0, 0), (0, 5), (4096, 3 << 20), (21504, 200 << 20), (2 << 20, 64 << 20),
                                           ((2 << 20) - 1, 2), (123, (64 << 20) + 7)])
def test_copy_pieces_start_on_2_mib_boundaries(dst_off: int, size: int) -> None:
    """Kernel copies are cut into pieces of at most 64 MiB that cover the range once, in order,
    each after the first starting on a 2 MiB boundary of the destination."""
    from ckpt.zipwrite import _FOLIO, _PARALLEL_COPY, _pieces

    pieces = _pieces(dst_off, size)
    assert sum(n for _, n in pieces) == size and all(0 < n <= _PARALLEL_COPY for _, n in pieces)
    assert [start for start, _ in pieces] == [sum(n for _, n in pieces[:i]) for i in range(len(pieces))]
    assert all((dst_off + start) % _FOLIO == 0 for start, _ in pieces[1:])


def test_copies_across_folio_boundaries_land_whole(tmp_path: Path) -> None:
    """A copy longer than a piece, starting off a 2 MiB boundary, eagerly or not: the bytes land
    where they were reserved."""
    import os

    from ckpt.zipwrite import ZipSink

    src = tmp_path / "src.bin"
    payload = os.urandom(1 << 16) * 80  # 5 MiB
    src.write_bytes(payload)
    for eager in (False, True):
        out = tmp_path / f"out{eager}.bin"
        fd = os.open(out, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        sfd = os.open(src, os.O_RDONLY)
        try:
            sink = ZipSink(fd=fd)
            sink.eager_copies = eager
            sink.write(b"H" * 12345)
            sink.copy_later(sfd, 8, len(payload) - 8)
            sink.write(b"tail")
            sink.flush()
            sink.run_copies()
        finally:
            os.close(sfd)
            os.close(fd)
        assert out.read_bytes() == b"H" * 12345 + payload[8:] + b"tail"


def test_kernel_copies_land_where_reserved_when_the_file_does_not_start_the_archive(tmp_path: Path) -> None:
    """A sink on a file descriptor already past some bytes: copies reserved at archive offsets are
    made at those offsets after the file's first bytes, not over them."""
    import os

    from ckpt.zipwrite import ZipSink

    src = tmp_path / "src.bin"
    src.write_bytes(bytes(range(256)) * 40)
    for eager in (False, True):
        out = tmp_path / f"out{eager}.bin"
        fd = os.open(out, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        sfd = os.open(src, os.O_RDONLY)
        try:
            os.write(fd, b"preamble")  # not part of the archive
            sink = ZipSink(fd=fd)
            sink.eager_copies = eager
            sink.write(b"H" * 10)
            sink.copy_later(sfd, 256, 5000)
            sink.write(b"end")
            sink.flush()
            sink.run_copies()
        finally:
            os.close(sfd)
            os.close(fd)
        assert out.read_bytes() == b"preamble" + b"H" * 10 + src.read_bytes()[256:5256] + b"end"


def test_write_behind_lands_every_buffer_in_place_and_bounds_what_waits(tmp_path: Path, monkeypatch) -> None:
    """Buffers written behind (on the copy thread) land at their places between copies and small
    writes; no more than _BEHIND_BYTES wait at a time; a failed write is raised by run_copies."""
    import os

    import ckpt.zipwrite as zipwrite
    from ckpt.zipwrite import ZipSink

    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(3 << 20))
    out = tmp_path / "out.bin"
    fd = os.open(out, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    sfd = os.open(src, os.O_RDONLY)
    waiting = []
    try:
        sink = ZipSink(fd=fd)
        sink.eager_copies = True
        expect = bytearray()
        for i in range(12):
            big = bytes([i]) * ((2 << 20) + i)
            sink.write_behind(big)
            waiting.append(sink._behind_bytes)
            sink.write(b"h%d" % i)
            sink.copy_later(sfd, i, 1000 + i)
            sink.write_behind(b"small")  # under 1 MiB: an ordinary write
            expect += big + b"h%d" % i + src.read_bytes()[i : 1000 + 2 * i] + b"small"
        sink.flush()
        sink.run_copies()
    finally:
        os.close(sfd)
        os.close(fd)
    assert out.read_bytes() == bytes(expect)
    assert max(waiting) <= zipwrite._BEHIND_BYTES
    # a write that fails surfaces from run_copies
    fd = os.open(tmp_path / "ro.bin", os.O_RDONLY | os.O_CREAT, 0o600)
    try:
        sink = ZipSink(fd=fd)
        sink.eager_copies = True
        sink.write_behind(bytes(2 << 20))
        with pytest.raises(OSError):
            sink.run_copies()
    finally:
        os.close(fd)


@pytest.mark.parametrize("shift", [0, 8, 4096, 4100])
def test_copy_range_aligned_or_shifted_gives_the_same_bytes(tmp_path: Path, shift: int) -> None:
    """Copies whose offsets agree modulo a page go through copy_file_range, the others through a
    1 MiB buffer: both give the source's bytes at the destination offset, and a source that ends
    early is an error, not a short copy."""
    import os

    from ckpt.zipwrite import _copy_range

    data = os.urandom((3 << 20) + 123)
    (tmp_path / "src").write_bytes(data)
    sfd = os.open(tmp_path / "src", os.O_RDONLY)
    dfd = os.open(tmp_path / "dst", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        _copy_range(dfd, sfd, 100, 100 + shift, len(data) - 200)
        assert (tmp_path / "dst").read_bytes()[100 + shift:] == data[100:-100]
        with pytest.raises(OSError, match="ended"):
            _copy_range(dfd, sfd, len(data) - 50, shift + 1, 100)
    finally:
        os.close(sfd)
        os.close(dfd)


def _archive_with_copies(path: Path, src: Path, blobs: list[bytes], *, eager: bool, hole: int,
                         from_memory: bool) -> None:
    """data.pkl, a ``hole``-byte record (skipped), then ``blobs`` (which lie in ``src`` from byte
    77 on): written from memory, or copied from ``src`` computing their CRCs where the sink can."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    sfd = os.open(src, os.O_RDONLY)
    try:
        w = TorchZipWriter(ZipSink.for_fd(fd), "z")
        w.sink.eager_copies = eager
        w.write_record("data.pkl", b"pickle")
        if hole:
            w.begin("data/hole", hole)
            w.skip(hole)
            w.end()
        offset = 77
        for i, b in enumerate(blobs):
            if from_memory:
                w.write_record(f"data/{i}", b)
            else:
                w.begin(f"data/{i}", len(b))
                if not w.copy_computing_crc(sfd, offset, len(b)):
                    assert not eager
                    w.copy(sfd, offset, len(b))
                w.end()
            offset += len(b)
        w.finish()
    finally:
        os.close(sfd)
        os.close(fd)


@pytest.mark.parametrize("eager, hole", [(True, 0), (False, 0), (True, (1 << 32) + 10)])
def test_records_copied_computing_their_crc_match_records_written_from_memory(
    tmp_path: Path, eager: bool, hole: int,
) -> None:
    """Records copied from another file whose CRC-32 is computed on the copy threads (the data
    descriptor, directory entry and serialization id filled in by finish) give exactly the archive
    that writing the same bytes from memory gives, past the 4 GiB mark too (zip64 fields and
    24-byte descriptors; a hole stands for the 4 GiB). Where the sink cannot defer (not eager),
    copy_computing_crc declines and copy() computes the CRC."""
    sizes = [5, 8 << 20, (8 << 20) + 1, (20 << 20) + 3, 4096]
    blobs = [os.urandom(n) for n in sizes]
    blobs[-1] = b"PK\x07\x08" + blobs[-1][4:]  # data that starts like a descriptor is folded into the id
    src = tmp_path / "src.bin"
    src.write_bytes(b"x" * 77 + b"".join(blobs))
    want, got = tmp_path / "want.zip", tmp_path / "got.zip"
    _archive_with_copies(want, src, blobs, eager=eager, hole=hole, from_memory=True)
    _archive_with_copies(got, src, blobs, eager=eager, hole=hole, from_memory=False)
    assert got.stat().st_size == want.stat().st_size
    with open(got, "rb") as fg, open(want, "rb") as fw:
        fg.seek(hole)
        fw.seek(hole)
        assert fg.read() == fw.read()
        fg.seek(0)
        fw.seek(0)
        assert fg.read(4096) == fw.read(4096)
    if not hole:
        assert zipfile.ZipFile(got).testzip() is None
    arc = ZipArchive(RangedFile.open(got), name="got.zip")
    assert [arc.read(arc.entry(f"z/data/{i}")) for i in range(len(blobs))] == blobs  # CRC-checked reads
    arc.close()


def test_a_copy_computing_crc_from_a_short_source_fails_in_finish(tmp_path: Path) -> None:
    """A source that ends inside a record copied on the threads: finish raises, it does not write
    a directory with a CRC of bytes that were never there."""
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(3 << 20))
    out = tmp_path / "out.zip"
    fd = os.open(out, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    sfd = os.open(src, os.O_RDONLY)
    try:
        w = TorchZipWriter(ZipSink.for_fd(fd), "out")
        w.sink.eager_copies = True
        w.begin("data/0", 10 << 20)
        assert w.copy_computing_crc(sfd, 0, 10 << 20)
        w.end()
        with pytest.raises(OSError, match="ended"):
            w.finish()
    finally:
        os.close(sfd)
        os.close(fd)


def test_no_write_hands_the_kernel_more_than_a_mebibyte(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Big records, written from memory, written behind on the copy thread, or to a file object,
    reach the kernel 1 MiB at a time at most (bigger writes make the page cache allocate 2 MiB
    folios, slow where the host reclaims free memory), and land whole."""
    import ckpt.zipwrite as zipwrite

    sizes: list[int] = []
    real_write, real_pwrite = os.write, os.pwrite
    monkeypatch.setattr(os, "write", lambda fd, data: (sizes.append(len(data)), real_write(fd, data))[1])
    monkeypatch.setattr(os, "pwrite", lambda fd, data, at: (sizes.append(len(data)), real_pwrite(fd, data, at))[1])
    blob = os.urandom(5 << 20) + b"tail"
    fd = os.open(tmp_path / "a.bin", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        sink = ZipSink.for_fd(fd)
        sink.write(blob)
        sink.eager_copies = True
        sink.write_behind(blob)
        sink.run_copies()
        sink.flush()
    finally:
        os.close(fd)
    assert (tmp_path / "a.bin").read_bytes() == blob + blob
    assert sizes and max(sizes) <= zipwrite._WRITE_CHUNK

    class Recording(io.BytesIO):
        def write(self, data: Any) -> int:
            sizes.append(len(data))
            return super().write(data)

    sizes.clear()
    out = Recording()
    ZipSink.for_file(out).write(blob)
    assert out.getvalue() == blob and max(sizes) <= zipwrite._WRITE_CHUNK
