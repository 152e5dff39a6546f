"""``ckpt convert`` and ``ckpt verify``."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import click

import ckpt

from .exit_codes import EXIT_FINDINGS, EXIT_OK
from .render import human_bytes

if TYPE_CHECKING:
    from ckpt.conversion import Conversion
    from ckpt.verification import Verification


def _parse_metadata(values: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in values:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--metadata")
        out[k] = v
    return out


@click.command("convert")
@click.argument("src", type=click.Path(allow_dash=False))
@click.argument("dst", type=click.Path(allow_dash=False))
@click.option("--to", "to", type=click.Choice(["safetensors", "pt", "dcp"]),
              help="Output format (default: from DST's suffix); dcp writes a single-rank torch.distributed.checkpoint folder.")
@click.option("--shard-size", metavar="SIZE", help="Write DST as a folder of shards of at most SIZE (5GB, 500MB, 2GiB) "
              "plus an index.")
@click.option("--dtype", type=click.Choice(["bf16", "fp16", "fp32"]), help="Cast floating tensors (as torch's .to()).")
@click.option("--only", multiple=True, metavar="GLOB", help="Keep only tensors whose dotted name matches (repeatable).")
@click.option("--exclude", multiple=True, metavar="GLOB", help="Leave out tensors whose dotted name matches (repeatable).")
@click.option("--key", metavar="PATH", help="Convert one subtree (e.g. state_dict, model).")
@click.option("--metadata", "meta", multiple=True, metavar="K=V", help="Add K=V to the safetensors __metadata__ "
              "(or the shard index's metadata); repeatable.")
@click.option("--manifest", is_flag=True, help="Also write the SHA-256 of every output file (DST.sha256, or "
              "SHA256SUMS in a sharded folder) for `ckpt verify`.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (schema ckpt.convert/1).")
@click.option("--no-fsync", is_flag=True, help="Do not fsync before renaming files into place (faster; a power cut "
              "may lose them).")
def convert_command(
    src: str, dst: str, to: str | None, shard_size: str | None, dtype: str | None, only: tuple[str, ...],
    exclude: tuple[str, ...], key: str | None, meta: tuple[str, ...], manifest: bool, as_json: bool, no_fsync: bool,
) -> None:
    """Convert SRC (a torch .pt/.bin, a safetensors file, a sharded checkpoint: its index or
    folder, or a torch.distributed.checkpoint folder) to DST: safetensors or a torch zip file, one
    file or sharded, or (--to dcp) a single-rank DCP folder.

    Tensors stream from SRC to DST one at a time (the model is never loaded). Nested checkpoints
    are flattened to dotted names; everything else they hold (epoch, optimizer settings, ...) is
    kept in the safetensors metadata, so converting back gives the original structure. Tied
    weights are written once. Every file is written atomically; a failed sharded conversion
    leaves nothing behind.

    \b
    Examples:
      ckpt convert model.pt model.safetensors
      ckpt convert model.safetensors model.pt
      ckpt convert pytorch_model.bin out/ --shard-size 5GB
      ckpt convert train.ckpt weights.safetensors --key state_dict --dtype bf16
      ckpt convert train.pt model.safetensors --exclude 'optimizer.*' --metadata author=me
      ckpt convert model.pt model.safetensors --manifest --json | jq .totals
      ckpt convert fsdp_ckpt/ model.safetensors          # a DCP folder, consolidated
      ckpt convert model.safetensors dcp_ckpt/ --to dcp  # a DCP folder torch.distributed.checkpoint.load reads

    Exit codes: 0 converted, 2 error (nothing written).
    """
    from ckpt.conversion import convert

    with _progress_bar("converting", enabled=not as_json) as progress:
        result = convert(src, dst, to=to, shard_size=shard_size, dtype=dtype, only=only, exclude=exclude, key=key,
                         metadata=_parse_metadata(meta), manifest=manifest, progress=progress, fsync=not no_fsync)
    if as_json:
        sys.stdout.write(json.dumps(result.as_json(), separators=(",", ":"), allow_nan=False))
        sys.stdout.write("\n")
    else:
        render_conversion(result)
    sys.exit(EXIT_OK)


@click.command("verify")
@click.argument("path", type=click.Path(allow_dash=False))
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON (schema ckpt.verify/1).")
def verify_command(path: str, as_json: bool) -> None:
    """Check PATH's integrity without loading it: every zip record's CRC-32 and every tensor
    inside its storage (.pt), the header against the bytes (safetensors), and for a sharded
    checkpoint (index or folder) the index against its shards: missing or unreferenced shards,
    tensors listed twice or missing, total_size. For a torch.distributed.checkpoint (DCP) folder:
    .metadata as ckpt reads it, and every torch.save archive in the .distcp files with its CRC-32s.
    A manifest written by `ckpt convert --manifest` (FILE.sha256, SHA256SUMS) is checked too.

    \b
    Examples:
      ckpt verify model.pt
      ckpt verify model.safetensors
      ckpt verify ./llama-shards/
      ckpt verify ./dcp-checkpoint/
      ckpt verify model.safetensors.index.json --json | jq .problems

    Exit codes: 0 intact, 1 problems found, 2 unreadable.
    """
    from ckpt.verification import verify

    with _progress_bar("verifying", enabled=not as_json) as progress:
        result = verify(path, progress=progress)
    if as_json:
        sys.stdout.write(json.dumps(result.as_json(), separators=(",", ":"), allow_nan=False))
        sys.stdout.write("\n")
    else:
        render_verification(result)
    sys.exit(EXIT_OK if result.ok else EXIT_FINDINGS)


@contextmanager
def _progress_bar(label: str, *, enabled: bool) -> Iterator[Callable[[int, int], None] | None]:
    """A rich progress bar (bytes done / total, rate) on stderr when it is a terminal; else nothing."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

    bar = Progress(label, BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn(),
                   console=Console(stderr=True), transient=True)
    task = bar.add_task(label, total=None)

    def update(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total)

    with bar:
        yield update


def _printer() -> Callable[..., None]:
    """``say(text, style=None)``: a line through rich on a terminal; plain text, unwrapped and
    without importing rich (a twentieth of a second), when stdout is piped or redirected."""
    if not sys.stdout.isatty():
        def plain(text: str, style: str | None = None) -> None:
            sys.stdout.write(text + "\n")

        return plain
    from rich.console import Console

    console = Console()

    def rich_line(text: str, style: str | None = None) -> None:
        console.print(text, style=style, highlight=False, markup=False)

    return rich_line


def render_conversion(result: Conversion) -> None:
    say = _printer()
    doc = result.as_json()
    t = doc["totals"]
    what = f"{t['tensors']} tensors, {human_bytes(t['tensor_bytes'])}"
    if result.index is not None:
        where = f"{len(result.files)} shards + {result.index}"
    else:
        where = result.destination
    say(f"{result.source} ({result.source_format}) -> {where} ({result.format}): {what}")
    extras = []
    if result.cast:
        extras.append(f"{result.cast_tensors} cast to {result.cast}")
    if result.aliases:
        extras.append(f"{len(result.aliases)} alias(es) of tied weights")
    if result.excluded:
        extras.append(f"{len(result.excluded)} left out")
    if result.restored_tree:
        extras.append("original structure rebuilt from SRC's 'ckpt.convert/1' metadata")
    if result.kept_tree:
        extras.append(f"non-tensor values kept in metadata under {'ckpt.convert/1'!r}")
    if result.manifest:
        extras.append(f"SHA-256 manifest {result.manifest}")
    for e in extras:
        say(f"  {e}")
    for note in result.notes:
        say(f"note: {note}", "yellow")


def render_verification(result: Verification) -> None:
    say = _printer()
    doc = result.as_json()
    t = doc["totals"]
    head = f"{result.path} ({result.format}): {t['files']} file(s), {t['tensors']} tensors"
    if t["records_checked"]:
        head += f", {t['records_checked']} zip records CRC-checked ({human_bytes(t['bytes_checked'])})"
    if result.manifest:
        head += ", manifest checked"
    say(head)
    for p in result.problems:
        say(f"problem [{p.kind}] {p}", "red")
    for note in result.notes:
        say(f"note: {note}", "yellow")
    say("ok: intact" if result.ok else f"{len(result.problems)} problem(s) found", "green" if result.ok else "red")


