"""Raw readers (IDX, CSV), the checksummed dataset cache, and finding a dataset in a folder."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from respkd.data.datasets import (
    DATASETS,
    dataset_info,
    load_dataset,
    read_cache,
    write_cache,
)
from respkd.data.idx import read_idx, read_label_pixel_csv
from respkd.errors import RespkdError

from conftest import N_TEST, N_TRAIN, make_idx_folder, synthetic_digits, write_idx

MNIST = DATASETS["mnist"]


# ---------------------------------------------------------------- IDX


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize(
    "array",
    [
        np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4),
        np.array([7, 0, 255, 3], dtype=np.uint8),
        np.array([[-5, 1000], [32767, -32768]], dtype=np.int16),
        np.array([1, -2, 70000], dtype=np.int32),
        np.array([[0.5, -1.25]], dtype=np.float32),
        np.array([1e-300, 2.5], dtype=np.float64),
    ],
    ids=["u8-3d", "u8-1d", "i16", "i32", "f32", "f64"],
)
def test_idx_round_trip(tmp_path, suffix, array):
    path = write_idx(tmp_path / f"a-idx{suffix}", array)
    out = read_idx(path)
    assert out.shape == array.shape
    assert out.dtype.kind == array.dtype.kind and out.dtype.itemsize == array.dtype.itemsize
    assert out.dtype.isnative
    np.testing.assert_array_equal(out, array)


def test_idx_header_is_big_endian(tmp_path):
    # hand-written header: magic 0x00000803, dims 2 x 1 x 3 (big-endian), then 6 bytes
    raw = bytes([0, 0, 8, 3]) + struct.pack(">III", 2, 1, 3) + bytes(range(6))
    path = tmp_path / "hand-idx3-ubyte"
    path.write_bytes(raw)
    np.testing.assert_array_equal(read_idx(path), np.arange(6, dtype=np.uint8).reshape(2, 1, 3))
    raw = bytes([0, 0, 0x0C, 1]) + struct.pack(">I", 2) + struct.pack(">ii", 258, -1)
    path.write_bytes(raw)
    np.testing.assert_array_equal(read_idx(path), np.array([258, -1]))


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("magic", [b"\x01\x00\x08\x01", b"\x00\x00\x07\x01", b"\x00\x00", b"PK\x03\x04"])
def test_idx_bad_magic(tmp_path, suffix, magic):
    path = tmp_path / f"bad{suffix}"
    body = magic + b"\x00\x00\x00\x02ab"
    if suffix:
        with gzip.open(path, "wb") as f:
            f.write(body)
    else:
        path.write_bytes(body)
    with pytest.raises(RespkdError, match="bad magic"):
        read_idx(path)


@pytest.mark.parametrize("cut", [1, 100])
def test_idx_truncated_plain(tmp_path, cut):
    path = write_idx(tmp_path / "t-idx3-ubyte", np.zeros((5, 28, 28), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:-cut])
    with pytest.raises(RespkdError, match="truncated"):
        read_idx(path)


def test_idx_trailing_bytes(tmp_path):
    path = write_idx(tmp_path / "t-idx1-ubyte", np.zeros(5, dtype=np.uint8))
    path.write_bytes(path.read_bytes() + b"\x00")
    with pytest.raises(RespkdError, match="header promises"):
        read_idx(path)


def test_idx_truncated_gz(tmp_path):
    path = write_idx(tmp_path / "t-idx3-ubyte.gz", np.random.default_rng(0).integers(0, 255, (20, 28, 28), dtype=np.uint8))
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(RespkdError, match="cannot read IDX"):
        read_idx(path)


def test_idx_gz_content_truncated_inside(tmp_path):
    # a valid gzip stream whose content is a truncated IDX file
    full = write_idx(tmp_path / "full-idx3-ubyte", np.zeros((3, 4, 4), dtype=np.uint8)).read_bytes()
    path = tmp_path / "short-idx3-ubyte.gz"
    with gzip.open(path, "wb") as f:
        f.write(full[:-5])
    with pytest.raises(RespkdError, match="truncated"):
        read_idx(path)


def test_idx_missing_file(tmp_path):
    with pytest.raises(RespkdError, match="cannot read IDX"):
        read_idx(tmp_path / "nope")


# ---------------------------------------------------------------- CSV


def write_csv(path: Path, images: np.ndarray, labels: np.ndarray, header: bool) -> Path:
    lines = []
    if header:
        lines.append(",".join(["label"] + [f"{r + 1}x{c + 1}" for r in range(images.shape[1])
                                            for c in range(images.shape[2])]))
    for img, lab in zip(images, labels):
        lines.append(",".join([str(int(lab))] + [str(int(v)) for v in img.reshape(-1)]))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("header", [True, False])
def test_csv_with_and_without_header(tmp_path, header):
    images = np.random.default_rng(0).integers(0, 256, (4, 3, 2), dtype=np.uint8)
    labels = np.array([3, 0, 9, 1])
    path = write_csv(tmp_path / "d.csv", images, labels, header)
    out_images, out_labels = read_label_pixel_csv(path, (3, 2))
    assert out_images.dtype == np.uint8 and out_labels.dtype == np.int64
    np.testing.assert_array_equal(out_images, images)
    np.testing.assert_array_equal(out_labels, labels)


def test_csv_single_row(tmp_path):
    path = write_csv(tmp_path / "d.csv", np.full((1, 2, 2), 7, dtype=np.uint8), np.array([5]), header=False)
    images, labels = read_label_pixel_csv(path, (2, 2))
    assert images.shape == (1, 2, 2) and labels.tolist() == [5]


def test_csv_wrong_column_count(tmp_path):
    path = write_csv(tmp_path / "d.csv", np.zeros((2, 3, 3), dtype=np.uint8), np.array([1, 2]), header=True)
    with pytest.raises(RespkdError, match="columns"):
        read_label_pixel_csv(path, (2, 2))


def test_csv_pixel_out_of_range(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("1,0,256,0,0\n")
    with pytest.raises(RespkdError, match="0-255"):
        read_label_pixel_csv(path, (2, 2))


def test_csv_not_numbers(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("1,0,0,0,0\n2,a,b,c,d\n")
    with pytest.raises(RespkdError, match="cannot read"):
        read_label_pixel_csv(path, (2, 2))


# ---------------------------------------------------------------- the cache


def tiny_arrays(n_train: int = 12, n_test: int = 5) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "train_images": torch.randint(0, 256, (n_train, 28, 28), dtype=torch.uint8, generator=g),
        "train_labels": torch.randint(0, 10, (n_train,), generator=g),
        "test_images": torch.randint(0, 256, (n_test, 28, 28), dtype=torch.uint8, generator=g),
        "test_labels": torch.randint(0, 10, (n_test,), generator=g),
    }


def data_region(path: Path) -> tuple[int, int]:
    raw = path.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    return 8 + header_len, len(raw)


def test_cache_round_trip(tmp_path):
    arrays = tiny_arrays()
    cache = tmp_path / "mnist.safetensors"
    write_cache(cache, arrays, "test")
    splits = read_cache(cache, MNIST)
    assert splits.train_images.shape == (12, 1, 28, 28) and splits.test_images.shape == (5, 1, 28, 28)
    assert torch.equal(splits.train_images.reshape(12, 28, 28), arrays["train_images"])
    assert torch.equal(splits.test_labels, arrays["test_labels"])
    assert splits.train_labels.dtype == torch.int64
    assert splits.num_classes == 10
    assert not splits.canonical  # a tiny slice is not the canonical release
    assert [p.name for p in tmp_path.iterdir()] == ["mnist.safetensors"]


@pytest.mark.parametrize("where", [0.0, 0.5, 0.999])
def test_cache_flipped_byte_fails_checksum(tmp_path, where):
    cache = tmp_path / "mnist.safetensors"
    write_cache(cache, tiny_arrays(), "test")
    start, end = data_region(cache)
    raw = bytearray(cache.read_bytes())
    raw[start + int((end - start - 1) * where)] ^= 0x01
    cache.write_bytes(bytes(raw))
    with pytest.raises(RespkdError, match="checksum") as info:
        read_cache(cache, MNIST)
    assert "\n" not in str(info.value)
    # and load_dataset, which uses the cache when no path is given, refuses it too
    with pytest.raises(RespkdError, match="checksum"):
        load_dataset("mnist", root=tmp_path)


@pytest.mark.parametrize("keep", [0, 7, 200, -1])
def test_truncated_cache(tmp_path, keep):
    cache = tmp_path / "mnist.safetensors"
    write_cache(cache, tiny_arrays(), "test")
    raw = cache.read_bytes()
    cache.write_bytes(raw[:keep] if keep >= 0 else raw[:-1])
    with pytest.raises(RespkdError) as info:
        read_cache(cache, MNIST)
    assert "\n" not in str(info.value)
    assert str(cache) in str(info.value)


def test_cache_missing_split_is_not_a_cache(tmp_path):
    arrays = tiny_arrays()
    del arrays["test_labels"]
    cache = tmp_path / "mnist.safetensors"
    write_cache(cache, arrays, "test")
    with pytest.raises(RespkdError, match="not a respkd dataset cache"):
        read_cache(cache, MNIST)


def test_cache_with_labels_out_of_range(tmp_path):
    arrays = tiny_arrays()
    arrays["train_labels"][0] = 10
    cache = tmp_path / "mnist.safetensors"
    write_cache(cache, arrays, "test")
    with pytest.raises(RespkdError, match="labels outside"):
        read_cache(cache, MNIST)


# ---------------------------------------------------------------- finding and loading a dataset


def test_load_idx_folder(idx_dir, tmp_path):
    splits = load_dataset("mnist", root=tmp_path / "root", path=idx_dir)
    train_x, train_y = synthetic_digits(N_TRAIN, seed=1)
    test_x, test_y = synthetic_digits(N_TEST, seed=2)
    assert splits.train_images.shape == (N_TRAIN, 1, 28, 28)
    np.testing.assert_array_equal(splits.train_images.numpy()[:, 0], train_x)
    np.testing.assert_array_equal(splits.train_labels.numpy(), train_y)
    np.testing.assert_array_equal(splits.test_images.numpy()[:, 0], test_x)
    np.testing.assert_array_equal(splits.test_labels.numpy(), test_y)
    assert splits.train_labels.dtype == torch.int64
    # an explicit folder is read as it is: no cache is written under root
    assert not (tmp_path / "root").exists()


def test_load_torchvision_layout(tmp_path):
    make_idx_folder(tmp_path / "tv" / "MNIST" / "raw", n_train=20, n_test=10)
    splits = load_dataset("mnist", root=tmp_path, path=tmp_path / "tv")
    assert len(splits.train_labels) == 20 and len(splits.test_labels) == 10


def test_load_csv_folder(tmp_path):
    folder = tmp_path / "csv"
    folder.mkdir()
    tx, ty = synthetic_digits(6, seed=5)
    ex, ey = synthetic_digits(4, seed=6)
    write_csv(folder / "mnist_train.csv", tx, ty, header=True)
    write_csv(folder / "mnist_test.csv", ex, ey, header=False)
    splits = load_dataset("mnist", root=tmp_path, path=folder)
    np.testing.assert_array_equal(splits.train_images.numpy()[:, 0], tx)
    np.testing.assert_array_equal(splits.test_labels.numpy(), ey)


def test_csv_folder_without_test_file(tmp_path):
    folder = tmp_path / "csv"
    folder.mkdir()
    write_csv(folder / "mnist_train.csv", *synthetic_digits(3, seed=5), header=False)
    with pytest.raises(RespkdError, match="mnist_test.csv"):
        load_dataset("mnist", root=tmp_path, path=folder)


def test_empty_folder_holds_no_dataset(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RespkdError, match="holds no mnist dataset") as info:
        load_dataset("mnist", root=tmp_path / "root", path=empty)
    assert "train-images-idx3-ubyte" in str(info.value)
    assert not (tmp_path / "root").exists()


def test_folder_missing_one_idx_file(tmp_path):
    folder = make_idx_folder(tmp_path / "partial", n_train=5, n_test=5)
    next(folder.glob("t10k-labels*")).unlink()
    with pytest.raises(RespkdError, match="holds no mnist dataset"):
        load_dataset("mnist", root=tmp_path, path=folder)


def test_missing_folder(tmp_path):
    with pytest.raises(RespkdError, match="does not exist"):
        load_dataset("mnist", root=tmp_path, path=tmp_path / "nowhere")


def test_source_restricts_formats(tmp_path, idx_dir):
    with pytest.raises(RespkdError, match="holds no"):
        load_dataset("mnist", root=tmp_path, path=idx_dir, source="csv")
    assert len(load_dataset("mnist", root=tmp_path, path=idx_dir, source="idx").test_labels) == N_TEST
    # another dataset's source (a config refuses it too; the reader checks the same list, config.DATA_SOURCES)
    with pytest.raises(RespkdError, match="'binary' does not apply to mnist: choose auto, idx, csv, download"):
        load_dataset("mnist", root=tmp_path, path=idx_dir, source="binary")


def test_unknown_dataset():
    with pytest.raises(RespkdError, match="unknown dataset 'cifar'"):
        dataset_info("cifar")


def test_cache_is_preferred_when_no_path(tmp_path):
    """With no path, an existing (valid) cache under root is used as it is, whatever its origin."""
    arrays = tiny_arrays(7, 3)
    write_cache(tmp_path / "mnist.safetensors", arrays, "test")
    splits = load_dataset("mnist", root=tmp_path)
    assert len(splits.train_labels) == 7 and len(splits.test_labels) == 3


def test_real_mnist_cache_is_canonical(real_mnist_root):
    splits = load_dataset("mnist", root=real_mnist_root)
    assert splits.train_images.shape == (60000, 1, 28, 28) and splits.test_images.shape == (10000, 1, 28, 28)
    assert splits.canonical
    assert torch.bincount(splits.test_labels).tolist()[:2] == [980, 1135]
