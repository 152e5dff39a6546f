"""``ckpt scan``: find malicious or suspicious content in files and folders without running it."""

from __future__ import annotations

import json
import sys
from typing import Any

from typing import TYPE_CHECKING

import click

import ckpt

if TYPE_CHECKING:
    from ckpt.scanner import ScanReport

_STYLE = {"dangerous": "bold red", "unknown": "yellow", "error": "bold magenta", "clean": "green", "safe": "green"}


@click.command("scan")
@click.argument("paths", nargs=-1, required=True, type=click.Path(allow_dash=False))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (schema ckpt.scan/1).")
@click.option("--sarif", is_flag=True, help="Print the report as SARIF 2.1.0, for code-scanning dashboards.")
@click.option("--fail-on", type=click.Choice(["unknown", "dangerous"]), default="dangerous", show_default=True,
              help="Exit 1 when a finding is at least this severe.")
@click.option("--allow", "allow", multiple=True, metavar="MODULE.NAME",
              help="Treat this global as safe (repeatable).")
@click.option("--jobs", "-j", type=click.IntRange(min=1), metavar="N",
              help="Worker processes for many files (default: one per CPU).")
@click.option("--show-safe", is_flag=True, help="Also list the globals on ckpt's allowlist that each file names.")
@click.option("--quiet", "-q", is_flag=True, help="Only print files that are not clean, and the summary.")
def scan_command(
    paths: tuple[str, ...], as_json: bool, sarif: bool, fail_on: str, allow: tuple[str, ...], jobs: int | None,
    show_safe: bool, quiet: bool,
) -> None:
    """Find malicious or suspicious content in checkpoints, pickles and archives, without running them.

    Scans files and folders (recursively), whatever the file names say: torch zip and legacy
    checkpoints, TorchScript, bare pickles (.pkl, joblib), numpy .npy/.npz, tar, safetensors, and
    gzip/bz2/xz copies of these. Every pickle in a file is walked opcode by opcode (never
    unpickled); every global gets a verdict: safe (on ckpt's allowlist), unknown (pickle.load
    would import and run it) or dangerous (known to run code or touch the system). Container
    tricks (CRC mismatches, duplicate or escaping names, bytes outside any record, polyglots) are
    findings too. A file that cannot be analysed whole is an error, never clean.

    \b
    Examples:
      ckpt scan model.pt
      ckpt scan downloads/ --fail-on unknown
      ckpt scan model.pt --json | jq '.files[].findings[] | select(.verdict == "dangerous")'
      ckpt scan models/ --sarif > ckpt.sarif

    Exit codes: 0 clean, 1 findings at or above --fail-on, 2 a file could not be scanned whole.
    """
    if as_json and sarif:
        raise click.UsageError("--json and --sarif cannot be used together")
    progress_cb, done = _progress(len(paths))
    try:
        report = ckpt.scan(list(paths), allow=allow, jobs=jobs, progress=progress_cb)
    finally:
        done()
    if as_json:
        # dumps, not dump: json.dump streams through the pure-Python encoder, ~10x slower
        sys.stdout.write(json.dumps(report.as_json(fail_on), separators=(",", ":"), allow_nan=False))
        sys.stdout.write("\n")
    elif sarif:
        # compact (no indent) so the C encoder is used, as for --json
        sys.stdout.write(json.dumps(report.as_sarif(), separators=(",", ":"), allow_nan=False))
        sys.stdout.write("\n")
    else:
        render(report, fail_on=fail_on, show_safe=show_safe, quiet=quiet)
    sys.exit(report.exit_code(fail_on))


def _progress(n_args: int) -> tuple[Any, Any]:
    """A rich progress bar on stderr when it is a terminal; nothing when piped."""
    if not sys.stderr.isatty():
        return None, lambda: None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(TextColumn("scanning"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TextColumn("{task.description}"), console=Console(stderr=True), transient=True)
    task = None

    def update(done: int, total: int, path: str) -> None:
        nonlocal task
        if task is None:
            if total < 2:
                return
            progress.start()
            task = progress.add_task("", total=total)
        progress.update(task, completed=done, description=path[-60:])

    def stop() -> None:
        if task is not None:
            progress.stop()

    return update, stop


def render(report: ScanReport, *, fail_on: str, show_safe: bool, quiet: bool) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from ckpt.scanner import finding_rule

    console = Console()
    if not console.is_terminal:
        console = Console(width=max(console.width, 160))
    for r in report.files:
        status = r.status
        if quiet and status == "clean":
            continue
        head = Text()
        head.append(f"{status.upper():9}", style=_STYLE.get(status, ""))
        head.append(f" {r.path}", style="bold")
        head.append(f"  ({r.format}" + (f"; also {', '.join(r.formats[1:])}" if len(r.formats) > 1 else "")
                    + f", {len(r.pickles)} pickle{'s' * (len(r.pickles) != 1)})")
        console.print(head)
        if r.findings:
            table = Table(show_edge=False, pad_edge=False, box=None, padding=(0, 1))
            table.add_column("verdict")
            table.add_column("what", overflow="fold")
            table.add_column("where", overflow="fold")
            table.add_column("why", overflow="fold", ratio=1)
            for f in r.findings:
                what = f.name if f.kind == "global" else finding_rule(f)
                where = (f.record or "") + (f" @{f.offset}" if f.offset is not None else "")
                table.add_row(Text(f.verdict, style=_STYLE.get(f.verdict, "")), what, where, f.message)
            console.print(table)
        for e in r.errors:
            where = (e.get("record") or "") + (f" @{e['offset']}" if e.get("offset") is not None else "")
            console.print(Text(f"  error: {where + ': ' if where else ''}{e['message']}", style="magenta"))
        if show_safe:
            safe = [g for g in r.globals if g.verdict == "safe"]
            if safe:
                console.print("  safe globals: " + ", ".join(f"{g.name} ({g.count})" for g in safe), style="dim")
        for note in r.notes:
            console.print(f"  note: {note}", style="dim")
    s = report.summary()
    line = Text()
    line.append(f"{s['files']} file{'s' * (s['files'] != 1)} scanned: ", style="bold")
    parts = []
    for key in ("clean", "unknown", "dangerous", "error"):
        if s[key]:
            parts.append((f"{s[key]} {key}", _STYLE.get(key, "")))
    for i, (text, style) in enumerate(parts):
        line.append(("" if i == 0 else ", ") + text, style=style)
    line.append(f" (fail on {fail_on}; nothing was executed)")
    console.print(line)
