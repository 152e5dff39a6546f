"""Pickle-level attacks on ``data.pkl`` and type confusion inside it.

Every payload is built by hand from opcodes and wrapped in a valid torch zip beside a real tensor.
The payloads are harmless but live: each would create a marker file in the test's temporary
folder if it ever ran (``test_marker_mechanism_is_live`` in test_bad_input.py shows the command
works), and every test asserts the marker never appears.

* strict (``ckpt.load``, ``ckpt.open``): :class:`ckpt.UnsafeGlobalError` naming ``module.name``,
  the record, and how to allow it;
* inspect: a finding with a verdict, and the rest of the file still summarised;
* ``allow=[...]``: the object comes back as inert data (:class:`ckpt.values.InertObject`), still
  never executed.
"""

from __future__ import annotations

import json
import pickletools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest
from click.testing import CliRunner

import ckpt
from ckpt.values import GlobalRef, InertObject
from ckpt_cli.main import cli

try:
    from . import adversarial_kit as kit
except ImportError:
    import adversarial_kit as kit

needs_torch = pytest.mark.skipif(not kit.HAVE_TORCH, reason="needs torch")

glob, tup, ustr, binint, binput, binget = kit.glob, kit.tup, kit.ustr, kit.binint, kit.binput, kit.binget
int_tuple = kit.int_tuple
REDUCE, BUILD, POP, MARK = kit.REDUCE, kit.BUILD, kit.POP, kit.MARK
EMPTY_DICT, EMPTY_TUPLE, EMPTY_LIST = kit.EMPTY_DICT, kit.EMPTY_TUPLE, kit.EMPTY_LIST
SETITEM, APPEND, NONE = kit.SETITEM, kit.APPEND, kit.NONE
TENSOR = kit.rebuild_v2(kit.pid("0"))
OD = glob("collections", "OrderedDict") + EMPTY_TUPLE + REDUCE

# opcodes at which a global is named (GLOBAL, STACK_GLOBAL, INST, EXT1/2/4)
NAMING_OPCODES = {ord("c"), 0x93, ord("i"), 0x82, 0x83, 0x84}


# -- the attacks ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Attack:
    build: Callable[[str], bytes]
    """Opcodes leaving the payload on the stack, given the shell command that would touch the marker."""
    name: str
    """The ``module.name`` ckpt must report."""
    how: str | None = "reduce"
    """What ``allow=[name]`` gives: InertObject.how, or None for a bare GlobalRef."""
    protocol: int = 2
    verdict: str = "dangerous"


def _call(module: str, name: str) -> Callable[[str], bytes]:
    return lambda cmd: glob(module, name) + tup(ustr(cmd)) + REDUCE


def _inner_pickle(cmd: str) -> bytes:
    return kit.pickle_of(glob("os", "system") + tup(ustr(cmd)) + REDUCE)


def _binbytes(b: bytes) -> bytes:
    return b"B" + len(b).to_bytes(4, "little") + b


ATTACKS: dict[str, Attack] = {
    "GLOBAL-os.system": Attack(_call("os", "system"), "os.system"),
    "GLOBAL-posix.system": Attack(_call("posix", "system"), "posix.system"),
    "GLOBAL-nt.system": Attack(_call("nt", "system"), "nt.system"),
    "GLOBAL-builtins.eval": Attack(
        lambda cmd: glob("builtins", "eval") + tup(ustr(f"__import__('os').system({cmd!r})")) + REDUCE,
        "builtins.eval"),
    "GLOBAL-py2-__builtin__.eval": Attack(
        lambda cmd: glob("__builtin__", "eval") + tup(ustr(f"__import__('os').system({cmd!r})")) + REDUCE,
        "builtins.eval"),
    "GLOBAL-builtins.exec": Attack(
        lambda cmd: glob("builtins", "exec") + tup(ustr(f"import os; os.system({cmd!r})")) + REDUCE,
        "builtins.exec"),
    "GLOBAL-subprocess.Popen": Attack(
        lambda cmd: glob("subprocess", "Popen") + tup(tup(*(ustr(a) for a in cmd.split(" ", 1)))) + REDUCE,
        "subprocess.Popen"),
    "GLOBAL-builtins.getattr": Attack(
        lambda cmd: glob("builtins", "getattr") + tup(glob("collections", "OrderedDict"), ustr("__init__")) + REDUCE,
        "builtins.getattr"),
    "GLOBAL-only-referenced": Attack(lambda cmd: glob("os", "system"), "os.system", how=None),
    "STACK_GLOBAL-operands-from-memo": Attack(
        lambda cmd: ustr("os") + binput(60) + POP + ustr("system") + binput(61) + POP
        + binget(60) + binget(61) + kit.STACK_GLOBAL + tup(ustr(cmd)) + REDUCE,
        "os.system", protocol=4),
    # A1: MEMOIZE stores at len(memo), overwriting the BINPUT slot a naive scanner still believes
    # holds the decoy "torch._utils"
    "STACK_GLOBAL-memo-confusion": Attack(
        lambda cmd: ustr("torch._utils") + binput(1) + POP + kit.short_ustr("os") + kit.MEMOIZE + POP
        + kit.short_ustr("system") + binput(3) + POP + binget(1) + binget(3) + kit.STACK_GLOBAL
        + tup(ustr(cmd)) + REDUCE,
        "os.system", protocol=4),
    # A2: decoy operands pushed and popped before the real ones
    "STACK_GLOBAL-after-popped-decoys": Attack(
        lambda cmd: kit.short_ustr("torch._utils") + kit.short_ustr("_rebuild_tensor_v2") + POP + POP
        + kit.short_ustr("posix") + kit.short_ustr("system") + kit.STACK_GLOBAL + tup(ustr(cmd)) + REDUCE,
        "posix.system", protocol=4),
    "INST": Attack(lambda cmd: MARK + ustr(cmd) + kit.inst("os", "system"), "os.system", how="inst"),
    "OBJ": Attack(lambda cmd: MARK + glob("os", "system") + ustr(cmd) + kit.OBJ, "os.system", how="inst"),
    "NEWOBJ": Attack(
        lambda cmd: glob("subprocess", "Popen") + tup(tup(*(ustr(a) for a in cmd.split(" ", 1)))) + kit.NEWOBJ,
        "subprocess.Popen", how="newobj"),
    "NEWOBJ_EX": Attack(
        lambda cmd: glob("subprocess", "Popen") + tup(tup(*(ustr(a) for a in cmd.split(" ", 1))))
        + EMPTY_DICT + ustr("shell") + kit.NEWFALSE + SETITEM + kit.NEWOBJ_EX,
        "subprocess.Popen", how="newobj", protocol=4),
    # A6: dotted names walk attributes (pathlib imports os, so pathlib.os.system is os.system)
    "STACK_GLOBAL-dotted-pathlib.os.system": Attack(
        lambda cmd: kit.short_ustr("pathlib") + kit.short_ustr("os.system") + kit.STACK_GLOBAL
        + tup(ustr(cmd)) + REDUCE,
        "pathlib.os.system", protocol=4),
    "GLOBAL-dotted-torch.serialization.os.system": Attack(
        _call("torch", "serialization.os.system"), "torch.serialization.os.system"),
    "GLOBAL-dotted-through-allowlisted-class": Attack(
        lambda cmd: glob("collections", "OrderedDict.__init__.__globals__"), "collections.OrderedDict.__init__.__globals__",
        how=None),
    "EXT1": Attack(lambda cmd: b"\x82\x01" + tup(ustr(cmd)) + REDUCE, "copyreg.extension.1"),
    "EXT2": Attack(lambda cmd: b"\x83\x00\x01" + tup(ustr(cmd)) + REDUCE, "copyreg.extension.256"),
    "EXT4": Attack(lambda cmd: b"\x84\x00\x00\x01\x00" + tup(ustr(cmd)) + REDUCE, "copyreg.extension.65536"),
    "nested-pickle.loads": Attack(
        lambda cmd: glob("pickle", "loads") + tup(_binbytes(_inner_pickle(cmd))) + REDUCE, "pickle.loads"),
    "nested-_pickle.loads": Attack(
        lambda cmd: glob("_pickle", "loads") + tup(_binbytes(_inner_pickle(cmd))) + REDUCE, "_pickle.loads"),
    "nested-torch.load": Attack(
        lambda cmd: glob("torch", "load") + tup(ustr("/tmp/innocent.pt")) + REDUCE, "torch.load"),
    "nested-torch.storage._load_from_bytes": Attack(
        lambda cmd: glob("torch.storage", "_load_from_bytes") + tup(_binbytes(_inner_pickle(cmd))) + REDUCE,
        "torch.storage._load_from_bytes"),
    "unknown-class-newobj-build": Attack(
        lambda cmd: glob("mytrainer.config", "Config") + EMPTY_TUPLE + kit.NEWOBJ + EMPTY_DICT + ustr("cmd")
        + ustr(cmd) + SETITEM + BUILD,
        "mytrainer.config.Config", how="newobj", verdict="unknown"),
}


def attack_file(tmp_path: Path, attack: Attack) -> tuple[Path, Path]:
    marker = tmp_path / "PWNED"
    data = kit.checkpoint_with(attack.build(f"touch {marker}"), protocol=attack.protocol)
    return kit.write(tmp_path / "evil.pt", data), marker


API_PARAMS = [
    pytest.param(lambda p, **kw: ckpt.open(p, **kw), id="open"),
    pytest.param(lambda p, **kw: ckpt.load(p, as_="numpy", **kw), id="load-numpy"),
    pytest.param(lambda p, **kw: ckpt.load(p, **kw), id="load", marks=needs_torch),
]


def unwrap(result: Any) -> Any:
    """The root object, from a Checkpoint or a load result."""
    return result.root if isinstance(result, ckpt.Checkpoint) else result


@pytest.mark.parametrize("api", API_PARAMS)
@pytest.mark.parametrize("attack", list(ATTACKS))
def test_strict_refuses_and_names_the_global(tmp_path: Path, attack: str, api: Callable[..., Any]) -> None:
    a = ATTACKS[attack]
    path, marker = attack_file(tmp_path, a)
    with pytest.raises(ckpt.UnsafeGlobalError) as info:
        api(path)
    err = info.value
    assert err.global_name == a.name
    message = str(err)
    assert str(path) in message and "data.pkl" in message
    assert a.name in message
    assert f"allow=[{a.name!r}]" in message and f"--allow {a.name}" in message
    assert "nothing was executed" in message
    assert "\n" not in message
    assert not marker.exists()


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_inspect_reports_a_finding_and_continues(tmp_path: Path, attack: str) -> None:
    a = ATTACKS[attack]
    path, marker = attack_file(tmp_path, a)
    summary = ckpt.inspect(path)
    # inspect also shows what the static scan finds: the payload inside a nested pickle, by its record
    nested = [f for f in summary.findings[1:] if "literal at" in (f.record or "")]
    assert [(f.name, f.verdict) for f in summary.findings] == [(a.name, a.verdict)] + [(f.name, f.verdict) for f in nested]
    assert bool(nested) == (attack.startswith("nested") and attack != "nested-torch.load")  # (that one loads a path)
    finding = summary.findings[0]
    assert finding.record == "archive/data.pkl"
    with ckpt.open(path, policy="inspect") as ck:  # the API behind inspect says the same
        assert [(f.name, f.verdict) for f in ck.findings] == [(a.name, a.verdict)]
    pickle_bytes = kit.with_tensor(a.build(f"touch {marker}"), protocol=a.protocol)
    assert finding.offset is not None and pickle_bytes[finding.offset] in NAMING_OPCODES
    # the rest of the file is still there
    assert [t.path for t in summary.tensors] == ["w"]
    assert summary.tensors[0].shape == (3,)
    assert any(v.path == "x" for v in summary.values)
    assert finding.as_json()["global"] == a.name
    assert not marker.exists()


@pytest.mark.parametrize("api", API_PARAMS)
@pytest.mark.parametrize("attack", list(ATTACKS))
def test_allowed_global_comes_back_inert(tmp_path: Path, attack: str, api: Callable[..., Any]) -> None:
    a = ATTACKS[attack]
    path, marker = attack_file(tmp_path, a)
    root = unwrap(api(path, allow=[a.name]))
    value = root["x"]
    if a.how is None:
        assert type(value) is GlobalRef and value.qualname == a.name
    else:
        assert type(value) is InertObject
        assert value.global_name == a.name and value.how == a.how
    assert list(root) == ["w", "x"]
    summary = ckpt.inspect(path, allow=[a.name])
    # what is left is the static scan's view of a nested pickle's payload, by its record
    assert all("literal at" in (f.record or "") for f in summary.findings)
    assert bool(summary.findings) == (attack.startswith("nested") and attack != "nested-torch.load")
    assert not marker.exists()


def test_inert_object_records_the_call(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    path = kit.write(tmp_path / "m.pt", kit.checkpoint_with(_call("os", "system")(f"touch {marker}")))
    with ckpt.open(path, allow=["os.system"]) as ck:
        obj = ck.root["x"]
    assert obj.args == (f"touch {marker}",)
    assert "os.system" in repr(obj)
    assert not marker.exists()


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_attack_pickle_is_well_formed(tmp_path: Path, attack: str) -> None:
    """The payloads are real pickles (pickletools parses them statically to STOP; nothing runs),
    so refusing them is ckpt's doing, not a parse error."""
    a = ATTACKS[attack]
    ops = list(pickletools.genops(kit.with_tensor(a.build("touch /nonexistent/x"), protocol=a.protocol)))
    assert ops[-1][0].name == "STOP"


def test_cli_reports_findings_and_exits_1(tmp_path: Path) -> None:
    path, marker = attack_file(tmp_path, ATTACKS["GLOBAL-os.system"])
    runner = CliRunner()
    text = runner.invoke(cli, ["inspect", str(path)])
    assert text.exit_code == 1, text.output
    assert "os.system" in text.stdout and "DANGEROUS" in text.stdout
    js = runner.invoke(cli, ["inspect", "--json", str(path)])
    assert js.exit_code == 1
    doc = json.loads(js.stdout)
    assert [(f["global"], f["verdict"]) for f in doc["findings"]] == [("os.system", "dangerous")]
    assert [t["path"] for t in doc["tensors"]] == ["w"]
    allowed = runner.invoke(cli, ["inspect", "--json", "--allow", "os.system", str(path)])
    assert allowed.exit_code == 0 and json.loads(allowed.stdout)["findings"] == []
    assert not marker.exists()


def test_strict_stops_at_the_first_global_and_inspect_lists_each_once(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    cmd = f"touch {marker}"
    payload = tup(_call("posix", "system")(cmd), _call("builtins", "eval")(cmd), _call("posix", "system")(cmd))
    path = kit.write(tmp_path / "m.pt", kit.checkpoint_with(payload))
    with pytest.raises(ckpt.UnsafeGlobalError) as info:
        ckpt.open(path)
    assert info.value.global_name == "posix.system"
    assert [f.name for f in ckpt.inspect(path).findings] == ["posix.system", "builtins.eval"]
    assert not marker.exists()


def test_findings_survive_allowing_a_different_name(tmp_path: Path) -> None:
    path, marker = attack_file(tmp_path, ATTACKS["GLOBAL-os.system"])
    with pytest.raises(ckpt.UnsafeGlobalError):
        ckpt.open(path, allow=["posix.system", "os"])  # exact names only: no module prefixes
    assert not marker.exists()


# -- gadgets on allowed objects -------------------------------------------------------------------

GADGETS: dict[str, tuple[bytes, str]] = {
    # BUILD on the allowlisted constructor itself (not an instance): A7 smuggling
    "BUILD-on-allowlisted-constructor": (glob("collections", "OrderedDict") + EMPTY_DICT + ustr("fn")
                                         + ustr("x") + SETITEM + BUILD, "BUILD on a Op"),
    "BUILD-on-dtype": (glob("torch", "float32") + EMPTY_DICT + ustr("a") + NONE + SETITEM + BUILD, "BUILD"),
    "BUILD-on-storage-class": (glob("torch", "FloatStorage") + EMPTY_DICT + BUILD, "BUILD"),
    "BUILD-on-tensor": (TENSOR + EMPTY_DICT + ustr("data") + NONE + SETITEM + BUILD, "BUILD"),
    "BUILD-legacy-tensor-set_": (TENSOR + tup(NONE, binint(0), int_tuple((1,)), int_tuple((1,))) + BUILD, "BUILD"),
    "BUILD-on-dict": (EMPTY_DICT + EMPTY_DICT + ustr("a") + NONE + SETITEM + BUILD, "BUILD on a dict"),
    "BUILD-on-list": (EMPTY_LIST + EMPTY_DICT + BUILD, "BUILD on a list"),
    "BUILD-OrderedDict-dunder": (OD + EMPTY_DICT + ustr("__class__") + ustr("x") + SETITEM + BUILD, "__class__"),
    "BUILD-OrderedDict-dunder-dict": (OD + EMPTY_DICT + ustr("__dict__") + EMPTY_DICT + SETITEM + BUILD,
                                      "__dict__"),
    "BUILD-OrderedDict-state-not-dict": (OD + ustr("x") + BUILD, "must be a dict"),
    "NEWOBJ-on-allowlisted-function": (glob("collections", "OrderedDict") + EMPTY_TUPLE + kit.NEWOBJ,
                                       "cannot create a new object"),
    "codecs.encode-other-codec": (glob("_codecs", "encode") + tup(ustr("x"), ustr("rot13")) + REDUCE, "_codecs"),
    "bytearray-of-str-without-encoding": (glob("builtins", "bytearray") + tup(ustr("x")) + REDUCE, "bytearray"),
    "layout-unknown": (glob("torch.serialization", "_get_layout") + tup(ustr("torch.evil")) + REDUCE, "layout"),
    "device-bad": (glob("torch", "device") + tup(ustr("cuda:x")) + REDUCE, "device"),
    "param-attr-dunder": (glob("torch._utils", "_rebuild_parameter_with_state") + tup(
        TENSOR, kit.NEWTRUE, OD, EMPTY_DICT + ustr("__class__") + NONE + SETITEM) + REDUCE, "__class__"),
    "param-attr-not-identifier": (glob("torch._utils", "_rebuild_parameter_with_state") + tup(
        TENSOR, kit.NEWTRUE, OD, EMPTY_DICT + ustr("a b") + NONE + SETITEM) + REDUCE, "may not be set"),
    "from_type_v2-wraps-non-rebuild": (glob("torch._tensor", "_rebuild_from_type_v2") + tup(
        glob("collections", "OrderedDict"), glob("torch", "Tensor"), EMPTY_TUPLE, NONE) + REDUCE, "must wrap"),
}


@pytest.mark.parametrize("api", API_PARAMS + [pytest.param(lambda p, **kw: ckpt.inspect(p), id="inspect")])
@pytest.mark.parametrize("gadget", list(GADGETS))
def test_gadgets_on_allowed_objects_are_refused(tmp_path: Path, gadget: str, api: Callable[..., Any]) -> None:
    payload, words = GADGETS[gadget]
    path = kit.write(tmp_path / "m.pt", kit.checkpoint_with(payload))
    with pytest.raises(ckpt.CorruptCheckpointError) as info:
        api(path)
    assert words in str(info.value), str(info.value)


def test_build_on_allowed_global_ref_is_refused(tmp_path: Path) -> None:
    """A7: allowing a name lets it be referenced and called as data, never mutated into a gadget."""
    payload = glob("numpy", "prod") + EMPTY_DICT + ustr("a") + ustr("os") + SETITEM + BUILD
    path = kit.write(tmp_path / "m.pt", kit.checkpoint_with(payload))
    with pytest.raises(ckpt.CorruptCheckpointError, match="BUILD on a GlobalRef"):
        ckpt.open(path, allow=["numpy.prod"])


def test_build_on_allowed_inert_object_records_state(tmp_path: Path) -> None:
    # a class no profile knows (argparse.Namespace has a profile and comes back as a Record)
    payload = glob("mytrainer.config", "Config") + EMPTY_TUPLE + REDUCE + EMPTY_DICT + ustr("lr") + binint(1) + SETITEM + BUILD
    path = kit.write(tmp_path / "m.pt", kit.checkpoint_with(payload))
    with ckpt.open(path, allow=["mytrainer.config.Config"]) as ck:
        obj = ck.root["x"]
    assert type(obj) is InertObject and obj.state == {"lr": 1}




@pytest.mark.parametrize("attr", ["keys", "items", "get"])
def test_build_cannot_shadow_ordered_dict_methods(tmp_path: Path, attr: str) -> None:
    """torch allows it too (``inst.__dict__.update(state)``), but a state dict whose ``keys`` is a
    string breaks every consumer, starting with ckpt's own summary."""
    payload = OD + EMPTY_DICT + ustr(attr) + ustr("x") + SETITEM + BUILD
    path = kit.write(tmp_path / "m.pt", kit.checkpoint_with(payload))
    for api in (lambda: ckpt.inspect(path), lambda: ckpt.open(path), lambda: ckpt.load(path, as_="numpy")):
        with pytest.raises(ckpt.CorruptCheckpointError):
            api()


def test_cli_survives_shadowed_ordered_dict_methods(tmp_path: Path) -> None:
    payload = OD + EMPTY_DICT + ustr("keys") + ustr("x") + SETITEM + BUILD
    path = kit.write(tmp_path / "m.pt", kit.checkpoint_with(payload))
    proc = kit.run_cli("inspect", str(path))
    assert "Traceback" not in proc.stderr and proc.returncode in (0, 2), proc.stderr[-500:]


def test_ordered_dict_metadata_build_is_accepted(tmp_path: Path) -> None:
    """What torch writes for module state dicts: BUILD {'_metadata': OrderedDict(...)} on the OrderedDict."""
    payload = OD + EMPTY_DICT + ustr("_metadata") + OD + SETITEM + BUILD
    path = kit.write(tmp_path / "m.pt", kit.checkpoint_with(payload))
    with ckpt.open(path) as ck:
        assert ck.root["x"]._metadata == {}


# -- malformed globals and opcodes ---------------------------------------------------------------

MALFORMED: dict[str, tuple[bytes, type, str]] = {
    "STACK_GLOBAL-int-operands": (binint(1) + binint(2) + kit.STACK_GLOBAL, ckpt.CorruptCheckpointError, "strings"),
    "STACK_GLOBAL-bytes-operands": (b"C\x02os" + b"C\x06system" + kit.STACK_GLOBAL, ckpt.CorruptCheckpointError,
                                    "strings"),
    "STACK_GLOBAL-list-operand": (EMPTY_LIST + ustr("system") + kit.STACK_GLOBAL, ckpt.CorruptCheckpointError,
                                  "strings"),
    "STACK_GLOBAL-empty-stack": (MARK + kit.STACK_GLOBAL, ckpt.CorruptCheckpointError, "unbalanced"),
    "GLOBAL-not-utf8": (b"c\xff\xfe\nsystem\n", ckpt.CorruptCheckpointError, "not valid text"),
    "GLOBAL-no-newline": (b"cos system", ckpt.CorruptCheckpointError, "GLOBAL"),
    "INST-not-ascii": (MARK + "iös\nsystem\n".encode(), ckpt.CorruptCheckpointError, "not valid text"),
    "unknown-opcode": (b"\xff", ckpt.CorruptCheckpointError, "unknown pickle opcode 0xff"),
    "out-of-band-buffer": (b"\x97", ckpt.UnsupportedFormatError, "out-of-band"),
    "text-persistent-id": (b"P0\n", ckpt.CorruptCheckpointError, "persistent id"),
    "memo-get-before-put": (binget(7), ckpt.CorruptCheckpointError, "memo key 7"),
    "pop-mark-without-mark": (b"1", ckpt.CorruptCheckpointError, "unbalanced"),
    "reduce-on-empty-stack": (MARK + REDUCE, ckpt.CorruptCheckpointError, "unbalanced"),
}


@pytest.mark.parametrize("api", API_PARAMS + [pytest.param(lambda p, **kw: ckpt.inspect(p), id="inspect")])
@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_pickle(tmp_path: Path, case: str, api: Callable[..., Any]) -> None:
    payload, exc, words = MALFORMED[case]
    path = kit.write(tmp_path / "m.pt", kit.checkpoint_with(payload))
    with pytest.raises(exc) as info:
        api(path)
    assert words in str(info.value)


# -- type confusion --------------------------------------------------------------------------------


def _pid(kind: bytes = b"", stype: bytes = b"", key: bytes = b"", loc: bytes = b"", numel: bytes = b"") -> bytes:
    return tup(kind or ustr("storage"), stype or glob("torch", "FloatStorage"), key or ustr("0"),
               loc or ustr("cpu"), numel or binint(3)) + kit.BINPERSID


def _v2(storage: bytes, offset: bytes, size: bytes, stride: bytes) -> bytes:
    return glob("torch._utils", "_rebuild_tensor_v2") + tup(storage, offset, size, stride, kit.NEWFALSE, OD) + REDUCE


P = kit.pid("0")

TYPE_CONFUSION: dict[str, tuple[bytes, str]] = {
    "SETITEM-on-tensor": (TENSOR + ustr("a") + ustr("b") + SETITEM, "SETITEM on a"),
    "SETITEMS-on-tuple": (EMPTY_TUPLE + MARK + ustr("a") + ustr("b") + kit.SETITEMS, "SETITEM on a tuple"),
    "SETITEM-on-str": (ustr("s") + ustr("a") + ustr("b") + SETITEM, "SETITEM on a str"),
    "SETITEM-on-storage": (P + ustr("a") + ustr("b") + SETITEM, "SETITEM on a"),
    "SETITEM-unhashable-key": (EMPTY_DICT + EMPTY_LIST + NONE + SETITEM, "cannot be a dict key"),
    "APPEND-on-tensor": (TENSOR + ustr("a") + APPEND, "APPEND to a"),
    "APPEND-on-tuple": (EMPTY_TUPLE + ustr("a") + APPEND, "APPEND to a tuple"),
    "APPENDS-on-dict": (EMPTY_DICT + MARK + ustr("a") + b"e", "APPEND to a dict"),
    "APPEND-on-str": (ustr("s") + ustr("a") + APPEND, "APPEND to a str"),
    "ADDITEMS-on-list": (EMPTY_LIST + MARK + binint(1) + b"\x90", "ADDITEMS to a list"),
    "BUILD-on-str": (ustr("s") + EMPTY_DICT + BUILD, "BUILD on a str"),
    "BUILD-on-tuple": (EMPTY_TUPLE + EMPTY_DICT + BUILD, "BUILD on a tuple"),
    "REDUCE-on-str": (ustr("os.system") + tup(ustr("x")) + REDUCE, "not callable"),
    "REDUCE-on-int": (binint(5) + EMPTY_TUPLE + REDUCE, "not callable"),
    "REDUCE-on-tensor": (TENSOR + EMPTY_TUPLE + REDUCE, "not callable"),
    "REDUCE-on-dtype": (glob("torch", "float32") + EMPTY_TUPLE + REDUCE, "not callable"),
    "REDUCE-on-storage-class": (glob("torch", "FloatStorage") + EMPTY_TUPLE + REDUCE, "not callable"),
    "REDUCE-args-not-tuple": (glob("collections", "OrderedDict") + EMPTY_LIST + REDUCE, "must be a tuple"),
    "pid-int": (binint(5) + kit.BINPERSID, "5-tuple"),
    "pid-str": (ustr("0") + kit.BINPERSID, "5-tuple"),
    "pid-3-tuple": (tup(ustr("storage"), glob("torch", "FloatStorage"), ustr("0")) + kit.BINPERSID, "5-tuple"),
    "pid-legacy-6-tuple": (tup(ustr("storage"), glob("torch", "FloatStorage"), ustr("0"), ustr("cpu"),
                               binint(3), NONE) + kit.BINPERSID, "5-tuple"),
    "pid-kind-module": (_pid(kind=ustr("module")), "persistent id kind"),
    "pid-kind-not-str": (_pid(kind=binint(1)), "persistent id kind"),
    "pid-type-is-dtype": (_pid(stype=glob("torch", "float32")), "not a torch storage class"),
    "pid-type-is-str": (_pid(stype=ustr("FloatStorage")), "not a torch storage class"),
    "pid-type-is-constructor": (_pid(stype=glob("collections", "OrderedDict")), "not a torch storage class"),
    "pid-type-is-tensor-class": (_pid(stype=glob("torch", "FloatTensor")), "not a torch storage class"),
    "pid-key-int": (_pid(key=binint(0)), "malformed key"),
    "pid-key-path-traversal": (_pid(key=ustr("../data.pkl")), "no record"),
    "pid-numel-str": (_pid(numel=ustr("3")), "malformed"),
    "pid-numel-float": (_pid(numel=b"G" + bytes.fromhex("4008000000000000")), "malformed"),
    "pid-numel-bool": (_pid(numel=kit.NEWTRUE), "malformed"),
    "pid-numel-negative": (_pid(numel=binint(-3)), "invalid size"),
    "pid-location-control-chars": (_pid(loc=ustr("cpu\x1b[2J")), "invalid size or location"),
    "storage-declared-twice-different-type": (kit.pid("0", storage="IntStorage"), "declared twice"),
    "storage-declared-twice-different-size": (kit.pid("0", storage="ByteStorage", numel=12), "declared twice"),
    "storage-declared-twice-untyped": (kit.pid("0", module="torch.storage", storage="UntypedStorage", numel=12),
                                       "declared twice"),
    "storage-declared-twice-different-device": (kit.pid("0", location="cuda:0"), "declared twice"),
    "numel-disagrees-with-record": (kit.pid("0", numel=4), "record holds 12 bytes"),
    "view-past-end": (_v2(P, binint(0), int_tuple((4,)), int_tuple((1,))), "out of bounds"),
    "view-offset-past-end": (_v2(P, binint(1), int_tuple((3,)), int_tuple((1,))), "out of bounds"),
    "view-stride-past-end": (_v2(P, binint(0), int_tuple((2,)), int_tuple((3,))), "out of bounds"),
    "view-2d-past-end": (_v2(P, binint(0), int_tuple((2, 2)), int_tuple((2, 1))), "out of bounds"),
    "empty-view-offset-far-past-end": (_v2(P, binint(2**62), int_tuple((0,)), int_tuple((1,))), "out of bounds"),
    "negative-size": (_v2(P, binint(0), int_tuple((-1,)), int_tuple((1,))), "negative"),
    "negative-stride": (_v2(P, binint(2), int_tuple((3,)), int_tuple((-1,))), "negative"),
    "negative-offset": (_v2(P, binint(-1), int_tuple((1,)), int_tuple((1,))), "negative"),
    "size-and-stride-lengths-differ": (_v2(P, binint(0), int_tuple((3,)), int_tuple((1, 1))), "sizes but"),
    "size-is-str": (_v2(P, binint(0), ustr("abc"), int_tuple((1,))), "tuple of ints"),
    "size-holds-float": (_v2(P, binint(0), tup(b"G" + bytes.fromhex("4008000000000000")), int_tuple((1,))),
                         "float"),
    "size-holds-bool": (_v2(P, binint(0), tup(kit.NEWTRUE), int_tuple((1,))), "bool"),
    "offset-is-str": (_v2(P, ustr("0"), int_tuple((3,)), int_tuple((1,))), "offset must be an int"),
    "storage-arg-is-str": (_v2(ustr("x"), binint(0), int_tuple((3,)), int_tuple((1,))), "not a storage"),
    "storage-arg-is-tensor": (_v2(TENSOR, binint(0), int_tuple((3,)), int_tuple((1,))), "not a storage"),
    "requires-grad-not-bool": (glob("torch._utils", "_rebuild_tensor_v2") + tup(
        P, binint(0), int_tuple((3,)), int_tuple((1,)), binint(1), OD) + REDUCE, "bool"),
    "rebuild-without-arguments": (glob("torch._utils", "_rebuild_tensor_v2") + EMPTY_TUPLE + REDUCE, "bad arguments"),
    "rebuild-v3-dtype-not-dtype": (glob("torch._utils", "_rebuild_tensor_v3") + tup(
        P, binint(0), int_tuple((3,)), int_tuple((1,)), kit.NEWFALSE, OD, ustr("evil")) + REDUCE, "not a dtype"),
    "parameter-of-non-tensor": (glob("torch._utils", "_rebuild_parameter") + tup(ustr("x"), kit.NEWTRUE, OD)
                                + REDUCE, "expected a tensor"),
    "tensor-metadata-other-bits": (glob("torch._utils", "_rebuild_tensor_v2") + tup(
        P, binint(0), int_tuple((3,)), int_tuple((1,)), kit.NEWFALSE, OD,
        EMPTY_DICT + ustr("evil") + kit.NEWTRUE + SETITEM) + REDUCE, "conj and neg"),
    "absurd-size-2**62-x-2**62": (_v2(P, binint(0), int_tuple((2**62, 2**62)), int_tuple((0, 0))), ""),
    "absurd-size-2**62-float32": (_v2(P, binint(0), int_tuple((2**62,)), int_tuple((0,))), ""),
    "absurd-size-2**100": (_v2(P, binint(0), int_tuple((2**100,)), int_tuple((0,))), ""),
}


TC_APIS = {
    "open": lambda p: ckpt.open(p),
    "inspect": lambda p: ckpt.inspect(p),
    "load-numpy": lambda p: ckpt.load(p, as_="numpy"),
    "load-numpy-mmap": lambda p: ckpt.load(p, as_="numpy", mmap=True),
    "load": lambda p: ckpt.load(p),
    "load-mmap": lambda p: ckpt.load(p, mmap=True),
}


def _tc_params() -> list[Any]:
    out = []
    for case in TYPE_CONFUSION:
        for api in TC_APIS:
            marks = []
            if api.startswith("load") and not api.startswith("load-numpy"):
                marks.append(needs_torch)
            out.append(pytest.param(case, api, id=f"{case}-{api}", marks=marks))
    return out


@pytest.mark.parametrize("case,api", _tc_params())
def test_type_confusion_is_a_clean_error(tmp_path: Path, case: str, api: str) -> None:
    payload, words = TYPE_CONFUSION[case]
    path = kit.write(tmp_path / "m.pt", kit.checkpoint_with(payload))
    with pytest.raises(ckpt.CorruptCheckpointError) as info:
        TC_APIS[api](path)
    assert words in str(info.value), str(info.value)
    assert str(path) in str(info.value)


# -- verdicts --------------------------------------------------------------------------------------


@pytest.mark.parametrize("qualname,name,verdict", [
    ("pathlib.os.system", "os.system", "dangerous"),
    ("numpy.testing.os.popen", "os.popen", "dangerous"),
    ("collections.OrderedDict.__init__.__globals__", "OrderedDict.__init__.__globals__", "dangerous"),
    ("builtins.object.__subclasses__", "object.__subclasses__", "dangerous"),
    ("argparse.Namespace", "Namespace", "unknown"),
    ("mypkg.io.Reader", "Reader", "unknown"),  # module paths are not walked: no false positive on "io"
    ("mypkg.Outer.Inner", "Outer.Inner", "unknown"),  # a nested class is only unknown
])
def test_verdicts_for_dotted_names(qualname: str, name: str, verdict: str) -> None:
    from ckpt.verdicts import verdict_for

    assert verdict_for(qualname, name)[0] == verdict
