"""Crashes for the resume tests, patched into the training state from here: respkd itself holds no test hook.

A crash point is ``<kind>:<number>``:

* ``step:K``: after optimizer step K (counted from the start of the run), and the state that step saved, if any;
* ``epoch:E``: after epoch E's metrics line, before its state is written;
* ``write:K``: while the state of step K is being written (the temporary file first cut to half its size).

In-process tests get :class:`SimulatedCrash`; ``tests/crash_cli.py`` runs the command with ``kill=True``, and the
process dies by SIGKILL there, as a preempted job does.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any, Callable

from respkd.resume import state as training_state


class SimulatedCrash(BaseException):
    """Raised where a crash point is reached in-process; nothing in respkd catches it."""


def install(point: str, setattr: Callable[[Any, str, Any], None], kill: bool = False) -> None:
    """Make the training state crash at ``point`` (module doc); ``setattr`` is pytest's ``monkeypatch.setattr``
    (undone after the test) or the builtin."""
    kind, number = point.split(":")
    number = int(number)
    state_class = training_state.TrainingState

    def crash(partial: Path | None = None) -> None:
        if partial is not None:
            os.truncate(partial, partial.stat().st_size // 2)
        if kill:
            os.kill(os.getpid(), signal.SIGKILL)
        raise SimulatedCrash(point)

    if kind == "step":
        after_step = state_class.after_step

        def after_step_then_crash(self, progress) -> None:
            after_step(self, progress)
            if self.step == number:
                crash()

        setattr(state_class, "after_step", after_step_then_crash)
    elif kind == "epoch":
        end_epoch = state_class.end_epoch

        def crash_then_end_epoch(self, seconds: float) -> None:
            if self.position.epochs_done + 1 == number:
                crash()
            end_epoch(self, seconds)

        setattr(state_class, "end_epoch", crash_then_end_epoch)
    elif kind == "write":
        save_file = training_state.save_file

        def save_file_then_crash(tensors, filename, metadata=None) -> None:
            save_file(tensors, filename, metadata=metadata)
            if json.loads(metadata["respkd"])["position"]["step"] == number:
                crash(Path(filename))

        setattr(training_state, "save_file", save_file_then_crash)
    else:
        raise ValueError(f"unknown crash point {point!r}")
