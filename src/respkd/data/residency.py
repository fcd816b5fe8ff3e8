"""Where the batches of an in-memory dataset are made: on the training device, or in host memory.

Device-resident (``data.device_resident: true``): the uint8 images and the labels are moved to the device once, each
epoch's order, jitter offsets and flips once per epoch, and the teacher cache once
(:meth:`respkd.teacher_cache.TeacherCache.for_loader`), so jitter, flips, normalisation and cache lookups all run on
the device and a training step copies nothing from the host. Host-fed (``false``): images, labels and the cache's
memory-mapped files stay in host memory; each batch is gathered, translated and flipped there, and its uint8 pixels
and labels (a quarter of the bytes of float32 inputs) are copied to the device, where they are normalised. The two
give bitwise the same batches and teacher outputs: only where the work happens differs.

``null`` (the default) is device-resident on CUDA when everything fits in :data:`RESIDENT_SHARE` of the device's
memory, else host-fed (the device's total memory, not what is free at the moment: every loader of a run, and every
run on the same card, decides alike); on the CPU it is host-fed, which there only means the cache stays
memory-mapped (host and device are the same memory) instead of being read into tensors. Streamed datasets
(ImageNet's folders) are always host-fed: their images are decoded from files batch by batch.
"""

from __future__ import annotations

import torch

from respkd.config import RunConfig
from respkd.data.datasets import Splits

__all__ = ["RESIDENT_SHARE", "describe_residency", "device_resident", "resident_bytes"]

# At most this share of the device's memory goes to the data: the rest is the models', the activations' and the
# optimizer's.
RESIDENT_SHARE = 0.5


def resident_bytes(data: Splits, cfg: RunConfig) -> int:
    """Bytes a device-resident run keeps on the device for its data: every split's images and labels, and the
    teacher cache when the run uses one (full float16 logits of every view, and their row maxima: an upper bound)."""
    tensors = [data.train_images, data.train_labels, data.test_images, data.test_labels, data.val_images,
               data.val_labels]
    total = sum(t.numel() * t.element_size() for t in tensors if t is not None)
    if cfg.distills and cfg.kd.cache:
        views = cfg.data.jitter_views if cfg.data.jitter else 1
        total += views * len(data.train_labels) * (2 * data.num_classes + 4)
    return total


def device_resident(data: Splits, cfg: RunConfig, device: torch.device) -> bool:
    """Whether the batches of ``data`` live on ``device`` (module doc): ``cfg.data.device_resident``, or when that is
    null, on CUDA whether they fit in :data:`RESIDENT_SHARE` of its memory."""
    if cfg.data.device_resident is not None:
        return cfg.data.device_resident
    if device.type != "cuda":
        return False
    return resident_bytes(data, cfg) <= RESIDENT_SHARE * torch.cuda.get_device_properties(device).total_memory


def describe_residency(resident: bool, device: torch.device) -> str:
    """One log line: where batches are made."""
    if resident:
        return f"batches: device-resident on {device} (images, labels and teacher cache copied there once)"
    return f"batches: made in host memory{'' if device.type == 'cpu' else f', copied to {device} per step'}"
