"""Tell what a file is from its first bytes, never from its name.

:func:`sniff` classifies; :func:`explain` turns the non-checkpoint kinds (an LFS pointer, an
HTML error page, an empty download, ...) into the actionable message users need.

>>> sniff(b"PK\\x03\\x04rest", 100)
'zip'
>>> sniff(b"version https://git-lfs.github.com/spec/v1\\noid sha256:ab", 130)
'lfs-pointer'
"""

from __future__ import annotations

import codecs
import json
import struct

HEAD_BYTES = 512

# pickle of torch's legacy magic number 0x1950A86A20F9469CFC6C, as LONG1 (protocol >= 2)
LEGACY_MAGIC_LONG1 = b"\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"
LEGACY_MAGIC_INT = 0x1950A86A20F9469CFC6C
_FRAME = b"\x95"


def sniff(head: bytes, size: int) -> str:
    """The kind of file ``head`` (its first bytes) starts; ``size`` is the whole file's size.

    Kinds: ``zip``, ``torch-legacy``, ``torch-tar``, ``safetensors``, ``pickle``, ``npy``,
    ``lfs-pointer``, ``html``, ``json``, ``empty``, ``gzip``, ``pytorch-preview``, ``text``, ``unknown``.
    """
    if size == 0 or not head:
        return "empty"
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return "zip"
    if size < 4 and len(head) >= 2 and b"PK\x03\x04".startswith(head):
        return "zip"  # the first bytes of a zip and nothing else: a truncated download
    if head.startswith(b"PYTORCH1"):
        return "pytorch-preview"
    if head.startswith(b"version https://git-lfs"):
        return "lfs-pointer"
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if _is_tar(head):
        return "torch-tar"
    if _is_safetensors(head, size):
        return "safetensors"
    if head[:1] == b"\x80" and len(head) > 2 and head[1] <= 5:
        body = head[2:]
        if body[:1] == _FRAME:  # protocol 4+: a FRAME opcode (+ u64 length) comes before the first value
            body = body[9:]
        if body.startswith(LEGACY_MAGIC_LONG1) or (body and len(head) == size and LEGACY_MAGIC_LONG1.startswith(body)):
            return "torch-legacy"  # (or its first bytes only: a truncated download the reader names)
        return "pickle"
    if _is_legacy_text_protocol(head):
        return "torch-legacy"
    stripped = head.lstrip()
    lower = stripped[:64].lower()
    if lower.startswith((b"<!doctype html", b"<html", b"<head", b"<?xml")) or b"<html" in head[:512].lower():
        return "html"
    if stripped[:1] in (b"{", b"[") and _looks_textual(head):
        return "json"
    if stripped[:1] in (b"(", b"c", b"]", b"}") and head.rstrip().endswith(b"."):
        return "pickle"
    if _looks_textual(head):
        return "text"
    return "unknown"


def _is_tar(head: bytes) -> bool:
    return len(head) >= 262 and head[257:262] == b"ustar"


def _is_safetensors(head: bytes, size: int) -> bool:
    """An 8-byte little-endian length, then a JSON object (the reader checks the length against
    the file, so a truncated download is named as such rather than as unknown bytes)."""
    if len(head) < 9:
        return False
    (n,) = struct.unpack_from("<Q", head)
    body = head[8 : 8 + min(n, 64)].lstrip(b" \t\r\n")
    return n >= 2 and body[:1] in (b"{", b"[")


def _is_legacy_text_protocol(head: bytes) -> bool:
    # protocol 0/1 pickles of the magic number: "L<decimal>L\n." or "\x8a" forms
    return head.startswith(b"L" + str(LEGACY_MAGIC_INT).encode()) or head.startswith(
        b"I" + str(LEGACY_MAGIC_INT).encode()
    )


def _looks_textual(head: bytes) -> bool:
    try:  # not final: a character cut in two at the end of ``head`` is still text
        text = codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return False
    return all(c.isprintable() or c in "\r\n\t" for c in text)


def explain(kind: str, head: bytes, size: int) -> str:
    """An actionable sentence about a file that is not a readable checkpoint."""
    if kind == "empty":
        return "the file is empty (an interrupted download or a failed save?)"
    if kind == "lfs-pointer":
        return (
            "this is a Git LFS pointer file, not the checkpoint itself; run `git lfs pull` "
            "(or download the file through the LFS/hub URL) to fetch the real bytes"
        )
    if kind == "html":
        return (
            "this is an HTML page, not a checkpoint: the download probably returned an error or "
            "login page instead of the file"
        )
    if kind == "json":
        return _explain_json(head)
    if kind == "gzip":
        return "this is a gzip-compressed file; decompress it first (gunzip) and try again"
    if kind == "npy":
        return "this is a numpy .npy array file, not a torch checkpoint"
    if kind == "pytorch-preview":
        return "this archive comes from a PyTorch preview release (PYTORCH1 header), which torch itself no longer reads"
    if kind == "pickle":
        return (
            "this is a plain pickle file, not a torch checkpoint; `ckpt scan` can vet it without "
            "running it"
        )
    if kind == "text":
        return f"this is a text file ({size:,} bytes), not a checkpoint"
    return f"unrecognised content ({size:,} bytes starting {head[:8].hex(' ')}); not a checkpoint ckpt knows"


def _explain_json(head: bytes) -> str:
    text = head.decode("utf-8", "replace")
    if '"weight_map"' in text:
        return "this is a sharded-checkpoint index (weight_map), but not a valid one"
    try:
        json.loads(text)
    except ValueError:
        pass
    return "this is a JSON file, not a checkpoint"
