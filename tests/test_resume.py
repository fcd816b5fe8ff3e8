"""Exact resume: runs killed at many points (a real SIGKILL of the CLI, and in-process crashes) and resumed end with
weights bitwise equal to an uninterrupted run's and the same metrics lines; every refusal is one line, exit 2, and
changes nothing.

Crashes are patched into the training state by tests/crash_hooks.py: ``step:K`` after optimizer step K,
``epoch:E`` after epoch E's metrics line and before its state is saved, ``write:K`` while the state of step K is being
written. The runs: 600 examples, batches of 100 (6 steps per epoch), 3 epochs (18 steps), the
training state saved every 4 steps and at epoch ends (steps 0, 4, 6, 8, 12, 16, 18).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from respkd.cli import main
from respkd.config import validate_config, with_seed
from respkd.experiment import run
from respkd.resume import STATE_NAME
from respkd.resume.codec import from_json, to_json

from conftest import one_line_error, snapshot, tiny_config, write_yaml
from crash_hooks import SimulatedCrash, install

NAME = "resumable"


def variant_config(kind: str, idx_dir: Path, data_root: Path, cache_dir: Path, teacher: Path) -> dict:
    """Three runs that exercise every kind of state: SGD + onecycle (cycled momentum), AdamW + cosine with jitter,
    and cached distillation over jittered views with a step schedule (a Counter in the scheduler's state); the
    first two with dropout, whose masks come from torch's global generator."""
    dropout = {"name": "mlp", "hidden": [32], "dropout_input": 0.2, "dropout_hidden": 0.5}
    train = {"epochs": 3, "batch_size": 100, "checkpoint_every_steps": 4}
    if kind == "sgd":
        return tiny_config(NAME, idx_dir, data_root, threads=1, model=dropout,
                           train={**train, "schedule": "onecycle", "cycle_momentum": True})
    if kind == "adamw":
        return tiny_config(NAME, idx_dir, data_root, threads=1, model=dropout, data={"jitter": 2},
                           train={**train, "optimizer": "adamw", "lr": 0.01, "schedule": "cosine",
                                  "weight_decay": 0.01})
    if kind == "cnn-channels-last":  # batch-norm buffers, channels-last weights and optimizer moments, flips
        cfg = tiny_config(NAME, idx_dir, data_root, threads=1, data={"jitter": 1, "flip": True},
                          train={**train, "optimizer": "adamw", "lr": 0.01, "channels_last": True})
        return {**cfg, "model": {"name": "cnn", "channels": [4, 8]}}
    if kind == "dkd-warmup":  # online teacher; DKD's warm-up factor is 1/3, 2/3, 1 in epochs 1, 2, 3
        return tiny_config(NAME, idx_dir, data_root, threads=1, teacher={"checkpoint": str(teacher)},
                           kd={"temperature": 4.0, "hard_weight": 1.0, "loss": "dkd", "dkd": {"warmup_epochs": 3}},
                           train=train)
    assert kind == "kd-cache"
    return tiny_config(NAME, idx_dir, data_root, threads=1, data={"jitter": 1, "jitter_views": 2},
                       teacher={"checkpoint": str(teacher)},
                       kd={"temperature": 4.0, "hard_weight": 0.5, "cache": True, "cache_dir": str(cache_dir)},
                       train={**train, "schedule": "step", "milestones": [2]})


@pytest.fixture(scope="module")
def setup(tmp_path_factory, idx_dir, session_runs):
    """Config dicts by variant, and their uninterrupted runs (made once, when first asked for)."""
    base = tmp_path_factory.mktemp("resume")
    teacher = session_runs["teacher_dir"] / "model.safetensors"
    configs = {k: variant_config(k, idx_dir, base / "data", base / "cache", teacher)
               for k in ("sgd", "adamw", "kd-cache", "cnn-channels-last", "dkd-warmup")}
    references: dict[str, Path] = {}

    def reference(kind: str) -> Path:
        if kind not in references:
            run(validate_config(configs[kind]), base / f"reference-{kind}", quiet=True)
            references[kind] = base / f"reference-{kind}" / NAME
        return references[kind]

    return {"configs": configs, "reference": reference}


@contextlib.contextmanager
def crashing_at(monkeypatch, point: str):
    """The block must crash at ``point`` (see tests/crash_hooks.py); the hook is gone afterwards."""
    with monkeypatch.context() as patch:
        install(point, patch.setattr)
        with pytest.raises(SimulatedCrash):
            yield


def crash_then_resume(cfg: dict, runs_root: Path, crashes: list[str], monkeypatch) -> Path:
    """Run ``cfg``, crashing at each point of ``crashes`` in turn (each crash in a resumed run), then finish it."""
    config = validate_config(cfg)
    for i, point in enumerate(crashes):
        with crashing_at(monkeypatch, point):
            run(config, runs_root, quiet=True, resume=i > 0)
        assert (runs_root / NAME / STATE_NAME).is_file()
    run(config, runs_root, quiet=True, resume=True)
    return runs_root / NAME


def metrics_lines(run_dir: Path) -> list[str]:
    """metrics.jsonl with the timing field taken out, as text: key order and values must match exactly."""
    lines = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        assert record.pop("epoch_time_s") >= 0
        lines.append(json.dumps(record))
    return lines


def assert_same_run(reference: Path, resumed: Path) -> None:
    a, b = load_file(reference / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert metrics_lines(resumed) == metrics_lines(reference)
    assert len(metrics_lines(resumed)) == 3
    # the state is gone once the run has finished, and no half-written file is left behind
    assert sorted(p.name for p in resumed.iterdir()) == sorted(p.name for p in reference.iterdir())
    assert not (resumed / STATE_NAME).exists()


# ---------------------------------------------------------------- in-process crashes


@pytest.mark.parametrize("crash,resumed_at", [
    ("step:1", (1, 0, 0)),      # the first step: back to the state written before it
    ("step:10", (2, 2, 8)),     # mid-epoch, from the state written every 4 steps
    ("step:6", (1, 4, 4)),      # exactly at the epoch's end: its last step done, evaluation not
    ("epoch:1", (1, 4, 4)),     # metrics line of epoch 1 written, its state not: the line must not appear twice
    ("step:18", (3, 4, 16)),    # the last step
    ("write:8", (2, 0, 6)),     # while writing a state: the previous one (epoch 1's end) is used
])
def test_killed_and_resumed_run_is_bitwise_identical(setup, tmp_path, monkeypatch, crash, resumed_at):
    resumed = crash_then_resume(setup["configs"]["sgd"], tmp_path / "runs", [crash], monkeypatch)
    assert_same_run(setup["reference"]("sgd"), resumed)
    epoch, batch, step = resumed_at
    summary = json.loads((resumed / "summary.json").read_text())
    assert summary["resumes"] == [{"epoch": epoch, "batch": batch, "step": step}]
    assert f"resumed at epoch {epoch}, batch {batch} (step {step})" in (resumed / "log.txt").read_text()


@pytest.mark.parametrize("kind", ["adamw", "kd-cache", "cnn-channels-last"])
def test_several_kills_in_one_run(setup, tmp_path, monkeypatch, kind):
    crashes = ["step:3", "write:6", "step:11", "epoch:2", "step:17"]
    resumed = crash_then_resume(setup["configs"][kind], tmp_path / "runs", crashes, monkeypatch)
    assert_same_run(setup["reference"](kind), resumed)
    summary = json.loads((resumed / "summary.json").read_text())
    # the resume at step 8 that crashed again before saving anything left no trace in the state
    assert [r["step"] for r in summary["resumes"]] == [0, 4, 8, 16]
    if kind == "kd-cache":
        assert summary["teacher_cache"]["used"]


def test_device_resident_run_resumes_exactly(setup, tmp_path, monkeypatch):
    """Cached distillation with its batches and teacher cache kept on the device (data.device_resident; the CPU
    here), killed mid-epoch and resumed: bitwise the uninterrupted host-fed run, whose batches are the same."""
    cfg = setup["configs"]["kd-cache"]
    resident = {**cfg, "data": {**cfg["data"], "device_resident": True}}
    resumed = crash_then_resume(resident, tmp_path / "runs", ["step:10"], monkeypatch)
    assert_same_run(setup["reference"]("kd-cache"), resumed)
    summary = json.loads((resumed / "summary.json").read_text())
    assert summary["device_resident"] is True and summary["teacher_cache"]["used"]
    assert summary["resumes"] == [{"epoch": 2, "batch": 2, "step": 8}]


@pytest.mark.parametrize("crash,epoch", [("step:10", 2), ("epoch:2", 2)])
def test_dkd_warm_up_resumes_exactly(setup, tmp_path, monkeypatch, crash, epoch):
    """Killed in epoch 2 of DKD's warm-up (factor 2/3), or after its metrics line, and resumed in a new Distiller
    through epoch 3 (factor 1): the factor comes from the epoch being trained, so the resumed run is bitwise the
    uninterrupted one."""
    resumed = crash_then_resume(setup["configs"]["dkd-warmup"], tmp_path / "runs", [crash], monkeypatch)
    assert_same_run(setup["reference"]("dkd-warmup"), resumed)
    assert json.loads((resumed / "summary.json").read_text())["resumes"][0]["epoch"] == epoch
    assert "tckd_loss" in (resumed / "metrics.jsonl").read_text()


def test_killed_after_the_last_epoch_before_the_summary(setup, tmp_path, monkeypatch):
    """Every epoch done and saved, the model and summary not yet written: the resume only finishes the run."""
    import respkd.rundir

    def crash(*args, **kwargs):
        raise SimulatedCrash("before the model is written")

    with monkeypatch.context() as patch:
        patch.setattr(respkd.rundir, "save_checkpoint", crash)
        with pytest.raises(SimulatedCrash):
            run(validate_config(setup["configs"]["sgd"]), tmp_path / "runs", quiet=True)
    run(validate_config(setup["configs"]["sgd"]), tmp_path / "runs", quiet=True, resume=True)
    assert_same_run(setup["reference"]("sgd"), tmp_path / "runs" / NAME)
    assert json.loads((tmp_path / "runs" / NAME / "summary.json").read_text())["resumes"] == [
        {"epoch": 4, "batch": 0, "step": 18}]
    assert "resumed at the end of training (step 18)" in (tmp_path / "runs" / NAME / "log.txt").read_text()


def test_resume_may_change_how_often_the_state_is_saved(setup, tmp_path, monkeypatch):
    """checkpoint_every_steps changes nothing that is computed: a resume may use another value."""
    cfg = setup["configs"]["sgd"]
    with crashing_at(monkeypatch, "step:10"):
        run(validate_config(cfg), tmp_path / "runs", quiet=True)
    changed = {**cfg, "train": {**cfg["train"], "checkpoint_every_steps": 0}}
    run(validate_config(changed), tmp_path / "runs", quiet=True, resume=True)
    assert_same_run(setup["reference"]("sgd"), tmp_path / "runs" / NAME)


# ---------------------------------------------------------------- a real SIGKILL of the command


def cli(args: list[str], crash: str) -> subprocess.CompletedProcess:
    """``respkd ARGS`` in its own process, killed by SIGKILL at the crash point ``crash``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(Path(__file__).with_name("crash_cli.py")), crash, *args], env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("crash", ["step:10", "write:12"])
def test_sigkilled_command_resumes_exactly(setup, tmp_path, crash):
    config = write_yaml(tmp_path / "run.yaml", setup["configs"]["sgd"])
    runs_root = tmp_path / "runs"
    killed = cli(["train", str(config), "--runs-root", str(runs_root)], crash)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    run_dir = runs_root / NAME
    assert not (run_dir / "summary.json").exists()
    half_written = list(run_dir.glob(f".{STATE_NAME}.*.tmp"))
    assert len(half_written) == (1 if crash.startswith("write") else 0)
    assert main(["train", str(config), "--runs-root", str(runs_root), "--resume"]) == 0
    assert_same_run(setup["reference"]("sgd"), run_dir)
    assert json.loads((run_dir / "summary.json").read_text())["resumes"][0]["step"] == 8


# ---------------------------------------------------------------- seeds, plans and sweeps resume by themselves


def test_seed_runs_resume_by_themselves(setup, tmp_path, monkeypatch, capsys):
    """`--seeds` (and plans and sweeps: all go through experiment.run_many) continue an interrupted member."""
    config = write_yaml(tmp_path / "run.yaml", setup["configs"]["sgd"])
    runs_root = tmp_path / "runs"
    with crashing_at(monkeypatch, "step:10"):
        main(["train", str(config), "--runs-root", str(runs_root), "--seeds", "1"])
    capsys.readouterr()
    assert main(["train", str(config), "--runs-root", str(runs_root), "--seeds", "1"]) == 0
    assert f"{NAME}-seed1: resuming the interrupted run" in capsys.readouterr().out
    reference = tmp_path / "reference"
    run(with_seed(validate_config(setup["configs"]["sgd"]), 1), reference, quiet=True)
    resumed = runs_root / f"{NAME}-seed1"
    assert json.loads((resumed / "summary.json").read_text())["resumes"] == [{"epoch": 2, "batch": 2, "step": 8}]
    a, b = load_file(reference / f"{NAME}-seed1" / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_seed_run_with_a_state_of_another_config_starts_over(setup, tmp_path, monkeypatch, capsys):
    config = write_yaml(tmp_path / "run.yaml", setup["configs"]["sgd"])
    runs_root = tmp_path / "runs"
    with crashing_at(monkeypatch, "step:10"):
        main(["train", str(config), "--runs-root", str(runs_root), "--seeds", "1", "--set", "train.lr=0.2"])
    capsys.readouterr()
    assert main(["train", str(config), "--runs-root", str(runs_root), "--seeds", "1"]) == 0
    out = capsys.readouterr().out
    assert "belongs to a different config: train.lr (0.2 in the state, 0.1 now); starting over" in out
    assert json.loads((runs_root / f"{NAME}-seed1" / "summary.json").read_text())["resumes"] == []


# ---------------------------------------------------------------- refusals: one line, exit 2, nothing changed


@pytest.fixture
def interrupted(setup, tmp_path, monkeypatch) -> dict:
    """A run killed at step 10 (its state: step 8), with its config file."""
    config = write_yaml(tmp_path / "run.yaml", setup["configs"]["sgd"])
    runs_root = tmp_path / "runs"
    with crashing_at(monkeypatch, "step:10"):
        main(["train", str(config), "--runs-root", str(runs_root)])
    return {"config": config, "runs_root": runs_root, "run_dir": runs_root / NAME,
            "args": ["train", str(config), "--runs-root", str(runs_root)]}


def refused(capsys, args: list[str], folder: Path) -> str:
    before = snapshot(folder)
    capsys.readouterr()
    assert main(args) == 2
    line = one_line_error(capsys)
    assert snapshot(folder) == before
    return line


def test_refuses_resume_with_force(interrupted, capsys):
    line = refused(capsys, interrupted["args"] + ["--resume", "--force"], interrupted["runs_root"])
    assert "--resume continues an interrupted run and --force starts it over" in line


def test_refuses_resume_of_a_finished_run(setup, tmp_path, capsys):
    config = write_yaml(tmp_path / "run.yaml", setup["configs"]["sgd"])
    shutil.copytree(setup["reference"]("sgd"), tmp_path / "runs" / NAME)
    line = refused(capsys, ["train", str(config), "--runs-root", str(tmp_path / "runs"), "--resume"], tmp_path)
    assert f"run '{NAME}' already finished" in line and "nothing to resume" in line


def test_refuses_resume_without_a_state(setup, tmp_path, capsys):
    config = write_yaml(tmp_path / "run.yaml", setup["configs"]["sgd"])
    line = refused(capsys, ["train", str(config), "--runs-root", str(tmp_path / "runs"), "--resume"], tmp_path)
    assert "no training state to resume" in line and "without --resume" in line
    assert not (tmp_path / "runs").exists()


def test_refuses_a_state_of_another_config(interrupted, capsys):
    line = refused(capsys, interrupted["args"] + ["--resume", "--set", "train.lr=0.2", "--set", "seed=3"],
                   interrupted["runs_root"])
    assert "belongs to a different config: seed (0 in the state, 3 now), train.lr (0.1 in the state, 0.2 now)" in line


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage"])
def test_refuses_a_corrupt_state(interrupted, capsys, damage):
    path = interrupted["run_dir"] / STATE_NAME
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        data[-3] ^= 0xFF  # the last tensor's bytes: only the checksum notices
        path.write_bytes(bytes(data))
    else:
        path.write_bytes(b"not a safetensors file at all")
    line = refused(capsys, interrupted["args"] + ["--resume"], interrupted["runs_root"])
    assert line.startswith(f"respkd: error: cannot resume: {path}")
    assert {"truncate": "not a readable", "flip": "checksum", "garbage": "not a readable"}[damage] in line
    assert line.endswith("pass --force to start over")


def test_refuses_to_silently_start_an_interrupted_run_over(interrupted, capsys):
    line = refused(capsys, interrupted["args"], interrupted["runs_root"])
    assert "was interrupted" in line and "--resume" in line and "--force" in line


def test_force_starts_an_interrupted_run_over(setup, interrupted):
    assert main(interrupted["args"] + ["--force"]) == 0
    summary = json.loads((interrupted["run_dir"] / "summary.json").read_text())
    assert summary["resumes"] == []
    assert_same_run(setup["reference"]("sgd"), interrupted["run_dir"])


@pytest.mark.parametrize("value", [-1, "4", 2.5])
def test_checkpoint_every_steps_is_validated(value, idx_dir, tmp_path):
    from respkd.errors import RespkdError

    cfg = tiny_config(NAME, idx_dir, tmp_path, train={"checkpoint_every_steps": value})
    with pytest.raises(RespkdError, match="train.checkpoint_every_steps"):
        validate_config(cfg)


def test_state_json_keeps_tuples_and_counters():
    from collections import Counter

    value = {"betas": (0.9, 0.999), "milestones": Counter({12: 1, 30: 2}), "by_id": {0: [1.5, None]}, "ok": True}
    encoded = json.loads(json.dumps(to_json(value)))
    assert from_json(encoded) == value
    assert isinstance(from_json(encoded)["milestones"], Counter) and isinstance(from_json(encoded)["betas"], tuple)
    with pytest.raises(TypeError):
        to_json({"t": torch.zeros(1)})


def test_refuses_a_state_from_another_number_of_processes(interrupted, capsys):
    """The state records how many processes wrote it; only that many can continue it exactly."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = interrupted["run_dir"] / STATE_NAME
    with safe_open(str(path), "pt") as f:
        tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, json.loads(f.metadata()["respkd"])
    meta["identity"]["processes"] = 2
    save_file(tensors, str(path), metadata={"respkd": json.dumps(meta)})
    line = refused(capsys, interrupted["args"] + ["--resume"], interrupted["runs_root"])
    assert "another number of processes (processes 2 in the state, 1 now)" in line


def _gather_in_process(rank: int, world: int, init: str, out: str) -> None:
    import torch.distributed as dist

    from respkd.distributed import gather_per_process, own_part

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))  # as torchrun sets them
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        torch.manual_seed(100 + rank)  # each process its own stream, as under torchrun
        mine = {"rng.torch": torch.get_rng_state(), "epoch_sums.loss": torch.tensor(float(rank) + 0.5)}
        gathered = gather_per_process(mine)
        assert sorted(gathered) == sorted(f"process{r}.{k}" for r in range(world) for k in mine)
        assert all(torch.equal(own_part(gathered)[k], mine[k]) for k in mine)
        if rank == 0:
            torch.save({k: v for k, v in gathered.items()}, out)
    finally:
        dist.destroy_process_group()


def test_every_process_keeps_its_own_generator_and_sums(tmp_path):
    """Under torch.distributed (2 gloo processes) process 0 receives every process's part and each gets its own back."""
    import torch.multiprocessing as mp

    out = tmp_path / "gathered.pt"
    mp.spawn(_gather_in_process, args=(2, f"file://{tmp_path / 'store'}", str(out)), nprocs=2)
    gathered = torch.load(out, weights_only=True)
    assert gathered["process1.epoch_sums.loss"].item() == 1.5
    assert torch.equal(gathered["process1.rng.torch"], torch.manual_seed(101).get_state())
    assert not torch.equal(gathered["process0.rng.torch"], gathered["process1.rng.torch"])
