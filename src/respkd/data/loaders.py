"""The one place that picks how a dataset is read and batched: in memory, or streamed from image folders.

``load_data`` returns :class:`~respkd.data.datasets.Splits` (MNIST, Fashion-MNIST, CIFAR: uint8 tensors in memory)
or :class:`~respkd.data.imagefolder.FolderSplits` (ImageNet: file lists). ``make_loader`` returns a loader of
``(inputs, labels, indices)`` batches for either, normalised as the config says, so the engine never needs to know.
"""

from __future__ import annotations

import torch

from respkd.config import RunConfig
from respkd.data.datasets import Splits, dataset_info, input_normalization, load_dataset
from respkd.data.imagefolder import FolderLoader, FolderSplits, load_image_folders
from respkd.data.loader import BatchLoader

EVAL_BATCH = 1000  # in-memory evaluation batches: large, since no gradients are kept


def load_data(dataset: str, root: str, path: str | None, source: str) -> Splits | FolderSplits:
    info = dataset_info(dataset)
    if info.streamed:
        return load_image_folders(info, path)
    return load_dataset(dataset, root, path, source)


def make_loader(
    data: Splits | FolderSplits, split: str, cfg: RunConfig, device: torch.device | str
) -> BatchLoader | FolderLoader:
    """Batches of ``split`` (``train``: shuffled and augmented as ``cfg.data`` says; ``test``, ``val``: every
    example once, in order)."""
    d, tc = cfg.data, cfg.train
    mean, std = input_normalization(data.info, d.normalize)
    train = split == "train"
    if isinstance(data, FolderSplits):
        if split == "val":
            raise ValueError("streamed datasets have no validation split")
        files = data.train_files if train else data.test_files
        return FolderLoader(files, tc.batch_size, mean, std, data.info.image_shape[-1], train=train,
                            workers=d.workers, seed=cfg.seed, device=device, channels_last=tc.channels_last)
    images, labels = {"train": (data.train_images, data.train_labels), "test": (data.test_images, data.test_labels),
                      "val": (data.val_images, data.val_labels)}[split]
    if not train:
        return BatchLoader(images, labels, EVAL_BATCH, mean, std, device=device, channels_last=tc.channels_last)
    return BatchLoader(images, labels, tc.batch_size, mean, std, shuffle=True, jitter=d.jitter,
                       jitter_views=d.jitter_views, flip=d.flip, drop_last=len(images) > tc.batch_size, seed=cfg.seed,
                       device=device, channels_last=tc.channels_last)
