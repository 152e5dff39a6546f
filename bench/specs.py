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
]

# ---- issue 3: the writer, `ckpt.save`, `ckpt relocate` -------------------------------------------
# ckpt fsyncs what it writes before renaming it into place (atomic and durable); cp and torch.save
# do not. Each comparison is therefore made twice, like with like, in separate benchmarks (so that
# the runs interleaved in one benchmark all leave the disk in the same state): without fsync
# (--no-fsync / fsync=False: still atomic, not durable across a power cut) against cp / torch.save,
# and with fsync against cp + sync / torch.save + fsync.

TORCH_SAVE_BIG = ("torch.save", (*TIMED, "torch-save", "{big}", "--out", "{tmp}/out.pt"))
TORCH_SAVE_MANY = ("torch.save", (*TIMED, "torch-save", "{many}", "--out", "{tmp}/out.pt"))

BENCHMARKS += [
    Bench(
        "relocate-big", 3, ("big",),
        about="`ckpt relocate --no-fsync` of the ~1.6 GB checkpoint, every storage re-tagged "
              "(cpu -> cuda:0), as a whole process, vs cp of the same file",
        cases=(
            Case("ckpt relocate --no-fsync",
                 ("{ckpt}", "relocate", "{big}", "{tmp}/out.pt", "--map", "cpu=cuda:0", "--no-fsync")),
            Case("cp", "cp {big} {tmp}/out.pt", role="baseline"),
        ),
        floors=(ratio_at_most("ckpt relocate --no-fsync", "cp", 1.5, "at most 1.5x cp (neither fsyncs)"),
                under_rss_mb("ckpt relocate --no-fsync", 100)),
    ),
    Bench(
        "relocate-big-durable", 3, ("big",),
        about="`ckpt relocate` (fsync before the rename, the default) of the ~1.6 GB checkpoint vs cp "
              "followed by a sync of the copy",
        cases=(
            Case("ckpt relocate", ("{ckpt}", "relocate", "{big}", "{tmp}/out.pt", "--map", "cpu=cuda:0")),
            Case("cp + sync", "cp {big} {tmp}/out.pt && sync {tmp}/out.pt", role="baseline"),
        ),
        floors=(ratio_at_most("ckpt relocate", "cp + sync", 1.5, "at most 1.5x cp + sync (both durable)"),
                under_rss_mb("ckpt relocate", 100)),
    ),
    Bench(
        "save-big", 3, ("big",),
        about="ckpt.save(fsync=False) vs torch.save of the ~1.6 GB state dict held in memory (the call "
              "alone; the state dict is loaded with torch.load first, untimed)",
        cases=(
            Case("ckpt.save (fsync=False)", (*TIMED, "ckpt-save", "{big}", "--out", "{tmp}/out.pt", "--no-fsync"),
                 timing="call"),
            Case(TORCH_SAVE_BIG[0], TORCH_SAVE_BIG[1], role="baseline", timing="call"),
        ),
        floors=(ratio_at_most("ckpt.save (fsync=False)", "torch.save", 1.0, "no slower than torch.save"),),
    ),
    Bench(
        "save-big-durable", 3, ("big",),
        about="ckpt.save (fsync, the default) vs torch.save followed by an fsync of the file, ~1.6 GB state "
              "dict in memory (the call alone)",
        cases=(
            Case("ckpt.save", (*TIMED, "ckpt-save", "{big}", "--out", "{tmp}/out.pt"), timing="call"),
            Case("torch.save + fsync", (*TIMED, "torch-save", "{big}", "--out", "{tmp}/out.pt", "--fsync"),
                 role="baseline", timing="call"),
        ),
        floors=(ratio_at_most("ckpt.save", "torch.save + fsync", 1.0, "no slower than torch.save + fsync"),),
    ),
    Bench(
        "save-many", 3, ("many",),
        about="ckpt.save(fsync=False) vs torch.save of 100,000 small tensors held in memory (the pickler's "
              "share); ckpt.save with its fsync for information",
        cases=(
            Case("ckpt.save (fsync=False)", (*TIMED, "ckpt-save", "{many}", "--out", "{tmp}/out.pt", "--no-fsync"),
                 timing="call"),
            Case(TORCH_SAVE_MANY[0], TORCH_SAVE_MANY[1], role="baseline", timing="call"),
            Case("ckpt.save", (*TIMED, "ckpt-save", "{many}", "--out", "{tmp}/out.pt"), role="info",
                 timing="call", vs="torch.save"),
        ),
        floors=(ratio_at_most("ckpt.save (fsync=False)", "torch.save", 1.0, "no slower than torch.save"),),
    ),
]
