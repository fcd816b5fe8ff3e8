"""``train.compile``: the student, and an online teacher, run through ``torch.compile``.

Modules are compiled in place (:meth:`torch.nn.Module.compile`), so their state dicts, checkpoints, training states
and max-norm constraints are untouched; compilation itself happens at the first forward pass (and again when
train/eval mode or a batch shape changes). Whether compile can work here is asked once per device and backend: a
tiny function is compiled and run. It cannot where dynamo does not support the Python or platform, or where the
backend's code generation fails (inductor needs a C++ compiler on the CPU and Triton on CUDA); the run then says so
in one line and trains without it.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from respkd.errors import first_line

__all__ = ["BACKEND", "compile_modules", "compile_unavailable"]

BACKEND = "inductor"  # torch.compile's default backend

_probed: dict[tuple[str, str], str | None] = {}


def compile_unavailable(device: torch.device) -> str | None:
    """Why ``torch.compile`` with :data:`BACKEND` cannot run on ``device`` here, or None when it can."""
    key = (device.type, BACKEND)
    if key not in _probed:
        try:
            probe = torch.compile(lambda x: torch.relu(x) * 2.0 + 1.0, backend=BACKEND)
            if not torch.equal(probe(torch.arange(-2.0, 2.0, device=device)), torch.tensor([1.0, 1.0, 1.0, 3.0],
                                                                                           device=device)):
                raise RuntimeError("a compiled function computed a wrong result")
            _probed[key] = None
        except Exception as err:  # whatever dynamo or the backend raises: the reason is reported, the run goes on
            _probed[key] = f"{type(err).__name__}: {first_line(err)}"
    return _probed[key]


def compile_modules(modules: list[nn.Module], device: torch.device, log: Callable[[str], None]) -> bool:
    """Compile ``modules`` in place when compile can work on ``device``; else one log line says why. True if
    compiled."""
    reason = compile_unavailable(device)
    if reason is not None:
        log(f"train.compile: torch.compile is not available here ({reason}); training without it")
        return False
    for module in modules:
        module.compile(backend=BACKEND)
    return True
