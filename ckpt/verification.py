"""``ckpt.verify``: integrity of a checkpoint as it travels, without loading it.

What is checked:

* a torch zip file (and TorchScript): every record's CRC-32 (read in chunks; a deflated record
  through ``zlib``), every local header against the central directory, every tensor inside its
  storage;
* a legacy torch file: every tensor inside its storage, every storage inside the file;
* a safetensors file: the header against the bytes (lengths, dtypes, shapes, offsets that cover
  the data exactly, as :mod:`ckpt.safetensors_reader` validates);
* a torch.distributed.checkpoint folder: ``.metadata`` (every chunk inside its file and its
  tensor, the chunks covering each tensor once), every ``torch.save`` archive in the ``.distcp``
  files record by record with its CRC-32, each chunk's dtype and shape against ``.metadata``;
* a sharded checkpoint (an index or its folder): each shard as above, and the index against
  the shards: missing shards, shard files nobody references, tensors listed twice in the index
  or missing from their shard, tensors a shard holds that the index does not list, and
  ``metadata.total_size`` against the tensors' bytes;
* a manifest, when there is one (``FILE.sha256`` beside a file, ``SHA256SUMS`` in a sharded
  folder, both in ``sha256sum`` format, as ``ckpt convert --manifest`` writes them): every
  listed file's SHA-256.

Problems are data (:class:`Problem`); a file that cannot be identified or opened at all raises
:class:`~ckpt.CheckpointError` instead (``ckpt verify`` exits 2 then, 1 for problems, 0 when clean).

>>> r = ckpt.verify("model.safetensors")    # doctest: +SKIP
>>> r.ok, [p.message for p in r.problems]   # doctest: +SKIP
(True, [])
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from .crc import crc32
from .errors import CheckpointError
from .limits import DEFAULT_LIMITS, Limits

SCHEMA = "ckpt.verify/1"
_CHUNK = 8 << 20


class Problem:
    """One thing wrong: ``kind`` (``crc``, ``corrupt``, ``missing-shard``, ``orphan-shard``,
    ``duplicate``, ``missing-tensor``, ``unlisted-tensor``, ``total-size``, ``manifest``), the file
    and record (tensor or zip record) it concerns, and a sentence."""

    def __init__(self, kind: str, message: str, file: str | None = None, record: str | None = None) -> None:
        self.kind = kind
        self.message = message
        self.file = file
        self.record = record

    def as_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "file": self.file, "record": self.record, "message": self.message}

    def __str__(self) -> str:
        where = ": ".join(x for x in (self.file, self.record) if x)
        return f"{where}: {self.message}" if where else self.message


class Verification:
    """The result of :func:`verify` (``as_json()`` gives the ``ckpt.verify/1`` report)."""

    def __init__(self, path: str, fmt: str) -> None:
        self.path = path
        self.format = fmt
        self.problems: list[Problem] = []
        self.files: list[dict[str, Any]] = []
        self.records = 0
        self.tensors = 0
        self.bytes_checked = 0
        self.manifest: str | None = None
        self.notes: list[str] = []

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "path": self.path,
            "format": self.format,
            "ok": self.ok,
            "files": list(self.files),
            "manifest": self.manifest,
            "totals": {"files": len(self.files), "records_checked": self.records, "tensors": self.tensors,
                       "bytes_checked": self.bytes_checked, "problems": len(self.problems)},
            "problems": [p.as_json() for p in self.problems],
            "notes": list(self.notes),
        }


def verify(path: str | os.PathLike[str], *, limits: Limits = DEFAULT_LIMITS,
           progress: Callable[[int, int], None] | None = None) -> Verification:
    """Check ``path`` (see the module docs). Raises :class:`~ckpt.CheckpointError` when it cannot
    be opened at all; everything else wrong is a :class:`Problem` in the result."""
    name = os.fspath(path)
    from .dcp import is_dcp_folder

    if os.path.isdir(name) and is_dcp_folder(name):
        return _verify_dcp(name, limits, progress)
    if os.path.isdir(name) or name.endswith(".index.json"):
        return _verify_sharded(name, limits, progress)
    from .checkpoint import open_reader

    reader = open_reader(name, limits=limits)
    fmt = str(reader.facts()["format"])
    if fmt in ("sharded", "dcp"):
        folder = getattr(reader, "folder", None) or os.path.dirname(os.path.abspath(name))
        reader.close()
        return _verify_dcp(folder, limits, progress) if fmt == "dcp" else _verify_sharded(name, limits, progress)
    result = Verification(name, fmt)
    try:
        _check_file(reader, result, os.path.basename(name), progress)
    finally:
        reader.close()
    _check_manifest(result, os.path.dirname(os.path.abspath(name)), name + ".sha256")
    _note_unchecked_bytes(result)
    return result


def _note_unchecked_bytes(result: Verification) -> None:
    if result.manifest is None and any(f["format"] == "safetensors" for f in result.files):
        result.notes.append("safetensors stores no checksums: headers and sizes were checked, the tensor bytes "
                            "themselves only a manifest can vouch for (ckpt convert --manifest)")


def _check_file(reader: Any, result: Verification, label: str,
                progress: Callable[[int, int], None] | None) -> set[str] | None:
    """Check one opened file; returns its tensor names when it is a state dict (for indexes)."""
    from .policy import Policy
    from .rebuild import Builder
    from .walk import iter_tensors

    result.files.append({"file": label, "format": reader.facts()["format"], "bytes": reader.file_size})
    archive = getattr(reader, "archive", None)
    if archive is not None:
        _check_zip(archive, result, label, progress)
    names: set[str] | None = None
    try:
        policy = Policy("inspect")
        root = reader.load(Builder(mode=policy.mode, limits=reader.limits), policy, [])
        for _path, _keys, _ref in iter_tensors(root, max_depth=reader.limits.max_walk_depth):
            result.tensors += 1
        if isinstance(root, dict):
            names = {k for k in root if type(k) is str}
    except CheckpointError as e:
        result.problems.append(Problem("corrupt", e.message if hasattr(e, "message") else str(e), label,
                                       getattr(e, "record", None)))
    return names


def _check_zip(archive: Any, result: Verification, label: str, progress: Callable[[int, int], None] | None) -> None:
    from .zipread import STORED

    entries = archive.entries
    if not archive.has_crcs:
        result.notes.append(f"{label} stores no CRC-32s (torch.save with set_crc32_options(False)): its bytes "
                            "cannot be checked, only its structure")
        return
    total = sum(e.compressed_size for e in entries)
    done = 0
    for entry in entries:
        result.records += 1
        try:
            start = archive.data_offset(entry)
            where = archive.file.locate(start)  # (fd, offset): a zip inside a DCP file lies further in
            if entry.method == STORED and where is not None:
                fd, start = where
                crc = 0
                pos = 0
                while pos < entry.size:
                    chunk = os.pread(fd, min(_CHUNK, entry.size - pos), start + pos)
                    if not chunk:
                        raise CheckpointError("the file ends inside this record (truncated?)")
                    crc = crc32(chunk, crc)
                    pos += len(chunk)
                    done += len(chunk)
                    if progress is not None:
                        progress(done, total)
                result.bytes_checked += entry.size
                if crc != entry.crc:
                    result.problems.append(Problem(
                        "crc", f"CRC-32 mismatch (stored {entry.crc:08x}, computed {crc:08x}): the record's bytes "
                        "are damaged", label, entry.name))
            else:
                archive.read(entry, verify_crc=True)
                result.bytes_checked += entry.size
                done += entry.compressed_size
        except CheckpointError as e:
            result.problems.append(Problem("crc" if "CRC" in str(e) else "corrupt", _message(e), label, entry.name))


def _verify_dcp(folder: str, limits: Limits, progress: Callable[[int, int], None] | None) -> Verification:
    """A torch.distributed.checkpoint folder: ``.metadata`` as the DCP reader validates it (every
    chunk inside its file and the tensor's shape, chunks that cover each tensor once), every
    ``torch.save`` archive in the ``.distcp`` files (each tensor chunk and value) record by record
    with its CRC-32, and each chunk's dtype and shape against ``.metadata``."""
    from .dcp import open_folder

    reader = open_folder(folder, limits)
    result = Verification(folder, "dcp")
    try:
        if reader.metadata_name:
            result.files.append({"file": reader.metadata_name, "format": "dcp-metadata", "bytes": reader._meta_size})
        for row in reader.files():
            fmt = "distcp" if row["file"].endswith(".distcp") else reader.file_serialization.get(row["file"], "safetensors")
            result.files.append({"file": row["file"], "format": fmt, "bytes": row["size"]})
        # every torch.save archive: the values, then each tensor's chunks (safetensors chunks had
        # their headers checked when the folder was opened)
        blobs: list[tuple[str, str, int, int, Any]] = [(i.fqn, i.file, i.offset, i.length, None)
                                                       for i in reader.items.values()]
        for t in reader.tensors():
            result.tensors += 1
            blobs += [(t.fqn, c.file, c.offset, c.length, (t, c)) for c in t.chunks
                      if reader.file_serialization.get(c.file) == "torch_save"]
        total = sum(b[3] for b in blobs)
        done = 0
        for fqn, file, offset, length, chunk in blobs:
            label = f"{file} @ {offset:,}"
            try:
                blob = reader._blob_reader(file, offset, length, fqn, keep=False)
            except CheckpointError as e:
                result.problems.append(Problem("corrupt", _message(e), label, fqn))
                continue
            try:
                _check_zip(blob.archive, result, label, None)  # type: ignore[attr-defined]
                if chunk is not None and chunk[1].numel:
                    reader._zip_chunk(chunk[0], chunk[1], blob)  # the archive holds this dtype and shape
            except CheckpointError as e:
                if not any(p.file == label for p in result.problems):
                    result.problems.append(Problem("corrupt", _message(e), label, fqn))
            finally:
                blob.close()
            done += length
            if progress is not None:
                progress(done, total)
    finally:
        reader.close()
    if any(v != "torch_save" for v in reader.file_serialization.values()):
        result.notes.append("safetensors chunks store no checksums: their headers and sizes were checked, the "
                            "tensor bytes themselves were not")
    return result


def _message(e: CheckpointError) -> str:
    return str(getattr(e, "message", None) or e)


def _verify_sharded(name: str, limits: Limits, progress: Callable[[int, int], None] | None) -> Verification:
    from .checkpoint import open_reader
    from .sharded import _PREFERRED, INDEX_SUFFIX

    if os.path.isdir(name):
        indexes = sorted(n for n in os.listdir(name) if n.endswith(INDEX_SUFFIX))
        if not indexes:
            raise CheckpointError("is a folder without a sharded-checkpoint index (*.index.json)", path=name)
        chosen = next((n for n in _PREFERRED if n in indexes), indexes[0])
        index_path = os.path.join(name, chosen)
    else:
        index_path = name
    folder = os.path.dirname(os.path.abspath(index_path))
    label = os.path.basename(index_path)
    result = Verification(name, "sharded")
    try:
        with open(index_path, "rb") as f:
            raw = f.read(limits.max_json_bytes + 1)
    except OSError as e:
        raise CheckpointError(f"cannot read the index ({e.strerror})", path=index_path) from None
    if len(raw) > limits.max_json_bytes:
        raise CheckpointError("the index is larger than Limits.max_json_bytes", path=index_path)
    dupes: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in items:
            if k in out:
                dupes.append(k)
            out[k] = v
        return out

    try:
        doc = json.loads(raw.decode("utf-8"), object_pairs_hook=pairs)
    except (ValueError, RecursionError) as e:
        raise CheckpointError(f"the index is not valid JSON ({e})", path=index_path) from None
    if type(doc) is not dict or type(doc.get("weight_map")) is not dict:
        raise CheckpointError("the index has no weight_map", path=index_path)
    result.files.append({"file": label, "format": "index", "bytes": len(raw)})
    for k in dupes:
        result.problems.append(Problem("duplicate", "the index lists this tensor more than once", label, k))
    by_shard: dict[str, list[str]] = {}
    for tname, shard in doc["weight_map"].items():
        if type(shard) is not str or not shard or shard.startswith("/") or ".." in shard.split("/"):
            result.problems.append(Problem("corrupt", f"weight_map gives it {shard!r:.100}, not a shard file name "
                                           "inside the index's folder", label, tname))
            continue
        by_shard.setdefault(shard, []).append(tname)
    sizes: dict[str, int] = {}
    for shard, listed in by_shard.items():
        path = os.path.join(folder, *shard.split("/"))
        if not os.path.isfile(path):
            result.problems.append(Problem("missing-shard", f"the index places {len(listed)} tensor(s) in this file, "
                                           "which is not there (an incomplete download?)", shard))
            continue
        try:
            reader = open_reader(path, limits=limits)
        except CheckpointError as e:
            result.problems.append(Problem("corrupt", _message(e), shard))
            continue
        try:
            names = _check_file(reader, result, shard, progress)
            if names is not None:
                for ref in reader.storages.values():
                    sizes[shard] = sizes.get(shard, 0) + ref.nbytes
                listed_set = set(listed)
                for t in listed:
                    if t not in names:
                        result.problems.append(Problem("missing-tensor", "the index places this tensor in "
                                                       f"{shard}, which does not hold it", shard, t))
                for t in sorted(names - listed_set):
                    result.problems.append(Problem("unlisted-tensor", "the shard holds this tensor but the index "
                                                   "does not list it", shard, t))
        finally:
            reader.close()
    # shard files nobody references: same kind of file as the shards, in the same folder
    exts = {os.path.splitext(s)[1] for s in by_shard} or {".safetensors", ".bin"}
    for f in sorted(os.listdir(folder)):
        full = os.path.join(folder, f)
        if f in by_shard or f.startswith(".") or not os.path.isfile(full) or f.endswith(INDEX_SUFFIX):
            continue
        if os.path.splitext(f)[1] in exts and "-of-" in f:
            result.problems.append(Problem("orphan-shard", "this shard file is in the folder but the index does not "
                                           "reference it", f))
    meta = doc.get("metadata")
    total = meta.get("total_size") if isinstance(meta, dict) else None
    if total is not None and sizes and not any(p.kind in ("missing-shard", "corrupt") for p in result.problems):
        held = sum(sizes.values())
        if type(total) is not int or total != held:
            result.problems.append(Problem("total-size", f"metadata.total_size is {total!r} but the shards' tensors "
                                           f"hold {held:,} bytes", label))
    _check_manifest(result, folder, os.path.join(folder, "SHA256SUMS"))
    _note_unchecked_bytes(result)
    return result


def _check_manifest(result: Verification, folder: str, manifest: str) -> None:
    if not os.path.isfile(manifest):
        return
    from .conversion import sha256_file

    result.manifest = manifest
    label = os.path.basename(manifest)
    try:
        with open(manifest, encoding="utf-8") as f:
            lines = f.read(1 << 20).splitlines()
    except (OSError, UnicodeDecodeError) as e:
        result.problems.append(Problem("manifest", f"cannot read the manifest ({e})", label))
        return
    for line in lines:
        if not line.strip():
            continue
        digest, sep, fname = line.partition("  ")
        fname = fname.lstrip("*")
        if not sep or len(digest) != 64 or "/" in fname or fname in ("", ".", ".."):
            result.problems.append(Problem("manifest", f"not a sha256sum line: {line[:100]!r}", label))
            continue
        path = os.path.join(folder, fname)
        if not os.path.isfile(path):
            result.problems.append(Problem("manifest", "the manifest lists this file, which is not there", fname))
            continue
        got = sha256_file(path)
        if got != digest.lower():
            result.problems.append(Problem("manifest", f"SHA-256 is {got}, the manifest says {digest}", fname))
