"""The one exception type that the CLI turns into a single-line message and a non-zero exit."""

from __future__ import annotations

import difflib

__all__ = ["ReportedElsewhere", "RespkdError", "closest_name", "first_line"]


class RespkdError(Exception):
    """A problem with the user's input (config, data, checkpoint, command line): shown as one line, no traceback."""


class ReportedElsewhere(RespkdError):
    """Another process of a torchrun launch failed and process 0 reports it: exit status 2, nothing printed here."""


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none): what a one-line error quotes."""
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def closest_name(key: str, names: list[str]) -> str | None:
    """The known name a misspelt ``key`` most likely meant: a shared prefix first (lr_rate -> lr), else difflib."""
    prefixed = [n for n in names if key.startswith(n) or n.startswith(key)]
    if prefixed:
        return max(prefixed, key=len)
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
    return close[0] if close else None

