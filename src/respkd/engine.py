"""The training loop as plain functions (the shape of torchvision's reference scripts).

:func:`train_one_epoch` and :func:`evaluate` take any iterable of ``(inputs, labels)`` batches, a plain
``torch.utils.data.DataLoader`` included, and move each batch to the device; respkd's own loaders add the example
indices, ``(inputs, labels, indices)``, which only the teacher cache needs.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import torch
from torch import nn
from tqdm import tqdm

from respkd import distributed

if TYPE_CHECKING:  # only for annotations: the loop itself needs no config, so importing it does not load pydantic
    from respkd.config import TrainConfig

__all__ = [
    "EpochProgress", "autocast", "build_optimizer", "build_scheduler", "device_of", "evaluate", "fast_bf16_available",
    "train_one_epoch", "unpack_batch", "use_bf16",
]

POSTFIX_SECONDS = 0.5  # how often the training bar's running loss is refreshed
EVAL_BAR_DELAY_SECONDS = 2.0  # an evaluation shows a bar only once it has taken this long: large sets only


def fast_bf16_available(device: torch.device) -> bool:
    """Whether bf16 matrix multiplies run natively (and so faster than fp32) on ``device``."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        flags = next(l for l in open("/proc/cpuinfo") if l.startswith("flags")).split()
    except (OSError, StopIteration):
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def use_bf16(precision: str, device: torch.device) -> bool:
    return precision == "bf16" or (precision == "auto" and fast_bf16_available(device))


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on ``device`` when enabled (losses inside respkd.losses opt out and stay in float32)."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD or AdamW over the trainable parameters, with torch's fused kernel where every parameter allows it.

    The fused update is one pass over each parameter instead of several elementwise ops: on the 800-800 MNIST MLP
    (1.28M parameters, batch 128, one CPU thread) the nesterov SGD step alone drops from about 1.0 ms to about 0.3 ms of a
    7 ms step. It rounds differently in the last bit (fused multiply-adds), so runs differ from unfused ones there.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    fused = fusable(params)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
                               weight_decay=cfg.weight_decay, fused=fused)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)


def fusable(params: Sequence[torch.Tensor]) -> bool | None:
    """True when torch's fused optimizer kernels can update every one of ``params``: dense float tensors on the CPU
    or CUDA, each contiguous; None (torch's own default) otherwise.

    Contiguous, because the CPU kernel walks a parameter, its gradient and its momentum buffer as flat memory: a
    channels-last weight beside a contiguous buffer (what loading a training state gives) is updated with the wrong
    elements, silently (torch 2.14.1; tests/test_engine.py shows it).
    """
    ok = bool(params) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() and not p.is_sparse
                              and p.is_contiguous() for p in params)
    return True if ok else None


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
    """A per-step learning-rate schedule (``scheduler.step()`` after every optimizer step)."""
    total = cfg.epochs * steps_per_epoch
    # OneCycleLR divides by the length of its warm-up phase: keep it at least one step, even for a 2-step run.
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=cfg.lr, total_steps=total, pct_start=max(cfg.warmup_fraction, min(1.5 / total, 0.75)),
            cycle_momentum=cfg.cycle_momentum and cfg.optimizer == "sgd",
        )
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / total)))
    if cfg.schedule == "step":
        milestones = sorted(m * steps_per_epoch for m in cfg.milestones)
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=cfg.gamma)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)


@dataclass
class EpochProgress:
    """How far an epoch has got: batches trained, the running sums of its loss terms, and seconds spent on it.

    The training state of :mod:`respkd.resume` saves it, so an epoch interrupted part-way continues from its next
    batch with the same sums, and so reports exactly the statistics of an uninterrupted epoch. ``skipped``: batches
    whose update was not applied (``train.on_nonfinite: skip_step``), left out of the sums.
    """

    batches: int = 0
    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    seconds: float = 0.0
    skipped: int = 0


def device_of(module: nn.Module) -> torch.device:
    """Where ``module`` computes: the device of its first parameter (or buffer); the CPU for a module with neither."""
    for tensor in itertools.chain(module.parameters(), module.buffers()):
        return tensor.device
    return torch.device("cpu")


def unpack_batch(batch: Sequence, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(inputs, labels)`` or ``(inputs, labels, indices)`` -> inputs and labels on ``device`` (a no-op for batches
    already there), and the example indices (None when the batch has none) where they are."""
    if not isinstance(batch, Sequence) or len(batch) not in (2, 3):
        size = f"{len(batch)} items" if isinstance(batch, Sequence) else type(batch).__name__
        raise ValueError(f"a batch must be (inputs, labels) or (inputs, labels, indices), got {size}")
    inputs, labels = (t.to(device, non_blocking=True) for t in batch[:2])
    return inputs, labels, batch[2] if len(batch) == 3 else None


def _trained_model(task: nn.Module) -> nn.Module:
    """The model a task trains: ``task.student`` (under DDP, the module inside), else the task itself."""
    student = getattr(task, "student", task)
    if isinstance(student, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        return student.module
    return student


def train_one_epoch(
    task: nn.Module,
    loader: Iterable,
    optimizer: torch.optim.Optimizer,
    *,
    scheduler: Any = None,
    device: torch.device | str | None = None,
    bf16: bool = False,
    epoch: int | None = None,
    progress: bool | None = None,
    teacher_logits: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
    done: EpochProgress | None = None,
    after_step: Callable[[EpochProgress], None] | None = None,
    average: Callable[[torch.Tensor], torch.Tensor] | None = None,
    skip_step: Callable[[dict[str, torch.Tensor], EpochProgress], bool] | None = None,
) -> dict[str, float]:
    """One pass over ``loader``; returns the mean of every loss term over the steps applied, the epoch's wall time,
    the learning rate and the number of steps skipped.

    Args:
        task: a :class:`~respkd.distill.Supervised` or :class:`~respkd.distill.Distiller` (any module whose
            ``forward(inputs, labels)`` returns a dict with ``loss``). Its trained model (``task.student``) has its
            ``apply_constraints()`` (max-norm) run after every step when it has one.
        loader: any iterable of ``(inputs, labels)`` batches, e.g. a ``torch.utils.data.DataLoader``;
            ``(inputs, labels, indices)`` too (the example indices are needed only with ``teacher_logits``).
        optimizer: steps after every batch.
        scheduler: a per-step learning-rate schedule (``scheduler.step()`` after every optimizer step), or None.
        device: where to compute; batches are moved there (default: where the task's parameters are).
        bf16: bf16 autocast for the forward pass (the losses stay in float32).
        epoch: the epoch (from 1), told to a task with ``set_epoch`` (a Distiller whose loss warms up, e.g. DKD) and
            shown by the progress bar.
        progress: a tqdm bar with the running mean loss, left on screen when the epoch ends; None: when stderr is a
            terminal. Where it is not (a log file, a pipe), no bar is written.
        teacher_logits: ``teacher_logits(indices, epoch)`` returns the teacher's outputs for the batch's examples
            (:meth:`respkd.teacher_cache.TeacherCache.for_loader`), handed to the Distiller instead of a teacher pass.
        done: the part of this epoch already trained (resuming); ``loader`` must then yield only the batches after it.
        after_step: runs after every optimizer step with the epoch's progress (e.g. to save the training state).
        average: under torchrun, averages the summed loss terms over the processes
            (:func:`respkd.distributed.all_reduce_mean`): one collective per epoch, not per step.
        skip_step: ``skip_step(out, progress)`` runs between backward and the optimizer step; True drops the step
            (its gradients, update and loss terms; the schedule still advances) and counts it in ``skipped_steps``
            (:class:`respkd.guard.StepGuard`, ``train.on_nonfinite: skip_step``).

    Returns:
        ``{"loss": ..., <each loss term>: ..., "skipped_steps": ..., "epoch_time_s": ..., "lr": ...}``.

    Example:
        >>> task = Distiller(student, teacher, temperature=20.0, hard_weight=1.0)
        >>> optimizer = torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9)
        >>> for epoch in range(1, 4):
        ...     stats = train_one_epoch(task, DataLoader(train_set, batch_size=128, shuffle=True), optimizer,
        ...                             epoch=epoch)
    """
    device = device_of(task) if device is None else torch.device(device)
    task.train()
    set_epoch = getattr(task, "set_epoch", None)  # a Distiller whose loss warms up over epochs (DKD) reads it
    if set_epoch is not None and epoch is not None:
        set_epoch(epoch)
    constrain = getattr(_trained_model(task), "apply_constraints", None)
    show = sys.stderr.isatty() if progress is None else progress
    state = done or EpochProgress()
    sums = state.sums
    start = time.perf_counter() - state.seconds
    bar = tqdm(total=len(loader) if hasattr(loader, "__len__") else None, initial=state.batches,
               desc="train" if epoch is None else f"epoch {epoch}", disable=not show, dynamic_ncols=True)
    shown_at = time.perf_counter()
    for batch in loader:
        inputs, labels, indices = unpack_batch(batch, device)
        cached = {}
        if teacher_logits is not None:
            if indices is None:
                raise ValueError("teacher_logits looks the teacher's outputs up by example: the loader must yield "
                                 "(inputs, labels, indices) batches")
            cached["teacher_logits"] = teacher_logits(indices, epoch)
        with autocast(device, bf16):
            out = task(inputs, labels, **cached)
        optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        if skip_step is not None and skip_step(out, state):
            optimizer.zero_grad(set_to_none=True)
            state.skipped += 1
        else:
            optimizer.step()
            if constrain is not None:
                constrain()
            for key, value in out.items():
                if key.endswith("loss"):
                    sums[key] = sums.get(key, 0.0) + value.detach().float()  # summed on device: no sync per step
        if scheduler is not None:
            scheduler.step()
        state.batches += 1
        state.seconds = time.perf_counter() - start
        if after_step is not None:
            after_step(state)
        bar.update()
        # The running mean loss reads the device sum: a sync at most every POSTFIX_SECONDS, never one per step.
        if show and "loss" in sums and time.perf_counter() - shown_at >= POSTFIX_SECONDS:
            bar.set_postfix(loss=f"{float(sums['loss']) / (state.batches - state.skipped):.4g}", refresh=False)
            shown_at = time.perf_counter()
    if show and "loss" in sums:  # the epoch's mean on the line that stays (this process's share under torchrun)
        bar.set_postfix(loss=f"{float(sums['loss']) / (state.batches - state.skipped):.4g}", refresh=False)
    bar.close()
    if average is not None and sums:  # every process ran the same number of equal shares: the mean is exact
        sums = dict(zip(sums, average(torch.stack(list(sums.values())))))
    stats = {key: float(total) / max(state.batches - state.skipped, 1) for key, total in sums.items()}
    stats["skipped_steps"] = state.skipped
    stats["epoch_time_s"] = time.perf_counter() - start
    stats["lr"] = optimizer.param_groups[0]["lr"]
    return stats


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, num_classes: int | None = None,
             reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, Any]:
    """Accuracy over every example of ``loader`` exactly once, in float32.

    Args:
        model: maps inputs to logits; put in eval mode.
        loader: any iterable of ``(inputs, labels)`` batches (e.g. a ``DataLoader``), or ``(inputs, labels,
            indices)``; batches are moved to the model's device.
        num_classes: the size of ``errors_per_class`` (default: the logits' width).
        reduce: under torchrun each process evaluates its own slice of the examples and ``reduce``
            (:func:`respkd.distributed.all_reduce_sum`) sums the counts (give ``num_classes`` then: a slice may be
            empty).

    Returns:
        ``top1`` and ``top5`` (percent), ``errors`` (count of top-1 mistakes), ``n``, mean ``loss`` (cross-entropy)
        and ``errors_per_class`` (mistakes on the examples of each true class).

    An evaluation still running after ``EVAL_BAR_DELAY_SECONDS`` shows a bar when stderr is a terminal (process 0
    only), gone once it ends.

    Example:
        >>> metrics = evaluate(student, DataLoader(test_set, batch_size=1000))
        >>> print(f"{metrics['errors']} test errors, top-1 {metrics['top1']:.2f}%")
    """
    model.eval()
    device = device_of(model)
    n = errors = top5_hits = 0
    loss_sum = 0.0
    errors_per_class = None if num_classes is None else torch.zeros(num_classes, dtype=torch.long)
    show = sys.stderr.isatty() and distributed.is_main_process()
    for batch in tqdm(loader, desc="evaluate", leave=False, delay=EVAL_BAR_DELAY_SECONDS, disable=not show,
                      dynamic_ncols=True):
        inputs, labels, _ = unpack_batch(batch, device)
        logits = model(inputs).float()
        if errors_per_class is None:
            errors_per_class = torch.zeros(logits.shape[1], dtype=torch.long)
        loss_sum += float(nn.functional.cross_entropy(logits, labels, reduction="sum"))
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        wrong = top[:, 0] != labels
        errors += int(wrong.sum())
        top5_hits += int((top == labels[:, None]).any(dim=1).sum())
        errors_per_class += torch.bincount(labels[wrong].cpu(), minlength=len(errors_per_class))
        n += len(labels)
    if errors_per_class is None:  # an empty loader, and nothing said how many classes
        errors_per_class = torch.zeros(0, dtype=torch.long)
    if reduce is not None:  # float64 holds these counts exactly
        counts = reduce(torch.tensor([n, errors, top5_hits, loss_sum, *errors_per_class.tolist()], dtype=torch.float64))
        n, errors, top5_hits, loss_sum = int(counts[0]), int(counts[1]), int(counts[2]), float(counts[3])
        errors_per_class = counts[4:].long()
    return {
        "top1": 100.0 * (n - errors) / max(n, 1),
        "top5": 100.0 * top5_hits / max(n, 1),
        "errors": errors,
        "n": n,
        "loss": loss_sum / max(n, 1),
        "errors_per_class": errors_per_class.tolist(),
    }
