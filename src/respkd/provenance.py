"""What an output was made from, and the one way to decide that it was made from the same inputs.

Everything respkd may skip later records its inputs beside it: a run's ``summary.json`` its config, a specialist's
summary, a plan's ``bias.json`` / ``ensemble.json``, ``subsets.json`` and ``eval.json`` their ``spec``, a training
state its config, a teacher cache its spec. Before reusing an output, the recorded inputs are compared with the
current ones by :func:`differences`: mappings key by key (dotted keys name what differs), a key one side lacks taken
as None. Where the record holds a config, it is normalised first (validated again, with the defaults of today's
respkd), so keys added to respkd since, with defaults that change nothing, do not make an old output look different.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Collection

from pydantic import ValidationError

from respkd.errors import RespkdError
from respkd.files import read_json

__all__ = ["differences", "made_from", "read_record", "recorded_inputs", "same_inputs", "value_at"]


def differences(stored: Any, current: Any, ignore: Collection[str] = (), prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between ``stored`` and ``current`` (in key order; ``ignore`` left out).

    Two mappings are compared key by key, recursively; a key only one of them has counts as None in the other. Two
    other values that differ give one entry: their key (``""`` at the top).
    """
    if not (isinstance(stored, dict) and isinstance(current, dict)):
        return [] if stored == current or prefix.rstrip(".") in ignore else [prefix.rstrip(".")]
    keys = []
    for key in sorted(set(stored) | set(current)):
        keys += differences(stored.get(key), current.get(key), ignore, f"{prefix}{key}.")
    return keys


def value_at(mapping: Any, dotted: str) -> Any:
    """The value under a dotted key of :func:`differences` (None where there is none)."""
    for part in dotted.split(".") if dotted else []:
        mapping = mapping.get(part) if isinstance(mapping, dict) else None
    return mapping


def same_inputs(stored: Any, current: Any) -> bool:
    """Whether recorded inputs (None: nothing recorded) are the current ones."""
    return stored is not None and not differences(stored, current)


def read_record(path: Path) -> dict[str, Any] | None:
    """The JSON object at ``path``, or None when there is none (missing, unreadable, malformed, not an object)."""
    try:
        record = read_json(path)
    except RespkdError:
        return None
    return record if isinstance(record, dict) else None


def recorded_inputs(path: Path, key: str = "spec", normalize: Callable[[Any], Any] | None = None) -> Any:
    """The inputs the record at ``path`` says its output was made from (its ``key``; None without a record).

    ``normalize`` brings them to today's form (e.g. a config validated again); inputs it cannot read are returned
    as stored, and so compare as different.
    """
    record = read_record(path)
    stored = None if record is None else record.get(key)
    if stored is None or normalize is None:
        return stored
    try:
        return normalize(stored)
    except (RespkdError, ValidationError, KeyError, TypeError, AttributeError):
        return stored


def made_from(path: Path, current: Any, key: str = "spec", normalize: Callable[[Any], Any] | None = None) -> bool:
    """Whether the record at ``path`` says its output was made from ``current`` (see :func:`recorded_inputs`)."""
    return same_inputs(recorded_inputs(path, key, normalize), current)
