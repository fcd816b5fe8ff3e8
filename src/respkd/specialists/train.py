"""Training specialists: each one an independent job with its own run directory.

``respkd specialists train CONFIG --workers 2`` finds the subsets (once, in the parent), then runs every unfinished
specialist as its own process, ``respkd specialists train CONFIG --only K``, at most ``workers`` at a time, each with
``cores // workers`` torch threads. Separate processes rather than a process pool: a specialist that crashes, runs
out of memory or is killed takes nothing else with it, and ``--only K`` is exactly what a cluster scheduler's array
job runs (run ``respkd specialists subsets CONFIG`` first there, so every job reads the same ``subsets.json``).

Layout of ``<runs_root>/<name>/``:
  config.yaml                 the validated specialists config
  subsets.json, subsets.png   the subsets and the heat map (see respkd.specialists.subsets)
  specialist-<k>/             one per subset: model.safetensors, summary.json, metrics.jsonl, log.txt
  worker-<k>.log              what the process of specialist k printed (parallel runs)
  timings.jsonl               one line per `train` invocation: workers, threads, wall time, each specialist's
  eval.json, specialists.md   written by `respkd specialists eval`
A specialist is trained in ``.specialist-<k>.partial-<pid>/`` and renamed to ``specialist-<k>/`` once complete, so a
crash never leaves a directory that looks finished. One is finished when its ``summary.json`` records the same spec
(generalist weights, subset, specialist config, seed, data); finished ones are skipped, a directory finished from a
different spec is an error unless ``--force``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
import yaml
from torch import nn

from respkd.checkpoint import SUMMARY_NAME, checkpoint_meta
from respkd.config import config_to_dict
from respkd.data.memory import BatchLoader
from respkd.distill import Distiller, Supervised
from respkd.engine import build_optimizer, build_scheduler, evaluate, use_bf16
from respkd.environment import capture_environment, seed_everything, usable_cores
from respkd.errors import RespkdError
from respkd.files import atomic_write_text, read_json
from respkd.locks import FolderLock
from respkd.models import build_model, count_parameters
from respkd.provenance import read_record, same_inputs
from respkd.rundir import RunDir, train_epochs
from respkd.specialists.config import SpecialistsConfig
from respkd.specialists.context import (SUBSETS_NAME, Context, is_trained, load_context, recorded_spec, specialist_dir,
                                        specialist_spec, subsets_spec)
from respkd.specialists.model import (MappedGeneralist, SubsetBatches, dustbin_correction, label_map, shift_dustbin,
                                      specialist_from_generalist)
from respkd.specialists.subsets import generalist_probabilities, subsets_record, write_subsets

__all__ = [
    "check_conflicts", "compute_subsets", "current_subsets", "prepare_run", "specialist_task", "train_all",
    "train_specialist", "worker_threads", "write_common",
]


def compute_subsets(ctx: Context) -> dict[str, Any]:
    """The subsets record (see :func:`respkd.specialists.subsets.subsets_record`) from the validation split."""
    loader = BatchLoader(ctx.data.val_images, ctx.data.val_labels, 1000, *ctx.norm, device=ctx.device)
    probs = generalist_probabilities(ctx.generalist, loader)
    return subsets_record(probs, ctx.cfg.subsets, ctx.data.info.class_names, subsets_spec(ctx))


def current_subsets(ctx: Context) -> tuple[dict[str, Any], bool]:
    """``subsets.json`` when it was made from the same spec, else computed now; and whether it must be written."""
    stored = read_record(ctx.out_dir / SUBSETS_NAME)
    if stored is not None and same_inputs(stored.get("spec"), subsets_spec(ctx)) and "subsets" in stored:
        return stored, False
    return compute_subsets(ctx), True


def write_common(ctx: Context, record: dict[str, Any], write_record: bool) -> None:
    """config.yaml (only when it changed: workers and reruns leave it alone) and, when new, the subsets."""
    text = yaml.safe_dump(ctx.cfg.model_dump(mode="json"), sort_keys=False)
    path = ctx.out_dir / "config.yaml"
    if not path.is_file() or path.read_text() != text:
        atomic_write_text(path, text)
    if write_record:
        write_subsets(ctx.out_dir, record)


def check_conflicts(ctx: Context, subsets: list[list[int]], force: bool) -> None:
    """A finished specialist made from another spec is never silently replaced."""
    if force:
        return
    for k in range(len(subsets)):
        if recorded_spec(ctx.out_dir, k) is not None and not is_trained(ctx, subsets, k):
            raise RespkdError(f"{specialist_dir(ctx.out_dir, k)} was finished from another config, generalist or "
                              "subset; pass --force to retrain it")


def specialist_task(ctx: Context, subset: list[int], correction: float) -> tuple[nn.Module, nn.Module, dict[str, Any]]:
    """The specialist of ``subset`` (fine-tuned from the generalist, or a fresh net), what trains it (hard labels, or
    the generalist's soft targets mapped to subset + dustbin, lowered by the dustbin ``correction``), and the model
    spec its checkpoint records."""
    sc, channels_last = ctx.cfg.specialist, ctx.cfg.specialist.train.channels_last
    if sc.model is None:
        student = specialist_from_generalist(ctx.generalist, dict(ctx.gen_meta["model"]), ctx.in_shape, subset)
        model_spec = dict(ctx.gen_meta["model"])
    else:
        student = build_model(sc.model.name, len(subset) + 1, ctx.in_shape, **sc.model.options()).to(ctx.device)
        model_spec = {"name": sc.model.name, **sc.model.options()}
    if channels_last:
        student = student.to(memory_format=torch.channels_last)
    if sc.soft_targets is None:
        return student, Supervised(student), model_spec
    st = sc.soft_targets
    if channels_last:
        ctx.generalist.to(memory_format=torch.channels_last)
    teacher = MappedGeneralist(ctx.generalist, subset, st.temperature, correction)
    return student, Distiller(student, teacher, st.temperature, st.soft_weight, st.hard_weight), model_spec


def train_specialist(ctx: Context, subsets: list[list[int]], k: int, force: bool = False,
                     quiet: bool = False) -> dict[str, Any]:
    """Train specialist ``k`` into its own directory (module doc); skipped when finished from the same spec."""
    if not 0 <= k < len(subsets):
        raise RespkdError(f"--only {k}: there are {len(subsets)} specialists (0..{len(subsets) - 1})")
    cfg = ctx.cfg
    subset = list(subsets[k])
    spec = specialist_spec(ctx, subset, k)
    final = specialist_dir(ctx.out_dir, k)
    if final.exists() and not final.is_dir():
        raise RespkdError(f"{final} exists and is not a directory: remove it")
    if recorded_spec(ctx.out_dir, k) is not None and not force:
        if is_trained(ctx, subsets, k):
            print(f"specialist {k}: already finished in {final}, skipped", flush=True)
            return read_json(final / SUMMARY_NAME, "summary")
        raise RespkdError(f"{final} was finished from another config, generalist or subset; pass --force to retrain it")
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    lock = FolderLock(ctx.out_dir / f".specialist-{k}.lock", f"specialist {k} of '{cfg.name}'")
    lock.acquire()  # before its stale folders are removed: a second process training it is refused instead
    try:
        return _train(ctx, k, subset, spec, final, quiet)
    finally:
        lock.release()


def _train(ctx: Context, k: int, subset: list[int], spec: dict[str, Any], final: Path, quiet: bool) -> dict[str, Any]:
    """:func:`train_specialist`'s work, under the specialist's lock."""
    cfg, sc, data = ctx.cfg, ctx.cfg.specialist, ctx.data
    seed_everything(cfg.seed * 1009 + k)
    mapping = label_map(subset, ctx.num_classes)
    inside = torch.isin(data.train_labels, torch.tensor(subset))
    tc = sc.train
    jitter = ctx.gen_cfg.data.jitter if sc.jitter is None else sc.jitter
    base = BatchLoader(data.train_images, mapping[data.train_labels], tc.batch_size, *ctx.norm, shuffle=True,
                       jitter=jitter, jitter_views=ctx.gen_cfg.data.jitter_views if jitter else None,
                       seed=cfg.seed * 1009 + k, device=ctx.device, channels_last=tc.channels_last)
    batches = SubsetBatches(base, inside, tc.batch_size, sc.subset_fraction)
    correction = dustbin_correction(int(inside.sum()), int((~inside).sum()), batches.n_in, batches.n_out)
    student, task, model_spec = specialist_task(ctx, subset, correction)
    bf16 = use_bf16(tc.precision, ctx.device)
    optimizer = build_optimizer(student, tc)
    scheduler = build_scheduler(optimizer, tc, len(batches))
    test_loader = BatchLoader(data.test_images, mapping[data.test_labels], 1000, *ctx.norm, device=ctx.device,
                              channels_last=tc.channels_last)
    val_loader = BatchLoader(data.val_images, mapping[data.val_labels], 1000, *ctx.norm, device=ctx.device,
                             channels_last=tc.channels_last)

    for stale in ctx.out_dir.glob(f".specialist-{k}.partial-*"):  # left by a crashed attempt at this specialist
        shutil.rmtree(stale, ignore_errors=True)
    partial = ctx.out_dir / f".specialist-{k}.partial-{os.getpid()}"
    partial.mkdir()
    names = [data.info.class_names[c] for c in subset]
    out = RunDir(partial)
    log = out.open_log(quiet)
    log(f"[{cfg.name} specialist {k}] {', '.join(names)} + dustbin: "
        f"{'fine-tuned from the generalist' if sc.model is None else f'fresh {sc.model.name}'}, "
        f"{'soft targets at T=' + format(sc.soft_targets.temperature, 'g') if sc.soft_targets else 'hard labels'}; "
        f"{int(inside.sum())} subset / {int((~inside).sum())} other training examples, batches of {batches.n_in} + "
        f"{batches.n_out}, {len(batches)} batches per epoch, {tc.epochs} epochs ({torch.get_num_threads()} threads)")
    start = time.perf_counter()
    trained = train_epochs(out, task, student, batches, optimizer, scheduler, ctx.device, bf16, tc.epochs,
                           progress=False, on_nonfinite=tc.on_nonfinite, max_skipped_steps=tc.max_skipped_steps)
    shift_dustbin(student, ctx.in_shape, correction)
    test = evaluate(student, test_loader, len(subset) + 1)
    val = evaluate(student, val_loader, len(subset) + 1)
    wall = time.perf_counter() - start
    steps = tc.epochs * len(batches)
    summary = {
        "name": f"{cfg.name}-specialist-{k}", "k": k, "subset": subset, "subset_names": names,
        "dustbin_correction": correction, "n_subset": int(inside.sum()), "n_other": int((~inside).sum()),
        "batch_subset": batches.n_in, "batch_other": batches.n_out, "steps": steps,
        "examples_seen": steps * tc.batch_size,  # forward + backward passes of the specialist
        "generalist_forward_examples": steps * tc.batch_size if sc.soft_targets else 0,  # its soft targets
        "params": count_parameters(student), "train_time_s": round(trained.train_time_s, 2),
        "wall_time_s": round(wall, 2), "threads": torch.get_num_threads(),
        "test_metrics": test, "val_metrics": val, "spec": spec, "environment": capture_environment(),
    }
    meta = checkpoint_meta(
        model=model_spec, num_classes=len(subset) + 1, in_shape=ctx.in_shape, class_names=[*names, "dustbin"],
        normalization=ctx.norm, name=summary["name"], dataset=ctx.gen_cfg.data.dataset, data_sha256=data.sha256,
        metrics=test, config=config_to_dict(ctx.gen_cfg),
        specialist={key: summary[key] for key in ("k", "subset", "dustbin_correction")}
        | {"generalist_weights_sha256": ctx.gen_meta["weights_sha256"]},
    )
    out.finish(student.state_dict(), meta, summary)
    log(f"[{cfg.name} specialist {k}] done: dustbin logit {correction:+.3f}, test top-1 over subset + dustbin "
        f"{test['top1']:.2f}%, {wall:.1f}s -> {final}")
    out.close()
    if final.exists():
        shutil.rmtree(final)
    os.replace(partial, final)
    return summary


def prepare_run(cfg: SpecialistsConfig, runs_root: str | Path, force: bool,
                threads: int | None = None) -> tuple[Context, list[list[int]]]:
    """Load, find (or reuse) the subsets, check conflicts; then write config.yaml and the subsets."""
    ctx = load_context(cfg, runs_root, threads)
    record, write = current_subsets(ctx)
    subsets = [list(s) for s in record["subsets"]]
    check_conflicts(ctx, subsets, force)
    write_common(ctx, record, write)
    return ctx, subsets


def worker_threads(cfg: SpecialistsConfig, workers: int) -> int:
    """torch threads per worker: the config's ``threads``, else the cores this process may use, shared evenly."""
    if cfg.threads:
        return cfg.threads
    return max(1, usable_cores() // workers)


def train_all(
    cfg: SpecialistsConfig, config_path: str | Path, overrides: list[str], runs_root: str | Path = "runs",
    workers: int = 1, force: bool = False, log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Every unfinished specialist, as ``respkd specialists train CONFIG --only K`` processes, ``workers`` at a time.

    Returns (and appends to ``timings.jsonl``) the wall time and each specialist's outcome. A failed specialist does
    not stop the others; if any failed, a RespkdError naming them is raised once all have ended.
    """
    log = log or (lambda line: print(line, flush=True))
    if workers < 1:
        raise RespkdError(f"--workers must be at least 1, got {workers}")
    ctx, subsets = prepare_run(cfg, runs_root, force)
    pending = [k for k in range(len(subsets)) if force or not is_trained(ctx, subsets, k)]
    threads = worker_threads(cfg, workers)
    for k in range(len(subsets)):
        if k not in pending:
            log(f"specialist {k}: already finished in {specialist_dir(ctx.out_dir, k)}, skipped")
    log(f"[{cfg.name}] {len(subsets)} specialists, {len(pending)} to train with {workers} worker(s) x {threads} "
        f"thread(s)")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    base = [sys.executable, "-m", "respkd.cli", "specialists", "train", str(config_path), "--runs-root",
            str(runs_root), "--threads", str(threads), *[a for o in overrides for a in ("--set", o)],
            *(["--force"] if force else [])]
    queue, running, outcome = list(pending), {}, {}
    start = time.perf_counter()
    try:
        while queue or running:
            while queue and len(running) < workers:
                k = queue.pop(0)
                out = open(ctx.out_dir / f"worker-{k}.log", "w")
                proc = subprocess.Popen([*base, "--only", str(k)], stdout=out, stderr=subprocess.STDOUT, env=env)
                running[k] = (proc, out, time.perf_counter())
                log(f"specialist {k} ({', '.join(ctx.data.info.class_names[c] for c in subsets[k])}): started")
            time.sleep(0.2)
            for k, (proc, out, began) in list(running.items()):
                if proc.poll() is None:
                    continue
                out.close()
                del running[k]
                took = time.perf_counter() - began
                ok = proc.returncode == 0 and is_trained(ctx, subsets, k)
                outcome[k] = {"k": k, "ok": ok, "returncode": proc.returncode, "wall_s": round(took, 2)}
                if ok:
                    log(f"specialist {k}: done in {took:.1f}s")
                else:
                    lines = (ctx.out_dir / f"worker-{k}.log").read_text(errors="replace").strip().splitlines()
                    log(f"specialist {k}: FAILED (exit {proc.returncode}) after {took:.1f}s: "
                        f"{lines[-1] if lines else ''} (see {ctx.out_dir / f'worker-{k}.log'})")
    except BaseException:
        for proc, out, _ in running.values():  # our own children only
            proc.terminate()
            proc.wait()
            out.close()
        raise
    wall = time.perf_counter() - start
    result = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "workers": workers, "threads_per_worker": threads,
              "trained": len(pending), "wall_s": round(wall, 2),
              "specialists": [outcome[k] for k in sorted(outcome)]}
    with open(ctx.out_dir / "timings.jsonl", "a") as f:
        f.write(json.dumps(result) + "\n")
    log(f"[{cfg.name}] {len(pending)} specialist(s) trained in {wall:.1f}s wall with {workers} worker(s)")
    failed = [k for k, o in outcome.items() if not o["ok"]]
    if failed:
        raise RespkdError(f"{len(failed)} of {len(pending)} specialists failed ({', '.join(map(str, sorted(failed)))}); "
                          "the others are kept: fix the cause and rerun, finished ones are skipped")
    return result
