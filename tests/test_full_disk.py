"""A full disk or an I/O error while a run writes: the training state, the metrics, the final checkpoint and a teacher
cache. Each time the command stops with one line naming the file (exit status 74), the file it would have replaced
is intact, nothing half-written is left, and the run resumes (bitwise) once there is room. The failures are made by
monkeypatching the writes (ENOSPC, EIO at the N-th call), and for real on a small tmpfs where this machine lets a
test mount one.

The run: 600 examples in batches of 100 (6 steps per epoch), 3 epochs, the state saved every 4 steps.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from safetensors import safe_open

import respkd.checkpoint
import respkd.resume.state
from respkd.cli import main
from respkd.resume import STATE_NAME

from conftest import one_line_error, tiny_config, write_yaml
from test_preemption import assert_same_weights, uninterrupted

NAME = "disk"
NO_SPACE, IO_ERROR = os.strerror(errno.ENOSPC), os.strerror(errno.EIO)


def disk_config(idx_dir: Path, data_root: Path) -> dict:
    return tiny_config(NAME, idx_dir, data_root, threads=1, model={"name": "mlp", "hidden": [32], "dropout_input": 0.2},
                       train={"epochs": 3, "batch_size": 100, "checkpoint_every_steps": 4})


@pytest.fixture(scope="module")
def reference(tmp_path_factory, idx_dir) -> dict:
    base = tmp_path_factory.mktemp("disk")
    return uninterrupted(base, disk_config(idx_dir, base / "data"))


@pytest.fixture
def command(reference, tmp_path) -> list[str]:
    return ["train", str(write_yaml(tmp_path / "run.yaml", reference["config"])), "--runs-root", str(tmp_path / "runs")]



def failing_at(n: int, code: int, write):
    """``write`` that fails at its ``n``-th call with ``code``, having written part of its file first."""
    calls = [0]

    def fail_or_write(*args, **kwargs):
        calls[0] += 1
        if calls[0] != n:
            return write(*args, **kwargs)
        target = Path(next(a for a in args if isinstance(a, (str, Path)) and ".tmp" in str(a)))
        target.write_bytes(b"half a file")
        raise OSError(code, os.strerror(code))

    return fail_or_write


def saved_step(path: Path) -> int:
    with safe_open(str(path), "pt") as f:
        return json.loads(f.metadata()["respkd"])["position"]["step"]


def no_temporary_files(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if p.name.endswith(".tmp") or p.name == ".lock"]


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO])
def test_a_failed_state_write_keeps_the_previous_state(reference, command, tmp_path, monkeypatch, capsys, code):
    # the states of steps 0, 4, 6 (epoch 1), 8, 12 (epoch 2)...: the 5th write (step 12) fails
    with monkeypatch.context() as patch:
        patch.setattr(respkd.resume.state, "save_file", failing_at(5, code, respkd.resume.state.save_file))
        assert main(command) == 74
    state = tmp_path / "runs" / NAME / STATE_NAME
    assert one_line_error(capsys) == (f"respkd: error: could not write {state}: {os.strerror(code)}; the previous "
                                 "training state is intact")
    assert saved_step(state) == 8 and no_temporary_files(tmp_path / "runs")
    assert main(command + ["--resume"]) == 0
    assert_same_weights(reference["run"], tmp_path / "runs" / NAME)


def test_a_failed_metrics_write_leaves_whole_lines(reference, command, tmp_path, monkeypatch, capsys):
    import pathlib

    write_text = pathlib.Path.write_text
    calls = {"metrics": 0}

    def half_then_fail(self, text, *args, **kwargs):
        if self.name.startswith(".metrics.jsonl."):
            calls["metrics"] += 1
            if calls["metrics"] == 3:  # the first rewrite was the empty file; the 3rd adds epoch 2's line
                write_text(self, text[: len(text) // 2 + 7])
                raise OSError(errno.EIO, IO_ERROR)
        return write_text(self, text, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(pathlib.Path, "write_text", half_then_fail)
        assert main(command) == 74
    metrics = tmp_path / "runs" / NAME / "metrics.jsonl"
    assert one_line_error(capsys) == (f"respkd: error: could not write {metrics}: {IO_ERROR}; the previous metrics file is "
                                 "intact")
    lines = metrics.read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["epoch"] == 1 and metrics.read_text().endswith("\n")
    assert no_temporary_files(tmp_path / "runs")
    assert main(command + ["--resume"]) == 0
    assert_same_weights(reference["run"], tmp_path / "runs" / NAME)


def test_a_failed_checkpoint_write_leaves_the_run_resumable(reference, command, tmp_path, monkeypatch, capsys):
    import respkd.files

    with monkeypatch.context() as patch:
        patch.setattr(respkd.checkpoint, "save_file", failing_at(1, errno.ENOSPC, respkd.checkpoint.save_file))
        assert main(command) == 74
    model = tmp_path / "runs" / NAME / "model.safetensors"
    assert one_line_error(capsys) == f"respkd: error: could not write {model}: {NO_SPACE}; no checkpoint was written"
    assert not model.exists() and not (tmp_path / "runs" / NAME / "summary.json").exists()
    assert main(command + ["--resume"]) == 0
    assert_same_weights(reference["run"], tmp_path / "runs" / NAME)
    assert respkd.files.io_errno(Exception("(os error 28)")) is None  # only safetensors' own errors are parsed


def test_a_failed_cache_write_leaves_no_cache(tmp_path, idx_dir, session_runs, monkeypatch, capsys):
    import respkd.teacher_cache

    cache = tmp_path / "cache"
    config = write_yaml(tmp_path / "kd.yaml", tiny_config(
        "cached", idx_dir, tmp_path / "data", teacher={"checkpoint": str(session_runs["teacher_dir"] /
                                                                        "model.safetensors")},
        kd={"temperature": 4.0, "cache": True, "cache_dir": str(cache)}))
    args = ["distill", str(config), "--runs-root", str(tmp_path / "runs")]

    def no_room(fd, offset, length):
        raise OSError(errno.ENOSPC, NO_SPACE)

    with monkeypatch.context() as patch:
        patch.setattr(respkd.teacher_cache.os, "posix_fallocate", no_room)
        assert main(args) == 74
    line = one_line_error(capsys)
    assert line.startswith(f"respkd: error: could not write {cache}/") and line.endswith(
        f": {NO_SPACE}; no partial teacher cache was left")
    assert list(cache.iterdir()) == []
    assert main(args) == 0  # nothing of the run was kept: it starts afresh once there is room


def can_mount_tmpfs(folder: Path) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    if shutil.which("mount") is None or os.geteuid() != 0:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4k", "tmpfs", str(folder)], capture_output=True)
    if done.returncode == 0:
        subprocess.run(["umount", str(folder)], check=True)
    return done.returncode == 0


def test_a_really_full_disk(reference, command, tmp_path, capsys):
    """The runs root on a tmpfs with room for one training state and a little more: the second state cannot be
    written beside the first (an ENOSPC from safetensors' own writer), the first stays whole, and the run resumes
    where there is room."""
    disk = tmp_path / "runs"
    if not can_mount_tmpfs(disk):
        pytest.skip("mounting a tmpfs is not permitted here")
    # The state of step 0 holds the weights (4 bytes a parameter), the next ones their momentum too: 4 + 8 bytes a
    # parameter do not fit in 10.
    params = 784 * 32 + 32 + 32 * 10 + 10
    size = -(-10 * params // 4096) * 4096
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)], check=True)
    try:
        assert main(command) == 74
        state = disk / NAME / STATE_NAME
        assert one_line_error(capsys) == (f"respkd: error: could not write {state}: {NO_SPACE}; the previous training "
                                     "state is intact")
        assert saved_step(state) == 0 and no_temporary_files(disk)
        shutil.copytree(disk, tmp_path / "roomy")
    finally:
        subprocess.run(["umount", str(disk)], check=True)
    assert main(command[:-1] + [str(tmp_path / "roomy"), "--resume"]) == 0
    assert_same_weights(reference["run"], tmp_path / "roomy" / NAME)
