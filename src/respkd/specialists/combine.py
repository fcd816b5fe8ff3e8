"""Combining a generalist with its specialists at inference time (the paper's section 5.3).

For one input, with ``p_g`` the generalist's distribution over all C classes and, for each *active* specialist k,
``p_k`` its distribution over its subset S_k plus one dustbin class, the combined distribution is

    q* = argmin_q  KL(p_g || q) + sum_k KL(p_k || q_k),     q_k = (q restricted to S_k,  sum of q outside S_k)

i.e. the full distribution that best agrees with every model, each judged on the classes it can tell apart. With
``q = softmax(z)`` this is an unconstrained problem in ``z``, solved for a whole batch at once by Adam on ``z``
(initialised at ``log p_g``), in float32: each input's objective depends only on its own row of ``z``, and Adam's
update is element-wise, so the rows are independent problems sharing one loop. The loop stops after ``steps`` or
once the largest gradient entry of any row is below ``tol``; the learning rate decays along a cosine so the last
steps settle instead of oscillating.

A specialist is active for an input when its subset holds one of the generalist's ``top_n`` classes for that input
(the paper: n = 1). Inputs with no active specialist keep the generalist's distribution exactly (no optimisation).

The objective is computed without any ``0 * log 0``: a specialist whose subset covers every class has no dustbin,
and its dustbin term is dropped (its dustbin probability should then be 0, as the closed-form check assumes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

__all__ = ["CombineResult", "active_specialists", "combine", "expand_specialist_probs", "membership", "objective"]


@dataclass(frozen=True)
class CombineResult:
    probs: torch.Tensor  # (N, C) the combined distribution (rows with no active specialist: p_g exactly)
    active: torch.Tensor  # (N, K) bool, which specialists took part for each input
    steps: int  # Adam steps taken (0 when no input had an active specialist)
    max_grad: float  # the largest gradient entry at the end (convergence check)


def membership(subsets: Sequence[Sequence[int]], num_classes: int) -> torch.Tensor:
    """``(K, C)`` bool: ``[k, c]`` is True when class c is in specialist k's subset."""
    member = torch.zeros(len(subsets), num_classes, dtype=torch.bool)
    for k, subset in enumerate(subsets):
        member[k, list(subset)] = True
    return member


def active_specialists(p_g: torch.Tensor, member: torch.Tensor, top_n: int = 1) -> torch.Tensor:
    """``(N, K)`` bool: specialist k is active for input n when its subset meets the generalist's top-n classes."""
    top = p_g.topk(min(top_n, p_g.shape[1]), dim=1).indices  # (N, n)
    return member[:, top].permute(1, 0, 2).any(dim=2)  # member[k, top[n, j]] -> (N, K)


def expand_specialist_probs(
    specialist_probs: Sequence[torch.Tensor], member: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scatter each specialist's subset probabilities into class positions.

    Returns ``(N, K, C)`` probabilities (zero outside each subset) and ``(N, K)`` dustbin probabilities; specialist
    k's output columns are its subset's classes in increasing order, then the dustbin.
    """
    n, (k, c) = specialist_probs[0].shape[0], member.shape
    full = torch.zeros(n, k, c)
    dust = torch.zeros(n, k)
    for j, p in enumerate(specialist_probs):
        cols = member[j].nonzero().flatten()
        if p.shape != (n, len(cols) + 1):
            raise ValueError(f"specialist {j}: probabilities of shape {tuple(p.shape)}, expected {(n, len(cols) + 1)}")
        full[:, j, cols] = p[:, :-1].float()
        dust[:, j] = p[:, -1].float()
    return full, dust


def objective(
    z: torch.Tensor, p_g: torch.Tensor, full: torch.Tensor, dust: torch.Tensor, weight: torch.Tensor,
    outside: torch.Tensor,
) -> torch.Tensor:
    """Per-row ``KL(p_g || q) + sum_k weight[n, k] KL(p_k || q_k)`` with ``q = softmax(z)``; shape ``(N,)``.

    ``outside``: ``(K, C)`` bool, the classes of each specialist's dustbin (every specialist here has at least one).
    """
    log_q = torch.log_softmax(z, dim=1)  # (N, C)
    loss = (torch.xlogy(p_g, p_g) - p_g * log_q).sum(dim=1)
    if full.shape[1]:
        mask = torch.where(outside, 0.0, -math.inf)  # (K, C)
        log_q_dust = torch.logsumexp(log_q[:, None, :] + mask[None], dim=2)  # (N, K)
        per_k = (torch.xlogy(full, full) - full * log_q[:, None, :]).sum(dim=2)
        per_k = per_k + torch.xlogy(dust, dust) - dust * log_q_dust
        loss = loss + (weight * per_k).sum(dim=1)
    return loss


def combine(
    p_g: torch.Tensor,
    specialist_probs: Sequence[torch.Tensor],
    subsets: Sequence[Sequence[int]],
    top_n: int = 1,
    steps: int = 500,
    lr: float = 0.3,
    tol: float = 1e-6,
) -> CombineResult:
    """The distribution minimising the summed KL divergences (module doc), for every row of ``p_g`` at once.

    Args:
        p_g: ``(N, C)`` the generalist's probabilities.
        specialist_probs: one ``(N, |S_k| + 1)`` tensor per specialist (subset classes in increasing order, then
            the dustbin), for the same N inputs.
        subsets: the class indices of each specialist.
        top_n: how many of the generalist's top classes decide which specialists are active.
        steps, lr, tol: the Adam loop (at most ``steps``; stops once every gradient entry is below ``tol``).
    """
    p_g = p_g.detach().float().cpu()
    num_classes = p_g.shape[1]
    member = membership(subsets, num_classes)
    active = active_specialists(p_g, member, top_n) if len(subsets) else torch.zeros(len(p_g), 0, dtype=torch.bool)
    rows = active.any(dim=1).nonzero().flatten()
    out = p_g.clone()
    if len(rows) == 0:
        return CombineResult(out, active, 0, 0.0)
    full, dust = expand_specialist_probs([p.detach().float().cpu()[rows] for p in specialist_probs], member)
    weight = active[rows].float()
    has_dustbin = (~member).any(dim=1)
    dust = dust * has_dustbin  # a specialist covering every class has no dustbin term
    # drop such specialists' dustbin from the objective by giving them a dummy one-class dustbin of mass 0
    outside = torch.where(has_dustbin[:, None], ~member, torch.arange(num_classes)[None] == 0)
    target = p_g[rows]
    z = torch.log(target.clamp_min(1e-30)).requires_grad_(True)
    optimizer = torch.optim.Adam([z], lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    max_grad, taken = math.inf, 0
    for taken in range(1, steps + 1):
        optimizer.zero_grad(set_to_none=True)
        objective(z, target, full, dust, weight, outside).sum().backward()
        max_grad = float(z.grad.abs().max())
        if max_grad < tol:
            break
        optimizer.step()
        schedule.step()
    out[rows] = torch.softmax(z.detach(), dim=1)
    return CombineResult(out, active, taken, max_grad)
