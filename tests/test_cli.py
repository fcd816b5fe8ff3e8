"""The `respkd` command end to end on tiny synthetic MNIST-format data: train, distill, eval, table, reproduce,
and every kind of bad input ending as one line on stderr, exit status 2, and nothing written."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
import yaml

from respkd.checkpoint import save_checkpoint
from respkd.cli import main
from respkd.config import validate_config
from respkd.models import build_model

from conftest import N_TEST, N_TRAIN, corrupt_mnist_cache, one_line_error, snapshot, tiny_config, write_yaml

RUN_FILES = {"config.yaml", "environment.json", "metrics.jsonl", "log.txt", "model.safetensors", "summary.json"}


# ---------------------------------------------------------------- train, distill, eval, table


@pytest.mark.parametrize("which,kind", [("teacher_dir", "train"), ("student_dir", "distill")])
def test_run_directory(session_runs, which, kind):
    run_dir = session_runs[which]
    assert RUN_FILES <= {p.name for p in run_dir.iterdir()}
    assert not [p.name for p in run_dir.iterdir() if p.name.endswith(".tmp")]

    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2]
    for m in metrics:
        assert {"loss", "lr", "epoch_time_s", "test_top1", "test_top5", "test_errors", "test_loss"} <= set(m)
    if kind == "distill":
        assert {"soft_loss", "hard_loss"} <= set(metrics[0])

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["kind"] == kind and summary["epochs"] == 2
    assert summary["metrics"]["n"] == N_TEST and summary["n_train"] == N_TRAIN
    assert summary["metrics"]["errors"] == metrics[-1]["test_errors"]
    assert summary["params"] == 784 * 32 + 32 + 32 * 10 + 10
    assert summary["macs"] == 784 * 32 + 32 * 10
    assert summary["precision"] == "fp32" and summary["data_canonical"] is False
    if kind == "distill":
        assert Path(summary["teacher"]) == session_runs["teacher_dir"] / "model.safetensors"

    cfg = validate_config(yaml.safe_load((run_dir / "config.yaml").read_text()))
    assert cfg.name == run_dir.name and cfg.distills == (kind == "distill")
    assert cfg.model.options() == {"hidden": [32]}

    log = (run_dir / "log.txt").read_text()
    assert "epoch   1/2" in log and "epoch   2/2" in log and "done: test errors" in log


def test_synthetic_task_is_learnt(session_runs):
    for which in ("teacher_dir", "student_dir"):
        summary = json.loads((session_runs[which] / "summary.json").read_text())
        assert summary["metrics"]["top1"] > 50, (which, summary["metrics"])  # chance is 10%


def test_eval_json(session_runs, capsys):
    ckpt = session_runs["student_dir"] / "model.safetensors"
    assert main(["eval", str(ckpt), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == N_TEST
    assert {"top1", "top5", "errors", "n", "loss", "checkpoint", "dataset"} <= set(result)
    assert result["top1"] == pytest.approx(100.0 * (result["n"] - result["errors"]) / result["n"])
    assert result["top5"] >= result["top1"]
    summary = json.loads((session_runs["student_dir"] / "summary.json").read_text())
    assert result["errors"] == summary["metrics"]["errors"]  # the same model on the same test set


def test_eval_text_and_data_path(session_runs, idx_dir, capsys):
    ckpt = session_runs["teacher_dir"] / "model.safetensors"
    assert main(["eval", str(ckpt), "--data-path", str(idx_dir)]) == 0
    out = capsys.readouterr().out
    assert f"/{N_TEST}" in out and "top-1" in out and "top-5" in out


def test_table(session_runs, capsys):
    dirs = [str(session_runs["teacher_dir"]), str(session_runs["student_dir"])]
    assert main(["table", *dirs, "--link-root", str(session_runs["runs_root"])]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("| Model | Params(M) |") and "Test errors" in lines[0]
    assert len(lines) == 4
    assert lines[2].startswith("| tiny-teacher | 0.03 |") and lines[3].startswith("| tiny-student-kd |")
    assert f" / {N_TEST} |" in lines[2]
    assert "[model](tiny-teacher/model.safetensors)" in lines[2]


def test_table_of_unfinished_run(tmp_path, capsys):
    (tmp_path / "r").mkdir()
    assert main(["table", str(tmp_path / "r")]) == 2
    assert "no summary.json" in one_line_error(capsys)


def test_force_reruns_with_overrides(finished_run_copy, session_runs, capsys):
    before = (finished_run_copy / "summary.json").stat().st_mtime_ns
    code = main(["train", str(session_runs["teacher_cfg"]), "--runs-root", str(finished_run_copy.parent), "--force",
                 "--set", "train.epochs=1", "--set", "data.train_limit=300", "--set", "data.test_limit=50",
                 "--set", "train.schedule=constant", "--set", "model.hidden=[8]"])
    assert code == 0
    summary = json.loads((finished_run_copy / "summary.json").read_text())
    assert (finished_run_copy / "summary.json").stat().st_mtime_ns != before
    assert summary["epochs"] == 1 and summary["n_train"] == 300 and summary["metrics"]["n"] == 50
    assert len((finished_run_copy / "metrics.jsonl").read_text().splitlines()) == 1
    cfg = yaml.safe_load((finished_run_copy / "config.yaml").read_text())
    assert cfg["train"]["epochs"] == 1 and cfg["model"]["hidden"] == [8]
    # eval applies the embedded test_limit
    capsys.readouterr()
    assert main(["eval", str(finished_run_copy / "model.safetensors"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 50


def test_finished_run_is_not_overwritten_without_force(finished_run_copy, session_runs, capsys):
    before = snapshot(finished_run_copy.parent)
    assert main(["train", str(session_runs["teacher_cfg"]), "--runs-root", str(finished_run_copy.parent)]) == 2
    assert "already finished" in one_line_error(capsys)
    assert snapshot(finished_run_copy.parent) == before


# ---------------------------------------------------------------- bad input: one line, exit 2, nothing written


def bad_teacher_checkpoint(tmp_path: Path, num_classes: int) -> Path:
    path = tmp_path / "teacher5.safetensors"
    model = build_model("mlp", num_classes, (1, 28, 28), hidden=[8])
    meta = {"model": {"name": "mlp", "hidden": [8]}, "num_classes": num_classes, "in_shape": [1, 28, 28]}
    save_checkpoint(model.state_dict(), path, meta)
    return path


def teacher_like(session_runs, **changes) -> dict:
    """The finished teacher's config (same run name, so --force would overwrite it) with ``changes`` applied."""
    cfg = yaml.safe_load(Path(session_runs["teacher_cfg"]).read_text())
    for dotted, value in changes.items():
        *parents, leaf = dotted.split(".")
        node = cfg
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return cfg


def distill_like(session_runs, **changes) -> dict:
    cfg = teacher_like(session_runs, **changes)
    cfg.setdefault("teacher", {"run": "tiny-teacher"})
    cfg.setdefault("kd", {}).setdefault("temperature", 4.0)
    return cfg


BAD_INPUTS = {
    # id: (command, make_config(tmp_path, session_runs) -> dict, expected fragments of the message)
    "misspelt-key": ("train", lambda t, s: teacher_like(s, **{"train.lrr": 0.1}),
                     ["unknown key 'train.lrr'", "did you mean 'lr'"]),
    "misspelt-key-lr_rate": ("train", lambda t, s: teacher_like(s, **{"train.lr_rate": 0.1}),
                             ["unknown key 'train.lr_rate'", "did you mean 'lr'"]),
    "wrong-type": ("train", lambda t, s: teacher_like(s, **{"train.epochs": "ten"}), ["'train.epochs'", "'ten'"]),
    "temperature-zero": ("distill", lambda t, s: distill_like(s, **{"kd.temperature": 0}),
                         ["'kd.temperature'", "greater than or equal to 0.01"]),
    "teacher-without-kd": ("distill", lambda t, s: teacher_like(s, **{"teacher.run": "tiny-teacher"}),
                           ["'teacher' and 'kd' go together"]),
    "class-count-mismatch": ("distill", lambda t, s: distill_like(
        s, teacher={"checkpoint": str(bad_teacher_checkpoint(t, 5))}), ["teacher has 5 classes", "has 10"]),
    "missing-teacher-run": ("distill", lambda t, s: distill_like(s, teacher={"run": "no-such-run"}),
                            ["no-such-run", "does not exist"]),
    "empty-data-folder": ("train", lambda t, s: teacher_like(s, **{"data.path": str((t / "empty").resolve())}),
                          ["holds no mnist dataset"]),
    "missing-data-folder": ("train", lambda t, s: teacher_like(s, **{"data.path": str(t / "nowhere")}),
                            ["does not exist"]),
    "corrupt-cache": ("train", lambda t, s: teacher_like(s, **{
        "data.path": None, "data.root": str(corrupt_mnist_cache(t / "cache_root"))}), ["checksum mismatch"]),
    "misspelt-model-option": ("train", lambda t, s: teacher_like(s, model={"name": "mlp", "hiden": [8]}),
                              ["hiden", "did you mean 'hidden'"]),
    "unknown-model": ("train", lambda t, s: teacher_like(s, model={"name": "resnet9000"}), ["unknown model"]),
    "unknown-response-submodule": ("distill", lambda t, s: distill_like(s, **{"kd.student_response": "nope"}),
                                   ["no submodule 'nope'"]),
    "distill-without-teacher": ("distill", lambda t, s: teacher_like(s), ["needs 'teacher' and 'kd'"]),
    "train-with-teacher": ("train", lambda t, s: distill_like(s), ["use 'respkd distill'"]),
    "cuda-unavailable": ("train", lambda t, s: teacher_like(s, device="cuda"), ["CUDA is not available"]),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_through_cli(case, tmp_path, session_runs, finished_run_copy, capsys):
    if case == "cuda-unavailable" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    command, make, fragments = BAD_INPUTS[case]
    (tmp_path / "empty").mkdir()
    config = write_yaml(tmp_path / "bad.yaml", make(tmp_path, session_runs))
    runs_root = finished_run_copy.parent
    before = snapshot(runs_root)
    capsys.readouterr()
    assert main([command, str(config), "--runs-root", str(runs_root), "--force"]) == 2
    message = one_line_error(capsys)
    for fragment in fragments:
        assert fragment in message, message
    assert snapshot(runs_root) == before  # not one file touched, even with --force


def test_response_width_mismatch_through_cli(tmp_path, session_runs, finished_run_copy, capsys):
    # the teacher's 'features.1' is its 32-unit hidden layer; the student's response is its 10 logits
    config = write_yaml(tmp_path / "bad.yaml", distill_like(session_runs, **{"kd.teacher_response": "features.1"}))
    runs_root = finished_run_copy.parent
    before = snapshot(runs_root)
    assert main(["distill", str(config), "--runs-root", str(runs_root), "--force"]) == 2
    message = one_line_error(capsys)
    assert "features.1" in message and "32" in message and "10" in message
    assert snapshot(runs_root) == before


def test_bad_override_through_cli(session_runs, finished_run_copy, capsys):
    before = snapshot(finished_run_copy.parent)
    code = main(["train", str(session_runs["teacher_cfg"]), "--runs-root", str(finished_run_copy.parent), "--force",
                 "--set", "train.epochs"])
    assert code == 2
    assert "expected KEY=VALUE" in one_line_error(capsys)
    assert snapshot(finished_run_copy.parent) == before


def test_missing_config_file(tmp_path, capsys):
    assert main(["train", str(tmp_path / "nope.yaml"), "--runs-root", str(tmp_path)]) == 2
    assert "does not exist" in one_line_error(capsys)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty", "garbage"])
def test_eval_of_damaged_checkpoint(damage, tmp_path, session_runs, capsys):
    ckpt = tmp_path / "model.safetensors"
    raw = bytearray((session_runs["teacher_dir"] / "model.safetensors").read_bytes())
    if damage == "flip":
        (header_len,) = struct.unpack("<Q", raw[:8])
        raw[(8 + header_len + len(raw)) // 2] ^= 0xFF
    elif damage == "truncate":
        raw = raw[: len(raw) - 1000]
    elif damage == "empty":
        raw = bytearray()
    else:
        raw = bytearray(b"\x00\x01garbage" * 50)
    ckpt.write_bytes(bytes(raw))
    assert main(["eval", str(ckpt), "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "Traceback" not in captured.err
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("respkd: error: ") and str(ckpt) in lines[0]
    if damage == "flip":
        assert "checksum" in lines[0]


def test_eval_missing_checkpoint(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "none.safetensors")]) == 2
    assert "does not exist" in one_line_error(capsys)


def test_eval_with_empty_data_path(tmp_path, session_runs, capsys):
    (tmp_path / "empty").mkdir()
    ckpt = session_runs["teacher_dir"] / "model.safetensors"
    assert main(["eval", str(ckpt), "--data-path", str(tmp_path / "empty")]) == 2
    assert "holds no mnist dataset" in one_line_error(capsys)


def test_argparse_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["train"])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        main(["frobnicate"])
    assert info.value.code == 2


# ---------------------------------------------------------------- reproduce (plans)


def write_plan(tmp_path: Path, idx_dir: Path, second_config: dict | None = None) -> Path:
    data_root = tmp_path / "data"
    teacher = write_yaml(tmp_path / "cfg" / "t.yaml", tiny_config("plan-teacher", idx_dir, data_root,
                                                                 model={"name": "mlp", "hidden": [16]}))
    student = write_yaml(
        tmp_path / "cfg" / "s.yaml",
        second_config or tiny_config("plan-student", idx_dir, data_root, model={"name": "mlp", "hidden": [8]},
                                     teacher={"run": "plan-teacher"}, kd={"temperature": 3.0}),
    )
    plan = {
        "title": "Tiny plan",
        "runs_root": str(tmp_path / "runs"),
        "stages": [
            {"config": str(teacher), "paper": {"test_errors": 67}},
            {"config": str(student), "set": {"train.lr": 0.2}, "paper": {"test_errors": 74}},
        ],
    }
    return write_yaml(tmp_path / "plan.yaml", plan)


def test_reproduce_runs_then_skips(tmp_path, idx_dir, capsys):
    plan = write_plan(tmp_path, idx_dir)
    runs = tmp_path / "runs"
    assert main(["reproduce", str(plan)]) == 0
    out = capsys.readouterr().out
    assert "[1/2] plan-teacher\n" in out and "[2/2] plan-student\n" in out and "already finished" not in out
    summaries = [runs / "plan-teacher" / "summary.json", runs / "plan-student" / "summary.json"]
    mtimes = [p.stat().st_mtime_ns for p in summaries]
    student = json.loads(summaries[1].read_text())
    assert student["kind"] == "distill" and student["config"]["train"]["lr"] == 0.2  # the stage's `set`
    report = (runs / "REPORT.md").read_text()
    assert report.startswith("# Tiny plan")
    assert "| plan-teacher |" in report and "| plan-student |" in report
    assert "| 67 |" in report and "| 74 |" in report

    (runs / "REPORT.md").unlink()
    assert main(["reproduce", str(plan)]) == 0
    out = capsys.readouterr().out
    assert out.count(", skipped") == 2
    assert "[1/2] plan-teacher: already finished" in out and "[2/2] plan-student: already finished" in out
    assert [p.stat().st_mtime_ns for p in summaries] == mtimes
    assert (runs / "REPORT.md").is_file()

    # a changed config is not "the same run": with an override both stages run again
    assert main(["reproduce", str(plan), "--set", "train.epochs=1", "--set", "train.schedule=constant"]) == 0
    out = capsys.readouterr().out
    assert ", skipped" not in out
    assert [p.stat().st_mtime_ns for p in summaries] != mtimes
    assert json.loads(summaries[0].read_text())["epochs"] == 1


def test_reproduce_report_shows_validation_errors_of_runs_that_hold_a_split_out(tmp_path, idx_dir):
    student = tiny_config("plan-student", idx_dir, tmp_path / "data", model={"name": "mlp", "hidden": [8]},
                          teacher={"run": "plan-teacher"}, kd={"temperature": 3.0}, data={"val_size": 40})
    plan = write_plan(tmp_path, idx_dir, second_config=student)
    runs = tmp_path / "runs"
    assert main(["reproduce", str(plan)]) == 0
    summary = json.loads((runs / "plan-student" / "summary.json").read_text())
    report = (runs / "REPORT.md").read_text()
    assert "| run | test errors | validation errors | training examples |" in report
    assert f"| plan-student | {summary['metrics']['errors']} | {summary['val_metrics']['errors']} / 40 |" in report
    teacher_errors = json.loads((runs / "plan-teacher" / "summary.json").read_text())["metrics"]["errors"]
    assert f"| plan-teacher | {teacher_errors} | |" in report  # trained on every example: no validation split
    # without any split the column is left out
    plan = write_plan(tmp_path / "b", idx_dir)
    assert main(["reproduce", str(plan)]) == 0
    assert "validation errors" not in (tmp_path / "b" / "runs" / "REPORT.md").read_text()


def test_reproduce_validates_every_stage_first(tmp_path, idx_dir, capsys):
    bad_second = tiny_config("plan-student", idx_dir, tmp_path / "data")
    bad_second["train"]["epocs"] = 3
    plan = write_plan(tmp_path, idx_dir, second_config=bad_second)
    assert main(["reproduce", str(plan)]) == 2
    assert "unknown key 'train.epocs'" in one_line_error(capsys)
    assert not (tmp_path / "runs").exists()  # the first stage did not run


def test_reproduce_rejects_duplicate_run_names(tmp_path, idx_dir, capsys):
    same_name = tiny_config("plan-teacher", idx_dir, tmp_path / "data")
    plan = write_plan(tmp_path, idx_dir, second_config=same_name)
    assert main(["reproduce", str(plan)]) == 2
    assert "share a run name" in one_line_error(capsys)
    assert not (tmp_path / "runs").exists()


def test_reproduce_unknown_plan(tmp_path, capsys):
    assert main(["reproduce", str(tmp_path / "nope.yaml")]) == 2
    assert "no plan" in one_line_error(capsys)


def test_reproduce_bad_plan_key(tmp_path, capsys):
    path = write_yaml(tmp_path / "p.yaml", {"title": "x", "runs_root": str(tmp_path), "stages": [{"confg": "a"}]})
    assert main(["reproduce", str(path)]) == 2
    msg = one_line_error(capsys)
    assert "stages.0.confg" in msg


# ---------------------------------------------------------------- the real MNIST (offline copy), one short run


def test_real_mnist_short_run(real_mnist_root, tmp_path, capsys):
    cfg = {
        "name": "real-mnist",
        "data": {"dataset": "mnist", "root": str(real_mnist_root), "train_limit": 2000, "test_limit": 1000},
        "model": {"name": "mlp", "hidden": [128]},
        "train": {"epochs": 1, "batch_size": 16, "lr": 0.02, "schedule": "onecycle", "precision": "fp32"},
    }
    config = write_yaml(tmp_path / "real.yaml", cfg)
    assert main(["train", str(config), "--runs-root", str(tmp_path / "runs")]) == 0
    summary = json.loads((tmp_path / "runs" / "real-mnist" / "summary.json").read_text())
    assert summary["n_train"] == 2000 and summary["metrics"]["n"] == 1000
    assert summary["data_canonical"] is True  # the offline copy converts to the canonical MNIST release
    assert summary["metrics"]["top1"] > 80, summary["metrics"]  # about 85-86 with seeds 0-2
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "runs" / "real-mnist" / "model.safetensors"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 1000 and result["errors"] == summary["metrics"]["errors"]


def test_a_summary_without_its_weights_is_trained_again(idx_dir, tmp_path, capsys):
    """The repository commits weights only for the results table's models: a run folder holding a summary but no
    model.safetensors is not finished, so --seeds (and plans) train it again instead of skipping it."""
    cfg = write_yaml(tmp_path / "m.yaml", tiny_config("member", idx_dir, tmp_path / "data"))
    runs = tmp_path / "runs"
    assert main(["train", str(cfg), "--seeds", "0", "--runs-root", str(runs)]) == 0
    weights = runs / "member-seed0" / "model.safetensors"
    first = weights.read_bytes()
    assert main(["train", str(cfg), "--seeds", "0", "--runs-root", str(runs)]) == 0
    assert "already finished" in capsys.readouterr().out
    weights.unlink()
    assert main(["train", str(cfg), "--seeds", "0", "--runs-root", str(runs)]) == 0
    assert "its weights are not in" in capsys.readouterr().out
    assert weights.read_bytes() == first  # the same config and seed make the same model again
