"""`respkd reproduce PLAN --jobs N`: a plan's units in child processes, N at a time (respkd.plan.scheduler).

The scheduling rules run against stand-in children (`python -c`, a fraction of a second each); a real plan on the
tiny synthetic MNIST checks that the runs, their weights and the report are those of the plan run in order, that a
student starts only after its teacher ended, that a failing unit stops new starts while the running one finishes,
and that SIGTERM to the parent reaches the run in its child.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from respkd.cli import main
from respkd.errors import RespkdError
from respkd.plan import PlanStopped, load_plan, plan_units, resolve
from respkd.plan.scheduler import child_command, dependencies, run_parallel, unit_failure
from respkd.plan.stage import Unit

from conftest import tiny_config, write_yaml

SRC = Path(__file__).resolve().parents[1] / "src"

# ---------------------------------------------------------------- scheduling, with stand-in children

# A stand-in child: `--unit K` picks its behaviour from the JSON map in argv[1] (sleep, lines, exit status).
FAKE_CHILD = """
import json, sys, time
spec = json.loads(sys.argv[1]).get(sys.argv[sys.argv.index("--unit") + 1], {})
for line in spec.get("lines", []):
    print(line)
time.sleep(spec.get("sleep", 0))
sys.exit(spec.get("exit", 0))
"""


def fake_units(*specs: tuple[str, list[str], list[str]], **flags: dict) -> list[Unit]:
    """Units named ``label`` that make ``outputs`` and read ``needs``; executing one in the parent records it."""
    def execute(root: Path, force: bool, log) -> None:
        log("written here")

    return [Unit(label, f"[{k}]", outputs, needs, execute, **flags.get(label, {}))
            for k, (label, outputs, needs) in enumerate(specs, 1)]


def schedule(units: list[Unit], behaviour: dict, force: bool = False) -> tuple[list[str], Exception | None]:
    """Run ``units`` two at a time with stand-in children; the parent's lines, and what it raised."""
    lines: list[str] = []
    try:
        run_parallel(units, [sys.executable, "-c", FAKE_CHILD, json.dumps(behaviour)], Path("unused"), force, 2, 1,
                     lines.append)
    except (PlanStopped, RespkdError) as err:
        return lines, err
    return lines, None


def at(lines: list[str], fragment: str) -> int:
    return next(i for i, line in enumerate(lines) if fragment in line)


def test_units_start_in_plan_order_when_what_they_read_has_ended():
    units = fake_units(("teacher", ["teacher"], []), ("student", ["student"], ["teacher"]), ("other", ["other"], []),
                       ("late", ["late"], []))
    lines, _ = schedule(units, {"1": {"sleep": 0.6, "lines": ["teaching"]}, "3": {"sleep": 0.2}})
    assert "[1/4 teacher] teaching" in lines  # relayed, prefixed by the unit
    # two at a time: the teacher and the first independent unit; the student only after the teacher ended
    assert at(lines, "[3/4 other] started") < at(lines, "[1/4 teacher] finished in")
    assert at(lines, "[1/4 teacher] finished in") < at(lines, "[2/4 student] started")
    assert at(lines, "[3/4 other] finished") < at(lines, "[4/4 late] started")  # never more than 2 at once
    assert re.search(r"plan: 4 unit\(s\) run, 0 skipped, in .* up to 2 processes of 1 thread\(s\)", lines[-1])


def test_dependencies_include_runs_read_and_runs_rewritten():
    units = fake_units(("a", ["a"], ["old"]), ("b", ["b"], ["a"]), ("old", ["old"], []), ("c", ["c"], []))
    assert dependencies(units) == [set(), {0}, {0}, set()]  # 'old' waits for the earlier unit that reads it


def test_finished_units_are_skipped_without_a_process_and_light_ones_run_in_the_parent():
    units = fake_units(("done", ["done"], []), ("table", ["table"], ["done"]), ("todo", ["todo"], []),
                       done={"finished": lambda root: True}, table={"light": True})
    lines, _ = schedule(units, {})
    assert "[1/3 done] already finished, skipped" in lines and not any("[1/3 done] started" in l for l in lines)
    assert "[2/3 table] written here" in lines and not any("[2/3 table] started" in l for l in lines)
    assert any("[3/3 todo] started" in l for l in lines) and "1 skipped" in lines[-1]
    lines, _ = schedule(units, {}, force=True)  # --force: nothing is skipped
    assert any("[1/3 done] started" in l for l in lines)


def test_an_exclusive_unit_runs_alone():
    units = fake_units(("a", ["a"], []), ("spec", ["spec"], []), ("b", ["b"], []), spec={"exclusive": True})
    lines, _ = schedule(units, {"1": {"sleep": 0.3}, "2": {"sleep": 0.3}})
    assert "alone" in lines[at(lines, "[2/3 spec] started")]
    assert at(lines, "[1/3 a] finished") < at(lines, "[2/3 spec] started")
    assert at(lines, "[2/3 spec] finished") < at(lines, "[3/3 b] started")  # b, after it, waited too


def test_a_failure_stops_new_starts_and_the_running_unit_finishes():
    units = fake_units(("bad", ["bad"], []), ("slow", ["slow"], []), ("never", ["never"], []))
    behaviour = {"1": {"lines": ["Traceback (most recent call last):", "RuntimeError: boom"], "exit": 1},
                 "2": {"sleep": 2.0}}
    lines, err = schedule(units, behaviour)
    assert isinstance(err, PlanStopped) and err.exit_code == 1
    assert str(err) == "plan unit [1/3 bad] failed (exit 1): RuntimeError: boom"
    assert at(lines, "[1/3 bad] FAILED (exit 1)") < at(lines, "[2/3 slow] finished")
    assert not any("[3/3 never]" in line for line in lines)


def test_keep_going_runs_what_does_not_read_the_failed_unit_and_says_what_did_not_finish():
    units = fake_units(("bad", ["bad"], []), ("reads-bad", ["reads-bad"], ["bad"]),
                       ("reads-that", ["reads-that"], ["reads-bad"]), ("other", ["other"], []))
    behaviour = {"1": {"lines": ["RuntimeError: boom"], "exit": 1}}
    lines: list[str] = []
    unfinished = run_parallel(units, [sys.executable, "-c", FAKE_CHILD, json.dumps(behaviour)], Path("unused"),
                              False, 2, 1, lines.append, keep_going=True)
    assert unfinished == {0: "failed (exit 1): RuntimeError: boom",
                          1: "not run: it waits for [1/4 bad], which did not finish",
                          2: "not run: it waits for [2/4 reads-bad], which did not finish"}
    assert "[2/4 reads-bad] not run: it waits for [1/4 bad], which did not finish" in lines
    assert any("[4/4 other] finished in" in line for line in lines)
    assert not any("[2/4 reads-bad] started" in line or "[3/4 reads-that] started" in line for line in lines)
    assert "plan: going on with the units that do not read what it makes (--keep-going)" in lines


def test_a_user_error_in_a_unit_stays_one_and_other_failures_quote_the_last_line():
    err = unit_failure("[2/5 x]", 2, ["[2/5] x", "respkd: error: data folder /nope does not exist"])
    assert isinstance(err, RespkdError) and str(err) == "plan unit [2/5 x] failed: data folder /nope does not exist"
    err = unit_failure("[2/5 x]", -9, ["epoch 1/9", ""])
    assert isinstance(err, PlanStopped) and err.exit_code == 1
    assert str(err) == "plan unit [2/5 x] failed (killed by SIGKILL): epoch 1/9"


def test_the_child_command_carries_the_settings(tmp_path):
    cmd = child_command("p.yaml", tmp_path, ["train.epochs=1"], True, 3)
    assert cmd[1:] == ["-m", "respkd.cli", "reproduce", "p.yaml", "--runs-root", str(tmp_path), "--threads", "3",
                       "--set", "train.epochs=1", "--force"]


def test_shipped_plan_units():
    """hinton2015: one unit per run (per seed), per sweep cell, the sweep's table (light), each bias and ensemble
    stage; each unit makes what its stage makes and reads what its config reads."""
    units = plan_units(resolve(load_plan("hinton2015"), [], Path("/nonexistent-runs")))
    labels = [u.label for u in units]
    assert labels[0] == "mnist-teacher-1200"  # first: everything distilled waits for it
    assert len(labels) == len(set(labels)) == 45
    member = units[labels.index("mnist-member-800-seed2")]
    assert member.outputs == ["mnist-member-800-seed2"] and member.needs == [] and member.tag == "[3/23][3/5]"
    table = units[labels.index("mnist-kd-sweep")]
    assert table.light and len(table.needs) == 14 and table.needs[0] == "mnist-kd-h300-T1"
    bias = units[labels.index("mnist-student-800-kd-T20-no3-bias")]
    assert bias.needs == ["mnist-student-800-kd-T20-no3"] and not bias.light and not bias.exclusive
    student = units[labels.index("mnist-student-800-kd-ensemble")]
    assert student.needs == [f"mnist-member-800-seed{k}" for k in range(5)]


# ---------------------------------------------------------------- a real plan, in order and with --jobs 2


def plan_of(tmp_path: Path, idx_dir: Path, configs: list[dict], seeds: dict | None = None) -> Path:
    stages = []
    for cfg in configs:
        path = write_yaml(tmp_path / "cfg" / f"{cfg['name']}.yaml", cfg)
        stages.append({"config": str(path), **({"seeds": seeds[cfg["name"]]} if cfg["name"] in (seeds or {}) else {})})
    return write_yaml(tmp_path / "plan.yaml", {"title": "Parallel plan", "runs_root": str(tmp_path / "runs"),
                                               "stages": stages})


def without_timing(report: str) -> str:
    """The report without what depends on timing: the closing line and the timing table's two time columns."""
    lines = [line for line in report.splitlines() if not line.startswith("Machine:")]
    return "\n".join(re.sub(r"^(\| [^|]+\|[^|]+\|[^|]+\|)[^|]+\|[^|]+\|", r"\1 t | t |", line)
                     if line.count("|") == 7 else line for line in lines)


def test_jobs_2_makes_the_runs_and_report_of_the_plan_run_in_order(tmp_path, idx_dir, capsys):
    data = tmp_path / "data"
    plan = plan_of(tmp_path, idx_dir, [
        tiny_config("par-teacher", idx_dir, data, model={"name": "mlp", "hidden": [16]}),
        tiny_config("par-student", idx_dir, data, model={"name": "mlp", "hidden": [8]},
                    teacher={"run": "par-teacher"}, kd={"temperature": 3.0}),
        tiny_config("par-student-t2", idx_dir, data, model={"name": "mlp", "hidden": [12]},
                    teacher={"run": "par-teacher"}, kd={"temperature": 2.0, "hard_weight": 0.5}),
        tiny_config("par-alone", idx_dir, data, model={"name": "mlp", "hidden": [20]}),
    ], seeds={"par-alone": [0, 1]})
    names = ["par-teacher", "par-student", "par-student-t2", "par-alone-seed0", "par-alone-seed1"]
    in_order, side_by_side = tmp_path / "in-order", tmp_path / "side-by-side"
    assert main(["reproduce", str(plan), "--runs-root", str(in_order)]) == 0  # one thread (conftest)
    capsys.readouterr()
    assert main(["reproduce", str(plan), "--runs-root", str(side_by_side), "--jobs", "2", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()

    for name in names:
        a, b = (load_file(root / name / "model.safetensors") for root in (in_order, side_by_side))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name  # bitwise the same run
        summaries = [json.loads((root / name / "summary.json").read_text()) for root in (in_order, side_by_side)]
        assert summaries[0]["metrics"] == summaries[1]["metrics"], name
        assert json.loads((side_by_side / name / "environment.json").read_text())["torch_threads"] == 1
    reports = [(root / "REPORT.md").read_text() for root in (in_order, side_by_side)]
    assert without_timing(reports[0]) == without_timing(reports[1]) and "| par-student-t2 |" in reports[0]
    assert "running up to 2 processes of 1 thread(s) side by side" in reports[1].splitlines()[-1]
    assert "side by side" not in reports[0]

    # the students started after their teacher had ended; an independent run ran beside the teacher
    teacher_done = at(lines, "[1/5 par-teacher] finished in")
    assert teacher_done < at(lines, "[2/5 par-student] started") and teacher_done < at(lines, "[3/5 par-student-t2] started")
    assert at(lines, "[4/5 par-alone-seed0] started") < teacher_done
    assert "[2/5 par-student] [2/4] par-student" in lines  # the child's own lines, relayed behind the unit's tag
    assert "\r" not in out  # no progress bar: a child's stderr is a pipe

    # run again: every unit is finished, and no process is started
    assert main(["reproduce", str(plan), "--runs-root", str(side_by_side), "--jobs", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count("already finished, skipped") == 5 and "started (pid" not in out


def test_a_failing_unit_stops_the_plan_after_the_running_unit_finishes(tmp_path, idx_dir, capsys):
    data = tmp_path / "data"
    plan = plan_of(tmp_path, idx_dir, [
        tiny_config("par-broken", tmp_path / "no-such-data", data),  # valid config; the folder is missing at run time
        tiny_config("par-slow", idx_dir, data, train={"epochs": 150}),
        tiny_config("par-later", idx_dir, data),
    ])
    assert main(["reproduce", str(plan), "--jobs", "2", "--threads", "1"]) == 2
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [
        f"respkd: error: plan unit [1/3 par-broken] failed: data folder {tmp_path / 'no-such-data'} does not exist"]
    lines = captured.out.splitlines()
    assert at(lines, "[1/3 par-broken] FAILED (exit 2)") < at(lines, "[2/3 par-slow] finished in")
    runs = tmp_path / "runs"
    assert (runs / "par-slow" / "summary.json").is_file() and not (runs / "par-later").exists()
    assert not (runs / "REPORT.md").exists()


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_keep_going_reports_what_finished_and_lists_what_did_not(tmp_path, idx_dir, capsys, jobs):
    data = tmp_path / "data"
    plan = plan_of(tmp_path, idx_dir, [
        tiny_config("par-broken", tmp_path / "no-such-data", data),  # valid config; the folder is missing at run time
        tiny_config("par-student", idx_dir, data, model={"name": "mlp", "hidden": [8]},
                    teacher={"run": "par-broken"}, kd={"temperature": 3.0}),
        tiny_config("par-alone", idx_dir, data),
    ])
    assert main(["reproduce", str(plan), "--jobs", jobs, "--threads", "1", "--keep-going"]) == 1
    captured = capsys.readouterr()
    runs = tmp_path / "runs"
    assert captured.err.splitlines() == [
        f"respkd: plan: 1 unit(s) failed and 1 not run (they read what a failed unit makes); {runs / 'REPORT.md'} "
        "lists them"]
    report = (runs / "REPORT.md").read_text()
    missing = f"data folder {tmp_path / 'no-such-data'} does not exist"
    assert "## Not finished" in report
    assert f"- [1/3 par-broken] failed: {missing}" in report  # a child's user error is quoted as in order
    assert "- [2/3 par-student] not run: it waits for [1/3 par-broken], which did not finish" in report
    assert "| par-alone |" in report and (runs / "par-alone" / "summary.json").is_file()
    assert "| par-student | test errors | not finished |" in report
    assert not (runs / "par-student").exists()
    assert main(["reproduce", str(plan), "--unit", "3", "--keep-going"]) == 2  # one unit: nothing to keep going with


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_dataset_that_cannot_be_had_stops_the_plan_before_any_unit_runs(tmp_path, idx_dir, capsys, monkeypatch,
                                                                          jobs):
    """The plan makes every dataset its runs read from the cache ready first: one without an offline copy (here
    Fashion-MNIST, its apt folder made absent; source idx, so nothing is downloaded) stops it at once with the line
    that run would print, before the first stage trains."""
    monkeypatch.setattr("respkd.data.datasets.FASHION_MNIST_APT_DIR", tmp_path / "no-apt-copy")
    data = tmp_path / "data"
    plan = plan_of(tmp_path, idx_dir, [
        tiny_config("ready-first", idx_dir, data),
        tiny_config("later-fashion", idx_dir, data, data={"dataset": "fashion_mnist", "path": None, "source": "idx"}),
    ])
    assert main(["reproduce", str(plan), "--jobs", str(jobs), "--threads", "1"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "respkd: error: plan stage 2 (later-fashion) reads fashion_mnist: no offline copy of fashion_mnist "
        "found; install the offline copy with `apt-get install dataset-fashion-mnist`, or set data.path"]
    assert not (tmp_path / "runs").exists()  # nothing trained


def test_sigterm_to_the_parent_reaches_the_run_in_its_child(tmp_path, idx_dir):
    plan = plan_of(tmp_path, idx_dir, [tiny_config("par-long", idx_dir, tmp_path / "data", train={"epochs": 5000})])
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    parent = subprocess.Popen([sys.executable, "-m", "respkd.cli", "reproduce", str(plan), "--jobs", "2"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    child = None
    try:
        for line in parent.stdout:
            child = child or re.search(r"started \(pid (\d+)", line)
            if "epoch " in line:  # the child is training
                break
        assert child is not None
        parent.send_signal(signal.SIGTERM)
        rest, err = parent.communicate(timeout=60)
    finally:
        if parent.poll() is None:  # the test failed: leave no process behind (the child is in a group of its own)
            parent.kill()
            parent.wait()
            if child is not None:
                try:
                    os.killpg(int(child.group(1)), signal.SIGKILL)
                except ProcessLookupError:
                    pass
    assert parent.returncode == 128 + signal.SIGTERM
    assert "respkd: interrupted by SIGTERM; run the plan again to resume" in err
    assert "[1/1 par-long] stopped (" in rest
    with pytest.raises(ProcessLookupError):  # the child has ended (and was reaped by the parent)
        os.kill(int(child.group(1)), 0)
    assert not (tmp_path / "runs" / "par-long" / "summary.json").exists()
