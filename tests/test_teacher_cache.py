"""Teacher-output cache: keys, refusal of stale or damaged caches, equality with the online teacher, top-k, CLI."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from conftest import tiny_config, write_yaml
from respkd.cli import main
from respkd.config import TrainConfig, validate_config
from respkd.data.memory import BatchLoader
from respkd.distill import Distiller
from respkd.engine import build_optimizer, build_scheduler, train_one_epoch
from respkd.errors import RespkdError
from respkd.losses import logit_mse_loss, soft_target_loss
from respkd.models import build_model
from respkd.teacher_cache import (
    META_NAME, build_cache, cache_folder, cache_key, cache_spec, find_cache, open_cache, topk_to_logits,
)

IN_SHAPE = (1, 12, 12)
T = 4.0


def tiny_data(n: int = 96) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, *IN_SHAPE), dtype=torch.uint8, generator=g)
    return images, torch.randint(0, 10, (n,), generator=g)


def loader_for(jitter: int = 0, views: int | None = None, seed: int = 3, n: int = 96) -> BatchLoader:
    images, labels = tiny_data(n)
    return BatchLoader(images, labels, 32, (0.5,), (0.25,), shuffle=True, jitter=jitter, jitter_views=views,
                       drop_last=True, seed=seed)


def spec_for(loader: BatchLoader, **changes) -> dict:
    fields = dict(teacher_weights_sha256="w" * 64, teacher_response=None, dataset="mnist", data_sha256="d" * 64,
                  train_limit=None, n_train=len(loader.images), mean=(0.5,), std=(0.25,), loader=loader,
                  teacher_bf16=False, topk=None, temperature=T)
    fields.update(changes)
    return cache_spec(**fields)


def models() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(1)
    teacher = build_model("mlp", 10, IN_SHAPE, hidden=[48], dropout_hidden=0.5)  # dropout: must be off in the cache
    torch.manual_seed(2)
    student = build_model("mlp", 10, IN_SHAPE, hidden=[16])
    return teacher, student


def built(tmp_path: Path, loader: BatchLoader, **changes):
    teacher, student = models()
    distiller = Distiller(student, teacher, T)
    spec = spec_for(loader, **changes)
    return build_cache(tmp_path / "cache", spec, distiller.teacher_logits, loader, batch_size=40), spec, distiller


def test_key_changes_with_everything_that_determines_the_cache():
    base_loader = loader_for(jitter=1, views=2)
    base = cache_key(spec_for(base_loader))
    changed = {
        "teacher weights": spec_for(base_loader, teacher_weights_sha256="x" * 64),
        "teacher response": spec_for(base_loader, teacher_response="features"),
        "dataset digest": spec_for(base_loader, data_sha256="e" * 64),
        "train_limit": spec_for(base_loader, train_limit=50),
        "normalisation": spec_for(base_loader, mean=(0.4,)),
        "precision": spec_for(base_loader, teacher_bf16=True),
        "jitter views": spec_for(loader_for(jitter=1, views=3)),
        "jitter pixels": spec_for(loader_for(jitter=2, views=2)),
        "jitter seed": spec_for(loader_for(jitter=1, views=2, seed=4)),
        "top-k": spec_for(base_loader, topk=3),
    }
    keys = {what: cache_key(spec) for what, spec in changed.items()}
    assert all(k != base for k in keys.values()), [w for w, k in keys.items() if k == base]
    assert len(set(keys.values())) == len(keys)
    # T matters only for top-k caches (full logits serve every T); the seed only through the jitter.
    assert cache_key(spec_for(base_loader, temperature=8.0)) == base
    assert cache_key(spec_for(base_loader, topk=3, temperature=8.0)) != keys["top-k"]
    assert cache_key(spec_for(loader_for(seed=3))) == cache_key(spec_for(loader_for(seed=9)))


def test_jitter_without_fixed_views_cannot_be_cached():
    with pytest.raises(RespkdError, match="jitter_views"):
        spec_for(loader_for(jitter=1, views=None))


def test_meta_records_the_key_fields_and_the_folder_is_keyed(tmp_path):
    loader = loader_for(jitter=1, views=2)
    cache, spec, _ = built(tmp_path, loader)
    meta = json.loads((cache.folder / META_NAME).read_text())
    assert meta["spec"] == spec and meta["key"] == cache_key(spec)
    assert cache.folder == cache_folder(tmp_path / "cache", spec)
    assert meta["files"]["logits"]["shape"] == [2, len(loader.images), 10]
    assert np.load(cache.folder / "logits.npy", mmap_mode="r", allow_pickle=False).dtype == np.float16
    assert find_cache(tmp_path / "cache", spec) is not None
    assert find_cache(tmp_path / "cache", spec_for(loader, train_limit=10)) is None  # another key: not built yet
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_stale_cache_is_refused(tmp_path):
    loader = loader_for()
    cache, spec, _ = built(tmp_path, loader)
    other = spec_for(loader, teacher_weights_sha256="x" * 64)
    with pytest.raises(RespkdError, match=r"built for other inputs \(teacher_weights_sha256: .*stale cache"):
        open_cache(cache.folder, other)
    # The same through the folder name: a meta.json edited (or copied from another cache) is refused too.
    meta = json.loads((cache.folder / META_NAME).read_text())
    meta["spec"]["train_limit"] = 5
    (cache.folder / META_NAME).write_text(json.dumps(meta))
    with pytest.raises(RespkdError, match="train_limit: cached 5, needed null"):
        find_cache(tmp_path / "cache", spec)


@pytest.mark.parametrize("damage", ["truncate", "flip", "no-meta"])
def test_damaged_cache_is_refused(tmp_path, damage):
    cache, spec, _ = built(tmp_path, loader_for())
    path = cache.folder / "logits.npy"
    del cache  # close the memory map before touching the file
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) - 100])
        message = "truncated"
    elif damage == "flip":
        path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
        message = "checksum mismatch"
    else:
        (path.parent / META_NAME).unlink()
        message = "not a complete cache"
    with pytest.raises(RespkdError, match=message) as err:
        find_cache(tmp_path / "cache", spec)
    assert "\n" not in str(err.value) and "delete the folder" in str(err.value)


@pytest.mark.parametrize("jitter,views", [(0, None), (2, 3)])
def test_cached_and_online_losses_agree(tmp_path, jitter, views):
    loader = loader_for(jitter=jitter, views=views)
    cache, _, distiller = built(tmp_path, loader)
    lookup = cache.for_loader(loader)
    for epoch in (1, 2, 3, 4):  # with 3 views, epoch 4 reuses epoch 1's view
        loader.set_epoch(epoch)
        for inputs, labels, indices in loader:
            student_logits = distiller.student(inputs).detach()
            online = soft_target_loss(student_logits, distiller.teacher_logits(inputs), T)
            cached = soft_target_loss(student_logits, lookup(indices, epoch), T)
            torch.testing.assert_close(cached, online, rtol=2e-3, atol=1e-5)


def test_engine_with_cache_trains_like_the_online_teacher(tmp_path):
    """Same student init, same batches: the epoch's losses match within float16 rounding."""
    loader = loader_for(jitter=1, views=2)
    cache, _, _ = built(tmp_path, loader)
    cfg = TrainConfig(epochs=2, lr=0.05, schedule="constant", batch_size=32)
    results = []
    for use_cache in (False, True):
        teacher, student = models()
        distiller = Distiller(student, teacher, T)
        optimizer = build_optimizer(student, cfg)
        scheduler = build_scheduler(optimizer, cfg, len(loader))
        losses = []
        for epoch in (1, 2):
            loader.set_epoch(epoch)
            stats = train_one_epoch(distiller, loader, optimizer, scheduler=scheduler, epoch=epoch, progress=False,
                                    teacher_logits=cache.for_loader(loader) if use_cache else None)
            losses.append(stats["soft_loss"])
        results.append(losses)
    np.testing.assert_allclose(results[1], results[0], rtol=5e-3)


def test_topk_cache_keeps_the_top_probabilities_and_sums_to_one(tmp_path):
    k = 3
    loader = loader_for()
    cache, _, distiller = built(tmp_path, loader, topk=k)
    assert set(cache.arrays) == {"topk_probs", "topk_indices"}
    assert cache.arrays["topk_indices"].dtype == np.int16
    idx = torch.arange(len(loader.images))
    inputs, _, _ = loader.make_batch(idx)
    p_teacher = torch.softmax(distiller.teacher_logits(inputs) / T, dim=1)
    q = torch.softmax(cache.lookup(idx) / T, dim=1)  # what soft_target_loss makes of the cached "logits"
    torch.testing.assert_close(q.sum(1), torch.ones(len(idx)), rtol=0, atol=1e-5)
    top_p, top_i = p_teacher.topk(k, dim=1)
    torch.testing.assert_close(q.gather(1, top_i), top_p, rtol=2e-3, atol=1e-4)
    rest = q.scatter(1, top_i, 0.0)
    expected_rest = ((1 - top_p.sum(1, keepdim=True)) / (10 - k)).expand(-1, 10).scatter(1, top_i, 0.0)
    torch.testing.assert_close(rest, expected_rest, rtol=2e-3, atol=1e-4)


def test_topk_reconstruction_handles_rounding_above_one():
    probs = torch.tensor([[0.6, 0.41]], dtype=torch.float16)  # sums past 1 after rounding: no mass left
    logits = topk_to_logits(probs, torch.tensor([[2, 0]], dtype=torch.int16), 4, T)
    q = torch.softmax(logits / T, dim=1)
    assert torch.isfinite(logits).all()
    torch.testing.assert_close(q.sum(1), torch.ones(1))
    assert q[0, 1] < 1e-9 and q[0, 3] < 1e-9


def test_config_rules():
    base = {"name": "x", "model": {"name": "mlp"}, "train": {"epochs": 1, "lr": 0.1},
            "teacher": {"checkpoint": "t.safetensors"}, "kd": {"temperature": 4.0, "cache": True}}
    assert validate_config(base).kd.cache_dir == "data/teacher_cache"
    jitter = copy.deepcopy(base)
    jitter["data"] = {"jitter": 2}
    with pytest.raises(RespkdError, match="'kd.cache' with 'data.jitter' needs 'data.jitter_views'"):
        validate_config(jitter)
    jitter["data"]["jitter_views"] = 4
    assert validate_config(jitter).data.jitter_views == 4
    with pytest.raises(RespkdError, match="jitter_views' needs 'data.jitter'"):
        validate_config({**base, "data": {"jitter_views": 2}})
    with pytest.raises(RespkdError, match="cache_topk' needs 'cache: true'"):
        validate_config({**base, "kd": {"temperature": 4.0, "cache_topk": 3}})


def test_distill_with_cache_end_to_end(tmp_path, session_runs, idx_dir, capsys):
    teacher = session_runs["teacher_dir"] / "model.safetensors"
    cache_dir = tmp_path / "teacher_cache"
    runs = tmp_path / "runs"
    cfg = tiny_config("kd-cached", idx_dir, session_runs["data_root"], teacher={"checkpoint": str(teacher)},
                      kd={"temperature": 4.0, "cache": True, "cache_dir": str(cache_dir)},
                      data={"jitter": 1, "jitter_views": 2})
    path = write_yaml(tmp_path / "kd.yaml", cfg)
    assert main(["distill", str(path), "--runs-root", str(runs)]) == 0
    summary = json.loads((runs / "kd-cached" / "summary.json").read_text())
    info = summary["teacher_cache"]
    assert info["used"] and info["built_now"] and info["views"] == 2 and info["build_time_s"] >= 0
    assert summary["metrics"]["top1"] > 50  # the synthetic task is learnt from the cached teacher
    assert "building teacher cache" in (runs / "kd-cached" / "log.txt").read_text()

    assert main(["distill", str(path), "--runs-root", str(runs), "--force"]) == 0  # second run: reused
    summary = json.loads((runs / "kd-cached" / "summary.json").read_text())
    assert summary["teacher_cache"]["used"] and not summary["teacher_cache"]["built_now"]
    assert "reusing teacher cache" in (runs / "kd-cached" / "log.txt").read_text()

    # A damaged cache stops the run with one line, before the run directory is touched.
    (logits,) = list(cache_dir.glob("*/logits.npy"))
    logits.write_bytes(logits.read_bytes()[:-64])
    capsys.readouterr()
    assert main(["distill", str(write_yaml(tmp_path / "kd2.yaml", {**cfg, "name": "kd-damaged"})),
                 "--runs-root", str(runs)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("respkd: error: teacher cache") and "truncated" in err and "\n" not in err
    assert not (runs / "kd-damaged").exists()

    # Without a cache the summary says so.
    online = write_yaml(tmp_path / "kd3.yaml", tiny_config("kd-online", idx_dir, session_runs["data_root"],
                                                            teacher={"checkpoint": str(teacher)},
                                                            kd={"temperature": 4.0}))
    assert main(["distill", str(online), "--runs-root", str(runs)]) == 0
    assert json.loads((runs / "kd-online" / "summary.json").read_text())["teacher_cache"] == {"used": False}


def test_topk_cache_through_the_cli(tmp_path, session_runs, idx_dir, capsys):
    teacher = session_runs["teacher_dir"] / "model.safetensors"
    runs = tmp_path / "runs"

    def config(name: str, k: int) -> Path:
        return write_yaml(tmp_path / f"{name}.yaml", tiny_config(
            name, idx_dir, session_runs["data_root"], teacher={"checkpoint": str(teacher)},
            kd={"temperature": 4.0, "cache": True, "cache_topk": k, "cache_dir": str(tmp_path / "cache")}))

    assert main(["distill", str(config("kd-top3", 3)), "--runs-root", str(runs)]) == 0
    summary = json.loads((runs / "kd-top3" / "summary.json").read_text())
    assert summary["teacher_cache"]["topk"] == 3 and summary["metrics"]["top1"] > 50
    assert list((tmp_path / "cache").glob("*/topk_indices.npy"))
    capsys.readouterr()
    assert main(["distill", str(config("kd-top11", 11)), "--runs-root", str(runs)]) == 2
    assert "kd.cache_topk is 11 but mnist has only 10 classes" in capsys.readouterr().err
    assert not (runs / "kd-top11").exists()


def test_cache_refuses_a_loader_it_was_not_built_for(tmp_path):
    cache, _, _ = built(tmp_path, loader_for(jitter=1, views=2))
    with pytest.raises(ValueError, match="does not match the cache"):
        cache.for_loader(loader_for(jitter=1, views=3))


# ---------------------------------------------------------------- caches for the other response losses


def test_logit_matching_cache_keeps_the_row_maxima(tmp_path):
    """Full caches store each row shifted to a maximum of 0 (softmax ignores it); logit matching compares the logits
    themselves, so its cache also stores the maxima and hands back the teacher's own logits."""
    loader = loader_for(jitter=1, views=2)
    assert "row_max" not in spec_for(loader)  # caches of every other loss keep their keys
    assert cache_key(spec_for(loader, raw_logits=True)) != cache_key(spec_for(loader))
    with pytest.raises(ValueError, match="top-k cache holds probabilities"):
        spec_for(loader, topk=3, raw_logits=True)
    raw, _, distiller = built(tmp_path, loader, raw_logits=True)
    shifted, _, _ = built(tmp_path, loader)
    assert set(raw.arrays) == {"logits", "row_max"} and raw.arrays["row_max"].dtype == np.float32
    assert json.loads((raw.folder / META_NAME).read_text())["files"]["row_max"]["shape"] == [2, len(loader.images)]
    for view in (0, 1):
        idx = torch.arange(len(loader.images))
        inputs, _, _ = loader.make_batch(idx, loader.view_offsets(view))
        teacher = distiller.teacher_logits(inputs)
        torch.testing.assert_close(raw.lookup(idx, view), teacher, rtol=0, atol=2e-2)  # float16 steps below the max
        assert shifted.lookup(idx, view).amax(dim=1).abs().max() == 0  # the other caches' rows: maximum 0
        student = distiller.student(inputs).detach()
        online = logit_mse_loss(student, teacher)
        torch.testing.assert_close(logit_mse_loss(student, raw.lookup(idx, view)), online, rtol=2e-3, atol=1e-4)
        assert abs(logit_mse_loss(student, shifted.lookup(idx, view)) - online) > 1.0  # why the maxima are kept
    (raw.folder / "row_max.npy").unlink()
    with pytest.raises(RespkdError, match="row_max.npy is missing"):
        find_cache(tmp_path / "cache", spec_for(loader, raw_logits=True))


@pytest.mark.parametrize("kd", [
    {"loss": "logit_mse", "soft_weight": 0.1},  # a full cache with the row maxima; Kim et al.'s weight, 1 / C
    {"loss": "dkd", "cache_topk": 4, "dkd": {"warmup_epochs": 2}},  # top-k probabilities at T serve DKD
    {"loss": "dist", "standardize": True},
], ids=["logit_mse", "dkd-topk", "dist-standardized"])
def test_other_losses_distil_from_the_cache_through_the_cli(tmp_path, session_runs, idx_dir, kd):
    teacher = session_runs["teacher_dir"] / "model.safetensors"
    runs = tmp_path / "runs"
    cfg = tiny_config("other", idx_dir, session_runs["data_root"], teacher={"checkpoint": str(teacher)},
                      kd={"temperature": 4.0, "hard_weight": 0.5, "cache": True, "cache_dir": str(tmp_path / "c"), **kd})
    assert main(["distill", str(write_yaml(tmp_path / "kd.yaml", cfg)), "--runs-root", str(runs)]) == 0
    summary = json.loads((runs / "other" / "summary.json").read_text())
    assert summary["teacher_cache"]["used"] and summary["metrics"]["top1"] > 50
    (folder,) = (tmp_path / "c").iterdir()
    assert (folder / "row_max.npy").exists() == (kd["loss"] == "logit_mse")
    log = (runs / "other" / "log.txt").read_text()
    assert f"response loss: {kd['loss']}" in log
    terms = {"logit_mse": "mse_loss", "dkd": "tckd_loss", "dist": "intra_loss"}[kd["loss"]]
    assert terms in (runs / "other" / "metrics.jsonl").read_text()
