"""The committed fixtures themselves: small, complete, consistent, and regenerable by torch."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def test_fixtures_are_small(helpers):
    total = sum(p.stat().st_size for p in helpers.FIXTURES.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    assert total < 1_000_000, f"tests/fixtures holds {total:,} bytes; keep it well under 1 MB"
    assert (helpers.REPO / "examples" / "sample.pt").stat().st_size < 64_000


def test_every_fixture_has_its_answer(helpers):
    made = {p.stem for p in helpers.FIXTURES.glob("*.pt")} | {"sample"}
    assert made == set(helpers.ORACLE_NAMES)
    for name in helpers.ORACLE_NAMES:
        exp = helpers.expected(name)
        assert exp["schema"] == "ckpt-tests.expected/1" and exp["name"] == name
        assert exp["facts"]["file_size"] == helpers.fixture_path(name).stat().st_size, name
        rows = exp["tensors"]
        assert all(r["first"] or any(f["object"] == r["object"] and f["first"] for f in rows) for r in rows)
        for r in rows:
            if r["first"] and r["data"] is not None:
                assert len(bytes.fromhex(r["data"])) == r["nbytes"], (name, r["path"])


def test_coverage_of_the_dtype_fixture(helpers):
    """Every dtype torch stores in the zip format is in the fixtures (float4 and bits included)."""
    dtypes = {r["dtype"] for r in helpers.expected("dtypes")["tensors"]}
    assert dtypes >= {
        "float64", "float32", "float16", "bfloat16", "float8_e5m2", "float8_e4m3fn", "float8_e5m2fnuz",
        "float8_e4m3fnuz", "float8_e8m0fnu", "float4_e2m1fn_x2", "complex128", "complex64", "complex32", "bool",
        "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    }


@pytest.mark.slow
def test_fixtures_regenerate_byte_for_byte(helpers):
    """make_fixtures.py --check rebuilds every fixture and answer in a temporary folder and
    compares bytes: the committed files are exactly what the script makes (with torch 2.13)."""
    torch = helpers.require_torch()
    if not torch.__version__.startswith("2.13."):
        pytest.skip(f"fixtures were made with torch 2.13, this is {torch.__version__}")
    proc = subprocess.run(
        [sys.executable, str(helpers.FIXTURES / "make_fixtures.py"), "--check"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "regenerate byte for byte" in proc.stdout


def test_expected_json_is_strict(helpers):
    for name in helpers.ORACLE_NAMES:
        json.loads((helpers.EXPECTED / f"{name}.json").read_text(), parse_constant=lambda c: pytest.fail(c))
