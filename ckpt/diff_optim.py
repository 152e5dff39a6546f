"""Optimizer state in a diff: which parameters' moments changed, the step, the hyper-parameters.

An optimizer ``state_dict()`` flattens to ``P.state.<index>.<name>`` (per-parameter tensors such
as ``exp_avg``, and ``step``) and ``P.param_groups.<g>.<hyper-parameter>`` (``lr``, ``betas``,
``params``: the indices of the group's parameters; ``param_names`` when the optimizer was given
named parameters). Optimizers are found on those flattened paths, not on the Python objects, so
the same analysis works whatever container (or format) carried them.

State is matched by parameter index and state name. When both sides list ``param_names`` and the
same names sit at different indices (parameters registered in another order), B's state is
matched to A's by name instead (:func:`name_renames`).

>>> found = find_optimizers({"opt.state.0.exp_avg": None}, {"opt.param_groups.0.params": [0], "opt.param_groups.0.lr": 0.1})
>>> list(found), found["opt"].groups[0]["lr"], sorted(found["opt"].state[0])
(['opt'], 0.1, ['exp_avg'])
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .recognize import guess_optimizer
from .tensors import TensorRef

if TYPE_CHECKING:
    from .differ import TensorDiff

_GROUP = re.compile(r"^(?:(?P<prefix>.+)\.)?param_groups\.(?P<group>\d+)\.(?P<key>[^.]+)$")


@dataclass
class OptimizerView:
    """One optimizer as found on one side: hyper-parameters per group, state per parameter index."""

    path: str
    groups: list[dict[str, Any]] = field(default_factory=list)
    state: dict[int, dict[str, Any]] = field(default_factory=dict)

    def names(self) -> dict[int, str]:
        """Parameter index -> name, from the groups' ``param_names`` (empty when absent)."""
        out: dict[int, str] = {}
        for g in self.groups:
            params, names = g.get("params"), g.get("param_names")
            if isinstance(params, (list, tuple)) and isinstance(names, (list, tuple)) and len(params) == len(names):
                for i, n in zip(params, names):
                    if type(i) is int and type(n) is str:
                        out[i] = n
        return out

    def optimizer(self) -> str | None:
        state_keys = {k for s in self.state.values() for k in s}
        group_keys = {k for g in self.groups for k in g}
        decoupled = any(g.get("decoupled_weight_decay") is True for g in self.groups)
        return guess_optimizer(state_keys, group_keys, decoupled)


def find_optimizers(tensors: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, OptimizerView]:
    """Optimizer state dicts among flattened paths, by path (``""`` for a bare optimizer file)."""
    found: dict[str, OptimizerView] = {}
    for path, value in values.items():
        m = _GROUP.match(path)
        if m is None:
            continue
        prefix = m.group("prefix") or ""
        view = found.get(prefix)
        if view is None:
            view = found[prefix] = OptimizerView(prefix)
        g = int(m.group("group"))
        while len(view.groups) <= g:
            view.groups.append({})
        view.groups[g][m.group("key")] = value
    # a group without a params list is not an optimizer's
    for prefix in [p for p, v in found.items() if not all("params" in g for g in v.groups)]:
        del found[prefix]
    for prefix, view in found.items():
        head = f"{prefix}.state." if prefix else "state."
        for table in (tensors, values):
            for path, value in table.items():
                if not path.startswith(head):
                    continue
                index, _, name = path[len(head):].partition(".")
                if not index.isdigit() or not name or "." in name:
                    continue
                view.state.setdefault(int(index), {})[name] = value
    return found


def name_renames(a: OptimizerView, b: OptimizerView) -> dict[str, str]:
    """Path renames that move B's per-parameter state to A's index for the same parameter name,
    when both sides name the same set of parameters (each once) in a different order."""
    na, nb = a.names(), b.names()
    if not na or not nb or sorted(na.values()) != sorted(nb.values()) or len(set(na.values())) != len(na):
        return {}
    index_a = {n: i for i, n in na.items()}
    head = f"{b.path}.state." if b.path else "state."
    renames = {f"{head}{j}": f"{head}{index_a[n]}" for j, n in nb.items() if index_a[n] != j}
    return renames


def _number(value: Any) -> Any:
    if type(value) is TensorRef:
        from .tensor_compare import read_scalar

        try:
            return read_scalar(value)
        except Exception:  # a damaged step is reported by the tensor comparison itself
            return None
    return value


def _jsonable(value: Any) -> Any:
    from .jsonable import json_scalar

    return json_scalar(value)


def compare_optimizer(
    path: str,
    a: OptimizerView,
    b: OptimizerView,
    tensor_diffs: Mapping[str, TensorDiff],
    values_equal: Any,
    renamed: bool,
) -> dict[str, Any]:
    """The optimizer section of a diff report for one optimizer found on both sides (JSON-ready)."""
    names_a, names_b = a.names(), b.names()
    groups = []
    for g in range(max(len(a.groups), len(b.groups))):
        ga = a.groups[g] if g < len(a.groups) else None
        gb = b.groups[g] if g < len(b.groups) else None
        if ga is None or gb is None:
            groups.append({"index": g, "only_in": "a" if gb is None else "b", "changes": []})
            continue
        changes = []
        for k in [*ga, *(k for k in gb if k not in ga)]:
            if k in ("params", "param_names"):
                continue
            in_a, in_b = k in ga, k in gb
            if in_a and in_b and values_equal(ga[k], gb[k]):
                continue
            changes.append({"name": k, "a": _jsonable(ga.get(k)) if in_a else None,
                            "b": _jsonable(gb.get(k)) if in_b else None,
                            "only_in": None if in_a and in_b else ("a" if in_a else "b")})
        row: dict[str, Any] = {"index": g, "only_in": None, "changes": changes}
        if not values_equal(ga.get("params"), gb.get("params")):
            row["params"] = {"a": _jsonable(ga.get("params")), "b": _jsonable(gb.get("params"))}
        groups.append(row)

    head = f"{path}.state." if path else "state."
    params = []
    steps_a: set[Any] = set()
    steps_b: set[Any] = set()
    changed_params = 0
    for index in sorted(set(a.state) | set(b.state)):
        sa, sb = a.state.get(index), b.state.get(index)
        row = {"index": index, "name": names_a.get(index) or names_b.get(index), "only_in": None,
               "step": None, "state": {}}
        if sa is None or sb is None:
            row["only_in"] = "a" if sb is None else "b"
            params.append(row)
            changed_params += 1
            continue
        changed = False
        step_a, step_b = _number(sa.get("step")), _number(sb.get("step"))
        if "step" in sa or "step" in sb:
            row["step"] = {"a": _jsonable(step_a), "b": _jsonable(step_b)}
            steps_a.add(step_a)
            steps_b.add(step_b)
            changed = changed or not values_equal(step_a, step_b)
        for name in [*sa, *(k for k in sb if k not in sa)]:
            if name == "step":
                continue
            if name not in sa or name not in sb:
                row["state"][name] = {"status": "only_in_" + ("a" if name in sa else "b")}
                changed = True
                continue
            td = tensor_diffs.get(f"{head}{index}.{name}")
            if td is None:  # a non-tensor per-parameter value
                same = values_equal(sa[name], sb[name])
                row["state"][name] = {"status": "identical" if same else "changed"}
                changed = changed or not same
                continue
            entry = {"status": td.status, "changes": list(td.changes)}
            if td.stats is not None:
                s = td.stats.as_json()
                entry.update({k: s[k] for k in ("max_abs_diff", "mean_abs_diff", "differing_share")})
            row["state"][name] = entry
            changed = changed or td.status not in ("identical",) or bool(td.changes)
        row["changed"] = changed
        changed_params += changed
        params.append(row)
    for row in params:
        row.setdefault("changed", True)

    def one(steps: set[Any]) -> Any:
        """The step all parameters are at; ``[lowest, highest]`` when they differ; None if none."""
        numbers = sorted(x for x in steps if type(x) in (int, float) and x == x)
        if not numbers:
            return None
        if len(steps) == 1:
            return _jsonable(numbers[0])
        return [_jsonable(numbers[0]), _jsonable(numbers[-1])]

    return {
        "path": path,
        "optimizer": {"a": a.optimizer(), "b": b.optimizer()},
        "matched_by": "name" if renamed else "index",
        "step": {"a": one(steps_a), "b": one(steps_b)},
        "parameters": len(set(a.state) | set(b.state)),
        "parameters_changed": changed_params,
        "param_groups": groups,
        "params": params,
    }
