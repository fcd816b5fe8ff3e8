"""Distiller: the teacher stays frozen and in eval mode through training; responses from named submodules; the
response losses (DKD with its warm-up over epochs, DIST, logit matching, standardization) online, cached and with an
ensemble teacher."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from respkd.config import TrainConfig
from respkd.data.memory import BatchLoader
from respkd.distill import Distiller, ResponseRecorder, Supervised
from respkd.engine import build_optimizer, build_scheduler, train_one_epoch
from respkd.errors import RespkdError
from respkd.ensemble import Ensemble
from respkd.losses import dist_loss, dkd_loss, hard_label_loss, logit_mse_loss, soft_target_loss, standardize_logits
from respkd.models import build_model

IN_SHAPE = (1, 8, 8)


def make_teacher(num_classes: int = 10) -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(64, 24),
        nn.BatchNorm1d(24),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(24, num_classes),
    )


def tiny_loader(n: int = 64, batch_size: int = 16, seed: int = 0) -> BatchLoader:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, *IN_SHAPE), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (n,), generator=g)
    return BatchLoader(images, labels, batch_size, (0.5,), (0.25,), shuffle=True, jitter=1, drop_last=True, seed=3)


def state_copy(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_teacher_frozen_and_in_eval_mode_through_training():
    teacher = make_teacher()
    teacher.train()  # handed over in train mode: the distiller must switch it
    torch.manual_seed(2)
    student = build_model("mlp", 10, IN_SHAPE, hidden=[16], dropout_hidden=0.2)
    distiller = Distiller(student, teacher, temperature=4.0, soft_weight=1.0, hard_weight=0.5)
    teacher_before = state_copy(teacher)
    student_before = state_copy(student)
    bn = teacher[2]
    mean_before, var_before = bn.running_mean.clone(), bn.running_var.clone()
    batches_before = int(bn.num_batches_tracked)

    distiller.train()
    assert distiller.training and student.training
    assert not teacher.training
    assert not any(m.training for m in teacher.modules())

    cfg = TrainConfig(epochs=2, lr=0.05, schedule="constant", batch_size=16)
    optimizer = build_optimizer(distiller.student, cfg)
    loader = tiny_loader()
    scheduler = build_scheduler(optimizer, cfg, len(loader))
    teacher_ids = {id(p) for p in teacher.parameters()}
    assert not any(id(p) in teacher_ids for g in optimizer.param_groups for p in g["params"])
    for epoch in (1, 2):
        loader.set_epoch(epoch)
        stats = train_one_epoch(distiller, loader, optimizer, scheduler=scheduler, epoch=epoch, progress=False)
        assert stats["loss"] > 0 and "soft_loss" in stats and "hard_loss" in stats
        # train_one_epoch calls task.train() itself: the teacher must still be in eval mode
        assert not teacher.training
        assert not any(m.training for m in teacher.modules())

    for name, value in teacher.state_dict().items():
        assert torch.equal(value, teacher_before[name]), f"teacher {name} changed"
    assert torch.equal(bn.running_mean, mean_before) and torch.equal(bn.running_var, var_before)
    assert int(bn.num_batches_tracked) == batches_before
    for p in teacher.parameters():
        assert p.grad is None
        assert not p.requires_grad
    changed = [k for k, v in student.state_dict().items() if not torch.equal(v, student_before[k])]
    assert len(changed) == len(student_before), f"student params not all updated: {set(student_before) - set(changed)}"
    for p in student.parameters():
        assert p.grad is not None


def test_teacher_outputs_deterministic_in_train_mode():
    """Dropout off and BN using running stats: the teacher gives the same logits twice, even in a train-mode distiller."""
    distiller = Distiller(build_model("mlp", 10, IN_SHAPE, hidden=[8]), make_teacher(), temperature=2.0).train()
    x = torch.randn(16, *IN_SHAPE)
    a, b = distiller.teacher_logits(x), distiller.teacher_logits(x)
    assert torch.equal(a, b)
    assert not a.requires_grad and not a.is_inference()  # a clone usable in the autograd graph
    ref = make_teacher().eval()(x)
    torch.testing.assert_close(a, ref.detach())


def test_distiller_eval_and_back_to_train():
    teacher = make_teacher()
    d = Distiller(build_model("mlp", 10, IN_SHAPE, hidden=[8]), teacher, temperature=2.0)
    d.eval()
    assert not d.student.training and not teacher.training
    d.train()
    assert d.student.training and not teacher.training
    assert d.train(True) is d


def test_distiller_forward_loss_matches_losses_module():
    teacher = make_teacher()
    torch.manual_seed(3)
    student = build_model("mlp", 10, IN_SHAPE, hidden=[8])
    d = Distiller(student, teacher, temperature=3.0, soft_weight=0.6, hard_weight=0.4).eval()
    x, y = torch.randn(5, *IN_SHAPE), torch.tensor([0, 1, 2, 3, 4])
    out = d(x, y)
    s, t_ = student(x), teacher(x)
    expected = 0.6 * soft_target_loss(s, t_, 3.0) + 0.4 * hard_label_loss(s, y)
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    torch.testing.assert_close(out["logits"], s)
    # teacher logits given from a cache: the same loss
    out_cached = d(x, y, teacher_logits=t_.detach())
    assert out_cached["loss"].item() == pytest.approx(out["loss"].item(), rel=1e-6)


@pytest.mark.parametrize("t", [0.0, -2.0])
def test_distiller_rejects_non_positive_temperature(t):
    with pytest.raises(RespkdError, match="temperature"):
        Distiller(build_model("mlp", 10, IN_SHAPE, hidden=[8]), make_teacher(), temperature=t)


def test_supervised_task():
    torch.manual_seed(0)
    student = build_model("mlp", 10, IN_SHAPE, hidden=[8])
    x, y = torch.randn(4, *IN_SHAPE), torch.tensor([1, 2, 3, 4])
    out = Supervised(student)(x, y)
    assert out["loss"].item() == pytest.approx(nn.functional.cross_entropy(student(x), y).item(), rel=1e-6)
    assert set(out) == {"loss", "hard_loss", "logits"}


class TwoHeads(nn.Module):
    """``body`` -> ``head`` (6-d response) -> ``out`` (10-d logits)."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 12), nn.Tanh())
        self.head = nn.Linear(12, 6)
        self.out = nn.Linear(6, 10)

    def forward(self, x):
        return self.out(self.head(self.body(x)))


def test_response_recorder_records_named_submodule():
    model = TwoHeads(0)
    rec = ResponseRecorder(model, "head")
    x = torch.randn(3, *IN_SHAPE)
    logits = model(x)
    expected = model.head(model.body(x))
    torch.testing.assert_close(rec.response(logits), expected)
    assert rec.response(logits).shape == (3, 6)
    # None: the model's own output, flattened to (N, -1)
    own = ResponseRecorder(model, None)
    assert torch.equal(own.response(logits), logits)
    assert own.response(torch.zeros(2, 3, 4)).shape == (2, 12)


def test_response_recorder_nested_name_and_flatten():
    model = TwoHeads(0)
    rec = ResponseRecorder(model, "body.1")
    x = torch.randn(2, *IN_SHAPE)
    model(x)
    torch.testing.assert_close(rec.response(None), model.body[1](x.flatten(1)))


def test_distiller_uses_named_responses():
    student, teacher = TwoHeads(1), TwoHeads(2)
    d = Distiller(student, teacher, temperature=2.0, student_response="head", teacher_response="head")
    x = torch.randn(4, *IN_SHAPE)
    out = d(x)
    with torch.no_grad():
        s_head = student.head(student.body(x))
        t_head = teacher.head(teacher.body(x))
    assert out["loss"].item() == pytest.approx(soft_target_loss(s_head, t_head, 2.0).item(), rel=1e-5)
    # different from distilling the final outputs
    assert out["loss"].item() != pytest.approx(soft_target_loss(student(x), teacher(x), 2.0).item(), rel=1e-3)
    assert out["logits"].shape == (4, 10)
    out["loss"].backward()
    assert student.head.weight.grad is not None and student.out.weight.grad is None  # loss depends on 'head' only
    assert all(p.grad is None for p in teacher.parameters())


@pytest.mark.parametrize("which", ["student_response", "teacher_response"])
def test_unknown_submodule_name_is_an_error(which):
    with pytest.raises(RespkdError, match="no submodule 'hed'") as info:
        Distiller(TwoHeads(1), TwoHeads(2), temperature=2.0, **{which: "hed"})
    assert "\n" not in str(info.value)


def test_unknown_submodule_name_lists_near_names():
    with pytest.raises(RespkdError, match="near: .*body") as info:
        ResponseRecorder(TwoHeads(0), "body.9")
    assert "body.9" in str(info.value)


# ---------------------------------------------------------------- response losses


LOSSES = {
    "kd": ({}, lambda s, t, y: soft_target_loss(s, t, 3.0)),
    "logit_mse": ({}, lambda s, t, y: logit_mse_loss(s, t)),
    "dkd": ({"alpha": 1.0, "beta": 8.0}, lambda s, t, y: dkd_loss(s, t, y, 3.0, 1.0, 8.0)),
    "dist": ({"beta": 1.0, "gamma": 2.0}, lambda s, t, y: dist_loss(s, t, 3.0, 1.0, 2.0)),
}


@pytest.mark.parametrize("standardize", [False, True])
@pytest.mark.parametrize("loss", list(LOSSES))
def test_distiller_loss_is_the_chosen_response_term_online_and_cached(loss, standardize):
    params, response = LOSSES[loss]
    teacher = make_teacher()
    torch.manual_seed(3)
    student = build_model("mlp", 10, IN_SHAPE, hidden=[8])
    d = Distiller(student, teacher, 3.0, soft_weight=0.7, hard_weight=0.4, loss=loss, loss_params=params,
                  standardize=standardize).eval()
    x, y = torch.randn(6, *IN_SHAPE), torch.tensor([0, 1, 2, 3, 4, 9])
    out = d(x, y)
    s, t_ = student(x), teacher(x)
    prepared = (standardize_logits(s), standardize_logits(t_)) if standardize else (s, t_)
    expected = 0.7 * response(*prepared, y) + 0.4 * hard_label_loss(s, y)
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    torch.testing.assert_close(out["logits"], s)
    cached = d(x, y, teacher_logits=t_.detach())  # teacher logits from a cache: the same loss
    assert cached["loss"].item() == pytest.approx(out["loss"].item(), rel=1e-6)


def test_dkd_warm_up_follows_the_epoch():
    teacher = make_teacher()
    torch.manual_seed(3)
    student = build_model("mlp", 10, IN_SHAPE, hidden=[8])
    d = Distiller(student, teacher, 4.0, soft_weight=2.0, hard_weight=1.0, loss="dkd",
                  loss_params={"alpha": 1.0, "beta": 8.0}, warmup_epochs=4).eval()
    x, y = torch.randn(6, *IN_SHAPE), torch.tensor([0, 1, 2, 3, 4, 9])
    with pytest.raises(RuntimeError, match="call set_epoch"):
        d(x, y)
    s, t_ = student(x), teacher(x)
    dkd, hard = dkd_loss(s, t_, y, 4.0, 1.0, 8.0).item(), hard_label_loss(s, y).item()
    for epoch, factor in [(1, 0.25), (2, 0.5), (3, 0.75), (4, 1.0), (9, 1.0)]:  # min(epoch / warmup, 1), as mdistiller
        d.set_epoch(epoch)
        out = d(x, y)
        assert out["loss"].item() == pytest.approx(2.0 * factor * dkd + hard, rel=1e-5), epoch
        assert out["tckd_loss"].item() + 8.0 * out["nckd_loss"].item() == pytest.approx(dkd, rel=1e-5)  # unweighted
    assert "dkd (alpha=1, beta=8), warmed up over 4 epochs" == d.describe_loss()


def test_engine_tells_the_distiller_its_epoch():
    torch.manual_seed(2)
    student = build_model("mlp", 10, IN_SHAPE, hidden=[16])
    d = Distiller(student, make_teacher(), 4.0, hard_weight=1.0, loss="dkd", loss_params={"alpha": 1.0, "beta": 8.0},
                  warmup_epochs=20)
    cfg = TrainConfig(epochs=3, lr=0.05, schedule="constant", batch_size=16)
    optimizer = build_optimizer(student, cfg)
    loader = tiny_loader()
    scheduler = build_scheduler(optimizer, cfg, len(loader))
    loader.set_epoch(3)
    stats = train_one_epoch(d, loader, optimizer, scheduler=scheduler, epoch=3, progress=False)
    assert d.epoch == 3 and {"tckd_loss", "nckd_loss", "hard_loss"} <= set(stats)


def test_distiller_refuses_bad_loss_settings():
    student, teacher = build_model("mlp", 10, IN_SHAPE, hidden=[8]), make_teacher()
    with pytest.raises(RespkdError, match="unknown response loss 'crd'"):
        Distiller(student, teacher, 4.0, loss="crd")
    with pytest.raises(RespkdError, match=r"loss 'dkd' takes the parameters \(alpha, beta\), got \(\)"):
        Distiller(student, teacher, 4.0, loss="dkd")
    with pytest.raises(RespkdError, match="warmup_epochs must be >= 0"):
        Distiller(student, teacher, 4.0, warmup_epochs=-1)
    two = Distiller(build_model("mlp", 2, IN_SHAPE, hidden=[8]), make_teacher(num_classes=2), 4.0, loss="dkd",
                    loss_params={"alpha": 1.0, "beta": 8.0})
    with pytest.raises(RespkdError, match="dkd needs at least 3 classes, the responses have 2") as err:
        two.check_response_shapes(IN_SHAPE, torch.device("cpu"))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("loss", ["dkd", "dist", "logit_mse"])
def test_ensemble_teacher_with_the_other_losses(loss):
    """An ensemble is one teacher: its combined output is what every loss reads (mean_logits: the members' mean)."""
    params, response = LOSSES[loss]
    members = [make_teacher(), make_teacher()]
    with torch.no_grad():
        members[1][-1].weight.mul_(-0.5)  # two different members
    ensemble = Ensemble(members, "mean_logits")
    torch.manual_seed(3)
    student = build_model("mlp", 10, IN_SHAPE, hidden=[8])
    d = Distiller(student, ensemble, 3.0, loss=loss, loss_params=params).eval()
    x, y = torch.randn(6, *IN_SHAPE), torch.tensor([0, 1, 2, 3, 4, 9])
    with torch.no_grad():
        mean_logits = (members[0](x) + members[1](x)) / 2
    assert d(x, y)["loss"].item() == pytest.approx(response(student(x), mean_logits, y).item(), rel=1e-5)
