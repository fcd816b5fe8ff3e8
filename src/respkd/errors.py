"""The exceptions that the CLI turns into a single-line message and a documented exit status, and how a message
quotes what the user gave (shortened: a key or value of 100,000 characters must not become the line).

Exit statuses: 2 a bad input (:class:`RespkdError`), 3 a run whose loss became non-finite (:class:`Diverged`), 74 a
file that could not be written (:class:`WriteFailed`, ``EX_IOERR`` of sysexits.h), 128 + n a stop by signal n
(:class:`Stopped`: 143 for SIGTERM, 130 for SIGINT).
"""

from __future__ import annotations

import difflib
import signal
from pathlib import Path

__all__ = [
    "QUOTE_LENGTH", "Diverged", "ReportedElsewhere", "RespkdError", "Stopped", "WriteFailed", "closest_name",
    "first_line", "quote", "shorten",
]


class RespkdError(Exception):
    """A problem with the user's input (config, data, checkpoint, command line): shown as one line, no traceback."""

    exit_status = 2


class Diverged(RespkdError):
    """The training loss became non-finite (``train.on_nonfinite``). Its own exit status: rerunning the same config
    diverges again (training is deterministic), so a scheduler or a script must not retry it as it would a crash."""

    exit_status = 3


class WriteFailed(RespkdError):
    """A file could not be written (a full disk, an I/O error); the file it would have replaced is intact."""

    exit_status = 74  # EX_IOERR: an error while doing I/O on a file


class ReportedElsewhere(RespkdError):
    """Another process of a torchrun launch failed and process 0 reports it: nothing printed here, the exit status
    of the failure (2 unless given)."""

    def __init__(self, message: str, exit_status: int = 2) -> None:
        super().__init__(message)
        self.exit_status = exit_status


class Stopped(BaseException):
    """A stop asked for by signal ``signum`` (SIGTERM, SIGINT; see :mod:`respkd.preemption`): exit status 128 + n.

    A BaseException, as KeyboardInterrupt is, so that no ``except Exception`` on the way out swallows it. ``where``
    and ``state`` say how far a run got and where its training state is (None when it had none to save).
    """

    def __init__(self, signum: int, where: str | None = None, state: Path | None = None) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum, self.where, self.state = signum, where, state

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none): what a one-line error quotes."""
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


# An error line quotes at most this many characters of a key or value the user gave (a 100,000-character unknown key
# would otherwise be the whole line).
QUOTE_LENGTH = 40


def shorten(text: str, limit: int = QUOTE_LENGTH) -> str:
    """``text`` itself, or its first ``limit`` characters and ``...``: how an error line quotes what the user gave."""
    return text if len(text) <= limit else text[:limit] + "..."


def quote(value: object) -> str:
    """``repr(value)`` shortened (a string to its first characters, still quoted); an integer too long for ``repr``
    (Python stops at 4300 digits) by its size."""
    if isinstance(value, str):
        return repr(shorten(value))
    try:
        return shorten(repr(value))
    except ValueError:
        return f"an integer of {value.bit_length()} bits"  # type: ignore[attr-defined]


def closest_name(key: str, names: list[str]) -> str | None:
    """The known name a misspelt ``key`` most likely meant: a shared prefix first (lr_rate -> lr), else difflib.

    A key much longer than every name is no misspelling of one: it gets no suggestion, and difflib's quadratic
    matching never sees it.
    """
    if len(key) > 2 * max(map(len, names), default=0) + 8:
        return None
    prefixed = [n for n in names if key.startswith(n) or n.startswith(key)]
    if prefixed:
        return max(prefixed, key=len)
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
    return close[0] if close else None

