"""A plan's units side by side: ``respkd reproduce PLAN --jobs N``.

Every unit (:class:`respkd.plan.stage.Unit`: one run, one sweep cell, a bias or ensemble evaluation, a specialists
stage) runs in a child process of its own, ``respkd reproduce PLAN --unit K``, which loads and resolves the plan again
and runs its K-th unit alone: the child runs exactly the config the parent validated. At most N run at a time, each
with ``cores // N`` torch threads (on small nets two one-thread processes train faster than one of two threads). The
parent

* starts units in plan order once every run a unit reads was made by a unit that has ended (or was finished under the
  runs root before), and never runs a unit beside an earlier one that reads what it writes;
* skips a finished unit without starting a process for it (the check the unit itself makes);
* runs a specialists stage alone (it starts worker processes of its own), and writes a sweep's table itself;
* relays every line its children print, prefixed by the unit's ``[K/U name]``, and says when each starts and ends
  (children draw no progress bars: their stderr is a pipe, not a terminal);
* after a unit fails starts nothing new, lets the running units finish (their work is kept, while a stopped run
  would lose the epoch it was in), and reports the failing unit's last error line; with ``--keep-going`` it goes on
  with every unit that reads nothing the failed one makes (as ``make -k``), and says which units did not finish;
* forwards SIGINT and SIGTERM to its children, waits for them and exits with 128 + the signal's number.

Running the plan again resumes: finished units are skipped, interrupted runs resume from their training state.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from respkd.errors import RespkdError
from respkd.plan.stage import Log, Unit

__all__ = ["PlanStopped", "child_command", "dependencies", "run_parallel", "unit_failure", "unit_prefix"]

TAIL_LINES = 50  # a child's last lines, kept to report its error


class PlanStopped(Exception):
    """The plan stopped early for a reason other than bad input (a unit crashed, a signal came): the message is one
    line, ``exit_code`` what the command exits with."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class _Child:
    number: int
    unit: Unit
    proc: subprocess.Popen
    began: float
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=TAIL_LINES))


def child_command(plan: str, root: Path, overrides: list[str], force: bool, threads: int) -> list[str]:
    """The command that runs one unit of ``plan`` (``--unit K`` appended) with the parent's settings."""
    return [sys.executable, "-m", "respkd.cli", "reproduce", plan, "--runs-root", str(root), "--threads",
            str(threads), *[a for o in overrides for a in ("--set", o)], *(["--force"] if force else [])]


def unit_prefix(units: list[Unit], i: int) -> str:
    """``[K/U name]``: how the plan's lines name unit ``i`` (0-based) of ``units``."""
    return f"[{i + 1}/{len(units)} {units[i].label}]"


def dependencies(units: list[Unit]) -> list[set[int]]:
    """For each unit, the earlier units it waits for: those that make a run it reads, and those that read or write
    a run it writes (an earlier stage reads the old one, as when the plan runs in order)."""
    deps = []
    for i, unit in enumerate(units):
        needs, outputs = set(unit.needs), set(unit.outputs)
        deps.append({j for j, earlier in enumerate(units[:i])
                     if needs & set(earlier.outputs) or outputs & (set(earlier.needs) | set(earlier.outputs))})
    return deps


def _exit_text(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit {code}"


def unit_failure(prefix: str, code: int, tail: list[str]) -> Exception:
    """What a failed unit (its exit status and last lines) ends the plan with: a user error the child reported
    (``respkd: error: ...``, exit 2) stays one (a RespkdError), anything else is a :class:`PlanStopped` with exit
    status 1 quoting the child's last line."""
    errors = [line for line in tail if line.startswith("respkd: error:")]
    if code == 2 and errors:
        return RespkdError(f"plan unit {prefix} failed: {errors[-1].removeprefix('respkd: error:').strip()}")
    last = next((line.strip() for line in reversed(tail) if line.strip()), "no output")
    return PlanStopped(f"plan unit {prefix} failed ({_exit_text(code)}): {last}", 1)


def _relay(number: int, stream: IO[str], events: queue.Queue) -> None:
    """Every line a child prints, then None when it closes its output."""
    for line in stream:
        events.put((number, line.rstrip("\n")))
    stream.close()
    events.put((number, None))


def _signal_group(proc: subprocess.Popen, signum: int) -> None:
    """``signum`` to a child and whatever it started (its own process group)."""
    try:
        os.killpg(proc.pid, signum)
    except ProcessLookupError:  # it has just ended
        pass


def run_parallel(units: list[Unit], command: list[str], root: Path, force: bool, jobs: int, threads: int,
                 log: Log, keep_going: bool = False) -> dict[int, str]:
    """Run a plan's ``units`` (in plan order), at most ``jobs`` at a time, each unfinished one as ``command + ["--unit",
    K]`` with ``threads`` torch threads (see the module docstring). Raises the first failure (see
    :func:`unit_failure`) or :class:`PlanStopped` after a signal, once every started unit has ended. With
    ``keep_going`` a failure raises nothing: the units that read what it makes are not run, the others are, and the
    result maps every unit that did not finish (by index) to why; without it the result is empty."""
    total, deps = len(units), dependencies(units)
    prefixes = [unit_prefix(units, i) for i in range(total)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    pending, done, running = list(range(total)), set(), {}
    events: queue.Queue = queue.Queue()
    counts = {"run": 0, "skipped": 0}
    failure: list[Exception] = []
    unfinished: dict[int, str] = {}  # with keep_going: the failed units and those that read what they make
    stop: list[int] = []  # the signals received

    def forward(signum: int, frame: object) -> None:
        stop.append(signum)  # said by the loop: printing here could interrupt a print of its own
        for child in list(running.values()):
            _signal_group(child.proc, signum)

    def start(i: int) -> None:
        unit = units[i]
        proc = subprocess.Popen([*command, "--unit", str(i + 1)], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, env=env, text=True, errors="replace", bufsize=1,
                                start_new_session=True)  # its own group: a terminal's Ctrl-C reaches it once, from us
        running[i] = _Child(i, unit, proc, time.perf_counter())
        if stop:  # a signal came while it was starting
            _signal_group(proc, stop[0])
        threading.Thread(target=_relay, args=(i, proc.stdout, events), daemon=True).start()
        alone = ", alone: it runs processes of its own" if unit.exclusive else ""
        log(f"{prefixes[i]} started (pid {proc.pid}, {threads} thread(s){alone})")

    def settle(i: int) -> bool:
        """Skip unit ``i`` when finished, or run it here when light; False when it needs a process."""
        unit = units[i]
        try:
            if not force and unit.finished(root):
                log(f"{prefixes[i]} already finished, skipped")
                counts["skipped"] += 1
            elif unit.light:
                unit.execute(root, force, lambda line: log(f"{prefixes[i]} {line}"))
                counts["run"] += 1
            else:
                return False
        except RespkdError as err:
            failure.append(RespkdError(f"plan unit {prefixes[i]} failed: {err}"))
            unfinished[i] = f"failed: {err}"
        else:
            done.add(i)
        pending.remove(i)
        return True

    def launch() -> None:
        """Start (or settle) the ready units in plan order, while slots are free and nothing exclusive runs."""
        for i in list(pending):
            if (failure and not keep_going) or stop or len(running) >= jobs or any(
                    c.unit.exclusive for c in running.values()):
                return
            lost = sorted(deps[i] & set(unfinished))
            if lost:  # it reads (or overwrites) what a failed unit was to make: not run
                pending.remove(i)
                unfinished[i] = f"not run: it waits for {prefixes[lost[0]]}, which did not finish"
                log(f"{prefixes[i]} {unfinished[i]}")
                continue
            if not deps[i] <= done or settle(i):
                continue
            if units[i].exclusive and running:
                return  # it waits for the running ones to end, and nothing after it starts meanwhile
            pending.remove(i)
            start(i)

    def ended(i: int) -> None:
        child = running.pop(i)
        code, took = child.proc.wait(), time.perf_counter() - child.began
        if code == 0:
            done.add(i)
            counts["run"] += 1
            log(f"{prefixes[i]} finished in {took:.1f}s")
        elif stop:
            log(f"{prefixes[i]} stopped ({_exit_text(code)}) after {took:.1f}s")
        else:
            log(f"{prefixes[i]} FAILED ({_exit_text(code)}) after {took:.1f}s")
            error = unit_failure(prefixes[i], code, list(child.tail))
            unfinished[i] = str(error).removeprefix(f"plan unit {prefixes[i]} ")  # "failed (exit 1): ..."
            if keep_going:
                log("plan: going on with the units that do not read what it makes (--keep-going)")
            elif not failure and running:
                log(f"plan: starting nothing new; waiting for {len(running)} running unit(s) to finish")
            failure.append(error)

    # Handlers only in the main thread (Python allows no other); a signal ignored (nohup, a background job) stays so.
    on_main = threading.current_thread() is threading.main_thread()
    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)
                if on_main and signal.getsignal(s) is not signal.SIG_IGN}
    began = time.perf_counter()
    try:
        launch()
        announced = 0
        while running:
            if len(stop) > announced:
                announced = len(stop)
                log(f"plan: {signal.Signals(stop[-1]).name} received and passed to {len(running)} running unit(s)")
            try:
                i, line = events.get(timeout=0.5)
            except queue.Empty:
                continue
            if line is None:
                ended(i)
                launch()
            else:
                running[i].tail.append(line)
                log(f"{prefixes[i]} {line}")
    except BaseException:
        for child in running.values():  # the parent itself failed: leave no child behind
            _signal_group(child.proc, signal.SIGTERM)
            child.proc.wait()
        raise
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    wall = time.perf_counter() - began
    log(f"plan: {counts['run']} unit(s) run, {counts['skipped']} skipped, in {wall:.1f}s ({wall / 60:.1f} min) of "
        f"wall time, up to {jobs} processes of {threads} thread(s)")
    if stop:
        name = signal.Signals(stop[0]).name
        raise PlanStopped(f"interrupted by {name}; run the plan again to resume (finished units are skipped, "
                          "interrupted runs resume)", 128 + stop[0])
    if failure and not keep_going:
        raise failure[0]
    if pending:  # cannot happen when resolve() passed: every need is made by an earlier unit or exists
        raise RespkdError(f"plan: unit {prefixes[pending[0]]} never became ready")
    return unfinished if keep_going else {}
