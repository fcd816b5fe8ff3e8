"""What only a GPU can prove, and the CPU side of scripts/gpu_check.sh.

The tests marked ``gpu`` run on CUDA and are skipped without it; scripts/gpu_check.sh runs them on the GPU machine
(``pytest -m gpu tests/test_gpu.py``). ``RESPKD_GPU_TESTS_DEVICE=cpu`` runs the same tests on the CPU instead (gloo
in place of NCCL): what ``gpu_check.sh --device cpu --tiny`` does, so their code is exercised without a GPU too.
The unmarked tests run scripts/gpu_check.sh itself on the CPU at tiny sizes: its plan, every part, and the report
of a part that fails.
"""

from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file

from respkd import distributed
from respkd.compilation import compile_unavailable
from respkd.config import TrainConfig, validate_config
from respkd.data.memory import BatchLoader
from respkd.distill import Distiller, Supervised
from respkd.engine import autocast, build_optimizer, build_scheduler, train_one_epoch
from respkd.errors import RespkdError
from respkd.experiment import run
from respkd.losses import distillation_loss
from respkd.models import build_model
from respkd.teacher_cache import build_cache, cache_spec

from conftest import tiny_config
from crash_hooks import SimulatedCrash, install

ROOT = Path(__file__).resolve().parents[1]
DEVICE = os.environ.get("RESPKD_GPU_TESTS_DEVICE", "cuda")
MNIST_SHAPE, MEAN, STD = (1, 28, 28), (0.1307,), (0.3081,)


def gpu(test):
    """Mark a test ``gpu``: it runs on CUDA (or on RESPKD_GPU_TESTS_DEVICE) and is skipped where there is none."""
    missing = DEVICE == "cuda" and not torch.cuda.is_available()
    return pytest.mark.gpu(pytest.mark.skipif(missing, reason="needs CUDA")(test))


def device() -> torch.device:
    return torch.device(DEVICE, 0) if DEVICE == "cuda" else torch.device(DEVICE)


def mlp(hidden: list[int], seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("mlp", 10, MNIST_SHAPE, hidden=hidden).to(device())


def random_images(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, *MNIST_SHAPE), dtype=torch.uint8, generator=g), torch.randint(0, 10, (n,), generator=g)


# ------------------------------------------------------------------------------------------------ on the GPU


@gpu
def test_bf16_autocast_runs_the_models_in_bf16_and_the_kd_loss_in_float32():
    dev = device()
    task = Distiller(mlp([64], 0), mlp([128], 1), temperature=4.0, hard_weight=0.5)
    x = torch.randn(32, *MNIST_SHAPE, device=dev)
    y = torch.randint(0, 10, (32,), device=dev)
    with autocast(dev, True):
        out = task(x, y)
        teacher_logits = task.teacher_logits(x)
    assert out["logits"].dtype == torch.bfloat16 and teacher_logits.dtype == torch.bfloat16  # the products ran in bf16
    assert out["loss"].dtype == torch.float32
    # the loss is the float32 formula applied to the bf16 logits, not a bf16 computation of it
    expected = distillation_loss(out["logits"].float(), teacher_logits.float(), y, 4.0, 1.0, 0.5)["loss"]
    torch.testing.assert_close(out["loss"], expected, rtol=1e-6, atol=0.0)
    out["loss"].backward()
    grads = [p.grad for p in task.student.parameters()]
    assert all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("resident", [True, False])
@gpu
def test_teacher_cache_built_and_read_on_the_gpu(tmp_path, resident):
    """Device-resident (the cache read onto the GPU, indexed there) and host-fed (memory-mapped rows copied)."""
    dev = device()
    images, labels = random_images(300)
    loader = BatchLoader(images, labels, 64, MEAN, STD, shuffle=True, jitter=1, jitter_views=2, drop_last=True,
                         device=dev, device_resident=resident)
    task = Distiller(mlp([32], 0), mlp([64], 1), temperature=4.0)
    spec = cache_spec(teacher_weights_sha256="test", teacher_response=None, dataset="mnist", data_sha256="test",
                      train_limit=None, n_train=len(images), mean=MEAN, std=STD, loader=loader, teacher_bf16=False)
    lookup = build_cache(tmp_path, spec, task.teacher_logits, loader).for_loader(loader, dev)
    batches = 0
    for epoch in (1, 2):  # two epochs: two jitter views
        loader.set_epoch(epoch)
        for x, _, idx in loader:
            got = lookup(idx, epoch)
            assert got.device == x.device and got.dtype == torch.float32
            assert idx.device == (x.device if resident else torch.device("cpu"))
            online = task.teacher_logits(x)
            # stored as float16 rows shifted so each maximum is 0 (the same softmax at every T)
            torch.testing.assert_close(got, online - online.amax(1, keepdim=True), rtol=0.0, atol=1e-2)
            batches += 1
    assert batches == 2 * (300 // 64)


@gpu
def test_killed_run_resumed_on_the_gpu_is_bitwise_identical(tmp_path, idx_dir, monkeypatch):
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    cfg = validate_config(tiny_config(
        "gpu-resume", idx_dir, tmp_path / "data", device=DEVICE,
        model={"name": "mlp", "hidden": [64], "dropout_input": 0.2, "dropout_hidden": 0.5},
        data={"device_resident": True},
        train={"epochs": 2, "batch_size": 100, "checkpoint_every_steps": 4, "precision": "bf16"}))
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)  # an op without a deterministic kernel warns
    try:
        run(cfg, tmp_path / "reference", quiet=True)
        with monkeypatch.context() as patch, pytest.raises(SimulatedCrash):
            install("step:7", patch.setattr)  # epoch 2's first step; the state of step 6 (epoch 1's end) is kept
            run(cfg, tmp_path / "resumed", quiet=True)
        run(cfg, tmp_path / "resumed", quiet=True, resume=True)
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
    reference, resumed = tmp_path / "reference" / "gpu-resume", tmp_path / "resumed" / "gpu-resume"
    a, b = load_file(reference / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    def metrics(run_dir: Path) -> list[dict]:
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in row.items() if k != "epoch_time_s"} for row in rows]

    assert metrics(resumed) == metrics(reference) and len(metrics(reference)) == 2
    assert json.loads((resumed / "summary.json").read_text())["resumes"] == [{"epoch": 2, "batch": 0, "step": 6}]


@gpu
def test_compiled_distillation_matches_eager(tmp_path, idx_dir, session_runs):
    """train.compile with inductor (Triton kernels on CUDA, C++ on the CPU), online teacher compiled too: the same
    losses as the eager run within float32 rounding of fused kernels."""
    reason = compile_unavailable(device())
    if reason is not None:
        pytest.skip(f"torch.compile is not available here: {reason}")
    losses, summary = {}, {}
    for compiled in (False, True):
        cfg = validate_config(tiny_config(
            f"compiled-{compiled}", idx_dir, tmp_path / "data", device=DEVICE, data={"device_resident": True},
            teacher={"checkpoint": str(session_runs["teacher_dir"] / "model.safetensors")},
            kd={"temperature": 4.0, "hard_weight": 0.5}, train={"compile": compiled}))
        summary[compiled] = run(cfg, tmp_path / "runs", quiet=True)
        lines = (tmp_path / "runs" / cfg.name / "metrics.jsonl").read_text().splitlines()
        losses[compiled] = [json.loads(line)["loss"] for line in lines]
    assert summary[True]["compiled"] and summary[True]["device_resident"]
    assert losses[True] == pytest.approx(losses[False], rel=1e-3)


@gpu
def test_channels_last_cnn_trains_on_the_gpu_as_the_contiguous_one_does():
    dev = device()
    images, labels = random_images(256)
    cfg = TrainConfig(epochs=1, batch_size=64, optimizer="adamw", lr=1e-3, schedule="constant")
    stats, models = {}, {}
    for channels_last in (True, False):
        torch.manual_seed(0)
        model = build_model("cnn", 10, MNIST_SHAPE, channels=[8, 16])
        model = model.to(dev, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        loader = BatchLoader(images, labels, 64, MEAN, STD, shuffle=True, drop_last=True, device=dev,
                             channels_last=channels_last)
        optimizer = build_optimizer(model, cfg)
        stats[channels_last] = train_one_epoch(Supervised(model), model, loader, optimizer,
                                               build_scheduler(optimizer, cfg, len(loader)), dev, True, 1,
                                               progress=False)
        models[channels_last] = model
    # the second convolution's weights (8 input channels, so the layout is unambiguous) stayed channels-last
    conv = [m for m in models[True].modules() if isinstance(m, torch.nn.Conv2d)][1]
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    # the same training up to bf16 rounding: the layout changes the kernels, not the arithmetic's result
    assert abs(stats[True]["hard_loss"] - stats[False]["hard_loss"]) < 0.02 * stats[False]["hard_loss"]
    for p, q in zip(models[True].parameters(), models[False].parameters()):
        torch.testing.assert_close(p, q, rtol=0.05, atol=0.02)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@gpu
def test_nccl_process_group_in_one_process(monkeypatch):
    """respkd's torchrun path on one GPU: the group joined (NCCL on CUDA), its collectives, and DDP's step."""
    dev = device()
    for key, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "RANK": "0", "WORLD_SIZE": "1",
                       "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(key, value)
    # torchrun with one process is a plain run for respkd (launch() is None); pretend to be process 0 of a group.
    monkeypatch.setattr(distributed, "launch", lambda: distributed.Launch(0, 1, 0))

    def in_the_group() -> None:
        distributed.setup(dev)
        assert dist.get_backend() == ("nccl" if dev.type == "cuda" else "gloo")
        values = torch.arange(4.0, device=dev)
        assert torch.equal(distributed.all_reduce_sum(values), values)
        assert torch.equal(distributed.all_reduce_mean(values), values)
        with pytest.raises(RespkdError, match="checked in every process"):
            with distributed.together():
                raise RespkdError("checked in every process")
        student = mlp([32], 0)
        alone = copy.deepcopy(student)
        task = Supervised(student)
        distributed.wrap_student(task, student, dev)
        assert isinstance(task.student, torch.nn.parallel.DistributedDataParallel)
        x, y = torch.randn(16, *MNIST_SHAPE, device=dev), torch.randint(0, 10, (16,), device=dev)
        task(x, y)["loss"].backward()
        Supervised(alone)(x, y)["loss"].backward()
        for p, q in zip(student.parameters(), alone.parameters()):
            torch.testing.assert_close(p.grad, q.grad)

    try:
        in_the_group()  # its DDP wrapper is freed on return, before the group is destroyed
    finally:
        distributed.cleanup()
    assert not distributed.is_initialized()


# --------------------------------------------------------------------- scripts/gpu_check.sh, on the CPU


def gpu_check(*args: str, out: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable}
    env.pop("OUT", None)
    return subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), *args, "--out", str(out)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=timeout)


PARTS = ["data", "tests", "resume", "torchrun", "speed_mlp", "speed_cnn"]


def test_gpu_check_dry_run_prints_the_plan_and_writes_nothing(tmp_path):
    proc = gpu_check("--dry-run", out=tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    planned = [line.split(" (at most")[0] for line in proc.stdout.splitlines() if " (at most " in line]
    assert planned == PARTS
    assert f"python: {sys.executable}" in proc.stdout
    assert "--device cuda" in proc.stdout and "--nproc_per_node 1" in proc.stdout
    assert not (tmp_path / "out").exists()


def test_gpu_check_on_the_cpu_runs_every_part_and_names_the_one_that_failed(tmp_path):
    out = tmp_path / "out"
    proc = gpu_check("--device", "cpu", "--tiny", "--break", "speed_cnn", out=out)
    assert proc.returncode == 1, proc.stdout + proc.stderr  # a part failed: the check says so in its status
    report = json.loads((out / "gpu_check.json").read_text())
    status = {p["name"]: p["status"] for p in report["parts"]}
    assert list(status) == PARTS
    assert all(status[name] == "ok" for name in PARTS[:-1]), report["parts"]
    assert status["speed_cnn"].startswith("failed")
    results = {p["name"]: p["result"] for p in report["parts"]}
    assert "broken on purpose" in results["speed_cnn"]
    assert "passed" in results["tests"]  # the gpu tests, run on the CPU here
    assert results["resume"] == "deterministic: bitwise identical, same metrics"
    assert results["torchrun"].startswith("finished: 1 process, test errors")
    text = (out / "gpu_check.md").read_text()
    assert "Failed parts: speed_cnn." in text
    assert sum(line.startswith(f"| {name} |") for line in text.splitlines() for name in PARTS) == len(PARTS)
    speed_rows = [line.split(" | ")[0][2:] for line in text.split("## One epoch per method")[1].splitlines()
                  if line.startswith("| ") and "---" not in line][1:]
    assert speed_rows[:2] == ["student", "cached"]
    assert "===== speed_cnn" in (out / "gpu_check.log").read_text()
    # what comes back from the GPU machine: at most 8 plain files, no folders
    files = sorted(p.name for p in out.iterdir())
    assert files == ["gpu_check.json", "gpu_check.log", "gpu_check.md", "kd_speed_gpu_mlp.json",
                     "kd_speed_gpu_mlp.md"]
