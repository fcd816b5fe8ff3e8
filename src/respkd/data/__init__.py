"""The data package's face: which source a dataset is read from, how it is selected, and how it is batched.

``load_data`` returns :class:`~respkd.data.datasets.Splits` (MNIST, Fashion-MNIST, CIFAR: uint8 tensors in memory)
or :class:`~respkd.data.streamed.FolderSplits` (ImageNet: file lists). :func:`~respkd.data.transfer.select` applies
the config's limits, validation hold-out and transfer filter. ``make_loader`` returns a loader of
``(inputs, labels, indices)`` batches for either, normalised as the config says, so the engine never needs to know.

The modules behind it:

* :mod:`~respkd.data.datasets`: the datasets held in memory, their checksummed caches and raw MNIST-style files;
  :mod:`~respkd.data.idx`, :mod:`~respkd.data.cifar` and :mod:`~respkd.data.safe_pickle` read the raw releases.
* :mod:`~respkd.data.memory`: :class:`~respkd.data.memory.BatchLoader`, batches of in-memory tensors.
* :mod:`~respkd.data.streamed`: class folders of image files, decoded by worker processes.
* :mod:`~respkd.data.transfer`: the training examples a run learns from (validation hold-out, transfer set).
"""

from __future__ import annotations

import torch

from respkd import distributed
from respkd.config import RunConfig
from respkd.data.datasets import Splits, dataset_info, input_normalization, load_dataset
from respkd.data.memory import BatchLoader
from respkd.data.streamed import FolderLoader, FolderSplits, load_image_folders
from respkd.data.transfer import select

__all__ = [
    "EVAL_BATCH", "BatchLoader", "FolderLoader", "FolderSplits", "Splits", "load_data", "load_dataset", "make_loader",
    "select",
]

EVAL_BATCH = 1000  # in-memory evaluation batches: large, since no gradients are kept


def load_data(dataset: str, root: str, path: str | None, source: str) -> Splits | FolderSplits:
    """The dataset ``dataset``: in memory (read from ``path``, the cache under ``root`` or the offline copies, as
    ``source`` says), or, for a streamed one, the file lists of the class folders under ``path``."""
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
    # Under torchrun (respkd.distributed) a training loader yields this process's share of every global batch, and an
    # evaluation loader this process's slice of the examples (counts are summed afterwards); in one process, all.
    rank, world = distributed.rank(), distributed.world_size()
    if isinstance(data, FolderSplits):
        if split == "val":
            raise ValueError("streamed datasets have no validation split")
        files = data.train_files if train else data.test_files[distributed.shard(len(data.test_files))]
        return FolderLoader(files, tc.batch_size, mean, std, data.info.image_shape[-1], train=train,
                            workers=d.workers, seed=cfg.seed, device=device, channels_last=tc.channels_last,
                            rank=rank if train else 0, world_size=world if train else 1)
    images, labels = {"train": (data.train_images, data.train_labels), "test": (data.test_images, data.test_labels),
                      "val": (data.val_images, data.val_labels)}[split]
    if not train:
        part = distributed.shard(len(labels))
        return BatchLoader(images[part], labels[part], EVAL_BATCH, mean, std, device=device,
                           channels_last=tc.channels_last)
    return BatchLoader(images, labels, tc.batch_size, mean, std, shuffle=True, jitter=d.jitter,
                       jitter_views=d.jitter_views, flip=d.flip, drop_last=len(images) > tc.batch_size, seed=cfg.seed,
                       device=device, channels_last=tc.channels_last, rank=rank, world_size=world)
