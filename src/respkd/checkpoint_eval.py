"""Evaluate a checkpoint (a file, a run folder or a run's name), a plain state dict of a named architecture, or an
ensemble of checkpoints, on the dataset's test set: every test example exactly once.

The test set must have the model's classes (by name where the model records them, :mod:`respkd.classes`): a model
evaluated on other classes would fail deep inside torch (more labels than outputs) or report a meaningless accuracy
(fewer), so either is refused in one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from respkd.checkpoint import TORCH_SUFFIXES, checkpoint_of, is_respkd_checkpoint, load_model, read_checkpoint_meta
from respkd.classes import check_classes
from respkd.config import RunConfig, apply_override, validate_config
from respkd.data import describe_data, load_data, make_loader, select
from respkd.data.datasets import Splits, input_normalization
from respkd.data.memory import BatchLoader
from respkd.data.streamed import FolderLoader, FolderSplits
from respkd.engine import evaluate
from respkd.ensemble import AGREE_KEYS, load_ensemble
from respkd.errors import RespkdError
from respkd.weights import load_external_model

__all__ = ["checkpoint_test_loader", "evaluate_checkpoint", "evaluate_ensemble", "evaluate_weights", "weights_config"]

# What `--set` may change when evaluating: the test data, and a plain state dict's architecture.
EVAL_SECTIONS = ("data", "model")


def evaluate_checkpoint(
    source: str | Path, data_path: str | None = None, data_root: str | None = None, device: str = "cpu",
    runs_root: str | Path = "runs", overrides: Sequence[str] = (),
) -> dict[str, Any]:
    """Top-1, top-5, error count and ``n`` of a respkd checkpoint on the test set named in its metadata.

    ``source`` is a checkpoint file, a run folder or a run's name under ``runs_root``. The data section of the run's
    config decides the dataset (and any ``test_limit``); ``data_path`` and ``data_root`` redirect where it is read
    from, and ``overrides`` (``data.KEY=VALUE``) change it further.
    """
    checkpoint = checkpoint_of(source, runs_root)
    suffix = checkpoint.suffix.lower()
    if suffix in TORCH_SUFFIXES or (suffix == ".safetensors" and not is_respkd_checkpoint(checkpoint)):
        what = "a torch.save file" if suffix in TORCH_SUFFIXES else "a plain safetensors file"
        raise RespkdError(f"{checkpoint} is {what}, not a respkd checkpoint: it does not say what network it holds; "
                          "evaluate it with --model NAME --dataset NAME (and --set model.KEY=VALUE for the "
                          "architecture's options)")
    if any(not o.startswith("data.") for o in overrides):
        raise RespkdError(f"{checkpoint} records its model: --set takes data.* keys only here, got "
                          f"'{next(o for o in overrides if not o.startswith('data.'))}'")
    model, meta = load_model(checkpoint, device)
    loader, data = checkpoint_test_loader(meta, checkpoint, data_path, data_root, device, overrides)
    with torch.inference_mode():
        result = evaluate(model, loader, data.num_classes)
    return {"checkpoint": str(checkpoint), "dataset": data.info.name, **result}


def weights_config(model: str, dataset: str, overrides: Sequence[str] = ()) -> RunConfig:
    """The config a plain state dict is evaluated under: the architecture ``model`` and the test set of ``dataset``,
    with ``--set`` overrides of ``model.*`` (the architecture's options) and ``data.*`` keys, checked as a run
    config's are. (A run config needs a ``train`` section; evaluation reads nothing of it but the default batch
    size of streamed test sets.)"""
    raw: dict[str, Any] = {"name": "eval", "model": {"name": model}, "data": {"dataset": dataset},
                           "train": {"epochs": 1, "lr": 1.0}}
    for override in overrides:
        if override.partition(".")[0] not in EVAL_SECTIONS:
            raise RespkdError(f"--set '{override}': eval takes model.* and data.* keys (the architecture and the "
                              "test data)")
        apply_override(raw, override)
    return validate_config(raw, "eval (--model, --dataset, --set)")


def evaluate_weights(
    path: str | Path, model: str, dataset: str, overrides: Sequence[str] = (), data_path: str | None = None,
    data_root: str | None = None, device: str = "cpu",
) -> dict[str, Any]:
    """Test metrics of a plain state dict (``.pth``/``.pt``/``.bin`` or ``.safetensors``) loaded strictly into the
    architecture ``model`` (built for ``dataset``'s classes and inputs, as a student would be; see
    :func:`weights_config` for ``overrides``), on ``dataset``'s test set normalised as ``data.normalize`` says."""
    path = Path(path)
    if not path.is_file():
        raise RespkdError(f"weights file {path} {'is not a file' if path.exists() else 'does not exist'}")
    if is_respkd_checkpoint(path):
        raise RespkdError(f"{path} is a respkd checkpoint: it records its model; evaluate it without --model")
    cfg = weights_config(model, dataset, overrides)
    d = cfg.data
    data = select(load_data(d, data_root, data_path), cfg)
    mean, std = input_normalization(data.info, d.normalize)
    network, meta = load_external_model(cfg.model, path, data.num_classes, data.info.image_shape,
                                        {"mean": list(mean), "std": list(std)}, device, what="--model")
    with torch.inference_mode():
        result = evaluate(network, make_loader(data, "test", cfg, device), data.num_classes)
    return {"checkpoint": str(path), "dataset": data.info.name, "model": meta["model"], **result}


def checkpoint_test_loader(
    meta: dict[str, Any], checkpoint: str | Path, data_path: str | None, data_root: str | None, device: str,
    overrides: Sequence[str] = (),
) -> tuple[BatchLoader | FolderLoader, Splits | FolderSplits]:
    """Batches of the test set named in a checkpoint's embedded config (``data.*`` overrides applied), normalised as
    the model was trained; its classes must be the checkpoint's (by name, :mod:`respkd.classes`)."""
    raw = meta.get("config")
    if isinstance(raw, dict) and overrides:
        raw = {**raw, "data": dict(raw.get("data") or {})}
        for override in overrides:
            apply_override(raw, override)
    cfg = validate_config(raw, f"{checkpoint} (embedded config)")
    data = select(load_data(cfg.data, data_root, data_path), cfg)
    check_classes(meta, data.info.class_names, "checkpoint", "data",
                  f"data: {describe_data(cfg.data, data_path)}")
    return make_loader(data, "test", cfg, device), data


def evaluate_ensemble(
    checkpoints: list[str | Path], combine: str = "mean_probs", temperature: float = 1.0,
    data_path: str | None = None, data_root: str | None = None, device: str = "cpu",
    distilled: str | Path | None = None,
) -> dict[str, Any]:
    """Test metrics of an ensemble, of each of its members and (optionally) of a net distilled from it.

    The test set is the first member's (its config's data section); every member must agree on dataset, classes,
    input shape and normalisation (:func:`respkd.ensemble.load_ensemble`), and so must ``distilled``. The ensemble
    is evaluated at ``temperature`` (1: the usual average of the members' predictions for ``mean_probs``).
    Also returns ``member_errors_mean`` and, with ``distilled``, ``gain_fraction``: the share of the ensemble's
    improvement over the mean member that the distilled net kept, ``(member mean - distilled) / (member mean -
    ensemble)`` in errors (the paper: more than 80% for its speech models).
    """
    if len(checkpoints) < 2:
        raise RespkdError("an ensemble needs at least two checkpoints")
    ensemble, meta = load_ensemble(checkpoints, combine, temperature, device)
    first = read_checkpoint_meta(Path(checkpoints[0]))
    loader, data = checkpoint_test_loader(first, checkpoints[0], data_path, data_root, device)
    with torch.inference_mode():
        members = [{"checkpoint": str(path), "name": m.get("name"), **evaluate(model, loader, data.num_classes)}
                   for path, model, m in zip(checkpoints, ensemble.members, meta["members"])]
        result: dict[str, Any] = {
            "combine": combine, "temperature": float(temperature), "dataset": data.info.name,
            "ensemble": evaluate(ensemble, loader, data.num_classes), "members": members,
            "member_errors_mean": sum(m["errors"] for m in members) / len(members),
            "member_weights_sha256": [m["weights_sha256"] for m in meta["members"]],
        }
        if distilled is not None:
            student, student_meta = load_model(distilled, device)
            for key in AGREE_KEYS:
                if student_meta.get(key) != meta.get(key):
                    raise RespkdError(f"{distilled} differs from the ensemble in {key}: {student_meta.get(key)} vs "
                                      f"{meta.get(key)}")
            result["distilled"] = {"checkpoint": str(distilled), "name": student_meta.get("name"),
                                   "weights_sha256": student_meta["weights_sha256"],
                                   **evaluate(student, loader, data.num_classes)}
            gain = result["member_errors_mean"] - result["ensemble"]["errors"]
            kept = result["member_errors_mean"] - result["distilled"]["errors"]
            result["gain_fraction"] = kept / gain if gain > 0 else None
    return result
