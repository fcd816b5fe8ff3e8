"""Where a run executes: the device it trains on, the seeds it starts from, and the record of the machine and the
software that every run folder keeps (``environment.json``, and ``environment`` in ``summary.json``)."""

from __future__ import annotations

import os
import platform
import random
import subprocess
from typing import Any

import numpy as np
import torch

from respkd import distributed
from respkd.version import __version__
from respkd.errors import RespkdError

__all__ = ["capture_environment", "resolve_device", "seed_everything", "usable_cores"]


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators (what model initialisation and dropout draw from)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one, else the machine's count): what
    parallel workers share."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def resolve_device(name: str) -> torch.device:
    """The config's ``device`` (``auto``: CUDA when available), refused in one line when it cannot be used."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise RespkdError(f"unknown device '{name}'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RespkdError(f"device '{name}' requested but CUDA is not available (use device: cpu or auto)")
    return distributed.process_device(device)  # under torchrun: cuda -> cuda:LOCAL_RANK


def capture_environment() -> dict[str, Any]:
    """Library versions, machine, threads and git commit (with whether the tree had uncommitted changes)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5).stdout.strip()
        # Uncommitted changes mean the commit alone does not reproduce the run: record that.
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                    text=True, timeout=5).stdout.strip()) if commit else None
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "", None
    cpu = platform.processor()
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import torchvision  # here, not at the top: importing it takes seconds, and only this record needs it

    return {
        "respkd": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
        "python": platform.python_version(), "platform": platform.platform(), "cpu": cpu,
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "git_commit": commit, "git_dirty": dirty,
    }
