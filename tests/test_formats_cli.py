"""Format detection by content and ``ckpt inspect`` across the formats of issue 4: every format
is inspected without importing torch, ``--json`` validates against the schema, errors exit 2 on
one line, and detection never trusts a file name."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import ckpt
from ckpt.sniff import sniff
from ckpt_cli.main import cli
from formats_support import MAGIC, fixture, safetensors_bytes, simple_legacy

FILES = ["legacy_p2", "legacy_p4", "legacy_views", "legacy_module", "script", "traced", "st_dtypes"]


@pytest.mark.parametrize("name", FILES)
def test_inspect_json_validates_and_never_imports_torch(name, tmp_path):
    code = (
        "import sys\nsys.modules['torch'] = None\nfrom ckpt_cli.main import main\n"
        f"try:\n    main(['inspect', {str(fixture(name))!r}, '--json'])\n"
        "finally:\n    sys.stderr.write('imported-torch=%s' % (sys.modules.get('torch') is not None))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == (1 if name == "legacy_module" else 0), proc.stderr
    assert proc.stderr.endswith("imported-torch=False")
    doc = json.loads(proc.stdout)
    from test_docs import SchemaChecker, load_schema

    assert SchemaChecker(load_schema()).validate(doc) == []


@pytest.mark.parametrize("name", FILES)
def test_rich_rendering(name):
    result = CliRunner(env={"COLUMNS": "200"}).invoke(cli, ["inspect", str(fixture(name)), "--all"])
    assert result.exit_code == (1 if name == "legacy_module" else 0), result.output
    fmt = ckpt.inspect(fixture(name)).facts["format"]
    assert fmt in result.output and "CRC-32 None" not in result.output and "Traceback" not in result.output


def test_detection_is_by_content_not_by_name(tmp_path):
    """Each format under a misleading name is read as what it is."""
    for name, disguise in [("legacy_p2", "model.safetensors"), ("st_dtypes", "weights.pt"), ("script", "x.bin")]:
        path = tmp_path / disguise
        shutil.copyfile(fixture(name), path)
        want = {"legacy_p2": "torch-legacy", "st_dtypes": "safetensors", "script": "torchscript"}[name]
        assert ckpt.inspect(path).facts["format"] == want


@pytest.mark.parametrize("proto", range(6))
def test_sniff_legacy_magic_at_every_protocol(proto):
    import pickle

    head = pickle.dumps(MAGIC, protocol=proto) + pickle.dumps(1001, protocol=proto)
    assert sniff(head, 10_000) == "torch-legacy"


def test_sniff_edges():
    legacy = simple_legacy()
    assert sniff(legacy[:8], 8) == "torch-legacy"  # cut inside the magic: read as legacy, reported truncated
    st = safetensors_bytes({"w": ("F32", [2], bytes(8))})
    assert sniff(st[:20], len(st)) == "safetensors"
    assert sniff(st[:20], 20) == "safetensors"  # header longer than the file: the reader says truncated
    text = ('{"weight_map": {"' + "é" * 300 + '": "a.safetensors"}}').encode()
    assert sniff(text[:512], len(text)) == "json"  # a character cut in two at byte 512 is still text


@pytest.mark.parametrize("make", ["tar", "legacy_truncated", "st_truncated", "bad_index", "folder"])
def test_errors_exit_2_with_one_line(make, tmp_path):
    import io
    import tarfile

    path = tmp_path / "bad"
    if make == "tar":
        with tarfile.open(path, "w:", format=tarfile.PAX_FORMAT) as tar:
            for member in ("sys_info", "pickle", "storages", "tensors"):
                info = tarfile.TarInfo(member)
                info.size = 1
                tar.addfile(info, io.BytesIO(b"x"))
    elif make == "legacy_truncated":
        path.write_bytes(simple_legacy()[:300])
    elif make == "st_truncated":
        path.write_bytes(safetensors_bytes({"w": ("F32", [2], bytes(8))})[:-2])
    elif make == "bad_index":
        path.write_text('{"weight_map": {"a": "../../etc/passwd"}}')
    else:
        path.mkdir()
    result = CliRunner().invoke(cli, ["inspect", str(path)])
    assert result.exit_code == 2
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("ckpt: error:"), result.output


@pytest.mark.slow
def test_format_fixtures_regenerate_byte_for_byte(helpers):
    """make_format_fixtures.py --check rebuilds the legacy, TorchScript and safetensors fixtures and
    their answers in a temporary folder and compares bytes (TorchScript source maps excepted)."""
    torch = helpers.require_torch()
    if not torch.__version__.startswith("2.13."):
        pytest.skip(f"fixtures were made with torch 2.13, this is {torch.__version__}")
    proc = subprocess.run(
        [sys.executable, str(helpers.FIXTURES / "make_format_fixtures.py"), "--check"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "regenerate byte for byte" in proc.stdout
