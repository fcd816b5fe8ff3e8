"""Runs that differ only by seed: mean and sample standard deviation, from `--seeds` and in `respkd table`."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest

from respkd.cli import main
from respkd.seeds import base_name, mean_std, report_seeds

from conftest import tiny_config, write_yaml

N = 200  # test examples in the fake summaries


def fake_run(root: Path, name: str, seed: int, errors: int, top5: float = 100.0, lr: float = 0.1) -> Path:
    """A finished run's folder with just what the table reads: summary.json."""
    config = {"name": name, "seed": seed, "model": {"name": "mlp", "hidden": [32]}, "train": {"epochs": 2, "lr": lr}}
    summary = {"name": name, "params": 25_450, "macs": 25_408, "config": config,
               "metrics": {"top1": 100.0 * (N - errors) / N, "top5": top5, "errors": errors, "n": N}}
    run_dir = root / name
    run_dir.mkdir(parents=True)
    (run_dir / "summary.json").write_text(json.dumps(summary))
    return run_dir


@pytest.fixture
def three_seeds_and_another(tmp_path) -> list[Path]:
    """Seeds 0, 1, 2 of one experiment (10, 12 and 17 test errors) and a run of another learning rate."""
    return [fake_run(tmp_path, "x-seed0", 0, 10, top5=99.5), fake_run(tmp_path, "other", 0, 30, lr=0.5),
            fake_run(tmp_path, "x-seed1", 1, 12, top5=100.0), fake_run(tmp_path, "x-seed2", 2, 17, top5=99.0)]


def test_mean_std_by_hand():
    # errors 10, 12, 17: mean 13, sample variance (9 + 1 + 16) / 2 = 13
    assert mean_std([10, 12, 17]) == {"mean": 13.0, "std": pytest.approx(math.sqrt(13))}
    assert mean_std([5.0]) == {"mean": 5.0, "std": None}  # one run has no spread
    assert mean_std([3, 3]) == {"mean": 3.0, "std": 0.0}


def test_base_name():
    assert base_name(["x-seed0", "x-seed1"], [0, 1]) == "x"
    assert base_name(["x-seed0", "x-seed7"], [0, 1]) == "x-seed0, x-seed7"  # the suffix must be the run's own seed
    assert base_name(["a", "b"], [0, 1]) == "a, b"


def test_table_groups_seeds(three_seeds_and_another, capsys):
    for run in three_seeds_and_another[0], three_seeds_and_another[3]:  # weights kept for seeds 0 and 2 only
        (run / "model.safetensors").write_bytes(b"")
    assert main(["table", *map(str, three_seeds_and_another)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 + 2  # header, rule, one row per experiment
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    # top-1: 95.0, 94.0, 91.5 -> mean 93.5, sample std sqrt((1.5^2 + 0.5^2 + 2^2) / 2) = sqrt(3.25) = 1.80
    # top-5: 99.5, 100, 99 -> 99.5 +- 0.5; errors 13.0 +- sqrt(13) = 3.6
    assert cells[:6] == ["x (n=3)", "0.03", "0.0000", "93.50 ± 1.80", "99.50 ± 0.50", "13.0 ± 3.6 / 200"]
    assert "seed 0" in cells[7] and "seed 2" in cells[7] and "seed 1" not in cells[7]  # only weights that exist
    assert lines[3].startswith("| other | 0.03 |") and "| 85.00 |" in lines[3]  # alone: a plain row
    assert lines[3].endswith("| - |")  # its weights are not there: no link


def test_table_per_run(three_seeds_and_another, capsys):
    assert main(["table", "--per-run", *map(str, three_seeds_and_another)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split("|")[1].strip() for line in lines[2:]] == ["x-seed0", "other", "x-seed1", "x-seed2"]
    assert "±" not in "".join(lines)


def test_table_json(three_seeds_and_another, capsys):
    assert main(["table", "--json", *map(str, three_seeds_and_another)]) == 0
    groups = json.loads(capsys.readouterr().out)
    assert [(g["name"], g["n"], g["seeds"]) for g in groups] == [("x", 3, [0, 1, 2]), ("other", 1, [0])]
    x = groups[0]
    assert x["errors"]["mean"] == 13.0 and x["errors"]["std"] == pytest.approx(math.sqrt(13))
    assert x["top1"]["mean"] == pytest.approx(93.5) and x["top1"]["std"] == pytest.approx(math.sqrt(3.25))
    assert [r["errors"] for r in x["per_seed"]] == [10, 12, 17]
    assert groups[1]["errors"] == {"mean": 30.0, "std": None} and x["test_n"] == N and x["params"] == 25_450

    assert main(["table", "--json", "--per-run", *map(str, three_seeds_and_another)]) == 0
    assert [g["n"] for g in json.loads(capsys.readouterr().out)] == [1, 1, 1, 1]


def test_same_seed_other_config_is_not_grouped(tmp_path, capsys):
    runs = [fake_run(tmp_path, "a", 0, 10, lr=0.1), fake_run(tmp_path, "b", 1, 12, lr=0.2)]
    assert main(["table", "--json", *map(str, runs)]) == 0
    assert [g["n"] for g in json.loads(capsys.readouterr().out)] == [1, 1]


def test_seed_report_only_from_process_0_under_torchrun(three_seeds_and_another, tmp_path, monkeypatch, capsys):
    """Under torchrun every process trains the seeds and returns their summaries; only process 0 prints and writes."""
    dirs = [d for d in three_seeds_and_another if d.name.startswith("x-seed")]
    summaries = [json.loads((d / "summary.json").read_text()) for d in dirs]
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    report_seeds("x", tmp_path, dirs, summaries)
    assert capsys.readouterr().out == "" and not (tmp_path / "x.seeds.json").exists()
    monkeypatch.setenv("RANK", "0")
    report_seeds("x", tmp_path, dirs, summaries)
    assert "| mean ± std (n=3) |" in capsys.readouterr().out
    assert json.loads((tmp_path / "x.seeds.json").read_text())["n"] == 3


def test_seeds_command_reports_mean_and_std(tmp_path, idx_dir, capsys):
    """`train --seeds 0,1` on the tiny synthetic data: two runs, then their mean and std printed and written."""
    cfg = tiny_config("tiny-seeds", idx_dir, tmp_path / "data", train={"epochs": 1})
    config = write_yaml(tmp_path / "seeds.yaml", cfg)
    runs = tmp_path / "runs"
    assert main(["train", str(config), "--seeds", "0,1", "--runs-root", str(runs)]) == 0
    out = capsys.readouterr().out
    summaries = [json.loads((runs / f"tiny-seeds-seed{k}" / "summary.json").read_text()) for k in (0, 1)]
    report = json.loads((runs / "tiny-seeds.seeds.json").read_text())
    assert report["name"] == "tiny-seeds" and report["n"] == 2 and report["seeds"] == [0, 1]
    for key in ("top1", "top5", "errors"):
        values = [s["metrics"][key] for s in summaries]
        assert [r[key] for r in report["per_seed"]] == values
        assert report[key]["mean"] == pytest.approx(statistics.fmean(values))
        assert report[key]["std"] == pytest.approx(statistics.stdev(values))
    md = (runs / "tiny-seeds.seeds.md").read_text()
    assert "| mean ± std (n=2) |" in md and md in out  # printed as written
    assert f"written to {runs / 'tiny-seeds.seeds.md'}" in out

    # the same command again: both runs skipped, the same report
    assert main(["train", str(config), "--seeds", "0,1", "--runs-root", str(runs)]) == 0
    assert capsys.readouterr().out.count("skipped") == 2
    assert json.loads((runs / "tiny-seeds.seeds.json").read_text()) == report

    # the table folds the two runs into one row with the same numbers
    assert main(["table", "--json", str(runs / "tiny-seeds-seed0"), str(runs / "tiny-seeds-seed1")]) == 0
    (group,) = json.loads(capsys.readouterr().out)
    assert {k: group[k] for k in report} == report

    # one seed alone (an array-job member) prints its numbers but writes no seed report over the others'
    before = (runs / "tiny-seeds.seeds.json").stat().st_mtime_ns
    assert main(["train", str(config), "--seeds", "1", "--runs-root", str(runs)]) == 0
    assert "(n=1)" in capsys.readouterr().out
    assert (runs / "tiny-seeds.seeds.json").stat().st_mtime_ns == before
