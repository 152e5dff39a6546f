"""``ckpt.pickle_span.pickle_end``: where a pickle in a stream ends, found without running it."""

from __future__ import annotations

import io
import pickle
import pickletools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ckpt
import ckpt.pickle_span as ps
from ckpt.pickle_span import LINE, LINE2, pickle_end
from ckpt.zipread import RangedFile


def test_the_opcode_table_is_pickletools_table():
    """Every opcode of protocols 0-5, with the argument layout pickletools gives it."""
    layouts = {
        pickletools.UP_TO_NEWLINE: LINE,
        pickletools.TAKEN_FROM_ARGUMENT1: ("len", 1, False),
        pickletools.TAKEN_FROM_ARGUMENT4: ("len", 4, True),
        pickletools.TAKEN_FROM_ARGUMENT4U: ("len", 4, False),
        pickletools.TAKEN_FROM_ARGUMENT8U: ("len", 8, False),
    }
    want = {}
    for op in pickletools.opcodes:
        arg = op.arg
        layout = 0 if arg is None else (arg.n if arg.n >= 0 else layouts[arg.n])
        if op.name in ("GLOBAL", "INST"):
            layout = LINE2
        want[op.code.encode("latin-1")[0]] = layout
    assert ps._ARGS == want


values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text() | st.binary(),
    lambda inner: st.lists(inner, max_size=4) | st.tuples(inner, inner)
    | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None)
@given(objs=st.lists(values, min_size=1, max_size=4), proto=st.integers(0, 5), chunk=st.sampled_from([1, 7, 64, 1 << 16]))
def test_ends_where_pickletools_ends(objs, proto, chunk):
    data = b"".join(pickle.dumps(o, protocol=proto) for o in objs) + b"raw storage bytes"
    f = io.BytesIO(data)
    expected = []
    for _ in objs:
        for _op in pickletools.genops(f):
            pass
        expected.append(f.tell())
    old = ps._FIRST_CHUNK
    ps._FIRST_CHUNK = chunk
    try:
        source = RangedFile.from_bytes(data)
        got, pos = [], 0
        for _ in objs:
            pos = pickle_end(source, pos)
            got.append(pos)
    finally:
        ps._FIRST_CHUNK = old
    assert got == expected


def test_long_strings_are_skipped_not_held():
    data = pickle.dumps(["x" * 300_000, b"y" * 200_000], protocol=4) + b"tail"
    assert pickle_end(RangedFile.from_bytes(data), 0) == len(data) - 4


@pytest.mark.parametrize("data, words", [
    (pickle.dumps([1, 2, 3], protocol=2)[:-3], "runs past the end"),
    (b"\x80\x02X\xff\xff\x00\x00abc.", "declares 65,535 bytes"),
    (b"\x80\x02\xff.", "unknown opcode 0xff"),
    (b"T\xff\xff\xff\xffabc.", "negative length"),
    (b"cos\nsys", "runs past the end"),
    (b"", "runs past the end"),
])
def test_damaged_pickles(data, words):
    with pytest.raises(ckpt.CorruptCheckpointError, match=words):
        pickle_end(RangedFile.from_bytes(data), 0)


def test_limit():
    data = pickle.dumps(list(range(10_000)), protocol=2)
    with pytest.raises(ckpt.ResourceLimitError, match="longer than 1,000 bytes"):
        pickle_end(RangedFile.from_bytes(data), 0, limit=1000)
    assert pickle_end(RangedFile.from_bytes(data), 0, limit=len(data)) == len(data)


def test_nothing_is_run(tmp_path):
    marker = tmp_path / "MARKER"
    data = b"cposix\nsystem\n(V touch " + str(marker).encode() + b"\ntR."
    assert pickle_end(RangedFile.from_bytes(data), 0) == len(data)
    assert not marker.exists()
