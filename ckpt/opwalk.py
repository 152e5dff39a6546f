"""Static analysis of one pickle opcode stream: what it would import and call, found without running it.

:func:`walk` steps through the opcodes of a pickle (protocols 0 to 5) the way CPython's unpickler
would, but builds no object: it keeps a *symbolic* stack, mark stack and memo whose entries say only
what the analysis needs (an exact string, an int, a tuple of such values, a global the pickle named,
"a value some call produced", "a container", "something else"). So every reference to a callable is
resolved exactly as CPython resolves it, however its operands were produced: ``GLOBAL`` and ``INST``
from their text, ``STACK_GLOBAL`` from the two values really on the stack (literal strings, memo
entries, ``DUP``, values left behind after ``POP``/``POP_MARK`` of decoys), ``EXT1/2/4`` by code.
Where an operand is not known until load time (a string some call returns), that is reported, never
guessed. Calls (``REDUCE``, ``NEWOBJ``, ``NEWOBJ_EX``, ``OBJ``, ``INST``) and mutations (``BUILD``,
``SETITEM(S)``, ``APPEND(S)``, ``ADDITEMS``) are attributed to what they act on.

The walk errs on the side of seeing too much: where CPython's C unpickler and the pure-Python
``pickle._Unpickler`` differ, it continues wherever either one would (frame bounds, argument types of
calls, missing ``persistent_load``); it stops only where both stop before running anything further
(unknown opcode, truncated argument, stack underflow, an unset memo key, ``STACK_GLOBAL`` on literal
non-strings), and says so in :attr:`Walk.error`.

Runs of torch's regular tensor records (see :func:`ckpt.tensor_records.tensor_record_regex`) are decoded in one
step with exactly the stack, memo and event effects the opcode loop has (``fast=False`` turns this
off; the tests compare both on the same inputs).

>>> w = walk(b"cos\\nsystem\\n(S'echo hi'\\ntR.")
>>> [(g.module, g.name, g.opcodes, g.called_at) for g in w.globals.values()]
[('os', 'system', ('GLOBAL',), 24)]
>>> w.error is None, w.end
(True, 26)
"""

from __future__ import annotations

import codecs
import gc
import struct
from collections.abc import Iterator
from itertools import chain, repeat
from typing import Any

from .pickle_vm import _NO_MATCH
from .tensor_records import EntryShape, RecordShape, learn_shape, tensor_record_regex

_unpack_i = struct.Struct("<i").unpack_from
_unpack_H = struct.Struct("<H").unpack_from
_unpack_I = struct.Struct("<I").unpack_from
_unpack_Q = struct.Struct("<Q").unpack_from

HIGHEST_PROTOCOL = 5
FAST_GLOBAL = ("torch._utils", "_rebuild_tensor_v2")

# Every opcode of protocols 0-5 (byte value -> name), for messages and for "could this start a pickle".
OPCODE_NAMES: dict[int, str] = {
    0x28: "MARK", 0x2E: "STOP", 0x30: "POP", 0x31: "POP_MARK", 0x32: "DUP", 0x46: "FLOAT", 0x49: "INT",
    0x4A: "BININT", 0x4B: "BININT1", 0x4C: "LONG", 0x4D: "BININT2", 0x4E: "NONE", 0x50: "PERSID",
    0x51: "BINPERSID", 0x52: "REDUCE", 0x53: "STRING", 0x54: "BINSTRING", 0x55: "SHORT_BINSTRING",
    0x56: "UNICODE", 0x58: "BINUNICODE", 0x61: "APPEND", 0x62: "BUILD", 0x63: "GLOBAL", 0x64: "DICT",
    0x7D: "EMPTY_DICT", 0x65: "APPENDS", 0x67: "GET", 0x68: "BINGET", 0x69: "INST", 0x6A: "LONG_BINGET",
    0x6C: "LIST", 0x5D: "EMPTY_LIST", 0x6F: "OBJ", 0x70: "PUT", 0x71: "BINPUT", 0x72: "LONG_BINPUT",
    0x73: "SETITEM", 0x74: "TUPLE", 0x29: "EMPTY_TUPLE", 0x75: "SETITEMS", 0x47: "BINFLOAT",
    0x80: "PROTO", 0x81: "NEWOBJ", 0x82: "EXT1", 0x83: "EXT2", 0x84: "EXT4", 0x85: "TUPLE1",
    0x86: "TUPLE2", 0x87: "TUPLE3", 0x88: "NEWTRUE", 0x89: "NEWFALSE", 0x8A: "LONG1", 0x8B: "LONG4",
    0x42: "BINBYTES", 0x43: "SHORT_BINBYTES", 0x8C: "SHORT_BINUNICODE", 0x8D: "BINUNICODE8",
    0x8E: "BINBYTES8", 0x8F: "EMPTY_SET", 0x90: "ADDITEMS", 0x91: "FROZENSET", 0x92: "NEWOBJ_EX",
    0x93: "STACK_GLOBAL", 0x94: "MEMOIZE", 0x95: "FRAME", 0x96: "BYTEARRAY8", 0x97: "NEXT_BUFFER",
    0x98: "READONLY_BUFFER",
}
OPCODES = frozenset(OPCODE_NAMES)

# A literal is kept for the nested-pickle pass when it may hold a pickle (its first byte is PROTO,
# or its last byte is STOP) or is long enough to hold an encoded one.
LONG_LITERAL = 64


class Sym:
    """A symbolic value that stands for a kind of object, not one object."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


OTHER = Sym("<value>")  # a float, None, a huge int, ...: nothing the analysis needs
CONTAINER = Sym("<container>")  # a list, dict or set built by the pickle
FROZEN = Sym("<frozenset>")
BYTES = Sym("<bytes>")
STORAGE = Sym("<persistent object>")  # what persistent_load returned
BUFFER = Sym("<out-of-band buffer>")


class Ref:
    """A global the pickle names (one per GLOBAL/STACK_GLOBAL/INST/EXT opcode that names one);
    ``module`` is None when STACK_GLOBAL's operands are only known at load time."""

    __slots__ = ("module", "name", "offset", "opcode", "use", "made")

    def __init__(
        self, module: str | None, name: str | None, offset: int, opcode: str, use: GlobalUse | None = None
    ) -> None:
        self.module = module
        self.name = name
        self.offset = offset
        self.opcode = opcode
        self.use = use
        self.made: Made | None = None

    def __repr__(self) -> str:
        if self.module is None:
            return f"<unresolved global at {self.offset}>"
        return f"<global {self.module}.{self.name}>"


class Made:
    """A value some call or instantiation produced while loading (``origin`` is what was called)."""

    __slots__ = ("origin", "made")

    def __init__(self, origin: Any) -> None:
        self.origin = origin
        self.made: Made | None = None

    def __repr__(self) -> str:
        return f"<result of {self.origin!r}>"


class Alt(tuple):
    """A protocol-0/1 string whose text depends on the unpickler's ``encoding`` (non-ASCII bytes):
    every decoding it may have."""


class GlobalUse:
    """Every use of one ``module.name`` in a stream: ``offset`` of the first opcode that named it;
    ``opcodes`` how it was named (``GLOBAL``, ``STACK_GLOBAL``, ``INST``, ``EXT``); ``count``;
    ``called_at``, the first REDUCE/NEWOBJ/NEWOBJ_EX/OBJ/INST that called or instantiated it;
    ``mutated_at``, the first BUILD/SETITEM(S)/APPEND(S)/ADDITEMS applied to the global itself.

    (Plain classes, not dataclasses, in the scanner's modules: making a dataclass compiles code,
    which would show in every ``ckpt`` process's start-up.)"""

    def __init__(self, module: str, name: str, offset: int, opcodes: tuple[str, ...] = (), count: int = 0,
                 called_at: int | None = None, mutated_at: int | None = None) -> None:
        self.module = module
        self.name = name
        self.offset = offset
        self.opcodes = opcodes
        self.count = count
        self.called_at = called_at
        self.mutated_at = mutated_at

    @property
    def qualname(self) -> str:
        return f"{self.module}.{self.name}"

    def __repr__(self) -> str:
        return f"GlobalUse({self.module}.{self.name}, offset={self.offset}, opcodes={self.opcodes}, count={self.count})"


class Event:
    """Something the walk met that is worth a finding, besides globals: ``code`` names it."""

    def __init__(self, code: str, offset: int, detail: str) -> None:
        self.code = code
        self.offset = offset
        self.detail = detail

    def __repr__(self) -> str:
        return f"Event({self.code!r}, {self.offset}, {self.detail!r})"


class Walk:
    """What :func:`walk` found in one pickle stream.

    ``start``/``end`` (just after STOP, or where the walk stopped); ``error`` (why it stopped
    before STOP, None when the pickle is whole) and ``error_offset``; ``protocol`` (highest PROTO
    seen, 0 if none); ``globals`` (``(module, name)`` -> :class:`GlobalUse`); ``events``;
    ``pids`` (persistent ids as symbolic values, in order); ``literals`` (``(opcode offset, data
    start, length, kind)`` of string/bytes literals that may hold a pickle); ``root`` (the
    symbolic value STOP returned); ``memo`` (the final symbolic memo, with ``keep_memo=True``).
    """

    def __init__(self, start: int) -> None:
        self.start = start
        self.end = 0
        self.error: str | None = None
        self.error_offset: int | None = None
        self.protocol = 0
        self.globals: dict[tuple[str, str], GlobalUse] = {}
        self.events: list[Event] = []
        self.pids: list[Any] = []
        self.literals: list[tuple[int, int, int, str]] = []
        self.root: Any = None
        self.memo: dict[int, Any] | None = None

    @property
    def complete(self) -> bool:
        return self.error is None

    def __repr__(self) -> str:
        return (f"Walk(start={self.start}, end={self.end}, error={self.error!r}, protocol={self.protocol}, "
                f"globals={list(self.globals)}, events={len(self.events)}, pids={len(self.pids)})")


class WalkError(Exception):
    def __init__(self, message: str, offset: int) -> None:
        super().__init__(message)
        self.offset = offset


def _text_int(line: bytes, at: int, what: str) -> int:
    try:
        return int(line)
    except ValueError:
        raise WalkError(f"{what} argument {line[:40]!r} is not an integer", at) from None


def _text_value(op: int, line: bytes, at: int) -> Any:
    """The symbolic value of a protocol-0 INT/LONG/FLOAT/STRING/UNICODE argument (raises as CPython does)."""
    try:
        if op == 73:  # INT (C's strtol also takes leading zeros, which int(x, 0) refuses)
            if line in (b"00", b"01"):
                return OTHER
            try:
                return _int_value(int(line, 0))
            except ValueError:
                return _int_value(int(line, 10))
        if op == 76:  # LONG
            if line.endswith(b"L"):
                line = line[:-1]
            return _int_value(int(line, 0))
        if op == 70:  # FLOAT
            float(line)
            return OTHER
        if op == 86:  # UNICODE
            return str(line, "raw-unicode-escape")
        # STRING: quoted and escaped
        if len(line) >= 2 and line[0] == line[-1] and line[:1] in (b'"', b"'"):
            return _py2_string(codecs.escape_decode(line[1:-1])[0])
        raise WalkError("the STRING opcode argument must be quoted", at)
    except (ValueError, UnicodeDecodeError) as e:
        raise WalkError(f"a text value is malformed ({e})", at) from None


def _int_value(v: int) -> Any:
    return v if -(1 << 127) <= v < (1 << 127) else OTHER


def _py2_string(raw: bytes) -> Any:
    """A Python 2 ``str`` (STRING/BINSTRING/SHORT_BINSTRING): text under any ``encoding`` but ``bytes``.

    ASCII gives one text; other bytes give every text the usual encodings make of them (``Alt``)."""
    if raw.isascii():
        return raw.decode("ascii")
    options = []
    try:
        options.append(raw.decode("utf-8"))
    except UnicodeDecodeError:
        pass
    options.append(raw.decode("latin-1"))
    return Alt(dict.fromkeys(options))


def describe(value: Any) -> str:
    """A short human description of a symbolic value (for messages)."""
    t = type(value)
    if t is str:
        return repr(value if len(value) <= 40 else value[:37] + "...")
    if t is Ref:
        return repr(value)
    if t is Made:
        return "a value computed while loading" + (
            f" (by {value.origin!r})" if type(value.origin) is Ref else ""
        )
    if t is Alt:
        return "a string whose text depends on the unpickler's encoding"
    if t is tuple:
        return "a tuple"
    if t is int or t is bool:
        return "an int"
    if t is bytes:
        return "bytes"
    if t is Sym:
        return {
            "<value>": "a number or None", "<container>": "a container", "<frozenset>": "a frozenset",
            "<bytes>": "bytes", "<persistent object>": "what persistent_load returned",
            "<out-of-band buffer>": "an out-of-band buffer",
        }.get(value.name, value.name)
    return t.__name__


def walk(
    data: Any,
    start: int = 0,
    *,
    fast: bool = True,
    keep_memo: bool = False,
) -> Walk:
    """Walk the pickle that starts at ``data[start]`` up to its STOP opcode, without running it.

    ``data`` is any bytes-like object supporting ``find`` (``bytes``, ``mmap``); the walk may run to
    its end. Never raises for bad input: the result's ``error`` says why and where the walk stopped.
    """
    result = Walk(start=start)
    collecting = gc.isenabled()
    gc.disable()  # the walk builds millions of acyclic tuples: generational passes cost half its time
    try:
        _run(data, start, result, fast, keep_memo)
    except WalkError as e:
        result.error = str(e)
        result.error_offset = result.end = e.offset
    except MemoryError:
        result.error = "out of memory while walking the pickle"
        result.error_offset = result.end = start
    finally:
        if collecting:
            gc.enable()
    return result


def _truncated(data: Any, at: int) -> WalkError:
    if at >= len(data):
        return WalkError("the pickle ends before its STOP opcode (truncated?)", at)
    name = OPCODE_NAMES.get(data[at], f"0x{data[at]:02x}")
    return WalkError(f"{name} is truncated or finds too few values on the stack (pickle.load fails here)", at)


def _run(data: Any, start: int, w: Walk, fast: bool, keep_memo: bool) -> None:  # noqa: C901
    n = len(data)
    stack: list[Any] = []
    metastack: list[list[Any]] = []
    push = stack.append
    memo: dict[int, Any] = {}
    uses = w.globals
    events = w.events
    literals = w.literals
    pids = w.pids
    made_of_sym: dict[int, Made] = {}
    fast_ref: Any = _NO_MATCH
    shapes: list[RecordShape] = []
    eshapes: list[EntryShape] = []
    tuples: dict[tuple[int, ...], tuple[int, ...]] = {}
    generic = tensor_record_regex().match
    if keep_memo:
        w.memo = memo

    def made(origin: Any) -> Made:
        """The (one, shared) symbolic result of calling ``origin``."""
        if type(origin) is Sym:
            m = made_of_sym.get(id(origin))
            if m is None:
                m = made_of_sym[id(origin)] = Made(origin)
            return m
        m = origin.made
        if m is None:
            m = origin.made = Made(origin)
        return m

    def fast_run(at: int, rebuild: Ref) -> int:
        """Apply the torch tensor record at ``at`` in one step (see :class:`~ckpt.tensor_records.RecordShape`), then every
        ``key PUT record`` entry that follows it; returns where the opcode loop goes on, or -1 to
        let it take the first record opcode by opcode. Every step has exactly the stack, memo and
        event effects of the opcodes it stands for; entries of one layout are applied in bulk when
        that provably gives the same state (see ``bulk``), else one by one."""
        last_fn: Any = _NO_MATCH
        last_hooks: Any = None
        result: Any = None
        used: list[RecordShape | None] = [None]

        def record(at: int) -> int:
            """One tensor record at ``at`` (its GET of ``rebuild`` already checked): its end, or -1."""
            nonlocal last_fn, last_hooks, result
            shape = shapes[0] if shapes else None
            if shape is None or shape.match(data, at) is None:
                for i, shape in enumerate(shapes):
                    if shape.match(data, at) is not None:
                        shapes.insert(0, shapes.pop(i))  # most recently used first
                        break
                else:
                    m = generic(data, at)
                    shape = learn_shape(m) if m is not None else None
                    if shape is None:
                        return -1
                    shapes.insert(0, shape)
                    del shapes[64:]
            vals = shape.unpack(data, at)
            name_idx, type_idx, key_b, key_put, loc_idx, numel, pid_put, offset = vals[:8]
            size_put, stride_put, grad, od_idx, hooks_put, args_put, result_put = shape.tail(vals)
            size = vals[shape.size] if shape.size is not None else ()
            if size:
                size = tuples.setdefault(size, size)
            stride = vals[shape.stride] if shape.stride is not None else ()
            if stride:
                stride = tuples.setdefault(stride, stride)
            try:
                storage_name = memo[name_idx]
                storage_type = memo[type_idx]
                key = key_b.decode("ascii")
                memo[key_put] = key
                location = memo[loc_idx]
                pid = (storage_name, storage_type, key, location, numel)
                memo[pid_put] = pid
                if size_put is not None:
                    memo[size_put] = size
                if stride_put is not None:
                    memo[stride_put] = stride
                hooks_fn = memo[od_idx]
            except KeyError:
                return -1  # the loop reports the unset key at its opcode
            t = type(hooks_fn)
            if t is not Ref and t is not Made and hooks_fn is not STORAGE and hooks_fn is not BUFFER:
                return -1  # the loop reports the call of a non-callable
            end = at + shape.length
            pids.append(pid)
            # call(): a global's bookkeeping (its first call's offset) happens the first time only;
            # calling a computed value is an event every time, as in the loop
            if hooks_fn is not last_fn:
                hooks = call(hooks_fn, end - 18, "REDUCE")
                if t is Ref:
                    last_fn, last_hooks = hooks_fn, hooks
            else:
                hooks = last_hooks
            memo[hooks_put] = hooks
            memo[args_put] = (STORAGE, offset, size, stride, grad == 0x88, hooks)
            if result is None:
                result = call(rebuild, end - 6, "REDUCE")
            memo[result_put] = result
            push(result)
            used[0] = shape
            return end

        def entry(at: int) -> tuple[int, bool]:
            """One ``BINUNICODE key, PUT, record`` entry at ``at``, opcode by opcode semantics:
            where the loop goes on (``at`` itself if this is no entry) and whether the entry was
            applied whole; learns its layout."""
            if at + 5 >= n or data[at] != 88:
                return at, False
            ln = _unpack_I(data, at + 1)[0]
            q = at + 5 + ln
            if q + 6 > n or ln < 2:
                return at, False
            c = data[q]
            if c == 114:
                put_idx = _unpack_I(data, q + 1)[0]
                r = q + 5
            elif c == 113:
                put_idx = data[q + 1]
                r = q + 2
            else:
                return at, False
            try:
                key = str(data[at + 5 : q], "utf-8", "surrogatepass")
            except UnicodeDecodeError:
                return at, False
            push(key)
            first = data[at + 5]
            if ln >= LONG_LITERAL or first == 0x80 or data[q - 1] == 0x2E or (first == 0xC2 and data[at + 6] == 0x80):
                literals.append((at, at + 5, ln, "str"))
            memo[put_idx] = key
            c = data[r]
            if c == 104:
                get_idx = data[r + 1]
            elif c == 106 and r + 5 <= n:
                get_idx = _unpack_I(data, r + 1)[0]
            else:
                return r, False
            if memo.get(get_idx, _NO_MATCH) is not rebuild:
                return r, False
            end = record(r)
            if end < 0:
                return r, False
            shape = used[0]
            put_len = r - q
            if not any(e.record is shape and e.key_len == ln and e.match(data, at) for e in eshapes):
                eshapes.insert(0, EntryShape(ln, put_len, shape))  # type: ignore[arg-type]
                del eshapes[64:]
            return end, True

        def bulk(es: EntryShape, rows: list[tuple[Any, ...]], starts: list[int]) -> bool:
            """Apply entries of one layout at once when that gives exactly the one-by-one state:
            every memo key they write is distinct and none is read by them, every key they read
            is set (the rebuild function, the hooks' callable, storage name/type/location), and
            every dict key is UTF-8. Returns False (nothing applied) otherwise."""
            if result is None or last_fn is _NO_MATCH:
                return False
            rec = es.record
            cols = list(zip(*rows))
            get_col, key_col, put_col = cols[2], cols[0], cols[1]
            r = cols[3:]
            sp, tp, gi, oi, hi, ai, ri = rec.picks
            reads = set(get_col) | set(r[0]) | set(r[1]) | set(r[4]) | set(r[oi])
            writes = [put_col, r[3], r[6], r[hi], r[ai], r[ri]]
            if sp is not None:
                writes.append(r[sp])
            if tp is not None:
                writes.append(r[tp])
            total = len(rows) * len(writes)
            wset = set().union(*writes)
            if len(wset) != total or not wset.isdisjoint(reads):
                return False
            for k in set(get_col):
                if memo.get(k, _NO_MATCH) is not rebuild:
                    return False
            for k in set(r[oi]):
                if memo.get(k, _NO_MATCH) is not last_fn:
                    return False
            if not all(k in memo for k in set(r[0]) | set(r[1]) | set(r[4])):
                return False
            m = len(rows)
            try:
                keys = list(map(str, key_col, repeat("utf-8", m), repeat("surrogatepass", m)))
            except UnicodeDecodeError:
                return False
            get = memo.__getitem__
            skeys = list(map(bytes.decode, r[2]))  # digits: the regex allows nothing else
            new_pids = list(zip(map(get, r[0]), map(get, r[1]), skeys, map(get, r[4]), r[5]))
            if rec.size is not None:
                sizes = list(zip(*r[rec.size]))
                sizes = list(map(tuples.setdefault, sizes, sizes))
            else:
                sizes = [()] * m
            if rec.stride is not None:
                strides = list(zip(*r[rec.stride]))
                strides = list(map(tuples.setdefault, strides, strides))
            else:
                strides = [()] * m
            args = list(zip(repeat(STORAGE, m), r[7], sizes, strides, map((0x88).__eq__, r[gi]), repeat(last_hooks, m)))
            ln = es.key_len
            joined = b"".join(key_col)  # the literal() test on every key, skipped when no key can pass it
            if ln >= LONG_LITERAL or b"\x80" in joined[::ln] or b"\xc2" in joined[::ln] or b"." in joined[ln - 1 :: ln]:
                for at, b in zip(starts, key_col):
                    first = b[0]
                    if ln >= LONG_LITERAL or first == 0x80 or b[-1] == 0x2E or (first == 0xC2 and b[1] == 0x80):
                        literals.append((at, at + 5, ln, "str"))
            memo.update(zip(put_col, keys))
            memo.update(zip(r[3], skeys))
            memo.update(zip(r[6], new_pids))
            if sp is not None:
                memo.update(zip(r[sp], sizes))
            if tp is not None:
                memo.update(zip(r[tp], strides))
            memo.update(dict.fromkeys(r[hi], last_hooks))
            memo.update(zip(r[ai], args))
            memo.update(dict.fromkeys(r[ri], result))
            pids.extend(new_pids)
            stack.extend(chain.from_iterable(zip(keys, repeat(result, m))))
            return True

        def flush(es: EntryShape | None, rows: list[tuple[Any, ...]], starts: list[int]) -> int:
            """Apply the pending entries; -1 when all were applied, else where the loop goes on."""
            if not rows or bulk(es, rows, starts):  # type: ignore[arg-type]
                return -1
            for at in starts:  # one by one, exactly as the loop would
                end, whole = entry(at)
                if not whole:
                    return end
            return -1

        end = record(at)
        if end < 0:
            return -1
        at = end
        pending: EntryShape | None = None
        rows: list[tuple[Any, ...]] = []
        starts: list[int] = []
        while True:
            es = eshapes[0] if eshapes else None
            if es is None or es.match(data, at) is None:
                es = None
                for i, cand in enumerate(eshapes):
                    if cand.match(data, at) is not None:
                        es = eshapes.pop(i)
                        eshapes.insert(0, es)
                        break
            if es is not None:
                if es is not pending:
                    stop = flush(pending, rows, starts)
                    if stop >= 0:
                        return stop
                    pending, rows, starts = es, [], []
                rows.append(es.unpack(data, at))
                starts.append(at)
                at += es.length
                continue
            stop = flush(pending, rows, starts)
            if stop >= 0:
                return stop
            pending, rows, starts = None, [], []
            end, whole = entry(at)
            if not whole:
                return end
            at = end

    def name_global(module: str, name: str, at: int, opcode: str) -> Ref:
        key = (module, name)
        use = uses.get(key)
        if use is None:
            use = uses[key] = GlobalUse(module, name, at, (opcode,), 1)
        else:
            use.count += 1
            if opcode not in use.opcodes:
                use.opcodes = (*use.opcodes, opcode)
        return Ref(module, name, at, opcode, use)

    def call(target: Any, at: int, how: str) -> Made:
        """A call or instantiation of ``target``; returns what it leaves on the stack."""
        t = type(target)
        if t is Ref:
            use = target.use
            if use is not None and use.called_at is None:
                use.called_at = at
        elif t is Made or target is STORAGE or target is BUFFER:
            events.append(Event("calls-computed", at, f"{how} calls {describe(target)}, not a global the file names"))
        else:
            raise WalkError(f"{how} calls {describe(target)}, which is not callable (pickle.load fails here)", at)
        return made(target)

    def mutate(target: Any, at: int, how: str) -> None:
        if type(target) is Ref:
            use = target.use
            if use is not None and use.mutated_at is None:
                use.mutated_at = at
            events.append(Event("mutates-global", at, f"{how} changes {describe(target)} itself (module state), not an object built from it"))

    def literal(at: int, pos: int, ln: int, kind: str) -> None:
        first = data[pos]
        if ln >= LONG_LITERAL or first == 0x80 or data[pos + ln - 1] == 0x2E or (first == 0xC2 and data[pos + 1] == 0x80):
            literals.append((at, pos, ln, kind))

    def text_line(pos: int, at: int, what: str) -> tuple[bytes, int]:
        nl = data.find(b"\n", pos, n)
        if nl < 0:
            raise WalkError(f"{what} is not newline-terminated (truncated?)", at)
        return data[pos:nl], nl + 1

    def pop_mark(at: int) -> list[Any]:
        nonlocal stack, push
        if not metastack:
            raise WalkError("an opcode needs a MARK but there is none (stack underflow)", at)
        items = stack
        stack = metastack.pop()
        push = stack.append
        return items

    pos = at = start
    try:
        while True:
            at = pos
            op = data[pos]
            pos += 1
            if op == 104 or op == 106:  # BINGET, LONG_BINGET
                if op == 104:
                    key = data[pos]
                    pos += 1
                else:
                    key = _unpack_I(data, pos)[0]
                    pos += 4
                try:
                    value = memo[key]
                except KeyError:
                    raise WalkError(f"memo key {key} is read before it is set (pickle.load fails here)", at) from None
                if value is fast_ref:
                    nxt = fast_run(at, value)
                    if nxt >= 0:
                        pos = nxt
                        continue
                push(value)
            elif op == 88 or op == 140 or op == 141:  # BINUNICODE, SHORT_BINUNICODE, BINUNICODE8
                if op == 140:
                    ln = data[pos]
                    pos += 1
                elif op == 88:
                    ln = _unpack_I(data, pos)[0]
                    pos += 4
                else:
                    ln = _unpack_Q(data, pos)[0]
                    pos += 8
                if pos + ln > n:
                    raise WalkError(f"a string declares {ln:,} bytes but only {n - pos:,} remain", at)
                try:
                    push(str(data[pos : pos + ln], "utf-8", "surrogatepass"))
                except UnicodeDecodeError:
                    raise WalkError("a string is not valid UTF-8 (pickle.load fails here)", at) from None
                if ln >= 2:  # literal(), inlined: one key per tensor passes here
                    first = data[pos]
                    if ln >= LONG_LITERAL or first == 0x80 or data[pos + ln - 1] == 0x2E or (first == 0xC2 and data[pos + 1] == 0x80):
                        literals.append((at, pos, ln, "str"))
                pos += ln
            elif op == 114:  # LONG_BINPUT
                memo[_unpack_I(data, pos)[0]] = stack[-1]
                pos += 4
            elif op == 113:  # BINPUT
                memo[data[pos]] = stack[-1]
                pos += 1
            elif op == 40:  # MARK
                metastack.append(stack)
                stack = []
                push = stack.append
            elif op == 116:  # TUPLE
                items = pop_mark(at)
                push(tuple(items))
            elif op == 75:  # BININT1
                push(data[pos])
                pos += 1
            elif op == 82:  # REDUCE
                if len(stack) < 2:
                    raise WalkError("REDUCE needs a callable and its arguments (stack underflow)", at)
                stack.pop()
                stack[-1] = call(stack[-1], at, "REDUCE")
            elif op == 133:  # TUPLE1
                stack[-1] = (stack[-1],)
            elif op == 134:  # TUPLE2
                if len(stack) < 2:
                    raise IndexError
                b = stack.pop()
                stack[-1] = (stack[-1], b)
            elif op == 135:  # TUPLE3
                if len(stack) < 3:
                    raise IndexError
                c = stack.pop()
                b = stack.pop()
                stack[-1] = (stack[-1], b, c)
            elif op == 81:  # BINPERSID
                pid = stack[-1]
                pids.append(pid)
                stack[-1] = _persistent(pid)
            elif op == 74:  # BININT
                push(_unpack_i(data, pos)[0])
                pos += 4
            elif op == 77:  # BININT2
                push(_unpack_H(data, pos)[0])
                pos += 2
            elif op == 137 or op == 136:  # NEWFALSE, NEWTRUE
                push(op == 136)
            elif op == 41:  # EMPTY_TUPLE
                push(())
            elif op == 117:  # SETITEMS
                items = pop_mark(at)
                if not stack:
                    raise WalkError("SETITEMS has no dict to set items on (stack underflow)", at)
                if items:
                    mutate(stack[-1], at, "SETITEMS")
                if len(items) % 2:
                    raise WalkError("SETITEMS with an odd number of items (pickle.load fails here)", at)
            elif op == 99:  # GLOBAL
                mod_b, pos = text_line(pos, at, "GLOBAL's module")
                name_b, pos = text_line(pos, at, "GLOBAL's name")
                if not mod_b or not name_b:
                    raise WalkError("GLOBAL with an empty module or name", at)
                try:
                    module = mod_b.decode("utf-8")
                    name = name_b.decode("utf-8")
                except UnicodeDecodeError:
                    raise WalkError("GLOBAL names a module or name that is not UTF-8 (pickle.load fails here)", at) from None
                ref = name_global(module, name, at, "GLOBAL")
                if fast_ref is _NO_MATCH and fast and (module, name) == FAST_GLOBAL:
                    fast_ref = ref
                push(ref)
            elif op == 125 or op == 93 or op == 143:  # EMPTY_DICT, EMPTY_LIST, EMPTY_SET
                push(CONTAINER)
            elif op == 115:  # SETITEM
                if len(stack) < 3:
                    raise WalkError("SETITEM needs a dict, a key and a value (stack underflow)", at)
                del stack[-2:]
                mutate(stack[-1], at, "SETITEM")
            elif op == 97:  # APPEND
                if len(stack) < 2:
                    raise WalkError("APPEND needs a list and a value (stack underflow)", at)
                stack.pop()
                mutate(stack[-1], at, "APPEND")
            elif op == 101 or op == 144:  # APPENDS, ADDITEMS
                items = pop_mark(at)
                if not stack:
                    raise WalkError(f"{OPCODE_NAMES[op]} has no target (stack underflow)", at)
                if items:
                    mutate(stack[-1], at, OPCODE_NAMES[op])
            elif op == 148:  # MEMOIZE
                if not stack:
                    raise WalkError("MEMOIZE on an empty stack", at)
                memo[len(memo)] = stack[-1]
            elif op == 78:  # NONE
                push(OTHER)
            elif op == 71:  # BINFLOAT
                if pos + 8 > n:
                    raise IndexError
                push(OTHER)
                pos += 8
            elif op == 138 or op == 139:  # LONG1, LONG4
                if op == 138:
                    ln = data[pos]
                    pos += 1
                else:
                    ln = _unpack_i(data, pos)[0]
                    pos += 4
                    if ln < 0:
                        raise WalkError("LONG4 with a negative byte count", at)
                if pos + ln > n:
                    raise WalkError("a long integer runs past the end of the pickle", at)
                push(int.from_bytes(data[pos : pos + ln], "little", signed=True) if ln <= 16 else OTHER)
                pos += ln
            elif op == 98:  # BUILD
                if len(stack) < 2:
                    raise WalkError("BUILD needs an object and its state (stack underflow)", at)
                stack.pop()
                mutate(stack[-1], at, "BUILD")
            elif op == 128:  # PROTO
                proto = data[pos]
                pos += 1
                if proto > HIGHEST_PROTOCOL:
                    raise WalkError(f"unsupported pickle protocol {proto} (pickle.load fails here)", at)
                if proto > w.protocol:
                    w.protocol = proto
            elif op == 149:  # FRAME: CPython's C unpickler ignores frame bounds once the bytes are there
                _unpack_Q(data, pos)
                pos += 8
            elif op == 147:  # STACK_GLOBAL
                if len(stack) < 2:
                    raise WalkError("STACK_GLOBAL needs a module and a name on the stack (stack underflow)", at)
                name_v = stack.pop()
                module_v = stack.pop()
                push(_stack_global(module_v, name_v, at, name_global, events))
            elif op == 129:  # NEWOBJ
                if len(stack) < 2:
                    raise WalkError("NEWOBJ needs a class and its arguments (stack underflow)", at)
                stack.pop()
                stack[-1] = call(stack[-1], at, "NEWOBJ")
            elif op == 146:  # NEWOBJ_EX
                if len(stack) < 3:
                    raise WalkError("NEWOBJ_EX needs a class, arguments and keyword arguments (stack underflow)", at)
                del stack[-2:]
                stack[-1] = call(stack[-1], at, "NEWOBJ_EX")
            elif op == 46:  # STOP
                if not stack:
                    raise WalkError("STOP with nothing on the stack (stack underflow)", at)
                w.root = stack[-1]
                w.end = pos
                return
            elif op == 145:  # FROZENSET
                pop_mark(at)
                push(FROZEN)
            elif op == 67 or op == 66 or op == 142 or op == 150:  # SHORT_BINBYTES, BINBYTES, BINBYTES8, BYTEARRAY8
                if op == 67:
                    ln = data[pos]
                    pos += 1
                elif op == 66:
                    ln = _unpack_I(data, pos)[0]
                    pos += 4
                else:
                    ln = _unpack_Q(data, pos)[0]
                    pos += 8
                if pos + ln > n:
                    raise WalkError(f"bytes declare {ln:,} bytes but only {n - pos:,} remain", at)
                push(CONTAINER if op == 150 else bytes(data[pos : pos + ln]) if ln <= 64 else BYTES)
                if ln >= 2:
                    literal(at, pos, ln, "bytes")
                pos += ln
            elif op == 85 or op == 84:  # SHORT_BINSTRING, BINSTRING
                if op == 85:
                    ln = data[pos]
                    pos += 1
                else:
                    ln = _unpack_i(data, pos)[0]
                    pos += 4
                    if ln < 0:
                        raise WalkError("BINSTRING with a negative byte count", at)
                if pos + ln > n:
                    raise WalkError("a string runs past the end of the pickle", at)
                push(_py2_string(bytes(data[pos : pos + ln])))
                if ln >= 2:
                    literal(at, pos, ln, "bytes")
                pos += ln
            elif op == 48:  # POP
                if stack:
                    stack.pop()
                elif metastack:
                    stack = metastack.pop()
                    push = stack.append
                else:
                    raise WalkError("POP on an empty stack", at)
            elif op == 49:  # POP_MARK
                pop_mark(at)
            elif op == 50:  # DUP
                if not stack:
                    raise WalkError("DUP on an empty stack", at)
                push(stack[-1])
            elif op == 108 or op == 100:  # LIST, DICT
                items = pop_mark(at)
                if op == 100 and len(items) % 2:
                    raise WalkError("DICT with an odd number of items (pickle.load fails here)", at)
                push(CONTAINER)
            elif op in (73, 76, 70, 83, 86):  # INT, LONG, FLOAT, STRING, UNICODE (text)
                line, nxt = text_line(pos, at, f"{OPCODE_NAMES[op]}'s argument")
                value = _text_value(op, line, at)
                push(value)
                if (op == 83 or op == 86) and len(line) >= 4:
                    literals.append((at, pos, len(line), "STRING" if op == 83 else "UNICODE"))
                pos = nxt
            elif op == 112:  # PUT
                line, pos = text_line(pos, at, "PUT's argument")
                idx = _text_int(line, at, "PUT")
                if idx < 0:
                    raise WalkError("negative PUT index", at)
                if not stack:
                    raise WalkError("PUT on an empty stack", at)
                memo[idx] = stack[-1]
            elif op == 103:  # GET
                line, pos = text_line(pos, at, "GET's argument")
                idx = _text_int(line, at, "GET")
                if idx not in memo:
                    raise WalkError(f"memo key {idx} is read before it is set (pickle.load fails here)", at)
                push(memo[idx])
            elif op == 80:  # PERSID
                line, pos = text_line(pos, at, "PERSID's argument")
                try:
                    pids.append(line.decode("ascii"))
                except UnicodeDecodeError:
                    raise WalkError("a text persistent id is not ASCII (pickle.load fails here)", at) from None
                push(STORAGE)
            elif op == 105:  # INST
                mod_b, pos = text_line(pos, at, "INST's module")
                name_b, pos = text_line(pos, at, "INST's name")
                if not mod_b or not name_b:
                    raise WalkError("INST with an empty module or name", at)
                try:
                    module = mod_b.decode("ascii")
                    name = name_b.decode("ascii")
                except UnicodeDecodeError:
                    raise WalkError("INST names a module or name that is not ASCII (pickle.load fails here)", at) from None
                ref = name_global(module, name, at, "INST")
                pop_mark(at)
                push(call(ref, at, "INST"))
            elif op == 111:  # OBJ
                items = pop_mark(at)
                if not items:
                    raise WalkError("OBJ without a class (stack underflow)", at)
                push(call(items[0], at, "OBJ"))
            elif op == 130 or op == 131 or op == 132:  # EXT1, EXT2, EXT4
                if op == 130:
                    code = data[pos]
                    pos += 1
                elif op == 131:
                    code = _unpack_H(data, pos)[0]
                    pos += 2
                else:
                    code = _unpack_i(data, pos)[0]
                    pos += 4
                if code <= 0:
                    raise WalkError("EXT specifies code <= 0 (pickle.load fails here)", at)
                push(name_global("copyreg.extension", str(code), at, "EXT"))
            elif op == 151:  # NEXT_BUFFER
                events.append(Event("out-of-band", at, "NEXT_BUFFER takes data from outside the file (pickle.loads(buffers=...))"))
                push(BUFFER)
            elif op == 152:  # READONLY_BUFFER
                if not stack:
                    raise WalkError("READONLY_BUFFER on an empty stack", at)
            else:
                raise WalkError(f"unknown opcode 0x{op:02x} (pickle.load fails here)", at)
    except (IndexError, struct.error):
        raise _truncated(data, at) from None


def _persistent(pid: Any) -> Any:
    """What ``persistent_load`` returns, as torch's loaders answer: the class itself for a legacy
    file's ``('module', <class>, source file, source)``, a storage for anything else."""
    if type(pid) is tuple and len(pid) == 4 and type(pid[1]) is Ref and pid[0] in ("module", b"module"):
        return pid[1]
    return STORAGE


def _stack_global(module_v: Any, name_v: Any, at: int, name_global: Any, events: list[Event]) -> Any:
    """What STACK_GLOBAL leaves on the stack, resolving its operands as CPython does (exact ``str``)."""
    tm, tn = type(module_v), type(name_v)
    if tm is str and tn is str:
        return name_global(module_v, name_v, at, "STACK_GLOBAL")
    literal_types = (str, Alt)
    if tm in literal_types and tn in literal_types:
        first = None
        for m in (module_v,) if tm is str else module_v:
            for nm in (name_v,) if tn is str else name_v:
                ref = name_global(m, nm, at, "STACK_GLOBAL")
                first = first or ref
        events.append(Event("encoding-dependent-global", at,
                            "STACK_GLOBAL operands are Python 2 strings whose text depends on the unpickler's encoding; every reading was judged"))
        return first
    computed = (Made, Ref)
    if tm in computed or tn in computed or module_v is STORAGE or name_v is STORAGE:
        events.append(Event("unresolved-global", at,
                            f"STACK_GLOBAL takes its module from {describe(module_v)} and its name from "
                            f"{describe(name_v)}: the global is chosen while loading and cannot be known "
                            "without running the file"))
        return Ref(None, None, at, "STACK_GLOBAL")
    raise WalkError(
        f"STACK_GLOBAL operands are {describe(module_v)} and {describe(name_v)}, not strings (pickle.load fails here)", at
    )


def iter_walks(data: Any, start: int = 0, *, fast: bool = True) -> Iterator[Walk]:
    """Walk consecutive pickles from ``start`` (a multi-pickle stream): yields each walk, stopping
    after one that fails or at the end of ``data``."""
    stop = len(data)
    pos = start
    while pos < stop:
        w = walk(data, pos, fast=fast)
        yield w
        if w.error is not None or w.end <= pos:
            return
        pos = w.end
