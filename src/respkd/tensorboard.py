"""TensorBoard scalars beside ``metrics.jsonl`` (``train.tensorboard: true``, the ``tensorboard`` extra).

Each epoch's record, the line written to ``metrics.jsonl``, becomes scalars at step = epoch under
``<run>/tensorboard/``: training terms as ``train/<key>`` (``train/loss``, ``train/soft_loss``, ``train/lr``, ...),
test metrics as ``test/<key>`` (``test/errors``, ``test/top1``, ...). ``tensorboard --logdir runs`` shows every run.
The package is imported only when a run asks for it.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any

from respkd.errors import RespkdError

__all__ = ["TENSORBOARD_DIR", "EpochScalars", "require_tensorboard", "scalar_tags"]

TENSORBOARD_DIR = "tensorboard"


def require_tensorboard() -> None:
    """Say before anything runs that ``train.tensorboard: true`` needs the tensorboard package."""
    if importlib.util.find_spec("tensorboard") is None:
        raise RespkdError("train.tensorboard: true needs the tensorboard package: pip install 'respkd[tensorboard]' "
                          "(or tensorboard>=2.14), or set train.tensorboard: false")


def scalar_tags(record: dict[str, Any]) -> dict[str, float]:
    """The scalars of one epoch's record, by TensorBoard tag: ``test_*`` keys under ``test/``, the rest under
    ``train/``; the epoch (the step) and anything not a finite number are left out."""
    tags = {}
    for key, value in record.items():
        if key == "epoch" or isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        tags[f"test/{key.removeprefix('test_')}" if key.startswith("test_") else f"train/{key}"] = float(value)
    return tags


class EpochScalars:
    """Writes epoch records as TensorBoard scalars into ``run_dir/tensorboard``; with ``enabled=False`` it writes
    nothing and needs no package. A context manager, like the metrics file it goes with.

    ``epochs_done``: epochs already recorded by an interrupted run being resumed; events of later epochs (those of
    an epoch cut short) are purged, so each epoch is listed once, as in ``metrics.jsonl``.
    """

    def __init__(self, run_dir: Path, enabled: bool = True, epochs_done: int = 0) -> None:
        self.writer = None
        if enabled:
            require_tensorboard()
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(Path(run_dir) / TENSORBOARD_DIR),
                                        purge_step=epochs_done + 1 if epochs_done else None)

    def write(self, record: dict[str, Any]) -> None:
        if self.writer is None:
            return
        for tag, value in scalar_tags(record).items():
            self.writer.add_scalar(tag, value, global_step=record["epoch"])
        self.writer.flush()  # one epoch's few scalars: on disk now, so a killed run keeps them

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    def __enter__(self) -> "EpochScalars":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
