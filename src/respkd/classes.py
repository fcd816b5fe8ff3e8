"""Class names, compared wherever two things must mean the same classes in the same order: a teacher and the
student's data, a checkpoint and the data it is evaluated on, the weights a student starts from and its data.

Counts alone let a red/green/blue teacher distil onto x/y/z data without a word; names catch it. Every respkd
checkpoint records ``class_names`` (the dataset's: canonical for MNIST, Fashion-MNIST and CIFAR, the sorted folder
names for ImageNet and one's own images). Weights that record none (older or foreign files) are compared by count.
"""

from __future__ import annotations

from typing import Any, Sequence

from respkd.errors import RespkdError, quote

__all__ = ["check_classes", "class_mismatch", "recorded_class_names"]


def recorded_class_names(meta: dict[str, Any]) -> list[str] | None:
    """The class names a checkpoint's metadata records, or None when it records none it could mean (absent, not a
    list of strings, or not one per class)."""
    names, count = meta.get("class_names"), meta.get("num_classes")
    if isinstance(names, list) and all(isinstance(n, str) for n in names) and len(names) == count:
        return names
    return None


def class_mismatch(names: Sequence[str] | None, count: int, expected: Sequence[str], whose: str,
                   against: str) -> str | None:
    """Why ``whose`` classes (``names``, or only their ``count`` when None) are not ``against``'s ``expected``, in
    one line naming the first class that differs; None when they agree."""
    expected = list(expected)
    counts = f"the {whose} has {count} classes but the {against} has {len(expected)}"
    if names is None:
        return None if count == len(expected) else (
            f"{counts} (the {whose} records no class names, so only the counts are compared)")
    names = list(names)
    if names == expected:
        return None
    first = next((i for i, (a, b) in enumerate(zip(names, expected)) if a != b), None)
    if first is not None:
        differ = (f"the {whose}'s class {first} is {quote(names[first])} but the {against}'s class {first} is "
                  f"{quote(expected[first])}")
        return differ if len(names) == len(expected) else f"{counts}: {differ}"
    longer, owner = (names, whose) if len(names) > len(expected) else (expected, against)
    extra = min(len(names), len(expected))
    return f"{counts}: the first {extra} agree, and the {owner}'s class {extra} is {quote(longer[extra])}"


def check_classes(meta: dict[str, Any], expected: Sequence[str], whose: str, against: str = "data",
                  context: str | None = None) -> None:
    """Refuse checkpoint metadata ``meta`` (of the ``whose``: "teacher", "checkpoint", ...) whose classes are not
    ``expected`` (the ``against``'s), with one line ending in ``(context)``."""
    problem = class_mismatch(recorded_class_names(meta), meta.get("num_classes"), expected, whose, against)
    if problem is not None:
        raise RespkdError(problem + (f" ({context})" if context else ""))
