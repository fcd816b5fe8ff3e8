"""The training examples a run learns from: a validation hold-out, then the transfer-set filter.

Order, and why:
  1. ``train_limit``: the first N training examples (quick runs).
  2. ``val_size``: a stratified hold-out seeded by ``val_seed`` only, taken before any filtering, so every run with
     the same ``val_size``/``val_seed`` holds out exactly the same examples, whatever its seed or transfer set:
     a bias shift chosen on it for one run is chosen on data no run of the family trained on.
  3. the transfer filter on the rest: ``drop_classes`` or ``keep_classes``, then ``fraction`` (stratified, seeded
     by ``transfer.seed``).
The test set is never touched here. Indices are kept sorted (the original order): the loader shuffles anyway.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from respkd.config import DataConfig
from respkd.errors import RespkdError


def stratified_take(labels: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """``n`` indices into ``labels``, each class contributing in proportion to its count, at random within a class.

    Quotas are ``n * count_c / N`` rounded by largest remainder (ties go to the lower class index), so they sum to
    exactly ``n``. Deterministic for a given ``labels``, ``n`` and ``seed``. Returned sorted.
    """
    total = len(labels)
    if not 0 <= n <= total:
        raise ValueError(f"cannot take {n} of {total} examples")
    classes, counts = labels.unique(return_counts=True)
    exact = counts.double() * n / max(total, 1)
    quota = exact.floor().long()
    short = n - int(quota.sum())
    if short:
        remainder = exact - quota.double()
        # stable sort: among equal remainders the lower class index comes first
        order = torch.sort(-remainder, stable=True).indices
        quota[order[:short]] += 1
    perm = torch.randperm(total, generator=torch.Generator().manual_seed(seed))
    shuffled = labels[perm]
    picks = [perm[shuffled == c][: int(q)] for c, q in zip(classes.tolist(), quota.tolist())]
    return torch.cat(picks).sort().values if picks else torch.zeros(0, dtype=torch.long)


@dataclass(frozen=True)
class Selection:
    """Indices into the (``train_limit``-ed) training set: the transfer set and the validation split."""

    train: torch.Tensor
    val: torch.Tensor
    active: bool  # False: the whole training set, no hold-out (nothing to record in a cache key)


def select_training(labels: torch.Tensor, num_classes: int, d: DataConfig) -> Selection:
    """Split the training set as ``d`` says; a user error (bad class, hold-out too large, empty set) is one line."""
    n = len(labels)
    t = d.transfer
    for key in ("drop_classes", "keep_classes"):
        bad = [c for c in getattr(t, key) or [] if c >= num_classes]
        if bad:
            raise RespkdError(f"data.transfer.{key}: class {bad[0]} does not exist ({d.dataset} has classes 0..{num_classes - 1})")
    everything = torch.arange(n)
    if not t.active and not d.val_size:
        return Selection(everything, torch.zeros(0, dtype=torch.long), active=False)
    if d.val_size >= n:
        raise RespkdError(f"data.val_size is {d.val_size} but the training set has only {n} examples")
    val = stratified_take(labels, d.val_size, d.val_seed)
    keep = torch.ones(n, dtype=torch.bool)
    keep[val] = False
    if t.drop_classes:
        keep &= ~torch.isin(labels, torch.tensor(t.drop_classes))
    if t.keep_classes is not None:
        keep &= torch.isin(labels, torch.tensor(t.keep_classes))
    train = everything[keep]
    if len(train) == 0:
        raise RespkdError("the transfer set is empty: data.transfer removes every training example")
    if t.fraction is not None:
        count = round(t.fraction * len(train))
        if count == 0:
            raise RespkdError(f"data.transfer.fraction {t.fraction} of {len(train)} examples leaves none")
        train = train[stratified_take(labels[train], count, t.seed)]
    return Selection(train, val, active=True)
