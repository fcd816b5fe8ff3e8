"""Batches from tensors held in memory: no per-sample Python, no PIL, no worker processes.

On a 2-core machine a ``DataLoader`` with workers competes with the compute threads; slicing a uint8 tensor and
normalising a batch costs microseconds. The order comes from a generator seeded by ``(seed, epoch)`` and the jitter
offsets from one seeded by ``(seed, view)``, so an epoch is reproducible on its own (what exact resume relies on).
Offsets are drawn per *example*, not per position in the batch: with ``jitter_views = V`` epoch ``e`` uses view
``e mod V``, a fixed set of translated copies whose teacher outputs can be computed once and cached.

``flip`` mirrors a random half of the training examples left-right (the other half of CIFAR's standard
augmentation; a jitter of 4 pixels with zero fill is exactly its ``RandomCrop(32, padding=4)``), drawn per example
and view from a generator of its own, so adding it leaves the jitter offsets unchanged.
"""

from __future__ import annotations

from typing import Iterator

import torch
import torch.nn.functional as F

__all__ = ["BatchLoader", "PixelNormalizer", "jitter_offsets", "translate"]

_FLIP_STREAM = 2**40  # offsets the flips' generator seeds from the jitter offsets' (same seed and view)


class PixelNormalizer:
    """uint8 pixels ``(N, C, H, W)`` -> the model's input ``(pixels / 255 - mean) / std``, as one multiply-add per
    value on the pixels' device, in channels-last memory format if asked. What both loaders (this module's and
    :class:`respkd.data.streamed.FolderLoader`) do last to a batch."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], device: torch.device,
                 channels_last: bool = False) -> None:
        shape = (1, -1, 1, 1)
        self.scale = (1.0 / (255.0 * torch.tensor(std, device=device))).view(shape)
        self.shift = (torch.tensor(mean, device=device) / torch.tensor(std, device=device)).view(shape)
        self.channels_last = channels_last

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.float() * self.scale - self.shift
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


def jitter_offsets(n: int, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """``(n, 2)`` integer shifts (dy, dx), each uniform in ``[-max_shift, max_shift]``."""
    return torch.randint(-max_shift, max_shift + 1, (n, 2), generator=generator)


def translate(images: torch.Tensor, offsets: torch.Tensor, max_shift: int) -> torch.Tensor:
    """Shift each image of ``(N, C, H, W)`` by its own ``(dy, dx)``, filling the uncovered border with zeros.

    Done with one gather on a zero-padded batch rather than a per-image loop. A positive ``dy`` moves the content
    down, a positive ``dx`` moves it right.
    """
    if max_shift == 0:
        return images
    n, c, h, w = images.shape
    padded = F.pad(images, (max_shift,) * 4)
    offsets = offsets.to(images.device)
    rows = torch.arange(h, device=images.device) + max_shift - offsets[:, :1]  # (N, H)
    cols = torch.arange(w, device=images.device) + max_shift - offsets[:, 1:]  # (N, W)
    batch = torch.arange(n, device=images.device)[:, None, None, None]
    chan = torch.arange(c, device=images.device)[None, :, None, None]
    return padded[batch, chan, rows[:, None, :, None], cols[:, None, None, :]]


class BatchLoader:
    """Iterate ``(inputs, labels, indices)`` over uint8 images kept in memory.

    Args:
        images: ``(N, C, H, W)`` uint8.
        labels: ``(N,)`` int64.
        batch_size: examples per batch.
        mean, std: per-channel normalisation applied to ``images / 255``.
        shuffle: a new permutation every epoch (seeded by ``seed`` and the epoch set with :meth:`set_epoch`).
        jitter: random translation by up to this many pixels in each direction, per example, 0 for none.
        jitter_views: cycle through this many fixed jitter draws (views) instead of a new draw every epoch.
        flip: mirror each example left-right with probability 1/2 (drawn per example and view).
        drop_last: drop the last incomplete batch (training); evaluation keeps it so every example counts once.
        device: where batches are returned (and normalised).
        device_resident: keep the images and labels on ``device`` and build batches there (each epoch's order and
            jitter moved there once: no copy from the host per step); False keeps them in host memory, builds each
            batch there and copies its uint8 pixels and labels to ``device``. The same batches bitwise; see
            :mod:`respkd.data.residency`.
        channels_last: return batches in channels-last memory format (faster convolutions on CPU).
        rank, world_size: under torchrun, yield only process ``rank``'s contiguous share of every batch (the batches
            themselves, their order and the jitter stay those of one process; see :mod:`respkd.distributed`).
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        shuffle: bool = False,
        jitter: int = 0,
        jitter_views: int | None = None,
        flip: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        device: torch.device | str = "cpu",
        channels_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        device_resident: bool = True,
    ) -> None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.device = torch.device(device)
        self.device_resident = device_resident
        self.home = self.device if device_resident else torch.device("cpu")  # where the data live, batches are built
        self.images = images.to(self.home)
        self.labels = labels.to(self.home)
        self.batch_size = batch_size
        self.shuffle, self.jitter, self.drop_last, self.seed = shuffle, jitter, drop_last, seed
        self.jitter_views = jitter_views
        self.flip = flip
        self.rank, self.world_size = rank, world_size
        self.normalize = PixelNormalizer(mean, std, self.device, channels_last)
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Make the next pass epoch ``epoch``, starting after its first ``skip`` batches (resuming part-way).

        Skipped batches are not built, and skipping draws nothing: the order and offsets depend only on the seed and
        the epoch, so the batches that follow are exactly those of an uninterrupted epoch.
        """
        self.epoch, self.skip = epoch, skip

    def __len__(self) -> int:
        n = len(self.images)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def view_of_epoch(self, epoch: int) -> int:
        """Which jitter view epoch ``epoch`` uses: the epoch itself, or cycled through ``jitter_views`` views."""
        return epoch % self.jitter_views if self.jitter_views else epoch

    def view_offsets(self, view: int) -> torch.Tensor:
        """``(N, 2)`` jitter offsets of every example (indexed by example) in jitter view ``view``."""
        generator = torch.Generator().manual_seed((self.seed * 1_000_003 + view) * 2 + 1)
        return jitter_offsets(len(self.images), self.jitter, generator)

    def view_flips(self, view: int) -> torch.Tensor:
        """``(N,)`` booleans: which examples (indexed by example) view ``view`` mirrors left-right."""
        generator = torch.Generator().manual_seed((self.seed * 1_000_003 + view) * 2 + 1 + _FLIP_STREAM)
        return torch.rand(len(self.images), generator=generator) < 0.5

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        n = len(self.images)
        order_generator = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) * 2)
        order = torch.randperm(n, generator=order_generator) if self.shuffle else torch.arange(n)
        view = self.view_of_epoch(self.epoch)
        offsets = self.view_offsets(view).to(self.home) if self.jitter else None
        flips = self.view_flips(view).to(self.home) if self.flip else None
        order = order.to(self.home)  # once per epoch: the batches' indices are then slices of it
        for b in range(self.skip, len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            if self.world_size > 1:
                idx = idx.tensor_split(self.world_size)[self.rank]
            yield self.make_batch(idx, None if offsets is None else offsets[idx], None if flips is None else flips[idx])

    def make_batch(
        self, idx: torch.Tensor, offsets: torch.Tensor | None = None, flips: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The normalised batch of examples ``idx``, translated by ``offsets`` and mirrored where ``flips``; ``idx``
        comes back where the data live (the device when resident, else the host)."""
        idx = idx.to(self.home)
        x = self.images[idx]
        if offsets is not None:
            x = translate(x, offsets, self.jitter)
        if flips is not None:
            x = torch.where(flips.to(self.home)[:, None, None, None], x.flip(3), x)
        x, labels = x.to(self.device, non_blocking=True), self.labels[idx].to(self.device, non_blocking=True)
        return self.normalize(x), labels, idx
