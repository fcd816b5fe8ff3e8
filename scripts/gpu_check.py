"""The GPU check's driver (scripts/gpu_check.sh sets up Python and calls it): everything that only a GPU can prove,
in at most 5 minutes of one GPU, each part in its own process with a time limit.

Parts, in order:

  data       the offline MNIST converted to respkd's cache once (the later parts read it)
  tests      ``pytest -m gpu tests/test_gpu.py``: bf16 autocast KD loss in float32, the teacher cache on CUDA
             (device-resident and host-fed), bitwise resume on CUDA, train.compile with inductor, channels-last CNN
             on CUDA, an NCCL process group in one process
  resume     a training run (the respkd CLI in its own process) killed by SIGKILL part-way, at a crash point of
             tests/crash_hooks.py, and resumed with ``--resume``, against the same run
             uninterrupted: with deterministic algorithms (``torch.use_deterministic_algorithms(True,
             warn_only=True)`` and ``CUBLAS_WORKSPACE_CONFIG=:4096:8``) and without, the largest weight
             difference of each
  torchrun   ``torchrun --standalone --nproc_per_node 1 -m respkd.cli distill`` of a small config on the GPU
  speed_mlp  benchmarks/kd_speed.py on the GPU, MNIST MLPs: one warm-up and two timed epochs of every method
             (fp32 and bf16), respkd's with device-resident batches and teacher cache and again host-fed (each batch
             built in host memory and copied), and of torchdistill's DistillationBox pipeline (DataLoader with 0 and
             4 workers)
  speed_cnn  the same for the Fashion-MNIST CNNs (channels-last), one timed epoch; on synthetic images of its
             shape when no Fashion-MNIST files are found

A part that fails or runs out of time is logged (gpu_check.log) and the next one still runs; gpu_check.md and
gpu_check.json say which parts failed, with the card's name and the speed table. Exit status 1 when any part failed.

``--device cpu --tiny`` runs every part on the CPU with tiny synthetic data (a rehearsal without a GPU; the tests
of this script, in tests/test_gpu.py, run its plan, its driver and its resume part);
``--dry-run`` prints the plan and runs nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
REPLY = "GPUCHECK "
BUDGET_S = 285  # the whole check, its set-up included, within 5 minutes of GPU time
MIN_PART_S = 5  # a part is not started with less of the budget left
MNIST_TEACHER = ROOT / "results" / "mnist" / "mnist-teacher-1200" / "model.safetensors"
RESUME_NAME, TORCHRUN_NAME = "gpu-resume", "gpu-torchrun"


@dataclass
class Part:
    name: str
    what: str
    cap_s: int
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)
    summarize: Callable[[str], str] | None = None  # the part's output -> one line for the table
    needs: tuple[str, ...] = ()  # parts that must have succeeded first (e.g. the data), else this one is not run


@dataclass
class Setting:
    """Where and how big: the GPU check proper, or tiny on the CPU (tests)."""

    python: str
    device: str
    tiny: bool
    out: Path
    work: Path
    data_root: Path


# ----------------------------------------------------------------------------------------------------------- plan


def run_config(s: Setting, name: str, kd: bool) -> dict[str, Any]:
    """A small run: the 800-800 MLP (tiny: 32 units) on 10000 MNIST examples (tiny: 600 synthetic), 2 epochs."""
    cuda = s.device == "cuda"
    cfg: dict[str, Any] = {
        "name": name, "seed": 0, "device": s.device, "threads": 1 if s.tiny else None,
        "data": {"dataset": "mnist", "root": str(s.data_root), "normalize": False,
                 "train_limit": 600 if s.tiny else 10000, "test_limit": 200 if s.tiny else 2000},
        "model": {"name": "mlp", "hidden": [32] if s.tiny else [800, 800]},
        "train": {"epochs": 2, "batch_size": 100 if s.tiny else 128, "optimizer": "sgd", "lr": 0.1,
                  "schedule": "onecycle", "precision": "bf16" if cuda else "fp32"},
    }
    if kd:
        cfg["teacher"] = {"checkpoint": str(MNIST_TEACHER)}
        cfg["kd"] = {"temperature": 4.0}  # at T = 20 and lr 0.1 so short a one-cycle run diverges
    else:  # dropout draws from the generator that the state must restore
        cfg["model"].update({"dropout_input": 0.2, "dropout_hidden": 0.5})
        cfg["train"]["checkpoint_every_steps"] = 4 if s.tiny else 25
    return cfg


def crash_step(s: Setting) -> int:
    """An optimizer step in the second epoch that is not a save point: the resume redoes the steps after a save."""
    return 9 if s.tiny else 110


def fashion_mnist_found(data_root: Path) -> bool:
    from respkd.data.datasets import FASHION_MNIST_APT_DIR

    return (data_root / "fashion_mnist.safetensors").is_file() or FASHION_MNIST_APT_DIR.is_dir()


def plan(s: Setting) -> tuple[list[Part], list[str]]:
    """The parts to run, and notes for the report (e.g. which data the CNN epoch uses)."""
    import yaml

    py, notes = s.python, []
    s.work.mkdir(parents=True, exist_ok=True)
    resume_cfg = s.work / "resume.yaml"
    torchrun_cfg = s.work / "torchrun.yaml"
    resume_cfg.write_text(yaml.safe_dump(run_config(s, RESUME_NAME, kd=False), sort_keys=False))
    torchrun_cfg.write_text(yaml.safe_dump(run_config(s, TORCHRUN_NAME, kd=True), sort_keys=False))

    if s.tiny:
        data = [py, __file__, "--synthetic-mnist", str(s.data_root)]
    else:
        data = [py, "-c", "from respkd.data.datasets import load_dataset; "
                f"d = load_dataset('mnist', {str(s.data_root)!r}); "
                "print(f'mnist: {len(d.train_labels)} training / {len(d.test_labels)} test examples')"]
    bench = [py, str(ROOT / "benchmarks" / "kd_speed.py"), "--device", s.device, "--data-root", str(s.data_root)]
    if s.tiny:
        bench += ["--synthetic", "--train-limit", "512", "--test-limit", "200", "--epochs", "1", "--threads", "1",
                  "--bf16-rows", "no", "--torchdistill-workers", "0"]
        mlp = ["--methods", "student", "cached"]  # benchmarks/kd_speed.py has tests of its own
        cnn = ["--methods", "student", "cached"]
    else:  # sized to fit the budget: about a minute each on one H200 (most of it the rows' start-up)
        rows = ["student", "teacher", "online", "cached", "torchdistill", "--torchdistill-workers", "0", "4"]
        mlp = ["--methods", "matmul", *rows, "--epochs", "2", "--note", "GPU check: 2 timed epochs, a short run."]
        cnn = ["--methods", *rows, "--epochs", "1", "--note", "GPU check: 1 timed epoch, a short run."]
        if not fashion_mnist_found(s.data_root):
            cnn.append("--synthetic")
            notes.append(f"No Fashion-MNIST data found ({s.data_root / 'fashion_mnist.safetensors'} or the apt "
                         "package's folder): the CNN epoch ran on synthetic images of its shape (timing only).")
    parts = [
        Part("data", "MNIST cache", 40, data, summarize=last_line),
        Part("tests", "pytest -m gpu", 100,  # the compile test's first inductor compilation is most of it
             [py, "-m", "pytest", "-m", "gpu", str(ROOT / "tests" / "test_gpu.py"), "-q", "-p", "no:cacheprovider",
              "-o", "addopts="], env={"RESPKD_GPU_TESTS_DEVICE": s.device}, summarize=last_line),
        Part("resume", "kill + --resume vs uninterrupted", 70,
             [py, __file__, "--part-resume", str(resume_cfg), "--device", s.device, "--work", str(s.work),
              "--crash-step", str(crash_step(s))], summarize=summarize_resume, needs=("data",)),
        Part("torchrun", "torchrun --nproc_per_node 1, distill", 45,
             [py, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", "-m", "respkd.cli",
              "distill", str(torchrun_cfg), "--runs-root", str(s.work / "torchrun")],
             summarize=lambda _: summarize_torchrun(s.work / "torchrun" / TORCHRUN_NAME), needs=("data",)),
        Part("speed_mlp", "kd_speed, MNIST MLPs", 100,
             bench + ["--pairs", "mlp", "--mlp-teacher", str(MNIST_TEACHER), *mlp,
                      "--out", str(s.out / "kd_speed_gpu_mlp.json")],
             summarize=lambda _: summarize_speed(s.out / "kd_speed_gpu_mlp.json"), needs=("data",)),
        Part("speed_cnn", "kd_speed, Fashion-MNIST CNNs", 90,
             bench + ["--pairs", "cnn", "--random-teacher", *cnn, "--out", str(s.out / "kd_speed_gpu_cnn.json")],
             summarize=lambda _: summarize_speed(s.out / "kd_speed_gpu_cnn.json")),
    ]
    return parts, notes


# ------------------------------------------------------------------------------------------------------ summaries


def last_line(output: str) -> str:
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def replies(output: str) -> list[dict[str, Any]]:
    return [json.loads(line[len(REPLY):]) for line in output.splitlines() if line.startswith(REPLY)]


def summarize_resume(output: str) -> str:
    found = replies(output)
    if not found:
        return ""
    texts = []
    for mode in found[-1]["modes"]:
        exact = "bitwise identical" if mode["bitwise"] else f"max |diff| {mode['max_abs_diff']:.3g}"
        metrics = "same metrics" if mode["metrics_equal"] else "metrics differ"
        texts.append(f"{mode['mode']}: {exact}, {metrics}")
    return "; ".join(texts)


def summarize_torchrun(run_dir: Path) -> str:
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return "no summary.json"
    metrics = summary.get("metrics", {})
    return (f"finished: {summary.get('processes', 1)} process, test errors {metrics.get('errors')}/"
            f"{metrics.get('n')}, {summary.get('seconds_per_epoch')} s/epoch")


def summarize_speed(path: Path) -> str:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return "no output"
    rows = [r for p in data["pairs"].values() for r in p["results"].values()]
    bad = [r["method"] + ("-bf16" if r["bf16"] else "") for r in rows if "error" in r]
    skipped = sum("skipped" in r for r in rows)
    return f"{len(rows)} rows" + (f", failed: {', '.join(bad)}" if bad else "") + \
        (f", {skipped} skipped" if skipped else "")


# ------------------------------------------------------------------------------------------------------- running


def run_part(part: Part, limit: float, log) -> dict[str, Any]:
    """Run one part in its own process group (killed whole on timeout); its output goes to the log."""
    log.write(f"\n===== {part.name}: {' '.join(shlex.quote(c) for c in part.command)}\n")
    log.flush()
    start = time.perf_counter()
    proc = subprocess.Popen(part.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", **part.env}, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=limit)
        status = "ok" if proc.returncode == 0 else f"failed (exit status {proc.returncode})"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        status = f"failed (timed out after {limit:.0f} s)"
    log.write(output)
    log.flush()
    try:
        result = part.summarize(output) if part.summarize else ""
    except Exception as err:  # a summary that cannot be read is reported, not fatal
        result = f"(summary unreadable: {type(err).__name__}: {err})"
    if status != "ok":  # what went wrong first, then whatever else the summary could still read
        result = "; ".join(dict.fromkeys(t for t in (last_line(output), result) if t))
    return {"name": part.name, "what": part.what, "status": status, "seconds": time.perf_counter() - start,
            "result": result}


def device_description(device: str) -> dict[str, Any]:
    import torch

    info = {"torch": torch.__version__, "cuda": torch.version.cuda, "device": device}
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "CUDA is not available"
    return info


def speed_table(out: Path) -> list[str]:
    """One row per benchmark row (respkd's with device-resident and host-fed batches, torchdistill's box), one column
    per pair (MNIST MLP, Fashion-MNIST CNN), s/epoch medians; then the benchmark's ratios."""
    pairs = {}
    for name in ("mlp", "cnn"):
        try:
            pairs[name] = json.loads((out / f"kd_speed_gpu_{name}.json").read_text())["pairs"][name]
        except (OSError, ValueError, KeyError):
            continue
    if not pairs:
        return ["No speed figures: both speed parts failed."]
    titles = {"mlp": "MNIST MLPs 1200-1200 -> 800-800", "cnn": "Fashion-MNIST CNNs, channels-last"}
    keys: list[str] = []
    for p in pairs.values():
        keys += [k for k in p["results"] if k not in keys]
    lines = ["| row | " + " | ".join(f"{titles[n]} s/epoch" for n in pairs) + " |",
             "| --- |" + " --- |" * len(pairs)]
    for key in keys:
        cells = []
        for p in pairs.values():
            r = p["results"].get(key)
            if r is None:
                cells.append("")
            elif "median_s" in r:
                cells.append(f"{r['median_s']:.3f} ({r['min_s']:.3f}-{r['max_s']:.3f})")
            else:
                cells.append("skipped" if "skipped" in r else "failed")
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from kd_speed import FED_METHODS, RATIO_LABELS  # the benchmark's own names for its ratios

    columns = [p["ratios"][prec] for p in pairs.values() for prec in p["ratios"]]
    lines += ["", "| ratio of medians | " + " | ".join(f"{titles[n]} {prec}" for n in pairs for prec in
                                                         pairs[n]["ratios"]) + " |",
              "| --- |" + " --- |" * len(columns)]
    labelled = [(label, [c.get(name) for c in columns]) for name, label in RATIO_LABELS.items()]
    labelled += [(f"{method}: host-fed / device-resident", [c.get("host_over_resident", {}).get(method)
                                                           for c in columns]) for method in FED_METHODS]
    for label, cells in labelled:
        if any(c is not None for c in cells):
            lines.append(f"| {label} | " + " | ".join("-" if c is None else f"{c:.3f}" for c in cells) + " |")
    return lines


def report(results: list[dict[str, Any]], info: dict[str, Any], notes: list[str], s: Setting,
           total_s: float) -> str:
    failed = [r["name"] for r in results if r["status"] != "ok"]
    where = info.get("gpu", "CPU (tiny sizes: a test of this script, not a measurement)")
    lines = [f"# GPU check: {where}", "",
             f"torch {info['torch']} (CUDA {info['cuda']}), device {s.device}, {total_s:.0f} s in all. "
             "Generated by scripts/gpu_check.sh: do not edit.", "",
             "| part | what | status | seconds | result |", "| --- | --- | --- | --- | --- |"]
    for r in results:
        lines.append(f"| {r['name']} | {r['what']} | {r['status']} | {r['seconds']:.0f} | "
                     f"{r['result'].replace('|', '/')} |")
    lines += ["", "Failed parts: " + (", ".join(failed) if failed else "none") + ".", ""]
    lines += ["The torchrun part launches one process: torchrun sets WORLD_SIZE=1 and respkd then trains as one "
              "process, without a process group. The NCCL process group itself (init, all-reduce, a DDP step) is "
              "checked in one process by tests/test_gpu.py::test_nccl_process_group_in_one_process.", ""]
    lines += [f"{n}" for n in notes] + ([""] if notes else [])
    lines += ["## One epoch per method (median of the timed epochs, min-max)", "", *speed_table(s.out), ""]
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------- the resume part


def respkd_cli(argv: list[str], deterministic: bool, crash: str | None) -> int:
    """respkd's command line, with deterministic algorithms switched on first when asked, and killed by SIGKILL at
    the crash point ``crash`` (tests/crash_hooks.py: ``step:K`` is after optimizer step K) when given."""
    import torch

    if deterministic:  # warn_only: an op without a deterministic kernel is named in the log, not fatal
        torch.use_deterministic_algorithms(True, warn_only=True)
    if crash is not None:  # the tests' crash points: respkd itself holds no test hook
        sys.path.insert(0, str(ROOT / "tests"))
        from crash_hooks import install

        install(crash, setattr, kill=True)
    from respkd.cli import main

    return main(argv)


def resume_part(config: Path, device: str, work: Path, crash_at: int) -> dict[str, Any]:
    """The run uninterrupted, and killed at step ``crash_at`` then resumed, per mode; weights and metrics compared.

    The runs of every mode start together (separate processes: the determinism settings are per process), then the
    killed ones are resumed together.
    """
    import torch
    from safetensors.torch import load_file

    modes = ["deterministic", "default"] if device == "cuda" else ["deterministic"]  # the CPU has one behaviour
    launched = []
    for mode in modes:
        env = {k: v for k, v in os.environ.items() if k != "CUBLAS_WORKSPACE_CONFIG"}
        cli = [sys.executable, __file__, "--respkd-cli"]
        if mode == "deterministic":
            env["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
            cli.append("--deterministic")
        run = ["train", str(config), "--runs-root"]
        reference = subprocess.Popen(cli + run + [str(work / f"reference-{mode}")], env=env, cwd=ROOT)
        killed = subprocess.Popen(cli + ["--crash", f"step:{crash_at}"] + run + [str(work / f"resumed-{mode}")],
                                  env=env, cwd=ROOT)
        cli += run
        launched.append((mode, env, cli, reference, killed))
    resumes = []
    for mode, env, cli, reference, killed in launched:
        if reference.wait() != 0:
            raise SystemExit(f"{mode}: the uninterrupted run failed (exit status {reference.returncode})")
        if killed.wait() != -signal.SIGKILL:
            raise SystemExit(f"{mode}: the run to be killed at step {crash_at} ended with status {killed.returncode}")
        resumes.append(subprocess.Popen(cli + [str(work / f"resumed-{mode}"), "--resume"], env=env, cwd=ROOT))
    found = []
    for (mode, *_), resume in zip(launched, resumes):
        if resume.wait() != 0:
            raise SystemExit(f"{mode}: the resumed run failed (exit status {resume.returncode})")
        reference, resumed = work / f"reference-{mode}" / RESUME_NAME, work / f"resumed-{mode}" / RESUME_NAME
        a, b = load_file(reference / "model.safetensors"), load_file(resumed / "model.safetensors")

        def metrics(run: Path) -> list[dict]:
            rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
            return [{k: v for k, v in row.items() if k != "epoch_time_s"} for row in rows]

        found.append({"mode": mode, "bitwise": all(torch.equal(a[k], b[k]) for k in a),
                      "max_abs_diff": max(float((a[k].float() - b[k].float()).abs().max()) for k in a),
                      "metrics_equal": metrics(reference) == metrics(resumed), "crash_step": crash_at})
    return {"modes": found}


def synthetic_mnist(root: Path) -> str:
    """A tiny random MNIST-shaped dataset cache under ``root`` (what the tiny mode trains on)."""
    import torch

    from respkd.data.datasets import write_cache

    g = torch.Generator().manual_seed(0)
    arrays = {"train_images": torch.randint(0, 256, (600, 28, 28), dtype=torch.uint8, generator=g),
              "train_labels": torch.randint(0, 10, (600,), generator=g),
              "test_images": torch.randint(0, 256, (200, 28, 28), dtype=torch.uint8, generator=g),
              "test_labels": torch.randint(0, 10, (200,), generator=g)}
    root.mkdir(parents=True, exist_ok=True)
    write_cache(root / "mnist.safetensors", arrays, "synthetic (gpu_check --tiny)")
    return f"synthetic mnist: 600 training / 200 test examples in {root}"


# ---------------------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or ROOT / "results" / "speed" / "gpu"),
                        help="output folder (default: $OUT, else results/speed/gpu)")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny synthetic sizes (with --device cpu: the tests)")
    parser.add_argument("--only", nargs="+", metavar="PART", help="run these parts only")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and run nothing")
    parser.add_argument("--started-at", type=float, help="when the set-up began (time.time()): it counts too")
    parser.add_argument("--budget", type=float, default=BUDGET_S, help="seconds for the whole check")
    parser.add_argument("--break", dest="broken", nargs="+", default=[], metavar="PART",
                        help=argparse.SUPPRESS)  # test hook: these parts fail at once, to check the failure report
    parser.add_argument("--part-resume", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--crash-step", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--respkd-cli", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    parser.add_argument("--synthetic-mnist", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.respkd_cli is not None:
        rest = list(args.respkd_cli)
        deterministic = rest[:1] == ["--deterministic"]
        rest = rest[deterministic:]
        crash = rest[1] if rest[:1] == ["--crash"] else None
        return respkd_cli(rest[2:] if crash else rest, deterministic, crash)
    if args.part_resume:
        print(REPLY + json.dumps(resume_part(args.part_resume, args.device, args.work, args.crash_step)), flush=True)
        return 0
    if args.synthetic_mnist:
        print(synthetic_mnist(args.synthetic_mnist))
        return 0

    started = args.started_at or time.time()
    work = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    try:
        return check(args, parser, started, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def check(args: argparse.Namespace, parser: argparse.ArgumentParser, started: float, work: Path) -> int:
    data_root = work / "data" if args.tiny else ROOT / "data"
    s = Setting(sys.executable, args.device, args.tiny, args.out.resolve(), work, data_root)
    parts, notes = plan(s)
    names = [p.name for p in parts]
    for name in (args.only or []) + args.broken:
        if name not in names:
            parser.error(f"no part '{name}': the parts are {', '.join(names)}")
    if args.only:
        parts = [p for p in parts if p.name in args.only]
    for p in parts:
        if p.name in args.broken:
            p.command = [sys.executable, "-c", f"raise SystemExit('{p.name} broken on purpose (--break)')"]
    if args.dry_run:
        print(f"python: {sys.executable}\noutput folder: {s.out}\nbudget: {args.budget:.0f} s")
        for p in parts:
            print(f"{p.name} (at most {p.cap_s} s): {' '.join(shlex.quote(c) for c in p.command)}")
        for n in notes:
            print(n)
        return 0
    s.out.mkdir(parents=True, exist_ok=True)
    info = device_description(args.device)
    print(f"GPU check on {info.get('gpu', args.device)}; output: {s.out}", flush=True)
    results = []
    with open(s.out / "gpu_check.log", "w") as log:
        for part in parts:
            failed_first = [r["name"] for r in results if r["name"] in part.needs and r["status"] != "ok"]
            left = args.budget - (time.time() - started)
            if failed_first or left < MIN_PART_S:  # without the data these parts could only fail, slowly
                why = f"{failed_first[0]} failed" if failed_first else "out of time"
                result = {"name": part.name, "what": part.what, "status": f"not run ({why})", "seconds": 0.0,
                          "result": ""}
            else:
                result = run_part(part, min(part.cap_s, left), log)
            results.append(result)
            print(f"  {result['name']}: {result['status']} ({result['seconds']:.0f} s) {result['result']}",
                  flush=True)
    total = time.time() - started
    text = report(results, info, notes, s, total)
    (s.out / "gpu_check.md").write_text(text)
    (s.out / "gpu_check.json").write_text(json.dumps({"device": info, "parts": results, "notes": notes,
                                                       "total_s": total}, indent=2) + "\n")
    print(text)
    return 0 if all(r["status"] == "ok" for r in results) else 1

if __name__ == "__main__":
    sys.exit(main())
