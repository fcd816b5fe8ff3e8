"""Device-resident batches (respkd.data.residency): the same batches and teacher outputs bitwise as the host-fed
path, nothing copied from the host per step (the ``meta`` device stands in for an accelerator: a copy to it is an
``aten._to_copy`` whose result is on another device), and ``data.device_resident`` as the run uses it."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from respkd.config import validate_config
from respkd.data import load_data, make_loader, select
from respkd.data.memory import BatchLoader
from respkd.data.residency import RESIDENT_SHARE, device_resident, resident_bytes
from respkd.experiment import run
from respkd.models import build_model
from respkd.teacher_cache import build_cache, cache_spec

from conftest import N_TEST, N_TRAIN, tiny_config

MEAN, STD = (0.1307,), (0.3081,)


def images_and_labels(n: int = 250) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=g), torch.randint(0, 10, (n,), generator=g)


def loader(resident: bool, device: str = "cpu") -> BatchLoader:
    images, labels = images_and_labels()
    return BatchLoader(images, labels, 64, MEAN, STD, shuffle=True, jitter=2, jitter_views=3, flip=True,
                       drop_last=True, seed=5, device=device, device_resident=resident)


def cache_of(kind: str, tmp_path, source: BatchLoader):
    """A cache of a random MLP teacher's outputs: full logits, full with row maxima, or top-3 probabilities."""
    torch.manual_seed(0)
    teacher = build_model("mlp", 10, (1, 28, 28), hidden=[16]).eval()
    spec = cache_spec(teacher_weights_sha256="test", teacher_response=None, dataset="mnist", data_sha256="test",
                      train_limit=None, n_train=len(source.images), mean=MEAN, std=STD, loader=source,
                      teacher_bf16=False, topk=3 if kind == "topk" else None, temperature=4.0,
                      raw_logits=kind == "row_max")
    return build_cache(tmp_path, spec, teacher, source)


@pytest.mark.parametrize("kind", ["full", "row_max", "topk"])
def test_resident_batches_and_cache_lookups_are_bitwise_the_host_fed_ones(tmp_path, kind):
    host, resident = loader(False), loader(True)
    cache = cache_of(kind, tmp_path, host)
    from_files, from_tensors = cache.for_loader(host), cache.for_loader(resident)
    batches = 0
    for epoch in (1, 2, 4):  # views 1, 2 and 1 again
        host.set_epoch(epoch)
        resident.set_epoch(epoch, skip=1)
        host_batches = iter(host)
        next(host_batches)  # the resident loader skipped it: skipping draws nothing
        for (x, y, i), (rx, ry, ri) in zip(host_batches, resident, strict=True):
            assert torch.equal(x, rx) and torch.equal(y, ry) and torch.equal(i, ri)
            assert torch.equal(from_files(i, epoch), from_tensors(ri, epoch))
            batches += 1
    assert batches == 3 * (250 // 64 - 1)


class CrossDeviceCopies(TorchDispatchMode):
    """Counts the copies whose result lies on another device than their source (host -> device transfers)."""

    def __init__(self) -> None:
        super().__init__()
        self.copies: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in (torch.ops.aten._to_copy.default, torch.ops.aten.copy_.default):
            source = args[1] if func is torch.ops.aten.copy_.default else args[0]
            if isinstance(out, torch.Tensor) and out.device != source.device:
                self.copies.append(f"{source.device} -> {out.device} {tuple(source.shape)}")
        return out


@pytest.mark.parametrize("resident", [True, False])
def test_a_resident_step_copies_nothing_from_the_host(tmp_path, resident):
    """On a stand-in device, each host-fed step copies its pixels, labels and cache rows there; a resident step,
    whose epoch's order and jitter were moved there once, copies nothing."""
    batches = loader(resident, device="meta")
    cache = cache_of("full", tmp_path, loader(False))
    lookup = cache.for_loader(batches, "meta")
    if resident:
        assert batches.images.device.type == batches.labels.device.type == "meta"
    batches.set_epoch(1)
    epoch = iter(batches)
    steps, copies = [], CrossDeviceCopies()
    with copies:
        first = next(epoch)  # the epoch's set-up: its order, offsets and flips go to the device once
    steps.append(copies.copies)
    for _ in range(2):
        with CrossDeviceCopies() as copies:
            x, y, idx = next(epoch)
            teacher = lookup(idx, 1)
        steps.append(copies.copies)
        assert x.device.type == y.device.type == teacher.device.type == "meta"
        assert idx.device.type == ("meta" if resident else "cpu")
    assert first[0].shape == (64, 1, 28, 28)
    if resident:
        assert len(steps[0]) == 3 and steps[1:] == [[], []]  # order, offsets, flips: once an epoch
    else:  # pixels, labels and teacher rows, every step
        assert all(len(s) == 3 and all(c.startswith("cpu -> meta") for c in s) for s in steps[1:]), steps


def test_the_resident_cache_reads_no_file_while_training(tmp_path):
    cache = cache_of("full", tmp_path, loader(False))
    lookup = cache.for_loader(loader(True))

    class Closed:
        def __getitem__(self, key):
            raise AssertionError("a lookup read the memory-mapped file")

    cache.arrays["logits"] = Closed()
    assert lookup(torch.tensor([0, 7, 3]), 1).shape == (3, 10)


def tiny(tmp_path, idx_dir, **data) -> dict:
    return tiny_config("resident", idx_dir, tmp_path / "data", data=data)


def test_resident_bytes_counts_images_labels_and_the_cache(tmp_path, idx_dir):
    cfg = validate_config(tiny(tmp_path, idx_dir, jitter=1, jitter_views=4))
    data = select(load_data(cfg.data), cfg)
    pixels_and_labels = (N_TRAIN + N_TEST) * (28 * 28 + 8)
    assert resident_bytes(data, cfg) == pixels_and_labels
    cached = validate_config({**tiny(tmp_path, idx_dir, jitter=1, jitter_views=4), "teacher": {"checkpoint": "t"},
                              "kd": {"temperature": 4.0, "cache": True}})
    assert resident_bytes(data, cached) == pixels_and_labels + 4 * N_TRAIN * (2 * 10 + 4)


@pytest.mark.parametrize("setting,device,memory,expected", [
    (True, "cpu", None, True), (False, "cpu", None, False), (None, "cpu", None, False),
    (None, "cuda", 10**9, True), (None, "cuda", 2 * (N_TRAIN + N_TEST) * (28 * 28 + 8) - 1, False),
    (False, "cuda", 10**9, False),
])
def test_device_resident_follows_the_setting_or_what_fits(tmp_path, idx_dir, monkeypatch, setting, device, memory,
                                                          expected):
    cfg = validate_config(tiny(tmp_path, idx_dir, device_resident=setting))
    data = select(load_data(cfg.data), cfg)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: SimpleNamespace(total_memory=memory))
    assert RESIDENT_SHARE == 0.5
    assert device_resident(data, cfg, torch.device(device)) is expected
    if device == "cpu":
        assert make_loader(data, "train", cfg, "cpu").device_resident is expected
        assert make_loader(data, "test", cfg, "cpu").device_resident is expected


def test_a_resident_run_is_bitwise_the_host_fed_run(tmp_path, idx_dir, session_runs):
    """Cached distillation over jittered views: weights and metrics identical, and the run says where its
    batches were made."""
    teacher = str(session_runs["teacher_dir"] / "model.safetensors")
    runs = {}
    for resident in (None, True):
        cfg = tiny_config("resident-kd", idx_dir, tmp_path / "data", threads=1,
                          data={"jitter": 1, "jitter_views": 2, "device_resident": resident},
                          teacher={"checkpoint": teacher},
                          kd={"temperature": 4.0, "hard_weight": 0.5, "cache": True,
                              "cache_dir": str(tmp_path / "cache")})
        run(validate_config(cfg), tmp_path / str(resident), quiet=True)
        runs[resident] = tmp_path / str(resident) / "resident-kd"
    from safetensors.torch import load_file

    a, b = load_file(runs[None] / "model.safetensors"), load_file(runs[True] / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    def metrics(path):
        return [{k: v for k, v in json.loads(line).items() if k != "epoch_time_s"}
                for line in (path / "metrics.jsonl").read_text().splitlines()]

    assert metrics(runs[None]) == metrics(runs[True])
    summaries = {k: json.loads((p / "summary.json").read_text()) for k, p in runs.items()}
    assert summaries[None]["device_resident"] is False and summaries[True]["device_resident"] is True
    assert summaries[True]["teacher_cache"]["used"]
    log = (runs[True] / "log.txt").read_text()
    assert "batches: device-resident on cpu (images, labels and teacher cache copied there once)" in log
    assert "batches:" not in (runs[None] / "log.txt").read_text()
