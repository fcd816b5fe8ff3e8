"""One experiment, end to end, and several in a row: the only module that knows every part of a run.

:func:`prepare` validates everything (data, student, init weights, teacher) before anything is written; :func:`run`
then trains or distils it, evaluates it and writes its run folder (the files: :mod:`respkd.rundir`), saving the
training state as it goes (:mod:`respkd.resume`); :func:`run_many` runs several configs, skipping finished ones and
resuming interrupted ones. Library modules never import this one; plans, sweeps and the CLI call it.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from respkd import distributed
from respkd.checkpoint import SUMMARY_NAME, checkpoint_meta, run_checkpoint
from respkd.compilation import compile_modules
from respkd.config import RunConfig, config_to_dict, load_config, validate_config
from respkd.data import load_data, make_loader, preprocessing, select
from respkd.data.datasets import Splits, input_normalization
from respkd.data.memory import BatchLoader
from respkd.data.residency import describe_residency
from respkd.data.streamed import FolderSplits
from respkd.data.transfer import describe_transfer
from respkd.distill import Distiller, Supervised
from respkd.engine import build_optimizer, build_scheduler, evaluate, use_bf16
from respkd.environment import capture_environment, resolve_device, seed_everything
from respkd.errors import RespkdError, Stopped
from respkd.files import read_json
from respkd.locks import LOCK_NAME, FolderLock
from respkd.models import build_model, count_macs, count_parameters
from respkd.resume import STATE_NAME, TrainingState, check_start, has_state, state_problem
from respkd.rundir import RunDir, check_folder_can_hold, is_finished, summary_matches, train_epochs
from respkd.teacher import describe_teacher, load_teacher, teacher_paths
from respkd.tensorboard import require_tensorboard
from respkd.teacher_cache import TeacherCache, build_cache, cache_spec, find_cache, selection_digest
from respkd.weights import describe_fit, init_student

__all__ = ["Prepared", "prepare", "run", "run_many", "teacher_cache_spec"]


@dataclass
class Prepared:
    """Everything a run needs, built and checked before anything is written."""

    cfg: RunConfig
    out_dir: Path
    device: torch.device
    data: Splits | FolderSplits
    student: nn.Module
    task: nn.Module
    teacher_meta: dict[str, Any] | None
    init: dict[str, Any] | None = None  # what `init` loaded into the student (respkd.weights.fit_weights)
    teacher_input: dict[str, Any] | None = None  # the teacher input adapter's settings (respkd.adapter)


def prepare(cfg: RunConfig, runs_root: Path, force: bool = False) -> Prepared:
    """Build and check everything a run needs (data, student, init weights, teacher, task) before anything is
    written; a finished run is refused unless ``force``, once its inputs have passed (a wrong path in a rerun's
    config is what the user needs to hear, not that the run already exists)."""
    out_dir = runs_root / cfg.name
    check_folder_can_hold(runs_root, "runs root")
    check_folder_can_hold(out_dir, "run directory")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    data = select(load_data(cfg.data), cfg)
    if cfg.distills and cfg.kd.cache and data.info.streamed:  # a folder of one's own images too large for memory
        raise RespkdError(f"'kd.cache' needs the images in memory, but {cfg.data.path} is streamed from its files "
                          "(see data.in_memory); distil from the online teacher (kd.cache: false)")
    seed_everything(cfg.seed)
    student = build_model(cfg.model.name, data.num_classes, data.info.image_shape, **cfg.model.options()).to(device)
    init = None
    if cfg.init is not None:
        source = run_checkpoint(cfg.init.run, runs_root) if cfg.init.run is not None else Path(cfg.init.checkpoint)
        init = init_student(student, source, cfg.init.strict, data.info.class_names)
    if cfg.train.channels_last:
        student = student.to(memory_format=torch.channels_last)
    teacher_meta, teacher_input = None, None
    if cfg.distills:
        teacher = load_teacher(cfg, runs_root, data.info, device)
        teacher_meta, teacher_input = teacher.meta, teacher.input_spec
        kd = cfg.kd
        task: nn.Module = Distiller(student, teacher.module, kd.temperature, kd.soft_weight, kd.hard_weight,
                                    kd.student_response, teacher.response, kd.loss, kd.loss_params, kd.standardize,
                                    kd.warmup_epochs)
        task.check_response_shapes(data.info.image_shape, device)
    else:
        task = Supervised(student)
    if (out_dir / SUMMARY_NAME).exists() and not force:
        raise RespkdError(f"run '{cfg.name}' already finished in {out_dir}; pass --force to overwrite it")
    return Prepared(cfg, out_dir, device, data, student, task, teacher_meta, init, teacher_input)


def teacher_cache_spec(p: Prepared, loader: BatchLoader, bf16: bool) -> dict[str, Any]:
    """What the run's teacher cache must have been built from (see :func:`respkd.teacher_cache.cache_spec`)."""
    cfg, kd, info = p.cfg, p.cfg.kd, p.data.info
    loader_mean, loader_std = input_normalization(info, cfg.data.normalize)
    if kd.cache_topk is not None and kd.teacher_response is None and kd.cache_topk > p.data.num_classes:
        raise RespkdError(
            f"kd.cache_topk is {kd.cache_topk} but {cfg.data.dataset} has only {p.data.num_classes} classes"
        )
    return cache_spec(
        teacher_weights_sha256=p.teacher_meta["weights_sha256"], teacher_response=kd.teacher_response,
        dataset=cfg.data.dataset, data_sha256=p.data.sha256, train_limit=cfg.data.train_limit,
        n_train=len(p.data.train_images), mean=loader_mean, std=loader_std, loader=loader, teacher_bf16=bf16,
        topk=kd.cache_topk, temperature=kd.temperature,
        train_selection_sha256=None if p.data.train_index is None else selection_digest(p.data.train_index),
        teacher_input=p.teacher_input,
        teacher_model=p.teacher_meta["model"] if p.cfg.teacher.model is not None else None,
        raw_logits=kd.reads_raw_logits,
    )


def run(config: RunConfig | dict[str, Any] | str | Path, runs_root: str | Path = "runs", force: bool = False,
        quiet: bool = False, resume: bool = False) -> dict[str, Any]:
    """Train (or distil) as a config says, into ``<runs_root>/<name>/``: what ``respkd train`` and ``respkd distill``
    do; returns the summary also written to ``summary.json``.

    Args:
        config: a YAML config file, a mapping of the same keys, or a :class:`~respkd.config.RunConfig`.
        runs_root: the parent folder of run folders.
        force: overwrite a finished run of the same name.
        quiet: write the log without printing it.
        resume: continue an interrupted run from its training state (see :mod:`respkd.resume`) instead of starting
            over; the result is bitwise the same as an uninterrupted run's.

    The run folder is locked while the run works in it (:mod:`respkd.locks`; under torchrun by process 0): a second
    process on the same run is refused. A stop by a signal (:class:`~respkd.errors.Stopped`) says where the run's
    training state is, when it has one.

    Example:
        >>> summary = respkd.run("configs/mnist/teacher_1200.yaml", runs_root="runs")
        >>> summary["metrics"]["errors"]
    """
    if isinstance(config, RunConfig):
        cfg = config
    elif isinstance(config, dict):
        cfg = validate_config(config)
    else:
        cfg = load_config(config)
    runs_root = Path(runs_root)
    out_dir = runs_root / cfg.name
    lock = FolderLock(out_dir / LOCK_NAME, f"run '{cfg.name}'")
    with contextlib.ExitStack() as on_exit:
        on_exit.callback(lock.release)
        try:
            return _run_locked(cfg, runs_root, force, quiet, resume, lock, on_exit)
        except Stopped as stop:
            if stop.state is None and has_state(out_dir):  # stopped before training began, or after it ended
                stop.state = out_dir / STATE_NAME
            raise


def _run_locked(cfg: RunConfig, runs_root: Path, force: bool, quiet: bool, resume: bool, lock: FolderLock,
                on_exit: contextlib.ExitStack) -> dict[str, Any]:
    """:func:`run`'s work, taking ``lock`` once every check has passed; what it opens is closed by ``on_exit``."""
    out_dir = runs_root / cfg.name
    # torchrun (see respkd.distributed): join the process group; every process then passes every check below, or
    # all stop. In one process both are no-ops.
    distributed.setup(resolve_device(cfg.device))
    main_process = distributed.is_main_process()
    with distributed.together():
        if main_process:
            lock.check_free()  # before judging the folder: another process may be writing it
        check_start(out_dir, cfg, resume=resume, force=force, finished=(out_dir / SUMMARY_NAME).exists())
        if cfg.train.tensorboard:
            require_tensorboard()
        p = prepare(cfg, runs_root, force)
        data, tc = p.data, cfg.train
        distributed.check_batch_size(tc.batch_size, len(data.train_labels))
        distributed.check_supported(tc.sync_batchnorm, cfg.kd.student_response if cfg.distills else None, p.device)
        train_loader = make_loader(data, "train", cfg, p.device)
        test_loader = make_loader(data, "test", cfg, p.device)
        bf16 = use_bf16(tc.precision, p.device)
        optimizer = build_optimizer(p.student, tc)
        scheduler = build_scheduler(optimizer, tc, len(train_loader))
        spec = teacher_cache_spec(p, train_loader, bf16) if cfg.distills and cfg.kd.cache else None
        # a stale or corrupt cache is refused here, before the run directory is touched
        cache = find_cache(cfg.kd.cache_dir, spec) if spec is not None else None
        identity = {"n_train": len(data.train_labels), "data_sha256": data.sha256,
                    "processes": distributed.world_size(),
                    "teacher_weights_sha256": p.teacher_meta["weights_sha256"] if cfg.distills else None}
        state = TrainingState(p.out_dir, cfg, identity, p.student, optimizer, scheduler, len(train_loader), p.device)
        if resume:
            state.load()  # checked and read before anything is written
        if main_process:
            lock.acquire()  # the last check: from here on this process writes the folder
    distributed.wrap_student(p.task, p.student, p.device, tc.sync_batchnorm)  # only the student, never the teacher
    distributed.reseed_per_process(cfg.seed)  # (a resumed run's generators are restored later, by state.begin)

    # under torchrun only process 0 writes and prints; the log is closed on the way out, also after an error
    out = on_exit.enter_context(RunDir(p.out_dir, writes=distributed.is_main_process()))
    env = capture_environment()
    if not resume:
        state.discard()  # --force: an interrupted run's state is not this run's
        out.start(config_to_dict(cfg), env)
    log = out.open_log(quiet, append=resume)
    if lock.taken_over is not None:
        log(f"[{cfg.name}] took over {lock.path} from {lock.taken_over.describe()}, which ended without releasing it")
    params, macs = count_parameters(p.student), count_macs(p.student, data.info.image_shape)
    log(_first_log_line(p, runs_root, params, macs, bf16))
    if cfg.distills and (cfg.kd.loss != "kd" or cfg.kd.standardize):
        log(f"response loss: {p.task.describe_loss()}")
    if p.init is not None:
        log(f"student initialised with {describe_fit(p.init)}")
    if cfg.distills and p.teacher_meta.get("notes"):
        log(f"teacher weights: {'; '.join(p.teacher_meta['notes'])}")
    if p.teacher_input is not None:
        log(f"teacher input adapter: {p.task.teacher.adapter.extra_repr()}")
    resident = getattr(train_loader, "device_resident", False)  # streamed folders are always read on the host
    if isinstance(train_loader, BatchLoader) and (resident or p.device.type != "cpu"):  # on the CPU by default: no news
        log(describe_residency(resident, p.device))
    online_teacher = [p.task.teacher] if cfg.distills and not cfg.kd.cache else []
    compiled = tc.compile and compile_modules([p.student, *online_teacher], p.device, log)
    teacher_metrics = None
    if cfg.distills:  # once, before training: what the student is measured against (an ensemble: the combination)
        teacher_metrics = evaluate(p.task.teacher, test_loader, data.num_classes, distributed.all_reduce_sum)
        log(f"teacher: {_errors(teacher_metrics)}")
    cache_info, cached_teacher = _open_teacher_cache(p, runs_root, spec, cache, train_loader, bf16, log)

    state.begin(log)
    ev = train_epochs(out, p.task, p.student, train_loader, optimizer, scheduler, p.device, bf16, tc.epochs,
                      test_loader=test_loader, num_classes=data.num_classes, state=state,
                      teacher_logits=cached_teacher, progress=None if out.writes else False,
                      tensorboard=tc.tensorboard, on_nonfinite=tc.on_nonfinite,
                      max_skipped_steps=tc.max_skipped_steps).test
    if ev is None:  # resumed after the last epoch's state was saved: only the final steps below were left
        ev = evaluate(p.student, test_loader, data.num_classes, distributed.all_reduce_sum)
    wall, train_time = state.wall_time(), state.position.train_time_s
    val_metrics = None
    if len(data.val_labels):  # once, at the end: the split is for choosing things after training, not during it
        val_loader = make_loader(data, "val", cfg, p.device)
        val_metrics = evaluate(p.student, val_loader, data.num_classes, distributed.all_reduce_sum)

    summary = {
        "name": cfg.name, "kind": "distill" if cfg.distills else "train",
        "model": cfg.model.name, "params": params, "macs": macs,
        "metrics": ev, "epochs": tc.epochs, "wall_time_s": round(wall, 1), "train_time_s": round(train_time, 1),
        "seconds_per_epoch": round(train_time / tc.epochs, 3), "precision": "bf16" if bf16 else "fp32",
        "dataset": cfg.data.dataset, "data_sha256": data.sha256, "data_canonical": data.canonical,
        "class_names": list(data.info.class_names),
        "n_train": len(data.train_labels),
        "n_train_per_class": torch.bincount(data.train_labels.cpu(), minlength=data.num_classes).tolist(),
        "n_val": len(data.val_labels), "val_metrics": val_metrics,
        "teacher": describe_teacher(cfg, runs_root) if cfg.distills else None,
        "teacher_combine": cfg.teacher.rule if cfg.distills else None, "teacher_metrics": teacher_metrics,
        "teacher_cache": cache_info, "resumes": state.position.resumes, "processes": distributed.world_size(),
        "device_resident": resident, "compiled": compiled,
        "skipped_steps": state.position.skipped_steps,
        "teacher_input": p.teacher_input, "init": p.init,
        "config": config_to_dict(cfg), "environment": env,
    }
    meta = checkpoint_meta(
        model={"name": cfg.model.name, **cfg.model.options()}, num_classes=data.num_classes,
        in_shape=data.info.image_shape, class_names=data.info.class_names,
        normalization=input_normalization(data.info, cfg.data.normalize),
        **{k: summary[k] for k in ("name", "dataset", "data_sha256", "metrics", "config")},
        versions={k: env[k] for k in ("respkd", "torch", "torchvision", "python")},
        preprocessing=preprocessing(data.info),
    )
    out.finish(p.student.state_dict(), meta, summary)
    state.finish()
    log(f"[{cfg.name}] done: test errors {ev['errors']}/{ev['n']}, top-1 {ev['top1']:.2f}%, top-5 {ev['top5']:.2f}%, "
        f"wall {wall / 60:.1f} min -> {p.out_dir}")
    if teacher_metrics is not None:
        log(f"[{cfg.name}] teacher {_errors(teacher_metrics)}, student {_errors(ev)}")
    out.close()
    return summary


def _errors(metrics: dict[str, Any]) -> str:
    """``63 test errors (99.37% top-1)``: how the log states a model's test result."""
    return f"{metrics['errors']}/{metrics['n']} test errors ({metrics['top1']:.2f}% top-1)"


def _first_log_line(p: Prepared, runs_root: Path, params: int, macs: int, bf16: bool) -> str:
    """What the run is: what it learns from, the student, the examples, the schedule and where it runs."""
    cfg, data, tc = p.cfg, p.data, p.cfg.train
    if cfg.distills and cfg.teacher.is_ensemble:
        what = (f"distil from an ensemble of {len(teacher_paths(cfg, runs_root))} ({cfg.teacher.rule}) "
                f"at T={cfg.kd.temperature}")
    elif cfg.distills:
        what = (f"distil from {cfg.teacher.model.name + ' weights ' if cfg.teacher.weights else ''}"
                f"{describe_teacher(cfg, runs_root)} at T={cfg.kd.temperature}")
    else:
        what = "train with hard labels"
    return (f"[{cfg.name}] {what}: {cfg.model.name} ({params / 1e6:.2f}M params, {macs / 1e6:.2f}M MACs), "
            f"{len(data.train_labels)} train{describe_transfer(cfg.data.transfer)}"
            f"{f' / {len(data.val_labels)} validation' if len(data.val_labels) else ''} / "
            f"{len(data.test_labels)} test examples of {cfg.data.dataset}, "
            f"{tc.epochs} epochs, {'bf16' if bf16 else 'fp32'} on {p.device} ({torch.get_num_threads()} threads)"
            + (f" x {distributed.world_size()} processes" if distributed.world_size() > 1 else ""))


def _open_teacher_cache(
    p: Prepared, runs_root: Path, spec: dict[str, Any] | None, found: TeacherCache | None, loader: BatchLoader,
    bf16: bool, log: Callable[[str], None],
) -> tuple[dict[str, Any] | None, Callable[[torch.Tensor, int], torch.Tensor] | None]:
    """The teacher cache of ``spec`` (``found`` before the run folder was touched, or built now) as the engine's
    ``teacher_logits``, and what summary.json records of it; without ``spec``, no cache."""
    cfg = p.cfg
    if spec is None:
        return ({"used": False} if cfg.distills else None), None
    cache_start = time.perf_counter()
    # In one process: the cache found before, or built now. Under torchrun process 0 builds it, the others wait.
    cache, built = distributed.build_once(
        lambda: found if found is not None else find_cache(cfg.kd.cache_dir, spec),
        lambda: build_cache(cfg.kd.cache_dir, spec, p.task.teacher_logits, loader, bf16, log=log,
                            extra_meta={"teacher": describe_teacher(cfg, runs_root)}))
    built = built and cache.built_here  # not when another process built it while this one waited
    if not built:
        log(f"reusing teacher cache {cache.folder} (built in {cache.build_time_s:.2f}s)")
    info = {"used": True, "built_now": built, "build_time_s": cache.build_time_s,
            "setup_time_s": round(time.perf_counter() - cache_start, 3), "folder": str(cache.folder),
            "key": cache.meta["key"], "views": cache.views, "topk": cfg.kd.cache_topk}
    return info, cache.for_loader(loader, p.device)


def run_many(
    configs: list[RunConfig], runs_root: str | Path = "runs", force: bool = False, replace_changed: bool = False,
    quiet: bool = False, log: Callable[[str], None] | None = None, tags: list[str] | None = None,
) -> list[dict[str, Any]]:
    """Run several configs in order, skipping those already finished with exactly the same config and resuming
    those interrupted (from a training state of exactly the same config; see :mod:`respkd.resume`).

    A run directory finished from a *different* config is an error (checked for every config before the first run)
    unless ``force`` (rerun everything) or ``replace_changed`` (rerun just those: what plans do). Returns the
    summaries, read back for skipped runs. ``tags`` prefix each run's progress line (default ``[i/n]``).
    """
    runs_root = Path(runs_root)
    log = log or distributed.print_main
    names = [c.name for c in configs]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise RespkdError(f"two runs share the name '{dup}'")
    if not (force or replace_changed):
        for cfg in configs:
            if (runs_root / cfg.name / SUMMARY_NAME).exists() and not summary_matches(cfg, runs_root):
                raise RespkdError(f"run '{cfg.name}' already finished in {runs_root / cfg.name} with another config; "
                                  "pass --force to overwrite it")
    summaries = []
    tags = tags or [f"[{i}/{len(configs)}]" for i in range(1, len(configs) + 1)]
    for tag, cfg in zip(tags, configs):
        if not force and is_finished(cfg, runs_root):
            log(f"{tag} {cfg.name}: already finished in {runs_root / cfg.name}, skipped")
            summaries.append(read_json(runs_root / cfg.name / SUMMARY_NAME, "summary"))
            continue
        if not force and summary_matches(cfg, runs_root):
            log(f"{tag} {cfg.name}: finished, but its weights are not in {runs_root / cfg.name}; training it again")
            summaries.append(run(cfg, runs_root, force=True, quiet=quiet))
            continue
        # An interrupted run resumes from its training state when that state belongs to this very config.
        interrupted = not force and has_state(runs_root / cfg.name)
        problem = state_problem(runs_root / cfg.name, cfg) if interrupted else None
        resume = interrupted and problem is None
        if resume:
            log(f"{tag} {cfg.name}: resuming the interrupted run")
        else:
            log(f"{tag} {cfg.name}" + (f": {problem.reason}; starting over" if problem else ""))
        summaries.append(run(cfg, runs_root, force=not resume, quiet=quiet, resume=resume))
    return summaries
