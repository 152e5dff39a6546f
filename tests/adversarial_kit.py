"""Builders for hostile and damaged checkpoints, used by the bad-input and attack tests.

Everything here writes bytes by hand (pickle opcodes, zip headers) so that each test controls
exactly what the file says; nothing here ever unpickles anything. Payloads are harmless: the
"dangerous" calls they ask for would only create a marker file in the test's temporary folder,
and the tests assert that the marker never appears.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import textwrap
import zlib
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# "No hang, no blow-up" checks measure CPU seconds of the process, not wall time, so a busy
# machine does not fail them; the blow-ups they guard against (2**40 steps) take hours, not seconds.
CPU_SECONDS_BOUND = 5.0

try:  # torch is an optional test dependency: torch-needing tests skip without it
    import torch  # noqa: F401

    HAVE_TORCH = True
except Exception:  # pragma: no cover - the no-torch environment
    HAVE_TORCH = False


# -- pickle opcodes ----------------------------------------------------------------------------

PROTO2 = b"\x80\x02"
STOP = b"."
MARK = b"("
TUPLE = b"t"
TUPLE1 = b"\x85"
TUPLE2 = b"\x86"
TUPLE3 = b"\x87"
EMPTY_TUPLE = b")"
EMPTY_LIST = b"]"
EMPTY_DICT = b"}"
APPEND = b"a"
APPENDS = b"e"
SETITEM = b"s"
SETITEMS = b"u"
REDUCE = b"R"
BUILD = b"b"
NEWOBJ = b"\x81"
NEWOBJ_EX = b"\x92"
BINPERSID = b"Q"
NEWFALSE = b"\x89"
NEWTRUE = b"\x88"
NONE = b"N"
POP = b"0"
DUP = b"2"
STACK_GLOBAL = b"\x93"
MEMOIZE = b"\x94"
OBJ = b"o"


def proto(n: int) -> bytes:
    return b"\x80" + bytes([n])


def glob(module: str, name: str) -> bytes:
    """GLOBAL module\\nname\\n (what torch.save writes)."""
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def inst(module: str, name: str) -> bytes:
    """INST module\\nname\\n (protocol 0: call the class with the items since MARK)."""
    return b"i" + module.encode() + b"\n" + name.encode() + b"\n"


def ustr(s: str) -> bytes:
    """BINUNICODE."""
    b = s.encode("utf-8")
    return b"X" + struct.pack("<I", len(b)) + b


def short_ustr(s: str) -> bytes:
    """SHORT_BINUNICODE (protocol 4)."""
    b = s.encode("utf-8")
    return b"\x8c" + bytes([len(b)]) + b


def binint(n: int) -> bytes:
    if 0 <= n < 256:
        return b"K" + bytes([n])
    if 0 <= n < 65536:
        return b"M" + struct.pack("<H", n)
    if -(2**31) <= n < 2**31:
        return b"J" + struct.pack("<i", n)
    raw = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw


def binput(i: int) -> bytes:
    return b"q" + bytes([i]) if i < 256 else b"r" + struct.pack("<I", i)


def binget(i: int) -> bytes:
    return b"h" + bytes([i]) if i < 256 else b"j" + struct.pack("<I", i)


def tup(*items: bytes) -> bytes:
    return MARK + b"".join(items) + TUPLE


def int_tuple(values: tuple[int, ...] | list[int]) -> bytes:
    return tup(*(binint(v) for v in values))


def pid(key: str, *, storage: str = "FloatStorage", module: str = "torch", location: str = "cpu",
        numel: int = 3) -> bytes:
    """The persistent id torch.save writes for a storage: ('storage', <type>, key, location, numel)."""
    return tup(ustr("storage"), glob(module, storage), ustr(key), ustr(location), binint(numel)) + BINPERSID


def rebuild_v2(storage: bytes, *, offset: int = 0, size: tuple[int, ...] = (3,),
               stride: tuple[int, ...] | None = None, raw_size: bytes | None = None,
               raw_stride: bytes | None = None, raw_offset: bytes | None = None) -> bytes:
    """``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())``."""
    if stride is None:
        acc, out = 1, []
        for s in reversed(size):
            out.append(acc)
            acc *= max(s, 1)
        stride = tuple(reversed(out))
    return (
        glob("torch._utils", "_rebuild_tensor_v2")
        + MARK
        + storage
        + (raw_offset if raw_offset is not None else binint(offset))
        + (raw_size if raw_size is not None else int_tuple(size))
        + (raw_stride if raw_stride is not None else int_tuple(stride))
        + NEWFALSE
        + glob("collections", "OrderedDict") + EMPTY_TUPLE + REDUCE
        + TUPLE
        + REDUCE
    )


def pickle_of(body: bytes, protocol: int = 2) -> bytes:
    """A whole pickle: PROTO, ``body`` (which must leave exactly one value), STOP."""
    return proto(protocol) + body + STOP


def tensor_pickle(n: int = 3, key: str = "0") -> bytes:
    """data.pkl of ``torch.tensor([...n floats...])`` as torch.save writes it."""
    return pickle_of(rebuild_v2(pid(key, numel=n), size=(n,)))


def dict_pickle(entries: dict[str, bytes]) -> bytes:
    """data.pkl of ``{name: <value opcodes>}``."""
    body = EMPTY_DICT + MARK + b"".join(ustr(k) + v for k, v in entries.items()) + SETITEMS
    return pickle_of(body)


def floats(*values: float) -> bytes:
    return struct.pack(f"<{len(values)}f", *values)


# -- zip archives ------------------------------------------------------------------------------


@dataclass
class Member:
    """One zip member with every header field under the test's control."""

    name: str
    data: bytes
    method: int = 0
    flags: int = 0x800
    crc: int | None = None  # None: the real CRC-32 of data
    usize: int | None = None  # None: len(data)
    csize: int | None = None  # None: len(stored bytes)
    local_name: str | None = None  # None: same as name
    local_method: int | None = None
    raw: bytes | None = None  # stored bytes (e.g. hand-made deflate stream); None: from data/method
    extra: bytes = b""

    def stored(self) -> bytes:
        if self.raw is not None:
            return self.raw
        if self.method == 8:
            c = zlib.compressobj(9, zlib.DEFLATED, -15)
            return c.compress(self.data) + c.flush()
        return self.data


@dataclass
class ZipLayout:
    """Byte offsets of a built archive, so tests can cut or patch at meaningful places."""

    data_ranges: dict[str, tuple[int, int]] = field(default_factory=dict)
    local_headers: dict[str, int] = field(default_factory=dict)
    central_directory: int = 0
    zip64_end: int | None = None
    end_record: int = 0
    size: int = 0


def build_zip(members: list[Member], *, zip64: bool = False, gap_before_end: bytes = b"",
              layout: ZipLayout | None = None) -> bytes:
    """A zip archive written field by field (stored or deflated, optional zip64 end records)."""
    lay = layout if layout is not None else ZipLayout()
    out = bytearray()
    central = bytearray()
    for m in members:
        stored = m.stored()
        crc = zlib.crc32(m.data) if m.crc is None else m.crc
        usize = len(m.data) if m.usize is None else m.usize
        csize = len(stored) if m.csize is None else m.csize
        lname = (m.local_name if m.local_name is not None else m.name).encode()
        name = m.name.encode()
        offset = len(out)
        lay.local_headers[m.name] = offset
        z64extra = b""
        if usize >= 0xFFFFFFFF or csize >= 0xFFFFFFFF:  # zip64 sizes: 0xFFFFFFFF + extra field 1
            z64extra = struct.pack("<2H2Q", 1, 16, usize, csize)
            usize = csize = 0xFFFFFFFF
        extra = z64extra + m.extra
        out += struct.pack(
            "<4s5H3L2H", b"PK\x03\x04", 20, m.flags,
            m.method if m.local_method is None else m.local_method, 0, 0x21, crc, csize, usize,
            len(lname), len(extra),
        )
        out += lname + extra
        lay.data_ranges[m.name] = (len(out), len(out) + len(stored))
        out += stored
        central += struct.pack(
            "<4s4H2H3L5H2L", b"PK\x01\x02", 20, 20, m.flags, m.method, 0, 0x21, crc, csize, usize,
            len(name), len(z64extra), 0, 0, 0, 0, offset,
        )
        central += name + z64extra
    cd_offset = len(out)
    lay.central_directory = cd_offset
    out += central
    out += gap_before_end
    n = len(members)
    if zip64:
        z64 = len(out)
        lay.zip64_end = z64
        out += struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 0x031E, 45, 0, 0, n, n, len(central), cd_offset)
        out += struct.pack("<4sLQL", b"PK\x06\x07", 0, z64, 1)
    lay.end_record = len(out)
    out += struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, n, n, len(central), cd_offset, 0)
    lay.size = len(out)
    return bytes(out)


def torch_zip(pickle_bytes: bytes, storages: dict[str, bytes] | None = None, *, prefix: str = "archive",
              version: bytes | None = b"3\n", method: int = 0, extra: list[Member] | None = None,
              zip64: bool = True, layout: ZipLayout | None = None) -> bytes:
    """A torch-style checkpoint zip: ``<prefix>/data.pkl``, ``data/<key>`` records, ``version``."""
    members = [Member(f"{prefix}/data.pkl", pickle_bytes, method=method)]
    members.append(Member(f"{prefix}/byteorder", b"little"))
    for key, data in (storages or {}).items():
        members.append(Member(f"{prefix}/data/{key}", data, method=method))
    if version is not None:
        members.append(Member(f"{prefix}/version", version))
    members.extend(extra or [])
    return build_zip(members, zip64=zip64, layout=layout)


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# -- running things in a child process ---------------------------------------------------------


def run_child(code: str, *args: str, timeout: float = 60, env: dict[str, str] | None = None
              ) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter (a segfault or hang there fails the test, not pytest)."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = str(REPO) + os.pathsep + full_env.get("PYTHONPATH", "")
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True, text=True, timeout=timeout, env=full_env, cwd=str(REPO),
    )


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``python -m ckpt ARGS`` in a child process."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, "-m", "ckpt", *args], capture_output=True, text=True, timeout=timeout,
        env=env, cwd=str(REPO),
    )


# -- shared structures -------------------------------------------------------------------------


def laughs_list(levels: int = 40, leaf: bytes | None = None, memo_base: int = 0) -> bytes:
    """A "billion laughs" list: l0 = [leaf]; l(i+1) = [l(i), l(i)]; leaves l(levels) on the stack.

    2**levels paths, levels + 1 objects. Uses memo slots memo_base .. memo_base + levels.
    """
    out = EMPTY_LIST + (leaf if leaf is not None else ustr("lol")) + APPEND + binput(memo_base) + POP
    for i in range(1, levels + 1):
        prev = binget(memo_base + i - 1)
        out += EMPTY_LIST + prev + APPEND + prev + APPEND + binput(memo_base + i) + POP
    return out + binget(memo_base + levels)


def laughs_dict(levels: int = 40, leaf: bytes = b"", memo_base: int = 0) -> bytes:
    """d0 = {"t": leaf}; d(i+1) = {"a": d(i), "b": d(i)}: 2**levels paths to the leaf."""
    out = EMPTY_DICT + ustr("t") + (leaf or NONE) + SETITEM + binput(memo_base) + POP
    for i in range(1, levels + 1):
        prev = binget(memo_base + i - 1)
        out += EMPTY_DICT + ustr("a") + prev + SETITEM + ustr("b") + prev + SETITEM + binput(memo_base + i) + POP
    return out + binget(memo_base + levels)


def laughs_tuple(levels: int = 40, memo_base: int = 0) -> bytes:
    """t0 = (1,); t(i+1) = (t(i), t(i)): hashable, 41 objects, 2**40 leaves when hashed naively."""
    out = binint(1) + TUPLE1 + binput(memo_base) + POP
    for i in range(1, levels + 1):
        prev = binget(memo_base + i - 1)
        out += prev + prev + TUPLE2 + binput(memo_base + i) + POP
    return out + binget(memo_base + levels)


def deep_list(n: int) -> bytes:
    """[[[...]]] n levels deep, built without recursion in the writer: n EMPTY_LISTs then APPENDs."""
    return EMPTY_LIST * n + APPEND * (n - 1)


def deep_tuple(n: int) -> bytes:
    """((((),),),) n levels deep: EMPTY_TUPLE then TUPLE1 n times."""
    return EMPTY_TUPLE + TUPLE1 * n


def deep_dict(n: int) -> bytes:
    """{"a": {"a": ... {}}} n levels deep."""
    return (EMPTY_DICT + ustr("a")) * n + EMPTY_DICT + SETITEM * n


def with_tensor(payload: bytes, *, key: str = "x", protocol: int = 2) -> bytes:
    """data.pkl of ``{"w": tensor([1., 2., 3.]) (storage "0"), key: <payload>}``."""
    body = EMPTY_DICT + MARK + ustr("w") + rebuild_v2(pid("0")) + ustr(key) + payload + SETITEMS
    return pickle_of(body, protocol)


BASE_STORAGES = {"0": floats(1.0, 2.0, 3.0)}


def checkpoint_with(payload: bytes, *, key: str = "x", protocol: int = 2) -> bytes:
    """A whole torch zip holding ``{"w": tensor([1., 2., 3.]), key: <payload>}``."""
    return torch_zip(with_tensor(payload, key=key, protocol=protocol), BASE_STORAGES)


# -- children with bounded resources -----------------------------------------------------------

LIMITED_CHILD = r'''
import json, resource, sys, time
limit = int(sys.argv[1])
if limit:
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def peak_kb():
    # VmHWM belongs to this process image; ru_maxrss would start from the parent's peak at fork
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


import ckpt
{prelude}
before = peak_kb()
t0 = time.process_time()
try:
    {call}
    outcome = {{"ok": True}}
except BaseException as e:
    outcome = {{"ok": False, "type": type(e).__name__, "message": str(e)[:500],
               "checkpoint_error": isinstance(e, ckpt.CheckpointError)}}
outcome["seconds"] = time.process_time() - t0
outcome["rss_growth_kb"] = peak_kb() - before
print(json.dumps(outcome))
'''


def run_limited(call: str, *, path: Path, address_space: int = 0, prelude: str = "", timeout: float = 120
                ) -> dict:
    """Run ``call`` (a statement using ``path``) in a child whose address space is capped at
    ``address_space`` bytes (0: no cap); returns what happened, how long it took and how much the
    child's peak RSS grew during the call. A segfault or hang fails the caller's assertion."""
    import json

    code = LIMITED_CHILD.format(prelude=f"path = {str(path)!r}\n{prelude}", call=call)
    proc = run_child(code, str(address_space), timeout=timeout)
    assert proc.returncode == 0, f"child died (rc {proc.returncode}): {proc.stderr[-2000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])
