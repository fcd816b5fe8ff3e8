"""Evaluate a checkpoint, or an ensemble of them, on the dataset's test set: every test example exactly once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from respkd.checkpoint import load_model, read_checkpoint_meta
from respkd.classes import check_classes
from respkd.config import validate_config
from respkd.data import describe_data, load_data, make_loader, select
from respkd.data.datasets import Splits
from respkd.data.memory import BatchLoader
from respkd.data.streamed import FolderLoader, FolderSplits
from respkd.engine import evaluate
from respkd.ensemble import AGREE_KEYS, load_ensemble
from respkd.errors import RespkdError

__all__ = ["checkpoint_test_loader", "evaluate_checkpoint", "evaluate_ensemble"]


def evaluate_checkpoint(
    checkpoint: str | Path, data_path: str | None = None, data_root: str | None = None, device: str = "cpu"
) -> dict[str, Any]:
    """Top-1, top-5, error count and ``n`` of ``checkpoint`` on the test set named in its metadata.

    The data section of the run's config decides the dataset (and any ``test_limit``); ``data_path`` and
    ``data_root`` redirect where it is read from.
    """
    model, meta = load_model(checkpoint, device)
    loader, data = checkpoint_test_loader(meta, checkpoint, data_path, data_root, device)
    with torch.inference_mode():
        result = evaluate(model, loader, data.num_classes)
    return {"checkpoint": str(checkpoint), "dataset": data.info.name, **result}


def checkpoint_test_loader(
    meta: dict[str, Any], checkpoint: str | Path, data_path: str | None, data_root: str | None, device: str
) -> tuple[BatchLoader | FolderLoader, Splits | FolderSplits]:
    """Batches of the test set named in a checkpoint's embedded config, normalised as the model was trained; its
    classes must be the checkpoint's (by name, :mod:`respkd.classes`)."""
    cfg = validate_config(meta.get("config"), f"{checkpoint} (embedded config)")
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
