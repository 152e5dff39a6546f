"""Builders for the scanner's test corpus: hostile pickles with harmless payloads, and the containers
that carry them.

Every payload, if it were ever run, would create a marker file (``touch MARKER`` through
``os.system``, ``open(MARKER, 'w')``, ...). Tests scan the files and assert that the marker never
appears. Nothing here unpickles anything: pickles are assembled opcode by opcode, or written with
``pickle.dumps`` of plain data (which runs nothing of the file's).
"""

from __future__ import annotations

import io
import pickle
import struct
import tarfile
import zipfile
from pathlib import Path
from typing import Any

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


# -- opcodes ------------------------------------------------------------------------------------------


def glob(module: str, name: str) -> bytes:
    """GLOBAL (protocol 0+)."""
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def inst(module: str, name: str) -> bytes:
    return b"i" + module.encode() + b"\n" + name.encode() + b"\n"


def u(s: str) -> bytes:
    """SHORT_BINUNICODE or BINUNICODE."""
    b = s.encode("utf-8")
    return (b"\x8c" + bytes([len(b)]) + b) if len(b) < 256 else (b"X" + struct.pack("<I", len(b)) + b)


def X(s: str) -> bytes:
    """BINUNICODE (what protocol 2, torch's default, writes for every string)."""
    b = s.encode("utf-8")
    return b"X" + struct.pack("<I", len(b)) + b


def sstr(s: str) -> bytes:
    """Protocol-0 STRING."""
    return b"S'" + s.encode("unicode_escape").replace(b"'", b"\\'") + b"'\n"


def binstring(b: bytes) -> bytes:
    return b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + struct.pack("<i", len(b)) + b


def binbytes(b: bytes) -> bytes:
    return b"C" + bytes([len(b)]) + b if len(b) < 256 else b"B" + struct.pack("<I", len(b)) + b


def binput(i: int) -> bytes:
    return b"q" + bytes([i])


def binget(i: int) -> bytes:
    return b"h" + bytes([i])


def long_binget(i: int) -> bytes:
    return b"j" + struct.pack("<I", i)


MARK, STOP, POP, POP_MARK, DUP = b"(", b".", b"0", b"1", b"2"
TUPLE, TUPLE1, TUPLE2, EMPTY_TUPLE = b"t", b"\x85", b"\x86", b")"
REDUCE, BUILD, NEWOBJ, NEWOBJ_EX, OBJ = b"R", b"b", b"\x81", b"\x92", b"o"
STACK_GLOBAL, MEMOIZE = b"\x93", b"\x94"
EMPTY_DICT, EMPTY_LIST, SETITEM, SETITEMS, APPEND = b"}", b"]", b"s", b"u", b"a"
NONE = b"N"


def proto(n: int) -> bytes:
    return b"\x80" + bytes([n])


def call(func: bytes, *args: bytes) -> bytes:
    """``func(*args)``: the callable's opcodes, a tuple of the argument opcodes, REDUCE."""
    return func + MARK + b"".join(args) + TUPLE + REDUCE


# -- payloads (harmless: each would only create ``marker``) -----------------------------------------------


def touch(marker: Path | str) -> str:
    return f"touch {marker}"


def os_system(marker: Path | str, proto_: int = 2) -> bytes:
    """``posix.system('touch MARKER')``: what ``pickle.dumps`` of an object reducing to os.system writes."""
    return proto(proto_) + call(glob("posix", "system"), u(touch(marker))) + STOP


def os_system_p0(marker: Path | str) -> bytes:
    return call(glob("os", "system"), sstr(touch(marker))) + STOP


def builtins_exec(marker: Path | str) -> bytes:
    return proto(2) + call(glob("builtins", "exec"), u(f"open({str(marker)!r}, 'w').close()")) + STOP


def open_file(marker: Path | str) -> bytes:
    return proto(2) + call(glob("builtins", "open"), u(str(marker)), u("w")) + STOP


def payload_then(payload_globals: list[tuple[str, str]], marker: Path | str) -> bytes:
    """Protocol 2: call each named global with the touch command (used for the verdict tests)."""
    body = b"".join(call(glob(m, n), u(touch(marker))) + POP for m, n in payload_globals)
    return proto(2) + body + NONE + STOP


# -- containers ------------------------------------------------------------------------------------


def benign_pickle(obj: Any = None, protocol: int = 2) -> bytes:
    return pickle.dumps(obj if obj is not None else {"epoch": 3, "lr": 0.1, "names": ["a", "b"]}, protocol=protocol)


def torch_zip(
    path: Path,
    data_pkl: bytes,
    *,
    folder: str = "archive",
    records: dict[str, bytes] | None = None,
    extra: list[tuple[str, bytes]] | None = None,
    compression: int = zipfile.ZIP_STORED,
) -> Path:
    """A torch zip checkpoint laid out as torch.save writes it (``folder/data.pkl``, ``version``,
    ``byteorder``, ``data/<key>`` storages), with ``extra`` records added after."""
    with zipfile.ZipFile(path, "w", compression=compression) as z:
        z.writestr(f"{folder}/data.pkl", data_pkl)
        z.writestr(f"{folder}/byteorder", "little")
        for name, raw in (records or {}).items():
            z.writestr(f"{folder}/{name}", raw)
        z.writestr(f"{folder}/version", "3\n")
        for name, raw in extra or []:
            z.writestr(name, raw)
    return path


def state_dict_pickle(n: int = 2, *, shape: tuple[int, ...] = (2,)) -> tuple[bytes, dict[str, bytes]]:
    """A protocol-2 pickle of an OrderedDict of ``n`` float32 tensors laid out byte for byte as
    torch.save writes it (globals and strings memoized, BINPUT then LONG_BINPUT once the memo
    passes 255, SETITEMS in batches of 1000), and its storage records."""
    memo = 0

    def put() -> bytes:
        nonlocal memo
        memo += 1
        return b"q" + bytes([memo - 1]) if memo - 1 < 256 else b"r" + struct.pack("<I", memo - 1)

    def get(i: int) -> bytes:
        return b"h" + bytes([i]) if i < 256 else b"j" + struct.pack("<I", i)

    def ints(values: tuple[int, ...]) -> bytes:
        body = b"".join(b"K" + bytes([v]) if v < 256 else b"J" + struct.pack("<i", v) for v in values)
        return b")" if not values else (body + bytes([0x84 + len(values)]) if len(values) <= 3 else b"(" + body + b"t")

    numel = 1
    for d in shape:
        numel *= d
    stride = tuple(int(x) for x in _strides(shape))
    out = proto(2) + glob("collections", "OrderedDict") + put() + EMPTY_TUPLE + REDUCE + put()
    od, rebuild, storage, ftype, cpu = 0, None, None, None, None
    records = {}
    for i in range(n):
        if i % 1000 == 0:
            out += MARK
        out += X(f"layer{i}.weight") + put()
        if rebuild is None:
            rebuild = memo
            out += glob("torch._utils", "_rebuild_tensor_v2") + put()
        else:
            out += get(rebuild)
        out += MARK + MARK
        if storage is None:
            storage = memo
            out += X("storage") + put()
            ftype = memo
            out += glob("torch", "FloatStorage") + put()
        else:
            out += get(storage) + get(ftype)  # type: ignore[arg-type]
        out += X(str(i)) + put()
        if cpu is None:
            cpu = memo
            out += X("cpu") + put()
        else:
            out += get(cpu)
        out += ints((numel,))[:-1] + TUPLE + put() + b"Q"
        out += b"K\x00" + ints(shape) + (put() if shape else b"") + ints(stride) + (put() if stride else b"")
        out += b"\x89" + get(od) + EMPTY_TUPLE + REDUCE + put() + TUPLE + put() + REDUCE + put()
        records[f"data/{i}"] = struct.pack(f"<{numel}f", *([1.0] * numel))
        if i % 1000 == 999 or i == n - 1:
            out += SETITEMS
    out += STOP
    return out, records


def corrupted(base: bytes, data: Any) -> bytes:
    """``base`` with 1 to 4 bytes flipped, inserted or deleted anywhere, drawn from the hypothesis
    ``data`` object (``st.data()``), for tests that compare two readings of damaged pickles."""
    from hypothesis import strategies as st

    raw = bytearray(base)
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(raw) - 1))
        how = data.draw(st.sampled_from(["flip", "insert", "delete"]))
        if how == "flip":
            raw[pos] = data.draw(st.integers(0, 255))
        elif how == "insert":
            raw[pos:pos] = bytes([data.draw(st.integers(0, 255))])
        elif len(raw) > 10:
            del raw[pos]
    return bytes(raw)


def _strides(shape: tuple[int, ...]) -> list[int]:
    out = []
    acc = 1
    for d in reversed(shape):
        out.append(acc)
        acc *= d
    return list(reversed(out))


def legacy_file(path: Path, main: bytes, *, keys: list[str] | None = None, storages: bytes = b"",
                magic: bytes | None = None) -> Path:
    """A legacy (pre-1.6) torch file: magic, protocol version, sys info, ``main``, storage keys, raw storages."""
    sys_info = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}
    first = magic if magic is not None else pickle.dumps(LEGACY_MAGIC, protocol=2)
    data = first + pickle.dumps(1001, protocol=2) + pickle.dumps(sys_info, protocol=2) + main
    data += pickle.dumps(keys or [], protocol=2) + storages
    path.write_bytes(data)
    return path


def tar_file(path: Path, members: dict[str, bytes], *, links: dict[str, str] | None = None) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as t:
        for name, raw in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            t.addfile(info, io.BytesIO(raw))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            t.addfile(info)
    return path


def npy_bytes(header: dict[str, Any], body: bytes) -> bytes:
    text = repr(header).encode("latin-1")
    pad = 64 - (10 + len(text) + 1) % 64
    text += b" " * pad + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text + body


def object_npy(payload: bytes) -> bytes:
    """A .npy holding an object array: its data section is a pickle (here, a payload)."""
    return npy_bytes({"descr": "|O", "fortran_order": False, "shape": (1,)}, payload)


def rewrite(path: Path, old: bytes, new: bytes, count: int = 1) -> None:
    """Replace bytes in a file (for header tricks); ``old`` must occur."""
    data = path.read_bytes()
    assert old in data, old
    path.write_bytes(data.replace(old, new, count))
