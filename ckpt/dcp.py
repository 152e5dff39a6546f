"""torch.distributed.checkpoint (DCP) folders, read as one checkpoint without running a pickle.

A DCP folder, as ``torch.distributed.checkpoint.save`` writes it::

    ckpt_dir/
      .metadata          a pickle of torch's ``Metadata`` dataclass (torch reads it with plain pickle.load)
      __0_0.distcp       rank 0's data, __1_0.distcp rank 1's, ...

``.metadata`` says, for every flattened name (FQN) of the saved state dict, either a tensor
(dtype, global shape, and the *chunks* it is split into: offsets and sizes in the global shape)
or a non-tensor item (``BytesStorageMetadata``); ``storage_data`` maps each chunk and item to a
byte range ``(file, offset, length)`` of a ``.distcp`` file, and ``planner_data`` maps each FQN
back to its path in the nested state dict. In the default serialization each range holds a
whole ``torch.save`` archive (one chunk tensor, or one non-tensor value); with
``SerializationFormat.SAFETENSORS`` the chunks of a file form one safetensors blob at its end.

ckpt reads ``.metadata`` through its restricted unpickler (:mod:`ckpt.pickle_vm`): DCP's own
dataclasses (:data:`DCP_CLASSES`) become inert :class:`DcpObject` records, dtypes and sizes
become ckpt's values, anything else goes through the ordinary policy (refused by
``ckpt.load``, reported by ``ckpt inspect``). torch.distributed is never imported. Everything
is then validated before use: file names stay inside the folder, byte ranges lie inside their
files, chunk boxes lie inside the global shape and cover it exactly once, dtypes are known. Each
chunk and item is read with ckpt's own readers (the torch zip reader on a window of the file,
or the safetensors reader).

Each tensor FQN becomes one lazy storage of its global shape whose bytes are assembled chunk
by chunk (:meth:`DcpReader.readinto`), so ``ckpt.load(DIR)`` returns the consolidated state
dict torch's ``format_utils.dcp_to_torch_save`` would write, and :meth:`DcpReader.tensors`
gives :class:`LogicalTensor` objects (``nbytes``, ``read_into(buffer)``) to stream from.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from typing import Any

from . import dtypes as _dt
from .errors import CheckpointError, CorruptCheckpointError, NotACheckpointError, ResourceLimitError
from .errors import UnsafeGlobalError, UnsupportedFeatureError
from .limits import DEFAULT_LIMITS, Limits
from .pickle_vm import Op, Unpickler
from .policy import Finding, Policy, Resolver
from .rebuild import Builder, canonical_name
from .reader import Reader, register
from .tensors import StorageRef, TensorRef, contiguous_strides
from .values import TorchConstant
from .zipread import RangedFile, WindowFile

FORMAT = "dcp"
METADATA = ".metadata"
DISTCP_SUFFIX = ".distcp"
_META = "torch.distributed.checkpoint.metadata"
_FS = "torch.distributed.checkpoint.filesystem"

DCP_CLASSES: dict[str, tuple[str, ...] | None] = {
    f"{_META}.Metadata": ("state_dict_metadata", "planner_data", "storage_data", "storage_meta", "version"),
    f"{_META}.TensorStorageMetadata": ("properties", "size", "chunks"),
    f"{_META}.ChunkStorageMetadata": ("offsets", "sizes"),
    f"{_META}.BytesStorageMetadata": (),
    f"{_META}.TensorProperties": None,  # a 5-tuple state (its __getstate__)
    f"{_META}.MetadataIndex": ("fqn", "offset", "index"),
    f"{_META}.StorageMeta": ("checkpoint_id", "save_id", "load_id", "modules"),
    f"{_FS}._StorageInfo": ("relative_path", "offset", "length", "transform_descriptors"),
}
"""The DCP dataclasses ckpt rebuilds as :class:`DcpObject` records, with the fields torch 2.13
writes (other non-special field names are kept as data too: newer torch versions add fields)."""

_MEM_FORMATS = {0: "contiguous_format", 1: "channels_last", 2: "preserve_format"}
_TENSOR_PROPERTIES = ("dtype", "layout", "requires_grad", "memory_format", "pin_memory")
_MAX_CHUNKS = 1 << 20
_MAX_PATH = 256


class DcpObject:
    """One of DCP's dataclasses as inert data: ``kind`` (``Metadata``, ``_StorageInfo``, ...) and
    ``fields``. Hashed by identity (``MetadataIndex`` objects are dict keys in ``.metadata``)."""

    __slots__ = ("kind", "fields")

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.fields: dict[str, Any] = {}

    def get(self, name: str, default: Any = None) -> Any:
        return self.fields.get(name, default)

    def __ckpt_build__(self, state: Any) -> None:
        if self.kind == "TensorProperties":
            if type(state) is not tuple or len(state) != 5:
                raise CorruptCheckpointError("TensorProperties' state must be a 5-tuple (dtype, layout, ...)")
            self.fields.update(zip(_TENSOR_PROPERTIES, state))
            return
        if type(state) is tuple and len(state) == 2 and state[1] is None:
            state = state[0]
        if type(state) is not dict:
            raise CorruptCheckpointError(f"the state of a DCP {self.kind} must be a dict, not a {type(state).__name__}")
        for key in state:
            if type(key) is not str or key.startswith("__"):
                raise CorruptCheckpointError(f"a DCP {self.kind} may not have the field {key!r:.60}")
        self.fields.update(state)

    def __repr__(self) -> str:
        return f"<dcp {self.kind} {self.fields!r:.200}>"


DCP_GLOBALS: frozenset[str] = frozenset([*DCP_CLASSES, f"{_META}._MEM_FORMAT_ENCODING"])
"""Every global a DCP ``.metadata`` names that ckpt rebuilds as data (the scanner judges them
safe inside a ``.metadata`` file)."""


def blob_ranges(folder: str, *, limits: Limits = DEFAULT_LIMITS) -> tuple[dict[str, list[tuple[int, int, str]]], dict[str, str]]:
    """The ``torch.save`` blobs of a DCP folder, for a scanner: ``({file: [(offset, length, name),
    ...] sorted by offset}, {file: serialization})``, read from ``.metadata`` through the
    restricted VM (inspect policy: nothing runs). Raises :class:`~ckpt.CheckpointError` when
    ``.metadata`` cannot be read as DCP metadata.
    """
    reader = DcpReader(folder, limits=limits)
    try:
        ranges: dict[str, list[tuple[int, int, str]]] = {}
        for _kind, fqn, file, offset, length in reader.blobs():
            ranges.setdefault(file, []).append((offset, length, fqn))
        for blobs in ranges.values():
            blobs.sort()
        return ranges, dict(reader.file_serialization)
    finally:
        reader.close()


def _dcp_table() -> dict[str, Any]:
    table: dict[str, Any] = {}

    def new(qualname: str) -> Any:
        kind = qualname.rsplit(".", 1)[1]

        def make(*args: Any, **kwargs: Any) -> DcpObject:
            if args or kwargs:
                raise CorruptCheckpointError(f"{qualname} is created without arguments in .metadata")
            return DcpObject(kind)

        def call(*args: Any) -> Any:
            raise CorruptCheckpointError(f"{qualname} is never called in a DCP .metadata")

        return Op(qualname, call, newobj=make)

    for name in DCP_CLASSES:
        table[name] = new(name)

    def mem_format(value: Any = None, *rest: Any) -> str:
        if rest or type(value) is not int or value not in _MEM_FORMATS:
            raise CorruptCheckpointError(f"{value!r:.40} is not a _MEM_FORMAT_ENCODING value")
        return _MEM_FORMATS[value]

    table[f"{_META}._MEM_FORMAT_ENCODING"] = Op(f"{_META}._MEM_FORMAT_ENCODING", mem_format)
    return table


class ChunkInfo:
    """One chunk of a logical tensor: its box in the global shape and the byte range holding it."""

    __slots__ = ("offsets", "sizes", "file", "offset", "length")

    def __init__(self, offsets: tuple[int, ...], sizes: tuple[int, ...], file: str, offset: int, length: int) -> None:
        self.offsets = offsets
        self.sizes = sizes
        self.file = file
        self.offset = offset
        self.length = length

    @property
    def numel(self) -> int:
        return math.prod(self.sizes)

    def as_json(self) -> dict[str, Any]:
        return {"offsets": list(self.offsets), "sizes": list(self.sizes), "file": self.file,
                "byte_range": [self.offset, self.offset + self.length]}


class LogicalTensor:
    """One tensor FQN of a DCP checkpoint: ``dtype`` (a :class:`~ckpt.dtypes.DType`), global
    ``shape``, its ``chunks``, ``nbytes``; :meth:`read_into` assembles it.

    >>> t = reader.tensor("model.weight")                 # doctest: +SKIP
    >>> buf = bytearray(t.nbytes); t.read_into(memoryview(buf))   # doctest: +SKIP
    """

    __slots__ = ("fqn", "dtype", "shape", "chunks", "requires_grad", "_reader")

    def __init__(self, fqn: str, dtype: _dt.DType, shape: tuple[int, ...], chunks: list[ChunkInfo],
                 requires_grad: bool, reader: DcpReader) -> None:
        self.fqn = fqn
        self.dtype = dtype
        self.shape = shape
        self.chunks = chunks
        self.requires_grad = requires_grad
        self._reader = reader

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize

    def read_into(self, buffer: memoryview) -> None:
        """Fill ``buffer`` (``nbytes`` long, writable) with the whole tensor in C order, chunk by
        chunk; reads only this tensor's byte ranges (memory: the buffer plus, for a chunk whose
        region is not contiguous in the buffer, one chunk)."""
        self._reader.assemble(self, buffer)

    def iter_chunks(self, size: int = 16 << 20) -> Iterator[memoryview]:
        """The same bytes as :meth:`read_into`, in pieces of whole elements (the tensor-source
        interface of ``ckpt.convert``). When every chunk is one contiguous run of the tensor
        (``Shard(0)``-style), each is read on its own and memory stays at one chunk; otherwise the
        tensor is assembled whole and handed out ``size`` bytes at a time."""
        item = self.dtype.itemsize
        strides = contiguous_strides(self.shape)
        chunks = [c for c in self.chunks if c.numel]
        if all(_region_is_contiguous(self.shape, c.sizes) for c in chunks):
            for c in sorted(chunks, key=lambda c: sum(o * s for o, s in zip(c.offsets, strides))):
                buf = bytearray(c.numel * item)
                self._reader._chunk_source(self, c)[0](memoryview(buf))
                yield memoryview(buf)
            return
        buf = bytearray(self.nbytes)
        self.read_into(memoryview(buf))
        view = memoryview(buf)
        step = max(item, size - size % item)
        for i in range(0, len(view), step):
            yield view[i: i + step]

    def source_ranges(self) -> list[tuple[int, int, int]] | None:
        """``[(fd, offset, size), ...]``: where the tensor's bytes lie, in C order, when every chunk
        is one contiguous run of the tensor (``Shard(0)``-style) stored as it is (uncompressed,
        little-endian, not a strided view), so that they can be copied file to file
        (the tensor-source interface of :mod:`ckpt.tensor_stream`); None otherwise. The copies skip
        the CRC-32 check a read makes (``ckpt verify`` checks the folder)."""
        strides = contiguous_strides(self.shape)
        item = self.dtype.itemsize
        placed = []
        for c in self.chunks:
            if not c.numel:
                continue
            if not _region_is_contiguous(self.shape, c.sizes):
                return None
            span = self._reader._chunk_source(self, c)[1]
            if span is None:
                return None
            placed.append((sum(o * s for o, s in zip(c.offsets, strides)), span[0], span[1], c.numel * item))
        placed.sort()
        return [(fd, offset, size) for _, fd, offset, size in placed]

    def __repr__(self) -> str:
        return f"<dcp tensor {self.fqn} {self.dtype.name}{list(self.shape)} in {len(self.chunks)} chunk(s)>"


class ItemInfo:
    """A non-tensor item: a ``torch.save`` blob at ``(file, offset, length)``."""

    __slots__ = ("fqn", "file", "offset", "length")

    def __init__(self, fqn: str, file: str, offset: int, length: int) -> None:
        self.fqn = fqn
        self.file = file
        self.offset = offset
        self.length = length


class DcpReader(Reader):
    """A DCP folder: its ``.metadata`` read and checked at construction, chunks read on demand."""

    metadata_name: str | None = METADATA
    raw_chunks = False
    """True when chunk byte ranges hold the elements themselves (DCP's Hugging Face layout)."""

    def __init__(self, folder: str, *, limits: Limits = DEFAULT_LIMITS, policy: Policy | None = None) -> None:
        self.folder = os.path.abspath(folder)
        self.path = os.path.join(folder, self.metadata_name) if self.metadata_name else folder
        self.limits = limits
        self.byteorder = "little"
        self.notes: list[str] = []
        self._files: dict[str, RangedFile] = {}
        self._sizes: dict[str, int] = {}
        self._storages: dict[str, StorageRef] = {}
        self._blob_readers: list[Reader] = []
        self._chunk_cache: dict[tuple[str, int], Any] = {}
        self._chunk_builder: tuple[Builder, Policy] | None = None
        self._scratch = bytearray()
        self.findings: list[Finding] = []
        self._policy_decides = False
        """Whether reading ``.metadata`` met a global that is neither one of DCP's own classes nor
        on ckpt's allowlist (then the policy it is read under decides what becomes of it, and
        :meth:`load` and :meth:`logical_tree` read it again under theirs)."""
        try:
            self._meta_size = os.path.getsize(self.path) if self.metadata_name else 0
        except OSError as e:
            raise CheckpointError(f"cannot read the DCP metadata ({e.strerror})", path=self.path) from None
        self._policy = policy
        self.root: DcpObject | None = None
        self.tensors_by_fqn: dict[str, LogicalTensor] = {}
        self.items: dict[str, ItemInfo] = {}
        self.order: list[str] = []
        self.paths: dict[str, tuple[Any, ...]] = {}
        self.version: str | None = None
        self.save_id: str | None = None
        self.serialization = "torch_save"
        # Read once to check the folder (globals outside the allowlist are noted, never run);
        # load() reads it again under the caller's policy, which decides whether they are refused.
        try:
            self._read_metadata(policy or Policy("inspect"), self.findings)
        except BaseException:
            self.close()  # the data files opened so far
            raise

    def _corrupt(self, message: str, record: str | None = None) -> CorruptCheckpointError:
        return CorruptCheckpointError(message, path=self.path, record=record)

    @property
    def _policy_matters(self) -> bool:
        """Whether ``.metadata`` must be read again under a caller's policy: it named a global
        outside DCP's classes and the allowlist, or its first reading found something."""
        return self._policy_decides or bool(self.findings)

    # -- .metadata -------------------------------------------------------------------------

    def metadata_bytes(self) -> bytes:
        """The raw ``.metadata`` pickle (bounded by :attr:`~ckpt.Limits.max_pickle_bytes`)."""
        if self._meta_size > self.limits.max_pickle_bytes:
            raise ResourceLimitError(
                f".metadata is {self._meta_size:,} bytes; at most {self.limits.max_pickle_bytes:,} are read "
                "(Limits.max_pickle_bytes)", path=self.path)
        with open(self.path, "rb") as f:
            return f.read(self._meta_size + 1)

    def _read_metadata(self, policy: Policy, findings: list[Finding]) -> None:
        self.tensors_by_fqn, self.items, self.order, self.paths, self.notes = {}, {}, [], {}, []
        data = self.metadata_bytes()
        if not data:
            raise self._corrupt("the DCP .metadata file is empty (an interrupted save?)")
        if data[:1] != b"\x80":
            if data.lstrip()[:1] == b"{":
                raise NotACheckpointError(
                    "this .metadata is JSON, not DCP's pickle; ckpt reads torch.distributed.checkpoint's "
                    "FileSystemWriter folders", path=self.path)
            raise self._corrupt("the DCP .metadata is not a pickle (it does not start with a PROTO opcode)")
        builder = Builder(mode=policy.mode, limits=self.limits)
        fallback = Resolver(policy, builder, path=self.path, record=METADATA, findings=findings)
        table = _dcp_table()

        def resolve(module: str, name: str, offset: int) -> Any:
            qualname = f"{module}.{name}"
            value = table.get(qualname)
            if value is None and module in ("pathlib", "pathlib._local"):
                # StorageMeta.checkpoint_id is the path the folder was saved to (a PosixPath when the
                # caller passed one): rebuilt as a pure path by its profile, whatever the policy
                value = builder.profile_value(qualname)
            if value is None:  # on ckpt's allowlist: the same object under every policy
                value = builder.table.get(".".join(canonical_name(module, name)))
            if value is not None:
                return value
            self._policy_decides = True
            return fallback(module, name, offset)

        self._policy_decides = False
        vm = Unpickler(data, resolve=resolve, persistent_load=None, path=self.path, record=METADATA,
                       limits=self.limits)
        root = vm.load()
        if type(root) is not DcpObject or root.kind != "Metadata":
            bad = [f for f in findings if f.verdict == "dangerous"] or findings
            if bad:
                raise UnsafeGlobalError(bad[0].name, path=self.path, record=METADATA,
                                        hint="the DCP .metadata is not torch's Metadata; nothing was executed")
            raise self._corrupt(f"the DCP .metadata holds a {type(root).__name__}, not torch's Metadata")
        self.root = root
        self._check(root)

    def _check(self, root: DcpObject) -> None:
        sdm = root.get("state_dict_metadata")
        storage = root.get("storage_data")
        if type(sdm) is not dict or not all(type(k) is str for k in sdm):
            raise self._corrupt("Metadata.state_dict_metadata must map names to storage metadata")
        if type(storage) is not dict:
            raise self._corrupt("Metadata.storage_data must map each chunk to its file and byte range")
        version = root.get("version")
        self.version = version if type(version) is str else None
        meta = root.get("storage_meta")
        if type(meta) is DcpObject and type(meta.get("save_id")) is str:
            self.save_id = meta.get("save_id")
        # storage_data: (fqn, offsets or None) -> (file, offset, length)
        places: dict[tuple[str, tuple[int, ...] | None], tuple[str, int, int]] = {}
        for index, info in storage.items():
            if type(index) is not DcpObject or index.kind != "MetadataIndex":
                raise self._corrupt("storage_data keys must be MetadataIndex records")
            fqn = index.get("fqn")
            if type(fqn) is not str:
                raise self._corrupt("a MetadataIndex has no name (fqn)")
            off = index.get("offset")
            key = (fqn, None if off is None else self._dims(off, fqn, "offset"))
            if key in places:
                raise self._corrupt("storage_data lists one chunk twice", record=fqn)
            places[key] = self._place(info, fqn)
        planner = root.get("planner_data")
        if planner is not None and type(planner) is not dict:
            planner = None
            self.notes.append("planner_data is not a dict; names are kept flat")
        for fqn, md in sdm.items():
            if type(md) is not DcpObject or md.kind not in ("TensorStorageMetadata", "BytesStorageMetadata"):
                raise self._corrupt(f"the metadata of {fqn!r:.80} is a {getattr(md, 'kind', type(md).__name__)}, "
                                    "not tensor or bytes storage metadata", record=fqn)
            self.order.append(fqn)
            if planner is not None and fqn in planner:
                self.paths[fqn] = self._path(planner[fqn], fqn)
            if md.kind == "BytesStorageMetadata":
                place = places.get((fqn, None))
                if place is None:
                    raise self._corrupt("storage_data does not say where this item is stored", record=fqn)
                self.items[fqn] = ItemInfo(fqn, *place)
            else:
                self.tensors_by_fqn[fqn] = self._tensor(fqn, md, places)
        self._detect_serialization()

    def _detect_serialization(self) -> None:
        """How each file stores its chunks (16 bytes read at one chunk per file): ``torch_save``
        archives or a ``safetensors`` blob (DCP's ``SerializationFormat.SAFETENSORS``)."""
        self.file_serialization: dict[str, str] = {}
        for t in self.tensors_by_fqn.values():
            for c in t.chunks:
                if c.file in self.file_serialization:
                    continue
                head = self._open(c.file).pread(c.offset, 16)
                self.file_serialization[c.file] = (
                    "torch_save" if head[:4] == b"PK\x03\x04"
                    else "safetensors" if len(head) >= 9 and head[8:9] == b"{" else "unknown"
                )
        kinds = sorted(set(self.file_serialization.values()))
        self.serialization = kinds[0] if len(kinds) == 1 else ("mixed" if kinds else "torch_save")

    def _dims(self, value: Any, fqn: str, what: str) -> tuple[int, ...]:
        if not isinstance(value, (tuple, list)) or not all(type(d) is int and d >= 0 for d in value):
            raise self._corrupt(f"a chunk's {what} must be non-negative ints, not {value!r:.80}", record=fqn)
        if len(value) > 64:
            raise self._corrupt(f"a chunk's {what} has {len(value)} dimensions", record=fqn)
        return tuple(value)

    def _place(self, info: Any, fqn: str) -> tuple[str, int, int]:
        if type(info) is not DcpObject or info.kind != "_StorageInfo":
            raise self._corrupt(f"storage_data gives a {type(info).__name__}, not a _StorageInfo", record=fqn)
        name, offset, length = info.get("relative_path"), info.get("offset"), info.get("length")
        if info.get("transform_descriptors"):
            raise UnsupportedFeatureError(
                f"chunks are stored through DCP extensions {info.get('transform_descriptors')!r:.80} (compression?); "
                "ckpt reads only untransformed chunks", path=self.path, record=fqn)
        if type(name) is not str:
            raise self._corrupt("a _StorageInfo has no file name", record=fqn)
        if (not name or len(name) > _MAX_PATH or "/" in name or "\\" in name or "\0" in name
                or name in (".", "..") or name == METADATA):
            raise self._corrupt(f"a chunk is stored in {name!r:.80}, which is not a file name inside the folder; "
                                "ckpt opens no file outside it", record=fqn)
        if type(offset) is not int or type(length) is not int or offset < 0 or length < 0:
            raise self._corrupt("a _StorageInfo's offset and length must be non-negative ints", record=fqn)
        size = self._file_size(name, fqn)
        if offset + length > size:
            raise self._corrupt(
                f"bytes [{offset:,}, {offset + length:,}) of {name} are needed but the file holds {size:,}: "
                "the file is truncated (an incomplete copy?)", record=fqn)
        return name, offset, length

    def _file_size(self, name: str, fqn: str) -> int:
        size = self._sizes.get(name)
        if size is None:
            full = os.path.join(self.folder, name)
            if not os.path.isfile(full):
                raise self._corrupt(f"{name} is named in .metadata but is not in the folder (an incomplete copy?)",
                                    record=fqn)
            size = self._sizes[name] = os.path.getsize(full)
        return size

    def _path(self, value: Any, fqn: str) -> tuple[Any, ...]:
        if type(value) is not tuple or not value or len(value) > 256 or not all(
                type(k) is str or (type(k) is int and 0 <= k) for k in value):
            raise self._corrupt(f"planner_data gives a bad path {value!r:.80}", record=fqn)
        return value

    def _tensor(self, fqn: str, md: DcpObject, places: dict[Any, tuple[str, int, int]]) -> LogicalTensor:
        props = md.get("properties")
        if type(props) is not DcpObject or props.kind != "TensorProperties":
            raise self._corrupt("a tensor's properties are missing", record=fqn)
        dtype = props.get("dtype")
        if type(dtype) is not _dt.DType:
            raise self._corrupt(f"a tensor's dtype is {dtype!r:.60}, not a torch dtype", record=fqn)
        if dtype.kind == "quantized" or dtype.itemsize == 0:
            raise UnsupportedFeatureError(f"DCP tensors of dtype {dtype.name} are not supported", path=self.path,
                                          record=fqn)
        layout = props.get("layout")
        if type(layout) is TorchConstant and layout.name != "torch.strided":
            raise UnsupportedFeatureError(f"a {layout.name} tensor; ckpt reads dense (strided) DCP tensors",
                                          path=self.path, record=fqn)
        shape = self._dims(md.get("size"), fqn, "global size")
        chunks_md = md.get("chunks")
        if type(chunks_md) is not list:
            raise self._corrupt("a tensor's chunks must be a list", record=fqn)
        if len(chunks_md) > _MAX_CHUNKS:
            raise ResourceLimitError(f"{len(chunks_md):,} chunks for one tensor", path=self.path, record=fqn)
        chunks = []
        for c in chunks_md:
            if type(c) is not DcpObject or c.kind != "ChunkStorageMetadata":
                raise self._corrupt("a tensor's chunk is not ChunkStorageMetadata", record=fqn)
            offsets = self._dims(c.get("offsets"), fqn, "offsets")
            sizes = self._dims(c.get("sizes"), fqn, "sizes")
            if len(offsets) != len(shape) or len(sizes) != len(shape):
                raise self._corrupt(f"a chunk of {len(offsets)}/{len(sizes)} dimensions in a tensor of {len(shape)}",
                                    record=fqn)
            for o, s, d in zip(offsets, sizes, shape):
                if o + s > d:
                    raise self._corrupt(
                        f"chunk at offsets {list(offsets)} of sizes {list(sizes)} lies outside the tensor's shape "
                        f"{list(shape)}", record=fqn)
            place = places.get((fqn, offsets))
            if place is None:
                raise self._corrupt(f"storage_data does not say where the chunk at {list(offsets)} is stored",
                                    record=fqn)
            chunk = ChunkInfo(offsets, sizes, *place)
            if chunk.numel * dtype.itemsize > chunk.length:
                # every serialization stores at least the chunk's bytes in its range: this bounds what
                # a tensor may make ckpt allocate by the size of the files
                raise self._corrupt(
                    f"the chunk at {list(offsets)} of sizes {list(sizes)} needs {chunk.numel * dtype.itemsize:,} bytes "
                    f"but its byte range in {chunk.file} holds {chunk.length:,}", record=fqn)
            chunks.append(chunk)
        _check_cover(shape, chunks, lambda m: self._corrupt(m, record=fqn))
        rg = props.get("requires_grad")
        return LogicalTensor(fqn, dtype, shape, chunks, rg is True, self)

    # -- the middle model --------------------------------------------------------------------

    def tensors(self) -> Iterator[LogicalTensor]:
        """Every logical tensor, in ``.metadata`` order (unflattened names are their FQNs)."""
        for fqn in self.order:
            t = self.tensors_by_fqn.get(fqn)
            if t is not None:
                yield t

    def tensor(self, fqn: str) -> LogicalTensor:
        return self.tensors_by_fqn[fqn]

    def blobs(self) -> Iterator[tuple[str, str, str, int, int]]:
        """Every ``torch.save`` archive in the ``.distcp`` files, as ``(kind, fqn, file, offset,
        length)``: each non-tensor item (``item``), then each tensor chunk stored in a file of
        the torch.save serialization (``chunk``)."""
        for i in self.items.values():
            yield "item", i.fqn, i.file, i.offset, i.length
        for t in self.tensors():
            for c in t.chunks:
                if self.file_serialization.get(c.file) == "torch_save":
                    yield "chunk", t.fqn, c.file, c.offset, c.length

    def logical_tree(self, policy: Policy | None = None) -> tuple[Any, list[Finding]]:
        """``(state dict, findings)``: the nested state dict :meth:`load` builds, with a
        :class:`LogicalTensor` at each tensor's place and the non-tensor values read (lazily, by
        ckpt's restricted reader, ``policy`` default strict): what ``ckpt convert`` streams from."""
        findings: list[Finding] = []
        policy = policy or Policy("strict")
        if self._policy_matters:
            self._read_metadata(policy, findings)
        builder = Builder(mode=policy.mode, limits=self.limits)
        out: dict[Any, Any] = {}
        for fqn in self.order:
            t = self.tensors_by_fqn.get(fqn)
            value = t if t is not None else self._load_item(self.items[fqn], builder, policy, findings)
            _set_element(out, self.paths.get(fqn, (fqn,)), value, len(self.order),
                         lambda m, fqn=fqn: self._corrupt(m, record=fqn))
        return out, findings

    def load(self, builder: Builder, policy: Policy, findings: list[Finding]) -> Any:
        """The consolidated state dict, nested as saved (``planner_data``), in ``.metadata`` order:
        what ``dcp_to_torch_save`` writes."""
        if self._policy_matters:
            self.findings = []
            self._read_metadata(policy, self.findings)  # the caller's policy decides .metadata's globals
        findings.extend(self.findings)
        out: dict[Any, Any] = {}
        for fqn in self.order:
            t = self.tensors_by_fqn.get(fqn)
            if t is not None:
                key = self.key_prefix + fqn
                ref = self._storages.get(key)
                if ref is None:
                    ref = self._storages[key] = StorageRef(key, t.dtype, "cpu", t.numel, fqn, self)
                storage = builder.finish_storage(ref)
                value = builder.finish_tensor(TensorRef(ref, t.dtype, t.shape, contiguous_strides(t.shape), 0),
                                              storage)
            else:
                value = self._load_item(self.items[fqn], builder, policy, findings)
            _set_element(out, self.paths.get(fqn, (fqn,)), value, len(self.order),
                         lambda m, fqn=fqn: self._corrupt(m, record=fqn))
        return out

    def _load_item(self, item: ItemInfo, builder: Builder, policy: Policy, findings: list[Finding]) -> Any:
        reader = self._blob_reader(item.file, item.offset, item.length, item.fqn)
        for_reader = getattr(builder, "for_reader", None)
        sub = for_reader(reader) if for_reader is not None else builder
        before = len(findings)
        try:
            value = reader.load(sub, policy, findings)
        except CheckpointError as e:
            raise e.with_context(path=self.path, record=f"{item.fqn} ({item.file} @ {item.offset})")
        for i in range(before, len(findings)):
            f = findings[i]
            findings[i] = f._replace(record=f"{item.fqn} ({item.file} @ {item.offset}): {f.record}")
        self._storages.update(reader.storages)
        return value

    def _open(self, name: str) -> RangedFile:
        f = self._files.get(name)
        if f is None:
            f = self._files[name] = RangedFile.open(os.path.join(self.folder, name))
            if f.size != self._sizes.get(name, f.size):
                raise self._corrupt(f"{name} changed size while it was read", record=name)
        return f

    def _blob_reader(self, name: str, offset: int, length: int, fqn: str, keep: bool = True) -> Reader:
        """A torch zip reader over one ``torch.save`` blob of a .distcp file (kept open)."""
        from .torch_zip import open_zip

        window = WindowFile(self._open(name), offset, length)
        head = window.pread(0, 4)
        if head != b"PK\x03\x04":
            raise self._corrupt(f"bytes [{offset:,}, {offset + length:,}) of {name} are not a torch.save archive",
                                record=fqn)
        reader = open_zip(window, f"{os.path.join(self.folder, name)}@{offset}", self.limits, head)
        reader.key_prefix = f"{fqn}@{name}:{offset}/"
        if keep:
            self._blob_readers.append(reader)
        return reader

    # -- assembling a tensor from its chunks ------------------------------------------------

    def assemble(self, t: LogicalTensor, buffer: memoryview) -> None:
        buffer = memoryview(buffer).cast("B") if not isinstance(buffer, memoryview) or buffer.format != "B" else buffer
        if len(buffer) != t.nbytes:
            raise ValueError(f"{t.fqn}: a buffer of {t.nbytes:,} bytes is needed, not {len(buffer):,}")
        item = t.dtype.itemsize
        strides = contiguous_strides(t.shape)
        for chunk in t.chunks:
            if chunk.numel == 0:
                continue
            source = self._chunk_source(t, chunk)[0]
            start = sum(o * s for o, s in zip(chunk.offsets, strides)) * item
            if _region_is_contiguous(t.shape, chunk.sizes):
                source(buffer[start: start + chunk.numel * item])
            else:
                import numpy as np

                size = chunk.numel * item
                if len(self._scratch) < size:  # one chunk-sized buffer, reused (no zero-fill per chunk)
                    self._scratch = bytearray(size)
                tmp = memoryview(self._scratch)[:size]
                source(tmp)
                out = np.frombuffer(buffer, dtype=np.uint8).reshape(*t.shape, item)
                region = tuple(slice(o, o + s) for o, s in zip(chunk.offsets, chunk.sizes))
                out[region] = np.frombuffer(tmp, dtype=np.uint8).reshape(*chunk.sizes, item)

    def _chunk_source(self, t: LogicalTensor, chunk: ChunkInfo) -> tuple[Callable[[memoryview], None],
                                                                           tuple[int, int] | None]:
        """A function filling a buffer with the chunk's elements in C order, and ``(fd, offset)``
        of those bytes when they lie in the file as they are (None otherwise)."""
        f = self._open(chunk.file)
        if self.raw_chunks:
            def raw(buf: memoryview) -> None:
                if len(buf) != chunk.length or f.readinto(chunk.offset, buf) != chunk.length:
                    raise self._corrupt(f"{chunk.file} ends inside a chunk (truncated?)", record=t.fqn)

            whole = chunk.length == chunk.numel * t.dtype.itemsize and chunk.offset + chunk.length <= f.size
            return raw, f.locate(chunk.offset) if whole else None
        head = f.pread(chunk.offset, 16)
        if head[:4] == b"PK\x03\x04":
            return self._zip_chunk(t, chunk)
        if len(head) >= 9 and head[8:9] == b"{":
            return self._safetensors_chunk(t, chunk)
        raise self._corrupt(f"bytes at {chunk.offset:,} of {chunk.file} are neither a torch.save archive nor a "
                            "safetensors blob", record=t.fqn)

    def _zip_chunk(self, t: LogicalTensor, chunk: ChunkInfo, reader: Reader | None = None) -> Any:
        """:meth:`_chunk_source` of a ``torch.save`` chunk (``reader``: its archive, already open)."""
        if reader is None:
            reader = self._blob_reader(chunk.file, chunk.offset, chunk.length, t.fqn, keep=False)
        if self._chunk_builder is None:
            self._chunk_builder = (Builder(mode="strict", limits=self.limits), Policy("strict", profiles="none"))
        builder, policy = self._chunk_builder
        builder._made.clear()  # one builder for every chunk (its allowlist table is costly to make)
        ref = reader.load(builder, policy, [])
        if type(ref) is not TensorRef or ref.storage is None:
            raise self._corrupt(f"the chunk at {list(chunk.offsets)} is a {type(ref).__name__}, not a tensor",
                                record=t.fqn)
        if ref.dtype is not t.dtype or ref.shape != chunk.sizes:
            raise self._corrupt(
                f"the chunk at {list(chunk.offsets)} holds {ref.dtype.name}{list(ref.shape)} where .metadata says "
                f"{t.dtype.name}{list(chunk.sizes)}", record=t.fqn)
        if reader.needs_byteswap and t.dtype.itemsize > 1:
            raise UnsupportedFeatureError("a big-endian DCP chunk; ckpt reads little-endian DCP files",
                                          path=self.path, record=t.fqn)
        storage = ref.storage
        item = t.dtype.itemsize
        archive = reader.archive  # type: ignore[attr-defined]
        entry = archive.entry(storage.record or "")

        def fill_storage(buf: memoryview) -> None:
            archive.readinto(entry, buf)  # CRC-checked

        if ref.is_contiguous and ref.offset == 0 and storage.nbytes == ref.nbytes:
            span = None
            if entry.method == 0 and entry.size == storage.nbytes:
                start = archive.data_offset(entry)
                if start + entry.size <= archive.file.size:
                    span = archive.file.locate(start)
            return fill_storage, span

        def strided(buf: memoryview) -> None:
            import numpy as np

            raw = bytearray(storage.nbytes)
            fill_storage(memoryview(raw))
            base = np.frombuffer(raw, dtype=np.uint8)
            view = np.lib.stride_tricks.as_strided(
                base[ref.offset * item:], shape=(*ref.shape, item), strides=(*(s * item for s in ref.stride), 1))
            np.frombuffer(buf, dtype=np.uint8).reshape(*ref.shape, item)[...] = view

        return strided, None

    def _safetensors_chunk(self, t: LogicalTensor, chunk: ChunkInfo) -> Any:
        """A chunk of DCP's SAFETENSORS serialization: one safetensors blob at the end of the file,
        from the offset ``.metadata`` gives, holding each FQN's chunk under its name."""
        import json

        from .safetensors_reader import SafetensorsReader

        key = (chunk.file, chunk.offset)
        reader = self._chunk_cache.get(key)
        if reader is None:
            f = self._open(chunk.file)
            window = WindowFile(f, chunk.offset, f.size - chunk.offset)
            reader = SafetensorsReader(window, path=f"{os.path.join(self.folder, chunk.file)}@{chunk.offset}",
                                       limits=self.limits)
            self._chunk_cache[key] = reader
        entry = reader._index.get(t.fqn)
        if entry is None:
            raise self._corrupt(f"the safetensors blob of {chunk.file} has no tensor {t.fqn!r}", record=t.fqn)
        if entry.dtype is not t.dtype or entry.shape != chunk.sizes:
            raise self._corrupt(
                f"the chunk at {list(chunk.offsets)} holds {entry.dtype.name}{list(entry.shape)} where .metadata "
                f"says {t.dtype.name}{list(chunk.sizes)}", record=t.fqn)
        info = (reader.metadata or {}).get("DCP_SHARDING_INFO")
        if info is not None:
            try:
                saved = json.loads(info).get(t.fqn, {}).get("saved_offsets")
            except (ValueError, AttributeError):
                saved = None
            if saved is not None and tuple(saved) != chunk.offsets:
                raise self._corrupt(f"the blob places this chunk at {saved!r:.60}, .metadata at {list(chunk.offsets)}",
                                    record=t.fqn)
        start = reader.data_start + entry.begin

        def fill(buf: memoryview) -> None:
            if reader.file.readinto(start, buf) != len(buf):
                raise self._corrupt("the file ends inside a chunk (truncated?)", record=t.fqn)

        inside = start + entry.end - entry.begin <= reader.file.size
        return fill, reader.file.locate(start) if inside else None

    # -- Reader interface ----------------------------------------------------------------------

    def readinto(self, storage: StorageRef, buf: memoryview) -> None:
        t = self.tensors_by_fqn.get(storage.record or "")
        if t is None or storage.reader is not self:
            raise self._corrupt("storage does not belong to this checkpoint", record=storage.record)
        self.assemble(t, buf)

    def data_offset(self, storage: StorageRef) -> int | None:
        return None

    def storage_ranges(self, storage: StorageRef) -> list[tuple[int, int, int]] | None:
        """Where the storage's bytes lie, for kernel copies (see :meth:`LogicalTensor.source_ranges`)."""
        t = self.tensors_by_fqn.get(storage.record or "")
        if t is None or storage.reader is not self:
            raise self._corrupt("storage does not belong to this checkpoint", record=storage.record)
        return t.source_ranges()

    @property
    def storages(self) -> dict[str, StorageRef]:
        return self._storages

    @property
    def file_size(self) -> int:
        """Bytes of ``.metadata`` and every data file it names."""
        return self._meta_size + sum(self._sizes.values())

    def files(self) -> list[dict[str, Any]]:
        """Per data file: its name, size, the rank that wrote it (``__<rank>_<n>.distcp``), and the
        number of chunks and items and tensor bytes it holds."""
        rows: dict[str, dict[str, Any]] = {}
        for name in sorted(self._sizes, key=_file_order):
            rows[name] = {"file": name, "rank": _rank_of(name), "size": self._sizes[name],
                          "serialization": self.file_serialization.get(name), "chunks": 0, "items": 0,
                          "tensor_bytes": 0}
        for t in self.tensors_by_fqn.values():
            for c in t.chunks:
                rows[c.file]["chunks"] += 1
                rows[c.file]["tensor_bytes"] += c.numel * t.dtype.itemsize
        for it in self.items.values():
            rows[it.file]["items"] += 1
        return list(rows.values())

    def facts(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "metadata": self.metadata_name,
            "version": self.version,
            "serialization": self.serialization,
            "save_id": self.save_id,
            "files": self.files(),
            "tensor_bytes": sum(t.nbytes for t in self.tensors_by_fqn.values()),
            "tensors": [
                {"name": t.fqn, "dtype": t.dtype.name, "shape": list(t.shape),
                 "chunks": [c.as_json() for c in t.chunks]}
                for t in self.tensors()
            ],
            "items": [{"name": i.fqn, "file": i.file, "byte_range": [i.offset, i.offset + i.length]}
                      for i in self.items.values()],
            "notes": list(self.notes),
        }

    def close(self) -> None:
        for r in self._blob_readers:
            r.close()
        self._blob_readers.clear()
        self._chunk_cache.clear()
        self._scratch = bytearray()
        for f in self._files.values():
            f.close()
        self._files.clear()


class HfDcpReader(DcpReader):
    """DCP's Hugging Face layout without an index: ``HuggingFaceStorageWriter(save_distributed=True)``
    leaves one ``shard-<rank>-model-<i>-of-<n>.safetensors`` per rank, each holding its rank's
    chunks under their FQNs and their offsets in the global shape in the ``DCP_SHARDING_INFO``
    metadata, and no ``.metadata``. Each file's header is validated as any safetensors file's; the
    global shape of a tensor is the bounding box of its chunks, which must cover it exactly once."""

    metadata_name = None
    raw_chunks = True

    def _read_metadata(self, policy: Policy, findings: list[Finding]) -> None:
        import json

        from .safetensors_reader import SafetensorsReader

        self.tensors_by_fqn, self.items, self.order, self.paths, self.notes = {}, {}, [], {}, []
        self.serialization = "safetensors"
        self.file_serialization = {}
        boxes: dict[str, list[ChunkInfo]] = {}
        dtypes: dict[str, _dt.DType] = {}
        for name in hf_dcp_files(self.folder):
            full = os.path.join(self.folder, name)
            st = SafetensorsReader(RangedFile.open(full), path=full, limits=self.limits)
            try:
                self._sizes[name] = st.file.size
                self.file_serialization[name] = "safetensors"
                raw = (st.metadata or {}).get("DCP_SHARDING_INFO")
                try:
                    info = json.loads(raw) if raw is not None else {}
                except ValueError:
                    raise self._corrupt(f"{name}: DCP_SHARDING_INFO is not JSON") from None
                if type(info) is not dict:
                    raise self._corrupt(f"{name}: DCP_SHARDING_INFO is not an object")
                for e in st.entries:
                    entry_info = info.get(e.name, {})
                    saved = entry_info.get("saved_offsets", [0] * len(e.shape)) if type(entry_info) is dict else None
                    offsets = self._dims(saved, e.name, "saved_offsets")
                    if len(offsets) != len(e.shape):
                        raise self._corrupt(f"{name}: saved_offsets {list(offsets)} do not fit shape {list(e.shape)}",
                                            record=e.name)
                    if e.name in dtypes and dtypes[e.name] is not e.dtype:
                        raise self._corrupt(f"{name} stores a chunk as {e.dtype.name}, another file as "
                                            f"{dtypes[e.name].name}", record=e.name)
                    if e.name not in dtypes:
                        dtypes[e.name] = e.dtype
                        self.order.append(e.name)
                        boxes[e.name] = []
                    elif len(boxes[e.name][0].offsets) != len(offsets):
                        raise self._corrupt(f"{name} stores a chunk of another rank", record=e.name)
                    boxes[e.name].append(ChunkInfo(offsets, e.shape, name, st.data_start + e.begin, e.end - e.begin))
            finally:
                st.close()
        if not self.order:
            raise NotACheckpointError("a folder of safetensors files without DCP_SHARDING_INFO", path=self.path)
        for fqn in self.order:
            chunks = boxes[fqn]
            shape = tuple(max(c.offsets[i] + c.sizes[i] for c in chunks) for i in range(len(chunks[0].offsets)))
            _check_cover(shape, chunks, lambda m, fqn=fqn: self._corrupt(m, record=fqn))
            self.tensors_by_fqn[fqn] = LogicalTensor(fqn, dtypes[fqn], shape, chunks, False, self)
        self.notes.append("DCP's Hugging Face layout (HuggingFaceStorageWriter, save_distributed=True): "
                          "safetensors files with DCP_SHARDING_INFO and no .metadata")


def hf_dcp_files(folder: str) -> list[str]:
    """The ``*.safetensors`` files of ``folder`` whose header names ``DCP_SHARDING_INFO`` (read from
    their first bytes only), sorted; [] when there are none."""
    out = []
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return []
    for name in names:
        if not name.endswith(".safetensors") or not os.path.isfile(os.path.join(folder, name)):
            continue
        with open(os.path.join(folder, name), "rb") as f:
            head = f.read(1 << 16)
        if len(head) >= 8 and int.from_bytes(head[:8], "little") > 0 and b'"DCP_SHARDING_INFO"' in head:
            out.append(name)
    return out


# -- helpers -------------------------------------------------------------------------------------------

def _region_is_contiguous(shape: tuple[int, ...], sizes: tuple[int, ...]) -> bool:
    """Whether a box of ``sizes`` is one contiguous run of a C-order array of ``shape``: after the
    first dimension where the box is wider than 1, it spans every following dimension whole."""
    for i, s in enumerate(sizes):
        if s != 1:
            return sizes[i + 1:] == shape[i + 1:]
    return True


def _check_cover(shape: tuple[int, ...], chunks: list[ChunkInfo], corrupt: Any) -> None:
    """Chunks cover the tensor exactly once: no two overlap and their volumes add up to its size."""
    numel = 1
    for d in shape:
        numel *= d
    boxes = [c for c in chunks if c.numel]
    total = sum(c.numel for c in boxes)
    if len(boxes) > 1:
        import numpy as np

        lo = np.array([c.offsets for c in boxes], dtype=np.int64).reshape(len(boxes), len(shape))
        hi = lo + np.array([c.sizes for c in boxes], dtype=np.int64).reshape(len(boxes), len(shape))
        for i in range(len(boxes) - 1):
            hit = np.all((lo[i + 1:] < hi[i]) & (lo[i] < hi[i + 1:]), axis=1)
            if hit.any():
                j = i + 1 + int(np.argmax(hit))
                raise corrupt(f"chunks at {list(boxes[i].offsets)} and {list(boxes[j].offsets)} overlap; "
                              "the checkpoint is ambiguous")
    if total != numel:
        raise corrupt(f"the chunks hold {total:,} elements but the tensor's shape {list(shape)} has {numel:,}: "
                      "part of the tensor is stored nowhere")


def _set_element(root: dict[Any, Any], path: tuple[Any, ...], value: Any, max_index: int, corrupt: Any) -> None:
    """Put ``value`` at ``path`` in the nested state dict, as torch's ``set_element`` does (int
    keys make lists), refusing paths through values that are not containers."""
    cur: Any = root
    for i in range(1, len(path)):
        prev, key = path[i - 1], path[i]
        default: Any = {} if type(key) is str else []
        cur = _step(cur, prev, default, max_index, corrupt)
    last = path[-1]
    if type(cur) is list:
        if type(last) is not int or last > max_index:
            raise corrupt(f"planner_data's path {path!r:.80} indexes a list with {last!r:.20}")
        while len(cur) <= last:
            cur.append(None)
    elif type(cur) is not dict:
        raise corrupt(f"planner_data's path {path!r:.80} goes through a {type(cur).__name__}")
    cur[last] = value


def _step(cur: Any, key: Any, default: Any, max_index: int, corrupt: Any) -> Any:
    if type(cur) is dict:
        nxt = cur.setdefault(key, default)
    elif type(cur) is list:
        if type(key) is not int or key > max_index:
            raise corrupt(f"planner_data indexes a list with {key!r:.20}")
        while len(cur) <= key:
            cur.append(None)
        if cur[key] is None:
            cur[key] = default
        nxt = cur[key]
    else:
        raise corrupt(f"planner_data's path goes through a {type(cur).__name__}")
    if type(nxt) not in (dict, list):
        raise corrupt(f"planner_data's path goes through a {type(nxt).__name__}")
    return nxt


def _rank_of(name: str) -> int | None:
    """The rank a data file's name says wrote it: ``__<rank>_<n>.distcp``, or
    ``shard-<rank + 1>-model-...`` in the Hugging Face layout."""
    if name.startswith("__") and name.endswith(DISTCP_SUFFIX):
        part = name[2:].split("_", 1)[0]
        if part.isdigit():
            return int(part)
    if name.startswith("shard-"):
        part = name[6:].split("-", 1)[0]
        if part.isdigit() and int(part) > 0:
            return int(part) - 1
    return None


def _file_order(name: str) -> tuple[int, str]:
    rank = _rank_of(name)
    return (rank if rank is not None else 1 << 30, name)


# -- detection -----------------------------------------------------------------------------------------

def is_dcp_folder(path: str) -> bool:
    """A folder holding a ``.metadata`` file (the folder ``torch.distributed.checkpoint`` saved), or
    DCP's Hugging Face layout: no ``.metadata``, no ``*.index.json``, and safetensors files whose
    header holds ``DCP_SHARDING_INFO``. A ``.metadata`` counts when it reads as DCP's pickle (its
    first global is ``Metadata``) or ``.distcp`` files lie beside it (a damaged one is then named)."""
    try:
        names = os.listdir(path)
    except OSError:
        return False
    meta = os.path.join(path, METADATA)
    if os.path.isfile(meta):
        if any(n.endswith(DISTCP_SUFFIX) for n in names):
            return True
        with open(meta, "rb") as f:
            if _META.encode() in f.read(200):
                return True
    if any(n.endswith(".index.json") for n in names):
        return False  # a sharded checkpoint's index defines the folder (ckpt.sharded)
    return bool(hf_dcp_files(path))


def open_folder(path: str, limits: Limits = DEFAULT_LIMITS) -> DcpReader:
    """The DCP checkpoint in folder ``path`` (``.metadata``, or the safetensors headers of the
    Hugging Face layout, read and validated; no chunk read)."""
    if os.path.isfile(os.path.join(path, METADATA)):
        return DcpReader(path, limits=limits)
    return HfDcpReader(path, limits=limits)


@register("dcp-metadata")
def open_metadata(file: RangedFile, path: str, limits: Limits, head: bytes) -> Reader:
    """A ``.metadata`` file opened by its path: the DCP checkpoint of its folder."""
    file.close()
    return DcpReader(os.path.dirname(os.path.abspath(path)), limits=limits)



# -- the scanner's hook --------------------------------------------------------------------------------


class PickleStream:
    """One pickle in a DCP folder: ``file`` (relative to the folder), ``offset``/``length`` of the
    pickle bytes in that file, ``kind`` (``metadata``, ``item`` or ``chunk``), the FQN ``name``
    (None for ``.metadata``), and for blobs the archive's ``blob_offset`` and ``record`` name."""

    __slots__ = ("file", "offset", "length", "kind", "name", "blob_offset", "record")

    def __init__(self, file: str, offset: int, length: int, kind: str, name: str | None = None,
                 blob_offset: int | None = None, record: str | None = None) -> None:
        self.file = file
        self.offset = offset
        self.length = length
        self.kind = kind
        self.name = name
        self.blob_offset = blob_offset
        self.record = record

    def as_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}

    def __repr__(self) -> str:
        return f"<pickle {self.kind} {self.name or ''} {self.file}[{self.offset}:{self.offset + self.length}]>"


def pickle_streams(folder: str, *, limits: Limits = DEFAULT_LIMITS) -> tuple[list[PickleStream], list[str]]:
    """Every pickle stream of a DCP folder, for a static scanner: ``(streams, problems)``.

    The first stream is always ``.metadata`` (the one torch reads with plain ``pickle.load``).
    When ``.metadata`` can be read as DCP metadata (with the inspect policy: its globals are
    only noted, never run), every ``torch.save`` blob it points to follows: each non-tensor
    item's and each tensor chunk's ``data.pkl``, with the absolute offset of the pickle in its
    ``.distcp`` file. ``problems`` says why blobs could not be listed (a damaged or hostile
    ``.metadata``, an unreadable blob); the scanner should report those as findings. Nothing is
    unpickled here beyond ``.metadata`` through ckpt's restricted VM.

    >>> streams, problems = pickle_streams("ckpt_dir")            # doctest: +SKIP
    >>> [(s.kind, s.file, s.offset) for s in streams]              # doctest: +SKIP
    [('metadata', '.metadata', 0), ('item', '__0_0.distcp', 73), ('chunk', '__0_0.distcp', 1334), ...]
    """
    from .zipread import ZipArchive

    meta_path = os.path.join(folder, METADATA)
    streams = [PickleStream(METADATA, 0, os.path.getsize(meta_path), "metadata")]
    problems: list[str] = []
    try:
        reader = DcpReader(folder, limits=limits)
    except CheckpointError as e:
        problems.append(f".metadata cannot be read as DCP metadata, so its blobs are not listed: {e}")
        return streams, problems
    try:
        for kind, name, file, offset, length in reader.blobs():
            try:
                window = WindowFile(reader._open(file), offset, length)
                archive = ZipArchive(window, name=f"{file}@{offset}", limits=limits)
                entry = next((e for e in archive.entries if e.name.endswith("data.pkl")), None)
                if entry is None:
                    problems.append(f"{name}: the blob at {file}@{offset} has no data.pkl")
                    continue
                if entry.method != 0:
                    problems.append(f"{name}: the blob at {file}@{offset} compresses its data.pkl")
                    continue
                start = archive.data_offset(entry)
                streams.append(PickleStream(file, offset + start, entry.size, kind, name, offset, entry.name))
            except CheckpointError as e:
                problems.append(f"{name}: the blob at {file}@{offset} is not a readable archive ({e.message})")
    finally:
        reader.close()
    return streams, problems
