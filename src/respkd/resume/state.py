"""The training state of one run (``<run>/resume.safetensors``): written as it trains, checked and read back to
resume; the file's layout is described in :mod:`respkd.resume`."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple

import torch
from safetensors.torch import save_file

from respkd import distributed
from respkd.checkpoint import load_checkpoint, read_checkpoint_meta, tensors_digest
from respkd.config import RunConfig, config_to_dict, validate_config
from respkd.engine import EpochProgress
from respkd.errors import RespkdError, first_line
from respkd.files import atomic_write
from respkd.provenance import differences, value_at
from respkd.resume.codec import from_json, join_optimizer, split_optimizer, to_json
from respkd.resume.rng import other_rng_state, set_rng_state, torch_rng_state

__all__ = [
    "IGNORED_KEYS", "STATE_FORMAT", "STATE_NAME", "Position", "Refusal", "TrainingState", "check_flags", "check_start",
    "has_state", "state_problem",
]

STATE_NAME = "resume.safetensors"
STATE_FORMAT = "respkd-train-state-v1"
_WHAT = "training state"  # the noun for the file in messages
# Config keys that a run may resume with other values of: how often the state is saved and TensorBoard change nothing
# computed; what happens at a non-finite loss acts only from the state's position on (a saved state never holds a
# non-finite step applied), so a run stopped by one may continue with train.on_nonfinite: skip_step.
IGNORED_KEYS = ("train.checkpoint_every_steps", "train.tensorboard", "train.on_nonfinite", "train.max_skipped_steps")


def _copy(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().cpu().clone(memory_format=torch.contiguous_format)


def has_state(out_dir: Path) -> bool:
    return (Path(out_dir) / STATE_NAME).is_file()


class Refusal(NamedTuple):
    """Why a stored training state cannot continue a config, and what the user can do instead."""

    reason: str
    remedy: str


def state_problem(out_dir: Path, cfg: RunConfig) -> Refusal | None:
    """Why the training state in ``out_dir`` cannot continue ``cfg``, judged from its header; None when it can."""
    path = Path(out_dir) / STATE_NAME
    if not path.is_file():
        return Refusal(f"no training state to resume in {out_dir} (no {STATE_NAME})", "run it without --resume")
    try:
        meta = read_checkpoint_meta(path, STATE_FORMAT, _WHAT)
        stored = config_to_dict(validate_config(meta.get("config"), f"{path} (its config)"))
    except RespkdError as err:
        return Refusal(str(err), "pass --force to start over")
    current = config_to_dict(cfg)
    diffs = differences(stored, current, ignore=IGNORED_KEYS)
    if diffs:
        shown = ", ".join(f"{k} ({json.dumps(value_at(stored, k))} in the state, {json.dumps(value_at(current, k))} "
                          "now)" for k in diffs[:4]) + (f" and {len(diffs) - 4} more" if len(diffs) > 4 else "")
        return Refusal(f"the training state in {path} belongs to a different config: {shown}",
                       "resume with the same config, or pass --force to start over")
    return None


def check_flags(resume: bool, force: bool) -> None:
    """Refuse ``--resume`` with ``--force``: one continues an interrupted run, the other starts it over."""
    if resume and force:
        raise RespkdError("--resume continues an interrupted run and --force starts it over: give only one")


def check_start(out_dir: Path, cfg: RunConfig, *, resume: bool, force: bool, finished: bool) -> None:
    """Refuse (one-line RespkdError, before anything is written) a resume that cannot be, or a fresh start that
    would silently throw an interrupted run's training state away."""
    check_flags(resume, force)
    if resume and finished:
        raise RespkdError(f"run '{cfg.name}' already finished in {out_dir}: nothing to resume")
    if resume:
        problem = state_problem(out_dir, cfg)
        if problem:
            raise RespkdError(f"cannot resume: {problem.reason}; {problem.remedy}")
    elif not force and not finished and has_state(out_dir):
        raise RespkdError(f"run '{cfg.name}' was interrupted in {out_dir}: pass --resume to continue it from its "
                          "training state, or --force to start it over")


@dataclass
class Position:
    """Where training stands, and the bookkeeping that has to survive a kill."""

    epochs_done: int = 0
    epoch: EpochProgress = field(default_factory=EpochProgress)  # epoch epochs_done + 1, as far as it got
    train_time_s: float = 0.0  # seconds spent in finished epochs
    wall_time_s: float = 0.0  # seconds since the run started, at the last save
    resumes: list[dict[str, int]] = field(default_factory=list)  # where each resume started
    skipped_steps: int = 0  # steps skipped in finished epochs (train.on_nonfinite: skip_step)


class TrainingState:
    """The training state of one run: written as it trains (:meth:`after_step`, :meth:`end_epoch`), read back by
    :meth:`load` and :meth:`begin` when resuming. ``identity`` (examples count, data and teacher digests, number of
    processes) must match between the run that wrote the state and the one resuming it."""

    def __init__(self, out_dir: Path, cfg: RunConfig, identity: dict[str, Any], student: torch.nn.Module,
                 optimizer: torch.optim.Optimizer, scheduler: Any, steps_per_epoch: int, device: torch.device) -> None:
        self.path = Path(out_dir) / STATE_NAME
        self.cfg, self.identity = cfg, identity
        self.student, self.optimizer, self.scheduler = student, optimizer, scheduler
        self.steps_per_epoch, self.device = steps_per_epoch, device
        self.every = cfg.train.checkpoint_every_steps
        self.position = Position()
        self.saved: str | None = None  # where the state on disk stands (None: not saved by this run yet)
        self.started = time.perf_counter()
        self._rng: tuple[dict[str, torch.Tensor], dict[str, Any]] | None = None

    @property
    def step(self) -> int:
        """Optimizer steps done since the run started."""
        return self.position.epochs_done * self.steps_per_epoch + self.position.epoch.batches

    def where(self) -> str:
        p = self.position
        if p.epochs_done == self.cfg.train.epochs:
            return f"the end of training (step {self.step})"
        return f"epoch {p.epochs_done + 1}, batch {p.epoch.batches} (step {self.step})"

    def wall_time(self) -> float:
        return time.perf_counter() - self.started

    # ------------------------------------------------ writing

    def save_due(self, progress: EpochProgress) -> bool:
        """Whether :meth:`after_step` saves after the step that brought the epoch to ``progress``: every
        ``checkpoint_every_steps`` steps (the last batch of an epoch is left to :meth:`end_epoch`, which saves after
        the epoch's evaluation)."""
        step = self.position.epochs_done * self.steps_per_epoch + progress.batches
        return bool(self.every) and step % self.every == 0 and progress.batches < self.steps_per_epoch

    def after_step(self, progress: EpochProgress) -> None:
        """Called after every optimizer step; saves when :meth:`save_due`."""
        self.position.epoch = progress
        if self.save_due(progress):
            self.save()

    def save_unsaved(self) -> None:
        """Save, unless the state on disk is already this very position (a stop right after a save)."""
        if self.saved != self.where():
            self.save()

    def end_epoch(self, epoch_seconds: float) -> None:
        """Called once an epoch's metrics are written: the next save starts the next epoch."""
        self.position.epochs_done += 1
        self.position.train_time_s += epoch_seconds
        self.position.skipped_steps += self.position.epoch.skipped
        self.position.epoch = EpochProgress()
        self.save()

    def save(self) -> None:
        """Write the state (process 0; under torch.distributed every process must call this, at the same step)."""
        p = self.position
        # What differs between processes: their generators and the running sums of their shares of the batches.
        per_process = distributed.gather_per_process({**torch_rng_state(self.device), **{
            f"epoch_sums.{k}": v.detach().float().reshape(()) for k, v in p.epoch.sums.items()}})
        # a failed write (a full disk) stops every process, not process 0 alone; a signal is the training loop's to
        # act on (this may be the save it makes on one)
        with distributed.together(signals=False):
            if distributed.is_main_process():
                self._write(per_process)
            self.saved = self.where()

    def _write(self, per_process: dict[str, torch.Tensor]) -> None:
        p = self.position
        p.wall_time_s = self.wall_time()
        # clone: tied weights share storage, which safetensors refuses, and the copy is what was true at this step;
        # contiguous: safetensors stores row-major data only (channels-last weights are not)
        tensors = {f"model.{k}": _copy(v) for k, v in self.student.state_dict().items()}
        opt_tensors, opt_meta = split_optimizer(self.optimizer.state_dict())
        rng_tensors, rng_meta = other_rng_state()
        tensors.update({k: _copy(v) for k, v in opt_tensors.items()})
        tensors.update(rng_tensors)
        tensors.update(per_process)
        meta = {
            "format": STATE_FORMAT, "config": config_to_dict(self.cfg), "identity": self.identity,
            "position": {"epochs_done": p.epochs_done, "batches_done": p.epoch.batches, "step": self.step,
                         "epoch_seconds": p.epoch.seconds, "epoch_sums": list(p.epoch.sums),  # in their order
                         "epoch_skipped": p.epoch.skipped, "skipped_steps": p.skipped_steps,
                         "train_time_s": p.train_time_s, "wall_time_s": p.wall_time_s},
            "resumes": p.resumes, "optimizer": opt_meta, "scheduler": to_json(self.scheduler.state_dict()),
            "rng": rng_meta, "saved": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "weights_sha256": tensors_digest(tensors),
        }
        header = {"respkd": json.dumps(meta)}
        atomic_write(self.path, lambda tmp: save_file(tensors, str(tmp), metadata=header), _WHAT)

    def discard(self) -> None:
        """Remove a stored state (process 0): the run starts over, or has finished."""
        if distributed.is_main_process():
            self.path.unlink(missing_ok=True)

    def finish(self) -> None:
        """The run is finished (its summary written): the state has nothing left to resume."""
        self.discard()

    # ------------------------------------------------ reading

    def load(self) -> None:
        """Read and verify the stored state and put it into the model, optimizer and scheduler; the generators
        follow in :meth:`begin`. Any problem is a one-line RespkdError, raised before the run writes anything.

        Called after :func:`check_start`, which has already judged the state's header (its config among it)."""
        try:
            tensors, meta = load_checkpoint(self.path, STATE_FORMAT, _WHAT)
        except RespkdError as err:
            raise RespkdError(f"cannot resume: {err}; pass --force to start over") from None
        stored = meta.get("identity", {})
        diffs = differences(stored, self.identity)
        if diffs:
            shown = ", ".join(f"{k} {json.dumps(value_at(stored, k))} in the state, "
                              f"{json.dumps(value_at(self.identity, k))} now" for k in diffs)
            raise RespkdError(f"cannot resume: the training state in {self.path} was made with other data, another "
                              f"teacher or another number of processes ({shown}); pass --force to start over")
        try:
            model = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
            self.student.load_state_dict(model)
            self.optimizer.load_state_dict(join_optimizer(tensors, meta["optimizer"]))
            self.scheduler.load_state_dict(from_json(meta["scheduler"]))
            pos = meta["position"]
            own = distributed.own_part(tensors)
            sums = {k: own[f"epoch_sums.{k}"].to(self.device) for k in pos["epoch_sums"]}
            progress = EpochProgress(pos["batches_done"], sums, pos["epoch_seconds"], pos.get("epoch_skipped", 0))
            self.position = Position(pos["epochs_done"], progress, pos["train_time_s"], pos["wall_time_s"],
                                     list(meta["resumes"]), pos.get("skipped_steps", 0))
            self._rng = ({**{k: v for k, v in tensors.items() if k.startswith("rng.")},
                          **{k: v for k, v in own.items() if k.startswith("rng.")}}, meta["rng"])
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            raise RespkdError(f"cannot resume: {self.path} does not fit this run ({first_line(err)}); "
                              "pass --force to start over") from None
        if self.step != pos["step"] or not 0 <= pos["batches_done"] <= self.steps_per_epoch:
            raise RespkdError(f"cannot resume: {self.path}: its position (step {pos['step']}) does not fit "
                              f"{self.steps_per_epoch} steps per epoch; pass --force to start over")
        self.saved = self.where()

    def begin(self, log: Callable[[str], None]) -> None:
        """Right before the first step: restore the generators of a loaded state, or save the state of step 0 (so a
        run killed at any point after this can resume)."""
        if distributed.is_main_process():
            for stale in self.path.parent.glob(f".{STATE_NAME}.*.tmp"):  # left by a kill in the middle of a write
                stale.unlink(missing_ok=True)
        if self._rng is None:
            self.started = time.perf_counter()
            self.save()
            return
        set_rng_state(*self._rng, self.device)
        self._rng = None
        p = self.position
        self.started = time.perf_counter() - p.wall_time_s
        p.resumes.append({"epoch": p.epochs_done + 1, "batch": p.epoch.batches, "step": self.step})
        log(f"[{self.cfg.name}] resumed at {self.where()} from {self.path}")
