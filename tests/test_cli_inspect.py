"""``ckpt inspect`` on the command line: exit codes, ``--json``, ``--filter``, ``--depth``,
``--allow``, and proof that it never imports torch. Needs no torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from ckpt_cli.main import cli

EXIT_OK, EXIT_FINDINGS, EXIT_ERROR = 0, 1, 2


def run_cli(*args: Any) -> Any:
    # a wide terminal, so that rich does not fold long names over several lines
    result = CliRunner(env={"COLUMNS": "200"}).invoke(cli, [str(a) for a in args], catch_exceptions=False)
    return result


def stdout_of(result: Any) -> str:
    return getattr(result, "stdout", result.output)


def run_subprocess(*args: str, block_torch: bool = False, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the CLI in a fresh interpreter; with ``block_torch`` any ``import torch`` fails."""
    code = (
        "import sys\n"
        + ("sys.modules['torch'] = None\n" if block_torch else "")
        + "from ckpt_cli.main import main\n"
        + f"try:\n    main({list(args)!r})\n"
        + "finally:\n"
        + "    assert sys.modules.get('torch') is None, 'torch was imported'\n"
        + "    sys.stderr.write('\\nimported-torch=%s' % ('torch' in sys.modules and sys.modules['torch'] is not None))\n"
    )
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, env=env, timeout=120)


# -- exit codes and --json -----------------------------------------------------------------------


def test_json_is_valid_and_matches_the_library(oracle_name, helpers):
    """``--json`` prints exactly ``ckpt.inspect(path).as_json()`` (strict JSON), exit 0 or 1."""
    import ckpt

    path = helpers.fixture_path(oracle_name)
    result = run_cli("inspect", path, "--json")
    if oracle_name == "protocol_0":
        assert result.exit_code == EXIT_ERROR
        return
    doc = json.loads(stdout_of(result), parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert doc == json.loads(json.dumps(ckpt.inspect(path).as_json()))
    assert result.exit_code == (EXIT_FINDINGS if doc["findings"] else EXIT_OK)
    want = [r["path"] for r in helpers.expected(oracle_name)["tensors"]]
    assert [t["path"] for t in doc["tensors"]] == want


@pytest.mark.parametrize("fixture,code", [("training", EXIT_OK), ("unknown_global", EXIT_FINDINGS),
                                          ("empty_bytes", EXIT_OK), ("protocol_0", EXIT_ERROR)])
def test_exit_codes(fixture, code, helpers):
    for extra in ([], ["--json"]):
        assert run_cli("inspect", helpers.fixture_path(fixture), *extra).exit_code == code, extra


def test_findings_are_shown_loudly_and_allow_clears_them(helpers):
    path = helpers.fixture_path("unknown_global")
    shown = run_cli("inspect", path)
    assert shown.exit_code == EXIT_FINDINGS
    assert "argparse.Namespace" in shown.output and "Findings" in shown.output
    allowed = run_cli("inspect", path, "--allow", "argparse.Namespace", "--json")
    assert allowed.exit_code == EXIT_OK
    assert json.loads(stdout_of(allowed))["findings"] == []
    other = run_cli("inspect", path, "--allow", "argparse.ArgumentParser", "--json")
    assert other.exit_code == EXIT_FINDINGS
    assert [f["global"] for f in json.loads(stdout_of(other))["findings"]] == ["argparse.Namespace"]


@pytest.mark.parametrize("make", ["missing", "text", "empty", "lfs", "html", "directory", "truncated"])
def test_errors_exit_2_with_one_line(make, tmp_path, helpers):
    path = tmp_path / "bad.pt"
    if make == "text":
        path.write_text("just some notes\n")
    elif make == "empty":
        path.write_bytes(b"")
    elif make == "lfs":
        path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:" + "a" * 64 + "\nsize 1234\n")
    elif make == "html":
        path.write_text("<!DOCTYPE html><html><body>Access denied</body></html>")
    elif make == "directory":
        path.mkdir()
    elif make == "truncated":
        path.write_bytes(helpers.fixture_path("training").read_bytes()[:3000])
    result = run_cli("inspect", path)
    assert result.exit_code == EXIT_ERROR
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("ckpt: error:"), result.output
    assert "Traceback" not in result.output


def test_usage_errors_exit_2(helpers):
    path = helpers.fixture_path("training")
    assert run_cli("inspect", path, "--depth", "0").exit_code == EXIT_ERROR
    assert run_cli("inspect", path, "--no-such-option").exit_code == EXIT_ERROR
    assert run_cli("inspect").exit_code == EXIT_ERROR


def test_debug_shows_the_traceback(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("hello\n")
    result = CliRunner().invoke(cli, ["--debug", "inspect", str(path)])
    # the traceback is printed, and the exit code stays 2 (1 means findings)
    assert result.exit_code == 2
    assert "Traceback" in result.output and "NotACheckpointError" in result.output


# -- --filter and --depth ------------------------------------------------------------------------


def test_filter(helpers):
    exp = helpers.expected("training")
    result = run_cli("inspect", helpers.fixture_path("training"), "--json", "--filter", "optimizer.state.*.exp_avg")
    doc = json.loads(stdout_of(result))
    want = [r["path"] for r in exp["tensors"] if r["path"].startswith("optimizer.state.") and r["path"].endswith(".exp_avg")]
    assert len(want) == 6 and [t["path"] for t in doc["tensors"]] == want
    assert doc["totals"]["tensors"] == 6 and doc["filter"] == "optimizer.state.*.exp_avg"
    table = run_cli("inspect", helpers.fixture_path("training"), "--filter", "model.layers.*", "--all")
    assert table.exit_code == EXIT_OK
    assert "model.layers.0.weight" in table.output and "model.embed.weight" not in table.output


def test_filter_that_matches_nothing(helpers):
    doc = json.loads(stdout_of(run_cli("inspect", helpers.fixture_path("training"), "--json", "--filter", "nope.*")))
    assert doc["tensors"] == [] and doc["totals"]["tensors"] == 0


def test_depth_groups_rows(helpers):
    path = helpers.fixture_path("training")
    grouped = run_cli("inspect", path, "--depth", "1")
    assert grouped.exit_code == EXIT_OK
    assert "model.*" in grouped.output and "optimizer.*" in grouped.output
    assert "model.layers.0.weight" not in grouped.output
    deeper = run_cli("inspect", path, "--depth", "2")
    assert "optimizer.state.*" in deeper.output and "model.steps" in deeper.output
    assert "optimizer.state.0.exp_avg" not in deeper.output
    every = run_cli("inspect", path, "--all")
    for row in helpers.expected("training")["tensors"]:
        assert row["path"] in every.output


def test_depth_groups_a_flat_state_dict_by_dotted_names(helpers):
    result = run_cli("inspect", helpers.fixture_path("state_dict"), "--depth", "1")
    assert "norm.*" in result.output and "layers.*" in result.output
    assert "norm.running_mean" not in result.output


def test_max_rows_collapses_a_flat_state_dict(helpers):
    result = run_cli("inspect", helpers.fixture_path("state_dict"), "--max-rows", "5")
    assert "norm.*" in result.output and "layers.*" in result.output
    assert "layers.0.bias" not in result.output


def test_table_shows_structure_and_totals(helpers):
    result = run_cli("inspect", helpers.fixture_path("sample"))
    assert result.exit_code == EXIT_OK
    out = result.output
    assert "training checkpoint" in out and "AdamW" in out and "Totals" in out


# -- as a process, and never importing torch -------------------------------------------------------


def test_python_dash_m_ckpt(helpers):
    path = helpers.fixture_path("training")
    proc = subprocess.run([sys.executable, "-m", "ckpt", "inspect", str(path), "--json"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == EXIT_OK, proc.stderr
    assert json.loads(proc.stdout)["kind"] == "training_checkpoint"
    missing = subprocess.run([sys.executable, "-m", "ckpt", "inspect", str(path) + ".nope"],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == EXIT_ERROR and missing.stderr.startswith("ckpt: error:")


@pytest.mark.parametrize("fixture", ["training", "dtypes", "cuda_tagged", "unknown_global", "tensor_subclass", "meta", "sample"])
def test_inspect_never_imports_torch(fixture, helpers):
    """With ``sys.modules['torch'] = None`` any import of torch raises; inspect works all the same."""
    path = helpers.fixture_path(fixture)
    for args in (["inspect", str(path), "--json"], ["inspect", str(path), "--all"]):
        proc = run_subprocess(*args, block_torch=True)
        assert proc.returncode in (EXIT_OK, EXIT_FINDINGS), proc.stderr
        assert "imported-torch=False" in proc.stderr
        if "--json" in args:
            assert json.loads(proc.stdout)["totals"]["tensors"] == len(
                [r for r in helpers.expected(fixture)["tensors"] if r["first"]])


def test_inspect_does_not_import_torch_even_when_installed(helpers):
    """Where torch is installed, inspect still leaves it unimported (startup time, and safety)."""
    helpers.require_torch()
    code = (
        "import sys\nfrom ckpt_cli.main import main\n"
        f"try:\n    main(['inspect', {str(helpers.fixture_path('training'))!r}, '--json'])\n"
        "except SystemExit:\n    pass\n"
        "sys.stderr.write('torch' in sys.modules and 'TORCH' or 'NO-TORCH')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stderr.endswith("NO-TORCH"), proc.stderr


def test_the_program_exits_with_its_code_and_all_its_output(helpers, tmp_path):
    """Run as a program, ckpt leaves without the interpreter's teardown, after flushing: the JSON
    arrives whole, and the exit code is the command's. Called with argv from Python, main raises
    SystemExit instead of ending the process."""
    import ckpt
    from ckpt_cli.main import main

    path = helpers.fixture_path("state_dict")
    env = {**os.environ, "COLUMNS": "200"}
    ok = subprocess.run([sys.executable, "-m", "ckpt", "inspect", str(path), "--json"], capture_output=True,
                        text=True, env=env, timeout=120)
    assert ok.returncode == EXIT_OK and json.loads(ok.stdout) == ckpt.inspect(path).as_json()
    bad = subprocess.run([sys.executable, "-m", "ckpt", "inspect", str(tmp_path / "missing.pt")], capture_output=True,
                         text=True, env=env, timeout=120)
    assert bad.returncode == EXIT_ERROR and bad.stderr.startswith("ckpt: error:")
    with pytest.raises(SystemExit) as e:
        main(["inspect", str(path), "--json"])
    assert e.value.code == EXIT_OK
