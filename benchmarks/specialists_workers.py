"""Wall time of training every specialist one after another vs with several worker processes.

    python benchmarks/specialists_workers.py configs/fashion_mnist/specialists_mlp.yaml \
        --generalist results/fashion_mnist/fashion-generalist-mlp-seed0/model.safetensors --epochs 2 \
        --out results/speed/specialists_workers.md

Runs `respkd specialists train CONFIG --workers W --force` for each W in --workers (default 1 and 2) into a
temporary runs root (each worker gets cores // W torch threads, as the command does by itself) and reports the wall
time of each from the command's own timings.jsonl. Run it on an otherwise idle machine: the point is how the cores
are shared, and another job on them changes the answer.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_output import print_and_write


def train_all(config: str, generalist: str, epochs: int, workers: int, runs_root: Path) -> dict:
    name = f"bench-workers{workers}"
    cmd = [sys.executable, "-m", "respkd.cli", "specialists", "train", config, "--runs-root", str(runs_root),
           "--workers", str(workers), "--force", "--set", f"name={name}", "--set", "generalist.run=null",
           "--set", f"generalist.checkpoint={generalist}", "--set", f"specialist.train.epochs={epochs}"]
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    outer = time.perf_counter() - start
    lines = (runs_root / name / "timings.jsonl").read_text().splitlines()
    return {"workers": workers, "command_wall_s": round(outer, 1), **json.loads(lines[-1])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="a specialists config")
    parser.add_argument("--generalist", required=True, help="the generalist's checkpoint")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per specialist (default 2)")
    parser.add_argument("--workers", default="1,2", help="worker counts to compare (default 1,2)")
    parser.add_argument("--out", help="also write the markdown table here (and JSON beside it)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [train_all(args.config, args.generalist, args.epochs, int(w), Path(tmp))
                for w in args.workers.split(",")]
    base = rows[0]["command_wall_s"]
    lines = [f"Specialists of {args.config} ({args.epochs} epochs each), generalist {args.generalist}; "
             f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}.", "",
             "| workers | threads per worker | wall time of the command (s) | speed-up |", "|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['workers']} | {r.get('threads_per_worker', '')} | {r['command_wall_s']} | "
                     f"{base / r['command_wall_s']:.2f}x |")
    print_and_write(lines, rows, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
