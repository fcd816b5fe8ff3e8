"""Wall time of a plan of independent runs, one process after another vs several processes side by side.

    python benchmarks/plan_jobs.py configs/mnist/member_800.yaml --seeds 0,1,2,3 --epochs 2 --rounds 2 \
        --out results/speed/plan_jobs.md

Writes a plan of one run stage (``CONFIG`` with ``--seeds``: independent runs) into a temporary folder and times
``respkd reproduce PLAN --force`` for each setting of ``--settings`` (default ``1x2,2x1``: ``--jobs 1 --threads 2``,
then ``--jobs 2 --threads 1``), the settings interleaved, ``--rounds`` times over, so that a change in the load of
a shared machine touches every setting alike (the table gives the machine's load at each start). The time is the
command's own wall time, process starts included.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from bench_output import print_and_write


def reproduce(plan: Path, runs_root: Path, jobs: int, threads: int, overrides: list[str]) -> float:
    cmd = [sys.executable, "-m", "respkd.cli", "reproduce", str(plan), "--runs-root", str(runs_root), "--force",
           "--jobs", str(jobs), "--threads", str(threads), *[a for o in overrides for a in ("--set", o)]]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="a run config")
    parser.add_argument("--seeds", default="0,1,2,3", help="one independent run per seed (default 0,1,2,3)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per run (default 2)")
    parser.add_argument("--settings", default="1x2,2x1", help="JOBSxTHREADS settings to compare (default 1x2,2x1)")
    parser.add_argument("--rounds", type=int, default=2, help="times each setting runs, interleaved (default 2)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="another override for every run (e.g. data.root=...)")
    parser.add_argument("--out", help="also write the markdown table here (and JSON beside it)")
    args = parser.parse_args()
    settings = [tuple(map(int, s.split("x"))) for s in args.settings.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    overrides = [f"train.epochs={args.epochs}", *args.overrides]
    times: dict[tuple[int, int], list[float]] = {s: [] for s in settings}
    loads: dict[tuple[int, int], list[float]] = {s: [] for s in settings}  # the machine's 1-minute load at each start
    with tempfile.TemporaryDirectory() as tmp:
        plan = Path(tmp) / "plan.yaml"
        plan.write_text(yaml.safe_dump({"title": "jobs benchmark", "runs_root": str(Path(tmp) / "runs"),
                                        "stages": [{"config": str(Path(args.config).resolve()), "seeds": seeds}]}))
        for r in range(args.rounds):
            for jobs, threads in settings:
                loads[(jobs, threads)].append(round(os.getloadavg()[0], 1))
                wall = reproduce(plan, Path(tmp) / "runs", jobs, threads, overrides)
                times[(jobs, threads)].append(round(wall, 1))
                print(f"round {r + 1}: --jobs {jobs} --threads {threads}: {wall:.1f}s (load at start "
                      f"{loads[(jobs, threads)][-1]})", flush=True)
    base = statistics.median(times[settings[0]])
    lines = [f"{len(seeds)} independent runs of {args.config} ({args.epochs} epoch(s) each; overrides: "
             f"{', '.join(overrides)}) as one plan; {os.cpu_count()} cores, {platform.processor() or platform.machine()};"
             f" settings interleaved, {args.rounds} round(s).", "",
             "| --jobs | --threads | wall time of the command (s), each round | median (s) | speed-up | machine load "
             "(1 min) at each start |", "|---:|---:|---|---:|---:|---|"]
    for (jobs, threads), walls in times.items():
        median = statistics.median(walls)
        lines.append(f"| {jobs} | {threads} | {', '.join(map(str, walls))} | {median:.1f} | {base / median:.2f}x | "
                     f"{', '.join(map(str, loads[(jobs, threads)]))} |")
    rows = [{"jobs": j, "threads": t, "wall_s": w, "load_at_start": loads[(j, t)]} for (j, t), w in times.items()]
    print_and_write(lines, rows, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
