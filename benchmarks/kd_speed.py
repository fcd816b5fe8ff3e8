"""Speed of distillation: does it cost more than training the student alone, and how does it compare to a peer?

For each teacher/student pair, on the same data, with the same optimiser, schedule, batch size and precision, this
measures seconds per epoch (median of the timed epochs, after one warm-up epoch that is trained but not timed) of:

  student     the student alone, hard labels (respkd engine, in-memory batches)
  online      distillation, teacher queried every step (respkd Distiller, under inference_mode)
  cached      distillation from the teacher-output cache (respkd.teacher_cache), whose build time is reported apart
  torchdistill  the same objective written with torchdistill 1.1.5's KDLoss and a standard per-sample
              Dataset (PIL image + ToTensor + Normalize, as torchvision's MNIST) with a DataLoader, num_workers=0
  teacher     the teacher's forward passes alone over one epoch of batches (what the online teacher must cost)
  pipelines   iterating the input pipelines alone: respkd's BatchLoader vs the Dataset + DataLoader

plus the test accuracy after the same number of epochs, and ratios: cached / student, online / (student + teacher),
ours / torchdistill. Every measurement runs in its own subprocess (same command), so one cannot warm the caches or
inflate the memory of the next; memory is that subprocess's peak resident set size (VmHWM) while it trains, its
high-water mark reset just before (``/proc/self/clear_refs``), reported with the size it had before it started
(Python, torch, the data, the models). RSS counts what torch allocates on the CPU, unlike tracemalloc.

Run (after ``make benchmark-setup``, which installs torchdistill beside the pinned torch):

    .venv/bin/python benchmarks/kd_speed.py --mlp-teacher runs/mnist-teacher-1200/model.safetensors \\
        --random-teacher --out results/kd_speed.json

``--random-teacher`` gives a freshly initialised teacher to pairs without a checkpoint (timing is the same, accuracy
then measures how well the student imitates a random teacher). ``--train-limit 512 --epochs 2`` is a smoke test.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PAIRS: dict[str, dict[str, Any]] = {
    "mlp": {
        "title": "MNIST MLPs 1200-1200 -> 800-800",
        "dataset": "mnist",
        "teacher": {"name": "mlp", "hidden": [1200, 1200]},
        "student": {"name": "mlp", "hidden": [800, 800]},
        "temperature": 20.0,
        "channels_last": False,
    },
    "cnn": {
        "title": "Fashion-MNIST CNNs [64,128,256] -> [16,32,64], channels_last",
        "dataset": "fashion_mnist",
        "teacher": {"name": "cnn", "channels": [64, 128, 256]},
        "student": {"name": "cnn", "channels": [16, 32, 64]},
        "temperature": 4.0,
        "channels_last": True,
    },
}
METHODS = ("pipelines", "student", "teacher", "online", "cached", "torchdistill")


# ----------------------------------------------------------------------------------------------------- worker side


def _status_kib(field: str) -> int | None:
    try:
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


class PeakMemory:
    """Peak resident set size of this process from now on: VmHWM after resetting it (Linux), else ru_maxrss."""

    def __init__(self) -> None:
        import resource

        self.resource = resource
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS
            self.method = "VmHWM reset at start"
        except OSError:
            self.method = "ru_maxrss (peak since process start)"
        self.before_kib = _status_kib("VmRSS") or 0

    def result(self) -> dict[str, Any]:
        peak = _status_kib("VmHWM") if self.method.startswith("VmHWM") else None
        if peak is None:
            peak = self.resource.getrusage(self.resource.RUSAGE_SELF).ru_maxrss
        return {"rss_before_mib": round(self.before_kib / 1024, 1), "peak_rss_mib": round(peak / 1024, 1),
                "memory_method": self.method}


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def worker(job: dict[str, Any]) -> dict[str, Any]:
    import torch

    from respkd.checkpoint import load_model, read_checkpoint_meta
    from respkd.config import TrainConfig
    from respkd.data.datasets import load_dataset
    from respkd.data.memory import BatchLoader
    from respkd.distill import Distiller, Supervised
    from respkd.engine import autocast, build_optimizer, build_scheduler, evaluate, train_one_epoch, use_bf16
    from respkd.environment import resolve_device
    from respkd.models import build_model
    from respkd.teacher_cache import build_cache, cache_spec

    if job["threads"]:
        torch.set_num_threads(job["threads"])
    pair, method = PAIRS[job["pair"]], job["method"]
    device = resolve_device(job["device"])
    data = load_dataset(pair["dataset"], job["data_root"])
    n_train, n_test = job["train_limit"], job["test_limit"]
    train_x, train_y = data.train_images[:n_train], data.train_labels[:n_train]
    test_x, test_y = data.test_images[:n_test], data.test_labels[:n_test]
    info, cl, T = data.info, pair["channels_last"], pair["temperature"]
    # Inputs are normalised as the teacher's run normalised them (the paper's MLPs take raw pixels / 255).
    mean, std = info.mean, info.std
    if job["teacher_path"]:
        norm = read_checkpoint_meta(Path(job["teacher_path"])).get("normalization") or {}
        mean, std = tuple(norm.get("mean", mean)), tuple(norm.get("std", std))
    epochs = job["epochs"] + 1  # one warm-up epoch, trained but not timed
    bf16 = use_bf16(job["precision"], device)
    fmt = torch.channels_last if cl else torch.contiguous_format

    def make_student() -> torch.nn.Module:
        torch.manual_seed(job["seed"])  # every method starts from the same student
        spec = dict(pair["student"])
        return build_model(spec.pop("name"), data.num_classes, info.image_shape, **spec).to(device, memory_format=fmt)

    def make_teacher() -> torch.nn.Module:
        if job["teacher_path"]:
            teacher, meta = load_model(job["teacher_path"], device)
            if meta["num_classes"] != data.num_classes or tuple(meta["in_shape"]) != info.image_shape:
                raise SystemExit(f"{job['teacher_path']}: a teacher for other data than {pair['dataset']}")
        else:
            torch.manual_seed(job["seed"] + 1000)
            spec = dict(pair["teacher"])
            teacher = build_model(spec.pop("name"), data.num_classes, info.image_shape, **spec).to(device)
        return teacher.to(memory_format=fmt).eval().requires_grad_(False)

    def batch_loader(shuffle: bool = True) -> BatchLoader:
        return BatchLoader(train_x, train_y, job["batch_size"], mean, std, shuffle=shuffle,
                           jitter=job["jitter"], jitter_views=job["jitter_views"], drop_last=True, seed=job["seed"],
                           device=device, channels_last=cl)

    def per_sample_loader():
        """What most training scripts do: torchvision-style Dataset (PIL per sample) + DataLoader, no workers."""
        from PIL import Image
        from torch.utils.data import DataLoader, Dataset
        from torchvision import transforms

        class MNISTLike(Dataset):  # torchvision.datasets.MNIST.__getitem__, on the same in-memory uint8 images
            def __init__(self, images, labels, transform) -> None:
                self.images, self.labels, self.transform = images[:, 0], labels, transform

            def __len__(self) -> int:
                return len(self.labels)

            def __getitem__(self, i: int):
                return self.transform(Image.fromarray(self.images[i].numpy())), int(self.labels[i])

        steps = [transforms.RandomCrop(info.image_shape[1:], padding=job["jitter"])] if job["jitter"] else []
        steps += [transforms.ToTensor(), transforms.Normalize(mean, std)]
        generator = torch.Generator().manual_seed(job["seed"])
        return DataLoader(MNISTLike(train_x, train_y, transforms.Compose(steps)), batch_size=job["batch_size"],
                          shuffle=True, drop_last=True, num_workers=0, generator=generator)

    cfg = TrainConfig(epochs=epochs, batch_size=job["batch_size"], optimizer="sgd", lr=job["lr"], schedule="onecycle")
    test_loader = BatchLoader(test_x, test_y, 1000, mean, std, device=device, channels_last=cl)
    result: dict[str, Any] = {"pair": job["pair"], "method": method, "bf16": bf16, "device": str(device),
                              "threads": torch.get_num_threads(), "n_train": len(train_x), "n_test": len(test_x)}
    times: list[float] = []

    def train_with(task, student, loader, teacher_logits=None) -> None:
        optimizer = build_optimizer(student, cfg)
        scheduler = build_scheduler(optimizer, cfg, len(loader))
        for epoch in range(1, epochs + 1):
            loader.set_epoch(epoch)
            stats = train_one_epoch(task, loader, optimizer, scheduler=scheduler, device=device, bf16=bf16,
                                    epoch=epoch, progress=False, teacher_logits=teacher_logits)
            times.append(stats["epoch_time_s"])

    if method == "pipelines":
        memory = PeakMemory()
        ours, theirs = batch_loader(), per_sample_loader()
        ours_times = []
        for epoch in range(1, epochs + 1):
            ours.set_epoch(epoch)
            start = time.perf_counter()
            for x, y, _ in ours:
                pass
            _sync(device)
            ours_times.append(time.perf_counter() - start)
        for _ in range(epochs):
            start = time.perf_counter()
            for x, y in theirs:
                x = x.to(device, memory_format=fmt)
            _sync(device)
            times.append(time.perf_counter() - start)
        result["respkd_loader_epoch_s"] = ours_times
        result.update(memory.result())
    elif method == "teacher":
        teacher, loader = make_teacher(), batch_loader()
        memory = PeakMemory()
        for epoch in range(1, epochs + 1):
            loader.set_epoch(epoch)
            start = time.perf_counter()
            for x, _, _ in loader:
                with torch.inference_mode(), autocast(device, bf16):
                    teacher(x)
            _sync(device)
            times.append(time.perf_counter() - start)
        result.update(memory.result())
    elif method in ("student", "online", "cached"):
        student, loader = make_student(), batch_loader()
        task = Supervised(student) if method == "student" else Distiller(student, make_teacher(), T)
        memory = PeakMemory()
        lookup = None
        if method == "cached":
            with tempfile.TemporaryDirectory() as tmp:
                spec = cache_spec(
                    teacher_weights_sha256="benchmark", teacher_response=None, dataset=pair["dataset"],
                    data_sha256=data.sha256, train_limit=n_train, n_train=len(train_x), mean=mean,
                    std=std, loader=loader, teacher_bf16=bf16,
                )
                start = time.perf_counter()
                cache = build_cache(tmp, spec, task.teacher_logits, loader, bf16)
                result["cache_build_s"] = time.perf_counter() - start
                result["cache_mib"] = sum(f["bytes"] for f in cache.meta["files"].values()) / 2**20
                lookup = cache.for_loader(loader, device)
                train_with(task, student, loader, lookup)
        else:
            train_with(task, student, loader)
        result.update(memory.result())
        result["test_top1"] = evaluate(student, test_loader, data.num_classes)["top1"]
    elif method == "torchdistill":
        try:
            from torchdistill.losses.mid_level import KDLoss
        except ImportError as err:
            return {**result, "skipped": f"torchdistill is not installed ({err}); run `make benchmark-setup`"}
        import torchdistill

        student, teacher, loader = make_student(), make_teacher(), per_sample_loader()
        # torchdistill 1.1.5's KDLoss is alpha * CE + (1 - alpha) * T^2 * KL, except that it returns the plain KL,
        # *without* T^2, when alpha is None or 0 (or no targets are given). respkd's soft-only objective here is
        # T^2 * KL (soft_weight 1, hard_weight 0), so: alpha=0.0 and multiply by T^2 ourselves; reduction batchmean
        # in both. (A hard term would be alpha=a, beta=1-a: respkd's hard_weight=a, soft_weight=1-a.)
        kd_loss = KDLoss("logits", "output", "logits", "output", temperature=T, alpha=0.0, reduction="batchmean")
        optimizer = build_optimizer(student, cfg)
        scheduler = build_scheduler(optimizer, cfg, len(loader))
        memory = PeakMemory()
        for _ in range(epochs):
            student.train()
            total = torch.zeros((), device=device)
            start = time.perf_counter()
            for x, y in loader:
                x, y = x.to(device, memory_format=fmt), y.to(device)
                with autocast(device, bf16):
                    student_logits = student(x)
                    with torch.no_grad():
                        teacher_logits = teacher(x)
                loss = T**2 * kd_loss({"logits": {"output": student_logits.float()}},
                                      {"logits": {"output": teacher_logits.float()}}, y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                total += loss.detach()
            float(total)  # one sync per epoch, as respkd's engine does
            times.append(time.perf_counter() - start)
        result.update(memory.result())
        result["torchdistill"] = torchdistill.__version__
        result["test_top1"] = evaluate(student, test_loader, data.num_classes)["top1"]
    else:
        raise SystemExit(f"unknown method {method}")
    result["epoch_s"] = times
    result["median_epoch_s"] = statistics.median(times[1:] or times)
    if "respkd_loader_epoch_s" in result:
        result["respkd_loader_median_s"] = statistics.median(result["respkd_loader_epoch_s"][1:] or times)
    if device.type == "cuda":
        result["cuda_peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return result


# ------------------------------------------------------------------------------------------------------ driver side


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(job)], capture_output=True, text=True,
                          env=env)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        return {"pair": job["pair"], "method": job["method"], "error": " | ".join(tail)}
    return json.loads(lines[-1])


def fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def report(pair: str, res: dict[str, dict[str, Any]], jobs_meta: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    med = {m: r.get("median_epoch_s") for m, r in res.items()}
    pipe = res.get("pipelines", {})
    student, teacher = med.get("student"), med.get("teacher")
    ratios = {
        "cached_over_student": ratio(med.get("cached"), student),
        "online_over_student_plus_teacher": ratio(med.get("online"),
                                                  student + teacher if student and teacher else None),
        "teacher_over_student": ratio(med.get("teacher"), med.get("student")),
        "online_over_torchdistill": ratio(med.get("online"), med.get("torchdistill")),
        "cached_over_torchdistill": ratio(med.get("cached"), med.get("torchdistill")),
        "respkd_loader_over_dataloader": ratio(pipe.get("respkd_loader_median_s"), pipe.get("median_epoch_s")),
    }
    rows = [
        ("student only (respkd)", "student"),
        ("KD, online teacher (respkd)", "online"),
        ("KD, cached teacher (respkd)", "cached"),
        ("KD, torchdistill KDLoss + Dataset/DataLoader", "torchdistill"),
        ("teacher forward passes only", "teacher"),
    ]
    any_r = next(iter(r for r in res.values() if "n_train" in r), {})
    lines = [f"### {PAIRS[pair]['title']}", "",
             f"{any_r.get('n_train')} training / {any_r.get('n_test')} test examples, batch {jobs_meta['batch_size']}, "
             f"T = {PAIRS[pair]['temperature']:g}, {'bf16' if any_r.get('bf16') else 'fp32'} on {any_r.get('device')} "
             f"({any_r.get('threads')} threads), teacher: {jobs_meta['teacher'][pair]}; seconds per epoch are the "
             f"median of {jobs_meta['epochs']} timed epochs after 1 warm-up epoch.", "",
             "| measurement | s/epoch | test top-1 (%) | peak RSS (MiB) | RSS before (MiB) |",
             "| --- | --- | --- | --- | --- |"]
    for label, m in rows:
        if m not in res:
            continue
        r = res[m]
        if "error" in r or "skipped" in r:
            lines.append(f"| {label} | {r.get('skipped') or 'failed: ' + r['error']} | | | |")
            continue
        extra = f" (+ cache build {r['cache_build_s']:.2f} s once, {r['cache_mib']:.2f} MiB)" if m == "cached" else ""
        lines.append(f"| {label} | {fmt(r.get('median_epoch_s'))}{extra} | {fmt(r.get('test_top1'), 2)} | "
                     f"{fmt(r.get('peak_rss_mib'), 0)} | {fmt(r.get('rss_before_mib'), 0)} |")
    if "median_epoch_s" in pipe:
        lines.append(f"| input pipeline only: respkd BatchLoader | {fmt(pipe.get('respkd_loader_median_s'))} | | | |")
        lines.append(f"| input pipeline only: per-sample Dataset + DataLoader | {fmt(pipe.get('median_epoch_s'))} "
                     f"| | | |")
    lines += ["", "| ratio | value |", "| --- | --- |"]
    names = {
        "cached_over_student": "cached KD / student only (1.0 = distillation costs nothing extra)",
        "online_over_student_plus_teacher": "online KD / (student only + teacher forward) (1.0 = no overhead "
                                            "beyond the teacher's own forward pass)",
        "teacher_over_student": "teacher forward / student training (what online KD must add)",
        "online_over_torchdistill": "online KD, respkd / torchdistill",
        "cached_over_torchdistill": "cached KD, respkd / torchdistill",
        "respkd_loader_over_dataloader": "input pipeline, respkd BatchLoader / Dataset + DataLoader",
    }
    for key, label in names.items():
        lines.append(f"| {label} | {fmt(ratios[key])} |")
    acc = {m: res.get(m, {}).get("test_top1") for m in ("online", "cached", "torchdistill")}
    gaps = {m: None if acc[m] is None or acc["torchdistill"] is None else acc[m] - acc["torchdistill"]
            for m in ("online", "cached")}
    ratios.update({f"top1_{m}_minus_torchdistill": gap for m, gap in gaps.items()})
    lines.append(f"| test top-1, respkd minus torchdistill, online / cached (points) | {fmt(gaps['online'], 2)} / "
                 f"{fmt(gaps['cached'], 2)} |")
    return "\n".join(lines), ratios


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", nargs="+", choices=list(PAIRS), default=list(PAIRS))
    parser.add_argument("--mlp-teacher", help="respkd checkpoint of the MNIST 1200-1200 teacher")
    parser.add_argument("--cnn-teacher", help="respkd checkpoint of the Fashion-MNIST CNN teacher")
    parser.add_argument("--random-teacher", action="store_true",
                        help="use a freshly initialised teacher for pairs without a checkpoint (timing only)")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs (after one untimed warm-up epoch)")
    parser.add_argument("--train-limit", type=int, help="first N training examples only (smoke tests)")
    parser.add_argument("--test-limit", type=int, help="first N test examples only")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.1, help="peak lr of SGD (nesterov) with a one-cycle schedule")
    parser.add_argument("--jitter", type=int, default=0, help="translate training inputs by up to N pixels")
    parser.add_argument("--jitter-views", type=int, help="fixed jitter views (needed by the cache with --jitter)")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch threads in every measurement (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-root", default="data", help="respkd's dataset cache folder")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--out", help="write all measurements and ratios as JSON here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))), flush=True)
        return 0
    if args.epochs < 1:
        parser.error("--epochs must be at least 1")
    if args.jitter and not args.jitter_views and "cached" in args.methods:
        parser.error("--jitter with the cached method needs --jitter-views (the cache stores fixed views)")
    if args.train_limit is not None and (args.epochs + 1) * (args.train_limit // args.batch_size) <= 6:
        # respkd's one-cycle schedule needs more than 6 steps in all (engine.build_scheduler; a known bug)
        parser.error("too few optimiser steps for the one-cycle schedule: raise --train-limit or --epochs")
    teachers = {"mlp": args.mlp_teacher, "cnn": args.cnn_teacher}
    for pair in args.pairs:
        if teachers[pair] is None and not args.random_teacher:
            parser.error(f"give --{pair}-teacher PATH, or --random-teacher for a timing-only run")
        if teachers[pair] is not None and not Path(teachers[pair]).is_file():
            parser.error(f"--{pair}-teacher {teachers[pair]}: no such file")
    meta = {"batch_size": args.batch_size, "epochs": args.epochs,
            "teacher": {p: teachers[p] or "random init (timing only)" for p in PAIRS}}
    out: dict[str, Any] = {"args": vars(args), "pairs": {}}
    tables = []
    for pair in args.pairs:
        res = {}
        for method in args.methods:
            job = {"pair": pair, "method": method, "teacher_path": teachers[pair], "epochs": args.epochs,
                   "train_limit": args.train_limit, "test_limit": args.test_limit, "batch_size": args.batch_size,
                   "lr": args.lr, "jitter": args.jitter, "jitter_views": args.jitter_views,
                   "precision": args.precision, "device": args.device, "threads": args.threads, "seed": args.seed,
                   "data_root": args.data_root}
            start = time.perf_counter()
            res[method] = run_job(job)
            status = res[method].get("error") or res[method].get("skipped") or \
                f"{res[method]['median_epoch_s']:.3f} s/epoch"
            print(f"[{pair}] {method}: {status} ({time.perf_counter() - start:.0f}s)", file=sys.stderr, flush=True)
        table, ratios = report(pair, res, meta)
        tables.append(table)
        out["pairs"][pair] = {"results": res, "ratios": ratios}
    memory_note = ("Peak RSS: the resident set size high-water mark of the subprocess that ran the measurement, reset "
                   "just before it started (VmHWM via /proc/self/clear_refs); 'RSS before' is what the process held "
                   "then (interpreter, torch, data, models), so peak - before is what the measurement added.")
    text = "\n\n".join(tables + [memory_note])
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({**out, "markdown": text}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
