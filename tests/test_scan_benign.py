"""No false alarms: ordinary checkpoints, and ordinary files of the other formats, scan clean.

Made by real torch at test time where torch is installed (model state dicts, optimizer state,
Lightning- and Hugging Face-style training checkpoints, legacy and TorchScript files), and by
numpy, safetensors and pickle otherwise.
"""

from __future__ import annotations

import gzip
import pickle
from collections import OrderedDict
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import ckpt
from ckpt.scanner import scan_file

import scan_kit as K

# Fixtures that hold something outside ckpt's allowlist on purpose (never dangerous).
NOT_CLEAN = {
    "tensor_subclass": {"__main__.TaggedTensor"},
    "unknown_global": {"argparse.Namespace"},
}


def test_every_fixture_is_clean_or_known(helpers: Any) -> None:
    for name in helpers.ORACLE_NAMES:
        r = scan_file(helpers.fixture_path(name))
        assert r.complete, (name, r.errors)
        assert r.verdict != "dangerous", name
        found = {f.name for f in r.findings}
        assert found == NOT_CLEAN.get(name, set()), (name, found)


def _model() -> Any:
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 2))
    return torch, model


def _optimizers(torch: Any, model: Any) -> dict[str, Any]:
    out = {}
    for name, cls in (("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW), ("sgd", torch.optim.SGD)):
        kw = {"momentum": 0.9} if name == "sgd" else {}
        opt = cls(model.parameters(), lr=1e-3, **kw)
        model(torch.randn(3, 4)).sum().backward()
        opt.step()
        out[name] = opt.state_dict()
    return out


def test_torch_checkpoints_are_clean(tmp_path: Path) -> None:
    torch, model = _model()
    opts = _optimizers(torch, model)
    sched = torch.optim.lr_scheduler.StepLR(torch.optim.SGD(model.parameters(), lr=0.1), 3)
    w = torch.randn(6, 6)
    objects = {
        "state_dict.pt": model.state_dict(),
        "adam.pt": opts["adam"],
        "sgd.pt": opts["sgd"],
        "training.pt": {"model": model.state_dict(), "optimizer": opts["adamw"], "scheduler": sched.state_dict(),
                        "epoch": 7, "step": 1000, "best_metric": 0.91, "rng": torch.get_rng_state()},
        # Lightning-style: the keys Lightning's Trainer writes, with plain values
        "lightning.ckpt": {
            "epoch": 3, "global_step": 120, "pytorch-lightning_version": "2.5.0", "state_dict": model.state_dict(),
            "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"ready": 4, "completed": 3}}}},
            "callbacks": {"ModelCheckpoint{'monitor': 'val_loss'}": {"best_model_score": torch.tensor(0.5),
                                                                      "best_model_path": "/x/epoch=2.ckpt"}},
            "optimizer_states": [opts["adam"]], "lr_schedulers": [sched.state_dict()],
            "hparams_name": "kwargs", "hyper_parameters": {"lr": 1e-3, "layers": [4, 8, 2], "name": "run"},
        },
        # Hugging Face-style: a flat state dict named pytorch_model.bin, tied weights sharing storage
        "pytorch_model.bin": OrderedDict([("embed.weight", w), ("lm_head.weight", w), ("norm.bias", torch.zeros(6))]),
        "views.pt": {"w": w, "t": w.t(), "row": w[2], "bf16": w.to(torch.bfloat16), "f8": w.to(torch.float8_e4m3fn),
                     "c": torch.randn(2, dtype=torch.complex64), "p": torch.nn.Parameter(torch.ones(3)),
                     "i": torch.arange(5), "meta": torch.empty(3, device="meta"), "scalar": torch.tensor(3.0),
                     "size": torch.Size([2, 3]), "dtype": torch.float16, "device": torch.device("cpu")},
    }
    for name, obj in objects.items():
        for protocol in (2, 4):
            path = tmp_path / f"p{protocol}_{name}"
            torch.save(obj, path, pickle_protocol=protocol)
            r = scan_file(path)
            assert r.status == "clean" and r.format == "torch-zip", (name, protocol, r.findings, r.errors)


def test_sharded_hf_folder_is_clean(tmp_path: Path) -> None:
    torch, model = _model()
    sd = model.state_dict()
    keys = list(sd)
    folder = tmp_path / "repo"
    folder.mkdir()
    torch.save({k: sd[k] for k in keys[:3]}, folder / "pytorch_model-00001-of-00002.bin")
    torch.save({k: sd[k] for k in keys[3:]}, folder / "pytorch_model-00002-of-00002.bin")
    (folder / "pytorch_model.bin.index.json").write_text('{"weight_map": {}}')
    (folder / "config.json").write_text('{"model_type": "x"}')
    (folder / "README.md").write_text("# a model\n")
    report = ckpt.scan(folder)
    assert [r.status for r in report.files] == ["clean"] * 5
    assert report.exit_code("unknown") == 0


def test_legacy_torch_files_are_clean(tmp_path: Path) -> None:
    torch, model = _model()
    for name, obj in (("sd.pt", model.state_dict()), ("mixed.pt", {"w": torch.randn(3, 3), "t": torch.arange(4),
                                                                   "h": torch.zeros(2, dtype=torch.float16)})):
        path = tmp_path / name
        torch.save(obj, path, _use_new_zipfile_serialization=False)
        r = scan_file(path)
        assert r.format == "torch-legacy" and r.status == "clean", (r.findings, r.errors)
        assert [p.role for p in r.pickles] == ["main"] + ["extra"] * 4


def test_legacy_trailing_bytes_are_found(tmp_path: Path) -> None:
    torch, model = _model()
    path = tmp_path / "sd.pt"
    torch.save(model.state_dict(), path, _use_new_zipfile_serialization=False)
    with open(path, "ab") as f:
        f.write(K.os_system("/nonexistent/marker"))
    r = scan_file(path)
    assert {f.name for f in r.findings} >= {"legacy.trailing-data", "posix.system"}


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.trace/save are deprecated in torch 2.13
def test_torchscript_is_never_dangerous(tmp_path: Path) -> None:
    torch, model = _model()
    path = tmp_path / "ts.pt"
    torch.jit.save(torch.jit.trace(model.eval(), torch.randn(2, 4)), path)
    r = scan_file(path)
    assert r.format == "torchscript" and r.complete
    assert r.verdict == "unknown"
    assert "torchscript.code" in {f.name for f in r.findings}


def test_other_formats_are_clean(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.arange(10, dtype=np.float32))
    np.savez(tmp_path / "b.npz", x=np.ones((2, 3)), y=np.arange(4))
    np.savez_compressed(tmp_path / "c.npz", x=np.ones((2, 3)))
    from safetensors.numpy import save_file

    save_file({"w": np.ones((2, 2), dtype=np.float32)}, str(tmp_path / "d.safetensors"), metadata={"k": "v"})
    (tmp_path / "e.pkl").write_bytes(pickle.dumps({"a": [1, 2.5, "x"], "b": (None, True)}, protocol=4))
    (tmp_path / "f.pkl.gz").write_bytes(gzip.compress(pickle.dumps([1, 2, 3])))
    (tmp_path / "g.json").write_text('{"x": 1}')
    (tmp_path / "h.txt").write_text("cuda: true\nbatch: 32\n")  # starts like a GLOBAL opcode
    (tmp_path / "i.py").write_text("class Foo:\n    pass\n")
    (tmp_path / "j.bin").write_bytes(bytes(range(256)) * 10)
    (tmp_path / "k.empty").write_bytes(b"")
    report = ckpt.scan(tmp_path, jobs=1)
    by = {Path(r.path).name: r for r in report.files}
    assert {n: r.status for n, r in by.items()} == {n: "clean" for n in by}, {n: (r.findings, r.errors) for n, r in by.items()}
    assert by["a.npy"].format == "npy" and by["b.npz"].format == "npz" and by["d.safetensors"].format == "safetensors"
    assert by["e.pkl"].format == "pickle" and by["f.pkl.gz"].format == "gzip"


def test_numpy_object_array_is_reported_not_dangerous(tmp_path: Path) -> None:
    """np.save of an object array pickles it: numpy's own globals, unknown (not on ckpt's allowlist)."""
    arr = np.array([{"a": 1}, [1, 2]], dtype=object)
    np.save(tmp_path / "o.npy", arr)  # np.save pickles object arrays by default
    r = scan_file(tmp_path / "o.npy")
    assert r.verdict == "unknown" and r.complete
    assert "npy.object-array" in {f.name for f in r.findings}


def test_allow_makes_a_name_safe(helpers: Any) -> None:
    path = helpers.fixture_path("unknown_global")
    assert scan_file(path).status == "unknown"
    r = scan_file(path, allow=["argparse.Namespace"])
    assert r.status == "clean"
    assert [g.reason for g in r.globals if g.name == "argparse.Namespace"] == ["allowed by the caller"]


def test_text_that_starts_like_a_compressed_header_is_clean(tmp_path: Path) -> None:
    """'x^' is a valid zlib header and 'BZh9' a bz2 one: text beginning so is not compressed data."""
    (tmp_path / "a.txt").write_text("x^ is how the notes begin\n")
    (tmp_path / "b.txt").write_text("BZh9 notes\n")
    (tmp_path / "c.txt").write_text("ZF notes\n")
    report = ckpt.scan(tmp_path, jobs=1)
    assert [(r.format, r.status) for r in report.files] == [("other", "clean")] * 3


def test_truncated_gzip_is_an_error(tmp_path: Path) -> None:
    whole = gzip.compress(pickle.dumps(list(range(1000))))
    (tmp_path / "t.pkl.gz").write_bytes(whole[: len(whole) // 2])
    r = scan_file(tmp_path / "t.pkl.gz")
    assert r.format == "gzip" and r.status == "error"


def test_protocol_0_text_persistent_ids_account_for_storages(helpers: Any) -> None:
    """Protocol 0 spells torch's tuple persistent ids as their str(); the storages they name are
    still matched with their records (torch cannot read such files back; nothing in them runs)."""
    r = scan_file(helpers.fixture_path("protocol_0"))
    assert r.status == "clean" and r.complete


def test_legacy_storages_of_a_mapped_file_are_accounted_for(tmp_path: Path) -> None:
    """A legacy file big enough to be memory-mapped: its storages' 8-byte counts are read without
    mapping the data around them, and a count that disagrees with the pickle, or a file cut inside
    the last storage, is still found."""
    torch, _ = _model()
    path = tmp_path / "big.pt"
    torch.save({"a": torch.ones(3), "w": torch.zeros(8192)}, path, _use_new_zipfile_serialization=False)
    raw = path.read_bytes()
    at = raw.index(struct.pack("<q", 8192) + bytes(64))  # the count of "w"'s storage (storage order varies)
    assert len(raw) > 4096
    assert scan_file(path).status == "clean"
    (tmp_path / "mismatch.pt").write_bytes(raw[:at] + struct.pack("<q", 8000) + raw[at + 8 :])
    assert "legacy.storage-mismatch" in {f.name for f in scan_file(tmp_path / "mismatch.pt").findings}
    (tmp_path / "cut.pt").write_bytes(raw[:-100])
    r = scan_file(tmp_path / "cut.pt")
    assert r.status == "error" and any("past the end of the file" in e["message"] for e in r.errors), r.errors
