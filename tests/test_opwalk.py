"""The static opcode walker (ckpt.opwalk): CPython's resolution semantics, bad input, and the fast path.

The fast path (torch's tensor records decoded in one step) must change speed, never results: the
walk with and without it is compared on every fixture, on checkpoints torch writes here (every
size/stride/key/memo width the record regex distinguishes), and on thousands of corrupted copies.
"""

from __future__ import annotations

import functools
import pickle
import pickletools
import struct
import zipfile
from collections import Counter, OrderedDict
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ckpt.opwalk import Alt, Made, Ref, Sym, iter_walks, walk

import scan_kit as K

REPO = Path(__file__).resolve().parent.parent


def canon(v: Any) -> Any:
    t = type(v)
    if t is Ref:
        return ("ref", v.module, v.name, v.offset, v.opcode)
    if t is Made:
        return ("made", canon(v.origin))
    if t is tuple or t is Alt:
        return (t.__name__, *(canon(x) for x in v))
    if t is Sym:
        return ("sym", v.name)
    return (t.__name__, v)


def summary(w: Any) -> dict[str, Any]:
    """Everything a walk produces, symbolic values made comparable."""
    return {
        "end": w.end, "error": w.error, "error_offset": w.error_offset, "protocol": w.protocol,
        "globals": {k: vars(v) for k, v in w.globals.items()},
        "events": [vars(e) for e in w.events], "pids": [canon(p) for p in w.pids],
        "literals": list(w.literals), "root": canon(w.root),
        "memo": None if w.memo is None else {k: canon(v) for k, v in w.memo.items()},
    }


def both(data: bytes, start: int = 0) -> dict[str, Any]:
    fast = summary(walk(data, start, fast=True, keep_memo=True))
    slow = summary(walk(data, start, fast=False, keep_memo=True))
    assert fast == slow
    return fast


def data_pkl(path: Path) -> bytes:
    with zipfile.ZipFile(path) as z:
        name = next(n for n in z.namelist() if n.endswith("/data.pkl"))
        info = z.getinfo(name)
        with z.open(info) as f:
            f._expected_crc = None  # type: ignore[attr-defined]  # no_crc.pt is saved without CRCs
            return f.read()


FIXTURES = sorted((REPO / "tests" / "fixtures").glob("*.pt")) + [REPO / "examples" / "sample.pt"]


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.name)
def test_fast_path_equals_slow_walk_on_fixtures(path: Path) -> None:
    s = both(data_pkl(path))
    assert s["error"] is None


def _torch_pickle(tmp_path: Path, obj: Any) -> bytes:
    torch = pytest.importorskip("torch")
    p = tmp_path / "t.pt"
    torch.save(obj, p)
    return data_pkl(p)


def test_fast_path_equals_slow_walk_on_torch_layouts(tmp_path: Path) -> None:
    """Hundreds of tensors (so the memo passes 256 and LONG_BINPUT/LONG_BINGET appear) of every rank,
    size width (BININT1/2/4), stride, offset, requires_grad, shared storage and key length."""
    torch = pytest.importorskip("torch")
    sd: OrderedDict[str, Any] = OrderedDict()
    base = torch.arange(70000, dtype=torch.float32)
    for i in range(400):
        kind = i % 8
        if kind == 0:
            t = torch.zeros(i % 5 + 1)
        elif kind == 1:
            t = torch.zeros(3, 300)
        elif kind == 2:
            t = torch.zeros(2, 3, 4, 5)  # a marked tuple (MARK ... TUPLE)
        elif kind == 3:
            t = base[i : i + 10]  # a view with an offset into a shared storage
        elif kind == 4:
            t = torch.tensor(1.5)  # 0-d: empty size tuple
        elif kind == 5:
            t = base  # 70000 elements: a BININT size
        elif kind == 6:
            t = torch.zeros(4, 3).t()  # non-contiguous strides
        else:
            t = torch.nn.Parameter(torch.zeros(2))
        sd[f"block.{i}.w{'x' * (i % 7)}"] = t
    data = _torch_pickle(tmp_path, sd)
    s = both(data)
    assert s["error"] is None and len(s["pids"]) > 300  # the same tensor object is pickled once


SHAPES = [(), (3,), (2, 3), (2, 3, 4), (2, 3, 4, 5), (300,), (70000,)]


@pytest.mark.parametrize("shape", SHAPES)
def test_fast_path_is_taken(shape: tuple[int, ...]) -> None:
    """The fast path really decodes records of every layout (it is not silently disabled), with
    the same result as the opcode loop."""
    data, _ = K.state_dict_pickle(300, shape=shape)
    import ckpt.tensor_records as tr

    calls = 0
    original = tr.RecordShape.__init__

    def counting(self: Any, m: Any) -> None:
        nonlocal calls
        calls += 1
        original(self, m)

    tr.RecordShape.__init__ = counting  # type: ignore[method-assign]
    try:
        walk(data)
    finally:
        tr.RecordShape.__init__ = original  # type: ignore[method-assign]
    assert calls >= 1
    assert len(both(data)["pids"]) == 300


@functools.lru_cache(maxsize=None)
def _kit_pickle(shape: tuple[int, ...]) -> bytes:
    return K.state_dict_pickle(60, shape=shape)[0]  # 60 records: the memo passes 256 (LONG_BINPUT)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fast_path_equals_slow_walk_on_corrupted_records(data: st.DataObject) -> None:
    """Flip, insert or delete bytes anywhere in a torch-style pickle: both walks agree exactly
    (same globals, events, memo, error and offset)."""
    base = _kit_pickle(data.draw(st.sampled_from(SHAPES)))
    both(K.corrupted(base, data))


def test_state_dict_kit_takes_the_fast_path() -> None:
    data, _ = K.state_dict_pickle(300)
    s = both(data)
    assert s["error"] is None and len(s["pids"]) == 300


SAMPLES: list[Any] = [
    None, True, 1, -5, 1 << 70, 1.5, "text", "ünïcode", b"bytes", bytearray(b"ba"), (1, (2, 3)), [1, [2]],
    {"a": {"b": [1, 2]}}, {1, 2}, frozenset({3}), OrderedDict(a=1), Counter("aab"), complex(1, 2),
    [list(range(300)), {str(i): i for i in range(300)}],
]


@pytest.mark.parametrize("protocol", range(6))
def test_every_protocol_walks_whole(protocol: int) -> None:
    for obj in SAMPLES:
        data = pickle.dumps(obj, protocol=protocol)
        w = walk(data)
        assert w.error is None and w.end == len(data), (obj, w.error)
        both(data)


@pytest.mark.parametrize("protocol", range(6))
def test_globals_match_pickletools(protocol: int) -> None:
    """For GLOBAL/INST (literal names), the walker and pickletools agree."""
    data = pickle.dumps([OrderedDict(a=1), Counter("x"), {1}, complex(1, 2)], protocol=protocol)
    expected = set()
    for op, arg, _ in pickletools.genops(data):
        if op.name in ("GLOBAL", "INST"):
            expected.add(tuple(arg.split(" ", 1)))
    found = {k for k, v in walk(data).globals.items() if set(v.opcodes) & {"GLOBAL", "INST"}}
    assert found == expected


def test_every_truncation_is_an_error_not_a_crash() -> None:
    data = pickle.dumps(SAMPLES[:-1], protocol=2)
    for cut in range(len(data)):
        w = walk(data[:cut])
        assert w.error is not None and w.error_offset is not None and w.error_offset <= cut


def test_walk_never_raises_on_random_bytes() -> None:
    import random

    rng = random.Random(7)
    for _ in range(3000):
        blob = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
        walk(blob)
        walk(b"\x80\x04" + blob)


def test_memoize_counts_entries_not_opcodes() -> None:
    data = K.proto(4) + K.u("a") + b"r\x09\x00\x00\x00" + K.u("b") + K.MEMOIZE + K.POP + K.POP + K.binget(1) + K.STOP
    w = walk(data, keep_memo=True)
    assert w.memo == {9: "a", 1: "b"} and w.root == "b"


def test_pop_on_an_empty_frame_pops_the_mark() -> None:
    data = K.proto(4) + K.u("x") + K.MARK + K.POP + K.u("y") + K.TUPLE2 + K.STOP
    assert walk(data).root == ("x", "y")


def test_stack_global_cannot_cross_a_mark() -> None:
    data = K.proto(4) + K.u("os") + K.MARK + K.u("system") + K.STACK_GLOBAL + K.STOP
    w = walk(data)
    assert w.error is not None and not w.globals


def test_stop_needs_a_value_in_the_current_frame() -> None:
    assert walk(K.proto(2) + K.NONE + K.MARK + K.STOP).error is not None


def test_unknown_opcode_and_protocol() -> None:
    assert "unknown opcode" in walk(b"\x80\x02\xff.").error
    assert "protocol 6" in walk(b"\x80\x06N.").error


def test_iter_walks_follows_consecutive_pickles() -> None:
    data = pickle.dumps(1) + pickle.dumps([2]) + b"\xff"
    walks = list(iter_walks(data))
    assert [w.error is None for w in walks] == [True, True, False]


def test_legacy_magic_number_is_read_exactly() -> None:
    assert walk(pickle.dumps(K.LEGACY_MAGIC, protocol=2)).root == K.LEGACY_MAGIC


def test_binput_on_empty_stack_is_an_error() -> None:
    w = walk(b"\x80\x02q\x00.")
    assert "BINPUT" in w.error and w.error_offset == 2
