"""The byte layouts of torch's tensor records, shared by the pickle interpreter and the static walk.

``torch.save`` pickles every dense tensor of a state dict with the same dozen opcodes; only the
widths of a few operands change (see :func:`tensor_record_regex`). A :class:`RecordShape` is one
such layout, learned from a match of the general regex: a regex with no alternatives and a
``struct`` that reads every operand of a record in one call. An :class:`EntryShape` is a whole
state-dict entry (``BINUNICODE key``, a PUT, then a record of one shape). Both
:mod:`ckpt.pickle_vm` and :mod:`ckpt.opwalk` apply a matched record with exactly the stack and memo
effects of its opcodes, so a layout changes speed, never results.
"""

from __future__ import annotations

import operator
import re
import struct
from functools import lru_cache
from typing import Any

_unpack_i = struct.Struct("<i").unpack_from

# One dense tensor as CPython's pickler writes ``torch._utils._rebuild_tensor_v2(...)`` for
# torch.save (protocol 2), once the record's globals and strings are in the memo and the memo
# has passed 256 entries (so its own PUTs take the 4-byte form):
#   GET rebuild MARK MARK GET 'storage' GET <X>Storage BINUNICODE key LONG_BINPUT GET location
#   INT numel TUPLE LONG_BINPUT BINPERSID INT offset <size tuple> <stride tuple>
#   NEWFALSE|NEWTRUE GET OrderedDict EMPTY_TUPLE REDUCE LONG_BINPUT TUPLE LONG_BINPUT REDUCE LONG_BINPUT
# where GET is BINGET or LONG_BINGET, INT is BININT1/BININT2/BININT and a tuple is EMPTY_TUPLE,
# 1-3 INTs + TUPLE1/2/3 + LONG_BINPUT, or MARK INTs TUPLE LONG_BINPUT. The regex checks the exact
# byte structure; the decoder performs the same stack and memo operations, in the same order, as
# the opcode-by-opcode loop would, so the fast path changes speed, never results.
_GET_OP = rb"(h.|j....)"
_INT_OP = rb"(K.|M..|J....)"
_INT_RUN = rb"(?:K.|M..|J....)"
_TUPLE_OPS = rb"(?:(\))|(" + _INT_RUN + rb"{1,3}[\x85-\x87]|\(" + _INT_RUN + rb"*t)r(....))"
_TENSOR_RECORD_PATTERN = (
    rb"(?:h.|j....)\(\(" + _GET_OP + _GET_OP + rb"X[\x01-\x14]\x00\x00\x00([0-9]+)r(....)" + _GET_OP
    + _INT_OP + rb"tr(....)Q" + _INT_OP + _TUPLE_OPS + _TUPLE_OPS + rb"([\x88\x89])" + _GET_OP
    + rb"\)Rr(....)tr(....)Rr(....)"
)


@lru_cache(maxsize=None)
def tensor_record_regex() -> re.Pattern[bytes]:
    """The compiled tensor-record pattern (compiled on first use: it costs ~20 ms at import)."""
    return re.compile(_TENSOR_RECORD_PATTERN, re.DOTALL)

class RecordShape:
    """One byte layout of torch's tensor record: the widths of every GET, INT and tuple in it and the
    length of the storage key. A layout gets its own regex, with no alternatives and no captures
    (every variable byte a wildcard, the key ``[0-9]{N}``), and a ``struct`` that reads every operand
    at its fixed offset in one call. It is learned from a match of the general regex
    (:func:`tensor_record_regex`), so it accepts exactly the records of that layout which the general
    regex accepts, decomposed the same way."""

    __slots__ = ("match", "unpack", "size", "stride", "tail", "picks", "length", "pattern", "format", "get_len", "count")

    def __init__(self, m: Any) -> None:
        data = m.string
        at = m.start()
        rx: list[bytes] = []
        st: list[str] = ["<"]

        def lit(raw: bytes) -> None:
            rx.append(re_escape(raw))
            st.append(f"{len(raw)}x")

        def get(span: tuple[int, int]) -> None:
            a, b = span
            rx.append(re_escape(data[a : a + 1]) + b"." * (b - a - 1))
            st.append("xB" if b - a == 2 else "xI")

        def ints(a: int, b: int) -> int:
            count = 0
            i = a
            while i < b:
                c = data[i]
                w = {75: 1, 77: 2, 74: 4}.get(c)
                if w is None:
                    break
                rx.append(re_escape(data[i : i + 1]) + b"." * w)
                st.append({1: "xB", 2: "xH", 4: "xi"}[w])
                i += 1 + w
                count += 1
            return i

        first = m.start(1) - 2  # GET of the rebuild function, then MARK MARK
        rx.append(re_escape(data[at : at + 1]) + b"." * (first - at - 1))
        st.append(f"{first - at}x")
        lit(b"((")
        get(m.span(1))
        get(m.span(2))
        key_len = m.end(3) - m.start(3)
        rx.append(b"X" + re_escape(bytes([key_len])) + b"\\x00\\x00\\x00[0-9]{%d}" % key_len)
        st.append(f"5x{key_len}s")
        rx.append(b"r....")
        st.append("xI")
        get(m.span(5))
        ints(*m.span(6))
        rx.append(b"tr....Q")
        st.append("2xIx")
        ints(*m.span(8))
        n_size = self._tuple(m, 9, 10, 11, rx, st, ints)
        n_stride = self._tuple(m, 12, 13, 14, rx, st, ints)
        # vals: 8 fixed fields, size ints [+ put], stride ints [+ put], grad, od, 3 puts
        i = 8
        self.size = slice(i, i + n_size) if n_size else None
        i += n_size
        size_put = i if m.start(11) >= 0 else None
        i += size_put is not None
        self.stride = slice(i, i + n_stride) if n_stride else None
        i += n_stride
        stride_put = i if m.start(14) >= 0 else None
        i += stride_put is not None
        picks = (size_put, stride_put, i, i + 1, i + 2, i + 3, i + 4)
        self.picks = picks
        self.tail = lambda vals, _p=picks: tuple(None if j is None else vals[j] for j in _p)
        if size_put is not None and stride_put is not None:
            self.tail = operator.itemgetter(*picks)
        rx.append(b"[\\x88\\x89]")
        st.append("B")
        get(m.span(16))
        rx.append(b"\\)Rr....tr....Rr....")
        st.append("3xI2xI2xI")
        self.pattern = b"".join(rx)
        self.format = "".join(st)
        self.get_len = first - at
        self.match = re.compile(self.pattern, re.DOTALL).match
        packer = struct.Struct(self.format)
        self.unpack = packer.unpack_from
        self.length = m.end() - at
        self.count = len(packer.unpack_from(data, at))
        assert packer.size == self.length

    @staticmethod
    def _tuple(m: Any, empty: int, ops: int, put: int, rx: list[bytes], st: list[str], ints: Any) -> int:
        """Add a size/stride tuple to the layout; returns how many ints it holds."""
        if m.start(empty) >= 0:
            rx.append(b"\\)")
            st.append("x")
            return 0
        data = m.string
        a, b = m.span(ops)
        marked = data[a] == 40
        if marked:
            rx.append(b"\\(")
            st.append("x")
            a += 1
        before = len(st)
        end = ints(a, b)
        count = len(st) - before
        rx.append(re_escape(data[end : end + 1]) + b"r....")
        st.append("xxI")
        return count


class EntryShape:
    """The layout of a whole state-dict entry: ``BINUNICODE key``, ``BINPUT`` or ``LONG_BINPUT``,
    then a record of a known :class:`RecordShape` (which begins with the GET of the rebuild function).
    One regex (the key any ``N`` bytes, checked as UTF-8 when applied) and one ``struct`` for all
    of it: key bytes, put index, the GET's index, then the record's operands. ``run`` matches as
    many consecutive entries of the layout as there are, and ``iter_unpack`` reads them all."""

    __slots__ = ("match", "run", "unpack", "iter_unpack", "record", "key_len", "length")

    def __init__(self, key_len: int, put_len: int, record: RecordShape) -> None:
        self.record = record
        self.key_len = key_len
        rx = b"X" + re_escape(struct.pack("<I", key_len)) + b".{%d}" % key_len
        rx += b"r...." if put_len == 5 else b"q."
        head = f"<5x{key_len}s" + ("xI" if put_len == 5 else "xB") + ("xB" if record.get_len == 2 else "xI")
        assert record.format.startswith(f"<{record.get_len}x")
        self.match = re.compile(rx + record.pattern, re.DOTALL).match
        self.run = re.compile(b"(?:" + rx + record.pattern + b")+", re.DOTALL).match
        packer = struct.Struct(head + record.format[len(f"<{record.get_len}x"):])
        self.unpack = packer.unpack_from
        self.iter_unpack = packer.iter_unpack
        self.length = packer.size
        assert self.length == 5 + key_len + put_len + record.length


_ARITY = {0x85: 1, 0x86: 2, 0x87: 3}


def small_tuple(raw: bytes) -> tuple[int, ...] | None:
    """The tuple a matched run of INT opcodes and TUPLE1/2/3 (or MARK ... TUPLE) leaves on the
    stack, or None if it would not leave exactly that one tuple (e.g. ``K1 K2 TUPLE1``)."""
    marked = raw[0] == 40
    i = 1 if marked else 0
    items = []
    while True:
        c = raw[i]
        if c == 75:
            items.append(raw[i + 1])
            i += 2
        elif c == 77:
            items.append(raw[i + 1] | (raw[i + 2] << 8))
            i += 3
        elif c == 74:
            items.append(_unpack_i(raw, i + 1)[0])
            i += 5
        else:
            break
    return tuple(items) if marked == (c == 116) and (marked or _ARITY[c] == len(items)) else None


def learn_shape(m: Any) -> RecordShape | None:
    """The layout of a general match, or None if the loop must handle it (a tuple opcode whose arity
    is not the number of ints before it, or a key whose length byte disagrees with its digits)."""
    size_empty, size_ops, stride_empty, stride_ops = m.group(9, 10, 12, 13)
    size = () if size_empty is not None else small_tuple(size_ops)
    stride = () if stride_empty is not None else small_tuple(stride_ops)
    if size is None or stride is None or m.string[m.start(3) - 4] != m.end(3) - m.start(3):
        return None
    return RecordShape(m)


def re_escape(raw: bytes) -> bytes:
    return b"".join(b"\\x%02x" % c for c in raw)
