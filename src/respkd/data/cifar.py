"""CIFAR-10 and CIFAR-100 from their two on-disk releases, checked and turned into uint8 tensors.

* Binary release (``cifar-10-batches-bin/``: ``data_batch_1.bin`` .. ``data_batch_5.bin``, ``test_batch.bin``;
  ``cifar-100-binary/``: ``train.bin``, ``test.bin``): fixed-size records, ``<label bytes><3072 pixel bytes>``, the
  pixels as 1024 red, then 1024 green, then 1024 blue values, row by row. CIFAR-10 has one label byte; CIFAR-100 has
  two, the coarse (20 superclasses) then the fine label (100 classes), of which we use the fine one.
* Python release (``cifar-10-batches-py/``: ``data_batch_1`` .. ``data_batch_5``, ``test_batch``;
  ``cifar-100-python/``: ``train``, ``test``): pickled dicts with ``data`` (an ``N x 3072`` uint8 array, same pixel
  order) and ``labels`` (CIFAR-10) or ``fine_labels`` (CIFAR-100). Read with :mod:`respkd.data.safe_pickle`, which
  refuses any pickle that names something other than numpy's array builders: no code in the file can run.

Either way the result is ``(N, 3, 32, 32)`` uint8 images and int64 labels; a truncated file, a label out of range or
an array of the wrong shape is a one-line error naming the file. ``batches.meta``/``meta`` are not needed: the class
names are fixed and listed in :mod:`respkd.data.datasets`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from respkd.data.safe_pickle import load_numpy_pickle
from respkd.errors import RespkdError

__all__ = [
    "PIXELS", "RELEASES", "CifarRelease", "download", "expected_layout", "find_release", "read_binary_batch",
    "read_python_batch", "read_release",
]

PIXELS = 3 * 32 * 32


@dataclass(frozen=True)
class CifarRelease:
    num_classes: int
    python_dir: str
    python_files: dict[str, list[str]]  # split -> files, in order
    label_key: str
    binary_dir: str
    binary_files: dict[str, list[str]]
    label_bytes: int  # the label used is the last of them (CIFAR-100: coarse, then fine)
    coarse_classes: int | None  # CIFAR-100's first label byte, checked too: a wrong value means a wrong file
    torchvision_class: str  # for the download (url, file name and MD5 come from torchvision)


RELEASES = {
    "cifar10": CifarRelease(
        10, "cifar-10-batches-py", {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]},
        "labels", "cifar-10-batches-bin",
        {"train": [f"data_batch_{i}.bin" for i in range(1, 6)], "test": ["test_batch.bin"]}, 1, None, "CIFAR10",
    ),
    "cifar100": CifarRelease(
        100, "cifar-100-python", {"train": ["train"], "test": ["test"]}, "fine_labels", "cifar-100-binary",
        {"train": ["train.bin"], "test": ["test.bin"]}, 2, 20, "CIFAR100",
    ),
}


def find_release(name: str, folder: Path, source: str) -> tuple[str, Path] | None:
    """``("python" | "binary", folder holding the files)`` found in ``folder`` or its release subfolder, or None.

    ``source`` ``auto`` tries the Python release first, then the binary one; ``python``/``binary`` only that one.
    """
    r = RELEASES[name]
    kinds = {"auto": ("python", "binary"), "python": ("python",), "binary": ("binary",)}[source]
    for kind in kinds:
        subdir, files = (r.python_dir, r.python_files) if kind == "python" else (r.binary_dir, r.binary_files)
        for candidate in (folder, folder / subdir):
            if (candidate / files["train"][0]).is_file():
                return kind, candidate
    return None


def expected_layout(name: str) -> str:
    r = RELEASES[name]
    return (f"{r.python_dir}/ ({', '.join(r.python_files['train'] + r.python_files['test'])}) or "
            f"{r.binary_dir}/ ({', '.join(r.binary_files['train'] + r.binary_files['test'])})")


def read_release(name: str, kind: str, folder: Path) -> dict[str, torch.Tensor]:
    """All of one release's files as ``train_images``, ``train_labels``, ``test_images``, ``test_labels``."""
    r = RELEASES[name]
    files = r.python_files if kind == "python" else r.binary_files
    arrays = {}
    for split, names in files.items():
        parts = []
        for file in names:
            path = folder / file
            if not path.is_file():
                raise RespkdError(f"{folder}: has {files['train'][0]} but no {file}: an incomplete {name} release")
            parts.append(read_python_batch(path, r) if kind == "python" else read_binary_batch(path, r))
        arrays[f"{split}_images"] = torch.from_numpy(np.concatenate([p[0] for p in parts]))
        arrays[f"{split}_labels"] = torch.from_numpy(np.concatenate([p[1] for p in parts]))
    return arrays


def read_binary_batch(path: Path, r: CifarRelease) -> tuple[np.ndarray, np.ndarray]:
    """One binary-release file: records of ``label_bytes`` label bytes and 3072 pixel bytes."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise RespkdError(f"{path}: cannot read ({err.strerror or err})") from None
    record = r.label_bytes + PIXELS
    if not raw or len(raw) % record:
        raise RespkdError(f"{path}: {len(raw)} bytes is not a whole number of {record}-byte CIFAR records "
                          "(truncated, or not this release's file)")
    table = np.frombuffer(raw, dtype=np.uint8).reshape(-1, record)
    if r.coarse_classes is not None:
        _check_labels(path, table[:, 0], r.coarse_classes, "coarse label byte")
    labels = table[:, r.label_bytes - 1].astype(np.int64)
    _check_labels(path, labels, r.num_classes, "label byte")
    return table[:, r.label_bytes :].reshape(-1, 3, 32, 32).copy(), labels


def read_python_batch(path: Path, r: CifarRelease) -> tuple[np.ndarray, np.ndarray]:
    """One Python-release file: a pickled dict with ``data`` (N x 3072 uint8) and the labels."""
    batch = load_numpy_pickle(path)
    if not isinstance(batch, dict):
        raise RespkdError(f"{path}: expected a pickled dict, found {type(batch).__name__}")
    # Python 2 wrote str keys, which latin1 decoding keeps as str; a Python 3 re-save may have bytes keys.
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    for key in ("data", r.label_key):
        if key not in batch:
            raise RespkdError(f"{path}: has no '{key}' entry (keys: {', '.join(map(str, batch))})")
    data = batch["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != PIXELS:
        shape = getattr(data, "shape", None)
        raise RespkdError(f"{path}: 'data' is {type(data).__name__} {getattr(data, 'dtype', '')} of shape {shape}, "
                          f"expected uint8 of shape (N, {PIXELS})")
    try:
        labels = np.asarray(batch[r.label_key])
    except (TypeError, ValueError):
        labels = np.zeros(0, dtype=object)
    if labels.ndim != 1 or labels.dtype.kind not in "iu" or len(labels) != len(data):
        raise RespkdError(f"{path}: '{r.label_key}' should hold {len(data)} integers, found {labels.dtype} of "
                          f"shape {labels.shape}")
    labels = labels.astype(np.int64)
    _check_labels(path, labels, r.num_classes, f"'{r.label_key}'")
    return data.reshape(-1, 3, 32, 32).copy(), labels


def _check_labels(path: Path, labels: np.ndarray, num_classes: int, what: str) -> None:
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if len(bad):
        raise RespkdError(f"{path}: {what} of example {bad[0]} is {labels[bad[0]]}, outside 0..{num_classes - 1} "
                          "(a damaged file, or another dataset's)")


def download(name: str, root: Path) -> Path:
    """Download and unpack the Python release into ``root`` (torchvision's URL and MD5); returns its folder."""
    r = RELEASES[name]
    folder = root / r.python_dir
    if not (folder / r.python_files["train"][0]).is_file():
        import torchvision.datasets as tvd  # slow to import: only when a download is due
        from torchvision.datasets.utils import download_and_extract_archive

        tv = getattr(tvd, r.torchvision_class)
        try:
            download_and_extract_archive(tv.url, str(root), filename=tv.filename, md5=tv.tgz_md5)
        except Exception as err:  # network errors come in many types; all mean the same to the user
            raise RespkdError(f"could not download {name} ({type(err).__name__}: {err}); set data.path to a folder "
                              f"holding {expected_layout(name)}") from None
    return folder
