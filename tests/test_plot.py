"""respkd plot: the series read from metrics.jsonl, the teacher's line, the figure file, the verdict line."""

from __future__ import annotations

import importlib.util
import json
import shutil
import struct
from pathlib import Path

import pytest

from respkd.cli import main
from respkd.plot import Curve, epoch_series, plot_curves, read_metrics, run_curves
from respkd.report import distillation_verdicts, teacher_reference

from conftest import write_yaml

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk (the first, right after the signature)."""
    raw = path.read_bytes()
    assert raw[:8] == PNG_SIGNATURE and raw[12:16] == b"IHDR", "not a PNG"
    return struct.unpack(">II", raw[16:24])


@pytest.fixture(scope="module")
def three_runs(session_runs, tmp_path_factory) -> dict[str, Path]:
    """The session's teacher and distilled student, and the same student trained on hard labels (its control)."""
    base = tmp_path_factory.mktemp("control")
    student = json.loads((session_runs["student_dir"] / "summary.json").read_text())["config"]
    control = {k: v for k, v in student.items() if k not in ("teacher", "kd")} | {"name": "tiny-student-hard"}
    assert main(["train", str(write_yaml(base / "hard.yaml", control)), "--runs-root", str(base / "runs")]) == 0
    return {"teacher": session_runs["teacher_dir"], "kd": session_runs["student_dir"],
            "hard": base / "runs" / "tiny-student-hard"}


def metrics_lines(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_epoch_series_are_the_metrics_lines(three_runs):
    lines = metrics_lines(three_runs["kd"])
    curve = epoch_series("kd", read_metrics(three_runs["kd"]))
    assert curve.epochs == [1, 2]
    assert curve.loss == [r["loss"] for r in lines]
    assert curve.test_errors == [r["test_errors"] for r in lines]
    # a distillation's objective includes the soft targets: its cross-entropy on the labels is a series of its own
    assert curve.label_loss == [r["hard_loss"] for r in lines] and curve.label_loss != curve.loss
    hard = epoch_series("hard", read_metrics(three_runs["hard"]))
    assert hard.loss == [r["loss"] for r in metrics_lines(three_runs["hard"])] and hard.label_loss is None


def test_epoch_series_sorts_by_epoch():
    records = [{"epoch": 2, "loss": 0.5, "test_errors": 7}, {"epoch": 1, "loss": 0.9, "test_errors": 11}]
    assert epoch_series("r", records) == Curve("r", [1, 2], [0.9, 0.5], [11, 7])


def test_teacher_line_is_the_teachers_own_test_errors(three_runs):
    teacher = json.loads((three_runs["teacher"] / "summary.json").read_text())["metrics"]
    curves, teachers = run_curves([three_runs["kd"], three_runs["hard"]])
    assert [c.name for c in curves] == ["tiny-student-kd", "tiny-student-hard"]
    assert [(t.name, t.test_errors) for t in teachers] == [("tiny-teacher", teacher["errors"])]
    assert run_curves([three_runs["hard"]])[1] == []  # trained on labels: no teacher


def test_teacher_reference_prefers_teacher_metrics_then_checkpoint_then_config(three_runs, tmp_path):
    run = tmp_path / "runs" / "kd"
    shutil.copytree(three_runs["kd"], run)
    summary = json.loads((run / "summary.json").read_text())
    summary.pop("teacher_metrics")  # each source in turn, from the summary of a run that did not measure its teacher
    n = summary["metrics"]["n"]
    (run / "summary.json").write_text(json.dumps({**summary, "teacher_metrics": {"errors": 12345, "n": n}}))
    assert teacher_reference(run)["errors"] == 12345
    # only the checkpoint left: its metadata holds the metrics
    lone = tmp_path / "lone" / "model.safetensors"
    lone.parent.mkdir()
    shutil.copy(three_runs["teacher"] / "model.safetensors", lone)
    (run / "summary.json").write_text(json.dumps({**summary, "teacher": str(lone)}))
    teacher_errors = json.loads((three_runs["teacher"] / "summary.json").read_text())["metrics"]["errors"]
    assert teacher_reference(run) == {"name": "tiny-teacher", "errors": teacher_errors, "n": n}
    # still training: no summary; config.yaml names the teacher run beside this one
    (run / "summary.json").unlink()
    shutil.copytree(three_runs["teacher"], run.parent / "tiny-teacher")
    assert teacher_reference(run)["errors"] == teacher_errors
    # a teacher tested on another number of examples is no reference
    (run.parent / "tiny-teacher" / "summary.json").write_text(json.dumps(
        {**json.loads((three_runs["teacher"] / "summary.json").read_text()), "metrics": {"errors": 3, "n": n + 1}}))
    (run / "summary.json").write_text(json.dumps(summary | {"teacher": str(run.parent / "tiny-teacher" / "x")}))
    assert teacher_reference(run) is None


def test_verdict_pairs_the_distillation_with_its_hard_label_control(three_runs):
    kd, hard = (json.loads((three_runs[k] / "summary.json").read_text()) for k in ("kd", "hard"))
    teacher = json.loads((three_runs["teacher"] / "summary.json").read_text())
    (line,) = distillation_verdicts([three_runs["teacher"], three_runs["hard"], three_runs["kd"]])
    ours, theirs = kd["metrics"]["errors"], hard["metrics"]["errors"]
    diff = f"{theirs - ours} fewer than" if ours < theirs else f"{ours - theirs} more than" if ours > theirs else "as many as"
    assert line == (f"tiny-student-kd (distilled at T = 4): {ours} test errors, {diff} the same student on hard labels "
                    f"(tiny-student-hard: {theirs}); both 2 epochs, seed 0; teacher tiny-teacher: "
                    f"{teacher['metrics']['errors']}")
    assert distillation_verdicts([three_runs["kd"], three_runs["teacher"]]) == []  # the teacher is no control


def test_plot_command_writes_a_png_and_prints_the_verdict(three_runs, tmp_path, capsys):
    out = tmp_path / "curves.png"
    assert main(["plot", "tiny-student-hard", str(three_runs["kd"]), "--runs-root", str(three_runs["hard"].parent),
                 "--out", str(out)]) == 0
    width, height = png_size(out)
    assert (width, height) == (1320, 504)  # 11 x 4.2 inches at 120 dpi: two panels side by side
    assert out.stat().st_size > 20_000  # lines, labels and legends drawn, not an empty canvas
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("tiny-student-kd (distilled at T = 4): ")
    assert printed[-1] == f"wrote {out} (training loss and test errors per epoch of 2 run(s))"


def test_plot_writes_svg_and_pdf_by_suffix(three_runs, tmp_path):
    curves, teachers = run_curves([three_runs["kd"]])
    plot_curves(curves, teachers, tmp_path / "c.svg")
    assert b"<svg" in (tmp_path / "c.svg").read_bytes()[:500]
    plot_curves(curves, teachers, tmp_path / "c.pdf", title="one run")
    assert (tmp_path / "c.pdf").read_bytes()[:5] == b"%PDF-"


def test_plot_without_matplotlib_says_so_and_writes_nothing(three_runs, tmp_path, capsys, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    assert main(["plot", str(three_runs["kd"]), "--out", str(tmp_path / "c.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("respkd: error: respkd plot needs matplotlib: pip install 'respkd[plots]' (or matplotlib>=3.7)")
    assert list(tmp_path.iterdir()) == []



def test_the_demos_two_students_differ_only_by_distillation():
    # make demo compares these two: the verdict's own rule must pair them (same data, student, seed, optimizer,
    # schedule and epochs), and the teacher they name is the committed paper teacher
    from respkd.config import config_to_dict, load_config
    from respkd.report import control_key

    root = Path(__file__).resolve().parents[1]
    hard = config_to_dict(load_config(root / "configs/mnist/demo_student_800_hard.yaml"))
    kd = config_to_dict(load_config(root / "configs/mnist/demo_student_800_kd_T20.yaml"))
    assert control_key(hard) == control_key(kd) and hard["teacher"] is None
    assert kd["teacher"]["checkpoint"] == "results/mnist/mnist-teacher-1200/model.safetensors"
    assert (root / kd["teacher"]["checkpoint"]).is_file()
    assert kd["kd"]["temperature"] == 20 and kd["kd"]["hard_weight"] > 0 and kd["kd"]["soft_weight"] > 0
