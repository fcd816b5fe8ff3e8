"""Speed of distillation: what it costs over training the student alone, against the peer at its best, and against
the machine's own matrix-multiply limit.

For each teacher/student pair, with the same student, teacher, examples, batch size, optimiser (SGD, nesterov,
one-cycle) and precision in every row, this measures seconds per epoch of:

  matmul        the student's Linear-layer products alone (benchmarks/matmul_limit.py): the limit of the step
  student       respkd, the student alone on hard labels (in-memory batches)
  teacher       the teacher's forward passes alone (what online distillation must add)
  online        respkd distillation, teacher queried every step
  cached        respkd distillation from the teacher-output cache, whose one-time build is reported apart
  torchdistill  torchdistill 1.1.5's own pipeline: ``get_distillation_box`` from its YAML config, a tensor-backed
                Dataset (no PIL), its DataLoader, online teacher; once per DataLoader worker count asked for
                (default 0, 1, 2), and the ratios use the fastest
  torchdistill_pil  torchdistill's KDLoss in a hand-written loop fed by a per-sample PIL Dataset, as
                torchvision's MNIST gives it (what an input-bound script costs; not the peer at its best)
  pipelines     the input pipelines alone: respkd's batches, the tensor Dataset + DataLoader, the PIL one

in fp32 for the comparison, plus bf16-autocast rows where bf16 is fast (``--bf16-rows auto``: CUDA, or a CPU with
avx512_bf16/AMX). respkd's rows (student, teacher, online, cached) run with device-resident batches and teacher cache
(``data.device_resident: true``) and, with ``--feeds resident host`` (the default), again host-fed (``false``: each
batch built in host memory and copied; on the CPU only the cached row differs, its cache memory-mapped instead of
read into a tensor, so only it is repeated); ``--compile-rows`` adds ``torch.compile``'d twins of the training rows,
compiled during the warm-up round (its time is reported). Every row runs in its own process (benchmarks/kd_speed_worker.py), all started together; then the
epochs are interleaved round-robin (one epoch of every row, then the next epoch of every row, ...), so a shared
machine's drift reaches every row alike: one warm-up round, then ``--epochs`` timed rounds (at least 5 for figures
to quote). Reported: the median and the range of each row's timed epochs, test accuracy after the same epochs (a
sanity check), peak memory, and from the medians the ratios cached / student, online / (student + teacher),
torchdistill / cached, torchdistill / online and every row over the matmul-only epoch.

Run (after ``make benchmark-setup``, which installs torchdistill beside the pinned torch), on an idle machine:

    .venv/bin/python benchmarks/kd_speed.py --pairs mlp \\
        --mlp-teacher results/mnist/mnist-teacher-1200/model.safetensors --out results/speed/kd_speed_mlp.json

It writes the JSON and a markdown table beside it (same name, ``.md``). ``--random-teacher`` gives pairs without a
checkpoint a freshly initialised teacher (timing only); ``--synthetic`` replaces the data by random images of the
dataset's shape (timing only, when the data files are absent); ``--train-limit 1024 --epochs 1`` is a smoke test.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kd_speed_worker import METHODS, PAIRS, REPLY

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_METHODS = list(METHODS)
BF16_METHODS = ("matmul", "student", "teacher", "online", "cached", "torchdistill")
FED_METHODS = ("student", "teacher", "online", "cached")  # respkd's BatchLoader feeds them: resident or host-fed
COMPILED_METHODS = ("student", "online", "cached")
FEEDS = ("resident", "host")


@dataclass(frozen=True)
class Run:
    """One row: a method at one precision (and, for torchdistill's box, one DataLoader worker count; for respkd's
    rows, device-resident or host-fed batches, eager or compiled)."""

    method: str
    bf16: bool = False
    workers: int | None = None
    resident: bool = True
    compiled: bool = False

    @property
    def key(self) -> str:
        return (self.method + ("-bf16" if self.bf16 else "") + ("" if self.resident else "-host")
                + ("-compiled" if self.compiled else "") + ("" if self.workers is None else f"-w{self.workers}"))


def plan_runs(methods: list[str], bf16_rows: bool, torchdistill_workers: list[int], student_is_mlp: bool,
              feeds: tuple[str, ...] = ("resident",), compile_rows: bool = False, on_cpu: bool = True) -> list[Run]:
    """The rows of one pair, in the order they take their turn in each round.

    ``feeds`` (``resident``, ``host``): respkd's rows with device-resident batches and teacher cache, with host-fed
    ones, or both (respkd.data.residency). On the CPU host and device are one memory, so there only the cached row
    differs (its cache memory-mapped or read into a tensor) and only it gets a host-fed twin. ``compile_rows`` adds
    torch.compile'd twins of respkd's training rows (device-resident).
    """
    runs = []
    for bf16 in (False, True) if bf16_rows else (False,):
        for method in methods:
            if bf16 and method not in BF16_METHODS:
                continue
            if method == "matmul" and not student_is_mlp:
                continue  # the limit is that of Linear layers; a convolutional student has no such figure here
            if method == "torchdistill":
                runs += [Run(method, bf16, w) for w in torchdistill_workers]
            elif method in FED_METHODS:
                runs += [Run(method, bf16, resident=feed == "resident") for feed in feeds
                         if feed == "resident" or not on_cpu or method == "cached"]
                if compile_rows and method in COMPILED_METHODS:
                    runs.append(Run(method, bf16, compiled=True))
            else:
                runs.append(Run(method, bf16))
    return runs


class WorkerFailed(Exception):
    pass


class Worker:
    """A worker process (``kd_speed.py --worker JOB``) and its end of the protocol."""

    def __init__(self, job: dict[str, Any]) -> None:
        self.stderr = tempfile.TemporaryFile(mode="w+")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([sys.executable, __file__, "--worker", json.dumps(job)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.stderr, text=True, env=env)

    def ask(self, command: str | None) -> dict[str, Any]:
        """Send ``command`` (None: only wait for the first reply) and return the reply."""
        try:
            if command is not None:
                self.proc.stdin.write(command + "\n")
                self.proc.stdin.flush()
            for line in self.proc.stdout:
                if line.startswith(REPLY):
                    return json.loads(line[len(REPLY):])
        except (BrokenPipeError, OSError):
            pass
        raise WorkerFailed(self.error_tail())

    def error_tail(self) -> str:
        self.proc.wait()
        self.stderr.seek(0)
        lines = [line for line in self.stderr.read().strip().splitlines() if line.strip()]
        return f"exit status {self.proc.returncode}: " + " | ".join(lines[-3:])

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.stderr.close()


def spread(times: list[float]) -> dict[str, float]:
    """Median, range and quartiles of a row's timed epochs."""
    q1, _, q3 = statistics.quantiles(times, n=4, method="inclusive") if len(times) > 1 else (times[0],) * 3
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "q1_s": q1, "q3_s": q3}


def measure(runs: list[Run], base_job: dict[str, Any], epochs: int, tag: str) -> dict[str, dict[str, Any]]:
    """Every row's worker started together, prepared one after another, then ``epochs + 1`` interleaved rounds."""
    results: dict[str, dict[str, Any]] = {}
    workers: dict[str, Worker] = {}
    for run in runs:
        row = {"method": run.method, "bf16": run.bf16, "workers": run.workers, "resident": run.resident,
               "compiled": run.compiled}
        results[run.key] = {**row, "epoch_s": []}
        workers[run.key] = Worker({**base_job, **row})

    def ask(key: str, command: str | None) -> dict[str, Any] | None:
        try:
            return workers[key].ask(command)
        except WorkerFailed as err:
            results[key]["error"] = f"{command or 'start'}: {err}"
            workers.pop(key).close()
            print(f"[{tag}] {key} failed: {err}", file=sys.stderr, flush=True)
            return None

    try:
        start = time.perf_counter()
        for key in list(workers):
            out = ask(key, None)
            if out and "skipped" in out:
                results[key]["skipped"] = out["skipped"]
                workers.pop(key).close()
            elif out:
                results[key].update({k: v for k, v in out.items() if k != "ready"})
        print(f"[{tag}] {len(workers)} rows set up ({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)
        for key in list(workers):  # one after another: the cache's build time is measured alone
            out = ask(key, "prepare")
            if out:
                results[key].update(out)
        for round_number in range(epochs + 1):
            start = time.perf_counter()
            for key in list(workers):
                out = ask(key, "epoch")
                if out is None:
                    continue
                r = results[key]
                r.setdefault("wall", []).append(out["wall"])
                if round_number == 0:  # warm-up: trained, not timed
                    r["warmup_s"] = out["epoch_s"]
                    continue
                r["epoch_s"].append(out["epoch_s"])
                for part, seconds in out.get("parts", {}).items():
                    r.setdefault("parts", {}).setdefault(part, []).append(seconds)
                if "gflops_per_s" in out:
                    r.setdefault("gflops_per_s", []).append(out["gflops_per_s"])
            what = "warm-up" if round_number == 0 else f"{round_number}/{epochs}"
            print(f"[{tag}] round {what} ({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)
        for key in list(workers):
            out = ask(key, "finish")
            if out:
                results[key].update(out)
    finally:
        for worker in workers.values():
            worker.close()
    for r in results.values():
        if r["epoch_s"] and "error" not in r:
            r.update(spread(r["epoch_s"]))
            r["parts"] = {part: spread(times) for part, times in r.get("parts", {}).items()}
    return results


# ------------------------------------------------------------------------------------------------------- reporting


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def fastest_torchdistill(results: dict[str, dict[str, Any]], bf16: bool) -> str | None:
    keys = [k for k, r in results.items() if r["method"] == "torchdistill" and r["bf16"] == bf16 and "median_s" in r]
    return min(keys, key=lambda k: results[k]["median_s"]) if keys else None


def ratios(results: dict[str, dict[str, Any]], bf16: bool) -> dict[str, Any]:
    """The ratios the issue names, from the medians of one precision's rows."""
    suffix = "-bf16" if bf16 else ""

    def med(key: str | None) -> float | None:
        return results.get(key, {}).get("median_s") if key else None

    student, teacher, online, cached = (med(m + suffix) for m in ("student", "teacher", "online", "cached"))
    peer = fastest_torchdistill(results, bf16)
    matmul = med("matmul" + suffix)

    fed_from_host = any(r.get("resident") is False and r["bf16"] == bf16 and "median_s" in r for r in results.values())

    def host(method: str) -> float | None:  # the host-fed row, or where it has none (the CPU) the resident one
        return (med(method + suffix + "-host") or med(method + suffix)) if fed_from_host else None

    out = {
        "cached_over_student": ratio(cached, student),
        "online_over_student_plus_teacher": ratio(online, student + teacher if student and teacher else None),
        "teacher_over_student": ratio(teacher, student),
        "host_cached_over_student": ratio(host("cached"), host("student")),
        "host_online_over_student_plus_teacher": ratio(
            host("online"), host("student") + host("teacher") if host("student") and host("teacher") else None),
        "torchdistill_over_cached": ratio(med(peer), cached),
        "torchdistill_over_online": ratio(med(peer), online),
        "torchdistill_fastest": peer,
        "host_over_resident": {m: ratio(med(m + suffix + "-host"), med(m + suffix)) for m in FED_METHODS
                               if med(m + suffix + "-host")},
        "compiled_over_eager": {m: ratio(med(m + suffix + "-compiled"), med(m + suffix)) for m in COMPILED_METHODS
                                if med(m + suffix + "-compiled")},
        "over_matmul": {k: ratio(r.get("median_s"), matmul) for k, r in results.items()
                        if r["bf16"] == bf16 and "median_s" in r},
    }
    if not bf16:
        out["torchdistill_pil_over_cached"] = ratio(med("torchdistill_pil"), cached)
    return out


def fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def plural(n: int | None, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def timing(r: dict[str, Any]) -> str:
    return f"{r['median_s']:.3f} ({r['min_s']:.3f}-{r['max_s']:.3f})"


def row_label(r: dict[str, Any], fastest: set[str], key: str) -> str:
    label = method_label(r, fastest, key)
    if r["method"] not in FED_METHODS:
        return label
    notes = ["device-resident batches" if r.get("resident", True) else "host-fed batches"]
    if r.get("compiled"):  # the warm-up epoch is where compilation happens
        notes.append("compiled" + (f", warm-up epoch {r['warmup_s']:.1f} s" if "warmup_s" in r else ""))
    return f"{label} [{'; '.join(notes)}]"


def method_label(r: dict[str, Any], fastest: set[str], key: str) -> str:
    method = r["method"]
    if method == "matmul":
        rate = statistics.median(r["gflops_per_s"]) if r.get("gflops_per_s") else None
        return f"matrix products alone: torch.mm at the student's Linear shapes ({fmt(rate, 1)} GFLOP/s)"
    if method == "cached" and "cache_build_s" in r:
        return f"KD, cached teacher (respkd; + cache build {r['cache_build_s']:.2f} s once, {r['cache_mib']:.2f} MiB)"
    if method == "torchdistill":
        mark = ", fastest" if key in fastest else ""
        return (f"KD, torchdistill DistillationBox from YAML, tensor Dataset, DataLoader with "
                f"{plural(r['workers'], 'worker')}{mark}")
    return {
        "student": "student only (respkd)",
        "teacher": "teacher forward passes only",
        "online": "KD, online teacher (respkd)",
        "torchdistill_pil": "KD, torchdistill KDLoss in a hand-written loop fed by a per-sample PIL Dataset "
                            "(input-bound)",
    }.get(method, method)


PART_LABELS = {"respkd_batches": "input pipeline only: respkd in-memory batches",
               "tensor_dataloader": "input pipeline only: tensor Dataset + DataLoader (0 workers)",
               "pil_dataloader": "input pipeline only: PIL Dataset + DataLoader (0 workers)"}
RATIO_LABELS = {
    "cached_over_student": "cached KD / student only (1.0: distillation costs nothing extra)",
    "online_over_student_plus_teacher": "online KD / (student only + teacher forward) (1.0: nothing beyond the "
                                        "teacher's own forward pass)",
    "teacher_over_student": "teacher forward / student only (what online KD must add)",
    "host_cached_over_student": "cached KD / student only, host-fed batches",
    "host_online_over_student_plus_teacher": "online KD / (student only + teacher forward), host-fed batches",
    "torchdistill_over_cached": "torchdistill box (fastest worker count) / respkd cached KD",
    "torchdistill_over_online": "torchdistill box (fastest worker count) / respkd online KD",
    "torchdistill_pil_over_cached": "torchdistill KDLoss + PIL Dataset loop / respkd cached KD",
}


def pair_table(pair: str, results: dict[str, dict[str, Any]], meta: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The markdown section of one pair and its ratios by precision."""
    precisions = [False] + ([True] if any(r["bf16"] for r in results.values()) else [])
    by_precision = {("bf16" if b else "fp32"): ratios(results, b) for b in precisions}
    fastest = {by_precision[p]["torchdistill_fastest"] for p in by_precision} - {None}
    first = next((r for r in results.values() if "n_train" in r), {})
    cuda = str(first.get("device", "")).startswith("cuda")
    data = "synthetic random images (timing only)" if first.get("synthetic") else PAIRS[pair]["dataset"]
    lines = [f"### {PAIRS[pair]['title']}", "",
             f"{first.get('n_train')} training / {first.get('n_test')} test examples of {data}, batch "
             f"{meta['batch_size']}, T = {PAIRS[pair]['temperature']:g}, on {first.get('device')} "
             f"({plural(first.get('threads'), 'thread')}), teacher: {meta['teacher'][pair]}. Every row's epochs "
             f"interleaved round-robin: 1 warm-up round, then {plural(meta['epochs'], 'timed round')}; s/epoch is "
             "the median (min-max) of the timed epochs.", ""]
    if meta["epochs"] < 5:
        lines += [f"Only {plural(meta['epochs'], 'timed epoch')} per row: a short run, not figures to quote.", ""]
    head = "| measurement | precision | s/epoch, median (min-max) | x matmul-only | test top-1 (%) | peak RSS (MiB) |"
    lines += [head + (" CUDA peak (MiB) |" if cuda else ""),
              "| --- | --- | --- | --- | --- | --- |" + (" --- |" if cuda else "")]
    for key, r in results.items():
        precision = "bf16" if r["bf16"] else "fp32"
        label = row_label(r, fastest, key)
        if "error" in r or "skipped" in r:
            lines.append(f"| {label} | {precision} | {r.get('skipped') or 'failed: ' + r['error']} | | | |"
                         + (" |" if cuda else ""))
            continue
        if r["method"] == "pipelines":
            for part, stats in r["parts"].items():
                lines.append(f"| {PART_LABELS[part]} | {precision} | {timing(stats)} | | | |" + (" |" if cuda else ""))
            continue
        over = by_precision[precision]["over_matmul"].get(key)
        lines.append(f"| {label} | {precision} | {timing(r)} | {fmt(over, 2)} | {fmt(r.get('test_top1'), 2)} | "
                     f"{fmt(r.get('peak_rss_mib'), 0)} |" + (f" {fmt(r.get('cuda_peak_mib'), 0)} |" if cuda else ""))
    lines += ["", "| ratio of medians | " + " | ".join(by_precision) + " |",
              "| --- |" + " --- |" * len(by_precision)]
    for name, label in RATIO_LABELS.items():
        values = [fmt(by_precision[p].get(name)) for p in by_precision]
        if any(v != "-" for v in values):
            lines.append(f"| {label} | " + " | ".join(values) + " |")
    for name, label in (("host_over_resident", "host-fed / device-resident"), ("compiled_over_eager",
                                                                              "compiled / eager")):
        for method in FED_METHODS:
            values = [fmt(by_precision[p][name].get(method)) for p in by_precision]
            if any(v != "-" for v in values):
                lines.append(f"| {method}: {label} | " + " | ".join(values) + " |")
    return "\n".join(lines), by_precision


def git_commit() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        return commit + (" with uncommitted changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine(device: str) -> dict[str, Any]:
    """What the figures depend on: processor, cores, bf16 support, memory, torch, the GPU."""
    import torch

    info: dict[str, Any] = {"platform": platform.platform(), "cores": os.cpu_count(), "torch": torch.__version__,
                            "python": platform.python_version()}
    try:
        cpuinfo = open("/proc/cpuinfo").read()
        info["cpu"] = next(l.split(":", 1)[1].strip() for l in cpuinfo.splitlines() if l.startswith("model name"))
        flags = next(l for l in cpuinfo.splitlines() if l.startswith("flags")).split()
        info["avx512_bf16"] = "avx512_bf16" in flags
        info["amx_bf16"] = "amx_bf16" in flags
        mem_kib = next(int(l.split()[1]) for l in open("/proc/meminfo") if l.startswith("MemTotal"))
        info["memory_gib"] = round(mem_kib / 2**20, 1)
    except (OSError, StopIteration):
        info["cpu"] = platform.processor() or "unknown"
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def machine_line(m: dict[str, Any]) -> str:
    bf16 = "avx512_bf16" if m.get("avx512_bf16") else ("amx_bf16" if m.get("amx_bf16") else "no avx512_bf16/AMX")
    gpu = f"; GPU: {m['gpu']}" if "gpu" in m else ""
    return (f"Machine: {m.get('cpu')}, {m['cores']} cores ({bf16}), {m.get('memory_gib', '?')} GiB, "
            f"torch {m['torch']}, Python {m['python']}{gpu}.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", nargs="+", choices=list(PAIRS), default=list(PAIRS))
    parser.add_argument("--mlp-teacher", help="respkd checkpoint of the MNIST 1200-1200 teacher")
    parser.add_argument("--cnn-teacher", help="respkd checkpoint of the Fashion-MNIST CNN teacher")
    parser.add_argument("--random-teacher", action="store_true",
                        help="use a freshly initialised teacher for pairs without a checkpoint (timing only)")
    parser.add_argument("--epochs", type=int, default=5, help="timed epochs per row, after one warm-up round")
    parser.add_argument("--train-limit", type=int, help="first N training examples only (smoke tests)")
    parser.add_argument("--test-limit", type=int, help="first N test examples only")
    parser.add_argument("--synthetic", action="store_true",
                        help="random images of the dataset's shape instead of its files (timing only)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.1, help="peak lr of SGD (nesterov) with a one-cycle schedule")
    parser.add_argument("--jitter", type=int, default=0, help="translate training inputs by up to N pixels")
    parser.add_argument("--jitter-views", type=int, help="fixed jitter views (needed by the cache with --jitter)")
    parser.add_argument("--bf16-rows", choices=["auto", "yes", "no"], default="auto",
                        help="add bf16-autocast rows (auto: where bf16 is fast: CUDA, avx512_bf16 or AMX)")
    parser.add_argument("--torchdistill-workers", type=int, nargs="+", default=[0, 1, 2], metavar="N",
                        help="DataLoader worker counts of torchdistill's box, one row each (default 0 1 2)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch threads in every row (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-root", default="data", help="respkd's dataset cache folder")
    parser.add_argument("--methods", nargs="+", choices=DEFAULT_METHODS, default=DEFAULT_METHODS)
    parser.add_argument("--feeds", nargs="+", choices=FEEDS, default=list(FEEDS),
                        help="respkd's rows with device-resident and/or host-fed batches (data.device_resident; on "
                             "the CPU only the cached row differs, so only it gets a host-fed row)")
    parser.add_argument("--compile-rows", action="store_true",
                        help="add torch.compile'd rows of respkd's training methods (compiled in the warm-up epoch)")
    parser.add_argument("--note", help="a line printed under the machine line (e.g. that the machine was shared)")
    parser.add_argument("--out", help="write all measurements as JSON here, and the markdown beside it (.md)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        from kd_speed_worker import serve

        return serve(json.loads(args.worker))
    if args.epochs < 1:
        parser.error("--epochs must be at least 1")
    if any(w < 0 for w in args.torchdistill_workers):
        parser.error("--torchdistill-workers must be 0 or more")
    if args.jitter and not args.jitter_views and "cached" in args.methods:
        parser.error("--jitter with the cached method needs --jitter-views (the cache stores fixed views)")
    if args.train_limit is not None and args.train_limit < args.batch_size:
        parser.error(f"--train-limit {args.train_limit} is less than one batch of {args.batch_size}")
    if args.train_limit is not None and (args.epochs + 1) * (args.train_limit // args.batch_size) <= 6:
        # respkd's one-cycle schedule needs more than 6 steps in all (engine.build_scheduler; a known bug)
        parser.error("too few optimiser steps for the one-cycle schedule: raise --train-limit or --epochs")
    teachers = {"mlp": args.mlp_teacher, "cnn": args.cnn_teacher}
    for pair in args.pairs:
        if teachers[pair] is None and not args.random_teacher:
            parser.error(f"give --{pair}-teacher PATH, or --random-teacher for a timing-only run")
        if teachers[pair] is not None and not Path(teachers[pair]).is_file():
            parser.error(f"--{pair}-teacher {teachers[pair]}: no such file")

    from respkd.engine import fast_bf16_available
    from respkd.environment import resolve_device

    bf16_rows = args.bf16_rows == "yes" or (args.bf16_rows == "auto" and fast_bf16_available(resolve_device(args.device)))
    started, load_start = time.perf_counter(), os.getloadavg()[0]
    meta = {"batch_size": args.batch_size, "epochs": args.epochs,
            "teacher": {p: teachers[p] or "random init (timing only)" for p in PAIRS}}
    host = machine(args.device)
    out: dict[str, Any] = {"args": {k: v for k, v in vars(args).items() if k != "worker"}, "machine": host,
                           "commit": git_commit(), "date": datetime.date.today().isoformat(), "pairs": {}}
    tables = []
    for pair in args.pairs:
        runs = plan_runs(args.methods, bf16_rows, args.torchdistill_workers, PAIRS[pair]["student"]["name"] == "mlp",
                         tuple(args.feeds), args.compile_rows, resolve_device(args.device).type == "cpu")
        base_job = {"pair": pair, "teacher_path": teachers[pair], "epochs": args.epochs,
                    "train_limit": args.train_limit, "test_limit": args.test_limit, "synthetic": args.synthetic,
                    "batch_size": args.batch_size, "lr": args.lr, "jitter": args.jitter,
                    "jitter_views": args.jitter_views, "device": args.device, "threads": args.threads,
                    "seed": args.seed, "data_root": args.data_root}
        results = measure(runs, base_job, args.epochs, pair)
        table, pair_ratios = pair_table(pair, results, meta)
        tables.append(table)
        out["pairs"][pair] = {"results": results, "ratios": pair_ratios}
    out["wall_s"] = time.perf_counter() - started
    out["load_average_1min"] = {"start": load_start, "end": os.getloadavg()[0]}
    command = "python benchmarks/kd_speed.py " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    header = [f"<!-- Output of: {command}", f"     at commit {out['commit']} on {out['date']}, "
              f"{out['wall_s'] / 60:.1f} min. Generated by benchmarks/kd_speed.py: do not edit. -->",
              machine_line(host),
              f"1-minute load average at start / end: {load_start:.2f} / {out['load_average_1min']['end']:.2f} "
              f"({host['cores']} cores)." + (f" {args.note}" if args.note else "")]
    memory_note = ("Peak RSS: the resident set size high-water mark of the row's process from the end of its set-up "
                   "(data and models loaded) to its end (VmHWM, reset via /proc/self/clear_refs). x matmul-only: the "
                   "row's median epoch over the median epoch of the matrix products alone at the same precision.")
    text = "\n\n".join(["\n".join(header)] + tables + [memory_note]) + "\n"
    print(text)
    if args.out:
        path = Path(args.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({**out, "markdown": text}, indent=2) + "\n")
        path.with_suffix(".md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
