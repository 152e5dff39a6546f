"""Write one benchmark input from its recipe, in a child process of the harness.

    python bench/gen_input.py RECIPE_JSON OUT_PATH

The harness (``inputs.py``) calls this with a temporary ``OUT_PATH`` and renames the result into
place when it succeeds, so a killed generation never leaves a half-written input behind. Big
inputs need about their own size in memory while torch.save writes them.

Recipe kinds (``recipe["kind"]``); add a function to ``GENERATORS`` for a new one:

* ``numpy_values``: a small model plus ``scalars`` numpy scalars (float64 losses and int64 steps)
  and ``arrays`` float32 arrays of ``array_shape``, as a training loop's history.
* ``state_dict``: ``count`` tensors named by ``keys`` (a ``str.format`` template over ``n`` (the
  index), ``i = n // group`` and ``j = n % group``), each of ``shape`` and ``dtype``, filled from
  ``torch.randn`` seeded with ``seed``; saved as ``format``: ``torch-zip`` (torch.save's
  default), ``torch-legacy`` (``_use_new_zipfile_serialization=False``) or ``safetensors``.
"""

from __future__ import annotations

import json
import sys
from collections import OrderedDict
from typing import Any, Callable


def _state_dict(recipe: dict[str, Any]) -> "OrderedDict[str, Any]":
    import torch

    dtype = getattr(torch, recipe.get("dtype", "float32"))
    shape = tuple(recipe["shape"])
    group = int(recipe.get("group", 1))
    gen = torch.Generator().manual_seed(int(recipe.get("seed", 0)))
    sd: OrderedDict[str, Any] = OrderedDict()
    for n in range(int(recipe["count"])):
        name = recipe["keys"].format(n=n, i=n // group, j=n % group)
        sd[name] = torch.randn(shape, generator=gen, dtype=torch.float32).to(dtype)
    return sd


def make_state_dict(recipe: dict[str, Any], out: str) -> None:
    sd = _state_dict(recipe)
    fmt = recipe.get("format", "torch-zip")
    if fmt == "torch-zip":
        import torch

        torch.save(sd, out)
    elif fmt == "torch-legacy":
        import torch

        torch.save(sd, out, _use_new_zipfile_serialization=False)
    elif fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(dict(sd), out)
    else:
        raise SystemExit(f"gen_input: unknown format {fmt!r}")


def make_sharded(recipe: dict[str, Any], out: str) -> None:
    """A folder of ``shards`` safetensors files and a ``model.safetensors.index.json`` naming them,
    as Hugging Face's save_pretrained lays them out."""
    import json
    import os

    from safetensors.torch import save_file

    sd = _state_dict(recipe)
    n = int(recipe["shards"])
    names = list(sd)
    per = -(-len(names) // n)
    os.makedirs(out)
    weight_map = {}
    for s in range(n):
        shard = f"model-{s + 1:05d}-of-{n:05d}.safetensors"
        part = {k: sd[k] for k in names[s * per : (s + 1) * per]}
        save_file(part, os.path.join(out, shard), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, shard))
    total = sum(t.numel() * t.element_size() for t in sd.values())
    with open(os.path.join(out, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
def make_numpy_values(recipe: dict[str, Any], out: str) -> None:
    """A checkpoint whose non-tensor state is numpy values, as training loops log them."""
    import numpy as np
    import torch

    rng = np.random.default_rng(int(recipe.get("seed", 0)))
    shape = tuple(recipe["array_shape"])
    history = [{"loss": np.float64(rng.random()), "step": np.int64(i)} for i in range(int(recipe["scalars"]) // 2)]
    stats = [rng.random(shape, dtype=np.float32) for _ in range(int(recipe["arrays"]))]
    model = {f"layer{i}.weight": torch.randn(8, 8) for i in range(4)}
    torch.save({"model": model, "history": history, "stats": stats, "best": np.float64(0.5)}, out)


def make_folder(recipe: dict[str, Any], out: str) -> None:
    """``count`` small checkpoints in one folder, each a state dict of ``tensors`` tensors of
    ``shape`` (the ``state_dict`` recipe), named ``ckpt_00000.pt`` ... (issue 7's folder scan)."""
    import os

    os.makedirs(out)
    for n in range(int(recipe["count"])):
        one = {"kind": "state_dict", "count": recipe["tensors"], "keys": recipe.get("keys", "layer{n}.weight"),
               "shape": recipe["shape"], "dtype": recipe.get("dtype", "float32"), "seed": n,
               "format": recipe.get("format", "torch-zip")}
        make_state_dict(one, os.path.join(out, f"ckpt_{n:05d}.pt"))


GENERATORS: dict[str, Callable[[dict[str, Any], str], None]] = {
    "state_dict": make_state_dict,
    "sharded": make_sharded,
    "numpy_values": make_numpy_values,
    "folder": make_folder,
}


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        raise SystemExit(__doc__)
    recipe = json.loads(argv[0])
    kind = recipe.get("kind")
    if kind not in GENERATORS:
        raise SystemExit(f"gen_input: unknown recipe kind {kind!r} (known: {', '.join(GENERATORS)})")
    GENERATORS[kind](recipe, argv[1])


if __name__ == "__main__":
    main(sys.argv[1:])
