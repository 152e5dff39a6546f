"""``ckpt.convert``: .pt -> safetensors -> .pt with torch.load and safe_open as the oracles on both
ends; the ckpt.convert/1 metadata (training checkpoints survive), tied weights as aliases, packed
views, casts exactly as torch's ``.to()``, selection, sharding, and bad input with nothing left
behind."""

from __future__ import annotations

import json
import os
import struct
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import ckpt
from ckpt.errors import CheckpointError, UnsupportedFeatureError
from ckpt.flatten import METADATA_KEY

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def torch_or_skip() -> Any:
    return pytest.importorskip("torch")


def st_header(path: Path) -> dict[str, Any]:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n])


def listing(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


def write_st(path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
    """A safetensors file made by hand (no library needed), tensors in the given order."""
    codes = {"<f4": "F32", "<f2": "F16", "<i8": "I64", "|u1": "U8", "<f8": "F64"}
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = metadata
    pos = 0
    blobs = []
    for name, a in tensors.items():
        b = np.ascontiguousarray(a).tobytes()
        header[name] = {"dtype": codes[a.dtype.str], "shape": list(a.shape), "data_offsets": [pos, pos + len(b)]}
        pos += len(b)
        blobs.append(b)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))


# -- .pt -> safetensors -> .pt ---------------------------------------------------------------------


def test_training_checkpoint_round_trips(tmp_path: Path, helpers: Any) -> None:
    torch = torch_or_skip()
    src = FIXTURES / "training.pt"
    st = tmp_path / "t.safetensors"
    back = tmp_path / "back.pt"
    result = ckpt.convert(src, st)
    assert result.tree_in_metadata if hasattr(result, "tree_in_metadata") else result.kept_tree
    ckpt.convert(st, back)
    ref = torch.load(src, weights_only=True)
    got = torch.load(back, weights_only=True)
    helpers.compare_loaded(got, ref, check_storage_identity=False)
    # every tensor, read by the safetensors library, equals torch's
    from safetensors import safe_open

    with safe_open(str(st), framework="pt") as f:
        assert f.metadata()["format"] == "pt"
        names = set(f.keys())
        assert names == {n for n, _ in ckpt.open(src).tensors()}
        assert torch.equal(f.get_tensor("optimizer.state.0.exp_avg"), ref["optimizer"]["state"][0]["exp_avg"])
        assert torch.equal(f.get_tensor("model.embed.weight"), ref["model"]["embed.weight"])
        for name in names:
            f.get_tensor(name)


def test_metadata_document_is_json_with_the_tree(tmp_path: Path) -> None:
    st = tmp_path / "t.safetensors"
    ckpt.convert(FIXTURES / "training.pt", st)
    meta = st_header(st)["__metadata__"]
    doc = json.loads(meta[METADATA_KEY])
    assert doc["schema"] == "ckpt.convert/1"
    assert doc["tree"]["epoch"] == 3
    assert doc["tree"]["model"]["$"] == "odict"
    assert doc["tree"]["optimizer"]["state"]["$"] == "dict"  # int keys
    assert doc["source"] == {"format": "torch-zip", "file": "training.pt"}


def test_flat_state_dict_is_byte_identical_to_save_file(tmp_path: Path) -> None:
    torch = torch_or_skip()
    from safetensors.torch import save_file

    sd = {
        "b.weight": torch.randn(3, 4), "a.bias": torch.randn(5, dtype=torch.float64),
        "emb": torch.randn(7, 2).to(torch.bfloat16), "half": torch.randn(3).half(),
        "count": torch.tensor(7), "mask": torch.tensor([True, False]), "bytes": torch.arange(5, dtype=torch.uint8),
        "i32": torch.arange(3, dtype=torch.int32), "empty": torch.zeros(0, 3),
    }
    torch.save(sd, tmp_path / "sd.pt")
    save_file(sd, str(tmp_path / "lib.safetensors"), metadata={"format": "pt"})
    ckpt.convert(tmp_path / "sd.pt", tmp_path / "ckpt.safetensors")
    assert (tmp_path / "ckpt.safetensors").read_bytes() == (tmp_path / "lib.safetensors").read_bytes()


def test_tied_weights_are_written_once_as_aliases(tmp_path: Path, helpers: Any) -> None:
    torch = torch_or_skip()
    emb = torch.nn.Parameter(torch.randn(6, 3))
    sd = OrderedDict([("embed.weight", emb.detach()), ("lm_head.weight", emb.detach()), ("b", torch.ones(2))])
    torch.save(sd, tmp_path / "tied.pt")
    res = ckpt.convert(tmp_path / "tied.pt", tmp_path / "tied.safetensors")
    assert res.aliases == {"lm_head.weight": "embed.weight"}
    from safetensors import safe_open

    with safe_open(str(tmp_path / "tied.safetensors"), framework="pt") as f:
        assert sorted(f.keys()) == ["b", "embed.weight"]
    ckpt.convert(tmp_path / "tied.safetensors", tmp_path / "back.pt")
    back = torch.load(tmp_path / "back.pt", weights_only=True)
    assert list(back) == ["embed.weight", "lm_head.weight", "b"]
    assert back["embed.weight"].untyped_storage().data_ptr() == back["lm_head.weight"].untyped_storage().data_ptr()
    assert torch.equal(back["lm_head.weight"], emb.detach())


def test_views_are_packed_and_overlaps_noted(tmp_path: Path) -> None:
    torch = torch_or_skip()
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    sd = {"t": base.t(), "row": base[1], "cols": base[:, 2:4], "whole": base}
    torch.save(sd, tmp_path / "v.pt")
    res = ckpt.convert(tmp_path / "v.pt", tmp_path / "v.safetensors")
    assert any("overlapping" in n for n in res.notes)
    from safetensors.torch import load_file

    got = load_file(str(tmp_path / "v.safetensors"))
    for k, v in sd.items():
        assert torch.equal(got[k], v), k
    # back to .pt: contiguous tensors of the same values
    ckpt.convert(tmp_path / "v.safetensors", tmp_path / "v2.pt")
    again = torch.load(tmp_path / "v2.pt", weights_only=True)
    for k, v in sd.items():
        assert torch.equal(again[k], v), k


def test_safetensors_without_metadata_gives_a_flat_state_dict(tmp_path: Path) -> None:
    a = np.arange(6, dtype="<f4").reshape(2, 3)
    b = np.arange(4, dtype="<i8")
    write_st(tmp_path / "m.safetensors", {"x.a": a, "x.b": b})
    ckpt.convert(tmp_path / "m.safetensors", tmp_path / "m.pt")
    got = ckpt.load(tmp_path / "m.pt", as_="numpy")
    assert list(got) == ["x.a", "x.b"]
    assert np.array_equal(got["x.a"], a) and np.array_equal(got["x.b"], b)


def test_safetensors_to_pt_matches_load_file(tmp_path: Path, helpers: Any) -> None:
    torch = torch_or_skip()
    from safetensors.torch import load_file, save_file

    sd = {"w": torch.randn(8, 8), "h": torch.randn(4).bfloat16(), "n": torch.arange(3)}
    save_file(sd, str(tmp_path / "m.safetensors"))
    ckpt.convert(tmp_path / "m.safetensors", tmp_path / "m.pt")
    got = torch.load(tmp_path / "m.pt", weights_only=True)
    ref = load_file(str(tmp_path / "m.safetensors"))
    assert list(got) == list(ref)
    for k in ref:
        assert torch.equal(got[k], ref[k]) and got[k].dtype == ref[k].dtype
    mapped = torch.load(tmp_path / "m.pt", weights_only=True, mmap=True)
    assert all(torch.equal(mapped[k], ref[k]) for k in ref)


def test_safetensors_to_pt_keeps_the_page_phase(tmp_path: Path) -> None:
    """Storage data is 64-aligned as torch aligns it; a tensor of 1 MiB or more whose bytes start
    64-aligned in the source keeps its offset within a page (page-aligned kernel copies, more
    padding than torch); a smaller one gets torch's padding (no page of padding per small tensor)."""
    tensors = {"a": np.arange(1 << 18, dtype="<f4"), "d": np.ones(1 << 18, "<f4"), "b": np.arange(5, dtype="<i8"),
               "c": np.ones(1000, "<f4")}
    tensors.update({f"s{i}": np.full(16, i, "<f4") for i in range(32)})  # 64 bytes each: 64-aligned after "c"
    for shift in range(0, 64, 8):  # where the data starts: every residue modulo 64 a header can give
        src = tmp_path / f"m{shift}.safetensors"
        write_st(src, tensors)
        raw = src.read_bytes()
        (n,) = struct.unpack("<Q", raw[:8])
        pad = (shift - (8 + n)) % 64  # trailing spaces in the header, which the format allows
        src.write_bytes(struct.pack("<Q", n + pad) + raw[8 : 8 + n] + b" " * pad + raw[8 + n :])
        data_start = 8 + n + pad
        assert data_start % 64 == shift
        ckpt.convert(src, tmp_path / "m.pt", fsync=False)
        got = ckpt.load(tmp_path / "m.pt", as_="numpy")
        assert all(np.array_equal(got[k], v) for k, v in tensors.items())
        with ckpt.open(tmp_path / "m.pt") as ck:
            archive = ck.reader.archive
            where = {e.name.rsplit("/", 1)[1]: archive.data_offset(e) for e in archive.entries if "/data/" in e.name}
            keys = {name: t.storage.key for name, t in ck.tensors()}
        phased = 0
        for name, entry in st_header(src).items():
            off, source = where[keys[name]], data_start + entry["data_offsets"][0]
            assert off % 64 == 0, (shift, name)
            if source % 64 == 0 and tensors[name].nbytes >= 1 << 20:
                assert off % 4096 == source % 4096, (shift, name)
                phased += 1
        assert phased == (2 if shift == 0 else 0)
        overhead = (tmp_path / "m.pt").stat().st_size - sum(v.nbytes for v in tensors.values())
        assert overhead < 2 * 4096 + len(tensors) * 256 + 4096  # a page per big tensor, not per small one


def test_safetensors_to_safetensors_recast(tmp_path: Path) -> None:
    a = np.linspace(-3, 3, 50, dtype="<f4")
    write_st(tmp_path / "m.safetensors", {"a": a, "i": np.arange(3, dtype="<i8")})
    res = ckpt.convert(tmp_path / "m.safetensors", tmp_path / "h.safetensors", dtype="fp16")
    assert res.cast_tensors == 1
    h = st_header(tmp_path / "h.safetensors")
    assert h["a"]["dtype"] == "F16" and h["i"]["dtype"] == "I64"
    got = ckpt.load(tmp_path / "h.safetensors", as_="numpy")
    assert np.array_equal(got["a"], a.astype(np.float16))


# -- casts: exactly torch's .to() ---------------------------------------------------------------------


def _cast_inputs() -> np.ndarray:
    rng = np.random.default_rng(5)
    bits = rng.integers(0, 2**32, 4000, dtype=np.uint64).astype("<u4")
    special = np.array([0x7F800000, 0xFF800000, 0x7FC00000, 0xFFC00000, 0x7F800001, 0x00000001, 0x80000001,
                        0x3F808000, 0x3F818000, 0x3F80C000, 0x477FF000, 0x477FE000, 0x38800000, 0x33800000,
                        0x7F7FFFFF, 0], dtype="<u4")
    return np.concatenate([bits, special]).view("<f4")


@pytest.mark.parametrize("target", ["bf16", "fp16"])
def test_casts_match_torch(tmp_path: Path, target: str) -> None:
    torch = torch_or_skip()
    x = torch.from_numpy(_cast_inputs().copy())
    d = torch.from_numpy(np.random.default_rng(1).standard_normal(3000) * 1e3) + 2**-30
    torch.save({"x": x, "d": d, "h": x.half(), "b": x.bfloat16()}, tmp_path / "in.pt")
    ckpt.convert(tmp_path / "in.pt", tmp_path / "out.safetensors", dtype=target)
    from safetensors.torch import load_file

    got = load_file(str(tmp_path / "out.safetensors"))
    want = torch.bfloat16 if target == "bf16" else torch.float16
    for k, v in {"x": x, "d": d, "h": x.half(), "b": x.bfloat16()}.items():
        ref = v.to(want)
        assert got[k].dtype == want
        nan = torch.isnan(ref)
        assert torch.equal(torch.isnan(got[k]), nan), k  # NaN bits: see ckpt.tensor_stream.cast_bytes
        assert torch.equal(got[k].view(torch.int16)[~nan], ref.view(torch.int16)[~nan]), k


def test_upcast_matches_torch(tmp_path: Path) -> None:
    torch = torch_or_skip()
    x = torch.from_numpy(_cast_inputs().copy())
    torch.save({"h": x.half(), "b": x.bfloat16(), "f": x}, tmp_path / "in.pt")
    ckpt.convert(tmp_path / "in.pt", tmp_path / "out.pt", dtype="fp32")
    got = torch.load(tmp_path / "out.pt", weights_only=True)
    for k, v in {"h": x.half(), "b": x.bfloat16(), "f": x}.items():
        assert got[k].dtype == torch.float32
        ref = v.float()
        nan = torch.isnan(ref)
        assert torch.equal(torch.isnan(got[k]), nan), k
        assert torch.equal(got[k].view(torch.int32)[~nan], ref.view(torch.int32)[~nan]), k


# -- selection --------------------------------------------------------------------------------------


def test_only_exclude_key_and_metadata(tmp_path: Path) -> None:
    src = FIXTURES / "training.pt"
    res = ckpt.convert(src, tmp_path / "w.safetensors", exclude=["optimizer.*"], metadata={"author": "me"})
    h = st_header(tmp_path / "w.safetensors")
    assert h["__metadata__"]["author"] == "me"
    assert not any(k.startswith("optimizer.") for k in h if k != "__metadata__")
    assert res.excluded and all(n.startswith("optimizer.") for n in res.excluded)
    ckpt.convert(src, tmp_path / "m.safetensors", key="model")
    h = st_header(tmp_path / "m.safetensors")
    assert "embed.weight" in h and "model.embed.weight" not in h
    ckpt.convert(src, tmp_path / "o.safetensors", only=["*.weight"], key="model")
    h = st_header(tmp_path / "o.safetensors")
    assert sorted(k for k in h if k != "__metadata__") == [
        "embed.weight", "layers.0.weight", "layers.1.weight", "norm.weight"]
    with pytest.raises(CheckpointError, match="no key"):
        ckpt.convert(src, tmp_path / "x.safetensors", key="nope")
    assert not (tmp_path / "x.safetensors").exists()


def test_key_state_dict_round_trips_to_flat_pt(tmp_path: Path, helpers: Any) -> None:
    torch = torch_or_skip()
    src = FIXTURES / "training.pt"
    ckpt.convert(src, tmp_path / "m.safetensors", key="model")
    ckpt.convert(tmp_path / "m.safetensors", tmp_path / "m.pt")
    ref = torch.load(src, weights_only=True)["model"]
    helpers.compare_loaded(torch.load(tmp_path / "m.pt", weights_only=True), ref, check_storage_identity=False)


# -- sharding -----------------------------------------------------------------------------------------


def test_sharded_out_and_back(tmp_path: Path, helpers: Any) -> None:
    torch = torch_or_skip()
    src = FIXTURES / "training.pt"
    out = tmp_path / "shards"
    res = ckpt.convert(src, out, shard_size=200)
    files = listing(out)
    assert "model.safetensors.index.json" in files
    shards = [f for f in files if f.endswith(".safetensors")]
    assert len(shards) == len(res.files) > 1
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == res.tensor_bytes
    assert set(index["weight_map"].values()) == set(shards)
    assert METADATA_KEY in index["metadata"]
    for f in shards:
        assert (out / f).stat().st_size <= 200 + 4096
    # inspect reads the index; back to one .pt equal to the source
    assert ckpt.inspect(out).totals["tensors"] == res.tensors
    ckpt.convert(out, tmp_path / "back.pt")
    helpers.compare_loaded(torch.load(tmp_path / "back.pt", weights_only=True), torch.load(src, weights_only=True),
                           check_storage_identity=False)


def test_sharded_pt_out(tmp_path: Path) -> None:
    torch = torch_or_skip()
    res = ckpt.convert(FIXTURES / "training.pt", tmp_path / "bins", shard_size="200B", to="pt", key="model")
    files = listing(tmp_path / "bins")
    assert "pytorch_model.bin.index.json" in files
    index = json.loads((tmp_path / "bins" / "pytorch_model.bin.index.json").read_text())
    total = {}
    for shard in set(index["weight_map"].values()):
        total.update(torch.load(tmp_path / "bins" / shard, weights_only=True))
    ref = torch.load(FIXTURES / "training.pt", weights_only=True)["model"]
    assert set(total) == set(ref)
    for k in ref:
        assert torch.equal(total[k], ref[k])
    assert res.index is not None


def test_sharded_failure_leaves_nothing(tmp_path: Path) -> None:
    torch = torch_or_skip()
    sd = {"a": torch.ones(100), "b": torch.ones(100), "c": torch.ones(2, dtype=torch.complex128)}
    torch.save(sd, tmp_path / "m.pt")
    with pytest.raises(UnsupportedFeatureError, match="c: the tensor has dtype complex128"):
        ckpt.convert(tmp_path / "m.pt", tmp_path / "out", shard_size=400)
    assert not (tmp_path / "out").exists()
    (tmp_path / "existing").mkdir()
    (tmp_path / "existing" / "keep.txt").write_text("x")
    with pytest.raises(UnsupportedFeatureError):
        ckpt.convert(tmp_path / "m.pt", tmp_path / "existing", shard_size=400)
    assert listing(tmp_path / "existing") == ["keep.txt"]


def test_sharded_failure_midway_removes_written_shards(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a = np.ones(64, "<f4")
    write_st(tmp_path / "m.safetensors", {"a": a, "b": a, "c": a})
    import ckpt.safetensors_write as sw

    real = sw.write
    calls = []

    def failing(path: str, *args: Any, **kw: Any) -> int:
        calls.append(path)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real(path, *args, **kw)

    monkeypatch.setattr(sw, "write", failing)
    (tmp_path / "out").mkdir()
    with pytest.raises(OSError):
        ckpt.convert(tmp_path / "m.safetensors", tmp_path / "out", shard_size=256)
    assert len(calls) == 3
    assert listing(tmp_path / "out") == []


# -- bad input -------------------------------------------------------------------------------------


def test_dtype_safetensors_cannot_hold(tmp_path: Path) -> None:
    torch = torch_or_skip()
    torch.save({"ok": torch.ones(2), "z": torch.ones(2, dtype=torch.complex128)}, tmp_path / "m.pt")
    with pytest.raises(UnsupportedFeatureError, match="m.pt: z: the tensor has dtype complex128"):
        ckpt.convert(tmp_path / "m.pt", tmp_path / "m.safetensors")
    assert listing(tmp_path) == ["m.pt"]
    ckpt.convert(tmp_path / "m.pt", tmp_path / "m2.safetensors", exclude=["z"])


def test_name_collision_after_flattening(tmp_path: Path) -> None:
    torch = torch_or_skip()
    torch.save({"a.b": torch.ones(1), "a": {"b": torch.zeros(1)}}, tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match="same name 'a.b'"):
        ckpt.convert(tmp_path / "m.pt", tmp_path / "m.safetensors")
    assert not (tmp_path / "m.safetensors").exists()


def test_unknown_output_and_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="output format"):
        ckpt.convert(FIXTURES / "state_dict.pt", tmp_path / "m.xyz")
    with pytest.raises(CheckpointError, match="does not exist"):
        ckpt.convert(FIXTURES / "state_dict.pt", tmp_path / "no" / "m.safetensors")
    with pytest.raises(ValueError, match="bf16"):
        ckpt.convert(FIXTURES / "state_dict.pt", tmp_path / "m.safetensors", dtype="int8")
    with pytest.raises(ValueError, match="size"):
        ckpt.convert(FIXTURES / "state_dict.pt", tmp_path / "out", shard_size="lots")


def test_lying_safetensors_source_is_refused(tmp_path: Path) -> None:
    write_st(tmp_path / "m.safetensors", {"a": np.ones(4, "<f4")})
    data = (tmp_path / "m.safetensors").read_bytes()
    (tmp_path / "short.safetensors").write_bytes(data[:-4])
    with pytest.raises(CheckpointError, match="truncated"):
        ckpt.convert(tmp_path / "short.safetensors", tmp_path / "o.pt")
    assert not (tmp_path / "o.pt").exists()


def test_disk_full_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_st(tmp_path / "m.safetensors", {"a": np.ones(1 << 16, "<f4")})
    import ckpt.zipwrite as zw

    def full(*a: Any, **k: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(zw.ZipSink, "_write_all", full)
    monkeypatch.setattr(zw, "_copy_range", full)
    with pytest.raises(CheckpointError, match="No space"):
        ckpt.convert(tmp_path / "m.safetensors", tmp_path / "o.safetensors", dtype="fp16")
    assert listing(tmp_path) == ["m.safetensors"]


def test_flatten_refuses_what_metadata_cannot_hold() -> None:
    from ckpt.flatten import flatten
    from ckpt.values import InertObject

    with pytest.raises(UnsupportedFeatureError, match="cannot hold"):
        flatten({"x": InertObject("a.B")})
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(UnsupportedFeatureError, match="cycle"):
        flatten({"x": loop})


def test_flatten_unflatten_values_round_trip() -> None:
    from ckpt.flatten import flatten, unflatten
    from ckpt.dtypes import DTYPES
    from ckpt.values import Device, Size

    tree = {"f": float("nan"), "i": float("-inf"), "c": 1 + 2j, "b": b"\x00\xff", "t": (1, "x"), "s": {3, 1},
            "d": {1: "one", "$x": 2}, "size": Size((2, 3)), "dt": DTYPES["bfloat16"], "dev": Device("cuda", 1),
            "o": OrderedDict([("k", [1.5, None, True])])}
    f = flatten(tree)
    doc = json.loads(f.metadata_json() or "{}")
    back = unflatten(doc, {})
    assert back["i"] == float("-inf") and back["f"] != back["f"]
    for k in ("c", "b", "t", "s", "d", "size", "o"):
        assert back[k] == tree[k] and type(back[k]) is type(tree[k]), k
    assert back["dt"] is DTYPES["bfloat16"] and str(back["dev"]) == "cuda:1"


def test_progress_reports_bytes(tmp_path: Path) -> None:
    a = np.ones(1000, "<f4")
    write_st(tmp_path / "m.safetensors", {"a": a, "b": a})
    seen: list[tuple[int, int]] = []
    ckpt.convert(tmp_path / "m.safetensors", tmp_path / "o.pt", progress=lambda d, t: seen.append((d, t)))
    assert seen[0] == (0, 8000) and seen[-1] == (8000, 8000)


# -- every fixture torch made, through safetensors and back ---------------------------------------------


def _same_values(helpers: Any, got: Any, ref: Any, path: str = "") -> None:
    """Structure, types and tensor values (dtype, shape, bits) equal; strides and sharing may differ
    (views are written as contiguous tensors)."""
    import torch

    if isinstance(ref, torch.Tensor):
        assert isinstance(got, torch.Tensor) and type(got) is type(ref), path
        assert got.dtype == ref.dtype and got.shape == ref.shape and got.requires_grad == ref.requires_grad, path
        a, b = got.detach().reshape(-1).contiguous(), ref.detach().cpu().reshape(-1).contiguous()
        if a.is_conj() or b.is_conj() or a.is_neg() or b.is_neg():
            a, b = a.resolve_conj().resolve_neg(), b.resolve_conj().resolve_neg()
        assert a.view(torch.uint8).tolist() == b.view(torch.uint8).tolist(), path
        return
    if not path and isinstance(ref, dict) and all(isinstance(v, torch.Tensor) for v in ref.values()):
        got, ref = dict(got), dict(ref)  # a flat state dict comes back in safetensors' order, as a dict
        assert sorted(got) == sorted(ref)
        got = {k: got[k] for k in ref}
    assert type(got) is type(ref), f"{path}: {type(got)} vs {type(ref)}"
    if isinstance(ref, dict):
        assert list(got) == list(ref), path
        for k in ref:
            _same_values(helpers, got[k], ref[k], f"{path}.{k}")
        assert getattr(got, "__dict__", {}).keys() == getattr(ref, "__dict__", {}).keys(), path
    elif isinstance(ref, (list, tuple)):
        assert len(got) == len(ref), path
        for i, (g, r) in enumerate(zip(got, ref)):
            _same_values(helpers, g, r, f"{path}.{i}")
    elif isinstance(ref, float) and ref != ref:
        assert got != got, path
    else:
        assert got == ref, path


# protocol_5 and empty_bytes hold bytes values: torch.save (and ckpt.save, which writes what it
# writes) pickles them with protocol 2 in a way torch.load(weights_only=True) refuses, so no .pt
# side can hold them for torch; they are checked through safetensors only.
ROUND_TRIP = ["state_dict", "training", "optimizer_adam", "optimizer_sgd", "parameters", "shapes", "views",
              "deflated", "no_crc", "minimal_zip", "cuda_tagged", "protocol_2", "bytesio", "archive_name"]


@pytest.mark.parametrize("name", ROUND_TRIP)
def test_fixture_round_trips(tmp_path: Path, helpers: Any, name: str) -> None:
    torch = torch_or_skip()
    src = FIXTURES / f"{name}.pt"
    ckpt.convert(src, tmp_path / "x.safetensors")
    ckpt.convert(tmp_path / "x.safetensors", tmp_path / "back.pt")
    ref = torch.load(src, weights_only=True, map_location="cpu")
    _same_values(helpers, torch.load(tmp_path / "back.pt", weights_only=True), ref)
    from safetensors.torch import load_file

    flat = load_file(str(tmp_path / "x.safetensors"))
    with ckpt.open(src) as ck:
        for path, _ in ck.tensors():
            if path in flat:
                node: Any = ref
                for key in _keys_of(ck.root, path):
                    node = node[key]
                assert torch.equal(flat[path], node), path


def _keys_of(root: Any, dotted: str) -> list[Any]:
    from ckpt.walk import iter_tensors

    for path, keys, _ in iter_tensors(root):
        if path == dotted:
            return list(keys)
    raise KeyError(dotted)


@pytest.mark.parametrize("name", ["big_endian", "dtypes"])
def test_big_endian_and_dtypes_without_complex(tmp_path: Path, name: str) -> None:
    torch = torch_or_skip()
    src = FIXTURES / f"{name}.pt"
    with ckpt.open(src) as ck:
        keep = [p for p, t in ck.tensors() if t.dtype.safetensors is not None]
    ckpt.convert(src, tmp_path / "x.safetensors", only=keep)
    from safetensors.torch import load_file

    got = load_file(str(tmp_path / "x.safetensors"))
    ref = torch.load(src, weights_only=True)
    assert got
    for k, v in got.items():
        assert v.dtype == ref[k].dtype and v.shape == ref[k].shape, k
        assert v.reshape(-1).view(torch.uint8).tolist() == ref[k].reshape(-1).contiguous().view(torch.uint8).tolist(), k


def test_legacy_source(tmp_path: Path) -> None:
    torch = torch_or_skip()
    src = FIXTURES / "formats" / "legacy_views.pt"
    ckpt.convert(src, tmp_path / "x.safetensors")
    from safetensors.torch import load_file

    got = load_file(str(tmp_path / "x.safetensors"))
    ref = torch.load(src, weights_only=True)
    flat = {p: v for p, v in _flat_torch(ref)}
    assert set(got) == set(flat)
    for k in got:
        assert torch.equal(got[k], flat[k]), k


def _flat_torch(obj: Any, prefix: str = "") -> Any:
    import torch

    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _flat_torch(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _flat_torch(v, f"{prefix}.{i}" if prefix else str(i))


# -- a source that is not a file ckpt reads: the tensor-source interface ----------------------------


class ChunkedTensor:
    """What a reader of another format (torch.distributed.checkpoint) hands convert: dtype, shape,
    nbytes, read_into; and iter_chunks for tensors assembled from pieces."""

    def __init__(self, array: np.ndarray, dtype_name: str, chunked: bool) -> None:
        from ckpt.dtypes import DTYPES

        self.array = np.ascontiguousarray(array)
        self.dtype = DTYPES[dtype_name]
        self.shape = tuple(array.shape)
        self.nbytes = self.array.nbytes
        if chunked:
            self.iter_chunks = self._chunks

    def read_into(self, buf: memoryview) -> None:
        buf[:] = memoryview(self.array).cast("B")

    def _chunks(self, size: int) -> Any:
        raw = memoryview(self.array).cast("B")
        step = 12  # whole elements, several pieces
        for i in range(0, len(raw), step):
            yield raw[i : i + step]


class FakeReader:
    metadata = None


class FakeCheckpoint:
    def __init__(self, root: Any) -> None:
        self.path = "fake-dcp"
        self.format = "dcp"
        self.root = root
        self.reader = FakeReader()


@pytest.mark.parametrize("dst", ["x.safetensors", "x.pt", "shards"])
def test_tensor_source_interface(tmp_path: Path, dst: str) -> None:
    a = np.arange(30, dtype="<f4").reshape(5, 6)
    b = np.arange(7, dtype="<i8")
    root = {"model": {"a": ChunkedTensor(a, "float32", True), "b": ChunkedTensor(b, "int64", False)}, "step": 9}
    kw = {"shard_size": 64} if dst == "shards" else {}
    res = ckpt.convert(FakeCheckpoint(root), tmp_path / dst, dtype="bf16", **kw)
    assert res.source_format == "dcp" and res.tensors == 2 and res.cast_tensors == 1
    back = ckpt.load(tmp_path / dst, as_="numpy") if dst != "x.pt" else ckpt.load(tmp_path / dst, as_="numpy")
    if dst == "x.safetensors":
        back = ckpt.load(tmp_path / dst, as_="numpy")
        assert np.array_equal(back["model.a"], a) and np.array_equal(back["model.b"], b)
    elif dst == "x.pt":
        assert back["step"] == 9
        assert np.array_equal(back["model"]["a"], a) and np.array_equal(back["model"]["b"], b)
    else:
        assert np.array_equal(back["model.a"], a)


def test_failed_copy_to_pt_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """safetensors -> .pt copies records on threads (computing their CRCs) while later ones are laid
    out: a failing copy still leaves no file and no temporary behind."""
    write_st(tmp_path / "m.safetensors", {f"t{i}": np.full(4096, i, "<f4") for i in range(6)})
    import ckpt.zipwrite as zw

    def broken(*a: Any, **k: Any) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(zw, "_copy_through", broken)
    with pytest.raises(CheckpointError, match="Input/output error"):
        ckpt.convert(tmp_path / "m.safetensors", tmp_path / "o.pt")
    assert listing(tmp_path) == ["m.safetensors"]
    monkeypatch.undo()
    ckpt.convert(tmp_path / "m.safetensors", tmp_path / "o.pt")
    got = ckpt.load(tmp_path / "o.pt", as_="numpy")
    assert [float(got[f"t{i}"][0]) for i in range(6)] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert ckpt.verify(tmp_path / "o.pt").ok


# -- bad input: clear errors, exit 2, nothing left behind ----------------------------------------------

try:
    from . import adversarial_kit as kit  # type: ignore[no-redef]
except ImportError:  # pragma: no cover - run as a rootdir-less module
    import adversarial_kit as kit  # type: ignore[no-redef]


def _st_bytes(header: dict[str, Any], data: bytes) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


LYING_HEADERS = {
    "past-end": (_st_bytes({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, bytes(8)), "truncated"),
    "overlap": (_st_bytes({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                           "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, bytes(12)), "overlaps"),
    "bad-json": (struct.pack("<Q", 5) + b"{nope" + bytes(8), "not valid JSON"),
    "unknown-dtype": (_st_bytes({"a": {"dtype": "F31", "shape": [2], "data_offsets": [0, 8]}}, bytes(8)),
                      "unknown safetensors dtype"),
    "length-too-big": (struct.pack("<Q", 1 << 40) + b"{}", "at most"),
}


@pytest.mark.parametrize("case", sorted(LYING_HEADERS))
def test_lying_safetensors_header(tmp_path: Path, case: str) -> None:
    data, message = LYING_HEADERS[case]
    (tmp_path / "in.safetensors").write_bytes(data)
    with pytest.raises(CheckpointError, match=message):
        ckpt.convert(tmp_path / "in.safetensors", tmp_path / "out.pt")
    from click.testing import CliRunner
    from ckpt_cli.main import cli

    res = CliRunner().invoke(cli, ["convert", str(tmp_path / "in.safetensors"), str(tmp_path / "out.safetensors")])
    assert res.exit_code == 2 and "in.safetensors" in res.output and "Traceback" not in res.output
    assert listing(tmp_path) == ["in.safetensors"]


def test_view_that_does_not_fit_its_storage(tmp_path: Path) -> None:
    body = kit.dict_pickle({"w": kit.rebuild_v2(kit.pid("0", numel=3), size=(4,))})
    kit.write(tmp_path / "bad.pt", kit.torch_zip(body, {"0": kit.floats(1, 2, 3)}))
    with pytest.raises(CheckpointError, match="out of bounds"):
        ckpt.convert(tmp_path / "bad.pt", tmp_path / "out.safetensors")
    assert listing(tmp_path) == ["bad.pt"]


def test_bad_index_sources(tmp_path: Path) -> None:
    write_st(tmp_path / "model-00001-of-00001.safetensors", {"a": np.ones(2, "<f4")})
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"a": "model-00001-of-00001.safetensors",
                                                "b": "model-00002-of-00002.safetensors"}}))
    with pytest.raises(CheckpointError, match="not in"):
        ckpt.convert(index, tmp_path / "out.pt")
    index.write_text('{"weight_map": {"a": "model-00001-of-00001.safetensors", '
                     '"a": "model-00001-of-00001.safetensors"}}')
    with pytest.raises(CheckpointError, match="twice"):
        ckpt.convert(tmp_path, tmp_path / "out.pt")
    assert not (tmp_path / "out.pt").exists()


def test_same_source_and_destination(tmp_path: Path) -> None:
    write_st(tmp_path / "m.safetensors", {"a": np.ones(2, "<f4")})
    before = (tmp_path / "m.safetensors").read_bytes()
    with pytest.raises(CheckpointError, match="same file"):
        ckpt.convert(tmp_path / "m.safetensors", tmp_path / "m.safetensors", dtype="fp16")
    assert (tmp_path / "m.safetensors").read_bytes() == before


def test_same_file_through_a_hard_link_and_stale_shards(tmp_path: Path) -> None:
    write_st(tmp_path / "m.safetensors", {"a": np.ones(64, "<f4"), "b": np.ones(64, "<f4")})
    os.link(tmp_path / "m.safetensors", tmp_path / "link.safetensors")
    with pytest.raises(CheckpointError, match="same file"):
        ckpt.convert(tmp_path / "m.safetensors", tmp_path / "link.safetensors")
    ckpt.convert(tmp_path / "m.safetensors", tmp_path / "out", shard_size=256)
    assert len([f for f in listing(tmp_path / "out") if f.endswith(".safetensors")]) == 2
    res = ckpt.convert(tmp_path / "m.safetensors", tmp_path / "out", shard_size=4096)
    assert any("earlier conversion" in n for n in res.notes)
    assert [p.kind for p in ckpt.verify(tmp_path / "out").problems] == ["orphan-shard", "orphan-shard"]


@pytest.mark.parametrize("name", ["training", "optimizer_adam", "optimizer_sgd", "state_dict"])
def test_round_trip_against_recorded_torch_answer(tmp_path: Path, helpers: Any, name: str) -> None:
    """Without torch too: .pt -> safetensors -> .pt, read back by ckpt's numpy flavour, equals what
    torch.load returned when the fixture was made."""
    ckpt.convert(FIXTURES / f"{name}.pt", tmp_path / "x.safetensors")
    ckpt.convert(tmp_path / "x.safetensors", tmp_path / "back.pt")
    helpers.compare_to_expected(ckpt.load(tmp_path / "back.pt", as_="numpy"), helpers.expected(name), "numpy")


# -- flatten / unflatten: any tree the schema holds comes back equal ---------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


def _tensor_leaf() -> Any:
    from ckpt.dtypes import DTYPES
    from ckpt.tensors import StorageRef, TensorRef

    s = StorageRef("0", DTYPES["float32"], "cpu", 4)
    return TensorRef(s, DTYPES["float32"], (4,), (1,), 0)


_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                     st.text(max_size=5), st.binary(max_size=4), st.complex_numbers(allow_nan=False))
_keys = st.one_of(st.text(alphabet="ab$_", max_size=3), st.integers(0, 5))
_trees = st.recursive(
    st.one_of(_scalars, st.builds(_tensor_leaf)),
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.lists(children, max_size=3).map(tuple),
        st.dictionaries(_keys, children, max_size=3),
        st.dictionaries(st.text(alphabet="xy", max_size=2), children, max_size=3).map(OrderedDict),
    ),
    max_leaves=12,
)


def _equal(a: Any, b: Any) -> bool:
    from ckpt.tensors import TensorRef

    if type(a) is TensorRef or type(b) is TensorRef:
        return a is b
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (a != a and b != b) or a == b
    if isinstance(a, dict):
        return list(a) == list(b) and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=st.dictionaries(st.text(alphabet="mn", min_size=1, max_size=2), _trees, max_size=4))
def test_flatten_unflatten_property(tree: dict[str, Any]) -> None:
    from ckpt.flatten import flatten, parse_metadata, unflatten

    try:
        f = flatten(tree)
    except CheckpointError as e:
        assert "same name" in str(e)  # two paths flattened to one name: refused, never merged
        return
    doc = f.metadata_json()
    if doc is None:  # a flat state dict of tensors: nothing to record
        assert all(type(v).__name__ == "TensorRef" for v in tree.values())
        return
    back = unflatten(parse_metadata(doc), f.tensors)
    assert _equal(back, tree)


def test_storages_read_whole_reuse_buffers_once_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Storages that cannot be copied file to file (here deflated records) are read whole into
    buffers that are reused once their bytes are written: every tensor still lands intact, and
    fewer buffers are made than tensors."""
    from ckpt_writer import T, write

    import ckpt.tensor_stream as ts

    rng = np.random.default_rng(5)
    arrays = {f"w{i}": rng.standard_normal(300_000 + 1000 * (i % 2)).astype("<f4") for i in range(8)}
    write(tmp_path / "packed.pt", {k: T(v) for k, v in arrays.items()}, compress=True)
    made = []
    real_init = ts.Recycler.take

    def take(self: Any, n: int) -> memoryview:
        free = len(self._free)
        view = real_init(self, n)
        if len(self._free) == free:
            made.append(n)
        return view

    monkeypatch.setattr(ts.Recycler, "take", take)
    ckpt.convert(tmp_path / "packed.pt", tmp_path / "out.safetensors", fsync=False)
    from safetensors.numpy import load_file

    got = load_file(str(tmp_path / "out.safetensors"))
    assert set(got) == set(arrays) and all(np.array_equal(got[k], v) for k, v in arrays.items())
    assert 0 < len(made) < len(arrays)
