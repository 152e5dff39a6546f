"""Relocation by patching the pickle's opcodes, for files ckpt does not rebuild.

When a checkpoint holds something outside ckpt's allowlist (a training framework's hyper-parameter
object, a quantized tensor), ckpt cannot pickle it again, but it can still move its storages: the
location tags live in the storage persistent ids, ``('storage', <type>, key, location, numel)``,
each a ``MARK ... TUPLE BINPERSID`` group of opcodes. This module walks the opcodes without running
any of them (a model of the stack that knows only strings, memo references and tuples), finds each
persistent id's location operand and replaces just that operand:

* ``BINUNICODE 'cuda:0'`` becomes ``BINUNICODE 'cpu'``;
* a memo reference (``BINGET n``) to a tag becomes the new tag written out;
* a tag that was memoized where it stood (``BINUNICODE 'cuda:0' BINPUT n``) loses its ``BINPUT``,
  and every other reference to ``n`` gets the old string written out, so values elsewhere that
  shared the string keep it.

Memo indices are explicit in protocol 2, so nothing else moves. Protocol 4+ pickles (``FRAME``,
``MEMOIZE``) are refused. The records are copied as they are; ``.data/serialization_id`` is
computed afresh.
"""

from __future__ import annotations

import io
import pickletools
import struct
from dataclasses import dataclass, field
from typing import Any

from .checkpoint import open_reader
from .dtypes import UINT8, by_storage_class
from .errors import CheckpointError, CorruptCheckpointError, UnsupportedFormatError
from .limits import DEFAULT_LIMITS, Limits
from .saving import Progress, output_file, progress_steps
from .torch_zip import TorchZipReader
from .zipread import STORED
from .zipwrite import TorchZipWriter, archive_name_for

_STRING_OPS = {"BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8", "UNICODE", "STRING", "BINSTRING", "SHORT_BINSTRING"}
_GET_OPS = {"GET", "BINGET", "LONG_BINGET"}
_PUT_OPS = {"PUT", "BINPUT", "LONG_BINPUT"}
_INT_OPS = {"BININT", "BININT1", "BININT2", "LONG1", "LONG4", "INT", "LONG"}


@dataclass(eq=False)
class _Val:
    """What the model knows of one stack value."""

    kind: str  # str, get, tuple, int, global, other
    start: int = -1
    end: int = -1
    value: Any = None  # the text (str), the int, the (module, name) (global), the items (tuple)
    target: _Val | None = None  # for get: the value the memo held
    put: tuple[int, int, int] | None = None  # (start, end, memo index) of a PUT right after it


@dataclass
class _Pid:
    key: str
    storage_class: tuple[str, str] | None
    numel: int | None
    location: str
    operand: _Val  # the str or get value giving the location


@dataclass
class _Scan:
    pids: list[_Pid] = field(default_factory=list)
    gets: list[_Val] = field(default_factory=list)


def _text(v: _Val) -> str | None:
    if v.kind == "str":
        return v.value  # type: ignore[no-any-return]
    if v.kind == "get" and v.target is not None and v.target.kind == "str":
        return v.target.value  # type: ignore[no-any-return]
    return None


def _resolve(v: _Val) -> _Val:
    return v.target if v.kind == "get" and v.target is not None else v


def scan(data: bytes, *, path: str | None = None, record: str | None = None) -> _Scan:
    """Find every storage persistent id of a pickle, and where its location operand lies."""
    out = _Scan()
    stack: list[_Val] = []
    frames: list[list[_Val]] = []
    memo: dict[int, _Val] = {}

    def fail(message: str, pos: int) -> CorruptCheckpointError:
        return CorruptCheckpointError(f"cannot patch the pickle: {message} (offset {pos})", path=path, record=record)

    def pop(pos: int) -> _Val:
        if not stack:
            raise fail("its stack runs empty", pos)
        return stack.pop()

    try:
        ops = list(pickletools.genops(io.BytesIO(data)))
    except Exception as e:  # genops raises ValueError and friends on a damaged pickle
        raise CorruptCheckpointError(f"cannot patch the pickle: {e}", path=path, record=record) from None
    for i, (op, arg, pos) in enumerate(ops):
        end = ops[i + 1][2] if i + 1 < len(ops) else len(data)
        name = op.name
        if name in ("FRAME", "MEMOIZE"):
            raise UnsupportedFormatError(
                "the pickle uses protocol 4 framing and memoization, which cannot be patched in place",
                path=path, record=record,
            )
        if name in _STRING_OPS:
            text = arg if isinstance(arg, str) else None
            stack.append(_Val("str" if text is not None and name in ("BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8") else "other",
                              pos, end, text))
        elif name in _GET_OPS:
            target = memo.get(arg)
            v = _Val("get", pos, end, arg, target)
            out.gets.append(v)
            stack.append(v)
        elif name in _PUT_OPS:
            if not stack:
                raise fail("PUT with nothing to memoize", pos)
            top = stack[-1]
            memo[arg] = _resolve(top)
            if top.kind == "str" and top.end == pos and top.put is None:
                top.put = (pos, end, arg)
        elif name in _INT_OPS:
            stack.append(_Val("int", pos, end, arg if isinstance(arg, int) else None))
        elif name == "GLOBAL":
            module, _, gname = str(arg).partition(" ")
            stack.append(_Val("global", pos, end, (module, gname)))
        elif name == "MARK":
            frames.append(stack)
            stack = []
        elif name in ("TUPLE", "TUPLE1", "TUPLE2", "TUPLE3", "EMPTY_TUPLE"):
            if name == "TUPLE":
                if not frames:
                    raise fail("TUPLE without MARK", pos)
                items = stack
                stack = frames.pop()
            else:
                n = {"EMPTY_TUPLE": 0, "TUPLE1": 1, "TUPLE2": 2, "TUPLE3": 3}[name]
                if len(stack) < n:
                    raise fail(f"{name} needs {n} values", pos)
                items = stack[len(stack) - n :] if n else []
                del stack[len(stack) - n :]
            stack.append(_Val("tuple", pos, end, items))
        elif name in ("BINPERSID", "PERSID"):
            if name == "PERSID":
                stack.append(_Val("other", pos, end))
                continue
            pid = _resolve(pop(pos))
            stack.append(_Val("other", pos, end))
            items = pid.value if pid.kind == "tuple" else None
            if not items or len(items) != 5 or _text(items[0]) != "storage":
                continue
            key = _text(items[2])
            location = _text(items[3])
            if key is None or location is None:
                raise fail("a storage id's key or location is not a plain string", pos)
            cls = _resolve(items[1])
            numel = _resolve(items[4])
            out.pids.append(_Pid(
                key, cls.value if cls.kind == "global" else None,
                numel.value if numel.kind == "int" else None, location, items[3],
            ))
        elif name == "POP":
            if stack:
                stack.pop()
            elif frames:
                stack = frames.pop()
            else:
                raise fail("POP on an empty stack", pos)
        elif name == "POP_MARK":
            if not frames:
                raise fail("POP_MARK without MARK", pos)
            stack = frames.pop()
        elif name == "DUP":
            stack.append(stack[-1] if stack else _Val("other", pos, end))
        elif name in ("STOP", "PROTO"):
            continue
        else:
            before = op.stack_before
            after = op.stack_after
            n = len(before)
            if pickletools.markobject in before:
                if not frames:
                    raise fail(f"{name} without MARK", pos)
                stack = frames.pop()
                n -= 2
            for _ in range(n):
                pop(pos)
            for _ in after:
                stack.append(_Val("other", pos, end))
    return out


def _binunicode(text: str) -> bytes:
    raw = text.encode("utf-8", "surrogatepass")
    return b"X" + struct.pack("<I", len(raw)) + raw


def patch(data: bytes, found: _Scan, new_tag: Any) -> tuple[bytes, int]:
    """The pickle with every location operand mapped by ``new_tag(old) -> new``; and how many
    operands changed."""
    edits: dict[int, tuple[int, bytes]] = {}
    dropped: set[int] = set()  # id() of memoized strings whose PUT is removed
    changed = 0
    for pid in found.pids:
        new = new_tag(pid.location)
        if new == pid.location:
            continue
        changed += 1
        v = pid.operand
        edits[v.start] = (v.end, _binunicode(new))
        if v.kind == "str" and v.put is not None:
            start, end, _index = v.put
            edits[start] = (end, b"")
            dropped.add(id(v))
    if dropped:
        for g in found.gets:
            if g.target is not None and id(g.target) in dropped and g.start not in edits:
                edits[g.start] = (g.end, _binunicode(g.target.value))
    out = bytearray()
    pos = 0
    for start in sorted(edits):
        end, repl = edits[start]
        out += data[pos:start]
        out += repl
        pos = end
    out += data[pos:]
    return bytes(out), changed


def relocate_by_patching(
    src: str, dst: str, locmap: Any, *, dry_run: bool, fsync: bool, progress: Progress | None,
    limits: Limits = DEFAULT_LIMITS, reason: str = "",
) -> Any:
    """:func:`ckpt.relocate` for a file ckpt does not rebuild (see the module docs)."""
    from .relocation import Relocation, StorageMove

    reader = open_reader(src, limits=limits)
    try:
        if not isinstance(reader, TorchZipReader):
            raise UnsupportedFormatError("only torch zip checkpoints can be relocated", path=src)
        archive = reader.archive
        entry = reader.pickle_entry
        assert entry is not None
        data = archive.read(entry, max_size=limits.max_pickle_bytes)
        found = scan(data, path=src, record=entry.name)
        moves: list[StorageMove] = []
        seen: set[str] = set()
        for pid in found.pids:
            if pid.key in seen:
                continue
            seen.add(pid.key)
            size = archive.size_of(f"{reader.prefix}data/{pid.key}")
            if size is None:
                raise CorruptCheckpointError(f"the pickle refers to storage {pid.key!r} but the archive has no record for it",
                                             path=src)
            dtype = UINT8
            if pid.storage_class is not None and pid.storage_class[1] != "UntypedStorage":
                try:
                    dtype = by_storage_class(pid.storage_class[1])
                except KeyError:
                    pass
            moves.append(StorageMove(pid.key, dtype.name, size, pid.location, locmap(pid.location)))
        result = Relocation(src, dst, locmap, "patch", moves, dry_run)
        result.notes.append(
            f"only the storage locations in the pickle were replaced: ckpt does not rebuild all of it ({reason})"
        )
        new_pickle, _changed = patch(data, found, locmap)
        if dry_run:
            return result
        step = progress_steps(sum(e.size for e in archive.entries), progress)

        with output_file(dst, fsync=fsync) as sink:
            writer = TorchZipWriter(sink, archive_name_for(dst), keep_page_phase=True)
            writer.write_record("data.pkl", new_pickle)
            for e in archive.entries:
                name = e.name[len(reader.prefix):]
                if e is entry or name == ".data/serialization_id":
                    continue
                src_fd = archive.file.fileno()
                stored = e.method == STORED and src_fd is not None
                offset = archive.data_offset(e) if stored else None
                writer.begin(name, e.size, source_offset=offset)
                pending = len(sink.pending)
                if stored:
                    writer.copy(src_fd, offset, e.size, crc=e.crc if archive.has_crcs else None)
                else:
                    buf = bytearray(e.size)
                    archive.readinto(e, memoryview(buf))
                    writer.write(buf)
                writer.end()
                if len(sink.pending) == pending:
                    step(e.size)
            sink.run_copies(step)
            result.written_bytes = writer.finish()
        return result
    except CheckpointError:
        raise
    finally:
        reader.close()
