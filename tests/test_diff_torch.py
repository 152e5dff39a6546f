"""``ckpt.diff`` on files written by real torch, with torch as the oracle for the statistics, for
``torch.allclose``/``torch.isclose`` semantics and for every dtype (bfloat16 and float8 decoded by
torch itself). Skipped where torch is not installed."""

from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest

import ckpt

torch = pytest.importorskip("torch")


def by_path(report: ckpt.DiffReport) -> dict[str, Any]:
    return {t.path: t for t in report.tensors}


def expected_stats(a: Any, b: Any, rtol: float, atol: float, equal_nan: bool) -> dict[str, Any]:
    """What ckpt should report, computed by torch: values upcast to a common type (16-bit and
    8-bit floats to float32, as ckpt documents), NaN staying NaN is not a difference, the
    magnitudes are over positions where neither side is NaN."""
    def up(t: Any) -> Any:
        return t.float() if t.dtype.is_floating_point and torch.finfo(t.dtype).bits <= 16 else t

    a, b = up(a), up(b)
    common = torch.promote_types(a.dtype, b.dtype)
    if not common.is_floating_point and not common.is_complex:
        common = torch.float64
    x, y = a.to(common).reshape(-1), b.to(common).reshape(-1)
    both_nan = x.isnan() & y.isnan()
    either_nan = x.isnan() | y.isnan()
    differing = int(((x != y) & ~both_nan).sum())
    valid = ~either_nan
    d = (x - y).abs()
    d = torch.where(x == y, torch.zeros_like(d), d)  # equal infinities differ by 0
    d = torch.where(d.isnan() & valid, torch.full_like(d, float("inf")), d)
    dv = d[valid]
    yv = y[valid].abs()
    rel = torch.where(dv > 0, dv / yv, torch.zeros_like(dv))
    rel = torch.where(rel.isnan(), torch.full_like(rel, float("inf")), rel)
    return {
        "differing": differing,
        "max_abs": float(dv.max()) if dv.numel() else 0.0,
        "max_rel": float(rel.max()) if rel.numel() else 0.0,
        "mean_abs": float(dv.double().mean()) if dv.numel() else 0.0,
        "allclose": bool(torch.allclose(x, y, rtol=rtol, atol=atol, equal_nan=equal_nan)),
        "nan": [int(x.isnan().sum()), int(y.isnan().sum())],
        "inf": [int(x.isinf().sum()), int(y.isinf().sum())],
    }


def check(stats: Any, want: dict[str, Any], where: str) -> None:
    assert stats.differing == want["differing"], where
    assert stats.allclose == want["allclose"], where
    assert stats.nan == want["nan"] and stats.inf == want["inf"], where
    for k in ("max_abs", "max_rel", "mean_abs"):
        got, exp = getattr(stats, k), want[k]
        assert got == pytest.approx(exp, rel=1e-5, abs=1e-12) or (got == exp), f"{where}: {k} {got} != {exp}"


DTYPES = ["float32", "float64", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2", "int8", "int32",
          "int64", "uint8", "bool", "complex64"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rtol,atol,equal_nan", [(1e-5, 1e-8, False), (1e-2, 1e-3, True), (0.0, 0.0, False)])
def test_statistics_agree_with_torch(tmp_path: Path, dtype: str, rtol: float, atol: float, equal_nan: bool) -> None:
    g = torch.Generator().manual_seed(hash(dtype) % 1000)
    dt = getattr(torch, dtype)
    base = torch.randn(20_000, generator=g) * 4
    noise = torch.randn(20_000, generator=g) * torch.where(torch.rand(20_000, generator=g) < 0.3, 1e-3, 0.0)
    x, y = base, base + noise
    if dt.is_floating_point:
        x[:5] = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, float("nan")])
        y[:5] = torch.tensor([float("nan"), float("inf"), float("inf"), float("nan"), 1.0])
    if dt.is_complex:
        x, y = torch.complex(x, base.flip(0)), torch.complex(y, base.flip(0))
    a, b = x.to(dt), y.to(dt)
    torch.save({"t": a, "view": a.reshape(200, 100).t(), "row": a[100:200]}, tmp_path / "a.pt")
    torch.save({"t": b, "view": b.reshape(200, 100).t().contiguous(), "row": b[100:200].clone()}, tmp_path / "b.pt")
    report = by_path(ckpt.diff(tmp_path / "a.pt", tmp_path / "b.pt", rtol=rtol, atol=atol, equal_nan=equal_nan))
    for name, ta, tb in (("t", a, b), ("view", a.reshape(200, 100).t(), b.reshape(200, 100).t()),
                         ("row", a[100:200], b[100:200])):
        t = report[name]
        want = expected_stats(ta, tb, rtol, atol, equal_nan)
        if t.status == "identical":  # bitwise: never decoded
            assert torch.equal(ta.contiguous().view(torch.uint8), tb.contiguous().view(torch.uint8)), f"{dtype} {name}"
            continue
        check(t.stats, want, f"{dtype} {name}")
        assert t.status == ("close" if want["allclose"] else "different")


def test_dtype_conversion_against_torch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    sd = {"w": torch.randn(64, 64), "b": torch.randn(64)}
    torch.save(sd, tmp_path / "fp32.pt")
    for dt, tol in ((torch.bfloat16, 1e-2), (torch.float16, 1e-3), (torch.float8_e4m3fn, 0.2)):
        torch.save({k: v.to(dt) for k, v in sd.items()}, tmp_path / "low.pt")
        report = ckpt.diff(tmp_path / "fp32.pt", tmp_path / "low.pt", rtol=tol, atol=tol)
        for name, t in by_path(report).items():
            assert t.changes == ["dtype"]
            want = expected_stats(sd[name], sd[name].to(dt), tol, tol, False)
            check(t.stats, want, f"{dt} {name}")
        assert not report.same
        assert ckpt.diff(tmp_path / "fp32.pt", tmp_path / "low.pt", rtol=tol, atol=tol, ignore_dtype=True).same == all(
            torch.allclose(v, v.to(dt).float(), rtol=tol, atol=tol) for v in sd.values())


def train(model: Any, opt: Any, steps: int) -> None:
    for _ in range(steps):
        model(torch.randn(8, 3)).sum().backward()
        opt.step()
        opt.zero_grad()


def test_training_run(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    opt = torch.optim.AdamW(model.named_parameters(), lr=1e-3)
    train(model, opt, 3)
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 5}, tmp_path / "before.pt")
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 5}, tmp_path / "again.pt")
    model[0].requires_grad_(False)
    train(model, opt, 2)
    opt.param_groups[0]["lr"] = 5e-4
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 7}, tmp_path / "after.pt")

    assert ckpt.diff(tmp_path / "before.pt", tmp_path / "again.pt").same
    report = ckpt.diff(tmp_path / "before.pt", tmp_path / "after.pt")
    t = by_path(report)
    assert t["model.0.weight"].status == "identical" and t["model.2.weight"].status == "different"
    [opt_diff] = report.optimizers
    assert opt_diff["optimizer"] == {"a": "AdamW", "b": "AdamW"}
    assert opt_diff["step"] == {"a": 3.0, "b": [3.0, 5.0]}
    assert opt_diff["parameters_changed"] == 2
    assert [(p["name"], p["changed"]) for p in opt_diff["params"]] == [
        ("0.weight", False), ("0.bias", False), ("2.weight", True), ("2.bias", True)]
    assert opt_diff["param_groups"][0]["changes"] == [{"name": "lr", "a": 1e-3, "b": 5e-4, "only_in": None}]
    before = torch.load(tmp_path / "before.pt", weights_only=True)
    after = torch.load(tmp_path / "after.pt", weights_only=True)
    for name in ("exp_avg", "exp_avg_sq"):
        x, y = before["optimizer"]["state"][2][name], after["optimizer"]["state"][2][name]
        got = opt_diff["params"][2]["state"][name]["max_abs_diff"]
        assert got == pytest.approx(float((x - y).abs().max()), rel=1e-6)


def test_parameters_registered_in_another_order_match_by_name(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.named_parameters(), lr=1e-3)
    train(model, opt, 1)
    flipped = torch.optim.Adam(list(model.named_parameters())[::-1], lr=1e-3)
    flipped.load_state_dict({  # the same state, parameters listed the other way round
        "state": {0: opt.state_dict()["state"][1], 1: opt.state_dict()["state"][0]},
        "param_groups": [{**opt.state_dict()["param_groups"][0], "params": [0, 1], "param_names": ["bias", "weight"]}],
    })
    torch.save({"optimizer": opt.state_dict()}, tmp_path / "a.pt")
    torch.save({"optimizer": flipped.state_dict()}, tmp_path / "b.pt")
    report = ckpt.diff(tmp_path / "a.pt", tmp_path / "b.pt")
    [o] = report.optimizers
    assert o["matched_by"] == "name" and o["parameters_changed"] == 0
    assert all(t.status == "identical" for t in report.tensors)


def test_lightning_checkpoint_against_the_exported_state_dict(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    torch.save({"state_dict": model.state_dict(), "epoch": 1, "global_step": 10}, tmp_path / "last.ckpt")
    torch.save(model.state_dict(), tmp_path / "exported.pt")
    assert ckpt.diff(tmp_path / "last.ckpt", tmp_path / "exported.pt", key=("state_dict", None)).same


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.script / torch.jit.save
def test_every_format_of_the_same_weights_compares_as_the_same(tmp_path: Path) -> None:
    """torch zip, legacy, TorchScript, safetensors and a sharded .bin folder of the same weights:
    the same tensors, bitwise (TorchScript also holds its module tree: compared with --tensors-only)."""
    import json

    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
    model[0].weight.data = model[0].weight.data.to(torch.bfloat16).float()
    sd = model.state_dict()
    torch.save(sd, tmp_path / "model.pt")
    torch.save(sd, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "model.safetensors"))
    torch.jit.save(torch.jit.script(model), tmp_path / "scripted.pt")
    folder = tmp_path / "bin"
    folder.mkdir()
    names = list(sd)
    weight_map = {}
    for i, part in enumerate((names[:3], names[3:])):
        shard = f"pytorch_model-0000{i + 1}-of-00002.bin"
        torch.save({n: sd[n] for n in part}, folder / shard)
        weight_map.update({n: shard for n in part})
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {"total_size": 1}, "weight_map": weight_map}))
    for other, kw in (("legacy.pt", {}), ("model.safetensors", {}), ("bin", {}), ("scripted.pt", {"tensors_only": True})):
        report = ckpt.diff(tmp_path / "model.pt", tmp_path / other, **kw)
        assert report.same, (other, report.only_a, report.only_b, [t.as_json() for t in report.changed_tensors()])
        assert len(report.tensors) == len(sd) and all(t.status == "identical" for t in report.tensors), other
    scripted = ckpt.diff(tmp_path / "model.pt", tmp_path / "scripted.pt")
    assert not scripted.same and not scripted.only_a and all(e["kind"] == "value" for e in scripted.only_b)


def test_other_formats_diff_once_readable(tmp_path: Path) -> None:
    """A .pt against its safetensors and legacy twins: the same, once ckpt reads those formats;
    until then, the same clear error as ``ckpt inspect`` (never a traceback, never a false answer)."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    sd = {"layer.weight": torch.randn(4, 3), "layer.bias": torch.randn(4), "emb": torch.randn(5, 2).bfloat16()}
    torch.save(sd, tmp_path / "model.pt")
    save_file(sd, str(tmp_path / "model.safetensors"))
    torch.save(sd, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    for other in ("model.safetensors", "legacy.pt"):
        try:
            ckpt.inspect(tmp_path / other)
        except ckpt.CheckpointError as e:
            with pytest.raises(type(e)) as from_diff:
                ckpt.diff(tmp_path / "model.pt", tmp_path / other)
            assert str(from_diff.value) == str(e)
        else:
            report = ckpt.diff(tmp_path / "model.pt", tmp_path / other)
            assert report.same, (other, report.only_a, report.only_b, [t.as_json() for t in report.changed_tensors()])


def _torch_convert_like(root: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """A real torch training checkpoint as `ckpt convert` writes it to safetensors: tensors by
    dotted name, each storage once (tied weights become aliases), and the ckpt.convert/1 document
    of ckpt/diff_convert.py's docstring (written by hand here; the convert branch owns the writer)."""
    tensors: dict[str, Any] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple[int, int, tuple[int, ...]], str] = {}

    def node(value: Any, path: str) -> Any:
        if isinstance(value, torch.Tensor):
            k = (value.untyped_storage().data_ptr(), value.storage_offset(), tuple(value.shape))
            if k in seen:
                aliases[path] = seen[k]
            else:
                seen[k] = path
                tensors[path] = value.detach().contiguous()
            out: dict[str, Any] = {"$": "tensor", "name": path}
            if isinstance(value, torch.nn.Parameter):
                out["param"] = True
            return out
        join = (lambda k: f"{path}.{k}") if path else str
        if isinstance(value, dict):
            if all(type(k) is str and not k.startswith("$") for k in value):
                return {k: node(v, join(k)) for k, v in value.items()}
            return {"$": "odict" if isinstance(value, OrderedDict) else "dict",
                    "items": [[k, node(v, join(str(k)))] for k, v in value.items()]}
        if isinstance(value, (list, tuple)):
            items = [node(v, join(str(i))) for i, v in enumerate(value)]
            return items if type(value) is list else {"$": "tuple", "items": items}
        if isinstance(value, torch.dtype):
            return {"$": "dtype", "v": str(value).removeprefix("torch.")}
        if isinstance(value, float) and not math.isfinite(value):
            return {"$": "float", "v": repr(value)}
        return value

    doc: dict[str, Any] = {"schema": "ckpt.convert/1", "tree": node(root, "")}
    if aliases:
        doc["aliases"] = aliases
    return tensors, doc


def test_a_torch_training_checkpoint_and_its_safetensors_conversion_are_the_same(tmp_path: Path) -> None:
    """model (tied embedding and head) + Adam after two steps + epoch + a dtype value, saved by
    torch.save, against safetensors holding the same tensors and the ckpt.convert/1 metadata."""
    import json

    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 10))
    model[1].weight = model[0].weight  # tied
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(2):
        model(torch.arange(3)).sum().backward()
        opt.step()
    root = {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 2,
            "best_loss": float("inf"), "dtype": torch.float32, "betas": (0.9, 0.999)}
    torch.save(root, tmp_path / "train.pt")
    tensors, doc = _torch_convert_like(root)
    assert doc["aliases"] == {"model.1.weight": "model.0.weight"}
    save_file(tensors, str(tmp_path / "train.safetensors"), metadata={"ckpt.convert/1": json.dumps(doc)})
    report = ckpt.diff(tmp_path / "train.pt", tmp_path / "train.safetensors")
    assert report.same, (report.only_a, report.only_b, [v.as_json() for v in report.values])
    assert {t.status for t in report.tensors} == {"identical"}
    [o] = report.optimizers
    assert o["optimizer"]["a"] == o["optimizer"]["b"] == "Adam" and o["parameters"] == 2
    # one more step on the torch side: the conversion of the old state now differs, per parameter
    model(torch.arange(3)).sum().backward()
    opt.step()
    torch.save({**root, "model": model.state_dict(), "optimizer": opt.state_dict()}, tmp_path / "later.pt")
    later = ckpt.diff(tmp_path / "train.safetensors", tmp_path / "later.pt")
    assert not later.same
    [o] = later.optimizers
    assert o["parameters_changed"] == 2 and o["step"] == {"a": 2.0, "b": 3.0}


def test_a_torch_training_checkpoint_and_its_ckpt_convert_output_are_the_same(tmp_path: Path) -> None:
    """torch.save's training checkpoint (tied weights, Adam, epoch, a dtype value) against what
    ckpt.convert writes from it: safetensors, and safetensors shards."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 10))
    model[1].weight = model[0].weight
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.arange(3)).sum().backward()
    opt.step()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 1, "dtype": torch.bfloat16},
               tmp_path / "train.pt")
    ckpt.convert(tmp_path / "train.pt", tmp_path / "train.safetensors", fsync=False)
    ckpt.convert(tmp_path / "train.pt", tmp_path / "shards", to="safetensors", shard_size=100, fsync=False)
    for out in ("train.safetensors", "shards"):
        report = ckpt.diff(tmp_path / "train.pt", tmp_path / out)
        assert report.same, (out, report.only_a, report.only_b, [v.as_json() for v in report.values])
        assert {t.status for t in report.tensors} == {"identical"}
