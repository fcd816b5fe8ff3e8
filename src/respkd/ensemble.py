"""Ensembles of teachers behind the interface of one model: ``forward(x) -> logits``.

The paper distils an ensemble of models trained from different random initialisations into one net. Making the
ensemble an ordinary ``nn.Module`` whose output is a set of logits means nothing downstream special-cases it: the
Distiller freezes it and keeps it in eval mode, the loss softens its output at T, the teacher cache stores it.

Combination rules, both computed in float32 (also under bf16 autocast):

* ``mean_probs`` (the paper's rule): the arithmetic mean of the members' probabilities at temperature T. The
  output is ``T * log(mean_i softmax(z_i / T))``, so ``softmax(output / T)`` is exactly that mean (the log of a
  distribution is a set of logits for it; dividing by T and the softmax undo the scaling). The result depends on
  T: an ensemble for distillation at T is built with that T (``kd.temperature``), and its identity in the teacher
  cache's key includes it. Evaluated at T = 1 it is the usual average of the members' predictions.
* ``mean_logits``: the mean of the members' logits. ``softmax(mean_i z_i / T)`` is proportional to
  ``prod_i softmax(z_i / T) ** (1/M)``: the normalised geometric mean of the members' probabilities, at every T.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from respkd.checkpoint import load_model
from respkd.classes import check_classes, recorded_class_names
from respkd.config import COMBINE_RULES
from respkd.errors import RespkdError

__all__ = ["AGREE_KEYS", "Ensemble", "check_combination", "combine_logits", "ensemble_digest", "load_ensemble"]


def check_combination(rule: str, temperature: float) -> None:
    """Refuse an unknown combination rule or a temperature that is not a finite number > 0."""
    if rule not in COMBINE_RULES:
        raise RespkdError(f"unknown ensemble rule '{rule}': use {' or '.join(COMBINE_RULES)}")
    if not 0 < temperature < math.inf:  # written so that nan fails too
        raise RespkdError(f"ensemble temperature must be a finite number > 0, got {temperature}")


def combine_logits(logits: torch.Tensor, rule: str, temperature: float = 1.0) -> torch.Tensor:
    """Combine members' logits ``(M, N, C)`` into ``(N, C)`` logits of the ensemble, in float32 (see module doc)."""
    check_combination(rule, temperature)
    with torch.autocast(device_type=logits.device.type, enabled=False):
        z = logits.float()
        if rule == "mean_logits":
            return z.mean(dim=0)
        log_probs = torch.log_softmax(z / temperature, dim=-1)
        return temperature * (torch.logsumexp(log_probs, dim=0) - math.log(z.shape[0]))


class Ensemble(nn.Module):
    """Several models with the same inputs and classes, answering as one: ``forward(x)`` returns combined logits.

    Args:
        members: the models (at least one).
        combine: ``mean_probs`` or ``mean_logits`` (see the module doc).
        temperature: the T at which ``mean_probs`` averages probabilities (ignored by ``mean_logits``).
    """

    def __init__(self, members: Sequence[nn.Module], combine: str = "mean_probs", temperature: float = 1.0) -> None:
        super().__init__()
        if not members:
            raise RespkdError("an ensemble needs at least one member")
        check_combination(combine, temperature)  # here too: refused when built, not at its first batch
        self.members = nn.ModuleList(members)
        self.combine, self.temperature = combine, float(temperature)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.stack([m(x).float().flatten(1) for m in self.members])
        return combine_logits(logits, self.combine, self.temperature)

    def extra_repr(self) -> str:
        return f"combine={self.combine}, temperature={self.temperature:g}"


def ensemble_digest(member_sha256s: Sequence[str], combine: str, temperature: float) -> str:
    """The ensemble's identity for the teacher cache key: its members' weights, the rule and (mean_probs) its T."""
    ident = {"members": list(member_sha256s), "combine": combine,
             "temperature": float(temperature) if combine == "mean_probs" else None}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()


AGREE_KEYS = ("num_classes", "in_shape", "normalization", "dataset")


def load_ensemble(
    paths: Sequence[str | Path], combine: str = "mean_probs", temperature: float = 1.0,
    device: torch.device | str = "cpu",
) -> tuple[Ensemble, dict[str, Any]]:
    """Load respkd checkpoints as one :class:`Ensemble`; its metadata looks like one checkpoint's.

    The members must agree on classes, input shape, input normalisation and dataset: anything else is a one-line
    error naming the first member that differs. ``weights_sha256`` of the returned metadata is
    :func:`ensemble_digest`; ``members`` lists each member's path, run name and weights digest.
    """
    if len(set(map(str, paths))) != len(paths):
        raise RespkdError("an ensemble lists the same checkpoint twice")
    models, metas = [], []
    for path in paths:
        model, meta = load_model(path, device)
        models.append(model)
        metas.append(meta)
    first = metas[0]
    for path, meta in zip(paths[1:], metas[1:]):
        for key in AGREE_KEYS:
            if meta.get(key) != first.get(key):
                raise RespkdError(
                    f"ensemble members disagree on {key}: {paths[0]} has {first.get(key)}, {path} has {meta.get(key)}"
                )
        if (names := recorded_class_names(first)) is not None:  # the same classes by name too (respkd.classes)
            check_classes(meta, names, f"member {path}", f"member {paths[0]}")
    digest = ensemble_digest([m["weights_sha256"] for m in metas], combine, temperature)
    meta = {key: first.get(key) for key in (*AGREE_KEYS, "class_names")}
    meta.update({
        "weights_sha256": digest, "combine": combine, "temperature": float(temperature),
        "members": [{"path": str(p), "name": m.get("name"), "weights_sha256": m["weights_sha256"]}
                    for p, m in zip(paths, metas)],
    })
    return Ensemble(models, combine, temperature).to(device), meta
