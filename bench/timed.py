"""In-process timing: run one call in a fresh process and print its seconds as a JSON line.

    python bench/timed.py ckpt-load  PATH [--mmap] [--as numpy] [--no-torch]
    python bench/timed.py ckpt-inspect PATH               # ckpt.inspect, the call alone
    python bench/timed.py torch-load PATH [--mmap]
    python bench/timed.py torch-diff PATH OTHER [--stats]
    python bench/timed.py st-load PATH [--as numpy]       # safetensors' load_file
    python bench/timed.py st-sharded-load FOLDER          # index + load_file of each shard
    python bench/timed.py torch-load-numpy-allowed PATH     # numpy globals allowlisted
    python bench/timed.py ckpt-save  PATH --out OUT [--no-fsync]   # PATH loaded by torch.load first
    python bench/timed.py torch-save PATH --out OUT [--fsync]       # --fsync: then fsync OUT
    python bench/timed.py ckpt-dcp-read DIR                # every DCP tensor consolidated, one at a time
    python bench/timed.py ckpt-dcp-save DIR --out OUT [--no-fsync]  # DCP -> single-rank DCP, streamed
    python bench/timed.py dcp-to-torch-save DIR --out OUT.pt        # torch's converter

Imports happen before the clock starts (torch first, then ckpt), so what is timed is the call
alone; the harness still measures the whole process's wall time and peak RSS around it. The last
line printed is ``{"seconds": ..., ...}``, which the harness parses.

``--no-torch`` makes ``import torch`` fail for the whole process (the numpy flavour of
``ckpt.load`` must not need it) and reports whether torch was imported anyway.

To time another call, add a function to ``CALLS``: it gets the parsed arguments and returns a
zero-argument callable (do imports and set-up there, outside the timed region).
"""

from __future__ import annotations

import argparse
import importlib.abc
import json
import sys
import time
from typing import Any, Callable


class _BlockTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name == "torch" or name.startswith("torch."):
            raise ImportError(f"bench/timed.py --no-torch: import of {name!r} blocked")
        return None


def ckpt_load(a: argparse.Namespace) -> Callable[[], Any]:
    if a.as_ == "torch":
        import torch  # noqa: F401  (imported before the clock starts)
    import ckpt

    return lambda: ckpt.load(a.path, mmap=a.mmap, as_=a.as_)


def ckpt_inspect(a: argparse.Namespace) -> Callable[[], Any]:
    """``ckpt.inspect`` (the summary the CLI prints), the call alone: no interpreter start, no imports."""
    import ckpt

    return lambda: ckpt.inspect(a.path).tensors


def torch_load(a: argparse.Namespace) -> Callable[[], Any]:
    import torch

    return lambda: torch.load(a.path, mmap=a.mmap, weights_only=True)


def torch_diff(a: argparse.Namespace) -> Callable[[], Any]:
    """What people write without ckpt: mmap-load both with torch, compare tensor by tensor
    (torch.equal; with --stats also max abs diff and allclose, as ckpt diff reports)."""
    import torch

    def run() -> dict[str, Any]:
        x = torch.load(a.path, mmap=True, weights_only=True)
        y = torch.load(a.other, mmap=True, weights_only=True)
        out = {}
        for k, t in x.items():
            u = y[k]
            if torch.equal(t, u):
                out[k] = 0.0
            elif a.stats:
                d = (t - u).abs()
                out[k] = (float(d.max()), float(d.mean()), bool(torch.allclose(t, u)))
            else:
                out[k] = None
        return out

    return run


def st_load(a: argparse.Namespace) -> Callable[[], Any]:
    """``safetensors.torch.load_file`` (or ``safetensors.numpy.load_file`` with ``--as numpy``)."""
    if a.as_ == "numpy":
        from safetensors.numpy import load_file
    else:
        import torch  # noqa: F401

        from safetensors.torch import load_file
    return lambda: load_file(a.path)


def st_sharded_load(a: argparse.Namespace) -> Callable[[], Any]:
    """What loaders do with a sharded safetensors folder: read the index, load_file each shard."""
    import json
    import os

    import torch  # noqa: F401
    from safetensors.torch import load_file

    def load() -> Any:
        with open(os.path.join(a.path, "model.safetensors.index.json")) as f:
            weight_map = json.load(f)["weight_map"]
        out: dict[str, Any] = {}
        for shard in dict.fromkeys(weight_map.values()):
            out.update(load_file(os.path.join(a.path, shard)))
        return out

    return load


def torch_load_numpy_allowed(a: argparse.Namespace) -> Callable[[], Any]:
    """torch.load(weights_only=True) with the numpy globals allowlisted, as torch's docs advise
    (torch then runs numpy's own reconstruction functions)."""
    import numpy as np
    import torch

    core = getattr(np, "_core", None) or np.core
    allowed = [core.multiarray.scalar, core.multiarray._reconstruct, np.ndarray, np.dtype,
               *(getattr(np.dtypes, n) for n in ("Float64DType", "Float32DType", "Int64DType"))]

    def call() -> Any:
        with torch.serialization.safe_globals(allowed):
            return torch.load(a.path, mmap=a.mmap, weights_only=True)

    return call


def _in_memory(a: argparse.Namespace) -> Any:
    """The checkpoint at ``a.path`` as torch tensors in memory (set-up, not timed)."""
    import torch

    if not a.out:
        raise SystemExit("timed.py: --out is required for the save calls")
    return torch.load(a.path, weights_only=True)


def ckpt_save(a: argparse.Namespace) -> Callable[[], Any]:
    obj = _in_memory(a)
    import ckpt

    return lambda: ckpt.save(obj, a.out, fsync=not a.no_fsync)


def torch_save(a: argparse.Namespace) -> Callable[[], Any]:
    import os

    import torch

    obj = _in_memory(a)

    def call() -> None:
        torch.save(obj, a.out)
        if a.fsync:  # what ckpt.save does by default, for a like-for-like comparison
            fd = os.open(a.out, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    return call


def ckpt_dcp_read(a: argparse.Namespace) -> Callable[[], Any]:
    """Consolidate every logical tensor of a DCP folder, one at a time, into one reused buffer:
    the reading side of converting the folder (memory: one tensor)."""
    import ckpt

    def read() -> Any:
        names = []
        with ckpt.open(a.path) as ck:
            buf = bytearray()
            for t in ck.reader.tensors():
                if len(buf) != t.nbytes:
                    buf = bytearray(t.nbytes)
                t.read_into(memoryview(buf))
                names.append(t.fqn)
        return names

    return read


def ckpt_dcp_save(a: argparse.Namespace) -> Callable[[], Any]:
    """``ckpt.dcp_save`` of an opened checkpoint (a sharded DCP folder: consolidated, streamed)."""
    import ckpt

    if not a.out:
        raise SystemExit("timed.py: --out is required for ckpt-dcp-save")

    def call() -> Any:
        with ckpt.open(a.path) as ck:
            ckpt.dcp_save(ck, a.out, fsync=not a.no_fsync)
        return ()

    return call


def dcp_to_torch_save(a: argparse.Namespace) -> Callable[[], Any]:
    """torch's own converter: loads the whole folder into memory, then torch.save."""
    import warnings

    warnings.filterwarnings("ignore")
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save as convert

    if not a.out:
        raise SystemExit("timed.py: --out is required for dcp-to-torch-save")
    return lambda: convert(a.path, a.out) or ()


CALLS: dict[str, Callable[[argparse.Namespace], Callable[[], Any]]] = {
    "ckpt-load": ckpt_load,
    "ckpt-inspect": ckpt_inspect,
    "torch-load": torch_load,
    "torch-diff": torch_diff,
    "st-load": st_load,
    "st-sharded-load": st_sharded_load,
    "torch-load-numpy-allowed": torch_load_numpy_allowed,
    "ckpt-save": ckpt_save,
    "torch-save": torch_save,
    "ckpt-dcp-read": ckpt_dcp_read,
    "ckpt-dcp-save": ckpt_dcp_save,
    "dcp-to-torch-save": dcp_to_torch_save,
}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("call", choices=sorted(CALLS))
    p.add_argument("path")
    p.add_argument("other", nargs="?", help="the second checkpoint (torch-diff)")
    p.add_argument("--stats", action="store_true", help="torch-diff: max/mean abs diff and allclose too")
    p.add_argument("--mmap", action="store_true")
    p.add_argument("--as", dest="as_", default="torch", choices=("torch", "numpy"))
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--out", help="where the save calls write")
    p.add_argument("--no-fsync", action="store_true", help="ckpt-save: fsync=False")
    p.add_argument("--fsync", action="store_true", help="torch-save: fsync the file after torch.save")
    a = p.parse_args(argv)
    if a.no_torch:
        sys.meta_path.insert(0, _BlockTorch())
    fn = CALLS[a.call](a)
    t0 = time.perf_counter()
    obj = fn()
    seconds = time.perf_counter() - t0
    out = {
        "seconds": seconds,
        "call": a.call,
        "items": len(obj) if hasattr(obj, "__len__") else None,
        "torch_imported": "torch" in sys.modules,
    }
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
