"""A run folder and the epochs trained into it: one writer and one loop for runs, sweeps' cells and specialists.

A run folder ``<runs_root>/<name>/`` holds:
  config.yaml        the validated config, overrides applied
  environment.json   library versions, machine, threads, git commit
  metrics.jsonl      one JSON line per epoch, added as training goes (the file is rewritten whole each epoch, so it
                     only ever holds whole lines, also after a failed write)
  tensorboard/       with train.tensorboard: true, the same per-epoch metrics as TensorBoard scalars
  log.txt            the human-readable log
  model.safetensors  the trained student with its metadata (see respkd.checkpoint)
  summary.json       final metrics, parameter count, multiply-adds, wall time: what the results table reads; a run
                     is finished once it exists
  resume.safetensors while training: the state a killed run resumes from (see respkd.resume); gone once finished
  .lock              while a process works in the folder: who it is (see respkd.locks); gone once it ends
A specialist's folder holds metrics.jsonl, log.txt, model.safetensors and summary.json (its config and environment
are in its summary).

:class:`RunDir` writes these files (under torchrun only process 0 does); :func:`train_epochs` is the loop over the
epochs, which writes a metrics line and a log line per epoch and keeps the training state it is given; it stops
cleanly on a signal (:mod:`respkd.preemption`) and on a non-finite loss (:mod:`respkd.guard`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
import yaml
from torch import nn

from respkd import distributed, preemption
from respkd.checkpoint import CHECKPOINT_NAME, SUMMARY_NAME, save_checkpoint
from respkd.config import RunConfig, config_to_dict, validate_config
from respkd.engine import EpochProgress, evaluate, train_one_epoch
from respkd.errors import RespkdError, Stopped, WriteFailed
from respkd.files import atomic_write_text, write_failure, writing
from respkd.guard import StepGuard
from respkd.provenance import made_from
from respkd.resume import TrainingState
from respkd.tensorboard import EpochScalars

__all__ = [
    "CONFIG_NAME", "ENVIRONMENT_NAME", "LOG_NAME", "METRICS_NAME", "Epochs", "Metrics", "RunDir", "RunLog",
    "check_folder_can_hold", "is_finished", "summary_matches", "train_epochs",
]

CONFIG_NAME = "config.yaml"
ENVIRONMENT_NAME = "environment.json"
LOG_NAME = "log.txt"
METRICS_NAME = "metrics.jsonl"


def summary_matches(cfg: RunConfig, runs_root: Path) -> bool:
    """True when ``cfg``'s run folder holds a summary made from exactly this config (see :mod:`respkd.provenance`:
    the stored config is validated again before comparing)."""
    path = Path(runs_root) / cfg.name / SUMMARY_NAME
    return made_from(path, config_to_dict(cfg), key="config",
                     normalize=lambda stored: config_to_dict(validate_config(stored, str(path))))


def is_finished(cfg: RunConfig, runs_root: Path) -> bool:
    """True when ``cfg``'s run folder holds a summary made from exactly this config, and the model it made.

    A summary without its weights (the repository commits weights only for the models of its results table) is not
    finished: later stages need the model, so the run is trained again.
    """
    return summary_matches(cfg, runs_root) and (Path(runs_root) / cfg.name / CHECKPOINT_NAME).is_file()


def check_folder_can_hold(path: Path, what: str) -> None:
    """Refuse a folder to write into whose path is blocked by a file (itself, or one of its parents)."""
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                raise RespkdError(f"{what} {path}: {p} is not a folder" if p != path else f"{what} {path} is not a folder")
            return


class RunLog:
    """Prints a line and appends it to ``log.txt``: a new one, or with ``append`` the one a resumed run began (with
    ``path=None``, as in processes other than torchrun's 0, neither). A failed write ends the run with one line
    (:class:`~respkd.errors.WriteFailed`); the log keeps what was written before it."""

    def __init__(self, path: Path | None, quiet: bool = False, append: bool = False) -> None:
        self.path = path
        self.file = None
        if path is not None:
            with writing(path, _LOG_KEPT):
                self.file = open(path, "a" if append else "w", buffering=1)
                if append and self.file.tell() and not _ends_a_line(path):
                    self.file.write("\n")  # a line cut short by a full disk: begin on a line of its own
        self.quiet = quiet or path is None

    def __call__(self, line: str) -> None:
        if not self.quiet:
            print(line, flush=True)
        self.write(line)

    def write(self, line: str) -> None:
        """Append ``line`` to the file only (what the CLI prints itself, as an error line)."""
        if self.file is None:
            return
        try:
            self.file.write(line + "\n")
        except OSError as err:
            self.close(quietly=True)
            raise write_failure(self.path, err, _LOG_KEPT) or err from None

    def close(self, quietly: bool = False) -> None:
        """Close the file; ``quietly`` after a failed write, dropping what its buffer could not write."""
        file, self.file = self.file, None
        if file is None:
            return
        try:
            file.close()  # closes the descriptor even when the last flush fails
        except OSError as err:
            if not quietly:
                raise write_failure(self.path, err, _LOG_KEPT) or err from None


_LOG_KEPT = "the log so far is intact"


def _ends_a_line(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


class Metrics:
    """``metrics.jsonl``: :meth:`append` adds a line and rewrites the file whole (atomically), so a failed write
    (a full disk) leaves the lines before it and never half a line. The file is small (a line per epoch)."""

    def __init__(self, path: Path | None, lines: list[str]) -> None:
        self.path, self.lines = path, lines
        self._write()

    def append(self, record: dict[str, Any]) -> None:
        self.lines.append(json.dumps(record) + "\n")
        try:
            self._write()
        except WriteFailed:
            self.lines.pop()
            raise

    def _write(self) -> None:
        if self.path is not None:
            atomic_write_text(self.path, "".join(self.lines), "metrics file")


class RunDir:
    """The files of one run folder (module doc). ``writes`` is False in torchrun's processes other than 0: there
    every method writes nothing and the log prints nothing, so callers need not ask which process they are. Used as
    a context manager, it closes its log on the way out, also after an error."""

    def __init__(self, path: Path, writes: bool = True) -> None:
        self.path, self.writes = Path(path), writes
        self.log = RunLog(None)

    def start(self, config: dict[str, Any], environment: dict[str, Any]) -> None:
        """A fresh start: the folder made, an earlier summary removed (the run is not finished until a new one is
        written), the config and the environment written."""
        if not self.writes:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / SUMMARY_NAME).unlink(missing_ok=True)
        atomic_write_text(self.path / CONFIG_NAME, yaml.safe_dump(config, sort_keys=False))
        atomic_write_text(self.path / ENVIRONMENT_NAME, json.dumps(environment, indent=2))

    def open_log(self, quiet: bool = False, append: bool = False) -> RunLog:
        """``log.txt``, new or (``append``, resuming) continued; also printed unless ``quiet``."""
        self.log = RunLog(self.path / LOG_NAME if self.writes else None, quiet, append)
        return self.log

    def open_metrics(self, epochs_done: int = 0) -> Metrics:
        """``metrics.jsonl``, holding only the lines of the first ``epochs_done`` epochs: an epoch cut short by a kill
        (its line written, its state not yet) is trained again on resume and listed once."""
        if not self.writes:
            return Metrics(None, [])
        path = self.path / METRICS_NAME
        kept = path.read_text().splitlines(keepends=True)[:epochs_done] if epochs_done and path.is_file() else []
        return Metrics(path, kept)

    def finish(self, weights: dict[str, torch.Tensor], meta: dict[str, Any], summary: dict[str, Any]) -> None:
        """The final checkpoint, then the summary that marks the run finished."""
        if not self.writes:
            return
        save_checkpoint(weights, self.path / CHECKPOINT_NAME, meta)
        atomic_write_text(self.path / SUMMARY_NAME, json.dumps(summary, indent=2))

    def close(self) -> None:
        self.log.close()

    def __enter__(self) -> "RunDir":
        return self

    def __exit__(self, kind: type | None, *rest: object) -> None:
        self.log.close(quietly=kind is not None)  # after an error, a log that cannot be flushed must not mask it


@dataclass
class Epochs:
    """What :func:`train_epochs` did: the last epoch's test metrics (None without a test loader, or when no epoch
    was left to train) and the seconds spent training the epochs it trained."""

    test: dict[str, Any] | None
    train_time_s: float


def train_epochs(
    out: RunDir, task: nn.Module, student: nn.Module, loader: Iterable, optimizer: torch.optim.Optimizer,
    scheduler: Any, device: torch.device, bf16: bool, epochs: int, *, test_loader: Iterable | None = None,
    num_classes: int = 0, state: TrainingState | None = None,
    teacher_logits: Callable[[torch.Tensor, int], torch.Tensor] | None = None, progress: bool | None = None,
    tensorboard: bool = False, on_nonfinite: str = "stop", max_skipped_steps: int = 10,
) -> Epochs:
    """Train epochs 1..``epochs`` (those after ``state``'s position when resuming), one metrics line and one log line
    per epoch into ``out``; ``state`` (:class:`~respkd.resume.TrainingState`) is saved as it goes.

    ``loader`` has ``set_epoch(epoch, skip)`` (the batch order is a function of the epoch). With ``test_loader``
    every epoch ends with the student's test metrics, which join its lines (with the learning rate); without it (a
    specialist, measured once it is trained) the lines hold the losses and the time. ``teacher_logits`` and
    ``progress`` are :func:`~respkd.engine.train_one_epoch`'s. Under torchrun every process trains and evaluates its
    share: the loss terms are averaged and the test counts summed over the processes. ``tensorboard``: each metrics
    line also as TensorBoard scalars in ``out``'s ``tensorboard/`` (:mod:`respkd.tensorboard`).

    A signal (:mod:`respkd.preemption`) stops the loop after the optimizer step in flight, or after the epoch's
    evaluation: the state is saved there and :class:`~respkd.errors.Stopped` says where. A non-finite loss is
    handled as ``on_nonfinite`` says (``train.on_nonfinite``, ``train.max_skipped_steps``; :mod:`respkd.guard`).
    """
    first = state.position.epochs_done + 1 if state is not None else 1
    last_test, trained = None, 0.0
    guard = StepGuard(on_nonfinite, max_skipped_steps, len(loader), device, out.log, out.log.write,
                      lambda: (state.path, state.saved) if state is not None and state.saved else None,
                      state.position.skipped_steps if state is not None else 0)

    def after_step(done: EpochProgress) -> None:
        guard.after_step(done, save_due=state is not None and state.save_due(done))
        if state is not None:
            state.after_step(done)

    metrics = out.open_metrics(first - 1)
    scalars = EpochScalars(out.path, enabled=tensorboard and out.writes, epochs_done=first - 1)
    try:
        with scalars, preemption.deferred():
            for epoch in range(first, epochs + 1):
                done = state.position.epoch if state is not None else EpochProgress()  # trained before a resume
                loader.set_epoch(epoch, skip=done.batches)
                guard.start_epoch(epoch, done)
                stats = train_one_epoch(task, loader, optimizer, scheduler=scheduler, device=device, bf16=bf16,
                                        epoch=epoch, progress=progress, teacher_logits=teacher_logits, done=done,
                                        after_step=after_step, average=distributed.all_reduce_mean,
                                        skip_step=guard.skip if guard.skip_mode else None)
                record, shown = {"epoch": epoch, **stats}, ""
                if test_loader is not None:
                    last_test = ev = evaluate(student, test_loader, num_classes, distributed.all_reduce_sum)
                    record.update(test_top1=ev["top1"], test_top5=ev["top5"], test_errors=ev["errors"],
                                  test_loss=ev["loss"])
                    shown = f" lr={stats['lr']:.4g} test_errors={ev['errors']} top1={ev['top1']:.2f}"
                with distributed.together(signals=False):  # a failed write in process 0 stops every process
                    metrics.append(record)
                    scalars.write(record)
                    losses = " ".join(f"{k}={v:.4f}" for k, v in stats.items() if k.endswith("loss"))
                    out.log(f"epoch {epoch:>3}/{epochs} {losses}{shown} ({stats['epoch_time_s']:.1f}s)")
                trained += stats["epoch_time_s"]
                if state is not None:
                    state.end_epoch(stats["epoch_time_s"])
                guard.after_epoch()
    except Stopped as stop:
        if state is not None:
            state.save_unsaved()  # every process: under torchrun they all stopped at this step
            stop.where, stop.state = state.where(), state.path
            out.log.write(f"stopped by {stop.signal_name} at {stop.where}; the training state is saved in "
                          f"{state.path}")
        raise
    return Epochs(last_test, trained)
