"""The KD loss against a hand computation, its closed-form gradient, float32 under autocast, weights, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from respkd.losses import distillation_loss, hard_label_loss, soft_target_loss, soft_targets

STUDENT = [[1.0, 2.0, 0.5], [-1.0, 0.0, 3.0]]
TEACHER = [[2.0, 0.0, 1.0], [0.5, 0.5, -2.0]]


def softmax_np(row, t):
    z = np.exp(np.asarray(row, dtype=np.float64) / t)
    return z / z.sum()


def hand_loss(student, teacher, t):
    """T^2 * mean over examples of sum_k q_t,k * log(q_t,k / q_s,k), in float64 with numpy/math."""
    total = 0.0
    for s_row, t_row in zip(student, teacher):
        qs, qt = softmax_np(s_row, t), softmax_np(t_row, t)
        total += sum(qt[k] * math.log(qt[k] / qs[k]) for k in range(len(qt)))
    return t * t * total / len(student)


@pytest.mark.parametrize("t", [1.0, 2.0, 20.0])
def test_soft_target_loss_matches_hand_computation(t):
    loss = soft_target_loss(torch.tensor(STUDENT), torch.tensor(TEACHER), t)
    assert loss.dtype == torch.float32
    assert loss.shape == ()
    assert loss.item() == pytest.approx(hand_loss(STUDENT, TEACHER, t), rel=1e-5, abs=1e-7)


def test_soft_target_loss_is_zero_when_student_matches_teacher():
    logits = torch.tensor(TEACHER)
    assert soft_target_loss(logits, logits.clone(), 3.0).item() == pytest.approx(0.0, abs=1e-6)
    # and positive otherwise (KL >= 0)
    assert soft_target_loss(torch.tensor(STUDENT), logits, 3.0).item() > 0


def test_soft_target_loss_is_kl_not_cross_entropy():
    # Shifting the teacher logits by a constant changes nothing; the value is KL, so it differs from soft CE by H(q_t).
    s, t_ = torch.tensor(STUDENT), torch.tensor(TEACHER)
    assert soft_target_loss(s, t_ + 5.0, 2.0).item() == pytest.approx(soft_target_loss(s, t_, 2.0).item(), rel=1e-5)
    qt = soft_targets(t_, 2.0)
    soft_ce = -(qt * F.log_softmax(s / 2.0, dim=-1)).sum(-1).mean() * 4.0
    entropy = -(qt * qt.log()).sum(-1).mean() * 4.0
    assert soft_target_loss(s, t_, 2.0).item() == pytest.approx((soft_ce - entropy).item(), rel=1e-5)


@pytest.mark.parametrize("t", [1.0, 2.5, 20.0])
def test_soft_target_loss_gradient_matches_closed_form(t):
    student = torch.tensor(STUDENT, requires_grad=True)
    teacher = torch.tensor(TEACHER)
    soft_target_loss(student, teacher, t).backward()
    n = len(STUDENT)
    q_s = torch.softmax(torch.tensor(STUDENT, dtype=torch.float64) / t, -1)
    q_t = torch.softmax(torch.tensor(TEACHER, dtype=torch.float64) / t, -1)
    # d KL / d z_s = (1/T)(q_s - q_t) per example; batchmean divides by N; the T^2 factor makes it T (q_s - q_t) / N.
    expected = t * t * (1.0 / t) * (q_s - q_t) / n
    torch.testing.assert_close(student.grad.double(), expected, rtol=1e-5, atol=1e-7)
    assert student.grad.sum(dim=1).abs().max().item() < 1e-6  # gradients of a softmax input sum to zero per row


def test_loss_stays_float32_under_bf16_autocast():
    torch.manual_seed(0)
    w = torch.randn(8, 10)
    x = torch.randn(4, 8)
    teacher_logits = torch.randn(4, 10) * 5
    labels = torch.tensor([0, 3, 9, 5])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        student_logits = x @ w
        assert student_logits.dtype == torch.bfloat16  # autocast is really active
        soft = soft_target_loss(student_logits, teacher_logits.bfloat16(), 20.0)
        hard = hard_label_loss(student_logits, labels)
        out = distillation_loss(student_logits, teacher_logits, labels, 20.0, soft_weight=0.7, hard_weight=0.3)
    assert soft.dtype == torch.float32
    assert hard.dtype == torch.float32
    for key in ("loss", "soft_loss", "hard_loss"):
        assert out[key].dtype == torch.float32, key
    # the value is the float32 loss of the (bf16-rounded) inputs, not a bf16-rounded loss
    ref = soft_target_loss(student_logits.float(), teacher_logits.bfloat16().float(), 20.0)
    assert soft.item() == pytest.approx(ref.item(), rel=1e-6)


def test_soft_targets_are_float32_probabilities():
    q = soft_targets(torch.tensor(TEACHER, dtype=torch.bfloat16), 4.0)
    assert q.dtype == torch.float32
    torch.testing.assert_close(q.sum(-1), torch.ones(2))
    torch.testing.assert_close(q.double(), torch.stack([torch.from_numpy(softmax_np(r, 4.0)) for r in
                                                        torch.tensor(TEACHER, dtype=torch.bfloat16).tolist()]),
                               rtol=1e-5, atol=1e-6)


def test_distillation_loss_weights():
    s, t_ = torch.tensor(STUDENT), torch.tensor(TEACHER)
    labels = torch.tensor([1, 2])
    soft = soft_target_loss(s, t_, 3.0).item()
    hard = F.cross_entropy(s, labels).item()
    out = distillation_loss(s, t_, labels, 3.0, soft_weight=0.25, hard_weight=2.0)
    assert out["loss"].item() == pytest.approx(0.25 * soft + 2.0 * hard, rel=1e-6)
    assert out["soft_loss"].item() == pytest.approx(soft, rel=1e-6)  # logged terms are unweighted
    assert out["hard_loss"].item() == pytest.approx(hard, rel=1e-6)
    # default weights: soft only, hard still logged
    out = distillation_loss(s, t_, labels, 3.0)
    assert out["loss"].item() == pytest.approx(soft, rel=1e-6)
    assert out["hard_loss"].item() == pytest.approx(hard, rel=1e-6)
    # hard only: the gradient is that of the cross-entropy alone
    s_req = s.clone().requires_grad_(True)
    distillation_loss(s_req, t_, labels, 3.0, soft_weight=0.0, hard_weight=1.0)["loss"].backward()
    ref = s.clone().requires_grad_(True)
    F.cross_entropy(ref, labels).backward()
    torch.testing.assert_close(s_req.grad, ref.grad)


def test_distillation_loss_terms_are_detached_and_loss_is_not():
    s = torch.tensor(STUDENT, requires_grad=True)
    out = distillation_loss(s, torch.tensor(TEACHER), torch.tensor([0, 1]), 2.0, hard_weight=0.5)
    assert out["loss"].requires_grad
    assert not out["soft_loss"].requires_grad and not out["hard_loss"].requires_grad


def test_distillation_loss_without_labels():
    s, t_ = torch.tensor(STUDENT), torch.tensor(TEACHER)
    out = distillation_loss(s, t_, None, 2.0)
    assert out["hard_loss"].item() == 0.0
    assert out["loss"].item() == pytest.approx(soft_target_loss(s, t_, 2.0).item())
    with pytest.raises(ValueError, match="labels"):
        distillation_loss(s, t_, None, 2.0, hard_weight=0.5)


@pytest.mark.parametrize("t", [0.0, -1.0])
def test_non_positive_temperature_raises(t):
    s, t_ = torch.tensor(STUDENT), torch.tensor(TEACHER)
    with pytest.raises(ValueError, match="temperature"):
        soft_target_loss(s, t_, t)
    with pytest.raises(ValueError, match="temperature"):
        distillation_loss(s, t_, None, t)


def test_class_count_mismatch_raises():
    with pytest.raises(ValueError, match="number of classes"):
        soft_target_loss(torch.zeros(2, 10), torch.zeros(2, 5), 2.0)
