"""What the training loop checks after its optimizer steps: a signal to stop, and a loss that is no longer finite.

**A non-finite loss**, ``train.on_nonfinite: stop`` (the default): the run stops at the step whose loss became NaN or
infinite, with one line naming the epoch, batch, step and loss terms (:class:`~respkd.errors.Diverged`, exit
status 3). Nothing is saved from that step on, so the training state on disk is the last good one, and no final
model is written. The check reads the epoch's running sum of the loss, which the engine keeps anyway: once one step's
loss is not finite, neither is the sum. In a one-process run on the CPU it is read after every step (a CPU scalar);
on a GPU, or under torchrun, every :data:`CHECK_EVERY` steps, before every save and at every epoch end, from the
running sums of the steps since the last check (kept by reference: no copy and no host sync per step), so the step
named is still exactly the first bad one. Under torchrun the processes agree on the first bad step and the terms
shown are their mean over the processes, as in the metrics.

``train.on_nonfinite: skip_step``: a step whose loss is not finite is not applied (its gradients are dropped; no
optimizer step, no max-norm). The learning-rate schedule still advances, so every later step has the learning rate
it would have had and the schedule ends where it would. Each skip is logged, left out of the epoch's mean losses
and counted in the metrics line (``skipped_steps``); the run stops (Diverged) at the first skip beyond
``train.max_skipped_steps``, counted over the whole run rather than consecutively (a run that fails every other
step for ever is broken too). Deciding before the optimizer step needs the loss's value at once: one host sync per
step on a GPU (as ``torch.amp.GradScaler``'s step has), and under torchrun one vote per step, so that every process
skips the same steps.

**A signal** (:mod:`respkd.preemption`): in one process the noted signal is read after every step; under torchrun the
processes vote every :data:`CHECK_EVERY` steps, before every save and at every epoch end (one all_reduce of two
integers on the CPU), so they all stop after the same step. The vote costs nothing in a one-process run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from respkd import distributed, preemption
from respkd.engine import EpochProgress
from respkd.errors import Diverged, ReportedElsewhere, Stopped

__all__ = ["CHECK_EVERY", "NONFINITE_POLICIES", "StepGuard", "check_interval"]

CHECK_EVERY = 8  # steps between checks on a GPU or under torchrun (and at every save and epoch end)
NONFINITE_POLICIES = ("stop", "skip_step")
_NONE = -(2**62)  # "no bad step" in a vote for the first (largest negated) bad step


def check_interval(device: torch.device, world: int) -> int:
    """Steps between the checks of a non-finite loss and the votes on a signal (module doc)."""
    return 1 if device.type == "cpu" and world == 1 else CHECK_EVERY


def _terms(sums: dict[str, torch.Tensor], before: dict[str, torch.Tensor]) -> torch.Tensor:
    """The loss terms of one step: the difference of the running sums around it (the first step: the sums)."""
    return torch.stack([sums[k].float() - (before[k].float() if k in before else 0.0) for k in sums])


def _shown(names: list[str], values: list[float]) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in zip(names, values))


class StepGuard:
    """The checks of one run's training loop (module doc). ``log`` prints and records a line, ``note`` only records
    it (the CLI prints the error); ``last_good()`` says where the last good training state is and how far it got
    (None: the run keeps none); ``skipped_before`` counts the steps skipped before a resume."""

    def __init__(self, on_nonfinite: str, max_skipped: int, steps_per_epoch: int, device: torch.device,
                 log: Callable[[str], None], note: Callable[[str], None],
                 last_good: Callable[[], tuple[Path, str] | None],
                 skipped_before: int = 0) -> None:
        if on_nonfinite not in NONFINITE_POLICIES:
            raise ValueError(f"on_nonfinite must be one of {NONFINITE_POLICIES}")
        self.skip_mode, self.max_skipped = on_nonfinite == "skip_step", max_skipped
        self.steps_per_epoch, self.log, self.note, self.last_good = steps_per_epoch, log, note, last_good
        self.world = distributed.world_size()
        self.every = check_interval(device, self.world)
        self.skipped = skipped_before
        self.epoch = 0
        self._checked: dict[str, torch.Tensor] = {}  # the running sums at the last check
        self._history: list[tuple[int, dict[str, torch.Tensor]]] = []  # (batch, running sums) of each step since

    def start_epoch(self, epoch: int, progress: EpochProgress) -> None:
        """Before the epoch's first step (or, resuming, its next one)."""
        self.epoch, self._checked, self._history = epoch, dict(progress.sums), []

    def step_number(self, batch: int) -> int:
        return (self.epoch - 1) * self.steps_per_epoch + batch

    def where(self, batch: int) -> str:
        return f"epoch {self.epoch}, batch {batch} (step {self.step_number(batch)})"

    # ------------------------------------------------ after a step

    def after_step(self, progress: EpochProgress, save_due: bool) -> None:
        """After optimizer step ``progress.batches`` of the epoch; ``save_due``: the training state is saved next.
        Raises Diverged or Stopped (every process at the same step)."""
        if not self.skip_mode:
            self._history.append((progress.batches, dict(progress.sums)))  # new tensors every step: no copy
        step = self.step_number(progress.batches)
        due = save_due or progress.batches == self.steps_per_epoch or step % self.every == 0
        if due or (self.world == 1 and preemption.requested() is not None):
            self._check(progress)

    def after_epoch(self) -> None:
        """After the epoch's evaluation and its saved state: stop there if a signal came (voted under torchrun)."""
        signum = preemption.requested() or 0
        if self.world > 1:
            signum = distributed.agree_max([signum])[0]
        if signum:
            raise Stopped(signum)

    def _check(self, progress: EpochProgress) -> None:
        index = self._first_bad() if self._history else None
        signum = preemption.requested() or 0
        if self.world > 1:  # agree on the signal and on the first bad step of any process
            batch = self._history[index][0] if index is not None else None
            signum, first = distributed.agree_max([signum, -self.step_number(batch) if batch else _NONE])
            batch = None if first == _NONE else -first - (self.epoch - 1) * self.steps_per_epoch
            index = next((i for i, (b, _) in enumerate(self._history) if b == batch), None)
        if index is not None:
            batch, sums = self._history[index]
            terms = _terms(sums, self._history[index - 1][1] if index else self._checked)
            if self.world > 1:
                terms = distributed.all_reduce_mean(terms)
            names, values = list(sums), terms.tolist()
            loss = values[names.index("loss")]
            self._diverge(f"loss became {loss} at {self.where(batch)}: {_shown(names, values)}")
        self._checked, self._history = dict(progress.sums), []
        if signum:
            raise Stopped(signum)

    def _first_bad(self) -> int | None:
        """The position in the history of the first step whose loss was not finite; None: none."""
        if bool(torch.isfinite(self._history[-1][1]["loss"])):  # a non-finite term keeps the running sum so
            return None
        finite = torch.isfinite(torch.stack([sums["loss"].float() for _, sums in self._history])).cpu()
        return int((~finite).nonzero()[0])

    # ------------------------------------------------ skip_step

    def skip(self, out: dict[str, torch.Tensor], progress: EpochProgress) -> bool:
        """The engine's hook between backward and the optimizer step (``skip_step`` only): True to drop the step."""
        bad = not bool(torch.isfinite(out["loss"].detach()))
        if self.world > 1:
            bad = bool(distributed.agree_max([int(bad)])[0])
        if not bad:
            return False
        self.skipped += 1
        names = [k for k in out if k.endswith("loss")]
        terms = torch.stack([out[k].detach().float() for k in names])
        if self.world > 1:
            terms = distributed.all_reduce_mean(terms)
        where = f"{self.where(progress.batches + 1)}: {_shown(names, terms.tolist())}"
        if self.skipped > self.max_skipped:
            self._diverge(f"loss was not finite at {self.skipped} steps, more than train.max_skipped_steps = "
                          f"{self.max_skipped}; the last at {where}")
        self.log(f"skipped a step, {self.skipped} of at most {self.max_skipped}: loss not finite at {where}")
        return True

    def _diverge(self, what: str) -> None:
        last = self.last_good()
        kept = (f"the last good training state, at {last[1]}, is in {last[0]}" if last is not None
                else "nothing was saved from this step on")
        message = f"{what}; {kept}"
        self.note(f"stopped: {message}")
        if distributed.is_main_process():
            raise Diverged(message)
        raise ReportedElsewhere(message, Diverged.exit_status)
