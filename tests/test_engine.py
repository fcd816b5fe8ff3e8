"""The training and evaluation loops' progress bars: informative on a terminal, silent anywhere else."""

from __future__ import annotations

import io
import sys

import torch
from tqdm import tqdm

from respkd import engine
from respkd.config import TrainConfig
from respkd.distill import Supervised
from respkd.engine import build_optimizer, build_scheduler, evaluate, train_one_epoch
from respkd.models import build_model

from test_distill import IN_SHAPE, tiny_loader


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
    return train_one_epoch(Supervised(student), student, loader, optimizer, build_scheduler(optimizer, cfg, len(loader)),
                           torch.device("cpu"), False, 1, progress=progress)


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
