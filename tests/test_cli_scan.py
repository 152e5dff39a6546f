"""``ckpt scan`` on the command line: exit codes, output modes, SARIF, the pre-commit hook file."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from ckpt_cli.main import cli

import scan_kit as K

REPO = Path(__file__).resolve().parent.parent


def run(*args: object) -> "object":
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture
def corpus(tmp_path: Path) -> dict[str, Path]:
    marker = tmp_path / "PWNED"
    d = tmp_path / "files"
    d.mkdir()
    out = {
        "clean": d / "clean.pkl",
        "unknown": d / "unknown.pkl",
        "dangerous": d / "dangerous.pt",
        "error": d / "error.pkl",
    }
    out["clean"].write_bytes(K.benign_pickle())
    out["unknown"].write_bytes(K.proto(2) + K.glob("argparse", "Namespace") + K.EMPTY_TUPLE + K.REDUCE + K.STOP)
    K.torch_zip(out["dangerous"], K.os_system(marker))
    out["error"].write_bytes(K.benign_pickle()[:-2])
    out["marker"] = marker
    return out


@pytest.mark.parametrize("which,fail_on,code", [
    ("clean", "dangerous", 0), ("clean", "unknown", 0),
    ("unknown", "dangerous", 0), ("unknown", "unknown", 1),
    ("dangerous", "dangerous", 1), ("dangerous", "unknown", 1),
    ("error", "dangerous", 2), ("error", "unknown", 2),
])
def test_exit_codes(corpus: dict[str, Path], which: str, fail_on: str, code: int) -> None:
    for extra in ([], ["--json"], ["--sarif"], ["--quiet"]):
        result = run("scan", corpus[which], "--fail-on", fail_on, *extra)
        assert result.exit_code == code, (which, fail_on, extra, result.output)
    assert not corpus["marker"].exists()


def test_folder_exit_code_is_the_worst(corpus: dict[str, Path]) -> None:
    assert run("scan", corpus["clean"].parent).exit_code == 2
    assert run("scan", corpus["clean"], corpus["dangerous"]).exit_code == 1


def test_missing_path_is_an_error_line(tmp_path: Path) -> None:
    result = run("scan", tmp_path / "nope.pt")
    assert result.exit_code == 2
    assert "cannot open the file" in result.output


def test_table_output_names_what_and_where(corpus: dict[str, Path]) -> None:
    result = run("scan", corpus["dangerous"], corpus["clean"])
    assert "DANGEROUS" in result.output and "posix.system" in result.output and "archive/data.pkl" in result.output
    assert "CLEAN" in result.output
    assert "2 files scanned: 1 clean, 1 dangerous" in result.output
    quiet = run("scan", corpus["dangerous"], corpus["clean"], "--quiet")
    assert "clean.pkl" not in quiet.output and "posix.system" in quiet.output
    shown = run("scan", corpus["dangerous"], "--show-safe")
    assert "safe globals" not in shown.output  # the payload names no safe global
    allowed = run("scan", corpus["unknown"], "--allow", "argparse.Namespace", "--fail-on", "unknown")
    assert allowed.exit_code == 0


def test_json_matches_the_library(corpus: dict[str, Path]) -> None:
    import ckpt

    result = run("scan", corpus["unknown"], corpus["dangerous"], "--json", "--fail-on", "unknown")
    doc = json.loads(result.output)
    lib = ckpt.scan([corpus["unknown"], corpus["dangerous"]]).as_json("unknown")
    strip = lambda d: {**d, "seconds": 0, "files": [{**f, "seconds": 0} for f in d["files"]]}  # noqa: E731
    assert strip(doc) == strip(json.loads(json.dumps(lib)))
    assert doc["exit_code"] == result.exit_code == 1


def test_sarif_is_well_formed(corpus: dict[str, Path]) -> None:
    result = run("scan", corpus["clean"].parent, "--sarif")
    log = json.loads(result.output)
    assert log["version"] == "2.1.0" and "sarif" in log["$schema"]
    (run_,) = log["runs"]
    rules = run_["tool"]["driver"]["rules"]
    ids = [r["id"] for r in rules]
    assert len(ids) == len(set(ids)) and {"global.dangerous", "global.unknown", "scan.error"} <= set(ids)
    for r in rules:
        assert r["shortDescription"]["text"] and r["defaultConfiguration"]["level"] in ("error", "warning")
    assert run_["results"]
    for res in run_["results"]:
        assert rules[res["ruleIndex"]]["id"] == res["ruleId"]
        assert res["level"] in ("error", "warning", "note")
        assert res["message"]["text"]
        uri = res["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
        assert uri.endswith((".pkl", ".pt"))
    levels = {res["ruleId"]: res["level"] for res in run_["results"]}
    assert levels["global.dangerous"] == "error" and levels["global.unknown"] == "warning"
    assert len(run_["artifacts"]) == 4


def test_sarif_uris_are_uri_references(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Paths become URI references: relative ones percent-encoded (spaces, '#', '%'), absolute ones
    file: URIs; every result points at an artifact of the run."""
    from urllib.parse import unquote, urlsplit

    import ckpt

    d = tmp_path / "odd dir #1"
    d.mkdir()
    (d / "a 100%.pkl").write_bytes(K.proto(2) + K.glob("os", "system") + K.STOP)
    monkeypatch.chdir(tmp_path)
    for given in ("odd dir #1", str(d)):
        log = ckpt.scan(given, jobs=1).as_sarif()
        (run_,) = log["runs"]
        uris = [a["location"]["uri"] for a in run_["artifacts"]]
        assert len(uris) == 1 and " " not in uris[0] and "#" not in uris[0]
        parts = urlsplit(uris[0])
        if given == str(d):
            assert parts.scheme == "file" and Path(unquote(parts.path)) == d / "a 100%.pkl"
        else:
            assert parts.scheme == "" and unquote(uris[0]) == "odd dir #1/a 100%.pkl"
        assert {r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] for r in run_["results"]} == set(uris)


def test_cli_json_uses_the_c_encoder() -> None:
    """--json and --sarif print with json.dumps (the C encoder); json.dump streams through the
    pure-Python one, ~10x slower on big reports."""
    for name in ("scan_cmd.py", "inspect_cmd.py"):
        assert "json.dump(" not in (REPO / "cli" / name).read_text(encoding="utf-8"), name


def test_json_and_sarif_are_exclusive(corpus: dict[str, Path]) -> None:
    assert run("scan", corpus["clean"], "--json", "--sarif").exit_code == 2


def test_no_progress_bar_when_piped(corpus: dict[str, Path]) -> None:
    """Piped (not a terminal), only the report is printed: stdout parses as JSON, stderr is empty."""
    proc = subprocess.run([sys.executable, "-m", "ckpt", "scan", str(corpus["clean"].parent), "--json", "--jobs", "2"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert json.loads(proc.stdout)["summary"]["files"] == 4
    assert proc.stderr == ""


def test_pre_commit_hooks_file() -> None:
    """The hook definitions name existing options and a file pattern that matches checkpoints."""
    text = (REPO / ".pre-commit-hooks.yaml").read_text(encoding="utf-8")
    try:
        import yaml  # type: ignore[import-untyped]
    except ImportError:
        hooks = [{"id": m} for m in re.findall(r"^- id: (\S+)", text, re.M)]
        entries = re.findall(r"^\s+entry: (.+)$", text, re.M)
        files = re.findall(r"^\s+files: '(.+)'$", text, re.M)
    else:
        hooks = yaml.safe_load(text)
        entries = [h["entry"] for h in hooks]
        files = [h["files"] for h in hooks]
        assert all(h["language"] == "python" for h in hooks)
    assert [h["id"] for h in hooks] == ["ckpt-scan", "ckpt-scan-strict"]
    for entry in entries:
        args = entry.split()
        assert args[:2] == ["ckpt", "scan"]
        result = run(*args[1:], "--help")
        assert result.exit_code == 0
    for pattern in files:
        rx = re.compile(pattern)
        for name in ("model.pt", "a/b/pytorch_model.bin", "x.ckpt", "s.safetensors", "d/.metadata", "c.pkl"):
            assert rx.search(name), (pattern, name)
        assert not rx.search("README.md")


def test_pre_commit_hook_entries_refuse_what_they_should(corpus: dict[str, Path]) -> None:
    """Each hook's entry, run as pre-commit runs it (staged files appended): ckpt-scan fails on the
    dangerous file only, ckpt-scan-strict on the unknown one too; clean files pass both."""
    text = (REPO / ".pre-commit-hooks.yaml").read_text(encoding="utf-8")
    entries = dict(zip(re.findall(r"^- id: (\S+)", text, re.M), re.findall(r"^\s+entry: (.+)$", text, re.M)))
    for hook, staged, code in (("ckpt-scan", "clean", 0), ("ckpt-scan", "unknown", 0), ("ckpt-scan", "dangerous", 1),
                               ("ckpt-scan-strict", "clean", 0), ("ckpt-scan-strict", "unknown", 1),
                               ("ckpt-scan", "error", 2)):
        args = entries[hook].split()[2:]
        result = run("scan", *args, corpus[staged])
        assert result.exit_code == code, (hook, staged, result.output)
    assert not corpus["marker"].exists()
