"""Pickles that try to exhaust memory, time or the C stack.

Huge declared lengths, absurd memo indices, thousands of nested MARKs, structures a million levels
deep (CPython's own C unpickler segfaults hashing a million-deep tuple used as a dict key),
"billion laughs" sharing, reference cycles, trailing bytes and unknown protocols. Everything that
could crash or hang runs in a child process with a timeout, so a segfault or a hang fails the test
instead of killing or blocking pytest.
"""

from __future__ import annotations

import json
import struct
import subprocess
import time
import tracemalloc
from pathlib import Path
from typing import Any, Callable

import pytest
from click.testing import CliRunner

import ckpt
from ckpt.walk import walk
from ckpt_cli.main import cli

try:
    from . import adversarial_kit as kit
except ImportError:
    import adversarial_kit as kit

needs_torch = pytest.mark.skipif(not kit.HAVE_TORCH, reason="needs torch")

glob, tup, ustr, binint, binput, binget = kit.glob, kit.tup, kit.ustr, kit.binint, kit.binput, kit.binget
REDUCE, BUILD, POP, MARK, APPEND, SETITEM = kit.REDUCE, kit.BUILD, kit.POP, kit.MARK, kit.APPEND, kit.SETITEM
EMPTY_DICT, EMPTY_LIST, EMPTY_TUPLE, NONE = kit.EMPTY_DICT, kit.EMPTY_LIST, kit.EMPTY_TUPLE, kit.NONE
MILLION = 1_000_000

APIS: dict[str, Callable[[Path], Any]] = {
    "open": lambda p: ckpt.open(p),
    "inspect": lambda p: ckpt.inspect(p),
    "load-numpy": lambda p: ckpt.load(p, as_="numpy"),
}
if kit.HAVE_TORCH:
    APIS["load"] = lambda p: ckpt.load(p)


def write_with(tmp_path: Path, payload: bytes, name: str = "m.pt", protocol: int = 2) -> Path:
    return kit.write(tmp_path / name, kit.checkpoint_with(payload, protocol=protocol))


# -- huge declared lengths -----------------------------------------------------------------------

U32 = lambda n: struct.pack("<I", n)  # noqa: E731
U64 = lambda n: struct.pack("<Q", n)  # noqa: E731
I32 = lambda n: struct.pack("<i", n)  # noqa: E731

HUGE_LENGTHS: dict[str, tuple[bytes, str]] = {
    "BINUNICODE-4GiB": (b"X" + U32(0xFFFFFFF0) + b"abc", "remain"),
    "BINBYTES-4GiB": (b"B" + U32(0xFFFFFFF0) + b"abc", "remain"),
    "BINBYTES8-2**63": (b"\x8e" + U64(2**63) + b"abc", "remain"),
    "BINUNICODE8-2**64-1": (b"\x8d" + U64(2**64 - 1) + b"abc", "remain"),
    "BYTEARRAY8-2**64-1": (b"\x96" + U64(2**64 - 1) + b"abc", "past the end"),
    "LONG4-2**31-1": (b"\x8b" + I32(2**31 - 1) + b"abc", "past the end"),
    "LONG4-negative": (b"\x8b" + I32(-5) + b"abc", "past the end"),
    "BINSTRING-negative": (b"T" + I32(-5) + b"abc", "negative"),
    "BINSTRING-2GiB": (b"T" + I32(2**31 - 1) + b"abc", "past the end"),
    "SHORT_BINUNICODE-past-end": (b"\x8c\xff" + b"abc", "past the end"),
    "FRAME-2**64-1": (b"\x95" + U64(2**64 - 1) + NONE, "remain"),
    "LONG1-past-end": (b"\x8a\xff" + b"\x01", "past the end"),
}


@pytest.mark.parametrize("api", list(APIS))
@pytest.mark.parametrize("case", list(HUGE_LENGTHS))
def test_huge_declared_length_is_refused_without_allocating(tmp_path: Path, case: str, api: str) -> None:
    payload, words = HUGE_LENGTHS[case]
    path = write_with(tmp_path, payload)
    tracemalloc.start()
    t0 = time.process_time()
    try:
        with pytest.raises(ckpt.CorruptCheckpointError) as info:
            APIS[api](path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert words in str(info.value)
    assert time.process_time() - t0 < kit.CPU_SECONDS_BOUND
    assert peak < 16 << 20, f"peak {peak >> 20} MiB"


def test_long_binput_max_index_is_a_sparse_memo(tmp_path: Path) -> None:
    """LONG_BINPUT 0xFFFFFFFF must not size a memo array by the index."""
    payload = NONE + b"r" + struct.pack("<I", 0xFFFFFFFF) + POP + b"j" + struct.pack("<I", 0xFFFFFFFF)
    path = write_with(tmp_path, payload)
    tracemalloc.start()
    try:
        with ckpt.open(path) as ck:
            assert ck.root["x"] is None
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20


@pytest.mark.parametrize("payload,words", [
    (b"j" + struct.pack("<I", 0xFFFFFFFF), "memo key 4294967295"),
    (NONE + b"p-1\n", "negative PUT"),
    (NONE + b"p" + b"9" * 5000 + b"\n", "malformed"),
    (b"g12\n", "memo key 12"),
    (b"I" + b"9" * 100_000 + b"\n", "malformed"),
], ids=["LONG_BINGET-unset", "PUT-negative", "PUT-5000-digits", "GET-unset", "INT-100000-digits"])
def test_bad_memo_and_text_numbers(tmp_path: Path, payload: bytes, words: str) -> None:
    path = write_with(tmp_path, payload)
    for api in APIS.values():
        with pytest.raises(ckpt.CorruptCheckpointError, match=words):
            api(path)


# -- nesting -----------------------------------------------------------------------------------------


def test_ten_thousand_nested_marks(tmp_path: Path) -> None:
    """MARK ... TUPLE nested 10,000 deep: a legal (if silly) tuple; nothing recurses on it."""
    path = write_with(tmp_path, MARK * 10_000 + NONE + kit.TUPLE * 10_000)
    with ckpt.open(path) as ck:
        depth, value = 0, ck.root["x"]
        while type(value) is tuple and value:
            depth, value = depth + 1, value[0]
        assert depth == 10_000
    summary = ckpt.inspect(path)
    assert summary.elided and summary.tensors[0].path == "w"
    arrays = ckpt.load(path, as_="numpy")
    assert arrays["w"].tolist() == [1.0, 2.0, 3.0]


@pytest.mark.parametrize("payload", [MARK * 10_000 + NONE, MARK * 5 + kit.TUPLE * 6, b"1" * 3],
                         ids=["unclosed-marks", "more-closes-than-marks", "pop-mark-empty"])
def test_unbalanced_marks(tmp_path: Path, payload: bytes) -> None:
    path = write_with(tmp_path, payload)
    for api in APIS.values():
        with pytest.raises(ckpt.CorruptCheckpointError):
            api(path)


DEEP_CHILD = r'''
import sys, time
import ckpt
path = sys.argv[1]
t0 = time.process_time()
summary = ckpt.inspect(path)
assert summary.tensors[0].path == "w", summary.tensors
assert summary.elided, "a million levels must be elided from the summary"
print("inspect", round(time.process_time() - t0, 2), len(summary.elided))
with ckpt.open(path) as ck:
    x = ck.root["x"]
flavors = sys.argv[2:]
for flavor in flavors:
    out = ckpt.load(path, as_=flavor)
    print("load", flavor, type(out["x"]).__name__)
print("done")
'''


def deep_structures() -> dict[str, bytes]:
    return {
        "list": kit.deep_list(MILLION),
        "tuple": kit.deep_tuple(MILLION),
        "dict": kit.deep_dict(MILLION),
        "ordered-dict": (glob("collections", "OrderedDict") + binput(1) + POP
                         + (binget(1) + EMPTY_TUPLE + REDUCE + ustr("a")) * (MILLION // 4)
                         + EMPTY_DICT + SETITEM * (MILLION // 4)),
        "mark-tuple": MARK * MILLION + NONE + kit.TUPLE * MILLION,
    }


@pytest.mark.parametrize("shape", list(deep_structures()))
def test_million_deep_structure(tmp_path: Path, shape: str) -> None:
    """Opening, inspecting and loading a structure nested a million levels deep neither recurses nor
    crashes (the walk elides below its depth limit); run in a child so a segfault fails the test."""
    path = write_with(tmp_path, deep_structures()[shape])
    flavors = ["numpy"] + (["torch"] if kit.HAVE_TORCH and shape in ("list", "tuple") else [])
    proc = kit.run_child(DEEP_CHILD, str(path), *flavors, timeout=240)
    assert proc.returncode == 0, f"rc {proc.returncode}: {proc.stderr[-3000:]}"
    assert proc.stdout.strip().endswith("done"), proc.stdout
    if shape == "list":  # and the command line, rendering and JSON included
        for extra in ([], ["--json"]):
            cli_proc = kit.run_cli("inspect", *extra, str(path), timeout=240)
            assert cli_proc.returncode == 0, cli_proc.stderr[-2000:]
        assert json.loads(cli_proc.stdout)["elided"]


KEY_CHILD = r'''
import sys
import ckpt
path = sys.argv[1]
apis = {"open": lambda: ckpt.open(path), "inspect": lambda: ckpt.inspect(path),
        "load-numpy": lambda: ckpt.load(path, as_="numpy")}
if len(sys.argv) > 2:
    apis["load"] = lambda: ckpt.load(path)
for name, call in apis.items():
    try:
        call()
        print(name, "NO ERROR")
    except ckpt.CorruptCheckpointError as e:
        print(name, "corrupt", str(e)[-120:])
    except BaseException as e:
        print(name, "WRONG", type(e).__name__, str(e)[:200])
'''


def deep_keys() -> dict[str, bytes]:
    """A million levels for the plain dict key (the case that crashes CPython); 200,000 (still far
    past what C recursion survives) for the other ways a value gets hashed, to keep the suite quick."""
    deep, n = kit.deep_tuple(200_000), 200_000
    return {
        "dict-key": EMPTY_DICT + kit.deep_tuple(MILLION) + NONE + SETITEM,
        "dict-key-via-DICT": MARK + deep + NONE + b"d",
        "set-member": b"\x8f" + MARK + deep + b"\x90",
        "frozenset-member": MARK + deep + b"\x91",
        "OrderedDict-pair": glob("collections", "OrderedDict") + tup(EMPTY_LIST + tup(deep, NONE) + APPEND) + REDUCE,
        "builtins.set-item": glob("builtins", "set") + tup(EMPTY_LIST + deep + APPEND) + REDUCE,
        "Counter-key": glob("collections", "Counter") + tup(EMPTY_DICT + deep + binint(1) + SETITEM) + REDUCE,
        "deep-frozenset-key": EMPTY_DICT + MARK * (n + 1) + b"\x91" * (n + 1) + NONE + SETITEM,
    }


@pytest.mark.parametrize("shape", list(deep_keys()))
def test_million_deep_tuple_as_key_is_a_clean_error(tmp_path: Path, shape: str) -> None:
    """Hashing a tuple recurses in C without a guard: CPython's C unpickler segfaults on this.
    ckpt must refuse it before hashing, from every entry point."""
    path = write_with(tmp_path, deep_keys()[shape])
    args = [str(path)] + (["torch"] if kit.HAVE_TORCH and shape == "dict-key" else [])
    proc = kit.run_child(KEY_CHILD, *args, timeout=240)
    assert proc.returncode == 0, f"child died (rc {proc.returncode}): {proc.stderr[-2000:]}"
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == len(args) + 2, proc.stdout
    for line in lines:
        assert " corrupt " in line and "nested deeper" in line, line


# -- billion laughs ----------------------------------------------------------------------------------

LAUGHS_CHILD = r'''
import json, sys, time
import ckpt
from ckpt.walk import walk
path = sys.argv[1]
t0 = time.process_time()
summary = ckpt.inspect(path, allow=["evil.Thing"] if "allow" in sys.argv else ())
took = time.process_time() - t0
json.dumps(summary.as_json())
with ckpt.open(path, policy="inspect") as ck:
    events = sum(1 for _ in walk(ck.root))
    tensors = [p for p, _ in ck.tensors()]
print(json.dumps({"seconds": took, "events": events, "tensors": tensors,
                  "findings": [f.name for f in summary.findings]}))
'''


def laughs_cases() -> dict[str, bytes]:
    t = kit.rebuild_v2(kit.pid("0"))
    opt = lambda lr: (EMPTY_DICT + ustr("state") + EMPTY_DICT + SETITEM + ustr("param_groups") + EMPTY_LIST  # noqa: E731
                      + EMPTY_DICT + ustr("params") + EMPTY_LIST + SETITEM + ustr("lr") + lr + SETITEM + APPEND
                      + SETITEM)
    laughs = kit.laughs_list(40, memo_base=100)
    return {
        "shared-lists": laughs,
        "shared-dicts-with-tensor-leaf": kit.laughs_dict(40, leaf=t, memo_base=100),
        "shared-lists-of-tuples": kit.laughs_list(40, leaf=tup(binint(1), binint(2)), memo_base=100),
        "as-arguments-of-an-unknown-global": laughs + POP + glob("evil", "Thing") + tup(binget(140)) + REDUCE,
        "nested-inert-objects": _laughs_inert(),
        "as-optimizer-hyper-parameter": laughs + POP + opt(binget(140)),
        "as-lightning-version": laughs + POP + EMPTY_DICT + ustr("state_dict") + EMPTY_DICT + ustr("a") + t + SETITEM
        + SETITEM + ustr("epoch") + binint(1) + SETITEM + ustr("pytorch-lightning_version") + binget(140) + SETITEM,
    }


def _laughs_inert() -> bytes:
    out = glob("evil", "Thing") + binput(200) + POP + binget(200) + EMPTY_TUPLE + REDUCE + binput(100) + POP
    for i in range(1, 41):
        out += binget(200) + tup(binget(100 + i - 1), binget(100 + i - 1)) + REDUCE + binput(100 + i) + POP
    return out + binget(140)


@pytest.mark.parametrize("case", list(laughs_cases()))
def test_billion_laughs_inspects_in_linear_time(tmp_path: Path, case: str) -> None:
    """40 levels of sharing: 2**40 paths, ~40 objects. Inspect, walk and JSON must visit each
    object once (well under a second), in a child so an exponential walk times out instead of
    hanging the suite."""
    path = write_with(tmp_path, laughs_cases()[case])
    proc = kit.run_child(LAUGHS_CHILD, str(path), timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["seconds"] < kit.CPU_SECONDS_BOUND, out
    assert out["events"] < 1000, out  # linear in the number of objects, not paths
    assert out["tensors"][0] == "w"


@pytest.mark.parametrize("case", ["shared-lists", "shared-dicts-with-tensor-leaf"])
def test_billion_laughs_loads(tmp_path: Path, case: str) -> None:
    path = write_with(tmp_path, laughs_cases()[case])
    out = ckpt.load(path, as_="numpy")
    x = out["x"]
    if case == "shared-lists":
        assert x[0] is x[1]  # sharing kept, not copied 2**40 times
    else:
        assert x["a"] is x["b"]
    if kit.HAVE_TORCH:
        t = ckpt.load(path)["x"]
        assert (t[0] is t[1]) if case == "shared-lists" else (t["a"] is t["b"])


def test_billion_laughs_cli(tmp_path: Path) -> None:
    path = write_with(tmp_path, laughs_cases()["shared-dicts-with-tensor-leaf"])
    proc = kit.run_cli("inspect", "--json", str(path), timeout=60)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["totals"]["tensors"] == 2




@pytest.mark.parametrize("container", ["dict-key", "OrderedDict-key"])
def test_billion_laughs_tuple_as_key_is_refused(tmp_path: Path, container: str) -> None:
    key = kit.laughs_tuple(40, memo_base=100)
    payload = {
        "dict-key": EMPTY_DICT + key + NONE + SETITEM,
        "OrderedDict-key": glob("collections", "OrderedDict") + tup(EMPTY_LIST + tup(key, NONE) + APPEND) + REDUCE,
    }[container]
    path = write_with(tmp_path, payload)
    out = kit.run_limited("ckpt.inspect(path)", path=path, timeout=5)  # today: exponential, times out
    assert out["checkpoint_error"] and out["seconds"] < kit.CPU_SECONDS_BOUND, out


# -- cycles ------------------------------------------------------------------------------------------


def cycles() -> dict[str, bytes]:
    return {
        "list-containing-itself": EMPTY_LIST + binput(100) + binget(100) + APPEND,
        "dict-containing-itself": EMPTY_DICT + binput(100) + ustr("self") + binget(100) + SETITEM,
        "ordered-dict-containing-itself": glob("collections", "OrderedDict") + EMPTY_TUPLE + REDUCE + binput(100)
        + ustr("self") + binget(100) + SETITEM,
        "list-through-tuple": EMPTY_LIST + binput(100) + binget(100) + kit.TUPLE1 + APPEND,
        "two-lists-in-a-ring": EMPTY_LIST + binput(100) + EMPTY_LIST + binput(101) + binget(100) + APPEND + APPEND,
        "dict-value-is-tensor-list-cycle": EMPTY_LIST + binput(100) + kit.rebuild_v2(kit.pid("0")) + APPEND
        + binget(100) + APPEND,
    }


@pytest.mark.parametrize("case", list(cycles()))
def test_reference_cycles_are_legal(tmp_path: Path, case: str) -> None:
    path = write_with(tmp_path, cycles()[case])
    with ckpt.open(path) as ck:
        x = ck.root["x"]
        names = [p for p, _ in ck.tensors()]
        events = list(walk(ck.root))
    assert names[0] == "w" and len(names) <= 2
    assert any(e.kind == "ref" for e in events)
    assert len(events) < 50
    summary = ckpt.inspect(path)
    assert summary.refs
    json.dumps(summary.as_json())
    if case == "list-containing-itself":
        assert x[0] is x
    for flavor in ["numpy"] + (["torch"] if kit.HAVE_TORCH else []):
        loaded = ckpt.load(path, as_=flavor)["x"]
        if case == "list-containing-itself":
            assert loaded[0] is loaded
        elif case == "dict-containing-itself":
            assert loaded["self"] is loaded
    result = CliRunner().invoke(cli, ["inspect", "--json", str(path)])
    assert result.exit_code == 0, result.output
    json.loads(result.stdout)


def test_inert_object_whose_state_contains_itself(tmp_path: Path) -> None:
    payload = (glob("evil", "Thing") + EMPTY_TUPLE + REDUCE + binput(100) + EMPTY_DICT + ustr("me") + binget(100)
               + SETITEM + BUILD)
    path = write_with(tmp_path, payload)
    summary = ckpt.inspect(path)
    assert [f.name for f in summary.findings] == ["evil.Thing"]
    assert summary.refs
    with ckpt.open(path, allow=["evil.Thing"]) as ck:
        obj = ck.root["x"]
        assert obj.state["me"] is obj
        assert "evil.Thing" in repr(obj)


# -- what follows STOP, and unknown protocols -----------------------------------------------------------


def test_bytes_after_stop_are_ambiguous(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    second = kit.pickle_of(glob("os", "system") + tup(ustr(f"touch {marker}")) + REDUCE)
    for tail in (b"\x00", b"junk", second):  # trailing garbage, or a second (stacked) pickle
        path = kit.write(tmp_path / "m.pt", kit.torch_zip(kit.with_tensor(NONE) + tail, kit.BASE_STORAGES))
        for api in APIS.values():
            with pytest.raises(ckpt.CorruptCheckpointError, match="follow the pickle's STOP"):
                api(path)
    assert not marker.exists()


def test_payload_then_corruption_is_never_a_clean_result(tmp_path: Path) -> None:
    """A12: a dangerous call first, then bytes that break parsing. Strict mode stops at the global;
    inspect must not report the file as fine (the finding would be lost with a partial parse)."""
    marker = tmp_path / "PWNED"
    body = kit.with_tensor(glob("os", "system") + tup(ustr(f"touch {marker}")) + REDUCE)
    path = kit.write(tmp_path / "m.pt", kit.torch_zip(body[:-5] + b"\xff\xff", kit.BASE_STORAGES))
    with pytest.raises(ckpt.UnsafeGlobalError):
        ckpt.open(path)
    with pytest.raises(ckpt.CorruptCheckpointError):
        ckpt.inspect(path)
    result = CliRunner().invoke(cli, ["inspect", str(path)])
    assert result.exit_code == 2
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [6, 7, 255])
def test_unknown_pickle_protocol(tmp_path: Path, protocol: int) -> None:
    path = kit.write(tmp_path / "m.pt", kit.torch_zip(kit.proto(protocol) + EMPTY_DICT + kit.STOP, {}))
    for api in APIS.values():
        with pytest.raises(ckpt.UnsupportedFormatError, match=f"protocol {protocol}"):
            api(path)


@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4, 5])
def test_every_known_protocol_is_read(tmp_path: Path, protocol: int) -> None:
    """The other side of the coin: the same checkpoint pickled at each protocol reads the same."""
    import pickle

    data = pickle.dumps({"a": [1, 2.5, "x", (True, None)], "b": {"c": b"raw"}}, protocol=protocol)
    path = kit.write(tmp_path / "m.pt", kit.torch_zip(data, {}))
    with ckpt.open(path) as ck:
        assert ck.root == {"a": [1, 2.5, "x", (True, None)], "b": {"c": b"raw"}}


# -- amplification in the summary -----------------------------------------------------------------------



def test_deep_and_wide_pickle_does_not_amplify_inspect_memory(tmp_path: Path) -> None:
    depth, width = 400, 20_000
    payload = EMPTY_LIST * depth + MARK + (EMPTY_LIST + NONE + APPEND) * width + kit.APPENDS + APPEND * (depth - 1)
    path = write_with(tmp_path, payload)
    assert path.stat().st_size < 200_000
    out = kit.run_limited("ckpt.inspect(path)", path=path, timeout=120)
    assert out["ok"], out
    assert out["rss_growth_kb"] < 30 << 10, out




def test_int_with_more_digits_than_repr_allows(tmp_path: Path) -> None:
    big = b"\x8b" + struct.pack("<i", 3000) + b"\x7f" * 3000  # ~7200 decimal digits
    path = write_with(tmp_path, tup(big, binint(1)))
    try:
        summary = ckpt.inspect(path)
    except ckpt.CheckpointError:
        pass
    else:
        json.dumps(summary.as_json())
    result = CliRunner().invoke(cli, ["inspect", "--json", str(path)])
    assert "Exceeds the limit" not in result.output


ERROR_LAUGHS_CHILD = r'''
import json, sys, time
import ckpt
path = sys.argv[1]
out = {}
for name, call in {"open": lambda: ckpt.open(path), "inspect": lambda: ckpt.inspect(path),
                   "load-numpy": lambda: ckpt.load(path, as_="numpy")}.items():
    t0 = time.process_time()
    try:
        call()
        out[name] = ["ok", 0.0, ""]
    except ckpt.CorruptCheckpointError as e:
        out[name] = ["corrupt", time.process_time() - t0, str(e)]
print(json.dumps(out))
'''


def laughs_in_error_messages() -> dict[str, bytes]:
    laughs = kit.laughs_list(40, memo_base=100) + POP
    lol = binget(140)
    p = kit.pid("0")
    return {
        "layout-name": laughs + glob("torch.serialization", "_get_layout") + tup(lol) + REDUCE,
        "v3-dtype": laughs + glob("torch._utils", "_rebuild_tensor_v3") + tup(
            p, binint(0), kit.int_tuple((3,)), kit.int_tuple((1,)), kit.NEWFALSE, NONE, lol) + REDUCE,
        "meta-tensor-dtype": laughs + glob("torch._utils", "_rebuild_meta_tensor_no_storage") + tup(
            lol, kit.int_tuple((3,)), kit.int_tuple((1,))) + REDUCE,
        "persistent-id-kind": laughs + tup(lol, glob("torch", "FloatStorage"), ustr("0"), ustr("cpu"), binint(3))
        + kit.BINPERSID,
    }


@pytest.mark.parametrize("case", list(laughs_in_error_messages()))
def test_billion_laughs_in_an_error_message(tmp_path: Path, case: str) -> None:
    """Errors quote the offending value; quoting a shared structure must not take 2**40 steps."""
    path = write_with(tmp_path, laughs_in_error_messages()[case])
    proc = kit.run_child(ERROR_LAUGHS_CHILD, str(path), timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for api, (outcome, seconds, message) in out.items():
        assert outcome == "corrupt" and seconds < kit.CPU_SECONDS_BOUND, (api, outcome, seconds)
        assert len(message) < 1000
