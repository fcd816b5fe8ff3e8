"""Two processes on one run folder or one teacher cache (respkd.locks), with real processes: a second start of a
running run is refused with one line naming the first; a lock left by a process killed with SIGKILL is taken over
(and the log says so); a second builder of the same teacher cache waits for the first and uses its cache; --seeds
locks each run as it starts.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

from respkd.cli import main
from respkd.locks import LOCK_NAME, FolderLock, Holder
from respkd.resume import STATE_NAME

from conftest import one_line_error, snapshot, tiny_config, write_yaml
from test_preemption import NAME, long_config, start_cli, wait_for_lines

HOST = re.escape(socket.gethostname())



def test_a_second_run_is_refused_and_a_dead_holder_taken_over(tmp_path, idx_dir, capsys):
    # 8 epochs: the first run must still be training after the three refused attempts, on a loaded machine too
    config = write_yaml(tmp_path / "run.yaml", long_config(idx_dir, tmp_path / "data", epochs=8))
    runs = tmp_path / "runs"
    first = start_cli(["train", str(config), "--runs-root", str(runs)], tmp_path)
    try:
        wait_for_lines(runs / NAME / "metrics.jsonl", 1, first)
        # the second: this test's process, on the same run; refused before it reads or writes anything
        for extra in ([], ["--resume"], ["--force"]):
            assert main(["train", str(config), "--runs-root", str(runs), *extra]) == 2
            line = one_line_error(capsys)
            assert re.fullmatch(rf"respkd: error: run '{NAME}' is in use by process {first.pid} on host {HOST} since "
                                rf"\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d \({re.escape(str(runs / NAME / LOCK_NAME))}\); "
                                "wait for it or stop it", line), line
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    finally:
        first.kill()
        first.communicate()
    assert (runs / NAME / LOCK_NAME).is_file() and (runs / NAME / STATE_NAME).is_file()  # left by the killed one
    # the third: takes over the lock the killed process left, resumes and finishes
    assert main(["train", str(config), "--runs-root", str(runs), "--resume"]) == 0
    log = (runs / NAME / "log.txt").read_text()
    assert re.search(rf"took over {re.escape(str(runs / NAME / LOCK_NAME))} from process {first.pid} on host {HOST} "
                     r"since .*, which ended without releasing it", log), log
    assert not (runs / NAME / LOCK_NAME).exists()


def test_a_second_builder_of_a_teacher_cache_waits_and_uses_it(tmp_path, idx_dir, session_runs):
    """This test's process holds the cache's lock, as a process building it would; the command waits, naming it, and
    builds the cache once the lock is free (a builder that finished would have left the cache: it is then used)."""
    cache = tmp_path / "cache"
    cfg = tiny_config("cached", idx_dir, tmp_path / "data", teacher={"checkpoint": str(
        session_runs["teacher_dir"] / "model.safetensors")}, kd={"temperature": 4.0, "cache": True,
                                                                  "cache_dir": str(cache)})
    config = write_yaml(tmp_path / "kd.yaml", cfg)
    assert main(["distill", str(config), "--runs-root", str(tmp_path / "first")]) == 0
    (built,) = cache.iterdir()
    os.rename(built, tmp_path / "built")  # the key's folder name, without the cache
    holder = FolderLock(cache / f".{built.name}.lock", "a teacher cache")
    holder.acquire()
    try:
        proc = start_cli(["distill", str(config), "--runs-root", str(tmp_path / "second")], tmp_path)
        waiting = f"waiting for process {os.getpid()} on host {socket.gethostname()}"
        line = proc.stdout.readline()
        while waiting not in line:
            assert line, proc.communicate()
            line = proc.stdout.readline()
        assert f"which holds teacher cache {built} ({holder.path})" in line
        assert proc.poll() is None
        os.rename(tmp_path / "built", built)  # as the builder finishes: the cache in place, then the lock let go
    finally:
        holder.release()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert f"using teacher cache {built}, built by another process meanwhile" in out
    summary = json.loads((tmp_path / "second" / "cached" / "summary.json").read_text())
    assert summary["teacher_cache"]["folder"] == str(built) and not summary["teacher_cache"]["built_now"]
    assert sorted(p.name for p in cache.iterdir()) == [built.name]  # the lock file is gone


def test_a_stale_lock_is_taken_over(tmp_path, idx_dir, capsys):
    """A lock file with a holder written in it but not locked: its process died (a clean end removes the file)."""
    config = write_yaml(tmp_path / "run.yaml", tiny_config("stale", idx_dir, tmp_path / "data"))
    lock = tmp_path / "runs" / "stale" / LOCK_NAME
    lock.parent.mkdir(parents=True)
    lock.write_text(json.dumps(asdict(Holder(999999, "elsewhere", "2024-01-02 03:04:05"))))
    assert main(["train", str(config), "--runs-root", str(tmp_path / "runs")]) == 0
    assert (f"took over {lock} from process 999999 on host elsewhere since 2024-01-02 03:04:05, which ended without "
            "releasing it") in (lock.parent / "log.txt").read_text()
    assert not lock.exists()


def test_seeds_lock_each_run_as_it_starts(tmp_path, idx_dir, capsys):
    config = write_yaml(tmp_path / "run.yaml", tiny_config("member", idx_dir, tmp_path / "data"))
    runs = tmp_path / "runs"
    held = FolderLock(runs / "member-seed1" / LOCK_NAME, "run 'member-seed1'")
    held.acquire()
    try:
        before = snapshot(runs)
        assert main(["train", str(config), "--runs-root", str(runs), "--seeds", "0,1"]) == 2
        assert f"respkd: error: run 'member-seed1' is in use by process {os.getpid()}" in one_line_error(capsys)
        assert (runs / "member-seed0" / "summary.json").is_file()  # the first member ran
        assert {k: v for k, v in snapshot(runs).items() if k.startswith("member-seed1")} == before
    finally:
        held.release()
    assert main(["train", str(config), "--runs-root", str(runs), "--seeds", "0,1"]) == 0


def test_a_lock_is_released_when_the_holder_is_killed(tmp_path):
    """The kernel lets go of a SIGKILLed holder's lock: what makes a lock file left behind safe to take over."""
    path = tmp_path / LOCK_NAME
    script = ("import sys, time; from respkd.locks import FolderLock; lock = FolderLock(sys.argv[1], 'x'); "
              "lock.acquire(); print('held', flush=True); time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", script, str(path)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [
                                str(Path(__file__).resolve().parents[1] / "src"), os.environ.get("PYTHONPATH")]))})
    try:
        assert proc.stdout.readline().strip() == "held"
        lock = FolderLock(path, "x")
        assert not lock.try_acquire() and lock.blocker.pid == proc.pid
        proc.kill()
        proc.wait(timeout=60)
        assert lock.try_acquire() and lock.taken_over.pid == proc.pid
        lock.release()
    finally:
        proc.kill()
        proc.communicate()
