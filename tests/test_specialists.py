"""Specialists: subsets found on synthetic predictions with known blocks (the correlation rule recovers them, the raw
covariance does not), sizes and overlaps, the dustbin label mapping, batches and logit correction checked against
closed forms, the specialist's output layer, the KL combination against its closed form, and a tiny end-to-end run
with two worker processes in which one specialist fails and the others' results survive."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch

from conftest import N_TEST, snapshot, tiny_config, write_yaml
from respkd.cli import main
from respkd.data.memory import BatchLoader
from respkd.errors import RespkdError
from respkd.locks import FolderLock
from respkd.models import build_model
from respkd.specialists.combine import active_specialists, combine, membership
from respkd.specialists.config import SubsetsConfig, load_specialists_config
from respkd.specialists.model import (MappedGeneralist, SubsetBatches, dustbin_correction, label_map, mapped_logits,
                                      shift_dustbin, specialist_from_generalist)
from respkd.specialists.subsets import class_matrix, find_subsets

BLOCKS = [[0, 1, 2], [3, 4], [5, 6, 7], [8, 9]]


def block_probabilities(seed: int = 0, n: int = 2000) -> np.ndarray:
    """Predictions that spread their mass within one block of classes per example; classes 0, 3 and 7 get most of
    their block's mass, so their probabilities vary far more than the others' (a dominant covariance diagonal)."""
    rng = np.random.default_rng(seed)
    scale = np.array([8, 1, 1, 8, 1, 1, 1, 8, 1, 1], float)
    probs = np.zeros((n, 10))
    for i in range(n):
        block = BLOCKS[rng.integers(len(BLOCKS))]
        w = rng.dirichlet(np.full(len(block), 0.5)) * scale[block]
        p = np.full(10, 0.03 / (10 - len(block)))
        p[block] = 0.97 * w / w.sum()
        p += rng.uniform(0, 1e-3, 10)
        probs[i] = p / p.sum()
    return probs


# ---------------------------------------------------------------- subsets


def test_correlation_recovers_known_blocks_where_raw_covariance_does_not():
    probs = block_probabilities()
    cfg = SubsetsConfig(count=4, min_size=1)
    assert find_subsets(class_matrix(probs, "correlation"), cfg)["subsets"] == BLOCKS
    covariance = find_subsets(class_matrix(probs, "covariance"), cfg)["subsets"]
    assert covariance != BLOCKS and any(len(s) == 1 for s in covariance)  # the diagonal splits off classes 0, 3, 7
    assert SubsetsConfig(count=4).rule == "correlation"  # the default


def test_matrices_of_each_rule():
    probs = block_probabilities(n=300)
    cov = class_matrix(probs, "covariance")
    np.testing.assert_allclose(cov, np.cov(probs, rowvar=False))
    zero = class_matrix(probs, "zero_diagonal")
    np.testing.assert_allclose(zero, cov - np.diag(np.diag(cov)))
    corr = class_matrix(probs, "correlation")
    np.testing.assert_allclose(corr, np.corrcoef(probs, rowvar=False), atol=1e-12)
    constant = probs.copy()
    constant[:, 9] = 0.0  # a class never predicted: no variance, no correlation
    corr = class_matrix(constant, "correlation")
    assert corr[9, 9] == 1.0 and not corr[9, :9].any() and np.isfinite(corr).all()


def test_sizes_partners_and_refusals():
    matrix = class_matrix(block_probabilities(), "correlation")
    capped = find_subsets(matrix, SubsetsConfig(count=2, max_size=3, min_size=1))
    assert all(len(s) <= 3 for s in capped["subsets"])
    assert sorted(c for s in capped["subsets"] for c in s) == list(range(10))  # still a partition
    overlapping = find_subsets(matrix, SubsetsConfig(count=4, partners=1, max_size=4, min_size=1))
    assert all(len(s) <= 4 for s in overlapping["subsets"])
    for block in BLOCKS:
        assert any(set(block) < set(s) for s in overlapping["subsets"])  # each block grew by a partner
    assert max(overlapping["covered_by"]) >= 2  # overlapping subsets: some class covered twice
    dropped = find_subsets(matrix, SubsetsConfig(count=4, min_size=3))
    assert dropped["subsets"] == [[0, 1, 2], [5, 6, 7]] and dropped["covered_by"][3] == 0
    with pytest.raises(RespkdError, match="only 10 classes"):
        find_subsets(matrix, SubsetsConfig(count=11))
    with pytest.raises(RespkdError, match="covers every class"):
        find_subsets(matrix, SubsetsConfig(count=1))
    with pytest.raises(RespkdError, match="min_size"):
        find_subsets(matrix, SubsetsConfig(count=4, min_size=4))


# ---------------------------------------------------------------- one specialist


def test_label_map_and_subset_batches():
    assert label_map([2, 5], 6).tolist() == [2, 2, 0, 2, 2, 1]
    labels = torch.tensor([0] * 30 + [1] * 10 + [c for c in range(2, 10) for _ in range(20)])
    images = torch.zeros(len(labels), 1, 4, 4, dtype=torch.uint8)
    mapping = label_map([0, 1], 10)
    base = BatchLoader(images, mapping[labels], 8, (0.0,), (1.0,), shuffle=True, seed=3)
    inside = torch.isin(labels, torch.tensor([0, 1]))
    batches = SubsetBatches(base, inside, 8, 0.5)
    assert (batches.n_in, batches.n_out, len(batches)) == (4, 4, 10)
    for epoch in (1, 2):
        batches.set_epoch(epoch)
        seen = []
        for x, y, idx in batches:
            assert x.shape == (8, 1, 4, 4)
            assert inside[idx[:4]].all() and not inside[idx[4:]].any()
            assert torch.equal(y, mapping[labels[idx]]) and (y[4:] == 2).all()
            seen += idx[:4].tolist()
        assert sorted(seen) == inside.nonzero().flatten().tolist()  # every subset example once per epoch


def test_dustbin_correction_restores_the_true_frequencies():
    # 30 + 10 examples of the subset {0, 1}, 160 of the rest; batches of 4 + 4. A model that learnt the training
    # batches' frequencies exactly (its logits are their logs) is corrected to the real ones.
    n0, n1, rest, b_in, b_out = 30, 10, 160, 4, 4
    train_freq = torch.tensor([b_in / 8 * n0 / 40, b_in / 8 * n1 / 40, b_out / 8])
    logits = train_freq.log()
    shift = dustbin_correction(n0 + n1, rest, b_in, b_out)
    assert shift == pytest.approx(math.log(rest / 40))  # the dustbin's odds were under-sampled 4-fold
    logits[-1] += shift
    torch.testing.assert_close(torch.softmax(logits, 0), torch.tensor([n0, n1, rest]) / 200.0)


def test_mapped_generalist_targets_sum_the_other_classes():
    torch.manual_seed(0)
    z = torch.randn(5, 10) * 3
    for t in (1.0, 4.0):
        p = torch.softmax(z / t, 1)
        mapped = torch.softmax(mapped_logits(z, [2, 7], t) / t, 1)
        expected = torch.stack([p[:, 2], p[:, 7], p.sum(1) - p[:, 2] - p[:, 7]], 1)
        torch.testing.assert_close(mapped, expected)
    lowered = MappedGeneralist(lambda x: x, [2, 7], 1.0, correction=0.7)(z)  # a plain function stands in for a net
    torch.testing.assert_close(lowered[:, -1], mapped_logits(z, [2, 7])[:, -1] - 0.7)


def test_specialist_output_layer_copies_the_subset_rows():
    torch.manual_seed(0)
    in_shape = (1, 4, 4)
    generalist = build_model("mlp", 10, in_shape, hidden=[8]).eval()
    with torch.no_grad():  # the other classes share one row: then the dustbin row is exact
        generalist.classifier.weight[[0, 1, 3, 4, 6, 8, 9]] = generalist.classifier.weight[0].clone()
        generalist.classifier.bias[[0, 1, 3, 4, 6, 8, 9]] = 0.3
    subset = [2, 5, 7]
    specialist = specialist_from_generalist(generalist, {"name": "mlp", "hidden": [8]}, in_shape, subset).eval()
    x = torch.randn(6, *in_shape)
    with torch.no_grad():
        g, s = generalist(x), specialist(x)
        torch.testing.assert_close(s[:, :3], g[:, subset])
        torch.testing.assert_close(torch.softmax(s, 1), torch.softmax(mapped_logits(g, subset), 1))
        shift_dustbin(specialist, in_shape, 1.5)
        torch.testing.assert_close(specialist(x)[:, -1], s[:, -1] + 1.5)
        torch.testing.assert_close(specialist(x)[:, :3], s[:, :3])


# ---------------------------------------------------------------- the KL combination


def test_combination_with_an_all_class_specialist_is_the_arithmetic_mean():
    torch.manual_seed(0)
    a = torch.softmax(torch.randn(64, 10) * 3, 1)
    b = torch.softmax(torch.randn(64, 10) * 3, 1)
    specialist = torch.cat([b, torch.zeros(64, 1)], 1)  # subset: every class, so its dustbin holds nothing
    result = combine(a, [specialist], [list(range(10))])
    assert result.active.all()
    torch.testing.assert_close(result.probs, (a + b) / 2, atol=2e-6, rtol=0)


def test_combination_agrees_with_a_consistent_specialist_and_keeps_inactive_rows_exactly():
    torch.manual_seed(1)
    p_g = torch.softmax(torch.randn(40, 10) * 2, 1)
    subsets = [[0, 1, 2], [5, 6]]
    consistent = [torch.softmax(mapped_logits(p_g.log(), s), 1) for s in subsets]
    result = combine(p_g, consistent, subsets)
    torch.testing.assert_close(result.probs, p_g, atol=2e-6, rtol=0)  # nothing to disagree about

    other = [torch.softmax(torch.randn(40, len(s) + 1), 1) for s in subsets]
    result = combine(p_g, other, subsets, top_n=1)
    top = p_g.argmax(1)
    expected_active = torch.stack([torch.isin(top, torch.tensor(s)) for s in subsets], 1)
    assert torch.equal(result.active, expected_active)
    idle = ~expected_active.any(1)
    assert idle.any() and (~idle).any()
    assert torch.equal(result.probs[idle], p_g[idle])  # bit for bit the generalist's answer
    assert not torch.allclose(result.probs[~idle], p_g[~idle])
    torch.testing.assert_close(result.probs.sum(1), torch.ones(40))
    assert active_specialists(p_g, membership(subsets, 10), top_n=10).all()


# ---------------------------------------------------------------- end to end


def specialists_yaml(tmp_path, runs_generalist: str, **sections) -> dict:
    cfg = {
        "name": "tiny-specialists",
        "generalist": {"run": runs_generalist},
        "subsets": {"count": 2, "max_size": 5, "min_size": 1, "n_init": 2},
        "specialist": {"subset_fraction": 0.5, "soft_targets": {"temperature": 2.0},
                       "train": {"epochs": 1, "batch_size": 32, "optimizer": "sgd", "lr": 0.05,
                                 "schedule": "constant", "precision": "fp32"}},
        "combine": {"steps": 100},
    }
    cfg.update(sections)
    return cfg


@pytest.fixture(scope="module")
def generalist_run(tmp_path_factory, idx_dir):
    base = tmp_path_factory.mktemp("generalist")
    runs, data = base / "runs", base / "data"
    cfg = write_yaml(base / "generalist.yaml", tiny_config("tiny-generalist", idx_dir, data, data={"val_size": 100}))
    assert main(["train", str(cfg), "--runs-root", str(runs)]) == 0
    return runs


def test_parallel_training_survives_a_failed_specialist_and_resumes(tmp_path, generalist_run, capsys):
    import shutil

    runs = tmp_path / "runs"
    shutil.copytree(generalist_run, runs)
    config = write_yaml(tmp_path / "spec.yaml", specialists_yaml(tmp_path, "tiny-generalist"))
    out = runs / "tiny-specialists"
    out.mkdir()
    (out / "specialist-1").write_text("in the way")  # specialist 1 cannot be written: its process fails
    assert main(["specialists", "train", str(config), "--runs-root", str(runs), "--workers", "2"]) == 2
    err = capsys.readouterr().err
    assert "specialists failed (1)" in err and "\n" not in err.strip()
    record = json.loads((out / "subsets.json").read_text())
    n = len(record["subsets"])
    assert n >= 2 and (out / "subsets.png").stat().st_size > 1000
    finished = [k for k in range(n) if (out / f"specialist-{k}" / "summary.json").is_file()]
    assert finished == [k for k in range(n) if k != 1]  # the others finished despite the failure
    assert "is not a directory" in (out / "worker-1.log").read_text()
    kept = {k: (out / f"specialist-{k}" / "model.safetensors").stat().st_mtime_ns for k in finished}

    (out / "specialist-1").unlink()
    assert main(["specialists", "train", str(config), "--runs-root", str(runs), "--workers", "2"]) == 0
    assert "already finished" in capsys.readouterr().out
    assert {k: (out / f"specialist-{k}" / "model.safetensors").stat().st_mtime_ns for k in finished} == kept
    s1 = json.loads((out / "specialist-1" / "summary.json").read_text())
    assert s1["subset"] == record["subsets"][1] and s1["threads"] == max(1, len(os.sched_getaffinity(0)) // 2)
    assert not list(out.glob(".specialist-*"))  # no partial directory left behind
    timings = [json.loads(l) for l in (out / "timings.jsonl").read_text().splitlines()]
    assert [t["trained"] for t in timings] == [n, 1] and timings[0]["workers"] == 2

    assert main(["specialists", "eval", str(config), "--runs-root", str(runs), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["overall"]["n"] == N_TEST and result["subsets"] == record["subsets"]
    assert sum(r["n"] for r in result["by_covering"]) == N_TEST
    assert result["covered"]["n"] == N_TEST  # min_size 1: every class has a specialist
    assert result["compute"]["specialist_examples_seen"] > 0
    assert (out / "eval.json").is_file() and "| generalist |" in (out / "specialists.md").read_text()
    assert main(["specialists", "table", str(out), str(out)]) == 0
    assert "mean ± standard deviation" in capsys.readouterr().out

    # a specialist finished before a config key existed (its stored spec lacks the key) is still finished
    summary_path = out / "specialist-0" / "summary.json"
    summary = json.loads(summary_path.read_text())
    del summary["spec"]["specialist"]["train"]["checkpoint_every_steps"]
    summary_path.write_text(json.dumps(summary))

    # --only K retrains nothing that is finished, and names a K that does not exist
    before = snapshot(out / "specialist-0")
    assert main(["specialists", "train", str(config), "--runs-root", str(runs), "--only", "0"]) == 0
    assert snapshot(out / "specialist-0") == before
    assert main(["specialists", "train", str(config), "--runs-root", str(runs), "--only", str(n)]) == 2
    assert f"there are {n} specialists" in capsys.readouterr().err


def test_fresh_wider_specialist_with_hard_labels_alone(tmp_path, generalist_run, capsys):
    import shutil

    runs = tmp_path / "runs"
    shutil.copytree(generalist_run, runs)
    raw = specialists_yaml(tmp_path, "tiny-generalist")
    raw["specialist"] = {**raw["specialist"], "model": {"name": "mlp", "hidden": [48]}, "soft_targets": None}
    config = write_yaml(tmp_path / "spec.yaml", raw)
    assert main(["specialists", "subsets", str(config), "--runs-root", str(runs)]) == 0
    assert "specialist 0:" in capsys.readouterr().out
    held = FolderLock(runs / "tiny-specialists" / ".specialist-0.lock", "specialist 0")  # as its trainer holds it
    held.acquire()
    try:
        assert main(["specialists", "train", str(config), "--runs-root", str(runs), "--only", "0"]) == 2
        assert f"specialist 0 of 'tiny-specialists' is in use by process {os.getpid()}" in capsys.readouterr().err
    finally:
        held.release()
    assert main(["specialists", "train", str(config), "--runs-root", str(runs), "--only", "0"]) == 0
    summary = json.loads((runs / "tiny-specialists" / "specialist-0" / "summary.json").read_text())
    assert summary["params"] == 784 * 48 + 48 + 48 * (len(summary["subset"]) + 1) + len(summary["subset"]) + 1
    assert summary["dustbin_correction"] == pytest.approx(
        dustbin_correction(summary["n_subset"], summary["n_other"], 16, 16))
    assert main(["specialists", "eval", str(config), "--runs-root", str(runs)]) == 2  # the others are not trained
    assert "not finished" in capsys.readouterr().err


def test_user_errors_are_one_line_and_write_nothing(tmp_path, idx_dir, session_runs, capsys):
    runs = session_runs["runs_root"]
    before = snapshot(runs)
    bad = write_yaml(tmp_path / "typo.yaml", {**specialists_yaml(tmp_path, "tiny-teacher"), "subset": {}})
    assert main(["specialists", "train", str(bad), "--runs-root", str(runs)]) == 2
    assert "unknown key 'subset' (did you mean 'subsets'?)" in capsys.readouterr().err
    no_val = write_yaml(tmp_path / "noval.yaml", specialists_yaml(tmp_path, "tiny-teacher"))  # trained without val_size
    assert main(["specialists", "train", str(no_val), "--runs-root", str(runs), "--workers", "2"]) == 2
    assert "data.val_size 0" in capsys.readouterr().err
    missing = write_yaml(tmp_path / "missing.yaml", specialists_yaml(tmp_path, "no-such-run"))
    assert main(["specialists", "eval", str(missing), "--runs-root", str(runs)]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(RespkdError, match="'specialist.subset_fraction'"):
        load_specialists_config(no_val, ["specialist.subset_fraction=1.5"])
    assert snapshot(runs) == before


def test_plan_stage_trains_evaluates_reports_and_resumes(tmp_path, idx_dir, capsys):
    gen = write_yaml(tmp_path / "gen.yaml", tiny_config("plan-generalist", idx_dir, tmp_path / "data",
                                                        data={"val_size": 100}))
    raw = specialists_yaml(tmp_path, "plan-generalist")
    raw["subsets"] = {"count": 2, "min_size": 1, "n_init": 2}  # exactly two specialists
    spec = write_yaml(tmp_path / "spec.yaml", raw)
    plan = write_yaml(tmp_path / "plan.yaml", {
        "title": "tiny specialists", "runs_root": str(tmp_path / "runs"),
        "stages": [{"config": str(gen)},
                   {"kind": "specialists", "config": str(spec), "workers": 2, "set": {"name": "plan-specialists"},
                    "paper": {"combined_top1": 26.1}}]})
    assert main(["reproduce", str(plan)]) == 0
    out = capsys.readouterr().out
    assert "| plan-specialists | combined_top1 |" in out and "26.10 |" in out
    assert "### Specialists: plan-specialists" in out and "| generalist |" in out
    folder = tmp_path / "runs" / "plan-specialists"
    assert json.loads((folder / "eval.json").read_text())["overall"]["n"] == N_TEST
    before = snapshot(folder)
    assert main(["reproduce", str(plan)]) == 0
    assert "evaluation up to date, skipped" in capsys.readouterr().out
    after = snapshot(folder)
    assert {k: v for k, v in after.items() if k != "timings.jsonl"} == \
           {k: v for k, v in before.items() if k != "timings.jsonl"}
    from respkd.specialists.results import eval_up_to_date

    named = ["name=plan-specialists"]
    assert eval_up_to_date(load_specialists_config(spec, named), tmp_path / "runs")
    assert not eval_up_to_date(load_specialists_config(spec, [*named, "combine.top_n=2"]), tmp_path / "runs")


def test_shipped_specialists_configs_and_plan_validate(tmp_path):
    from respkd.config import load_config
    from respkd.plan import load_plan, resolve

    gen = load_config("configs/fashion_mnist/generalist_cnn.yaml")
    assert gen.data.val_size > 0 and gen.model.name == "cnn"
    build_model(gen.model.name, 10, (1, 28, 28), **gen.model.options())
    cfg = load_specialists_config("configs/fashion_mnist/specialists.yaml")
    assert cfg.generalist.run == gen.name and cfg.subsets.rule == "correlation"
    jobs = resolve(load_plan("specialists_fashion"), [], tmp_path / "runs")
    assert [j.needs for j in jobs[1:4]] == [[f"{gen.name}-seed{k}"] for k in range(3)]  # specialists of each seed
    assert [j.needs for j in jobs[4:]] == [[f"{gen.name}-seed{k}"] for k in range(3)]  # its compute-matched control
    control = load_config("configs/fashion_mnist/generalist_cnn_control.yaml")
    assert (control.model, control.data) == (gen.model, gen.data) and control.init.run == gen.name
    assert not (tmp_path / "runs").exists()


def test_control_table_compares_per_run_and_gives_the_one_sd_verdict(tmp_path, capsys):
    """`specialists table --control`: per-run differences and the verdict, against hand-computed numbers."""
    folders, controls = [], []
    for k, (gen, comb, ctrl) in enumerate([(90.0, 90.5, 90.1), (90.2, 90.9, 90.3), (90.4, 91.0, 90.5)]):
        folder = tmp_path / f"spec-seed{k}"
        folder.mkdir()
        part = {"n": 100, "generalist_correct": 0, "combined_correct": 0, "generalist_top1": gen, "combined_top1": comb}
        (folder / "eval.json").write_text(json.dumps({
            "overall": part, "covered": part, "active": part, "subsets": [[0, 1]], "by_covering": [],
            "dataset": "mnist", "rule": "correlation", "subset_names": [["0", "1"]], "combine": {"top_n": 1},
            "compute": {"generalist_epochs_equivalent": 8.0}}))
        run = tmp_path / f"control-seed{k}"
        run.mkdir()
        (run / "summary.json").write_text(json.dumps({"metrics": {"top1": ctrl}, "epochs": 11}))
        folders.append(str(folder))
        controls.append(str(run))
    assert main(["specialists", "table", *folders, "--control", *controls]) == 0
    out = capsys.readouterr().out
    # differences +0.40, +0.60, +0.50: mean +0.50 > max(sd 0.26 of 90.5/90.9/91.0, sd 0.20 of 90.1/90.3/90.5)
    assert "| specialists minus control | 0.50 ± 0.10 | +0.40, +0.60, +0.50 |" in out
    assert "are above the control by more than one standard deviation" in out and "standard deviation 0.26)" in out
    assert "The control trained 11 more epochs" in out
    assert main(["specialists", "table", *folders, "--control", *controls[:2]]) == 2
    assert "2 control run(s) for 3 specialists run(s)" in capsys.readouterr().err
    (tmp_path / "control-seed2" / "summary.json").write_text(json.dumps({"name": "not a run"}))
    assert main(["specialists", "table", *folders, "--control", *controls]) == 2
    assert capsys.readouterr().err.count("\n") == 1  # one line, no traceback
