"""``ckpt.relocate`` and ``ckpt relocate``: cuda-tagged checkpoints made loadable on a CPU-only
machine, by rewriting the pickle (the bytes torch.save gives the map_location-loaded object) or,
for files ckpt does not rebuild, by patching the storage ids' location operands; bad input is a
clear error with nothing written."""

from __future__ import annotations

import importlib.util
import json
import os
import struct
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

import ckpt
from ckpt.errors import CheckpointError
from ckpt.relocation import location_map
from ckpt.relocation_patch import patch, scan
from ckpt_cli.main import cli

REPO = Path(__file__).resolve().parent.parent
SCHEMA = REPO / "docs" / "schemas" / "relocate-v1.json"


def records(path: Path) -> list[tuple[str, int, bytes]]:
    """Every record of a zip archive in order: name, CRC-32 and bytes (read as bytes, never unpickled)."""
    import zipfile

    with zipfile.ZipFile(path) as z:
        return [(i.filename, i.CRC, z.read(i)) for i in z.infolist()]


def data_offsets(path: Path) -> dict[str, int]:
    """Where each storage record's bytes start in the file (``data/<key>`` -> offset)."""
    with ckpt.open(path) as ck:
        archive = ck.reader.archive
        return {e.name.split("/", 1)[1]: archive.data_offset(e) for e in archive.entries if "/data/" in e.name}


def devices(path: Path) -> dict[str, int]:
    return ckpt.inspect(path).totals["by_device"]


# -- the library ----------------------------------------------------------------------------------


def test_cuda_tagged_to_cpu(tmp_path: Path, helpers: Any) -> None:
    src = helpers.fixture_path("cuda_tagged")
    assert set(devices(src)) == {"cuda:0", "cuda:1", "cpu"}
    dst = tmp_path / "cpu.pt"
    result = ckpt.relocate(src, dst, "cpu")
    assert result.method == "rewrite" and not result.dry_run
    assert [(m.old, m.new) for m in result.moves] == [("cuda:0", "cpu"), ("cuda:1", "cpu"), ("cpu", "cpu"), ("cuda:1", "cpu")]
    assert result.changed == 3 and result.written_bytes == dst.stat().st_size
    assert devices(dst) == {"cpu": sum(devices(src).values())}
    assert zipfile.ZipFile(dst).testzip() is None
    # values kept: ckpt reads the same arrays from both
    a, b = ckpt.load(src, as_="numpy"), ckpt.load(dst, as_="numpy")
    assert list(a) == list(b) and all(np.array_equal(a[k], b[k]) for k in a if isinstance(a[k], np.ndarray))


@pytest.mark.torch
def test_cuda_tagged_loads_in_plain_torch_load_after_relocation(tmp_path: Path, helpers: Any) -> None:
    torch = helpers.require_torch()
    src = helpers.fixture_path("cuda_tagged")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(src, weights_only=True)
    dst = tmp_path / "cpu.pt"
    ckpt.relocate(src, dst, "cpu")
    got = torch.load(dst, weights_only=True)  # no map_location
    want = torch.load(src, weights_only=True, map_location="cpu")
    helpers.compare_loaded(got, want)
    helpers.compare_loaded(torch.load(dst, weights_only=True, mmap=True), want, check_empty_storages=False)
    # and it holds the records torch.save writes for what torch.load(map_location="cpu") returns
    # (only the padding before a storage may differ: see the next test)
    (tmp_path / "t").mkdir()
    torch.save(want, tmp_path / "t" / "cpu.pt")
    assert records(dst) == records(tmp_path / "t" / "cpu.pt")
    src_offsets, dst_offsets = data_offsets(src), data_offsets(dst)
    assert src_offsets.keys() == dst_offsets.keys() and len(src_offsets) > 1
    assert all(off % 64 == 0 for off in dst_offsets.values())


@pytest.mark.torch
def test_big_storages_keep_their_offset_within_a_page(tmp_path: Path, helpers: Any) -> None:
    """Storages of 1 MiB and more are padded to keep their source offset within a 4 KiB page
    (page-aligned kernel copies); every storage stays 64-aligned as torch aligns it."""
    torch = helpers.require_torch()
    sd = {"small": torch.arange(5.0), "w": torch.randn(1 << 18), "v": torch.randn(300_000), "b": torch.ones(3)}
    src = tmp_path / "src.pt"
    torch.save(sd, src)
    dst = tmp_path / "dst.pt"
    ckpt.relocate(src, dst, {"cpu": "cuda:1"})  # a longer location tag: the pickle grows by a few bytes
    got = torch.load(dst, weights_only=True, map_location={"cuda:1": "cpu"})
    assert all(torch.equal(got[k], v) for k, v in sd.items())
    assert torch.equal(torch.load(dst, weights_only=True, mmap=True, map_location={"cuda:1": "cpu"})["w"], sd["w"])
    src_offsets, dst_offsets = data_offsets(src), data_offsets(dst)
    with ckpt.open(src) as ck:
        sizes = {f"data/{t.storage.key}": t.storage.nbytes for _, t in ck.tensors()}
    assert src_offsets.keys() == dst_offsets.keys() == sizes.keys()
    assert all(off % 64 == 0 for off in dst_offsets.values())
    big = [k for k, n in sizes.items() if n >= 1 << 20]
    assert len(big) == 2 and all(dst_offsets[k] % 4096 == src_offsets[k] % 4096 for k in big)


@pytest.mark.torch
def test_to_gpu_tags_and_back(tmp_path: Path, helpers: Any) -> None:
    """Tag a CPU checkpoint as cuda:0/cuda:1 (what a GPU machine writes), then relocate it back."""
    torch = helpers.require_torch()
    src = helpers.fixture_path("training")
    gpu = tmp_path / "gpu.pt"
    ckpt.relocate(src, gpu, {"cpu": "cuda:1"})
    assert set(devices(gpu)) == {"cuda:1"}
    mid = tmp_path / "mid.pt"
    ckpt.relocate(gpu, mid, {"cuda:1": "cuda:0"})
    assert set(devices(mid)) == {"cuda:0"}
    back = tmp_path / "training.pt"
    ckpt.relocate(mid, back, "cpu")
    (tmp_path / "t").mkdir()
    torch.save(torch.load(src, weights_only=True), tmp_path / "t" / "training.pt")
    assert back.read_bytes() == (tmp_path / "t" / "training.pt").read_bytes()
    helpers.compare_loaded(torch.load(gpu, weights_only=True, map_location="cpu"), torch.load(src, weights_only=True))


def test_map_semantics() -> None:
    m = location_map({"cuda:1": "cuda:0"})
    assert (m("cuda:1"), m("cuda:0"), m("cpu")) == ("cuda:0", "cuda:0", "cpu")
    m = location_map({"cuda:1": "cuda:0"}, to="cpu")
    assert (m("cuda:1"), m("cuda:2"), m("mps")) == ("cuda:0", "cpu", "cpu")
    assert location_map("xpu:3")("cuda:0") == "xpu:3"
    assert location_map(b"cpu")("cuda:0") == "cpu"


@pytest.mark.torch
def test_torch_device_map_location(tmp_path: Path, helpers: Any) -> None:
    torch = helpers.require_torch()
    dst = tmp_path / "d.pt"
    ckpt.relocate(helpers.fixture_path("cuda_tagged"), dst, torch.device("cpu"))
    assert set(devices(dst)) == {"cpu"}
    ckpt.relocate(helpers.fixture_path("cuda_tagged"), dst, {"cuda:1": torch.device("cuda", 0)})
    assert set(devices(dst)) == {"cuda:0", "cpu"}


def test_dict_keys_no_storage_carries_are_reported(tmp_path: Path, helpers: Any) -> None:
    r = ckpt.relocate(helpers.fixture_path("cuda_tagged"), tmp_path / "x.pt", {"cuda:7": "cpu", "cuda:0": "cpu"})
    assert r.unmatched == ["cuda:7"] and r.changed == 1


def test_dry_run_writes_nothing_and_plans_what_a_run_does(tmp_path: Path, helpers: Any) -> None:
    src = helpers.fixture_path("cuda_tagged")
    dst = tmp_path / "x.pt"
    plan = ckpt.relocate(src, dst, {"cuda:1": "cuda:0"}, dry_run=True)
    assert not dst.exists() and plan.dry_run and plan.written_bytes is None
    done = ckpt.relocate(src, dst, {"cuda:1": "cuda:0"})
    assert plan.moves == done.moves and plan.method == done.method


@pytest.mark.parametrize("bad", ["cuad:0", "gpu", "cpu:0", "mps:1x", "", "meta", "CUDA:0", "cuda:-1", 5, None])
def test_unknown_devices_are_refused_and_nothing_written(bad: Any, tmp_path: Path, helpers: Any) -> None:
    dst = tmp_path / "x.pt"
    with pytest.raises(CheckpointError) as info:
        ckpt.relocate(helpers.fixture_path("cuda_tagged"), dst, bad)
    assert "unknown" in str(info.value) or "nothing to relocate" in str(info.value) or "must be" in str(info.value)
    with pytest.raises(CheckpointError):
        ckpt.relocate(helpers.fixture_path("cuda_tagged"), dst, {"cuda:0": bad})
    assert not dst.exists()


def test_meta_is_explained(helpers: Any, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="map_location='meta'"):
        ckpt.relocate(helpers.fixture_path("cuda_tagged"), tmp_path / "x.pt", "meta")


def test_a_callable_map_location_is_refused(helpers: Any, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="callable"):
        ckpt.relocate(helpers.fixture_path("cuda_tagged"), tmp_path / "x.pt", lambda s, loc: s)


def test_source_and_destination_must_differ(tmp_path: Path, helpers: Any) -> None:
    src = tmp_path / "m.pt"
    src.write_bytes(helpers.fixture_path("cuda_tagged").read_bytes())
    before = src.read_bytes()
    link = tmp_path / "link.pt"
    link.symlink_to(src)
    hard = tmp_path / "hard.pt"
    os.link(src, hard)
    for dst in (src, tmp_path / "." / "m.pt", link, hard):
        with pytest.raises(CheckpointError, match="the destination is the source"):
            ckpt.relocate(src, dst, "cpu")
    assert src.read_bytes() == before


def test_unreadable_sources_are_clear_errors(tmp_path: Path) -> None:
    dst = tmp_path / "out.pt"
    with pytest.raises(CheckpointError, match="no such file"):
        ckpt.relocate(tmp_path / "missing.pt", dst, "cpu")
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError):
        ckpt.relocate(tmp_path / "text.pt", dst, "cpu")
    (tmp_path / "folder").mkdir()
    with pytest.raises(CheckpointError):
        ckpt.relocate(tmp_path / "folder", dst, "cpu")
    assert not dst.exists()


def test_damaged_source_leaves_destination_alone(tmp_path: Path, helpers: Any) -> None:
    raw = bytearray(helpers.fixture_path("cuda_tagged").read_bytes())
    zf = zipfile.ZipFile(helpers.fixture_path("cuda_tagged"))
    info = zf.getinfo("cuda_tagged/data/0")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    head = struct.unpack_from("<H", raw, info.header_offset + 28)[0]
    start = info.header_offset + 30 + len(info.filename.encode()) + head
    raw[start] ^= 0xFF  # a flipped tensor byte: the stored CRC no longer matches
    src = tmp_path / "bad.pt"
    src.write_bytes(bytes(raw))
    dst = tmp_path / "out.pt"
    dst.write_bytes(b"previous")
    # the raw copy keeps the stored CRC, so ckpt's reader still notices the damage in the copy
    ckpt.relocate(src, dst, "cpu")
    with pytest.raises(CheckpointError, match="CRC"):
        ckpt.load(dst, as_="numpy")


def test_big_endian_deflated_and_crc_less_files(tmp_path: Path, helpers: Any) -> None:
    for name in ("big_endian", "deflated", "no_crc", "minimal_zip"):
        src = helpers.fixture_path(name)
        dst = tmp_path / f"{name}.pt"
        ckpt.relocate(src, dst, "cpu")
        assert zipfile.ZipFile(dst).testzip() is None, name
        with ckpt.open(src) as ck:
            order = ck.facts["byteorder"]
        with ckpt.open(dst) as ck:  # records are copied as they are, in their byte order
            assert ck.facts["byteorder"] == order and ck.facts["crc32"] == "present"
        a, b = ckpt.load(src, as_="numpy", unsupported_dtype="raw"), ckpt.load(dst, as_="numpy", unsupported_dtype="raw")
        for k in a:
            if isinstance(a[k], np.ndarray):
                assert np.array_equal(a[k], b[k], equal_nan=a[k].dtype.kind in "fc"), (name, k)


def test_relocate_never_imports_torch(tmp_path: Path, helpers: Any) -> None:
    code = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None
        import ckpt
        r = ckpt.relocate({str(helpers.fixture_path("cuda_tagged"))!r}, {str(tmp_path / "o.pt")!r}, "cpu")
        print(r.changed)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "3", proc.stderr[-2000:]


# -- files ckpt does not rebuild: patched -----------------------------------------------------------


@pytest.mark.torch
def test_quantized_file_is_patched_and_loads_in_torch(tmp_path: Path, helpers: Any) -> None:
    torch = helpers.require_torch()
    src = helpers.fixture_path("quantized")
    gpu = tmp_path / "gpu.pt"
    r = ckpt.relocate(src, gpu, {"cpu": "cuda:1"})
    assert r.method == "patch" and r.changed == len(r.moves) > 0 and "quantized" in r.notes[0]
    back = tmp_path / "cpu.pt"
    ckpt.relocate(gpu, back, "cpu")
    helpers.compare_loaded(torch.load(back, weights_only=True), torch.load(src, weights_only=True))
    helpers.compare_loaded(torch.load(gpu, weights_only=True, map_location="cpu"), torch.load(src, weights_only=True))


def test_unknown_globals_are_kept_and_only_locations_change(tmp_path: Path, helpers: Any) -> None:
    src = helpers.fixture_path("unknown_global")
    dst = tmp_path / "x.pt"
    r = ckpt.relocate(src, dst, {"cpu": "cuda:0"})
    assert r.method == "patch" and "argparse.Namespace" in r.notes[0]
    a, b = ckpt.inspect(src).as_json(), ckpt.inspect(dst).as_json()
    assert [t["device"] for t in b["tensors"]] == ["cuda:0"] * len(a["tensors"])
    assert [v["repr"] for v in b["values"]] == [v["repr"] for v in a["values"]]
    assert [f["global"] for f in b["findings"]] == [f["global"] for f in a["findings"]]
    torch = pytest.importorskip("torch")
    import argparse

    with torch.serialization.safe_globals([argparse.Namespace]):
        got = torch.load(dst, weights_only=True, map_location="cpu")
        want = torch.load(src, weights_only=True)
    assert list(got) == list(want) and vars(got["args"]) == vars(want["args"])
    helpers.compare_loaded({k: v for k, v in got.items() if k != "args"}, {k: v for k, v in want.items() if k != "args"})


# A hand-made pickle: the location string of a storage id is memoized and shared with user data.

def _u(s: str) -> bytes:
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def _pid(key: str, location: bytes, numel: int = 2) -> bytes:
    return b"(" + _u("storage") + b"ctorch\nFloatStorage\n" + _u(key) + location + b"K" + bytes([numel]) + b"tQ"


def _tensor(key: str, location: bytes) -> bytes:
    return (b"ctorch._utils\n_rebuild_tensor_v2\n(" + _pid(key, location) + b"K\x00K\x02\x85K\x01\x85\x89"
            b"ccollections\nOrderedDict\n)RtR")


def _zip(path: Path, pickle_bytes: bytes, n: int = 2) -> None:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("m/data.pkl", pickle_bytes)
        z.writestr("m/data/0", struct.pack("<2f", 1.0, 2.0))
        z.writestr("m/data/1", struct.pack("<2f", 3.0, 4.0))
        z.writestr("m/version", "3\n")


@pytest.mark.parametrize("order", ["user_first", "tensor_first"])
def test_patching_keeps_shared_strings_for_everyone_else(order: str, tmp_path: Path) -> None:
    if order == "user_first":  # {'dev': 'cuda:0' (memo 5), 'a': tensor(location=memo 5), 'b': tensor(loc 'cuda:0')}
        body = (b"}(" + _u("dev") + _u("cuda:0") + b"q\x05" + _u("a") + _tensor("0", b"h\x05")
                + _u("b") + _tensor("1", _u("cuda:0")) + _u("again") + b"h\x05" + b"u")
    else:  # the tensor's location is memoized (memo 7) and the user value fetches it
        body = (b"}(" + _u("a") + _tensor("0", _u("cuda:0") + b"q\x07") + _u("dev") + b"h\x07"
                + _u("b") + _tensor("1", b"h\x07") + _u("again") + b"h\x07" + b"u")
    data = b"\x80\x02" + body + b"."
    found = scan(data)
    assert [p.location for p in found.pids] == ["cuda:0", "cuda:0"]
    new, changed = patch(data, found, location_map("cpu"))
    assert changed == 2
    src = tmp_path / "m.pt"
    _zip(src, data)
    patched = tmp_path / "p.pt"
    _zip(patched, new)
    obj = ckpt.load(patched, as_="numpy")
    assert obj["dev"] == "cuda:0" and obj["again"] == "cuda:0"
    assert set(devices(patched)) == {"cpu"} and set(devices(src)) == {"cuda:0"}
    assert np.array_equal(obj["a"], [1.0, 2.0]) and np.array_equal(obj["b"], [3.0, 4.0])


def test_protocol_4_pickles_are_rewritten_and_never_patched(tmp_path: Path, helpers: Any) -> None:
    """A protocol-4 pickle cannot be patched in place (frames, implicit memo indices), but ckpt
    reads it, so relocation pickles it again at protocol 2, which torch's weights_only reads."""
    src = helpers.fixture_path("protocol_4")
    with zipfile.ZipFile(src) as z:
        data = z.read(next(n for n in z.namelist() if n.endswith("/data.pkl")))
    with pytest.raises(ckpt.UnsupportedFormatError, match="protocol 4"):
        scan(data)
    dst = tmp_path / "x.pt"
    assert ckpt.relocate(src, dst, "cpu").method == "rewrite"
    with ckpt.open(dst) as ck:
        assert ck.facts["pickle_protocol"] == 2


# -- the command line ---------------------------------------------------------------------------------


def run(*args: Any) -> Any:
    return CliRunner(env={"COLUMNS": "200"}).invoke(cli, [str(a) for a in args], catch_exceptions=False)


def _schema_checker() -> Any:
    spec = importlib.util.spec_from_file_location("ckpt_test_docs", REPO / "tests" / "test_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.SchemaChecker(json.loads(SCHEMA.read_text(encoding="utf-8")))


def test_cli_json_follows_the_schema(tmp_path: Path, helpers: Any) -> None:
    checker = _schema_checker()
    docs = []
    for extra in (["--to", "cpu"], ["--map", "cuda:1=cuda:0", "--map", "cuda:9=cpu", "--dry-run"]):
        result = run("relocate", helpers.fixture_path("cuda_tagged"), tmp_path / "a.pt", *extra, "--json")
        assert result.exit_code == 0, result.output
        docs.append(json.loads(result.stdout))
    result = run("relocate", helpers.fixture_path("unknown_global"), tmp_path / "b.pt", "--to", "cuda:0", "--json")
    docs.append(json.loads(result.stdout))
    for doc in docs:
        assert checker.validate(doc) == []
    assert docs[0]["method"] == "rewrite" and docs[0]["totals"]["changed"] == 3 and docs[0]["map"] == {"*": "cpu"}
    assert docs[1]["dry_run"] and docs[1]["written_bytes"] is None and docs[1]["unmatched"] == ["cuda:9"]
    assert docs[2]["method"] == "patch" and docs[2]["notes"]
    missing = checker.declared_properties() - checker.seen
    assert not missing, f"schema properties never emitted: {sorted(missing)}"
    example = json.loads((REPO / "docs" / "schemas" / "relocate-v1.example.json").read_text(encoding="utf-8"))
    assert checker.validate(example) == []


def test_cli_human_output(tmp_path: Path, helpers: Any) -> None:
    result = run("relocate", helpers.fixture_path("cuda_tagged"), tmp_path / "a.pt", "--to", "cpu")
    assert result.exit_code == 0
    out = result.output
    assert "rewrote the pickle" in out and "cuda:1" in out and "3 of 4 storages change device" in out
    result = run("relocate", helpers.fixture_path("cuda_tagged"), tmp_path / "b.pt", "--map", "cuda:7=cpu", "--dry-run")
    assert result.exit_code == 0 and "dry run: nothing written" in result.output
    assert "no storage is tagged 'cuda:7'" in result.output
    assert not (tmp_path / "b.pt").exists()


@pytest.mark.parametrize("args,message", [
    (["--to", "cuad:0"], "unknown target device 'cuad:0'"),
    (["--map", "cuda:0"], "is not FROM=TO"),
    ([], "say where to"),
])
def test_cli_errors(args: list[str], message: str, tmp_path: Path, helpers: Any) -> None:
    result = run("relocate", helpers.fixture_path("cuda_tagged"), tmp_path / "a.pt", *args)
    assert result.exit_code == 2
    assert message in result.output
    assert not (tmp_path / "a.pt").exists()


def test_cli_same_file_and_missing_file(tmp_path: Path, helpers: Any) -> None:
    src = tmp_path / "m.pt"
    src.write_bytes(helpers.fixture_path("cuda_tagged").read_bytes())
    result = run("relocate", src, src, "--to", "cpu")
    assert result.exit_code == 2 and "the destination is the source" in result.output
    result = run("relocate", tmp_path / "nope.pt", tmp_path / "o.pt", "--to", "cpu")
    assert result.exit_code == 2 and "no such file" in result.output and result.output.count("\n") == 1
