"""The benchmark model (Case, Floor, Bench) and the machinery that measures it.

Every case is a whole process run under ``/usr/bin/time -v``: the harness takes its wall time
(``perf_counter`` around the process) and its peak RSS ("Maximum resident set size"). A case
with ``timing="call"`` also prints a JSON line ``{"seconds": ...}`` (see ``timed.py``) and is
judged by those seconds instead of the process's.

Runs of the cases of one benchmark are interleaved (A B C, A B C, ...) so that the noise of a
shared machine falls on all of them alike, and ratios are taken between medians measured in the
same invocation. Before each run the harness calls ``sync`` (untimed), so the writeback of what
one run wrote is not charged to the next. A case whose rendered command equals one already measured in this invocation
(a baseline two benchmarks share) is measured once and reused.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROLES = ("subject", "baseline", "info")
TIMINGS = ("process", "call")
METRICS = ("seconds", "rss_mb")


@dataclass(frozen=True)
class Case:
    """One command to measure.

    ``cmd`` is an argv (a tuple, run directly) or a shell string (run with ``sh -c``), with
    placeholders: ``{python}`` (the interpreter running the harness), ``{ckpt}`` (the console
    script beside it), ``{bench}`` (this folder), ``{workdir}``, ``{tmp}`` (an empty scratch folder
    made for each run and removed after it) and one per input (``{big}``, ``{many}``, ...).

    ``role``: ``subject`` (what the floors judge), ``baseline`` (what it is compared with) or
    ``info`` (printed for context). ``vs``: the label of the case to take the ratio against;
    a subject's default is the benchmark's first baseline, an info case has none unless given. ``timing``: ``process`` (whole-process wall
    seconds) or ``call`` (the seconds the command prints; see timed.py). ``requires``:
    ``"module:NAME"`` (importable by ``{python}``) or ``"tool:NAME"`` (on PATH or beside
    ``{python}``); a case whose requirement is missing is skipped with a note.
    """

    label: str
    cmd: str | tuple[str, ...]
    role: str = "subject"
    timing: str = "process"
    vs: str | None = None
    requires: tuple[str, ...] = ()
    ok_codes: tuple[int, ...] = (0,)
    show: str | None = None  # the command as the table shows it; default: cmd with short names

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"{self.label}: role must be one of {ROLES}")
        if self.timing not in TIMINGS:
            raise ValueError(f"{self.label}: timing must be one of {TIMINGS}")


Limit = float | Callable[[Mapping[str, Any]], float]


@dataclass(frozen=True)
class Floor:
    """A bound from an issue: ``metric(case) < limit``, or ``metric(case) / metric(vs) <= limit``.

    ``limit`` may be a function of the inputs (``{name: inputs.Input}``), for bounds such as
    "peak RSS at most the largest tensor + 100 MB".
    """

    case: str
    limit: Limit
    metric: str = "seconds"
    vs: str | None = None
    text: str = ""  # how the issue says it, e.g. "under 0.3 s"

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"floor on {self.case}: metric must be one of {METRICS}")


def under_seconds(case: str, seconds: Limit, text: str = "") -> Floor:
    return Floor(case, seconds, "seconds", text=text or f"under {seconds} s")


def under_rss_mb(case: str, mb: Limit, text: str = "") -> Floor:
    return Floor(case, mb, "rss_mb", text=text or f"peak RSS under {mb} MB")


def ratio_at_most(case: str, vs: str, ratio: float, text: str = "", metric: str = "seconds") -> Floor:
    return Floor(case, ratio, metric, vs=vs, text=text or f"at most {ratio}x {vs}")


def times_faster(case: str, vs: str, factor: float, text: str = "") -> Floor:
    return Floor(case, 1.0 / factor, "seconds", vs=vs, text=text or f"at least {factor}x faster than {vs}")


@dataclass(frozen=True)
class Bench:
    name: str
    issue: int | None
    inputs: tuple[str, ...]
    cases: tuple[Case, ...]
    floors: tuple[Floor, ...] = ()
    about: str = ""

    def __post_init__(self) -> None:
        labels = [c.label for c in self.cases]
        if len(set(labels)) != len(labels):
            raise ValueError(f"{self.name}: case labels must be unique")
        for f in self.floors:
            for ref in (f.case, f.vs):
                if ref is not None and ref not in labels:
                    raise ValueError(f"{self.name}: floor refers to unknown case {ref!r}")
        for c in self.cases:
            if c.vs is not None and c.vs not in labels:
                raise ValueError(f"{self.name}: {c.label} compares with unknown case {c.vs!r}")

    def vs_of(self, case: Case) -> str | None:
        if case.vs is not None:
            return case.vs
        if case.role != "subject":
            return None
        return next((c.label for c in self.cases if c.role == "baseline"), None)


# ---------------------------------------------------------------------------------------------
# Running


@dataclass
class Run:
    wall: float
    rss_kb: int | None
    rc: int
    call: float | None = None  # seconds the command printed (timing="call")
    extra: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    cpu: float | None = None  # user + system CPU seconds of the process (/usr/bin/time -v)


@dataclass
class Measured:
    """The runs of one command line (shared by every case that renders to it)."""

    argv: list[str]
    runs: list[Run] = field(default_factory=list)
    skipped: str | None = None  # why the command was not run
    error: str | None = None  # why it stopped

    @property
    def good(self) -> list[Run]:
        return [r for r in self.runs if r.error is None]


@dataclass
class Result:
    """A case's view of its command's runs: judged by its own timing (process or call)."""

    m: Measured
    timing: str
    shown: str

    argv = property(lambda self: self.m.argv)
    runs = property(lambda self: self.m.runs)
    good = property(lambda self: self.m.good)
    skipped = property(lambda self: self.m.skipped)
    error = property(lambda self: self.m.error)

    def seconds(self) -> list[float]:
        if self.timing == "call":
            return [r.call for r in self.good if r.call is not None]
        return [r.wall for r in self.good]

    def run_seconds(self, run: Run) -> float | None:
        return run.call if self.timing == "call" else run.wall

    def median(self, metric: str = "seconds") -> float | None:
        if metric == "seconds":
            xs = self.seconds()
        else:
            xs = [r.rss_kb / 1024 for r in self.good if r.rss_kb is not None]
        return statistics.median(xs) if xs else None

    def summary(self) -> dict[str, Any]:
        s = self.seconds()
        walls = [r.wall for r in self.good]
        # CPU seconds (user + system) of the whole process: on a machine shared with other work,
        # a ratio of CPU times is steadier than one of wall times (in the results JSON only)
        cpus = [r.cpu for r in self.good if r.cpu is not None]
        return {
            "n": len(s),
            "median_seconds": statistics.median(s) if s else None,
            "min_seconds": min(s) if s else None,
            "max_seconds": max(s) if s else None,
            "median_process_seconds": statistics.median(walls) if walls else None,
            "median_rss_mb": self.median("rss_mb"),
            "median_cpu_seconds": statistics.median(cpus) if cpus else None,
        }


_RSS = re.compile(r"Maximum resident set size \(kbytes\):\s*(\d+)")
_CPU = re.compile(r"(?:User|System) time \(seconds\):\s*([\d.]+)")


class Runner:
    """Measures cases: renders their commands, checks requirements, runs and parses them."""

    def __init__(self, *, python: str, workdir: Path, inputs: Mapping[str, Path], timeout: float,
                 budget: float, repo: Path, log: Callable[[str], None] = print) -> None:
        self.python = python
        self.workdir = workdir
        self.inputs = dict(inputs)
        self.timeout = timeout
        self.budget = budget
        self.repo = repo
        self.log = log
        self.ckpt = self._find_tool("ckpt") or "ckpt"
        self.cache: dict[tuple[str, ...], Measured] = {}
        self.capture: set[tuple[str, ...]] = set()
        self._have: dict[str, bool] = {}

    def plan(self, benches: Sequence[Bench]) -> None:
        """Note which command lines some case times by the seconds they print (stdout is read)."""
        for b in benches:
            for c in b.cases:
                if c.timing == "call":
                    self.capture.add(tuple(self.render(c)))

    # --- commands

    def _context(self, tmp: str, display: bool) -> dict[str, str]:
        if display:
            ctx = {"python": "python", "ckpt": "ckpt", "bench": "bench", "workdir": "out", "tmp": "$TMP"}
            ctx.update({k: Path(v).name for k, v in self.inputs.items()})
        else:
            ctx = {"python": self.python, "ckpt": self.ckpt, "bench": str(Path(__file__).resolve().parent),
                   "workdir": str(self.workdir), "tmp": tmp}
            ctx.update({k: str(v) for k, v in self.inputs.items()})
        return ctx

    def render(self, case: Case, tmp: str = "{tmp}") -> list[str]:
        ctx = self._context(tmp, display=False)
        if isinstance(case.cmd, str):
            return ["sh", "-c", case.cmd.format_map({k: shlex.quote(v) for k, v in ctx.items()})]
        return [part.format_map(ctx) for part in case.cmd]

    def shown(self, case: Case) -> str:
        if case.show:
            return case.show
        ctx = self._context("", display=True)
        if isinstance(case.cmd, str):
            return case.cmd.format_map(ctx)
        text = " ".join(shlex.quote(p.format_map(ctx)) for p in case.cmd)
        return text if case.timing == "call" else text + " > /dev/null"

    # --- requirements

    def _find_tool(self, name: str) -> str | None:
        beside = Path(self.python).parent / name
        if beside.exists() and os.access(beside, os.X_OK):
            return str(beside)
        return shutil.which(name)

    def missing(self, case: Case) -> list[str]:
        out = []
        for req in case.requires:
            if req not in self._have:
                kind, _, name = req.partition(":")
                if kind == "module":
                    probe = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({name!r}) is None)"
                    self._have[req] = subprocess.run([self.python, "-c", probe]).returncode == 0
                elif kind == "tool":
                    self._have[req] = self._find_tool(name) is not None
                else:
                    raise ValueError(f"{case.label}: requirement {req!r} must be module:NAME or tool:NAME")
            if not self._have[req]:
                out.append(req.partition(":")[2])
        return out

    # --- running

    def run_once(self, case: Case) -> Run:
        scratch = Path(tempfile.mkdtemp(prefix="run-", dir=self.workdir))
        fd, timefile = tempfile.mkstemp(prefix="time-", dir=self.workdir)
        os.close(fd)
        argv = self.render(case, tmp=str(scratch))
        capture = case.timing == "call" or tuple(self.render(case)) in self.capture
        try:
            # settle: the page cache the previous run dirtied is written back before this run's clock
            # starts, so one case's writeback is not charged to the next (writes vary 10x here otherwise)
            if hasattr(os, "sync"):
                os.sync()
            t0 = time.perf_counter()
            proc = subprocess.Popen(
                ["/usr/bin/time", "-v", "-o", timefile, *argv],
                stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
                stderr=subprocess.PIPE, cwd=self.repo, start_new_session=True,
            )
            try:
                out, err = proc.communicate(timeout=self.timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
                return Run(time.perf_counter() - t0, None, -9, error=f"timed out after {self.timeout:g} s")
            wall = time.perf_counter() - t0
            timed = Path(timefile).read_text(errors="replace")
            m = _RSS.search(timed)
            cpu = [float(x) for x in _CPU.findall(timed)]
            run = Run(wall, int(m.group(1)) if m else None, proc.returncode, cpu=sum(cpu) if len(cpu) == 2 else None)
            if proc.returncode not in case.ok_codes:
                tail = (err or b"").decode(errors="replace").strip().splitlines()
                run.error = f"exit code {proc.returncode}" + (f": {tail[-1]}" if tail else "")
                return run
            if capture:
                lines = [ln for ln in (out or b"").decode(errors="replace").splitlines() if ln.startswith("{")]
                try:
                    data = json.loads(lines[-1])
                    run.call = float(data.pop("seconds"))
                    run.extra = data
                except (IndexError, KeyError, ValueError):
                    run.error = "no JSON line with 'seconds' on stdout"
            return run
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
            Path(timefile).unlink(missing_ok=True)

    def measure(self, bench: Bench, repeat: int, warmup: int) -> dict[str, Result]:
        """Measure every case of ``bench`` (interleaved), reusing commands measured before."""
        results: dict[str, Result] = {}
        todo: list[tuple[Case, Measured]] = []
        for case in bench.cases:
            argv = tuple(self.render(case))
            if argv in self.cache:
                results[case.label] = Result(self.cache[argv], case.timing, self.shown(case))
                continue
            m = Measured(list(argv))
            lacking = self.missing(case)
            if lacking:
                m.skipped = f"skipped: {', '.join(lacking)} not installed"
                self.log(f"  {case.label}: {m.skipped}")
            else:
                todo.append((case, m))
            self.cache[argv] = m
            results[case.label] = Result(m, case.timing, self.shown(case))
        spent = {id(m): 0.0 for _, m in todo}
        for _ in range(warmup):
            for case, m in todo:
                self.log(f"  warm-up  {case.label}")
                self.run_once(case)
        for i in range(repeat):
            for case, m in todo:
                if m.error or (i > 0 and spent[id(m)] >= self.budget):
                    continue
                run = self.run_once(case)
                spent[id(m)] += run.wall
                m.runs.append(run)
                rss = f"{run.rss_kb / 1024:.0f} MB" if run.rss_kb else "?"
                call = f"call {run.call:.3f} s, " if run.call is not None else ""
                status = f"ERROR {run.error}" if run.error else f"{call}process {run.wall:.3f} s, {rss}"
                self.log(f"  run {i + 1}/{repeat}  {case.label}: {status}")
                if run.error:
                    m.error = run.error
        return results


# ---------------------------------------------------------------------------------------------
# Judging and reporting


def ratio(results: Mapping[str, Result], case: str, vs: str | None, metric: str = "seconds") -> float | None:
    if vs is None:
        return None
    a, b = results[case].median(metric), results[vs].median(metric)
    if a is None or b is None or b == 0:
        return None
    return a / b


def judge(bench: Bench, results: Mapping[str, Result], inputs: Mapping[str, Any]) -> list[dict[str, Any]]:
    out = []
    for f in bench.floors:
        limit = f.limit(inputs) if callable(f.limit) else float(f.limit)
        if f.vs is None:
            value = results[f.case].median(f.metric)
        else:
            value = ratio(results, f.case, f.vs, f.metric)
        unusable = [c for c in (f.case, f.vs) if c is not None and results[c].median(f.metric) is None]
        if unusable:
            why = [results[c].skipped or results[c].error or "no runs" for c in unusable]
            status = "SKIP" if all(results[c].skipped for c in unusable) else "FAIL"
            note = "; ".join(why)
        else:
            ok = value <= limit if f.vs is not None else value < limit
            status = "PASS" if ok else "FAIL"
            note = ""
        out.append({"case": f.case, "metric": f.metric, "vs": f.vs, "limit": limit, "value": value,
                    "status": status, "text": f.text, "note": note})
    return out


def floor_short(f: Mapping[str, Any]) -> str:
    lim = f["limit"]
    if f["vs"] is not None:
        bound = f"<= {lim:.3g}x" + (f" ({1 / lim:.3g}x faster)" if lim < 1 else "")
    elif f["metric"] == "rss_mb":
        bound = f"< {lim:.0f} MB"
    else:
        bound = f"< {lim:g} s"
    return f"{f['status']} {bound}"


def fmt_ratio(r: float | None) -> str:
    if r is None:
        return ""
    if r < 1:
        return f"{r:.3f} ({1 / r:.1f}x faster)"
    return f"{r:.2f} ({r:.1f}x slower)" if r > 1 else "1.00"


def table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


HEADER = ("benchmark", "case", "command", "timed", "n", "median s", "min-max s", "process s", "peak RSS MB",
          "vs", "ratio", "floor")


def report_rows(bench: Bench, results: Mapping[str, Result], verdicts: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for c in bench.cases:
        m = results[c.label]
        s = m.summary()
        vs = bench.vs_of(c)
        floors = "; ".join(floor_short(v) for v in verdicts if v["case"] == c.label)
        if m.skipped or (m.error and not m.good):
            note = m.skipped or f"ERROR {m.error}"
            note = note if len(note) <= 60 else note[:57] + "..."
            rows.append([bench.name, c.label, m.shown, c.timing, "0", note, "", "", "", "", "", floors])
            continue
        rss = s["median_rss_mb"]
        rows.append([
            bench.name, c.label + (" [baseline]" if c.role == "baseline" else ""), m.shown, c.timing,
            str(s["n"]), f"{s['median_seconds']:.3f}", f"{s['min_seconds']:.3f}-{s['max_seconds']:.3f}",
            f"{s['median_process_seconds']:.2f}", f"{rss:.0f}" if rss is not None else "?", vs or "", fmt_ratio(ratio(results, c.label, vs)), floors,
        ])
    return rows


def environment(python: str, repo: Path) -> dict[str, Any]:
    def out(cmd: list[str]) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, cwd=repo, timeout=60).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    versions = out([python, "-c", "import sys, platform, importlib.metadata as m\n"
                    "def v(n):\n    try: return m.version(n)\n    except Exception: return None\n"
                    "print(sys.version.split()[0], platform.platform(), v('torch'), v('numpy'), v('ckpt'),"
                    " v('safetensors'), v('picklescan'), sep='|')"]).split("|")
    keys = ("python", "platform", "torch", "numpy", "ckpt", "safetensors", "picklescan")
    env: dict[str, Any] = {k: (None if v == "None" else v) for k, v in zip(keys, versions)}
    env["cpus"] = os.cpu_count()
    env["commit"] = out(["git", "rev-parse", "HEAD"])
    env["dirty"] = bool(out(["git", "status", "--porcelain", "--", "ckpt", "cli"]))
    env["loadavg"] = os.getloadavg()
    env["argv"] = sys.argv
    return env
