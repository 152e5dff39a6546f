"""``ckpt.diff``: structure, values, optimizer state, bad input, memory and laziness.

Most checkpoints here are written without torch (``tests/ckpt_writer.py``), so these tests run in
the no-torch environment too; the statistics are checked against numpy computed independently.
Where torch is installed, real ``torch.save`` files are diffed and torch itself is the oracle for
``allclose``, NaN/Inf semantics and the exotic dtypes (tests/test_diff_torch.py).
"""

from __future__ import annotations

import json
import math
import struct
import tracemalloc
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import ckpt
from ckpt.diff_paths import Resolution, flatten, register_resolver, RESOLVERS
from ckpt.errors import CheckpointError, CorruptCheckpointError, NotACheckpointError, ResourceLimitError
from ckpt_writer import Call, Global, T, write

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def make(tmp_path: Path, name: str, root: Any, **kw: Any) -> Path:
    path = tmp_path / name
    write(path, root, **kw)
    return path


def pair(tmp_path: Path, a: Any, b: Any, **kw: Any) -> tuple[Path, Path]:
    return make(tmp_path, "a.pt", a, **kw), make(tmp_path, "b.pt", b, **kw)


def by_path(report: ckpt.DiffReport) -> dict[str, Any]:
    return {t.path: t for t in report.tensors}


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# -- identical, same within tolerance, different ---------------------------------------------------


def test_identical_files_are_the_same_and_nothing_is_decoded(tmp_path: Path, monkeypatch: Any) -> None:
    import ckpt.tensor_stats as ts

    def boom(*a: Any, **k: Any) -> Any:
        raise AssertionError("an identical pair was decoded")

    monkeypatch.setattr(ts, "compare_values", boom)
    monkeypatch.setattr(ts, "decode", boom)
    w = rng().standard_normal((64, 32)).astype(np.float32)
    root = {"model": OrderedDict(w=T(w), b=T(np.zeros(32, np.float32))), "epoch": 3, "betas": (0.9, 0.999)}
    a, b = pair(tmp_path, root, root)
    report = ckpt.diff(a, b)
    assert report.same
    assert {t.status for t in report.tensors} == {"identical"}
    assert report.counts["tensors"]["identical"] == 2
    assert report.counts["values"] == {"common": 2, "changed": 0, "only_a": 0, "only_b": 0}
    assert report.bytes_compared == 2 * (w.nbytes + 32 * 4)
    assert report.as_json()["same"] is True


def test_a_file_against_itself_for_every_committed_fixture() -> None:
    """Every fixture ckpt opens strictly compares equal to itself (views, shared storages, dtypes,
    big-endian files, meta tensors, ...)."""
    seen = 0
    for path in sorted(FIXTURES.glob("*.pt")):
        try:
            with ckpt.open(path):
                pass
        except CheckpointError:
            continue
        report = ckpt.diff(path, path)
        assert report.same, (path.name, [t.as_json() for t in report.changed_tensors()][:3], report.values[:3])
        seen += 1
    assert seen >= 15


def test_one_changed_element_gives_exact_statistics(tmp_path: Path) -> None:
    w = rng().standard_normal(1000).astype(np.float32)
    w2 = w.copy()
    w2[17] += 0.5
    a, b = pair(tmp_path, {"w": T(w)}, {"w": T(w2)})
    report = ckpt.diff(a, b)
    t = by_path(report)["w"]
    s = t.stats
    assert t.status == "different" and not report.same
    assert s.differing == 1 and s.differing_share == 1 / 1000
    assert s.max_abs == pytest.approx(abs(float(w2[17]) - float(w[17])), rel=1e-6)
    assert s.max_rel == pytest.approx(abs(float(w2[17]) - float(w[17])) / abs(float(w2[17])), rel=1e-6)
    assert s.mean_abs == pytest.approx(s.max_abs / 1000, rel=1e-6)
    assert s.allclose is False
    # the same pair within a loose tolerance is "close" and the checkpoints the same
    loose = ckpt.diff(a, b, atol=1.0)
    assert by_path(loose)["w"].status == "close" and loose.same
    assert by_path(loose)["w"].stats.differing == 1


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
@pytest.mark.parametrize("rtol,atol", [(1e-5, 1e-8), (1e-3, 0.0), (0.0, 1e-3), (0.0, 0.0), (0.05, 0.01)])
def test_statistics_match_numpy(tmp_path: Path, dtype: str, rtol: float, atol: float) -> None:
    r = rng(1)
    n = 300_001  # more than one chunk
    x = r.standard_normal(n).astype(dtype)
    y = (x + r.standard_normal(n) * r.choice([0, 1e-6, 1e-3, 1e-1], n)).astype(dtype)
    y[:50] = 0  # zeros in b: infinite relative differences
    x[50:60] = 0
    a, b = pair(tmp_path, {"x": T(x)}, {"x": T(y)})
    s = by_path(ckpt.diff(a, b, rtol=rtol, atol=atol))["x"].stats
    ct = np.float32 if dtype == "float16" else np.dtype(dtype)
    xa, ya = x.astype(ct), y.astype(ct)
    ad = np.abs(xa - ya)
    assert s.differing == np.count_nonzero(xa != ya)
    assert s.max_abs == pytest.approx(float(ad.max()), rel=1e-6)
    assert s.mean_abs == pytest.approx(float(ad.astype(np.float64).mean()), rel=1e-4)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(ad > 0, ad / np.abs(ya), 0)
    assert s.max_rel == pytest.approx(float(rel.max()), rel=1e-6)
    expected = bool(np.all(ad <= (atol + rtol * np.abs(ya)).astype(ct)))
    assert s.allclose == expected


def test_nan_and_inf_changes(tmp_path: Path) -> None:
    x = np.array([1.0, np.nan, np.inf, -np.inf, 2.0, np.nan, 5.0, 0.0], np.float32)
    y = np.array([1.0, np.nan, np.inf, np.inf, np.nan, 3.0, np.inf, 0.0], np.float32)
    a, b = pair(tmp_path, {"x": T(x)}, {"x": T(y)})
    s = by_path(ckpt.diff(a, b))["x"].stats
    assert s.nan == [2, 2] and s.inf == [2, 3]
    assert s.nan_changed == 2  # positions 4 and 5
    assert s.inf_changed == 1  # position 6 (position 3 stays infinite, changes sign)
    assert s.differing == 4  # 3, 4, 5, 6; NaN staying NaN and inf staying inf are not differences
    assert s.max_abs == math.inf and s.max_rel == math.inf
    assert s.allclose is False
    doc = by_path(ckpt.diff(a, b))["x"].as_json()
    assert doc["stats"]["max_abs_diff"] == "inf"


def test_nan_is_close_to_nan_only_with_equal_nan(tmp_path: Path) -> None:
    x = np.array([1.0, np.nan, np.inf], np.float32)
    y = np.array([1.0000001, np.nan, np.inf], np.float32)
    a, b = pair(tmp_path, {"x": T(x)}, {"x": T(y)})
    assert by_path(ckpt.diff(a, b))["x"].status == "different"  # torch.allclose: NaN != NaN
    r = ckpt.diff(a, b, equal_nan=True)
    assert by_path(r)["x"].status == "close" and r.same


def test_negative_zero_is_equal_but_not_identical(tmp_path: Path) -> None:
    a, b = pair(tmp_path, {"x": T(np.array([0.0, 1.0], np.float32))}, {"x": T(np.array([-0.0, 1.0], np.float32))})
    t = by_path(ckpt.diff(a, b, atol=0, rtol=0))["x"]
    assert t.status == "close" and t.stats.differing == 0


@pytest.mark.parametrize("dtype", ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "bool"])
def test_integer_and_bool_tensors(tmp_path: Path, dtype: str) -> None:
    r = rng(2)
    if dtype == "bool":
        x = r.integers(0, 2, 1000).astype(bool)
    else:
        info = np.iinfo(dtype)
        x = r.integers(max(info.min, -1000), min(info.max, 1000), 1000).astype(dtype)
    y = x.copy()
    y[::10] = (~y[::10]) if dtype == "bool" else y[::10] // 2
    a, b = pair(tmp_path, {"x": T(x)}, {"x": T(y)})
    s = by_path(ckpt.diff(a, b))["x"].stats
    assert s.differing == np.count_nonzero(x != y)
    assert s.max_abs == float(np.abs(x.astype(np.float64) - y.astype(np.float64)).max())


def test_complex_tensors(tmp_path: Path) -> None:
    r = rng(3)
    x = (r.standard_normal(100) + 1j * r.standard_normal(100)).astype(np.complex64)
    y = x.copy()
    y[5] += 0.25j
    a, b = pair(tmp_path, {"x": T(x)}, {"x": T(y)})
    s = by_path(ckpt.diff(a, b))["x"].stats
    assert s.differing == 1 and s.max_abs == pytest.approx(0.25, rel=1e-6)
    assert s.compared_as == "complex64"


# -- dtypes numpy lacks, without torch ----------------------------------------------------------------


def bf16_bits(values: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits (round to nearest even), the way torch casts."""
    u = values.astype(np.float32).view(np.uint32).astype(np.uint64)
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return rounded.astype(np.uint16)


def test_bfloat16_values_without_torch(tmp_path: Path) -> None:
    r = rng(4)
    x = r.standard_normal(5000).astype(np.float32)
    bx = bf16_bits(x)
    by = bx.copy()
    by[::7] += 1  # one ulp up
    a, b = pair(tmp_path, {"x": T(bx, "bfloat16")}, {"x": T(by, "bfloat16")})
    t = by_path(ckpt.diff(a, b))["x"]
    xa = (bx.astype(np.uint32) << 16).view(np.float32)
    ya = (by.astype(np.uint32) << 16).view(np.float32)
    assert t.stats.compared_as == "float32"
    assert t.stats.differing == np.count_nonzero(xa != ya)
    assert t.stats.max_abs == float(np.abs(xa - ya).max())
    same = ckpt.diff(a, a)
    assert same.same and by_path(same)["x"].status == "identical"


@pytest.mark.parametrize("name", ["float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu"])
def test_float8_values_without_torch(tmp_path: Path, name: str) -> None:
    from ckpt.numpy_out import fp8_table

    bits = np.arange(256, dtype=np.uint8)
    other = bits.copy()
    other[10:20] = other[10:20] ^ 1
    a, b = pair(tmp_path, {"x": T(bits, name)}, {"x": T(other, name)})
    s = by_path(ckpt.diff(a, b, equal_nan=True))["x"].stats
    table = fp8_table(name)
    xa, ya = table[bits], table[other]
    both_nan = np.isnan(xa) & np.isnan(ya)
    assert s.differing == np.count_nonzero((xa != ya) & ~both_nan)
    finite = ~(np.isnan(xa) | np.isnan(ya))
    with np.errstate(invalid="ignore"):
        assert s.max_abs == float(np.abs(xa - ya)[finite & (xa != ya)].max())


def test_float4_packed_values(tmp_path: Path) -> None:
    bits = np.arange(256, dtype=np.uint8)
    other = bits.copy()
    other[3] = 0x77  # both nibbles 6.0
    a, b = pair(tmp_path, {"x": T(bits, "float4_e2m1fn_x2")}, {"x": T(other, "float4_e2m1fn_x2")})
    s = by_path(ckpt.diff(a, b))["x"].stats
    assert s.numel == 512  # two 4-bit values per stored element
    # 0x03 holds 1.5 (low nibble) and 0.0 (high nibble); 0x77 holds 6.0 twice
    assert s.differing == 2 and s.max_abs == 6.0 and s.mean_abs == (4.5 + 6.0) / 512


def test_quantized_and_bits_dtypes_compare_as_stored_bits(tmp_path: Path) -> None:
    x = np.arange(16, dtype=np.uint16)
    y = x.copy()
    y[2] = 99
    a, b = pair(tmp_path, {"x": T(x, "bits16")}, {"x": T(y, "bits16")})
    t = by_path(ckpt.diff(a, b))["x"]
    assert t.status == "different" and t.stats.compared_as == "raw" and t.stats.differing == 1
    assert t.stats.allclose is None and "stored bits" in t.note
    doc = t.as_json()["stats"]
    assert doc["max_abs_diff"] is None


# -- structure ----------------------------------------------------------------------------------------


def test_keys_dtypes_shapes_and_values(tmp_path: Path) -> None:
    r = rng(5)
    w = r.standard_normal((4, 3)).astype(np.float32)
    a_root = {
        "model": OrderedDict([("w", T(w)), ("gone", T(np.ones(2, np.float32))), ("h", T(w.astype(np.float16))),
                              ("s", T(w))]),
        "epoch": 3, "lr": 0.1, "name": "run-1", "betas": (0.9, 0.999), "step": 10.0,
    }
    b_root = {
        "model": OrderedDict([("w", T(w)), ("new", T(np.ones(2, np.float32))), ("h", T(w.astype(np.float16).astype(np.float32))),
                              ("s", T(w.reshape(3, 4)))]),
        "epoch": 4, "lr": 0.1, "name": "run-1", "betas": [0.9, 0.999], "step": T(np.array(10.0, np.float32)),
        "extra": None,
    }
    a, b = pair(tmp_path, a_root, b_root)
    report = ckpt.diff(a, b)
    assert not report.same
    t = by_path(report)
    assert t["model.w"].status == "identical"
    assert t["model.h"].changes == ["dtype"] and t["model.h"].status == "close"  # float16 values in float32
    assert t["model.h"].is_difference
    assert t["model.s"].changes == ["shape"] and t["model.s"].status == "not_compared" and t["model.s"].stats is None
    assert [e["path"] for e in report.only_a] == ["model.gone"]
    assert [e["path"] for e in report.only_b] == ["model.new", "extra"]
    changed = {v.path: v for v in report.values}
    assert set(changed) == {"epoch", "step"}  # betas tuple vs list is the same value
    assert changed["epoch"].a == 3 and changed["epoch"].b == 4
    assert changed["step"].kind == "type_changed" and changed["step"].equal_value
    c = report.counts
    assert c["tensors"]["only_a"] == 1 and c["tensors"]["only_b"] == 1 and c["values"]["only_b"] == 1
    assert c["changes"]["dtype"] == 1 and c["changes"]["shape"] == 1
    # largest change first: the shape change (not compared), then by max abs diff
    assert report.tensors[0].path == "model.s"


def test_ignore_dtype(tmp_path: Path) -> None:
    w = rng(11).standard_normal(100).astype(np.float32)
    a, b = pair(tmp_path, {"w": T(w)}, {"w": T(bf16_bits(w), "bfloat16")})
    strict = ckpt.diff(a, b, atol=1e-2)
    assert by_path(strict)["w"].status == "close" and by_path(strict)["w"].changes == ["dtype"] and not strict.same
    relaxed = ckpt.diff(a, b, atol=1e-2, ignore_dtype=True)
    assert relaxed.same and relaxed.as_json()["options"]["ignore_dtype"] is True
    assert not ckpt.diff(a, b, ignore_dtype=True).same  # the values still count


def test_noted_changes_do_not_make_checkpoints_different(tmp_path: Path) -> None:
    w = np.ones((2, 2), np.float32)
    a, b = pair(tmp_path, {"w": T(w, location="cuda:0", parameter=True, requires_grad=True)}, {"w": T(w)})
    report = ckpt.diff(a, b)
    t = by_path(report)["w"]
    assert t.status == "identical" and set(t.changes) == {"device", "requires_grad", "parameter"}
    assert report.same
    assert report.counts["changes"]["device"] == 1


def test_views_and_layouts_compare_by_logical_values(tmp_path: Path) -> None:
    w = np.arange(12, dtype=np.float32).reshape(3, 4)
    # A: a transposed view of a (4, 3) storage; B: the same values, contiguous
    a = make(tmp_path, "a.pt", {"t": T(np.ascontiguousarray(w.T), shape=(3, 4), stride=(1, 3))})
    b = make(tmp_path, "b.pt", {"t": T(w)})
    report = ckpt.diff(a, b)
    assert report.same and by_path(report)["t"].status == "identical"
    # a view into a shared storage with an offset
    base = np.arange(20, dtype=np.float32)
    c = make(tmp_path, "c.pt", {"row": T(base, storage="s", shape=(5,), stride=(1,), offset=5),
                                "all": T(base, storage="s")})
    d = make(tmp_path, "d.pt", {"row": T(base[5:10]), "all": T(base)})
    assert ckpt.diff(c, d).same
    e = make(tmp_path, "e.pt", {"row": T(base[5:10] + 1), "all": T(base)})
    r = ckpt.diff(c, e)
    assert by_path(r)["row"].stats.differing == 5 and by_path(r)["all"].status == "identical"


def test_compressed_records_compare_like_stored_ones(tmp_path: Path) -> None:
    """torch never compresses records, but zip tools may: such storages are read whole by the
    reader (CRC-checked) instead of by offset, and compare the same."""
    x = rng(12).standard_normal(300_000).astype(np.float32)
    stored = make(tmp_path, "stored.pt", {"x": T(x), "y": T(x[:10])})
    packed = make(tmp_path, "packed.pt", {"x": T(x), "y": T(x[:10])}, compress=True)
    changed = make(tmp_path, "changed.pt", {"x": T(x * 2), "y": T(x[:10])}, compress=True)
    with zipfile.ZipFile(packed) as z:
        assert any(i.compress_type == zipfile.ZIP_DEFLATED for i in z.infolist())
    assert ckpt.diff(stored, packed).same and ckpt.diff(packed, stored, verify=True).same
    s = by_path(ckpt.diff(stored, changed))["x"].stats
    assert s.max_abs == pytest.approx(float(np.abs(x).max()), rel=1e-6)


def test_big_endian_file_equals_its_little_endian_twin(tmp_path: Path) -> None:
    r = rng(6)
    root = {"f": T(r.standard_normal(100).astype(np.float32)), "c": T(np.arange(4, dtype=np.complex64) * (1 + 2j)),
            "b": T(bf16_bits(r.standard_normal(10).astype(np.float32)), "bfloat16"), "i": T(np.arange(5, dtype=np.int64))}
    little = make(tmp_path, "little.pt", root)
    big = make(tmp_path, "big.pt", root, byteorder="big")
    report = ckpt.diff(little, big)
    assert report.same, [t.as_json() for t in report.changed_tensors()]
    assert {t.status for t in report.tensors} == {"identical"}


def test_meta_tensors(tmp_path: Path) -> None:
    a = make(tmp_path, "a.pt", {"m": T(np.zeros((2, 3), np.float32), meta=True), "n": T(np.zeros(2, np.float32), meta=True)})
    b = make(tmp_path, "b.pt", {"m": T(np.zeros((2, 3), np.float32), meta=True), "n": T(np.zeros(2, np.float32))})
    report = ckpt.diff(a, b)
    t = by_path(report)
    assert t["m"].status == "identical"
    assert t["n"].status == "not_compared" and "meta" in t["n"].note


def test_empty_and_zero_dim_tensors(tmp_path: Path) -> None:
    a, b = pair(tmp_path, {"e": T(np.zeros((0, 3), np.float32)), "s": T(np.array(1.5, np.float32))},
                {"e": T(np.zeros((0, 3), np.float32)), "s": T(np.array(2.5, np.float32))})
    t = by_path(ckpt.diff(a, b))
    assert t["e"].status == "identical"
    assert t["s"].stats.max_abs == 1.0 and t["s"].stats.numel == 1


def test_tied_weights_are_compared_once(tmp_path: Path) -> None:
    w = np.ones(4, np.float32)
    root = {"embed": T(w, storage="0"), "head": T(w, storage="0")}
    a, b = pair(tmp_path, root, root)
    report = ckpt.diff(a, b)
    assert report.same
    # the same tensor object at two paths (memoised in the pickle): compared once, reported twice
    shared = T(w)
    c = make(tmp_path, "c.pt", [shared, shared])
    r = ckpt.diff(c, c)
    assert [t.same_as for t in r.tensors] == [None, "0"]


def test_shared_containers_and_cycles(tmp_path: Path) -> None:
    cfg = {"lr": 0.1, "depth": 4}
    a = make(tmp_path, "a.pt", {"x": cfg, "y": cfg})
    b = make(tmp_path, "b.pt", {"x": {"lr": 0.1, "depth": 4}, "y": {"lr": 0.1, "depth": 4}})
    assert ckpt.diff(a, b).same  # a shared dict is compared at each of its paths
    loop: list[Any] = [1]
    loop.append(loop)
    flat = flatten({"l": loop})
    assert "l.1" in flat.values and any("cycle" in n for n in flat.notes)


def test_flatten_refuses_an_exponential_tree() -> None:
    node: Any = [1, 2]
    for _ in range(30):
        node = [node, node]  # 2**30 paths, 60 objects
    with pytest.raises(ResourceLimitError, match="expands to more than"):
        flatten(node, max_entries=100_000)


# -- selection -------------------------------------------------------------------------------------


def test_only_exclude_and_key(tmp_path: Path) -> None:
    w = np.ones(3, np.float32)
    lightning = {"state_dict": OrderedDict([("layer.weight", T(w)), ("layer.bias", T(w))]), "epoch": 2,
                 "optimizer_states": [{"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]}]}
    plain = OrderedDict([("layer.weight", T(w)), ("layer.bias", T(w * 2))])
    a = make(tmp_path, "lightning.ckpt", lightning)
    b = make(tmp_path, "plain.pt", plain)
    report = ckpt.diff(a, b, key=("state_dict", None))
    assert report.a.key == "state_dict" and report.b.key is None
    assert [t.path for t in report.changed_tensors()] == ["layer.bias"]
    assert ckpt.diff(a, b, key=("state_dict", None), exclude=["*.bias"]).same
    assert ckpt.diff(a, b, key=("state_dict", None), only=["*.weight"]).same
    # both sides through the same key
    c = make(tmp_path, "c.ckpt", {**lightning, "epoch": 3})
    assert not ckpt.diff(a, c).same
    assert ckpt.diff(a, c, key="state_dict").same
    with pytest.raises(CheckpointError, match="key 'model' matches nothing.*state_dict"):
        ckpt.diff(a, c, key="model")


# -- optimizer state ------------------------------------------------------------------------------


def adam_state(step: float, lr: float, scale: float, names: list[str] | None = None, order: list[int] | None = None) -> dict[str, Any]:
    r = rng(7)
    moments = [r.standard_normal(s).astype(np.float32) for s in ((4, 3), (4,), (2, 4))]
    order = order or [0, 1, 2]
    state = {}
    for i, p in enumerate(order):
        state[i] = {"step": T(np.array(step, np.float32)), "exp_avg": T(moments[p] * scale),
                    "exp_avg_sq": T(moments[p] ** 2)}
    group: dict[str, Any] = {"lr": lr, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0, "amsgrad": False,
                             "params": [0, 1, 2]}
    if names is not None:
        group["param_names"] = [names[p] for p in order]
    return {"state": state, "param_groups": [group]}


def test_optimizer_changes_per_parameter_and_group(tmp_path: Path) -> None:
    a, b = pair(tmp_path, {"optimizer": adam_state(10, 1e-3, 1.0), "epoch": 1},
                {"optimizer": adam_state(20, 5e-4, 1.5), "epoch": 1})
    report = ckpt.diff(a, b)
    [opt] = report.optimizers
    assert opt["path"] == "optimizer" and opt["optimizer"] == {"a": "Adam", "b": "Adam"}
    assert opt["step"] == {"a": 10.0, "b": 20.0}
    assert opt["parameters"] == 3 and opt["parameters_changed"] == 3
    assert opt["param_groups"][0]["changes"] == [{"name": "lr", "a": 1e-3, "b": 5e-4, "only_in": None}]
    p0 = opt["params"][0]
    assert p0["step"] == {"a": 10.0, "b": 20.0}
    assert p0["state"]["exp_avg"]["status"] == "different" and p0["state"]["exp_avg"]["max_abs_diff"] > 0
    assert p0["state"]["exp_avg_sq"]["status"] == "identical"
    assert opt["matched_by"] == "index"


def test_optimizer_state_matched_by_param_names(tmp_path: Path) -> None:
    names = ["fc.weight", "fc.bias", "head.weight"]
    a, b = pair(tmp_path, {"optimizer": adam_state(5, 1e-3, 1.0, names)},
                {"optimizer": adam_state(5, 1e-3, 1.0, names, order=[2, 0, 1])})
    report = ckpt.diff(a, b)
    [opt] = report.optimizers
    assert opt["matched_by"] == "name"
    assert opt["parameters_changed"] == 0
    assert [p["name"] for p in opt["params"]] == names
    assert all(t.status == "identical" for t in report.tensors)
    # the file did change: param_names lists the parameters in another order
    assert [v.path for v in report.values] == ["optimizer.param_groups.0.param_names"]


def test_lightning_optimizer_list(tmp_path: Path) -> None:
    a, b = pair(tmp_path, {"optimizer_states": [adam_state(1, 1e-3, 1.0)], "state_dict": {}},
                {"optimizer_states": [adam_state(2, 1e-3, 1.0)], "state_dict": {}})
    [opt] = ckpt.diff(a, b).optimizers
    assert opt["path"] == "optimizer_states.0" and opt["step"] == {"a": 1.0, "b": 2.0}
    assert opt["parameters_changed"] == 3  # only the step changed
    assert opt["params"][0]["state"]["exp_avg"]["status"] == "identical"


# -- formats that flatten: the resolver hook --------------------------------------------------------


def test_a_resolver_makes_a_flattened_conversion_compare_the_same(tmp_path: Path) -> None:
    """What `ckpt convert` to safetensors will do: tensors flattened to dotted names, tied weights
    stored once, non-tensor values kept as metadata. A resolver for the format restores both, so
    the original and its conversion compare as the same."""
    w = rng(8).standard_normal((3, 2)).astype(np.float32)
    original = make(tmp_path, "orig.pt", {"model": {"embed": T(w, storage="e"), "head": T(w, storage="e")},
                                          "epoch": 7, "betas": (0.9, 0.999)})
    flat = make(tmp_path, "flat.pt", OrderedDict([("model.embed", T(w))]), archive="converted")
    assert not ckpt.diff(original, flat).same

    @register_resolver("torch-zip")
    def metadata(ck: ckpt.Checkpoint) -> Resolution | None:
        if ck.facts.get("archive_name") != "converted":
            return None
        return Resolution(aliases={"model.head": "model.embed"}, values={"epoch": 7, "betas": [0.9, 0.999]},
                          notes=["restored from metadata"])

    try:
        report = ckpt.diff(original, flat)
    finally:
        RESOLVERS["torch-zip"].remove(metadata)
    assert report.same, (report.only_a, report.only_b, report.values)
    assert report.b.notes == ["restored from metadata"]


# -- across formats (no torch needed: safetensors.numpy writes the other side) ---------------------


def _safetensors(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    from safetensors.numpy import save_file

    save_file(arrays, str(path))
    return path


def _sharded(folder: Path, arrays: dict[str, np.ndarray], shards: int = 2) -> Path:
    import json

    folder.mkdir()
    names = list(arrays)
    weight_map = {}
    for i in range(shards):
        part = {n: arrays[n] for n in names[i::shards]}
        shard = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        _safetensors(folder / shard, part)
        weight_map.update({n: shard for n in part})
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": sum(a.nbytes for a in arrays.values())}, "weight_map": weight_map}))
    return folder


CROSS = {
    "embed.weight": rng(20).standard_normal((50, 8)).astype(np.float32),
    "layers.0.weight": rng(21).standard_normal((8, 8)).astype(np.float16),
    "layers.0.bias": np.arange(8, dtype=np.float64),
    "head.count": np.array([3, 4], dtype=np.int64),
}


def test_pt_safetensors_and_sharded_compare_as_the_same(tmp_path: Path) -> None:
    pt = make(tmp_path, "model.pt", OrderedDict((k, T(v)) for k, v in CROSS.items()))
    st = _safetensors(tmp_path / "model.safetensors", CROSS)
    folder = _sharded(tmp_path / "sharded", CROSS)
    for a, b in ((pt, st), (st, pt), (pt, folder), (folder / "model.safetensors.index.json", st)):
        report = ckpt.diff(a, b)
        assert report.same, (a.name, b.name, report.only_a, report.only_b, [t.as_json() for t in report.changed_tensors()])
        assert {t.status for t in report.tensors} == {"identical"} and len(report.tensors) == len(CROSS)
    assert {ckpt.diff(pt, folder).b.format, ckpt.diff(pt, st).b.format} == {"sharded", "safetensors"}


def test_a_changed_tensor_across_formats(tmp_path: Path) -> None:
    changed = dict(CROSS)
    changed["layers.0.bias"] = CROSS["layers.0.bias"] + 0.5
    changed["extra"] = np.zeros(2, np.float32)
    del changed["head.count"]
    pt = make(tmp_path, "model.pt", {"model": OrderedDict((k, T(v)) for k, v in CROSS.items()), "epoch": 3})
    folder = _sharded(tmp_path / "sharded", changed, shards=3)
    report = ckpt.diff(pt, folder, key=("model", None))
    t = by_path(report)
    assert t["layers.0.bias"].status == "different" and t["layers.0.bias"].stats.max_abs == 0.5
    assert [e["path"] for e in report.only_a] == ["head.count"] and [e["path"] for e in report.only_b] == ["extra"]
    assert t["embed.weight"].status == "identical"


# -- what `ckpt convert` records in safetensors metadata (ckpt.convert/1) ---------------------------
#
# The convert branch (issue 5) writes __metadata__["ckpt.convert/1"] = JSON {"schema", "tree",
# "aliases", "notes", "source"}; these tests write that document by hand (the shape documented in
# ckpt/diff_convert.py), so a checkpoint and its conversion are shown to compare as the same.


def _convert_like(root: Any) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """What `ckpt convert` writes for ``root`` (a ckpt_writer tree): tensors by dotted name, each
    storage once (tied weights become aliases), and the ckpt.convert/1 document."""
    arrays: dict[str, np.ndarray] = {}
    aliases: dict[str, str] = {}
    by_storage: dict[str, str] = {}

    def node(value: Any, path: str) -> Any:
        if isinstance(value, T):
            if value.storage is not None and value.storage in by_storage:
                aliases[path] = by_storage[value.storage]
            else:
                arrays[path] = value.array
                if value.storage is not None:
                    by_storage[value.storage] = path
            out: dict[str, Any] = {"$": "tensor", "name": path}
            if value.parameter:
                out["param"] = True
            return out
        join = (lambda k: f"{path}.{k}") if path else str
        if isinstance(value, dict):
            if all(type(k) is str and not k.startswith("$") for k in value):
                return {k: node(v, join(k)) for k, v in value.items()}
            return {"$": "odict" if isinstance(value, OrderedDict) else "dict",
                    "items": [[k, node(v, join(k))] for k, v in value.items()]}
        if isinstance(value, (list, tuple)):
            items = [node(v, join(i)) for i, v in enumerate(value)]
            return items if isinstance(value, list) else {"$": "tuple", "items": items}
        if isinstance(value, float) and not math.isfinite(value):
            return {"$": "float", "v": repr(value)}
        return value

    doc = {"schema": "ckpt.convert/1", "tree": node(root, ""), "source": {"format": "torch-zip"}}
    if aliases:
        doc["aliases"] = aliases
    return arrays, doc


def _with_metadata(path: Path, arrays: dict[str, np.ndarray], doc: Any) -> Path:
    from safetensors.numpy import save_file

    text = doc if isinstance(doc, str) else json.dumps(doc)
    save_file(arrays, str(path), metadata={"ckpt.convert/1": text})
    return path


def _training(scale: float = 1.0, epoch: int = 7) -> dict[str, Any]:
    w = rng(30).standard_normal((6, 4)).astype(np.float32)
    return {
        "model": OrderedDict([("embed.weight", T(w, storage="tied")), ("fc.bias", T(np.arange(4, dtype=np.float32) * scale)),
                              ("lm_head.weight", T(w, storage="tied"))]),
        "optimizer": adam_state(10, 1e-3, scale),
        "epoch": epoch, "best": float("nan"), "lr_schedule": [1e-3, 5e-4], "name": "run-1",
    }


def test_a_checkpoint_and_its_safetensors_conversion_compare_as_the_same(tmp_path: Path) -> None:
    root = _training()
    pt = make(tmp_path, "train.pt", root)
    arrays, doc = _convert_like(root)
    assert doc["aliases"] == {"model.lm_head.weight": "model.embed.weight"}  # tied weights stored once
    assert "model.lm_head.weight" not in arrays and "optimizer.state.0.exp_avg" in arrays
    st = _with_metadata(tmp_path / "train.safetensors", arrays, doc)
    for a, b in ((pt, st), (st, pt)):
        report = ckpt.diff(a, b)
        assert report.same, (report.only_a, report.only_b, [v.as_json() for v in report.values])
        assert {t.status for t in report.tensors} == {"identical"}
    report = ckpt.diff(pt, st)
    with ckpt.open(pt) as ck:
        assert report.counts["tensors"]["common"] == len(flatten(ck.root).tensors) == 3 + 9
    assert report.counts["values"]["common"] > 5  # epoch, best, lr_schedule, name, param_groups...
    [opt] = report.optimizers
    assert opt["parameters"] == 3 and opt["parameters_changed"] == 0
    # without the metadata the same file is a flat bag of tensors: everything differs
    plain = _safetensors(tmp_path / "plain.safetensors", arrays)
    bare = ckpt.diff(pt, plain)
    assert not bare.same and {e["path"] for e in bare.only_a} >= {"epoch", "model.lm_head.weight"}


def test_a_changed_value_and_tensor_show_through_the_metadata(tmp_path: Path) -> None:
    pt = make(tmp_path, "train.pt", _training())
    arrays, doc = _convert_like(_training(scale=2.0, epoch=8))
    st = _with_metadata(tmp_path / "train.safetensors", arrays, doc)
    report = ckpt.diff(pt, st)
    assert not report.same
    assert [(v.path, v.a, v.b) for v in report.values] == [("epoch", 7, 8)]
    changed = {t.path for t in report.tensors if t.status != "identical"}
    assert changed == {"model.fc.bias", "optimizer.state.0.exp_avg", "optimizer.state.1.exp_avg", "optimizer.state.2.exp_avg"}
    [opt] = report.optimizers
    assert opt["parameters_changed"] == 3


def test_aliases_only_metadata_and_a_sharded_conversion(tmp_path: Path) -> None:
    """A flat state dict with tied weights: convert writes aliases but no tree. A sharded
    conversion carries the document in its index's metadata or in a shard's __metadata__."""
    w = rng(31).standard_normal((5, 3)).astype(np.float32)
    b = np.ones(3, np.float32)
    pt = make(tmp_path, "model.pt", OrderedDict([("embed.weight", T(w, storage="e")), ("bias", T(b)),
                                                ("head.weight", T(w, storage="e"))]))
    doc = {"schema": "ckpt.convert/1", "aliases": {"head.weight": "embed.weight"}}
    st = _with_metadata(tmp_path / "model.safetensors", {"embed.weight": w, "bias": b}, doc)
    report = ckpt.diff(pt, st)
    assert report.same and len(report.tensors) == 3
    # sharded: the index's metadata holds the document (as an object or as a JSON string)
    folder = _sharded(tmp_path / "sharded", {"embed.weight": w, "bias": b})
    index = folder / "model.safetensors.index.json"
    for stored in (doc, json.dumps(doc)):
        idx = json.loads(index.read_text())
        idx["metadata"]["ckpt.convert/1"] = stored
        index.write_text(json.dumps(idx))
        assert ckpt.diff(pt, folder).same
    # or one shard's __metadata__
    folder2 = tmp_path / "sharded2"
    folder2.mkdir()
    _with_metadata(folder2 / "model-00001-of-00002.safetensors", {"embed.weight": w}, doc)
    _safetensors(folder2 / "model-00002-of-00002.safetensors", {"bias": b})
    (folder2 / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": {
        "embed.weight": "model-00001-of-00002.safetensors", "bias": "model-00002-of-00002.safetensors"}}))
    assert ckpt.diff(pt, folder2).same


@pytest.mark.parametrize("doc, why", [
    ("{not json", "not valid JSON"),
    ('["a list"]', "not a JSON object"),
    ({"schema": "ckpt.convert/2", "tree": {}}, "not 'ckpt.convert/1'"),
    ({"schema": "ckpt.convert/1", "tree": {"w": {"$": "tensor", "name": "missing"}}}, "does not hold"),
    ({"schema": "ckpt.convert/1", "tree": {"x": {"$": "pickle", "v": "cos\nsystem"}}}, "unknown node"),
    ({"schema": "ckpt.convert/1", "tree": {"x": {"$": "dtype", "v": "float99"}}}, "unknown dtype"),
    ({"schema": "ckpt.convert/1", "aliases": ["w"]}, "aliases must map"),
    ({"schema": "ckpt.convert/1", "tree": {"$": "dict", "items": [[[1], 2]]}}, "unhashable"),
    ("[" * 100_000 + "]" * 100_000, "not valid JSON"),
    ({"schema": "ckpt.convert/1", "tree": {"x": {"$": "odict", "items": "no"}}}, "items must be"),
])
def test_bad_convert_metadata_is_noted_and_the_file_compared_as_stored(tmp_path: Path, doc: Any, why: str) -> None:
    w = np.ones(3, np.float32)
    st = _with_metadata(tmp_path / "m.safetensors", {"w": w}, doc)
    report = ckpt.diff(st, st)
    assert report.same and [t.path for t in report.tensors] == ["w"]
    assert any("ckpt.convert/1) ignored" in n and why in n for n in report.a.notes), report.a.notes


def test_deeply_nested_convert_tree_is_refused_without_recursion_error(tmp_path: Path) -> None:
    tree: Any = 1
    for _ in range(300):
        tree = [tree]
    st = _with_metadata(tmp_path / "m.safetensors", {"w": np.ones(2, np.float32)},
                        {"schema": "ckpt.convert/1", "tree": {"deep": tree, "w": {"$": "tensor", "name": "w"}}})
    report = ckpt.diff(st, st)
    assert any("nests deeper than" in n for n in report.a.notes)


def test_recorded_notes_are_shown_and_odd_ones_ignored(tmp_path: Path) -> None:
    w = np.ones(2, np.float32)
    for notes, shown in ((["a view was written as its own tensor"], ["__metadata__: a view was written as its own tensor"]),
                         ("not a list", []), ([1, None, "ok"], ["__metadata__: ok"])):
        doc = {"schema": "ckpt.convert/1", "tree": {"w": {"$": "tensor", "name": "w"}}, "notes": notes}
        st = _with_metadata(tmp_path / "m.safetensors", {"w": w}, doc)
        assert ckpt.diff(st, st).a.notes == shown


def test_tensors_the_tree_does_not_name_are_kept(tmp_path: Path) -> None:
    w = np.ones(3, np.float32)
    doc = {"schema": "ckpt.convert/1", "tree": {"model": {"w": {"$": "tensor", "name": "model.w"}}, "epoch": 1}}
    st = _with_metadata(tmp_path / "m.safetensors", {"model.w": w, "stray": w * 2}, doc)
    pt = make(tmp_path, "m.pt", {"model": {"w": T(w)}, "epoch": 1, "stray": T(w * 2)})
    report = ckpt.diff(pt, st)
    assert report.same
    assert any("not in the recorded tree ('stray')" in n for n in report.b.notes)


# -- bad input ---------------------------------------------------------------------------------------


def test_unsafe_global_stops_the_diff_unless_allowed(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    evil = {"w": T(np.ones(2, np.float32)), "hook": Call("os", "system", f"touch {marker}")}
    a = make(tmp_path, "a.pt", {"w": T(np.ones(2, np.float32)), "hook": None})
    b = make(tmp_path, "b.pt", evil)
    with pytest.raises(ckpt.UnsafeGlobalError) as e:
        ckpt.diff(a, b)
    assert e.value.global_name == "os.system" and "--allow os.system" in str(e.value) and str(b) in str(e.value)
    report = ckpt.diff(a, b, allow=["os.system"])
    assert [v.path for v in report.values] == ["hook"]
    assert not marker.exists()
    c = make(tmp_path, "c.pt", {"cfg": Call("argparse", "Namespace"), "g": Global("mypkg", "Thing")})
    assert ckpt.diff(c, c, allow=["argparse.Namespace", "mypkg.Thing"]).same


def test_unreadable_files_give_the_same_errors_as_inspect(tmp_path: Path) -> None:
    good = make(tmp_path, "good.pt", {"w": T(np.ones(2, np.float32))})
    html = tmp_path / "page.pt"
    html.write_text("<!DOCTYPE html><html><body>Not found</body></html>")
    for bad, kind in ((html, NotACheckpointError), (tmp_path / "missing.pt", CheckpointError)):
        with pytest.raises(kind) as from_inspect:
            ckpt.inspect(bad)
        with pytest.raises(kind) as from_diff:
            ckpt.diff(good, bad)
        assert str(from_diff.value) == str(from_inspect.value)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:-40])
    with pytest.raises(CorruptCheckpointError):
        ckpt.diff(truncated, good)


def _flip_data_byte(path: Path, record_suffix: str, out: Path) -> None:
    """Copy a checkpoint, changing one byte of a record's data but not its stored CRC-32."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        info = next(i for i in z.infolist() if i.filename.endswith(record_suffix))
    name_len, extra_len = struct.unpack_from("<HH", data, info.header_offset + 26)
    start = info.header_offset + 30 + name_len + extra_len
    data[start + 3] ^= 0x40
    out.write_bytes(bytes(data))


@pytest.mark.parametrize("size", [64, 300_000])  # one positioned read per side; chunked reads
def test_damaged_record_is_an_error_not_a_difference(tmp_path: Path, size: int) -> None:
    w = rng(9).standard_normal(size).astype(np.float32)
    good = make(tmp_path, "good.pt", {"w": T(w), "v": T(w * 2)})
    bad = tmp_path / "bad.pt"
    _flip_data_byte(good, "data/0", bad)
    # bytes differ but the stored CRC-32s agree: one file is damaged, and ckpt says which
    with pytest.raises(CorruptCheckpointError, match="CRC-32 mismatch") as e:
        ckpt.diff(good, bad)
    assert "bad.pt" in str(e.value)
    # with verify=True every record is checked, even one compared against a different file
    other = make(tmp_path, "other.pt", {"w": T(w + 1), "v": T(w * 2)})
    with pytest.raises(CorruptCheckpointError, match="CRC-32 mismatch"):
        ckpt.diff(other, bad, verify=True)


def test_equal_bytes_with_different_stored_crcs_is_an_error(tmp_path: Path) -> None:
    w = np.arange(8, dtype=np.float32)
    good = make(tmp_path, "good.pt", {"w": T(w)})
    data = bytearray(good.read_bytes())
    with zipfile.ZipFile(good) as z:
        info = next(i for i in z.infolist() if i.filename.endswith("data/0"))
    crc = struct.pack("<I", info.CRC ^ 1)
    data[info.header_offset + 14 : info.header_offset + 18] = crc  # local header
    pos = 0
    while True:  # patch the central directory entry of data/0
        pos = data.find(b"PK\x01\x02", pos + 1)
        if pos < 0:
            break
        nlen = struct.unpack_from("<H", data, pos + 28)[0]
        if bytes(data[pos + 46 : pos + 46 + nlen]).endswith(b"data/0"):
            data[pos + 16 : pos + 20] = crc
    bad = tmp_path / "bad.pt"
    bad.write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpointError, match="CRC-32 mismatch") as e:
        ckpt.diff(good, bad)
    assert "bad.pt" in str(e.value)


def test_bad_tolerances_are_refused(tmp_path: Path) -> None:
    a = make(tmp_path, "a.pt", {"w": T(np.ones(2, np.float32))})
    with pytest.raises(ValueError):
        ckpt.diff(a, a, rtol=-1)
    with pytest.raises(ValueError):
        ckpt.diff(a, a, atol=float("nan"))


# -- memory and progress --------------------------------------------------------------------------


@pytest.mark.parametrize("threads", [1, 2])
def test_memory_stays_at_a_few_chunks_per_pair(tmp_path: Path, threads: int, monkeypatch: Any) -> None:
    """Two 64 MB tensors that differ everywhere: decoded chunk by chunk, never whole (by one
    thread, or by two sharing the pair)."""
    import ckpt.tensor_compare as tc

    monkeypatch.setattr(tc, "MAX_THREADS", threads)
    n = 16 << 20
    x = np.arange(n, dtype=np.float32)
    a = make(tmp_path, "a.pt", {"x": T(x)})
    b = make(tmp_path, "b.pt", {"x": T(x + 1)})
    c = make(tmp_path, "c.pt", {"x": T(x)})
    del x
    tracemalloc.start()
    try:
        report = ckpt.diff(a, b)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        same = ckpt.diff(a, c)
        _, peak_same = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    stats = by_path(report)["x"].stats
    assert stats.differing == n and stats.max_abs == 1.0 and stats.mean_abs == 1.0 and same.same
    assert peak < 24 << 20, f"peak {peak / 2**20:.1f} MiB while comparing two 64 MiB tensors"
    assert peak_same < 4 << 20, f"peak {peak_same / 2**20:.1f} MiB for identical tensors"


def test_progress_reaches_the_total(tmp_path: Path) -> None:
    x = np.arange(1 << 20, dtype=np.float32)
    a, b = pair(tmp_path, {"x": T(x), "y": T(x)}, {"x": T(x), "y": T(x + 1)})
    calls: list[tuple[int, int]] = []
    ckpt.diff(a, b, progress=lambda done, total: calls.append((done, total)))
    assert calls[0] == (0, 4 * x.nbytes) and calls[-1] == (4 * x.nbytes, 4 * x.nbytes)
    assert all(d1 <= d2 for (d1, _), (d2, _) in zip(calls, calls[1:]))


def test_checkpoints_already_open_are_not_closed(tmp_path: Path) -> None:
    a, b = pair(tmp_path, {"w": T(np.ones(2, np.float32))}, {"w": T(np.ones(2, np.float32))})
    with ckpt.open(a) as ca, ckpt.open(b) as cb:
        assert ckpt.diff(ca, cb).same
        assert dict(ca.tensors())["w"].numpy().tolist() == [1.0, 1.0]  # still open


def test_diff_does_not_import_torch(tmp_path: Path) -> None:
    import subprocess
    import sys

    a, b = pair(tmp_path, {"w": T(np.ones(2, np.float32))}, {"w": T(np.zeros(2, np.float32))})
    code = ("import sys, ckpt; r = ckpt.diff(sys.argv[1], sys.argv[2]); "
            "print(r.same, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(a), str(b)], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


# -- a checkpoint and what `ckpt convert` made of it ------------------------------------------------


@pytest.mark.parametrize("shard_size", [None, 200])
def test_a_checkpoint_and_its_ckpt_convert_output_compare_as_the_same(tmp_path: Path, shard_size: int | None) -> None:
    """The real converter (not a hand-made document): a training checkpoint with tied weights,
    Adam state, epoch and hyper-parameters, converted to safetensors (one file, or shards with the
    document in the index), diffs as the same in both directions; and back to .pt, too."""
    root = _training()
    pt = make(tmp_path, "train.pt", root)
    out = tmp_path / ("train.safetensors" if shard_size is None else "sharded")
    ckpt.convert(pt, out, to="safetensors", shard_size=shard_size, fsync=False)
    for a, b in ((pt, out), (out, pt)):
        report = ckpt.diff(a, b)
        assert report.same, (report.only_a, report.only_b, [v.as_json() for v in report.values], report.b.notes)
        assert {t.status for t in report.tensors} == {"identical"} and len(report.tensors) == 12
    [opt] = ckpt.diff(pt, out).optimizers
    assert opt["parameters"] == 3 and opt["parameters_changed"] == 0
    back = tmp_path / "back.pt"
    ckpt.convert(out, back, to="pt", fsync=False)
    assert ckpt.diff(pt, back).same and ckpt.diff(out, back).same
    # a changed epoch in the source shows through the conversion
    later = make(tmp_path, "later.pt", _training(epoch=8))
    assert [(v.path, v.a, v.b) for v in ckpt.diff(out, later).values] == [("epoch", 7, 8)]
