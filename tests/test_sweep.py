"""Temperature sweeps (names, validation, `respkd sweep` with its table and plot, resume) and plans with the new
stage kinds (seeds, bias, ensemble_eval, sweep): run, report against the paper, skip when finished, rerun what
changed, and refuse bad plans before anything runs."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from conftest import tiny_config, write_yaml
from respkd.cli import main
from respkd.config import validate_config
from respkd.errors import RespkdError
from respkd.plan import load_plan
from respkd.sweep import cell_name, sweep_cells


def kd_config(name: str, idx_dir: Path, data_root: Path, teacher: dict, **sections) -> dict:
    sections = {"model": {"name": "mlp", "hidden": [8]}, "train": {"epochs": 1}, "kd": {"temperature": 4.0},
                **sections}
    return tiny_config(name, idx_dir, data_root, teacher=teacher, **sections)


# ---------------------------------------------------------------- sweep cells


def test_cell_names_and_validation(tmp_path):
    base = validate_config({"name": "sw", "model": {"name": "mlp", "hidden": [800, 800]},
                            "train": {"epochs": 1, "lr": 0.1}, "teacher": {"run": "t"}, "kd": {"temperature": 20.0}})
    cells = sweep_cells(base, [1, 2.5, 20], [[300, 300], [30, 30]])
    assert [c.cfg.name for c in cells] == ["sw-h300-T1", "sw-h300-T2.5", "sw-h300-T20",
                                          "sw-h30-T1", "sw-h30-T2.5", "sw-h30-T20"]
    assert cells[1].cfg.kd.temperature == 2.5 and cells[4].cfg.model.options()["hidden"] == [30, 30]
    assert cell_name("sw", (300, 100), 4.0) == "sw-h300x100-T4"
    assert [c.cfg.name for c in sweep_cells(base, [4], [])] == ["sw-T4"]
    hard = validate_config({"name": "h", "model": {"name": "mlp"}, "train": {"epochs": 1, "lr": 0.1}})
    cnn = validate_config({**base.model_dump(mode="json"), "model": {"name": "cnn"}})
    for args, message in [
        ((hard, [1], []), "needs a distillation config"),
        ((base, [1, 1.0], []), "repeat"),
        ((base, [0], []), "> 0"),
        ((base, [2], [[300, 300], [300]]), "same run name"),
        ((cnn, [2], [[30]]), "no 'hidden' option"),
    ]:
        with pytest.raises(RespkdError, match=message):
            sweep_cells(*args)


def test_sweep_cli_runs_tabulates_plots_and_resumes(tmp_path, idx_dir, session_runs, capsys):
    runs = tmp_path / "runs"
    teacher = {"checkpoint": str(session_runs["teacher_dir"] / "model.safetensors")}
    cfg = write_yaml(tmp_path / "sw.yaml", kd_config("sw", idx_dir, session_runs["data_root"], teacher,
                                                     kd={"temperature": 4.0, "cache": True,
                                                         "cache_dir": str(tmp_path / "cache")}))
    argv = ["sweep", str(cfg), "--runs-root", str(runs), "--temperatures", "2,4", "--hidden", "8", "--hidden", "4,4"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    names = ["sw-h8-T2", "sw-h8-T4", "sw-h4-T2", "sw-h4-T4"]
    for name in names:
        s = json.loads((runs / name / "summary.json").read_text())
        assert s["config"]["kd"]["temperature"] == float(name.rsplit("T", 1)[1])
    assert len(list((tmp_path / "cache").iterdir())) == 1  # full logits: one cache serves every T
    folder = runs / "sw-sweep"
    table = (folder / "sweep.md").read_text()
    assert "| student | T = 2 | T = 4 |" in table and "| mlp 8 |" in table and "| mlp 4-4 |" in table
    assert (folder / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = json.loads((folder / "sweep.json").read_text())
    assert [r["label"] for r in result["rows"]] == ["mlp 8", "mlp 4-4"] and result["temperatures"] == [2.0, 4.0]
    assert "| student |" in out
    mtimes = [(runs / n / "summary.json").stat().st_mtime_ns for n in names]
    assert main(argv) == 0
    assert capsys.readouterr().out.count("already finished") == 4
    assert [(runs / n / "summary.json").stat().st_mtime_ns for n in names] == mtimes


def test_sweep_without_matplotlib_says_so_before_running(tmp_path, idx_dir, session_runs, capsys, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    teacher = {"checkpoint": str(session_runs["teacher_dir"] / "model.safetensors")}
    cfg = write_yaml(tmp_path / "sw.yaml", kd_config("sw", idx_dir, session_runs["data_root"], teacher))
    assert main(["sweep", str(cfg), "--runs-root", str(tmp_path / "runs"), "--temperatures", "2"]) == 2
    err = capsys.readouterr().err
    assert "needs matplotlib" in err and "pip install" in err
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------- plans with every stage kind


def tiny_plan(tmp_path: Path, idx_dir: Path, data_root: Path, bias_shift: float = 1.5) -> Path:
    cfg = tmp_path / "cfg"
    teacher = write_yaml(cfg / "t.yaml", tiny_config("t", idx_dir, data_root, model={"name": "mlp", "hidden": [16]},
                                                     train={"epochs": 1}))
    no3 = write_yaml(cfg / "no3.yaml", kd_config("no3", idx_dir, data_root, {"run": "t-seed0"},
                                                 data={"val_size": 100, "transfer": {"drop_classes": [3]}}))
    ens = write_yaml(cfg / "ens.yaml", kd_config("ens-student", idx_dir, data_root, {"runs": ["t-seed0", "t-seed1"]}))
    sweep = write_yaml(cfg / "sw.yaml", kd_config("sw", idx_dir, data_root, {"run": "t-seed0"}))
    plan = {
        "title": "Tiny plan with every kind",
        "runs_root": str(tmp_path / "runs"),
        "report": "REPORT-tiny.md",
        "stages": [
            {"config": str(teacher), "seeds": [0, 1], "paper": {"test_errors": 67}},
            {"config": str(no3), "note": "no 3 in the transfer set"},
            {"kind": "bias", "run": "no3", "classes": [3], "search": True, "low": -5, "high": 5, "step": 0.5,
             "paper": {"test_errors_after": 109, "shift": 3.5}},
            {"kind": "bias", "run": "no3", "name": "no3-fixed", "classes": [3], "shift": bias_shift},
            {"config": str(ens)},
            {"kind": "ensemble_eval", "name": "ens", "runs": ["t-seed0", "t-seed1"], "distilled": "ens-student",
             "paper": {"gain_fraction": 0.8}},
            {"kind": "sweep", "config": str(sweep), "temperatures": [2, 4], "hidden": [[8]],
             "paper": {"best_T_h8": 4}},
        ],
    }
    return write_yaml(tmp_path / "plan.yaml", plan)


def outputs(runs: Path) -> list[Path]:
    return [runs / n / "summary.json" for n in ("t-seed0", "t-seed1", "no3", "ens-student", "sw-h8-T2", "sw-h8-T4")] + [
        runs / "no3-bias" / "bias.json", runs / "no3-fixed" / "bias.json", runs / "ens" / "ensemble.json"]


def test_plan_with_new_stage_kinds_runs_reports_and_resumes(tmp_path, idx_dir, session_runs, capsys):
    plan = tiny_plan(tmp_path, idx_dir, session_runs["data_root"])
    runs = tmp_path / "runs"
    assert main(["reproduce", str(plan)]) == 0
    out = capsys.readouterr().out
    assert "[1/7][1/2] t-seed0" in out and "[7/7][2/2] sw-h8-T4" in out and "already finished" not in out
    files = outputs(runs)
    assert all(p.is_file() for p in files)
    assert (runs / "no3-bias" / "model.safetensors").is_file() and (runs / "sw-sweep" / "sweep.png").is_file()

    report = (runs / "REPORT-tiny.md").read_text()
    assert report.startswith("# Tiny plan with every kind") and not (runs / "REPORT.md").exists()
    bias = json.loads((runs / "no3-bias" / "bias.json").read_text())["result"]
    assert bias["searched"] and bias["search"]["n"] == 100 and -5 <= bias["shift"] <= 5
    assert f"| no3-bias | test_errors_after | {bias['after']['errors']} | 109 |" in report
    assert "| no3-bias | shift |" in report and "| 3.50 |" in report
    assert "| t (seeds 0, 1; mean) | test errors |" in report and "| 67 |" in report
    assert "| ens | gain_fraction |" in report and "| 0.80 |" in report
    assert "| sw-sweep | best_T_h8 |" in report
    assert "### no3-fixed: bias of class(es) 3 of no3 shifted by +1.5 (given)" in report
    assert "### ens: ensemble of 2 (mean_probs, T = 1)" in report and "| distilled ens-student |" in report
    assert "### Temperature sweep: sw" in report and "![sweep](sw-sweep/sweep.png)" in report
    assert "- **no3**: no 3 in the transfer set" in report

    mtimes = [p.stat().st_mtime_ns for p in files]
    assert main(["reproduce", str(plan)]) == 0
    out = capsys.readouterr().out
    assert out.count("already finished") == 9  # 2 seeds, no3, 2 bias, ens-student, ensemble, 2 sweep cells
    assert [p.stat().st_mtime_ns for p in files] == mtimes

    # a changed stage reruns alone: the fixed shift
    plan = tiny_plan(tmp_path, idx_dir, session_runs["data_root"], bias_shift=-2.0)
    assert main(["reproduce", str(plan)]) == 0
    out = capsys.readouterr().out
    assert out.count("already finished") == 8 and "[4/7] no3-fixed: bias" in out
    changed = [p for p, m in zip(files, mtimes) if p.stat().st_mtime_ns != m]
    assert changed == [runs / "no3-fixed" / "bias.json"]
    assert json.loads(changed[0].read_text())["result"]["shift"] == -2.0


def bad_plan(tmp_path: Path, stages: list) -> Path:
    return write_yaml(tmp_path / "bad.yaml", {"title": "bad", "runs_root": str(tmp_path / "runs"), "stages": stages})


def test_bad_plans_are_refused_before_anything_runs(tmp_path, idx_dir, session_runs, capsys):
    data_root = session_runs["data_root"]
    teacher = str(write_yaml(tmp_path / "t.yaml", tiny_config("t", idx_dir, data_root, train={"epochs": 1})))
    no_val = str(write_yaml(tmp_path / "s.yaml", kd_config("s", idx_dir, data_root, {"run": "t"})))
    cases = [
        ([{"config": teacher}, {"kind": "bias", "run": "nobody", "classes": [3], "shift": 1.0}],
         "reads run 'nobody', which no earlier stage makes"),
        ([{"config": no_val}, {"config": teacher}], "reads run 't'"),  # the teacher must come first
        ([{"config": teacher}, {"config": no_val}, {"kind": "bias", "run": "s", "classes": [3], "search": True}],
         "needs a validation split"),
        ([{"config": teacher, "paper": {"test_erors": 1}}], "unknown paper measure 'test_erors'"),
        ([{"config": teacher}, {"kind": "ensemble_eval", "name": "t", "runs": ["t", "t"]}], "share a run name"),
        ([{"config": teacher}, {"kind": "bias", "run": "t", "classes": [3]}], "give either 'shift' or 'search: true'"),
        ([{"kind": "sweep", "config": teacher, "temperatures": [2]}], "needs a distillation config"),
        ([{"kind": "swep", "config": teacher}], "unknown stage kind 'swep'"),
        ([{"kind": "bias", "run": "t", "classes": [3], "shift": 1, "clases": [3]}], "did you mean 'classes'"),
        ([{"config": teacher, "seeds": [1, 1]}], "repeats a seed"),
    ]
    for stages, message in cases:
        capsys.readouterr()
        assert main(["reproduce", str(bad_plan(tmp_path, stages))]) == 2, stages
        err = capsys.readouterr().err.strip()
        assert err.startswith("respkd: error: ") and message in err and "\n" not in err, (message, err)
        assert not (tmp_path / "runs").exists()


def test_shipped_plans_validate(tmp_path):
    # every stage's config, name and reference, against an empty runs root (nothing there yet)
    from respkd.plan import PLANS_DIR, resolve

    for path in sorted(PLANS_DIR.glob("*.yaml")):
        assert load_plan(str(path)).stages, path
    for name in ("mnist_table",):  # self-contained: it trains its own teacher
        assert resolve(load_plan(name), [], tmp_path / "runs")
    jobs = resolve(load_plan("hinton2015"), [], tmp_path / "runs")  # self-contained too, teacher included
    kinds = {type(j.stage).__name__ for j in jobs}
    assert kinds == {"RunStage", "BiasStage", "EnsembleEvalStage", "SweepStage"}
    assert not (tmp_path / "runs").exists()
    # the rows beyond the paper distil the main table's committed teacher in results/mnist
    views = resolve(load_plan("hinton2015_views"), [], Path("results/mnist"))
    teachers = {c.teacher.run for j in views for c in j.stage.configs if c.teacher is not None}
    assert "mnist-teacher-1200" in teachers and (Path("results/mnist/mnist-teacher-1200/model.safetensors")).is_file()


def test_response_family_plan_compares_the_losses_on_one_schedule(tmp_path):
    """Six stages per dataset (one plan each), 3 seeds each, teachers read from the committed checkpoints; within a
    dataset every run has the same student, data and schedule and only the kd section differs, but for the peak lr
    of DKD on MNIST (0.05, its authors' CIFAR lr: at 0.1 it diverged)."""
    from respkd.plan import resolve

    for plan, dataset, epochs in (("response_family", "mnist", 60), ("response_family_fashion", "fashion_mnist", 30)):
        jobs = resolve(load_plan(plan), [], tmp_path / "runs")
        runs = [c for j in jobs for c in j.stage.configs]
        assert len(jobs) == 6 and len(runs) == 18 and all(j.stage.seeds == [0, 1, 2] for j in jobs)
        assert {c.data.dataset for c in runs} == {dataset} and runs[0].train.epochs == epochs
        assert len({json.dumps(c.model_dump(mode="json", include={"data", "model", "train"},
                                            exclude={"train": {"lr"}})) for c in runs}) == 1, plan
        lrs = {c.kd.loss if c.kd else "hard": c.train.lr for c in runs}
        assert lrs.pop("dkd") == (0.05 if dataset == "mnist" else runs[0].train.lr) and len(set(lrs.values())) == 1
        kinds = [(c.kd.loss, c.kd.standardize) if c.kd else None for c in runs[::3]]
        assert kinds == [None, ("kd", False), ("kd", True), ("logit_mse", False), ("dkd", False), ("dist", False)]
        for c in runs:
            if c.teacher is not None:
                assert c.kd.cache and Path(c.teacher.checkpoint).is_file()  # committed weights
    assert not (tmp_path / "runs").exists()


def test_a_run_finished_before_new_config_keys_existed_still_counts_as_finished(tmp_path, idx_dir):
    # The summary of a run made by an older respkd lacks keys added since (data.val_size, data.transfer, the
    # teacher's ensemble keys); filled with their defaults it is the same config, so plans reuse the run.
    from respkd.rundir import is_finished

    cfg = validate_config(tiny_config("old", idx_dir, tmp_path))
    stored = json.loads(json.dumps(cfg.model_dump(mode="json")))
    for key in ("val_size", "val_seed", "transfer"):
        del stored["data"][key]
    write_yaml(tmp_path / "runs" / "old" / "x.yaml", {})
    (tmp_path / "runs" / "old" / "summary.json").write_text(json.dumps({"config": stored}))
    assert not is_finished(cfg, tmp_path / "runs")  # no weights yet
    (tmp_path / "runs" / "old" / "model.safetensors").write_bytes(b"")
    assert is_finished(cfg, tmp_path / "runs")
    changed = validate_config(tiny_config("old", idx_dir, tmp_path, data={"val_size": 10}))
    assert not is_finished(changed, tmp_path / "runs")
