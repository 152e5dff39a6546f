"""Sharded checkpoints: an index JSON (or a folder holding one) opened as one checkpoint.

Hugging Face-style sharding writes the weights into several files (*shards*) and an index,
``model.safetensors.index.json`` or ``pytorch_model.bin.index.json``::

    {"metadata": {"total_size": 1234}, "weight_map": {"layer.0.weight": "model-00001-of-00002.safetensors", ...}}

:class:`ShardedReader` reads the index, checks it (a mapping of names to shard file names that
stay inside the index's folder, no name listed twice, every shard present), then opens each
shard with the reader its content calls for (safetensors, torch zip, legacy) when the checkpoint
is loaded. The result is one ``{name: tensor}`` dict in the index's order; every tensor
reference points into its own shard, and storage keys carry the shard's name (``shard:key``) so
keys of different shards never collide. Inspecting reads the index and each shard's header or
pickle, no tensor bytes.

Errors are clear rather than silent: a shard the index names that is not there, a name the index
places in a shard that does not hold it, a shard that is not a state dict.
"""

from __future__ import annotations

import dataclasses
import json
import os
import posixpath
from typing import Any

from .errors import CheckpointError, CorruptCheckpointError, NotACheckpointError, ResourceLimitError
from .errors import UnsupportedFormatError
from .limits import DEFAULT_LIMITS, Limits
from .policy import Finding, Policy
from .rebuild import Builder
from .reader import Reader, register
from .tensors import StorageRef, TensorRef
from .zipread import RangedFile

FORMAT = "sharded"
INDEX_SUFFIX = ".index.json"
# preferred first when a folder holds several indexes (repositories often ship both)
_PREFERRED = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


class ShardedReader(Reader):
    """One sharded checkpoint: its index and, once loaded, one reader per shard."""

    def __init__(self, index_path: str, doc: Any, *, limits: Limits = DEFAULT_LIMITS,
                 notes: list[str] | None = None) -> None:
        self.path = index_path
        self.limits = limits
        self.folder = os.path.dirname(os.path.abspath(index_path))
        self.notes = list(notes or [])
        if type(doc) is not dict or type(doc.get("weight_map")) is not dict:
            raise NotACheckpointError("a JSON file without a weight_map is not a sharded-checkpoint index",
                                      path=index_path)
        metadata = doc.get("metadata")
        if metadata is not None and type(metadata) is not dict:
            raise CorruptCheckpointError("the index's metadata must be an object", path=index_path)
        self.metadata: dict[str, Any] = metadata or {}
        total = self.metadata.get("total_size")
        self.total_size = total if type(total) is int and total >= 0 else None
        if total is not None and self.total_size is None:
            self.notes.append(f"metadata.total_size is {total!r}, not a byte count; ignored")
        self.weight_map: dict[str, str] = {}
        self.shards: list[str] = []
        by_shard: dict[str, list[str]] = {}
        for name, shard in doc["weight_map"].items():
            if type(shard) is not str:
                raise CorruptCheckpointError(f"weight_map gives {name!r} a {type(shard).__name__}, not a file name",
                                             path=index_path)
            shard = self._check_shard_name(name, shard)
            self.weight_map[name] = shard
            if shard not in by_shard:
                by_shard[shard] = []
                self.shards.append(shard)
            by_shard[shard].append(name)
        self.by_shard = by_shard
        missing = [s for s in self.shards if not os.path.isfile(self._shard_path(s))]
        if missing:
            raise CorruptCheckpointError(
                f"the index names {len(missing)} shard file(s) that are not in {self.folder}: "
                + ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
                + " (an incomplete download?)",
                path=index_path,
            )
        self._sizes = {s: os.path.getsize(self._shard_path(s)) for s in self.shards}
        self._index_size = os.path.getsize(index_path)
        self._readers: dict[str, Reader] = {}
        self._rows: list[dict[str, Any]] = []
        self._load_notes: list[str] = []
        self._storages: dict[str, StorageRef] = {}

    def _check_shard_name(self, name: str, shard: str) -> str:
        """Shard names are relative paths that stay inside the index's folder."""
        bad = (
            not shard or "\0" in shard or "\\" in shard or shard.startswith("/") or os.path.isabs(shard)
            or ".." in shard.split("/") or len(shard) > 4096
        )
        normal = posixpath.normpath(shard) if not bad else ""
        if bad or normal in (".", "") or normal.startswith("../"):
            raise CorruptCheckpointError(
                f"weight_map places {name!r} in {shard!r:.200}, which is not a file name inside the index's "
                "folder; ckpt opens no file outside it",
                path=self.path,
            )
        return normal

    def _shard_path(self, shard: str) -> str:
        return os.path.join(self.folder, *shard.split("/"))

    # -- loading -----------------------------------------------------------------------------

    def _open_shard(self, shard: str) -> Reader:
        reader = self._readers.get(shard)
        if reader is None:
            from .checkpoint import open_reader

            path = self._shard_path(shard)
            if path == os.path.abspath(self.path):
                raise CorruptCheckpointError("the index names itself as a shard", path=self.path)
            reader = open_reader(path, limits=self.limits)
            if isinstance(reader, ShardedReader):
                reader.close()
                raise CorruptCheckpointError(f"shard {shard!r} is itself an index; shards must hold tensors",
                                             path=self.path)
            reader.key_prefix = f"{shard}:"
            self._readers[shard] = reader
        return reader

    def load(self, builder: Builder, policy: Policy, findings: list[Finding]) -> Any:
        """``{name: tensor}`` for every name of the weight map, in the index's order."""
        found: dict[str, Any] = {}
        rows = []
        self._load_notes: list[str] = []  # a second load (torch's bare storages) says them once
        for shard in self.shards:
            reader = self._open_shard(shard)
            for_reader = getattr(builder, "for_reader", None)
            sub = for_reader(reader) if for_reader is not None else builder
            before = len(findings)
            try:
                obj = reader.load(sub, policy, findings)
            except CheckpointError as e:
                raise e.with_context(path=self.path)
            for i in range(before, len(findings)):
                f = findings[i]
                findings[i] = dataclasses.replace(f, record=f"{shard}: {f.record}" if f.record else shard)
            if not isinstance(obj, dict) or not all(type(k) is str for k in obj):
                raise CorruptCheckpointError(
                    f"shard {shard!r} holds a {type(obj).__name__}, not a state dict of names to tensors",
                    path=self.path,
                )
            names = self.by_shard[shard]
            absent = [n for n in names if n not in obj]
            if absent:
                raise CorruptCheckpointError(
                    f"the index places {len(absent)} tensor(s) in {shard!r} that it does not hold (first: "
                    f"{absent[0]!r}); the shard or the index is wrong",
                    path=self.path,
                )
            listed = set(names)
            extra = [k for k in obj if k not in listed]
            if extra:
                self._load_notes.append(
                    f"{shard} holds {len(extra)} tensor(s) the index does not list (first: {extra[0]!r}); "
                    "left out, as the index defines the checkpoint"
                )
            for n in names:
                value = obj[n]
                if not _is_tensor(sub, value):
                    raise CorruptCheckpointError(f"{n!r} in shard {shard!r} is a {type(value).__name__}, not a tensor",
                                                 path=self.path)
                found[n] = value
            self._storages.update(reader.storages)
            facts = reader.facts()
            rows.append({"file": shard, "format": facts["format"], "tensors": len(names),
                         "size": self._sizes[shard]})
        self._rows = rows
        return {name: found[name] for name in self.weight_map}

    # -- facts and bytes -----------------------------------------------------------------------

    def facts(self) -> dict[str, Any]:
        notes = [*self.notes, *self._load_notes]
        nbytes = None
        if self._storages:
            nbytes = sum(ref.nbytes for ref in self._storages.values())
            if self.total_size is not None and nbytes != self.total_size:
                notes.append(
                    f"metadata.total_size says {self.total_size:,} bytes; the shards' tensors hold {nbytes:,}"
                )
        formats = sorted({row["format"] for row in self._rows})
        return {
            "format": FORMAT,
            "index": os.path.basename(self.path),
            "shard_format": formats[0] if len(formats) == 1 else ("mixed" if formats else None),
            "shards": [dict(row) for row in self._rows] or [
                {"file": s, "format": None, "tensors": len(self.by_shard[s]), "size": self._sizes[s]}
                for s in self.shards
            ],
            "total_size": self.total_size,
            "tensor_bytes": nbytes,
            "metadata": {k: v for k, v in self.metadata.items() if type(v) in (str, int, float, bool)} or None,
            "notes": notes,
        }

    @property
    def storages(self) -> dict[str, StorageRef]:
        return self._storages

    def readinto(self, storage: StorageRef, buf: memoryview) -> None:
        if storage.reader is None or storage.reader is self:
            raise CorruptCheckpointError("storage has no shard to read from", path=self.path, record=storage.record)
        storage.reader.readinto(storage, buf)

    def data_offset(self, storage: StorageRef) -> int | None:
        return None  # offsets are per shard; each shard's reader serves its own storages

    @property
    def file_size(self) -> int:
        """Bytes of the index and every shard together."""
        return self._index_size + sum(self._sizes.values())

    def close(self) -> None:
        for reader in self._readers.values():
            reader.close()
        self._readers.clear()


def _is_tensor(builder: Builder, value: Any) -> bool:
    if type(value) is TensorRef:
        return True
    try:
        builder.tensor_ref(value)
    except CheckpointError:
        return False
    return True


def read_index(path: str, file: RangedFile, limits: Limits) -> Any:
    """The parsed index JSON (bounded by :attr:`~ckpt.Limits.max_json_bytes`, names unique)."""
    if file.size > limits.max_json_bytes:
        raise ResourceLimitError(
            f"the JSON file is {file.size:,} bytes; at most {limits.max_json_bytes:,} are parsed "
            "(Limits.max_json_bytes)",
            path=path,
        )
    raw = file.pread(0, file.size)
    try:
        return json.loads(raw.decode("utf-8"), object_pairs_hook=_unique_keys)
    except _Duplicate as e:
        raise CorruptCheckpointError(f"the index lists {e.key!r} twice; which shard holds it is ambiguous",
                                     path=path) from None
    except RecursionError:
        raise CorruptCheckpointError("the JSON nests too deeply", path=path) from None
    except ValueError as e:  # UnicodeDecodeError and JSONDecodeError
        raise CorruptCheckpointError(f"the file is not valid JSON ({e})", path=path) from None


class _Duplicate(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _Duplicate(k)
        out[k] = v
    return out


@register("json")
def open_json(file: RangedFile, path: str, limits: Limits, head: bytes) -> Reader:
    """A JSON file is a checkpoint only as a sharded-checkpoint index (it has a ``weight_map``)."""
    from .sniff import explain

    try:
        doc = read_index(path, file, limits)
    finally:
        file.close()
    if type(doc) is not dict or "weight_map" not in doc:
        raise NotACheckpointError(explain("json", head, file.size), path=path)
    return ShardedReader(path, doc, limits=limits)


def open_folder(path: str, limits: Limits = DEFAULT_LIMITS) -> Reader:
    """A folder: the sharded checkpoint whose index it holds."""
    try:
        names = sorted(os.listdir(path))
    except OSError as e:
        raise CheckpointError(f"cannot list the folder ({e.strerror})", path=path) from None
    indexes = [n for n in names if n.endswith(INDEX_SUFFIX) and os.path.isfile(os.path.join(path, n))]
    if not indexes:
        if ".metadata" in names and any(n.endswith(".distcp") for n in names):
            raise UnsupportedFormatError(
                "is a torch.distributed.checkpoint (DCP) folder; reading DCP is not supported yet", path=path
            )
        files = [n for n in names if os.path.isfile(os.path.join(path, n))]
        shown = ", ".join(files[:6]) + (", ..." if len(files) > 6 else "")
        raise NotACheckpointError(
            "is a folder without a sharded-checkpoint index (*.index.json)"
            + (f"; open one of its files instead: {shown}" if files else " (it holds no files)"),
            path=path,
        )
    chosen = next((n for n in _PREFERRED if n in indexes), None)
    if chosen is None:
        chosen = next((n for n in indexes if n.endswith(".safetensors" + INDEX_SUFFIX)), indexes[0])
    notes = []
    others = [n for n in indexes if n != chosen]
    if others:
        notes.append(f"the folder also holds {', '.join(others)}; ckpt read {chosen} (open another index by its path)")
    index_path = os.path.join(path, chosen)
    file = RangedFile.open(index_path)
    try:
        doc = read_index(index_path, file, limits)
    finally:
        file.close()
    return ShardedReader(index_path, doc, limits=limits, notes=notes)
