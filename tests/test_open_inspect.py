"""``ckpt.open`` (lazy references) and ``ckpt.inspect`` against the recorded torch answers.

Needs no torch: everything is compared with ``tests/fixtures/expected/*.json``, except the I/O
accounting test, which makes a large checkpoint with torch at test time.
"""

from __future__ import annotations

import io
import json
import os
import struct
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import ckpt
from ckpt.tensors import StorageRef, TensorRef
from formats_support import ReadRecorder

# inspect reads every fixture except this one (its persistent ids are not tuples; nobody can read it)
UNREADABLE = {"protocol_0": (ckpt.CorruptCheckpointError, "persistent id")}
# ckpt.open's strict policy refuses these; the inspect policy reads them
STRICT_REFUSES = {
    "unknown_global": "argparse.Namespace",
    "tensor_subclass": "__main__.TaggedTensor",
}
# tensors ckpt shows as inert records (rebuilt by torch, not by ckpt yet)
INERT_TENSORS: dict[str, dict[str, str]] = {}


def _rows(exp: dict[str, Any], name: str) -> list[dict[str, Any]]:
    skip = INERT_TENSORS.get(name, {})
    return [r for r in exp["tensors"] if r["path"] not in skip]


def _stored_device(row: dict[str, Any]) -> str:
    return row["storage"]["location"] or row["device"]


def _open(name: str, helpers: Any) -> ckpt.Checkpoint:
    policy = "inspect" if name in STRICT_REFUSES or name in INERT_TENSORS else "strict"
    return ckpt.open(helpers.fixture_path(name), policy=policy)


# -- ckpt.open -----------------------------------------------------------------------------------


def test_open_strict_refuses_unknown_globals(oracle_name, helpers):
    path = helpers.fixture_path(oracle_name)
    if oracle_name in UNREADABLE:
        err, text = UNREADABLE[oracle_name]
        with pytest.raises(err, match=text):
            ckpt.open(path)
        return
    if oracle_name in INERT_TENSORS:
        with pytest.raises(ckpt.UnsupportedFeatureError, match="not supported yet"):
            ckpt.open(path)
        return
    if oracle_name in STRICT_REFUSES:
        with pytest.raises(ckpt.UnsafeGlobalError, match=STRICT_REFUSES[oracle_name]) as info:
            ckpt.open(path)
        assert info.value.global_name == STRICT_REFUSES[oracle_name]
        with ckpt.open(path, allow=[STRICT_REFUSES[oracle_name]]) as ck:
            assert ck.findings == []
        return
    with ckpt.open(path) as ck:
        assert ck.findings == []


def test_open_references_match_recorded_torch(oracle_name, helpers):
    """Every tensor torch returned, at its dotted path: dtype, shape, stride, offset, stored
    device, sizes, storage key, requires_grad, Parameter-ness; repeated tensors are one object."""
    if oracle_name in UNREADABLE:
        pytest.skip("unreadable on purpose")
    exp = helpers.expected(oracle_name)
    rows = _rows(exp, oracle_name)
    with _open(oracle_name, helpers) as ck:
        refs = list(ck.tensors())
        assert [p for p, _ in refs] == [r["path"] for r in rows]
        first_ref: dict[int, TensorRef] = {}
        key_of_group: dict[int, str] = {}
        for (path, ref), row in zip(refs, rows):
            assert type(ref) is TensorRef, path
            if not row["first"]:
                assert ref is first_ref[row["object"]], f"{path}: not the same object as its first occurrence"
                continue
            assert row["object"] not in first_ref, f"{path}: recorded as a distinct object"
            first_ref[row["object"]] = ref
            got = {
                "dtype": ref.dtype.name, "shape": list(ref.shape), "stride": list(ref.stride),
                "storage_offset": ref.offset, "device": ref.device, "numel": ref.numel,
                "nbytes": ref.nbytes, "itemsize": ref.dtype.itemsize,
                "requires_grad": ref.requires_grad, "is_parameter": ref.is_parameter,
                "contiguous": ref.is_contiguous,
            }
            want = {
                "dtype": row["dtype"], "shape": row["shape"], "stride": row["stride"],
                "storage_offset": row["storage_offset"], "device": _stored_device(row), "numel": row["numel"],
                "nbytes": row["nbytes"], "itemsize": row["itemsize"],
                "requires_grad": row["requires_grad"], "is_parameter": row["is_parameter"],
                "contiguous": row["contiguous"],
            }
            assert got == want, path
            if row["device"] == "meta" and row["storage"]["key"] is None:
                assert ref.storage is None, path
                continue
            st = ref.storage
            assert type(st) is StorageRef, path
            assert st.key == row["storage"]["key"], path
            assert st.location == row["storage"]["location"], path
            assert st.nbytes == row["storage"]["nbytes"], path
            assert st.numel == row["storage"]["numel"], path
            assert ck.storages[st.key] is st, path
            group = row["storage"]["group"]
            if row["storage"]["nbytes"]:
                # torch's storage groups are exactly ckpt's storage keys (empty ones aside)
                assert key_of_group.setdefault(group, st.key) == st.key, path
        groups_with_data = {
            r["storage"]["group"] for r in rows if r["first"] and r["storage"]["nbytes"] and r["storage"]["key"]
        }
        assert len(set(key_of_group.values())) == len(groups_with_data)


def test_open_reads_lazily_and_values_match(oracle_name, helpers):
    """TensorRef.numpy() reads a tensor's values on request; they are torch's, bitwise."""
    if oracle_name in UNREADABLE:
        pytest.skip("unreadable on purpose")
    exp = helpers.expected(oracle_name)
    rows = {r["path"]: r for r in _rows(exp, oracle_name) if r["first"]}
    original = exp.get("original", {})
    with _open(oracle_name, helpers) as ck:
        for path, ref in ck.tensors():
            row = rows.get(path)
            if row is None or row["data"] is None:
                continue
            want = original.get(path, row)["data"]
            assert helpers.array_bytes(ref.numpy(unsupported_dtype="raw")).hex() == want, path
            assert len(ref.storage.read()) == ref.storage.nbytes


def test_open_facts(oracle_name, helpers):
    if oracle_name in UNREADABLE:
        pytest.skip("unreadable on purpose")
    exp = helpers.expected(oracle_name)
    facts = exp["facts"]
    with _open(oracle_name, helpers) as ck:
        got = ck.facts
    assert ck.format == "torch-zip"
    assert got["archive_name"] == facts["archive_name"]
    assert got["byteorder"] == (facts["byteorder"] or "little")
    assert got["records"] == len(facts["records"])
    assert got["crc32"] == facts["crc32"]
    if "version" in facts["records"]:
        assert got["version"] == 3


# -- ckpt.inspect ----------------------------------------------------------------------------------


def _unique_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r["first"]]


def expected_totals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    unique = _unique_rows(rows)
    by_dtype: dict[str, dict[str, int]] = {}
    for r in unique:
        d = by_dtype.setdefault(r["dtype"], {"tensors": 0, "numel": 0, "nbytes": 0})
        d["tensors"] += 1
        d["numel"] += r["numel"]
        d["nbytes"] += r["nbytes"]
    keys = {r["storage"]["key"]: r["storage"]["nbytes"] for r in unique if r["storage"]["key"] is not None}
    return {
        "tensors": len(unique),
        "numel": sum(r["numel"] for r in unique),
        "nbytes": sum(r["nbytes"] for r in unique),
        "storages": len(keys),
        "storage_bytes": sum(keys.values()),
        "by_dtype": by_dtype,
        "by_device": dict(Counter(_stored_device(r) for r in unique)),
    }


def test_inspect_json_matches_recorded_torch(oracle_name, helpers):
    """``ckpt.inspect(path).as_json()``: schema, format facts, every tensor at its dotted path
    (list items by index), totals per dtype and device; valid strict JSON."""
    path = helpers.fixture_path(oracle_name)
    if oracle_name in UNREADABLE:
        err, text = UNREADABLE[oracle_name]
        with pytest.raises(err, match=text):
            ckpt.inspect(path)
        return
    exp = helpers.expected(oracle_name)
    summary = ckpt.inspect(path)
    doc = summary.as_json()
    assert summary.json_text() == json.dumps(doc, separators=(",", ":"), allow_nan=False)  # the CLI's text
    doc = json.loads(json.dumps(doc, allow_nan=False))  # strict JSON: no NaN/Infinity, plain types
    assert doc["schema"] == "ckpt.inspect/1"
    assert doc["path"] == os.fspath(path)
    assert doc["file_size"] == exp["facts"]["file_size"] == path.stat().st_size
    assert doc["format"]["format"] == "torch-zip"
    assert doc["format"]["archive_name"] == exp["facts"]["archive_name"]
    assert doc["filter"] is None
    rows = _rows(exp, oracle_name)
    assert [t["path"] for t in doc["tensors"]] == [r["path"] for r in rows]
    first: dict[int, dict[str, Any]] = {}
    for t, r in zip(doc["tensors"], rows):
        assert t["keys"] == r["keys"]
        assert ".".join(str(k) for k in t["keys"]) == t["path"]
        if r["first"]:
            first[r["object"]] = r
            assert "same_as" not in t, t["path"]
        else:
            assert t["same_as"] == first[r["object"]]["path"], t["path"]
            r = {**first[r["object"]], "path": r["path"]}
        assert (t["dtype"], t["shape"], t["stride"], t["offset"], t["device"]) == (
            r["dtype"], r["shape"], r["stride"], r["storage_offset"], _stored_device(r)), t["path"]
        assert (t["numel"], t["nbytes"], t["requires_grad"], t["parameter"], t["storage"]) == (
            r["numel"], r["nbytes"], r["requires_grad"], r["is_parameter"], r["storage"]["key"]), t["path"]
    assert doc["totals"] == expected_totals(rows)
    for row in doc["storages"]:
        members = [r for r in _unique_rows(rows) if r["storage"]["key"] == row["key"]]
        assert members, row
        assert row["nbytes"] == members[0]["storage"]["nbytes"]
        assert row["device"] == members[0]["storage"]["location"]
        assert row["tensors"] == [r["path"] for r in members]
    for inert_path, global_name in INERT_TENSORS.get(oracle_name, {}).items():
        assert {"path": inert_path, "type": global_name}.items() <= next(
            v for v in doc["values"] if v["path"] == inert_path).items()


def test_json_text_is_the_json_of_as_json(tmp_path):
    """``Summary.json_text`` (what ``ckpt inspect --json`` prints) formats plain tensor rows itself:
    keys that need escaping, non-ASCII keys, int keys, shared tensors, 0-d and empty tensors and
    views all give exactly ``json.dumps(as_json())``."""
    import numpy as np

    w = np.arange(12, dtype=np.float32).reshape(3, 4)
    obj = {
        'quote"and\\back': w, "caf\u00e9.\u6f22\u5b57": np.zeros(0, np.int8), "line\nbreak": np.array([2.5]),
        "list": [np.ones(2, np.bool_), {7: np.arange(3, dtype=np.int64)}], "again": w, "epoch": 3,
        "scalar": np.array(1.5, np.float16),
    }
    ckpt.save(obj, tmp_path / "m.pt", fsync=False)
    summary = ckpt.inspect(tmp_path / "m.pt")
    text = summary.json_text()
    assert text == json.dumps(summary.as_json(), separators=(",", ":"), allow_nan=False)
    for per_piece in (1, 2, 5):  # written piece by piece (ckpt inspect --json), pieces of any size
        assert "".join(summary._json_pieces(rows_per_piece=per_piece)) == text
    out = io.StringIO()
    summary.write_json(out)
    assert out.getvalue() == text
    rows = {t["path"]: t for t in json.loads(text)["tensors"]}
    assert rows["again"]["same_as"] == 'quote"and\\back' and rows["list.1.7"]["keys"] == ["list", 1, 7]
    assert rows["caf\u00e9.\u6f22\u5b57"]["shape"] == [0] and rows["scalar"]["shape"] == []


def test_inspect_findings(oracle_name, helpers):
    """Globals outside the allowlist are findings naming module.name; --allow removes them."""
    if oracle_name in UNREADABLE:
        pytest.skip("unreadable on purpose")
    path = helpers.fixture_path(oracle_name)
    summary = ckpt.inspect(path)
    names = [f.name for f in summary.findings]
    if oracle_name in STRICT_REFUSES:
        assert names == [STRICT_REFUSES[oracle_name]]
        finding = summary.as_json()["findings"][0]
        assert finding["global"] == STRICT_REFUSES[oracle_name]
        assert finding["verdict"] == "unknown"
        assert finding["record"].endswith("/data.pkl")
        assert ckpt.inspect(path, allow=[STRICT_REFUSES[oracle_name]]).findings == []
    else:
        assert names == []


def _expected_optimizer(node: dict[str, Any]) -> dict[str, Any]:
    """Parameters, parameters with state and state keys of an encoded optimizer state_dict."""
    items = dict((k, v) for k, v in node["items"])
    groups = items["param_groups"]["items"]
    params = sum(len(dict((k, v) for k, v in g["items"])["params"]["items"]) for g in groups)
    state = items["state"]["items"]
    keys = sorted({k for _, entry in state for k, _ in entry["items"]})
    return {"parameters": params, "parameters_with_state": len(state), "state_keys": keys}


def _child(node: dict[str, Any], key: str) -> dict[str, Any]:
    return next(v for k, v in node["items"] if k == key)


STRUCTURES = {
    "state_dict": ("state_dict", {"": "state_dict"}, None),
    "optimizer_adam": ("optimizer", {"": "optimizer"}, {"": "Adam"}),
    "optimizer_sgd": ("optimizer", {"": "optimizer"}, {"": "SGD"}),
    "training": ("training_checkpoint", {"": "training_checkpoint", "model": "state_dict", "optimizer": "optimizer"},
                 {"optimizer": "AdamW"}),
    "sample": ("training_checkpoint", {"": "training_checkpoint", "model": "state_dict", "optimizer": "optimizer"},
               {"optimizer": "AdamW"}),
}


@pytest.mark.parametrize("name", sorted(STRUCTURES))
def test_inspect_recognises_what_people_store(name, helpers):
    exp = helpers.expected(name)
    kind, rows, optimizers = STRUCTURES[name]
    doc = ckpt.inspect(helpers.fixture_path(name)).as_json()
    assert doc["kind"] == kind
    found = {r["path"]: r for r in doc["structure"]}
    assert {p: r["kind"] for p, r in found.items()} == rows
    root = exp["root"]
    for p, row in found.items():
        node = root if p == "" else _child(root, p)
        if row["kind"] == "state_dict":
            tensors = [r for r in exp["tensors"] if r["keys"][: len(p.split(".")) if p else 0] == ([p] if p else [])]
            assert row["tensors"] == len(node["items"]) == len(tensors)
            assert row["numel"] == sum(r["numel"] for r in tensors)
            assert row["module_metadata"] is ("_metadata" in node.get("attrs", {}))
        elif row["kind"] == "optimizer":
            assert row["optimizer"] == optimizers[p]
            want = _expected_optimizer(node)
            assert {k: row[k] for k in want} == want
            group = dict((k, v) for k, v in node["items"])["param_groups"]["items"][0]
            hyper = dict((k, v) for k, v in group["items"])
            assert row["param_groups"][0]["params"] == [i for i in hyper["params"]["items"]]
            lr = float.fromhex(hyper["lr"]["hex"])
            assert row["param_groups"][0]["hyper_parameters"]["lr"] == lr
            per_param = {s["index"]: s["state"] for s in row["state"]}
            for index, entry in dict((k, v) for k, v in node["items"])["state"]["items"]:
                for key, value in entry["items"]:
                    if value.get("t") == "tensor":
                        tensor_row = exp["tensors"][value["index"]]
                        assert per_param[index][key] == {"dtype": tensor_row["dtype"], "shape": tensor_row["shape"]}
        elif row["kind"] == "training_checkpoint":
            assert row["model"] == ["model"] and row["optimizer"] == ["optimizer"]
            for k in ("epoch", "step", "global_step"):
                value = next((v for kk, v in node["items"] if kk == k), None)
                if value is not None:
                    assert row[k] == value


def test_inspect_filter(helpers):
    path = helpers.fixture_path("training")
    exp = helpers.expected("training")
    doc = ckpt.inspect(path, filter="model.layers.*").as_json()
    want = [r for r in exp["tensors"] if r["path"].startswith("model.layers.")]
    assert want and [t["path"] for t in doc["tensors"]] == [r["path"] for r in want]
    assert doc["filter"] == "model.layers.*"
    assert doc["totals"] == expected_totals(want)
    assert all(v["path"].startswith("model.layers.") for v in doc["values"])
    list_items = ckpt.inspect(path, filter="optimizer.param_groups.0.params").as_json()
    assert list_items["tensors"] == [] and [v["path"] for v in list_items["values"]] == ["optimizer.param_groups.0.params"]


def test_inspect_lists_list_items_by_index(helpers):
    doc = ckpt.inspect(helpers.fixture_path("views")).as_json()
    paths = [t["path"] for t in doc["tensors"]]
    assert "twice.0" in paths and "twice.1" in paths and "tuple_with_repeat.2" in paths
    twice1 = next(t for t in doc["tensors"] if t["path"] == "twice.1")
    assert twice1["keys"] == ["twice", 1] and twice1["same_as"] == "twice.0"


# -- inspect reads no tensor bytes ---------------------------------------------------------------


def storage_data_spans(path: Path) -> list[tuple[int, int, str]]:
    """``(start, stop, name)`` of the data bytes of every non-empty ``data/<key>`` record, from the
    local headers (parsed here, independently of ckpt)."""
    spans = []
    raw = path.read_bytes()
    with zipfile.ZipFile(path) as z:
        for info in z.infolist():
            name = info.filename.split("/", 1)[1]
            if not name.startswith("data/") or info.compress_size == 0:
                continue
            sig, *_rest = struct.unpack_from("<4s5H3L2H", raw, info.header_offset)
            assert sig == b"PK\x03\x04"
            nlen, xlen = struct.unpack_from("<2H", raw, info.header_offset + 26)
            start = info.header_offset + 30 + nlen + xlen
            spans.append((start, start + info.compress_size, info.filename))
    return spans


def _fail_if_called(what: str) -> Any:
    def boom(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"inspect called {what}: it must not read tensor bytes")

    return boom


def test_inspect_reads_no_tensor_bytes(oracle_name, helpers, monkeypatch):
    """Inspect reads the zip directory and data.pkl only: no storage accessor is called, and no
    byte range read from the file touches a storage record's data."""
    if oracle_name in UNREADABLE:
        pytest.skip("unreadable on purpose")
    path = helpers.fixture_path(oracle_name)
    monkeypatch.setattr(StorageRef, "read", _fail_if_called("StorageRef.read"))
    monkeypatch.setattr(StorageRef, "readinto", _fail_if_called("StorageRef.readinto"))
    from ckpt.torch_zip import TorchZipReader

    monkeypatch.setattr(TorchZipReader, "readinto", _fail_if_called("TorchZipReader.readinto"))
    recorder = ReadRecorder(monkeypatch, path)
    summary = ckpt.inspect(path)
    assert summary.totals["tensors"] == len(_unique_rows(_rows(helpers.expected(oracle_name), oracle_name)))
    assert recorder.of(path), "no os.pread/preadv of the file was seen: update ReadRecorder to ckpt's I/O"
    size = path.stat().st_size
    # Two bounded probes may see anything: the format sniff reads the first 512 bytes, and the
    # search for the end-of-central-directory record may read the last 64 KiB + 22 bytes at once
    # (the zip comment can be that long); on these small files that is the whole file. The I/O
    # test below bounds them on a large file.
    eocd_window = size - min(size, 22 + 0xFFFF)
    reads = [(a, b) for a, b in recorder.of(path) if not (a >= eocd_window and b == size) and not (a == 0 and b <= 512)]
    for start, stop, name in storage_data_spans(path):
        for a, b in reads:
            assert b <= start or a >= stop, f"read [{a}, {b}) overlaps the data of {name} [{start}, {stop})"


def test_inspect_io_is_independent_of_tensor_size(tmp_path, helpers):
    """Process-level accounting (/proc/self/io rchar): inspecting a 32 MiB checkpoint reads
    a few KiB, whatever layer of ckpt does the reading."""
    torch = helpers.require_torch()
    io_file = Path("/proc/self/io")
    if not io_file.exists():
        pytest.skip("needs Linux /proc/self/io")

    def rchar() -> int:
        for line in io_file.read_text().splitlines():
            if line.startswith("rchar:"):
                return int(line.split()[1])
        raise AssertionError("no rchar")

    path = tmp_path / "big.pt"
    torch.save({"a": torch.zeros(4 << 20, dtype=torch.float32), "b": torch.ones(4 << 20, dtype=torch.int8)}, path)
    ckpt.inspect(helpers.fixture_path("training"))  # warm up lazy imports
    before = rchar()
    summary = ckpt.inspect(path)
    read = rchar() - before
    assert summary.totals["nbytes"] == (16 << 20) + (4 << 20)
    assert read < 256 << 10, f"inspect read {read:,} bytes of a {path.stat().st_size:,}-byte file"


def test_inspect_scans_big_files_in_a_forked_process_with_the_same_result(tmp_path, monkeypatch):
    """Files of 1 MB and more are scanned in a child process while the pickle is read here: the
    summary is the one the in-process scan gives, whatever the child does."""
    import threading

    import ckpt.scanner as scanner
    import ckpt.summary as summary_mod

    from scan_kit import os_system, torch_zip

    marker = tmp_path / "ran"
    path = torch_zip(tmp_path / "hostile.pt", os_system(marker), records={"data/0": bytes(2 << 20)})
    monkeypatch.setattr(summary_mod, "_BACKGROUND_SCAN_BYTES", 1 << 62)
    here = ckpt.inspect(path).json_text()
    monkeypatch.setattr(summary_mod, "_BACKGROUND_SCAN_BYTES", 0)
    forked = []
    real = scanner.BackgroundScan.__init__

    def spy(self, *a, **k):
        real(self, *a, **k)
        forked.append(self._pid)

    monkeypatch.setattr(scanner.BackgroundScan, "__init__", spy)
    assert ckpt.inspect(path).json_text() == here
    assert forked and forked[-1] > 0  # the scan did run in a child
    doc = json.loads(here)
    assert [(f["global"], f["verdict"]) for f in doc["findings"]] == [("posix.system", "dangerous")]
    # a child that fails: the parent scans itself, same result
    parent = os.getpid()
    real_scan = scanner.scan_file

    def dies_in_child(*a, **k):
        if os.getpid() != parent:
            raise RuntimeError("child failure")
        return real_scan(*a, **k)

    monkeypatch.setattr(scanner, "scan_file", dies_in_child)
    assert ckpt.inspect(path).json_text() == here
    # other threads running: no fork at all
    stop = threading.Event()
    t = threading.Thread(target=stop.wait)
    t.start()
    try:
        assert ckpt.inspect(path).json_text() == here
        assert forked[-1] == 0
    finally:
        stop.set()
        t.join()
    assert not marker.exists()


def test_inspect_of_a_bad_big_file_leaves_no_child(tmp_path, monkeypatch):
    """The pickle cannot be read: the error is raised and the scanning child is stopped and reaped."""
    import ckpt.summary as summary_mod

    monkeypatch.setattr(summary_mod, "_BACKGROUND_SCAN_BYTES", 0)
    from scan_kit import torch_zip

    path = torch_zip(tmp_path / "bad.pt", b"\x80\x02}q\x00(X\x01\x00\x00\x00a")  # a pickle cut short
    with pytest.raises(ckpt.CheckpointError):
        ckpt.inspect(path)
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)
