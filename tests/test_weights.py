"""Weights in and out: load_weights (respkd, safetensors, .pth; hostile pickles refused), a student started from
existing weights (`init`), a teacher from a torchvision state dict with an input adapter, and `respkd export`
round trips into the plain torchvision/timm constructors."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from safetensors.torch import save_file
from torch import nn

from respkd.adapter import TeacherInputAdapter
from respkd.checkpoint import load_checkpoint, load_weights, save_checkpoint, tensors_digest
from respkd.checkpoint import load_model
from respkd.cli import main
from respkd.config import validate_config
from respkd.data.datasets import load_dataset
from respkd.errors import RespkdError
from respkd.experiment import prepare
from respkd.models import build_model

from conftest import one_line_error, snapshot, tiny_config, write_yaml

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


def with_model(cfg: dict, **model) -> dict:
    """``cfg`` with its model replaced (tiny_config merges sections; the MLP's ``hidden`` must not stay)."""
    return {**cfg, "model": model}


def small_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)).state_dict()


def assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


class WritesMarker:
    """Unpickling this runs ``touch <marker>``: what a hostile .pth does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# ---------------------------------------------------------------- load_weights


@pytest.mark.parametrize("wrap,notes", [
    (lambda sd: sd, []),
    (lambda sd: {"state_dict": sd, "epoch": 7, "optimizer": {"lr": 0.1}}, ["took the state dict under 'state_dict'"]),
    # torchvision's reference scripts: {"model": ..., "args": argparse.Namespace(...)}, and a DDP "module." prefix
    (lambda sd: {"model": {f"module.{k}": v for k, v in sd.items()}, "args": argparse.Namespace(lr=0.1)},
     ["took the state dict under 'model'", "removed the 'module.' prefix of every key"]),
    (lambda sd: {f"_orig_mod.{k}": v for k, v in sd.items()}, ["removed the '_orig_mod.' prefix of every key"]),
])
def test_load_weights_torch_files(tmp_path, wrap, notes):
    state = small_state()
    path = tmp_path / "w.pth"
    torch.save(wrap(state), path)
    w = load_weights(path)
    assert w.kind == "torch" and w.notes == notes and w.meta is None
    assert_same_state(w.state, state)
    assert w.sha256 == tensors_digest(state)


def test_load_weights_safetensors_and_respkd(tmp_path, session_runs):
    state = small_state()
    save_file(state, str(tmp_path / "w.safetensors"))
    w = load_weights(tmp_path / "w.safetensors")
    assert w.kind == "safetensors" and w.notes == []
    assert_same_state(w.state, state)

    ckpt = session_runs["teacher_dir"] / "model.safetensors"
    w = load_weights(ckpt)
    state, meta = load_checkpoint(ckpt)
    assert w.kind == "respkd" and w.meta == meta and w.sha256 == meta["weights_sha256"]
    assert_same_state(w.state, state)


def test_hostile_pth_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "MARKER"
    evil = tmp_path / "evil.pth"
    torch.save({"fc.weight": torch.zeros(2, 2), "payload": WritesMarker(marker)}, evil)
    with pytest.raises(RespkdError, match=r"refused: it holds pickled Python objects \(posix.system\)") as err:
        load_weights(evil)
    assert "\n" not in str(err.value)
    assert not marker.exists()
    # Control: the file really is hostile; plain unpickling runs the payload.
    with open(evil, "rb") as f:
        torch.load(f, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("name,content,message", [
    ("model.pth", "whole module", r"pickled Python objects \(torch.nn.modules.linear.Linear\)"),
    ("text.pth", b"not a torch file at all", "not a readable torch.save file"),
    ("empty.pt", b"", "not a readable torch.save file"),
    ("meta.pth", {"epoch": 3, "best": 0.9}, r"no state dict found .*top-level keys: 'epoch', 'best'"),
    ("list.pth", [torch.zeros(1)], "holds a list, not a state dict"),
    ("w.npz", b"PK", "unknown weights format '.npz'"),
    ("cut.safetensors", "truncated", "corrupt or truncated safetensors file|not a readable safetensors file"),
    ("missing.pth", None, "does not exist"),
])
def test_load_weights_refusals(tmp_path, name, content, message):
    path = tmp_path / name
    if content == "whole module":
        torch.save(nn.Linear(2, 2), path)
    elif content == "truncated":
        save_file(small_state(), str(path))
        path.write_bytes(path.read_bytes()[:-8])
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(RespkdError, match=message) as err:
        load_weights(path)
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------- init: the student from existing weights


def run_cli(args: list[str]) -> int:
    return main([str(a) for a in args])


def test_init_strict_from_a_run(tmp_path, session_runs, idx_dir):
    """One epoch at a negligible lr: the student ends where the teacher's weights started it, and the run says so."""
    cfg = tiny_config("from-teacher", idx_dir, session_runs["data_root"], init={"run": "tiny-teacher"},
                      train={"epochs": 1, "lr": 1e-12, "schedule": "constant"})
    runs = tmp_path / "runs"
    (runs / "tiny-teacher").parent.mkdir(parents=True)
    (runs / "tiny-teacher").symlink_to(session_runs["teacher_dir"])
    assert run_cli(["train", write_yaml(tmp_path / "c.yaml", cfg), "--runs-root", runs]) == 0
    teacher, _ = load_checkpoint(session_runs["teacher_dir"] / "model.safetensors")
    student, _ = load_checkpoint(runs / "from-teacher" / "model.safetensors")
    for k in teacher:
        torch.testing.assert_close(student[k], teacher[k], rtol=0, atol=1e-6)
    summary = json.loads((runs / "from-teacher" / "summary.json").read_text())
    init = summary["init"]
    assert init["strict"] and init["loaded"] == init["of"] == 4 and init["kind"] == "respkd"
    assert init["weights_sha256"] == tensors_digest(teacher)
    assert not (init["missing"] or init["unexpected"] or init["shape_mismatch"])
    assert "student initialised with 4/4 tensors" in (runs / "from-teacher" / "log.txt").read_text()


def test_init_strict_mismatch_is_one_line_and_writes_nothing(tmp_path, session_runs, idx_dir, capsys):
    ckpt = session_runs["teacher_dir"] / "model.safetensors"
    cfg = tiny_config("wrong-shape", idx_dir, session_runs["data_root"], init={"checkpoint": str(ckpt)},
                      model={"hidden": [16]})
    before = snapshot(tmp_path)
    assert run_cli(["train", write_yaml(tmp_path / "c.yaml", cfg), "--runs-root", tmp_path / "runs"]) == 2
    line = one_line_error(capsys)
    assert "does not fit the student: shape mismatch " in line and "features.1.weight [32, 784] vs [16, 784]" in line
    assert "strict: false" in line
    assert not (tmp_path / "runs").exists() and snapshot(tmp_path).keys() - before.keys() == {"c.yaml"}


def test_init_non_strict_loads_what_fits(tmp_path, session_runs, idx_dir):
    """784-32-10 into 784-32-16-10: the first layer fits; the new layer and the re-shaped classifier are skipped."""
    ckpt = session_runs["teacher_dir"] / "model.safetensors"
    cfg = tiny_config("partial", idx_dir, session_runs["data_root"], model={"hidden": [32, 16]},
                      init={"checkpoint": str(ckpt), "strict": False},
                      train={"epochs": 1, "lr": 1e-12, "schedule": "constant"})
    runs = tmp_path / "runs"
    assert run_cli(["train", write_yaml(tmp_path / "c.yaml", cfg), "--runs-root", runs]) == 0
    init = json.loads((runs / "partial" / "summary.json").read_text())["init"]
    assert (init["loaded"], init["of"], init["strict"]) == (3, 6, False)  # the 10 classifier biases fit too
    assert init["missing"] == ["features.3.weight", "features.3.bias"]
    assert init["shape_mismatch"] == ["classifier.weight"] and init["unexpected"] == []
    teacher, _ = load_checkpoint(ckpt)
    student, _ = load_checkpoint(runs / "partial" / "model.safetensors")
    torch.testing.assert_close(student["features.1.weight"], teacher["features.1.weight"], rtol=0, atol=1e-6)
    assert "skipped: 2 missing (features.3.weight, features.3.bias); 1 shape mismatch" in (
        runs / "partial" / "log.txt").read_text()


def test_init_from_pth_and_safetensors_state_dicts(tmp_path, session_runs, idx_dir):
    """A DDP-saved .pth for the MLP, a plain safetensors file for a timm model: both land in the student exactly."""
    data_root = session_runs["data_root"]
    mlp = build_model("mlp", 10, (1, 28, 28), hidden=[32])
    torch.save({"model_state_dict": {f"module.{k}": v for k, v in mlp.state_dict().items()}}, tmp_path / "m.pth")
    cfg = validate_config(tiny_config("a", idx_dir, data_root, init={"checkpoint": str(tmp_path / "m.pth")}))
    p = prepare(cfg, tmp_path / "runs")
    assert_same_state(p.student.state_dict(), mlp.state_dict())
    assert p.init["notes"] == ["took the state dict under 'model_state_dict'", "removed the 'module.' prefix of every key"]

    net = build_model("timm.test_resnet", 10, (1, 28, 28))
    save_file(net.state_dict(), str(tmp_path / "t.safetensors"))
    cfg = validate_config(with_model(tiny_config("b", idx_dir, data_root,
                                                 init={"checkpoint": str(tmp_path / "t.safetensors")}),
                                     name="timm.test_resnet"))
    p = prepare(cfg, tmp_path / "runs")
    assert_same_state(p.student.state_dict(), net.state_dict())
    assert p.init["kind"] == "safetensors" and p.init["loaded"] == len(net.state_dict())


def test_hostile_init_checkpoint_via_cli(tmp_path, session_runs, idx_dir, capsys):
    marker = tmp_path / "MARKER"
    torch.save({"x": WritesMarker(marker)}, tmp_path / "evil.pth")
    cfg = tiny_config("evil", idx_dir, session_runs["data_root"], init={"checkpoint": str(tmp_path / "evil.pth")})
    assert run_cli(["train", write_yaml(tmp_path / "c.yaml", cfg), "--runs-root", tmp_path / "runs"]) == 2
    assert "refused: it holds pickled Python objects (posix.system)" in one_line_error(capsys)
    assert not marker.exists() and not (tmp_path / "runs").exists()


def test_plans_order_a_stage_after_the_run_it_starts_from(tmp_path, session_runs, idx_dir):
    from respkd.plan import load_plan, resolve

    data_root = session_runs["data_root"]
    base = write_yaml(tmp_path / "base.yaml", tiny_config("base", idx_dir, data_root))
    tuned = write_yaml(tmp_path / "tuned.yaml", tiny_config("tuned", idx_dir, data_root, init={"run": "base"}))

    def plan(*configs):
        return write_yaml(tmp_path / "plan.yaml", {"title": "t", "runs_root": str(tmp_path / "runs"),
                                                   "stages": [{"config": str(c)} for c in configs]})

    with pytest.raises(RespkdError, match="reads run 'base', which no earlier stage makes"):
        resolve(load_plan(str(plan(tuned, base))), [], tmp_path / "runs")
    jobs = resolve(load_plan(str(plan(base, tuned))), [], tmp_path / "runs")
    assert [j.needs for j in jobs] == [[], ["base"]]


@pytest.mark.parametrize("section,message", [
    ({"init": {"strict": True}}, "'init': give exactly one of 'run' or 'checkpoint'"),
    ({"init": {"run": "a", "checkpoint": "b"}}, "'init': give exactly one of 'run' or 'checkpoint'"),
    ({"init": {"run": "a", "stric": False}}, "unknown key 'init.stric' (did you mean 'strict'?)"),
    ({"teacher": {"weights": "t.pth"}}, "'weights' and 'model' go together"),
    ({"teacher": {"run": "t", "model": {"name": "mlp"}}}, "'model' needs its weights"),
    ({"teacher": {"run": "t", "weights": "t.pth", "model": {"name": "mlp"}}}, "give exactly one of"),
    ({"teacher": {"run": "t", "input": {"mean": [0.5]}}}, "give 'mean' and 'std' together"),
    ({"teacher": {"run": "t", "input": {"mean": [0.5], "std": [1, 1]}}}, "'mean' has 1 values but 'std' has 2"),
    ({"teacher": {"run": "t", "input": {"size": [32, 32, 3]}}}, "'size' is one number or [height, width]"),
    ({"teacher": {"run": "t", "input": {"sise": 32}}}, "unknown key 'teacher.input.sise' (did you mean 'size'?)"),
])
def test_config_validation(tmp_path, section, message):
    raw = tiny_config("x", tmp_path, tmp_path, **section)
    if "teacher" in section:
        raw["kd"] = {"temperature": 4.0}
    with pytest.raises(RespkdError) as err:
        validate_config(raw)
    assert message in str(err.value)


# ---------------------------------------------------------------- the teacher input adapter


def test_adapter_normalisation_and_grey_to_rgb_by_hand():
    pixels = torch.tensor([[0.0, 0.5], [1.0, 0.25]])
    student_batch = ((pixels - MNIST_MEAN) / MNIST_STD).view(1, 1, 2, 2)
    adapter = TeacherInputAdapter([MNIST_MEAN], [MNIST_STD], IMAGENET_MEAN, IMAGENET_STD)
    out = adapter(student_batch)
    assert out.shape == (1, 3, 2, 2)
    # e.g. channel 0 at pixel 0.5: (0.5 - 0.485) / 0.229 = 0.0655...
    assert out[0, 0, 0, 1].item() == pytest.approx((0.5 - 0.485) / 0.229, abs=1e-6)
    for c in range(3):
        for (i, j), p in np.ndenumerate(pixels.numpy()):
            assert out[0, c, i, j].item() == pytest.approx((p - IMAGENET_MEAN[c]) / IMAGENET_STD[c], abs=1e-6)


def test_adapter_resize_by_hand():
    """Bilinear with half-pixel centres; shrinking is antialiased (a triangle filter as wide as the scale)."""
    identity = dict(student_mean=[0.0], student_std=[1.0], teacher_mean=[0.0], teacher_std=[1.0])
    up = TeacherInputAdapter(**identity, size=(2, 4))(torch.tensor([[[[0.0, 1.0], [0.0, 1.0]]]]))
    # output x at input coordinate (i + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25, clamped into [0, 1]
    torch.testing.assert_close(up[0, 0], torch.tensor([[0.0, 0.25, 0.75, 1.0]] * 2))
    down = TeacherInputAdapter(**identity, size=(1, 2))(torch.tensor([[[[0.0, 1.0, 2.0, 3.0]]]]))
    # output 0 is centred at input coordinate 1.0; pixel centres 0.5, 1.5, 2.5 weigh 1 - d / 2 = 0.75, 0.75, 0.25:
    # (0 * 0.75 + 1 * 0.75 + 2 * 0.25) / 1.75 = 5/7 (plain bilinear, without antialiasing, would give 0.5)
    torch.testing.assert_close(down[0, 0, 0], torch.tensor([5 / 7, 16 / 7]))


def test_adapter_refuses_rgb_to_grey():
    with pytest.raises(RespkdError, match="only a grey channel can be repeated"):
        TeacherInputAdapter(IMAGENET_MEAN, IMAGENET_STD, [0.5], [0.5])


def teacher_pth(tmp_path: Path, num_classes: int = 10) -> tuple[Path, nn.Module]:
    torch.manual_seed(1)
    net = torchvision.models.resnet18(num_classes=num_classes).eval()
    path = tmp_path / "resnet18.pth"
    torch.save({"state_dict": net.state_dict(), "epoch": 90}, path)  # as a training script saves it
    return path, net


def external_teacher_config(name, idx_dir, data_root, weights, cache_dir, size=32):
    return tiny_config(
        name, idx_dir, data_root, data={"train_limit": 200, "test_limit": 100},
        train={"epochs": 1, "batch_size": 50},
        teacher={"model": {"name": "torchvision.resnet18"}, "weights": str(weights),
                 "input": {"mean": IMAGENET_MEAN, "std": IMAGENET_STD, "size": size}},
        kd={"temperature": 4.0, "hard_weight": 0.5, "cache": True, "cache_dir": str(cache_dir)},
    )


def test_torchvision_teacher_with_adapter_end_to_end(tmp_path, session_runs, idx_dir):
    """Grey 28x28 MNIST student, RGB 32x32 ImageNet-normalised torchvision teacher from a .pth: the cached teacher
    outputs are exactly the teacher's answers to the hand-converted images, and the cache key follows the adapter."""
    weights, net = teacher_pth(tmp_path)
    runs, cache_dir, data_root = tmp_path / "runs", tmp_path / "cache", session_runs["data_root"]
    cfg = write_yaml(tmp_path / "kd.yaml", external_teacher_config("kd-r18", idx_dir, data_root, weights, cache_dir))
    assert run_cli(["distill", cfg, "--runs-root", runs]) == 0
    summary = json.loads((runs / "kd-r18" / "summary.json").read_text())
    assert summary["teacher"] == str(weights)
    assert summary["teacher_input"] == {"student_mean": [MNIST_MEAN], "student_std": [MNIST_STD], "mean": IMAGENET_MEAN,
                                        "std": IMAGENET_STD, "size": [32, 32], "resize": "bilinear, antialias"}
    cache = summary["teacher_cache"]
    assert cache["built_now"]
    log = (runs / "kd-r18" / "log.txt").read_text()
    assert "distil from torchvision.resnet18 weights" in log and "took the state dict under 'state_dict'" in log

    images = load_dataset("mnist", data_root, idx_dir).train_images[:8]
    pixels = F.interpolate(images.float() / 255, size=(32, 32), mode="bilinear", align_corners=False)
    rgb = (pixels.expand(-1, 3, -1, -1) - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(
        IMAGENET_STD).view(3, 1, 1)
    with torch.no_grad():
        expected = net(rgb)
    expected = expected - expected.amax(dim=1, keepdim=True)  # the cache stores rows shifted to a maximum of 0
    cached = torch.from_numpy(np.load(Path(cache["folder"]) / "logits.npy")[0, :8].astype(np.float32))
    torch.testing.assert_close(cached, expected, rtol=2e-3, atol=2e-3)

    # The same adapter again: the cache is reused. Another teacher size: another cache, built anew.
    assert run_cli(["distill", cfg, "--runs-root", runs, "--set", "name=kd-r18-again"]) == 0
    again = json.loads((runs / "kd-r18-again" / "summary.json").read_text())["teacher_cache"]
    assert not again["built_now"] and again["key"] == cache["key"]
    assert run_cli(["distill", cfg, "--runs-root", runs, "--set", "name=kd-r18-36", "--set",
                    "teacher.input.size=36"]) == 0
    other = json.loads((runs / "kd-r18-36" / "summary.json").read_text())["teacher_cache"]
    assert other["built_now"] and other["key"] != cache["key"]


def test_external_teacher_with_other_classes_is_refused(tmp_path, session_runs, idx_dir, capsys):
    weights, _ = teacher_pth(tmp_path, num_classes=1000)
    cfg = external_teacher_config("x", idx_dir, session_runs["data_root"], weights, tmp_path / "cache")
    assert run_cli(["distill", write_yaml(tmp_path / "c.yaml", cfg), "--runs-root", tmp_path / "runs"]) == 2
    line = one_line_error(capsys)
    assert "does not fit the teacher torchvision.resnet18 (10 classes): shape mismatch fc.weight [1000, 512] vs " \
           "[10, 512], fc.bias [1000] vs [10]" in line
    assert not (tmp_path / "runs").exists() and not (tmp_path / "cache").exists()


def test_respkd_teacher_other_normalisation_needs_an_adapter(tmp_path, session_runs, idx_dir, capsys):
    """The teacher was trained on standardised inputs; a student on raw [0, 1] pixels is refused, unless
    teacher.input says how to convert its batches (then the Distiller sees the teacher's own inputs)."""
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "tiny-teacher").symlink_to(session_runs["teacher_dir"])
    raw = tiny_config("raw-student", idx_dir, session_runs["data_root"], data={"normalize": False},
                      teacher={"run": "tiny-teacher"}, kd={"temperature": 4.0})
    assert run_cli(["distill", write_yaml(tmp_path / "c.yaml", raw), "--runs-root", runs]) == 2
    assert "teacher.input to convert" in one_line_error(capsys)
    assert not (runs / "raw-student").exists()

    raw["teacher"]["input"] = {"mean": [MNIST_MEAN], "std": [MNIST_STD]}
    raw["kd"]["teacher_response"] = "classifier"  # a submodule of the teacher, found behind the adapter
    p = prepare(validate_config(raw), runs)
    x = torch.rand(3, 1, 28, 28)  # raw pixels: what this student's batches are
    teacher, _ = load_model(session_runs["teacher_dir"] / "model.safetensors")
    torch.testing.assert_close(p.task.teacher_logits(x), teacher.eval()((x - MNIST_MEAN) / MNIST_STD))

    raw["teacher"]["input"], raw["kd"]["teacher_response"] = {"size": 32}, None
    with pytest.raises(RespkdError, match=r"teacher expects inputs of shape \[1, 28, 28\], teacher.input gives "
                                          r"\(1, 32, 32\)"):
        prepare(validate_config(raw), runs)


# ---------------------------------------------------------------- export


@pytest.fixture(scope="module")
def torchvision_run(tmp_path_factory, session_runs, idx_dir) -> Path:
    """A torchvision ResNet-18 student trained briefly by respkd on the grey synthetic MNIST."""
    base = tmp_path_factory.mktemp("tv_run")
    cfg = with_model(tiny_config("r18", idx_dir, session_runs["data_root"], data={"train_limit": 64, "test_limit": 32},
                                 train={"epochs": 1, "batch_size": 32}), name="torchvision.resnet18")
    assert run_cli(["train", write_yaml(base / "r18.yaml", cfg), "--runs-root", base / "runs"]) == 0
    return base / "runs" / "r18"


@pytest.mark.parametrize("out_name,fmt", [("r18.safetensors", None), ("r18.pth", None), ("r18.bin", "pth")])
def test_export_torchvision_round_trip(tmp_path, torchvision_run, capsys, out_name, fmt):
    out = tmp_path / out_name
    args = ["export", torchvision_run, out] + (["--format", fmt] if fmt else [])
    assert run_cli(args) == 0
    printed = capsys.readouterr().out
    assert "loads with: torchvision.models.resnet18(num_classes=10).load_state_dict(...)" in printed
    assert "conv1.weight takes 1 input channel(s)" in printed
    assert "inputs: 1x28x28, (pixels / 255 - [0.1307]) / [0.3081]" in printed

    state = load_weights(out).state  # a plain state dict, nothing else in the file
    if out.suffix != ".safetensors":
        assert set(torch.load(out, weights_only=True)) == set(state)
    plain = torchvision.models.resnet18(num_classes=10)
    plain.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)  # what the note says to do
    plain.load_state_dict(state, strict=True)
    trained, _ = load_model(torchvision_run / "model.safetensors")
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(plain.eval()(x), trained.eval()(x))


def test_export_timm_round_trip_and_back_into_init(tmp_path, session_runs, idx_dir, capsys):
    import timm

    net = build_model("timm.test_resnet", 10, (1, 28, 28))
    ckpt = tmp_path / "timm.safetensors"
    save_checkpoint(net.state_dict(), ckpt, {"model": {"name": "timm.test_resnet"}, "num_classes": 10,
                                             "in_shape": [1, 28, 28], "normalization": None})
    assert run_cli(["export", ckpt, tmp_path / "plain.safetensors"]) == 0
    assert "timm.create_model('test_resnet', num_classes=10, in_chans=1)" in capsys.readouterr().out
    plain = timm.create_model("test_resnet", num_classes=10, in_chans=1)
    plain.load_state_dict(load_weights(tmp_path / "plain.safetensors").state, strict=True)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(plain.eval()(x), net.eval()(x))

    # The exported MLP teacher starts a respkd student again, strictly.
    assert run_cli(["export", "tiny-teacher", tmp_path / "mlp.pth", "--runs-root", session_runs["runs_root"]]) == 0
    cfg = tiny_config("again", idx_dir, session_runs["data_root"], init={"checkpoint": str(tmp_path / "mlp.pth")})
    p = prepare(validate_config(cfg), tmp_path / "runs")
    teacher, _ = load_checkpoint(session_runs["teacher_dir"] / "model.safetensors")
    assert_same_state(p.student.state_dict(), teacher)


def test_export_refusals(tmp_path, session_runs, capsys):
    ckpt = session_runs["teacher_dir"] / "model.safetensors"
    out = tmp_path / "out.safetensors"
    out.write_bytes(b"keep me")
    assert run_cli(["export", ckpt, out]) == 2
    assert "already exists; pass --force" in one_line_error(capsys)
    assert out.read_bytes() == b"keep me"
    assert run_cli(["export", ckpt, out, "--force"]) == 0
    assert_same_state(load_weights(out).state, load_checkpoint(ckpt)[0])

    before = snapshot(session_runs["teacher_dir"])
    assert run_cli(["export", session_runs["teacher_dir"], ckpt, "--force"]) == 2
    assert "is the input checkpoint" in one_line_error(capsys)
    assert snapshot(session_runs["teacher_dir"]) == before
    assert run_cli(["export", tmp_path / "nope", tmp_path / "x.pth"]) == 2
    assert "no such checkpoint, run directory, or run" in one_line_error(capsys)
    assert not (tmp_path / "x.pth").exists()
    plain = tmp_path / "plain.safetensors"
    save_file(small_state(), str(plain))
    assert run_cli(["export", plain, tmp_path / "y.pth"]) == 2
    assert "not a respkd checkpoint" in one_line_error(capsys)
