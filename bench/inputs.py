"""Benchmark inputs: named recipes, generated once into the work dir and cached.

Each input is written by ``gen_input.py`` in a child process (big inputs hold the whole state
dict in memory while torch.save writes it, and the harness itself should stay small). Beside
each input lies ``<file>.recipe.json``: the recipe it was made from, the torch version that made
it and its size. An input is reused when that sidecar matches the recipe and the file is still
there with the same size; otherwise it is made again.

To add an input, add an entry to ``INPUTS``; a new kind of recipe needs a function in
``gen_input.GENERATORS``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

ITEMSIZE = {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2, "int64": 8, "int32": 4, "uint8": 1}


@dataclass(frozen=True)
class Input:
    """A file (or folder) the benchmarks read, and the recipe that makes it."""

    name: str  # the placeholder benchmarks use: ``{big}``
    filename: str  # under the work dir
    recipe: dict[str, Any] = field(hash=False)
    about: str = ""

    @property
    def largest_tensor_bytes(self) -> int:
        """Bytes of the largest tensor (for floors such as "largest tensor + 100 MB")."""
        r = self.recipe
        return math.prod(r["shape"]) * ITEMSIZE[r.get("dtype", "float32")]

    @property
    def tensor_bytes(self) -> int:
        return self.largest_tensor_bytes * int(self.recipe["count"])


BIG = {"kind": "state_dict", "count": 200, "keys": "layers.{n}.weight", "shape": [2000, 1000],
       "dtype": "float32", "seed": 0, "format": "torch-zip"}

INPUTS: dict[str, Input] = {
    i.name: i
    for i in (
        Input(
            "big",
            "big.pt",
            BIG,
            "~1.6 GB: 200 float32 tensors of [2000, 1000] (8 MB each), torch.save zip format",
        ),
        Input(
            "legacy",
            "big-legacy.pt",
            {"kind": "state_dict", "count": 128, "keys": "layers.{n}.weight", "shape": [2000, 1000],
             "dtype": "float32", "seed": 0, "format": "torch-legacy"},
            "~1 GB: 128 float32 tensors of [2000, 1000], legacy format (_use_new_zipfile_serialization=False)",
        ),
        Input(
            "st",
            "big.safetensors",
            {"kind": "state_dict", "count": 128, "keys": "layers.{n}.weight", "shape": [2000, 1000],
             "dtype": "float32", "seed": 0, "format": "safetensors"},
            "~1 GB: 128 float32 tensors of [2000, 1000], safetensors",
        ),
        Input(
            "sharded",
            "sharded",
            {"kind": "sharded", "shards": 16, "count": 2048, "keys": "layers.{i}.sub{j}.weight", "group": 16,
             "shape": [128, 256], "dtype": "bfloat16", "seed": 0, "format": "safetensors"},
            "a folder of 16 safetensors shards (2,048 bfloat16 tensors of [128, 256], 128 MiB) and "
            "model.safetensors.index.json",
        ),
        Input(
            "dcp",
            "dcp",
            {"kind": "dcp", "ranks": 2, "count": 200, "keys": "layers.{n}.weight", "shape": [2000, 1000],
             "dtype": "float32", "seed": 0},
            "~1.6 GB torch.distributed.checkpoint folder written by 2 gloo ranks: 200 float32 tensors "
            "of [2000, 1000] as DTensors, Shard(0) and Shard(1) alternately (__0_0.distcp, __1_0.distcp)",
        ),
        Input(
            "big_copy",
            "big-copy.pt",
            {**BIG, "copy": 1},  # same recipe, so the same bytes (torch.save is deterministic), another file
            "a second file with exactly big.pt's bytes (for diff: two identical checkpoints)",
        ),
        Input(
            "big_other",
            "big-other.pt",
            {**BIG, "seed": 1},
            "big.pt's names and shapes with other random values (for diff: every tensor differs)",
        ),
        Input(
            "folder",
            "folder",
            {"kind": "folder", "count": 1000, "tensors": 8, "shape": [32, 32], "dtype": "float32",
             "format": "torch-zip"},
            "1,000 small checkpoints (8 float32 tensors of [32, 32] each, ~40 KB) in one folder",
        ),
        Input(
            "many",
            "many.pt",
            {"kind": "state_dict", "count": 100_000, "keys": "layers.{i}.sub{j}.weight", "group": 10,
             "shape": [4], "dtype": "float32", "seed": 0, "format": "torch-zip"},
            "100,000 float32 tensors of [4] in one state dict (layers.{i}.sub{j}.weight), ~30 MB",
        ),
        Input(
            "numpy_values",
            "numpy_values.pt",
            {"kind": "numpy_values", "scalars": 50_000, "arrays": 5_000, "array_shape": [16], "seed": 0},
            "a training log of numpy values: 50,000 numpy float64/int64 scalars and 5,000 float32 "
            "arrays of [16] beside a 4-tensor model, torch.save zip format (~2 MB)",
        ),
    )
}


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".recipe.json")


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def _torch_version(python: str) -> str:
    out = subprocess.run([python, "-c", "import torch; print(torch.__version__)"], capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def is_current(inp: Input, workdir: Path) -> bool:
    path = workdir / inp.filename
    side = _sidecar(path)
    if not path.exists() or not side.exists():
        return False
    try:
        meta = json.loads(side.read_text())
    except (OSError, ValueError):
        return False
    return meta.get("recipe") == inp.recipe and meta.get("size") == _size(path)


def ensure(inp: Input, workdir: Path, python: str = sys.executable, log=print) -> Path:
    """The path of ``inp`` under ``workdir``, generating it first unless a matching one is cached."""
    path = workdir / inp.filename
    if is_current(inp, workdir):
        return path
    workdir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    for stale in (tmp, path, _sidecar(path)):
        if stale.is_dir():
            shutil.rmtree(stale)
        elif stale.exists():
            stale.unlink()
    log(f"generating {inp.filename}: {inp.about} ...")
    t0 = time.perf_counter()
    try:
        subprocess.run([python, str(HERE / "gen_input.py"), json.dumps(inp.recipe), str(tmp)], check=True)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()
        raise
    os.replace(tmp, path)
    meta = {"recipe": inp.recipe, "size": _size(path), "torch": _torch_version(python),
            "seconds": round(time.perf_counter() - t0, 1)}
    _sidecar(path).write_text(json.dumps(meta, indent=1) + "\n")
    log(f"  wrote {path} ({meta['size'] / 1e6:.0f} MB) in {meta['seconds']} s")
    return path


def warm(path: Path, chunk: int = 8 << 20) -> None:
    """Read a file (or every file of a folder) once so the runs find it in the page cache."""
    files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
    for f in files:
        with open(f, "rb", buffering=0) as fh:
            while fh.read(chunk):
                pass
