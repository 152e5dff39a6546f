"""A restricted pickle interpreter for protocols 0 to 5 that never imports or calls what a file names.

This is an opcode-level virtual machine, not a ``pickle.Unpickler`` subclass: every opcode is
handled here and type-checked. Globals are handed to a ``resolve(module, name, offset)`` callback that
returns only ckpt-owned values: an :class:`Op` (a ckpt function the VM may call), a
:class:`~ckpt.values.GlobalRef` (inert), a :class:`Trusted` callable the *caller* supplied, or a
plain value (a dtype). Calls (REDUCE, NEWOBJ, INST, OBJ) on anything else never execute: a
``GlobalRef`` called becomes an :class:`~ckpt.values.InertObject` recording the call.

Memory and time are linear in the size of the pickle: the memo is a dict (a sparse index cannot
allocate), lengths are checked against the bytes that remain, nothing recurses.

The entries ``torch.save`` writes for a state dict (a key, a PUT, then the dozen opcodes of a dense
tensor) are recognised by their byte layout (:mod:`ckpt.tensor_records`) and applied a run at a
time, when that provably leaves what the opcodes would: the same stack, the same calls in the same
order, the same memo (a run's memo entries are kept as its columns and made when first read).
Anything else, and any run that cannot be proved so, goes opcode by opcode.

>>> import pickle
>>> vm = Unpickler(pickle.dumps({"a": [1, 2.5, "x"]}, protocol=5), resolve=None, persistent_load=None)
>>> vm.load()
{'a': [1, 2.5, 'x']}
"""

from __future__ import annotations

import codecs
import struct
from collections import Counter, OrderedDict
from bisect import bisect_right
from itertools import chain
from collections import defaultdict as _defaultdict
from typing import Any, Callable

from .errors import CheckpointError, CorruptCheckpointError, UnsupportedFormatError
from .limits import DEFAULT_LIMITS, Limits
from .tensor_records import EntryShape, RecordShape, learn_shape, tensor_record_regex
from .values import GlobalRef, InertObject, ListRecord, Record, brief_repr

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
_SHAPES_KEPT = 64  # record and entry layouts remembered per pickle, most recently used first

_DICT_TYPES = (dict, OrderedDict, Counter)
_SCALAR_KEYS = (str, int, float, bool, type(None), bytes)
_SCALAR_KEY_SET = frozenset(_SCALAR_KEYS)
_KEY_NODES = 100_000


def _decode_all(raw: tuple[bytes, ...]) -> list[str] | None:
    """``[str(b, "utf-8", "surrogatepass") for b in raw]`` (None if one is not UTF-8), decoded
    in one call when no string holds a NUL to split them at."""
    joined = b"\x00".join(raw)
    try:
        if joined.count(b"\x00") == len(raw) - 1:  # only the separators
            return joined.decode("utf-8", "surrogatepass").split("\x00")
        return [str(b, "utf-8", "surrogatepass") for b in raw]
    except UnicodeDecodeError:
        return None


def _consecutive(writes: list[tuple[int, ...]], reads: set[int]) -> bool:
    """Whether the memo keys a run writes are consecutive, each entry's in opcode order (as
    CPython's pickler numbers them: ``k`` writes per entry, ``writes[j][i] == first + i*k + j``),
    and none of them is read: then all are distinct and one-by-one order cannot matter."""
    k = len(writes)
    m = len(writes[0])
    first = writes[0][0]
    if type(first) is not int:  # pragma: no cover - struct gives ints
        return False
    for j, col in enumerate(writes):
        if col != tuple(range(first + j, first + j + k * m, k)):
            return False
    return all(not first <= x < first + k * m for x in reads)


def check_hashable(key: Any, max_nesting: int) -> None:
    """Refuse unhashable dict keys / set members, and tuples nested so deep that hashing them would
    exhaust the C stack (tuple hashing recurses without a guard)."""
    if type(key) in _SCALAR_KEYS:
        return
    todo = [(key, 0)]
    budget = _KEY_NODES
    while todo:
        obj, depth = todo.pop()
        budget -= 1
        if budget < 0:
            # Hashing walks shared tuples once per path: a small "billion laughs" key would hang.
            raise CorruptCheckpointError(f"a dict key or set member holds more than {_KEY_NODES:,} items")
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


class _LazyRun:
    """The memo entries of a run of state-dict entries applied at once, made when first read.

    The run's keys are ``[first, end)``, ``k`` per entry in opcode order; ``columns[j][i]`` is
    the value of entry ``i``'s ``j``-th key, except where ``columns[j]`` is a tuple of columns (the
    persistent id's parts, the rebuild call's arguments): that value is the tuple of their
    ``i``-th items, made with its entry (then the same object for every read).
    """

    __slots__ = ("first", "end", "k", "columns")

    def __init__(self, first: int, end: int, columns: list[Any]) -> None:
        self.first = first
        self.end = end
        self.k = len(columns)
        self.columns = columns

    def make_entry(self, key: int, memo: dict[int, Any]) -> None:
        """Put the values of the entry holding ``key`` in ``memo``, where no later write has."""
        i = (key - self.first) // self.k
        base = self.first + i * self.k
        for j, col in enumerate(self.columns):
            value = tuple(part[i] for part in col) if type(col) is tuple else col[i]
            memo.setdefault(base + j, value)

    def make_all(self, memo: dict[int, Any]) -> None:
        for j, col in enumerate(self.columns):
            values = zip(*col) if type(col) is tuple else col
            for key, value in zip(range(self.first + j, self.end, self.k), values):
                memo.setdefault(key, value)


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
        self._lazy: list[_LazyRun] = []  # runs whose memo entries are made when read, by first key
        self._lazy_firsts: list[int] = []
        self._lazy_end = 0
        self._record_shapes: list[RecordShape] = []
        self._entry_shapes: list[EntryShape] = []
        self._memo: dict[int, Any] = {}
        self.fast_tensor_op: Op | None = None
        """The Op for ``torch._utils._rebuild_tensor_v2``; set it to enable the tensor-record fast path."""
        self.persistent_load_many: Callable[..., list[Any]] | None = None
        """Optional: ``persistent_load_many(names, types, keys, locations, numels)`` gives what
        ``[persistent_load(pid) for pid in zip(names, types, keys, locations, numels)]`` gives,
        made at once (the fast path hands it the persistent ids of a run of tensor records, as
        columns)."""

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
                self._materialize()  # the mark counts memo entries
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
                if type(key) is not str or key.startswith("__") or hasattr(t, key):
                    # special names, and names that would shadow the mapping's own methods (keys, get)
                    raise self._error(f"BUILD may not set attribute {brief_repr(key)} on {t.__name__}", pos)
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
        self._materialize()
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
            keys = items[0::2]
            if not _SCALAR_KEY_SET.issuperset(map(type, keys)):
                for key in keys:
                    if type(key) not in _SCALAR_KEYS:
                        self._check_key(key, pos)
            for key, value in zip(keys, items[1::2]):
                target[key] = value
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

    def _tensor_run(self, data: bytes, at: int, memo: dict[int, Any], stack: list[Any]) -> int:
        """Apply the tensor record at ``at`` (its GET of the rebuild function already read by the
        loop), then every ``BINUNICODE key, PUT, record`` entry that follows it; returns where the
        opcode loop goes on, or -1 to let it take the first record opcode by opcode.

        Each step has exactly the stack and memo effects of the opcodes it stands for (see
        :mod:`ckpt.tensor_records`). Where a step cannot be applied whole (a memo key not set, a
        key that is not UTF-8, an entry whose GET is not the rebuild function), the loop takes
        over at that entry: the memo writes already made are the ones it makes again."""
        shape = self._record_shape(data, at)
        if shape is None:
            return -1
        result = self._apply_record(shape, shape.unpack(data, at), memo, at)
        if result is _NO_MATCH:
            return -1
        stack.append(result)
        at += shape.length
        while True:
            es = self._entry_shape(data, at)
            if es is None:
                return at
            end = es.run(data, at).end()  # type: ignore[union-attr] - es.match succeeded at ``at``
            rows = list(es.iter_unpack(data[at:end]))
            if not self._apply_entries(es, rows, memo, stack, at):
                for vals in rows:
                    if not self._apply_entry(es, vals, memo, stack, at):
                        return at
                    at += es.length
            at = end

    def _apply_entry(self, es: EntryShape, vals: tuple[Any, ...], memo: dict[int, Any], stack: list[Any],
                     at: int) -> bool:
        """One entry (operands ``vals``), opcode by opcode semantics; False if not applied whole."""
        try:
            key = str(vals[0], "utf-8", "surrogatepass")
        except UnicodeDecodeError:
            return False
        memo[vals[1]] = key
        if memo.get(vals[2], _NO_MATCH) is not self.fast_tensor_op:
            return False
        result = self._apply_record(es.record, vals[3:], memo, at)
        if result is _NO_MATCH:
            return False
        stack.append(key)
        stack.append(result)
        return True

    def _apply_entries(self, es: EntryShape, rows: list[tuple[Any, ...]], memo: dict[int, Any],
                       stack: list[Any], at: int) -> bool:
        """Apply consecutive entries of one layout at once, when that provably leaves the state
        one-by-one application would: every memo key they write is distinct and none is read by
        them, every key they read is set (the rebuild function, ``collections.OrderedDict``, the
        storage name, type and location), and every dict key is UTF-8. Returns False, having
        changed nothing, otherwise; a persistent id or rebuild that fails is then met one by one,
        so errors are raised where the opcode loop raises them."""
        rec = es.record
        m = len(rows)
        if m < 2 or self.persistent_load is None:
            return False
        cols = list(zip(*rows))
        key_col, put_col, get_col = cols[0], cols[1], cols[2]
        r = cols[3:]
        size_put, stride_put, grad_i, od_i, hooks_i, args_i, result_i = rec.picks
        reads = set(get_col) | set(r[0]) | set(r[1]) | set(r[4]) | set(r[od_i])
        writes = [put_col, r[3], r[6]]  # in opcode order: key, storage key, persistent id, ...
        if size_put is not None:
            writes.append(r[size_put])
        if stride_put is not None:
            writes.append(r[stride_put])
        writes += [r[hooks_i], r[args_i], r[result_i]]
        first, end = put_col[0], put_col[0] + m * len(writes)
        if _consecutive(writes, reads):
            # the entries' memo keys are [first, end): kept as columns and made when read, unless
            # an earlier write or run already holds one of them
            span = range(first, end)
            lazy = first >= self._lazy_end and (  # iterating the smaller of the memo and the span
                not any(map(span.__contains__, memo)) if len(memo) < len(span) else memo.keys().isdisjoint(span)
            )
        else:
            written = set().union(*writes)
            if len(written) != m * len(writes) or not written.isdisjoint(reads):
                return False
            lazy = False
        get = memo.get
        rebuild = self.fast_tensor_op
        if any(get(k, _NO_MATCH) is not rebuild for k in set(get_col)):
            return False
        for k in set(r[od_i]):
            od = get(k)
            if type(od) is not Op or od.name != "collections.OrderedDict":
                return False
        if not all(k in memo for k in set(r[0]) | set(r[1]) | set(r[4])):
            return False
        keys = _decode_all(key_col)
        if keys is None:
            return False
        skeys = b" ".join(r[2]).decode("ascii").split(" ")  # digits: the layout allows nothing else
        names, types, locations = list(map(get, r[0])), list(map(get, r[1])), list(map(get, r[4]))
        sizes = list(zip(*r[rec.size])) if rec.size is not None else [()] * m
        strides = list(zip(*r[rec.stride])) if rec.stride is not None else [()] * m
        hooks = [OrderedDict() for _ in range(m)]
        try:
            many = self.persistent_load_many
            storages = many(names, types, skeys, locations, r[5]) if many is not None else list(
                map(self.persistent_load, zip(names, types, skeys, locations, r[5]))
            )
            arg_parts = (storages, r[7], sizes, strides, list(map((0x88).__eq__, r[grad_i])), hooks)
            results = list(map(rebuild.fn, *arg_parts))  # type: ignore[union-attr]
        except (CheckpointError, TypeError, ValueError, OverflowError):
            return False  # one by one, to raise the error at the entry that has it
        # the persistent ids and argument tuples are kept as their parts (a tuple is made when read)
        pid_parts = (names, types, skeys, locations, r[5])
        columns: list[Any] = [keys, skeys, pid_parts]  # in the order of ``writes``
        if size_put is not None:
            columns.append(sizes)
        if stride_put is not None:
            columns.append(strides)
        columns += [hooks, arg_parts, results]
        if lazy:
            self._lazy.append(_LazyRun(first, end, columns))
            self._lazy_firsts.append(first)
            self._lazy_end = end
        else:
            for col, values in zip(writes, columns):
                memo.update(zip(col, zip(*values) if type(values) is tuple else values))
        stack.extend(chain.from_iterable(zip(keys, results)))
        return True

    def _lazy_value(self, key: int, at: int) -> Any:
        """The memo entry ``key`` that a run of entries holds unmade: makes its entry's values
        (each one object, as the opcodes made them) and returns the one asked for; raises the
        loop's error if no run holds it either."""
        i = bisect_right(self._lazy_firsts, key) - 1
        if i >= 0 and key < self._lazy[i].end:
            self._lazy[i].make_entry(key, self._memo)
            return self._memo[key]
        raise self._error(f"memo key {key} used before it was set", at)

    def _materialize(self) -> None:
        """Make every memo entry the runs hold unmade (before the memo's size or order counts)."""
        for run in self._lazy:
            run.make_all(self._memo)
        self._lazy.clear()
        self._lazy_firsts.clear()

    def memo_snapshot(self) -> dict[int, Any]:
        """The memo as the opcodes left it, every entry made (for tests and debugging)."""
        self._materialize()
        return dict(self._memo)

    def _record_shape(self, data: bytes, at: int) -> RecordShape | None:
        """The layout of the tensor record at ``at``, most recently used first, learned if new."""
        shapes = self._record_shapes
        for i, shape in enumerate(shapes):
            if shape.match(data, at) is not None:
                if i:
                    shapes.insert(0, shapes.pop(i))
                return shape
        m = tensor_record_regex().match(data, at)
        shape = learn_shape(m) if m is not None else None
        if shape is not None:
            shapes.insert(0, shape)
            del shapes[_SHAPES_KEPT:]
        return shape

    def _entry_shape(self, data: bytes, at: int) -> EntryShape | None:
        """The layout of the state-dict entry (key, PUT, tensor record) at ``at``, or None."""
        for i, es in enumerate(self._entry_shapes):
            if es.match(data, at) is not None:
                if i:
                    self._entry_shapes.insert(0, self._entry_shapes.pop(i))
                return es
        n = len(data)
        if at + 5 > n or data[at] != 88:  # BINUNICODE
            return None
        q = at + 5 + _unpack_I(data, at + 1)[0]
        if q + 2 > n or data[q] not in (113, 114):  # BINPUT, LONG_BINPUT
            return None
        r = q + (2 if data[q] == 113 else 5)
        if r >= n or data[r] not in (104, 106):  # BINGET, LONG_BINGET of the rebuild function
            return None
        shape = self._record_shape(data, r)
        if shape is None:
            return None
        es = EntryShape(q - at - 5, r - q, shape)
        if es.match(data, at) is None:  # pragma: no cover - the parts matched one by one
            return None
        self._entry_shapes.insert(0, es)
        del self._entry_shapes[_SHAPES_KEPT:]
        return es

    def _apply_record(self, shape: RecordShape, vals: tuple[Any, ...], memo: dict[int, Any], at: int) -> Any:
        """What one tensor record of ``shape`` (operands ``vals``) leaves on the stack, with its
        memo writes, persistent id and calls made in opcode order; ``_NO_MATCH`` when it reads a
        memo key that is not set, or its hooks are not made by ``collections.OrderedDict`` (the
        loop then goes opcode by opcode, and reports an error at its opcode)."""
        name_i, type_i, key_b, key_put, location_i, numel, pid_put, offset = vals[:8]
        size_put, stride_put, grad, od_i, hooks_put, args_put, result_put = shape.tail(vals)
        size = vals[shape.size] if shape.size is not None else ()
        stride = vals[shape.stride] if shape.stride is not None else ()
        persistent_load = self.persistent_load
        if persistent_load is None:
            raise self._error("a persistent id appears where none is allowed", at)
        try:
            storage_name = memo[name_i]
            storage_type = memo[type_i]
            key = key_b.decode("ascii")  # digits: the layout allows nothing else
            memo[key_put] = key
            pid = (storage_name, storage_type, key, memo[location_i], numel)
            memo[pid_put] = pid
            storage = persistent_load(pid)
            if size_put is not None:
                memo[size_put] = size
            if stride_put is not None:
                memo[stride_put] = stride
            ordered_dict = memo[od_i]
        except KeyError:
            return _NO_MATCH
        if type(ordered_dict) is not Op or ordered_dict.name != "collections.OrderedDict":
            return _NO_MATCH  # the loop makes (or refuses) that call, at its own offset
        hooks = OrderedDict()
        memo[hooks_put] = hooks
        args = (storage, offset, size, stride, grad == 0x88, hooks)  # NEWTRUE is 0x88
        memo[args_put] = args
        rebuild = self.fast_tensor_op  # the rebuild function the record began with
        try:
            result = rebuild.fn(*args)  # type: ignore[union-attr]
        except CheckpointError as e:
            raise e.with_context(path=self.path, record=self.record)
        except (TypeError, ValueError, OverflowError) as e:
            raise self._error(f"{rebuild.name} called with bad arguments ({e})", at) from None  # type: ignore[union-attr]
        memo[result_put] = result
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
                        value = self._lazy_value(key, at)
                    if value is fast_op and fast_op is not None:
                        end = self._tensor_run(data, at, memo, stack)
                        if end >= 0:
                            pos = end
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
                    if self._lazy:
                        self._materialize()  # its key is the number of entries made so far
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
                        push(memo[idx] if idx in memo else self._lazy_value(idx, at))
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
