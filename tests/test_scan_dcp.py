"""ckpt scan on torch.distributed.checkpoint folders: DCP's own .metadata classes are data, each
.distcp file is scanned blob by blob as .metadata lays it out, and hostile pickles in .metadata,
in a blob, or in bytes no blob covers are flagged and never run.

The folders are written by ckpt.dcp_save from numpy arrays (tests/test_dcp.py checks that torch
reads them), so these run without torch too. Payloads name os.system with a harmless command.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

import ckpt
from ckpt.dcp import pickle_streams


class _Marker:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    state = {"model": {"w": np.arange(60, dtype=np.float32).reshape(6, 10), "b": np.ones(3, dtype=np.int64)},
             "step": 7, "names": ["a", "b"]}
    ckpt.dcp_save(state, tmp_path / "ck", fsync=False)
    return tmp_path / "ck"


def test_a_benign_folder_scans_clean(folder: Path) -> None:
    report = ckpt.scan(folder)
    assert report.exit_code() == 0 and report.verdict == "safe", report.as_json()
    by_name = {os.path.basename(f.path): f for f in report.files}
    assert by_name[".metadata"].format == "pickle" and not by_name[".metadata"].findings
    distcp = by_name["__0_0.distcp"]
    streams, problems = pickle_streams(str(folder))
    assert not problems
    assert distcp.format == "distcp" and len(distcp.pickles) == sum(s.file == "__0_0.distcp" for s in streams)
    metadata_globals = {g.name: g.verdict for g in by_name[".metadata"].globals}
    assert metadata_globals["torch.distributed.checkpoint.metadata.Metadata"] == "safe"


def test_dcp_classes_are_safe_only_in_a_metadata_file(folder: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "model.pkl"
    elsewhere.write_bytes((folder / ".metadata").read_bytes())
    report = ckpt.scan(elsewhere)
    verdicts = {g.name: g.verdict for g in report.files[0].globals}
    assert verdicts["torch.distributed.checkpoint.metadata.Metadata"] != "safe"


def test_hostile_metadata_is_dangerous_and_never_runs(folder: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    (folder / ".metadata").write_bytes(pickle.dumps(_Marker(marker), protocol=4))
    report = ckpt.scan(folder)
    by_name = {os.path.basename(f.path): f for f in report.files}
    assert by_name[".metadata"].verdict == "dangerous"
    assert any(f.name.endswith("system") for f in by_name[".metadata"].findings)
    # without a readable .metadata the blobs cannot be located: the .distcp file is an error, not clean
    assert by_name["__0_0.distcp"].status == "error" and report.exit_code() == 2
    assert not marker.exists()


def test_hostile_pickle_in_a_blob_is_flagged(folder: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    streams, _ = pickle_streams(str(folder))
    chunk = next(s for s in streams if s.kind == "chunk")
    payload = pickle.dumps(_Marker(marker), protocol=2)
    assert len(payload) <= chunk.length
    path = folder / chunk.file
    data = bytearray(path.read_bytes())
    data[chunk.offset : chunk.offset + len(payload)] = payload  # the rest of the old pickle follows its STOP
    path.write_bytes(bytes(data))
    report = ckpt.scan(path)
    assert report.exit_code() == 1, report.as_json()
    assert any(f.name.endswith("system") and f.verdict == "dangerous" for f in report.findings)
    assert not marker.exists()


def test_hostile_bytes_after_the_last_blob_are_scanned(folder: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = folder / "__0_0.distcp"
    with open(path, "ab") as f:
        f.write(pickle.dumps(_Marker(marker), protocol=2))
    report = ckpt.scan(path)
    rules = {f.name for f in report.findings}
    assert "zip.outside-data" in rules
    assert report.exit_code() == 1 and any(r.endswith("system") for r in rules)
    assert not marker.exists()


def test_a_distcp_file_without_its_metadata_is_never_clean(folder: Path, tmp_path: Path) -> None:
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "__0_0.distcp").write_bytes((folder / "__0_0.distcp").read_bytes())
    report = ckpt.scan(alone / "__0_0.distcp")
    assert report.files[0].status != "clean"
