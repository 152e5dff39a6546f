"""Files that are not checkpoints, or are checkpoints ckpt does not read yet.

Every one must give a clear, one-line :class:`ckpt.CheckpointError` naming the file and what it
is, from ``ckpt.open``, ``ckpt.load`` and ``ckpt.inspect`` alike, and ``ckpt inspect`` must exit 2
with a single ``ckpt: error: ...`` line (a traceback only with ``--debug``). Formats ckpt does not
read yet must be refused before anything in them is interpreted, and formats it reads (legacy
streams, TorchScript) meet the same restricted interpreter: their payloads would create a marker
file, which must never appear.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import ckpt
from ckpt_cli.main import cli

try:
    from . import adversarial_kit as kit
except ImportError:
    import adversarial_kit as kit

needs_torch = pytest.mark.skipif(not kit.HAVE_TORCH, reason="needs torch")

APIS = {
    "open": lambda p: ckpt.open(p).close(),
    "load": lambda p: ckpt.load(p),
    "load-numpy": lambda p: ckpt.load(p, as_="numpy"),
    "inspect": lambda p: ckpt.inspect(p),
}


def marker_payload(marker: Path) -> bytes:
    """Opcodes of ``os.system("touch <marker>")``: harmless, and visible if it ever ran."""
    return kit.glob("os", "system") + kit.tup(kit.ustr(f"touch {marker}")) + kit.REDUCE


# -- the not-a-checkpoint zoo ------------------------------------------------------------------


def _npy() -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.arange(6, dtype=np.float32))
    return buf.getvalue()


def _npz() -> bytes:
    buf = io.BytesIO()
    np.savez(buf, weight=np.ones((2, 2)), bias=np.zeros(2))
    return buf.getvalue()


NOT_CHECKPOINTS: dict[str, tuple[bytes, type, tuple[str, ...]]] = {
    "empty": (b"", ckpt.NotACheckpointError, ("empty", "download")),
    "git-lfs-pointer": (
        b"version https://git-lfs.github.com/spec/v1\n"
        b"oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\nsize 548118077\n",
        ckpt.NotACheckpointError, ("Git LFS pointer", "git lfs pull"),
    ),
    "html-error-page": (
        b"<!DOCTYPE html>\n<html><head><title>403 Forbidden</title></head>"
        b"<body><h1>Access denied</h1></body></html>\n",
        ckpt.NotACheckpointError, ("HTML", "download"),
    ),
    "html-lowercase-no-doctype": (
        b"\n\n  <html><body>Sign in to continue</body></html>", ckpt.NotACheckpointError, ("HTML",),
    ),
    "json": (b'{"error": "Repository not found", "code": 404}\n', ckpt.NotACheckpointError, ("JSON",)),
    # an index whose shards did not come with it (they are read as one checkpoint when present)
    "sharded-index-json": (
        json.dumps({"metadata": {"total_size": 10}, "weight_map": {"a": "model-00001-of-00002.bin"}}).encode(),
        ckpt.CorruptCheckpointError, ("shard file", "model-00001-of-00002.bin", "incomplete download"),
    ),
    "plain-text": (b"Model weights are available on request.\n", ckpt.NotACheckpointError, ("text file",)),
    "gzip": (gzip.compress(b"\0" * 1000), ckpt.NotACheckpointError, ("gzip", "decompress")),
    "npy": (_npy(), ckpt.NotACheckpointError, ("numpy", ".npy")),
    "npz": (_npz(), ckpt.NotACheckpointError, ("numpy", ".npz")),
    "plain-pickle-p2": (pickle.dumps({"a": [1, 2]}, protocol=2), ckpt.NotACheckpointError, ("plain pickle",)),
    "plain-pickle-p5": (pickle.dumps({"a": [1, 2]}, protocol=5), ckpt.NotACheckpointError, ("plain pickle",)),
    "plain-pickle-p0": (pickle.dumps({"a": [1, 2]}, protocol=0), ckpt.NotACheckpointError, ("plain pickle",)),
    "random-bytes": (bytes((i * 7919 + 13) % 251 for i in range(4096)), ckpt.NotACheckpointError,
                     ("unrecognised", "not a checkpoint")),
}


@pytest.mark.parametrize("api", list(APIS))
@pytest.mark.parametrize("kind", list(NOT_CHECKPOINTS))
def test_not_a_checkpoint_is_named(tmp_path: Path, kind: str, api: str) -> None:
    data, exc, words = NOT_CHECKPOINTS[kind]
    path = kit.write(tmp_path / "model.pt", data)
    with pytest.raises(exc) as info:
        APIS[api](path)
    message = str(info.value)
    assert str(path) in message
    for word in words:
        assert word in message, (word, message)
    assert "\n" not in message


def test_plain_pickle_is_not_run(tmp_path: Path) -> None:
    """A plain pickle renamed to .pt (attack B1) is named, never unpickled."""
    marker = tmp_path / "PWNED"
    data = kit.pickle_of(marker_payload(marker))
    path = kit.write(tmp_path / "model.pt", data)
    for api in APIS.values():
        with pytest.raises(ckpt.NotACheckpointError, match="plain pickle"):
            api(path)
    assert not marker.exists()


@pytest.mark.parametrize("api", list(APIS))
def test_directory(tmp_path: Path, api: str) -> None:
    """A folder is read only as a sharded checkpoint's index and shards, or as a DCP folder (whose
    damaged .metadata is named; tests/test_dcp.py reads real ones)."""
    folder = tmp_path / "checkpoint-1000"
    folder.mkdir()
    (folder / ".metadata").write_bytes(b"x")
    with pytest.raises(ckpt.NotACheckpointError) as info:
        APIS[api](folder)
    assert "folder without a sharded-checkpoint index" in str(info.value) and str(folder) in str(info.value)
    (folder / "__0_0.distcp").write_bytes(b"x")
    with pytest.raises(ckpt.CorruptCheckpointError) as info:
        APIS[api](folder)
    assert "DCP .metadata is not a pickle" in str(info.value) and str(folder) in str(info.value)


@pytest.mark.parametrize("api", list(APIS))
def test_missing_path(tmp_path: Path, api: str) -> None:
    path = tmp_path / "nope" / "model.pt"
    with pytest.raises(ckpt.CheckpointError) as info:
        APIS[api](path)
    assert "no such file" in str(info.value) and str(path) in str(info.value)


# -- formats not supported yet ------------------------------------------------------------------


def legacy_stream(obj_pickle: bytes, protocol: int = 2) -> bytes:
    """torch's pre-1.6 stream: pickles of the magic number, protocol 1001, sys_info, then the object."""
    magic = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=protocol)
    version = pickle.dumps(1001, protocol=protocol)
    sys_info = pickle.dumps({"protocol_version": 1001, "little_endian": True,
                             "type_sizes": {"short": 2, "int": 4, "long": 4}}, protocol=2)
    keys = pickle.dumps([], protocol=2)
    return magic + version + sys_info + obj_pickle + keys


def torchscript_zip(marker: Path) -> bytes:
    """A TorchScript-shaped archive (``constants.pkl`` present) whose data.pkl would run a payload."""
    return kit.build_zip([
        kit.Member("ts/data.pkl", kit.pickle_of(marker_payload(marker))),
        kit.Member("ts/code/__torch__.py", b"def forward(self):\n    return None\n", method=8),
        kit.Member("ts/constants.pkl", b"\x80\x02).", ),
        kit.Member("ts/version", b"3\n"),
    ])


def legacy_tar(marker: Path) -> bytes:
    """The pre-0.1.10 tar layout (members ``storages``, ``tensors``, ``pickle``) with a payload."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in (
            ("storages", b"\x80\x02K\x00."),
            ("tensors", b"\x80\x02K\x00."),
            ("pickle", kit.pickle_of(marker_payload(marker))),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def safetensors_file() -> bytes:
    header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    return struct.pack("<Q", len(header)) + header + kit.floats(1.0, 2.0)


UNSUPPORTED: dict[str, tuple[object, tuple[str, ...]]] = {
    "legacy-tar": (legacy_tar, ("tar format", "before 0.1.10", "Nothing in it was extracted or run")),
}
# Formats ckpt reads (issue 4): their payloads meet the same restricted interpreter and allowlist.
READ_WITH_PAYLOAD: dict[str, object] = {
    "legacy-stream": lambda m: legacy_stream(kit.pickle_of(marker_payload(m))),
    # protocol 4/5 put a FRAME opcode before the magic number (torch.save(..., pickle_protocol=4))
    "legacy-stream-p4": lambda m: legacy_stream(kit.pickle_of(marker_payload(m), 4), 4),
    "legacy-stream-p0": lambda m: legacy_stream(kit.pickle_of(marker_payload(m), 0), 0),
    "torchscript": torchscript_zip,
}


@pytest.mark.parametrize("api", list(APIS))
@pytest.mark.parametrize("kind", list(UNSUPPORTED))
def test_unsupported_format_is_refused_without_running_it(tmp_path: Path, kind: str, api: str) -> None:
    maker, words = UNSUPPORTED[kind]
    marker = tmp_path / "PWNED"
    path = kit.write(tmp_path / "model.pt", maker(marker))  # type: ignore[operator]
    with pytest.raises(ckpt.UnsupportedFormatError) as info:
        APIS[api](path)
    message = str(info.value)
    assert str(path) in message
    for word in words:
        assert word in message, (word, message)
    assert not marker.exists()


@pytest.mark.parametrize("api", list(APIS))
@pytest.mark.parametrize("kind", list(READ_WITH_PAYLOAD))
def test_payloads_in_legacy_and_torchscript_files_never_run(tmp_path: Path, kind: str, api: str) -> None:
    """Strict APIs refuse the payload's global; inspect reports it as a dangerous finding."""
    marker = tmp_path / "PWNED"
    path = kit.write(tmp_path / "model.pt", READ_WITH_PAYLOAD[kind](marker))  # type: ignore[operator]
    if api == "inspect":
        summary = APIS[api](path)
        assert [(f.name, f.verdict) for f in summary.findings] == [("os.system", "dangerous")]
    else:
        if api == "load" and not kit.HAVE_TORCH:
            pytest.skip("needs torch")
        with pytest.raises(ckpt.UnsafeGlobalError, match="os.system") as info:
            APIS[api](path)
        assert str(path) in str(info.value)
    assert not marker.exists()


@needs_torch
@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4, 5])
def test_real_legacy_checkpoint(tmp_path: Path, protocol: int) -> None:
    """torch.save(..., _use_new_zipfile_serialization=False) at every pickle protocol: read, except
    protocol 0, whose persistent ids are text nobody can read back."""
    import torch

    path = tmp_path / "legacy.pt"
    torch.save({"w": torch.ones(3)}, path, _use_new_zipfile_serialization=False, pickle_protocol=protocol)
    if protocol == 0:
        for api in APIS.values():
            with pytest.raises(ckpt.CorruptCheckpointError, match="protocol-0"):
                api(path)
        return
    assert torch.equal(ckpt.load(path)["w"], torch.ones(3))
    assert ckpt.load(path, as_="numpy")["w"].tolist() == [1.0, 1.0, 1.0]
    assert ckpt.inspect(path).facts["format"] == "torch-legacy"


@needs_torch
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_real_torchscript_archive(tmp_path: Path) -> None:
    import torch

    path = tmp_path / "scripted.pt"
    scripted = torch.jit.script(torch.nn.Linear(2, 2))
    torch.jit.save(scripted, str(path))
    loaded = ckpt.load(path)
    assert list(loaded) == ["weight", "bias"]
    assert all(torch.equal(loaded[k], v) for k, v in scripted.state_dict().items())
    assert ckpt.inspect(path).facts["format"] == "torchscript"


def test_real_safetensors_file(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    path = tmp_path / "model.safetensors"
    save_file({"w": np.ones(3, dtype=np.float32)}, str(path))
    assert ckpt.load(path, as_="numpy")["w"].tolist() == [1.0, 1.0, 1.0]
    assert ckpt.inspect(path).facts["format"] == "safetensors"


# -- the command line --------------------------------------------------------------------------


def cli_error_line(result) -> str:  # type: ignore[no-untyped-def]
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("ckpt: error: "), lines[0]
    assert result.stdout == ""
    return lines[0]


@pytest.mark.parametrize("kind", list(NOT_CHECKPOINTS))
def test_cli_not_a_checkpoint(tmp_path: Path, kind: str) -> None:
    data, _exc, words = NOT_CHECKPOINTS[kind]
    path = kit.write(tmp_path / "model.pt", data)
    for extra in ([], ["--json"]):
        line = cli_error_line(CliRunner().invoke(cli, ["inspect", str(path), *extra]))
        assert str(path) in line and all(w in line for w in words)


@pytest.mark.parametrize("kind", list(UNSUPPORTED))
def test_cli_unsupported_format(tmp_path: Path, kind: str) -> None:
    maker, words = UNSUPPORTED[kind]
    marker = tmp_path / "PWNED"
    path = kit.write(tmp_path / "model.pt", maker(marker))  # type: ignore[operator]
    line = cli_error_line(CliRunner().invoke(cli, ["inspect", str(path)]))
    assert all(w in line for w in words)
    assert not marker.exists()


def test_cli_directory_and_missing(tmp_path: Path) -> None:
    folder = tmp_path / "dir.pt"
    folder.mkdir()
    assert "folder without a sharded-checkpoint index" in cli_error_line(CliRunner().invoke(cli, ["inspect", str(folder)]))
    assert "no such file" in cli_error_line(CliRunner().invoke(cli, ["inspect", str(tmp_path / "gone.pt")]))


def test_cli_real_process_one_line_and_debug_traceback(tmp_path: Path) -> None:
    """The installed entry point, in a real process: exit 2, one line; --debug adds the traceback."""
    path = kit.write(tmp_path / "model.pt", NOT_CHECKPOINTS["git-lfs-pointer"][0])
    plain = kit.run_cli("inspect", str(path))
    assert plain.returncode == 2
    assert plain.stdout == ""
    assert plain.stderr.count("\n") == 1 and plain.stderr.startswith("ckpt: error: ")
    assert "Git LFS pointer" in plain.stderr and "Traceback" not in plain.stderr
    debug = kit.run_cli("--debug", "inspect", str(path))
    assert debug.returncode != 0
    assert "Traceback" in debug.stderr and "NotACheckpointError" in debug.stderr


def test_cli_real_process_unsupported_format(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    path = kit.write(tmp_path / "model.pt", legacy_tar(marker))
    proc = kit.run_cli("inspect", "--json", str(path))
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "tar format" in proc.stderr
    assert not marker.exists()


def test_cli_real_process_torchscript_payload(tmp_path: Path) -> None:
    """A TorchScript archive whose data.pkl calls os.system: read, the call a finding (exit 1)."""
    marker = tmp_path / "PWNED"
    path = kit.write(tmp_path / "model.pt", torchscript_zip(marker))
    proc = kit.run_cli("inspect", "--json", str(path))
    assert proc.returncode == 1, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["format"]["format"] == "torchscript"
    assert [(f["global"], f["verdict"]) for f in doc["findings"]] == [("os.system", "dangerous")]
    assert not marker.exists()


def test_marker_mechanism_is_live(tmp_path: Path) -> None:
    """Canary: the payload's command really creates the marker when run, so the absence of the
    marker in the other tests means the payload did not run (not that it could not)."""
    marker = tmp_path / "PWNED"
    assert os.system(f"touch {marker}") == 0
    assert marker.exists()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs mkfifo")
def test_a_fifo_is_refused_at_once_never_opened(tmp_path: Path) -> None:
    """Opening a FIFO for reading blocks until a writer comes: ckpt refuses it before opening."""
    from click.testing import CliRunner

    from ckpt_cli.main import cli

    fifo = tmp_path / "model.pt"
    os.mkfifo(fifo)
    with pytest.raises(ckpt.CheckpointError, match="not a regular file: a FIFO"):
        ckpt.load(fifo, as_="numpy")
    result = CliRunner().invoke(cli, ["inspect", str(fifo)])
    assert result.exit_code == 2
    assert result.output.strip() == f"ckpt: error: {fifo}: cannot open the file (not a regular file: a FIFO, device or socket)"
