"""Cost per optimizer step of the checks after each step (respkd.guard: a non-finite loss, a signal to stop).

Epochs of ``train_one_epoch`` on random MNIST-shaped data, timed interleaved: every round trains one epoch of each
variant, in an order rotated from round to round, so drifts in the machine's load fall on every variant alike.
Variants: ``none`` (no callback after the step), ``guard`` (respkd's StepGuard as train_epochs uses it: in one CPU
process the loss is read after every step; under torchrun the processes vote every CHECK_EVERY steps), and under
torchrun ``vote-every-step`` (what CHECK_EVERY saves). Two students: the paper's 784-800-800-10 at batch 128, and a
784-32-10 at batch 4 (the smallest step, where a fixed cost shows most). Reported: the median microseconds per step
over the rounds, and the median over rounds of the difference to that round's ``none``. A busy machine blurs those
differences, so the checks are also timed alone (``isolated``): ``StepGuard.after_step`` on the running sums of a
two-term loss, and under torchrun one vote (``distributed.agree_max`` of two integers), in microseconds per call.

    python benchmarks/guard_cost.py --rounds 7
    torchrun --standalone --nproc_per_node 2 benchmarks/guard_cost.py --rounds 7
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import respkd.guard
from respkd import distributed
from respkd.data.memory import BatchLoader
from respkd.distill import Supervised
from respkd.engine import EpochProgress, train_one_epoch
from respkd.guard import StepGuard
from respkd.models import build_model

STUDENTS = {"800-800 batch 128": ([800, 800], 128, 3840), "32 batch 4": ([32], 4, 1200)}


def epoch_seconds(variant: str, task, loader, optimizer, scheduler, device: torch.device) -> float:
    guard = None
    if variant != "none":
        every = 1 if variant == "vote-every-step" else respkd.guard.check_interval(device, distributed.world_size())
        guard = StepGuard("stop", 10, len(loader), device, lambda line: None, lambda line: None, lambda: None)
        guard.every = every
        guard.start_epoch(1, EpochProgress())
    loader.set_epoch(1)
    start = time.perf_counter()
    train_one_epoch(task, loader, optimizer, scheduler=scheduler, device=device, epoch=1, progress=False,
                    after_step=None if guard is None else lambda done: guard.after_step(done, save_due=False),
                    average=distributed.all_reduce_mean)
    return time.perf_counter() - start


def isolated_us(world: int, calls: int = 20000) -> dict[str, float]:
    """Microseconds per call of the guard's check after a step, and of one vote."""
    device = torch.device("cpu")
    guard = StepGuard("stop", 10, calls + 1, device, lambda line: None, lambda line: None, lambda: None)
    guard.start_epoch(1, EpochProgress())
    done = EpochProgress()
    sums = [{"loss": torch.tensor(0.3), "hard_loss": torch.tensor(0.3)} for _ in range(calls)]  # new each step
    start = time.perf_counter()
    for step in range(calls):
        done.sums, done.batches = sums[step], step + 1
        guard.after_step(done, save_due=False)
    out = {"after_step": 1e6 * (time.perf_counter() - start) / calls}
    if world > 1:
        distributed.agree_max([0, 0])
        start = time.perf_counter()
        for _ in range(calls // 10):
            distributed.agree_max([0, 0])
        out["vote"] = 1e6 * (time.perf_counter() - start) / (calls // 10)
    return {k: round(v, 1) for k, v in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)
    device = torch.device("cpu")
    distributed.setup(device)
    world = distributed.world_size()
    variants = ["none", "guard"] + (["vote-every-step"] if world > 1 else [])
    g = torch.Generator().manual_seed(0)
    results = {}
    for student, (hidden, batch, n) in STUDENTS.items():
        images = torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=g)
        labels = torch.randint(0, 10, (n,), generator=g)
        loader = BatchLoader(images, labels, batch, (0.1307,), (0.3081,), shuffle=True, seed=0,
                             rank=distributed.rank(), world_size=world)
        model = build_model("mlp", 10, (1, 28, 28), hidden=hidden)
        task = Supervised(model)
        distributed.wrap_student(task, model, device)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
        times: dict[str, list[float]] = {v: [] for v in variants}
        for r in range(args.rounds + 1):  # the first round warms up, untimed
            order = variants[r % len(variants):] + variants[: r % len(variants)]
            for v in order:
                seconds = epoch_seconds(v, task, loader, optimizer, scheduler, device)
                if r:
                    times[v].append(1e6 * seconds / len(loader))
        results[student] = {
            v: {"us_per_step": round(statistics.median(t), 1),
                "extra_us_per_step": round(statistics.median(a - b for a, b in zip(t, times["none"])), 1)}
            for v, t in times.items()}
    alone = isolated_us(world)
    if distributed.is_main_process():
        print(json.dumps({"processes": world, "rounds": args.rounds, "check_every": respkd.guard.check_interval(
            device, world), "isolated_us": alone, "results": results}, indent=2))
    distributed.cleanup()


if __name__ == "__main__":
    main()
