"""Writes a genuinely sharded DCP folder with 2 CPU processes (gloo): run as a script.

``python tests/dcp_writer.py OUT_DIR [torch_save] [safetensors] [hf]``: each rank holds DTensor shards
(Shard(0), Shard(1), an uneven Shard(0), a replicated tensor) plus non-tensor values, and
``torch.distributed.checkpoint.save`` writes ``OUT_DIR/<format>/`` with one ``__<rank>_0.distcp``
per rank, for each serialization format asked for (all by default, in one start of the ranks);
``hf`` is DCP's Hugging Face layout (``HuggingFaceStorageWriter(save_distributed=True)``: one
safetensors file per rank, the model's tensors only, no ``.metadata``). The test
suite runs it in a subprocess (tests/test_dcp.py); it is not a test module itself.
"""

from __future__ import annotations

import os
import socket
import sys
import warnings


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def state(torch):  # the full (unsharded) values, the same on every rank
    g = torch.Generator().manual_seed(0)
    return {
        "model": {
            "embed.weight": torch.randn(10, 6, generator=g),
            "proj.weight": torch.randn(4, 8, generator=g).to(torch.bfloat16),
            "odd": torch.arange(7, dtype=torch.int64),
            "norm.bias": torch.randn(5, generator=g),
        },
        "step": 42,
        "extra": {"lr": 0.5, "names": ["a", "b"]},
    }


def _rank(rank: int, world: int, port: int, out: str, formats: tuple[str, ...]) -> None:
    warnings.filterwarnings("ignore")
    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        mesh = init_device_mesh("cpu", (world,))
        full = state(torch)
        m = full["model"]
        sd = {
            "model": {
                "embed.weight": distribute_tensor(m["embed.weight"], mesh, [Shard(0)]),
                "proj.weight": distribute_tensor(m["proj.weight"], mesh, [Shard(1)]),
                "odd": distribute_tensor(m["odd"], mesh, [Shard(0)]),
                "norm.bias": distribute_tensor(m["norm.bias"], mesh, [Replicate()]),
            },
            "step": full["step"],
            "extra": full["extra"],
        }
        from torch.distributed.checkpoint.filesystem import FileSystemWriter, SerializationFormat

        for fmt in formats:
            if fmt == "hf":  # DCP's Hugging Face layout: one safetensors file per rank, tensors only
                from torch.distributed.checkpoint import HuggingFaceStorageWriter

                flat = {f"model.{k}": v for k, v in sd["model"].items()}
                dcp.save(flat, storage_writer=HuggingFaceStorageWriter(os.path.join(out, fmt), save_distributed=True))
                continue
            fmt_enum = SerializationFormat.SAFETENSORS if fmt == "safetensors" else SerializationFormat.TORCH_SAVE
            folder = os.path.join(out, fmt)
            dcp.save(sd, storage_writer=FileSystemWriter(folder, serialization_format=fmt_enum))
    finally:
        dist.destroy_process_group()


def main(out: str, formats: tuple[str, ...] = ("torch_save", "safetensors", "hf"), world: int = 2) -> None:
    import torch.multiprocessing as mp

    mp.start_processes(_rank, args=(world, _free_port(), out, formats), nprocs=world, start_method="spawn")


if __name__ == "__main__":
    main(sys.argv[1], tuple(sys.argv[2:]) or ("torch_save", "safetensors", "hf"))
