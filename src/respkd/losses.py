"""Response-based distillation losses (Hinton, Vinyals & Dean 2015).

Convention used everywhere in respkd (peers disagree, so it is spelled out):

    loss = soft_weight * T^2 * KL(q_teacher^T || q_student^T)  +  hard_weight * CE(student at T=1, labels)

* ``q^T = softmax(logits / T)``: teacher and student are softened with the same temperature T.
* KL rather than soft cross-entropy: the two differ by the teacher's entropy, a constant, so the gradients are
  identical; KL is zero when the student matches the teacher, which makes logged values readable.
* ``T^2``: the gradient of ``KL`` w.r.t. a student logit is ``(1/T) (q_student - q_teacher)``; multiplying by
  ``T^2`` keeps the soft term's gradient magnitude comparable across temperatures (the paper's advice), so
  ``soft_weight`` and ``hard_weight`` need not be retuned when T changes.
* Reduction is ``batchmean``: summed over classes, averaged over examples (the mathematically correct KL).
* Both terms are computed in float32, also under bf16/fp16 autocast: a low-precision softmax at high T loses the
  small probabilities that carry the "dark knowledge".

Mapping to peers: MMRazor ``KLDivergence(tau, loss_weight)`` is ``soft_weight=loss_weight`` with the same T^2;
torchdistill ``KDLoss(alpha)`` is ``hard_weight=alpha, soft_weight=1-alpha`` (torchdistill drops the T^2 when alpha
is None); the Keras example omits T^2, i.e. ``soft_weight = w / T^2``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_targets(teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Teacher probabilities softened at ``temperature``, in float32."""
    return torch.softmax(teacher_logits.float() / temperature, dim=-1)


def soft_target_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(softmax(teacher/T) || softmax(student/T))``, averaged over the batch, in float32.

    Args:
        student_logits: ``(N, C)`` raw student outputs.
        teacher_logits: ``(N, C)`` raw teacher outputs (or any logits whose softmax at T is the soft target,
            such as an ensemble's combined output).
        temperature: T > 0.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student and teacher outputs differ in shape: {tuple(student_logits.shape)} vs "
            f"{tuple(teacher_logits.shape)} (do they have the same number of classes?)"
        )
    with torch.autocast(device_type=student_logits.device.type, enabled=False):
        log_q_student = F.log_softmax(student_logits.float() / temperature, dim=-1)
        log_q_teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
        kl = F.kl_div(log_q_student, log_q_teacher, reduction="batchmean", log_target=True)
    return kl * temperature**2


def hard_label_loss(student_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Ordinary cross-entropy with the true labels at T = 1, in float32, averaged over the batch."""
    with torch.autocast(device_type=student_logits.device.type, enabled=False):
        return F.cross_entropy(student_logits.float(), labels)


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None,
    temperature: float,
    soft_weight: float = 1.0,
    hard_weight: float = 0.0,
) -> dict[str, torch.Tensor]:
    """Hinton's objective: ``soft_weight * soft_target_loss + hard_weight * hard_label_loss``.

    Returns a dict with ``loss`` (the weighted sum to back-propagate) and the unweighted terms ``soft_loss`` and
    ``hard_loss`` for logging. ``labels`` may be None only when ``hard_weight`` is 0.
    """
    if hard_weight and labels is None:
        raise ValueError("hard_weight > 0 needs labels")
    soft = soft_target_loss(student_logits, teacher_logits, temperature)
    # The hard term is computed whenever labels exist: it costs nothing and is worth logging at weight 0.
    hard = hard_label_loss(student_logits, labels) if labels is not None else soft.new_zeros(())
    loss = soft_weight * soft + hard_weight * hard if hard_weight else soft_weight * soft
    return {"loss": loss, "soft_loss": soft.detach(), "hard_loss": hard.detach()}
