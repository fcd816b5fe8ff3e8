"""Teachers: measured once on the test set by every distillation run, pretrained ones by name (offline: the
libraries pointed at local files), and what a teacher that does not fit says. (Refusals of names and sources:
tests/test_bad_inputs.py.)"""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from respkd.checkpoint_eval import evaluate_ensemble
from respkd.cli import main
from respkd.config import ModelConfig
from respkd.errors import RespkdError
from respkd.models import build_model
from respkd.weights import load_external_model

from conftest import N_TEST, one_line_error, tiny_config, write_yaml

NORM = {"mean": [0.5] * 3, "std": [0.5] * 3}


def test_a_distillation_run_reports_its_teacher(session_runs):
    summary = json.loads((session_runs["student_dir"] / "summary.json").read_text())
    teacher = json.loads((session_runs["teacher_dir"] / "summary.json").read_text())["metrics"]
    measured = summary["teacher_metrics"]
    assert (measured["errors"], measured["n"]) == (teacher["errors"], N_TEST)  # the same model, the same test set
    log = (session_runs["student_dir"] / "log.txt").read_text().splitlines()
    student = summary["metrics"]
    assert f"teacher: {teacher['errors']}/{N_TEST} test errors ({teacher['top1']:.2f}% top-1)" in log
    assert log[-1] == (f"[tiny-student-kd] teacher {teacher['errors']}/{N_TEST} test errors ({teacher['top1']:.2f}% "
                       f"top-1), student {student['errors']}/{N_TEST} test errors ({student['top1']:.2f}% top-1)")
    assert json.loads((session_runs["teacher_dir"] / "summary.json").read_text())["teacher_metrics"] is None


def test_an_ensemble_teacher_is_measured_as_the_ensemble(tmp_path, session_runs, idx_dir):
    runs = tmp_path / "runs"
    for name in ("tiny-teacher", "tiny-student-kd"):
        (runs / name).parent.mkdir(parents=True, exist_ok=True)
        (runs / name).symlink_to(session_runs["runs_root"] / name)
    cfg = tiny_config("from-two", idx_dir, session_runs["data_root"], teacher={"runs": ["tiny-teacher",
                                                                                         "tiny-student-kd"]},
                      kd={"temperature": 2.0}, train={"epochs": 1})
    assert main(["distill", str(write_yaml(tmp_path / "c.yaml", cfg)), "--runs-root", str(runs)]) == 0
    measured = json.loads((runs / "from-two" / "summary.json").read_text())["teacher_metrics"]
    expected = evaluate_ensemble([runs / n / "model.safetensors" for n in ("tiny-teacher", "tiny-student-kd")],
                                 "mean_probs", 2.0, data_path=str(idx_dir))["ensemble"]
    assert (measured["errors"], measured["n"]) == (expected["errors"], expected["n"])


def test_a_timm_teacher_by_name_with_timm_pretrained_machinery(tmp_path):
    """``pretrained: true`` goes through timm (here pointed at a local file by pretrained_cfg_overlay): the teacher
    answers exactly as the model whose weights the file holds."""
    timm = pytest.importorskip("timm")
    source = timm.create_model("test_resnet", num_classes=10).eval()
    torch.save(source.state_dict(), tmp_path / "test_resnet.pth")
    model_cfg = ModelConfig(name="timm.test_resnet", pretrained=True,
                            pretrained_cfg_overlay={"file": str(tmp_path / "test_resnet.pth"), "num_classes": 10})
    teacher, meta = load_external_model(model_cfg, None, 10, (3, 32, 32), NORM)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(teacher.eval()(x), source(x), rtol=0, atol=0)
    assert meta["weights"] is None and meta["model"]["pretrained"] is True and len(meta["weights_sha256"]) == 64


def test_a_torchvision_teacher_by_its_weights_enum(tmp_path, monkeypatch):
    """``weights: IMAGENET1K_V1`` is read where torch hub keeps torchvision's download, with weights_only=True."""
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    url = torchvision.models.SqueezeNet1_1_Weights.IMAGENET1K_V1.url
    cached = tmp_path / "hub" / "checkpoints" / url.rsplit("/", 1)[1]
    cached.parent.mkdir(parents=True)
    torch.manual_seed(3)
    source = torchvision.models.squeezenet1_1(num_classes=1000).eval()
    torch.save(source.state_dict(), cached)
    model = build_model("torchvision.squeezenet1_1", 1000, (3, 64, 64), weights="IMAGENET1K_V1").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), source(x), rtol=0, atol=0)
    cached.write_bytes(pickle.dumps({"w": _RunsCode()}))  # a cache file that would run code: refused, not run
    with pytest.raises(RespkdError, match="could not be read"):
        build_model("torchvision.squeezenet1_1", 1000, (3, 64, 64), weights="IMAGENET1K_V1")


class _RunsCode:
    def __reduce__(self):
        return (exec, ("raise SystemExit('unpickled')",))


def test_a_teacher_that_does_not_fit_names_no_strict_key(tmp_path, session_runs, idx_dir, capsys):
    """A teacher must fit exactly (random layers would distil noise): its error offers no 'strict: false'."""
    torch.save(build_model("mlp", 10, (1, 28, 28), hidden=[16]).state_dict(), tmp_path / "t.pth")
    cfg = tiny_config("kd", idx_dir, session_runs["data_root"], kd={"temperature": 2.0},
                      teacher={"model": {"name": "mlp", "hidden": [32]}, "weights": str(tmp_path / "t.pth")})
    assert main(["distill", str(write_yaml(tmp_path / "c.yaml", cfg)), "--runs-root", str(tmp_path / "runs")]) == 2
    line = one_line_error(capsys)
    assert "does not fit the teacher mlp (10 classes): shape mismatch" in line and "strict" not in line
    assert not (tmp_path / "runs").exists()
