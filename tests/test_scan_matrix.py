"""Every technique in every container: the hostile-file corpus as a matrix.

``test_scan_attacks.py`` tests each technique (user-needs-and-attacks.md §2 A) and each container
trick (§2 B) on its own, mostly in the simplest container. Here every pickle-stream technique is put
in every container ckpt reads (bare pickle, torch zip data.pkl, a hidden and compressed torch zip
record, legacy stacked pickles, the legacy tar layout, a TorchScript archive, numpy .npy/.npz object
arrays, a gzip copy, a bytes literal nested in a benign pickle, a pickle/zip polyglot): each of the
resulting files must be flagged with the technique's dangerous global (or rule), must not be
reported clean, and nothing may run (the marker file never appears; unsafe loaders are trapped).
"""

from __future__ import annotations

import base64
import gzip
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any, Callable

import pytest

from ckpt.scanner import finding_rule, scan_file

import scan_kit as K


@pytest.fixture(autouse=True)
def traps(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any unsafe loader the scanner might reach for fails the test."""
    import _pickle

    def sprung(*a: Any, **k: Any) -> Any:
        raise AssertionError("an unsafe loader was called")

    for mod in (pickle, _pickle):
        for n in ("load", "loads", "Unpickler"):
            monkeypatch.setattr(mod, n, sprung)


# -- techniques: each a whole pickle (ends with STOP), what the scanner must name ------------------------
# A technique is (payload builder, dangerous global names that must be found, rules that must be found).


def _memo_confusion(m: Path) -> bytes:  # A1
    return (K.proto(4) + K.u("torch._utils") + K.MEMOIZE + K.u("pad") + b"r" + struct.pack("<I", 7) + K.POP
            + K.u("posix") + K.MEMOIZE + K.u("system") + K.MEMOIZE + K.POP + K.POP + K.POP
            + K.binget(2) + K.binget(3) + K.STACK_GLOBAL + K.u(K.touch(m)) + K.TUPLE1 + K.REDUCE + K.STOP)


def _decoys(m: Path) -> bytes:  # A2
    return (K.proto(4) + K.u("os") + K.binput(1) + K.POP + K.u("system") + K.binput(2) + K.POP
            + K.u("torch") + K.u("load") + K.POP + K.POP
            + K.binget(1) + b"K\x05" + K.POP + K.binget(2) + K.u("decoy") + K.POP
            + K.STACK_GLOBAL + K.u(K.touch(m)) + K.TUPLE1 + K.REDUCE + K.STOP)


def _py2_strings(m: Path) -> bytes:  # A3 (protocol 2 header so that containers with a version check accept it)
    return K.proto(2) + K.sstr("os") + K.binstring(b"system") + K.STACK_GLOBAL + K.sstr(K.touch(m)) + K.TUPLE1 + K.REDUCE + K.STOP


def _computed_operand(m: Path) -> bytes:  # A4: the module name is the result of a call
    return K.proto(4) + K.call(K.glob("builtins", "str"), K.u("os")) + K.u("system") + K.STACK_GLOBAL + K.POP + K.NONE + K.STOP


def _dotted(m: Path) -> bytes:  # A6
    return K.proto(4) + K.u("pathlib") + K.u("os.system") + K.STACK_GLOBAL + K.u(K.touch(m)) + K.TUPLE1 + K.REDUCE + K.STOP


def _build_on_global(m: Path) -> bytes:  # A7
    return (K.proto(4) + K.glob("numpy", "prod") + K.NONE + K.EMPTY_DICT + K.u("a") + K.u("os") + K.SETITEM + K.TUPLE2
            + K.BUILD + K.POP + K.u("numpy") + K.u("prod.a") + K.STACK_GLOBAL + K.STOP)


def _introspection(m: Path) -> bytes:  # A8
    return K.proto(4) + K.u("builtins") + K.u("object.__subclasses__") + K.STACK_GLOBAL + K.STOP


def _inst(m: Path) -> bytes:  # A9: protocol 0 INST
    return K.MARK + K.sstr(K.touch(m)) + K.inst("os", "system") + K.STOP


def _obj_discarded(m: Path) -> bytes:  # A9: OBJ whose result is popped
    return K.MARK + K.glob("os", "system") + K.sstr(K.touch(m)) + K.OBJ + K.POP + K.NONE + K.STOP


def _newobj_ex(m: Path) -> bytes:  # A9
    return K.proto(4) + K.glob("subprocess", "Popen") + K.EMPTY_TUPLE + K.EMPTY_DICT + K.NEWOBJ_EX + K.STOP


def _nested(m: Path) -> bytes:  # A10
    return K.proto(3) + K.call(K.glob("pickle", "loads"), K.binbytes(K.os_system(m))) + K.STOP


def _encoded(m: Path) -> bytes:  # A11
    return K.proto(3) + K.call(K.glob("pickle", "loads"), K.call(K.glob("base64", "b64decode"),
                                                              K.binbytes(base64.b64encode(K.os_system(m))))) + K.STOP


def _stacked(m: Path) -> bytes:  # A12: a benign pickle, then the payload
    return K.benign_pickle() + K.os_system(m)


def _payload_then_garbage(m: Path) -> bytes:  # A12: the payload runs before the unpickler meets the garbage
    return K.os_system(m)[:-1] + b"\xff\xfe garbage"


def _gadgets(m: Path) -> bytes:  # A13
    return K.payload_then([("operator", "getitem"), ("weakref", "finalize")], m)


def _ext_code(m: Path) -> bytes:  # EXT1
    return K.proto(2) + b"\x82\x01" + K.MARK + K.u(K.touch(m)) + K.TUPLE + K.REDUCE + K.STOP


TECHNIQUES: dict[str, tuple[Callable[[Path], bytes], set[str], set[str]]] = {
    "plain-reduce": (K.os_system, {"posix.system"}, set()),
    "a1-memo-confusion": (_memo_confusion, {"posix.system"}, set()),
    "a2-decoys": (_decoys, {"os.system"}, set()),
    "a3-py2-strings": (_py2_strings, {"os.system"}, set()),
    "a4-computed-operand": (_computed_operand, set(), {"pickle.unresolved-global"}),
    "a6-dotted": (_dotted, {"pathlib.os.system"}, set()),
    "a7-build-on-global": (_build_on_global, set(), {"pickle.mutates-global"}),
    "a8-introspection": (_introspection, {"builtins.object.__subclasses__"}, set()),
    "a9-inst": (_inst, {"os.system"}, set()),
    "a9-obj-discarded": (_obj_discarded, {"os.system"}, set()),
    "a9-newobj-ex": (_newobj_ex, {"subprocess.Popen"}, set()),
    "a10-nested": (_nested, {"pickle.loads", "posix.system"}, {"pickle.nested"}),
    "a11-encoded": (_encoded, {"pickle.loads", "posix.system"}, set()),
    "a12-stacked": (_stacked, {"posix.system"}, set()),
    "a12-payload-then-garbage": (_payload_then_garbage, {"posix.system"}, set()),
    "a13-gadgets": (_gadgets, {"operator.getitem", "weakref.finalize"}, set()),
    "ext-code": (_ext_code, {"copyreg.extension.1"}, set()),
}


# -- containers: put a payload pickle somewhere a loader would unpickle it ------------------------------


def _bare(tmp: Path, payload: bytes) -> Path:
    p = tmp / "model.bin"
    p.write_bytes(payload)
    return p


def _zip_data_pkl(tmp: Path, payload: bytes) -> Path:
    return K.torch_zip(tmp / "model.pt", payload)


def _zip_hidden_deflated(tmp: Path, payload: bytes) -> Path:
    sd, records = K.state_dict_pickle()
    return K.torch_zip(tmp / "model.pt", sd, records=records, extra=[("archive/data/9", payload)],
                       compression=zipfile.ZIP_DEFLATED)


def _legacy(tmp: Path, payload: bytes) -> Path:
    return K.legacy_file(tmp / "model.pt", payload)


def _legacy_tar(tmp: Path, payload: bytes) -> Path:
    return K.tar_file(tmp / "model.tar", {"sys_info": K.benign_pickle(), "pickle": payload,
                                          "storages": pickle.dumps(0, protocol=2) + pickle.dumps([], protocol=2), "tensors": pickle.dumps(0, protocol=2)})


def _torchscript(tmp: Path, payload: bytes) -> Path:
    data = K.proto(2) + K.glob("__torch__", "M") + K.EMPTY_TUPLE + K.NEWOBJ + K.STOP
    return K.torch_zip(tmp / "scripted.pt", data, extra=[("archive/constants.pkl", payload),
                                                         ("archive/code/__torch__.py", b"def forward(self): pass\n")])


def _torchscript_data_pkl(tmp: Path, payload: bytes) -> Path:
    return K.torch_zip(tmp / "scripted.pt", payload, extra=[("archive/constants.pkl", K.proto(2) + K.EMPTY_TUPLE + K.STOP),
                                                            ("archive/code/__torch__.py", b"def forward(self): pass\n")])


def _npy(tmp: Path, payload: bytes) -> Path:
    p = tmp / "arr.npy"
    p.write_bytes(K.object_npy(payload))
    return p


def _npz(tmp: Path, payload: bytes) -> Path:
    p = tmp / "arrs.npz"
    with zipfile.ZipFile(p, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("ok.npy", K.npy_bytes({"descr": "<f4", "fortran_order": False, "shape": (2,)}, bytes(8)))
        z.writestr("bad.npy", K.object_npy(payload))
    return p


def _gzip(tmp: Path, payload: bytes) -> Path:
    p = tmp / "model.pkl.gz"
    p.write_bytes(gzip.compress(payload))
    return p


def _nested_literal(tmp: Path, payload: bytes) -> Path:
    p = tmp / "hparams.pkl"
    p.write_bytes(pickle.dumps({"epoch": 1, "blob": payload}, protocol=4))
    return p


def _polyglot(tmp: Path, payload: bytes) -> Path:
    sd, records = K.state_dict_pickle()
    benign = K.torch_zip(tmp / "benign.pt", sd, records=records).read_bytes()
    p = tmp / "poly.pt"
    p.write_bytes(payload + benign)
    return p


CONTAINERS: dict[str, Callable[[Path, bytes], Path]] = {
    "bare": _bare, "zip-data.pkl": _zip_data_pkl, "zip-hidden-deflated": _zip_hidden_deflated, "legacy": _legacy,
    "legacy-tar": _legacy_tar, "torchscript": _torchscript,
    "torchscript-data.pkl": _torchscript_data_pkl, "npy": _npy, "npz": _npz, "gzip": _gzip,
    "nested-literal": _nested_literal, "pickle-zip-polyglot": _polyglot,
}


@pytest.mark.parametrize("container", sorted(CONTAINERS))
@pytest.mark.parametrize("technique", sorted(TECHNIQUES))
def test_every_technique_in_every_container(tmp_path: Path, technique: str, container: str) -> None:
    marker = tmp_path / "PWNED"
    build, want_names, want_rules = TECHNIQUES[technique]
    work = tmp_path / "w"
    work.mkdir()
    path = CONTAINERS[container](work, build(marker))
    report = scan_file(path)
    assert not marker.exists(), "the payload ran"
    dangerous = {f.name for f in report.findings if f.kind == "global" and f.verdict == "dangerous"}
    rules = {finding_rule(f) for f in report.findings}
    assert want_names <= dangerous, (report.format, sorted(dangerous), report.errors)
    assert want_rules <= rules, (report.format, sorted(rules))
    assert report.status != "clean" and report.verdict == "dangerous"
    # the fast path (runs of simple opcodes, torch's tensor records) finds exactly what the slow walk finds
    slow = scan_file(path, fast=False)
    assert {**slow.as_json(), "seconds": 0} == {**report.as_json(), "seconds": 0}


def test_the_matrix_covers_every_container_format(tmp_path: Path) -> None:
    """The containers above are read as the formats they stand for (a benign pickle inside)."""
    formats = {}
    for name, make in CONTAINERS.items():
        work = tmp_path / name
        work.mkdir()
        report = scan_file(make(work, K.benign_pickle()))
        formats[name] = report.format
        # the plain containers are clean; the others carry a finding of their own (a pickle where none
        # belongs, a polyglot, TorchScript code, an object array, a nested pickle), never dangerous
        assert report.status == ("clean" if name in ("bare", "zip-data.pkl", "legacy", "legacy-tar", "gzip")
                                 else "unknown"), (name, report.findings)
        if name == "pickle-zip-polyglot":
            assert "pickle" in report.formats
    assert formats == {
        "bare": "pickle", "zip-data.pkl": "torch-zip", "zip-hidden-deflated": "torch-zip", "legacy": "torch-legacy",
        "legacy-tar": "torch-tar", "torchscript": "torchscript", "torchscript-data.pkl": "torchscript", "npy": "npy", "npz": "npz", "gzip": "gzip",
        "nested-literal": "pickle", "pickle-zip-polyglot": "torch-zip",
    }


def test_a_chain_of_pickles_after_stop_is_followed(tmp_path: Path) -> None:
    """data.pkl, then a benign pickle, then the payload: every pickle after the STOP is walked, not
    only the first one (a loader reading on would run the payload)."""
    marker = tmp_path / "PWNED"
    sd, records = K.state_dict_pickle()
    path = K.torch_zip(tmp_path / "chain.pt", sd + K.benign_pickle() + K.os_system(marker), records=records)
    report = scan_file(path)
    assert not marker.exists()
    assert {f.name for f in report.findings if f.verdict == "dangerous"} == {"posix.system"}
    assert [p.role for p in report.pickles].count("embedded") == 2


# -- fail closed: a resource limit reached is an error, never clean ----------------------------------


def _limited(max_pickle_bytes: int = 2000, **kw: Any) -> Any:
    import ckpt

    return ckpt.Limits(max_pickle_bytes=max_pickle_bytes, **kw)


BIG_BENIGN = pickle.dumps({"names": [f"n{i}" for i in range(2000)]}, protocol=2)  # ~12 KB, no globals


@pytest.mark.parametrize("container", ["bare", "zip-data.pkl", "zip-hidden-deflated", "legacy", "legacy-tar", "npy",
                                       "npz", "gzip"])
def test_a_pickle_over_the_limit_is_an_error(tmp_path: Path, container: str) -> None:
    """Each container with a pickle larger than Limits.max_pickle_bytes: the file is an error (exit
    2), whatever the pickle holds; with the default limits the same file is clean or a finding."""
    path = CONTAINERS[container](tmp_path, BIG_BENIGN)
    limited = scan_file(path, limits=_limited())
    assert limited.status == "error" and not limited.complete, (container, limited.errors, limited.findings)
    assert scan_file(path).status != "error"


def test_nested_pickles_over_the_limit_are_an_error(tmp_path: Path) -> None:
    """A compressed literal that expands to a pickle larger than the limit (the outer pickle is small)."""
    import zlib

    inner = pickle.dumps([0] * 20_000, protocol=2)  # ~40 KB, compresses to a few hundred bytes
    outer = pickle.dumps({"blob": zlib.compress(inner)}, protocol=4)
    p = tmp_path / "blobs.pkl"
    p.write_bytes(outer)
    r = scan_file(p, limits=_limited(max_pickle_bytes=10_000))
    assert r.status == "error" and "Limits.max_pickle_bytes" in r.errors[0]["message"], r.errors
    assert scan_file(p).status == "unknown"  # pickle.nested only


def test_bytes_outside_records_over_the_limit_are_an_error(tmp_path: Path) -> None:
    """A pickle appended after a zip's records, larger than the limit, is not skipped silently."""
    sd, records = K.state_dict_pickle()
    data = K.torch_zip(tmp_path / "m.pt", sd, records=records).read_bytes()
    first_cd = data.find(b"PK\x01\x02")
    eocd = data.rfind(b"PK\x05\x06")
    (cd_offset,) = struct.unpack_from("<I", data, eocd + 16)
    new = data[:first_cd] + BIG_BENIGN + data[first_cd:]
    eocd += len(BIG_BENIGN)
    new = new[: eocd + 16] + struct.pack("<I", cd_offset + len(BIG_BENIGN)) + new[eocd + 20 :]
    p = tmp_path / "gap.pt"
    p.write_bytes(new)
    r = scan_file(p, limits=_limited(max_pickle_bytes=len(sd) + 100))
    assert r.status == "error", (r.errors, r.findings)
    assert scan_file(p).status == "unknown"  # zip.outside-data, its pickle scanned


def test_a_zip_directory_over_the_limit_is_an_error(tmp_path: Path) -> None:
    sd, records = K.state_dict_pickle(50)
    path = K.torch_zip(tmp_path / "m.pt", sd, records=records)
    r = scan_file(path, limits=_limited(max_pickle_bytes=1 << 20, max_central_directory_bytes=512))
    assert r.status == "error"
    assert scan_file(path).status == "clean"


# -- files that are not files ----------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(__import__("os"), "mkfifo"), reason="needs FIFOs")
def test_a_fifo_is_an_error_not_a_hang(tmp_path: Path) -> None:
    """A FIFO (given, or inside a folder) would block a reader forever: it is an error, never read."""
    import os

    import ckpt

    folder = tmp_path / "models"
    folder.mkdir()
    os.mkfifo(folder / "model.pt")
    (folder / "ok.pkl").write_bytes(K.benign_pickle())
    (folder / "gone.pt").symlink_to(tmp_path / "nowhere")  # dangling: nothing to load, left out
    r = scan_file(folder / "model.pt")
    assert r.status == "error" and "not a regular file" in r.errors[0]["message"]
    report = ckpt.scan(folder, jobs=1)
    assert [(Path(f.path).name, f.status) for f in report.files] == [("model.pt", "error"), ("ok.pkl", "clean")]
    assert report.exit_code() == 2
    with pytest.raises(ckpt.CheckpointError, match="not a regular file"):  # inspect and load refuse it too
        ckpt.inspect(folder / "model.pt")


def test_a_scanner_bug_is_an_error_not_a_crash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail closed even against ckpt's own bugs: an unexpected exception while scanning one file
    makes that file an error; the other files are still scanned."""
    import ckpt
    import ckpt.scanner as scanner

    real = scanner.walk

    def broken(data: Any, *a: Any, **k: Any) -> Any:
        if bytes(data[:2]) == b"\x80\x04":
            raise IndexError("a bug")
        return real(data, *a, **k)

    monkeypatch.setattr(scanner, "walk", broken)
    (tmp_path / "a.pkl").write_bytes(K.benign_pickle(protocol=4))
    (tmp_path / "b.pkl").write_bytes(K.benign_pickle(protocol=2))
    report = ckpt.scan(tmp_path, jobs=1)
    assert [(Path(f.path).name, f.status) for f in report.files] == [("a.pkl", "error"), ("b.pkl", "clean")]
    assert "internal error while scanning (IndexError: a bug)" in report.files[0].errors[0]["message"]
    assert report.exit_code() == 2
