"""The benchmarks: one declarative entry per benchmark.

To add one (e.g. for a later issue): append a ``Bench`` to ``BENCHMARKS`` with the inputs it
needs (names from ``inputs.INPUTS``; add a recipe there for a new file), its cases (commands with
placeholders, see ``harness.Case``) and its floors (``harness.under_seconds``, ``under_rss_mb``,
``ratio_at_most``, ``times_faster``, or a ``Floor`` whose limit is a function of the inputs).
A baseline that needs an optional tool says so in ``requires`` and is skipped when it is missing.
Identical commands in several benchmarks are measured once per invocation.
"""

from __future__ import annotations

from harness import Bench, Case, ratio_at_most, times_faster, under_rss_mb, under_seconds

TIMED = ("{python}", "{bench}/timed.py")  # prints {"seconds": ...} for the call alone

# Cases several benchmarks share (same command -> measured once per invocation).
TORCH_LOAD_BIG_MMAP = ("torch.load(big.pt, mmap=True)", (*TIMED, "torch-load", "{big}", "--mmap"))
TORCH_LOAD_MANY = ("torch.load(many.pt)", (*TIMED, "torch-load", "{many}"))

BENCHMARKS: list[Bench] = [
    # ---- issue 2: the reader, `ckpt inspect`, `ckpt.load` ------------------------------------
    Bench(
        "inspect-big", 2, ("big",),
        about="`ckpt inspect --json` of a ~1.6 GB checkpoint as a whole process (reads only the zip "
              "directory and the pickle); baseline: a process that imports torch and mmap-loads it",
        cases=(
            Case("ckpt inspect --json", ("{ckpt}", "inspect", "{big}", "--json")),
            Case(TORCH_LOAD_BIG_MMAP[0], TORCH_LOAD_BIG_MMAP[1], role="baseline"),
            # Where the floor's 0.3 s goes before any checkpoint is read:
            Case("python startup", ("{python}", "-c", "pass"), role="info"),
            Case("import ckpt CLI", ("{python}", "-c", "import ckpt_cli.main"), role="info"),
        ),
        floors=(under_seconds("ckpt inspect --json", 0.3), under_rss_mb("ckpt inspect --json", 80)),
    ),
    Bench(
        "inspect-many", 2, ("many",),
        about="`ckpt inspect` of 100,000 small tensors as a whole process, JSON and the default rich "
              "rendering; baseline: a process that imports torch and loads the file",
        cases=(
            Case("ckpt inspect --json", ("{ckpt}", "inspect", "{many}", "--json")),
            Case("ckpt inspect (rich)", ("{ckpt}", "inspect", "{many}"), role="info",
                 vs=TORCH_LOAD_MANY[0]),
            Case(TORCH_LOAD_MANY[0], TORCH_LOAD_MANY[1], role="baseline"),
        ),
        floors=(under_seconds("ckpt inspect --json", 1.5),),
    ),
    Bench(
        "load-many", 2, ("many",),
        about="ckpt.load vs torch.load(weights_only=True) of 100,000 small tensors; the load call "
              "alone, timed inside processes that imported torch first",
        cases=(
            Case("ckpt.load(many.pt)", (*TIMED, "ckpt-load", "{many}"), timing="call"),
            Case(TORCH_LOAD_MANY[0], TORCH_LOAD_MANY[1], role="baseline", timing="call"),
        ),
        floors=(times_faster("ckpt.load(many.pt)", TORCH_LOAD_MANY[0], 5),),
    ),
    Bench(
        "load-big-mmap", 2, ("big",),
        about="ckpt.load(mmap=True) vs torch.load(mmap=True, weights_only=True) of a ~1.6 GB "
              "checkpoint (the call alone), and both without mmap for information",
        cases=(
            Case("ckpt.load(big.pt, mmap=True)", (*TIMED, "ckpt-load", "{big}", "--mmap"), timing="call"),
            Case(TORCH_LOAD_BIG_MMAP[0], TORCH_LOAD_BIG_MMAP[1], role="baseline", timing="call"),
            Case("ckpt.load(big.pt)", (*TIMED, "ckpt-load", "{big}"), role="info", timing="call",
                 vs="torch.load(big.pt)"),
            Case("torch.load(big.pt)", (*TIMED, "torch-load", "{big}"), role="info", timing="call"),
        ),
        floors=(ratio_at_most("ckpt.load(big.pt, mmap=True)", TORCH_LOAD_BIG_MMAP[0], 1.0,
                              "no slower than torch's mmap load"),),
    ),
    Bench(
        "load-many-numpy", 2, ("many",),
        about="ckpt.load(as_='numpy') of 100,000 small tensors in a process where importing torch "
              "fails (the call alone), for information",
        cases=(
            Case("ckpt.load(many.pt, as_=numpy)",
                 (*TIMED, "ckpt-load", "{many}", "--as", "numpy", "--no-torch"), role="info", timing="call",
                 vs=TORCH_LOAD_MANY[0]),
            Case(TORCH_LOAD_MANY[0], TORCH_LOAD_MANY[1], role="baseline", timing="call"),
        ),
    ),
    # ---- issue 6: `ckpt diff` --------------------------------------------------------------------
    Bench(
        "diff-identical", 6, ("big", "big_copy"),
        about="`ckpt diff --json` of two identical ~1.6 GB checkpoints (two files, same bytes): raw "
              "bytes compared chunk by chunk, nothing decoded; baseline: reading both files once with cat",
        cases=(
            Case("ckpt diff (identical)", ("{ckpt}", "diff", "{big}", "{big_copy}", "--json")),
            Case("cat A B (identical)", "cat {big} {big_copy} > /dev/null", role="baseline"),
            Case("torch.load both + torch.equal", (*TIMED, "torch-diff", "{big}", "{big_copy}"),
                 role="info", vs="cat A B (identical)"),
        ),
        floors=(
            ratio_at_most("ckpt diff (identical)", "cat A B (identical)", 1.5),
            under_rss_mb("ckpt diff (identical)", lambda inp: 2 * inp["big"].largest_tensor_bytes / 2**20 + 100,
                         "peak RSS at most twice the largest tensor + 100 MB"),
        ),
    ),
    Bench(
        "diff-different", 6, ("big", "big_other"),
        about="`ckpt diff --json` of two ~1.6 GB checkpoints that differ in every tensor (every value "
              "decoded: max abs/rel diff, mean, differing count, NaN/Inf, allclose); baseline: cat of both",
        cases=(
            Case("ckpt diff (different)", ("{ckpt}", "diff", "{big}", "{big_other}", "--json"), ok_codes=(1,)),
            Case("cat A B (different)", "cat {big} {big_other} > /dev/null", role="baseline"),
            Case("torch.load both + allclose", (*TIMED, "torch-diff", "{big}", "{big_other}", "--stats"),
                 role="info", vs="cat A B (different)"),
        ),
        floors=(
            ratio_at_most("ckpt diff (different)", "cat A B (different)", 4.0),
            under_rss_mb("ckpt diff (different)", lambda inp: 2 * inp["big"].largest_tensor_bytes / 2**20 + 100,
                         "peak RSS at most twice the largest tensor + 100 MB"),
        ),
    ),
]
