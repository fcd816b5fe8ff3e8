"""One specialist: a net over its subset plus a dustbin, the batches it learns from, and its dustbin correction.

* **Output layer.** A specialist fine-tuned from the generalist is the generalist's architecture built with
  ``|S| + 1`` outputs, every weight copied except the output layer's (the ``nn.Linear`` whose output is the model's
  output, found as :func:`respkd.bias.output_layer` finds it), whose rows are the generalist's rows of the subset's
  classes, in increasing class order, then one dustbin row. The dustbin row is the mean of the other classes' rows
  with ``log(C - |S|)`` added to its bias: the logit of the *sum* of their probabilities if their logits were all
  equal (``logsumexp`` of m equal values is that value + log m). It is a lower bound of the exact
  ``logsumexp`` (Jensen), which no single linear row can represent; training closes the gap.
* **Labels.** Class ``S[i]`` becomes ``i``, every other class ``|S|`` (the dustbin): :func:`label_map`.
* **Batches.** A share ``subset_fraction`` of every batch comes from the subset's examples (each once per epoch), the
  rest from the other classes' (uniformly, without replacement within an epoch, cycling when there are too few):
  :class:`SubsetBatches`, over the tensors in memory, with the generalist's jitter and normalisation.
* **Dustbin correction.** Training sees the dustbin with frequency ``f_d`` (the batch share of other classes) and the
  subset with ``f_s = 1 - f_d``; the real (training-set) frequencies are ``pi_d`` and ``pi_s``. A classifier trained
  on resampled data estimates ``p(y | x)`` under the training prior; to restore the real prior every class's logit
  is shifted by the log of its real-to-training frequency ratio. Within the subset that ratio is the same for every
  class (the subset's examples are drawn uniformly), so only the difference matters: the dustbin logit (its bias)
  is raised by ``log(pi_d / f_d) - log(pi_s / f_s)``, the log of the factor by which the dustbin's odds were
  under-sampled. (Adding only ``log(pi_d / f_d)`` would leave the subset classes' own over-sampling in place.)
* **Soft targets.** The generalist's distribution at T mapped to subset + dustbin (the dustbin gets the summed
  probability of the other classes: logits ``[z_S, T logsumexp(z_rest / T)]``). Those targets carry the real prior,
  while hard labels on resampled batches carry the training prior; the targets' dustbin logit is lowered by the same
  correction, so both terms teach the training prior and the one correction after training serves both.
"""

from __future__ import annotations

import math
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from respkd.bias import output_layer
from respkd.data.memory import BatchLoader
from respkd.errors import RespkdError
from respkd.models import build_model

__all__ = [
    "MappedGeneralist", "SubsetBatches", "dustbin_correction", "label_map", "mapped_logits", "shift_dustbin",
    "specialist_from_generalist",
]


def label_map(subset: Sequence[int], num_classes: int) -> torch.Tensor:
    """``(C,)`` int64: class ``subset[i]`` -> ``i``, any other class -> ``len(subset)`` (the dustbin)."""
    mapping = torch.full((num_classes,), len(subset), dtype=torch.long)
    mapping[list(subset)] = torch.arange(len(subset))
    return mapping


def dustbin_correction(n_subset: int, n_other: int, batch_subset: int, batch_other: int) -> float:
    """The log-odds by which training batches under-sampled the dustbin (module doc): ``log(pi_d/f_d) - log(pi_s/f_s)``.

    ``n_subset``, ``n_other``: examples of the subset's classes and of the others in the real (training) data;
    ``batch_subset``, ``batch_other``: how many of each every training batch holds.
    """
    if min(n_subset, n_other, batch_subset, batch_other) <= 0:
        raise ValueError("every count must be positive")
    pi_d, pi_s = n_other / (n_subset + n_other), n_subset / (n_subset + n_other)
    f_d, f_s = batch_other / (batch_subset + batch_other), batch_subset / (batch_subset + batch_other)
    return math.log(pi_d / f_d) - math.log(pi_s / f_s)


def mapped_logits(logits: torch.Tensor, subset: Sequence[int], temperature: float = 1.0) -> torch.Tensor:
    """``(N, |S| + 1)`` logits whose softmax at ``temperature`` is ``softmax(logits / T)`` restricted to ``subset``,
    plus the summed probability of the other classes as the last (dustbin) entry. In float32."""
    z = logits.float()
    inside = torch.zeros(z.shape[1], dtype=torch.bool, device=z.device)
    inside[list(subset)] = True
    dust = temperature * torch.logsumexp(z[:, ~inside] / temperature, dim=1, keepdim=True)
    return torch.cat([z[:, inside], dust], dim=1)


class MappedGeneralist(nn.Module):
    """The generalist answering in a specialist's classes (:func:`mapped_logits`), with the dustbin logit lowered by
    ``correction`` so its targets carry the training batches' prior (module doc). A frozen teacher for the Distiller."""

    def __init__(self, generalist: nn.Module, subset: Sequence[int], temperature: float, correction: float) -> None:
        super().__init__()
        self.generalist = generalist
        self.subset, self.temperature, self.correction = list(subset), float(temperature), float(correction)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = mapped_logits(self.generalist(x), self.subset, self.temperature)
        out[:, -1] -= self.correction
        return out


def _layer_name(model: nn.Module, layer: nn.Module) -> str:
    return next(name for name, module in model.named_modules() if module is layer)


@torch.no_grad()
def specialist_from_generalist(
    generalist: nn.Module, spec: dict[str, Any], in_shape: tuple[int, ...], subset: Sequence[int]
) -> nn.Module:
    """A copy of the generalist whose output layer covers ``subset`` + a dustbin (module doc for the dustbin row).

    ``spec``: the generalist's model spec from its checkpoint metadata (``name`` plus options), so the specialist's
    checkpoint rebuilds with :func:`respkd.checkpoint.load_model` like any other.
    """
    layer = output_layer(generalist, in_shape)
    num_classes = layer.out_features
    options = {k: v for k, v in spec.items() if k != "name"}
    model = build_model(spec["name"], len(subset) + 1, in_shape, **options)
    prefix = _layer_name(generalist, layer)
    state = {k: v for k, v in generalist.state_dict().items() if k not in (f"{prefix}.weight", f"{prefix}.bias")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    new_layer = dict(model.named_modules()).get(prefix)
    if unexpected or set(missing) != {f"{prefix}.weight", f"{prefix}.bias"} or not isinstance(new_layer, nn.Linear) \
            or new_layer.out_features != len(subset) + 1:
        raise RespkdError(f"model '{spec['name']}' built with {len(subset) + 1} classes does not match the generalist "
                          "apart from its output layer: cannot fine-tune a specialist from it (give specialist.model)")
    rest = [c for c in range(num_classes) if c not in set(subset)]
    new_layer.weight.copy_(torch.cat([layer.weight[list(subset)], layer.weight[rest].mean(0, keepdim=True)]))
    dust_bias = layer.bias[rest].mean() + math.log(len(rest))
    new_layer.bias.copy_(torch.cat([layer.bias[list(subset)], dust_bias.view(1)]))
    return model.to(next(generalist.parameters()).device)


@torch.no_grad()
def shift_dustbin(model: nn.Module, in_shape: tuple[int, ...], shift: float) -> None:
    """Add ``shift`` to the dustbin (last) logit: the output layer's last bias entry."""
    output_layer(model, in_shape).bias[-1] += shift


class SubsetBatches:
    """Training batches of ``batch_size`` with ``n_in`` examples of the subset and ``batch_size - n_in`` of the rest.

    Yields ``(inputs, mapped_labels, indices)`` like :class:`~respkd.data.memory.BatchLoader` (whose ``make_batch``
    normalises and jitters), so the engine's ``train_one_epoch`` takes it as it is. An epoch shows every subset example
    once (``len(inside) // n_in`` full batches); the other classes' examples come from a permutation that is cycled
    when the epoch needs more of them than exist. Order seeded by ``(seed, epoch)``.
    """

    def __init__(self, base: BatchLoader, inside: torch.Tensor, batch_size: int, subset_fraction: float) -> None:
        if batch_size < 2:
            raise RespkdError("specialist training needs batches of at least 2 (one from the subset, one from the rest)")
        self.base = base
        self.inside = inside.nonzero().flatten()
        self.outside = (~inside).nonzero().flatten()
        if len(self.inside) == 0 or len(self.outside) == 0:
            raise RespkdError("a specialist needs training examples both of its subset and of other classes")
        self.n_in = min(max(1, round(batch_size * subset_fraction)), batch_size - 1)
        self.n_out = batch_size - self.n_in
        self.epoch = self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Make the next pass epoch ``epoch``, starting after its first ``skip`` batches (as
        :meth:`~respkd.data.memory.BatchLoader.set_epoch`: the order depends only on the seed and the epoch)."""
        self.epoch, self.skip = epoch, skip
        self.base.set_epoch(epoch)

    def __len__(self) -> int:
        return max(1, len(self.inside) // self.n_in)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        g = torch.Generator().manual_seed((self.base.seed * 1_000_003 + self.epoch) * 2)
        inside = self.inside[torch.randperm(len(self.inside), generator=g)]
        if len(inside) < self.n_in:  # fewer subset examples than one batch's share: cycle them too
            inside = inside.repeat(-(-self.n_in // len(inside)))
        need = len(self) * self.n_out
        outside = torch.cat([self.outside[torch.randperm(len(self.outside), generator=g)]
                             for _ in range(-(-need // len(self.outside)))])
        offsets = self.base.view_offsets(self.base.view_of_epoch(self.epoch)) if self.base.jitter else None
        for b in range(self.skip, len(self)):
            idx = torch.cat([inside[b * self.n_in:(b + 1) * self.n_in], outside[b * self.n_out:(b + 1) * self.n_out]])
            yield self.base.make_batch(idx, None if offsets is None else offsets[idx])
