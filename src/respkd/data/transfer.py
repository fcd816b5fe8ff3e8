"""The training examples a run learns from: a validation hold-out, then the transfer-set filter.

Order, and why:
  1. ``train_limit``: the first N training examples (quick runs).
  2. ``val_size``: a stratified hold-out seeded by ``val_seed`` only, taken before any filtering, so every run with
     the same ``val_size``/``val_seed`` holds out exactly the same examples, whatever its seed or transfer set:
     a bias shift chosen on it for one run is chosen on data no run of the family trained on.
  3. the transfer filter on the rest: ``drop_classes`` or ``keep_classes``, then ``fraction`` (stratified, seeded
     by ``transfer.seed``).
The test set is only cut by ``test_limit``. Indices are kept sorted (the original order): the loader shuffles anyway.
Streamed datasets only take the limits (see :meth:`~respkd.data.streamed.FolderSplits.limited`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from respkd.config import DataConfig, RunConfig, TransferConfig
from respkd.data.datasets import Splits
from respkd.data.streamed import FolderSplits
from respkd.errors import RespkdError

__all__ = ["Selection", "describe_transfer", "select", "select_training", "stratified_take"]


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


def select(data: Splits | FolderSplits, cfg: RunConfig) -> Splits | FolderSplits:
    """Apply ``train_limit`` / ``test_limit`` (first N examples), the validation hold-out and the transfer filter.

    The order and why: see the module doc. ``val_*`` of the result hold the validation split (empty without
    ``data.val_size``) and ``train_index`` the transfer set's positions in the original training set (None: no
    selection beyond ``train_limit``).
    """
    d = cfg.data
    if isinstance(data, FolderSplits):
        return data.limited(d.train_limit, d.test_limit)
    images, labels = data.train_images[: d.train_limit], data.train_labels[: d.train_limit]
    sel = select_training(labels, data.num_classes, d)
    if sel.active:
        train_images, train_labels, index = images[sel.train], labels[sel.train], sel.train
    else:
        train_images, train_labels, index = images, labels, None
    return Splits(
        data.info, train_images, train_labels, data.test_images[: d.test_limit], data.test_labels[: d.test_limit],
        data.sha256, val_images=images[sel.val], val_labels=labels[sel.val], train_index=index,
    )


def describe_transfer(t: TransferConfig) -> str:
    """`` (transfer set: without classes [3], 0.5 of them)`` for a run's first log line; empty without a filter."""
    parts = ([f"without classes {t.drop_classes}"] if t.drop_classes else []) + (
        [f"only classes {t.keep_classes}"] if t.keep_classes is not None else []) + (
        [f"{t.fraction:g} of them"] if t.fraction is not None else [])
    return f" (transfer set: {', '.join(parts)})" if parts else ""
