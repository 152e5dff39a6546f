"""``ckpt diff`` on the command line: exit codes, ``--json`` against its documented schema
(``docs/schemas/diff-v1.json``), ``--stat``, the tables, selection options, errors. Needs no torch
(checkpoints are written by ``tests/ckpt_writer.py``); real torch files are diffed in
tests/test_diff_torch.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

import ckpt
from ckpt_cli.main import cli
from ckpt_writer import Call, T, write
from test_docs import SchemaChecker

ROOT = Path(__file__).resolve().parents[1]
SCHEMA_PATH = ROOT / "docs" / "schemas" / "diff-v1.json"
EXAMPLE_PATH = ROOT / "docs" / "schemas" / "diff-v1.example.json"
EXIT_OK, EXIT_DIFFERENT, EXIT_ERROR = 0, 1, 2


def run_cli(*args: Any) -> Any:
    return CliRunner(env={"COLUMNS": "200"}).invoke(cli, [str(a) for a in args], catch_exceptions=False)


def stdout_of(result: Any) -> str:
    return getattr(result, "stdout", result.output)


def adam(step: float, lr: float, scale: float, names: bool = False) -> dict[str, Any]:
    r = np.random.default_rng(1)
    m = [r.standard_normal(s).astype(np.float32) for s in ((3, 2), (3,))]
    group: dict[str, Any] = {"lr": lr, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0, "amsgrad": False,
                             "params": [0, 1]}
    if names:
        group["param_names"] = ["fc.weight", "fc.bias"]
    return {"state": {i: {"step": T(np.array(step, np.float32)), "exp_avg": T(x * scale), "exp_avg_sq": T(x * x)}
                      for i, x in enumerate(m)},
            "param_groups": [group]}


@pytest.fixture()
def files(tmp_path: Path) -> dict[str, Path]:
    """A training checkpoint, a copy, a later one (values, optimizer, epoch changed), a converted-looking one."""
    r = np.random.default_rng(0)
    w = r.standard_normal((3, 2)).astype(np.float32)
    bias = np.zeros(3, np.float32)
    bits = np.arange(8, dtype=np.uint16)

    def training(w: np.ndarray, step: float, lr: float, scale: float, epoch: int, extra: bool = False) -> Any:
        model = OrderedDict([("fc.weight", T(w, parameter=True)), ("fc.bias", T(bias)), ("raw", T(bits, "bits16")),
                             ("meta", T(np.zeros((2, 2), np.float32), meta=True))])
        if extra:
            model["head.weight"] = T(np.ones((2, 3), np.float16))
        else:
            model["old.weight"] = T(np.ones(2, np.float32))
        return {"model": model, "optimizer": adam(step, lr, scale, names=True), "epoch": epoch, "tag": "run",
                "scale": T(np.array(2.0, np.float32)) if extra else 2.0}

    w2 = w.copy()
    w2[0, 0] = np.nan
    w2[1, 1] += 1e-3
    out = {
        "a": tmp_path / "a.pt", "copy": tmp_path / "copy.pt", "b": tmp_path / "b.pt",
        "dtype": tmp_path / "dtype.pt", "evil": tmp_path / "evil.pt",
    }
    write(out["a"], training(w, 10, 1e-3, 1.0, 1))
    write(out["copy"], training(w, 10, 1e-3, 1.0, 1))
    later = training(w2, 20, 5e-4, 1.5, 2, extra=True)
    later["model"]["raw"] = T(bits[::-1].copy(), "bits16")
    later["model"]["fc.bias"] = T(np.zeros(4, np.float32))
    later["optimizer"]["param_groups"].append({"lr": 0.1, "params": []})
    later["optimizer"]["param_groups"][0]["params"] = [0, 1, 2]
    write(out["b"], later)
    write(out["dtype"], {"model": OrderedDict([("fc.weight", T(w.astype(np.float16)))]), "epoch": 1})
    write(out["evil"], {"model": OrderedDict([("fc.weight", T(w))]), "hook": Call("os", "system", "true")})
    return out


# -- exit codes ------------------------------------------------------------------------------------


def test_exit_codes(files: dict[str, Path]) -> None:
    for extra in ([], ["--json"], ["--stat"]):
        assert run_cli("diff", files["a"], files["copy"], *extra).exit_code == EXIT_OK, extra
        assert run_cli("diff", files["a"], files["b"], *extra).exit_code == EXIT_DIFFERENT, extra
        assert run_cli("diff", files["a"], files["a"].with_name("nope.pt"), *extra).exit_code == EXIT_ERROR, extra


def test_tolerances_decide_the_exit_code(tmp_path: Path) -> None:
    x = np.linspace(0, 1, 100, dtype=np.float32)
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    write(a, {"x": T(x)})
    write(b, {"x": T(x + 1e-4)})
    assert run_cli("diff", a, b).exit_code == EXIT_DIFFERENT
    assert run_cli("diff", a, b, "--atol", "1e-3").exit_code == EXIT_OK
    assert run_cli("diff", a, b, "--rtol", "1e-3").exit_code == EXIT_DIFFERENT  # x is 0 at the start
    assert run_cli("diff", a, b, "--atol", "-1").exit_code == EXIT_ERROR


# -- --json and its schema ----------------------------------------------------------------------------


def load_schema() -> dict[str, Any]:
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


def test_json_is_strict_validates_and_matches_the_library(files: dict[str, Path]) -> None:
    checker = SchemaChecker(load_schema())
    result = run_cli("diff", files["a"], files["b"], "--json")
    text = stdout_of(result)
    doc = json.loads(text)  # strict JSON: NaN/Infinity would not parse back as numbers
    assert "NaN" not in text and "Infinity" not in text
    assert doc == json.loads(json.dumps(ckpt.diff(files["a"], files["b"]).as_json()))
    assert doc["schema"] == "ckpt.diff/1" and doc["same"] is False
    assert checker.validate(doc) == []


def test_schema_is_covered_by_what_ckpt_emits(files: dict[str, Path], tmp_path: Path) -> None:
    """Every property the schema declares is emitted by some diff (the converse of
    ``additionalProperties: false``), and a document with an undocumented key fails."""
    checker = SchemaChecker(load_schema())
    docs = [
        ckpt.diff(files["a"], files["b"]).as_json(),
        ckpt.diff(files["a"], files["copy"]).as_json(),
        ckpt.diff(files["a"], files["dtype"], key=("model", "model"), only=["fc.*"], verify=True).as_json(),
        ckpt.diff(files["b"], files["a"]).as_json(),
        ckpt.diff(files["dtype"], files["a"]).as_json(),
    ]
    for doc in docs:
        errors = checker.validate(json.loads(json.dumps(doc, allow_nan=False)))
        assert not errors, errors[:10]
    missing = checker.declared_properties() - checker.seen
    assert not missing, "schema properties no diff emitted: " + ", ".join(sorted(missing))
    bad = docs[0]
    bad["tensors"][0]["surprise"] = 1
    del bad["counts"]["elements"]
    errors = checker.validate(bad)
    assert any("surprise" in e for e in errors) and any("elements" in e for e in errors)


def test_committed_example_validates() -> None:
    doc = json.loads(EXAMPLE_PATH.read_text(encoding="utf-8"))
    assert SchemaChecker(load_schema()).validate(doc) == []
    assert doc["schema"] == "ckpt.diff/1"


def test_the_trimmed_example_in_the_docs_validates() -> None:
    text = (ROOT / "docs" / "json-schema.md").read_text(encoding="utf-8")
    block = text.split("### Diff example", 1)[1].split("```json", 1)[1].split("```", 1)[0]
    assert SchemaChecker(load_schema()).validate(json.loads(block)) == []


def test_schema_dtype_enum_is_the_dtype_table() -> None:
    from ckpt.dtypes import DTYPES

    assert load_schema()["$defs"]["dtype"]["enum"] == list(DTYPES)
    from ckpt.differ import SCHEMA

    assert load_schema()["properties"]["schema"]["const"] == SCHEMA == load_schema()["title"]


# -- the tables ---------------------------------------------------------------------------------------


def test_table_shows_what_changed(files: dict[str, Path]) -> None:
    result = run_cli("diff", files["a"], files["b"])
    out = result.output
    assert result.exit_code == EXIT_DIFFERENT
    for text in ("Only in A (1)", "old.weight", "Only in B (3)", "head.weight", "param_groups.1.lr", "Tensors that differ",
                 "fc.weight", "NaN 0→1", "fc.bias", "[3] → [4]", "raw", "bits16 compared as stored bits",
                 "Values that differ", "epoch", "Optimizer optimizer: Adam", "step 10 → 20",
                 "group 0: lr 0.001 → 5.00e-04", "group 1: only in B", "fc.weight", "Different:"):
        assert text in out, f"{text!r} missing from:\n{out}"
    # largest change first: the shape change and the NaN before the small value changes
    rows = [ln.split("│")[0].strip() for ln in out.splitlines() if "│" in ln]
    tensors = rows[rows.index("model.fc.bias"):]
    assert tensors.index("model.fc.bias") < tensors.index("model.fc.weight") < tensors.index("optimizer.state.0.exp_avg")


def test_identical_tensors_are_hidden_unless_all(files: dict[str, Path]) -> None:
    same = run_cli("diff", files["a"], files["copy"])
    assert same.exit_code == EXIT_OK and "Same:" in same.output and "Tensors that differ" not in same.output
    every = run_cli("diff", files["a"], files["copy"], "--all")
    assert "identical" in every.output and "model.fc.weight" in every.output


def test_max_rows_collapses_tables(files: dict[str, Path]) -> None:
    out = run_cli("diff", files["a"], files["b"], "--max-rows", "2").output
    assert "more; --all lists every tensor" in out


def test_stat_fits_one_screen(tmp_path: Path) -> None:
    r = np.random.default_rng(2)
    layers = OrderedDict((f"layers.{i}.{p}", T(r.standard_normal(16).astype(np.float32)))
                         for i in range(60) for p in ("weight", "bias", "norm"))
    changed = OrderedDict((k, T(v.array + (1 if k.startswith("layers.3.") else 0))) for k, v in layers.items())
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    write(a, layers)
    write(b, changed)
    result = run_cli("diff", a, b, "--stat")
    lines = result.output.splitlines()
    assert result.exit_code == EXIT_DIFFERENT
    assert len(lines) <= 40, result.output
    assert any("layers.*.weight" in ln and "1/60" in ln for ln in lines), result.output
    assert "3 different" in result.output



def test_stat_shows_no_max_abs_for_a_group_changed_only_by_missing_paths(tmp_path: Path) -> None:
    w = np.ones(4, np.float32)
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    write(a, OrderedDict([("l.0.weight", T(w)), ("l.1.weight", T(w)), ("l.2.weight", T(w * 2))]))
    write(b, OrderedDict([("l.0.weight", T(w)), ("l.2.weight", T(w * 3))]))
    out = run_cli("diff", a, b, "--stat").output
    [row] = [ln for ln in out.splitlines() if ln.startswith("l.*.weight")]
    assert "2/3 1 only in A" in row and "│            1 │" in row, out  # l.2 changed by 1
    write(b, OrderedDict([("l.0.weight", T(w)), ("l.2.weight", T(w * 2))]))
    out = run_cli("diff", a, b, "--stat").output
    [row] = [ln for ln in out.splitlines() if ln.startswith("l.*.weight")]
    cells = [c.strip() for c in row.split("│")]
    assert cells[1] == "1/3 1 only in A" and cells[2] == "", out  # no "0" for an unchanged group


def test_json_is_written_with_one_dumps_call(files: dict[str, Path], monkeypatch: Any) -> None:
    """json.dump streams through the pure-Python encoder (slow on big reports): the CLI must not use it."""
    def refuse(*args: Any, **kw: Any) -> None:
        raise AssertionError("json.dump used")

    monkeypatch.setattr(json, "dump", refuse)
    result = run_cli("diff", files["a"], files["b"], "--json")
    assert result.exit_code == EXIT_DIFFERENT and json.loads(stdout_of(result))["schema"] == "ckpt.diff/1"


# -- options ---------------------------------------------------------------------------------------------


def test_key_only_exclude(files: dict[str, Path], tmp_path: Path) -> None:
    plain = tmp_path / "plain.pt"
    with ckpt.open(files["a"]) as ck:
        weight = dict(ck.tensors())["model.fc.weight"].numpy()
    write(plain, OrderedDict([("fc.weight", T(weight))]))
    result = run_cli("diff", files["a"], plain, "--key-a", "model", "--only", "fc.weight", "--json")
    doc = json.loads(stdout_of(result))
    assert result.exit_code == EXIT_OK, doc
    assert doc["a"]["key"] == "model" and doc["b"]["key"] is None and doc["options"]["only"] == ["fc.weight"]
    assert run_cli("diff", files["a"], files["b"], "--exclude", "*").exit_code == EXIT_OK
    missing = run_cli("diff", files["a"], plain, "--key", "state_dict")
    assert missing.exit_code == EXIT_ERROR and "matches nothing" in missing.output


def test_unsafe_global_is_an_error_until_allowed(files: dict[str, Path]) -> None:
    result = run_cli("diff", files["a"], files["evil"])
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert result.exit_code == EXIT_ERROR and len(lines) == 1 and lines[0].startswith("ckpt: error:")
    assert "os.system" in lines[0] and "--allow os.system" in lines[0] and "evil.pt" in lines[0]
    allowed = run_cli("diff", files["a"], files["evil"], "--allow", "os.system", "--json")
    assert allowed.exit_code == EXIT_DIFFERENT
    assert "hook" in [r["path"] for r in json.loads(stdout_of(allowed))["only_b"]]


@pytest.mark.parametrize("make", ["missing", "html", "empty", "directory"])
def test_errors_exit_2_with_one_line(make: str, files: dict[str, Path], tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    if make == "html":
        bad.write_text("<!DOCTYPE html><html><body>Access denied</body></html>")
    elif make == "empty":
        bad.write_bytes(b"")
    elif make == "directory":
        bad.mkdir()
    for args in ((files["a"], bad), (bad, files["a"])):
        result = run_cli("diff", *args)
        lines = [ln for ln in result.output.splitlines() if ln.strip()]
        assert result.exit_code == EXIT_ERROR and len(lines) == 1 and lines[0].startswith("ckpt: error:"), result.output
        assert "bad.pt" in lines[0]


def test_verify_gives_the_same_answer(files: dict[str, Path]) -> None:
    plain = json.loads(stdout_of(run_cli("diff", files["a"], files["b"], "--json")))
    careful = json.loads(stdout_of(run_cli("diff", files["a"], files["b"], "--json", "--verify")))
    careful["options"]["verify"] = False
    assert careful == plain


def test_no_progress_bar_when_piped(files: dict[str, Path]) -> None:
    from ckpt_cli import diff_cmd

    assert diff_cmd._progress_bar() is None  # stderr is not a terminal under pytest
    result = run_cli("diff", files["a"], files["b"])
    assert "comparing" not in result.output


def test_progress_bar_on_a_terminal(monkeypatch: Any) -> None:
    from rich.console import Console

    from ckpt_cli import diff_cmd

    monkeypatch.setattr(Console, "is_terminal", property(lambda self: True))
    bar = diff_cmd._progress_bar()
    assert bar is not None
    bar.update(0, 1 << 20)  # small work: no bar
    assert bar.task is None
    bar.update(0, 1 << 30)
    bar.update(1 << 29, 1 << 30)
    assert bar.task is not None
    bar.close()


def test_python_dash_m_ckpt_diff(files: dict[str, Path]) -> None:
    env = {**os.environ, "COLUMNS": "200"}
    out = subprocess.run([sys.executable, "-m", "ckpt", "diff", str(files["a"]), str(files["copy"]), "--stat"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == EXIT_OK, out.stderr
    assert "Same:" in out.stdout
