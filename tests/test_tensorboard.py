"""TensorBoard scalars beside metrics.jsonl: the tags, the events a run writes, the one line without the package."""

from __future__ import annotations

import importlib.util
import json

import pytest

from respkd.cli import main
from respkd.tensorboard import EpochScalars, scalar_tags

from conftest import snapshot, tiny_config, write_yaml


def read_scalars(folder) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in the event files under ``folder``: tag -> [(step, value)], read back with tensorboard itself."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_scalar_tags_group_train_and_test():
    record = {"epoch": 3, "loss": 0.5, "soft_loss": 0.25, "lr": 0.01, "test_top1": 97.5, "test_errors": 25,
              "note": "text", "flag": True, "bad": float("nan")}
    assert scalar_tags(record) == {"train/loss": 0.5, "train/soft_loss": 0.25, "train/lr": 0.01,
                                   "test/top1": 97.5, "test/errors": 25.0}


def test_disabled_writes_nothing(tmp_path):
    with EpochScalars(tmp_path, enabled=False) as scalars:
        scalars.write({"epoch": 1, "loss": 1.0})
    assert list(tmp_path.iterdir()) == []


def test_a_run_with_tensorboard_writes_each_epochs_metrics_line_as_scalars(tmp_path, idx_dir):
    pytest.importorskip("tensorboard")
    cfg = write_yaml(tmp_path / "tb.yaml", tiny_config("tb", idx_dir, tmp_path / "data", train={"tensorboard": True}))
    assert main(["train", str(cfg), "--runs-root", str(tmp_path / "runs")]) == 0
    run = tmp_path / "runs" / "tb"
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    scalars = read_scalars(run / "tensorboard")
    assert [step for step, _ in scalars["test/errors"]] == [1, 2]
    assert [v for _, v in scalars["test/errors"]] == [r["test_errors"] for r in lines]
    assert [v for _, v in scalars["train/loss"]] == pytest.approx([r["loss"] for r in lines], rel=1e-6)  # float32
    assert set(scalars) == set(scalar_tags(lines[0]))


def test_tensorboard_missing_is_one_line_before_anything_is_written(tmp_path, idx_dir, capsys, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    cfg = write_yaml(tmp_path / "tb.yaml", tiny_config("tb", idx_dir, tmp_path / "data", train={"tensorboard": True}))
    before = snapshot(tmp_path)
    assert main(["train", str(cfg), "--runs-root", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("respkd: error: train.tensorboard: true needs the tensorboard package") and "\n" not in err
    assert not (tmp_path / "runs").exists()
    assert snapshot(tmp_path) == before  # not even the data cache
