"""One experiment, end to end: validate everything, then train or distil, evaluate, and write the run directory.

A run directory ``<runs_root>/<name>/`` holds:
  config.yaml     the validated config, overrides applied
  environment.json  library versions, machine, threads, git commit
  metrics.jsonl   one JSON line per epoch, appended as training goes (nothing is lost on a crash)
  tensorboard/    with train.tensorboard: true, the same per-epoch metrics as TensorBoard scalars
  log.txt         the human-readable log
  model.safetensors  the trained student with its metadata (see respkd.checkpoint)
  summary.json    final metrics, parameter count, multiply-adds, wall time: what the results table reads
  resume.safetensors  while training: the state a killed run resumes from (see respkd.resume); gone once finished
Everything that can be wrong with the input is checked before the directory is touched.
"""

from __future__ import annotations

import json
import os
import platform
import random
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import yaml
from torch import nn

from respkd import __version__, distributed
from respkd.checkpoint import atomic_write_text, check_model_meta, load_checkpoint, save_checkpoint
from respkd.adapter import AdaptedTeacher, build_adapter
from respkd.config import RunConfig, config_to_dict, validate_config
from respkd.data.datasets import Splits, input_normalization
from respkd.data.imagefolder import FolderSplits
from respkd.data.loader import BatchLoader
from respkd.data.loaders import load_data, make_loader
from respkd.data.transfer import select_training
from respkd.distill import Distiller, Supervised
from respkd.engine import build_optimizer, build_scheduler, evaluate, train_one_epoch, use_bf16
from respkd.ensemble import load_ensemble
from respkd.errors import RespkdError
from respkd.models import build_model, count_macs, count_parameters
from respkd.resume import STATE_NAME, TrainingState, check_start, has_state, state_problem
from respkd.tensorboard import EpochScalars, require_tensorboard
from respkd.teacher_cache import TeacherCache, build_cache, cache_spec, find_cache, selection_digest
from respkd.weights import describe_fit, init_student, load_external_teacher

CHECKPOINT_NAME = "model.safetensors"
SUMMARY_NAME = "summary.json"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise RespkdError(f"unknown device '{name}'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RespkdError(f"device '{name}' requested but CUDA is not available (use device: cpu or auto)")
    return distributed.process_device(device)  # under torchrun: cuda -> cuda:LOCAL_RANK


def load_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the network stored in a respkd checkpoint and load its weights (no unpickling)."""
    state, meta = load_checkpoint(Path(path))
    check_model_meta(meta, path)
    spec = dict(meta["model"])
    model = build_model(spec.pop("name"), meta["num_classes"], tuple(meta["in_shape"]), **spec)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:  # torch's first line only says "Error(s) in loading state_dict"; the next says which
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        detail = lines[1 if len(lines) > 1 else 0]
        raise RespkdError(f"{path}: weights do not fit the model in its metadata ({detail})") from None
    return model.to(device), meta


def environment() -> dict[str, Any]:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5).stdout.strip()
        # Uncommitted changes mean the commit alone does not reproduce the run: record that.
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                    text=True, timeout=5).stdout.strip()) if commit else None
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "", None
    cpu = platform.processor()
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import torchvision

    return {
        "respkd": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
        "python": platform.python_version(), "platform": platform.platform(), "cpu": cpu,
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "git_commit": commit, "git_dirty": dirty,
    }


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


def select(data: Splits | FolderSplits, cfg: RunConfig) -> Splits | FolderSplits:
    """Apply ``train_limit`` / ``test_limit`` (first N examples), the validation hold-out and the transfer filter.

    See :mod:`respkd.data.transfer` for the order and why; the test set is only cut by ``test_limit``. Streamed
    datasets only take the limits (see :meth:`FolderSplits.limited`).
    """
    d = cfg.data
    if isinstance(data, FolderSplits):
        return data.limited(d.train_limit, d.test_limit)
    images, labels = data.train_images[: d.train_limit], data.train_labels[: d.train_limit]
    sel = select_training(labels, data.num_classes, d)
    if sel.active:
        train_images, train_labels, index = images[sel.train], labels[sel.train], sel.train
    else:
        train_images, train_labels, index = images, labels, None
    return Splits(
        data.info, train_images, train_labels, data.test_images[: d.test_limit], data.test_labels[: d.test_limit],
        data.sha256, val_images=images[sel.val], val_labels=labels[sel.val], train_index=index,
    )


def teacher_paths(cfg: RunConfig, runs_root: Path) -> list[Path]:
    """The teacher's checkpoint, or an ensemble's member checkpoints, in the config's order."""
    t = cfg.teacher
    assert t is not None
    if t.run is not None:
        return [runs_root / t.run / CHECKPOINT_NAME]
    if t.runs is not None:
        return [runs_root / r / CHECKPOINT_NAME for r in t.runs]
    if t.weights is not None:
        return [Path(t.weights)]
    return [Path(c) for c in (t.checkpoints or [t.checkpoint])]


def teacher_path(cfg: RunConfig, runs_root: Path) -> Path:
    """The single teacher's checkpoint (see :func:`teacher_paths` for ensembles)."""
    return teacher_paths(cfg, runs_root)[0]


def describe_teacher(cfg: RunConfig, runs_root: Path) -> str | list[str]:
    """What summary.json records as the teacher: a path, or the members' paths for an ensemble."""
    paths = [str(p) for p in teacher_paths(cfg, runs_root)]
    return paths if cfg.teacher.is_ensemble else paths[0]


def is_finished(cfg: RunConfig, runs_root: Path) -> bool:
    """True when ``cfg``'s run directory holds a summary made from exactly this config, and the model it made.

    A summary without its weights (the repository commits weights only for the models of its results table) is not
    finished: later stages need the model, so the run is trained again.
    """
    return summary_matches(cfg, runs_root) and (Path(runs_root) / cfg.name / CHECKPOINT_NAME).is_file()


def summary_matches(cfg: RunConfig, runs_root: Path) -> bool:
    """True when ``cfg``'s run directory holds a summary made from exactly this config.

    The stored config is validated again before comparing, so keys added to respkd later (with defaults that change
    nothing) do not make an old finished run look different.
    """
    path = Path(runs_root) / cfg.name / SUMMARY_NAME
    if not path.is_file():
        return False
    try:
        stored = json.loads(path.read_text()).get("config")
        return config_to_dict(validate_config(stored, str(path))) == config_to_dict(cfg)
    except (json.JSONDecodeError, OSError, RespkdError, TypeError, AttributeError):
        return False


def check_folder_can_hold(path: Path, what: str) -> None:
    """Refuse a folder to write into whose path is blocked by a file (itself, or one of its parents)."""
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                raise RespkdError(f"{what} {path}: {p} is not a folder" if p != path else f"{what} {path} is not a folder")
            return


def prepare(cfg: RunConfig, runs_root: Path, force: bool = False) -> Prepared:
    out_dir = runs_root / cfg.name
    check_folder_can_hold(runs_root, "runs root")
    check_folder_can_hold(out_dir, "run directory")
    if (out_dir / SUMMARY_NAME).exists() and not force:
        raise RespkdError(f"run '{cfg.name}' already finished in {out_dir}; pass --force to overwrite it")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    data = select(load_data(cfg.data.dataset, cfg.data.root, cfg.data.path, cfg.data.source), cfg)
    seed_everything(cfg.seed)
    student = build_model(cfg.model.name, data.num_classes, data.info.image_shape, **cfg.model.options()).to(device)
    init = None
    if cfg.init is not None:
        source = runs_root / cfg.init.run / CHECKPOINT_NAME if cfg.init.run is not None else Path(cfg.init.checkpoint)
        init = init_student(student, source, cfg.init.strict)
    if cfg.train.channels_last:
        student = student.to(memory_format=torch.channels_last)
    teacher_meta, teacher_input = None, None
    if cfg.distills:
        student_mean, student_std = input_normalization(data.info, cfg.data.normalize)
        # The teacher's inputs: the student's batches, or what the adapter makes of them (teacher.input).
        adapter = None if cfg.teacher.input is None else build_adapter(cfg.teacher.input, student_mean, student_std)
        in_shape = data.info.image_shape if adapter is None else adapter.out_shape(data.info.image_shape)
        norm = {"mean": list(student_mean), "std": list(student_std)} if adapter is None else {
            "mean": adapter.teacher_mean, "std": adapter.teacher_std}
        if cfg.teacher.is_ensemble:
            teacher, teacher_meta = load_ensemble(teacher_paths(cfg, runs_root), cfg.teacher.rule,
                                                  cfg.kd.temperature, device)
        elif cfg.teacher.weights is not None:
            teacher, teacher_meta = load_external_teacher(cfg.teacher.model, Path(cfg.teacher.weights),
                                                          data.num_classes, in_shape, norm, device)
        else:
            teacher, teacher_meta = load_model(teacher_path(cfg, runs_root), device)
        if teacher_meta["num_classes"] != data.num_classes:
            raise RespkdError(
                f"teacher has {teacher_meta['num_classes']} classes but the student's dataset "
                f"({cfg.data.dataset}) has {data.num_classes}"
            )
        given = "the student's are" if adapter is None else "teacher.input gives"
        fix = "" if adapter is not None else "; set teacher.input to convert the student's batches for the teacher"
        if tuple(teacher_meta["in_shape"]) != in_shape:
            raise RespkdError(f"teacher expects inputs of shape {teacher_meta['in_shape']}, {given} {in_shape}{fix}")
        if teacher_meta.get("normalization") != norm:
            fix = fix and "; set data.normalize to match the teacher's run, or teacher.input to convert the batches"
            raise RespkdError(f"teacher was trained on inputs normalised as {teacher_meta.get('normalization')}, "
                              f"{given} {norm}{fix}")
        if cfg.train.channels_last:
            teacher = teacher.to(memory_format=torch.channels_last)
        kd = cfg.kd
        teacher_response = kd.teacher_response
        if adapter is not None:
            teacher = AdaptedTeacher(adapter.to(device), teacher)
            teacher_input = adapter.spec()
            teacher_response = None if teacher_response is None else f"model.{teacher_response}"
        task: nn.Module = Distiller(student, teacher, kd.temperature, kd.soft_weight, kd.hard_weight,
                                    kd.student_response, teacher_response)
        task.check_response_shapes(data.info.image_shape, device)
    else:
        task = Supervised(student)
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
        teacher_model=p.teacher_meta["model"] if p.cfg.teacher.weights is not None else None,
    )


def _transfer_note(cfg: RunConfig) -> str:
    t = cfg.data.transfer
    parts = ([f"without classes {t.drop_classes}"] if t.drop_classes else []) + (
        [f"only classes {t.keep_classes}"] if t.keep_classes is not None else []) + (
        [f"{t.fraction:g} of them"] if t.fraction is not None else [])
    return f" (transfer set: {', '.join(parts)})" if parts else ""


class RunLog:
    """Prints a line and appends it to ``log.txt``: a new one, or with ``append`` the one a resumed run began (with
    ``path=None``, as in processes other than torchrun's 0, neither)."""

    def __init__(self, path: Path | None, quiet: bool = False, append: bool = False) -> None:
        self.file = open(path, "a" if append else "w", buffering=1) if path is not None else None
        self.quiet = quiet or path is None

    def __call__(self, line: str) -> None:
        if not self.quiet:
            print(line, flush=True)
        if self.file is not None:
            self.file.write(line + "\n")

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def run(cfg: RunConfig, runs_root: str | Path = "runs", force: bool = False, quiet: bool = False,
        resume: bool = False) -> dict[str, Any]:
    """Train (or distil) as ``cfg`` says; returns the summary also written to ``summary.json``.

    ``resume`` continues an interrupted run from its training state (see :mod:`respkd.resume`) instead of starting
    over; the result is bitwise the same as an uninterrupted run's.
    """
    runs_root = Path(runs_root)
    out_dir = runs_root / cfg.name
    # torchrun (see respkd.distributed): join the process group; every process then passes every check below, or
    # all stop. In one process both are no-ops.
    distributed.setup(resolve_device(cfg.device))
    with distributed.together():
        check_start(out_dir, cfg, resume=resume, force=force, finished=(out_dir / SUMMARY_NAME).exists())
        if cfg.train.tensorboard:
            require_tensorboard()
        p = prepare(cfg, runs_root, force)
        data, tc = p.data, cfg.train
        distributed.check_batch_size(tc.batch_size, len(data.train_labels))
        distributed.check_supported(tc.sync_batchnorm, cfg.kd.student_response if cfg.distills else None, p.device)
        norm = input_normalization(data.info, cfg.data.normalize)
        train_loader = make_loader(data, "train", cfg, p.device)
        test_loader = make_loader(data, "test", cfg, p.device)
        bf16 = use_bf16(tc.precision, p.device)
        optimizer = build_optimizer(p.student, tc)
        scheduler = build_scheduler(optimizer, tc, len(train_loader))
        spec = teacher_cache_spec(p, train_loader, bf16) if cfg.distills and cfg.kd.cache else None
        cache: TeacherCache | None = None
        if spec is not None:  # a stale or corrupt cache is refused here, before the run directory is touched
            cache = find_cache(cfg.kd.cache_dir, spec)
        identity = {"n_train": len(data.train_labels), "data_sha256": data.sha256,
                    "processes": distributed.world_size(),
                    "teacher_weights_sha256": p.teacher_meta["weights_sha256"] if cfg.distills else None}
        state = TrainingState(p.out_dir, cfg, identity, p.student, optimizer, scheduler, len(train_loader), p.device)
        if resume:
            state.load()  # checked and read before anything is written
    distributed.wrap_student(p.task, p.student, p.device, tc.sync_batchnorm)  # only the student, never the teacher
    distributed.reseed_per_process(cfg.seed)  # (a resumed run's generators are restored later, by state.begin)
    main = distributed.is_main_process()  # under torchrun only process 0 writes the run folder and prints

    env = environment()
    if main and not resume:
        p.out_dir.mkdir(parents=True, exist_ok=True)
        (p.out_dir / SUMMARY_NAME).unlink(missing_ok=True)  # the run is not finished until a new summary is written
        (p.out_dir / STATE_NAME).unlink(missing_ok=True)  # --force: an interrupted run's state is not this run's
        atomic_write_text(p.out_dir / "config.yaml", yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
        atomic_write_text(p.out_dir / "environment.json", json.dumps(env, indent=2))
    log = RunLog(p.out_dir / "log.txt" if main else None, quiet, append=resume)
    params, macs = count_parameters(p.student), count_macs(p.student, data.info.image_shape)
    if cfg.distills and cfg.teacher.is_ensemble:
        what = (f"distil from an ensemble of {len(teacher_paths(cfg, runs_root))} ({cfg.teacher.rule}) "
                f"at T={cfg.kd.temperature}")
    elif cfg.distills:
        what = (f"distil from {cfg.teacher.model.name + ' weights ' if cfg.teacher.weights else ''}"
                f"{teacher_path(cfg, runs_root)} at T={cfg.kd.temperature}")
    else:
        what = "train with hard labels"
    log(f"[{cfg.name}] {what}: {cfg.model.name} ({params / 1e6:.2f}M params, {macs / 1e6:.2f}M MACs), "
        f"{len(data.train_labels)} train{_transfer_note(cfg)}"
        f"{f' / {len(data.val_labels)} validation' if len(data.val_labels) else ''} / "
        f"{len(data.test_labels)} test examples of {cfg.data.dataset}, "
        f"{tc.epochs} epochs, {'bf16' if bf16 else 'fp32'} on {p.device} ({torch.get_num_threads()} threads)"
        + (f" x {distributed.world_size()} processes" if distributed.world_size() > 1 else ""))
    if p.init is not None:
        log(f"student initialised with {describe_fit(p.init)}")
    if cfg.distills and p.teacher_meta.get("notes"):
        log(f"teacher weights: {'; '.join(p.teacher_meta['notes'])}")
    if p.teacher_input is not None:
        log(f"teacher input adapter: {p.task.teacher.adapter.extra_repr()}")

    cache_info: dict[str, Any] | None = {"used": False} if cfg.distills else None
    cached_teacher = None
    if spec is not None:
        cache_start = time.perf_counter()
        found = cache
        # In one process: the cache found above, or built now. Under torchrun process 0 builds it, the others wait.
        cache, built = distributed.build_once(
            lambda: found if found is not None else find_cache(cfg.kd.cache_dir, spec),
            lambda: build_cache(cfg.kd.cache_dir, spec, p.task.teacher_logits, train_loader, bf16, log=log,
                                extra_meta={"teacher": describe_teacher(cfg, runs_root)}))
        if not built:
            log(f"reusing teacher cache {cache.folder} (built in {cache.build_time_s:.2f}s)")
        cache_info = {"used": True, "built_now": built, "build_time_s": cache.build_time_s,
                      "setup_time_s": round(time.perf_counter() - cache_start, 3), "folder": str(cache.folder),
                      "key": cache.meta["key"], "views": cache.views, "topk": cfg.kd.cache_topk}
        cached_teacher = cache.for_loader(train_loader, p.device)

    state.begin(log)
    ev = train_epochs(p, train_loader, test_loader, optimizer, scheduler, bf16, cached_teacher, state, log)
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
        "n_train": len(data.train_labels),
        "n_train_per_class": torch.bincount(data.train_labels.cpu(), minlength=data.num_classes).tolist(),
        "n_val": len(data.val_labels), "val_metrics": val_metrics,
        "teacher": describe_teacher(cfg, runs_root) if cfg.distills else None,
        "teacher_combine": cfg.teacher.rule if cfg.distills else None,
        "teacher_cache": cache_info, "resumes": state.position.resumes, "processes": distributed.world_size(),
        "teacher_input": p.teacher_input, "init": p.init,
        "config": config_to_dict(cfg), "environment": env,
    }
    meta = {
        "model": {"name": cfg.model.name, **cfg.model.options()}, "num_classes": data.num_classes,
        "in_shape": list(data.info.image_shape), "class_names": list(data.info.class_names),
        "normalization": dict(zip(("mean", "std"), map(list, norm))),
        **{k: summary[k] for k in ("name", "dataset", "data_sha256", "metrics", "config")},
        "versions": {k: env[k] for k in ("respkd", "torch", "torchvision", "python")},
    }
    if main:
        save_checkpoint(p.student.state_dict(), p.out_dir / CHECKPOINT_NAME, meta)
        atomic_write_text(p.out_dir / SUMMARY_NAME, json.dumps(summary, indent=2))
    state.finish()
    log(f"[{cfg.name}] done: test errors {ev['errors']}/{ev['n']}, top-1 {ev['top1']:.2f}%, top-5 {ev['top5']:.2f}%, "
        f"wall {wall / 60:.1f} min -> {p.out_dir}")
    log.close()
    return summary


def train_epochs(
    p: Prepared, train_loader: BatchLoader, test_loader: BatchLoader, optimizer: torch.optim.Optimizer, scheduler: Any,
    bf16: bool, cached_teacher: Callable | None, state: TrainingState, log: Callable[[str], None],
) -> dict[str, Any] | None:
    """Train the epochs after ``state``'s position (all of them, unless resuming), writing one metrics line per
    epoch and the training state as it goes. Returns the last epoch's test metrics (None if no epoch was left)."""
    tc, ev = p.cfg.train, None
    main = distributed.is_main_process()  # under torchrun the others train and evaluate but write nothing
    metrics = open_metrics(p.out_dir / "metrics.jsonl", state.position.epochs_done) if main else open(os.devnull, "w")
    scalars = EpochScalars(p.out_dir, tc.tensorboard and main, state.position.epochs_done)
    with metrics as metrics_file, scalars:
        for epoch in range(state.position.epochs_done + 1, tc.epochs + 1):
            done = state.position.epoch  # the part of this epoch trained before a resume (usually nothing)
            train_loader.set_epoch(epoch, skip=done.batches)
            stats = train_one_epoch(p.task, p.student, train_loader, optimizer, scheduler, p.device, bf16, epoch,
                                    progress=None if main else False, teacher_logits=cached_teacher, done=done,
                                    after_step=state.after_step,
                                    average=distributed.all_reduce_mean)
            ev = evaluate(p.student, test_loader, p.data.num_classes, distributed.all_reduce_sum)
            record = {"epoch": epoch, **stats, "test_top1": ev["top1"], "test_top5": ev["top5"],
                      "test_errors": ev["errors"], "test_loss": ev["loss"]}
            metrics_file.write(json.dumps(record) + "\n")
            scalars.write(record)
            losses = " ".join(f"{k}={v:.4f}" for k, v in stats.items() if k.endswith("loss"))
            log(f"epoch {epoch:>3}/{tc.epochs} {losses} lr={stats['lr']:.4g} test_errors={ev['errors']} "
                f"top1={ev['top1']:.2f} ({stats['epoch_time_s']:.1f}s)")
            state.end_epoch(stats["epoch_time_s"])
    return ev


def open_metrics(path: Path, epochs_done: int):
    """``metrics.jsonl`` opened for appending, holding only the lines of the first ``epochs_done`` epochs: an epoch
    cut short by a kill (its line written, its state not yet) is trained again on resume and listed once."""
    kept = path.read_text().splitlines(keepends=True)[:epochs_done] if epochs_done and path.is_file() else []
    atomic_write_text(path, "".join(kept))
    return open(path, "a", buffering=1)


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
            summaries.append(json.loads((runs_root / cfg.name / SUMMARY_NAME).read_text()))
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
