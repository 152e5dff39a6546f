"""ckpt convert to and from torch.distributed.checkpoint folders: a DCP folder is consolidated
tensor by tensor into safetensors or a .pt file, and any checkpoint becomes a single-rank DCP
folder (--to dcp). Oracles: the safetensors library reads the output, torch.load and
torch.distributed.checkpoint.load read what ckpt writes, dcp_to_torch_save is the reference
consolidation. The no-torch tests use folders ckpt.dcp_save writes from numpy arrays.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

import ckpt
from ckpt_cli.main import cli


def state() -> dict[str, Any]:
    return {
        "model": {"w": np.arange(60, dtype=np.float32).reshape(6, 10), "b": np.arange(3, dtype=np.int64)},
        "step": 7,
        "opt": {"lr": 0.25, "betas": [0.9, 0.99]},
    }


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    ckpt.dcp_save(state(), tmp_path / "dcp", fsync=False)
    return tmp_path / "dcp"


def test_dcp_folder_to_safetensors_and_back(folder: Path, tmp_path: Path) -> None:
    from safetensors import safe_open

    out = tmp_path / "model.safetensors"
    result = ckpt.convert(folder, out, fsync=False)
    assert result.source_format == "dcp" and result.format == "safetensors" and result.tensors == 2
    with safe_open(str(out), "np") as f:
        assert sorted(f.keys()) == ["model.b", "model.w"]
        np.testing.assert_array_equal(f.get_tensor("model.w"), state()["model"]["w"])
        np.testing.assert_array_equal(f.get_tensor("model.b"), state()["model"]["b"])
    back = tmp_path / "again"
    ckpt.convert(out, back, to="dcp", fsync=False)
    got = ckpt.load(back, as_="numpy")
    np.testing.assert_array_equal(got["model"]["w"], state()["model"]["w"])
    assert got["step"] == 7 and got["opt"]["lr"] == 0.25 and list(got["opt"]["betas"]) == [0.9, 0.99]


def test_cast_while_consolidating(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "half.safetensors"
    CliRunner().invoke(cli, ["convert", str(folder), str(out), "--dtype", "fp16", "--no-fsync"], catch_exceptions=False)
    got = ckpt.load(out, as_="numpy")
    assert got["model.w"].dtype == np.float16 and got["model.b"].dtype == np.int64
    np.testing.assert_array_equal(got["model.w"], state()["model"]["w"].astype(np.float16))


@pytest.mark.parametrize("args, words", [
    (["--to", "dcp", "--shard-size", "1MB"], "shard-size"),
    (["--to", "dcp", "--manifest"], "manifest"),
])
def test_dcp_output_refuses_file_options(folder: Path, tmp_path: Path, args: list[str], words: str) -> None:
    dst = tmp_path / "out"
    result = CliRunner().invoke(cli, ["convert", str(folder), str(dst), *args])
    assert result.exit_code == 2 and words in result.output and not dst.exists()


def test_dcp_output_never_overwrites(folder: Path, tmp_path: Path) -> None:
    dst = tmp_path / "taken"
    dst.mkdir()
    (dst / "keep").write_text("mine")
    result = CliRunner().invoke(cli, ["convert", str(folder), str(dst), "--to", "dcp"])
    assert result.exit_code == 2 and "already exists" in result.output
    assert os.listdir(dst) == ["keep"]


def test_torch_written_dcp_matches_dcp_to_torch_save(tmp_path: Path, helpers: Any) -> None:
    torch = helpers.require_torch()
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    torch.manual_seed(0)
    sd = {"model": {"w": torch.randn(8, 5), "h": torch.randn(3).to(torch.bfloat16)}, "epoch": 3}
    src = tmp_path / "torch_dcp"
    dcp.save(sd, checkpoint_id=str(src), no_dist=True)
    dcp_to_torch_save(str(src), str(tmp_path / "oracle.pt"))
    oracle = torch.load(tmp_path / "oracle.pt", weights_only=True)
    ckpt.convert(src, tmp_path / "ours.pt", fsync=False)
    ours = torch.load(tmp_path / "ours.pt", weights_only=True)
    assert ours["epoch"] == oracle["epoch"] == 3
    for k in ("w", "h"):
        assert ours["model"][k].dtype == oracle["model"][k].dtype and torch.equal(ours["model"][k], oracle["model"][k])
    # and back: a DCP folder ckpt writes is what torch's own loader reads
    ckpt.convert(tmp_path / "ours.pt", tmp_path / "again", to="dcp", fsync=False)
    target = {"model": {"w": torch.zeros(8, 5), "h": torch.zeros(3, dtype=torch.bfloat16)}, "epoch": 0}
    dcp.load(target, checkpoint_id=str(tmp_path / "again"), no_dist=True)
    assert target["epoch"] == 3 and torch.equal(target["model"]["w"], sd["model"]["w"])
    assert torch.equal(target["model"]["h"], sd["model"]["h"])


def test_diff_of_a_dcp_folder_and_its_conversion(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "model.safetensors"
    ckpt.convert(folder, out, fsync=False)
    assert ckpt.diff(folder, out).same
    changed = tmp_path / "changed"
    s = state()
    s["model"]["w"] = s["model"]["w"] + 1
    ckpt.dcp_save(s, changed, fsync=False)
    report = ckpt.diff(folder, changed)
    assert not report.same
    assert [t["path"] for t in report.as_json()["tensors"] if t["status"] != "identical"] == ["model.w"]
