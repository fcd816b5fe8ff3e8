"""Bias adjustment: the output layer found and shifted exactly, the search on constructed logits (positive and
negative optima, ties), the grid, and `respkd adjust-bias` end to end: search on the validation split only (a
different test set does not change the chosen shift), before/after on the test set, --out, and user errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from conftest import N_TEST, tiny_config, write_idx, write_yaml
from respkd.bias import adjust_bias, output_layer, search_shift, shift_bias, shift_grid
from respkd.checkpoint import load_checkpoint, read_checkpoint_meta
from respkd.cli import main
from respkd.errors import RespkdError
from respkd.models import build_model

IN_SHAPE = (1, 4, 4)


# ---------------------------------------------------------------- the layer and the shift


def test_output_layer_is_the_last_called_linear_not_the_last_registered():
    model = build_model("mlp", 10, IN_SHAPE, hidden=[8, 6])  # MLP registers `classifier` before `features`
    assert output_layer(model, IN_SHAPE) is model.classifier


@pytest.mark.parametrize("shift", [3.5, -7.6])
def test_shift_changes_exactly_those_biases(shift):
    torch.manual_seed(0)
    model = build_model("mlp", 10, IN_SHAPE, hidden=[8])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(5, *IN_SHAPE)
    logits = model(x).detach()
    shift_bias(output_layer(model, IN_SHAPE), [7, 8], shift)
    after = model.state_dict()
    for key in before:
        if key != "classifier.bias":
            assert torch.equal(before[key], after[key]), key
    delta = after["classifier.bias"] - before["classifier.bias"]
    expected = torch.zeros(10)
    expected[[7, 8]] = shift
    torch.testing.assert_close(delta, expected)
    expected_logits = logits.clone()
    expected_logits[:, [7, 8]] += shift
    torch.testing.assert_close(model(x).detach(), expected_logits)  # the logits move by exactly the shift


def test_models_without_an_adjustable_output_bias_are_refused():
    no_bias = build_model("mlp", 10, IN_SHAPE, hidden=[8])
    no_bias.classifier = nn.Linear(8, 10, bias=False)
    with pytest.raises(RespkdError, match="has no bias"):
        output_layer(no_bias, IN_SHAPE)
    with pytest.raises(RespkdError, match="not its last linear layer's output"):
        output_layer(nn.Sequential(nn.Flatten(), nn.Linear(16, 10), nn.Tanh()), IN_SHAPE)
    with pytest.raises(RespkdError, match="no nn.Linear"):
        output_layer(nn.Sequential(nn.Conv2d(1, 10, 4), nn.Flatten()), IN_SHAPE)


# ---------------------------------------------------------------- the search


def constructed(n: int = 50):
    """Logits where class 3 needs a shift in (3, 4): 3s score 3 below the best other class, and the others' class-3
    logit is 4 below their true class. Like the paper's student that never saw a 3 (raise 3 by 3.5)."""
    logits, labels = [], []
    for i in range(n):
        y = i % 10
        z = torch.zeros(10)
        if y == 3:
            z[3], z[(i // 10) % 9 + (1 if (i // 10) % 9 >= 3 else 0)] = 2.0, 5.0
        else:
            z[y], z[3] = 5.0, 1.0
        logits.append(z)
        labels.append(y)
    return torch.stack(logits), torch.tensor(labels)


def test_search_finds_the_known_optimum():
    logits, labels = constructed()
    grid = shift_grid(-15, 15, 0.1)
    shift, correct = search_shift(logits, labels, [3], grid)
    assert shift == pytest.approx(3.5)  # the middle of the plateau (3, 4)
    assert max(correct) == len(labels)
    assert correct[int(np.argmin(np.abs(grid)))] == len(labels) - 5  # unshifted: every 3 wrong


def test_search_finds_a_negative_optimum():
    # the paper's "only 7s and 8s" student: 7 and 8 score far too high; lowering them by 7 to 9 fixes the rest
    labels = torch.arange(40) % 10
    logits = torch.zeros(40, 10)
    logits[torch.arange(40), labels] = 2.0
    others = (labels != 7) & (labels != 8)
    logits[others, 7] = 9.0  # others need shift < -7
    logits[labels == 7, 7], logits[labels == 8, 8] = 11.0, 11.0
    logits[(labels == 7) | (labels == 8), 0] = 2.0  # 7s and 8s need shift > -9 (to stay above class 0's 2)
    shift, correct = search_shift(logits, labels, [7, 8], shift_grid(-15, 15, 0.1))
    assert shift == pytest.approx(-8.0) and max(correct) == 40


def test_ties_pick_the_middle_of_the_longest_run_then_the_nearest_to_zero():
    labels = torch.tensor([0, 1])
    logits = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # any shift in (-1, 1) keeps both right: grid -3..3 step 0.5 -> best run -0.5..0.5, middle 0
    shift, _ = search_shift(logits, labels, [1], shift_grid(-3, 3, 0.5))
    assert shift == 0.0


def test_grid():
    grid = shift_grid(-15, 15, 0.1)
    assert len(grid) == 301 and grid[0] == -15 and grid[-1] == 15
    assert 0.0 in grid and 3.5 in grid and -7.6 in grid
    for args, message in [((1, -1, 0.1), "low < high"), ((-1, 1, 0), "step must be > 0"), ((-1e6, 1e6, 1e-3), "too fine")]:
        with pytest.raises(RespkdError, match=message):
            shift_grid(*args)


# ---------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def no3_student(tmp_path_factory, idx_dir, session_runs) -> Path:
    """A student distilled on a transfer set without 3s, with a 100-example validation split."""
    base = tmp_path_factory.mktemp("bias")
    cfg = write_yaml(base / "no3.yaml", tiny_config(
        "no3", idx_dir, session_runs["data_root"], model={"name": "mlp", "hidden": [16]},
        data={"val_size": 100, "transfer": {"drop_classes": [3]}},
        teacher={"checkpoint": str(session_runs["teacher_dir"] / "model.safetensors")}, kd={"temperature": 4.0}))
    assert main(["distill", str(cfg), "--runs-root", str(base / "runs")]) == 0
    return base / "runs" / "no3" / "model.safetensors"


def test_adjust_bias_cli_fixed_shift_and_out(no3_student, tmp_path, capsys):
    source_bytes = no3_student.read_bytes()
    out = tmp_path / "adjusted.safetensors"
    capsys.readouterr()
    assert main(["adjust-bias", str(no3_student), "--classes", "3", "--shift", "-2.5", "--json", "--out", str(out)]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["shift"] == -2.5 and r["classes"] == [3] and not r["searched"] and "search" not in r
    for when in ("before", "after"):
        m = r[when]
        assert m["n"] == N_TEST and sum(m["errors_per_class"]) == m["errors"]
        assert m["class_errors"] == m["errors_per_class"][3] and m["class_n"] == m["n_per_class"][3]
    assert r["after"]["class_errors"] >= r["before"]["class_errors"]  # lowering the bias of 3 cannot help 3s
    assert no3_student.read_bytes() == source_bytes  # the input is never written
    old, _ = load_checkpoint(no3_student)
    new, meta = load_checkpoint(out)
    delta = new["classifier.bias"] - old["classifier.bias"]
    assert delta[3] == pytest.approx(-2.5) and torch.count_nonzero(delta) == 1
    assert all(torch.equal(old[k], new[k]) for k in old if k != "classifier.bias")
    assert meta["bias_adjustment"]["shift"] == -2.5 and meta["bias_adjustment"]["classes"] == [3]
    assert meta["bias_adjustment"]["source_weights_sha256"] == read_checkpoint_meta(no3_student)["weights_sha256"]
    assert meta["metrics"]["errors"] == r["after"]["errors"]
    assert main(["eval", str(out), "--json"]) == 0  # the adjusted checkpoint is an ordinary checkpoint
    assert json.loads(capsys.readouterr().out)["errors"] == r["after"]["errors"]
    # text output
    assert main(["adjust-bias", str(no3_student), "--classes", "3", "--shift", "1"]) == 0
    text = capsys.readouterr().out
    assert "shifted by +1" in text and "errors on class(es) 3" in text


def test_search_uses_the_validation_split_never_the_test_set(no3_student, idx_dir, tmp_path):
    # The same training files with other test labels: the search (and its curve) must not change; the test metrics do.
    scrambled = tmp_path / "scrambled"
    shutil.copytree(idx_dir, scrambled)
    from respkd.data.idx import read_idx

    labels = read_idx(idx_dir / "t10k-labels-idx1-ubyte.gz")
    (scrambled / "t10k-labels-idx1-ubyte.gz").unlink()
    write_idx(scrambled / "t10k-labels-idx1-ubyte", ((labels.astype(np.int64) + 3) % 10).astype(np.uint8))
    a = adjust_bias(no3_student, [3], search=True)
    b = adjust_bias(no3_student, [3], search=True, data_path=str(scrambled))
    assert a["search"]["split"] == "validation" and a["search"]["n"] == 100
    assert a["shift"] == b["shift"] and a["search"]["val_correct"] == b["search"]["val_correct"]
    assert a["before"]["errors_per_class"] != b["before"]["errors_per_class"]
    grid = a["search"]["grid"]
    assert grid[0] == -15 and grid[-1] == 15 and min(grid) < 0 < max(grid)
    assert a["search"]["val_errors_at_best"] <= a["search"]["val_errors_at_nearest_to_zero"]


def test_adjust_bias_user_errors(no3_student, session_runs, tmp_path, capsys):
    teacher = session_runs["teacher_dir"] / "model.safetensors"  # trained without a validation split
    cases = [
        ([str(teacher), "--classes", "3", "--search"], "val_size"),
        ([str(no3_student), "--classes", "3", "--shift", "1", "--out", str(no3_student)], "is the input checkpoint"),
        ([str(no3_student), "--classes", "3", "--shift", "1", "--out", str(teacher)], "already exists"),
        ([str(no3_student), "--classes", "10", "--shift", "1"], "class 10 does not exist"),
        ([str(no3_student), "--classes", "3,3", "--shift", "1"], "repeats"),
        ([str(no3_student), "--classes", "3", "--search", "--range", "2", "1"], "low < high"),
        ([str(tmp_path / "missing.safetensors"), "--classes", "3", "--shift", "1"], "does not exist"),
    ]
    for argv, message in cases:
        capsys.readouterr()
        assert main(["adjust-bias", *argv]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("respkd: error: ") and message in err and "\n" not in err, (argv, err)
    with pytest.raises(SystemExit) as info:  # argparse: --shift and --search are exclusive, one is required
        main(["adjust-bias", str(no3_student), "--classes", "3", "--shift", "1", "--search"])
    assert info.value.code == 2
