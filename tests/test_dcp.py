"""torch.distributed.checkpoint (DCP) folders: read, inspect, write, refuse bad ones (ckpt/dcp.py).

Every folder is written by real torch at test time: single-process ones with
``torch.distributed.checkpoint.save(..., no_dist=True)`` and genuinely sharded ones written by
two CPU processes over gloo with DTensor shards (``tests/dcp_writer.py``, once per module).
torch's own ``format_utils.dcp_to_torch_save`` output, read with ``torch.load(weights_only=True)``,
is the oracle. Malicious ``.metadata`` files are made by ``pickle.dump`` of objects whose
``__reduce__`` names ``os.system`` (a harmless ``touch``); nothing here ever loads a pickle.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import ckpt
from ckpt.dcp import DcpReader

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch
dcp = pytest.importorskip("torch.distributed.checkpoint")

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DCP warns that no process group is initialised
        yield


def sample_state():
    g = torch.Generator().manual_seed(1)
    return {
        "model": {
            "w": torch.randn(6, 4, generator=g),
            "b": torch.randn(4, generator=g).to(torch.bfloat16),
            "i": torch.arange(5, dtype=torch.int32),
            "flag": torch.tensor([True, False]),
            "scalar": torch.tensor(3.5, dtype=torch.float64),
            "empty": torch.zeros(0, 3),
        },
        "optim": {"state": {"0": {"exp_avg": torch.randn(6, 4, generator=g)}}, "param_groups": [{"lr": 0.1}]},
        "epoch": 3,
        "name": "run-1",
    }


def save_single(folder: Path, state=None, writer=None) -> Path:
    dcp.save(state if state is not None else sample_state(), checkpoint_id=str(folder), storage_writer=writer,
             no_dist=True)
    return folder


def oracle(folder: Path):
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    out = folder.parent / (folder.name + ".oracle.pt")
    dcp_to_torch_save(str(folder), str(out))
    return torch.load(out, weights_only=True)


@pytest.fixture
def single(tmp_path) -> Path:
    return save_single(tmp_path / "single")


@pytest.fixture(scope="module")
def sharded(tmp_path_factory) -> Path:
    """``<root>/torch_save`` and ``<root>/safetensors``, written by 2 gloo ranks (DTensor shards)."""
    root = tmp_path_factory.mktemp("dcp-sharded")
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    subprocess.run([sys.executable, str(REPO / "tests" / "dcp_writer.py"), str(root)], check=True, env=env,
                   timeout=300, capture_output=True)
    return root


# -- reading -------------------------------------------------------------------------------------------


def test_load_equals_dcp_to_torch_save(single, helpers):
    expected = oracle(single)
    helpers.compare_loaded(ckpt.load(single), expected, check_storage_identity=False)
    helpers.compare_loaded(ckpt.load(single / ".metadata"), expected, check_storage_identity=False)


def test_numpy_flavour_needs_no_torch_objects(single):
    got = ckpt.load(single, as_="numpy")
    ref = oracle(single)
    assert isinstance(got["model"]["w"], np.ndarray)
    np.testing.assert_array_equal(got["model"]["w"], ref["model"]["w"].numpy())
    assert got["epoch"] == 3 and got["name"] == "run-1" and got["optim"]["param_groups"] == [{"lr": 0.1}]


def test_open_gives_logical_tensors_without_reading_chunks(single, monkeypatch):
    with ckpt.open(single) as ck:
        assert ck.format == "dcp"
        names = [name for name, _ in ck.tensors()]
        assert names[:2] == ["model.w", "model.b"]
        reader = ck.reader
        assert isinstance(reader, DcpReader)
        t = reader.tensor("model.w")
        assert (t.dtype.name, t.shape, t.nbytes, len(t.chunks)) == ("float32", (6, 4), 96, 1)
        buf = bytearray(t.nbytes)
        t.read_into(memoryview(buf))
        assert bytes(buf) == oracle(single)["model"]["w"].numpy().tobytes()
        with pytest.raises(ValueError, match="96 bytes"):
            t.read_into(memoryview(bytearray(8)))


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["torch_save", "safetensors"])
def test_sharded_by_two_ranks(sharded, fmt, helpers):
    expected = oracle(sharded / "torch_save")  # torch's own reader cannot read its safetensors .distcp files
    folder = sharded / fmt
    helpers.compare_loaded(ckpt.load(folder), expected, check_storage_identity=False)
    facts = ckpt.inspect(folder).facts
    assert facts["format"] == "dcp" and facts["serialization"] == fmt
    assert [(f["file"], f["rank"]) for f in facts["files"]] == [("__0_0.distcp", 0), ("__1_0.distcp", 1)]
    by_name = {t["name"]: t for t in facts["tensors"]}
    assert [c["offsets"] for c in by_name["model.embed.weight"]["chunks"]] == [[0, 0], [5, 0]]  # Shard(0)
    assert [c["offsets"] for c in by_name["model.proj.weight"]["chunks"]] == [[0, 0], [0, 4]]  # Shard(1)
    assert [c["sizes"] for c in by_name["model.odd"]["chunks"]] == [[4], [3]]  # uneven
    assert len(by_name["model.norm.bias"]["chunks"]) == 1  # replicated: saved once
    for name, t in by_name.items():
        assert sum(np.prod(c["sizes"]) for c in t["chunks"]) == np.prod(t["shape"])
    arrays = ckpt.load(folder, as_="numpy")
    np.testing.assert_array_equal(arrays["model"]["odd"], np.arange(7))
    # ckpt scan lays every .distcp file out through .metadata: clean, every blob accounted for
    report = ckpt.scan(folder)
    assert report.exit_code() == 0 and report.verdict == "safe", report.as_json()
    assert {f.format for f in report.files if f.path.endswith(".distcp")} == {"distcp"}
    assert not ckpt.inspect(folder).as_json()["anomalies"]


@pytest.mark.slow
def test_logical_tree_and_iter_chunks(sharded):
    """What ckpt convert streams from: LogicalTensors in the nested tree, read piece by piece."""
    from ckpt.dcp import LogicalTensor

    expected = oracle(sharded / "torch_save")
    for fmt in ("torch_save", "safetensors"):
        with ckpt.open(sharded / fmt) as ck:
            tree, findings = ck.reader.logical_tree()
            assert findings == [] and tree["step"] == 42
            for name in ("embed.weight", "proj.weight", "odd", "norm.bias"):
                t = tree["model"][name]
                assert isinstance(t, LogicalTensor)
                want = expected["model"][name]
                raw = b"".join(bytes(p) for p in t.iter_chunks(64))
                assert raw == want.view(torch.uint8).numpy().tobytes() if want.dtype == torch.bfloat16 \
                    else raw == want.numpy().tobytes()


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["torch_save", "safetensors"])
def test_row_shards_are_copied_file_to_file(sharded, fmt, tmp_path, monkeypatch):
    """A Shard(0) tensor's chunks lie in the files as its rows: convert copies them file to file
    (the ranges hold exactly the tensor's bytes), never through Python objects; a Shard(1) tensor
    is assembled in memory."""
    from safetensors import safe_open

    import ckpt.zipwrite as zipwrite

    expected = oracle(sharded / "torch_save")
    folder = sharded / fmt
    with ckpt.open(folder) as ck:
        reader = ck.reader
        ranges = reader.tensor("model.embed.weight").source_ranges()
        assert ranges is not None and len(ranges) == 2
        got = b"".join(os.pread(fd, n, off) for fd, off, n in ranges)
        assert got == expected["model"]["embed.weight"].numpy().tobytes()
        assert reader.tensor("model.proj.weight").source_ranges() is None  # Shard(1): columns
    copied = []
    real = zipwrite.ZipSink.copy_later
    monkeypatch.setattr(zipwrite.ZipSink, "copy_later", lambda self, *a: (copied.append(a[-1]), real(self, *a))[1])
    out = tmp_path / "out.safetensors"
    ckpt.convert(folder, out, fsync=False)
    assert sum(copied) >= expected["model"]["embed.weight"].nbytes
    with safe_open(str(out), "pt") as f:
        for name, want in expected["model"].items():
            assert torch.equal(f.get_tensor(f"model.{name}"), want), name


@pytest.mark.slow
def test_verify_folders_two_ranks_wrote(sharded):
    """ckpt verify of folders torch wrote: every torch.save archive CRC-checked; safetensors
    chunks (no checksums) said so in a note."""
    report = ckpt.verify(sharded / "torch_save")
    assert report.ok and report.format == "dcp" and report.tensors == 4, report.as_json()
    assert [f["file"] for f in report.files] == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    assert report.records > 0 and not report.notes
    st = ckpt.verify(sharded / "safetensors")
    assert st.ok and st.tensors == 4 and any("no checksums" in n for n in st.notes), st.as_json()


@pytest.mark.slow
def test_truncated_row_shard_is_never_copied(sharded, tmp_path):
    """A data file cut short inside a chunk: no kernel copy of bytes past its end; a clear error,
    and no output file."""
    import shutil

    folder = tmp_path / "cut"
    shutil.copytree(sharded / "torch_save", folder)
    with ckpt.open(folder) as ck:
        t = ck.reader.tensor("model.embed.weight")
        _fd, offset, n = t.source_ranges()[-1]  # the last rows: the chunk that starts lowest down
        name = max(t.chunks, key=lambda c: c.offsets).file
    path = folder / name
    path.write_bytes(path.read_bytes()[: offset + n // 2])
    out = tmp_path / "out.safetensors"
    with pytest.raises(ckpt.CorruptCheckpointError):
        ckpt.convert(folder, out, fsync=False)
    assert not out.exists() and not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_hf_layout_single_process(tmp_path):
    from torch.distributed.checkpoint import HuggingFaceStorageReader, HuggingFaceStorageWriter

    state = {"w": torch.arange(12.0).reshape(3, 4), "b": torch.ones(2, dtype=torch.bfloat16)}
    folder = tmp_path / "hf"
    dcp.save(state, storage_writer=HuggingFaceStorageWriter(str(folder), save_distributed=True), no_dist=True)
    assert not (folder / ".metadata").exists()
    target = {k: torch.zeros_like(v) for k, v in state.items()}
    dcp.load(target, storage_reader=HuggingFaceStorageReader(str(folder)), no_dist=True)
    got = ckpt.load(folder)
    assert set(got) == set(state) and all(torch.equal(got[k], target[k]) for k in state)
    facts = ckpt.inspect(folder).facts
    assert facts["metadata"] is None and facts["serialization"] == "safetensors" and facts["files"][0]["rank"] == 0


@pytest.mark.slow
def test_hf_layout_by_two_ranks(sharded, helpers):
    expected = oracle(sharded / "torch_save")["model"]
    got = ckpt.load(sharded / "hf")
    assert sorted(got) == sorted(f"model.{k}" for k in expected)
    for k, v in expected.items():
        helpers.compare_loaded(got[f"model.{k}"], v, check_storage_identity=False)
    facts = ckpt.inspect(sharded / "hf").facts
    assert [f["rank"] for f in facts["files"]] == [0, 1]
    embed = next(t for t in facts["tensors"] if t["name"] == "model.embed.weight")
    assert sorted(c["offsets"] for c in embed["chunks"]) == [[0, 0], [5, 0]]


def test_hf_layout_with_overlapping_chunks(tmp_path):
    from safetensors.torch import save_file

    folder = tmp_path / "hf"
    folder.mkdir()
    for rank, offsets in enumerate(([0, 0], [1, 0])):
        save_file({"w": torch.ones(2, 4)}, str(folder / f"shard-0000{rank + 1}-model-00001-of-00001.safetensors"),
                  metadata={"DCP_SHARDING_INFO": json.dumps({"w": {"saved_offsets": offsets}})})
    _expect_error(folder, ckpt.CorruptCheckpointError, "overlap")


# -- inspect -------------------------------------------------------------------------------------------


def test_inspect_json_and_cli(single):
    from click.testing import CliRunner

    from ckpt_cli.main import cli

    result = CliRunner().invoke(cli, ["inspect", str(single), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    fmt = doc["format"]
    assert fmt["format"] == "dcp" and fmt["files"][0]["file"] == "__0_0.distcp"
    w = next(t for t in fmt["tensors"] if t["name"] == "model.w")
    start, stop = w["chunks"][0]["byte_range"]
    assert 0 <= start < stop <= fmt["files"][0]["size"]
    assert {i["name"] for i in fmt["items"]} == {"optim.param_groups.0.lr", "epoch", "name"}
    assert {t["path"] for t in doc["tensors"]} >= {"model.w", "optim.state.0.exp_avg"}
    assert doc["anomalies"] == [] and doc["findings"] == []  # no file-level scan of the folder's files
    result = CliRunner().invoke(cli, ["inspect", str(single)])
    assert result.exit_code == 0 and "dcp" in result.output and "__0_0.distcp" in result.output


def test_inspect_reads_no_chunk(single, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("a chunk was read")

    monkeypatch.setattr(DcpReader, "assemble", boom)
    summary = ckpt.inspect(single)
    assert summary.facts["tensor_bytes"] == sum(t.nbytes for t in summary.tensors)


# -- bad input -----------------------------------------------------------------------------------------


class TamperWriter(dcp.FileSystemWriter):
    """Changes the Metadata torch is about to pickle, to make bad folders with torch's own writer."""

    def __init__(self, path, change):
        super().__init__(path)
        self.change = change

    def finish(self, metadata, results):
        super().finish(metadata, results)
        # finish() sets storage_data; write the changed metadata over the good one
        self.change(metadata)
        import pickle

        with open(os.path.join(self.path, ".metadata"), "wb") as f:
            pickle.dump(metadata, f)


def tampered(tmp_path: Path, change) -> Path:
    folder = tmp_path / "bad"
    return save_single(folder, {"w": torch.arange(12.0).reshape(3, 4), "n": 1}, writer=TamperWriter(str(folder), change))


def _expect_error(folder: Path, error: type, words: str) -> None:
    for call in (ckpt.inspect, ckpt.load, lambda p: ckpt.load(p, as_="numpy")):
        with pytest.raises(error, match=words):
            call(folder)


def _cli_error(folder: Path) -> str:
    from click.testing import CliRunner

    from ckpt_cli.main import cli

    result = CliRunner().invoke(cli, ["inspect", str(folder)])
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1, result.output
    return result.output


def _chunks(md):
    return md.state_dict_metadata["w"].chunks


def test_chunk_outside_the_shape(tmp_path):
    def change(md):
        _chunks(md)[0].sizes = torch.Size([4, 4])

    folder = tampered(tmp_path, change)
    _expect_error(folder, ckpt.CorruptCheckpointError, "outside the tensor's shape")
    assert "outside" in _cli_error(folder)


def test_overlapping_chunks(tmp_path):
    from torch.distributed.checkpoint.metadata import ChunkStorageMetadata, MetadataIndex

    def change(md):
        first = _chunks(md)[0]
        first.sizes = torch.Size([2, 4])
        _chunks(md).append(ChunkStorageMetadata(offsets=torch.Size([1, 0]), sizes=torch.Size([2, 4])))
        info = md.storage_data[MetadataIndex("w", [0, 0])]
        md.storage_data[MetadataIndex("w", [1, 0])] = info

    _expect_error(tampered(tmp_path, change), ckpt.CorruptCheckpointError, "overlap")


def test_chunks_that_leave_a_hole(tmp_path):
    def change(md):
        _chunks(md)[0].sizes = torch.Size([2, 4])

    _expect_error(tampered(tmp_path, change), ckpt.CorruptCheckpointError, "stored nowhere")


def test_huge_shape_is_bounded_by_the_files(tmp_path):
    """A .metadata claiming a 48 TB tensor cannot make ckpt allocate it: each chunk's bytes must lie
    in its byte range."""
    def change(md):
        md.state_dict_metadata["w"].size = torch.Size([3, 4 * 10**12])
        _chunks(md)[0].sizes = torch.Size([3, 4 * 10**12])

    _expect_error(tampered(tmp_path, change), ckpt.CorruptCheckpointError, "needs 48,000,000,000,000 bytes")


def test_file_name_outside_the_folder(tmp_path):
    def change(md):
        for info in md.storage_data.values():
            info.relative_path = "../elsewhere.distcp"

    _expect_error(tampered(tmp_path, change), ckpt.CorruptCheckpointError, "not a file name inside the folder")


def test_byte_range_past_the_end(tmp_path):
    def change(md):
        for info in md.storage_data.values():
            info.offset += 10_000_000

    _expect_error(tampered(tmp_path, change), ckpt.CorruptCheckpointError, "truncated")


def test_chunk_that_disagrees_with_metadata(tmp_path):
    def change(md):
        md.state_dict_metadata["w"].properties.dtype = torch.float64

    folder = tampered(tmp_path, change)
    with pytest.raises(ckpt.CorruptCheckpointError, match="holds float32"):
        ckpt.load(folder)


def test_missing_distcp_file(single):
    (single / "__0_0.distcp").unlink()
    _expect_error(single, ckpt.CorruptCheckpointError, "not in the folder")
    assert "__0_0.distcp" in _cli_error(single)


def test_truncated_distcp_file(single):
    data = (single / "__0_0.distcp").read_bytes()
    (single / "__0_0.distcp").write_bytes(data[: len(data) // 2])
    _expect_error(single, ckpt.CorruptCheckpointError, "truncated")


def test_damaged_chunk_bytes(single):
    path = single / "__0_0.distcp"
    data = bytearray(path.read_bytes())
    with ckpt.open(single) as ck:
        chunk = ck.reader.tensor("model.w").chunks[0]
    tail = data[chunk.offset: chunk.offset + chunk.length]
    at = chunk.offset + tail.rfind(b"PK\x01\x02") - 40  # inside the last record's data
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ckpt.CheckpointError):
        ckpt.load(single)


def test_damaged_big_chunk(tmp_path):
    """Chunks over 2 MiB are read piece by piece with their CRC computed alongside: still checked."""
    folder = save_single(tmp_path / "big", {"w": torch.arange(3 * 2**18 + 5, dtype=torch.float32)})
    assert torch.equal(ckpt.load(folder)["w"], torch.arange(3 * 2**18 + 5, dtype=torch.float32))
    path = folder / "__0_0.distcp"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ckpt.CorruptCheckpointError, match="CRC-32 mismatch"):
        ckpt.load(folder)


@pytest.mark.parametrize("raw, words", [
    (b"hello world", "not a pickle"),
    (b"", "empty"),
    (b"\x80\x04\x95\x03\x00\x00\x00\x00\x00\x00\x00K\x01.", "not torch's Metadata"),
    (b"\x80\x04}\x94(", "pickle"),
])
def test_metadata_that_is_not_dcp(single, raw, words):
    (single / ".metadata").write_bytes(raw)
    with pytest.raises(ckpt.CheckpointError, match=words):
        ckpt.load(single)
    _cli_error(single)


class _Marker:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_metadata_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"

    def change(md):
        md.storage_meta.checkpoint_id = _Marker(marker)

    folder = tampered(tmp_path, change)
    assert b"system" in (folder / ".metadata").read_bytes()
    with pytest.raises(ckpt.UnsafeGlobalError, match="system"):
        ckpt.load(folder)
    summary = ckpt.inspect(folder)
    assert [f.verdict for f in summary.findings] == ["dangerous"]
    assert summary.findings[0].record == ".metadata"
    from click.testing import CliRunner

    from ckpt_cli.main import cli

    assert CliRunner().invoke(cli, ["inspect", str(folder)]).exit_code == 1
    assert not marker.exists()


def test_malicious_metadata_root(tmp_path, single):
    marker = tmp_path / "pwned"
    import pickle

    (single / ".metadata").write_bytes(pickle.dumps(_Marker(marker), protocol=4))
    with pytest.raises(ckpt.UnsafeGlobalError, match="system"):
        ckpt.load(single)
    with pytest.raises(ckpt.UnsafeGlobalError, match="system"):
        ckpt.inspect(single)
    _cli_error(single)
    assert not marker.exists()


def test_malicious_blob_inside_a_distcp_file(tmp_path):
    """A non-tensor item whose torch.save blob calls os.system: refused by load, a finding in inspect."""
    marker = tmp_path / "pwned"
    folder = tmp_path / "blob"
    save_single(folder, {"w": torch.ones(2), "evil": _Marker(marker)})
    with pytest.raises(ckpt.UnsafeGlobalError, match="system"):
        ckpt.load(folder)
    summary = ckpt.inspect(folder)
    assert summary.findings and summary.findings[0].verdict == "dangerous"
    assert summary.findings[0].record.startswith("evil (__0_0.distcp @")
    report = ckpt.scan(folder)
    assert report.exit_code() == 1
    assert any(f.verdict == "dangerous" and f.name.endswith("system") for f in report.findings)
    assert not marker.exists()


# -- writing -------------------------------------------------------------------------------------------


def test_dcp_save_is_read_by_torch(tmp_path, helpers):
    state = sample_state()
    ours = tmp_path / "ours"
    ckpt.dcp_save(state, ours)
    theirs = save_single(tmp_path / "theirs", sample_state())
    helpers.compare_loaded(oracle(ours), oracle(theirs), check_storage_identity=False)
    helpers.compare_loaded(ckpt.load(ours), oracle(theirs), check_storage_identity=False)
    target = {"model": {k: torch.zeros_like(v) for k, v in state["model"].items()}, "epoch": 0}
    dcp.load(target, checkpoint_id=str(ours), no_dist=True)
    assert torch.equal(target["model"]["w"], state["model"]["w"]) and target["epoch"] == 3
    assert sorted(os.listdir(ours)) == [".metadata", "__0_0.distcp"]


def test_dcp_save_streams_lazy_tensors(tmp_path, single, helpers):
    torch.save({"a": torch.arange(6.0).reshape(2, 3), "n": 1}, tmp_path / "m.pt")
    with ckpt.open(tmp_path / "m.pt") as ck:
        ckpt.dcp_save(ck, tmp_path / "from-pt")
    helpers.compare_loaded(oracle(tmp_path / "from-pt"), torch.load(tmp_path / "m.pt", weights_only=True))
    with ckpt.open(single) as ck:  # DCP -> DCP: each logical tensor assembled as it is written
        ckpt.dcp_save(ck, tmp_path / "copy", fsync=False)
    helpers.compare_loaded(oracle(tmp_path / "copy"), oracle(single), check_storage_identity=False)
    arrays = {"x": np.arange(5, dtype=np.int16), "nested": {"y": np.ones((2, 2), dtype=np.float32)}}
    ckpt.dcp_save(arrays, tmp_path / "np")
    got = oracle(tmp_path / "np")
    assert got["x"].dtype == torch.int16 and got["nested"]["y"].shape == (2, 2)


def test_dcp_save_is_atomic(tmp_path):
    ckpt.dcp_save({"w": torch.ones(2)}, tmp_path / "done")
    with pytest.raises(ckpt.CheckpointError, match="already exists"):
        ckpt.dcp_save({"w": torch.ones(2)}, tmp_path / "done")
    with pytest.raises(ckpt.UnsavableObjectError, match="bad"):
        ckpt.dcp_save({"w": torch.ones(2), "bad": object()}, tmp_path / "failed")
    assert sorted(os.listdir(tmp_path)) == ["done"]  # no partial folder, no temporary left behind


# -- the scanner's hook --------------------------------------------------------------------------------


def test_pickle_streams_lists_metadata_and_every_blob(single):
    from ckpt.dcp import pickle_streams

    streams, problems = pickle_streams(str(single))
    assert problems == []
    assert streams[0].kind == "metadata" and streams[0].file == ".metadata" and streams[0].offset == 0
    kinds = [s.kind for s in streams]
    assert kinds.count("item") == 3 and kinds.count("chunk") == 7
    data = (single / "__0_0.distcp").read_bytes()
    for s in streams[1:]:
        raw = data[s.offset: s.offset + s.length]
        assert raw[:1] == b"\x80" and raw.endswith(b".")  # a whole pickle: PROTO ... STOP
        assert s.record.endswith("data.pkl") and s.blob_offset < s.offset


def test_pickle_streams_of_a_hostile_metadata(tmp_path, single):
    from ckpt.dcp import pickle_streams

    import pickle

    (single / ".metadata").write_bytes(pickle.dumps(_Marker(tmp_path / "pwned"), protocol=4))
    streams, problems = pickle_streams(str(single))
    assert [s.kind for s in streams] == ["metadata"] and "system" in problems[0]
    assert not (tmp_path / "pwned").exists()
