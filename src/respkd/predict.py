"""``respkd predict``: the classes a trained model sees in image files, with their probabilities.

Each file is read as the checkpoint records its training inputs (:func:`respkd.data.preprocessing` at training
time): decoded to its ``in_shape`` channels, resized by :func:`respkd.data.images.cover_crop` to its height and
width, normalised by its ``normalization``. A folder stands for the images in it and its subfolders (other files
are skipped). Class names are the checkpoint's ``class_names`` (class indices for a checkpoint without them).
Inputs are checked before the model is loaded, and the results are returned (printed) only once every image has
been read: a bad file stops it with one line and nothing shown or written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from respkd.checkpoint import checkpoint_of, load_model
from respkd.classes import recorded_class_names
from respkd.data.images import is_image_file, read_image
from respkd.data.memory import PixelNormalizer
from respkd.environment import resolve_device
from respkd.errors import RespkdError

__all__ = ["DEFAULT_TOP", "PREDICT_BATCH", "image_files", "input_spec", "predict", "prediction_lines"]

DEFAULT_TOP = 5
PREDICT_BATCH = 64


def image_files(inputs: Sequence[str | Path]) -> list[Path]:
    """The image files ``inputs`` name: files (each must be an image) and folders (their images, sorted)."""
    files: list[Path] = []
    for given in inputs:
        path = Path(given)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and is_image_file(p)
                           and not any(part.startswith(".") for part in p.relative_to(path).parts))
            if not found:
                raise RespkdError(f"{path}: a folder holding no image files")
            files += found
        elif path.is_file():
            if not is_image_file(path):
                raise RespkdError(f"{path}: not an image file (no format PIL reads has the suffix '{path.suffix}')")
            files.append(path)
        else:
            raise RespkdError(f"{path}: no such image file or folder")
    return files


def input_spec(meta: dict[str, Any], path: Path) -> dict[str, Any]:
    """What a checkpoint's metadata says its inputs are: channels, (height, width), mean/std and the resize's crop
    fraction and EXIF handling; a record that cannot say it is one line."""
    channels, height, width = meta["in_shape"]
    norm = meta.get("normalization")
    if not (isinstance(norm, dict) and all(isinstance(norm.get(k), list) and len(norm[k]) == channels
                                           and all(isinstance(v, (int, float)) for v in norm[k])
                                           for k in ("mean", "std")) and min(norm["std"]) > 0):
        raise RespkdError(f"{path}: records no usable input normalization ({channels} mean and std values)")
    if channels not in (1, 3):
        raise RespkdError(f"{path}: takes {channels}-channel inputs; predict reads grey (1) or RGB (3) images")
    prep = meta.get("preprocessing") or {}  # checkpoints before it was recorded: what respkd did then
    crop_fraction = prep.get("crop_fraction", 1.0)
    if not (isinstance(crop_fraction, (int, float)) and 0 < crop_fraction <= 1):
        raise RespkdError(f"{path}: its preprocessing record holds crop_fraction {crop_fraction!r}, not in (0, 1]")
    return {"channels": channels, "size": (height, width), "mean": tuple(norm["mean"]), "std": tuple(norm["std"]),
            "crop_fraction": float(crop_fraction), "exif_transpose": bool(prep.get("exif_transpose", True))}


def predict(source: str | Path, inputs: Sequence[str | Path], top: int | None = None, runs_root: str | Path = "runs",
            device: str = "cpu") -> dict[str, Any]:
    """The ``top`` most probable classes (default 5, at most the model's) of every image ``inputs`` name, by the
    model of ``source`` (a checkpoint, a run folder or a run's name under ``runs_root``)."""
    path = checkpoint_of(source, runs_root)
    files = image_files(inputs)
    model, meta = load_model(path, resolve_device(device))
    num_classes = meta["num_classes"]
    if top is not None and not 1 <= top <= num_classes:
        raise RespkdError(f"--top {top}: the model has {num_classes} classes, so --top is 1 to {num_classes}")
    k = top or min(DEFAULT_TOP, num_classes)
    names = recorded_class_names(meta) or [str(i) for i in range(num_classes)]
    spec = input_spec(meta, path)
    dev = next(model.parameters()).device
    normalize = PixelNormalizer(spec["mean"], spec["std"], dev)
    model.eval()
    predictions = []
    with torch.inference_mode():
        for start in range(0, len(files), PREDICT_BATCH):
            batch = torch.stack([read_image(f, spec["size"], spec["channels"], spec["crop_fraction"],
                                            spec["exif_transpose"]) for f in files[start:start + PREDICT_BATCH]])
            probs = torch.softmax(model(normalize(batch.to(dev))).float(), dim=1)
            values, indices = probs.topk(k, dim=1)
            for file, p, i in zip(files[start:start + PREDICT_BATCH], values.tolist(), indices.tolist()):
                predictions.append({"image": str(file), "top": [
                    {"class": names[c], "index": c, "probability": round(q, 6)} for q, c in zip(p, i)]})
    return {"checkpoint": str(path), "num_classes": num_classes, "input": {
        "shape": [spec["channels"], *spec["size"]], "mean": list(spec["mean"]), "std": list(spec["std"])},
        "predictions": predictions}


def prediction_lines(result: dict[str, Any]) -> list[str]:
    """One line per image: ``file: class probability, class probability, ...``."""
    return [f"{p['image']}: " + ", ".join(f"{t['class']} {t['probability']:.3f}" for t in p["top"])
            for p in result["predictions"]]
