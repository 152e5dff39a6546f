"""DCP folders without torch: ckpt.dcp_save writes them from numpy arrays, ckpt reads them back.

These run in both test environments (tests/test_dcp.py checks the same code against real torch:
folders torch writes, torch reading what ckpt writes). Malicious files are made with
``pickle.dumps`` of an object whose ``__reduce__`` names ``os.system``; nothing is ever unpickled.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

import ckpt
from ckpt.dcp import DcpReader, pickle_streams


def state():
    return {
        "model": {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.ones(2, dtype=np.int64)},
        "layers": [np.zeros(2, dtype=np.float16), {"k": np.arange(3, dtype=np.uint8)}],
        "step": 7,
        "names": ["a", "b"],
    }


@pytest.fixture
def folder(tmp_path) -> Path:
    ckpt.dcp_save(state(), tmp_path / "ck", fsync=False)
    return tmp_path / "ck"


def test_round_trip_numpy(folder):
    got = ckpt.load(folder, as_="numpy")
    want = state()
    np.testing.assert_array_equal(got["model"]["w"], want["model"]["w"])
    assert got["model"]["b"].dtype == np.int64
    assert isinstance(got["layers"], list) and got["layers"][1]["k"].tolist() == [0, 1, 2]
    assert got["step"] == 7 and got["names"] == ["a", "b"]
    assert list(got) == ["model", "layers", "step", "names"]


def test_layout_and_inspect(folder):
    assert sorted(os.listdir(folder)) == [".metadata", "__0_0.distcp"]
    facts = ckpt.inspect(folder).facts
    assert facts["format"] == "dcp" and facts["serialization"] == "torch_save"
    assert [t["name"] for t in facts["tensors"]] == ["model.w", "model.b", "layers.0", "layers.1.k"]
    assert {i["name"] for i in facts["items"]} == {"step", "names"}
    with ckpt.open(folder) as ck:
        assert isinstance(ck.reader, DcpReader)
        t = ck.reader.tensor("model.w")
        buf = bytearray(t.nbytes)
        t.read_into(memoryview(buf))
        assert np.frombuffer(buf, np.float32).tolist() == list(range(12))


def test_copy_of_a_dcp_folder_streams(folder, tmp_path):
    with ckpt.open(folder) as ck:
        ckpt.dcp_save(ck, tmp_path / "copy", fsync=False)
    np.testing.assert_array_equal(ckpt.load(tmp_path / "copy", as_="numpy")["model"]["w"], state()["model"]["w"])


def test_pickle_streams(folder):
    streams, problems = pickle_streams(str(folder))
    assert problems == [] and [s.kind for s in streams].count("chunk") == 4
    data = (folder / "__0_0.distcp").read_bytes()
    assert all(data[s.offset: s.offset + s.length].endswith(b".") for s in streams[1:])


def _one_line_error(path: Path) -> str:
    from click.testing import CliRunner

    from ckpt_cli.main import cli

    result = CliRunner().invoke(cli, ["inspect", str(path)])
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    return result.output


def test_missing_and_truncated_files(folder):
    data = (folder / "__0_0.distcp").read_bytes()
    (folder / "__0_0.distcp").write_bytes(data[:100])
    with pytest.raises(ckpt.CorruptCheckpointError, match="truncated"):
        ckpt.load(folder, as_="numpy")
    assert "truncated" in _one_line_error(folder)
    (folder / "__0_0.distcp").unlink()
    with pytest.raises(ckpt.CorruptCheckpointError, match="not in the folder"):
        ckpt.inspect(folder)


def test_metadata_not_a_pickle(folder):
    (folder / ".metadata").write_bytes(b"\x00garbage")
    with pytest.raises(ckpt.CorruptCheckpointError, match="not a pickle"):
        ckpt.load(folder, as_="numpy")
    _one_line_error(folder)
    (folder / ".metadata").write_text('{"weight_map": {}}')
    with pytest.raises(ckpt.NotACheckpointError, match="JSON"):
        ckpt.inspect(folder)


class _Marker:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_hostile_metadata_never_runs(folder, tmp_path):
    marker = tmp_path / "pwned"
    # the DCP marker first, so that the .metadata path alone is detected as DCP too
    payload = pickle.dumps(("torch.distributed.checkpoint.metadata", _Marker(marker)), protocol=4)
    (folder / ".metadata").write_bytes(payload)
    for path in (folder, folder / ".metadata"):
        with pytest.raises(ckpt.UnsafeGlobalError, match="system"):
            ckpt.load(path, as_="numpy")
        with pytest.raises(ckpt.UnsafeGlobalError):
            ckpt.inspect(path)
    assert not marker.exists()


def test_damaged_item_blob(folder):
    """A flipped byte inside a value's pickle: the blob's CRC check fails, nothing is run."""
    data = bytearray((folder / "__0_0.distcp").read_bytes())
    with ckpt.open(folder) as ck:
        item = ck.reader.items["step"]
    at = data.find(b"\x80\x02K\x07.", item.offset, item.offset + item.length)
    assert at > 0
    data[at + 2] = ord("J")
    (folder / "__0_0.distcp").write_bytes(bytes(data))
    with pytest.raises(ckpt.CorruptCheckpointError, match="CRC"):
        ckpt.load(folder, as_="numpy")


def test_verify_a_dcp_folder(folder):
    """ckpt verify reads .metadata as the reader validates it and checks every torch.save archive
    in the .distcp files record by record (CRC-32s); the folder or its .metadata, exit 0 when clean."""
    from click.testing import CliRunner

    from ckpt_cli.main import cli

    report = ckpt.verify(folder)
    assert report.ok and report.format == "dcp" and report.tensors == 4
    with ckpt.open(folder) as ck:
        blobs = list(ck.reader.blobs())
    assert len(blobs) == 6  # 4 tensor chunks and 2 values, each a torch.save archive
    assert report.records >= 6 * 4 and report.bytes_checked > 0
    assert [f["file"] for f in report.files] == [".metadata", "__0_0.distcp"]
    assert ckpt.verify(folder / ".metadata").as_json()["totals"] == report.as_json()["totals"]
    result = CliRunner().invoke(cli, ["verify", str(folder)])
    assert result.exit_code == 0 and "ok" in result.output


def test_verify_finds_a_damaged_chunk(folder):
    """One flipped bit inside a tensor chunk's bytes: a CRC problem naming the file and record,
    exit 1 (the folder still opens: .metadata is intact)."""
    import json

    from click.testing import CliRunner

    from ckpt_cli.main import cli

    path = folder / "__0_0.distcp"
    data = bytearray(path.read_bytes())
    with ckpt.open(folder) as ck:
        chunk = ck.reader.tensor("model.w").chunks[0]
    want = state()["model"]["w"].tobytes()
    at = data.find(want, chunk.offset, chunk.offset + chunk.length)
    assert at > 0
    data[at + 5] ^= 0x10
    path.write_bytes(bytes(data))
    report = ckpt.verify(folder)
    assert not report.ok and [p.kind for p in report.problems] == ["crc"]
    assert report.problems[0].file == f"__0_0.distcp @ {chunk.offset:,}" and "data/" in report.problems[0].record
    result = CliRunner().invoke(cli, ["verify", str(folder), "--json"])
    assert result.exit_code == 1 and json.loads(result.output)["totals"]["problems"] == 1
