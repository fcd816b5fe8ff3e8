"""SIGTERM and SIGINT (a scheduler's preemption, Ctrl-C): real signals sent to the command, which saves the training
state after the optimizer step in flight, prints one line saying how to resume, and exits 128 + n; the resumed run
ends bitwise equal to an uninterrupted one. Also a signal during an epoch's evaluation, a second signal while the
state is saved, a signal while a teacher cache is built, during `respkd eval`, and in a plan. (Under torchrun:
tests/test_distributed.py.)

The interrupted run: 600 examples in batches of 4 (150 steps per epoch), 3 epochs, dropout and a cycled momentum.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import respkd
from respkd.cli import main
from respkd.config import validate_config
from respkd.experiment import run
from respkd.resume import STATE_NAME

from conftest import tiny_config, write_yaml
from test_resume import metrics_lines

NAME = "preempted"
STEPS_PER_EPOCH = 150
SRC = str(Path(respkd.__file__).resolve().parents[1])


def long_config(idx_dir: Path, data_root: Path, **train) -> dict:
    return tiny_config(NAME, idx_dir, data_root, threads=1,
                       model={"name": "mlp", "hidden": [32], "dropout_input": 0.2, "dropout_hidden": 0.5},
                       train={"epochs": 3, "batch_size": 4, "schedule": "onecycle", "cycle_momentum": True, **train})


def uninterrupted(base: Path, cfg: dict) -> dict:
    """``cfg`` and its run without interruption, under ``base``."""
    run(validate_config(cfg), base / "reference", quiet=True)
    return {"config": cfg, "run": base / "reference" / cfg["name"]}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, idx_dir) -> dict:
    base = tmp_path_factory.mktemp("preempt")
    return uninterrupted(base, long_config(idx_dir, base / "data"))


def start_cli(args: list[str], cwd: Path) -> subprocess.Popen:
    """``python -m respkd.cli ARGS`` in its own process, this checkout's respkd, one thread."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [SRC, os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "respkd.cli", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for_lines(path: Path, n: int, proc: subprocess.Popen, timeout: float = 180) -> None:
    """Until ``path`` holds ``n`` lines (the command has trained that many epochs); the command must still run."""
    end = time.monotonic() + timeout
    while not (path.is_file() and len(path.read_text().splitlines()) >= n):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < end, "the command did not train in time"
        time.sleep(0.02)


def assert_same_weights(reference: Path, resumed: Path) -> None:
    a, b = load_file(reference / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert metrics_lines(resumed) == metrics_lines(reference)
    assert sorted(p.name for p in resumed.iterdir()) == sorted(p.name for p in reference.iterdir())


STOPPED = re.compile(r"respkd: stopped by (SIG\w+) at epoch (\d+), batch (\d+) \(step (\d+)\); the training state is "
                     r"in (\S+); resume with: (.+)$")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_saves_the_state_and_the_resumed_run_is_bitwise(reference, tmp_path, capsys, sig):
    config = write_yaml(tmp_path / "run.yaml", reference["config"])
    runs = tmp_path / "out"
    proc = start_cli(["train", "run.yaml", "--runs-root", "out", "--set", "seed=0"], tmp_path)
    wait_for_lines(runs / NAME / "metrics.jsonl", 1, proc)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    found = STOPPED.match(err.strip())
    assert found, err
    name, epoch, batch, step, state, again = found.groups()
    assert name == sig.name and int(step) == (int(epoch) - 1) * STEPS_PER_EPOCH + int(batch)
    assert int(epoch) >= 2 and state == f"out/{NAME}/{STATE_NAME}"
    assert again == "respkd train run.yaml --runs-root out --set seed=0 --resume"
    run_dir = runs / NAME
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.yaml", "environment.json", "log.txt",
                                                         "metrics.jsonl", STATE_NAME]  # no .tmp, no .lock
    where = f"epoch {epoch}, batch {batch} (step {step})"
    assert f"stopped by {sig.name} at {where}" in (run_dir / "log.txt").read_text()

    assert main(["train", str(config), "--runs-root", str(runs), "--set", "seed=0", "--resume"]) == 0
    assert_same_weights(reference["run"], run_dir)
    assert json.loads((run_dir / "summary.json").read_text())["resumes"] == [
        {"epoch": int(epoch), "batch": int(batch), "step": int(step)}]


def send_to_self(sig: signal.Signals) -> None:
    os.kill(os.getpid(), sig)


def one_stop_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err.strip()


def test_a_signal_during_evaluation_stops_after_it(reference, tmp_path, monkeypatch, capsys):
    """The per-epoch evaluation is not cut short: the epoch's line is written and its state saved, then the run
    stops; a second signal while the state is being written does not cut the write short either."""
    import respkd.resume.state
    import respkd.rundir

    evaluate, save_file = respkd.rundir.evaluate, respkd.resume.state.save_file
    calls = {"evaluate": 0}

    def evaluate_signalled(*args, **kwargs):
        calls["evaluate"] += 1
        if calls["evaluate"] == 2:  # during epoch 2's evaluation
            send_to_self(signal.SIGTERM)
        return evaluate(*args, **kwargs)

    def save_interrupted(tensors, filename, metadata=None):
        if calls["evaluate"] == 2:  # the state of epoch 2's end, while written
            send_to_self(signal.SIGINT)
        save_file(tensors, filename, metadata=metadata)

    monkeypatch.setattr(respkd.rundir, "evaluate", evaluate_signalled)
    monkeypatch.setattr(respkd.resume.state, "save_file", save_interrupted)
    config = write_yaml(tmp_path / "run.yaml", reference["config"])
    args = ["train", str(config), "--runs-root", str(tmp_path / "runs")]
    assert main(args) == 128 + signal.SIGTERM
    line = one_stop_line(capsys)
    state = tmp_path / "runs" / NAME / STATE_NAME
    assert line == (f"respkd: stopped by SIGTERM at epoch 3, batch 0 (step 300); the training state is in {state}; "
                    f"resume with: respkd train {config} --runs-root {tmp_path / 'runs'} --resume")
    assert len(metrics_lines(tmp_path / "runs" / NAME)) == 2
    monkeypatch.undo()
    assert main(args + ["--resume"]) == 0
    assert_same_weights(reference["run"], tmp_path / "runs" / NAME)


def test_a_signal_while_the_teacher_cache_is_built_leaves_no_cache(tmp_path, idx_dir, session_runs, monkeypatch,
                                                                   capsys):
    import respkd.distill

    teacher_logits = respkd.distill.Distiller.teacher_logits
    calls = []

    def signalled(self, inputs):
        calls.append(1)
        if len(calls) == 2:
            send_to_self(signal.SIGINT)
        return teacher_logits(self, inputs)

    cache = tmp_path / "cache"
    cfg = tiny_config("cached", idx_dir, tmp_path / "data", teacher={"checkpoint": str(
        session_runs["teacher_dir"] / "model.safetensors")}, kd={"temperature": 4.0, "cache": True,
                                                                  "cache_dir": str(cache)}, train={"batch_size": 50})
    config = write_yaml(tmp_path / "kd.yaml", cfg)
    args = ["distill", str(config), "--runs-root", str(tmp_path / "runs")]
    with monkeypatch.context() as patch:
        patch.setattr(respkd.distill.Distiller, "teacher_logits", signalled)
        assert main(args) == 128 + signal.SIGINT
    assert len(calls) == 2
    assert one_stop_line(capsys) == (f"respkd: stopped by SIGINT; nothing was left half-written; continue "
                                               f"with: respkd distill {config} --runs-root {tmp_path / 'runs'}")
    assert list(cache.iterdir()) == []  # no cache folder, no temporary one, no lock
    assert not (tmp_path / "runs" / "cached" / ".lock").exists()
    assert main(args) == 0  # the command it printed starts the run afresh
    assert json.loads((tmp_path / "runs" / "cached" / "summary.json").read_text())["teacher_cache"]["built_now"]


def test_a_signal_during_eval_is_one_line(session_runs, monkeypatch, capsys):
    import respkd.checkpoint_eval

    evaluate = respkd.checkpoint_eval.evaluate

    def signalled(*args, **kwargs):
        send_to_self(signal.SIGTERM)
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(respkd.checkpoint_eval, "evaluate", signalled)
    assert main(["eval", str(session_runs["teacher_dir"] / "model.safetensors")]) == 143
    assert one_stop_line(capsys) == "respkd: stopped by SIGTERM; nothing was left half-written"


def test_a_stopped_plan_exits_128_plus_n_and_resumes_when_rerun(reference, tmp_path, idx_dir, monkeypatch, capsys):
    """The signal stops the run in flight (its state saved); running the plan again skips the finished stage and
    resumes the interrupted one, to the same weights as an uninterrupted run."""
    first = write_yaml(tmp_path / "first.yaml", tiny_config("first", idx_dir, tmp_path / "data", threads=1,
                                                            train={"epochs": 1}))
    second = write_yaml(tmp_path / "second.yaml", reference["config"])
    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump({"title": "two runs", "runs_root": "runs",
                                    "stages": [{"config": str(first)}, {"config": str(second)}]}))
    proc = start_cli(["reproduce", "plan.yaml"], tmp_path)
    wait_for_lines(tmp_path / "runs" / NAME / "metrics.jsonl", 1, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 and len(err.strip().splitlines()) == 1, err
    assert err.strip().endswith(f"the training state is in runs/{NAME}/{STATE_NAME}; continue with: respkd "
                                "reproduce plan.yaml"), err
    assert not (tmp_path / "runs" / "REPORT.md").exists()

    monkeypatch.chdir(tmp_path)
    assert main(["reproduce", str(plan)]) == 0
    out = capsys.readouterr().out
    assert "first: already finished" in out and f"{NAME}: resuming the interrupted run" in out
    assert_same_weights(reference["run"], tmp_path / "runs" / NAME)
    assert (tmp_path / "runs" / "REPORT.md").is_file()
