"""Class folders of image files streamed from disk: ImageNet with torchvision's reference transforms, and a large
folder of one's own images (:mod:`respkd.data.folder`) with its fixed resize.

Layout: ``<path>/train/<class>/*.JPEG`` and ``<path>/val/<class>/*.JPEG`` (class folders named by WordNet id, as
torchvision's ``ImageFolder`` and its ImageNet reference scripts expect; the validation images sorted into class
folders). 1.28 million JPEGs do not fit in memory as tensors, so worker processes decode and crop each batch:

* train: ``RandomResizedCrop(224)`` + ``RandomHorizontalFlip()`` (torchvision's reference recipe);
* val: ``Resize(256)`` + ``CenterCrop(224)``, every image exactly once.

Workers hand over uint8 tensors; the float conversion and normalisation run on the device (a quarter of the bytes
to copy). Batches are ``(inputs, labels, indices)``, as :class:`respkd.data.memory.BatchLoader` yields them.
The epoch's order and the workers' random crops are seeded by ``(seed, epoch)``, so an epoch is reproducible for a
given number of workers (with ``workers: 0`` the crops come from the run's global generator instead).
:class:`FolderLoader` takes the transform (PIL image -> uint8 tensor) and the channels to decode to, so the same
loader streams either; :func:`worker_items` is the one way respkd iterates decoding workers (a worker's error
reaches the user as its one line).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from respkd.data.datasets import DatasetInfo, require_folder
from respkd.data.images import cover_crop, image_tensor, open_image, to_channels
from respkd.data.memory import PixelNormalizer
from respkd.errors import RespkdError, first_line

__all__ = [
    "RESIZE_SIZE", "SPLIT_FOLDERS", "CoverCrop", "FolderLoader", "FolderSplits", "IndexedImages", "evenly_spaced",
    "load_image_folders", "reference_transform", "worker_items",
]

SPLIT_FOLDERS = {"train": "train", "test": "val"}
RESIZE_SIZE = 256  # val: resize the shorter side to this, then take the centre crop of the model's input size


@dataclass
class FolderSplits:
    """The streamed counterpart of :class:`respkd.data.datasets.Splits`: file lists and labels, no pixels.

    ``sha256`` digests the file lists (relative paths and labels of both splits), not the images' bytes: reading
    150 GB to hash them would cost more than an epoch.
    """

    info: DatasetInfo
    train_files: list[tuple[str, int]]
    test_files: list[tuple[str, int]]
    sha256: str
    canonical = None  # no canonical digest of a file list
    train_index = None  # no transfer-set selection for streamed data

    @property
    def num_classes(self) -> int:
        return len(self.info.class_names)

    @cached_property
    def train_labels(self) -> torch.Tensor:
        return torch.tensor([label for _, label in self.train_files], dtype=torch.long)

    @cached_property
    def test_labels(self) -> torch.Tensor:
        return torch.tensor([label for _, label in self.test_files], dtype=torch.long)

    @property
    def val_labels(self) -> torch.Tensor:
        return torch.zeros(0, dtype=torch.long)

    def limited(self, train_limit: int | None, test_limit: int | None) -> "FolderSplits":
        """At most ``train_limit``/``test_limit`` files of each split, evenly spaced over the class-sorted lists, so
        every class keeps its share (the first N would all be class 0)."""
        return replace(self, train_files=evenly_spaced(self.train_files, train_limit),
                       test_files=evenly_spaced(self.test_files, test_limit))


def evenly_spaced(files: list, limit: int | None) -> list:
    """At most ``limit`` of ``files``, evenly spaced over the list (all of them for None)."""
    if limit is None or limit >= len(files):
        return files
    picks = torch.linspace(0, len(files) - 1, limit).round().long().unique()
    return [files[i] for i in picks.tolist()]


def load_image_folders(info: DatasetInfo, path: str | None) -> FolderSplits:
    """List ``<path>/train`` and ``<path>/val`` (both must hold the same class folders); reads no image yet."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    if path is None:
        raise RespkdError(f"{info.name} needs data.path: a folder holding train/<class>/*.JPEG and val/<class>/*.JPEG")
    root = Path(path)
    require_folder(root)
    listed = {}
    for split, folder_name in SPLIT_FOLDERS.items():
        folder = root / folder_name
        if not folder.is_dir():
            raise RespkdError(f"{root}: has no {folder_name}/ folder (expected train/<class>/*.JPEG and "
                              "val/<class>/*.JPEG)")
        try:
            classes, class_to_idx = find_classes(str(folder))
            samples = make_dataset(str(folder), class_to_idx, extensions=IMG_EXTENSIONS)
        except (FileNotFoundError, OSError) as err:  # no class folders, or a class folder without images
            raise RespkdError(f"{folder}: {first_line(err)}") from None
        listed[split] = classes, [(str(Path(file).relative_to(root)), label) for file, label in samples]
    (train_classes, train_files), (test_classes, test_files) = listed["train"], listed["test"]
    if train_classes != test_classes:
        only = sorted(set(train_classes) ^ set(test_classes))
        raise RespkdError(f"{root}: train/ and val/ hold different class folders (e.g. '{only[0]}' is in only one); "
                          "sort the validation images into the same class folders as train/")
    digest = hashlib.sha256()
    for split, files in (("train", train_files), ("test", test_files)):
        digest.update(f"{split}:{len(files)}\n".encode())
        for file, label in files:
            digest.update(f"{file}\t{label}\n".encode())
    info = replace(info, class_names=tuple(train_classes))
    return FolderSplits(info, _absolute(root, train_files), _absolute(root, test_files), digest.hexdigest())


def _absolute(root: Path, files: list[tuple[str, int]]) -> list[tuple[str, int]]:
    return [(str(root / file), label) for file, label in files]


def reference_transform(train: bool, size: int):
    """torchvision's ImageNet reference transforms (its default PIL backend), ending in a uint8 tensor: the float
    conversion and normalisation happen on the device."""
    from torchvision.transforms import v2

    if train:
        steps = [v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip()]
    else:
        steps = [v2.Resize(round(size * RESIZE_SIZE / 224), antialias=True), v2.CenterCrop(size)]
    return v2.Compose([*steps, v2.PILToTensor()])


class CoverCrop:
    """A folder's transform (see :func:`respkd.data.images.cover_crop`): the image scaled to cover ``size`` and
    centre-cropped, mirrored at random (torch's generator, seeded per worker) when ``flip``; a uint8 tensor."""

    def __init__(self, size: tuple[int, int], flip: bool = False) -> None:
        self.size, self.flip = size, flip

    def __call__(self, image: Image.Image) -> torch.Tensor:
        pixels = image_tensor(cover_crop(image, self.size))
        return pixels.flip(-1) if self.flip and torch.rand(()) < 0.5 else pixels


class IndexedImages(Dataset):
    """``(uint8 image tensor, label, index)`` for each ``(file, label)``: decoded to ``channels`` (None: grey images
    to 1, the others to 3), then ``transform``; a file that cannot be decoded is a RespkdError naming it."""

    def __init__(self, files: list[tuple[str, int]], transform: Callable[[Image.Image], torch.Tensor],
                 channels: int | None = 3, exif_transpose: bool = False) -> None:
        self.files, self.transform = files, transform
        self.channels, self.exif_transpose = channels, exif_transpose

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        file, label = self.files[index]
        image = to_channels(open_image(file, self.exif_transpose), self.channels, file)
        return self.transform(image), label, index


def worker_items(loader: DataLoader) -> Iterator[Any]:
    """What ``loader`` yields; a RespkdError raised in a worker comes out as its own line (not the worker's
    traceback), and the workers stop however the iteration ends."""
    batches = iter(loader)
    try:
        yield from batches
    except RespkdError as err:  # from a worker: the DataLoader wraps it with the worker's traceback
        raise RespkdError(_last_line(str(err))) from None
    finally:
        # Stop the workers now, however the epoch ended (an error, or a caller that stopped early). Otherwise the
        # iterator waits for the garbage collector, whose shutdown of the workers takes seconds.
        stop = getattr(batches, "_shutdown_workers", None)
        if stop is not None:
            stop()


def _seed_worker(worker_id: int) -> None:
    """Seed Python's ``random`` too (v2 transforms draw from torch, which the DataLoader already seeds per worker)."""
    import random

    random.seed(torch.initial_seed() % 2**32)


class FolderLoader:
    """Iterate ``(inputs, labels, indices)`` over image files, decoded by ``workers`` processes.

    Args mirror :class:`respkd.data.memory.BatchLoader` where they apply; ``transform`` turns a decoded image
    (``channels``: 1 grey, 3 RGB) into a uint8 tensor (:func:`reference_transform`, :class:`CoverCrop`); ``train``
    gives a new order every epoch and ``drop_last``; evaluation keeps the order and every example.
    """

    def __init__(
        self,
        files: list[tuple[str, int]],
        batch_size: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        transform: Callable[[Image.Image], torch.Tensor],
        train: bool = False,
        workers: int = 0,
        seed: int = 0,
        device: torch.device | str = "cpu",
        channels_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        channels: int = 3,
        exif_transpose: bool = False,
    ) -> None:
        self.dataset = IndexedImages(files, transform, channels, exif_transpose)
        # Under torchrun: this process's contiguous share of every global batch (see respkd.distributed).
        self.rank, self.world_size = rank, world_size
        self.batch_size, self.train, self.workers, self.seed = batch_size, train, workers, seed
        self.drop_last = train and len(files) > batch_size
        self.device = torch.device(device)
        self.normalize = PixelNormalizer(mean, std, self.device, channels_last)
        self.epoch = self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Make the next pass epoch ``epoch``, starting after its first ``skip`` batches (resuming part-way).

        The order of the remaining images is exactly the uninterrupted epoch's; their random crops and flips are not
        (the decoding workers are seeded per pass, and images land on other workers), so a streamed run resumed
        mid-epoch is not bitwise identical to an uninterrupted one. In-memory data (BatchLoader) is."""
        self.epoch, self.skip = epoch, skip

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _loader(self) -> DataLoader:
        # A fresh DataLoader per epoch, its generator seeded by (seed, epoch): it draws the order and the workers'
        # base seed, so an epoch does not depend on the ones before it (non-persistent workers, started per epoch).
        generator = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) * 2)
        n = len(self.dataset)
        order = torch.randperm(n, generator=generator) if self.train else torch.arange(n)
        order = order[: len(self) * self.batch_size] if self.drop_last else order  # whole batches, as drop_last
        order = order[self.skip * self.batch_size:]
        share = self.batch_size
        if self.world_size > 1:  # every global batch is whole (drop_last, or one batch of all) and splits evenly
            whole = min(self.batch_size, len(self.dataset))
            share = whole // self.world_size
            order = order.view(-1, whole).tensor_split(self.world_size, dim=1)[self.rank].reshape(-1)
        return DataLoader(
            self.dataset, batch_size=share, sampler=order.tolist(),
            num_workers=self.workers, pin_memory=self.device.type == "cuda", generator=generator,
            worker_init_fn=_seed_worker, prefetch_factor=4 if self.workers else None,
        )

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        for images, labels, indices in worker_items(self._loader()):
            x = self.normalize(images.to(self.device, non_blocking=True))
            yield x, labels.to(self.device, non_blocking=True), indices


def _last_line(message: str) -> str:
    """The RespkdError's own message out of a DataLoader worker's wrapped traceback."""
    last = message.strip().splitlines()[-1]
    return last.split("RespkdError: ", 1)[-1]
