"""``ckpt inspect``: show what a checkpoint holds without running or loading it."""

from __future__ import annotations

import gc
import sys
from operator import attrgetter, mul
from typing import Any

import click

import ckpt

from .exit_codes import EXIT_FINDINGS, EXIT_OK
from .render import group_tensors, human_bytes, human_count, shape_str

DEFAULT_MAX_ROWS = 60
_REF, _NUMEL, _SHAPE, _DEVICE, _DTYPE_NAME, _ITEMSIZE = map(
    attrgetter, ("ref", "numel", "shape", "device", "dtype.name", "dtype.itemsize")
)


@click.command("inspect")
@click.argument("path", type=click.Path(dir_okay=True, allow_dash=False))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON (schema ckpt.inspect/1).")
@click.option("--filter", "pattern", metavar="GLOB", help="Only tensors and values whose dotted path matches, e.g. 'model.layers.*.weight'.")
@click.option("--depth", type=click.IntRange(min=1), metavar="N", help="Group tensors by the first N parts of their dotted names (model.layers.3 is depth 3).")
@click.option("--all", "show_all", is_flag=True, help="List every tensor and value, however many.")
@click.option("--max-rows", type=click.IntRange(min=1), default=DEFAULT_MAX_ROWS, show_default=True, help="Collapse the tensor list to fit this many rows unless --all or --depth.")
@click.option("--allow", "allow", multiple=True, metavar="MODULE.NAME", help="Accept this global as inert data instead of reporting it (repeatable).")
def inspect_command(
    path: str, as_json: bool, pattern: str | None, depth: int | None, show_all: bool, max_rows: int,
    allow: tuple[str, ...],
) -> None:
    """Show the tensors, values and structure of a checkpoint, and anything suspicious in it.

    Reads only metadata (a zip checkpoint's directory and pickle, a legacy file's pickles, a
    TorchScript archive's module tree, a safetensors header, a sharded index and its shards'
    headers): no tensor bytes, no torch import, nothing in the file executed. PATH may be a file of
    any of these formats, whatever its name, a folder holding a sharded checkpoint's index, or a
    torch.distributed.checkpoint (DCP) folder (its .metadata, how each tensor is chunked across
    the ranks' .distcp files, and its non-tensor items).
    Globals outside ckpt's allowlist, and what `ckpt scan` finds about the file itself
    (anomalies), are shown as findings (exit code 1).

    \b
    Examples:
      ckpt inspect model.pt
      ckpt inspect model.pt --filter 'model.layers.0.*'
      ckpt inspect model.pt --depth 2
      ckpt inspect model.pt --json | jq '.tensors[] | select(.dtype == "bfloat16") | .path'
      ckpt inspect model.safetensors
      ckpt inspect path/to/sharded-model/
      ckpt inspect path/to/dcp-checkpoint/      (a torch.distributed.checkpoint folder)

    Exit codes: 0 nothing suspicious, 1 findings, 2 error.
    """
    gc.disable()  # one summary, then the process ends: its objects are acyclic and die with it
    summary = ckpt.inspect(path, allow=allow, filter=pattern)
    if as_json:
        summary.write_json(sys.stdout)
        sys.stdout.write("\n")
    else:
        render(summary, depth=depth, show_all=show_all, max_rows=max_rows)
    sys.exit(EXIT_FINDINGS if summary.findings or summary.anomalies else EXIT_OK)


def render(summary: ckpt.Summary, *, depth: int | None, show_all: bool, max_rows: int) -> None:
    from rich.console import Console
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    console = Console()
    if not console.is_terminal:
        console = Console(width=max(console.width, 160))
    facts = summary.facts
    head = Text()
    head.append(f"{facts.get('format')}", style="bold")
    details = [f"archive {facts.get('archive_name')!r}"] if facts.get("archive_name") else []
    for label, key in (("version", "version"), ("pickle protocol", "pickle_protocol")):
        if facts.get(key) is not None:
            details.append(f"{label} {facts[key]}")
    if facts.get("byteorder"):
        details.append(f"{facts['byteorder']}-endian")
    if "crc32" in facts:
        details.append(f"CRC-32 {facts.get('crc32')}")
    head.append(f"  {human_bytes(summary.file_size)}" + ("; " + ", ".join(details) if details else ""))
    for line in _format_lines(facts):
        head.append("\n" + line)
    head.append(f"\nholds: {summary.kind.replace('_', ' ')}")
    for row in summary.structure:
        head.append("\n  " + _structure_line(row))
    for note in facts.get("notes") or []:
        head.append(f"\nnote: {note}", style="yellow")
    console.print(Panel(head, title=summary.path, title_align="left"))

    tensors = summary.tensors
    if tensors:
        console.print(_tensor_table(summary, depth=depth, show_all=show_all, max_rows=max_rows))

    values = summary.values
    if values:
        vt = Table(title=f"Values ({len(values)})", title_justify="left", show_edge=False, pad_edge=False)
        vt.add_column("name", overflow="fold")
        vt.add_column("type")
        vt.add_column("value", overflow="fold")
        shown = values if show_all else values[:max_rows]
        for v in shown:
            vt.add_row(v.path or "(root)", v.type, v.repr)
        if len(shown) < len(values):
            vt.caption = f"{len(values) - len(shown)} more; --all to list every value"
        console.print(vt)

    totals = summary.totals
    line = Text()
    line.append("Totals: ", style="bold")
    line.append(
        f"{totals['tensors']} tensors, {human_count(totals['numel'])} elements, {human_bytes(totals['nbytes'])}"
        f" in {totals['storages']} storages ({human_bytes(totals['storage_bytes'])} stored)"
    )
    if totals["by_dtype"]:
        line.append("\n  by dtype: " + ", ".join(
            f"{d} {r['tensors']} ({human_bytes(r['nbytes'])})" for d, r in totals["by_dtype"].items()
        ))
    if totals["by_device"]:
        line.append("\n  stored devices: " + ", ".join(f"{d} ({n})" for d, n in totals["by_device"].items()))
    if summary.filter:
        line.append(f"\n  filtered by {summary.filter!r}", style="yellow")
    if summary.refs:
        line.append(f"\n  {len(summary.refs)} objects are referenced from more than one place (shown once)")
    if summary.elided:
        line.append(f"\n  {len(summary.elided)} subtrees nest too deeply to show", style="yellow")
    console.print(line)

    if summary.findings or summary.anomalies:
        body = Text()
        for f in [*summary.findings, *summary.anomalies]:
            style = "bold red" if f.verdict == "dangerous" else "yellow"
            body.append(f"{f.verdict.upper():9} {f.name}", style=style)
            where = (f" in {f.record}" if f.record else "") + (f" at offset {f.offset}" if f.offset is not None else "")
            body.append(where + "\n")
            body.append(f"          {f.message}\n")
        body.append("Nothing was executed. ckpt.load refuses these unless allowed (--allow / allow=[...]).")
        count = len(summary.findings) + len(summary.anomalies)
        console.print(Panel(body, title=f"Findings ({count})", border_style="red", title_align="left"))


def _format_lines(facts: dict[str, Any]) -> list[str]:
    """What each format adds to the header: a TorchScript module tree and code files, safetensors
    metadata, the shards of a sharded checkpoint."""
    lines: list[str] = []
    fmt = facts.get("format")
    if fmt == "torchscript":
        lines.append("modules:")
        for m in facts.get("modules") or []:
            parts = []
            if m["parameters"]:
                parts.append("parameters " + ", ".join(m["parameters"]))
            if m["buffers"]:
                parts.append("buffers " + ", ".join(m["buffers"]))
            lines.append(f"  {m['path'] or '(root)'}: {m['type']}" + ("; " + "; ".join(parts) if parts else ""))
        code = facts.get("code_files") or []
        lines.append(f"code (never run by ckpt): {len(code)} file(s): " + ", ".join(code[:6]) + (", ..." if len(code) > 6 else ""))
        if facts.get("extra_files"):
            lines.append("extra files: " + ", ".join(facts["extra_files"]))
        constants = facts.get("constants")
        if constants and constants.get("values"):
            lines.append(f"constants.pkl: {constants['values']} value(s), {constants['tensors']} tensor(s) "
                         f"({human_bytes(constants['nbytes'])})")
    elif fmt == "safetensors":
        meta = facts.get("metadata")
        if meta:
            shown = ", ".join(f"{k}={v if len(v) <= 60 else v[:57] + '...'}" for k, v in list(meta.items())[:8])
            lines.append("metadata: " + shown + (f", ... ({len(meta)} keys)" if len(meta) > 8 else ""))
    elif fmt == "sharded":
        shards = facts.get("shards") or []
        lines.append(f"index {facts.get('index')}: {len(shards)} shard(s)"
                     + (f", {human_bytes(facts['total_size'])} declared" if facts.get("total_size") is not None else ""))
        for row in shards[:8]:
            lines.append(f"  {row['file']}: {row['format']}, {row['tensors']} tensors, {human_bytes(row['size'])}")
        if len(shards) > 8:
            lines.append(f"  ... {len(shards) - 8} more")
    elif fmt == "dcp":
        lines += _dcp_lines(facts)
    return lines


def _dcp_lines(facts: dict[str, Any], max_tensors: int = 12) -> list[str]:
    """A DCP folder: its data files (rank, chunks, items, bytes) and how each tensor is chunked."""
    files = facts.get("files") or []
    lines = [f"torch.distributed.checkpoint folder: .metadata and {len(files)} data file(s), "
             f"{facts.get('serialization')} serialization"]
    for row in files[:8]:
        rank = f"rank {row['rank']}, " if row.get("rank") is not None else ""
        lines.append(f"  {row['file']}: {rank}{row['chunks']} chunk(s) ({human_bytes(row['tensor_bytes'])}), "
                     f"{row['items']} item(s), {human_bytes(row['size'])}")
    if len(files) > 8:
        lines.append(f"  ... {len(files) - 8} more")
    tensors = facts.get("tensors") or []
    if tensors:
        lines.append("chunks (offsets:sizes in the global shape, file[byte range]):")
    for t in tensors[:max_tensors]:
        parts = [
            "[" + ", ".join(f"{o}:{o + s}" for o, s in zip(c["offsets"], c["sizes"])) + "] "
            f"{c['file']}[{c['byte_range'][0]}:{c['byte_range'][1]}]"
            for c in t["chunks"][:4]
        ]
        more = f", ... {len(t['chunks']) - 4} more" if len(t["chunks"]) > 4 else ""
        lines.append(f"  {t['name']} {t['dtype']}{t['shape']}: " + ", ".join(parts) + more)
    if len(tensors) > max_tensors:
        lines.append(f"  ... {len(tensors) - max_tensors} more tensors (--json lists every chunk)")
    items = facts.get("items") or []
    if items:
        shown = ", ".join(i["name"] for i in items[:8]) + (", ..." if len(items) > 8 else "")
        lines.append(f"non-tensor items (torch.save blobs, read by ckpt's own reader): {shown}")
    return lines


def _structure_line(row: dict[str, Any]) -> str:
    where = row["path"] or "(root)"
    kind = row["kind"]
    if kind == "state_dict":
        return f"{where}: model state_dict, {row['tensors']} tensors, {human_count(row['numel'])} elements"
    if kind == "optimizer":
        name = row.get("optimizer") or "unknown optimizer"
        text = f"{where}: {name} optimizer state, {row['parameters']} parameters ({row['parameters_with_state']} with state"
        if row["state_keys"]:
            text += ": " + ", ".join(row["state_keys"])
        text += ")"
        for i, group in enumerate(row["param_groups"]):
            hp = group["hyper_parameters"]
            shown = ", ".join(f"{k}={hp[k]}" for k in ("lr", "betas", "momentum", "weight_decay", "eps") if k in hp)
            text += f"\n    group {i}: {len(group['params'])} params" + (f"; {shown}" if shown else "")
        return text
    if kind == "training_checkpoint":
        parts = []
        if row.get("framework"):
            parts.append(row["framework"])
        if row["model"]:
            parts.append("model at " + ", ".join(row["model"]))
        if row["optimizer"]:
            parts.append("optimizer at " + ", ".join(row["optimizer"]))
        for k in ("epoch", "global_step", "step", "iteration"):
            if k in row:
                parts.append(f"{k} {row[k]}")
        return f"{where}: training checkpoint; " + "; ".join(parts)
    return f"{where}: {kind}"


def _tensor_table(summary: ckpt.Summary, *, depth: int | None, show_all: bool, max_rows: int) -> Any:
    """Every tensor when they fit (or --all); else one row per name pattern (``layers.*.weight``),
    per --depth prefix, or the first rows with a count of the rest."""
    from rich.table import Table

    tensors = summary.tensors
    table = Table(title=f"Tensors ({len(tensors)})", title_justify="left", show_edge=False, pad_edge=False)
    if depth is None and (show_all or len(tensors) <= max_rows):
        for col, justify in (("name", "left"), ("dtype", "left"), ("shape", "left"), ("numel", "right"),
                             ("size", "right"), ("device", "left"), ("storage", "left")):
            table.add_column(col, justify=justify, overflow="fold")
        shared = set(summary.storages)
        for t in tensors:
            _tensor_row(table, t, shared)
        return table
    groups, how = group_tensors([t.path for t in tensors], depth=depth, max_rows=max_rows)
    for col, justify in (("name", "left"), ("count", "right"), ("dtype", "left"), ("shape", "left"),
                         ("numel", "right"), ("size", "right"), ("device", "left")):
        table.add_column(col, justify=justify, overflow="fold")
    shown = 0
    for name, members in groups.items():
        if shown == max_rows and depth is None:
            table.add_row(f"... {len(groups) - shown} more groups", "", "", "", "", "", "")
            break
        rows = list(map(tensors.__getitem__, members))
        refs = list(map(_REF, rows))
        shapes = set(map(_SHAPE, refs))
        numels = list(map(_NUMEL, rows))
        table.add_row(
            name or "(root)", str(len(rows)), ",".join(sorted(set(map(_DTYPE_NAME, refs)))),
            shape_str(rows[0].shape) if len(shapes) == 1 else "various",
            human_count(sum(numels)), human_bytes(sum(map(mul, numels, map(_ITEMSIZE, refs)))),
            ",".join(sorted(set(map(_DEVICE, refs)))),
        )
        shown += 1
    table.caption = f"{how}; --all lists every tensor, --filter GLOB selects some"
    return table


def _tensor_row(table: Any, t: Any, shared: set[str]) -> None:
    storage = "-" if t.storage is None else t.storage + (" (shared)" if t.storage in shared else "")
    if t.same_as:
        storage = f"= {t.same_as}"
    name = t.path or "(root)"
    if t.parameter:
        name += " [param]"
    table.add_row(name, t.dtype, shape_str(t.shape), human_count(t.numel), human_bytes(t.nbytes), t.device, storage)


