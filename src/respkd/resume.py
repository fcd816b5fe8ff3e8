"""Exact resume: a run's training state, saved as it trains, so that a killed run continues where it stopped.

``<run>/resume.safetensors`` is written before the first step, every ``train.checkpoint_every_steps`` optimizer steps
(0: never mid-epoch) and at every epoch end, atomically (:func:`respkd.checkpoint.atomic_write`: a kill leaves the
previous state or the new one, never half of one). It is deleted when the run finishes: the final weights are in
``model.safetensors``. It holds

* tensors: the student's weights (``model.*``); the optimizer's state tensors (``optimizer.<param>.<name>``: momentum
  buffers, Adam moments and step counts); the states of the random number generators as uint8 tensors
  (``rng.numpy``, ``rng.python``, and per process ``process<rank>.rng.torch`` and ``process<rank>.rng.cuda``); the
  running loss sums of the epoch in progress, per process (``process<rank>.epoch_sums.<term>``, float32 as summed);
* JSON metadata (the safetensors header, key ``respkd``): where training stands (epochs done, batches done in the
  next one, optimizer step), the scheduler's ``state_dict``, the optimizer's parameter groups and non-tensor state,
  the config the state belongs to, what the data and the teacher were (examples, SHA-256s), the times spent so far,
  the positions of earlier resumes, and the SHA-256 of the tensors (checked on load).

Nothing is pickled. The resumed run is *bitwise* the uninterrupted one because nothing it draws depends on the kill:
the batch order and jitter are functions of (seed, epoch) (:class:`respkd.data.loader.BatchLoader`), so skipping the
batches already trained draws nothing; dropout draws from torch's global generator, restored here; the teacher (in
eval mode, online or cached) answers an input the same way every time; the running sums come back as the float32
tensors they were. That needs the same config, data, teacher, software and number of processes, and the same
device and threads (another thread count can reorder floating-point sums).

Under ``torch.distributed`` every process hands its own generator states and running sums to process 0, which alone
writes the file; every process reads the same file back and takes its own part. The number of processes is part of
the state's identity: a resume with another number is refused.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np
import torch
from safetensors.torch import save_file

from respkd import distributed
from respkd.checkpoint import atomic_write, load_checkpoint, read_checkpoint_meta, tensors_digest
from respkd.config import RunConfig, config_to_dict, validate_config
from respkd.engine import EpochProgress
from respkd.errors import RespkdError, first_line

STATE_NAME = "resume.safetensors"
STATE_FORMAT = "respkd-train-state-v1"
WHAT = "training state"
# Config keys that do not change what is computed: a run may resume with other values.
IGNORED_KEYS = ("train.checkpoint_every_steps", "train.tensorboard")


def gather_per_process(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every process's copy of each of ``tensors`` (each the same shape in every process), named
    ``process<rank>.<name>``. One process: no communication. Under torch.distributed every process must call it."""
    world = distributed.world_size()
    if world == 1:
        return {f"process0.{name}": t for name, t in tensors.items()}
    dist = torch.distributed
    device = distributed.group_device()
    gathered = {}
    for name in sorted(tensors):  # the same order in every process
        local = tensors[name].detach().to(device).reshape(-1)
        parts = [torch.empty_like(local) for _ in range(world)]
        dist.all_gather(parts, local)
        gathered.update({f"process{r}.{name}": part.cpu().reshape(tensors[name].shape) for r, part in enumerate(parts)})
    return gathered


def own_part(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """This process's tensors of :func:`gather_per_process`, under their own names."""
    prefix = f"process{distributed.rank()}."
    return {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}


# ---------------------------------------------------------------- test-only fault injection

CRASH_ENV = "RESPKD_TEST_CRASH"
CRASH_MODE_ENV = "RESPKD_TEST_CRASH_MODE"


class SimulatedCrash(BaseException):
    """Raised instead of a SIGKILL when ``RESPKD_TEST_CRASH_MODE=raise`` (in-process tests); nothing catches it."""


def crash_point(kind: str, number: int, partial: Path | None = None) -> None:
    """TEST HOOK ONLY (tests/test_resume.py): die here when ``RESPKD_TEST_CRASH`` is ``<kind>:<number>``.

    Points: ``step:K`` after optimizer step K (counted from the start of the run) and the state written at it;
    ``epoch:E`` after epoch E's metrics line, before its state is written; ``write:K`` while the state of step K is
    being written (``partial``, the temporary file, is first cut to half its size). The process kills itself with
    SIGKILL, as a preempted job dies, or raises :class:`SimulatedCrash` when ``RESPKD_TEST_CRASH_MODE=raise``.
    """
    if os.environ.get(CRASH_ENV) != f"{kind}:{number}":
        return
    if partial is not None:
        os.truncate(partial, partial.stat().st_size // 2)
    if os.environ.get(CRASH_MODE_ENV) == "raise":
        raise SimulatedCrash(f"{kind}:{number}")
    os.kill(os.getpid(), signal.SIGKILL)


# ---------------------------------------------------------------- JSON for the optimizer's and scheduler's state


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


def _copy(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().cpu().clone(memory_format=torch.contiguous_format)


def _split_optimizer(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    other: dict[str, dict[str, Any]] = {}
    for param, entries in state_dict["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{param}.{name}"] = value
            else:
                other.setdefault(str(param), {})[name] = to_json(value)
    return tensors, {"param_groups": to_json(state_dict["param_groups"]), "state": other}


def _join_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, param, name = key.split(".", 2)
            state.setdefault(int(param), {})[name] = value
    for param, entries in meta["state"].items():
        state.setdefault(int(param), {}).update({name: from_json(v) for name, v in entries.items()})
    return {"state": state, "param_groups": from_json(meta["param_groups"])}


# ---------------------------------------------------------------- random number generators


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


# ---------------------------------------------------------------- checking a stored state


def config_differences(stored: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts (``IGNORED_KEYS`` left out)."""
    keys = []
    for key in sorted(set(stored) | set(current)):
        a, b, name = stored.get(key), current.get(key), f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            keys += config_differences(a, b, f"{name}.")
        elif a != b and name not in IGNORED_KEYS:
            keys.append(name)
    return keys


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
        meta = read_checkpoint_meta(path, STATE_FORMAT, WHAT)
        stored = config_to_dict(validate_config(meta.get("config"), f"{path} (its config)"))
    except RespkdError as err:
        return Refusal(str(err), "pass --force to start over")
    current = config_to_dict(cfg)
    diffs = config_differences(stored, current)
    if diffs:
        def value(d: dict[str, Any], key: str) -> Any:
            for part in key.split("."):
                d = d.get(part) if isinstance(d, dict) else None
            return d

        shown = ", ".join(f"{k} ({json.dumps(value(stored, k))} in the state, {json.dumps(value(current, k))} now)"
                          for k in diffs[:4]) + (f" and {len(diffs) - 4} more" if len(diffs) > 4 else "")
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


# ---------------------------------------------------------------- the state of one run


@dataclass
class Position:
    """Where training stands, and the bookkeeping that has to survive a kill."""

    epochs_done: int = 0
    epoch: EpochProgress = field(default_factory=EpochProgress)  # epoch epochs_done + 1, as far as it got
    train_time_s: float = 0.0  # seconds spent in finished epochs
    wall_time_s: float = 0.0  # seconds since the run started, at the last save
    resumes: list[dict[str, int]] = field(default_factory=list)  # where each resume started


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

    def after_step(self, progress: EpochProgress) -> None:
        """Called after every optimizer step; saves every ``checkpoint_every_steps`` steps (the last batch of an
        epoch is left to :meth:`end_epoch`, which saves after the epoch's evaluation)."""
        self.position.epoch = progress
        if self.every and self.step % self.every == 0 and progress.batches < self.steps_per_epoch:
            self.save()
        crash_point("step", self.step)

    def end_epoch(self, epoch_seconds: float) -> None:
        """Called once an epoch's metrics are written: the next save starts the next epoch."""
        crash_point("epoch", self.position.epochs_done + 1)
        self.position.epochs_done += 1
        self.position.epoch = EpochProgress()
        self.position.train_time_s += epoch_seconds
        self.save()

    def save(self) -> None:
        """Write the state (process 0; under torch.distributed every process must call this, at the same step)."""
        p = self.position
        # What differs between processes: their generators and the running sums of their shares of the batches.
        per_process = gather_per_process({**torch_rng_state(self.device), **{
            f"epoch_sums.{k}": v.detach().float().reshape(()) for k, v in p.epoch.sums.items()}})
        if not distributed.is_main_process():
            return
        p.wall_time_s = self.wall_time()
        # clone: tied weights share storage, which safetensors refuses, and the copy is what was true at this step;
        # contiguous: safetensors stores row-major data only (channels-last weights are not)
        tensors = {f"model.{k}": _copy(v) for k, v in self.student.state_dict().items()}
        opt_tensors, opt_meta = _split_optimizer(self.optimizer.state_dict())
        rng_tensors, rng_meta = other_rng_state()
        tensors.update({k: _copy(v) for k, v in opt_tensors.items()})
        tensors.update(rng_tensors)
        tensors.update(per_process)
        meta = {
            "format": STATE_FORMAT, "config": config_to_dict(self.cfg), "identity": self.identity,
            "position": {"epochs_done": p.epochs_done, "batches_done": p.epoch.batches, "step": self.step,
                         "epoch_seconds": p.epoch.seconds, "epoch_sums": list(p.epoch.sums),  # in their order
                         "train_time_s": p.train_time_s, "wall_time_s": p.wall_time_s},
            "resumes": p.resumes, "optimizer": opt_meta, "scheduler": to_json(self.scheduler.state_dict()),
            "rng": rng_meta, "saved": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "weights_sha256": tensors_digest(tensors),
        }
        header = {"respkd": json.dumps(meta)}
        step = self.step

        def write(tmp: Path) -> None:
            save_file(tensors, str(tmp), metadata=header)
            crash_point("write", step, partial=tmp)

        atomic_write(self.path, write)

    def finish(self) -> None:
        """The run is finished (its summary written): the state has nothing left to resume."""
        if distributed.is_main_process():
            self.path.unlink(missing_ok=True)

    # ------------------------------------------------ reading

    def load(self) -> None:
        """Read and verify the stored state and put it into the model, optimizer and scheduler; the generators
        follow in :meth:`begin`. Any problem is a one-line RespkdError, raised before the run writes anything.

        Called after :func:`check_start`, which has already judged the state's header (its config among it)."""
        try:
            tensors, meta = load_checkpoint(self.path, STATE_FORMAT, WHAT)
        except RespkdError as err:
            raise RespkdError(f"cannot resume: {err}; pass --force to start over") from None
        stored = meta.get("identity", {})
        diffs = [k for k in sorted(set(stored) | set(self.identity)) if stored.get(k) != self.identity.get(k)]
        if diffs:
            shown = ", ".join(f"{k} {json.dumps(stored.get(k))} in the state, {json.dumps(self.identity.get(k))} now"
                              for k in diffs)
            raise RespkdError(f"cannot resume: the training state in {self.path} was made with other data, another "
                              f"teacher or another number of processes ({shown}); pass --force to start over")
        try:
            model = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
            self.student.load_state_dict(model)
            self.optimizer.load_state_dict(_join_optimizer(tensors, meta["optimizer"]))
            self.scheduler.load_state_dict(from_json(meta["scheduler"]))
            pos = meta["position"]
            own = own_part(tensors)
            sums = {k: own[f"epoch_sums.{k}"].to(self.device) for k in pos["epoch_sums"]}
            self.position = Position(pos["epochs_done"], EpochProgress(pos["batches_done"], sums, pos["epoch_seconds"]),
                                     pos["train_time_s"], pos["wall_time_s"], list(meta["resumes"]))
            self._rng = ({**{k: v for k, v in tensors.items() if k.startswith("rng.")},
                          **{k: v for k, v in own.items() if k.startswith("rng.")}}, meta["rng"])
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            raise RespkdError(f"cannot resume: {self.path} does not fit this run ({first_line(err)}); "
                              "pass --force to start over") from None
        if self.step != pos["step"] or not 0 <= pos["batches_done"] <= self.steps_per_epoch:
            raise RespkdError(f"cannot resume: {self.path}: its position (step {pos['step']}) does not fit "
                              f"{self.steps_per_epoch} steps per epoch; pass --force to start over")

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
