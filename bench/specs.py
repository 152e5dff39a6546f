"""The benchmarks: one declarative entry per benchmark.

To add one (e.g. for a later issue): append a ``Bench`` to ``BENCHMARKS`` with the inputs it
needs (names from ``inputs.INPUTS``; add a recipe there for a new file), its cases (commands with
placeholders, see ``harness.Case``) and its floors (``harness.under_seconds``, ``under_rss_mb``,
``ratio_at_most``, ``times_faster``, or a ``Floor`` whose limit is a function of the inputs).
A baseline that needs an optional tool says so in ``requires`` and is skipped when it is missing.
Identical commands in several benchmarks are measured once per invocation.
"""

from __future__ import annotations

from harness import Bench, Case, Floor, ratio_at_most, times_faster, under_rss_mb, under_seconds

TIMED = ("{python}", "{bench}/timed.py")  # prints {"seconds": ...} for the call alone

# Cases several benchmarks share (same command -> measured once per invocation).
TORCH_LOAD_BIG_MMAP = ("torch.load(big.pt, mmap=True)", (*TIMED, "torch-load", "{big}", "--mmap"))
TORCH_LOAD_MANY = ("torch.load(many.pt)", (*TIMED, "torch-load", "{many}"))
TORCH_LOAD_LEGACY = ("torch.load(big-legacy.pt)", (*TIMED, "torch-load", "{legacy}"))
ST_LOAD = ("safetensors load_file(big.safetensors)", (*TIMED, "st-load", "{st}"))
ST_SHARDED_LOAD = ("safetensors load_file of each shard", (*TIMED, "st-sharded-load", "{sharded}"))
# what reading a safetensors header costs with the library itself: names and shapes, no data
ST_HEADER = (
    "safetensors header (safe_open, shapes)",
    ("{python}", "-c", "import sys; from safetensors import safe_open; f = safe_open(sys.argv[1], 'numpy'); "
     "[f.get_slice(k).get_shape() for k in f.keys()]", "{st}"),
)
ST_SHARDED_HEADERS = (
    "safetensors headers of every shard",
    ("{python}", "-c", "import sys, json, os; from safetensors import safe_open; d = sys.argv[1]; "
     "m = json.load(open(os.path.join(d, 'model.safetensors.index.json')))['weight_map']; "
     "[[f.get_slice(k).get_shape() for k in f.keys()] for f in "
     "(safe_open(os.path.join(d, s), 'numpy') for s in dict.fromkeys(m.values()))]", "{sharded}"),
)

PICKLESCAN = ("{python}", "-m", "picklescan", "-p")  # installed for the comparison only, not a dependency

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
    # ---- issue 4: legacy files, safetensors, sharded checkpoints ------------------------------
    Bench(
        "inspect-legacy", 4, ("legacy",),
        about="`ckpt inspect --json` of a ~1 GB legacy (non-zip) torch file as a whole process: the "
              "pickles and one 8-byte size field per storage; baseline: a process that imports torch "
              "and loads it (torch cannot mmap this format)",
        cases=(
            Case("ckpt inspect --json", ("{ckpt}", "inspect", "{legacy}", "--json")),
            Case(TORCH_LOAD_LEGACY[0], TORCH_LOAD_LEGACY[1], role="baseline"),
            # Where the 0.5 s goes before the file is read (the same commands as inspect-big's):
            Case("python startup", ("{python}", "-c", "pass"), role="info"),
            Case("import ckpt CLI", ("{python}", "-c", "import ckpt_cli.main"), role="info"),
            Case("ckpt.inspect() call", (*TIMED, "ckpt-inspect", "{legacy}"), role="info", timing="call"),
        ),
        floors=(under_seconds("ckpt inspect --json", 0.5, "a 1 GB legacy file inspects in under 0.5 s"),
                under_rss_mb("ckpt inspect --json", 80)),
    ),
    Bench(
        "load-legacy", 4, ("legacy",),
        about="ckpt.load vs torch.load(weights_only=True) of the ~1 GB legacy file, the call alone; "
              "ckpt.load(mmap=True), which torch refuses for this format, for information",
        cases=(
            Case("ckpt.load(big-legacy.pt)", (*TIMED, "ckpt-load", "{legacy}"), timing="call"),
            Case(TORCH_LOAD_LEGACY[0], TORCH_LOAD_LEGACY[1], role="baseline", timing="call"),
            Case("ckpt.load(big-legacy.pt, mmap=True)", (*TIMED, "ckpt-load", "{legacy}", "--mmap"), role="info",
                 timing="call", vs=TORCH_LOAD_LEGACY[0]),
        ),
    ),
    Bench(
        "inspect-safetensors", 4, ("st",),
        about="`ckpt inspect --json` of a ~1 GB safetensors file (the header only) as a whole process; "
              "baseline: a process reading names and shapes with the safetensors library",
        cases=(
            Case("ckpt inspect --json", ("{ckpt}", "inspect", "{st}", "--json")),
            Case(ST_HEADER[0], ST_HEADER[1], role="baseline"),
        ),
        floors=(under_seconds("ckpt inspect --json", 0.3, "inspect reads only metadata (the zip floor)"),
                under_rss_mb("ckpt inspect --json", 80)),
    ),
    Bench(
        "load-safetensors", 4, ("st",),
        about="ckpt.load(mmap=True) vs safetensors.torch.load_file of the ~1 GB file, the call alone "
              "(load_file maps the file too: its tensors are views of the mapping); the copying load and "
              "the numpy flavours for information",
        cases=(
            Case("ckpt.load(big.safetensors, mmap=True)", (*TIMED, "ckpt-load", "{st}", "--mmap"), timing="call"),
            Case(ST_LOAD[0], ST_LOAD[1], role="baseline", timing="call"),
            Case("ckpt.load(big.safetensors)", (*TIMED, "ckpt-load", "{st}"), role="info", timing="call",
                 vs=ST_LOAD[0]),
            Case("ckpt.load(big.safetensors, as_=numpy)", (*TIMED, "ckpt-load", "{st}", "--as", "numpy",
                                                            "--no-torch"), role="info", timing="call",
                 vs="safetensors.numpy load_file"),
            Case("safetensors.numpy load_file", (*TIMED, "st-load", "{st}", "--as", "numpy"), role="info",
                 timing="call"),
        ),
    ),
    Bench(
        "inspect-sharded", 4, ("sharded",),
        about="`ckpt inspect --json` of a folder of 16 safetensors shards and their index (headers "
              "only) as a whole process; baseline: a process reading every shard's header with safetensors",
        cases=(
            Case("ckpt inspect --json", ("{ckpt}", "inspect", "{sharded}", "--json")),
            Case(ST_SHARDED_HEADERS[0], ST_SHARDED_HEADERS[1], role="baseline"),
        ),
        floors=(under_seconds("ckpt inspect --json", 0.5, "inspect reads only metadata"),),
    ),
    Bench(
        "load-sharded", 4, ("sharded",),
        about="ckpt.load(mmap=True) of the sharded folder vs reading its index and load_file of each "
              "shard (which maps each shard), the call alone; the copying load for information",
        cases=(
            Case("ckpt.load(sharded/, mmap=True)", (*TIMED, "ckpt-load", "{sharded}", "--mmap"), timing="call"),
            Case(ST_SHARDED_LOAD[0], ST_SHARDED_LOAD[1], role="baseline", timing="call"),
            Case("ckpt.load(sharded/)", (*TIMED, "ckpt-load", "{sharded}"), role="info", timing="call",
                 vs=ST_SHARDED_LOAD[0]),
        ),
    ),
    # ---- issue 4 (part B): numpy values and other profiled objects ---------------------------
    Bench(
        "load-numpy-values", 4, ("numpy_values",),
        about="ckpt.load of a checkpoint holding 50,000 numpy scalars and 5,000 numpy arrays (read "
              "by default, rebuilt by ckpt's own code) vs torch.load(weights_only=True) with the "
              "numpy globals allowlisted (torch refuses the file otherwise); the call alone",
        cases=(
            Case("ckpt.load(numpy_values.pt)", (*TIMED, "ckpt-load", "{numpy_values}"), timing="call"),
            Case("torch.load(numpy_values.pt, numpy allowlisted)",
                 (*TIMED, "torch-load-numpy-allowed", "{numpy_values}"), role="baseline", timing="call"),
            Case("ckpt.load(numpy_values.pt, as_=numpy)",
                 (*TIMED, "ckpt-load", "{numpy_values}", "--as", "numpy", "--no-torch"), role="info",
                 timing="call", vs="torch.load(numpy_values.pt, numpy allowlisted)"),
            Case("ckpt inspect numpy_values.pt --json", ("{ckpt}", "inspect", "{numpy_values}", "--json"),
                 role="info"),
        ),
        floors=(ratio_at_most("ckpt.load(numpy_values.pt)", "torch.load(numpy_values.pt, numpy allowlisted)",
                              2.0, "numpy values cost at most twice what torch's allowlisted load costs"),),
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
    # ---- issue 7: `ckpt scan` ---------------------------------------------------------------
    Bench(
        "scan-big", 7, ("big",),
        about="`ckpt scan --json` of a ~1.6 GB checkpoint as a whole process: it reads the zip directory, "
              "the local headers and the pickle, never the 1.6 GB of storages; picklescan for information",
        cases=(
            Case("ckpt scan --json", ("{ckpt}", "scan", "{big}", "--json")),
            Case("python startup", ("{python}", "-c", "pass"), role="baseline"),
            Case("picklescan", (*PICKLESCAN, "{big}"), role="info", vs="python startup",
                 requires=("module:picklescan",)),
        ),
        floors=(under_seconds("ckpt scan --json", 0.3),),
    ),
    Bench(
        "scan-many", 7, ("many",),
        about="`ckpt scan` of 100,000 small tensors (a ~10 MB pickle: 3 million opcodes) as a whole process, "
              "against picklescan (installed for the comparison only) in the same run",
        cases=(
            Case("ckpt scan --json", ("{ckpt}", "scan", "{many}", "--json")),
            Case("picklescan", (*PICKLESCAN, "{many}"), role="baseline", requires=("module:picklescan",)),
            Case("ckpt scan (opcode loop only)", ("{python}", "-c",
                 "import sys, ckpt.scanner as s; r = s.scan_file(sys.argv[1], fast=False); sys.exit(r.status != 'clean')",
                 "{many}"), role="info", vs="picklescan"),
        ),
        floors=(times_faster("ckpt scan --json", "picklescan", 10),),
    ),
    Bench(
        "scan-folder", 7, ("folder",),
        about="`ckpt scan` of a folder of 1,000 small checkpoints (worker processes, one per CPU); one "
              "process and picklescan for information",
        cases=(
            Case("ckpt scan --json", ("{ckpt}", "scan", "{folder}", "--json")),
            Case("ckpt scan --jobs 1", ("{ckpt}", "scan", "{folder}", "--json", "--jobs", "1"), role="baseline"),
            Case("picklescan", (*PICKLESCAN, "{folder}"), role="info", vs="ckpt scan --jobs 1",
                 requires=("module:picklescan",)),
        ),
        floors=(under_seconds("ckpt scan --json", 10),),
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

# ---- issue 5: `ckpt convert` ---------------------------------------------------------------------
# Floors: at most 1.5x cp of the source file, peak RSS at most the largest tensor (8 MB here) +
# 100 MB. The usual way (torch.load + safetensors.torch.save_file, or load_file + torch.save) runs
# in the same invocation for comparison. --no-fsync, like cp.

USUAL_TO_ST = ("{python} -c 'import sys, torch; from safetensors.torch import save_file; "
               "save_file(torch.load(sys.argv[1], weights_only=True), sys.argv[2])' {big} {tmp}/usual.safetensors")
USUAL_TO_PT = ("{python} -c 'import sys, torch; from safetensors.torch import load_file; "
               "torch.save(load_file(sys.argv[1]), sys.argv[2])' {st} {tmp}/usual.pt")

BENCHMARKS += [
    Bench(
        "convert-big-to-st", 5, ("big",),
        about="`ckpt convert --no-fsync` of the ~1.6 GB fp32 checkpoint to safetensors vs cp of the file, "
              "and the usual way (torch.load + safetensors.torch.save_file)",
        cases=(
            Case("ckpt convert --no-fsync", ("{ckpt}", "convert", "{big}", "{tmp}/out.safetensors", "--no-fsync")),
            Case("cp", "cp {big} {tmp}/out.pt", role="baseline"),
            Case("torch.load + save_file", USUAL_TO_ST, role="info", vs="cp"),
        ),
        floors=(ratio_at_most("ckpt convert --no-fsync", "cp", 1.5, "at most 1.5x cp"),
                under_rss_mb("ckpt convert --no-fsync", 108, "peak RSS under the largest tensor (8 MB) + 100 MB")),
    ),
    Bench(
        "convert-st-to-pt", 5, ("st",),
        about="`ckpt convert --no-fsync` of a 1 GB fp32 safetensors file (128 tensors of [2000, 1000], the "
              "big checkpoint's tensor shape) to torch's zip format vs cp of the file, and the usual way "
              "(safetensors.torch.load_file + torch.save)",
        cases=(
            Case("ckpt convert --no-fsync", ("{ckpt}", "convert", "{st}", "{tmp}/out.pt", "--no-fsync")),
            Case("cp", "cp {st} {tmp}/out.safetensors", role="baseline"),
            Case("load_file + torch.save", USUAL_TO_PT, role="info", vs="cp"),
        ),
        floors=(ratio_at_most("ckpt convert --no-fsync", "cp", 1.5, "at most 1.5x cp"),
                under_rss_mb("ckpt convert --no-fsync", 108, "peak RSS under the largest tensor (8 MB) + 100 MB")),
    ),
]

# ---- issue 8: torch.distributed.checkpoint folders -----------------------------------------------
# Consolidating a sharded DCP folder: `ckpt convert DIR out.safetensors` (every tensor assembled
# from its chunks and written whole, one at a time); ckpt.dcp_save of the opened folder and the
# read alone for information.

BENCHMARKS += [
    Bench(
        "dcp-consolidate", 8, ("dcp",),
        about="consolidating a ~1.6 GB DCP folder written by 2 gloo ranks (Shard(0)/Shard(1)): "
              "`ckpt convert DIR out.safetensors` (no fsync; row shards copied file to file, column shards "
              "assembled in memory) vs `cp -r` of the folder; ckpt.dcp_save, the read alone, ckpt.load and torch's "
              "dcp_to_torch_save for information",
        cases=(
            Case("ckpt convert dcp/ out.safetensors --no-fsync",
                 ("{ckpt}", "convert", "{dcp}", "{tmp}/out.safetensors", "--no-fsync")),
            Case("ckpt.dcp_save(open(dcp/)) --no-fsync",
                 (*TIMED, "ckpt-dcp-save", "{dcp}", "--out", "{tmp}/out", "--no-fsync"), role="info", vs="cp -r"),
            Case("cp -r", "cp -r {dcp} {tmp}/out", role="baseline"),
            Case("read every tensor (read_into)", (*TIMED, "ckpt-dcp-read", "{dcp}"), role="info", vs="cp -r"),
            Case("ckpt.load(dcp/)", (*TIMED, "ckpt-load", "{dcp}"), role="info", vs="cp -r"),
            Case("dcp_to_torch_save", (*TIMED, "dcp-to-torch-save", "{dcp}", "--out", "{tmp}/out.pt"),
                 role="info", vs="cp -r"),
        ),
        floors=(
            ratio_at_most("ckpt convert dcp/ out.safetensors --no-fsync", "cp -r", 2.0, "at most 2x cp -r of the folder"),
            Floor("ckpt convert dcp/ out.safetensors --no-fsync",
                  lambda inputs: inputs["dcp"].largest_tensor_bytes / 2**20 + 100, "rss_mb",
                  text="peak RSS at most the largest tensor + 100 MB"),
        ),
    ),
]
