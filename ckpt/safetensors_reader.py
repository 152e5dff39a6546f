"""Reader for safetensors files: a JSON header, checked whole before any use, and tensors by offset.

Layout: an 8-byte little-endian header length ``N``, ``N`` bytes of UTF-8 JSON, then the data
buffer. The header maps each tensor name to ``{"dtype", "shape", "data_offsets": [begin, end]}``
(offsets into the data buffer) and may hold ``"__metadata__"``, a map of strings to strings.

Before anything is used, the whole header is validated as the safetensors library does, and a
little more: ``N`` at most :attr:`~ckpt.Limits.max_json_bytes` (100 MB, the library's cap) and
inside the file; well-formed UTF-8 JSON whose top level is an object; no name given twice; every
dtype code known (:func:`ckpt.dtypes.by_safetensors`); shapes of non-negative integers whose
byte size equals the entry's byte range; ranges that, sorted, start at 0, follow each other with
no gap or overlap, and end exactly at the end of the file. Inspecting reads the header only;
each tensor is a lazy reference to its own byte range (one storage per tensor, as the library
returns them).

>>> import json, struct
>>> from ckpt.zipread import RangedFile
>>> header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
>>> blob = struct.pack("<Q", len(header)) + header + bytes(8)
>>> r = SafetensorsReader(RangedFile.from_bytes(blob), path="w.safetensors")
>>> [(e.name, e.dtype.name, e.shape) for e in r.entries]
[('w', 'float32', (2,))]
"""

from __future__ import annotations

import json
import struct
from typing import Any

from . import dtypes as _dt
from .errors import CorruptCheckpointError, ResourceLimitError, UnsupportedFeatureError
from .limits import DEFAULT_LIMITS, Limits
from .policy import Finding, Policy
from .rebuild import Builder
from .reader import Reader, register
from .tensors import StorageRef, TensorRef, contiguous_strides
from .zipread import RangedFile

FORMAT = "safetensors"
_LENGTH = struct.Struct("<Q")
# codes the safetensors library knows that torch has no dtype for
_NO_TORCH_DTYPE = {"F6_E2M3", "F6_E3M2"}
_MAX_DIM = (1 << 64) - 1  # the library parses dimensions as usize


class Entry:
    """One tensor of the header, checked: ``begin``/``end`` are offsets in the data buffer."""

    __slots__ = ("name", "dtype", "shape", "begin", "end")

    def __init__(self, name: str, dtype: _dt.DType, shape: tuple[int, ...], begin: int, end: int) -> None:
        self.name = name
        self.dtype = dtype
        self.shape = shape
        self.begin = begin
        self.end = end


class SafetensorsReader(Reader):
    """One safetensors file, its header validated at construction."""

    def __init__(self, file: RangedFile, *, path: str, limits: Limits = DEFAULT_LIMITS) -> None:
        self.file = file
        self.path = path
        self.limits = limits
        self.byteorder = "little"
        self.notes: list[str] = []
        self.metadata: dict[str, str] | None = None
        self.entries: list[Entry] = []
        self._index: dict[str, Entry] = {}
        self._storages: dict[str, StorageRef] = {}
        self._read_header()

    def _corrupt(self, message: str, record: str | None = None) -> CorruptCheckpointError:
        return CorruptCheckpointError(message, path=self.path, record=record)

    # -- the header ------------------------------------------------------------------------

    def _read_header(self) -> None:
        size = self.file.size
        head = self.file.pread(0, _LENGTH.size)
        if len(head) < _LENGTH.size:
            raise self._corrupt("the file is shorter than a safetensors header length (8 bytes)")
        (n,) = _LENGTH.unpack(head)
        if n > self.limits.max_json_bytes:
            raise ResourceLimitError(
                f"the safetensors header declares {n:,} bytes; at most {self.limits.max_json_bytes:,} are "
                "accepted (the safetensors library's own cap; Limits.max_json_bytes)",
                path=self.path,
            )
        if _LENGTH.size + n > size:
            raise self._corrupt(
                f"the header declares {n:,} bytes but the file holds only {size - _LENGTH.size:,} after the "
                "length field: the file is truncated (an incomplete download?)"
            )
        raw = self.file.pread(_LENGTH.size, n)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise self._corrupt(f"the header is not valid UTF-8 ({e.reason} at byte {e.start})") from None
        try:
            doc = json.loads(text, object_pairs_hook=_unique_keys)
        except _DuplicateKey as e:
            raise self._corrupt(f"the header names {e.key!r} twice; the file is ambiguous") from None
        except RecursionError:
            raise self._corrupt("the header nests too deeply to be a safetensors header") from None
        except ValueError as e:
            raise self._corrupt(f"the header is not valid JSON ({e})") from None
        if type(doc) is not dict:
            raise self._corrupt(f"the header is a JSON {type(doc).__name__}, not an object")
        self.header_bytes = n
        self.data_start = _LENGTH.size + n
        buffer_len = size - self.data_start
        meta = doc.pop("__metadata__", None)
        if meta is not None:
            if type(meta) is not dict or not all(type(v) is str for v in meta.values()):
                raise self._corrupt("__metadata__ must map strings to strings", record="__metadata__")
            self.metadata = meta
        entries = [self._entry(name, info) for name, info in doc.items()]
        order = sorted(range(len(entries)), key=lambda i: (entries[i].begin, entries[i].end))
        expected = 0
        for i in order:
            e = entries[i]
            if e.begin != expected:
                what = "overlaps the tensor before it" if e.begin < expected else "leaves a gap before it"
                raise self._corrupt(
                    f"tensor's bytes [{e.begin:,}, {e.end:,}) {what} (the previous one ends at {expected:,}); "
                    "safetensors requires contiguous, non-overlapping data",
                    record=e.name,
                )
            expected = e.end
        if expected != buffer_len:
            if expected > buffer_len:
                raise self._corrupt(
                    f"the tensors need {expected:,} bytes of data but the file holds {buffer_len:,}: the file is "
                    "truncated (an incomplete download?)"
                )
            raise self._corrupt(
                f"{buffer_len - expected:,} bytes follow the last tensor's data; the header does not cover the "
                "file (appended data, or a damaged header)"
            )
        # The order safetensors.torch.load_file returns: by data offset (empty tensors share offsets;
        # the library orders those ties at random, ckpt by their place in the header).
        self.entries = [entries[i] for i in order]
        self._index = {e.name: e for e in self.entries}

    def _entry(self, name: str, info: Any) -> Entry:
        if type(info) is not dict:
            raise self._corrupt("a tensor entry must be an object", record=name)
        for key in ("dtype", "shape", "data_offsets"):
            if key not in info:
                raise self._corrupt(f"a tensor entry lacks {key!r}", record=name)
        code, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if type(code) is not str:
            raise self._corrupt("dtype must be a string", record=name)
        if code in _NO_TORCH_DTYPE:
            raise UnsupportedFeatureError(
                f"dtype {code} (6-bit floats) has no torch dtype; ckpt cannot read it", path=self.path, record=name
            )
        try:
            dtype = _dt.by_safetensors(code)
        except KeyError:
            raise self._corrupt(f"unknown safetensors dtype {code!r}", record=name) from None
        if type(shape) is not list or not all(type(d) is int and 0 <= d <= _MAX_DIM for d in shape):
            raise self._corrupt(f"shape must be a list of non-negative integers, not {shape!r:.80}", record=name)
        if (
            type(offsets) is not list or len(offsets) != 2
            or not all(type(o) is int and 0 <= o <= _MAX_DIM for o in offsets)
        ):
            raise self._corrupt(f"data_offsets must be two non-negative integers, not {offsets!r:.80}", record=name)
        begin, end = offsets
        if end < begin:
            raise self._corrupt(f"data_offsets [{begin}, {end}) end before they begin", record=name)
        nbytes = _byte_size(dtype, shape, end - begin)
        if nbytes != end - begin:
            needs = (
                "holds an odd number of 4-bit values, which cannot fill whole bytes" if nbytes == -1
                else f"needs more than {end - begin:,} bytes" if nbytes is None
                else f"needs {nbytes:,} bytes"
            )
            raise self._corrupt(
                f"a tensor of dtype {code} and shape {shape} {needs}, but its data_offsets cover "
                f"{end - begin:,} bytes",
                record=name,
            )
        dims = tuple(shape)
        if dtype.name == "float4_e2m1fn_x2":
            if dims and dims[-1] % 2:
                raise self._corrupt(
                    f"an F4 tensor's last dimension ({dims[-1]}) must be even: torch packs two values per byte",
                    record=name,
                )
            dims = (*dims[:-1], dims[-1] // 2) if dims else dims
        return Entry(name, dtype, dims, begin, end)

    # -- the middle model --------------------------------------------------------------------

    def load(self, builder: Builder, policy: Policy, findings: list[Finding]) -> Any:
        """``{name: tensor}`` in data-offset order, as ``safetensors.torch.load_file`` returns it."""
        out: dict[str, Any] = {}
        finish_storage = builder.finish_storage
        finish_tensor = builder.finish_tensor
        for e in self.entries:
            numel = (e.end - e.begin) // e.dtype.itemsize
            key = self.key_prefix + e.name
            ref = self._storages.get(key)
            if ref is None:
                ref = self._storages[key] = StorageRef(key, e.dtype, "cpu", numel, e.name, self)
            storage = finish_storage(ref)
            tensor = TensorRef(ref, e.dtype, e.shape, contiguous_strides(e.shape), 0)
            out[e.name] = finish_tensor(tensor, storage)
        return out

    def facts(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "byteorder": self.byteorder,
            "header_bytes": self.header_bytes,
            "data_offset": self.data_start,
            "metadata": dict(self.metadata) if self.metadata is not None else None,
            "notes": list(self.notes),
        }

    @property
    def storages(self) -> dict[str, StorageRef]:
        return self._storages

    # -- bytes -----------------------------------------------------------------------------

    def data_offset(self, storage: StorageRef) -> int | None:
        e = self._index.get(storage.record or "")
        if e is None or storage.reader is not self:
            raise self._corrupt("storage does not belong to this file", record=storage.record)
        return self.data_start + e.begin

    def readinto(self, storage: StorageRef, buf: memoryview) -> None:
        offset = self.data_offset(storage)
        assert offset is not None
        if len(buf) != storage.nbytes:
            raise self._corrupt(f"tensor holds {storage.nbytes:,} bytes where {len(buf):,} are needed",
                                record=storage.record)
        if self.file.readinto(offset, buf) != storage.nbytes:
            raise self._corrupt("the file ends inside this tensor's data (truncated?)", record=storage.record)

    @property
    def file_size(self) -> int:
        return self.file.size

    def fileno(self) -> int | None:
        return self.file.fileno()

    def close(self) -> None:
        self.file.close()


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateKey(k)
        out[k] = v
    return out


def _byte_size(dtype: _dt.DType, shape: list[int], limit: int) -> int | None:
    """Bytes a tensor of ``shape`` takes (F4: half a byte per element); ``None`` as soon as that
    exceeds ``limit`` (no huge integer arithmetic on hostile shapes), -1 for an odd F4 count."""
    if 0 in shape:
        return 0
    numel = 1
    for d in shape:
        numel *= d
        if numel > 2 * limit + 2:
            return None
    if dtype.name == "float4_e2m1fn_x2":
        return numel // 2 if numel % 2 == 0 else -1  # an odd count of 4-bit values ends mid-byte
    return numel * dtype.itemsize


@register("safetensors")
def open_safetensors(file: RangedFile, path: str, limits: Limits, head: bytes) -> Reader:
    return SafetensorsReader(file, path=path, limits=limits)
