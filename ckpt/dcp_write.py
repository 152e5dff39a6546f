"""``ckpt.dcp_save``: write a single-rank torch.distributed.checkpoint (DCP) folder, without torch.

The folder is what ``torch.distributed.checkpoint.save(state, checkpoint_id=DIR, no_dist=True)``
writes: ``DIR/__0_0.distcp`` holding one ``torch.save`` archive per tensor and per non-tensor
value (written by :func:`ckpt.save`, byte for byte what torch.save writes), and ``DIR/.metadata``,
a pickle of DCP's ``Metadata`` (each tensor one chunk covering it whole) written by ckpt's own
pickler: it names only DCP's dataclasses, ``torch.Size``, dtypes and the strided layout.
``torch.distributed.checkpoint.load`` and ``format_utils.dcp_to_torch_save`` read it.

The state dict is flattened as DCP flattens it (nested dicts, and lists that hold tensors or
dicts, become dotted names; ``planner_data`` keeps each name's path), so loading gives the same
nesting back. Lazy tensors (:class:`~ckpt.TensorRef` from :func:`ckpt.open`, including a DCP
folder's logical tensors) are streamed from their source, one at a time.

Atomic: everything is written into a temporary folder beside ``DIR``, each file fsynced, then the
folder is renamed to ``DIR``; on failure nothing is left. ``DIR`` must not exist yet.

>>> ckpt.dcp_save({"model": sd, "step": 10}, "ckpt_dir")       # doctest: +SKIP
>>> with ckpt.open("model.safetensors") as ck:                  # doctest: +SKIP
...     ckpt.dcp_save(ck, "dcp_dir")
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from . import dtypes as _dt
from .errors import CheckpointError, UnsavableObjectError
from .pickle_write import G_NEWOBJ, Global, Pickler, Reduction
from .tensors import TensorRef

_META = "torch.distributed.checkpoint.metadata"
_FS = "torch.distributed.checkpoint.filesystem"
DATA_FILE = "__0_0.distcp"
VERSION = "1.0.0"  # torch 2.13's CURRENT_DCP_VERSION


def _tensor_facts(value: Any) -> tuple[_dt.DType, tuple[int, ...]] | None:
    """``(dtype row, shape)`` of a tensor-like value, or None for anything else."""
    if type(value) is TensorRef:
        if value.storage is None or value.quantizer is not None or value.subclass is not None:
            raise UnsavableObjectError(f"a {value!r} cannot be a DCP chunk (meta, quantized or subclass tensors)")
        return value.dtype, tuple(value.shape)
    mod = type(value).__module__
    if mod.startswith("torch") and hasattr(value, "untyped_storage"):
        if str(value.layout) != "torch.strided" or value.is_quantized or value.is_meta:
            raise UnsavableObjectError("only dense tensors with data can be written to a DCP folder")
        name = str(value.dtype).removeprefix("torch.")
        return _dt.DTYPES[name], tuple(value.shape)
    if mod == "numpy" and type(value).__name__ == "ndarray":
        from .saving import _numpy_dtype_row

        row = _numpy_dtype_row(value.dtype)
        if row is None:
            raise UnsavableObjectError(f"a numpy array of dtype {value.dtype} has no torch dtype")
        return row, tuple(value.shape)
    return None


def flatten(state: Mapping[Any, Any]) -> list[tuple[str, tuple[Any, ...], Any]]:
    """``(fqn, path, value)`` for every leaf, as DCP's ``flatten_state_dict`` names them."""
    out: list[tuple[str, tuple[Any, ...], Any]] = []
    seen: set[str] = set()

    def is_terminal(value: Any) -> bool:
        if isinstance(value, Mapping):
            return False
        if type(value) is not list:
            return True
        for entry in value:
            if isinstance(entry, (Mapping, list)) and not is_terminal(entry):
                return False
            if _tensor_facts(entry) is not None:
                return False
        return True

    todo: list[tuple[tuple[Any, ...], Any]] = [((str(k),), v) for k, v in reversed(list(state.items()))]
    while todo:
        path, value = todo.pop()
        if isinstance(value, Mapping):
            todo.extend(((*path, str(k)), v) for k, v in reversed(list(value.items())))
        elif is_terminal(value):
            fqn = ".".join(map(str, path))
            if fqn in seen:
                raise UnsavableObjectError(f"two entries flatten to the same DCP name {fqn!r}")
            seen.add(fqn)
            out.append((fqn, path, value))
        elif isinstance(value, (list, tuple)):
            todo.extend(((*path, i), v) for i, v in reversed(list(enumerate(value))))
    return out


def _size(dims: tuple[int, ...]) -> Reduction:
    return Reduction(Global.of("torch", "Size"), (tuple(dims),))


def _obj(cls: str, state: Any, module: str = _META) -> Reduction:
    return Reduction(G_NEWOBJ, (Global.of(module, cls),), state)


def metadata_pickle(tensors: list[tuple[str, _dt.DType, tuple[int, ...]]], items: list[str],
                    places: dict[str, tuple[int, int]], paths: dict[str, tuple[Any, ...]]) -> bytes:
    """The ``.metadata`` pickle for one-chunk tensors and items stored at ``places[fqn]`` of
    :data:`DATA_FILE`."""
    layout = Reduction(Global.of("torch.serialization", "_get_layout"), ("torch.strided",))
    contiguous = Reduction(Global.of(_META, "_MEM_FORMAT_ENCODING"), (0,))
    sdm: dict[str, Any] = {}
    storage: dict[Any, Any] = {}
    kinds = {fqn: "t" for fqn, _, _ in tensors} | {fqn: "b" for fqn in items}
    facts = {fqn: (dtype, shape) for fqn, dtype, shape in tensors}
    for fqn in paths:  # state dict order
        offset, length = places[fqn]
        info = _obj("_StorageInfo", {"relative_path": DATA_FILE, "offset": offset, "length": length}, _FS)
        if kinds[fqn] == "t":
            dtype, shape = facts[fqn]
            props = _obj("TensorProperties", (Global.of("torch", dtype.name), layout, False, contiguous, False))
            zeros = _size((0,) * len(shape))
            chunk = _obj("ChunkStorageMetadata", {"offsets": zeros, "sizes": _size(shape)})
            sdm[fqn] = _obj("TensorStorageMetadata", {"properties": props, "size": _size(shape), "chunks": [chunk]})
            index = _obj("MetadataIndex", {"fqn": fqn, "offset": _size((0,) * len(shape)), "index": 0})
        else:
            sdm[fqn] = _obj("BytesStorageMetadata", {})
            index = _obj("MetadataIndex", {"fqn": fqn, "index": None})
        storage[index] = info
    meta = _obj("StorageMeta", {"checkpoint_id": None, "save_id": str(uuid.uuid4()), "load_id": None, "modules": []})
    root = _obj("Metadata", {
        "state_dict_metadata": sdm,
        "planner_data": dict(paths),
        "storage_data": storage,
        "storage_meta": meta,
        "version": VERSION,
    })
    return Pickler().dumps(root)


def dcp_save(obj: Any, folder: str | os.PathLike[str], *, fsync: bool = True,
             progress: Callable[[int, int], None] | None = None) -> None:
    """Write ``obj`` (a state dict, or a :class:`~ckpt.Checkpoint` from :func:`ckpt.open`) as a
    single-rank DCP folder at ``folder`` (which must not exist), atomically.

    Tensors may be torch tensors, numpy arrays or lazy :class:`~ckpt.TensorRef` (read from their
    file as they are written); other values are stored as ``torch.save`` blobs and must be what
    :func:`ckpt.save` can write. ``progress(done, total)`` counts tensors written.
    Raises :class:`~ckpt.UnsavableObjectError` before anything is written for values torch's
    safe loader could not read back.
    """
    from .checkpoint import Checkpoint
    from .saving import save

    root = obj.root if isinstance(obj, Checkpoint) else obj
    if not isinstance(root, Mapping):
        raise UnsavableObjectError(f"a DCP checkpoint holds a state dict, not a {type(root).__name__}")
    dest = os.path.abspath(os.fspath(folder))
    if os.path.lexists(dest):
        raise CheckpointError("the destination already exists; DCP output goes to a new folder", path=dest)
    parent = os.path.dirname(dest)
    if not os.path.isdir(parent):
        raise CheckpointError(f"cannot write here: folder {parent!r} does not exist", path=dest)
    leaves = flatten(root)
    tensors: list[tuple[str, _dt.DType, tuple[int, ...]]] = []
    items: list[str] = []
    for fqn, _path, value in leaves:
        facts = _tensor_facts(value)
        if facts is None:
            items.append(fqn)
        else:
            tensors.append((fqn, *facts))
    is_tensor = {fqn for fqn, _, _ in tensors}
    tmp = os.path.join(parent, f".{os.path.basename(dest)[:200]}.{os.urandom(6).hex()}.tmp")
    os.mkdir(tmp)
    try:
        places: dict[str, tuple[int, int]] = {}
        with open(os.path.join(tmp, DATA_FILE), "wb") as f:
            # DCP's order: non-tensor items first, then tensors
            ordered = [leaf for leaf in leaves if leaf[0] not in is_tensor] + [
                leaf for leaf in leaves if leaf[0] in is_tensor]
            done = 0
            for fqn, _path, value in ordered:
                start = f.tell()
                try:
                    save(value, f)
                except UnsavableObjectError as e:
                    raise UnsavableObjectError(f"{fqn}: {e.message}") from None
                f.flush()
                places[fqn] = (start, f.tell() - start)
                if fqn in is_tensor:
                    done += 1
                    if progress is not None:
                        progress(done, len(tensors))
            if fsync:
                os.fsync(f.fileno())
        data = metadata_pickle(tensors, items, places, {fqn: path for fqn, path, _ in leaves})
        with open(os.path.join(tmp, ".metadata"), "wb") as f:
            f.write(data)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        if fsync:
            _fsync_dir(tmp)
        os.rename(tmp, dest)
        if fsync:
            _fsync_dir(parent)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):
            raise CheckpointError(f"writing failed ({e.strerror or e}); nothing was left behind", path=dest) from e
        raise


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)
