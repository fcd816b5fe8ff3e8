"""The loop's two functions: on batches as users make them (a plain DataLoader of (x, y), CPU tensors moved to the
device, few arguments; respkd's own (x, y, indices) batches unchanged), and their progress bars: informative on a
terminal, silent anywhere else."""

from __future__ import annotations

import io
import sys

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from tqdm import tqdm

from respkd import Distiller, Supervised, build_model, engine, evaluate, train_one_epoch
from respkd.config import TrainConfig
from respkd.engine import build_optimizer, build_scheduler, unpack_batch

from test_distill import IN_SHAPE, tiny_loader


def dataset(n: int = 96, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, *IN_SHAPE, generator=g), torch.randint(0, 4, (n,), generator=g))


def student(seed: int = 1, **options) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("mlp", 4, IN_SHAPE, hidden=[16], **options)


def test_a_plain_dataloader_trains_as_a_hand_written_loop():
    """Same student, same batches: train_one_epoch's weights are bitwise those of the plain PyTorch loop."""
    data = dataset()
    ours, theirs = student(), student()
    opt_ours = torch.optim.SGD(ours.parameters(), lr=0.1, momentum=0.9)
    opt_theirs = torch.optim.SGD(theirs.parameters(), lr=0.1, momentum=0.9)
    stats = train_one_epoch(Supervised(ours), DataLoader(data, batch_size=32), opt_ours, progress=False)
    losses = []
    for x, y in DataLoader(data, batch_size=32):
        loss = nn.functional.cross_entropy(theirs(x), y)
        opt_theirs.zero_grad()
        loss.backward()
        opt_theirs.step()
        losses.append(loss.item())
    for (name, a), b in zip(ours.state_dict().items(), theirs.state_dict().values()):
        assert torch.equal(a, b), name
    assert stats["loss"] == pytest.approx(sum(losses) / len(losses), rel=1e-6)
    assert stats["lr"] == 0.1 and stats["epoch_time_s"] > 0


def test_batches_with_indices_train_alike():
    data = dataset()
    plain, indexed = student(), student()
    for model, loader in ((plain, DataLoader(data, batch_size=32)),
                          (indexed, [(x, y, torch.arange(i, i + len(y))) for i, (x, y) in
                                     zip(range(0, 96, 32), DataLoader(data, batch_size=32))])):
        train_one_epoch(Supervised(model), loader, torch.optim.SGD(model.parameters(), lr=0.1), progress=False)
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), indexed.state_dict().values()))


def test_the_max_norm_constraint_is_found_from_the_task():
    norms = {}
    for max_norm in (None, 0.5):
        model = student(max_norm=max_norm)
        task = Distiller(model, student(seed=2), temperature=4.0, hard_weight=1.0)
        train_one_epoch(task, DataLoader(dataset(), batch_size=16), torch.optim.SGD(model.parameters(), lr=1.0),
                        progress=False)
        norms[max_norm] = model.constrained[0].weight.norm(dim=1).max()
    assert norms[None] > 0.6 and norms[0.5] <= 0.5 + 1e-6  # unconstrained they grow past it; constrained, renormed


def test_the_scheduler_steps_after_every_batch():
    model = student()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 ** step)
    stats = train_one_epoch(Supervised(model), DataLoader(dataset(), batch_size=32), optimizer, scheduler=scheduler,
                            progress=False)
    assert stats["lr"] == pytest.approx(0.5 ** 3)  # 3 batches


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_the_optimizer_is_fused_and_updates_as_the_unfused_one(optimizer):
    """torch's fused kernel for a plain model; the same update as the unfused optimizer up to float32 rounding."""
    cfg = TrainConfig(epochs=1, batch_size=32, optimizer=optimizer, lr=0.05, momentum=0.9, nesterov=True,
                      weight_decay=1e-3)
    fused_model, plain_model = student(), student()
    fused = build_optimizer(fused_model, cfg)
    assert fused.param_groups[0]["fused"] is True
    plain = (torch.optim.SGD(plain_model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3)
             if optimizer == "sgd" else torch.optim.AdamW(plain_model.parameters(), lr=0.05, weight_decay=1e-3))
    for model, opt in ((fused_model, fused), (plain_model, plain)):
        train_one_epoch(Supervised(model), DataLoader(dataset(), batch_size=32), opt, progress=False)
    for a, b in zip(fused_model.parameters(), plain_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_a_channels_last_model_is_not_fused():
    """The fused CPU kernel reads a channels-last weight beside a contiguous momentum buffer (what a loaded training
    state holds) as flat memory and updates the wrong elements; build_optimizer keeps such models unfused."""
    torch.manual_seed(0)
    w = torch.randn(8, 4, 3, 3).to(memory_format=torch.channels_last)
    g, buf = torch.randn(8, 4, 3, 3).to(memory_format=torch.channels_last), torch.randn(8, 4, 3, 3)
    expected = w - 0.1 * (0.9 * buf + g)
    for fused, right in ((None, True), (True, False)):  # the hazard itself: should torch fix it, this line says so
        p = nn.Parameter(w.clone(memory_format=torch.preserve_format))
        opt = torch.optim.SGD([p], lr=0.1, momentum=0.9, fused=fused)
        opt.state[p]["momentum_buffer"] = buf.clone()
        p.grad = g.clone()
        opt.step()
        assert torch.allclose(p.detach(), expected, atol=1e-6) is right
    cnn = build_model("cnn", 4, (1, 8, 8), channels=[4, 8]).to(memory_format=torch.channels_last)
    assert build_optimizer(cnn, TrainConfig(epochs=1, batch_size=8, lr=0.1)).param_groups[0]["fused"] is None
    assert build_optimizer(build_model("cnn", 4, (1, 8, 8), channels=[4, 8]),
                           TrainConfig(epochs=1, batch_size=8, lr=0.1)).param_groups[0]["fused"] is True


def test_the_epoch_reaches_a_warming_up_distiller():
    model = student()
    task = Distiller(model, student(seed=2), temperature=4.0, loss="dkd", loss_params={"alpha": 1.0, "beta": 8.0},
                     warmup_epochs=4)
    loader = DataLoader(dataset(), batch_size=32)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(RuntimeError, match="set_epoch"):  # no epoch given: the warm-up cannot be guessed
        train_one_epoch(task, loader, optimizer, progress=False)
    train_one_epoch(task, loader, optimizer, epoch=2, progress=False)
    assert task.epoch == 2 and task.response_weight() == pytest.approx(0.5)


def test_cached_teacher_outputs_need_indices():
    model = student()
    with pytest.raises(ValueError, match=r"\(inputs, labels, indices\)"):
        train_one_epoch(Distiller(model, student(seed=2), 4.0), DataLoader(dataset(), batch_size=32),
                        torch.optim.SGD(model.parameters(), lr=0.1), teacher_logits=lambda idx, epoch: None,
                        progress=False)


def test_a_batch_of_another_shape_is_refused():
    with pytest.raises(ValueError, match="got 1 items"):
        unpack_batch([torch.zeros(2)], torch.device("cpu"))
    with pytest.raises(ValueError, match="got dict"):
        unpack_batch({"x": torch.zeros(2)}, torch.device("cpu"))


def test_batches_are_moved_to_the_device():
    x, y, indices = unpack_batch((torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), torch.arange(2)),
                                 torch.device("meta"))
    assert x.device.type == "meta" and y.device.type == "meta"
    assert indices.device.type == "cpu"  # looked up on the host by the teacher cache


def test_evaluate_infers_the_classes_from_the_logits():
    logits = torch.tensor([[3.0, 1, 0], [0.0, 2, 1], [0.0, 0, 5], [4.0, 0, 0]])
    labels = torch.tensor([0, 2, 2, 1])
    result = evaluate(nn.Identity(), DataLoader(TensorDataset(logits, labels), batch_size=3))
    assert result["n"] == 4 and result["errors"] == 2 and result["errors_per_class"] == [0, 1, 1]
    assert result["top1"] == 50.0 and result["top5"] == 100.0


def test_evaluate_of_nothing():
    assert evaluate(nn.Identity(), [])["errors_per_class"] == []
    assert evaluate(nn.Identity(), [], num_classes=3)["errors_per_class"] == [0, 0, 0]


# ---------------------------------------------------------------- progress bars


class Terminal(io.StringIO):
    """A stderr that says it is a terminal, and keeps what was written to it."""

    def isatty(self) -> bool:
        return True


def one_epoch(progress: bool | None = None) -> dict[str, float]:
    torch.manual_seed(0)
    student = build_model("mlp", 10, IN_SHAPE, hidden=[16])
    cfg = TrainConfig(epochs=1, lr=0.05, schedule="constant", batch_size=16)
    optimizer = build_optimizer(student, cfg)
    loader = tiny_loader()
    loader.set_epoch(1)
    return train_one_epoch(Supervised(student), loader, optimizer, scheduler=build_scheduler(optimizer, cfg, len(loader)),
                           epoch=1, progress=progress)


def test_nothing_of_tqdm_is_written_when_stderr_is_not_a_terminal(capsys):
    # capsys's stderr is no terminal, as a log file or a pipe is not: progress=None must write nothing there
    stats = one_epoch()
    torch.manual_seed(0)
    result = evaluate(build_model("mlp", 10, IN_SHAPE, hidden=[16]), tiny_loader(), 10)
    assert stats["loss"] > 0 and result["n"] == 64
    assert capsys.readouterr().err == ""


def test_the_bar_on_a_terminal_ends_with_the_epochs_mean_loss(monkeypatch):
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    stats = one_epoch()
    text = terminal.getvalue()
    final = text.replace("\r", "\n").strip().splitlines()[-1]  # the line left on screen when the epoch ends
    assert final.startswith("epoch 1: 100%") and "4/4" in final
    assert f"loss={stats['loss']:.4g}" in final


def test_the_running_loss_is_read_at_most_every_postfix_seconds(monkeypatch):
    # reading the loss is a device sync: with a long interval only the epoch's end reads it, not every step
    calls = []
    real = tqdm.set_postfix
    monkeypatch.setattr(tqdm, "set_postfix", lambda self, *a, **kw: calls.append(kw) or real(self, *a, **kw))
    monkeypatch.setattr(engine, "POSTFIX_SECONDS", 3600.0)
    monkeypatch.setattr(sys, "stderr", Terminal())
    one_epoch()
    assert len(calls) == 1
    calls.clear()
    monkeypatch.setattr(engine, "POSTFIX_SECONDS", 0.0)  # every step: 4 steps, then the epoch's mean
    one_epoch()
    assert len(calls) == 5


def test_a_long_evaluation_shows_a_bar(monkeypatch):
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    model = build_model("mlp", 10, IN_SHAPE, hidden=[16])
    evaluate(model, tiny_loader(), 10)  # over long before the bar's delay: nothing shown
    assert terminal.getvalue() == ""
    monkeypatch.setattr(engine, "EVAL_BAR_DELAY_SECONDS", 0.0)  # as if it had run longer than the delay
    evaluate(model, tiny_loader(), 10)
    assert "evaluate" in terminal.getvalue()
