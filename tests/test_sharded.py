"""Sharded checkpoints: an index (or a folder holding one) opened as one checkpoint.

Shards are written at test time: by ``safetensors.numpy`` (no torch needed), and by torch as
``pytorch_model-*.bin`` shards (zip and legacy) where torch is installed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import ckpt
from ckpt.safetensors_reader import SafetensorsReader
from ckpt.tensors import StorageRef
from formats_support import ReadRecorder

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

SHARDS = {
    "model-00001-of-00002.safetensors": {"embed.weight": np.arange(6, dtype=np.float32).reshape(2, 3),
                                         "layers.0.weight": np.ones((3, 3), dtype=np.float16)},
    "model-00002-of-00002.safetensors": {"layers.1.weight": np.full((3, 3), 2, dtype=np.float16),
                                         "head.bias": np.array([1, 2], dtype=np.int64)},
}
ORDER = ["embed.weight", "layers.0.weight", "layers.1.weight", "head.bias"]


def write_index(folder: Path, weight_map: dict[str, str], name: str = "model.safetensors.index.json",
                metadata: Any = "auto", raw: str | None = None) -> Path:
    path = folder / name
    if raw is not None:
        path.write_text(raw)
        return path
    doc: dict[str, Any] = {"weight_map": weight_map}
    if metadata == "auto":
        metadata = {"total_size": sum(a.nbytes for arrays in SHARDS.values() for a in arrays.values())}
    if metadata is not None:
        doc["metadata"] = metadata
    path.write_text(json.dumps(doc))
    return path


def safetensors_folder(folder: Path) -> Path:
    from safetensors.numpy import save_file

    folder.mkdir(exist_ok=True)
    for shard, arrays in SHARDS.items():
        save_file(arrays, str(folder / shard))
    weight_map = {name: shard for shard, arrays in SHARDS.items() for name in arrays}
    write_index(folder, {k: weight_map[k] for k in ORDER})
    return folder


def expected() -> dict[str, np.ndarray]:
    merged = {k: v for arrays in SHARDS.values() for k, v in arrays.items()}
    return {k: merged[k] for k in ORDER}


@pytest.mark.parametrize("target", ["folder", "index"])
@pytest.mark.parametrize("mmap", [False, True], ids=["read", "mmap"])
def test_safetensors_shards_load_as_one(target, mmap, tmp_path):
    folder = safetensors_folder(tmp_path / "m")
    path = folder if target == "folder" else folder / "model.safetensors.index.json"
    loaded = ckpt.load(path, as_="numpy", mmap=mmap)
    assert list(loaded) == ORDER
    for k, want in expected().items():
        assert loaded[k].dtype == want.dtype and np.array_equal(loaded[k], want), k


def test_torch_flavour_and_mmap(tmp_path, helpers):
    torch = helpers.require_torch()
    folder = safetensors_folder(tmp_path / "m")
    for mmap in (False, True):
        loaded = ckpt.load(folder, mmap=mmap)
        assert list(loaded) == ORDER
        for k, want in expected().items():
            assert torch.equal(loaded[k], torch.from_numpy(want)), k


def test_open_and_inspect_facts(tmp_path):
    folder = safetensors_folder(tmp_path / "m")
    with ckpt.open(folder) as ck:
        refs = dict(ck.tensors())
        facts = ck.facts
        storages = ck.storages
    assert list(refs) == ORDER
    assert refs["head.bias"].storage.key == "model-00002-of-00002.safetensors:head.bias"
    assert set(storages) == {ref.storage.key for ref in refs.values()}
    total = sum(a.nbytes for a in expected().values())
    assert facts == {
        "format": "sharded", "index": "model.safetensors.index.json", "shard_format": "safetensors",
        "shards": [{"file": shard, "format": "safetensors", "tensors": 2,
                    "size": (folder / shard).stat().st_size} for shard in SHARDS],
        "total_size": total, "tensor_bytes": total, "metadata": {"total_size": total}, "notes": [],
    }
    summary = ckpt.inspect(folder)
    assert summary.kind == "state_dict" and summary.totals["tensors"] == 4
    assert summary.file_size == sum(p.stat().st_size for p in folder.iterdir())


def test_inspect_reads_headers_only(tmp_path, monkeypatch):
    folder = safetensors_folder(tmp_path / "m")
    shards = [folder / s for s in SHARDS]
    monkeypatch.setattr(StorageRef, "read", lambda *a: pytest.fail("inspect read a tensor"))
    monkeypatch.setattr(SafetensorsReader, "readinto", lambda *a: pytest.fail("inspect read a tensor"))
    recorder = ReadRecorder(monkeypatch, *shards)
    ckpt.inspect(folder)
    for shard in shards:
        (n,) = np.frombuffer(shard.read_bytes()[:8], dtype="<u8")
        reads = [(a, b) for a, b in recorder.of(shard) if not (a == 0 and b <= 512)]
        assert reads and all(b <= 8 + int(n) for a, b in reads), (shard.name, reads)


def test_bin_shards_of_both_torch_formats_keep_their_storages_apart(tmp_path, helpers):
    """Both shards name their storages '0', '1' (zip) or addresses (legacy): keys carry the shard's
    name, so values never cross (a builder cache keyed by bare keys would mix them up)."""
    torch = helpers.require_torch()
    folder = tmp_path / "bin"
    folder.mkdir()
    a = {"x": torch.arange(4.0), "tied": torch.ones(2), "tied_view": None}
    a["tied_view"] = a["tied"][1:]
    b = {"y": torch.arange(4.0) * 10, "z": torch.tensor([7], dtype=torch.int64)}
    torch.save(a, folder / "pytorch_model-00001-of-00003.bin")
    torch.save(b, folder / "pytorch_model-00002-of-00003.bin")
    torch.save({"w": torch.full((2,), 3.0)}, folder / "pytorch_model-00003-of-00003.bin",
               _use_new_zipfile_serialization=False)
    weight_map = {"x": "pytorch_model-00001-of-00003.bin", "tied": "pytorch_model-00001-of-00003.bin",
                  "tied_view": "pytorch_model-00001-of-00003.bin", "y": "pytorch_model-00002-of-00003.bin",
                  "z": "pytorch_model-00002-of-00003.bin", "w": "pytorch_model-00003-of-00003.bin"}
    write_index(folder, weight_map, "pytorch_model.bin.index.json", metadata={"total_size": 1})
    for mmap in (False, True):
        loaded = ckpt.load(folder, mmap=mmap)
        assert list(loaded) == list(weight_map)
        for k, v in {**a, **b, "w": torch.full((2,), 3.0)}.items():
            assert torch.equal(loaded[k], v), k
        assert loaded["tied_view"].untyped_storage().data_ptr() == loaded["tied"].untyped_storage().data_ptr()
    arrays = ckpt.load(folder, as_="numpy")
    assert arrays["y"].tolist() == [0, 10, 20, 30] and arrays["x"].tolist() == [0, 1, 2, 3]
    facts = ckpt.inspect(folder).facts
    assert facts["shard_format"] == "mixed" and [s["format"] for s in facts["shards"]] == [
        "torch-zip", "torch-zip", "torch-legacy"]
    assert any("total_size says 1 bytes" in n for n in facts["notes"])


# -- what is wrong is said, not silently dropped ---------------------------------------------------------


def _expect(path: Path, error: type, words: str) -> None:
    for call in (ckpt.inspect, lambda p: ckpt.load(p, as_="numpy")):
        with pytest.raises(error, match=words):
            call(path)


def test_missing_shard(tmp_path):
    folder = safetensors_folder(tmp_path / "m")
    (folder / "model-00002-of-00002.safetensors").unlink()
    _expect(folder, ckpt.CorruptCheckpointError, "names 1 shard file.* not in .*model-00002-of-00002.safetensors")


def test_name_listed_twice(tmp_path):
    folder = safetensors_folder(tmp_path / "m")
    write_index(folder, {}, raw='{"weight_map": {"a": "model-00001-of-00002.safetensors", '
                                '"a": "model-00002-of-00002.safetensors"}}')
    _expect(folder, ckpt.CorruptCheckpointError, "lists 'a' twice")


@pytest.mark.parametrize("shard", ["../outside.safetensors", "/etc/passwd", "sub/../../x.safetensors", "",
                                   "a\\b.safetensors", "."])
def test_shards_must_stay_inside_the_folder(shard, tmp_path):
    folder = safetensors_folder(tmp_path / "m")
    (tmp_path / "outside.safetensors").write_bytes((folder / "model-00001-of-00002.safetensors").read_bytes())
    write_index(folder, {"embed.weight": shard})
    _expect(folder, ckpt.CorruptCheckpointError, "not a file name inside the index's folder")


def test_shard_in_a_subfolder_is_fine(tmp_path):
    folder = safetensors_folder(tmp_path / "m")
    (folder / "part").mkdir()
    (folder / "model-00001-of-00002.safetensors").rename(folder / "part" / "one.safetensors")
    write_index(folder, {"embed.weight": "part/one.safetensors", "layers.0.weight": "./part/one.safetensors"})
    loaded = ckpt.load(folder, as_="numpy")
    assert list(loaded) == ["embed.weight", "layers.0.weight"]
    assert [s["file"] for s in ckpt.inspect(folder).facts["shards"]] == ["part/one.safetensors"]


def test_name_the_shard_does_not_hold(tmp_path):
    folder = safetensors_folder(tmp_path / "m")
    write_index(folder, {"embed.weight": "model-00002-of-00002.safetensors"})
    _expect(folder, ckpt.CorruptCheckpointError, "places 1 tensor.* that it does not hold .*'embed.weight'")


def test_tensors_the_index_does_not_list_are_noted(tmp_path):
    folder = safetensors_folder(tmp_path / "m")
    write_index(folder, {"embed.weight": "model-00001-of-00002.safetensors"})
    summary = ckpt.inspect(folder)
    assert [t.path for t in summary.tensors] == ["embed.weight"]
    assert any("1 tensor(s) the index does not list" in n for n in summary.facts["notes"])


@pytest.mark.parametrize("raw, error, words", [
    ('{"weight_map": []}', ckpt.NotACheckpointError, "not a sharded-checkpoint index"),
    ('{"weight_map": {"a": 3}}', ckpt.CorruptCheckpointError, "not a file name"),
    ('{"weight_map": {}, "metadata": []}', ckpt.CorruptCheckpointError, "metadata must be an object"),
    ('{"weight_map": {"a": ', ckpt.CorruptCheckpointError, "not valid JSON"),
    ('{"other": 1}', ckpt.NotACheckpointError, "JSON file, not a checkpoint"),
])
def test_malformed_index(raw, error, words, tmp_path):
    path = tmp_path / "model.safetensors.index.json"
    path.write_text(raw)
    _expect(path, error, words)


def test_shard_that_is_not_a_state_dict(tmp_path, helpers):
    torch = helpers.require_torch()
    folder = tmp_path / "m"
    folder.mkdir()
    torch.save([torch.ones(1)], folder / "a.bin")
    write_index(folder, {"x": "a.bin"}, "pytorch_model.bin.index.json", metadata=None)
    _expect(folder, ckpt.CorruptCheckpointError, "holds a list, not a state dict")
    torch.save({"x": 3}, folder / "a.bin")
    _expect(folder, ckpt.CorruptCheckpointError, "'x' in shard 'a.bin' is a int, not a tensor")


def test_index_that_names_itself_or_another_index(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    write_index(folder, {"a": "model.safetensors.index.json"}, metadata=None)
    _expect(folder, ckpt.CorruptCheckpointError, "names itself")
    write_index(folder, {"a": "other.index.json"}, metadata=None)
    write_index(folder, {"b": "x.safetensors"}, "other.index.json", metadata=None)
    (folder / "x.safetensors").write_bytes(b"")
    with pytest.raises(ckpt.CheckpointError):
        ckpt.inspect(folder / "model.safetensors.index.json")


def test_folders_without_an_index(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    _expect(empty, ckpt.NotACheckpointError, "holds no files")
    some = tmp_path / "some"
    some.mkdir()
    (some / "model.safetensors").write_bytes(b"")
    _expect(some, ckpt.NotACheckpointError, "open one of its files instead: model.safetensors")
    dcp = tmp_path / "dcp"
    dcp.mkdir()
    (dcp / ".metadata").write_bytes(b"")
    (dcp / "__0_0.distcp").write_bytes(b"")
    _expect(dcp, ckpt.UnsupportedFormatError, "DCP")


def test_folder_with_both_indexes_prefers_safetensors(tmp_path):
    folder = safetensors_folder(tmp_path / "m")
    write_index(folder, {"x": "missing.bin"}, "pytorch_model.bin.index.json")
    facts = ckpt.inspect(folder).facts
    assert facts["index"] == "model.safetensors.index.json"
    assert any("also holds pytorch_model.bin.index.json" in n for n in facts["notes"])


def test_cli(tmp_path):
    from click.testing import CliRunner

    from ckpt_cli.main import cli

    folder = safetensors_folder(tmp_path / "m")
    result = CliRunner().invoke(cli, ["inspect", str(folder)])
    assert result.exit_code == 0, result.output
    assert "sharded" in result.output and "model-00002-of-00002.safetensors: safetensors, 2 tensors" in result.output
    (folder / "model-00001-of-00002.safetensors").unlink()
    result = CliRunner().invoke(cli, ["inspect", str(folder)])
    assert result.exit_code == 2 and result.output.count("\n") == 1 and "not in" in result.output
