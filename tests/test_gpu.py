"""What only a GPU can prove, and the CPU side of scripts/gpu_check.sh.

The tests marked ``gpu`` run on CUDA and are skipped without it; scripts/gpu_check.sh runs them on the GPU machine
(``pytest -m gpu tests/test_gpu.py``). ``RESPKD_GPU_TESTS_DEVICE=cpu`` runs the same tests on the CPU instead (gloo
in place of NCCL, inductor's C++ kernels in place of Triton's): what ``gpu_check.sh --device cpu --tiny`` does.
The unmarked tests check scripts/gpu_check.sh on the CPU: its plan on a GPU, its driver (parts that fail, time out,
need a failed part or exceed the budget, the report and the speed table, with stand-in parts that take
milliseconds) and its kill-and-resume part for real at tiny sizes; the benchmark it runs has tests of its own
(tests/test_kd_speed.py).
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
import yaml
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

sys.path.insert(0, str(ROOT / "scripts"))
import gpu_check  # noqa: E402

PARTS = ["data", "tests", "resume", "torchrun", "speed_mlp", "speed_cnn"]


def test_gpu_check_dry_run_prints_the_plan_and_writes_nothing(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable}
    env.pop("OUT", None)
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--dry-run", "--out", str(tmp_path / "out")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    planned = [line.split(" (at most")[0] for line in proc.stdout.splitlines() if " (at most " in line]
    assert planned == PARTS
    assert f"python: {sys.executable}" in proc.stdout
    assert "--device cuda" in proc.stdout and "--nproc_per_node 1" in proc.stdout
    assert not (tmp_path / "out").exists()


def setting(tmp_path, device: str = "cuda", tiny: bool = False) -> gpu_check.Setting:
    return gpu_check.Setting(sys.executable, device, tiny, tmp_path / "out", tmp_path / "work", tmp_path / "data")


def test_the_plan_on_a_gpu(tmp_path):
    parts, notes = gpu_check.plan(setting(tmp_path))
    by_name = {p.name: p for p in parts}
    assert list(by_name) == PARTS
    assert sum(p.cap_s for p in parts[1:4]) < gpu_check.BUDGET_S  # the checks before the benchmarks always fit
    tests = by_name["tests"]
    assert tests.command[-6:-4] == [str(ROOT / "tests" / "test_gpu.py"), "-q"] and ["-m", "gpu"] == tests.command[3:5]
    assert tests.env == {"RESPKD_GPU_TESTS_DEVICE": "cuda"}
    resume = by_name["resume"].command
    assert resume[resume.index("--crash-step") + 1] == "110" and resume[resume.index("--device") + 1] == "cuda"
    assert by_name["resume"].needs == by_name["torchrun"].needs == ("data",)
    for name in ("speed_mlp", "speed_cnn"):  # both feeds (the default) and torchdistill's box, on the GPU
        command = by_name[name].command
        assert "--feeds" not in command and "torchdistill" in command and command[command.index("--device") + 1] == "cuda"
    assert "--synthetic" not in by_name["speed_mlp"].command
    if not gpu_check.fashion_mnist_found(tmp_path / "data"):
        assert "--synthetic" in by_name["speed_cnn"].command and "synthetic images" in notes[0]
    config = yaml.safe_load((tmp_path / "work" / "resume.yaml").read_text())
    assert config["device"] == "cuda" and config["train"]["checkpoint_every_steps"] == 25


def fake_part(name: str, code: str, cap: int = 30, needs: tuple[str, ...] = ()) -> gpu_check.Part:
    return gpu_check.Part(name, f"what {name} is", cap, [sys.executable, "-c", code], summarize=gpu_check.last_line,
                          needs=needs)


def test_the_check_runs_every_part_and_reports_what_failed(tmp_path, monkeypatch):
    """A part that fails, one that runs out of time (killed), one that needs a failed part (not run), one broken
    on purpose (--break): each is reported, the others still run, and the exit status is 1."""
    parts = [fake_part("data", "print('mnist ok')"), fake_part("tests", "print('3 passed'); raise SystemExit('boom')"),
             fake_part("slow", "import time; print('started', flush=True); time.sleep(60)", cap=1),
             fake_part("after", "print('ran')", needs=("tests",)), fake_part("broken", "print('fine')"),
             fake_part("last", "print('done')", needs=("data",))]
    monkeypatch.setattr(gpu_check, "plan", lambda s: (parts, ["A note for the report."]))
    out = tmp_path / "out"
    assert gpu_check.main(["--device", "cpu", "--tiny", "--out", str(out), "--break", "broken"]) == 1
    report = json.loads((out / "gpu_check.json").read_text())
    status = {p["name"]: (p["status"], p["result"]) for p in report["parts"]}
    assert status == {
        "data": ("ok", "mnist ok"), "tests": ("failed (exit status 1)", "boom"),
        "slow": ("failed (timed out after 1 s)", "started"), "after": ("not run (tests failed)", ""),
        "broken": ("failed (exit status 1)", "broken broken on purpose (--break)"),
        "last": ("ok", "done")}
    assert report["device"]["device"] == "cpu" and report["notes"] == ["A note for the report."]
    text = (out / "gpu_check.md").read_text()
    assert text.startswith("# GPU check: CPU (tiny sizes: a test of this script, not a measurement)")
    assert "Failed parts: tests, slow, after, broken." in text and "A note for the report." in text
    assert "| tests | what tests is | failed (exit status 1) |" in text
    assert "No speed figures: both speed parts failed." in text
    assert "===== slow" in (out / "gpu_check.log").read_text()
    # what comes back from the GPU machine: plain files, no folders
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.json", "gpu_check.log", "gpu_check.md"]


def test_parts_past_the_budget_are_not_run(tmp_path, monkeypatch):
    parts = [fake_part("first", "import time; time.sleep(1.2)"), fake_part("second", "print('too late')")]
    monkeypatch.setattr(gpu_check, "plan", lambda s: (parts, []))
    assert gpu_check.main(["--device", "cpu", "--tiny", "--out", str(tmp_path), "--budget", "5.5"]) == 1
    status = [p["status"] for p in json.loads((tmp_path / "gpu_check.json").read_text())["parts"]]
    assert status == ["ok", "not run (out of time)"]  # 4.3 s were left: under the 5 s a part needs


def test_the_summaries_and_the_speed_table(tmp_path):
    modes = [{"mode": "deterministic", "bitwise": True, "max_abs_diff": 0.0, "metrics_equal": True},
             {"mode": "default", "bitwise": False, "max_abs_diff": 1.5e-7, "metrics_equal": False}]
    output = "noise\n" + gpu_check.REPLY + json.dumps({"modes": modes}) + "\n"
    assert gpu_check.summarize_resume(output) == \
        "deterministic: bitwise identical, same metrics; default: max |diff| 1.5e-07, metrics differ"
    run_dir = tmp_path / "run"
    assert gpu_check.summarize_torchrun(run_dir) == "no summary.json"
    run_dir.mkdir()
    (run_dir / "summary.json").write_text(json.dumps({"processes": 1, "metrics": {"errors": 3, "n": 200},
                                                      "seconds_per_epoch": 0.5}))
    assert gpu_check.summarize_torchrun(run_dir) == "finished: 1 process, test errors 3/200, 0.5 s/epoch"

    def row(median):
        return {"method": "m", "bf16": False, "median_s": median, "min_s": median / 2, "max_s": median * 2}

    results = {"student": row(1.0), "student-host": row(1.5), "cached": row(1.02),
               "torchdistill-w0": {"method": "torchdistill", "bf16": False, "skipped": "not installed"},
               "online-bf16": {"method": "online", "bf16": True, "error": "start: exit status 1"}}
    ratios = {"fp32": {"cached_over_student": 1.02, "host_over_resident": {"student": 1.5}}, "bf16": {}}
    (tmp_path / "kd_speed_gpu_mlp.json").write_text(json.dumps({"pairs": {"mlp": {"results": results,
                                                                                  "ratios": ratios}}}))
    assert gpu_check.summarize_speed(tmp_path / "kd_speed_gpu_mlp.json") == "5 rows, failed: online-bf16, 1 skipped"
    table = gpu_check.speed_table(tmp_path)
    assert table[0] == "| row | MNIST MLPs 1200-1200 -> 800-800 s/epoch |"
    assert "| student-host | 1.500 (0.750-3.000) |" in table and "| torchdistill-w0 | skipped |" in table
    assert "| online-bf16 | failed |" in table
    assert "| cached KD / student only (1.0: distillation costs nothing extra) | 1.020 | - |" in table
    assert "| student: host-fed / device-resident | 1.500 | - |" in table


def test_the_resume_part_kills_the_command_and_compares(tmp_path):
    """The part itself, tiny on the CPU: the CLI killed by SIGKILL at step 9 (epoch 2, after the state of step 8),
    resumed, and compared with the uninterrupted run."""
    s = setting(tmp_path, "cpu", tiny=True)
    gpu_check.synthetic_mnist(s.data_root)
    gpu_check.plan(s)  # writes the configs
    found = gpu_check.resume_part(s.work / "resume.yaml", "cpu", s.work, gpu_check.crash_step(s))
    assert found == {"modes": [{"mode": "deterministic", "bitwise": True, "max_abs_diff": 0.0, "metrics_equal": True,
                                "crash_step": 9}]}
    summary = json.loads((s.work / "resumed-deterministic" / gpu_check.RESUME_NAME / "summary.json").read_text())
    assert summary["resumes"] == [{"epoch": 2, "batch": 2, "step": 8}]
