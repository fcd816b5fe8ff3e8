"""Cost of each response loss per training epoch, relative to KD, with the teacher-output cache.

The 800-800 MNIST student distilled from the committed 1200-1200 teacher, the settings of
``configs/plans/response_family.yaml`` (hard labels only, KD at T = 20, KD + standardization, logit matching, DKD,
DIST), each from the cache (the logit-matching cache also keeps the row maxima). The epochs are timed interleaved
in one process: every round trains one epoch of each variant, from the same initial student, in an order rotated
from round to round, so drifts in the machine's load fall on every variant alike. Reported per variant: the median
epoch over the rounds, and the median over rounds of its epoch divided by that round's KD epoch (the ratio the
issue bounds: no loss may cost more than 1.05x KD). One untimed round first warms everything up. Then, as a view
that a loaded machine blurs less, the objective alone (response term + cross-entropy, forward and backward on one
batch of logits, interleaved too) in microseconds per step, beside the KD epoch's time per step. With ``--out`` it
writes the JSON and the markdown table beside it (same name, ``.md``).

    python benchmarks/loss_cost.py --train-limit 10000 --rounds 7 --out results/speed/loss_cost.json
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from respkd.checkpoint import load_model
from respkd.config import TrainConfig
from respkd.data.datasets import load_dataset
from respkd.data.memory import BatchLoader
from respkd.distill import Distiller, Supervised
from respkd.engine import build_optimizer, build_scheduler, train_one_epoch, use_bf16
from respkd.environment import capture_environment
from respkd.losses import distillation_loss, hard_label_loss
from respkd.models import build_model
from respkd.teacher_cache import build_cache, cache_spec

# name: Distiller arguments after (student, teacher); None trains on hard labels alone.
VARIANTS: dict[str, dict[str, Any] | None] = {
    "hard": None,
    "kd": {"temperature": 20.0},
    "kd+ls": {"temperature": 2.0, "soft_weight": 9.0, "hard_weight": 0.1, "standardize": True},
    "logit_mse": {"temperature": 20.0, "soft_weight": 0.01, "loss": "logit_mse"},
    "dkd": {"temperature": 4.0, "hard_weight": 1.0, "loss": "dkd", "loss_params": {"alpha": 1.0, "beta": 8.0},
            "warmup_epochs": 20},
    "dist": {"temperature": 4.0, "soft_weight": 2.0, "hard_weight": 1.0, "loss": "dist",
             "loss_params": {"beta": 1.0, "gamma": 1.0}},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", default="results/mnist/mnist-teacher-1200/model.safetensors")
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--train-limit", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    parser.add_argument("--out", help="also write the numbers as JSON here, and the markdown table beside it (.md)")
    args = parser.parse_args()
    load_start = os.getloadavg()[0]
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    bf16 = use_bf16(args.precision, device)

    teacher, meta = load_model(args.teacher, device)
    data = load_dataset(meta["dataset"], args.data_root)
    images, labels = data.train_images[: args.train_limit], data.train_labels[: args.train_limit]
    mean, std = meta["normalization"]["mean"], meta["normalization"]["std"]  # the teacher's inputs (raw / 255)
    loader = BatchLoader(images, labels, 128, mean, std, shuffle=True, drop_last=True, seed=0)
    cfg = TrainConfig(epochs=1, lr=0.01, schedule="constant")  # a small lr: no variant may diverge while timed

    def student() -> torch.nn.Module:
        torch.manual_seed(0)
        return build_model("mlp", data.num_classes, data.info.image_shape, hidden=[800, 800])

    with tempfile.TemporaryDirectory() as tmp:
        lookups = {}
        for raw in (False, True):  # the cache of every loss, and logit matching's with the row maxima
            spec = cache_spec(teacher_weights_sha256=meta["weights_sha256"], teacher_response=None,
                              dataset=meta["dataset"], data_sha256=data.sha256, train_limit=args.train_limit,
                              n_train=len(images), mean=mean, std=std, loader=loader, teacher_bf16=bf16,
                              raw_logits=raw)
            cache = build_cache(tmp, spec, Distiller(student(), teacher, 1.0).teacher_logits, loader, bf16)
            lookups[raw] = cache.for_loader(loader, device)

        def epoch_seconds(name: str) -> float:
            model, options = student(), VARIANTS[name]
            task = Supervised(model) if options is None else Distiller(model, teacher, **options)
            lookup = None if options is None else lookups[name == "logit_mse"]
            optimizer = build_optimizer(model, cfg)
            scheduler = build_scheduler(optimizer, cfg, len(loader))
            loader.set_epoch(1)
            stats = train_one_epoch(task, loader, optimizer, scheduler=scheduler, device=device, bf16=bf16, epoch=1,
                                    progress=False, teacher_logits=lookup)
            return stats["epoch_time_s"]

        names = list(VARIANTS)
        for name in names:  # warm-up round, not timed
            epoch_seconds(name)
        times: dict[str, list[float]] = {name: [] for name in names}
        for r in range(args.rounds):
            for name in names[r % len(names):] + names[: r % len(names)]:
                times[name].append(epoch_seconds(name))

    objective_us = objective_microseconds(loader, args.rounds)
    kd = times["kd"]
    rows = {name: {"median_epoch_s": statistics.median(t), "epoch_s": t,
                   "median_ratio_to_kd": statistics.median(a / b for a, b in zip(t, kd)),
                   "objective_us_per_step": objective_us[name]} for name, t in times.items()}
    env = capture_environment()
    load_end = os.getloadavg()[0]
    step_us = 1e6 * rows["kd"]["median_epoch_s"] / len(loader)
    command = "python benchmarks/loss_cost.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    lines = [f"<!-- Output of: OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '(unset)')} {command}",
             "     Generated by benchmarks/loss_cost.py: do not edit; the machine and versions are in the JSON. -->",
             f"{len(images)} MNIST images, batch 128, {'bf16' if bf16 else 'fp32'}, {torch.get_num_threads()} "
             f"thread(s), {args.rounds} interleaved rounds, {env['cpu']}; 1-minute load average at start / end: "
             f"{load_start:.2f} / {load_end:.2f} ({os.cpu_count()} cores)",
             "",
             f"| variant | median epoch (s) | / KD epoch (median of per-round ratios) | objective alone (us/step; "
             f"a KD step is {step_us:.0f}) |", "|---|---:|---:|---:|"]
    lines += [f"| {name} | {row['median_epoch_s']:.3f} | {row['median_ratio_to_kd']:.3f} | "
              f"{row['objective_us_per_step']:.0f} |" for name, row in rows.items()]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        path = Path(args.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"n_train": len(images), "bf16": bf16, "rounds": args.rounds,
                                    "load_average_1min": {"start": load_start, "end": load_end},
                                    "variants": rows, "environment": env, "markdown": text}, indent=2) + "\n")
        path.with_suffix(".md").write_text(text)


def objective_microseconds(loader: BatchLoader, rounds: int, steps: int = 500) -> dict[str, float]:
    """Median over ``rounds`` of the time of one objective's forward and backward on a batch of logits (us)."""
    g = torch.Generator().manual_seed(0)
    n, classes = loader.batch_size, 10
    student, teacher = torch.randn(n, classes, generator=g), 5 * torch.randn(n, classes, generator=g)
    labels = torch.randint(0, classes, (n,), generator=g)
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(rounds + 1):  # the first round warms up
        for name, options in VARIANTS.items():
            options = {k: v for k, v in (options or {}).items() if k != "warmup_epochs"}  # a weight, not an op
            start = time.perf_counter()
            for _ in range(steps):
                logits = student.clone().requires_grad_(True)
                if name == "hard":
                    hard_label_loss(logits, labels).backward()
                else:
                    distillation_loss(logits, teacher, labels, **options)["loss"].backward()
            times[name].append(1e6 * (time.perf_counter() - start) / steps)
    return {name: statistics.median(t[1:]) for name, t in times.items()}


if __name__ == "__main__":
    main()
