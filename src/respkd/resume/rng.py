"""The random number generators a training state saves and restores: torch's (CPU and the run's CUDA device: what
dropout draws from, one state per process), numpy's and Python's (respkd draws nothing from them while training;
saved so that code that does is exact too). States are stored as uint8 tensors, their small parts as JSON.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

__all__ = ["other_rng_state", "set_rng_state", "torch_rng_state"]


def _uint8(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array).view(np.uint8).copy())


def torch_rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """torch's generators (CPU, and the run's CUDA device): what dropout draws from; one state per process."""
    states = {"rng.torch": torch.get_rng_state()}
    if device.type == "cuda":
        states["rng.cuda"] = torch.cuda.get_rng_state(device)
    return states


def other_rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """numpy's and Python's global generators (respkd draws nothing from them while training; saved so that code that
    does is exact too). Seeded alike in every process, so process 0's stand for all."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    tensors = {"rng.numpy": _uint8(keys.astype("<u4")), "rng.python": _uint8(np.array(internal, dtype="<u4"))}
    return tensors, {"numpy": [kind, int(pos), int(has_gauss), float(gauss)], "python": [version, gauss_next]}


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any], device: torch.device) -> None:
    """Restore what :func:`torch_rng_state` and :func:`other_rng_state` saved."""
    torch.set_rng_state(tensors["rng.torch"])
    if device.type == "cuda" and "rng.cuda" in tensors:
        torch.cuda.set_rng_state(tensors["rng.cuda"], device)
    kind, pos, has_gauss, gauss = meta["numpy"]
    np.random.set_state((kind, tensors["rng.numpy"].numpy().view("<u4").astype(np.uint32), pos, has_gauss, gauss))
    version, gauss_next = meta["python"]
    random.setstate((version, tuple(int(x) for x in tensors["rng.python"].numpy().view("<u4")), gauss_next))
