"""Response-based distillation losses: Hinton's soft targets and the family that grew from it.

Convention used everywhere in respkd (peers disagree, so it is spelled out):

    loss = hard_weight * CE(student at T=1, labels)  +  soft_weight * response term

where the response term is, by ``kd.loss``:

* ``kd`` (Hinton, Vinyals & Dean 2015): ``T^2 * KL(q_teacher^T || q_student^T)``, :func:`soft_target_loss`;
* ``logit_mse`` (Ba & Caruana 2014; Kim et al. 2021): squared error between the logits, :func:`logit_mse_loss`;
* ``dkd`` (Zhao et al., CVPR 2022): ``alpha * TCKD + beta * NCKD``, :func:`dkd_loss`;
* ``dist`` (Huang et al., NeurIPS 2022): correlation between and within classes, :func:`dist_loss`;

and ``kd.standardize`` (Sun et al., CVPR 2024) passes both models' logits through :func:`standardize_logits` first.

* ``q^T = softmax(logits / T)``: teacher and student are softened with the same temperature T.
* KL rather than soft cross-entropy: the two differ by the teacher's entropy, a constant, so the gradients are
  identical; KL is zero when the student matches the teacher, which makes logged values readable.
* ``T^2``: the gradient of ``KL`` w.r.t. a student logit is ``(1/T) (q_student - q_teacher)``; multiplying by
  ``T^2`` keeps the soft term's gradient magnitude comparable across temperatures (the paper's advice), so
  ``soft_weight`` and ``hard_weight`` need not be retuned when T changes. DKD and DIST multiply by T^2 as their
  authors do; logit matching has no temperature.
* Reduction is ``batchmean``: summed over classes, averaged over examples (the mathematically correct KL). DIST's
  correlations are means over rows and over columns, as its authors'.
* Every term is computed in float32, also under bf16/fp16 autocast: a low-precision softmax at high T loses the
  small probabilities that carry the "dark knowledge".

Mapping to peers: MMRazor ``KLDivergence(tau, loss_weight)`` is ``soft_weight=loss_weight`` with the same T^2;
torchdistill ``KDLoss(alpha)`` is ``hard_weight=alpha, soft_weight=1-alpha`` (torchdistill drops the T^2 when alpha
is None); the Keras example omits T^2, i.e. ``soft_weight = w / T^2``.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

__all__ = [
    "LOSS_PARAMS", "RESPONSE_LOSSES", "soft_targets", "soft_target_loss", "hard_label_loss", "logit_mse_loss", "dkd_terms",
    "dkd_loss", "dist_terms", "dist_loss", "standardize_logits", "check_loss", "response_loss", "distillation_loss",
]

# The response losses and the parameters of each (besides the temperature), by the names of their functions.
LOSS_PARAMS: dict[str, tuple[str, ...]] = {"kd": (), "logit_mse": (), "dkd": ("alpha", "beta"), "dist": ("beta", "gamma")}
RESPONSE_LOSSES = tuple(LOSS_PARAMS)
STANDARDIZE_EPS = 1e-7  # logit standardization's: added to the standard deviation
PEARSON_EPS = 1e-8  # DIST's: added to the product of the norms in its Pearson correlation
DKD_MASK = 1000.0  # DKD's: subtracted from the target logit at T, so the NCKD softmax leaves the target class out


def _float32(tensor: torch.Tensor) -> contextlib.AbstractContextManager:
    """Autocast off on ``tensor``'s device: what every loss here computes inside, on ``.float()`` inputs."""
    return torch.autocast(device_type=tensor.device.type, enabled=False)


def _check_pair(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> None:
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student and teacher outputs differ in shape: {tuple(student_logits.shape)} vs "
            f"{tuple(teacher_logits.shape)} (do they have the same number of classes?)"
        )


def _check_temperature(temperature: float) -> None:
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


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
    _check_temperature(temperature)
    _check_pair(student_logits, teacher_logits)
    with _float32(student_logits):
        log_q_student = F.log_softmax(student_logits.float() / temperature, dim=-1)
        log_q_teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
        kl = F.kl_div(log_q_student, log_q_teacher, reduction="batchmean", log_target=True)
    return kl * temperature**2


def hard_label_loss(student_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Ordinary cross-entropy with the true labels at T = 1, in float32, averaged over the batch."""
    with _float32(student_logits):
        return F.cross_entropy(student_logits.float(), labels)


def logit_mse_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Logit matching: ``mean over examples of sum_k (z_student,k - z_teacher,k)^2``, in float32.

    Ba & Caruana 2014 ("Do deep nets really need to be deep?") train the student by regressing the teacher's logits
    with a squared error; Kim et al. 2021 ("Comparing Kullback-Leibler divergence and mean squared error loss in
    knowledge distillation") compare it with KD. It is the high-temperature limit of the soft-target loss: as
    T -> inf, ``T^2 * KL`` tends to ``(1 / 2C) * sum_k (z_s,k - z_t,k)^2`` for logits centred per example (Hinton et
    al. 2015, section 2.1), so this is KD at T = inf up to the factor 1/(2C) and the centring.

    No temperature and no T^2. Reduction: summed over classes, averaged over examples (Kim et al.'s
    ``nn.MSELoss()`` also averages over the classes: their weight w is ``soft_weight = w / C`` here). The logits are
    compared as they are, not centred: a constant added to one example's logits changes this loss (and no
    probability); ``kd.standardize`` centres and scales both first.
    """
    _check_pair(student_logits, teacher_logits)
    with _float32(student_logits):
        diff = student_logits.float() - teacher_logits.float()
        return diff.pow(2).sum(dim=-1).mean()


def dkd_terms(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """DKD's two parts, TCKD and NCKD, each ``T^2 * KL`` summed over the batch and divided by its size, in float32.

    Decoupled knowledge distillation (Zhao et al., CVPR 2022) splits the KL of KD per example, with ``p`` the
    softmax at T and ``t`` the true class:

    * TCKD: ``KL(b_teacher || b_student)`` with ``b = (p_t, 1 - p_t)``, the binary "target vs all other classes"
      distributions;
    * NCKD: ``KL(p^_teacher || p^_student)`` with ``p^`` the softmax over the non-target classes only;
    * ``KL(p_teacher || p_student) = TCKD + (1 - p_teacher,t) * NCKD`` per example (the paper's identity).

    As the authors' code (mdistiller, ``mdistiller/distillers/DKD.py``): NCKD is the KL between
    ``softmax(z / T - 1000 * onehot(t))`` of both models (the 1000 makes the target class's probability 0 in float32
    without an ``-inf`` that would turn the KL into NaN); both KLs are ``sum`` reductions divided by the batch size,
    times T^2. One departure: the binary distributions are computed in log space, ``log_softmax(z / T)`` at the
    target and a ``logsumexp`` of it over the other classes, instead of the authors' sums of probabilities and their
    ``torch.log``. Those are the same numbers wherever the authors' are finite; theirs become ``-inf`` (and the
    gradient NaN) once a probability rounds to 0, e.g. at ``|z| = 100`` and T = 1.

    Raises:
        ValueError: fewer than 3 classes (with 2, the non-target distribution is a single class: NCKD carries no
            information and ``beta`` has nothing to weight), missing labels, or a bad temperature.
    """
    _check_temperature(temperature)
    _check_pair(student_logits, teacher_logits)
    if labels is None:
        raise ValueError("DKD needs the true labels: it splits each response into the target class and the others")
    num_classes = student_logits.shape[-1]
    if num_classes < 3:
        raise ValueError(f"DKD needs at least 3 classes, got {num_classes}: with 2 the non-target classes are one "
                         "class, so NCKD (the KL between distributions over them) is undefined")
    if teacher_logits.requires_grad:  # a teacher that learns too: autograd through the formula, to both models
        return _dkd_terms_autograd(student_logits, teacher_logits, labels, temperature)
    return _DKDTerms.apply(student_logits, teacher_logits, labels, temperature)


def _dkd_terms_autograd(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`dkd_terms` as its docstring writes it (the authors' formula, binary distributions in log space),
    differentiated by autograd (about 50 small kernels forward and back; :class:`_DKDTerms` is the same numbers in
    fewer)."""
    with _float32(student_logits):
        s = student_logits.float() / temperature
        t = teacher_logits.float() / temperature
        index = labels[:, None]
        target = torch.zeros_like(s, dtype=torch.bool).scatter_(1, index, True)

        def log_binary(log_p: torch.Tensor) -> torch.Tensor:  # log (p_target, sum of the others)
            others = torch.logsumexp(log_p.masked_fill(target, float("-inf")), dim=1, keepdim=True)
            return torch.cat([log_p.gather(1, index), others], dim=1)

        scale = temperature**2 / student_logits.shape[0]
        tckd = F.kl_div(log_binary(torch.log_softmax(s, dim=1)), log_binary(torch.log_softmax(t, dim=1)),
                        reduction="sum", log_target=True) * scale
        mask = target * DKD_MASK
        nckd = F.kl_div(torch.log_softmax(s - mask, dim=1), torch.log_softmax(t - mask, dim=1), reduction="sum",
                        log_target=True) * scale
    return tckd, nckd


class _DKDTerms(torch.autograd.Function):
    """TCKD and NCKD and their gradients w.r.t. the student's logits in one pass over both models' logits.

    The response losses run on tiny ``(N, C)`` tensors, where each kernel's launch costs more than its arithmetic;
    autograd through :func:`_dkd_terms_autograd` launches about 50 of them per step, this about 25 and a multiply
    back. With ``s = z / T``, ``p = softmax(s)``, ``q = softmax(s - 1000 * onehot(y))`` (the non-target classes),
    ``b = (p_y, sum of the others)`` and ``g = T / N``:

    * d TCKD / d z = g * ((b_t,1 + b_t,2) * p_s - b_t,1 * onehot(y) - b_t,2 * q_s)
    * d NCKD / d z = g * (q_s - q_t)

    The values are the formula's (log-space binary probabilities, the authors' 1000 mask), up to float32 rounding.
    No gradient reaches the teacher (:func:`dkd_terms` takes the autograd path when its logits require one), and the
    backward is not differentiable again.
    """

    @staticmethod
    def forward(ctx, student_logits, teacher_logits, labels, temperature):  # noqa: D102 (the class says it)
        n = student_logits.shape[0]
        with _float32(student_logits):
            # both models at once, row i of the student above row i of the teacher: half the kernel launches
            z = torch.cat([student_logits.detach(), teacher_logits.detach()]).float() / temperature
            index = torch.cat([labels, labels])[:, None]
            lse = torch.logsumexp(z, 1, keepdim=True)
            masked = z.scatter_add(1, index, z.new_full(index.shape, -DKD_MASK))
            lse_others = torch.logsumexp(masked, 1, keepdim=True)
            log_q = masked - lse_others  # over the non-target classes (about -1000 at the target)
            log_b = torch.cat([z.gather(1, index) - lse, lse_others - lse], 1)  # log (p_target, p_others)
            b_t, q = log_b[n:].exp(), log_q.exp()
            scale = temperature**2 / n
            tckd = (torch.xlogy(b_t, b_t) - b_t * log_b[:n]).sum() * scale  # KL(b_t || b_s), a 0 in b_t adds 0
            nckd = (q[n:] * (log_q[n:] - log_q[:n])).sum() * scale
            g = temperature / n
            p_s = (z[:n] - lse[:n]).exp()
            grad_tckd = (p_s * b_t.sum(1, keepdim=True) - b_t[:, 1:] * q[:n]).scatter_add_(1, index[:n], -b_t[:, :1])
            ctx.save_for_backward(grad_tckd.mul_(g), (q[:n] - q[n:]).mul_(g))
        ctx.dtype = student_logits.dtype
        return tckd, nckd

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_tckd, grad_nckd):  # noqa: D102
        d_tckd, d_nckd = ctx.saved_tensors
        return (grad_tckd * d_tckd + grad_nckd * d_nckd).to(ctx.dtype), None, None, None


def dkd_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, temperature: float,
    alpha: float, beta: float,
) -> torch.Tensor:
    """Decoupled KD (Zhao et al., CVPR 2022): ``alpha * TCKD + beta * NCKD``, both with T^2 (see :func:`dkd_terms`).

    KD is the special case ``alpha = 1, beta = 1 - p_teacher,t`` per example. The authors' CIFAR-100 settings: alpha 1,
    beta 8, T 4, cross-entropy weight 1, and the DKD term warmed up linearly over 20 epochs (the
    :class:`respkd.distill.Distiller` applies the warm-up; this function is one batch's term).
    """
    tckd, nckd = dkd_terms(student_logits, teacher_logits, labels, temperature)
    return alpha * tckd + beta * nckd


def _softmax(z: torch.Tensor) -> torch.Tensor:
    """``softmax(z)`` over the last dim, written out: on the CPU, ``torch.softmax`` over rows of ~10 classes costs
    about 2.5x these five kernels (its vectorized loop runs along the short class dim); the same numbers up to
    float32 rounding. Used where the gradient is computed by hand (no autograd through it)."""
    e = (z - z.amax(dim=-1, keepdim=True)).exp_()
    return e.div_(e.sum(dim=-1, keepdim=True))


def _pearson(a: torch.Tensor, b: torch.Tensor, dim: int) -> torch.Tensor:
    """Pearson correlation of ``a`` and ``b`` along ``dim`` (1: of each row, 0: of each column), with DIST's eps
    (1e-8) added to the product of the centred vectors' norms, as its authors compute it (they transpose for the
    columns; reducing along dim 0 is the same arithmetic without the copies)."""
    a = a - a.mean(dim=dim, keepdim=True)
    b = b - b.mean(dim=dim, keepdim=True)
    return (a * b).sum(dim=dim) / (a.norm(dim=dim) * b.norm(dim=dim) + PEARSON_EPS)


def dist_terms(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """DIST's two parts, inter-class and intra-class relation, each ``T^2 * (1 - mean Pearson correlation)``.

    DIST (Huang et al., NeurIPS 2022, "Knowledge distillation from a stronger teacher") matches the softened
    predictions ``y = softmax(z / T)`` by correlation instead of exactly:

    * inter-class relation: ``1 - mean over examples of pearson(y_student[i, :], y_teacher[i, :])`` (each row, the
      classes of one example);
    * intra-class relation: ``1 - mean over classes of pearson(y_student[:, k], y_teacher[:, k])`` (each column, one
      class over the batch's examples).

    As the authors' ``DIST`` (hunto/image_classification_sota, ``lib/models/losses/dist_kd.py``, the classification
    code of hunto/DIST_KD): each term times ``tau^2``, Pearson as the cosine of the centred vectors with eps 1e-8.
    Their CIFAR-100 recipe is T 4 (``kd: dist_t4``), beta = gamma = 1, DIST weight 2 and cross-entropy weight 1;
    ImageNet uses T 1.

    The intra-class term depends on the whole batch, not on each example alone: under torchrun each process
    correlates the columns of its own share of the global batch, as the authors' multi-GPU training does, so a run
    with several processes is not the one-process run number for number (every other loss here is). A column with
    no variance (a batch of one example) has correlation 0 (the eps), so it adds ``T^2`` even when the student
    equals the teacher.
    """
    _check_temperature(temperature)
    _check_pair(student_logits, teacher_logits)
    if teacher_logits.requires_grad:  # a teacher that learns too: autograd through the formula, to both models
        return _dist_terms_autograd(student_logits, teacher_logits, temperature)
    return _DISTTerms.apply(student_logits, teacher_logits, temperature)


def _dist_terms_autograd(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`dist_terms` written as the authors write it, differentiated by autograd (:class:`_DISTTerms` is the
    same numbers in fewer kernels)."""
    with _float32(student_logits):
        y_s = torch.softmax(student_logits.float() / temperature, dim=1)
        y_t = torch.softmax(teacher_logits.float() / temperature, dim=1)
        inter = temperature**2 * (1 - _pearson(y_s, y_t, dim=1).mean())
        intra = temperature**2 * (1 - _pearson(y_s, y_t, dim=0).mean())
    return inter, intra


def _pearson_and_gradient(y: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_pearson` of ``y[0]`` (the student) with ``y[1]`` (the teacher) along ``dim`` of each (kept), and its
    gradient w.r.t. ``y[0]``: with ``u``, ``v`` the centred vectors and ``n = |u| |v| + eps``,
    ``d r / d a = (v - r |v| / |u| * u) / n`` (already centred, so the centring's own derivative changes nothing); 0
    for the second part where ``u`` is 0, as autograd's norm gives. Both models are centred and normed in one kernel
    each, ``dim + 1`` of the stacked ``y``."""
    c = y - y.mean(dim=dim + 1, keepdim=True)
    norms = c.square().sum(dim=dim + 1, keepdim=True).sqrt_()
    (u, v), (norm_u, norm_v) = c, norms
    n = (norm_u * norm_v).add_(PEARSON_EPS)
    r = (u * v).sum(dim=dim, keepdim=True).div_(n)
    k = (r * norm_v).div_(norm_u.clamp_min(torch.finfo(u.dtype).tiny))
    return r, v.addcmul(u, k, value=-1.0).div_(n)


class _DISTTerms(torch.autograd.Function):
    """DIST's two terms and their gradients w.r.t. the student's logits in one pass (see :class:`_DKDTerms` for why).

    With ``y = softmax(z / T)`` and ``r`` the Pearson correlations of the rows (N of them) and of the columns (C):
    ``d inter / d y_s = -T^2 / N * d r_rows / d y_s``, ``d intra / d y_s = -T^2 / C * d r_columns / d y_s`` (see
    :func:`_pearson_and_gradient`), then through the softmax: ``d / d z = y_s * (g - sum(y_s * g)) / T`` per row;
    about 35 kernels in all.
    The values are :func:`_dist_terms_autograd`'s; no gradient reaches the teacher, and the backward is not
    differentiable again.
    """

    @staticmethod
    def forward(ctx, student_logits, teacher_logits, temperature):  # noqa: D102 (the class says it)
        n, c = student_logits.shape
        with _float32(student_logits):
            y = _softmax(torch.stack([student_logits.detach(), teacher_logits.detach()]).float() / temperature)
            r_rows, d_rows = _pearson_and_gradient(y, dim=1)
            r_cols, d_cols = _pearson_and_gradient(y, dim=0)
            t2 = temperature**2
            inter, intra = t2 * (1 - r_rows.mean()), t2 * (1 - r_cols.mean())
            # d inter / d y_s and d intra / d y_s, each with the softmax's 1 / T
            d_y = torch.stack([d_rows.mul_(-t2 / (n * temperature)), d_cols.mul_(-t2 / (c * temperature))])
            y_s = y[0]
            d_z = (d_y - (y_s * d_y).sum(2, keepdim=True)).mul_(y_s)
        ctx.save_for_backward(d_z)
        ctx.dtype = student_logits.dtype
        return inter, intra

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_inter, grad_intra):  # noqa: D102
        (d_z,) = ctx.saved_tensors
        return (grad_inter * d_z[0] + grad_intra * d_z[1]).to(ctx.dtype), None, None


def dist_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float, beta: float, gamma: float
) -> torch.Tensor:
    """DIST (Huang et al., NeurIPS 2022): ``beta * inter-class + gamma * intra-class relation`` (see
    :func:`dist_terms`), i.e. ``T^2 * (beta * (1 - mean row Pearson) + gamma * (1 - mean column Pearson))``."""
    inter, intra = dist_terms(student_logits, teacher_logits, temperature)
    return beta * inter + gamma * intra


def standardize_logits(logits: torch.Tensor) -> torch.Tensor:
    """Logit standardization (Sun et al., CVPR 2024): ``(z - mean(z)) / (1e-7 + std(z))`` per example, in float32.

    Mean and standard deviation over the classes, the standard deviation with ``n - 1`` (``torch.std``'s default)
    and the eps added to it, as the authors' ``normalize`` (sunshangquan/logit-standardization-KD,
    ``mdistiller/distillers/KD.py``). Applied to both models' logits before a loss, it lets the student match the
    teacher's logits up to a shift and a scale of its own; the authors' KD recipe with it is T 2, KD weight 9,
    cross-entropy weight 0.1 (the cross-entropy on the raw logits). A row whose logits are all equal maps to zeros.
    """
    if logits.shape[-1] < 2:
        raise ValueError("standardizing logits needs at least 2 classes (the standard deviation of one is undefined)")
    with _float32(logits):
        z = logits.float()
        return (z - z.mean(dim=-1, keepdim=True)) / (STANDARDIZE_EPS + z.std(dim=-1, keepdim=True))


class _StandardizedPair(torch.autograd.Function):
    """:func:`standardize_logits` of the student's and the teacher's logits in one pass, with the student's gradient.

    Both models' rows are standardized together (one set of reductions over the stacked logits); autograd through
    :func:`standardize_logits` spends about 12 small kernels per model, forward and back. With ``y = u / d``,
    ``u = z - mean(z)``, ``s`` the standard deviation (n - 1) and ``d = eps + s``, per row of C classes:
    ``d L / d z = ((g - mean(g)) - (g . y) * y * d / ((C - 1) s)) / d`` (the second part 0 where the row is constant,
    as there y is 0). No gradient reaches the teacher (:func:`distillation_loss` takes the autograd path when its
    logits require one), and the backward is not differentiable again.
    """

    @staticmethod
    def forward(ctx, student_logits, teacher_logits):  # noqa: D102 (the class says it)
        n, c = student_logits.shape
        with _float32(student_logits):
            z = torch.cat([student_logits.detach(), teacher_logits.detach()]).float()
            u = z - z.mean(dim=1, keepdim=True)
            # torch.std_mean's own kernel costs about twice these three on rows of ~10 classes (CPU)
            std = u.square().sum(dim=1, keepdim=True).div_(c - 1).sqrt_()
            d = std.add(STANDARDIZE_EPS)
            y = u.div_(d)
            d_s = d[:n]
            ctx.save_for_backward(y[:n], d_s, d_s / std[:n].clamp_min(torch.finfo(z.dtype).tiny).mul_(c - 1))
        ctx.dtype = student_logits.dtype
        teacher = y[n:]
        ctx.mark_non_differentiable(teacher)
        return y[:n], teacher

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_student, grad_teacher):  # noqa: D102
        y, d, k = ctx.saved_tensors
        g = grad_student.float()
        dot = (g * y).sum(1, keepdim=True).mul_(k)
        return (g - g.mean(1, keepdim=True)).sub_(y * dot).div_(d).to(ctx.dtype), None


def _standardized_pair(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Both models' logits through :func:`standardize_logits` (see :class:`_StandardizedPair` for the one pass)."""
    _check_pair(student_logits, teacher_logits)
    # autograd to both models when the teacher learns too; standardize_logits raises the clear error for 1 class
    if teacher_logits.requires_grad or student_logits.dim() != 2 or student_logits.shape[-1] < 2:
        return standardize_logits(student_logits), standardize_logits(teacher_logits)
    return _StandardizedPair.apply(student_logits, teacher_logits)


def check_loss(loss: str, params: dict[str, float]) -> None:
    """Refuse (ValueError) an unknown loss name, or parameters other than exactly that loss's."""
    if loss not in LOSS_PARAMS:
        raise ValueError(f"unknown response loss '{loss}': use one of {', '.join(RESPONSE_LOSSES)}")
    if set(params) != set(LOSS_PARAMS[loss]):
        raise ValueError(f"loss '{loss}' takes the parameters ({', '.join(LOSS_PARAMS[loss])}), got "
                         f"({', '.join(sorted(params))})")


def response_loss(
    loss: str, student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor | None,
    temperature: float, **params: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The response term of ``loss`` (one of :data:`RESPONSE_LOSSES`) and its named parts, unweighted, for logging.

    ``params`` are the loss's own parameters (:data:`LOSS_PARAMS`): DKD ``alpha``, ``beta``; DIST ``beta``,
    ``gamma``; ``kd`` and ``logit_mse`` take none (``logit_mse`` ignores the temperature).
    """
    check_loss(loss, params)
    if loss == "kd":
        soft = soft_target_loss(student_logits, teacher_logits, temperature)
        return soft, {"soft_loss": soft}
    if loss == "logit_mse":
        mse = logit_mse_loss(student_logits, teacher_logits)
        return mse, {"mse_loss": mse}
    if loss == "dkd":
        tckd, nckd = dkd_terms(student_logits, teacher_logits, labels, temperature)
        return params["alpha"] * tckd + params["beta"] * nckd, {"tckd_loss": tckd, "nckd_loss": nckd}
    inter, intra = dist_terms(student_logits, teacher_logits, temperature)
    return params["beta"] * inter + params["gamma"] * intra, {"inter_loss": inter, "intra_loss": intra}


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None,
    temperature: float,
    soft_weight: float = 1.0,
    hard_weight: float = 0.0,
    loss: str = "kd",
    loss_params: dict[str, float] | None = None,
    standardize: bool = False,
) -> dict[str, torch.Tensor]:
    """The objective: ``soft_weight * response term + hard_weight * hard_label_loss``.

    The response term is ``loss``'s (see :func:`response_loss`; the default is Hinton's soft-target loss), computed
    on both models' logits after :func:`standardize_logits` when ``standardize``; the cross-entropy always reads the
    student's raw logits. Returns a dict with ``loss`` (the weighted sum to back-propagate) and the unweighted,
    detached terms for logging: ``hard_loss`` and the response's parts (``soft_loss`` for KD, ``mse_loss``,
    ``tckd_loss``/``nckd_loss``, ``inter_loss``/``intra_loss``). ``labels`` may be None only when ``hard_weight``
    is 0 and the loss is not DKD.
    """
    if hard_weight and labels is None:
        raise ValueError("hard_weight > 0 needs labels")
    s, t = _standardized_pair(student_logits, teacher_logits) if standardize else (student_logits, teacher_logits)
    response, terms = response_loss(loss, s, t, labels, temperature, **(loss_params or {}))
    # The hard term is computed whenever labels exist: it costs nothing and is worth logging at weight 0.
    hard = hard_label_loss(student_logits, labels) if labels is not None else response.new_zeros(())
    total = soft_weight * response + hard_weight * hard if hard_weight else soft_weight * response
    return {"loss": total, **{k: v.detach() for k, v in terms.items()}, "hard_loss": hard.detach()}
