"""Transfer sets and the validation split: drop/keep/fraction (stratified, seeded), a hold-out taken before the
filter and unaffected by it, config rules, and a run's summary and teacher-cache key."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import N_TRAIN, tiny_config, write_yaml
from respkd.cli import main
from respkd.config import DataConfig, validate_config
from respkd.data import select
from respkd.data.datasets import load_dataset
from respkd.data.transfer import select_training, stratified_take
from respkd.errors import RespkdError

LABELS = torch.arange(1000) % 10  # 100 of each class
UNEVEN = torch.cat([torch.full((n,), c) for c, n in enumerate([50, 150, 100, 100, 100, 100, 100, 100, 100, 100])])


def data(**kw) -> DataConfig:
    return DataConfig(**kw)


def per_class(labels: torch.Tensor) -> list[int]:
    return torch.bincount(labels, minlength=10).tolist()


# ---------------------------------------------------------------- stratified draws


def test_stratified_take_is_proportional_exact_and_seeded():
    idx = stratified_take(UNEVEN, 100, seed=0)
    assert len(idx) == 100 and len(set(idx.tolist())) == 100 and torch.equal(idx, idx.sort().values)
    assert per_class(UNEVEN[idx]) == [5, 15] + [10] * 8
    assert torch.equal(idx, stratified_take(UNEVEN, 100, seed=0))
    assert not torch.equal(idx, stratified_take(UNEVEN, 100, seed=1))
    # largest remainder: 7 of 1000 evenly split leaves remainders 0.7 for every class: the lowest classes get them
    assert per_class(LABELS[stratified_take(LABELS, 7, 0)]) == [1] * 7 + [0] * 3
    assert len(stratified_take(LABELS, 0, 0)) == 0


# ---------------------------------------------------------------- filters


def test_drop_keep_and_fraction():
    sel = select_training(LABELS, 10, data(transfer={"drop_classes": [3]}))
    assert per_class(LABELS[sel.train])[3] == 0 and len(sel.train) == 900 and len(sel.val) == 0
    sel = select_training(LABELS, 10, data(transfer={"keep_classes": [7, 8]}))
    assert set(LABELS[sel.train].tolist()) == {7, 8} and len(sel.train) == 200
    sel = select_training(LABELS, 10, data(transfer={"fraction": 0.03}))
    assert per_class(LABELS[sel.train]) == [3] * 10  # stratified: 3% of every class
    same = select_training(LABELS, 10, data(transfer={"fraction": 0.03}))
    other = select_training(LABELS, 10, data(transfer={"fraction": 0.03, "seed": 1}))
    assert torch.equal(sel.train, same.train) and not torch.equal(sel.train, other.train)
    # class filter first, then the fraction of what is left
    sel = select_training(LABELS, 10, data(transfer={"keep_classes": [1, 2], "fraction": 0.5}))
    assert per_class(LABELS[sel.train])[1:3] == [50, 50] and len(sel.train) == 100


def test_no_selection_is_the_whole_training_set():
    sel = select_training(LABELS, 10, data())
    assert not sel.active and torch.equal(sel.train, torch.arange(1000)) and len(sel.val) == 0


def test_validation_split_is_disjoint_and_the_same_whatever_the_filter():
    filters = [{}, {"drop_classes": [3]}, {"keep_classes": [7, 8]}, {"fraction": 0.1}, {"fraction": 0.1, "seed": 5}]
    sels = [select_training(UNEVEN, 10, data(val_size=100, transfer=f)) for f in filters]
    for sel in sels:
        assert len(sel.val) == 100 and torch.equal(sel.val, sels[0].val)
        assert not set(sel.val.tolist()) & set(sel.train.tolist())
    assert per_class(UNEVEN[sels[0].val]) == [5, 15] + [10] * 8  # stratified
    assert len(sels[0].train) == len(UNEVEN) - 100  # without a filter: everything but the hold-out
    assert 3 in UNEVEN[sels[1].val].tolist()  # the dropped class is still validated on (what bias search needs)
    other_seed = select_training(UNEVEN, 10, data(val_size=100, val_seed=1))
    assert not torch.equal(other_seed.val, sels[0].val)


@pytest.mark.parametrize("kw,message", [
    ({"transfer": {"drop_classes": [10]}}, "class 10 does not exist"),
    ({"transfer": {"keep_classes": [12]}}, "class 12 does not exist"),
    ({"val_size": 1000}, "val_size is 1000 but the training set has only 1000"),
    ({"transfer": {"fraction": 0.0001}}, "leaves none"),
    ({"transfer": {"drop_classes": list(range(10))}}, "transfer set is empty"),
])
def test_selection_errors(kw, message):
    with pytest.raises(RespkdError, match=message):
        select_training(LABELS, 10, data(**kw))


def test_config_rules():
    base = {"name": "x", "model": {"name": "mlp"}, "train": {"epochs": 1, "lr": 0.1}}
    bad = [
        ({"transfer": {"drop_classes": [3], "keep_classes": [7]}}, "'drop_classes' or 'keep_classes', not both"),
        ({"transfer": {"drop_classes": [3, 3]}}, "lists a class twice"),
        ({"transfer": {"keep_classes": [-1]}}, "negative class"),
        ({"transfer": {"keep_classes": []}}, "at least 1"),
        ({"transfer": {"fraction": 1.5}}, "less than or equal to 1"),
        ({"transfer": {"fracton": 0.5}}, "did you mean 'fraction'"),
        ({"val_size": -1}, "data.val_size"),
        ({"valsize": 10}, "did you mean 'val_size'"),
    ]
    for section, message in bad:
        with pytest.raises(RespkdError, match=message):
            validate_config({**base, "data": section})


# ---------------------------------------------------------------- in a run


def test_select_on_the_dataset_keeps_the_test_set(idx_dir, tmp_path):
    full = load_dataset("mnist", tmp_path, idx_dir)
    cfg = validate_config(tiny_config("x", idx_dir, tmp_path, data={"val_size": 100, "train_limit": 500,
                                                                     "transfer": {"drop_classes": [3]}}))
    s = select(full, cfg)
    assert len(s.val_labels) == 100 and 3 not in s.train_labels.tolist()
    assert torch.equal(s.test_labels, full.test_labels) and torch.equal(s.test_images, full.test_images)
    assert torch.equal(s.train_images, full.train_images[:500][s.train_index])
    assert int(s.train_index.max()) < 500  # train_limit first


def test_run_records_per_class_counts_and_the_cache_key_pins_the_selection(tmp_path, idx_dir, session_runs, capsys):
    runs, cache_dir = tmp_path / "runs", tmp_path / "cache"
    teacher = str(session_runs["teacher_dir"] / "model.safetensors")

    def cfg(name: str, transfer: dict) -> str:
        return str(write_yaml(tmp_path / f"{name}.yaml", tiny_config(
            name, idx_dir, session_runs["data_root"], model={"name": "mlp", "hidden": [8]}, train={"epochs": 1},
            data={"val_size": 60, "transfer": transfer}, teacher={"checkpoint": teacher},
            kd={"temperature": 3.0, "cache": True, "cache_dir": str(cache_dir)})))

    assert main(["distill", cfg("no3", {"drop_classes": [3]}), "--runs-root", str(runs)]) == 0
    s = json.loads((runs / "no3" / "summary.json").read_text())
    assert s["n_train_per_class"][3] == 0 and sum(s["n_train_per_class"]) == s["n_train"]
    assert s["n_val"] == 60 and s["n_train"] == N_TRAIN - 60 - (N_TRAIN // 10 - 6)
    assert s["val_metrics"]["n"] == 60
    assert s["config"]["data"]["transfer"]["drop_classes"] == [3]
    assert "without classes [3]" in (runs / "no3" / "log.txt").read_text()
    assert main(["distill", cfg("only78", {"keep_classes": [7, 8]}), "--runs-root", str(runs)]) == 0
    s78 = json.loads((runs / "only78" / "summary.json").read_text())
    assert [c for c, n in enumerate(s78["n_train_per_class"]) if n] == [7, 8]
    # two transfer sets from one teacher: two caches, each keyed by the examples it holds
    metas = [json.loads(p.read_text())["spec"] for p in cache_dir.glob("*/meta.json")]
    assert len(metas) == 2 and len({m["train_selection_sha256"] for m in metas}) == 2
    assert main(["distill", cfg("no3-again", {"drop_classes": [3]}), "--runs-root", str(runs)]) == 0
    assert json.loads((runs / "no3-again" / "summary.json").read_text())["teacher_cache"]["built_now"] is False
