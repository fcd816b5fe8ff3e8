"""Ensemble teachers: the combination rules against hand computation, an ensemble behind the Distiller, members
that do not fit together, the config's ensemble form, `respkd train --seeds`, distillation from an ensemble
(with its cache key) and `respkd eval-ensemble`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import N_TEST, tiny_config, write_yaml
from respkd.checkpoint import read_checkpoint_meta, save_checkpoint
from respkd.cli import main
from respkd.config import validate_config
from respkd.distill import Distiller
from respkd.ensemble import Ensemble, combine_logits, ensemble_digest, load_ensemble
from respkd.errors import RespkdError
from respkd.models import build_model

IN_SHAPE = (1, 6, 6)


def member(seed: int, num_classes: int = 5, dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("mlp", num_classes, IN_SHAPE, hidden=[12], dropout_hidden=dropout)


# ---------------------------------------------------------------- combination rules


@pytest.mark.parametrize("temperature", [1.0, 2.5, 20.0])
def test_mean_probs_softens_back_to_the_mean_of_the_members_probabilities(temperature):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, 5, generator=g) * 4  # 3 members, 4 examples, 5 classes
    out = combine_logits(logits, "mean_probs", temperature)
    by_hand = sum(torch.softmax(logits[i] / temperature, dim=1) for i in range(3)) / 3
    torch.testing.assert_close(torch.softmax(out / temperature, dim=1), by_hand)
    assert out.dtype == torch.float32


def test_mean_logits_is_the_normalised_geometric_mean_of_the_probabilities():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 6, 10, generator=g) * 3
    out = combine_logits(logits, "mean_logits")
    torch.testing.assert_close(out, logits.mean(dim=0))
    for temperature in (1.0, 4.0):  # the geometric mean at any T
        probs = torch.softmax(logits / temperature, dim=2)
        geo = probs.prod(dim=0) ** (1 / 4)
        torch.testing.assert_close(torch.softmax(out / temperature, dim=1), geo / geo.sum(dim=1, keepdim=True))


def test_one_member_ensemble_is_that_member():
    m = member(0)
    x = torch.randn(3, *IN_SHAPE)
    for rule in ("mean_probs", "mean_logits"):
        out = Ensemble([m], rule, 3.0).eval()(x)
        torch.testing.assert_close(torch.softmax(out / 3.0, 1), torch.softmax(m.eval()(x) / 3.0, 1))


def test_ensemble_module_combines_in_float32_under_bf16_autocast():
    ens = Ensemble([member(0), member(1)], "mean_probs", 4.0).eval()
    x = torch.randn(2, *IN_SHAPE)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ens(x)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_bad_rule_and_temperature():
    with pytest.raises(RespkdError, match="unknown ensemble rule"):
        Ensemble([member(0)], "median")
    with pytest.raises(RespkdError, match="> 0"):
        Ensemble([member(0)], "mean_probs", 0.0)
    with pytest.raises(RespkdError, match="at least one member"):
        Ensemble([])


def test_digest_pins_members_rule_and_temperature_of_mean_probs():
    a, b = "a" * 64, "b" * 64
    base = ensemble_digest([a, b], "mean_probs", 4.0)
    assert ensemble_digest([a, b], "mean_probs", 4.0) == base
    assert len({base, ensemble_digest([a, b], "mean_probs", 2.0), ensemble_digest([a], "mean_probs", 4.0),
                ensemble_digest([a, b], "mean_logits", 4.0)}) == 4
    # the geometric mean does not depend on T: one identity (and one teacher cache) for every T
    assert ensemble_digest([a, b], "mean_logits", 4.0) == ensemble_digest([a, b], "mean_logits", 20.0)


# ---------------------------------------------------------------- behind the Distiller


def test_ensemble_behind_the_distiller_is_frozen_and_stays_in_eval_mode():
    members = [member(0, dropout=0.5), member(1, dropout=0.5)]
    teacher = Ensemble(members, "mean_probs", 4.0)
    student = member(2)
    distiller = Distiller(student, teacher, 4.0).train()
    assert all(not p.requires_grad for p in teacher.parameters())
    assert not teacher.training and not any(m.training for m in teacher.modules())
    assert student.training
    x = torch.randn(8, *IN_SHAPE)
    torch.testing.assert_close(distiller.teacher_logits(x), distiller.teacher_logits(x))  # dropout off
    out = distiller(x, torch.randint(0, 5, (8,)))
    out["loss"].backward()
    assert all(p.grad is not None for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters())
    distiller.check_response_shapes(IN_SHAPE, torch.device("cpu"))


# ---------------------------------------------------------------- loading members


def write_member(path: Path, seed: int, num_classes: int = 5, in_shape=IN_SHAPE, mean: float = 0.0,
                 dataset: str = "mnist", class_names: list[str] | None = None) -> Path:
    torch.manual_seed(seed)
    model = build_model("mlp", num_classes, in_shape, hidden=[12])
    meta = {"model": {"name": "mlp", "hidden": [12]}, "num_classes": num_classes, "in_shape": list(in_shape),
            "normalization": {"mean": [mean], "std": [1.0]}, "dataset": dataset, "name": path.stem}
    save_checkpoint(model.state_dict(), path, meta if class_names is None else {**meta, "class_names": class_names})
    return path


def test_load_ensemble_meta_and_outputs(tmp_path):
    paths = [write_member(tmp_path / f"m{k}.safetensors", k) for k in range(3)]
    ens, meta = load_ensemble(paths, "mean_probs", 2.0)
    shas = [read_checkpoint_meta(p)["weights_sha256"] for p in paths]
    assert meta["weights_sha256"] == ensemble_digest(shas, "mean_probs", 2.0)
    assert [m["weights_sha256"] for m in meta["members"]] == shas
    assert meta["num_classes"] == 5 and meta["in_shape"] == list(IN_SHAPE)
    assert len(ens.members) == 3 and ens.temperature == 2.0


@pytest.mark.parametrize("change,what", [
    ({"num_classes": 4}, "num_classes"),
    ({"in_shape": (1, 5, 5)}, "in_shape"),
    ({"mean": 0.5}, "normalization"),
    ({"dataset": "fashion_mnist"}, "dataset"),
])
def test_members_that_do_not_fit_together_are_refused(tmp_path, change, what):
    good = write_member(tmp_path / "a.safetensors", 0)
    bad = write_member(tmp_path / "b.safetensors", 1, **change)
    with pytest.raises(RespkdError, match=f"ensemble members disagree on {what}: .*a.safetensors has .*b.safetensors has"):
        load_ensemble([good, bad])


def test_members_of_other_class_names_are_refused(tmp_path):
    good = write_member(tmp_path / "a.safetensors", 0, class_names=list("01234"))
    bad = write_member(tmp_path / "b.safetensors", 1, class_names=["0", "1", "2", "3", "four"])
    with pytest.raises(RespkdError, match="b.safetensors's class 4 is 'four' but the member .*a.safetensors's class 4 "
                                          "is '4'"):
        load_ensemble([good, bad])


def test_same_member_twice_is_refused(tmp_path):
    a = write_member(tmp_path / "a.safetensors", 0)
    with pytest.raises(RespkdError, match="twice"):
        load_ensemble([a, a])


# ---------------------------------------------------------------- config


def test_teacher_config_forms():
    base = {"name": "x", "model": {"name": "mlp"}, "train": {"epochs": 1, "lr": 0.1}, "kd": {"temperature": 4.0}}
    cfg = validate_config({**base, "teacher": {"runs": ["a", "b", "c"]}})
    assert cfg.teacher.is_ensemble and cfg.teacher.rule == "mean_probs"
    cfg = validate_config({**base, "teacher": {"checkpoints": ["a.st", "b.st"], "combine": "mean_logits"}})
    assert cfg.teacher.rule == "mean_logits"
    assert validate_config({**base, "teacher": {"run": "a"}}).teacher.rule is None
    bad = [
        ({"run": "a", "runs": ["b", "c"]}, "exactly one of"),
        ({}, "exactly one of"),
        ({"runs": ["a"]}, "at least 2"),
        ({"runs": ["a", "a"]}, "lists a member twice"),
        ({"run": "a", "combine": "mean_probs"}, "'combine' is for an ensemble"),
        ({"runs": ["a", "b"], "combine": "median"}, "teacher.combine"),
        ({"runs": ["a", "b"], "combne": "mean_probs"}, "did you mean 'combine'"),
    ]
    for teacher, message in bad:
        with pytest.raises(RespkdError, match=message):
            validate_config({**base, "teacher": teacher})
    with pytest.raises(RespkdError, match="teacher_response' cannot be used with an ensemble"):
        validate_config({**base, "teacher": {"runs": ["a", "b"]}, "kd": {"temperature": 4.0, "teacher_response": "x"}})


# ---------------------------------------------------------------- end to end: seeds, distil, eval-ensemble


def test_seeds_then_distil_from_the_ensemble_then_eval(tmp_path, idx_dir, session_runs, capsys):
    runs, data_root = tmp_path / "runs", session_runs["data_root"]
    member_cfg = write_yaml(tmp_path / "member.yaml", tiny_config("m", idx_dir, data_root,
                                                                   model={"name": "mlp", "hidden": [16]},
                                                                   train={"epochs": 1}))
    assert main(["train", str(member_cfg), "--runs-root", str(runs), "--seeds", "0,1"]) == 0
    summaries = [json.loads((runs / f"m-seed{k}" / "summary.json").read_text()) for k in (0, 1)]
    assert [s["config"]["seed"] for s in summaries] == [0, 1]
    assert [s["name"] for s in summaries] == ["m-seed0", "m-seed1"]
    mtimes = [(runs / f"m-seed{k}" / "summary.json").stat().st_mtime_ns for k in (0, 1)]
    capsys.readouterr()
    # again, plus one new seed: finished members are skipped, the new one runs (separate processes work alike)
    assert main(["train", str(member_cfg), "--runs-root", str(runs), "--seeds", "0,1,2"]) == 0
    out = capsys.readouterr().out
    assert out.count("already finished") == 2 and "[3/3] m-seed2" in out
    assert [(runs / f"m-seed{k}" / "summary.json").stat().st_mtime_ns for k in (0, 1)] == mtimes
    # a finished member made from another config is not overwritten without --force, and nothing runs
    assert main(["train", str(member_cfg), "--runs-root", str(runs), "--seeds", "0,3", "--set", "train.lr=0.05"]) == 2
    assert "another config" in capsys.readouterr().err
    assert not (runs / "m-seed3").exists()
    assert main(["train", str(member_cfg), "--runs-root", str(runs), "--seeds", "0,x"]) == 2
    assert "--seeds" in capsys.readouterr().err

    cache_dir = tmp_path / "cache"
    student = write_yaml(tmp_path / "student.yaml", tiny_config(
        "ens-student", idx_dir, data_root, model={"name": "mlp", "hidden": [8]},
        teacher={"runs": ["m-seed0", "m-seed1", "m-seed2"]},
        kd={"temperature": 3.0, "cache": True, "cache_dir": str(cache_dir)}))
    assert main(["distill", str(student), "--runs-root", str(runs)]) == 0
    summary = json.loads((runs / "ens-student" / "summary.json").read_text())
    paths = [str(runs / f"m-seed{k}" / "model.safetensors") for k in range(3)]
    assert summary["teacher"] == paths and summary["teacher_combine"] == "mean_probs"
    assert "ensemble of 3 (mean_probs) at T=3.0" in (runs / "ens-student" / "log.txt").read_text()
    (meta_path,) = cache_dir.glob("*/meta.json")
    spec = json.loads(meta_path.read_text())["spec"]
    shas = [read_checkpoint_meta(Path(p))["weights_sha256"] for p in paths]
    assert spec["teacher_weights_sha256"] == ensemble_digest(shas, "mean_probs", 3.0)

    capsys.readouterr()
    assert main(["eval-ensemble", *paths, "--json", "--distilled", str(runs / "ens-student" / "model.safetensors")]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["ensemble"]["n"] == N_TEST and len(r["members"]) == 3
    assert r["member_errors_mean"] == pytest.approx(sum(m["errors"] for m in r["members"]) / 3)
    assert [m["errors"] for m in r["members"]] == [
        json.loads((runs / f"m-seed{k}" / "summary.json").read_text())["metrics"]["errors"] for k in range(3)]
    assert r["distilled"]["errors"] == summary["metrics"]["errors"]
    assert "gain_fraction" in r
    assert main(["eval-ensemble", *paths, "--rule", "mean_logits"]) == 0
    assert "ensemble of 3 (mean_logits, T=1)" in capsys.readouterr().out
    assert main(["eval-ensemble", paths[0]]) == 2
    assert "at least two" in capsys.readouterr().err
