"""Evaluate a checkpoint on its dataset's test set: every test example exactly once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from respkd.config import validate_config
from respkd.data.datasets import input_normalization, load_dataset
from respkd.data.loader import BatchLoader
from respkd.engine import evaluate
from respkd.experiment import load_model, select


def evaluate_checkpoint(
    checkpoint: str | Path, data_path: str | None = None, data_root: str | None = None, device: str = "cpu"
) -> dict[str, Any]:
    """Top-1, top-5, error count and ``n`` of ``checkpoint`` on the test set named in its metadata.

    The data section of the run's config decides the dataset (and any ``test_limit``); ``data_path`` and
    ``data_root`` redirect where it is read from.
    """
    model, meta = load_model(checkpoint, device)
    cfg = validate_config(meta["config"], f"{checkpoint} (embedded config)")
    d = cfg.data
    data = select(load_dataset(d.dataset, data_root or d.root, data_path or d.path, d.source), cfg)
    mean, std = input_normalization(data.info, d.normalize)
    loader = BatchLoader(data.test_images, data.test_labels, 1000, mean, std, device=device)
    with torch.inference_mode():
        result = evaluate(model, loader, data.num_classes)
    return {"checkpoint": str(checkpoint), "dataset": d.dataset, **result}
