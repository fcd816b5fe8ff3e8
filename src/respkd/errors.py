"""The one exception type that the CLI turns into a single-line message and a non-zero exit, and how a message quotes
what the user gave (shortened: a key or value of 100,000 characters must not become the line)."""

from __future__ import annotations

import difflib

__all__ = [
    "QUOTE_LENGTH", "ReportedElsewhere", "RespkdError", "closest_name", "first_line", "quote", "shorten",
]


class RespkdError(Exception):
    """A problem with the user's input (config, data, checkpoint, command line): shown as one line, no traceback."""


class ReportedElsewhere(RespkdError):
    """Another process of a torchrun launch failed and process 0 reports it: exit status 2, nothing printed here."""


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

