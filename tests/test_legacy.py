"""Legacy (non-zip) torch files: read like ``torch.load(weights_only=True)``, safely, lazily.

Fixtures in ``tests/fixtures/formats`` were made by torch 2.13 (``_use_new_zipfile_serialization
=False``, pickle protocols 0 to 5) and recorded with what torch returned; the attack files are
written here by hand with harmless payloads that would create a marker file if anything ran them.
"""

from __future__ import annotations

import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import ckpt
from ckpt.tensors import StorageRef, TensorRef
from ckpt.torch_legacy import LegacyReader
from formats_support import (
    MAGIC, ReadRecorder, Raw, answer, call, eval_call, fixture, glob, legacy_pid, legacy_stream, legacy_tensor,
    pickle2, pk, simple_legacy, system_call,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

READ = ["legacy_p1", "legacy_p2", "legacy_p3", "legacy_p4", "legacy_p5", "legacy_views", "legacy_v3_dtypes"]
PROTOCOLS = {"legacy_p1": 0, "legacy_p2": 2, "legacy_p3": 3, "legacy_p4": 4, "legacy_p5": 5}  # protocol 1 has no PROTO


# -- reading like torch ---------------------------------------------------------------------------


@pytest.mark.parametrize("mmap", [False, True], ids=["read", "mmap"])
@pytest.mark.parametrize("name", READ)
def test_load_matches_recorded_torch(name, mmap, helpers):
    """ckpt.load equals torch.load(weights_only=True) as recorded: values bitwise, strides, offsets,
    Parameter-ness, _metadata, and storage sharing (views, tied tensors, pre-0.4 storage views)."""
    helpers.require_torch()
    result = ckpt.load(fixture(name), mmap=mmap)
    helpers.compare_to_expected(result, answer(name), "torch", check_empty_storages=not mmap)


@pytest.mark.parametrize("mmap", [False, True], ids=["read", "mmap"])
@pytest.mark.parametrize("unsupported_dtype", ["upcast", "raw"])
@pytest.mark.parametrize("name", READ)
def test_numpy_flavour_matches_recorded_torch(name, unsupported_dtype, mmap, helpers):
    result = ckpt.load(fixture(name), as_="numpy", unsupported_dtype=unsupported_dtype, mmap=mmap)
    if name == "legacy_views":
        # torch gives a view storage its own storage object over the base's memory; numpy arrays
        # only have the memory, so the recorded storage groups do not apply (sharing: see below)
        for row in answer(name)["tensors"]:
            assert helpers.array_bytes(result[row["path"]]).hex() == row["data"], row["path"]
        return
    helpers.compare_to_expected(result, answer(name), "numpy", unsupported_dtype=unsupported_dtype)


@pytest.mark.parametrize("name", ["legacy_p2", "legacy_views"])
def test_load_matches_live_torch(name, helpers):
    """Against the installed torch itself, storage identities included."""
    torch = helpers.require_torch()
    reference = torch.load(fixture(name), weights_only=True)
    helpers.compare_loaded(ckpt.load(fixture(name)), reference)


def test_torch_refusals_are_as_recorded():
    """Which of these files torch's own safe loader refuses (ckpt reads them all but protocol 0)."""
    want = {
        "legacy_p0": "Unsupported operand", "legacy_p1": "Unsupported operand 76",
        "legacy_p3": "Unsupported operand 67", "legacy_p4": "Unsupported operand 149",
        "legacy_p5": "Unsupported operand 149", "legacy_v3_dtypes": "has no attribute 'dtype'",
        "legacy_module": "__main__.LegacyNet",
    }
    for name in ["legacy_p0", *READ, "legacy_module"]:
        status = answer(name)["torch_load"]
        if name in want:
            assert status != "ok" and want[name] in status["message"], (name, status)
        else:
            assert status == "ok", (name, status)


def test_storage_views_share_memory_with_their_base(helpers):
    """A pre-0.4 storage view is a slice of its base storage: the tensors share memory, as torch's do."""
    path = fixture("legacy_views")
    arrays = ckpt.load(path, as_="numpy")
    assert np.shares_memory(arrays["view"], arrays["base"]) and arrays["view"].tolist() == [[5.0, 6.0], [7.0, 8.0]]
    if helpers.HAS_TORCH:
        loaded = ckpt.load(path)
        loaded["base"][5] = 100
        assert loaded["view"][0, 0].item() == 100 and loaded["view_again"][1].item() == 100


# -- ckpt.open and inspect ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", [n for n in READ if n != "legacy_views"])
def test_open_references_match_recorded_torch(name):
    """Each tensor at its dotted path: dtype, shape, stride, offset, device, storage key and size."""
    exp = answer(name)
    rows = exp["tensors"]
    with ckpt.open(fixture(name)) as ck:
        refs = list(ck.tensors())
        assert ck.format == "torch-legacy"
        assert [p for p, _ in refs] == [r["path"] for r in rows]
        first: dict[int, TensorRef] = {}
        for (path, ref), row in zip(refs, rows):
            if not row["first"]:
                assert ref is first[row["object"]], path
                continue
            first[row["object"]] = ref
            assert (ref.dtype.name, list(ref.shape), list(ref.stride), ref.offset, ref.device) == (
                row["dtype"], row["shape"], row["stride"], row["storage_offset"], row["device"]), path
            assert (ref.requires_grad, ref.is_parameter) == (row["requires_grad"], row["is_parameter"]), path
            assert type(ref.storage) is StorageRef and ref.storage.key == row["storage"]["key"], path
            assert ref.storage.nbytes == row["storage"]["nbytes"], path
            assert ref.storage.location == row["storage"]["location"], path


@pytest.mark.parametrize("name", [*PROTOCOLS, "legacy_views", "legacy_v3_dtypes", "legacy_module"])
def test_facts(name):
    exp = answer(name)
    with ckpt.open(fixture(name), policy="inspect") as ck:
        facts = ck.facts
    assert facts["format"] == "torch-legacy" and facts["byteorder"] == "little"
    assert facts["legacy_protocol_version"] == 1001
    assert facts["data_offset"] == exp["facts"]["data_offset"]
    assert facts["trailing_bytes"] == 0
    assert facts["little_endian"] is True and facts["type_sizes"] == {"short": 2, "int": 4, "long": 4}
    if name in PROTOCOLS:
        assert facts["pickle_protocol"] == PROTOCOLS[name]
    assert sorted(ck.storages) == sorted(exp["facts"]["keys"]) or name == "legacy_views"


def test_inspect_json_totals_and_sharing():
    doc = ckpt.inspect(fixture("legacy_p2")).as_json()
    rows = [r for r in answer("legacy_p2")["tensors"] if r["first"]]
    assert doc["format"]["format"] == "torch-legacy" and doc["findings"] == []
    assert doc["totals"]["tensors"] == len(rows)
    assert doc["totals"]["storage_bytes"] == sum({r["storage"]["key"]: r["storage"]["nbytes"] for r in rows}.values())
    shared = {row["key"]: row["tensors"] for row in doc["storages"]}
    w_key = next(r["storage"]["key"] for r in rows if r["path"] == "w")
    assert shared[w_key] == ["w", "w_t", "w_row", "w_cols"]
    assert next(t for t in doc["tensors"] if t["path"] == "again")["same_as"] == "w"


def test_whole_module_refused_strictly_and_inspected_as_inert_records():
    """torch.save(model): the classes are unknown globals (strict refuses the first); inspect shows
    the tensors inside the inert module records and names the classes; the stored source never runs."""
    exp = answer("legacy_module")
    path = fixture("legacy_module")
    with pytest.raises(ckpt.UnsafeGlobalError, match="__main__.LegacyNet"):
        ckpt.open(path)
    with pytest.raises(ckpt.UnsafeGlobalError, match="__main__.LegacyNet"):
        ckpt.load(path, as_="numpy")
    summary = ckpt.inspect(path)
    assert [f.name for f in summary.findings] == exp["unknown_globals"]
    got = {t.path: {"dtype": t.dtype, "shape": list(t.shape)} for t in summary.tensors}
    assert got == exp["inspect_tensors"]
    assert any("__main__.LegacyNet" in note and "never runs the source" in note for note in summary.facts["notes"])
    with ckpt.open(path, allow=exp["unknown_globals"]) as ck:
        assert ck.root.global_name == "__main__.LegacyNet"


def test_protocol_0_is_refused_like_torch():
    """Protocol 0 writes persistent ids as str() of a tuple holding a class: unreadable by anyone."""
    for call_ in (lambda p: ckpt.open(p), lambda p: ckpt.load(p, as_="numpy"), ckpt.inspect):
        with pytest.raises(ckpt.CorruptCheckpointError, match="protocol-0 pickle spells it"):
            call_(fixture("legacy_p0"))


@pytest.mark.parametrize("proto", range(6))
def test_sniffed_as_legacy_at_every_protocol(proto, helpers, tmp_path):
    torch = helpers.require_torch()
    path = tmp_path / f"p{proto}.pt"
    torch.save({"a": torch.arange(3)}, path, _use_new_zipfile_serialization=False, pickle_protocol=proto)
    from ckpt.sniff import sniff

    head = path.read_bytes()[:512]
    assert sniff(head, path.stat().st_size) == "torch-legacy"


# -- reading only metadata ------------------------------------------------------------------------------


def _data_spans(path: Path) -> list[tuple[int, int]]:
    """``[start, stop)`` of each storage's bytes, walked here from the facts and size fields."""
    facts = answer(path.stem)["facts"]
    raw = path.read_bytes()
    pos = facts["data_offset"]
    spans = []
    with ckpt.open(path, policy="inspect") as ck:
        sizes = {ref.key: ref.nbytes for ref in ck.storages.values()}
    for key in facts["keys"]:
        (count,) = struct.unpack_from("<q", raw, pos)
        spans.append((pos + 8, pos + 8 + sizes[key]))
        pos += 8 + sizes[key]
    assert pos == len(raw)
    return spans


@pytest.mark.parametrize("name", ["legacy_p2", "legacy_p4", "legacy_v3_dtypes"])
def test_inspect_reads_no_tensor_bytes(name, monkeypatch):
    path = fixture(name)
    spans = _data_spans(path)
    monkeypatch.setattr(StorageRef, "read", lambda *a: pytest.fail("inspect read a storage"))
    monkeypatch.setattr(LegacyReader, "readinto", lambda *a: pytest.fail("inspect read a storage"))
    recorder = ReadRecorder(monkeypatch, path)
    ckpt.inspect(path)
    reads = [(a, b) for a, b in recorder.of(path) if a > 0 or b > 512]  # the 512-byte sniff may see anything
    assert reads
    for start, stop in spans:
        for a, b in reads:
            if a < stop and b > start:
                # the pickle reader reads in chunks; what it reads past the key list must be the
                # size field it needs, or part of a chunk that began inside the pickles
                assert a < answer(name)["facts"]["data_offset"] or (b - a) == 8, (a, b, start, stop)


def test_inspect_of_a_large_legacy_file_reads_a_few_kilobytes(tmp_path, helpers):
    """Process-level I/O (/proc/self/io rchar) while inspecting a 64 MiB legacy file."""
    torch = helpers.require_torch()
    io_file = Path("/proc/self/io")
    if not io_file.exists():
        pytest.skip("needs Linux /proc/self/io")

    def rchar() -> int:
        return next(int(ln.split()[1]) for ln in io_file.read_text().splitlines() if ln.startswith("rchar:"))

    path = tmp_path / "big_legacy.pt"
    sd = {f"layers.{i}.weight": torch.zeros(1 << 20, dtype=torch.float16) for i in range(32)}
    torch.save(sd, path, _use_new_zipfile_serialization=False)
    ckpt.inspect(fixture("legacy_p2"))  # warm up lazy imports
    before = rchar()
    summary = ckpt.inspect(path)
    read = rchar() - before
    assert summary.totals["tensors"] == 32 and summary.totals["nbytes"] == 64 << 20
    assert read < 256 << 10, f"inspect read {read:,} bytes of a {path.stat().st_size:,}-byte file"


# -- damaged files: clear errors, nothing allocated from a declared size ------------------------------


def _write(tmp_path: Path, data: bytes, name: str = "f.pt") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _every_way(path: Path, helpers: Any) -> list[Any]:
    ways = [lambda: ckpt.open(path).close(), lambda: ckpt.inspect(path), lambda: ckpt.load(path, as_="numpy")]
    if helpers.HAS_TORCH:
        ways.append(lambda: ckpt.load(path))
    return ways


@pytest.mark.parametrize("cut", ["magic", "sys_info", "object", "keys", "size_field", "data"])
def test_truncated_files_fail_cleanly(cut, tmp_path, helpers):
    data = simple_legacy()
    at = {"magic": 8, "sys_info": 40, "object": 200, "keys": len(data) - 24 - 8 - 5, "size_field": len(data) - 28,
          "data": len(data) - 3}[cut]
    assert 0 < at < len(data)
    path = _write(tmp_path, data[:at])
    for way in _every_way(path, helpers):
        with pytest.raises(ckpt.CorruptCheckpointError, match="truncated|past the end|ends at"):
            way()


def test_size_field_must_match_the_pickle(tmp_path, helpers):
    data = bytearray(simple_legacy())
    pos = len(data) - 24 - 8
    assert struct.unpack_from("<q", data, pos)[0] == 6
    struct.pack_into("<q", data, pos, 5)
    path = _write(tmp_path, bytes(data))
    for way in _every_way(path, helpers):
        with pytest.raises(ckpt.CorruptCheckpointError, match="holds 5 elements in the file but the pickle declares 6"):
            way()


def test_huge_declared_size_allocates_nothing(tmp_path, helpers):
    """A persistent id declaring 2**60 elements: refused from the file size, before any allocation."""
    main = pickle2({"w": legacy_tensor(legacy_pid("10", 1 << 60), 0, (2,), (1,))})
    path = _write(tmp_path, legacy_stream(main, [("10", 1 << 60, b"\0" * 8)]))
    for way in _every_way(path, helpers):
        with pytest.raises(ckpt.CorruptCheckpointError, match="truncated"):
            way()


@pytest.mark.parametrize("case", ["unknown_key", "missing_key", "twice", "not_strings"])
def test_key_list_must_match_the_pickle(case, tmp_path, helpers):
    keys = {"unknown_key": ["10", "11"], "missing_key": [], "twice": ["10", "10"], "not_strings": [10]}[case]
    data = simple_legacy(keys=pickle.dumps(keys, protocol=2))
    path = _write(tmp_path, data)
    words = {"unknown_key": "never uses", "missing_key": "no data for", "twice": "twice",
             "not_strings": "not a list of strings"}[case]
    for way in _every_way(path, helpers):
        with pytest.raises(ckpt.CorruptCheckpointError, match=words):
            way()


def test_wrong_magic_or_version(tmp_path):
    with pytest.raises(ckpt.UnsupportedFormatError, match="protocol version 1002"):
        ckpt.inspect(_write(tmp_path, simple_legacy(version=pickle.dumps(1002, protocol=2))))
    from ckpt.sniff import sniff

    # a pickle of another number is not sniffed as legacy; one that starts like it but differs is refused
    other = simple_legacy(magic=pickle.dumps(MAGIC + 1, protocol=2))
    assert sniff(other[:512], len(other)) == "pickle"


def test_trailing_bytes_are_noted_and_never_run(tmp_path):
    """Bytes after the last storage (e.g. a second, stacked pickle) are not part of the checkpoint."""
    marker = tmp_path / "MARKER"
    tail = pickle2({"x": system_call(marker)})
    path = _write(tmp_path, simple_legacy(tail=tail))
    summary = ckpt.inspect(path)
    assert summary.facts["trailing_bytes"] == len(tail)
    assert any(f"{len(tail)} bytes follow the last storage" in n for n in summary.facts["notes"])
    # never interpreted; the static scan behind inspect still reports what those bytes would run
    assert [(f.name, f.verdict) for f in summary.findings] == [("posix.system", "dangerous")]
    assert "bytes at" in summary.findings[0].record
    assert "legacy.trailing-data" in {a.name for a in summary.anomalies}
    assert ckpt.load(path, as_="numpy")["w"].tolist() == [[0, 1, 2], [3, 4, 5]]
    assert not marker.exists()


# -- the CVE-2025-32434 family: every pickle of the stream goes through the restricted interpreter ----


def _payload_files(tmp_path: Path, marker: Path) -> dict[str, tuple[bytes, type, str]]:
    """name -> (file bytes, error ckpt.load raises, words of its message)."""
    w = legacy_tensor(legacy_pid("10", 6), 0, (2, 3), (3, 1))
    data = struct.pack("<6f", 0, 1, 2, 3, 4, 5)
    storages = [("10", 6, data)]
    proto0_inst = b"(dp0\nVx\np1\n(S'touch " + str(marker).encode() + b"'\nios\nsystem\np2\ns."
    return {
        # the object's pickle calls os.system (GLOBAL + REDUCE), or builtins.eval
        "object_system": (legacy_stream(pickle2({"w": w, "x": system_call(marker)}), storages),
                          ckpt.UnsafeGlobalError, "posix.system"),
        "object_eval": (legacy_stream(pickle2({"w": w, "x": eval_call(marker)}), storages),
                        ckpt.UnsafeGlobalError, "builtins.eval"),
        # protocol 0 INST (import and call in one opcode)
        "object_inst": (legacy_stream(proto0_inst, []), ckpt.UnsafeGlobalError, "os.system"),
        # the magic number computed by a call instead of written (scanners that skip "non-torch"
        # files miss it; torch's loader would run it)
        "magic_eval": (legacy_stream(pickle2({"w": w}), storages,
                                     magic=b"\x80\x02" + pk(eval_call(marker, str(MAGIC))) + b"."),
                       ckpt.NotACheckpointError, ""),
        "version_system": (legacy_stream(pickle2({"w": w}), storages, version=pickle2(system_call(marker))),
                           ckpt.CorruptCheckpointError, "protocol-version pickle names the global posix.system"),
        "sys_info_system": (legacy_stream(pickle2({"w": w}), storages, sys_info=pickle2({"x": system_call(marker)})),
                            ckpt.CorruptCheckpointError, "sys_info pickle names the global posix.system"),
        "keys_system": (legacy_stream(pickle2({"w": w}), storages, keys=pickle2([system_call(marker)])),
                        ckpt.CheckpointError, "may not reference globals"),
        # a dotted name reaching os through an allowed module (pickle protocol 4 resolves these)
        "dotted": (legacy_stream(pickle2({"w": w, "x": call(glob("torch", "serialization.os.system"), "true")}),
                                 storages), ckpt.UnsafeGlobalError, "torch.serialization.os.system"),
        # SETITEM on a tensor (CVE-2026-24747 in torch's own loader)
        "setitem_on_tensor": (legacy_stream(b"\x80\x02" + pk(w) + pk("k") + pk(1) + b"s.", storages),
                              ckpt.CorruptCheckpointError, "SETITEM on a"),
    }


def test_known_attack_shapes_fail_safely(tmp_path, helpers):
    """Every way in (open, inspect, load in both flavours) refuses or contains each payload, with
    ckpt's own error, and the marker file is never created."""
    marker = tmp_path / "MARKER"
    for name, (data, error, words) in _payload_files(tmp_path, marker).items():
        path = _write(tmp_path, data, f"{name}.pt")
        loads = [lambda: ckpt.load(path, as_="numpy")] + ([lambda: ckpt.load(path)] if helpers.HAS_TORCH else [])
        for load in loads:
            with pytest.raises(error, match=words) as info:
                load()
            assert isinstance(info.value, ckpt.CheckpointError), name
        if error is ckpt.UnsafeGlobalError:
            summary = ckpt.inspect(path)  # inspect contains it: a finding, nothing run
            assert summary.findings and summary.findings[0].verdict == "dangerous", name
        else:
            with pytest.raises(ckpt.CheckpointError):
                ckpt.inspect(path)
        assert not marker.exists(), f"{name}: the payload ran"


def test_module_persistent_id_source_is_never_run(tmp_path, helpers):
    """('module', cls, file, source): the class meets the policy; the source text is never run."""
    marker = tmp_path / "MARKER"
    source = f"import os\nos.system('touch {marker}')\n"
    module_pid = Raw(b"(" + pk("module") + bytes(glob("mymodels", "Net")) + pk("net.py") + pk(source) + b"tQ")
    main = pickle2({"net": Raw(module_pid + b")\x81" + pk({"training": True}) + b"b")})
    path = _write(tmp_path, legacy_stream(main, []))
    with pytest.raises(ckpt.UnsafeGlobalError, match="mymodels.Net"):
        ckpt.load(path, as_="numpy")
    summary = ckpt.inspect(path)
    assert [f.name for f in summary.findings] == ["mymodels.Net"]
    assert any("mymodels.Net" in n for n in summary.facts["notes"])
    loaded = ckpt.load(path, as_="numpy", allow=["mymodels.Net"])
    assert loaded["net"].global_name == "mymodels.Net" and loaded["net"].state == {"training": True}
    assert not marker.exists()


def test_legacy_tar_format_is_named_and_refused_without_extraction(tmp_path, monkeypatch):
    """torch <= 0.1.9 wrote tar archives; torch refuses them under weights_only (its tar path was
    CVE-2025-32434's cousin). ckpt names the format and refuses it; tarfile is never used."""
    import io
    import tarfile

    marker = tmp_path / "MARKER"

    def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))

    path = tmp_path / "old.pt"
    with tarfile.open(path, "w:", format=tarfile.PAX_FORMAT) as tar:
        add(tar, "sys_info", pickle.dumps({"little_endian": True}, protocol=2))
        add(tar, "pickle", pickle2(system_call(marker)))
        add(tar, "storages", pickle.dumps(0, protocol=2))
        add(tar, "tensors", pickle.dumps(0, protocol=2))
    other = tmp_path / "other.tar"
    with tarfile.open(other, "w:") as tar:
        add(tar, "README", b"hello")
        add(tar, "../escape", b"x")
    monkeypatch.setattr(tarfile, "open", lambda *a, **k: pytest.fail("tarfile must not be used"))
    with pytest.raises(ckpt.UnsupportedFormatError, match="torch's tar format .*before 0.1.10") as info:
        ckpt.load(path, as_="numpy")
    assert "Nothing in it was extracted or run" in str(info.value)
    with pytest.raises(ckpt.UnsupportedFormatError, match="tar format"):
        ckpt.inspect(path)
    with pytest.raises(ckpt.NotACheckpointError, match="tar archive \\(members: README, ../escape\\)"):
        ckpt.inspect(other)
    assert not marker.exists() and not (tmp_path.parent / "escape").exists()


def test_trusted_constructors_run_once_despite_two_passes(tmp_path, helpers):
    """Loading a legacy file runs its pickle twice (storages first); a constructor the caller
    trusts is called in the real pass only, and an unknown name fails there, not in the first."""
    calls: list[tuple] = []

    def config(*args: Any) -> dict:
        calls.append(args)
        return {"built_from": args}

    main = pickle2({"w": legacy_tensor(legacy_pid("10", 6), 0, (2, 3), (3, 1)), "cfg": call(glob("mypkg", "Config"), 1, "a")})
    path = _write(tmp_path, legacy_stream(main, [("10", 6, struct.pack("<6f", *range(6)))]))
    loaded = ckpt.load(path, as_="numpy", trust={"mypkg.Config": config})
    assert loaded["cfg"] == {"built_from": (1, "a")} and calls == [(1, "a")]
    with pytest.raises(ckpt.UnsafeGlobalError, match="mypkg.Config"):
        ckpt.load(path, as_="numpy")
    if helpers.HAS_TORCH:
        calls.clear()
        assert ckpt.load(path, trust={"mypkg.Config": config})["w"].tolist() == [[0, 1, 2], [3, 4, 5]]
        assert calls == [(1, "a")]


def test_bare_storages_load_as_torch_gives_them(tmp_path, helpers):
    """A legacy file that stores storages themselves (not only tensors): TypedStorages, shared with
    the tensor that views them, as torch.load returns them."""
    torch = helpers.require_torch()
    t = torch.arange(4, dtype=torch.float32)
    path = tmp_path / "storages.pt"
    torch.save({"typed": t.storage(), "tensor": t}, path, _use_new_zipfile_serialization=False)
    reference = torch.load(path, weights_only=True)
    for mmap in (False, True):
        helpers.compare_loaded(ckpt.load(path, mmap=mmap), reference)
    # torch 2.13 cannot load an UntypedStorage back from this format ('no attribute dtype'); ckpt can
    untyped = tmp_path / "untyped.pt"
    torch.save({"u": torch.arange(3, dtype=torch.int16).untyped_storage()}, untyped, _use_new_zipfile_serialization=False)
    with pytest.raises(AttributeError):
        torch.load(untyped, weights_only=True)
    loaded = ckpt.load(untyped)["u"]
    assert loaded.dtype == torch.uint8 and bytes(loaded.untyped()) == bytes([0, 0, 1, 0, 2, 0])
