"""safetensors files: the safetensors library is the oracle (it is a core dependency, so these
tests run without torch too, through ``safetensors.numpy``), plus a committed file made by torch
with every dtype safetensors stores. Malformed headers: ckpt refuses each with a clear error, and
so does the library wherever it refuses too.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ckpt
from ckpt.safetensors_reader import SafetensorsReader
from ckpt.tensors import StorageRef
from formats_support import ReadRecorder, answer, fixture, safetensors_bytes


# -- the committed file (every dtype, made by torch) --------------------------------------------


@pytest.mark.parametrize("mmap", [False, True], ids=["read", "mmap"])
def test_load_matches_the_library(mmap, helpers):
    helpers.require_torch()
    result = ckpt.load(fixture("st_dtypes"), mmap=mmap)
    helpers.compare_to_expected(result, answer("st_dtypes"), "torch")


def test_load_matches_the_live_library(helpers):
    helpers.require_torch()
    from safetensors.torch import load_file

    path = fixture("st_dtypes")
    reference = load_file(str(path))
    loaded = ckpt.load(path)
    assert list(loaded) == list(reference)  # data-offset order, as load_file gives it
    helpers.compare_loaded(loaded, reference, check_storage_identity=False)
    storages = {t.untyped_storage()._cdata for t in loaded.values() if t.numel()}
    assert len(storages) == len([t for t in loaded.values() if t.numel()])  # one storage per tensor


@pytest.mark.parametrize("unsupported_dtype", ["upcast", "raw"])
def test_numpy_flavour(unsupported_dtype, helpers):
    path = fixture("st_dtypes")
    if unsupported_dtype == "upcast":
        # float4_e2m1fn_x2 packs two values per byte: no exact upcast (ckpt.numpy_out)
        with pytest.raises(ckpt.UnsupportedFeatureError, match="float4_e2m1fn_x2"):
            ckpt.load(path, as_="numpy")
        return
    result = ckpt.load(path, as_="numpy", unsupported_dtype="raw")
    helpers.compare_to_expected(result, answer("st_dtypes"), "numpy", unsupported_dtype="raw")


def test_f4_shape_is_halved_like_the_library():
    """safetensors counts F4 elements (two per byte); torch's float4_e2m1fn_x2 holds pairs."""
    with ckpt.open(fixture("st_dtypes")) as ck:
        f4 = ck.root["float4_e2m1fn_x2"]
    assert f4.dtype.name == "float4_e2m1fn_x2" and f4.shape == (2, 3) and f4.nbytes == 6
    header = json.loads(fixture("st_dtypes").read_bytes()[8:][: answer("st_dtypes")["facts"]["header_bytes"]])
    assert header["float4_e2m1fn_x2"]["shape"] == [2, 6]


def test_facts_and_inspect():
    path = fixture("st_dtypes")
    summary = ckpt.inspect(path)
    exp = answer("st_dtypes")
    assert summary.facts == {
        "format": "safetensors", "byteorder": "little", "header_bytes": exp["facts"]["header_bytes"],
        "data_offset": 8 + exp["facts"]["header_bytes"], "metadata": exp["facts"]["metadata"], "notes": [],
    }
    assert summary.kind == "state_dict" and summary.findings == []
    assert [t.path for t in summary.tensors] == [r["path"] for r in exp["tensors"]]
    assert summary.totals["tensors"] == len(exp["tensors"])
    assert summary.totals["storage_bytes"] == path.stat().st_size - 8 - exp["facts"]["header_bytes"]


def test_inspect_reads_the_header_only(monkeypatch):
    path = fixture("st_dtypes")
    monkeypatch.setattr(StorageRef, "read", lambda *a: pytest.fail("inspect read a tensor"))
    monkeypatch.setattr(SafetensorsReader, "readinto", lambda *a: pytest.fail("inspect read a tensor"))
    recorder = ReadRecorder(monkeypatch, path)
    ckpt.inspect(path)
    data_start = 8 + answer("st_dtypes")["facts"]["header_bytes"]
    reads = [(a, b) for a, b in recorder.of(path) if not (a == 0 and b <= 512)]
    assert reads and all(b <= data_start for a, b in reads), reads


# -- files written by safetensors.numpy (no torch needed) -------------------------------------------

NUMPY_DTYPES = ["float64", "float32", "float16", "int64", "int32", "int16", "int8", "uint8", "bool",
                "uint16", "uint32", "uint64", "complex64"]


@st.composite
def tensor_dicts(draw: Any) -> dict[str, np.ndarray]:
    names = draw(st.lists(st.text(min_size=1, max_size=12).filter(lambda n: n != "__metadata__"),
                          min_size=0, max_size=6, unique=True))
    out = {}
    for name in names:
        dtype = draw(st.sampled_from(NUMPY_DTYPES))
        shape = tuple(draw(st.lists(st.integers(0, 4), max_size=3)))
        n = int(np.prod(shape)) * np.dtype(dtype).itemsize
        raw = draw(st.binary(min_size=n, max_size=n))
        if dtype == "bool":
            out[name] = np.asarray(np.frombuffer(raw, dtype=np.uint8).reshape(shape) % 2, dtype=bool)
        else:
            out[name] = np.frombuffer(raw, dtype=dtype).reshape(shape).copy()
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(arrays=tensor_dicts(), mmap=st.booleans())
def test_random_files_load_like_the_library(arrays, mmap, tmp_path):
    from safetensors.numpy import load_file, save_file

    path = tmp_path / "r.safetensors"
    save_file(arrays, str(path), metadata={"k": "v"})
    reference = load_file(str(path))
    loaded = ckpt.load(path, as_="numpy", mmap=mmap)
    # data-offset order, as the library's; empty tensors share an offset and the library orders such
    # ties at random (a hash map), ckpt by their place in the header
    assert sorted(loaded) == sorted(reference)
    nonempty = [k for k in reference if reference[k].size]
    assert [k for k in loaded if loaded[k].size] == nonempty
    for name, ref in reference.items():
        got = loaded[name]
        assert got.dtype == ref.dtype and got.shape == ref.shape, name
        assert np.ascontiguousarray(got).tobytes() == np.ascontiguousarray(ref).tobytes(), name
    assert ckpt.inspect(path).facts["metadata"] == {"k": "v"}


def test_empty_file_and_metadata_only(tmp_path):
    path = tmp_path / "e.safetensors"
    path.write_bytes(safetensors_bytes({}, metadata={"a": "b"}))
    assert ckpt.load(path, as_="numpy") == {}
    summary = ckpt.inspect(path)
    assert summary.totals["tensors"] == 0 and summary.facts["metadata"] == {"a": "b"}


# -- malformed headers -------------------------------------------------------------------------------

U8 = ("U8", [1], b"\x01")


def _header(entries: dict[str, Any], meta: Any = ...) -> dict[str, Any]:
    h: dict[str, Any] = {} if meta is ... else {"__metadata__": meta}
    h.update(entries)
    return h


def _entry(code: str, shape: list[Any], begin: int, end: int, **extra: Any) -> dict[str, Any]:
    return {"dtype": code, "shape": shape, "data_offsets": [begin, end], **extra}


def _file(header: Any, data: bytes = b"", *, raw_header: bytes | None = None, length: int | None = None) -> bytes:
    text = raw_header if raw_header is not None else json.dumps(header).encode()
    return struct.pack("<Q", len(text) if length is None else length) + text + data


MALFORMED: dict[str, tuple[bytes, type, str]] = {
    "header past the end": (_file(None, raw_header=b"{}", length=100), ckpt.CorruptCheckpointError,
                            "header declares 100 bytes but the file holds only 2"),
    "header over 100 MB": (_file(None, raw_header=b"{}", length=200_000_000), ckpt.ResourceLimitError,
                           "at most 100,000,000"),
    "huge header length": (_file(None, raw_header=b"{}", length=(1 << 64) - 1), ckpt.ResourceLimitError,
                           "header declares"),
    "not UTF-8": (_file(None, raw_header=b'{"\xff": 1}'), ckpt.CorruptCheckpointError, "not valid UTF-8"),
    "not JSON": (_file(None, raw_header=b'{"a": '), ckpt.CorruptCheckpointError, "not valid JSON"),
    "NUL padding": (_file(None, raw_header=b"{}\0\0"), ckpt.CorruptCheckpointError, "not valid JSON"),
    "a list": (_file(None, raw_header=b"[1, 2]"), ckpt.CorruptCheckpointError, "JSON list, not an object"),
    "deep nesting": (_file(None, raw_header=b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
                     ckpt.CorruptCheckpointError, "nests too deeply|tensor entry must be an object"),
    "name twice": (_file(None, b"\x01\x02", raw_header=b'{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},'
                                                        b'"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}'),
                   ckpt.CorruptCheckpointError, "names 'a' twice"),
    "metadata not strings": (_file(_header({"a": _entry(*U8[:2], 0, 1)}, {"k": 1}), b"\x01"),
                             ckpt.CorruptCheckpointError, "__metadata__ must map strings to strings"),
    "entry not an object": (_file({"a": [1]}), ckpt.CorruptCheckpointError, "tensor entry must be an object"),
    "missing shape": (_file({"a": {"dtype": "U8", "data_offsets": [0, 1]}}, b"\x01"), ckpt.CorruptCheckpointError,
                      "lacks 'shape'"),
    "unknown dtype": (_file({"a": _entry("I4", [1], 0, 1)}, b"\x01"), ckpt.CorruptCheckpointError,
                      "unknown safetensors dtype 'I4'"),
    "6-bit floats": (_file({"a": _entry("F6_E2M3", [4], 0, 3)}, b"\0\0\0"), ckpt.UnsupportedFeatureError,
                     "F6_E2M3"),
    "negative dim": (_file({"a": _entry("U8", [-1], 0, 1)}, b"\x01"), ckpt.CorruptCheckpointError,
                     "non-negative integers"),
    "float dim": (_file({"a": _entry("U8", [1.0], 0, 1)}, b"\x01"), ckpt.CorruptCheckpointError,
                  "non-negative integers"),
    "bool dim": (_file({"a": _entry("U8", [True], 0, 1)}, b"\x01"), ckpt.CorruptCheckpointError,
                 "non-negative integers"),
    "offsets reversed": (_file({"a": _entry("U8", [0], 1, 0)}, b"\x01"), ckpt.CorruptCheckpointError,
                         "end before they begin"),
    "shape vs bytes": (_file({"a": _entry("F32", [2], 0, 4)}, b"\0" * 4), ckpt.CorruptCheckpointError,
                       "needs 8 bytes, but its data_offsets cover 4"),
    "shape overflow": (_file({"a": _entry("F32", [2**62, 8], 0, 1)}, b"\0"), ckpt.CorruptCheckpointError,
                       "needs more than 1 bytes"),
    "odd F4": (_file({"a": _entry("F4", [3], 0, 2)}, b"\0\0"), ckpt.CorruptCheckpointError,
               "odd number of 4-bit values"),
    "gap": (_file({"a": _entry("U8", [1], 0, 1), "b": _entry("U8", [1], 2, 3)}, b"\0\0\0"),
            ckpt.CorruptCheckpointError, "leaves a gap"),
    "overlap": (_file({"a": _entry("U8", [2], 0, 2), "b": _entry("U8", [1], 1, 2)}, b"\0\0"),
                ckpt.CorruptCheckpointError, "overlaps"),
    "trailing data": (_file({"a": _entry("U8", [1], 0, 1)}, b"\0\0"), ckpt.CorruptCheckpointError,
                      "1 bytes follow the last tensor"),
    "truncated data": (_file({"a": _entry("U8", [2], 0, 2)}, b"\0"), ckpt.CorruptCheckpointError,
                       "truncated"),
    "offsets past the end": (_file({"a": _entry("U8", [1], 2**63, 2**63 + 1)}, b"\0"), ckpt.CorruptCheckpointError,
                             "leaves a gap"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_headers_are_refused_before_use(case, tmp_path):
    blob, error, words = MALFORMED[case]
    path = tmp_path / "bad.safetensors"
    path.write_bytes(blob)
    for call in (ckpt.inspect, lambda p: ckpt.load(p, as_="numpy"), lambda p: ckpt.open(p).close()):
        with pytest.raises(error, match=words) as info:
            call(path)
        assert str(path) in str(info.value)


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_the_library_refuses_them_too(case, tmp_path):
    """The oracle: safetensors itself rejects every malformed file ckpt rejects."""
    from safetensors import safe_open

    blob, _, _ = MALFORMED[case]
    path = tmp_path / "bad.safetensors"
    path.write_bytes(blob)
    with pytest.raises(Exception):  # noqa: B017 - the library's own error type
        with safe_open(str(path), framework="numpy") as f:
            for k in f.keys():
                f.get_tensor(k)


@pytest.mark.parametrize("case", ["extra key", "metadata null", "unsorted offsets", "zero-size at the end",
                                  "space before the header"])
def test_what_the_library_accepts_ckpt_accepts(case, tmp_path):
    from safetensors.numpy import load_file

    files = {
        "extra key": _file({"a": _entry("U8", [1], 0, 1, extra=1)}, b"\x07"),
        "metadata null": _file(_header({"a": _entry("U8", [1], 0, 1)}, None), b"\x07"),
        "unsorted offsets": _file({"b": _entry("U8", [1], 1, 2), "a": _entry("U8", [1], 0, 1)}, b"\x07\x08"),
        "zero-size at the end": _file({"a": _entry("U8", [1], 0, 1), "z": _entry("U8", [0], 1, 1)}, b"\x07"),
        "space before the header": _file(None, b"\x07", raw_header=b' {"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}'),
    }
    path = tmp_path / "ok.safetensors"
    path.write_bytes(files[case])
    reference = load_file(str(path))
    loaded = ckpt.load(path, as_="numpy")
    assert list(loaded) == list(reference)
    assert all(loaded[k].tobytes() == reference[k].tobytes() for k in reference)


def test_truncated_download_is_named(tmp_path):
    """A file cut inside its header is still recognised as safetensors, and called truncated."""
    from safetensors.numpy import save_file

    path = tmp_path / "full.safetensors"
    save_file({"w": np.arange(100, dtype=np.float32)}, str(path))
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(path.read_bytes()[:40])
    with pytest.raises(ckpt.CorruptCheckpointError, match="truncated"):
        ckpt.inspect(cut)
    cut.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ckpt.CorruptCheckpointError, match="truncated"):
        ckpt.inspect(cut)


def test_cli_shows_metadata():
    from click.testing import CliRunner

    from ckpt_cli.main import cli

    result = CliRunner().invoke(cli, ["inspect", str(fixture("st_dtypes"))])
    assert result.exit_code == 0, result.output
    assert "safetensors" in result.output and "metadata: format=pt" in result.output
    result = CliRunner().invoke(cli, ["inspect", "--json", str(fixture("st_dtypes"))])
    assert json.loads(result.output)["format"]["metadata"] == {"format": "pt"}
