"""Image files as respkd reads a user's images: which files are images, and how one becomes a uint8 tensor.

One way for every path that reads them (a folder decoded into memory, a folder streamed by workers,
``respkd predict``), so that a model sees at prediction time exactly the pixels it was trained on:

1. :func:`open_image`: any format PIL reads (an image is a file whose suffix PIL registers: ``.png``, ``.jpg``,
   ``.bmp``, ``.gif``, ``.tif``, ``.webp``, ...), turned upright by its EXIF orientation (as photo viewers show it).
2. :func:`to_channels`: grey (``L``) or RGB. Alpha is dropped; 16-bit grey is scaled to 8 bits (PIL's own
   conversion would clip it); a colour image made grey takes PIL's luma (ITU-R 601-2); a grey one made RGB repeats.
3. :func:`cover_crop`: scaled (bilinear, antialiased by PIL when shrinking) so that it covers the target size, then
   centre-cropped to it: no distortion of the aspect ratio, as torchvision's ``Resize`` + ``CenterCrop``;
   ``crop_fraction`` < 1 first scales to ``size / crop_fraction`` (ImageNet's 256 -> 224 evaluation crop).
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from respkd.errors import RespkdError, first_line

__all__ = [
    "GREY_MODES", "cover_crop", "decoding_workers", "image_suffixes", "image_tensor", "is_grey", "is_image_file",
    "open_image", "read_image", "to_channels",
]

# PIL modes without colour: bilevel, 8-bit grey (with alpha), 16/32-bit integer grey.
GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N"})
_WIDE_GREY = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})
DEFAULT_WORKERS = 8


def decoding_workers(requested: int | None) -> int:
    """``data.workers``, or by default min(8, the cores this process may run on): more processes than cores only
    compete (and torch's DataLoader warns about them)."""
    if requested is not None:
        return requested
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(DEFAULT_WORKERS, cores)


@lru_cache(maxsize=1)
def image_suffixes() -> frozenset[str]:
    """Lower-case file suffixes of the formats this PIL can open."""
    Image.init()
    return frozenset(suffix.lower() for suffix in Image.registered_extensions())


def is_image_file(path: str | Path) -> bool:
    return Path(path).suffix.lower() in image_suffixes()


def open_image(path: str | Path, exif_transpose: bool = True) -> Image.Image:
    """The decoded image (pixels read now, the file closed); an unreadable or corrupt file is one line naming it."""
    try:
        with Image.open(path) as image:
            image.load()
            return ImageOps.exif_transpose(image) if exif_transpose else image.copy()
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as err:  # PIL raises SyntaxError for some
        raise RespkdError(f"{path}: cannot decode image ({first_line(err)})") from None


def is_grey(image: Image.Image) -> bool:
    return image.mode in GREY_MODES


def to_channels(image: Image.Image, channels: int | None, path: str | Path = "image") -> Image.Image:
    """``image`` as ``L`` (``channels`` 1) or ``RGB`` (3); None: ``L`` if it is grey, else ``RGB``."""
    if image.mode == "F":
        raise RespkdError(f"{path}: a 32-bit floating-point image; save it as 8- or 16-bit grey or RGB")
    if image.mode in _WIDE_GREY:  # 0..65535: to 0..255 (PIL's convert("L") would clip at 255 instead)
        wide = np.asarray(image, dtype=np.int64)
        image = Image.fromarray(((np.clip(wide, 0, 65535) + 128) // 257).astype(np.uint8), mode="L")
    if channels is None:
        channels = 1 if is_grey(image) else 3
    return image.convert("L" if channels == 1 else "RGB")


def cover_crop(image: Image.Image, size: tuple[int, int], crop_fraction: float = 1.0) -> Image.Image:
    """``image`` scaled to cover ``size / crop_fraction`` (height, width), then its centre ``size``."""
    h, w = size
    width, height = image.size
    scale = max(h / height, w / width) / crop_fraction
    new = (max(w, round(width * scale)), max(h, round(height * scale)))
    if new != image.size:
        image = image.resize(new, Image.BILINEAR)
    left, top = round((new[0] - w) / 2), round((new[1] - h) / 2)
    return image.crop((left, top, left + w, top + h))


def image_tensor(image: Image.Image) -> torch.Tensor:
    """An ``L`` or ``RGB`` image as uint8 ``(C, H, W)``."""
    pixels = torch.from_numpy(np.array(image, dtype=np.uint8, copy=True))
    return pixels[None] if pixels.dim() == 2 else pixels.permute(2, 0, 1).contiguous()


def read_image(path: str | Path, size: tuple[int, int], channels: int | None, crop_fraction: float = 1.0,
               exif_transpose: bool = True) -> torch.Tensor:
    """A file as the uint8 ``(C, H, W)`` a model of input ``size`` takes (``channels`` None: 1 if grey, else 3)."""
    return image_tensor(cover_crop(to_channels(open_image(path, exif_transpose), channels, path), size, crop_fraction))
