"""The response losses against hand computations (numpy, float64, explicit loops): KD with its closed-form gradient,
logit matching, DKD with its decomposition identity, DIST, logit standardization; float32 under autocast, finite
gradients at extreme logits, weights, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from respkd.losses import (
    RESPONSE_LOSSES, distillation_loss, dist_loss, dist_terms, dkd_loss, dkd_terms, hard_label_loss, logit_mse_loss,
    response_loss, soft_target_loss, soft_targets, standardize_logits,
)

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


# ---------------------------------------------------------------- the response-KD family

# 4 examples of 5 classes: a tiny batch whose numbers are easy to recompute by hand.
S5 = [[1.0, 2.0, 0.5, -1.0, 0.0], [-1.0, 0.0, 3.0, 1.5, 0.5], [0.2, -0.3, 0.1, 2.2, -1.7], [2.5, 1.0, -0.5, 0.0, 0.3]]
T5 = [[2.0, 0.0, 1.0, -0.5, 0.5], [0.5, 0.5, -2.0, 2.5, 1.0], [-1.0, 0.8, 0.3, 1.9, 0.0], [1.5, 2.0, -1.0, 0.2, 0.4]]
Y5 = [1, 3, 3, 0]


def kl_np(p, q) -> float:
    return sum(pk * math.log(pk / qk) for pk, qk in zip(p, q) if pk > 0)


def hand_dkd_parts(s_row, t_row, y, t):
    """(TCKD, NCKD, teacher's p_target) of one example, T^2 not applied, from the definitions."""
    ps, pt = softmax_np(s_row, t), softmax_np(t_row, t)
    tckd = kl_np([pt[y], 1 - pt[y]], [ps[y], 1 - ps[y]])
    others = [k for k in range(len(ps)) if k != y]
    ps_o = [ps[k] / (1 - ps[y]) for k in others]
    pt_o = [pt[k] / (1 - pt[y]) for k in others]
    return tckd, kl_np(pt_o, ps_o), pt[y]


def pearson_np(a, b, eps=1e-8) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (np.sqrt((a * a).sum()) * np.sqrt((b * b).sum()) + eps))


def hand_dist(student, teacher, t, beta, gamma) -> float:
    ys = np.array([softmax_np(r, t) for r in student])
    yt = np.array([softmax_np(r, t) for r in teacher])
    rows = [pearson_np(ys[i], yt[i]) for i in range(len(ys))]
    cols = [pearson_np(ys[:, k], yt[:, k]) for k in range(ys.shape[1])]
    return t * t * (beta * (1 - sum(rows) / len(rows)) + gamma * (1 - sum(cols) / len(cols)))


def test_logit_mse_is_the_squared_error_summed_over_classes_and_averaged_over_examples():
    total = 0.0
    for s_row, t_row in zip(S5, T5):
        total += sum((a - b) ** 2 for a, b in zip(s_row, t_row))
    loss = logit_mse_loss(torch.tensor(S5), torch.tensor(T5))
    assert loss.dtype == torch.float32 and loss.shape == ()
    assert loss.item() == pytest.approx(total / len(S5), rel=1e-6)
    # not shift-invariant: raw logits are compared (one example's teacher logits + 1 adds C * 1^2 / N ... and more)
    shifted = torch.tensor(T5)
    shifted[0] += 1.0
    expected = (total + sum(2 * (b - a) + 1 for a, b in zip(S5[0], T5[0]))) / len(S5)
    assert logit_mse_loss(torch.tensor(S5), shifted).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("t,alpha,beta", [(1.0, 1.0, 8.0), (4.0, 1.0, 8.0), (2.0, 0.5, 2.0)])
def test_dkd_matches_hand_computation(t, alpha, beta):
    parts = [hand_dkd_parts(s_row, t_row, y, t) for s_row, t_row, y in zip(S5, T5, Y5)]
    hand_tckd = t * t * sum(p[0] for p in parts) / len(parts)
    hand_nckd = t * t * sum(p[1] for p in parts) / len(parts)
    s, t_, y = torch.tensor(S5), torch.tensor(T5), torch.tensor(Y5)
    tckd, nckd = dkd_terms(s, t_, y, t)
    assert tckd.item() == pytest.approx(hand_tckd, rel=1e-5) and nckd.item() == pytest.approx(hand_nckd, rel=1e-5)
    loss = dkd_loss(s, t_, y, t, alpha, beta)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(alpha * hand_tckd + beta * hand_nckd, rel=1e-5)


@pytest.mark.parametrize("t", [1.0, 4.0, 20.0])
def test_dkd_decomposition_identity_per_example(t):
    """KL(q_t || q_s) = TCKD + (1 - p_teacher,target) * NCKD for every example (the DKD paper's identity), i.e. KD is
    DKD with alpha = 1 and beta = 1 - p_teacher,target."""
    for s_row, t_row, y in zip(S5, T5, Y5):
        s, t_, lab = torch.tensor([s_row]), torch.tensor([t_row]), torch.tensor([y])
        kd = soft_target_loss(s, t_, t).item()
        tckd, nckd = dkd_terms(s, t_, lab, t)
        p_target = softmax_np(t_row, t)[y]
        # float32 KLs of nearly equal distributions at high T: each log-probability rounds by about 1e-7 (more on
        # CPUs whose vectorised exp/log differ: 2.4e-7 * T^2 measured on an AMD EPYC), times T^2
        close = {"rel": 1e-5, "abs": 1e-6 * t * t}
        assert kd == pytest.approx(tckd.item() + (1 - p_target) * nckd.item(), **close)
        assert kd == pytest.approx(dkd_loss(s, t_, lab, t, alpha=1.0, beta=1 - p_target).item(), **close)
        assert kd == pytest.approx(t * t * kl_np(softmax_np(t_row, t), softmax_np(s_row, t)), **close)
        # with DKD's weights alpha = beta = 1 the NCKD term is no longer scaled down by 1 - p_target: more than KD
        assert dkd_loss(s, t_, lab, t, alpha=1.0, beta=1.0).item() >= kd


def test_dkd_needs_three_classes_and_labels():
    with pytest.raises(ValueError, match="at least 3 classes"):
        dkd_loss(torch.randn(4, 2), torch.randn(4, 2), torch.tensor([0, 1, 1, 0]), 4.0, 1.0, 8.0)
    with pytest.raises(ValueError, match="true labels"):
        dkd_loss(torch.tensor(S5), torch.tensor(T5), None, 4.0, 1.0, 8.0)


@pytest.mark.parametrize("t,beta,gamma", [(1.0, 1.0, 1.0), (4.0, 1.0, 1.0), (2.0, 2.0, 0.5)])
def test_dist_matches_hand_computation(t, beta, gamma):
    loss = dist_loss(torch.tensor(S5), torch.tensor(T5), t, beta, gamma)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(hand_dist(S5, T5, t, beta, gamma), rel=1e-5)
    inter, intra = dist_terms(torch.tensor(S5), torch.tensor(T5), t)
    assert inter.item() == pytest.approx(hand_dist(S5, T5, t, 1.0, 0.0), rel=1e-5)
    assert intra.item() == pytest.approx(hand_dist(S5, T5, t, 0.0, 1.0), rel=1e-5)


def test_dist_is_zero_when_student_equals_teacher():
    logits = torch.tensor(T5)
    value = dist_loss(logits, logits.clone(), 4.0, 1.0, 1.0).item()
    assert value == pytest.approx(0.0, abs=1e-4)  # what is left is the eps's: T^2 * mean(eps / (|a|^2 + eps))
    assert value == pytest.approx(hand_dist(T5, T5, 4.0, 1.0, 1.0), abs=2e-6)
    assert dist_loss(torch.tensor(S5), logits, 4.0, 1.0, 1.0).item() > 0.1


def test_standardize_logits_rows_have_mean_0_and_std_1():
    z = torch.tensor(S5) * 7.0 + 3.0
    out = standardize_logits(z)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.mean(dim=1), torch.zeros(4), rtol=0, atol=1e-6)
    torch.testing.assert_close(out.std(dim=1), torch.ones(4), rtol=0, atol=1e-6)  # torch.std: n - 1
    hand = [(np.asarray(r) - np.mean(r)) / (1e-7 + np.std(r, ddof=1)) for r in z.tolist()]
    torch.testing.assert_close(out.double(), torch.tensor(np.array(hand)), rtol=1e-5, atol=1e-6)
    # scale- and shift-free: the student may match the teacher's logits up to a scale and shift of its own
    torch.testing.assert_close(standardize_logits(torch.tensor(S5)), out, rtol=1e-5, atol=1e-6)
    assert torch.equal(standardize_logits(torch.full((1, 5), 2.0)), torch.zeros(1, 5))  # a constant row: zeros


def test_standardized_kd_matches_hand_computation():
    def standardized(rows):
        return [((np.asarray(r) - np.mean(r)) / (1e-7 + np.std(r, ddof=1))).tolist() for r in rows]

    out = distillation_loss(torch.tensor(S5), torch.tensor(T5), torch.tensor(Y5), 2.0, soft_weight=9.0,
                            hard_weight=0.1, standardize=True)
    soft = hand_loss(standardized(S5), standardized(T5), 2.0)
    hard = F.cross_entropy(torch.tensor(S5), torch.tensor(Y5)).item()  # the cross-entropy reads the raw logits
    assert out["soft_loss"].item() == pytest.approx(soft, rel=1e-5)
    assert out["hard_loss"].item() == pytest.approx(hard, rel=1e-6)
    assert out["loss"].item() == pytest.approx(9.0 * soft + 0.1 * hard, rel=1e-5)


PARAMS = {"kd": {}, "logit_mse": {}, "dkd": {"alpha": 1.0, "beta": 8.0}, "dist": {"beta": 1.0, "gamma": 1.0}}


@pytest.mark.parametrize("standardize", [False, True])
@pytest.mark.parametrize("t", [1.0, 4.0])
@pytest.mark.parametrize("loss", RESPONSE_LOSSES)
def test_gradients_are_finite_at_extreme_logits(loss, t, standardize):
    """|z| = 100: probabilities round to 0 at T = 1 (exp(-200)); no loss may turn that into inf or NaN."""
    g = torch.Generator().manual_seed(0)
    sign = lambda: torch.randint(0, 2, (6, 10), generator=g).float() * 2 - 1  # noqa: E731
    student = (100.0 * sign()).requires_grad_(True)
    teacher = 100.0 * sign()
    labels = torch.randint(0, 10, (6,), generator=g)
    out = distillation_loss(student, teacher, labels, t, hard_weight=1.0, loss=loss, loss_params=PARAMS[loss],
                            standardize=standardize)
    out["loss"].backward()
    assert all(torch.isfinite(v).all() for v in out.values()), out
    assert torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0


def test_dkd_at_extreme_logits_matches_float64():
    # where the authors' torch.log(summed probabilities) would give -inf, the log-space TCKD is still exact
    s = [[100.0, -100.0, 100.0, -100.0], [-100.0, 100.0, -100.0, -100.0]]
    t_ = [[-100.0, 100.0, 100.0, -100.0], [100.0, -100.0, 100.0, -100.0]]
    y = [1, 3]
    parts = [hand_dkd_parts(a, b, c, 1.0) for a, b, c in zip(s, t_, y)]
    tckd, nckd = dkd_terms(torch.tensor(s), torch.tensor(t_), torch.tensor(y), 1.0)
    assert tckd.item() == pytest.approx(sum(p[0] for p in parts) / 2, rel=1e-5)
    assert nckd.item() == pytest.approx(sum(p[1] for p in parts) / 2, rel=1e-5)


@pytest.mark.parametrize("loss", RESPONSE_LOSSES)
def test_every_loss_is_float32_under_bf16_autocast(loss):
    torch.manual_seed(0)
    w, x = torch.randn(8, 10), torch.randn(4, 8)
    teacher_logits, labels = torch.randn(4, 10) * 5, torch.tensor([0, 3, 9, 5])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        student_logits = x @ w
        assert student_logits.dtype == torch.bfloat16
        out = distillation_loss(student_logits, teacher_logits.bfloat16(), labels, 4.0, hard_weight=1.0, loss=loss,
                                loss_params=PARAMS[loss], standardize=True)
        assert standardize_logits(student_logits).dtype == torch.float32
    for key, value in out.items():
        assert value.dtype == torch.float32, key
    ref = distillation_loss(student_logits.float(), teacher_logits.bfloat16().float(), labels, 4.0, hard_weight=1.0,
                            loss=loss, loss_params=PARAMS[loss], standardize=True)
    assert out["loss"].item() == pytest.approx(ref["loss"].item(), rel=1e-6)


def test_response_loss_names_its_terms_and_checks_its_parameters():
    s, t_, y = torch.tensor(S5), torch.tensor(T5), torch.tensor(Y5)
    terms = {loss: set(response_loss(loss, s, t_, y, 4.0, **PARAMS[loss])[1]) for loss in RESPONSE_LOSSES}
    assert terms == {"kd": {"soft_loss"}, "logit_mse": {"mse_loss"}, "dkd": {"tckd_loss", "nckd_loss"},
                     "dist": {"inter_loss", "intra_loss"}}
    value, parts = response_loss("dkd", s, t_, y, 4.0, alpha=2.0, beta=3.0)
    assert value.item() == pytest.approx(2.0 * parts["tckd_loss"].item() + 3.0 * parts["nckd_loss"].item(), rel=1e-6)
    with pytest.raises(ValueError, match=r"loss 'dist' takes the parameters \(beta, gamma\), got \(alpha, beta\)"):
        response_loss("dist", s, t_, y, 4.0, alpha=1.0, beta=1.0)
    with pytest.raises(ValueError, match="unknown response loss 'crd'"):
        response_loss("crd", s, t_, y, 4.0)
    out = distillation_loss(s, t_, y, 4.0, soft_weight=0.5, hard_weight=2.0, loss="dist", loss_params=PARAMS["dist"])
    assert set(out) == {"loss", "inter_loss", "intra_loss", "hard_loss"}
    expected = 0.5 * (out["inter_loss"] + out["intra_loss"]) + 2.0 * out["hard_loss"]
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-6)


# ---------------------------------------------------------------- DKD and DIST in one pass vs autograd of the formula


@pytest.mark.parametrize("scale", [3.0, 100.0])
@pytest.mark.parametrize("t", [1.0, 4.0, 20.0])
@pytest.mark.parametrize("loss", ["dkd", "dist"])
def test_one_pass_terms_equal_the_formula_and_its_autograd_gradient(loss, t, scale):
    """dkd_terms / dist_terms compute their gradient in the forward pass (fewer kernels); values and gradients are
    autograd's through the authors' formula (the private reference), up to float32 rounding."""
    from respkd.losses import _dist_terms_autograd, _dkd_terms_autograd

    g = torch.Generator().manual_seed(int(t * 10 + scale))
    student = (torch.randn(64, 10, generator=g) * scale).requires_grad_(True)
    teacher, labels = torch.randn(64, 10, generator=g) * scale, torch.randint(0, 10, (64,), generator=g)
    weights = (1.0, 8.0) if loss == "dkd" else (1.0, 2.0)
    fast = dkd_terms(student, teacher, labels, t) if loss == "dkd" else dist_terms(student, teacher, t)
    (weights[0] * fast[0] + weights[1] * fast[1]).backward()
    fast_grad, student.grad = student.grad.clone(), None
    ref = (_dkd_terms_autograd(student, teacher, labels, t) if loss == "dkd"
           else _dist_terms_autograd(student, teacher, t))
    (weights[0] * ref[0] + weights[1] * ref[1]).backward()
    for a, b in zip(fast, ref):
        assert a.dtype == torch.float32 and a.shape == ()
        assert a.item() == pytest.approx(b.item(), rel=2e-5, abs=1e-5 * t * t)
    assert fast_grad.abs().sum() > 0
    torch.testing.assert_close(fast_grad, student.grad, rtol=1e-4, atol=1e-6 * max(student.grad.abs().max().item(), 1))


@pytest.mark.parametrize("loss", ["dkd", "dist"])
def test_one_pass_terms_under_autocast_and_with_a_learning_teacher(loss):
    terms = (lambda s, te: dkd_terms(s, te, torch.tensor([0, 3, 9, 5]), 4.0)) if loss == "dkd" else (
        lambda s, te: dist_terms(s, te, 4.0))
    # a bf16 student's gradient comes back in bf16 (what autograd hands the layer below)
    student = torch.randn(4, 10).bfloat16().requires_grad_(True)
    sum(terms(student, torch.randn(4, 10).bfloat16())).backward()
    assert student.grad.dtype == torch.bfloat16 and torch.isfinite(student.grad.float()).all()
    # a teacher whose logits need a gradient gets one (autograd through the formula), equal for the student's
    student = torch.randn(4, 10, requires_grad=True)
    teacher = torch.randn(4, 10, requires_grad=True)
    sum(terms(student, teacher)).backward()
    assert teacher.grad is not None and teacher.grad.abs().sum() > 0
    learned, student.grad = student.grad.clone(), None
    sum(terms(student, teacher.detach())).backward()
    torch.testing.assert_close(student.grad, learned, rtol=1e-4, atol=1e-7)
    # the one-pass backward is not differentiable again: an error, not a silently wrong second derivative
    student.grad = None
    (grad,) = torch.autograd.grad(sum(terms(student, teacher.detach())), student, create_graph=True)
    with pytest.raises(RuntimeError, match="does not require grad"):
        grad.sum().backward()


@pytest.mark.parametrize("scale", [1.0, 100.0])
def test_one_pass_standardization_equals_the_formula_and_its_autograd_gradient(scale):
    """distillation_loss standardizes both models in one pass with its own backward; values and the student's
    gradient are autograd's through standardize_logits, also for a constant row (zeros, gradient finite)."""
    from respkd.losses import _standardized_pair

    g = torch.Generator().manual_seed(int(scale))
    student = (torch.randn(32, 10, generator=g) * scale)
    student[3] = 2.5  # a constant row
    student.requires_grad_(True)
    teacher = torch.randn(32, 10, generator=g) * scale
    upstream = torch.randn(32, 10, generator=g)
    s, t_ = _standardized_pair(student, teacher)
    assert not t_.requires_grad and s.requires_grad
    (s * upstream).sum().backward()
    fast_grad, student.grad = student.grad.clone(), None
    (standardize_logits(student) * upstream).sum().backward()
    torch.testing.assert_close(s, standardize_logits(student.detach()), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(t_, standardize_logits(teacher), rtol=1e-6, atol=1e-6)
    assert torch.isfinite(fast_grad).all()
    torch.testing.assert_close(fast_grad, student.grad, rtol=1e-4, atol=1e-6)
    # a bf16 student's gradient comes back in bf16; a learning teacher gets its gradient through autograd
    bf = student.detach().bfloat16().requires_grad_(True)
    _standardized_pair(bf, teacher.bfloat16())[0].sum().backward()
    assert bf.grad.dtype == torch.bfloat16
    learning = teacher.clone().requires_grad_(True)
    (_standardized_pair(student, learning)[1] * upstream).sum().backward()
    assert learning.grad is not None and learning.grad.abs().sum() > 0
