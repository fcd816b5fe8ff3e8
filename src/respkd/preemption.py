"""SIGTERM and SIGINT as a request to stop cleanly: what a scheduler's preemption (SLURM, Kubernetes) and Ctrl-C send.

The CLI installs the handlers for the length of a command (:func:`handle_signals`). What a signal then does depends
on where the program is:

* inside a :func:`deferred` block (the training loop of :func:`respkd.rundir.train_epochs`) it is only noted: the
  loop finishes the optimizer step in flight, saves the training state and raises
  :class:`~respkd.errors.Stopped` (:mod:`respkd.guard` checks after every step);
* anywhere else in a one-process run it raises :class:`~respkd.errors.Stopped` at once: nothing there is left
  half-done (files are written atomically, a teacher cache is built in a temporary folder that is removed);
* under torchrun it is always only noted, because a process that left on its own would leave the others waiting in
  a collective: the processes stop together at a point where they agree to (:mod:`respkd.guard`'s vote,
  :func:`respkd.distributed.together`, and :func:`check` where one process works alone).

Only the first signal counts: a second one while the first is being handled (the training state being saved, a
cache folder being removed) is ignored, so it cannot cut that short. The exit status is 128 + n (143 for SIGTERM,
130 for SIGINT), the shells' convention.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

from respkd.errors import Stopped

__all__ = ["SIGNALS", "check", "deferred", "handle_signals", "requested"]

SIGNALS = (signal.SIGTERM, signal.SIGINT)

_requested: int | None = None  # the first signal received while the handlers are installed
_deferred = 0  # depth of deferred() blocks
_at_once = True  # raise Stopped from the handler outside deferred() blocks (False under torchrun)


def _handler(signum: int, frame: object) -> None:
    global _requested
    if _requested is not None:  # stopping already: let that finish
        return
    _requested = signum
    if _at_once and not _deferred:
        raise Stopped(signum)


@contextlib.contextmanager
def handle_signals(at_once: bool = True) -> Iterator[None]:
    """SIGTERM and SIGINT handled as the module doc says inside the block; the previous handlers come back after it.

    ``at_once``: False under torchrun (the module doc). Outside the main thread (where Python cannot install
    handlers) nothing changes.
    """
    global _requested, _at_once
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _handler) for s in SIGNALS}
    _requested, _at_once = None, at_once
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _requested, _at_once = None, True


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """A block that a signal does not interrupt: it is noted, and the block calls :func:`requested` where it can
    stop cleanly."""
    global _deferred
    _deferred += 1
    try:
        yield
    finally:
        _deferred -= 1


def requested() -> int | None:
    """The signal received so far (None: none)."""
    return _requested


def check() -> None:
    """Raise :class:`~respkd.errors.Stopped` if a signal was received: called where stopping is clean."""
    if _requested is not None:
        raise Stopped(_requested)
