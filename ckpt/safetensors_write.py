"""Write safetensors files as the safetensors library writes them, streaming tensor by tensor.

Layout (what ``safetensors.torch.save_file`` writes, byte for byte when ``__metadata__`` has at
most one key; the library orders several metadata keys at random): an 8-byte little-endian
header length ``N``; ``N`` bytes of compact JSON (``{"__metadata__":{...},"name":{"dtype":
"F32","shape":[2],"data_offsets":[0,8]},...}``, UTF-8 not escaped), padded with spaces to a
multiple of 8 bytes; then the tensors' bytes with no gaps. Tensors are ordered by dtype, widest
first in the library's own order (U64, I64, F64, C64, F32, U32, I32, BF16, F16, U16, I16, the
float8 family, I8, U8, F4, BOOL), then by name, so every tensor starts aligned to its element
size.

Tensor bytes are copied file to file (in the kernel where the offsets agree modulo a page,
through a small buffer otherwise) when they lie contiguous and uncompressed in
the source; otherwise they stream in chunks (:mod:`ckpt.tensor_stream`). The file is written
atomically (a temporary file beside it, fsynced, renamed).

>>> from ckpt.dtypes import DTYPES
>>> head, layout = header({"b": (DTYPES["float16"], (3,)), "a": (DTYPES["float32"], (2,))}, None)
>>> head[8:]
b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F16","shape":[3],"data_offsets":[8,14]}}    '
>>> layout
[('a', 0, 8), ('b', 8, 14)]
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterable
from typing import Any

from . import dtypes as _dt
from .errors import CheckpointError, UnsupportedFeatureError
from .tensor_stream import Recycler, cast_chunks, source_ranges, tensor_chunks

# The safetensors library's Dtype enum, in declaration order; it sorts tensors by it, descending.
_ORDER = ["BOOL", "F4", "F6_E2M3", "F6_E3M2", "U8", "I8", "F8_E5M2", "F8_E4M3", "F8_E5M2FNUZ",
          "F8_E4M3FNUZ", "F8_E8M0", "I16", "U16", "F16", "BF16", "I32", "U32", "F32", "C64", "F64", "I64", "U64"]
_RANK = {code: i for i, code in enumerate(_ORDER)}
_LENGTH = struct.Struct("<Q")

Progress = Callable[[int, int], None]


def st_code(dtype: _dt.DType, name: str) -> str:
    """The safetensors dtype code of ``dtype``; a clear error naming the tensor if there is none."""
    if dtype.safetensors is None:
        raise UnsupportedFeatureError(
            f"the tensor has dtype {dtype.name}, which safetensors cannot hold"
            + (" (convert it with torch first, or leave it out with --exclude)" if dtype.kind != "quantized" else
               " (quantized tensors: dequantize with torch first, or leave it out with --exclude)"),
            record=name,
        )
    return dtype.safetensors


def order(specs: dict[str, tuple[_dt.DType, tuple[int, ...]]]) -> list[str]:
    """Names in the order the safetensors library lays tensors out."""
    return sorted(specs, key=lambda n: (-_RANK.get(st_code(specs[n][0], n), 0), n))


def header(
    specs: dict[str, tuple[_dt.DType, tuple[int, ...]]], metadata: dict[str, str] | None,
) -> tuple[bytes, list[tuple[str, int, int]]]:
    """``(length field + padded JSON header, [(name, begin, end)] in data order)``."""
    doc: dict[str, Any] = {}
    if metadata:
        for k, v in metadata.items():
            if type(k) is not str or type(v) is not str:
                raise CheckpointError("__metadata__ must map strings to strings")
        doc["__metadata__"] = metadata
    layout = []
    pos = 0
    for name in order(specs):
        dtype, shape = specs[name]
        code = st_code(dtype, name)
        numel = 1
        for d in shape:
            numel *= d
        nbytes = numel * dtype.itemsize
        dims = list(shape)
        if dtype.name == "float4_e2m1fn_x2" and dims:
            dims[-1] *= 2  # safetensors counts 4-bit elements
        doc[name] = {"dtype": code, "shape": dims, "data_offsets": [pos, pos + nbytes]}
        layout.append((name, pos, pos + nbytes))
        pos += nbytes
    text = json.dumps(doc, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return _LENGTH.pack(len(text)) + text, layout


class Item:
    """One tensor to write: its source (see :mod:`ckpt.tensor_stream`) and the dtype it is
    written as (a cast when it differs from the source's)."""

    __slots__ = ("name", "source", "dtype", "shape")

    def __init__(self, name: str, source: Any, dtype: _dt.DType | None = None) -> None:
        self.name = name
        self.source = source
        self.dtype = dtype or source.dtype
        self.shape = tuple(source.shape)

    @property
    def nbytes(self) -> int:
        n = self.dtype.itemsize
        for d in self.shape:
            n *= d
        return n


def write(
    path: str,
    items: Iterable[Item],
    metadata: dict[str, str] | None = None,
    *,
    progress: Callable[[int], None] | None = None,
    fsync: bool = True,
) -> int:
    """Write ``items`` to ``path`` as one safetensors file, atomically; returns its size.
    ``progress(n)`` is called with each number of tensor bytes written."""
    from .saving import output_file

    by_name: dict[str, Item] = {}
    for it in items:
        if it.name in by_name:
            raise CheckpointError(f"tensor name {it.name!r} given twice", record=it.name)
        by_name[it.name] = it
    head, layout = header({n: (it.dtype, it.shape) for n, it in by_name.items()}, metadata)
    step = progress or (lambda n: None)
    buffers = Recycler()
    with output_file(path, fsync=fsync) as sink:
        sink.eager_copies = True  # copies run on threads while later tensors are read and packed
        sink.write(head)
        for name, begin, end in layout:
            it = by_name[name]
            size = end - begin
            src = it.source
            ranges = source_ranges(src) if it.dtype == src.dtype else None
            if ranges is not None:
                n = sum(r[2] for r in ranges)
                if n != size:  # pragma: no cover - guarded by make_view and the DCP reader's cover check
                    raise CheckpointError(f"tensor {name!r} holds {n:,} bytes, not {size:,}", record=name)
                for fd, offset, n in ranges:
                    sink.copy_later(fd, offset, n)
                continue
            written = 0
            try:
                for chunk in cast_chunks(tensor_chunks(src, buffers=buffers), src.dtype, it.dtype):
                    n = len(chunk) if type(chunk) is bytes else memoryview(chunk).nbytes
                    if written + n > size:
                        break
                    sink.write_behind(chunk)  # never changed afterwards: buffers come back only once written
                    written += n
                    step(n)
            except CheckpointError as e:
                raise e.with_context(record=name)
            finally:
                used, buffers.last = buffers.last, None
            if used is not None:
                sink.after_behind(lambda used=used: buffers.give(used))
            if written != size:
                raise CheckpointError(f"tensor {name!r}: its source gave {written:,} bytes where {size:,} were expected"
                                      if written < size else f"tensor {name!r}: its source gave more than {size:,} bytes",
                                      record=name)
        sink.run_copies(step)
        sink.flush()
        total = sink.position
    return total
