"""Damaged, ambiguous and hostile zip archives.

Truncated downloads, CRC damage, missing or duplicated records, headers that disagree, encrypted or
oddly compressed members, bytes hidden between the directory and its end record, and zip bombs.
Each must give a clear :class:`ckpt.CorruptCheckpointError` (or ``UnsupportedFormatError`` for
features ckpt refuses on purpose): never another exception type, never a hang, never a big
allocation. torch itself never checks CRCs; ckpt does, and these tests pin what it does with
``mmap=True``, where checking would mean reading every mapped byte.
"""

from __future__ import annotations

import io
import struct
import time
import tracemalloc
import zipfile
import zlib
from pathlib import Path

import pytest

import ckpt

try:
    from . import adversarial_kit as kit
except ImportError:
    import adversarial_kit as kit

needs_torch = pytest.mark.skipif(not kit.HAVE_TORCH, reason="needs torch")

PKL = kit.tensor_pickle(3)
DATA = kit.floats(1.0, 2.0, 3.0)
GiB = 1 << 30



def members(**overrides: kit.Member) -> list[kit.Member]:
    """The three records of a minimal checkpoint, with some replaced."""
    base = {
        "pkl": kit.Member("archive/data.pkl", PKL),
        "data": kit.Member("archive/data/0", DATA),
        "version": kit.Member("archive/version", b"3\n"),
    }
    base.update(overrides)
    return list(base.values())


def every_api(path: Path) -> dict[str, BaseException | None]:
    """What each entry point does with ``path`` (None: it succeeded)."""
    calls = {
        "open": lambda: ckpt.open(path).close(),
        "inspect": lambda: ckpt.inspect(path),
        "load-numpy": lambda: ckpt.load(path, as_="numpy"),
    }
    if kit.HAVE_TORCH:
        calls["load"] = lambda: ckpt.load(path)
    out: dict[str, BaseException | None] = {}
    for name, call in calls.items():
        try:
            call()
            out[name] = None
        except Exception as e:  # noqa: BLE001 - the test inspects the type
            out[name] = e
    return out


def assert_all_raise(path: Path, exc: type, *words: str) -> None:
    for api, err in every_api(path).items():
        assert isinstance(err, exc), f"{api}: expected {exc.__name__}, got {err!r}"
        message = str(err)
        assert str(path) in message, (api, message)
        for word in words:
            assert word in message, (api, word, message)


# -- a sane base ---------------------------------------------------------------------------------


def test_handmade_base_reads(tmp_path: Path) -> None:
    path = kit.write(tmp_path / "m.pt", kit.build_zip(members(), zip64=True))
    assert ckpt.load(path, as_="numpy").tolist() == [1.0, 2.0, 3.0]
    assert ckpt.inspect(path).totals["tensors"] == 1


# -- truncated downloads -----------------------------------------------------------------------


def torch_made(tmp_path: Path, **save_kw: object) -> bytes:
    import torch

    gen = torch.Generator().manual_seed(0)
    sd = {"layer.weight": torch.randn(4, 5, generator=gen), "layer.bias": torch.arange(7),
          "step": 3, "name": "x"}
    path = tmp_path / "base.pt"
    torch.save(sd, path, **save_kw)  # type: ignore[arg-type]
    return path.read_bytes()


def zip_regions(data: bytes) -> dict[str, range]:
    """Byte ranges of a zip's record data, central directory and end records."""
    zf = zipfile.ZipFile(io.BytesIO(data))
    eocd = data.rfind(b"PK\x05\x06")
    cd_size, cd_offset = struct.unpack_from("<LL", data, eocd + 12)
    z64 = data.rfind(b"PK\x06\x06")
    if z64 >= 0:
        cd_size, cd_offset = struct.unpack_from("<QQ", data, z64 + 40)
    first = min(i.header_offset for i in zf.infolist())
    return {
        "records": range(first, cd_offset),
        "central-directory": range(cd_offset, cd_offset + cd_size),
        "end-records": range(cd_offset + cd_size, len(data)),
    }


def sweep_truncations(tmp_path: Path, data: bytes) -> None:
    regions = zip_regions(data)
    path = tmp_path / "cut.pt"
    seen = {name: 0 for name in regions}
    worst = 0.0
    for cut in range(len(data)):
        path.write_bytes(data[:cut])
        for api, err in every_api(path).items():
            if cut == 0:
                assert isinstance(err, ckpt.NotACheckpointError) and "empty" in str(err), (cut, api, err)
            elif cut == 1:  # a one-byte "P" is indistinguishable from a text file
                assert isinstance(err, ckpt.CheckpointError), (cut, api, err)
            else:
                assert isinstance(err, ckpt.CorruptCheckpointError), f"cut at {cut}: {api} gave {err!r}"
        t0 = time.process_time()
        with pytest.raises(ckpt.CheckpointError):
            ckpt.inspect(path)
        worst = max(worst, time.process_time() - t0)
        for name, span in regions.items():
            seen[name] += cut in span
    assert all(seen.values()), seen  # the sweep cut inside every region
    assert worst < kit.CPU_SECONDS_BOUND, f"a truncated file took {worst:.2f} CPU s to refuse"


def test_truncated_handmade_checkpoint_at_every_offset(tmp_path: Path) -> None:
    data = kit.build_zip(members(), zip64=True)
    sweep_truncations(tmp_path, data)


@needs_torch
def test_truncated_torch_checkpoint_at_every_offset(tmp_path: Path) -> None:
    sweep_truncations(tmp_path, torch_made(tmp_path))


@needs_torch
def test_truncated_download_padded_with_zeros(tmp_path: Path) -> None:
    """Download managers preallocate the file: a partial download is the right size, zero-filled."""
    data = torch_made(tmp_path)
    for keep in (100, len(data) // 2, len(data) - 30):
        path = kit.write(tmp_path / "m.pt", data[:keep] + bytes(len(data) - keep))
        assert_all_raise(path, ckpt.CorruptCheckpointError, "truncated")


def test_truncation_message_is_actionable(tmp_path: Path) -> None:
    data = kit.build_zip(members(), zip64=True)
    path = kit.write(tmp_path / "m.pt", data[: len(data) // 2])
    with pytest.raises(ckpt.CorruptCheckpointError, match="truncated"):
        ckpt.inspect(path)


# -- CRC-32 --------------------------------------------------------------------------------------


def test_crc_mismatch_in_data_pkl_fails_open(tmp_path: Path) -> None:
    bad = kit.Member("archive/data.pkl", PKL, crc=zlib.crc32(PKL) ^ 0x1)
    path = kit.write(tmp_path / "m.pt", kit.build_zip(members(pkl=bad)))
    assert_all_raise(path, ckpt.CorruptCheckpointError, "CRC-32 mismatch", "data.pkl")


def test_crc_mismatch_in_storage_fails_load_not_inspect(tmp_path: Path) -> None:
    """Inspect reads no tensor bytes, so it cannot see a storage's CRC; reading them checks it."""
    bad = kit.Member("archive/data/0", DATA, crc=zlib.crc32(DATA) ^ 0x1)
    path = kit.write(tmp_path / "m.pt", kit.build_zip(members(data=bad)))
    assert ckpt.inspect(path).totals["tensors"] == 1
    with ckpt.open(path) as ck:
        (_, ref), = ck.tensors()
        with pytest.raises(ckpt.CorruptCheckpointError, match="CRC-32 mismatch"):
            ref.numpy()
    with pytest.raises(ckpt.CorruptCheckpointError, match="CRC-32 mismatch.*torch would load it silently") as info:
        ckpt.load(path, as_="numpy")
    assert "archive/data/0" in str(info.value)


@needs_torch
def test_crc_mismatch_in_storage_fails_torch_load(tmp_path: Path) -> None:
    bad = kit.Member("archive/data/0", DATA, crc=zlib.crc32(DATA) ^ 0x1)
    path = kit.write(tmp_path / "m.pt", kit.build_zip(members(data=bad)))
    with pytest.raises(ckpt.CorruptCheckpointError, match="CRC-32 mismatch"):
        ckpt.load(path)


def test_mmap_does_not_verify_crcs(tmp_path: Path) -> None:
    """Documented behaviour: with ``mmap=True`` the mapped storage bytes are not CRC-checked
    (checking would read every byte, defeating the mapping); the pickle still is."""
    assert "CRCs of mapped records are not checked" in (ckpt.load.__doc__ or "")
    damaged = kit.floats(1.0, 2.0, 4.0)
    bad = kit.Member("archive/data/0", damaged, crc=zlib.crc32(DATA))  # CRC of the original bytes
    path = kit.write(tmp_path / "m.pt", kit.build_zip(members(data=bad)))
    with pytest.raises(ckpt.CorruptCheckpointError):
        ckpt.load(path, as_="numpy")
    assert ckpt.load(path, as_="numpy", mmap=True).tolist() == [1.0, 2.0, 4.0]
    bad_pkl = kit.Member("archive/data.pkl", PKL, crc=zlib.crc32(PKL) ^ 1)
    path2 = kit.write(tmp_path / "m2.pt", kit.build_zip(members(pkl=bad_pkl)))
    with pytest.raises(ckpt.CorruptCheckpointError, match="CRC-32"):
        ckpt.load(path2, as_="numpy", mmap=True)


@needs_torch
def test_mmap_torch_load_does_not_verify_crcs(tmp_path: Path) -> None:
    damaged = kit.floats(1.0, 2.0, 4.0)
    bad = kit.Member("archive/data/0", damaged, crc=zlib.crc32(DATA))
    path = kit.write(tmp_path / "m.pt", kit.build_zip(members(data=bad)))
    assert ckpt.load(path, mmap=True).tolist() == [1.0, 2.0, 4.0]


@needs_torch
def test_crc_damage_in_real_torch_file(tmp_path: Path) -> None:
    import torch

    data = bytearray(torch_made(tmp_path))
    zf = zipfile.ZipFile(io.BytesIO(bytes(data)))
    info = next(i for i in zf.infolist() if i.filename.endswith("data/0"))
    start = data.index(b"FB", info.header_offset) + 4  # miniz pads with an FB extra field
    start += struct.unpack_from("<H", data, start - 2)[0]
    data[start] ^= 0xFF
    path = kit.write(tmp_path / "flipped.pt", bytes(data))
    torch.load(path, weights_only=True)  # the oracle: torch never checks CRCs
    assert ckpt.inspect(path).totals["tensors"] == 2
    with pytest.raises(ckpt.CorruptCheckpointError, match="CRC-32 mismatch") as err:
        ckpt.load(path)
    assert "data/0" in str(err.value)


def test_crc_less_archive_loads(tmp_path: Path) -> None:
    """Every CRC zero (torch.serialization.set_crc32_options(False)): nothing to check, still loads."""
    zeroed = [kit.Member(m.name, m.data, crc=0) for m in members()]
    path = kit.write(tmp_path / "m.pt", kit.build_zip(zeroed))
    assert ckpt.load(path, as_="numpy").tolist() == [1.0, 2.0, 3.0]
    assert ckpt.inspect(path).facts["crc32"] == "absent"


def test_one_zeroed_crc_among_real_ones_is_still_checked(tmp_path: Path) -> None:
    """Zeroing one record's CRC must not switch checking off for that record."""
    bad = kit.Member("archive/data/0", kit.floats(9.0, 9.0, 9.0), crc=0)
    path = kit.write(tmp_path / "m.pt", kit.build_zip(members(data=bad)))
    with pytest.raises(ckpt.CorruptCheckpointError, match="CRC-32"):
        ckpt.load(path, as_="numpy")


@needs_torch
def test_real_crc_less_torch_file_loads(tmp_path: Path) -> None:
    import torch

    torch.serialization.set_crc32_options(False)
    try:
        data = torch_made(tmp_path)
    finally:
        torch.serialization.set_crc32_options(True)
    path = kit.write(tmp_path / "nocrc.pt", data)
    ours, theirs = ckpt.load(path), torch.load(path, weights_only=True)
    assert torch.equal(ours["layer.weight"], theirs["layer.weight"])
    assert ckpt.inspect(path).facts["crc32"] == "absent"


# -- missing, misplaced and duplicated records -----------------------------------------------------


def test_missing_data_pkl(tmp_path: Path) -> None:
    path = kit.write(tmp_path / "m.pt", kit.build_zip(members(pkl=kit.Member("archive/other.pkl", PKL))))
    assert_all_raise(path, ckpt.CorruptCheckpointError, "data.pkl")


def test_missing_storage_record(tmp_path: Path) -> None:
    path = kit.write(tmp_path / "m.pt", kit.build_zip(members(data=kit.Member("archive/data/1", DATA))))
    assert_all_raise(path, ckpt.CorruptCheckpointError, "archive/data/0", "no record")


def test_missing_version_record_is_read_with_a_note(tmp_path: Path) -> None:
    """torch refuses a zip without ``version``; ckpt reads it and says so in the format facts."""
    ms = [m for m in members() if not m.name.endswith("version")]
    path = kit.write(tmp_path / "m.pt", kit.build_zip(ms))
    facts = ckpt.inspect(path).facts
    assert facts["version"] is None
    assert any("no version record" in note for note in facts["notes"])
    assert ckpt.load(path, as_="numpy").tolist() == [1.0, 2.0, 3.0]


@pytest.mark.parametrize("text,exc", [(b"0", ckpt.UnsupportedFormatError), (b"11", ckpt.UnsupportedFormatError),
                                      (b"abc", ckpt.CorruptCheckpointError),
                                      (b"9" * 100, ckpt.CorruptCheckpointError)])
def test_bad_version_record(tmp_path: Path, text: bytes, exc: type) -> None:
    path = kit.write(tmp_path / "m.pt", kit.build_zip(members(version=kit.Member("archive/version", text))))
    assert_all_raise(path, exc, "version" if len(text) < 64 else "bytes")


def test_record_outside_the_archive_folder(tmp_path: Path) -> None:
    ms = members() + [kit.Member("other/data.pkl", kit.pickle_of(kit.NONE))]
    path = kit.write(tmp_path / "m.pt", kit.build_zip(ms))
    assert_all_raise(path, ckpt.CorruptCheckpointError, "other/data.pkl", "outside the archive folder")


def test_records_without_a_top_folder(tmp_path: Path) -> None:
    ms = [kit.Member("data.pkl", PKL), kit.Member("data/0", DATA), kit.Member("version", b"3\n")]
    path = kit.write(tmp_path / "m.pt", kit.build_zip(ms))
    assert_all_raise(path, ckpt.CorruptCheckpointError, "top folder")


@pytest.mark.parametrize("name", ["archive/data.pkl", "archive/data/0"])
def test_two_members_with_one_name(tmp_path: Path, name: str) -> None:
    """Readers disagree on which duplicate counts (first, last): ambiguous, refused."""
    other = kit.pickle_of(kit.NONE) if name.endswith("pkl") else kit.floats(6.0, 6.0, 6.0)
    ms = members() + [kit.Member(name, other)]
    path = kit.write(tmp_path / "m.pt", kit.build_zip(ms))
    assert_all_raise(path, ckpt.CorruptCheckpointError, name, "two records share this name")


def test_local_header_name_disagrees_for_data_pkl(tmp_path: Path) -> None:
    ms = members(pkl=kit.Member("archive/data.pkl", PKL, local_name="archive/evil.pkl"))
    path = kit.write(tmp_path / "m.pt", kit.build_zip(ms))
    assert_all_raise(path, ckpt.CorruptCheckpointError, "local header disagrees")


def test_local_header_method_disagrees_for_data_pkl(tmp_path: Path) -> None:
    ms = members(pkl=kit.Member("archive/data.pkl", PKL, local_method=8))
    path = kit.write(tmp_path / "m.pt", kit.build_zip(ms))
    assert_all_raise(path, ckpt.CorruptCheckpointError, "local header disagrees")


def test_local_header_disagrees_for_storage_is_caught_when_read(tmp_path: Path) -> None:
    """Inspect never reads a storage's local header (promise 2); loading it does, and refuses."""
    ms = members(data=kit.Member("archive/data/0", DATA, local_name="archive/data/1"))
    path = kit.write(tmp_path / "m.pt", kit.build_zip(ms))
    ckpt.inspect(path)
    with pytest.raises(ckpt.CorruptCheckpointError, match="local header disagrees"):
        ckpt.load(path, as_="numpy")
    if kit.HAVE_TORCH:
        with pytest.raises(ckpt.CorruptCheckpointError, match="local header disagrees"):
            ckpt.load(path)


@pytest.mark.parametrize("which", ["pkl", "data"])
def test_encrypted_flag(tmp_path: Path, which: str) -> None:
    m = members()[0 if which == "pkl" else 1]
    m.flags |= 0x1
    ms = members(**{which: m})
    path = kit.write(tmp_path / "m.pt", kit.build_zip(ms))
    assert_all_raise(path, ckpt.UnsupportedFormatError, "encrypted")


def test_unknown_compression_method_on_data_pkl(tmp_path: Path) -> None:
    ms = members(pkl=kit.Member("archive/data.pkl", PKL, method=14))  # LZMA
    path = kit.write(tmp_path / "m.pt", kit.build_zip(ms))
    assert_all_raise(path, ckpt.UnsupportedFormatError, "compression method 14")


def test_unknown_compression_method_on_storage(tmp_path: Path) -> None:
    ms = members(data=kit.Member("archive/data/0", DATA, method=12))  # bzip2
    path = kit.write(tmp_path / "m.pt", kit.build_zip(ms))
    ckpt.inspect(path)  # no storage bytes read
    with pytest.raises(ckpt.UnsupportedFormatError, match="compression method 12"):
        ckpt.load(path, as_="numpy")
    with pytest.raises(ckpt.UnsupportedFormatError, match="compression method 12"):
        ckpt.load(path, as_="numpy", mmap=True)


@pytest.mark.parametrize("zip64", [False, True])
def test_bytes_between_central_directory_and_end_record(tmp_path: Path, zip64: bool) -> None:
    path = kit.write(tmp_path / "m.pt", kit.build_zip(members(), zip64=zip64, gap_before_end=b"\x80\x02N."))
    assert_all_raise(path, ckpt.CorruptCheckpointError, "unexplained bytes")


@needs_torch
def test_bytes_hidden_before_real_torch_end_records(tmp_path: Path) -> None:
    data = torch_made(tmp_path)
    cd_end = zip_regions(data)["end-records"].start
    # insert bytes and fix every offset that points past them (zip64 locator, classic EOCD stays)
    evil = b"HIDDEN PAYLOAD"
    patched = bytearray(data[:cd_end] + evil + data[cd_end:])
    z64 = patched.rfind(b"PK\x06\x06")
    loc = patched.rfind(b"PK\x06\x07")
    struct.pack_into("<Q", patched, loc + 8, z64)
    path = kit.write(tmp_path / "m.pt", bytes(patched))
    assert_all_raise(path, ckpt.CorruptCheckpointError, "unexplained bytes")


def structural_variants() -> dict[str, bytes]:
    lay = kit.ZipLayout()
    base = kit.build_zip(members(), zip64=True, layout=lay)
    z64, cd = lay.zip64_end, lay.central_directory
    assert z64 is not None
    out = {}

    def patch(name: str, fmt: str, at: int, *values: int) -> None:
        b = bytearray(base)
        struct.pack_into(fmt, b, at, *values)
        out[name] = bytes(b)

    patch("zip64-more-entries-than-directory", "<QQ", z64 + 24, 9, 9)
    patch("zip64-directory-offset-past-end", "<Q", z64 + 48, 1 << 50)
    patch("zip64-locator-points-outside", "<Q", lay.end_record - 12, 1 << 60)
    patch("central-signature-broken", "<4s", cd, b"PK\x01\x09")
    patch("local-offset-inside-directory", "<L", cd + 42, cd + 4)
    patch("local-offset-far-away", "<L", cd + 42, 1 << 31)
    b = bytearray(base)
    b[lay.local_headers["archive/data.pkl"] + 30 + len("archive/data.pkl")] ^= 0xFF  # first pickle byte
    out["pickle-byte-flipped"] = bytes(b)
    out["empty-zip"] = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 0, 0, 0, 0, 0)
    out["only-a-folder-entry"] = kit.build_zip([kit.Member("archive/", b"")])
    return out


@pytest.mark.parametrize("variant", list(structural_variants()))
def test_damaged_zip_structure(tmp_path: Path, variant: str) -> None:
    path = kit.write(tmp_path / "m.pt", structural_variants()[variant])
    for api, err in every_api(path).items():
        assert isinstance(err, ckpt.CorruptCheckpointError), (api, err)
        assert "\n" not in str(err)


@pytest.mark.parametrize("field", ["entries", "directory-size"])
def test_absurd_directory_counts_are_refused_before_allocation(tmp_path: Path, field: str) -> None:
    lay = kit.ZipLayout()
    b = bytearray(kit.build_zip(members(), zip64=True, layout=lay))
    assert lay.zip64_end is not None
    if field == "entries":
        struct.pack_into("<QQ", b, lay.zip64_end + 24, 1 << 40, 1 << 40)
    else:
        struct.pack_into("<Q", b, lay.zip64_end + 40, 1 << 50)
    path = kit.write(tmp_path / "m.pt", bytes(b))
    tracemalloc.start()
    try:
        with pytest.raises(ckpt.ResourceLimitError):
            ckpt.inspect(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20


# -- compressed records and zip bombs ----------------------------------------------------------------


def test_honest_deflated_records_read_correctly(tmp_path: Path) -> None:
    """torch never compresses but reads compressed records; ckpt must too, in every mode."""
    ms = [kit.Member(m.name, m.data, method=8) for m in members()]
    path = kit.write(tmp_path / "m.pt", kit.build_zip(ms))
    assert ckpt.load(path, as_="numpy").tolist() == [1.0, 2.0, 3.0]
    assert ckpt.load(path, as_="numpy", mmap=True).tolist() == [1.0, 2.0, 3.0]
    assert ckpt.inspect(path).totals["tensors"] == 1


@needs_torch
def test_honest_deflated_records_match_torch(tmp_path: Path) -> None:
    import torch

    raw = torch_made(tmp_path)
    src = zipfile.ZipFile(io.BytesIO(raw))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename))
    path = kit.write(tmp_path / "deflated.pt", buf.getvalue())
    theirs = torch.load(path, weights_only=True)
    for mmap in (False, True):  # torch's own mmap path returns garbage here; ckpt must not
        ours = ckpt.load(path, mmap=mmap)
        assert set(ours) == set(theirs)
        for key in ("layer.weight", "layer.bias"):
            assert torch.equal(ours[key], theirs[key]), (mmap, key)


def deflate(head: bytes, filler: bytes = b"", repeat: int = 0) -> bytes:
    """A raw deflate stream of ``head`` followed by ``filler`` repeated ``repeat`` times."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    out = [c.compress(head)]
    out.extend(c.compress(filler) for _ in range(repeat))
    out.append(c.flush())
    return b"".join(out)


@pytest.mark.parametrize("which", ["pkl", "data"])
def test_record_inflating_past_its_declared_size(tmp_path: Path, which: str) -> None:
    """Declares a few bytes; the deflate stream holds 64 MiB of zeros after them."""
    content = PKL if which == "pkl" else DATA
    bomb = deflate(content, b"\0" * (1 << 20), repeat=64)  # the content, then 64 MiB of zeros
    name = "archive/data.pkl" if which == "pkl" else "archive/data/0"
    m = kit.Member(name, content, method=8, raw=bomb)
    path = kit.write(tmp_path / "m.pt", kit.build_zip(members(**{which: m})))
    tracemalloc.start()
    t0 = time.process_time()
    try:
        with pytest.raises(ckpt.CorruptCheckpointError, match="zip bomb"):
            ckpt.load(path, as_="numpy")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.process_time() - t0 < kit.CPU_SECONDS_BOUND
    assert peak < 32 << 20, f"peak {peak >> 20} MiB"


@pytest.mark.parametrize("method", [0, 8])
def test_data_pkl_declaring_40_gib_is_refused(tmp_path: Path, method: int) -> None:
    m = kit.Member("archive/data.pkl", PKL, method=method, usize=40 * GiB, csize=40 * GiB if method == 0 else None)
    path = kit.write(tmp_path / "m.pt", kit.build_zip(members(pkl=m), zip64=True))
    out = kit.run_limited("ckpt.inspect(path)", path=path, address_space=2 * GiB)
    assert out["checkpoint_error"] and out["type"] in ("ResourceLimitError", "CorruptCheckpointError"), out
    assert out["rss_growth_kb"] < 64 << 10, out


@pytest.mark.parametrize("method", [0, 8])
def test_data_pkl_declaring_1_5_gib_in_a_tiny_file_allocates_nothing(tmp_path: Path, method: int) -> None:
    """Under the 2 GiB pickle limit, but the file is a few hundred bytes: refuse before allocating.
    The child's address space is capped at 1 GiB, so a 1.5 GiB buffer cannot hide."""
    size = 3 * GiB // 2
    m = kit.Member("archive/data.pkl", PKL, method=method, usize=size, csize=size if method == 0 else None)
    path = kit.write(tmp_path / "m.pt", kit.build_zip(members(pkl=m), zip64=True))
    out = kit.run_limited("ckpt.inspect(path)", path=path, address_space=GiB)
    assert out["checkpoint_error"], out
    assert out["rss_growth_kb"] < 64 << 10, out


def storage_declaring_40_gib(tmp_path: Path, method: int) -> Path:
    n = 10 * GiB  # float32 elements: 40 GiB, consistent with the pickle's numel
    pkl = kit.tensor_pickle(n)
    m = kit.Member("archive/data/0", DATA, method=method, usize=4 * n, csize=4 * n if method == 0 else None)
    return kit.write(tmp_path / "m.pt", kit.build_zip(members(pkl=kit.Member("archive/data.pkl", pkl), data=m),
                                                      zip64=True))


@pytest.mark.parametrize("method", [0, 8])
def test_storage_declaring_40_gib_is_refused_by_open(tmp_path: Path, method: int) -> None:
    """The directory alone shows the record cannot hold 40 GiB (a 600-byte file; a deflate stream
    of a few bytes): open/inspect should say so, instead of reporting a 40 GiB tensor."""
    path = storage_declaring_40_gib(tmp_path, method)
    assert_all_raise(path, ckpt.CorruptCheckpointError)


@pytest.mark.parametrize("method", [0, 8])
@pytest.mark.parametrize("flavor", ["numpy"] + (["torch"] if kit.HAVE_TORCH else []))
def test_storage_declaring_40_gib_is_not_allocated_by_load(tmp_path: Path, method: int, flavor: str) -> None:
    """Loading must fail with a CheckpointError before allocating 40 GiB (address space capped at
    4 GiB, so the allocation cannot succeed lazily and hide)."""
    path = storage_declaring_40_gib(tmp_path, method)
    out = kit.run_limited(f"ckpt.load(path, as_={flavor!r})", path=path, address_space=4 * GiB)
    assert out["checkpoint_error"], out
    # the pickle VM turns a MemoryError into "out of memory while reading the pickle": that means
    # the 40 GiB buffer was attempted, which is what must not happen
    assert "out of memory" not in out["message"], out
    assert out["rss_growth_kb"] < 64 << 10, out


# -- the command line on damaged files ----------------------------------------------------------------


def damaged_samples() -> dict[str, bytes]:
    full = kit.build_zip(members(), zip64=True)
    return {
        "truncated": full[: len(full) // 2],
        "crc-data-pkl": kit.build_zip(members(pkl=kit.Member("archive/data.pkl", PKL, crc=1))),
        "duplicate-name": kit.build_zip(members() + [kit.Member("archive/data/0", DATA)]),
        "hidden-bytes": kit.build_zip(members(), gap_before_end=b"x"),
        "zip-bomb": kit.build_zip(members(pkl=kit.Member("archive/data.pkl", PKL, method=8,
                                                         raw=deflate(PKL, b"\0" * (1 << 20), 8)))),
        "encrypted": kit.build_zip(members(pkl=kit.Member("archive/data.pkl", PKL, flags=0x801))),
        "trailing-pickle": kit.build_zip(members(pkl=kit.Member("archive/data.pkl", PKL + PKL))),
    }


@pytest.mark.parametrize("case", list(damaged_samples()))
def test_cli_damaged_file_is_one_error_line(tmp_path: Path, case: str) -> None:
    from click.testing import CliRunner

    from ckpt_cli.main import cli

    path = kit.write(tmp_path / "m.pt", damaged_samples()[case])
    for extra in ([], ["--json"]):
        result = CliRunner().invoke(cli, ["inspect", str(path), *extra])
        assert result.exit_code == 2, (result.exit_code, result.output)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("ckpt: error: ") and str(path) in lines[0]
        assert result.stdout == "" and "Traceback" not in result.output


def test_cli_damaged_file_real_process_and_debug(tmp_path: Path) -> None:
    path = kit.write(tmp_path / "m.pt", damaged_samples()["duplicate-name"])
    proc = kit.run_cli("inspect", str(path))
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "two records share this name" in proc.stderr
    debug = kit.run_cli("--debug", "inspect", str(path))
    assert "Traceback" in debug.stderr and "CorruptCheckpointError" in debug.stderr


# -- polyglots and hidden members ----------------------------------------------------------------------


def test_pickle_with_a_zip_appended_is_not_read_as_either(tmp_path: Path) -> None:
    """B7: zip readers find the end record at the end, torch looks at the first bytes (and would
    unpickle). ckpt goes by the first bytes too, and refuses to run the pickle."""
    marker = tmp_path / "PWNED"
    evil = kit.pickle_of(kit.glob("os", "system") + kit.tup(kit.ustr(f"touch {marker}")) + kit.REDUCE)
    path = kit.write(tmp_path / "m.pt", evil + kit.build_zip(members()))
    for err in every_api(path).values():
        assert isinstance(err, ckpt.NotACheckpointError) and "plain pickle" in str(err)
    assert not marker.exists()


def test_zip_with_bytes_appended_after_the_end_record(tmp_path: Path) -> None:
    path = kit.write(tmp_path / "m.pt", kit.build_zip(members(), zip64=True) + b"\x80\x02N.")
    assert_all_raise(path, ckpt.CorruptCheckpointError)


def test_pickles_hidden_in_other_members_are_never_run(tmp_path: Path) -> None:
    """B4: only data.pkl is ever interpreted; a pickle stored as a storage record or an extra
    member is bytes, whatever it says."""
    marker = tmp_path / "PWNED"
    evil = kit.pickle_of(kit.glob("os", "system") + kit.tup(kit.ustr(f"touch {marker}")) + kit.REDUCE)
    pkl = kit.dict_pickle({"w": kit.rebuild_v2(kit.pid("0")),
                           "raw": kit.rebuild_v2(kit.pid("1", storage="ByteStorage", numel=len(evil)),
                                                 size=(len(evil),))})
    ms = members(pkl=kit.Member("archive/data.pkl", pkl)) + [
        kit.Member("archive/data/1", evil), kit.Member("archive/extra.pkl", evil),
        kit.Member("archive/constants/0", evil)]
    path = kit.write(tmp_path / "m.pt", kit.build_zip(ms))
    assert ckpt.inspect(path).totals["tensors"] == 2
    out = ckpt.load(path, as_="numpy")
    assert out["raw"].tobytes() == evil
    if kit.HAVE_TORCH:
        assert bytes(ckpt.load(path)["raw"].numpy()) == evil
    assert not marker.exists()


@pytest.mark.parametrize("record,content,words", [
    ("byteorder", b"middle", "unknown byte order"),
    ("byteorder", b"little" * 1000, "at most 64 expected"),
    ("byteorder", b"\xfflittle", "not ASCII"),
    ("version", b"3" * 1000, "at most 64 expected"),
    (".format_version", b"1" * 100_000, "at most 64 expected"),
    (".data/serialization_id", b"\x00" * 65, "at most 64 expected"),
])
def test_bad_small_records(tmp_path: Path, record: str, content: bytes, words: str) -> None:
    """The small text records are read whole, so each is capped and checked before use."""
    ms = [m for m in members() if not m.name.endswith("/" + record)]
    ms.append(kit.Member(f"archive/{record}", content))
    path = kit.write(tmp_path / "m.pt", kit.build_zip(ms))
    assert_all_raise(path, ckpt.CorruptCheckpointError, words)


@pytest.mark.parametrize("mib", [2, 20])  # checked on a second thread; and read + checked in parallel pieces
def test_crc_of_big_records_is_checked_when_loading(tmp_path: Path, mib: int) -> None:
    torch = pytest.importorskip("torch")
    path = tmp_path / "big.pt"
    torch.save({"w": torch.ones(mib << 18)}, path)  # float32: mib MiB
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("big/data/0")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    raw[start + (mib << 19)] ^= 0xFF  # a byte in the middle of the tensor
    path.write_bytes(bytes(raw))
    for flavour in ("torch", "numpy"):
        with pytest.raises(ckpt.CorruptCheckpointError, match="CRC-32 mismatch"):
            ckpt.load(path, as_=flavour)
