"""Helpers of the tests of the formats other than torch's zip (legacy, TorchScript, safetensors,
sharded): where their committed fixtures are, their recorded answers, a recorder of file reads,
and writers of small hand-made files (pickle opcodes, legacy streams, safetensors headers) with
harmless payloads that create a marker file if anything ever ran them.

Nothing here unpickles: pickles are only written (``pickle.dumps`` of plain values, or opcodes by
hand).
"""

from __future__ import annotations

import json
import os
import pickle
import struct
from functools import lru_cache
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
FORMATS = REPO / "tests" / "fixtures" / "formats"
MAGIC = 0x1950A86A20F9469CFC6C


@lru_cache(maxsize=None)
def _answer_text(name: str) -> str:
    return (FORMATS / "expected" / f"{name}.json").read_text()


def answer(name: str) -> dict[str, Any]:
    """The recorded answer for format fixture ``name``, with the twin's values where it shares them."""
    exp = json.loads(_answer_text(name))
    twin = exp.get("same_values_as")
    if twin:
        other = answer(twin)
        exp["root"], exp["tensors"] = other["root"], other["tensors"]
    return exp


def fixture(name: str) -> Path:
    return REPO / json.loads(_answer_text(name))["file"]


class ReadRecorder:
    """Every positioned read (``os.pread``/``os.preadv``) of files with the given inodes."""

    def __init__(self, monkeypatch: Any, *paths: Path) -> None:
        self.inodes = {p.stat().st_ino: p for p in paths}
        self.ranges: list[tuple[Path, int, int]] = []
        real_pread, real_preadv = os.pread, os.preadv

        def pread(fd: int, n: int, offset: int) -> bytes:
            out = real_pread(fd, n, offset)
            self._note(fd, offset, len(out))
            return out

        def preadv(fd: int, buffers: Any, offset: int, *a: Any) -> int:
            got = real_preadv(fd, buffers, offset, *a)
            self._note(fd, offset, got)
            return got

        monkeypatch.setattr(os, "pread", pread)
        monkeypatch.setattr(os, "preadv", preadv)

    def _note(self, fd: int, offset: int, n: int) -> None:
        ino = os.fstat(fd).st_ino
        if n > 0 and ino in self.inodes:
            self.ranges.append((self.inodes[ino], offset, offset + n))

    def of(self, path: Path) -> list[tuple[int, int]]:
        return [(a, b) for p, a, b in self.ranges if p == path]


# -- pickle opcodes by hand -----------------------------------------------------------------------


class Raw(bytes):
    """Opcodes written as they are."""


def s(text: str) -> Raw:
    b = text.encode()
    return Raw(b"X" + struct.pack("<I", len(b)) + b)


def glob(module: str, name: str) -> Raw:
    return Raw(b"c" + module.encode() + b"\n" + name.encode() + b"\n")


def pk(v: Any) -> bytes:
    """Protocol-2 opcodes for a plain value (``Raw`` passes through)."""
    if isinstance(v, Raw):
        return bytes(v)
    if v is None:
        return b"N"
    if v is True:
        return b"\x88"
    if v is False:
        return b"\x89"
    if type(v) is int:
        if -(2**31) <= v < 2**31:
            return b"J" + struct.pack("<i", v)
        raw = v.to_bytes((v.bit_length() + 8) // 8, "little", signed=True)
        return b"\x8a" + bytes([len(raw)]) + raw
    if type(v) is float:
        return b"G" + struct.pack(">d", v)
    if type(v) is str:
        return bytes(s(v))
    if type(v) is tuple:
        return b"(" + b"".join(pk(x) for x in v) + b"t"
    if type(v) is list:
        return b"]" + (b"(" + b"".join(pk(x) for x in v) + b"e" if v else b"")
    if type(v) is dict:
        return b"}" + (b"(" + b"".join(pk(k) + pk(x) for k, x in v.items()) + b"u" if v else b"")
    raise TypeError(type(v))


def call(func: Raw, *args: Any) -> Raw:
    return Raw(bytes(func) + pk(tuple(args)) + b"R")


def pickle2(value: Any) -> bytes:
    """A whole protocol-2 pickle of ``value`` (opcodes by hand)."""
    return b"\x80\x02" + pk(value) + b"."


def system_call(marker: Path) -> Raw:
    """``os.system("touch <marker>")`` as pickle opcodes (``posix.system``): harmless, and proof if run."""
    return call(glob("posix", "system"), f"touch {marker}")


def eval_call(marker: Path, result: str = "0") -> Raw:
    """``builtins.eval(...)`` that would create ``marker`` and return ``result``."""
    return call(glob("builtins", "eval"), f"(open({str(marker)!r}, 'w').close(), {result})[1]")


# -- legacy streams -------------------------------------------------------------------------------


def legacy_pid(key: str, numel: int, cls: str = "FloatStorage", view: tuple[str, int, int] | None = None,
               location: str = "cpu") -> Raw:
    module = "torch.storage" if cls == "UntypedStorage" else "torch"
    return Raw(b"(" + pk("storage") + bytes(glob(module, cls)) + pk(key) + pk(location) + pk(numel)
               + (pk(view) if view else b"N") + b"tQ")


def legacy_tensor(pid: Raw, offset: int, shape: tuple[int, ...], stride: tuple[int, ...]) -> Raw:
    return call(glob("torch._utils", "_rebuild_tensor_v2"), pid, offset, shape, stride, False,
                call(glob("collections", "OrderedDict")))


SYS_INFO = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}


def legacy_stream(
    main: bytes,
    storages: list[tuple[str, int, bytes]],
    *,
    magic: bytes | None = None,
    version: bytes | None = None,
    sys_info: bytes | None = None,
    keys: bytes | None = None,
    tail: bytes = b"",
) -> bytes:
    """A legacy torch file: preamble pickles, ``main`` (a whole pickle), the key list and the
    storages ``(key, numel, bytes)`` in key order; any part can be replaced."""
    return (
        (magic if magic is not None else pickle.dumps(MAGIC, protocol=2))
        + (version if version is not None else pickle.dumps(1001, protocol=2))
        + (sys_info if sys_info is not None else pickle.dumps(SYS_INFO, protocol=2))
        + main
        + (keys if keys is not None else pickle.dumps([k for k, _, _ in storages], protocol=2))
        + b"".join(struct.pack("<q", n) + raw for _, n, raw in storages)
        + tail
    )


def simple_legacy(tail: bytes = b"", **kw: Any) -> bytes:
    """``{"w": float32[2, 3], "n": 1}`` as a legacy stream."""
    main = pickle2({"w": legacy_tensor(legacy_pid("10", 6), 0, (2, 3), (3, 1)), "n": 1})
    data = struct.pack("<6f", 0, 1, 2, 3, 4, 5)
    return legacy_stream(main, [("10", 6, data)], tail=tail, **kw)


# -- safetensors ------------------------------------------------------------------------------------


def safetensors_bytes(tensors: dict[str, tuple[str, list[int], bytes]], metadata: Any = None,
                      header: Any = None) -> bytes:
    """A safetensors file from ``name -> (dtype code, shape, raw bytes)`` (or a given header)."""
    if header is None:
        header = {"__metadata__": metadata} if metadata is not None else {}
        offset = 0
        for name, (code, shape, raw) in tensors.items():
            header[name] = {"dtype": code, "shape": shape, "data_offsets": [offset, offset + len(raw)]}
            offset += len(raw)
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + b"".join(raw for _, _, raw in tensors.values())
