"""``ckpt relocate``: rewrite the devices a checkpoint's storages are stored on."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import click

import ckpt

from .exit_codes import EXIT_OK
from .render import human_bytes

if TYPE_CHECKING:
    from ckpt.relocation import Relocation


def _parse_map(values: tuple[str, ...]) -> dict[str, str]:
    mapping: dict[str, str] = {}
    for item in values:
        old, sep, new = item.partition("=")
        if not sep or not old or not new:
            raise click.BadParameter(f"{item!r} is not FROM=TO (e.g. cuda:1=cuda:0)", param_hint="--map")
        mapping[old] = new
    return mapping


@click.command("relocate")
@click.argument("src", type=click.Path(dir_okay=False, allow_dash=False))
@click.argument("dst", type=click.Path(dir_okay=False, allow_dash=False))
@click.option("--to", "to", metavar="DEVICE", help="Store every storage on DEVICE (cpu, cuda:0, mps, ...).")
@click.option("--map", "maps", multiple=True, metavar="FROM=TO",
              help="Move storages tagged FROM to TO (repeatable); with --to, --to takes the other tags.")
@click.option("--dry-run", is_flag=True, help="Print the plan; write nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON (schema ckpt.relocate/1).")
@click.option("--no-fsync", is_flag=True,
              help="Do not fsync DST before renaming it into place (faster; a power cut may lose it).")
def relocate_command(
    src: str, dst: str, to: str | None, maps: tuple[str, ...], dry_run: bool, as_json: bool, no_fsync: bool,
) -> None:
    """Copy SRC to DST with its storages' stored devices changed, so that a plain torch.load(DST)
    works where the original devices do not exist (a CPU-only machine, another GPU).

    The pickle is rewritten (nothing in it is run; no tensor is decoded) and every tensor record
    is copied as raw bytes. `ckpt inspect SRC` shows the stored devices; --dry-run shows what
    would change. DST is written atomically: on any error it is left as it was.

    \b
    Examples:
      ckpt relocate model.pt model-cpu.pt --to cpu
      ckpt relocate model.pt fixed.pt --map cuda:1=cuda:0 --map cuda:2=cuda:0
      ckpt relocate model.pt model-cpu.pt --to cpu --dry-run
      ckpt relocate model.pt model-cpu.pt --to cpu --json | jq .totals

    Exit codes: 0 done (or planned, with --dry-run), 2 error.
    """
    from ckpt.relocation import location_map  # the writer is imported only when it is used

    if to is None and not maps:
        raise click.UsageError("say where to: --to DEVICE and/or --map FROM=TO")
    locmap = location_map(_parse_map(maps) or None, to=to)
    with _progress_bar(enabled=not dry_run and not as_json) as progress:
        result = ckpt.relocate(src, dst, locmap.mapping or None, to=locmap.to, dry_run=dry_run,
                               fsync=not no_fsync, progress=progress)
    if as_json:
        sys.stdout.write(json.dumps(result.as_json(), separators=(",", ":"), allow_nan=False))
        sys.stdout.write("\n")
    else:
        render(result)
    sys.exit(EXIT_OK)


@contextmanager
def _progress_bar(*, enabled: bool) -> Iterator[Callable[[int, int], None] | None]:
    """A rich progress bar on stderr when it is a terminal; nothing otherwise."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

    bar = Progress("copying", BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn(),
                   console=Console(stderr=True), transient=True)
    task = bar.add_task("copy", total=None)

    def update(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total)

    with bar:
        yield update


def render(result: Relocation) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:
        console = Console(width=max(console.width, 120))
    what = "would rewrite" if result.dry_run else "rewrote"
    how = "the pickle" if result.method == "rewrite" else "the storage locations in the pickle"
    head = f"{result.source} -> {result.destination}: {what} {how}"
    if result.dry_run:
        head += " (dry run: nothing written)"
    console.print(head, highlight=False, markup=False)
    table = Table(show_edge=False, pad_edge=False, box=None)
    table.add_column("stored on")
    table.add_column("")
    table.add_column("new device")
    table.add_column("storages", justify="right")
    table.add_column("size", justify="right")
    for (old, new), (count, nbytes) in result.by_move().items():
        table.add_row(old, "->" if old != new else "=", new if old != new else "(unchanged)", str(count),
                      human_bytes(nbytes))
    if result.moves:
        console.print(table)
    total = sum(m.nbytes for m in result.moves)
    line = f"{result.changed} of {len(result.moves)} storages change device ({human_bytes(total)} of tensor data)"
    if result.written_bytes is not None:
        line += f"; wrote {human_bytes(result.written_bytes)}"
    console.print(line, highlight=False, markup=False)
    for tag in result.unmatched:
        console.print(f"note: no storage is tagged {tag!r}; mapping it changed nothing", style="yellow",
                      highlight=False, markup=False)
    for note in result.notes:
        console.print(f"note: {note}", style="yellow", highlight=False, markup=False)
