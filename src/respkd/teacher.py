"""The teacher a distillation config names: where its weights are, loaded, checked against the student's data, and
put behind the input adapter that ``teacher.input`` asks for.

A teacher is one respkd checkpoint (``teacher.run`` or ``teacher.checkpoint``), an ensemble of them
(``teacher.runs`` / ``teacher.checkpoints``, :mod:`respkd.ensemble`), or an architecture with a state dict file
(``teacher.model`` + ``teacher.weights``) or with its library's pretrained weights (``teacher.model`` with timm's
``pretrained: true`` or torchvision's ``weights: NAME``; both :func:`respkd.weights.load_external_model`). Whatever
it is, its metadata looks like one checkpoint's, and it must agree with the student's data on the classes (by name,
:mod:`respkd.classes`), the input shape and the input normalisation (each refused in one line otherwise, with the
fix).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from respkd.adapter import AdaptedTeacher, build_adapter
from respkd.checkpoint import load_model, run_checkpoint
from respkd.classes import check_classes
from respkd.config import RunConfig
from respkd.data import describe_data
from respkd.data.datasets import DatasetInfo, input_normalization
from respkd.ensemble import load_ensemble
from respkd.errors import RespkdError
from respkd.weights import load_external_model

__all__ = ["Teacher", "describe_teacher", "load_teacher", "teacher_paths"]


def teacher_paths(cfg: RunConfig, runs_root: Path) -> list[Path]:
    """The teacher's checkpoint (or weights file), or an ensemble's member checkpoints, in the config's order; none
    for a model with its library's pretrained weights. A run name that is no run under ``runs_root`` is refused in
    one line naming the runs there."""
    t = cfg.teacher
    assert t is not None
    if t.run is not None:
        return [run_checkpoint(t.run, runs_root)]
    if t.runs is not None:
        return [run_checkpoint(r, runs_root) for r in t.runs]
    if t.weights is not None:
        return [Path(t.weights)]
    if t.model is not None:
        return []
    return [Path(c) for c in (t.checkpoints or [t.checkpoint])]


def describe_teacher(cfg: RunConfig, runs_root: Path) -> str | list[str]:
    """What summary.json records as the teacher: a path, the members' paths for an ensemble, or a pretrained
    model's name and weights (``torchvision.resnet18 (IMAGENET1K_V1)``, ``timm.resnet18 (pretrained)``)."""
    paths = [str(p) for p in teacher_paths(cfg, runs_root)]
    if cfg.teacher.is_ensemble:
        return paths
    if paths:
        return paths[0]
    model = cfg.teacher.model
    return f"{model.name} ({model.options().get('weights') or 'pretrained'})"


@dataclass
class Teacher:
    """A loaded, checked teacher, ready for the :class:`~respkd.distill.Distiller`.

    ``module`` answers the student's batches (through the adapter when ``teacher.input`` is set); ``meta`` is its
    checkpoint-like metadata; ``input_spec`` the adapter's settings (None without one); ``response`` the module
    whose output ``kd.teacher_response`` names, as seen from ``module``.
    """

    module: nn.Module
    meta: dict[str, Any]
    input_spec: dict[str, Any] | None
    response: str | None


def load_teacher(cfg: RunConfig, runs_root: Path, info: DatasetInfo, device: torch.device) -> Teacher:
    """Load the teacher of ``cfg`` onto ``device`` and check it against the student's dataset ``info``."""
    student_mean, student_std = input_normalization(info, cfg.data.normalize)
    # The teacher's inputs: the student's batches, or what the adapter makes of them (teacher.input).
    adapter = None if cfg.teacher.input is None else build_adapter(cfg.teacher.input, student_mean, student_std)
    in_shape = info.image_shape if adapter is None else adapter.out_shape(info.image_shape)
    norm = {"mean": list(student_mean), "std": list(student_std)} if adapter is None else {
        "mean": adapter.teacher_mean, "std": adapter.teacher_std}
    num_classes = len(info.class_names)
    if cfg.teacher.is_ensemble:
        module, meta = load_ensemble(teacher_paths(cfg, runs_root), cfg.teacher.rule, cfg.kd.temperature, device)
    elif cfg.teacher.model is not None:  # a state dict file, or the library's pretrained weights
        weights = None if cfg.teacher.weights is None else Path(cfg.teacher.weights)
        module, meta = load_external_model(cfg.teacher.model, weights, num_classes, in_shape, norm, device)
    else:
        module, meta = load_model(teacher_paths(cfg, runs_root)[0], device)
    check_classes(meta, info.class_names, "teacher", "data", f"data: {describe_data(cfg.data)}")
    given = "the student's are" if adapter is None else "teacher.input gives"
    fix = "" if adapter is not None else "; set teacher.input to convert the student's batches for the teacher"
    if tuple(meta["in_shape"]) != in_shape:
        raise RespkdError(f"teacher expects inputs of shape {meta['in_shape']}, {given} {in_shape}{fix}")
    if meta.get("normalization") != norm:
        fix = fix and "; set data.normalize to match the teacher's run, or teacher.input to convert the batches"
        raise RespkdError(f"teacher was trained on inputs normalised as {meta.get('normalization')}, "
                          f"{given} {norm}{fix}")
    if cfg.train.channels_last:
        module = module.to(memory_format=torch.channels_last)
    response = cfg.kd.teacher_response
    if adapter is None:
        return Teacher(module, meta, None, response)
    return Teacher(AdaptedTeacher(adapter.to(device), module), meta, adapter.spec(),
                   None if response is None else f"model.{response}")
