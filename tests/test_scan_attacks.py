"""The scanner against a corpus of hostile files made here, one per technique (user-needs-and-attacks.md §2).

Every payload is harmless (it would only create a marker file). Each test asserts that the file is
flagged, with the finding or error the technique deserves, and that the marker never appeared:
nothing was executed. Unsafe loaders are trapped for the whole module (``traps``), so a scan that
reached for one would fail too.
"""

from __future__ import annotations

import base64
import bz2
import gzip
import pickle
import pickletools
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any

import pytest

import ckpt
from ckpt.scanner import scan_file

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


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "PWNED"


def check(path: Path, marker: Path, **kw: Any) -> ckpt.FileReport:
    report = scan_file(path, **kw)
    assert not marker.exists(), "the payload ran"
    return report


def rules(report: ckpt.FileReport) -> set[str]:
    from ckpt.scanner import finding_rule

    return {finding_rule(f) for f in report.findings}


def names(report: ckpt.FileReport, verdict: str = "dangerous") -> set[str]:
    return {f.name for f in report.findings if f.kind == "global" and f.verdict == verdict}


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


# -- the payloads themselves are well-formed pickles --------------------------------------------------


def test_payloads_are_valid_pickles(marker: Path) -> None:
    """pickletools (which runs nothing) parses every payload whole: they are real pickles."""
    for data in (K.os_system(marker), K.os_system_p0(marker), K.builtins_exec(marker), K.open_file(marker)):
        ops = list(pickletools.genops(data))
        assert ops[-1][0].name == "STOP"


def test_plain_payloads_are_dangerous(tmp_path: Path, marker: Path) -> None:
    for i, data in enumerate((K.os_system(marker), K.os_system_p0(marker), K.builtins_exec(marker), K.open_file(marker))):
        r = check(write(tmp_path, f"p{i}.pkl", data), marker)
        assert r.status == "dangerous" and r.complete
        assert names(r) & {"posix.system", "os.system", "builtins.exec", "builtins.open"}


# -- A. pickle-stream evasion ---------------------------------------------------------------------


def test_a1_memo_confusion_memoize_and_put(tmp_path: Path, marker: Path) -> None:
    """MEMOIZE indexes by the memo's size, not by how many MEMOIZEs came before: mixing it with
    PUT at a high index makes a naive memo model resolve torch._utils while CPython resolves posix.system."""
    data = (
        K.proto(4) + K.u("torch._utils") + K.MEMOIZE  # memo[0]
        + K.u("pad") + b"r" + struct.pack("<I", 7) + K.POP  # memo[7]: the memo now has 2 entries
        + K.u("posix") + K.MEMOIZE  # memo[2] (a MEMOIZE counter would say 1)
        + K.u("system") + K.MEMOIZE  # memo[3]
        + K.POP + K.POP + K.POP
        + K.binget(2) + K.binget(3) + K.STACK_GLOBAL + K.u(K.touch(marker)) + K.TUPLE1 + K.REDUCE + K.STOP
    )
    r = check(write(tmp_path, "a1.pkl", data), marker)
    assert names(r) == {"posix.system"}
    assert "torch._utils" not in {g.name for g in r.globals}


def test_a2_operands_after_padding_and_decoys(tmp_path: Path, marker: Path) -> None:
    """Operands replayed from the memo after padding literals, and decoy strings pushed then popped."""
    data = (
        K.proto(4) + K.u("os") + K.binput(1) + K.POP + K.u("system") + K.binput(2) + K.POP
        + K.u("torch") + K.u("load") + K.POP + K.POP  # decoys a look-back scanner would pick
        + K.binget(1) + b"K\x05" + K.POP + K.binget(2) + K.u("decoy") + K.POP
        + K.STACK_GLOBAL + K.u(K.touch(marker)) + K.TUPLE1 + K.REDUCE + K.STOP
    )
    r = check(write(tmp_path, "a2.pkl", data), marker)
    assert names(r) == {"os.system"}
    assert not {"torch.load", "torch.decoy"} & {g.name for g in r.globals}


def test_a2_operands_across_a_mark(tmp_path: Path, marker: Path) -> None:
    """POP_MARK discards a whole frame of decoys; DUP supplies an operand."""
    data = (
        K.proto(4) + K.u("subprocess") + K.MARK + K.u("torch") + K.u("load") + K.POP_MARK
        + K.u("getoutput") + K.STACK_GLOBAL + K.u(K.touch(marker)) + K.TUPLE1 + K.REDUCE + K.POP
        + K.u("posix") + K.DUP + K.POP + K.u("system") + K.STACK_GLOBAL + K.POP + K.NONE + K.STOP
    )
    r = check(write(tmp_path, "a2b.pkl", data), marker)
    assert names(r) == {"subprocess.getoutput", "posix.system"}


def test_a3_python2_string_operands(tmp_path: Path, marker: Path) -> None:
    """STRING/BINSTRING/SHORT_BINSTRING operands (text under pickle's default encodings), the first
    operand at position 0 of the stream."""
    data = K.sstr("os") + K.binstring(b"system") + K.STACK_GLOBAL + K.sstr(K.touch(marker)) + K.TUPLE1 + K.REDUCE + K.STOP
    r = check(write(tmp_path, "a3.pkl", data), marker)
    assert names(r) == {"os.system"}
    data = b"T" + struct.pack("<i", 5) + b"posix" + K.binstring(b"system") + K.STACK_GLOBAL + K.POP + K.NONE + K.STOP
    assert names(check(write(tmp_path, "a3b.pkl", data), marker)) == {"posix.system"}


def test_a3_non_ascii_python2_string_operand(tmp_path: Path, marker: Path) -> None:
    """A non-ASCII py2 string is text whose value depends on the encoding: every reading is judged."""
    data = K.binstring("bü".encode("utf-8")) + K.binstring(b"x") + K.STACK_GLOBAL + K.POP + K.NONE + K.STOP
    r = check(write(tmp_path, "a3c.pkl", data), marker)
    assert {"bü.x", "bÃ¼.x"} <= {g.name for g in r.globals}
    assert "pickle.encoding-dependent-global" in rules(r)


@pytest.mark.parametrize("operand", [K.binbytes(b"os"), b"K\x01", K.EMPTY_TUPLE, K.EMPTY_LIST, K.NONE])
def test_a4_type_confusion_in_stack_global_operands(tmp_path: Path, marker: Path, operand: bytes) -> None:
    """Bytes/int/tuple/list operands: CPython refuses them (nothing after runs); the scanner gives a
    verdict instead of crashing: the stream cannot be parsed whole (error), and what came before it
    is still reported."""
    data = K.proto(4) + K.call(K.glob("os", "system"), K.u(K.touch(marker))) + K.POP + operand + K.u("system") + K.STACK_GLOBAL + K.STOP
    r = check(write(tmp_path, "a4.pkl", data), marker)
    assert r.status == "error" and "not strings" in r.errors[0]["message"]
    assert names(r) == {"os.system"}


def test_a4_operand_computed_at_load_time(tmp_path: Path, marker: Path) -> None:
    """A module name returned by a call (or a global's value) cannot be known statically: dangerous."""
    data = K.proto(4) + K.call(K.glob("builtins", "str"), K.u("os")) + K.u("system") + K.STACK_GLOBAL + K.POP
    data += K.glob("os", "name") + K.u("system") + K.STACK_GLOBAL + K.POP + K.NONE + K.STOP
    r = check(write(tmp_path, "a4b.pkl", data), marker)
    assert "pickle.unresolved-global" in rules(r)
    assert r.verdict == "dangerous" and r.complete


def test_a5_dangling_memo_key(tmp_path: Path, marker: Path) -> None:
    data = K.proto(4) + K.binget(99) + K.u("system") + K.STACK_GLOBAL + K.STOP
    r = check(write(tmp_path, "a5.pkl", data), marker)
    assert r.status == "error" and "memo key 99" in r.errors[0]["message"]


def test_a6_dotted_names(tmp_path: Path, marker: Path) -> None:
    """pickle walks dotted names attribute by attribute (protocol 4+): pathlib.os.system is os.system."""
    for module, name in (("pathlib", "os.system"), ("torch", "serialization.load"), ("collections", "abc.sys.modules"),
                         ("numpy", "__builtins__.eval")):
        data = K.proto(4) + K.u(module) + K.u(name) + K.STACK_GLOBAL + K.u(K.touch(marker)) + K.TUPLE1 + K.REDUCE + K.STOP
        r = check(write(tmp_path, "a6.pkl", data), marker)
        assert names(r) == {f"{module}.{name}"}, (module, name)


def test_a7_build_smuggling_on_a_global(tmp_path: Path, marker: Path) -> None:
    """BUILD on a global object sets attributes process-wide (numpy.prod.a = 'os'), then a dotted
    global reads them back."""
    data = (
        K.proto(4) + K.glob("numpy", "prod") + K.NONE + K.EMPTY_DICT + K.u("a") + K.u("os") + K.SETITEM + K.TUPLE2 + K.BUILD
        + K.POP + K.u("numpy") + K.u("prod.a") + K.STACK_GLOBAL + K.STOP
    )
    r = check(write(tmp_path, "a7.pkl", data), marker)
    assert "pickle.mutates-global" in rules(r)
    assert r.verdict == "dangerous"
    info = {g.name: g for g in r.globals}["numpy.prod"]
    assert info.mutated


def test_a7_setitem_on_a_global_dict(tmp_path: Path, marker: Path) -> None:
    data = K.proto(2) + K.glob("torch.serialization", "_package_registry") + K.u("k") + K.u("v") + K.SETITEM + K.STOP
    r = check(write(tmp_path, "a7b.pkl", data), marker)
    assert "pickle.mutates-global" in rules(r)


def test_a8_builtins_introspection(tmp_path: Path, marker: Path) -> None:
    for name in ("object.__subclasses__", "getattr", "type", "__import__", "globals", "vars"):
        data = K.proto(4) + K.u("builtins") + K.u(name) + K.STACK_GLOBAL + K.STOP
        assert names(check(write(tmp_path, "a8.pkl", data), marker)) == {f"builtins.{name}"}, name


def test_a9_inst_obj_newobj_call_paths(tmp_path: Path, marker: Path) -> None:
    inst = K.MARK + K.sstr(K.touch(marker)) + K.inst("os", "system") + K.STOP
    obj = K.MARK + K.glob("os", "system") + K.sstr(K.touch(marker)) + K.OBJ + K.POP + K.NONE + K.STOP  # result discarded
    newobj = K.proto(2) + K.glob("subprocess", "Popen") + K.MARK + K.u("touch") + K.TUPLE + K.NEWOBJ + K.STOP
    newobj_ex = K.proto(4) + K.glob("subprocess", "Popen") + K.EMPTY_TUPLE + K.EMPTY_DICT + K.NEWOBJ_EX + K.STOP
    for name, data, global_ in (("inst", inst, "os.system"), ("obj", obj, "os.system"),
                                ("newobj", newobj, "subprocess.Popen"), ("newobj_ex", newobj_ex, "subprocess.Popen")):
        r = check(write(tmp_path, f"a9_{name}.pkl", data), marker)
        assert names(r) == {global_}, name
        assert {g.name: g for g in r.globals}[global_].called, name


def test_a10_nested_pickle_in_bytes(tmp_path: Path, marker: Path) -> None:
    inner = K.os_system(marker)
    outer = K.proto(3) + K.call(K.glob("pickle", "loads"), K.binbytes(inner)) + K.STOP
    r = check(write(tmp_path, "a10.pkl", outer), marker)
    assert names(r) == {"pickle.loads", "posix.system"}
    assert "pickle.nested" in rules(r)
    nested = [f for f in r.findings if f.name == "posix.system"][0]
    assert "literal at" in nested.record


def test_a10_nested_pickle_via_codecs_encode(tmp_path: Path, marker: Path) -> None:
    """Protocol 2 stores bytes as _codecs.encode(latin-1 text): the inner pickle is found in the text."""
    inner = K.os_system(marker)
    outer = K.proto(2) + K.call(K.glob("torch.serialization", "load"),
                               K.call(K.glob("_codecs", "encode"), K.u(inner.decode("latin-1")), K.u("latin1"))) + K.STOP
    r = check(write(tmp_path, "a10b.pkl", outer), marker)
    assert {"torch.serialization.load", "posix.system"} <= names(r)


def test_a10_benign_nesting_is_still_scanned(tmp_path: Path, marker: Path) -> None:
    """A checkpoint whose only globals are safe, carrying a pickle as plain bytes (cloudpickled hparams):
    the inner pickle is scanned and its globals reported."""
    inner = K.proto(4) + K.u("cloudpickle.cloudpickle") + K.u("_make_function") + K.STACK_GLOBAL + K.STOP
    outer = pickle.dumps({"hparams_blob": inner, "epoch": 1}, protocol=4)
    r = check(write(tmp_path, "a10c.pkl", outer), marker)
    assert names(r) == {"cloudpickle.cloudpickle._make_function"}


@pytest.mark.parametrize("encoding", ["base64", "zlib", "zlib+base64", "gzip", "bz2", "hex"])
def test_a11_encoded_nested_payloads(tmp_path: Path, marker: Path, encoding: str) -> None:
    inner = K.os_system(marker)
    blob = {
        "base64": base64.b64encode(inner), "zlib": zlib.compress(inner),
        "zlib+base64": base64.b64encode(zlib.compress(inner)), "gzip": gzip.compress(inner),
        "bz2": bz2.compress(inner), "hex": inner.hex().encode(),
    }[encoding]
    outer = K.proto(3) + K.call(K.glob("pickle", "loads"), K.call(K.glob("zlib", "decompress"), K.binbytes(blob))) + K.STOP
    r = check(write(tmp_path, "a11.pkl", outer), marker)
    assert "posix.system" in names(r), encoding


def test_a12_payload_then_corruption(tmp_path: Path, marker: Path) -> None:
    """The payload comes first, then bytes that break parsing: the globals before the break are
    reported, and the file is an error (never clean)."""
    data = K.os_system(marker)[:-1] + b"\xff\xfe garbage"
    r = check(write(tmp_path, "a12.pkl", data), marker)
    assert names(r) == {"posix.system"}
    assert r.status == "error"
    assert ckpt.ScanReport([r]).exit_code() == 2


def test_a12_stacked_pickles(tmp_path: Path, marker: Path) -> None:
    data = K.benign_pickle() + K.os_system(marker) + K.benign_pickle([1, 2])
    r = check(write(tmp_path, "a12b.pkl", data), marker)
    assert names(r) == {"posix.system"}
    assert "pickle.stacked" in rules(r)
    assert [p.role for p in r.pickles] == ["main", "stacked", "stacked"]


def test_a12_trailing_bytes_after_stop(tmp_path: Path, marker: Path) -> None:
    r = check(write(tmp_path, "a12c.pkl", K.benign_pickle() + b"\x00\x01 not a pickle"), marker)
    assert rules(r) == {"pickle.trailing-data"}


def test_a13_callback_gadgets(tmp_path: Path, marker: Path) -> None:
    data = K.payload_then([("collections", "ChainMap"), ("operator", "getitem"), ("weakref", "finalize"),
                           ("collections", "defaultdict"), ("_operator", "methodcaller")], marker)
    r = check(write(tmp_path, "a13.pkl", data), marker)
    assert {"operator.getitem", "weakref.finalize", "_operator.methodcaller"} <= names(r)
    assert {"collections.ChainMap"} <= names(r, "unknown")
    # defaultdict is on ckpt's allowlist (its profile accepts built-in factories only); the factory
    # a gadget would hand it is a global of its own, judged on its own
    assert [g.verdict for g in r.globals if g.name == "collections.defaultdict"] == ["safe"]


def test_a14_scanner_deactivation(tmp_path: Path, marker: Path) -> None:
    data = K.payload_then([("ckpt.verdicts", "DANGEROUS_MODULES.clear"), ("picklescan.scanner", "scan_pickle_bytes")], marker)
    r = check(write(tmp_path, "a14.pkl", data), marker)
    assert names(r) == {"ckpt.verdicts.DANGEROUS_MODULES.clear", "picklescan.scanner.scan_pickle_bytes"}


def test_ext_codes_are_dangerous(tmp_path: Path, marker: Path) -> None:
    data = K.proto(2) + b"\x82\x01" + K.MARK + K.u(K.touch(marker)) + K.TUPLE + K.REDUCE + K.POP
    data += b"\x83\x00\x01" + K.POP + b"\x84\x00\x00\x01\x00" + K.POP + K.NONE + K.STOP
    r = check(write(tmp_path, "ext.pkl", data), marker)
    assert names(r) == {"copyreg.extension.1", "copyreg.extension.256", "copyreg.extension.65536"}


def test_calls_of_computed_values_are_reported(tmp_path: Path, marker: Path) -> None:
    data = K.proto(2) + K.call(K.call(K.glob("builtins", "getattr"), K.glob("os", "path"), K.u("join")), K.u("a")) + K.STOP
    r = check(write(tmp_path, "calls.pkl", data), marker)
    assert "pickle.calls-computed" in rules(r)


# -- B. container and format tricks -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["model.bin", "weights.txt", "README", "model.safetensors", "x.pt", "image.png"])
def test_b1_any_extension(tmp_path: Path, marker: Path, name: str) -> None:
    r = check(write(tmp_path, name, K.os_system(marker)), marker)
    assert names(r) == {"posix.system"}


def test_b1_plain_pickle_renamed_pt_in_a_folder(tmp_path: Path, marker: Path) -> None:
    (tmp_path / "repo" / "sub").mkdir(parents=True)
    write(tmp_path / "repo" / "sub", "pytorch_model.bin", K.os_system(marker))
    write(tmp_path / "repo", "config.json", b'{"a": 1}')
    report = ckpt.scan(tmp_path / "repo", jobs=1)
    assert not marker.exists()
    assert [r.status for r in report.files] == ["clean", "dangerous"]
    assert report.exit_code() == 1


def test_b2_local_and_central_names_disagree(tmp_path: Path, marker: Path) -> None:
    path = K.torch_zip(tmp_path / "b2.pt", K.os_system(marker), folder="arch")
    K.rewrite(path, b"arch/data.pkl", b"arch/data.pKl")  # the local header's copy of the name only
    r = check(path, marker)
    assert "zip.header-mismatch" in rules(r)
    assert names(r) == {"posix.system"}


def test_b2_flag_bits_only_in_the_local_header(tmp_path: Path, marker: Path) -> None:
    path = K.torch_zip(tmp_path / "b2b.pt", K.os_system(marker))
    data = bytearray(path.read_bytes())
    data[6] |= 0x01  # the first local header claims encryption; the central directory does not
    path.write_bytes(bytes(data))
    r = check(path, marker)
    assert "zip.header-mismatch" in rules(r)
    assert names(r) == {"posix.system"}


def test_b3_bad_crc_does_not_stop_the_scan(tmp_path: Path, marker: Path) -> None:
    path = K.torch_zip(tmp_path / "b3.pt", K.os_system(marker))
    payload = K.os_system(marker)
    K.rewrite(path, payload, payload.replace(b"touch", b"tOuch"))
    r = check(path, marker)
    assert "zip.crc-mismatch" in rules(r)
    assert names(r) == {"posix.system"}


@pytest.mark.parametrize("hidden", ["archive/data/999", "archive/extra", "archive/.data/x.pkl", "other/data.pkl",
                                    "archive/data.pkl.bak"])
def test_b4_hidden_pickles_in_other_records(tmp_path: Path, marker: Path, hidden: str) -> None:
    sd, records = K.state_dict_pickle()
    path = K.torch_zip(tmp_path / "b4.pt", sd, records=records, extra=[(hidden, K.os_system(marker))])
    r = check(path, marker)
    assert names(r) == {"posix.system"}
    assert [f.record for f in r.findings if f.name == "posix.system"] == [hidden]
    assert "pickle.unexpected-record" in rules(r)


def test_b4_hidden_pickle_in_a_compressed_record(tmp_path: Path, marker: Path) -> None:
    sd, records = K.state_dict_pickle()
    path = K.torch_zip(tmp_path / "b4c.pt", sd, records=records, extra=[("archive/x", K.os_system(marker))],
                       compression=zipfile.ZIP_DEFLATED)
    assert names(check(path, marker)) == {"posix.system"}


def test_b5_legacy_magic_computed_at_load(tmp_path: Path, marker: Path) -> None:
    magic = K.proto(2) + K.call(K.glob("builtins", "eval"), K.u(hex(K.LEGACY_MAGIC))) + K.STOP
    path = K.legacy_file(tmp_path / "b5.pt", K.benign_pickle(), magic=magic)
    r = check(path, marker)
    assert names(r) == {"builtins.eval"}


def test_b5_legacy_file_with_payload_in_main_pickle(tmp_path: Path, marker: Path) -> None:
    path = K.legacy_file(tmp_path / "b5b.pt", K.os_system(marker))
    r = check(path, marker)
    assert r.format == "torch-legacy"
    assert names(r) == {"posix.system"}


def test_b6_legacy_tar_format(tmp_path: Path, marker: Path) -> None:
    storages = pickle.dumps(0, protocol=2) + pickle.dumps([], protocol=2)
    tensors = pickle.dumps(0, protocol=2)
    path = K.tar_file(tmp_path / "b6.tar", {"sys_info": K.benign_pickle(), "pickle": K.os_system(marker),
                                             "storages": storages, "tensors": tensors})
    r = check(path, marker)
    assert r.format == "torch-tar"
    assert names(r) == {"posix.system"}


def test_b6_tar_payload_in_storages_member(tmp_path: Path, marker: Path) -> None:
    storages = K.os_system(marker)  # the count pickle itself runs the payload
    path = K.tar_file(tmp_path / "b6b.tar", {"pickle": K.benign_pickle(), "storages": storages,
                                              "tensors": pickle.dumps(0, protocol=2)})
    r = check(path, marker)
    assert names(r) == {"posix.system"}


def test_b7_pickle_and_zip_polyglot(tmp_path: Path, marker: Path) -> None:
    """A pickle at byte 0 (what pickle.load and torch's legacy path read) with a benign zip
    appended (what zip-based scanners read): both readings are scanned."""
    sd, records = K.state_dict_pickle()
    benign = K.torch_zip(tmp_path / "benign.pt", sd, records=records).read_bytes()
    r = check(write(tmp_path, "b7.pt", K.os_system(marker) + benign), marker)
    assert "file.polyglot" in rules(r)
    assert {"zip", "pickle"} <= set(r.formats) or {"torch-zip", "pickle"} <= set(r.formats)
    assert names(r) == {"posix.system"}


def test_b7_zip_with_payload_appended_to_a_benign_pickle(tmp_path: Path, marker: Path) -> None:
    bad = K.torch_zip(tmp_path / "bad.pt", K.os_system(marker)).read_bytes()
    r = check(write(tmp_path, "b7b.pt", K.benign_pickle() + bad), marker)
    assert "file.polyglot" in rules(r)
    assert names(r) == {"posix.system"}


def test_b7_tar_and_pickle_polyglot(tmp_path: Path, marker: Path) -> None:
    tar = K.tar_file(tmp_path / "t.tar", {"pickle": K.os_system(marker)}).read_bytes()
    r = check(write(tmp_path, "b7c.pt", tar + K.os_system(marker)), marker)
    assert names(r) == {"posix.system"}


def test_b8_npy_object_array(tmp_path: Path, marker: Path) -> None:
    r = check(write(tmp_path, "arr.npy", K.object_npy(K.os_system(marker))), marker)
    assert "npy.object-array" in rules(r)
    assert names(r) == {"posix.system"}


def test_b8_npz_with_object_array(tmp_path: Path, marker: Path) -> None:
    path = tmp_path / "arrs.npz"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("ok.npy", K.npy_bytes({"descr": "<f4", "fortran_order": False, "shape": (2,)}, bytes(8)))
        z.writestr("bad.npy", K.object_npy(K.os_system(marker)))
    r = check(path, marker)
    assert r.format == "npz"
    assert names(r) == {"posix.system"}


def test_b8_seven_zip_is_not_reported_clean(tmp_path: Path, marker: Path) -> None:
    r = check(write(tmp_path, "m.7z", b"7z\xbc\xaf\x27\x1c" + bytes(100)), marker)
    assert r.status == "error"


def test_b8_compressed_pickles(tmp_path: Path, marker: Path) -> None:
    """joblib-style compressed pickles: the scanner decompresses (bounded) and scans."""
    payload = K.os_system(marker)
    for name, data in (("m.pkl.gz", gzip.compress(payload)), ("m.pkl.bz2", bz2.compress(payload)),
                       ("m.pkl.z", zlib.compress(payload))):
        r = check(write(tmp_path, name, data), marker)
        assert names(r) == {"posix.system"}, name


def test_b9_dcp_metadata_is_a_bare_pickle(tmp_path: Path, marker: Path) -> None:
    dcp = tmp_path / "ckpt_dir"
    dcp.mkdir()
    write(dcp, ".metadata", K.os_system(marker))
    write(dcp, "__0_0.distcp", bytes(64))
    report = ckpt.scan(dcp, jobs=1)
    assert not marker.exists()
    assert [Path(r.path).name for r in report.files if r.status == "dangerous"] == [".metadata"]


def test_b10_tiny_files_are_not_skipped(tmp_path: Path, marker: Path) -> None:
    data = K.glob("os", "system") + K.STOP  # 15 bytes: a reference alone imports os
    assert names(check(write(tmp_path, "tiny.bin", data), marker)) == {"os.system"}


def test_zip_unsafe_names_and_duplicates(tmp_path: Path, marker: Path) -> None:
    sd, records = K.state_dict_pickle()
    path = tmp_path / "names.pt"
    with pytest.warns(UserWarning):  # zipfile warns about the duplicate name
        K.torch_zip(path, sd, records=records, extra=[("../../evil.sh", b"#!/bin/sh\n"), ("/etc/x", b"x"),
                                                       ("archive/data.pkl", K.os_system(marker))])
    r = check(path, marker)
    assert {"zip.unsafe-name", "zip.duplicate-name", "zip.outside-archive-folder"} <= rules(r)
    assert names(r) == {"posix.system"}  # the second data.pkl was scanned too


def test_zip_data_outside_any_record(tmp_path: Path, marker: Path) -> None:
    sd, records = K.state_dict_pickle()
    path = K.torch_zip(tmp_path / "gap.pt", sd, records=records)
    data = path.read_bytes()
    cd = data.rfind(b"PK\x01\x02", 0, data.find(b"PK\x05\x06"))
    first_cd = data.find(b"PK\x01\x02")
    hidden = K.os_system(marker)
    # insert the payload between the last record and the central directory, fixing the offsets
    new = data[:first_cd] + hidden + data[first_cd:]
    eocd = new.rfind(b"PK\x05\x06")
    cd_offset = struct.unpack_from("<I", new, eocd + 16)[0]
    new = new[: eocd + 16] + struct.pack("<I", cd_offset + len(hidden)) + new[eocd + 20 :]
    r = check(write(tmp_path, "gap2.pt", new), marker)
    assert "zip.outside-data" in rules(r)
    assert names(r) == {"posix.system"}
    assert cd > 0


def test_zip_encrypted_record_is_an_error(tmp_path: Path, marker: Path) -> None:
    sd, records = K.state_dict_pickle()
    path = K.torch_zip(tmp_path / "enc.pt", sd, records=records, extra=[("archive/secret", b"abc")])
    data = bytearray(path.read_bytes())
    for sig in (b"PK\x03\x04", b"PK\x01\x02"):
        pos = data.rfind(sig)  # the last record of each kind: archive/secret
        data[pos + (6 if sig == b"PK\x03\x04" else 8)] |= 0x01
    r = check(write(tmp_path, "enc2.pt", bytes(data)), marker)
    assert r.status == "error" and "zip.encrypted" in rules(r)


def test_zip_bomb_record(tmp_path: Path, marker: Path) -> None:
    sd, _ = K.state_dict_pickle(1)
    path = tmp_path / "bomb.pt"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data.pkl", sd)
        z.writestr("archive/data/0", bytes(200 << 20))  # 200 MiB of zeros: ~200 KB compressed
        z.writestr("archive/version", "3\n")
    r = check(path, marker)
    assert {"zip.compression-bomb", "zip.storage-mismatch"} <= rules(r)


def test_storage_size_mismatch(tmp_path: Path, marker: Path) -> None:
    sd, records = K.state_dict_pickle()
    records["data/0"] = bytes(4)
    r = check(K.torch_zip(tmp_path / "short.pt", sd, records=records), marker)
    assert rules(r) == {"zip.storage-mismatch"}


def test_torchscript_archive_without_torch(tmp_path: Path, marker: Path) -> None:
    data = K.proto(2) + K.glob("__torch__", "M") + K.EMPTY_TUPLE + K.NEWOBJ + K.STOP
    path = K.torch_zip(tmp_path / "ts.pt", data, extra=[("archive/constants.pkl", K.proto(2) + K.EMPTY_TUPLE + K.STOP),
                                                         ("archive/code/__torch__.py", b"def forward(self): pass\n")])
    r = check(path, marker)
    assert r.format == "torchscript"
    assert rules(r) == {"torchscript.code"}  # __torch__ classes come from the archive itself


# -- E. denial of service --------------------------------------------------------------------------


def test_e2_memo_and_dup_expansion_is_linear(tmp_path: Path, marker: Path) -> None:
    body = K.EMPTY_LIST + K.binput(0)
    for _ in range(200):
        body += K.MARK + K.binget(0) + K.DUP + K.DUP + K.DUP + b"l" + K.binput(0)
    import time

    from adversarial_kit import CPU_SECONDS_BOUND

    t0 = time.process_time()  # CPU seconds, not wall time: a busy machine must not fail the guard
    r = check(write(tmp_path, "laughs.pkl", K.proto(2) + body + K.STOP), marker)
    assert r.status == "clean" and time.process_time() - t0 < CPU_SECONDS_BOUND


def test_e3_oversized_declared_lengths(tmp_path: Path, marker: Path) -> None:
    data = K.proto(4) + b"X\xff\xff\xff\xff" + b"abc"
    r = check(write(tmp_path, "len.pkl", data), marker)
    assert r.status == "error" and "declares 4,294,967,295 bytes" in r.errors[0]["message"]
    data = K.proto(4) + b"\x8e" + struct.pack("<Q", 1 << 62) + b"x"
    assert check(write(tmp_path, "len8.pkl", data), marker).status == "error"


def test_e4_deep_nesting(tmp_path: Path, marker: Path) -> None:
    data = K.proto(2) + K.MARK * 100_000 + K.glob("os", "system") + K.STOP
    r = check(write(tmp_path, "deep.pkl", data), marker)
    assert names(r) == {"os.system"}


def test_e_many_zip_records_hit_the_limit(tmp_path: Path, marker: Path) -> None:
    sd, records = K.state_dict_pickle()
    path = K.torch_zip(tmp_path / "many.pt", sd, records=records, extra=[(f"archive/x{i}", b"") for i in range(50)])
    r = check(path, marker, limits=ckpt.Limits(max_records=20))
    assert r.status == "error" and "limit" in r.errors[0]["message"]


# -- F. pipeline logic ----------------------------------------------------------------------------


def test_f2_errors_are_never_clean(tmp_path: Path, marker: Path) -> None:
    truncated = K.torch_zip(tmp_path / "t.pt", K.os_system(marker)).read_bytes()[:-30]
    for name, data in (("truncated.pt", truncated), ("truncated.pkl", K.benign_pickle()[:-3])):
        r = check(write(tmp_path, name, data), marker)
        assert r.status == "error", name
        assert ckpt.ScanReport([r]).exit_code("dangerous") == 2
    missing = scan_file(tmp_path / "nope.pt")
    assert missing.status == "error"


def test_f4_no_state_leaks_between_files(tmp_path: Path, marker: Path) -> None:
    bad = write(tmp_path, "1.pkl", K.proto(4) + K.u("os") + K.binput(0) + K.u("system") + K.binput(1) + K.STACK_GLOBAL + K.STOP)
    good = write(tmp_path, "2.pkl", K.benign_pickle(protocol=4))
    for jobs in (1, 2):
        report = ckpt.scan([bad, good, bad, good] * 3, jobs=jobs)
        assert [r.status for r in report.files] == ["dangerous", "clean"] * 6
    assert not marker.exists()


def test_many_files_in_parallel_match_serial(tmp_path: Path, marker: Path) -> None:
    paths = []
    for i in range(20):
        data = K.os_system(marker) if i % 3 == 0 else K.benign_pickle({"i": i})
        paths.append(write(tmp_path, f"f{i:02}.bin", data))
    serial = ckpt.scan(tmp_path, jobs=1)
    parallel = ckpt.scan(tmp_path, jobs=2)
    assert [r.as_json() | {"seconds": 0} for r in serial.files] == [r.as_json() | {"seconds": 0} for r in parallel.files]
    assert not marker.exists()


def test_second_pickle_after_stop_inside_data_pkl(tmp_path: Path, marker: Path) -> None:
    sd, records = K.state_dict_pickle()
    path = K.torch_zip(tmp_path / "after.pt", sd + K.os_system(marker), records=records)
    r = check(path, marker)
    assert "pickle.trailing-data" in rules(r)
    assert names(r) == {"posix.system"}
    assert "embedded" in [p.role for p in r.pickles]


# -- one analysis, two faces: inspect shows what scan finds -----------------------------------------


def test_inspect_shows_the_scan_findings(tmp_path: Path, marker: Path) -> None:
    """A checkpoint whose data.pkl is benign but which hides a payload in another record:
    ckpt.inspect (which loads data.pkl) reports the hidden global and the anomaly, as scan does."""
    sd, records = K.state_dict_pickle()
    path = K.torch_zip(tmp_path / "hidden.pt", sd, records=records, extra=[("archive/data/77", K.os_system(marker))])
    summary = ckpt.inspect(path)
    assert not marker.exists()
    assert [(f.name, f.verdict, f.record) for f in summary.findings] == [("posix.system", "dangerous", "archive/data/77")]
    assert "pickle.unexpected-record" in {a.name for a in summary.anomalies}
    doc = summary.as_json()
    assert doc["findings"][0]["global"] == "posix.system"
    assert {a["rule"] for a in doc["anomalies"]} >= {"pickle.unexpected-record", "zip.unexpected-record"}
    scanned = scan_file(path)
    assert {(f.name, f.record) for f in scanned.findings if f.kind == "global"} == {(f.name, f.record) for f in summary.findings}
    assert ckpt.inspect(path, scan=False).findings == []


def test_inspect_and_scan_agree_on_verdicts_for_dotted_names(tmp_path: Path, marker: Path) -> None:
    sd, records = K.state_dict_pickle()
    body = sd[:-1] + K.POP + K.u("pathlib") + K.u("os.system") + K.STACK_GLOBAL + K.STOP
    path = K.torch_zip(tmp_path / "dotted.pt", K.proto(4) + body[2:], records=records)
    summary = ckpt.inspect(path)
    assert [(f.name, f.verdict) for f in summary.findings] == [("pathlib.os.system", "dangerous")]
    assert [(f.name, f.verdict) for f in scan_file(path).findings if f.kind == "global"] == [("pathlib.os.system", "dangerous")]


def test_b7_safetensors_with_a_zip_appended(tmp_path: Path, marker: Path) -> None:
    """A valid safetensors file (what safetensors loaders read) that is also a zip archive holding a
    torch checkpoint with a payload (what zip readers, torch.load among them after a rename of the
    first bytes, would read): both readings are scanned."""
    import json

    header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    st = struct.pack("<Q", len(header)) + header + bytes(8)
    zipped = K.torch_zip(tmp_path / "z.pt", K.os_system(marker)).read_bytes()
    r = check(write(tmp_path, "model.safetensors", st + zipped), marker)
    assert names(r) == {"posix.system"}
    assert set(r.formats) == {"torch-zip", "safetensors"}
    assert {"file.polyglot", "safetensors.outside-data"} <= rules(r)
