"""A loss that becomes NaN or infinite (train.on_nonfinite): a run that really diverges stops at the step named, keeps
the last good training state and writes no model; skip_step drops just the bad steps (a NaN injected into the loss)
and stops after train.max_skipped_steps; a run stopped by a NaN continues from its last good state with skip_step
exactly as a skip_step run that never stopped. Every case through the CLI.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import respkd.distill
import respkd.guard
from respkd.cli import main
from respkd.data.memory import BatchLoader
from respkd.resume import STATE_NAME

from conftest import one_line_error, tiny_config, write_yaml

DIVERGED = re.compile(r"respkd: error: loss became nan at epoch (\d+), batch (\d+) \(step (\d+)\): loss=nan "
                      r"hard_loss=nan; the last good training state, at epoch (\d+), batch (\d+) \(step (\d+)\), is in "
                      r"(\S+)$")



def state_position(path: Path) -> dict:
    with safe_open(str(path), "pt") as f:
        return json.loads(f.metadata()["respkd"])["position"]


@pytest.fixture
def diverging(tmp_path, idx_dir) -> dict:
    """SGD at lr 100 without a schedule: the loss is 1e17 after one epoch and NaN a few steps into the second.
    6 steps per epoch, the state saved every 2."""
    cfg = tiny_config("diverges", idx_dir, tmp_path / "data", threads=1,
                      train={"epochs": 3, "batch_size": 100, "lr": 100, "schedule": "constant",
                             "checkpoint_every_steps": 2})
    config = write_yaml(tmp_path / "diverges.yaml", cfg)
    return {"config": config, "args": ["train", str(config), "--runs-root", str(tmp_path / "runs")],
            "run_dir": tmp_path / "runs" / "diverges"}


def test_a_diverging_run_stops_at_the_step_and_keeps_the_last_good_state(diverging, capsys):
    assert main(diverging["args"]) == 3
    found = DIVERGED.match(one_line_error(capsys))
    assert found, found
    epoch, batch, step, good_epoch, good_batch, good_step = map(int, found.groups()[:6])
    state = diverging["run_dir"] / STATE_NAME
    assert found.group(7) == str(state)
    assert step == (epoch - 1) * 6 + batch
    # the state on disk is the last one saved before the bad step, and its weights are finite
    assert good_step == (good_epoch - 1) * 6 + good_batch and step - 2 <= good_step < step
    assert state_position(state)["step"] == good_step
    assert all(torch.isfinite(t).all() for k, t in load_file(state).items() if k.startswith("model."))
    # no final model, no summary, no lock; the metrics hold the epochs finished before it
    assert sorted(p.name for p in diverging["run_dir"].iterdir()) == ["config.yaml", "environment.json", "log.txt",
                                                                     "metrics.jsonl", STATE_NAME]
    assert len((diverging["run_dir"] / "metrics.jsonl").read_text().splitlines()) == epoch - 1
    assert f"stopped: loss became nan at epoch {epoch}, batch {batch}" in (diverging["run_dir"] / "log.txt").read_text()

    # The step named is the first bad one: continuing from the last good state with skip_step, the first step it
    # skips is that step.
    capsys.readouterr()
    main(diverging["args"] + ["--resume", "--set", "train.on_nonfinite=skip_step"])
    out = capsys.readouterr().out
    skipped = re.findall(r"skipped a step, 1 of at most 10: loss not finite at (epoch \d+, batch \d+ \(step \d+\))",
                         out)
    assert skipped == [f"epoch {epoch}, batch {batch} (step {step})"], out


@pytest.fixture
def nan_at(monkeypatch):
    """``nan_at(steps)``: from now on the training loss is NaN at those steps (counted over the run as the loader
    yields its batches, so also after a resume)."""
    forward = respkd.distill.Supervised.forward
    iterate = BatchLoader.__iter__
    now = {"step": 0}

    def counting(self):
        for i, batch in enumerate(iterate(self)):
            if self.shuffle:  # the training loader
                now["step"] = (self.epoch - 1) * len(self) + self.skip + i + 1
            yield batch

    def install(steps: set[int], seen: list[float]):
        def poisoned(self, inputs, labels):
            out = forward(self, inputs, labels)
            seen.append(float(out["loss"].detach()))
            if now["step"] in steps:
                out = {**out, "loss": out["loss"] * math.nan, "hard_loss": out["hard_loss"] * math.nan}
            return out

        monkeypatch.setattr(BatchLoader, "__iter__", counting)
        monkeypatch.setattr(respkd.distill.Supervised, "forward", poisoned)

    return install


def skipping_config(tmp_path: Path, idx_dir: Path, **train) -> Path:
    return write_yaml(tmp_path / "skips.yaml", tiny_config(
        "skips", idx_dir, tmp_path / "data", threads=1,
        train={"epochs": 3, "batch_size": 100, "on_nonfinite": "skip_step", "checkpoint_every_steps": 4, **train}))


def test_checks_every_few_steps_name_the_same_step(tmp_path, idx_dir, nan_at, capsys, monkeypatch):
    """On a GPU or under torchrun the loss is read every CHECK_EVERY (8) steps and at epoch ends, from the running
    sums kept since the last check. Forced here on the CPU with a NaN at step 9, found at the check of step 12: the
    step named is still 9, as the check after every step names it."""
    nan_at({9}, [])
    args = ["train", str(skipping_config(tmp_path, idx_dir, on_nonfinite="stop", checkpoint_every_steps=0)),
            "--runs-root", str(tmp_path / "runs")]
    assert main(args) == 3
    every_step = one_line_error(capsys)
    assert "loss became nan at epoch 2, batch 3 (step 9): loss=nan hard_loss=nan;" in every_step
    monkeypatch.setattr(respkd.guard, "check_interval", lambda device, world: respkd.guard.CHECK_EVERY)
    assert main(args + ["--force"]) == 3
    assert one_line_error(capsys) == every_step


def test_skip_step_drops_the_bad_steps_only(tmp_path, idx_dir, nan_at, capsys):
    reference = tmp_path / "reference"
    config = skipping_config(tmp_path, idx_dir)
    assert main(["train", str(config), "--runs-root", str(reference)]) == 0
    losses: list[float] = []
    nan_at({5, 9}, losses)
    assert main(["train", str(config), "--runs-root", str(tmp_path / "runs")]) == 0
    run_dir = tmp_path / "runs" / "skips"
    out = capsys.readouterr().out
    assert re.findall(r"skipped a step, (\d) of at most 10: loss not finite at (epoch \d, batch \d \(step \d+\))",
                      out) == [("1", "epoch 1, batch 5 (step 5)"), ("2", "epoch 2, batch 3 (step 9)")]
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["skipped_steps"] for m in lines] == [1, 1, 0]
    # the epoch's mean loss is the mean over the steps applied (a hand computation from the losses seen)
    applied = [loss for step, loss in enumerate(losses[:6], 1) if step != 5]
    assert lines[0]["loss"] == pytest.approx(sum(applied) / 5, rel=1e-6)
    # the schedule advanced through the skipped steps: every epoch ends at the learning rate of a run without skips
    expected = [json.loads(x) for x in (reference / "skips" / "metrics.jsonl").read_text().splitlines()]
    assert [m["lr"] for m in lines] == [m["lr"] for m in expected]
    assert lines[0]["loss"] != expected[0]["loss"]
    weights = load_file(run_dir / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values())  # no NaN update was applied
    assert json.loads((run_dir / "summary.json").read_text())["skipped_steps"] == 2


def test_skip_step_stops_after_max_skipped_steps(tmp_path, idx_dir, nan_at, capsys):
    config = skipping_config(tmp_path, idx_dir, max_skipped_steps=2)
    nan_at(set(range(3, 19)), [])
    assert main(["train", str(config), "--runs-root", str(tmp_path / "runs")]) == 3
    state = tmp_path / "runs" / "skips" / STATE_NAME
    assert one_line_error(capsys) == (
        "respkd: error: loss was not finite at 3 steps, more than train.max_skipped_steps = 2; the last at epoch 1, "
        "batch 5 (step 5): loss=nan hard_loss=nan; the last good training state, at epoch 1, batch 4 (step 4), is "
        f"in {state}")
    assert not (tmp_path / "runs" / "skips" / "model.safetensors").exists()


def test_a_run_stopped_by_nan_continues_with_skip_step_exactly(tmp_path, idx_dir, nan_at, capsys):
    """Stopped at a NaN in step 10 (the last good state: step 8), resumed with skip_step: the same weights, metrics
    and skip count as a run with skip_step from the start."""
    nan_at({10}, [])
    skipping = skipping_config(tmp_path, idx_dir)
    assert main(["train", str(skipping), "--runs-root", str(tmp_path / "reference")]) == 0
    stopping = ["train", str(skipping), "--runs-root", str(tmp_path / "runs")]
    assert main(stopping + ["--set", "train.on_nonfinite=stop"]) == 3
    assert "at epoch 2, batch 4 (step 10)" in one_line_error(capsys)
    assert main(stopping + ["--resume"]) == 0
    a = load_file(tmp_path / "reference" / "skips" / "model.safetensors")
    b = load_file(tmp_path / "runs" / "skips" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    metrics = [[{k: v for k, v in json.loads(x).items() if k != "epoch_time_s"}
                for x in (root / "skips" / "metrics.jsonl").read_text().splitlines()]
               for root in (tmp_path / "reference", tmp_path / "runs")]
    assert metrics[0] == metrics[1] and [m["skipped_steps"] for m in metrics[1]] == [0, 1, 0]
    summary = json.loads((tmp_path / "runs" / "skips" / "summary.json").read_text())
    assert summary["skipped_steps"] == 1 and summary["resumes"] == [{"epoch": 2, "batch": 2, "step": 8}]
