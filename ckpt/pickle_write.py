"""A protocol-2 pickler that writes exactly what CPython's C pickler writes, without importing what
it names.

torch.save pickles with ``pickle.Pickler(protocol=2)`` (the C implementation). To give the same
bytes without torch, :class:`Pickler` follows that implementation step by step for the types a
checkpoint holds:

* atoms: ``None``, bools, ints (``BININT1``/``BININT2``/``BININT``/``LONG1``/``LONG4``), floats
  (``BINFLOAT``), never memoized;
* ``str`` (``BINUNICODE``), ``bytes`` (``_codecs.encode(text, 'latin1')``, as protocol 2 must),
  tuples (``EMPTY_TUPLE``, ``TUPLE1``-``TUPLE3``, ``MARK ... TUPLE``), lists and dicts (``APPEND(S)``
  / ``SETITEM(S)`` in batches of 1000, with the C pickler's exact batch boundaries), sets,
  ``complex``, ``bytearray``, ``collections.OrderedDict`` (with its instance ``__dict__`` as
  BUILD state, which is how module state dicts carry ``_metadata``) and ``collections.Counter``;
* everything else through a *reduction* (``callable, args[, state, listitems, dictitems]``) that a
  hook supplies (:class:`ckpt.save` turns tensors, arrays and ckpt's values into torch's own
  reductions), and storages through a *persistent id* hook, as torch's pickler does.

Memoization follows the C pickler: every memoizable object is put in the memo (``BINPUT``, or
``LONG_BINPUT`` from index 256) the first time it is saved and fetched (``BINGET``) on every later
occurrence, keyed by *object identity*. Globals are keyed by their name (the C pickler's key is
the object, which for a global is one object per name). Objects made on the fly for a reduction
(an argument tuple, a fresh ``OrderedDict()``) take a memo slot each, as in CPython.

Every global written is checked by ``check_global`` (``ckpt.save`` passes ckpt's allowlist), so
nothing torch's ``weights_only`` loader would refuse can be written.

>>> import pickle
>>> obj = {"a": [1, 2.5, "x", None, True, (1, 2)], "b": b"\\x00\\xff"}
>>> Pickler().dumps(obj) == pickle.dumps(obj, protocol=2)
True
"""

from __future__ import annotations

import _compat_pickle
import struct
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

from .errors import UnsavableObjectError

BATCHSIZE = 1000

_pack_i = struct.Struct("<i").pack
_pack_I = struct.Struct("<I").pack
_pack_d = struct.Struct(">d").pack


_BININT1 = [b"K" + bytes((i,)) for i in range(256)]
_TUPLE_N = (b")", b"\x85", b"\x86", b"\x87")


class Global:
    """A global a pickle names: ``GLOBAL module name`` (one object per name, so the memo finds it)."""

    __slots__ = ("module", "name", "opcode")
    _made: dict[tuple[str, str], Global] = {}

    def __init__(self, module: str, name: str) -> None:
        self.module = module
        self.name = name
        pmod, pname = _py2_name(module, name)
        self.opcode = b"c" + pmod.encode("utf-8") + b"\n" + pname.encode("utf-8") + b"\n"

    @classmethod
    def of(cls, module: str, name: str) -> Global:
        key = (module, name)
        made = cls._made.get(key)
        if made is None:
            made = cls._made[key] = cls(module, name)
        return made

    @property
    def qualname(self) -> str:
        return f"{self.module}.{self.name}"

    def __repr__(self) -> str:
        return f"<global {self.qualname}>"


def _py2_name(module: str, name: str) -> tuple[str, str]:
    """The name protocol 2 writes (``fix_imports``): ``builtins.set`` is ``__builtin__ set``."""
    mapped = _compat_pickle.REVERSE_NAME_MAPPING.get((module, name))
    if mapped is not None:
        return mapped
    return _compat_pickle.REVERSE_IMPORT_MAPPING.get(module, module), name


G_CODECS_ENCODE = Global.of("_codecs", "encode")
G_BYTES = Global.of("builtins", "bytes")
G_BYTEARRAY = Global.of("builtins", "bytearray")
G_SET = Global.of("builtins", "set")
G_FROZENSET = Global.of("builtins", "frozenset")
G_COMPLEX = Global.of("builtins", "complex")
G_ORDERED_DICT = Global.of("collections", "OrderedDict")
G_COUNTER = Global.of("collections", "Counter")
G_NEWOBJ = Global.of("copyreg", "__newobj__")
_EMPTY_TUPLE: tuple[()] = ()
_LATIN1 = "latin1"  # the C pickler uses the interned "latin1"; this literal is that object


class Reduction:
    """An object that pickles as ``callable(*args)`` (plus optional BUILD ``state`` and items),
    memoized under itself. ``ckpt.save`` makes these for tensors and ckpt's values."""

    __slots__ = ("func", "args", "state", "listitems", "dictitems", "__weakref__")

    def __init__(
        self, func: Global, args: tuple[Any, ...], state: Any = None,
        listitems: Iterator[Any] | None = None, dictitems: Iterator[tuple[Any, Any]] | None = None,
    ) -> None:
        self.func = func
        self.args = args
        self.state = state
        self.listitems = listitems
        self.dictitems = dictitems


class PersistentId:
    """What the persistent id hook returns for a storage: the tuple to pickle before ``BINPERSID``."""

    __slots__ = ("pid",)

    def __init__(self, pid: tuple[Any, ...]) -> None:
        self.pid = pid


class TensorRecord:
    """A dense tensor as torch pickles it: ``func(pid, offset, size, stride, requires_grad,
    OrderedDict(), *tail)`` with ``pid = ('storage', storage_type, key, location, numel)``.

    The same bytes as the equivalent :class:`Reduction` (fresh tuples and a fresh ``OrderedDict``
    each time, as torch's ``__reduce_ex__`` makes them), written without building those objects.
    """

    __slots__ = ("func", "storage_type", "key", "location", "numel", "offset", "size", "stride",
                 "requires_grad", "tail", "__weakref__")

    def __init__(
        self, func: Global, storage_type: Global, key: str, location: str, numel: int, offset: int,
        size: tuple[int, ...], stride: tuple[int, ...], requires_grad: bool, tail: tuple[Any, ...] = (),
    ) -> None:
        self.func = func
        self.storage_type = storage_type
        self.key = key
        self.location = location
        self.numel = numel
        self.offset = offset
        self.size = size
        self.stride = stride
        self.requires_grad = requires_grad
        self.tail = tail


ReduceHook = Callable[[Any], Any]
"""``hook(obj)`` for an object of a type the pickler does not know: a :class:`Reduction`, a
:class:`Global` (the object is that global), a :class:`PersistentId` (the object is a storage),
or ``None`` (the object cannot be written)."""


class Pickler:
    """``Pickler(reduce=..., check_global=...).dumps(obj)``: protocol-2 bytes of ``obj``.

    ``reduce`` is the :data:`ReduceHook`; ``check_global(global_)`` may raise to refuse a global.
    """

    def __init__(
        self, *, reduce: ReduceHook | None = None, check_global: Callable[[Global], None] | None = None
    ) -> None:
        self.reduce = reduce
        self.check_global = check_global
        self.out = bytearray()
        self.memo: dict[int, int] = {}
        self._keep: list[Any] = []
        self.memo_size = 0
        self._dispatch: dict[type, Callable[[Any], None]] = {
            str: self.save_str,
            tuple: self.save_tuple,
            list: self.save_list,
            dict: self.save_dict,
            bytes: self.save_bytes,
            OrderedDict: self.save_ordered_dict,
            Counter: self.save_counter,
            set: self.save_set,
            complex: self.save_complex,
            bytearray: self.save_bytearray,
            Reduction: self.save_reduction,
            Global: self.save_global,
            PersistentId: self.save_persistent_id,
            TensorRecord: self.save_tensor_record,
        }

    def dumps(self, obj: Any) -> bytes:
        self.out += b"\x80\x02"
        try:
            self.save(obj)
        except RecursionError:
            raise UnsavableObjectError("the object nests too deeply to pickle") from None
        self.out += b"."
        return bytes(self.out)

    # -- memo --------------------------------------------------------------------------------

    def _int_tuple(self, items: tuple[int, ...]) -> None:
        """A fresh tuple of ints (a tensor's size or stride), as save_tuple writes it."""
        n = len(items)
        out = self.out
        if n > 3:
            out += b"("
        for v in items:
            if 0 <= v <= 0xFF:
                out += _BININT1[v]
            else:
                self.save_int(v)
        if n == 0:
            out += b")"
            return
        out += _TUPLE_N[n] if n <= 3 else b"t"
        self.put_fresh()

    def put(self, obj: Any) -> None:
        """Memoize ``obj`` (kept alive so its id stays unique) and write the PUT."""
        index = self.memo_size
        self.memo[id(obj)] = index
        self._keep.append(obj)
        self.memo_size = index + 1
        self.out += b"q" + bytes((index,)) if index < 256 else b"r" + _pack_I(index)

    def put_fresh(self) -> None:
        """The PUT for an object made only for this pickle, that nothing can refer to again."""
        index = self.memo_size
        self.memo_size = index + 1
        self.out += b"q" + bytes((index,)) if index < 256 else b"r" + _pack_I(index)

    def get(self, index: int) -> None:
        self.out += b"h" + bytes((index,)) if index < 256 else b"j" + _pack_I(index)

    # -- dispatch ------------------------------------------------------------------------------

    def save(self, obj: Any) -> None:
        t = type(obj)
        if t is int:
            self.save_int(obj)
            return
        if obj is None:
            self.out += b"N"
            return
        if t is bool:
            self.out += b"\x88" if obj else b"\x89"
            return
        if t is float:
            self.out += b"G" + _pack_d(obj)
            return
        index = self.memo.get(id(obj))
        if index is not None:
            self.get(index)
            return
        if t is TensorRecord:
            self.save_tensor_record(obj)
            return
        fn = self._dispatch.get(t)
        if fn is not None:
            fn(obj)
            return
        self.save_other(obj)

    def save_other(self, obj: Any) -> None:
        hook = self.reduce
        made = hook(obj) if hook is not None else None
        if made is None:
            raise UnsavableObjectError(
                f"{type(obj).__module__}.{type(obj).__qualname__} objects cannot be saved: "
                "torch.load(weights_only=True) could not read them back",
            )
        if type(made) is Global:
            self.save_global(made)
        elif type(made) is Reduction:
            self.save_reduction(made, memo_key=obj)
        elif type(made) is TensorRecord:
            self.save_tensor_record(made, memo_key=obj)
        elif type(made) is PersistentId:
            self.save_persistent_id(made)
        else:  # pragma: no cover - hook contract
            raise TypeError(f"reduce hook returned a {type(made).__name__}")

    # -- atoms -----------------------------------------------------------------------------------

    def save_int(self, obj: int) -> None:
        if 0 <= obj <= 0xFF:
            self.out += _BININT1[obj]
        elif 0 <= obj <= 0xFFFF:
            self.out += b"M" + obj.to_bytes(2, "little")
        elif -0x80000000 <= obj <= 0x7FFFFFFF:
            self.out += b"J" + _pack_i(obj)
        else:
            n = (obj.bit_length() + 8) // 8  # two's complement, with room for the sign bit
            raw = obj.to_bytes(n, "little", signed=True)
            # CPython drops a redundant sign byte (0xff followed by a byte with the high bit set).
            if obj < 0 and n > 1 and raw[-1] == 0xFF and raw[-2] & 0x80:
                raw = raw[:-1]
            if len(raw) < 256:
                self.out += b"\x8a" + bytes((len(raw),)) + raw
            else:
                self.out += b"\x8b" + _pack_i(len(raw)) + raw

    def save_str(self, obj: str) -> None:
        raw = obj.encode("utf-8", "surrogatepass")
        self.out += b"X" + _pack_I(len(raw)) + raw
        self.put(obj)

    def save_bytes(self, obj: bytes) -> None:
        # Protocol 2 has no bytes opcode: CPython writes _codecs.encode(latin-1 text, 'latin1'),
        # or bytes() for b"" (which weights_only refuses; check_global decides).
        if not obj:
            self.save_reduce(G_BYTES, _EMPTY_TUPLE, memo_key=obj)
        else:
            self.save_reduce(G_CODECS_ENCODE, (obj.decode("latin-1"), _LATIN1), memo_key=obj)

    def save_bytearray(self, obj: bytearray) -> None:
        self.save_reduce(G_BYTEARRAY, (bytes(obj),) if obj else _EMPTY_TUPLE, memo_key=obj)

    def save_complex(self, obj: complex) -> None:
        self.save_reduce(G_COMPLEX, (obj.real, obj.imag), memo_key=obj)

    # -- containers ------------------------------------------------------------------------------

    def save_tuple(self, obj: tuple[Any, ...]) -> None:
        n = len(obj)
        out = self.out
        if n == 0:
            out += b")"
            return
        memo = self.memo
        if n <= 3:
            for i, item in enumerate(obj):
                self._save_item(item, i)
            index = memo.get(id(obj))
            if index is not None:  # the tuple was memoized while its items were saved (recursive)
                self.out += b"0" * n
                self.get(index)
                return
            self.out += (b"\x85", b"\x86", b"\x87")[n - 1]
            self.put(obj)
            return
        out += b"("
        for i, item in enumerate(obj):
            self._save_item(item, i)
        index = memo.get(id(obj))
        if index is not None:
            self.out += b"1"  # POP_MARK
            self.get(index)
            return
        self.out += b"t"
        self.put(obj)

    def _save_item(self, item: Any, key: Any) -> None:
        try:
            self.save(item)
        except UnsavableObjectError as e:
            raise e.inside(key) from None

    def save_list(self, obj: list[Any]) -> None:
        self.out += b"]"
        self.put(obj)
        n = len(obj)
        if n == 0:
            return
        if n == 1:
            self._save_item(obj[0], 0)
            self.out += b"a"
            return
        total = 0
        while True:
            self.out += b"("
            batch = 0
            while total < len(obj):
                self._save_item(obj[total], total)
                total += 1
                batch += 1
                if batch == BATCHSIZE:
                    break
            self.out += b"e"
            if total >= len(obj):
                break

    def _batch_appends(self, items: Iterator[Any]) -> None:
        """``batch_list`` of the C pickler (for list items of a reduction)."""
        it = iter(items)
        index = 0
        while True:
            try:
                first = next(it)
            except StopIteration:
                return
            try:
                second = next(it)
            except StopIteration:
                self._save_item(first, index)
                self.out += b"a"
                return
            self.out += b"("
            self._save_item(first, index)
            self._save_item(second, index + 1)
            index += 2
            n = 2
            while n < BATCHSIZE:
                try:
                    item = next(it)
                except StopIteration:
                    break
                self._save_item(item, index)
                index += 1
                n += 1
            self.out += b"e"
            if n != BATCHSIZE:
                return

    def save_dict(self, obj: dict[Any, Any]) -> None:
        self.out += b"}"
        self.put(obj)
        n = len(obj)
        if n == 0:
            return
        items = iter(obj.items())
        if n == 1:
            k, v = next(items)
            self._save_pair(k, v)
            self.out += b"s"
            return
        # batch_dict_exact: MARK ... SETITEMS per 1000 items, and one empty batch after a full last
        # one (a dict of exactly 1000 items ends with an empty MARK SETITEMS).
        while True:
            self.out += b"("
            i = 0
            for k, v in items:
                self._save_pair(k, v)
                i += 1
                if i == BATCHSIZE:
                    break
            self.out += b"u"
            if len(obj) != n:
                raise UnsavableObjectError("a dict changed size while it was being saved")
            if i != BATCHSIZE:
                break

    def _save_pair(self, k: Any, v: Any) -> None:
        try:
            self.save(k)
        except UnsavableObjectError as e:
            raise e.inside(f"<key {k!r}>") from None
        self._save_item(v, k)

    def _batch_setitems(self, items: Iterator[tuple[Any, Any]]) -> None:
        """``batch_dict`` of the C pickler (for the items of a reduction, e.g. an OrderedDict)."""
        it = iter(items)
        while True:
            try:
                first = next(it)
            except StopIteration:
                return
            try:
                second = next(it)
            except StopIteration:
                self._save_pair(*first)
                self.out += b"s"
                return
            self.out += b"("
            self._save_pair(*first)
            self._save_pair(*second)
            n = 2
            while n < BATCHSIZE:
                try:
                    pair = next(it)
                except StopIteration:
                    break
                self._save_pair(*pair)
                n += 1
            self.out += b"u"
            if n != BATCHSIZE:
                return

    def save_ordered_dict(self, obj: OrderedDict[Any, Any]) -> None:
        state = obj.__dict__ or None  # BUILD state: the instance dict (a state dict's _metadata)
        self.save_reduce(G_ORDERED_DICT, _EMPTY_TUPLE, state, None, iter(obj.items()), memo_key=obj)

    def save_counter(self, obj: Counter[Any]) -> None:
        # Counter.__reduce__ drops instance attributes, so torch.save does too.
        self.save_reduce(G_COUNTER, (dict(obj),), memo_key=obj)

    def save_set(self, obj: set[Any]) -> None:
        self.save_reduce(G_SET, (list(obj),), memo_key=obj)

    # -- globals, reductions, persistent ids ------------------------------------------------------

    def save_global(self, obj: Global) -> None:
        """``GLOBAL module name``, memoized by name: an object that stands for a global (a
        dtype, a class) is one object per name, so this is the C pickler's identity memo."""
        index = self.memo.get(id(obj))
        if index is not None:
            self.get(index)
            return
        if self.check_global is not None:
            self.check_global(obj)
        self.out += obj.opcode
        self.put(obj)

    def save_reduction(self, red: Reduction, memo_key: Any = None) -> None:
        self.save_reduce(red.func, red.args, red.state, red.listitems, red.dictitems,
                         memo_key=red if memo_key is None else memo_key)

    def save_reduce(
        self, func: Global, args: tuple[Any, ...], state: Any = None,
        listitems: Iterator[Any] | None = None, dictitems: Iterator[tuple[Any, Any]] | None = None,
        *, memo_key: Any = None,
    ) -> None:
        """``save_reduce`` of the C pickler, protocol 2."""
        if type(func) is not Global:  # pragma: no cover - hook contract
            raise TypeError("a reduction's callable must be a Global")
        if func is G_NEWOBJ:
            cls, *rest = args
            self.save(cls)
            self.save(tuple(rest))
            self.out += b"\x81"
        else:
            self.save_global(func)
            if type(args) is not tuple:  # pragma: no cover - hook contract
                raise TypeError("a reduction's arguments must be a tuple")
            self.save(args)
            self.out += b"R"
        if memo_key is not None:
            index = self.memo.get(id(memo_key))
            if index is not None:  # recursive: drop what was built, fetch the memoized object
                self.out += b"0"
                self.get(index)
                return
            self.put(memo_key)
        if listitems is not None:
            self._batch_appends(listitems)
        if dictitems is not None:
            self._batch_setitems(dictitems)
        if state is not None:
            try:
                self.save(state)
            except UnsavableObjectError as e:
                raise e.inside(".__dict__") from None
            self.out += b"b"

    def save_tensor_record(self, rec: TensorRecord, memo_key: Any = None) -> None:
        """Exactly what :meth:`save_reduce` writes for the equivalent reduction (see TensorRecord)."""
        memo = self.memo
        save = self.save
        index = memo.get(id(rec.func))
        if index is None:
            self.save_global(rec.func)
        else:
            self.get(index)
        self.out += b"(("
        save("storage")  # the literal torch uses: interned, so the same object
        save(rec.storage_type)
        save(rec.key)
        save(rec.location)
        self.save_int(rec.numel)
        self.out += b"t"
        self.put_fresh()
        self.out += b"Q"
        self.save_int(rec.offset)
        self._int_tuple(rec.size)
        self._int_tuple(rec.stride)
        self.out += b"\x88" if rec.requires_grad else b"\x89"
        index = memo.get(id(G_ORDERED_DICT))
        if index is None:
            self.save_global(G_ORDERED_DICT)
        else:
            self.get(index)
        self.out += b")R"
        self.put_fresh()
        for i, item in enumerate(rec.tail):
            self._save_item(item, 6 + i)
        self.out += b"t"
        self.put_fresh()
        self.out += b"R"
        key = rec if memo_key is None else memo_key
        index = memo.get(id(key))
        if index is not None:  # pragma: no cover - a tensor cannot contain itself
            self.out += b"0"
            self.get(index)
            return
        self.put(key)

    def save_persistent_id(self, pid: PersistentId) -> None:
        """The pid tuple (saved as any tuple, then memoized), then ``BINPERSID``. The storage
        itself is not memoized, as in CPython."""
        self.save(pid.pid)
        self.out += b"Q"
