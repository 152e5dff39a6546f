"""A restricted pickle interpreter for protocols 0 to 5 that never imports or calls what a file names.

This is an opcode-level virtual machine, not a ``pickle.Unpickler`` subclass: every opcode is
handled here and type-checked. Globals are handed to a ``resolve(module, name, offset)`` callback that
returns only ckpt-owned values: an :class:`Op` (a ckpt function the VM may call), a
:class:`~ckpt.values.GlobalRef` (inert), a :class:`Trusted` callable the *caller* supplied, or a
plain value (a dtype). Calls (REDUCE, NEWOBJ, INST, OBJ) on anything else never execute: a
``GlobalRef`` called becomes an :class:`~ckpt.values.InertObject` recording the call.

Memory and time are linear in the size of the pickle: the memo is a dict (a sparse index cannot
allocate), lengths are checked against the bytes that remain, nothing recurses.

>>> import pickle
>>> vm = Unpickler(pickle.dumps({"a": [1, 2.5, "x"]}, protocol=5), resolve=None, persistent_load=None)
>>> vm.load()
{'a': [1, 2.5, 'x']}
"""

from __future__ import annotations

import codecs
import re
import struct
from collections import Counter, OrderedDict
from collections import defaultdict as _defaultdict
from typing import Any, Callable

from .errors import CheckpointError, CorruptCheckpointError, UnsupportedFormatError
from .limits import DEFAULT_LIMITS, Limits
from .values import GlobalRef, InertObject, ListRecord, Record

_unpack_i = struct.Struct("<i").unpack_from
_unpack_H = struct.Struct("<H").unpack_from
_unpack_I = struct.Struct("<I").unpack_from
_unpack_Q = struct.Struct("<Q").unpack_from
_unpack_d = struct.Struct(">d").unpack_from

HIGHEST_PROTOCOL = 5


class Op:
    """A ckpt-owned function that a pickle may call through REDUCE (or NEWOBJ when ``newobj``).

    ``name`` is the ``module.name`` the file used, for error messages.
    """

    __slots__ = ("name", "fn", "newobj", "build")

    def __init__(
        self,
        name: str,
        fn: Callable[..., Any],
        *,
        newobj: Callable[..., Any] | None = None,
        build: Callable[[Any, Any], Any] | None = None,
    ) -> None:
        self.name = name
        self.fn = fn
        self.newobj = newobj
        self.build = build

    def __repr__(self) -> str:
        return f"<ckpt op {self.name}>"


class Trusted:
    """A real callable the caller chose to trust for one global name (``trust={...}``)."""

    __slots__ = ("name", "obj")

    def __init__(self, name: str, obj: Any) -> None:
        self.name = name
        self.obj = obj


class Pending:
    """A value an :class:`Op` made that the pickle's BUILD completes into a *new* object.

    numpy dtypes are immutable and a numpy array's size is known only from its BUILD state, so
    ckpt cannot complete them in place as pickle does with ``__setstate__``. An Op returns a
    ``Pending`` holding a provisional ``value`` and a ``finish(state)`` function; at BUILD the VM
    puts the finished value where the pending one stands: on the stack and in the memo entries
    made since it was created (``mark``), which is where a pickler puts it. A ``Pending`` that a
    crafted pickle copies elsewhere stays a ``Pending``, harmless; consumers read ``.value``.
    """

    __slots__ = ("name", "value", "finish", "mark", "done")

    def __init__(self, name: str, value: Any, finish: Callable[[Any], Any]) -> None:
        self.name = name
        self.value = value
        self.finish = finish
        self.mark = 0
        self.done = False

    def __repr__(self) -> str:
        return f"<pending {self.name}: {self.value!r}>"


def settled(value: Any) -> Any:
    """``value``, or the value a :class:`Pending` stands for."""
    return value.value if type(value) is Pending else value


_NO_MATCH = object()

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
_TENSOR_RECORD = re.compile(
    rb"(?:h.|j....)\(\(" + _GET_OP + _GET_OP + rb"X[\x01-\x14]\x00\x00\x00([0-9]+)r(....)" + _GET_OP
    + _INT_OP + rb"tr(....)Q" + _INT_OP + _TUPLE_OPS + _TUPLE_OPS + rb"([\x88\x89])" + _GET_OP
    + rb"\)Rr(....)tr(....)Rr(....)",
    re.DOTALL,
)
_FAST_CACHE_LIMIT = 1 << 14
_small_ints: dict[bytes, int] = {}
_small_tuples: dict[bytes, tuple[int, ...] | None] = {}
_TUPLE_ARITY = {0x85: 1, 0x86: 2, 0x87: 3}
_DICT_TYPES = (dict, OrderedDict, Counter)
_SCALAR_KEYS = (str, int, float, bool, type(None), bytes)


def _small_int(raw: bytes) -> int:
    """The int a matched BINGET/LONG_BINGET/BININT1/BININT2/BININT opcode and argument encode
    (cached: the same few encodings recur for every tensor)."""
    value = _small_ints.get(raw)
    if value is None:
        op = raw[0]
        if op == 104 or op == 75:
            value = raw[1]
        elif op == 77:
            value = raw[1] | (raw[2] << 8)
        elif op == 106:
            value = _unpack_I(raw, 1)[0]
        else:
            value = _unpack_i(raw, 1)[0]
        if len(_small_ints) < _FAST_CACHE_LIMIT:
            _small_ints[raw] = value
    return value


def _small_tuple(raw: bytes) -> tuple[int, ...] | None:
    """The tuple a matched run of INT opcodes and TUPLE1/2/3 (or MARK ... TUPLE) leaves on the
    stack, or None if it would not leave exactly that one tuple (e.g. ``K1 K2 TUPLE1``)."""
    value = _small_tuples.get(raw, _NO_MATCH)
    if value is not _NO_MATCH:
        return value  # type: ignore[return-value]
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
    result = tuple(items) if marked == (c == 116) and (marked or _TUPLE_ARITY[c] == len(items)) else None
    if len(_small_tuples) < _FAST_CACHE_LIMIT:
        _small_tuples[raw] = result
    return result


def check_hashable(key: Any, max_nesting: int) -> None:
    """Refuse unhashable dict keys / set members, and tuples nested so deep that hashing them would
    exhaust the C stack (tuple hashing recurses without a guard)."""
    if type(key) in _SCALAR_KEYS:
        return
    todo = [(key, 0)]
    while todo:
        obj, depth = todo.pop()
        t = type(obj)
        if t is tuple or t is frozenset:
            if depth >= max_nesting:
                raise CorruptCheckpointError(
                    f"a dict key or set member is nested deeper than {max_nesting} levels"
                )
            todo.extend((x, depth + 1) for x in obj)
        elif t is list or t is dict or t is set or t is bytearray or t is OrderedDict or t is Counter:
            raise CorruptCheckpointError(f"a {t.__name__} cannot be a dict key or set member")
        elif getattr(t, "__hash__", None) is None:  # numpy arrays, records, defaultdicts, ...
            raise CorruptCheckpointError(f"a {t.__name__} cannot be a dict key or set member")


class Unpickler:
    """Run one pickle: ``Unpickler(data, resolve=..., persistent_load=...).load()``.

    ``resolve(module, name, offset)`` maps a global to a ckpt value (see module docs); ``None``
    refuses every global. ``persistent_load(pid)`` maps a persistent id to a value; ``None`` refuses them.
    BUILD reaches ckpt's own objects through their ``__ckpt_build__(state)`` method, and completes
    a :class:`Pending` into a new object. Trailing bytes after STOP are an error unless
    ``allow_trailing`` (multi-pickle streams); ``end`` then tells where the pickle stopped.
    """

    def __init__(
        self,
        data: bytes,
        *,
        resolve: Callable[[str, str, int], Any] | None,
        persistent_load: Callable[[Any], Any] | None,
        path: str | None = None,
        record: str | None = None,
        limits: Limits = DEFAULT_LIMITS,
        encoding: str = "utf-8",
        start: int = 0,
        allow_trailing: bool = False,
    ) -> None:
        self.data = data
        self.resolve = resolve
        self.persistent_load = persistent_load
        self.path = path
        self.record = record
        self.limits = limits
        self.encoding = encoding
        self.start = start
        self.end = start
        self.allow_trailing = allow_trailing
        self.protocol = 0
        self._trusted: dict[int, Any] = {}
        self._memo: dict[int, Any] = {}
        self.fast_tensor_op: Op | None = None
        """The Op for ``torch._utils._rebuild_tensor_v2``; set it to enable the tensor-record fast path."""

    # -- errors ------------------------------------------------------------------------------

    def _error(self, message: str, pos: int) -> CorruptCheckpointError:
        return CorruptCheckpointError(f"{message} (pickle offset {pos})", path=self.path, record=self.record)

    # -- helpers used by rare opcodes ----------------------------------------------------------

    def _global(self, module: Any, name: Any, pos: int) -> Any:
        if type(module) is not str or type(name) is not str:
            raise self._error("a global's module and name must be strings", pos)
        if self.resolve is None:
            raise CheckpointError(
                f"this pickle may not reference globals, but it names {module}.{name}",
                path=self.path,
                record=self.record,
            )
        return self.resolve(module, name, pos)

    def _call(self, func: Any, args: Any, pos: int, how: str = "reduce") -> Any:
        if type(args) is not tuple:
            raise self._error(f"call arguments must be a tuple, not {type(args).__name__}", pos)
        t = type(func)
        if t is GlobalRef and func.op is not None:
            func = func.op
            t = Op
        if t is Op:
            try:
                result = func.fn(*args)
            except CheckpointError as e:
                raise e.with_context(path=self.path, record=self.record)
            except (TypeError, ValueError, KeyError, IndexError, OverflowError, AttributeError) as e:
                raise self._error(f"{func.name} called with bad arguments ({e})", pos) from None
            if type(result) is Pending:
                result.mark = len(self._memo)
            return result
        if t is GlobalRef:
            return InertObject(func.qualname, args=args, how=how)
        if t is InertObject:
            return InertObject(f"{func.global_name}(...)", args=args, how=how)
        if t is Trusted:
            return self._keep_trusted(func.obj(*args))
        raise self._error(f"the pickle calls a {t.__name__} value, which is not callable data", pos)

    def _newobj(self, cls: Any, args: Any, kwargs: Any, pos: int) -> Any:
        if type(args) is not tuple:
            raise self._error("NEWOBJ arguments must be a tuple", pos)
        if kwargs is not None and type(kwargs) is not dict:
            raise self._error("NEWOBJ_EX keyword arguments must be a dict", pos)
        t = type(cls)
        if t is GlobalRef and cls.op is not None:
            cls = cls.op
            t = Op
        if t is Op and cls.newobj is not None:
            try:
                return cls.newobj(*args, **(kwargs or {}))
            except CheckpointError as e:
                raise e.with_context(path=self.path, record=self.record)
            except (TypeError, ValueError) as e:
                raise self._error(f"{cls.name} created with bad arguments ({e})", pos) from None
        if t is GlobalRef:
            return InertObject(cls.qualname, args=args, kwargs=kwargs, how="newobj")
        if t is Trusted:
            return self._keep_trusted(cls.obj.__new__(cls.obj, *args, **(kwargs or {})))
        name = cls.name if t is Op else t.__name__
        raise self._error(f"cannot create a new object of {name}", pos)

    def _build(self, inst: Any, state: Any, pos: int) -> None:
        t = type(inst)
        if t is InertObject:
            if inst.state is None:
                inst.state = state
            else:
                inst.state = [inst.state, state] if not isinstance(inst.state, list) else inst.state + [state]
            return
        hook = getattr(inst, "__ckpt_build__", None) if t not in _DICT_TYPES else None
        if hook is not None:
            try:
                hook(state)
            except CheckpointError as e:
                raise e.with_context(path=self.path, record=self.record)
            except (TypeError, ValueError, KeyError, IndexError, OverflowError, AttributeError) as e:
                raise self._error(f"BUILD state of a {t.__name__} is malformed ({e})", pos) from None
            return
        if t is OrderedDict or t is Counter:
            # torch saves module state dicts as OrderedDict + BUILD {'_metadata': ...}; like torch,
            # the state becomes instance attributes (never special names).
            if type(state) is not dict:
                raise self._error(f"BUILD state for {t.__name__} must be a dict", pos)
            for key, value in state.items():
                if type(key) is not str or key.startswith("__"):
                    raise self._error(f"BUILD may not set attribute {key!r} on {t.__name__}", pos)
                inst.__dict__[key] = value
            return
        if self._is_trusted_instance(inst):
            setstate = getattr(inst, "__setstate__", None)
            if setstate is not None:
                setstate(state)
            else:
                inst.__dict__.update(state)
            return
        raise self._error(f"BUILD on a {t.__name__} is not allowed", pos)

    def _finish_pending(self, inst: Pending, state: Any, memo: dict[int, Any], pos: int) -> Any:
        """Complete a :class:`Pending` with its BUILD state and forward the memo entries made since
        it was created to the finished value (bounded by the number of entries made since)."""
        if inst.done:
            raise self._error(f"BUILD applied twice to a {inst.name}", pos)
        try:
            value = inst.finish(state)
        except CheckpointError as e:
            raise e.with_context(path=self.path, record=self.record)
        except (TypeError, ValueError, KeyError, IndexError, OverflowError, AttributeError) as e:
            raise self._error(f"BUILD state of {inst.name} is malformed ({e})", pos) from None
        inst.value = value
        inst.done = True
        budget = len(memo) - inst.mark
        if budget > 0:
            for key in reversed(memo):
                if memo[key] is inst:
                    memo[key] = value
                budget -= 1
                if not budget:
                    break
        return value

    def _keep_trusted(self, obj: Any) -> Any:
        """Remember an object a trusted callable made: BUILD/APPEND/SETITEM on it act as in pickle."""
        self._trusted[id(obj)] = obj
        return obj

    def _is_trusted_instance(self, inst: Any) -> bool:
        return id(inst) in self._trusted

    def _append(self, target: Any, items: list[Any], pos: int) -> None:
        t = type(target)
        if t is list or t is ListRecord:
            target.extend(items)
        elif t is InertObject:
            target.listitems.extend(items)
        elif self._is_trusted_instance(target):
            for item in items:
                target.append(item)
        else:
            raise self._error(f"APPEND to a {t.__name__}; only lists take items", pos)

    def _setitems(self, target: Any, items: list[Any], pos: int) -> None:
        t = type(target)
        if len(items) % 2:
            raise self._error("SETITEMS with an odd number of items", pos)
        if t is dict or t is OrderedDict or t is Counter or t is _defaultdict or (t is Record and target.takes_items):
            for i in range(0, len(items), 2):
                key = items[i]
                if type(key) not in _SCALAR_KEYS:
                    self._check_key(key, pos)
                target[key] = items[i + 1]
        elif t is InertObject:
            target.dictitems.extend(zip(items[::2], items[1::2]))
        elif self._is_trusted_instance(target):
            for i in range(0, len(items), 2):
                target[items[i]] = items[i + 1]
        else:
            raise self._error(f"SETITEM on a {t.__name__}; only dicts take items", pos)

    def _check_key(self, key: Any, pos: int) -> None:
        try:
            check_hashable(key, self.limits.max_key_nesting)
        except CorruptCheckpointError as e:
            raise self._error(e.message, pos) from None

    def _hashable_items(self, items: Any, pos: int) -> Any:
        for x in items:
            if type(x) not in _SCALAR_KEYS:
                self._check_key(x, pos)
        return items

    # -- the tensor-record fast path ---------------------------------------------------------

    def _tensor_record(self, m: re.Match[bytes], memo: dict[int, Any], at: int) -> Any:
        """Decode one matched tensor record (see ``_TENSOR_RECORD``); ``_NO_MATCH`` if the ints
        before a tuple opcode do not match its arity (then the opcode loop handles it)."""
        (name_op, type_op, key_b, key_put, location_op, numel_op, pid_put, offset_op,
         size_empty, size_ops, size_put, stride_empty, stride_ops, stride_put, grad, od_op,
         hooks_put, args_put, result_put) = m.groups()
        value = _small_int
        size = () if size_empty is not None else _small_tuple(size_ops)
        stride = () if stride_empty is not None else _small_tuple(stride_ops)
        if size is None or stride is None or m.string[m.start(3) - 4] != len(key_b):
            return _NO_MATCH
        persistent_load = self.persistent_load
        if persistent_load is None:
            raise self._error("a persistent id appears where none is allowed", at)
        fb = int.from_bytes
        try:
            storage_name = memo[value(name_op)]
            storage_type = memo[value(type_op)]
            key = key_b.decode("ascii")
            memo[fb(key_put, "little")] = key
            location = memo[value(location_op)]
            pid = (storage_name, storage_type, key, location, value(numel_op))
            memo[fb(pid_put, "little")] = pid
            storage = persistent_load(pid)
            if size_put is not None:
                memo[fb(size_put, "little")] = size
            if stride_put is not None:
                memo[fb(stride_put, "little")] = stride
            ordered_dict = memo[value(od_op)]
        except KeyError as e:
            raise self._error(f"memo key {e.args[0]} used before it was set", at) from None
        if type(ordered_dict) is Op and ordered_dict.name == "collections.OrderedDict":
            hooks: Any = OrderedDict()
        else:
            hooks = self._call(ordered_dict, (), at)
        memo[fb(hooks_put, "little")] = hooks
        args = (storage, value(offset_op), size, stride, grad == b"\x88", hooks)
        memo[fb(args_put, "little")] = args
        rebuild = self.fast_tensor_op  # the rebuild function the record began with
        try:
            result = rebuild.fn(*args)  # type: ignore[union-attr]
        except CheckpointError as e:
            raise e.with_context(path=self.path, record=self.record)
        except (TypeError, ValueError, OverflowError) as e:
            raise self._error(f"{rebuild.name} called with bad arguments ({e})", at) from None  # type: ignore[union-attr]
        memo[fb(result_put, "little")] = result
        return result

    # -- the interpreter ---------------------------------------------------------------------

    def load(self) -> Any:
        """Run the pickle to its STOP opcode and return the object it built."""
        try:
            return self._run()
        except IndexError:
            raise self._error("the pickle is truncated or its stack is unbalanced", self.end) from None
        except RecursionError:
            raise self._error("the pickle nests too deeply", self.end) from None
        except struct.error:
            raise self._error("the pickle is truncated inside an opcode's argument", self.end) from None
        except UnicodeDecodeError:
            raise self._error("a global's name is not valid text", self.end) from None
        except MemoryError:
            raise self._error("out of memory while reading the pickle", self.end) from None

    def _run(self) -> Any:  # noqa: C901 - one flat dispatch loop is the fast shape in CPython
        data = self.data
        n = len(data)
        pos = self.start
        stack: list[Any] = []
        metastack: list[list[Any]] = []
        push = stack.append
        memo: dict[int, Any] = {}
        self._memo = memo
        resolve_global = self._global
        call = self._call
        persistent = self.persistent_load
        error = self._error
        fast_op = self.fast_tensor_op
        fast_match = _TENSOR_RECORD.match
        at = pos
        try:
            while True:
                at = pos
                op = data[pos]
                pos += 1
                # Ordered by how often torch checkpoints use each opcode.
                if op == 113:  # BINPUT
                    memo[data[pos]] = stack[-1]
                    pos += 1
                elif op == 104 or op == 106:  # BINGET, LONG_BINGET
                    if op == 104:
                        key = data[pos]
                        pos += 1
                    else:
                        key = _unpack_I(data, pos)[0]
                        pos += 4
                    try:
                        value = memo[key]
                    except KeyError:
                        raise error(f"memo key {key} used before it was set", at) from None
                    if value is fast_op and fast_op is not None:
                        m = fast_match(data, at)
                        if m is not None:
                            result = self._tensor_record(m, memo, at)
                            if result is not _NO_MATCH:
                                push(result)
                                pos = m.end()
                                continue
                    push(value)
                elif op == 88:  # BINUNICODE
                    (ln,) = _unpack_I(data, pos)
                    pos += 4
                    if pos + ln > n:
                        raise error(f"a string declares {ln:,} bytes but only {n - pos:,} remain", at)
                    push(str(data[pos : pos + ln], "utf-8", "surrogatepass"))
                    pos += ln
                elif op == 40:  # MARK
                    metastack.append(stack)
                    stack = []
                    push = stack.append
                elif op == 116:  # TUPLE
                    items = tuple(stack)
                    stack = metastack.pop()
                    push = stack.append
                    push(items)
                elif op == 75:  # BININT1
                    push(data[pos])
                    pos += 1
                elif op == 82:  # REDUCE
                    args = stack.pop()
                    stack[-1] = call(stack[-1], args, at)
                elif op == 133:  # TUPLE1
                    stack[-1] = (stack[-1],)
                elif op == 134:  # TUPLE2
                    b = stack.pop()
                    stack[-1] = (stack[-1], b)
                elif op == 135:  # TUPLE3
                    c = stack.pop()
                    b = stack.pop()
                    stack[-1] = (stack[-1], b, c)
                elif op == 81:  # BINPERSID
                    if persistent is None:
                        raise error("a persistent id appears where none is allowed", at)
                    stack[-1] = persistent(stack[-1])
                elif op == 137:  # NEWFALSE
                    push(False)
                elif op == 136:  # NEWTRUE
                    push(True)
                elif op == 41:  # EMPTY_TUPLE
                    push(())
                elif op == 117:  # SETITEMS
                    items = stack
                    stack = metastack.pop()
                    push = stack.append
                    self._setitems(stack[-1], items, at)
                elif op == 99:  # GLOBAL
                    nl = data.find(b"\n", pos)
                    nl2 = data.find(b"\n", nl + 1) if nl >= 0 else -1
                    if nl2 < 0:
                        raise error("GLOBAL without its two newline-terminated names", at)
                    module = str(data[pos:nl], "utf-8", "strict")
                    name = str(data[nl + 1 : nl2], "utf-8", "strict")
                    pos = nl2 + 1
                    push(resolve_global(module, name, at))
                elif op == 74:  # BININT
                    push(_unpack_i(data, pos)[0])
                    pos += 4
                elif op == 77:  # BININT2
                    push(_unpack_H(data, pos)[0])
                    pos += 2
                elif op == 114:  # LONG_BINPUT
                    memo[_unpack_I(data, pos)[0]] = stack[-1]
                    pos += 4
                elif op == 148:  # MEMOIZE
                    memo[len(memo)] = stack[-1]
                elif op == 125:  # EMPTY_DICT
                    push({})
                elif op == 93:  # EMPTY_LIST
                    push([])
                elif op == 115:  # SETITEM
                    value = stack.pop()
                    key = stack.pop()
                    self._setitems(stack[-1], [key, value], at)
                elif op == 97:  # APPEND
                    value = stack.pop()
                    self._append(stack[-1], [value], at)
                elif op == 101:  # APPENDS
                    items = stack
                    stack = metastack.pop()
                    push = stack.append
                    self._append(stack[-1], items, at)
                elif op == 140:  # SHORT_BINUNICODE
                    ln = data[pos]
                    pos += 1
                    if pos + ln > n:
                        raise error("a string runs past the end of the pickle", at)
                    push(str(data[pos : pos + ln], "utf-8", "surrogatepass"))
                    pos += ln
                elif op == 78:  # NONE
                    push(None)
                elif op == 71:  # BINFLOAT
                    push(_unpack_d(data, pos)[0])
                    pos += 8
                elif op == 138:  # LONG1
                    ln = data[pos]
                    pos += 1
                    if pos + ln > n:
                        raise error("a LONG1 integer runs past the end of the pickle", at)
                    push(int.from_bytes(data[pos : pos + ln], "little", signed=True))
                    pos += ln
                elif op == 98:  # BUILD
                    state = stack.pop()
                    inst = stack[-1]
                    if type(inst) is Pending:
                        stack[-1] = self._finish_pending(inst, state, memo, at)
                    else:
                        self._build(inst, state, at)
                elif op == 128:  # PROTO
                    proto = data[pos]
                    pos += 1
                    if proto > HIGHEST_PROTOCOL:
                        raise UnsupportedFormatError(
                            f"pickle protocol {proto} is newer than any Python writes (highest is 5)",
                            path=self.path,
                            record=self.record,
                        )
                    self.protocol = proto
                elif op == 149:  # FRAME
                    (ln,) = _unpack_Q(data, pos)
                    pos += 8
                    if pos + ln > n:
                        raise error(f"a frame declares {ln:,} bytes but only {n - pos:,} remain", at)
                elif op == 147:  # STACK_GLOBAL
                    name = stack.pop()
                    module = stack.pop()
                    push(resolve_global(module, name, at))
                elif op == 129:  # NEWOBJ
                    args = stack.pop()
                    stack[-1] = self._newobj(stack[-1], args, None, at)
                elif op == 146:  # NEWOBJ_EX
                    kwargs = stack.pop()
                    args = stack.pop()
                    stack[-1] = self._newobj(stack[-1], args, kwargs, at)
                elif op == 46:  # STOP
                    self.end = pos
                    if metastack:
                        raise error("the pickle stops inside an unclosed MARK", at)
                    if len(stack) != 1:
                        raise error(f"the pickle stops with {len(stack)} values on its stack, not 1", at)
                    if pos != n and not self.allow_trailing:
                        raise error(
                            f"{n - pos:,} bytes follow the pickle's STOP opcode; the record is ambiguous "
                            "(a second pickle or appended data)",
                            at,
                        )
                    return stack[0]
                elif op == 143:  # EMPTY_SET
                    push(set())
                elif op == 144:  # ADDITEMS
                    items = stack
                    stack = metastack.pop()
                    push = stack.append
                    target = stack[-1]
                    if type(target) is not set:
                        raise error(f"ADDITEMS to a {type(target).__name__}; only sets take items", at)
                    target.update(self._hashable_items(items, at))
                elif op == 145:  # FROZENSET
                    items = stack
                    stack = metastack.pop()
                    push = stack.append
                    push(frozenset(self._hashable_items(items, at)))
                elif op == 67 or op == 66 or op == 142:  # SHORT_BINBYTES, BINBYTES, BINBYTES8
                    ln, pos = self._length(op, 67, 66, pos, at)
                    push(data[pos : pos + ln])
                    pos += ln
                elif op == 150:  # BYTEARRAY8
                    (ln,) = _unpack_Q(data, pos)
                    pos += 8
                    if pos + ln > n:
                        raise error("a bytearray runs past the end of the pickle", at)
                    push(bytearray(data[pos : pos + ln]))
                    pos += ln
                elif op == 141:  # BINUNICODE8
                    (ln,) = _unpack_Q(data, pos)
                    pos += 8
                    if pos + ln > n:
                        raise error(f"a string declares {ln:,} bytes but only {n - pos:,} remain", at)
                    push(str(data[pos : pos + ln], "utf-8", "surrogatepass"))
                    pos += ln
                elif op == 85 or op == 84:  # SHORT_BINSTRING, BINSTRING
                    if op == 85:
                        ln = data[pos]
                        pos += 1
                    else:
                        (ln,) = _unpack_i(data, pos)
                        pos += 4
                        if ln < 0:
                            raise error("negative BINSTRING length", at)
                    if pos + ln > n:
                        raise error("a string runs past the end of the pickle", at)
                    push(self._decode_str(data[pos : pos + ln], at))
                    pos += ln
                elif op == 139:  # LONG4
                    (ln,) = _unpack_i(data, pos)
                    pos += 4
                    if ln < 0 or pos + ln > n:
                        raise error("a LONG4 integer runs past the end of the pickle", at)
                    push(int.from_bytes(data[pos : pos + ln], "little", signed=True))
                    pos += ln
                elif op == 48:  # POP
                    if stack:
                        stack.pop()
                    else:
                        stack = metastack.pop()
                        push = stack.append
                elif op == 49:  # POP_MARK
                    stack = metastack.pop()
                    push = stack.append
                elif op == 50:  # DUP
                    push(stack[-1])
                elif op == 108:  # LIST
                    items = stack
                    stack = metastack.pop()
                    push = stack.append
                    push(items)
                elif op == 100:  # DICT
                    items = stack
                    stack = metastack.pop()
                    push = stack.append
                    d: dict[Any, Any] = {}
                    self._setitems(d, items, at)
                    push(d)
                elif op in (73, 76, 70, 83, 86, 103, 112, 80):  # protocol-0 text opcodes
                    nl = data.find(b"\n", pos)
                    if nl < 0:
                        raise error("a text opcode is not newline-terminated", at)
                    line = data[pos:nl]
                    pos = nl + 1
                    if op == 112:  # PUT
                        idx = self._text_int(line, at)
                        if idx < 0:
                            raise error("negative PUT index", at)
                        memo[idx] = stack[-1]
                    elif op == 103:  # GET
                        idx = self._text_int(line, at)
                        if idx not in memo:
                            raise error(f"memo key {idx} used before it was set", at)
                        push(memo[idx])
                    elif op == 80:  # PERSID
                        if persistent is None:
                            raise error("a persistent id appears where none is allowed", at)
                        try:
                            pid = line.decode("ascii")
                        except UnicodeDecodeError:
                            raise error("a text persistent id is not ASCII", at) from None
                        push(persistent(pid))
                    else:
                        push(self._text_value(op, line, at))
                elif op == 105:  # INST
                    nl = data.find(b"\n", pos)
                    nl2 = data.find(b"\n", nl + 1) if nl >= 0 else -1
                    if nl2 < 0:
                        raise error("INST without its two newline-terminated names", at)
                    module = str(data[pos:nl], "ascii", "strict")
                    name = str(data[nl + 1 : nl2], "ascii", "strict")
                    pos = nl2 + 1
                    cls = resolve_global(module, name, at)
                    args = tuple(stack)
                    stack = metastack.pop()
                    push = stack.append
                    push(call(cls, args, at, "inst"))
                elif op == 111:  # OBJ
                    items = stack
                    stack = metastack.pop()
                    push = stack.append
                    if not items:
                        raise error("OBJ without a class", at)
                    push(call(items[0], tuple(items[1:]), at, "inst"))
                elif op in (130, 131, 132):  # EXT1, EXT2, EXT4
                    if op == 130:
                        code = data[pos]
                        pos += 1
                    elif op == 131:
                        code = _unpack_H(data, pos)[0]
                        pos += 2
                    else:
                        code = _unpack_i(data, pos)[0]
                        pos += 4
                    # The copyreg extension registry is process state, not file content: never consult it.
                    push(resolve_global("copyreg.extension", str(code), at))
                elif op == 151 or op == 152:  # NEXT_BUFFER, READONLY_BUFFER
                    raise UnsupportedFormatError(
                        "the pickle uses protocol-5 out-of-band buffers, which a file cannot carry",
                        path=self.path,
                        record=self.record,
                    )
                else:
                    raise error(f"unknown pickle opcode 0x{op:02x}", at)
        except BaseException:
            self.end = at
            raise

    def _length(self, op: int, short: int, mid: int, pos: int, at: int) -> tuple[int, int]:
        data = self.data
        if op == short:
            ln = data[pos]
            pos += 1
        elif op == mid:
            (ln,) = _unpack_I(data, pos)
            pos += 4
        else:
            (ln,) = _unpack_Q(data, pos)
            pos += 8
        if pos + ln > len(data):
            raise self._error(f"bytes declare {ln:,} bytes but only {len(data) - pos:,} remain", at)
        return ln, pos

    def _decode_str(self, raw: bytes, at: int) -> Any:
        if self.encoding == "bytes":
            return raw
        try:
            return raw.decode(self.encoding)
        except UnicodeDecodeError:
            raise self._error(f"a protocol-0/1 string is not valid {self.encoding}", at) from None

    def _text_int(self, line: bytes, at: int) -> int:
        try:
            return int(line)
        except ValueError:
            raise self._error("a text integer is malformed", at) from None

    def _text_value(self, op: int, line: bytes, at: int) -> Any:
        try:
            if op == 73:  # INT
                if line == b"00":
                    return False
                if line == b"01":
                    return True
                return int(line, 0)
            if op == 76:  # LONG
                if line.endswith(b"L"):
                    line = line[:-1]
                return int(line, 0)
            if op == 70:  # FLOAT
                return float(line)
            if op == 86:  # UNICODE
                return str(line, "raw-unicode-escape")
            # STRING: a quoted, escaped byte string
            if len(line) >= 2 and line[0] == line[-1] and line[:1] in (b'"', b"'"):
                raw = codecs.escape_decode(line[1:-1])[0]
                return self._decode_str(raw, at)
            raise ValueError("STRING is not quoted")
        except (ValueError, UnicodeDecodeError) as e:
            raise self._error(f"a text value is malformed ({e})", at) from None
