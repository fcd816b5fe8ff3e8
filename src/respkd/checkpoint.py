"""Checkpoints: safetensors weights with JSON metadata in the same file, written atomically, read without pickle.

A checkpoint is one ``.safetensors`` file. Its header's ``__metadata__`` holds one key, ``respkd``, whose value is a
JSON object: the model spec needed to rebuild the network (``model``, ``num_classes``, ``in_shape``), the run's
config, metrics, the dataset checksum, library versions, and ``weights_sha256``, the SHA-256 of the tensors, which
:func:`load_checkpoint` verifies, so a file damaged in the middle of its data is refused, not silently used.

:func:`load_model` rebuilds the network a checkpoint describes and loads its weights. A run folder keeps its final
checkpoint as ``model.safetensors`` (``CHECKPOINT_NAME``) beside ``summary.json`` (``SUMMARY_NAME``); the other files
of a run folder are :mod:`respkd.rundir`'s. :func:`checkpoint_of` finds the checkpoint of a file, a run folder or a
run name.

Weights from elsewhere (a plain safetensors file, a torchvision/timm ``.pth`` state dict) are read by
:func:`load_weights`, which never unpickles more than tensors and plain containers.
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import json
import pickle
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from respkd.errors import RespkdError, first_line, shorten
from respkd.files import atomic_write
from respkd.models import build_model

__all__ = [
    "CHECKPOINT_FORMAT", "CHECKPOINT_NAME", "SUMMARY_NAME", "TORCH_SUFFIXES", "WRAPPER_KEYS", "WRAPPER_PREFIXES",
    "Weights", "atomic_save_safetensors", "check_model_meta", "checkpoint_meta", "checkpoint_of", "is_respkd_checkpoint",
    "load_checkpoint", "load_model", "load_weights", "nearest_runs", "read_checkpoint_meta", "run_checkpoint",
    "save_checkpoint", "tensors_digest",
]

CHECKPOINT_FORMAT = "respkd-checkpoint-v1"
CHECKPOINT_NAME = "model.safetensors"  # a run folder's final weights, with their metadata
SUMMARY_NAME = "summary.json"  # a run folder's final metrics: a run is finished once it exists


def atomic_save_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str],
                            what: str = "file") -> None:
    """``tensors`` and ``metadata`` written to ``path`` atomically (``what``: the file's noun if the write fails)."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata), what)


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over each tensor's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_checkpoint(state_dict: dict[str, torch.Tensor], path: Path, meta: dict[str, Any]) -> None:
    """Write ``state_dict`` and ``meta`` (JSON-serialisable) atomically to ``path``."""
    # Tied weights would share storage, which safetensors refuses: clone so every entry owns its memory.
    tensors = {k: v.detach().cpu().clone() for k, v in state_dict.items()}
    meta = {**meta, "format": CHECKPOINT_FORMAT, "weights_sha256": tensors_digest(tensors)}
    atomic_save_safetensors(tensors, path, {"respkd": json.dumps(meta)}, "checkpoint")


def checkpoint_meta(
    *, model: dict[str, Any], num_classes: int, in_shape: tuple[int, ...], class_names: list[str],
    normalization: tuple[tuple[float, ...], tuple[float, ...]], name: str, dataset: str, data_sha256: str,
    metrics: dict[str, Any], config: dict[str, Any], **extra: Any,
) -> dict[str, Any]:
    """The metadata of a trained model's checkpoint: what :func:`load_model` rebuilds it from (``model``: its
    factory's name and options), the inputs it takes (shape, ``normalization`` as (mean, std) of ``pixels / 255``),
    its classes, and the run it came from; ``extra`` adds what a kind of run records besides."""
    return {"model": model, "num_classes": num_classes, "in_shape": list(in_shape), "class_names": list(class_names),
            "normalization": dict(zip(("mean", "std"), map(list, normalization))), "name": name, "dataset": dataset,
            "data_sha256": data_sha256, "metrics": metrics, "config": config, **extra}


def read_checkpoint_meta(path: Path, fmt: str = CHECKPOINT_FORMAT, what: str = "checkpoint") -> dict[str, Any]:
    """The JSON metadata of a checkpoint, without reading its weights.

    ``fmt`` and ``what`` (the noun in messages) let other respkd files of the same layout reuse this: the training
    state of :mod:`respkd.resume` is one.
    """
    path = Path(path)
    if not path.is_file():
        raise RespkdError(f"{what} {path} {'is not a file' if path.exists() else 'does not exist'}")
    raw = _header_metadata(path, what).get("respkd")
    try:
        meta = json.loads(raw) if raw else None
    except json.JSONDecodeError:
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != fmt:
        raise RespkdError(f"{path}: a safetensors file, but not a respkd {what} (no respkd metadata)")
    return meta


def load_checkpoint(
    path: Path, fmt: str = CHECKPOINT_FORMAT, what: str = "checkpoint"
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read weights and metadata; refuse a truncated or corrupted file with a one-line :class:`RespkdError`."""
    meta = read_checkpoint_meta(path, fmt, what)
    tensors = _read_tensors(path, what)
    if tensors_digest(tensors) != meta.get("weights_sha256"):
        raise RespkdError(f"{path}: checksum of the weights does not match the metadata (corrupt {what})")
    return tensors, meta


def check_model_meta(meta: dict[str, Any], path: str | Path) -> None:
    """Refuse checkpoint metadata that cannot describe a network (a hand-edited or foreign file), in one line."""
    model, classes, shape = meta.get("model"), meta.get("num_classes"), meta.get("in_shape")
    problems = []
    if not (isinstance(model, dict) and isinstance(model.get("name"), str)):
        problems.append("'model' must be a mapping with a 'name'")
    if not (type(classes) is int and classes >= 1):
        problems.append(f"'num_classes' must be a positive integer, got {classes!r}")
    if not (isinstance(shape, list) and len(shape) == 3 and all(type(d) is int and d >= 1 for d in shape)):
        problems.append(f"'in_shape' must be [channels, height, width], got {shape!r}")
    if problems:
        raise RespkdError(f"{path}: metadata does not describe a model: {'; '.join(problems)}")


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


def checkpoint_of(source: str | Path, runs_root: str | Path = "runs") -> Path:
    """The checkpoint named by ``source``: a checkpoint file, a run directory, or a run's name under ``runs_root``."""
    path = Path(source)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    elif not path.exists() and (Path(runs_root) / str(source)).is_dir():
        path = Path(runs_root) / str(source) / CHECKPOINT_NAME
    if not path.is_file():
        near = nearest_runs(str(source), runs_root)
        # a path names a file that is missing; a bare name was most likely meant as a run's
        detail = (f"{path} does not exist" if "/" in str(source) or Path(source).suffix
                  else f"runs there: {', '.join(near)}" if near else "")
        raise RespkdError(f"{source}: no such checkpoint, run directory, or run under {runs_root}/"
                          + (f" ({detail})" if detail else ""))
    return path


def run_checkpoint(name: str, runs_root: str | Path) -> Path:
    """The final checkpoint of the run ``name`` under ``runs_root``; a name that is no run there is refused in one
    line listing the runs that are, closest first."""
    folder = Path(runs_root) / name
    if (folder / CHECKPOINT_NAME).is_file():
        return folder / CHECKPOINT_NAME
    if folder.is_dir():
        raise RespkdError(f"run '{name}' in {runs_root}/ has no {CHECKPOINT_NAME} (not finished, or its weights were "
                          "not kept)")
    near = nearest_runs(name, runs_root)
    raise RespkdError(f"run '{shorten(name)}' does not exist under {runs_root}/"
                      + (f"; runs there: {', '.join(near)}" if near else " (it holds no finished run)"))


def nearest_runs(name: str, runs_root: str | Path, n: int = 5) -> list[str]:
    """The names of up to ``n`` runs under ``runs_root`` that hold a checkpoint, the most like ``name`` first."""
    try:
        runs = [p.name for p in Path(runs_root).iterdir() if (p / CHECKPOINT_NAME).is_file()]
    except OSError:
        return []
    likeness = {run: difflib.SequenceMatcher(None, name[:200], run).ratio() for run in runs}
    return sorted(runs, key=lambda run: (-likeness[run], run))[:n]


def is_respkd_checkpoint(path: Path) -> bool:
    """Whether ``path`` is a safetensors file whose header holds respkd's metadata (a readable one: a damaged file is
    refused with one line)."""
    return Path(path).suffix.lower() == ".safetensors" and "respkd" in _header_metadata(Path(path), "file")


def _header_metadata(path: Path, what: str) -> dict[str, str]:
    """The string metadata of a safetensors file's header (``what`` names the file in the one-line error)."""
    try:
        with safe_open(str(path), "pt") as f:
            return f.metadata() or {}
    except (SafetensorError, OSError) as err:
        raise RespkdError(f"{path}: not a readable safetensors {what} ({first_line(err)})") from None


def _read_tensors(path: Path, what: str) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file; a truncated or damaged one is a one-line error naming ``what`` it is."""
    try:
        with safe_open(str(path), "pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, RuntimeError) as err:
        raise RespkdError(f"{path}: corrupt or truncated {what} ({first_line(err)})") from None


# ---------------------------------------------------------------- weights from anywhere: respkd, safetensors, torch

TORCH_SUFFIXES = (".pth", ".pt", ".bin")  # torch.save files: torchvision/timm state dicts, HF pytorch_model.bin
# Where training scripts keep the state dict inside a saved dict: timm's train.py ("state_dict"), many scripts
# ("model_state_dict"), torchvision's reference scripts ("model"). The first one holding tensors wins.
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")
# Key prefixes added by wrappers that are not part of the model: DDP / DataParallel ("module.") and torch.compile
# ("_orig_mod."). Removed only when every key carries them.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


@dataclass
class Weights:
    """A state dict read by :func:`load_weights`, with where it came from.

    ``kind`` is ``respkd`` (a respkd checkpoint: ``meta`` holds its metadata), ``safetensors`` or ``torch``;
    ``notes`` says what was done to reach a plain state dict (which wrapper entry was taken, which prefix removed);
    ``sha256`` is :func:`tensors_digest` of ``state``, the weights' identity (e.g. in a teacher cache's key).
    """

    path: Path
    kind: str
    state: dict[str, torch.Tensor]
    sha256: str
    notes: list[str]
    meta: dict[str, Any] | None = None


def load_weights(path: str | Path) -> Weights:
    """Read a state dict from a respkd checkpoint, a plain ``.safetensors`` file or a ``torch.save`` file.

    Nothing is unpickled beyond tensors and plain containers: ``.pth``/``.pt``/``.bin`` files go through
    ``torch.load(weights_only=True)`` (which also allows ``argparse.Namespace``, as torchvision's reference scripts
    store their arguments beside the weights). A file that would need anything else (a whole pickled model, a
    ``__reduce__`` payload) is refused with a one-line :class:`RespkdError` before any of it runs. A saved dict that
    wraps the state dict (``{"state_dict": ...}``, ``{"model": ...}``) is unwrapped, and a ``module.`` (DDP) or
    ``_orig_mod.`` (torch.compile) prefix on every key is removed; ``notes`` records both.
    """
    path = Path(path)
    if not path.is_file():
        raise RespkdError(f"weights file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        if is_respkd_checkpoint(path):
            state, meta = load_checkpoint(path)
            return Weights(path, "respkd", state, meta["weights_sha256"], [], meta)
        raw, kind = _read_tensors(path, "safetensors file"), "safetensors"
    elif suffix in TORCH_SUFFIXES:
        raw, kind = _torch_load_safely(path), "torch"
    else:
        raise RespkdError(f"{path}: unknown weights format '{suffix}' (use .safetensors, or a torch.save state dict "
                          f"as {', '.join(TORCH_SUFFIXES)})")
    state, notes = _plain_state_dict(raw, path)
    return Weights(path, kind, state, tensors_digest(state), notes)


def _torch_load_safely(path: Path) -> Any:
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals([argparse.Namespace]):
            warnings.filterwarnings("ignore", message=".*pickle protocol.*")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        if found is None:  # no object refused: the bytes are not a torch.save file at all ("Unsupported operand")
            detail = re.search(r"WeightsUnpickler error:\s*(.+)", str(err))
            raise RespkdError(f"{path}: not a readable torch.save file "
                              f"({detail.group(1).strip() if detail else first_line(err)})") from None
        raise RespkdError(
            f"{path}: refused: it holds pickled Python objects ({found.group(1)}) beyond tensors and plain "
            "containers, and reading them could run code; save model.state_dict() instead, or convert to safetensors"
        ) from None
    except Exception as err:  # noqa: BLE001 - a damaged file can make torch.load raise almost anything
        raise RespkdError(f"{path}: not a readable torch.save file ({type(err).__name__}: {first_line(err)})") from None


def _plain_state_dict(raw: Any, path: Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``raw`` itself if it maps names to tensors, else its first wrapper entry that does; prefixes stripped."""
    notes = []
    if isinstance(raw, dict) and not _is_state_dict(raw):
        key = next((k for k in WRAPPER_KEYS if _is_state_dict(raw.get(k))), None)
        if key is None:
            shown = ", ".join(map(repr, list(raw)[:6])) if raw else "none"
            raise RespkdError(f"{path}: no state dict found (a mapping of names to tensors, directly or under "
                              f"{' / '.join(map(repr, WRAPPER_KEYS))}; top-level keys: {shown})")
        raw = raw[key]
        notes.append(f"took the state dict under '{key}'")
    if not _is_state_dict(raw):
        raise RespkdError(f"{path}: holds a {type(raw).__name__}, not a state dict (a mapping of names to tensors)")
    state = dict(raw)
    while prefix := next((p for p in WRAPPER_PREFIXES if all(k.startswith(p) for k in state)), None):
        state = {k[len(prefix):]: v for k, v in state.items()}
        notes.append(f"removed the '{prefix}' prefix of every key")
    return state, notes


def _is_state_dict(obj: Any) -> bool:
    return (isinstance(obj, dict) and bool(obj) and all(isinstance(k, str) for k in obj)
            and all(isinstance(v, torch.Tensor) for v in obj.values()))
