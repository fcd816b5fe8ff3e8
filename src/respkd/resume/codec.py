"""The optimizer's and the scheduler's ``state_dict`` in a training state: tensors apart, the rest as plain JSON.

JSON has no tuples (AdamW's ``betas``), Counters (MultiStepLR's ``milestones``) or mappings with non-string keys
(the optimizer's state by parameter id): :func:`to_json` keeps them by tags that :func:`from_json` reads back, so a
resumed optimizer and scheduler get back exactly the values they had. Nothing is pickled.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch

__all__ = ["from_json", "join_optimizer", "split_optimizer", "to_json"]


def to_json(value: Any) -> Any:
    """Plain JSON, with the few non-JSON types these state dicts hold kept by tags: tuples (AdamW's ``betas``),
    Counters (MultiStepLR's ``milestones``) and dicts with non-string keys. Anything else is a bug: TypeError."""
    if isinstance(value, Counter):
        return {"__counter__": [[to_json(k), v] for k, v in value.items()]}
    if isinstance(value, tuple):
        return {"__tuple__": [to_json(v) for v in value]}
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value):
            return {k: to_json(v) for k, v in value.items()}
        return {"__items__": [[to_json(k), to_json(v)] for k, v in value.items()]}
    if isinstance(value, list):
        return [to_json(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot store a {type(value).__name__} in the training state's JSON")


def from_json(value: Any) -> Any:
    """The value :func:`to_json` encoded."""
    if isinstance(value, list):
        return [from_json(v) for v in value]
    if isinstance(value, dict):
        if set(value) == {"__counter__"}:
            return Counter({from_json(k): v for k, v in value["__counter__"]})
        if set(value) == {"__tuple__"}:
            return tuple(from_json(v) for v in value["__tuple__"])
        if set(value) == {"__items__"}:
            return {from_json(k): from_json(v) for k, v in value["__items__"]}
        return {k: from_json(v) for k, v in value.items()}
    return value


def split_optimizer(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimizer's ``state_dict`` as tensors named ``optimizer.<param>.<name>`` and JSON for everything else."""
    tensors: dict[str, torch.Tensor] = {}
    other: dict[str, dict[str, Any]] = {}
    for param, entries in state_dict["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{param}.{name}"] = value
            else:
                other.setdefault(str(param), {})[name] = to_json(value)
    return tensors, {"param_groups": to_json(state_dict["param_groups"]), "state": other}


def join_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    """The ``state_dict`` that :func:`split_optimizer` split (the tensors may hold other keys: they are ignored)."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, param, name = key.split(".", 2)
            state.setdefault(int(param), {})[name] = value
    for param, entries in meta["state"].items():
        state.setdefault(int(param), {}).update({name: from_json(v) for name, v in entries.items()})
    return {"state": state, "param_groups": from_json(meta["param_groups"])}
