"""Checkpoints: safetensors weights with JSON metadata in the same file, written atomically, read without pickle.

A checkpoint is one ``.safetensors`` file. Its header's ``__metadata__`` holds one key, ``respkd``, whose value is a
JSON object: the model spec needed to rebuild the network (``model``, ``num_classes``, ``in_shape``), the run's
config, metrics, the dataset checksum, library versions, and ``weights_sha256``, the SHA-256 of the tensors, which
:func:`load_checkpoint` verifies, so a file damaged in the middle of its data is refused, not silently used.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from respkd.errors import RespkdError

CHECKPOINT_FORMAT = "respkd-checkpoint-v1"


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it over ``path``.

    The rename is atomic on POSIX: a crash leaves either the old file or the new one, never half of one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would survive the rename; give the usual file mode
    try:
        write(Path(tmp))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_save_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


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
    atomic_save_safetensors(tensors, path, {"respkd": json.dumps(meta)})


def read_checkpoint_meta(path: Path) -> dict[str, Any]:
    """The JSON metadata of a checkpoint, without reading its weights."""
    path = Path(path)
    if not path.is_file():
        raise RespkdError(f"checkpoint {path} {'is not a file' if path.exists() else 'does not exist'}")
    try:
        with safe_open(str(path), "pt") as f:
            raw = (f.metadata() or {}).get("respkd")
    except (SafetensorError, OSError) as err:
        raise RespkdError(f"{path}: not a readable safetensors checkpoint ({_first_line(err)})") from None
    try:
        meta = json.loads(raw) if raw else None
    except json.JSONDecodeError:
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
        raise RespkdError(f"{path}: a safetensors file, but not a respkd checkpoint (no respkd metadata)")
    return meta


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read weights and metadata; refuse a truncated or corrupted file with a one-line :class:`RespkdError`."""
    meta = read_checkpoint_meta(path)
    try:
        with safe_open(str(path), "pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, RuntimeError) as err:
        raise RespkdError(f"{path}: corrupt or truncated checkpoint ({_first_line(err)})") from None
    if tensors_digest(tensors) != meta.get("weights_sha256"):
        raise RespkdError(f"{path}: checksum of the weights does not match the metadata (corrupt checkpoint)")
    return tensors, meta


def _first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
