"""``ckpt verify`` / ``ckpt.verify``: CRCs, headers, sharded indexes against their shards, manifests;
and the ``ckpt convert`` / ``ckpt verify`` command lines (exit codes 0/1/2, --json by the schemas)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

import ckpt
from ckpt.errors import CheckpointError
from ckpt_cli.main import cli

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"


def run(*args: Any) -> Any:
    return CliRunner(env={"COLUMNS": "200"}).invoke(cli, [str(a) for a in args], catch_exceptions=False)


def kinds(result: Any) -> list[str]:
    return sorted(p.kind for p in result.problems)


def write_st(path: Path, tensors: dict[str, np.ndarray]) -> None:
    header: dict[str, Any] = {}
    pos = 0
    blobs = []
    for name, a in tensors.items():
        b = a.tobytes()
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [pos, pos + len(b)]}
        pos += len(b)
        blobs.append(b)
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def sharded(tmp_path: Path) -> Path:
    out = tmp_path / "shards"
    ckpt.convert(FIXTURES / "training.pt", out, shard_size=300, manifest=True)
    return out


def test_clean_files_verify(tmp_path: Path) -> None:
    r = ckpt.verify(FIXTURES / "training.pt")
    assert r.ok and r.records > 0 and r.tensors == 28
    ckpt.convert(FIXTURES / "training.pt", tmp_path / "t.safetensors", manifest=True)
    r = ckpt.verify(tmp_path / "t.safetensors")
    assert r.ok and r.manifest is not None
    assert ckpt.verify(sharded(tmp_path)).ok


def test_damaged_record_fails_its_crc(tmp_path: Path) -> None:
    src = FIXTURES / "training.pt"
    data = bytearray(src.read_bytes())
    with zipfile.ZipFile(src) as z:
        info = next(i for i in z.infolist() if i.filename.endswith("/data/1"))
    # local header: 30 bytes + name + extra
    start = info.header_offset + 30 + len(info.filename.encode()) + struct.unpack_from("<H", data, info.header_offset + 28)[0]
    data[start] ^= 0xFF
    bad = tmp_path / "bad.pt"
    bad.write_bytes(bytes(data))
    r = ckpt.verify(bad)
    assert kinds(r) == ["crc"] and r.problems[0].record.endswith("data/1")
    res = run("verify", bad)
    assert res.exit_code == 1 and "CRC-32 mismatch" in res.output


def test_manifest_mismatch(tmp_path: Path) -> None:
    ckpt.convert(FIXTURES / "training.pt", tmp_path / "t.safetensors", manifest=True)
    data = bytearray((tmp_path / "t.safetensors").read_bytes())
    data[-1] ^= 1  # a tensor byte: the header still matches, the hash does not
    (tmp_path / "t.safetensors").write_bytes(bytes(data))
    r = ckpt.verify(tmp_path / "t.safetensors")
    assert kinds(r) == ["manifest"]


def test_sharded_problems(tmp_path: Path) -> None:
    out = sharded(tmp_path)
    os.unlink(out / "SHA256SUMS")
    index_path = out / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    shards = sorted(set(index["weight_map"].values()))
    # an orphan shard, a wrong total, a tensor the shard does not hold
    shutil.copy(out / shards[0], out / "model-00009-of-00009.safetensors")
    index["metadata"]["total_size"] += 1
    index["weight_map"]["ghost.weight"] = shards[0]
    index_path.write_text(json.dumps(index))
    r = ckpt.verify(out)
    assert kinds(r) == ["missing-tensor", "orphan-shard", "total-size"]
    # a tensor listed twice (JSON with a repeated key) and a missing shard
    os.unlink(out / "model-00009-of-00009.safetensors")
    text = index_path.read_text().replace('"ghost.weight"', '"model.embed.weight"')
    index_path.write_text(text)
    os.unlink(out / shards[-1])
    r = ckpt.verify(index_path)
    assert "duplicate" in kinds(r) and "missing-shard" in kinds(r)
    res = run("verify", out, "--json")
    assert res.exit_code == 1 and not json.loads(res.stdout)["ok"]


def test_unlisted_tensor_in_a_shard(tmp_path: Path) -> None:
    write_st(tmp_path / "model-00001-of-00001.safetensors", {"a": np.ones(2, "<f4"), "b": np.ones(2, "<f4")})
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": 8}, "weight_map": {"a": "model-00001-of-00001.safetensors"}}))
    r = ckpt.verify(tmp_path)
    assert kinds(r) == ["total-size", "unlisted-tensor"]


def test_unreadable_is_exit_2(tmp_path: Path) -> None:
    (tmp_path / "x.safetensors").write_bytes(b"\x00" * 3)
    with pytest.raises(CheckpointError):
        ckpt.verify(tmp_path / "x.safetensors")
    assert run("verify", tmp_path / "x.safetensors").exit_code == 2
    header = json.dumps({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode()
    (tmp_path / "lie.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\x00" * 8)
    res = run("verify", tmp_path / "lie.safetensors")
    assert res.exit_code == 2 and "truncated" in res.output
    assert run("verify", tmp_path / "nothere.pt").exit_code == 2


# -- the command lines ---------------------------------------------------------------------------


def _checker(name: str) -> Any:
    spec = importlib.util.spec_from_file_location("ckpt_test_docs", REPO / "tests" / "test_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.SchemaChecker(json.loads((REPO / "docs" / "schemas" / name).read_text(encoding="utf-8")))


def test_convert_cli_and_json_schema(tmp_path: Path) -> None:
    checker = _checker("convert-v1.json")
    docs = []
    for dst, extra in (
        ("a.safetensors", ["--exclude", "optimizer.*", "--metadata", "k=v", "--manifest"]),
        ("b.pt", ["--dtype", "bf16", "--key", "model"]),
        ("shards", ["--shard-size", "300B", "--manifest"]),
    ):
        res = run("convert", FIXTURES / "training.pt", tmp_path / dst, *extra, "--json")
        assert res.exit_code == 0, res.output
        docs.append(json.loads(res.stdout))
    for doc in docs:
        assert checker.validate(doc) == []
    assert docs[0]["totals"]["excluded"] == 18 and docs[0]["destination"]["manifest"]
    assert docs[1]["cast"] == "bfloat16" and docs[1]["totals"]["cast"] == 8
    assert docs[2]["destination"]["sharded"] and len(docs[2]["files"]) > 1
    example = json.loads((REPO / "docs" / "schemas" / "convert-v1.example.json").read_text(encoding="utf-8"))
    assert checker.validate(example) == []
    res = run("convert", FIXTURES / "training.pt", tmp_path / "c.safetensors")
    assert res.exit_code == 0 and "28 tensors" in res.output and "ckpt.convert/1" in res.output
    res = run("convert", FIXTURES / "training.pt", tmp_path / "d.safetensors", "--metadata", "novalue")
    assert res.exit_code == 2
    res = run("convert", tmp_path / "missing.pt", tmp_path / "e.safetensors")
    assert res.exit_code == 2 and res.output.startswith("ckpt: error:")
    assert not (tmp_path / "e.safetensors").exists()


def test_verify_cli_json_schema(tmp_path: Path) -> None:
    checker = _checker("verify-v1.json")
    out = sharded(tmp_path)
    docs = [json.loads(run("verify", FIXTURES / "training.pt", "--json").stdout),
            json.loads(run("verify", out, "--json").stdout)]
    (out / "model-00001-of-00001.safetensors").write_bytes((out / sorted(os.listdir(out))[0]).read_bytes())
    res = run("verify", out, "--json")
    assert res.exit_code == 1
    docs.append(json.loads(res.stdout))
    for doc in docs:
        assert checker.validate(doc) == []
    assert docs[0]["ok"] and docs[0]["totals"]["records_checked"] > 0
    example = json.loads((REPO / "docs" / "schemas" / "verify-v1.example.json").read_text(encoding="utf-8"))
    assert checker.validate(example) == []
    res = run("verify", FIXTURES / "training.pt")
    assert res.exit_code == 0 and "ok: intact" in res.output


def test_zip_without_crcs_is_noted_not_failed() -> None:
    r = ckpt.verify(FIXTURES / "no_crc.pt")
    assert r.ok and r.records == 0 and any("no CRC-32s" in n for n in r.notes)
    res = run("verify", FIXTURES / "no_crc.pt")
    assert res.exit_code == 0 and "note:" in res.output


def test_legacy_and_torchscript_verify() -> None:
    for f in ("formats/legacy_views.pt", "formats/script.pt"):
        r = ckpt.verify(FIXTURES / f)
        assert r.ok and r.tensors > 0, f


def test_functions_survive_their_modules_being_imported() -> None:
    """The modules are ckpt.conversion and ckpt.verification: a submodule named like the function
    would replace ``ckpt.convert`` with the module once anything imported it."""
    import ckpt.conversion  # noqa: F401
    import ckpt.verification  # noqa: F401

    assert callable(ckpt.convert) and callable(ckpt.verify)
    assert ckpt.convert.__module__ == "ckpt.conversion" and ckpt.verify.__module__ == "ckpt.verification"
