"""``ckpt.convert``: torch checkpoints to safetensors and back, sharded or not, in bounded memory.

Directions: a torch file (zip, legacy), a safetensors file or a sharded checkpoint (an index
or its folder) to safetensors, to a torch zip file (what ``torch.save`` writes), or to a
sharded checkpoint of either (``shard_size``). The model is never held: tensors are read
from the source storage by storage (chunk by chunk, packed when they are non-contiguous views,
cast when asked) and written out (:mod:`ckpt.tensor_stream`).

* To safetensors, the object tree is flattened to dotted names (:mod:`ckpt.flatten`): tied
  weights are written once and recorded as aliases, and everything that is not a tensor (epoch,
  step, optimizer ``param_groups``, hyper-parameters) is kept in ``__metadata__`` under the key
  ``ckpt.convert/1`` (schema in :mod:`ckpt.flatten`). ``__metadata__["format"]`` is ``"pt"``,
  as ``transformers`` expects.
* From safetensors, a file with that metadata becomes its original tree again (a training
  checkpoint round-trips: model, optimizer, epoch, ...); a file without it becomes a flat
  state dict, as ``safetensors.torch.load_file`` gives.
* Sharded output: a folder with ``model-00001-of-0000N.safetensors`` (or
  ``pytorch_model-00001-of-0000N.bin``) shards of at most ``shard_size`` bytes (a bigger tensor
  gets a shard of its own) and ``model.safetensors.index.json`` (``pytorch_model.bin.index.json``)
  with ``weight_map`` and ``metadata.total_size``; the tree metadata lives in the index's
  ``metadata`` under ``ckpt.convert/1``.

Every output file is written atomically, and a sharded output all or nothing: shards are
written under temporary names and renamed into place only once every one of them (and the
index) is complete; on any error (a bad tensor, a full disk, Ctrl-C) nothing new is left. With
``manifest=True`` a ``sha256sum``-style file (``DST.sha256``, or ``SHA256SUMS`` in a sharded
folder) lists the SHA-256 of every output file; :func:`ckpt.verify` checks it.

The source is any checkpoint :func:`ckpt.open` reads, or an opened checkpoint object. Its tensors are
:class:`~ckpt.tensors.TensorRef` or any object with the tensor-source interface described in
:mod:`ckpt.tensor_stream` (``dtype``, ``shape``, ``nbytes``, ``read_into(buffer)``, optionally
``iter_chunks(size)``): a reader of another format (``torch.distributed.checkpoint``) plugs in
by returning such objects from its ``load``.

>>> r = ckpt.convert("model.pt", "model.safetensors")                    # doctest: +SKIP
>>> ckpt.convert("model.safetensors", "model.pt", dtype="bf16")          # doctest: +SKIP
>>> ckpt.convert("big.pt", "out/", shard_size="5GB", only=["model.*"])  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from . import dtypes as _dt
from .errors import CheckpointError, UnsupportedFeatureError
from .flatten import METADATA_KEY, Flattened, flatten, parse_metadata, subtree, unflatten
from .limits import DEFAULT_LIMITS, Limits
from .saving import progress_steps
from .tensor_stream import CAST_NAMES, cast_chunks, cast_target, tensor_chunks
from .tensors import StorageReader, StorageRef, TensorRef, contiguous_strides

PathLike = str | os.PathLike[str]
Progress = Callable[[int, int], None]
"""``progress(done, total)``: bytes of tensor data written so far, of the total."""

REPORT_SCHEMA = "ckpt.convert/1"
_PT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".tar")
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30, "TIB": 1 << 40}


def parse_size(text: str | int) -> int:
    """``"5GB"`` -> 5_000_000_000 (KB/MB/GB/TB are powers of 10, KiB/MiB/GiB powers of 2).

    >>> parse_size("5GB"), parse_size("512MiB"), parse_size(100)
    (5000000000, 536870912, 100)
    """
    if isinstance(text, int):
        value = text
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
        unit = m.group(2).upper() if m else ""
        if m is None or unit not in _UNITS:
            raise ValueError(f"{text!r} is not a size (e.g. 5GB, 500MB, 2GiB)")
        value = int(float(m.group(1)) * _UNITS[unit])
    if value <= 0:
        raise ValueError("the shard size must be positive")
    return value


class OutputFile:
    """One file written: name (relative to the destination folder for shards), bytes, tensors."""

    def __init__(self, path: str, size: int, tensors: int, sha256: str | None = None) -> None:
        self.path = path
        self.size = size
        self.tensors = tensors
        self.sha256 = sha256

    def as_json(self) -> dict[str, Any]:
        return {"file": self.path, "bytes": self.size, "tensors": self.tensors, "sha256": self.sha256}


class Conversion:
    """What :func:`convert` did (``as_json()`` gives the ``ckpt.convert/1`` report)."""

    def __init__(self, source: str, source_format: str, destination: str, fmt: str) -> None:
        self.source = source
        self.source_format = source_format
        self.destination = destination
        self.format = fmt
        self.files: list[OutputFile] = []
        self.index: str | None = None
        self.manifest: str | None = None
        self.tensors = 0
        self.aliases: dict[str, str] = {}
        self.excluded: list[str] = []
        self.cast: str | None = None
        self.cast_tensors = 0
        self.tensor_bytes = 0
        self.kept_tree = False
        self.restored_tree = False
        self.notes: list[str] = []

    def as_json(self) -> dict[str, Any]:
        return {
            "schema": REPORT_SCHEMA,
            "source": {"path": self.source, "format": self.source_format},
            "destination": {"path": self.destination, "format": self.format, "sharded": self.index is not None,
                            "index": self.index, "manifest": self.manifest},
            "files": [f.as_json() for f in self.files],
            "totals": {"tensors": self.tensors, "tensor_bytes": self.tensor_bytes, "aliases": len(self.aliases),
                       "excluded": len(self.excluded), "cast": self.cast_tensors,
                       "file_bytes": sum(f.size for f in self.files)},
            "cast": self.cast,
            "aliases": dict(self.aliases),
            "excluded": list(self.excluded),
            "tree_in_metadata": self.kept_tree,
            "tree_from_metadata": self.restored_tree,
            "notes": list(self.notes),
        }


def target_format(dst: str, to: str | None, sharded: bool) -> str:
    """``"safetensors"`` or ``"pt"``: ``to`` if given, else from DST's name."""
    if to is not None:
        key = to.lower().lstrip(".")
        if key in ("safetensors", "st"):
            return "safetensors"
        if key in ("pt", "torch", "pth", "bin"):
            return "pt"
        if key == "dcp":
            if sharded:
                raise ValueError("--to dcp writes one rank's file; --shard-size does not apply")
            return "dcp"
        raise ValueError(f"--to {to!r}: say safetensors, pt or dcp")
    name = dst.rstrip("/\\").lower()
    if name.endswith(".safetensors") or name.endswith(".safetensors.index.json"):
        return "safetensors"
    if name.endswith(_PT_SUFFIXES) or name.endswith(".bin.index.json"):
        return "pt"
    if sharded or os.path.isdir(dst) or dst.endswith(("/", os.sep)):
        return "safetensors"
    raise ValueError(f"cannot tell the output format from {dst!r}: name it *.safetensors or *.pt, or pass --to")


# -- sources ---------------------------------------------------------------------------------------


def _source_tree(ck: Any) -> tuple[Any, list[str], bool]:
    """The checkpoint's tree, rebuilt from ``ckpt.convert/1`` metadata where the file has it
    (with the notes it carries, and whether it did)."""
    root = ck.root
    reader = ck.reader
    meta = getattr(reader, "metadata", None)
    raw = meta.get(METADATA_KEY) if isinstance(meta, Mapping) else None
    if raw is None or not isinstance(root, dict):
        return root, [], False
    doc = parse_metadata(raw) if isinstance(raw, str) else raw
    if not isinstance(doc, dict):
        raise CheckpointError(f"{METADATA_KEY} metadata is not an object", path=ck.path)
    notes = [n for n in doc.get("notes", []) if isinstance(n, str)]
    if "tree" not in doc:
        aliases = doc.get("aliases") or {}
        tree = dict(root)
        for name, target in aliases.items():
            if target in root and name not in tree:
                tree[name] = root[target]
        return tree, notes, True
    return unflatten(doc, root), notes, True


# -- the .pt side: storages that stream converted bytes --------------------------------------------


class _ConvertedReader(StorageReader):
    """Serves storages made by :func:`_converted_ref`: each is one source tensor, packed and cast."""

    byteorder = "little"

    def __init__(self) -> None:
        self.sources: dict[str, tuple[Any, _dt.DType]] = {}

    def add(self, t: Any, dtype: _dt.DType, name: str) -> TensorRef:
        key = f"convert:{len(self.sources)}"
        numel = 1
        for d in t.shape:
            numel *= d
        ref = StorageRef(key, dtype, "cpu", numel, name, self)
        self.sources[key] = (t, dtype)
        out = TensorRef(ref, dtype, tuple(t.shape), contiguous_strides(tuple(t.shape)), 0)
        if type(t) is TensorRef:
            out.requires_grad = t.requires_grad
            if t.is_parameter:
                out.is_parameter = True
        return out

    def iter_chunks(self, storage: StorageRef) -> Iterator[bytes | memoryview]:
        t, dtype = self.sources[storage.key]
        try:
            yield from cast_chunks(tensor_chunks(t), t.dtype, dtype)
        except CheckpointError as e:
            raise e.with_context(record=storage.record)

    def readinto(self, storage: StorageRef, buf: memoryview) -> None:
        pos = 0
        for chunk in self.iter_chunks(storage):
            n = len(chunk)
            buf[pos : pos + n] = chunk
            pos += n

    def data_offset(self, storage: StorageRef) -> int | None:
        return None


def _pt_value(t: Any, cast: _dt.DType | None, conv: _ConvertedReader, name: str) -> Any:
    """What ``ckpt.save`` writes for tensor ``t``: itself when it can, else a streamed conversion."""
    dtype = cast_target(t.dtype, cast)
    if type(t) is TensorRef and dtype == t.dtype:
        return t  # ckpt.save streams its storage from the source file, views and sharing kept
    return conv.add(t, dtype, name)


# -- staging: all or nothing ----------------------------------------------------------------------


class _Staging:
    """Output files written under temporary names beside their destinations, renamed into place
    together by :meth:`commit`; :meth:`abort` removes them (and a folder this run created)."""

    def __init__(self, folder: str, fsync: bool) -> None:
        self.folder = folder
        self.fsync = fsync
        self.created_folder = False
        self.staged: list[tuple[str, str]] = []
        if not os.path.isdir(folder):
            if os.path.exists(folder):
                raise CheckpointError("the destination exists and is not a folder", path=folder)
            parent = os.path.dirname(os.path.abspath(folder))
            if not os.path.isdir(parent):
                raise CheckpointError(f"cannot write here: folder {parent!r} does not exist", path=folder)
            os.mkdir(folder)
            self.created_folder = True

    def path(self, name: str) -> str:
        final = os.path.join(self.folder, name)
        tmp = os.path.join(self.folder, f".{name}.{os.urandom(4).hex()}.partial")
        self.staged.append((tmp, final))
        return tmp

    def commit(self) -> None:
        for tmp, final in self.staged:
            os.replace(tmp, final)
        self.staged = []

    def abort(self) -> None:
        for tmp, _ in self.staged:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        self.staged = []
        if self.created_folder:
            shutil.rmtree(self.folder, ignore_errors=True)


# -- the conversion ------------------------------------------------------------------------------


def convert(
    src: PathLike | Any,
    dst: PathLike,
    *,
    to: str | None = None,
    shard_size: int | str | None = None,
    dtype: str | None = None,
    only: Iterable[str] = (),
    exclude: Iterable[str] = (),
    key: str | None = None,
    metadata: Mapping[str, str] | None = None,
    manifest: bool = False,
    progress: Progress | None = None,
    fsync: bool = True,
    limits: Limits = DEFAULT_LIMITS,
) -> Conversion:
    """Convert checkpoint ``src`` to ``dst`` (see the module docs); returns a :class:`Conversion`.

    ``src`` is a path, or an already opened :class:`~ckpt.Checkpoint` (or any object with
    ``path``, ``format``, ``root`` and ``reader``; left open), e.g. one a new reader built.

    ``to`` is ``"safetensors"``, ``"pt"`` or ``"dcp"`` (a single-rank torch.distributed.checkpoint
    folder that ``torch.distributed.checkpoint.load`` reads; see :func:`ckpt.dcp_save`) (default:
    from DST's suffix). A DCP folder as ``src`` is consolidated tensor by tensor. ``shard_size``
    (bytes, or ``"5GB"``) makes DST a folder of shards plus an index. ``dtype`` (``bf16``,
    ``fp16``, ``fp32``) casts floating tensors (float16/bfloat16/float32/float64) as torch's
    ``.to()`` does. ``only``/``exclude`` are globs over the dotted tensor names; ``key`` takes one
    subtree (``state_dict``). ``metadata`` adds string pairs to ``__metadata__`` (safetensors) or
    the index's ``metadata``. Raises :class:`~ckpt.CheckpointError` (nothing written) on bad
    input.
    """

    src_ck = src if hasattr(src, "root") and hasattr(src, "reader") else None
    src_s = src_ck.path if src_ck is not None else os.fspath(src)  # type: ignore[union-attr]
    dst_s = os.fspath(dst)
    size = parse_size(shard_size) if shard_size is not None else None
    fmt = target_format(dst_s, to, size is not None)
    if fmt == "dcp" and manifest:
        raise ValueError("--manifest lists output files; a DCP folder has none of its own to list (use --to pt or safetensors)")
    cast = None
    if dtype is not None:
        name = CAST_NAMES.get(dtype.lower().replace("torch.", ""))
        if name is None:
            raise ValueError(f"--dtype {dtype!r}: say bf16, fp16 or fp32")
        cast = _dt.DTYPES[name]
    user_meta = dict(metadata or {})
    for k, v in user_meta.items():
        if type(k) is not str or type(v) is not str:
            raise ValueError("metadata must map strings to strings")
        if k == METADATA_KEY:
            raise ValueError(f"the metadata key {METADATA_KEY!r} is ckpt's own")
    if os.path.abspath(src_s) == os.path.abspath(dst_s) or (
        os.path.exists(src_s) and os.path.exists(dst_s) and os.path.samefile(src_s, dst_s)
    ):
        raise CheckpointError("the source and the destination are the same file", path=dst_s)

    try:
        return _convert(src_ck, src_s, dst_s, fmt, size, cast, only, exclude, key, user_meta, manifest, progress,
                        fsync, limits)
    except CheckpointError as e:
        raise e.with_context(path=src_s)


def _convert(
    src_ck: Any, src_s: str, dst_s: str, fmt: str, size: int | None, cast: _dt.DType | None, only: Iterable[str],
    exclude: Iterable[str], key: str | None, user_meta: dict[str, str], manifest: bool, progress: Progress | None,
    fsync: bool, limits: Limits,
) -> Conversion:
    from contextlib import nullcontext

    from .checkpoint import open as ckpt_open

    with nullcontext(src_ck) if src_ck is not None else ckpt_open(src_s, limits=limits) as ck:
        tree, src_notes, restored = _source_tree(ck)
        if key:
            tree = subtree(tree, key)
        flat = flatten(tree, only=only, exclude=exclude, max_depth=limits.max_walk_depth)
        result = Conversion(src_s, ck.format, dst_s, fmt)
        result.restored_tree = restored
        result.notes = [*src_notes, *flat.notes]
        result.aliases = dict(flat.aliases)
        result.excluded = list(flat.excluded)
        result.cast = cast.name if cast is not None else None
        if not flat.tensors and not flat.aliases:
            result.notes.append("no tensor was selected; the output holds none")
        for name, t in flat.tensors.items():
            if type(t) is TensorRef and t.storage is None:
                raise UnsupportedFeatureError(f"tensor {name!r} is a meta tensor (no data); leave it out with --exclude",
                                              record=name)
            if cast_target(t.dtype, cast) != t.dtype:
                result.cast_tensors += 1
        result.tensors = len(flat.tensors)
        out_dtypes = {n: cast_target(t.dtype, cast) for n, t in flat.tensors.items()}
        result.tensor_bytes = sum(_nbytes(t.shape, out_dtypes[n]) for n, t in flat.tensors.items())
        total = result.tensor_bytes
        step = progress_steps(total, progress)
        if progress is not None:
            progress(0, total)
        source = {"format": ck.format, "file": os.path.basename(src_s.rstrip("/"))}
        if size is None:
            _convert_single(flat, result, dst_s, fmt, cast, user_meta, source, step, fsync, manifest)
        else:
            _convert_sharded(flat, result, dst_s, fmt, cast, user_meta, source, size, step, fsync, manifest)
    return result


def _nbytes(shape: Any, dtype: _dt.DType) -> int:
    n = dtype.itemsize
    for d in shape:
        n *= d
    return n


def _st_metadata(flat: Flattened, user: dict[str, str], source: dict[str, Any]) -> dict[str, str]:
    meta = {"format": "pt", **user}
    doc = flat.metadata_json(source)
    if doc is not None:
        meta[METADATA_KEY] = doc
    return meta


def _pt_tree(flat: Flattened, values: dict[str, Any]) -> Any:
    if flat.tree is None:
        return values
    doc: dict[str, Any] = {"tree": flat.tree, "aliases": flat.aliases}
    # parameters were made lazily by flatten's source refs: keep the flags the tree records
    return unflatten(doc, values)


def _save_pt(tree: Any, path: str, step: Callable[[int], None], fsync: bool) -> int:
    """``ckpt.save`` of ``tree`` to ``path``, its progress passed on to ``step`` as byte deltas;
    returns the file's size. Storages copied from the source keep their offset within a page
    (page-aligned kernel copies; only the padding differs from what torch.save writes)."""
    from .saving import _Saver, save_to_path

    last = [0]

    def pt_progress(done: int, _total: int) -> None:
        if done > last[0]:
            step(done - last[0])
            last[0] = done

    saver = _Saver()
    return save_to_path(saver, saver.dumps(tree), path, fsync=fsync, progress=pt_progress, keep_page_phase=True)


def _convert_single(
    flat: Flattened, result: Conversion, dst: str, fmt: str, cast: _dt.DType | None, user: dict[str, str],
    source: dict[str, Any], step: Callable[[int], None], fsync: bool, manifest: bool,
) -> None:
    if fmt == "safetensors":
        from .safetensors_write import Item, write

        meta = _st_metadata(flat, user, source)
        result.kept_tree = METADATA_KEY in meta
        items = [Item(n, t, cast_target(t.dtype, cast)) for n, t in flat.tensors.items()]
        size = write(dst, items, meta, progress=step, fsync=fsync)
    else:  # a torch tree: a .pt file or a DCP folder
        if user:
            where = "a DCP folder" if fmt == "dcp" else "a .pt file"
            result.notes.append(f"--metadata is kept in safetensors files and shard indexes; {where} has no place "
                                "for it (ignored)")
        conv = _ConvertedReader()
        tree = _pt_tree(flat, {n: _pt_value(t, cast, conv, n) for n, t in flat.tensors.items()})
        if fmt == "dcp":
            from .dcp_write import dcp_save

            dcp_save(tree, dst, fsync=fsync)
            step(result.tensor_bytes)
            size = sum(e.stat().st_size for e in os.scandir(dst) if e.is_file())
        else:
            size = _save_pt(tree, dst, step, fsync)
    result.files.append(OutputFile(dst, size, len(flat.tensors)))
    if manifest:
        digest = sha256_file(dst)
        result.files[-1].sha256 = digest
        from .saving import atomic_output

        mpath = dst + ".sha256"
        with atomic_output(mpath, fsync=fsync) as fd:
            os.write(fd, f"{digest}  {os.path.basename(dst)}\n".encode())
        result.manifest = mpath


def plan_shards(sizes: list[tuple[str, int]], limit: int) -> list[list[str]]:
    """Group names (in order) into shards of at most ``limit`` bytes; a bigger tensor alone.

    >>> plan_shards([("a", 4), ("b", 4), ("c", 9), ("d", 1)], 8)
    [['a', 'b'], ['c'], ['d']]
    """
    shards: list[list[str]] = []
    current: list[str] = []
    used = 0
    for name, n in sizes:
        if current and used + n > limit:
            shards.append(current)
            current, used = [], 0
        current.append(name)
        used += n
    if current:
        shards.append(current)
    return shards


def _convert_sharded(
    flat: Flattened, result: Conversion, dst: str, fmt: str, cast: _dt.DType | None, user: dict[str, str],
    source: dict[str, Any], limit: int, step: Callable[[int], None], fsync: bool, manifest: bool,
) -> None:
    import json

    folder = dst
    index_name = None
    if dst.endswith(".index.json"):
        folder, index_name = os.path.split(dst)
        folder = folder or "."
    stem, ext = ("model", ".safetensors") if fmt == "safetensors" else ("pytorch_model", ".bin")
    index_name = index_name or f"{stem}{ext}.index.json"
    out_dtypes = {n: cast_target(t.dtype, cast) for n, t in flat.tensors.items()}
    groups = plan_shards([(n, _nbytes(t.shape, out_dtypes[n])) for n, t in flat.tensors.items()], limit)
    if not groups:
        groups = [[]]
    count = len(groups)
    staging = _Staging(folder, fsync)
    weight_map: dict[str, str] = {}
    try:
        for i, names in enumerate(groups):
            shard = f"{stem}-{i + 1:05d}-of-{count:05d}{ext}"
            path = staging.path(shard)
            if fmt == "safetensors":
                from .safetensors_write import Item, write

                items = [Item(n, flat.tensors[n], out_dtypes[n]) for n in names]
                size = write(path, items, {"format": "pt"}, progress=step, fsync=fsync)
            else:
                conv = _ConvertedReader()
                values = {n: _pt_value(flat.tensors[n], cast, conv, n) for n in names}
                size = _save_pt(values, path, step, fsync)
            for n in names:
                weight_map[n] = shard
            result.files.append(OutputFile(shard, size, len(names)))
        meta: dict[str, Any] = {"total_size": result.tensor_bytes, **user}
        doc = flat.metadata_json(source)
        if doc is not None:
            meta[METADATA_KEY] = json.loads(doc)
            result.kept_tree = True
        index = {"metadata": meta, "weight_map": weight_map}
        from .saving import atomic_output

        index_bytes = (json.dumps(index, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")
        with atomic_output(staging.path(index_name), fsync=fsync) as fd:
            os.write(fd, index_bytes)
        if manifest:
            lines = []
            for (tmp, final), f in zip(staging.staged, [*result.files, None]):
                digest = sha256_file(tmp)
                if f is not None:
                    f.sha256 = digest
                lines.append(f"{digest}  {os.path.basename(final)}\n")
            with atomic_output(staging.path("SHA256SUMS"), fsync=fsync) as fd:
                os.write(fd, "".join(lines).encode("utf-8"))
            result.manifest = os.path.join(folder, "SHA256SUMS")
        staging.commit()
    except BaseException:
        staging.abort()
        raise
    result.index = os.path.join(folder, index_name)
    written = {f.path for f in result.files}
    stale = sorted(n for n in os.listdir(folder)
                   if re.fullmatch(rf"{re.escape(stem)}-\d{{5}}-of-\d{{5}}{re.escape(ext)}", n) and n not in written)
    if stale:
        result.notes.append(
            f"{len(stale)} shard file(s) from an earlier conversion remain in {folder} and are not part of this "
            f"checkpoint ({', '.join(stale[:3])}{', ...' if len(stale) > 3 else ''}); ckpt verify reports them"
        )


def sha256_file(path: str) -> str:
    """The SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(8 << 20)
        view = memoryview(buf)
        while True:
            n = f.readinto(buf)
            if not n:
                break
            h.update(view[:n])
    return h.hexdigest()
