"""Say what people actually store: model state dicts, optimizer state dicts, training checkpoints.

Each recogniser looks at one mapping of the tree and returns a description (a JSON-ready dict)
or ``None``. Optimizers are named from their per-parameter state keys and param-group
hyper-parameters, e.g. Adam's ``exp_avg``/``exp_avg_sq`` with an ``amsgrad`` flag.

>>> guess_optimizer({"exp_avg", "exp_avg_sq", "step"}, {"lr", "betas", "amsgrad", "decoupled_weight_decay"}, True)
'AdamW'
>>> guess_optimizer({"momentum_buffer"}, {"lr", "momentum", "nesterov"}, False)
'SGD'
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from operator import attrgetter
from typing import Any

from .jsonable import finite_number, json_scalar
from .tensors import TensorRef
from .values import brief_repr

MODEL_KEYS = ("state_dict", "model", "model_state_dict", "model_state", "net", "network", "module", "ema", "model_ema", "ema_state_dict")
OPTIMIZER_KEYS = ("optimizer", "optimizer_state_dict", "optimizer_states", "optim", "opt", "optimizers")
TRAINING_KEYS = (
    "epoch", "global_step", "step", "iteration", "iter", "lr_scheduler", "lr_schedulers", "scheduler",
    "scaler", "amp", "loops", "callbacks", "hyper_parameters", "hparams", "args", "config",
    "best_score", "best_metric", "rng_state", "pytorch-lightning_version",
)

# (state keys that identify it, optimizer name); first match wins, most specific first
_STATE_SIGNATURES: list[tuple[frozenset[str], str]] = [
    (frozenset({"exp_avg", "exp_avg_sq", "mu_product"}), "NAdam"),
    (frozenset({"exp_avg", "exp_inf"}), "Adamax"),
    (frozenset({"square_avg", "acc_delta"}), "Adadelta"),
    (frozenset({"row_var", "col_var"}), "Adafactor"),
    (frozenset({"eta", "mu", "ax"}), "ASGD"),
    (frozenset({"prev", "step_size"}), "Rprop"),
    (frozenset({"func_evals", "n_iter"}), "LBFGS"),
    (frozenset({"square_avg"}), "RMSprop"),
    (frozenset({"sum"}), "Adagrad"),
    (frozenset({"momentum_buffer"}), "SGD"),
    (frozenset({"exp_avg", "exp_avg_sq"}), "Adam"),
]
_GROUP_SIGNATURES: list[tuple[frozenset[str], str]] = [
    (frozenset({"momentum_decay"}), "NAdam"),
    (frozenset({"beta2_decay"}), "Adafactor"),
    (frozenset({"lr_decay"}), "Adagrad"),
    (frozenset({"lambd", "t0"}), "ASGD"),
    (frozenset({"etas", "step_sizes"}), "Rprop"),
    (frozenset({"max_iter", "history_size"}), "LBFGS"),
    (frozenset({"rho"}), "Adadelta"),
    (frozenset({"alpha", "centered"}), "RMSprop"),
    (frozenset({"betas", "amsgrad"}), "Adam"),
    (frozenset({"momentum", "nesterov"}), "SGD"),
]


def guess_optimizer(state_keys: set[str], group_keys: set[str], decoupled: bool) -> str | None:
    """The torch optimizer class most likely to have written this state (``None`` if unknown)."""
    name = None
    for signature, candidate in _STATE_SIGNATURES:
        if signature <= state_keys:
            name = candidate
            break
    if name is None or name == "Adam":
        for signature, candidate in _GROUP_SIGNATURES:
            if signature <= group_keys:
                if name is None or candidate in ("Adam", "NAdam"):
                    name = candidate
                break
        if name == "Adam" and "amsgrad" not in group_keys and "betas" in group_keys:
            name = "RAdam"
    if name == "Adam" and decoupled:
        name = "AdamW"
    return name


_shape = attrgetter("shape")


def is_tensor(value: Any) -> bool:
    return type(value) is TensorRef


def recognize_optimizer(obj: Mapping[Any, Any]) -> dict[str, Any] | None:
    """An optimizer ``state_dict()``: ``{'state': {index: {...}}, 'param_groups': [{'params': [...], ...}]}``."""
    if len(obj) > 2 or "param_groups" not in obj or set(obj.keys()) - {"state", "param_groups"}:
        return None
    state, groups = obj.get("state", {}), obj["param_groups"]
    if not isinstance(state, dict) or not isinstance(groups, list):
        return None
    if not all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in groups):
        return None
    state_keys: set[str] = set()
    per_param = []
    steps = set()
    for index, entry in state.items():
        if not isinstance(entry, dict):
            continue
        state_keys.update(k for k in entry if isinstance(k, str))
        step = finite_number(entry.get("step"))
        if step is not None:
            steps.add(step)
        per_param.append({
            "index": index,
            "state": {
                k: _describe_brief(v) for k, v in entry.items() if isinstance(k, str)
            },
        })
    group_keys: set[str] = set()
    group_info = []
    decoupled = False
    for g in groups:
        group_keys.update(k for k in g if isinstance(k, str))
        decoupled = decoupled or g.get("decoupled_weight_decay") is True
        hyper = {k: json_scalar(v) for k, v in g.items() if k not in ("params", "param_names")}
        info: dict[str, Any] = {"params": list(g["params"]), "hyper_parameters": hyper}
        if isinstance(g.get("param_names"), list):
            info["param_names"] = list(g["param_names"])
        group_info.append(info)
    return {
        "kind": "optimizer",
        "optimizer": guess_optimizer(state_keys, group_keys, decoupled),
        "parameters": sum(len(g["params"]) for g in groups),
        "parameters_with_state": len(per_param),
        "state_keys": sorted(state_keys),
        "step": sorted(steps)[-1] if len(steps) == 1 else (sorted(steps) if steps else None),
        "param_groups": group_info,
        "state": per_param,
    }


def recognize_state_dict(obj: Mapping[Any, Any], numel: int | None = None) -> dict[str, Any] | None:
    """A model ``state_dict()``: string keys, every value a tensor. A caller that has checked
    that already, and added up the tensors' elements, passes ``numel``."""
    if numel is None:
        if not obj or set(map(type, obj)) != {str} or set(map(type, obj.values())) != {TensorRef}:
            return None
        numel = sum(map(math.prod, map(_shape, obj.values())))
    return {
        "kind": "state_dict",
        "tensors": len(obj),
        "numel": numel,
        "module_metadata": hasattr(obj, "_metadata"),
    }


def recognize_training(obj: Mapping[Any, Any], children: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """A training checkpoint wrapping a model and/or optimizer with bookkeeping values.

    ``children`` maps each key of ``obj`` to what was recognised there.
    """
    keys = [k for k in obj if type(k) is str]
    models = [k for k in keys if children.get(k, {}).get("kind") == "state_dict" or (k in MODEL_KEYS and k in children)]
    optimizers = [k for k in keys if children.get(k, {}).get("kind") == "optimizer" or (
        k in OPTIMIZER_KEYS and isinstance(obj[k], list) and any(
            isinstance(o, dict) and recognize_optimizer(o) for o in obj[k]
        )
    )]
    bookkeeping = [k for k in keys if k in TRAINING_KEYS]
    if not (models or optimizers) or not (bookkeeping or (models and optimizers)):
        return None
    framework = None
    if "pytorch-lightning_version" in keys:
        version = obj["pytorch-lightning_version"]
        framework = f"lightning {version if type(version) is str else brief_repr(version)}"
    elif "optimizer_states" in keys and "state_dict" in keys:
        framework = "lightning"
    info: dict[str, Any] = {
        "kind": "training_checkpoint",
        "framework": framework,
        "model": models,
        "optimizer": optimizers,
    }
    for k in ("epoch", "global_step", "step", "iteration"):
        number = finite_number(obj.get(k))
        if number is not None:
            info[k] = number
    return info


def _describe_brief(value: Any) -> Any:
    if is_tensor(value):
        return {"dtype": value.dtype.name, "shape": list(value.shape)}
    return json_scalar(value)
