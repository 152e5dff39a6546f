"""Runs of tensors (``walk(batch=True)``, ``summary._add_run``) change speed, never results.

``ckpt.inspect`` lists the tensors of one container at once when they are distinct objects under
string keys; everything else goes one by one. Both ways must give the same summary.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

import ckpt
from ckpt import summary as summary_module
from ckpt.walk import walk

torch = pytest.importorskip("torch")


def training_checkpoint() -> dict[str, Any]:
    base = torch.arange(24, dtype=torch.float32)
    model = {f"layers.{i}.w": torch.full((i % 3 + 1,), float(i)) for i in range(40)}
    model["tied"] = model["layers.3.w"]  # one tensor at two paths
    model["view.a"] = base[:6]  # two views of one storage
    model["view.b"] = base[6:].view(3, 6).t()
    return {
        "model": model,
        "ema": {"w": torch.ones(2), 7: torch.zeros(3), "nested": {"x": torch.ones(1)}},  # an int key
        "head": {"w": torch.ones(3, 2), "b": torch.zeros(3)},  # a state dict every item of which comes in a run
        "epoch": 3,
        "list": [torch.ones(2), torch.zeros(2)],
    }


def inspect_json(path: Any, **kw: Any) -> str:
    return ckpt.inspect(path, scan=False, **kw).json_text()


@pytest.mark.parametrize("filter", [None, "model.layers.1*"])
def test_runs_give_what_one_by_one_gives(tmp_path: Any, monkeypatch: pytest.MonkeyPatch, filter: Any) -> None:
    path = tmp_path / "t.pt"
    torch.save(training_checkpoint(), path)
    fast = inspect_json(path, filter=filter)
    monkeypatch.setattr(summary_module, "_add_run", lambda *a: None)
    assert inspect_json(path, filter=filter) == fast
    doc = json.loads(fast)
    paths = [t["path"] for t in doc["tensors"]]
    if filter is None:
        assert paths[:3] == ["model.layers.0.w", "model.layers.1.w", "model.layers.2.w"]
        assert {"model.tied", "ema.7", "ema.nested.x", "list.0"} <= set(paths)
        assert next(t for t in doc["tensors"] if t["path"] == "model.tied")["same_as"] == "model.layers.3.w"
        assert [s["tensors"] for s in doc["storages"]] == [["model.view.a", "model.view.b"]]
        head = next(row for row in doc["structure"] if row["path"] == "head")
        assert (head["kind"], head["tensors"], head["numel"]) == ("state_dict", 2, 9)
    else:
        assert paths == ["model.layers.1.w"] + [f"model.layers.{i}.w" for i in range(10, 20)]


def test_run_is_refused_for_repeated_tensors(tmp_path: Any) -> None:
    """A tensor met twice in one run, or already listed, is not a run: the second path is a
    ``same_as`` row, as one by one."""
    t = torch.ones(2)
    path = tmp_path / "r.pt"
    torch.save({"a": t, "b": torch.zeros(1), "c": t}, path)
    rows = json.loads(inspect_json(path))["tensors"]
    assert [(r["path"], r.get("same_as")) for r in rows] == [("a", None), ("b", None), ("c", "a")]


def test_batched_walk_yields_the_same_tensors_in_order(tmp_path: Any) -> None:
    path = tmp_path / "w.pt"
    torch.save(training_checkpoint(), path)
    with ckpt.open(path) as ck:
        one = [(e.keys, id(e.value)) for e in walk(ck.root) if e.kind == "tensor"]
        runs = []
        for e in walk(ck.root, batch=True):
            if e.kind == "tensor":
                runs.append((e.keys, id(e.value)))
            elif e.kind == "tensors":
                runs += [((*e.keys, k), id(v)) for k, v in e.value]
        assert runs == one and len(one) == 50
        other = [(e.kind, e.keys) for e in walk(ck.root) if e.kind != "tensor"]
        assert [(e.kind, e.keys) for e in walk(ck.root, batch=True) if e.kind not in ("tensor", "tensors")] == other


@pytest.mark.parametrize("mixed", [False, True])
def test_totals_match_torch(tmp_path: Any, mixed: bool) -> None:
    """Totals by dtype and device, counted at once for tensors of one dtype on one device and
    one by one otherwise, are what torch's own tensors add up to."""
    sd = {f"w{i}": torch.ones(i % 4 + 1, dtype=torch.float16 if mixed and i % 3 else torch.float32) for i in range(30)}
    sd["tied"] = sd["w1"]
    path = tmp_path / "t.pt"
    torch.save(sd, path)
    totals = ckpt.inspect(path, scan=False).totals
    distinct = {id(t): t for t in sd.values()}.values()
    assert totals["tensors"] == len(distinct) == 30
    assert totals["numel"] == sum(t.numel() for t in distinct)
    assert totals["nbytes"] == sum(t.nbytes for t in distinct)
    by_dtype: dict[str, int] = {}
    for t in distinct:
        name = str(t.dtype).removeprefix("torch.")
        by_dtype[name] = by_dtype.get(name, 0) + 1
    assert {k: v["tensors"] for k, v in totals["by_dtype"].items()} == by_dtype
    assert list(totals["by_dtype"]) == list(by_dtype) and totals["by_device"] == {"cpu": 30}


def test_contiguous_is_what_torch_says(tmp_path: Any) -> None:
    """The ``contiguous`` of a row (and of ``TensorInfo``) is ``Tensor.is_contiguous()``, for 1-d
    views of one element or none with any stride too."""
    base = torch.arange(24, dtype=torch.float32)
    sd = {
        "one_strided": base[::2][:1], "none_strided": base[::3][:0], "strided": base[::2],
        "t": base.view(4, 6).t(), "row": base.view(4, 6)[1], "col": base.view(4, 6)[:, 1:2], "whole": base,
    }
    path = tmp_path / "c.pt"
    torch.save(sd, path)
    summary = ckpt.inspect(path, scan=False)
    rows = {r["path"]: r for r in json.loads(summary.json_text())["tensors"]}
    for t in summary.tensors:
        assert t.contiguous is rows[t.path]["contiguous"] is sd[t.path].is_contiguous(), t.path
