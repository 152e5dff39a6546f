"""Run ckpt's benchmarks and print their medians, peak RSS and same-run ratios against baselines.

    python bench/run.py [--only NAME ...] [--repeat N] [--workdir DIR] [--json OUT]

Inputs are generated once into the work dir (default bench/out/, git-ignored) and reused while
their recipe matches. Each case runs as a whole process, N times, under /usr/bin/time -v. The
table gives the median seconds (whole process, or the timed call alone where ``timed`` says
``call``), min-max, the median peak RSS, the ratio of medians against the case's baseline in the
same run, and PASS/FAIL against the issue's floors. Results are also written as JSON.
Exit code: 0 when every floor judged passes, 1 when one fails, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import harness  # noqa: E402
import inputs as inputs_mod  # noqa: E402
from specs import BENCHMARKS  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="+", metavar="NAME", help="run only these benchmarks (see --list)")
    p.add_argument("--repeat", type=int, default=5, metavar="N", help="runs per case (default 5; the median is reported)")
    p.add_argument("--warmup", type=int, default=0, metavar="N", help="untimed runs per case first (default 0)")
    p.add_argument("--workdir", type=Path, default=HERE / "out", metavar="DIR", help="where inputs are cached (default bench/out)")
    p.add_argument("--json", type=Path, metavar="OUT", help="write results here (default WORKDIR/results.json)")
    p.add_argument("--timeout", type=float, default=600, metavar="S", help="kill a run after S seconds (default 600)")
    p.add_argument("--budget", type=float, default=180, metavar="S",
                   help="stop repeating a case once its runs took S seconds in all (default 180; n shows how many ran)")
    p.add_argument("--python", default=sys.executable, help="interpreter for the cases (default: this one)")
    p.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    a = p.parse_args(argv)
    if a.repeat < 1:
        p.error("--repeat must be at least 1")
    known = {b.name for b in BENCHMARKS}
    for name in a.only or ():
        if name not in known:
            p.error(f"unknown benchmark {name!r} (known: {', '.join(sorted(known))})")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.list:
        for b in BENCHMARKS:
            print(f"{b.name:18} issue {b.issue}  {b.about}")
        return 0
    benches = [b for b in BENCHMARKS if not a.only or b.name in a.only]
    workdir = a.workdir.resolve()
    repo = HERE.parent
    started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    env = harness.environment(a.python, repo)

    needed = sorted({n for b in benches for n in b.inputs})
    paths = {n: inputs_mod.ensure(inputs_mod.INPUTS[n], workdir, a.python) for n in needed}
    for p in paths.values():
        inputs_mod.warm(p)
    runner = harness.Runner(python=a.python, workdir=workdir, inputs=paths, timeout=a.timeout,
                            budget=a.budget, repo=repo)
    runner.plan(benches)
    # Untimed: put the interpreter, torch's and ckpt's modules in the page cache, and compile ckpt's
    # .pyc files as `pip install .` does (also of the modules ckpt imports lazily, such as its scanner;
    # an editable install under PYTHONDONTWRITEBYTECODE=1, as on some CI machines, would otherwise
    # recompile every module in every timed process).
    subprocess_run([a.python, "-m", "compileall", "-q", str(repo / "ckpt"), str(repo / "cli")])
    for warm in ([a.python, "-c", "import torch, numpy"], [a.python, "-c", "import ckpt, ckpt_cli.main"]):
        subprocess_run(warm)

    rows, out_benches, verdict_count = [], [], {"PASS": 0, "FAIL": 0, "SKIP": 0}
    for b in benches:
        print(f"\n== {b.name} (issue {b.issue}): {b.about}", flush=True)
        results = runner.measure(b, a.repeat, a.warmup)
        verdicts = harness.judge(b, results, inputs_mod.INPUTS)
        for v in verdicts:
            verdict_count[v["status"]] += 1
        rows += harness.report_rows(b, results, verdicts)
        out_benches.append({
            "name": b.name, "issue": b.issue, "about": b.about, "inputs": list(b.inputs),
            "cases": [{
                "label": c.label, "role": c.role, "timing": c.timing, "vs": b.vs_of(c),
                "command": results[c.label].shown, "argv": results[c.label].argv,
                "skipped": results[c.label].skipped, "error": results[c.label].error,
                **results[c.label].summary(),
                "ratio": harness.ratio(results, c.label, b.vs_of(c)),
                "runs": [{"seconds": results[c.label].run_seconds(r), "process_seconds": r.wall, "cpu_seconds": r.cpu,
                          "rss_mb": r.rss_kb / 1024 if r.rss_kb else None, "rc": r.rc, "error": r.error,
                          **r.extra} for r in results[c.label].runs],
            } for c in b.cases],
            "floors": verdicts,
        })

    print()
    print(harness.table(rows, harness.HEADER))
    print(f"\nfloors: {verdict_count['PASS']} PASS, {verdict_count['FAIL']} FAIL, {verdict_count['SKIP']} SKIP"
          f"  (repeat {a.repeat}; ratios are of medians measured in this run; "
          f"'timed call' = the load call alone, imports excluded)")

    env["loadavg_end"] = __import__("os").getloadavg()
    doc = {
        "schema": "ckpt-bench/1", "started": started, "repeat": a.repeat, "warmup": a.warmup,
        "environment": env,
        "inputs": {n: {"path": str(p), "recipe": inputs_mod.INPUTS[n].recipe, "about": inputs_mod.INPUTS[n].about}
                   for n, p in paths.items()},
        "benchmarks": out_benches,
    }
    out = a.json or workdir / "results.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"results written to {out}")
    return 1 if verdict_count["FAIL"] else 0


def subprocess_run(argv: list[str]) -> None:
    """Run an untimed preparation step. PYTHONDONTWRITEBYTECODE is dropped for it: with it set (as
    some CI shells do) no .pyc is ever written and every timed process would recompile ckpt."""
    import os
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)


if __name__ == "__main__":
    sys.exit(main())
