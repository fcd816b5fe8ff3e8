"""respkd: response-based knowledge distillation (Hinton, Vinyals & Dean 2015) for PyTorch.

The public face: the distillation task (:class:`Distiller`, :class:`Supervised`), its losses, models by name
(:func:`build_model`) and from checkpoints (:func:`load_model`), the loop's two functions (:func:`train_one_epoch`,
:func:`evaluate`: any ``DataLoader`` of ``(x, y)``) and a whole run from a config (:func:`run`, what
``respkd train`` / ``respkd distill`` do). README.md, "In your own training loop", shows them together.

Each name is imported from its module on first use (PEP 562), so ``import respkd`` (and the ``respkd`` command, whose
modules all live under this package) loads nothing; ``from respkd import Distiller`` loads torch and the distiller,
not torchvision or the run orchestration that only :func:`run` needs.
"""

from __future__ import annotations

import importlib

from respkd.version import __version__

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (type checkers read this spelling too)
if TYPE_CHECKING:  # what static tools see; the table below must name the same modules (tests/test_imports.py)
    from respkd.checkpoint import load_model
    from respkd.config import load_config
    from respkd.distill import Distiller, Supervised
    from respkd.engine import evaluate, train_one_epoch
    from respkd.ensemble import Ensemble
    from respkd.experiment import run
    from respkd.losses import (distillation_loss, dist_loss, dkd_loss, hard_label_loss, logit_mse_loss,
                               soft_target_loss, standardize_logits)
    from respkd.models import build_model

# Each public name and the module that defines it.
EXPORTS = {
    "Distiller": "respkd.distill", "Supervised": "respkd.distill",
    "distillation_loss": "respkd.losses", "soft_target_loss": "respkd.losses", "hard_label_loss": "respkd.losses",
    "logit_mse_loss": "respkd.losses", "dkd_loss": "respkd.losses", "dist_loss": "respkd.losses",
    "standardize_logits": "respkd.losses",
    "Ensemble": "respkd.ensemble",
    "build_model": "respkd.models", "load_model": "respkd.checkpoint",
    "train_one_epoch": "respkd.engine", "evaluate": "respkd.engine",
    "load_config": "respkd.config", "run": "respkd.experiment",
}

__all__ = [
    "Distiller", "Ensemble", "Supervised", "build_model", "distillation_loss", "dist_loss", "dkd_loss", "evaluate",
    "hard_label_loss", "load_config", "load_model", "logit_mse_loss", "run", "soft_target_loss",
    "standardize_logits", "train_one_epoch",
]


def __getattr__(name: str) -> object:
    if name not in EXPORTS:
        raise AttributeError(f"module 'respkd' has no attribute {name!r}")
    value = getattr(importlib.import_module(EXPORTS[name]), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
