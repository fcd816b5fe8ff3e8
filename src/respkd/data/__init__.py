"""The data package's face: which source a dataset is read from, how it is selected, and how it is batched.

``load_data`` returns :class:`~respkd.data.datasets.Splits` (MNIST, Fashion-MNIST, CIFAR, a folder of one's own images:
uint8 tensors in memory) or :class:`~respkd.data.streamed.FolderSplits` (ImageNet, or one's own images too many for
memory: file lists). :func:`~respkd.data.transfer.select` applies
the config's limits, validation hold-out and transfer filter. ``make_loader`` returns a loader of
``(inputs, labels, indices)`` batches for either, normalised as the config says, so the engine never needs to know.

The modules behind it:

* :mod:`~respkd.data.datasets`: the datasets held in memory, their checksummed caches and raw MNIST-style files;
  :mod:`~respkd.data.idx`, :mod:`~respkd.data.cifar` and :mod:`~respkd.data.safe_pickle` read the raw releases.
* :mod:`~respkd.data.memory`: :class:`~respkd.data.memory.BatchLoader`, batches of in-memory tensors.
* :mod:`~respkd.data.residency`: whether those batches are made on the training device or in host memory.
* :mod:`~respkd.data.folder`: a folder of one's own images (``data.dataset: folder``), cached or streamed;
  :mod:`~respkd.data.images` decodes and resizes each image (also for ``respkd predict``).
* :mod:`~respkd.data.streamed`: class folders of image files, decoded by worker processes.
* :mod:`~respkd.data.transfer`: the training examples a run learns from (validation hold-out, transfer set).
"""

from __future__ import annotations

import torch

from respkd import distributed
from respkd.config import DataConfig, RunConfig
from respkd.data.datasets import DatasetInfo, Splits, dataset_info, input_normalization, load_dataset
from respkd.data.folder import load_folder
from respkd.data.images import decoding_workers
from respkd.data.memory import BatchLoader
from respkd.data.residency import device_resident
from respkd.data.streamed import (RESIZE_SIZE, CoverCrop, FolderLoader, FolderSplits, load_image_folders,
                                  reference_transform)
from respkd.data.transfer import select
from respkd.errors import RespkdError

__all__ = [
    "EVAL_BATCH", "BatchLoader", "FolderLoader", "FolderSplits", "Splits", "describe_data", "load_data",
    "load_dataset", "load_in_memory", "make_loader", "prepare_dataset", "preprocessing", "select",
]

EVAL_BATCH = 1000  # in-memory evaluation batches: large, since no gradients are kept


def load_data(d: DataConfig, root: str | None = None, path: str | None = None) -> Splits | FolderSplits:
    """The dataset of ``d``: in memory (read from ``data.path``, the cache under ``data.root`` or the offline copies,
    as ``data.source`` says), or, for a streamed one, the file lists of the class folders under ``data.path``.
    ``root`` and ``path`` replace ``data.root`` / ``data.path`` (``respkd eval --data-root/--data-path``)."""
    root, path = root or d.root, path or d.path
    if d.dataset == "folder":
        return load_folder(d, root, path)
    info = dataset_info(d.dataset)
    if info.streamed:
        return load_image_folders(info, path)
    return load_dataset(d.dataset, root, path, d.source)


def prepare_dataset(d: DataConfig) -> None:
    """Make the built-in in-memory dataset of ``d`` ready, as its first use would: the checksummed cache under
    ``data.root`` built from the offline copy or a download, or ``data.path`` read once. Image-folder datasets are
    left to their runs. Raises what that first use would raise (no offline copy, no network: one line)."""
    if d.dataset != "folder" and not dataset_info(d.dataset).streamed:
        load_dataset(d.dataset, d.root, d.path, d.source)


def describe_data(d: DataConfig, path: str | None = None) -> str:
    """The dataset and the folder it is read from, for messages: ``folder /data/flowers``, ``mnist``."""
    path = path or d.path
    return f"{d.dataset} {path}" if path else d.dataset


def load_in_memory(d: DataConfig, root: str | None = None, path: str | None = None) -> Splits:
    """:func:`load_data` for the commands that need every image in memory (adjust-bias, specialists)."""
    data = load_data(d, root, path)
    if isinstance(data, FolderSplits):
        raise RespkdError(f"{d.path} is streamed from its image files, and this command needs the images in memory"
                          + (": set data.in_memory: true in the run's config" if d.dataset == "folder" else ""))
    return data


def preprocessing(info: DatasetInfo) -> dict[str, object]:
    """How an image file becomes a model input of this dataset (``respkd predict`` reads it from the checkpoint):
    :func:`respkd.data.images.cover_crop` with this ``crop_fraction``, then ``normalization``."""
    crop_fraction = 224 / RESIZE_SIZE if info.name == "imagenet" else 1.0
    return {"resize": "cover_center_crop", "crop_fraction": crop_fraction, "exif_transpose": info.name != "imagenet"}


def make_loader(
    data: Splits | FolderSplits, split: str, cfg: RunConfig, device: torch.device | str
) -> BatchLoader | FolderLoader:
    """Batches of ``split`` (``train``: shuffled and augmented as ``cfg.data`` says; ``test``, ``val``: every
    example once, in order)."""
    d, tc = cfg.data, cfg.train
    mean, std = input_normalization(data.info, d.normalize)
    train = split == "train"
    # Under torchrun (respkd.distributed) a training loader yields this process's share of every global batch, and an
    # evaluation loader this process's slice of the examples (counts are summed afterwards); in one process, all.
    rank, world = distributed.rank(), distributed.world_size()
    if isinstance(data, FolderSplits):
        if split == "val":
            raise ValueError("streamed datasets have no validation split")
        files = data.train_files if train else data.test_files[distributed.shard(len(data.test_files))]
        channels, *size = data.info.image_shape
        own = data.info.name == "folder"  # one's own images: their fixed resize; ImageNet: the reference recipe
        transform = CoverCrop(tuple(size), flip=train and d.flip) if own else reference_transform(train, size[-1])
        return FolderLoader(files, tc.batch_size, mean, std, transform, train=train,
                            workers=decoding_workers(d.workers), seed=cfg.seed, device=device,
                            channels_last=tc.channels_last, rank=rank if train else 0, world_size=world if train else 1,
                            channels=channels, exif_transpose=own)
    images, labels = {"train": (data.train_images, data.train_labels), "test": (data.test_images, data.test_labels),
                      "val": (data.val_images, data.val_labels)}[split]
    resident = device_resident(data, cfg, torch.device(device))
    if not train:
        part = distributed.shard(len(labels))
        return BatchLoader(images[part], labels[part], EVAL_BATCH, mean, std, device=device,
                           channels_last=tc.channels_last, device_resident=resident)
    return BatchLoader(images, labels, tc.batch_size, mean, std, shuffle=True, jitter=d.jitter,
                       jitter_views=d.jitter_views, flip=d.flip, drop_last=len(images) > tc.batch_size, seed=cfg.seed,
                       device=device, channels_last=tc.channels_last, rank=rank, world_size=world,
                       device_resident=resident)
