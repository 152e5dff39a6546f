"""``ckpt diff``: compare two checkpoints, model and optimizer state, across formats."""

from __future__ import annotations

import json
import math
import sys
from typing import Any

import click

import ckpt

from .exit_codes import EXIT_FINDINGS, EXIT_OK
from .render import group_tensors, human_bytes, human_count, shape_str

DEFAULT_MAX_ROWS = 40
STAT_ROWS = 20
_STYLE = {"identical": "green", "close": "yellow", "different": "bold red", "not_compared": "magenta"}


@click.command("diff")
@click.argument("a", type=click.Path(dir_okay=True, allow_dash=False))
@click.argument("b", type=click.Path(dir_okay=True, allow_dash=False))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (schema ckpt.diff/1).")
@click.option("--stat", is_flag=True, help="A one-screen summary: counts, and changed tensors grouped by name.")
@click.option("--rtol", type=click.FloatRange(min=0), default=1e-5, show_default=True,
              help="Relative tolerance, as in torch.allclose.")
@click.option("--atol", type=click.FloatRange(min=0), default=1e-8, show_default=True,
              help="Absolute tolerance, as in torch.allclose.")
@click.option("--equal-nan", is_flag=True, help="Count NaN as close to NaN (torch.allclose's equal_nan).")
@click.option("--ignore-dtype", is_flag=True, help="A dtype change alone does not make the files different (values are still compared, upcast).")
@click.option("--tensors-only", is_flag=True, help="Compare tensors only: leave out non-tensor values (and the optimizer summary).")
@click.option("--only", multiple=True, metavar="GLOB", help="Compare only paths matching this glob, e.g. 'model.*' (repeatable).")
@click.option("--exclude", multiple=True, metavar="GLOB", help="Leave out paths matching this glob, e.g. 'optimizer.*' (repeatable).")
@click.option("--key", metavar="PATH", help="Compare the subtree at this dotted path in both files, e.g. 'state_dict'.")
@click.option("--key-a", metavar="PATH", help="The subtree to compare in A (overrides --key for A).")
@click.option("--key-b", metavar="PATH", help="The subtree to compare in B (overrides --key for B).")
@click.option("--allow", multiple=True, metavar="MODULE.NAME", help="Accept this global as inert data (repeatable); any other global outside the allowlist stops the diff.")
@click.option("--verify", is_flag=True, help="Check the CRC-32 of every record read (slower).")
@click.option("--all", "show_all", is_flag=True, help="List identical tensors too, and every row.")
@click.option("--max-rows", type=click.IntRange(min=1), default=DEFAULT_MAX_ROWS, show_default=True,
              help="Rows per table unless --all.")
def diff_command(
    a: str, b: str, as_json: bool, stat: bool, rtol: float, atol: float, equal_nan: bool, ignore_dtype: bool,
    tensors_only: bool,
    only: tuple[str, ...], exclude: tuple[str, ...], key: str | None, key_a: str | None, key_b: str | None,
    allow: tuple[str, ...], verify: bool, show_all: bool, max_rows: int,
) -> None:
    """Compare two checkpoints: keys, dtypes, shapes, values, optimizer state.

    Works across formats: tensors are matched by their dotted path (model.layers.0.weight,
    optimizer.state.0.exp_avg). Equal tensors are recognised from their raw bytes without
    decoding; the others get max abs/rel diff, mean abs diff, the share of differing elements,
    NaN/Inf changes and whether they are allclose under --rtol/--atol. Nothing in either file is
    executed, and torch is not needed.

    \b
    Examples:
      ckpt diff before.pt after.pt
      ckpt diff run1/last.ckpt run2/last.ckpt --stat
      ckpt diff model.pt model-bf16.pt --ignore-dtype --atol 1e-2
      ckpt diff lightning.ckpt exported.pt --key-a state_dict
      ckpt diff model.pt model.safetensors --tensors-only
      ckpt diff a.pt b.pt --exclude 'optimizer.*' --json | jq '.tensors[] | select(.status != "identical") | .path'

    Exit codes: 0 same (within tolerance), 1 different, 2 error.
    """
    keys = (key_a if key_a is not None else key, key_b if key_b is not None else key)
    progress = _progress_bar() if not as_json else None
    try:
        report = ckpt.diff(a, b, rtol=rtol, atol=atol, equal_nan=equal_nan, ignore_dtype=ignore_dtype,
                           tensors_only=tensors_only,
                           only=only, exclude=exclude,
                           key=keys, allow=allow, verify=verify,
                           progress=progress.update if progress is not None else None)
    finally:
        if progress is not None:
            progress.close()
    if as_json:
        # one json.dumps (C encoder) rather than json.dump (a Python loop of small writes)
        sys.stdout.write(json.dumps(report.as_json(), separators=(",", ":"), allow_nan=False) + "\n")
    elif stat:
        render_stat(report)
    else:
        render(report, show_all=show_all, max_rows=max_rows)
    sys.exit(EXIT_OK if report.same else EXIT_FINDINGS)


class _Bar:
    """A rich progress bar on stderr, shown only on a terminal and only for work worth showing."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

        self.progress = Progress(
            "comparing", BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn(),
            console=Console(stderr=True), transient=True,
        )
        self.task: Any = None

    def update(self, done: int, total: int) -> None:
        if self.task is None:
            if total < (64 << 20):
                return
            self.progress.start()
            self.task = self.progress.add_task("compare", total=total)
        self.progress.update(self.task, completed=done, total=total)

    def close(self) -> None:
        if self.task is not None:
            self.progress.stop()


def _progress_bar() -> _Bar | None:
    from rich.console import Console

    return _Bar() if Console(stderr=True).is_terminal else None


def _console() -> Any:
    from rich.console import Console

    console = Console()
    if not console.is_terminal:
        console = Console(width=max(console.width, 160))
    return console


# -- formatting ------------------------------------------------------------------------------------


def fmt_num(x: Any) -> str:
    """``0.000123`` -> ``'1.23e-04'``; JSON's strings for non-finite numbers pass through."""
    if x is None:
        return "-"
    if isinstance(x, str):
        return x
    if x == 0:
        return "0"
    if not math.isfinite(x):
        return "nan" if x != x else ("inf" if x > 0 else "-inf")
    if 1e-3 <= abs(x) < 1e5:
        return f"{x:.4g}"
    return f"{x:.2e}"


def _pair(a: str, b: str) -> str:
    return a if a == b else f"{a} → {b}"


def _share(s: Any) -> str:
    if s is None:
        return "-"
    pct = 100 * s.differing_share
    text = f"{human_count(s.differing)}"
    if s.differing:
        text += f" ({pct:.3g}%)" if pct >= 0.01 else " (<0.01%)"
    return text


def _nonfinite(s: Any) -> str:
    if s is None or not s.has_nonfinite:
        return ""
    parts = []
    if any(s.nan):
        parts.append(f"NaN {s.nan[0]}→{s.nan[1]}")
    if any(s.inf):
        parts.append(f"Inf {s.inf[0]}→{s.inf[1]}")
    return ", ".join(parts)


def _side_line(label: str, side: Any) -> str:
    text = f"{label}: {side.path}  ({side.format}, {side.tensors} tensors, {side.values} values"
    if side.key:
        text += f", key {side.key!r}"
    return text + ")"


def _value_text(v: Any) -> str:
    if isinstance(v, dict) and "tensor" in v:
        t = v["tensor"]
        return f"tensor {t['dtype']}{shape_str(t['shape'])}"
    if isinstance(v, dict):
        return str(v.get("repr"))
    return str(v)


def verdict_text(report: ckpt.DiffReport) -> Any:
    from rich.text import Text

    c = report.counts
    t, v = c["tensors"], c["values"]
    line = Text()
    if report.same:
        line.append("Same", style="bold green")
        close = t["close"]
        line.append(f": {t['common']} tensors" + (f" ({close} within tolerance)" if close else "")
                    + f" and {v['common']} values match (rtol={report.rtol:g}, atol={report.atol:g})")
        if c["changes"]["dtype"]:
            line.append(f"; {c['changes']['dtype']} dtype changes ignored")
        return line
    line.append("Different", style="bold red")
    parts = []
    differ = t["different"] + t["not_compared"]
    if differ:
        parts.append(f"{differ} of {t['common']} tensors differ")
    if c["changes"]["dtype"] and not report.ignore_dtype:
        parts.append(f"{c['changes']['dtype']} dtype changes")
    if c["changes"]["shape"]:
        parts.append(f"{c['changes']['shape']} shape changes")
    if t["only_a"] or v["only_a"]:
        parts.append(f"{t['only_a'] + v['only_a']} only in A")
    if t["only_b"] or v["only_b"]:
        parts.append(f"{t['only_b'] + v['only_b']} only in B")
    if v["changed"]:
        parts.append(f"{v['changed']} values differ")
    line.append(": " + ", ".join(parts))
    return line


# -- the full report ---------------------------------------------------------------------------------


def render(report: ckpt.DiffReport, *, show_all: bool, max_rows: int) -> None:
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    console = _console()
    head = Text()
    head.append(_side_line("A", report.a) + "\n")
    head.append(_side_line("B", report.b))
    opts = [f"rtol={report.rtol:g}", f"atol={report.atol:g}"]
    if report.equal_nan:
        opts.append("equal_nan")
    if report.ignore_dtype:
        opts.append("dtype changes ignored")
    if report.tensors_only:
        opts.append("tensors only")
    if report.only:
        opts.append("only " + ", ".join(report.only))
    if report.exclude:
        opts.append("exclude " + ", ".join(report.exclude))
    head.append("\ncompared with " + "; ".join(opts))
    for label, side in (("A", report.a), ("B", report.b)):
        for note in side.notes:
            head.append(f"\nnote ({label}): {note}", style="yellow")
    console.print(Panel(head, title="ckpt diff", title_align="left"))

    for label, rows in (("A", report.only_a), ("B", report.only_b)):
        if not rows:
            continue
        table = Table(title=f"Only in {label} ({len(rows)})", title_justify="left", show_edge=False, pad_edge=False)
        table.add_column("name", overflow="fold")
        table.add_column("kind")
        table.add_column("dtype / value", overflow="fold")
        table.add_column("shape")
        shown = rows if show_all else rows[:max_rows]
        for r in shown:
            if r["kind"] == "tensor":
                table.add_row(r["path"] or "(root)", "tensor", r["dtype"], shape_str(r["shape"]))
            else:
                table.add_row(r["path"] or "(root)", "value", _value_text(r["value"]), "")
        if len(shown) < len(rows):
            table.caption = f"{len(rows) - len(shown)} more; --all lists every row"
        console.print(table)

    rows = report.tensors if show_all else report.changed_tensors()
    if rows:
        title = "Tensors" if show_all else "Tensors that differ"
        table = Table(title=f"{title} ({len(rows)} of {len(report.tensors)}), largest change first",
                      title_justify="left", show_edge=False, pad_edge=False)
        shown = rows if show_all else rows[:max_rows]
        cells = [_tensor_cells(t) for t in shown]
        with_notes = any(c[-1] for c in cells)
        for col, justify in (("name", "left"), ("status", "left"), ("dtype", "left"), ("shape", "left"),
                             ("max abs", "right"), ("max rel", "right"), ("mean abs", "right"),
                             ("differing", "right"), *((("notes", "left"),) if with_notes else ())):
            table.add_column(col, justify=justify, overflow="fold", min_width=12 if col == "name" else None)
        for c in cells:
            table.add_row(*(c if with_notes else c[:-1]))
        if len(shown) < len(rows):
            table.caption = f"{len(rows) - len(shown)} more; --all lists every tensor, --stat groups them"
        elif not show_all and len(rows) < len(report.tensors):
            table.caption = f"{len(report.tensors) - len(rows)} identical tensors not shown; --all lists them"
        console.print(table)

    if report.values:
        table = Table(title=f"Values that differ ({len(report.values)} of {report.values_compared + sum(1 for v in report.values if v.kind == 'type_changed')})",
                      title_justify="left", show_edge=False, pad_edge=False)
        table.add_column("name", overflow="fold")
        table.add_column("A", overflow="fold")
        table.add_column("B", overflow="fold")
        shown_values = report.values if show_all else report.values[:max_rows]
        for v in shown_values:
            j = v.as_json()
            note = ""
            if v.kind == "type_changed":
                note = " (same value)" if v.equal_value else ""
            table.add_row(v.path or "(root)", _value_text(j["a"]), _value_text(j["b"]) + note)
        if len(shown_values) < len(report.values):
            table.caption = f"{len(report.values) - len(shown_values)} more; --all lists every value"
        console.print(table)

    for opt in report.optimizers:
        console.print(_optimizer_panel(opt, show_all=show_all, max_rows=max_rows))

    console.print(verdict_text(report))


def _tensor_cells(t: Any) -> list[Any]:
    """One row of the tensor table: name, status, dtype, shape, max abs/rel, mean abs, differing, notes."""
    from rich.text import Text

    s = t.stats
    notes = [f"{c}: {_attr(t, c)}" for c in t.changes if c not in ("dtype", "shape")]
    if _nonfinite(s):
        notes.append(_nonfinite(s))
    if t.note:
        notes.append(t.note)
    if t.same_as:
        notes.append(f"= {t.same_as}")
    numeric = s is not None and s.compared_as != "raw"
    return [
        t.path or "(root)",
        Text(t.status, style=_STYLE.get(t.status, "")),
        _pair(t.a.dtype.name, t.b.dtype.name),
        _pair(shape_str(t.a.shape), shape_str(t.b.shape)),
        fmt_num(s.max_abs) if numeric else "-",
        fmt_num(s.max_rel) if numeric else "-",
        fmt_num(s.mean_abs) if numeric else "-",
        _share(s),
        "; ".join(notes),
    ]


def _attr(t: Any, change: str) -> str:
    if change == "device":
        return _pair(t.a.device, t.b.device)
    if change == "requires_grad":
        return _pair(str(t.a.requires_grad), str(t.b.requires_grad))
    if change == "parameter":
        return _pair("Parameter" if t.a.is_parameter else "tensor", "Parameter" if t.b.is_parameter else "tensor")
    return change


def _optimizer_panel(opt: dict[str, Any], *, show_all: bool, max_rows: int) -> Any:
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    names = opt["optimizer"]
    name = _pair(str(names["a"] or "unknown"), str(names["b"] or "unknown"))
    head = Text()
    step = opt["step"]
    if step["a"] is not None or step["b"] is not None:
        head.append(f"step {_pair(_step(step['a']), _step(step['b']))}; ")
    head.append(f"{opt['parameters_changed']} of {opt['parameters']} parameters' state changed")
    if opt["matched_by"] == "name":
        head.append(" (matched by param_names: the order of parameters differs)")
    for g in opt["param_groups"]:
        if g["only_in"]:
            head.append(f"\ngroup {g['index']}: only in {g['only_in'].upper()}", style="yellow")
            continue
        changes = [f"{c['name']} {_pair(_short(c['a']), _short(c['b']))}" for c in g["changes"]]
        if "params" in g:
            changes.append(f"params {_pair(_short(g['params']['a']), _short(g['params']['b']))}")
        if changes:
            head.append(f"\ngroup {g['index']}: " + ", ".join(changes), style="yellow")
    parts: list[Any] = [head]
    rows = [p for p in opt["params"] if p["changed"]] if not show_all else opt["params"]
    if rows:
        state_names: list[str] = []
        for p in rows:
            for k in p["state"]:
                if k not in state_names:
                    state_names.append(k)
        table = Table(show_edge=False, pad_edge=False, title="per parameter: max abs diff (status)", title_justify="left")
        table.add_column("param", overflow="fold")
        table.add_column("step", justify="right")
        for k in state_names:
            table.add_column(k, justify="right")
        shown = rows if show_all else rows[:max_rows]
        for p in shown:
            label = f"{p['index']}" + (f" {p['name']}" if p["name"] else "")
            if p["only_in"]:
                table.add_row(label, f"only in {p['only_in'].upper()}", *["" for _ in state_names])
                continue
            st = p["step"]
            cells = []
            for k in state_names:
                e = p["state"].get(k)
                if e is None:
                    cells.append("")
                elif "max_abs_diff" in e:
                    cells.append(f"{fmt_num(e['max_abs_diff'])} ({e['status']})")
                else:
                    cells.append(e["status"])
            table.add_row(label, _pair(fmt_num(st["a"]), fmt_num(st["b"])) if st else "", *cells)
        if len(shown) < len(rows):
            table.caption = f"{len(rows) - len(shown)} more; --all lists every parameter"
        parts.append(table)
    title = f"Optimizer {opt['path'] or '(root)'}: {name}"
    return Panel(Group(*parts), title=title, title_align="left")


def _step(v: Any) -> str:
    """An optimizer's step: one number, or ``low–high`` when its parameters are at different steps."""
    if isinstance(v, list) and len(v) == 2:
        return f"{fmt_num(v[0])}–{fmt_num(v[1])}"
    return fmt_num(v)


def _short(v: Any) -> str:
    if isinstance(v, float):
        return fmt_num(v)
    text = str(v)
    return text if len(text) <= 40 else text[:37] + "..."


# -- --stat -----------------------------------------------------------------------------------------


def render_stat(report: ckpt.DiffReport) -> None:
    """One screen: which parts of the model changed, how much, and the totals."""
    from rich.table import Table
    from rich.text import Text

    console = _console()
    console.print(Text(_side_line("A", report.a) + "\n" + _side_line("B", report.b)))
    entries: list[tuple[str, str, Any]] = [(t.path, "common", t) for t in report.tensors]
    entries += [(r["path"], "only_a", r) for r in report.only_a if r["kind"] == "tensor"]
    entries += [(r["path"], "only_b", r) for r in report.only_b if r["kind"] == "tensor"]
    if entries:
        groups, how = group_tensors([e[0] for e in entries], depth=None, max_rows=STAT_ROWS)
        table = Table(show_edge=False, pad_edge=False, caption=how, caption_justify="left")
        for col, justify in (("tensors", "left"), ("changed", "right"), ("max abs diff", "right"),
                             ("differing elements", "right"), ("", "left")):
            table.add_column(col, justify=justify, overflow="fold")
        scored = []
        for name, members in groups.items():
            rows = [entries[i] for i in members]
            changed = sum(1 for _, kind, t in rows if kind != "common" or t.is_difference or t.status == "close")
            common_changed = [t for _, kind, t in rows if kind == "common" and (t.is_difference or t.status == "close")]
            top = max((t.magnitude for t in common_changed), default=None)
            numel = sum(t.stats.numel if t.stats else t.a.numel for _, kind, t in rows if kind == "common")
            differing = sum(t.stats.differing for _, kind, t in rows if kind == "common" and t.stats)
            extra = [f"{sum(1 for _, k, _t in rows if k == side)} only in {side[-1].upper()}"
                     for side in ("only_a", "only_b") if any(k == side for _, k, _t in rows)]
            scored.append((name, len(rows), changed, top, numel, differing, extra))
        shown = scored[:STAT_ROWS]
        for name, count, changed, top, numel, differing, extra in shown:
            share = differing / numel if numel else 0.0
            bar = "█" * max(1 if differing else 0, round(share * 20))
            table.add_row(
                name or "(root)", f"{changed}/{count}" + (" " + ", ".join(extra) if extra else ""),
                fmt_num(top) if top is not None else "", f"{100 * share:.3g}%" if differing else "",
                Text(bar, style="red"),
            )
        if len(scored) > len(shown):
            table.add_row(f"... {len(scored) - len(shown)} more groups", "", "", "", "")
        console.print(table)
    c = report.counts
    t = c["tensors"]
    line = Text()
    line.append(f"{t['common']} common tensors: {t['identical']} identical, {t['close']} close, "
                f"{t['different']} different, {t['not_compared']} not compared; "
                f"{t['only_a']} only in A, {t['only_b']} only in B; "
                f"{human_count(c['elements']['differing'])} of {human_count(c['elements']['compared'])} elements "
                f"differ; {human_bytes(c['bytes_compared'])} compared")
    v = c["values"]
    line.append(f"\n{v['common']} common values: {v['changed']} differ; {v['only_a']} only in A, {v['only_b']} only in B")
    for opt in report.optimizers:
        step = opt["step"]
        line.append(f"\noptimizer {opt['path'] or '(root)'}: {opt['parameters_changed']} of {opt['parameters']} "
                    "parameters' state changed")
        if step["a"] is not None or step["b"] is not None:
            line.append(f", step {_pair(_step(step['a']), _step(step['b']))}")
        hp = sum(len(g["changes"]) for g in opt["param_groups"])
        if hp:
            line.append(f", {hp} hyper-parameter changes")
    console.print(line)
    console.print(verdict_text(report))
