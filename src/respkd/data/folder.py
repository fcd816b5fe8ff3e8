"""A folder of one's own images (``data.dataset: folder``): listed, split, and decoded once into a checksummed cache,
or streamed from the files when it is too large for memory.

Layouts of ``data.path``:

* ``<class>/*``: one folder per class, which respkd splits into train and test, stratified: ``data.test_fraction``
  (default 0.2) of each class, rounded, is its test set, drawn with ``data.split_seed`` (default 0) and the class's
  name, so that adding images to one class leaves the split of the others as it was.
* ``train/<class>/*`` with ``val/<class>/*`` or ``test/<class>/*``: used as they are; both hold the same classes.

Class names are the folder names, sorted as torchvision's ``ImageFolder`` sorts them: label k is the k-th name.
Names starting with ``.`` are skipped (``.DS_Store``, ``.ipynb_checkpoints``); in a class folder and its subfolders
every other file must be an image (:mod:`respkd.data.images`). Top-level files beside the class folders (a README,
a labels file) are ignored, unless they are images: an image outside a class folder has no class, an error.

Every image is decoded to ``data.channels`` (default: 1 if every image is grey, else 3) and resized to
``data.image_size`` by :func:`respkd.data.images.cover_crop` (scaled to cover it, centre-cropped: no distortion).

**In memory** when the decoded uint8 bytes of the whole set (images x channels x height x width, 3 channels
assumed before the files are read) are at most :data:`IN_MEMORY_BYTES` (2 GiB) with ``data.in_memory: auto``,
or always with ``true``. Decoded once, by ``data.workers`` processes, into ``<data.root>/folder-<key>.safetensors``
(the layout of MNIST's cache, with its checksum verified on every load). The key digests every file's relative
path, class, size and modification time, ``image_size``, ``channels``, the split settings and
:data:`DECODING_VERSION`: a changed folder is decoded again (into a new file: old ones can be deleted). Jitter,
flips, ``val_size``, transfer sets, ``kd.cache`` and exact resume then work as on MNIST.

**Streamed** otherwise (or with ``data.in_memory: false``): the same resize per batch by the decoding workers of
:mod:`respkd.data.streamed` (``data.flip`` mirrors at random); RGB unless ``data.channels: 1``; ``jitter``,
``val_size``, ``transfer`` and ``kd.cache`` need memory and are refused.

Mean and std (of ``pixels / 255``, per channel) are computed once from the training split (every pixel; streamed:
:data:`STATS_SAMPLE` evenly spaced training images), unless ``data.mean``/``data.std`` are given, and recorded in
the cache and in every checkpoint's ``normalization``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from respkd.config import DataConfig
from respkd.data.datasets import DatasetInfo, Splits, read_cache_arrays, require_folder, to_splits, write_cache
from respkd.data.images import decoding_workers, is_image_file
from respkd.data.streamed import CoverCrop, FolderSplits, IndexedImages, evenly_spaced, worker_items
from respkd.errors import RespkdError, shorten

__all__ = [
    "DECODE_BATCH", "DECODING_VERSION", "DEFAULT_SPLIT_SEED", "DEFAULT_TEST_FRACTION", "IN_MEMORY_BYTES", "STATS_SAMPLE", "Listing",
    "list_folder", "load_folder",
]

IN_MEMORY_BYTES = 2 * 2**30
DEFAULT_TEST_FRACTION = 0.2
DEFAULT_SPLIT_SEED = 0
STATS_SAMPLE = 1000
DECODE_BATCH = 64  # images a decoding worker hands over at a time (one at a time costs more in IPC than decoding)
DECODING_VERSION = 1  # raise when decoding or resizing changes, so that no cache of the old pixels is reused
TEST_FOLDERS = ("val", "test")


@dataclass(frozen=True)
class Listing:
    """A folder's images: ``(path, label)`` of each split, class-sorted, and the class names."""

    root: Path
    layout: str  # "flat" (respkd splits it) or "train/val" / "train/test"
    class_names: tuple[str, ...]
    train_files: list[tuple[str, int]]
    test_files: list[tuple[str, int]]


def load_folder(d: DataConfig, root: str | Path, path: str | Path) -> Splits | FolderSplits:
    """The images under ``path`` as ``d`` says (module doc): in memory (cached under ``root``) or streamed."""
    listing = list_folder(Path(path), d)
    size, n = d.image_hw, len(listing.train_files) + len(listing.test_files)
    decoded_bytes = n * (d.channels or 3) * size[0] * size[1]
    if d.in_memory is True or (d.in_memory == "auto" and decoded_bytes <= IN_MEMORY_BYTES):
        return _in_memory(listing, d, Path(root), _key(listing, d))
    return _streamed(listing, d, decoded_bytes)


def list_folder(root: Path, d: DataConfig) -> Listing:
    """List and check the class folders under ``root`` (module doc); every problem is one line."""
    require_folder(root)
    if (root / "train").is_dir():
        return _list_split(root, d)
    classes = _class_folders(root, root)
    files = [(str(f), label) for label, folder in enumerate(classes) for f in _images_in(folder, root)]
    names = tuple(c.name for c in classes)
    test = _test_picks(files, names, d)
    return Listing(root, "flat", names, [f for i, f in enumerate(files) if i not in test],
                   [f for i, f in enumerate(files) if i in test])


def _list_split(root: Path, d: DataConfig) -> Listing:
    present = [name for name in TEST_FOLDERS if (root / name).is_dir()]
    if not present:
        raise RespkdError(f"{root}: has train/ but no val/ or test/ beside it; add one, or put the class folders "
                          f"directly in {root} for respkd to split them")
    if len(present) == 2:
        raise RespkdError(f"{root}: has both val/ and test/ beside train/; keep one of them (the test set)")
    if d.test_fraction is not None or d.split_seed is not None:
        key = "test_fraction" if d.test_fraction is not None else "split_seed"
        raise RespkdError(f"data.{key} splits a flat <class>/* tree, but {root} is split already (train/ and "
                          f"{present[0]}/); drop data.{key}")
    test_name = present[0]
    train_classes, test_classes = _class_folders(root / "train", root), _class_folders(root / test_name, root)
    train_names, test_names = [c.name for c in train_classes], [c.name for c in test_classes]
    if train_names != test_names:
        only = sorted(set(train_names) ^ set(test_names))[0]
        where = "train/" if only in train_names else f"{test_name}/"
        raise RespkdError(f"{root}: train/ and {test_name}/ hold different class folders ('{shorten(only)}' is only "
                          f"in {where}); both need the same classes")
    listed = [[(str(f), label) for label, folder in enumerate(classes) for f in _images_in(folder, root)]
              for classes in (train_classes, test_classes)]
    return Listing(root, f"train/{test_name}", tuple(train_names), *listed)


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def _class_folders(folder: Path, root: Path) -> list[Path]:
    require_folder(folder)
    entries = sorted((p for p in folder.iterdir() if _visible(p)), key=lambda p: p.name)
    classes = [p for p in entries if p.is_dir()]
    stray = next((p for p in entries if not p.is_dir() and is_image_file(p)), None)
    if stray is not None:
        raise RespkdError(f"{stray}: an image outside any class folder; move it into {folder}/<class>/")
    if not classes:
        raise RespkdError(f"{folder} holds no class folders: expected one folder of images per class "
                          f"({folder}/<class>/*.png ...), or train/<class>/* and val/<class>/* under {root}")
    if len(classes) < 2:
        raise RespkdError(f"{folder} holds one class folder ('{shorten(classes[0].name)}'): a classifier needs at "
                          "least 2 classes")
    return classes


def _images_in(folder: Path, root: Path) -> list[Path]:
    """Every image under a class folder, subfolders included, sorted; a file that is not an image is an error."""
    found, seen = [], set()
    for parent, dirs, names in os.walk(folder, followlinks=True):  # linked folders are followed, as ImageFolder does
        real = os.path.realpath(parent)
        if real in seen:  # a link back up the tree: walked once
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(n for n in dirs if not n.startswith("."))
        for name in sorted(names):
            if name.startswith("."):
                continue
            path = Path(parent) / name
            if not is_image_file(path):
                raise RespkdError(f"{path}: not an image file (no format PIL reads has the suffix "
                                  f"'{shorten(path.suffix)}'); move it out of {root}")
            found.append(path)
    if not found:
        raise RespkdError(f"{folder}: class folder holds no images")
    return found


def _test_picks(files: list[tuple[str, int]], names: tuple[str, ...], d: DataConfig) -> set[int]:
    """Positions of the test images in a flat tree: round(test_fraction x count) of each class, at random."""
    fraction = DEFAULT_TEST_FRACTION if d.test_fraction is None else d.test_fraction
    seed = DEFAULT_SPLIT_SEED if d.split_seed is None else d.split_seed
    by_class: list[list[int]] = [[] for _ in names]
    for i, (_, label) in enumerate(files):
        by_class[label].append(i)
    picks: set[int] = set()
    for name, members in zip(names, by_class):
        n_test = math.floor(fraction * len(members) + 0.5)
        if n_test == 0 or n_test == len(members):
            side = "no test image" if n_test == 0 else "no training image"
            fix = "raise" if n_test == 0 else "lower"
            raise RespkdError(f"data.test_fraction {fraction:g} leaves class '{shorten(name)}' ({len(members)} "
                              f"images) with {side}; {fix} data.test_fraction or add images to the class")
        # Seeded by the class's name too: the split of one class does not depend on the others' counts.
        class_seed = int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little") >> 1
        order = torch.randperm(len(members), generator=torch.Generator().manual_seed(class_seed))
        picks.update(members[i] for i in order[:n_test].tolist())
    return picks


def _key(listing: Listing, d: DataConfig) -> str:
    """What the decoded images are made from (module doc): a changed file, setting or decoder changes it."""
    h = hashlib.sha256(json.dumps({
        "version": DECODING_VERSION, "layout": listing.layout, "image_size": list(d.image_hw),
        "channels": d.channels, "test_fraction": d.test_fraction, "split_seed": d.split_seed,
        "classes": list(listing.class_names)}, sort_keys=True).encode())
    for split, files in (("train", listing.train_files), ("test", listing.test_files)):
        for path, label in files:
            try:
                st = os.stat(path)
            except OSError as err:
                raise RespkdError(f"{path}: cannot read ({err.strerror})") from None
            h.update(f"{split}\t{Path(path).relative_to(listing.root)}\t{label}\t{st.st_size}\t{st.st_mtime_ns}\n"
                     .encode())
    return h.hexdigest()


def _in_memory(listing: Listing, d: DataConfig, root: Path, key: str) -> Splits:
    cache = root / f"folder-{key[:24]}.safetensors"
    cached = cache.exists()
    if cached:
        arrays, meta = read_cache_arrays(cache)
        if meta.get("key") != key:
            raise RespkdError(f"{cache}: not the cache of {listing.root} as it is now (its key differs); delete it")
        computed = meta.get("mean"), meta.get("std")
    else:
        arrays, computed = _decode_splits(listing, d)
    channels = 1 if arrays["train_images"].dim() == 3 else arrays["train_images"].shape[1]
    mean, std = _normalization(d, computed, channels, listing.root, cache)  # refused before anything is written
    if not cached:
        write_cache(cache, arrays, f"folder:{listing.root}", key=key, class_names=list(listing.class_names),
                    mean=computed[0], std=computed[1])
    info = DatasetInfo("folder", "ImageFolder", listing.class_names, (channels, *d.image_hw), mean, std, None,
                       kind="folder")
    return to_splits(info, arrays)


def _decode_splits(listing: Listing, d: DataConfig) -> tuple[dict[str, torch.Tensor], tuple[list, list]]:
    """The cache's arrays (grey images without a channel axis, as MNIST's) and the training split's mean/std."""
    decoded = {split: _decode(files, d.image_hw, d.channels, d.workers)
               for split, files in (("train", listing.train_files), ("test", listing.test_files))}
    grey = d.channels == 1 or (d.channels is None and all(g for _, g in decoded.values()))
    arrays = {}
    for split, files in (("train", listing.train_files), ("test", listing.test_files)):
        images = decoded[split][0]
        arrays[f"{split}_images"] = images[:, 0].contiguous() if grey else images
        arrays[f"{split}_labels"] = torch.tensor([label for _, label in files], dtype=torch.long)
    train = arrays["train_images"]
    return arrays, _statistics(train[:, None] if grey else train)


def _decode(files: list[tuple[str, int]], size: tuple[int, int], channels: int | None,
            workers: int | None) -> tuple[torch.Tensor, bool]:
    """uint8 ``(N, C, H, W)`` of ``files`` (C: ``channels``, or 3 when None, grey images repeated) and whether every
    image was grey; decoded by ``workers`` processes."""
    out = torch.empty((len(files), channels or 3, *size), dtype=torch.uint8)
    grey = True
    dataset = IndexedImages(files, CoverCrop(size), channels, exif_transpose=True)
    # Lists of items, not stacked batches: with channels None grey and RGB images come in the same batch.
    loader = DataLoader(dataset, batch_size=DECODE_BATCH, collate_fn=list, num_workers=decoding_workers(workers))
    for batch in worker_items(loader):
        for pixels, _, index in batch:
            out[index] = pixels  # a grey image's one channel fills all three
            grey &= pixels.shape[0] == 1
    return out, grey


def _statistics(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and (population) std of ``pixels / 255`` over uint8 ``(N, C, H, W)``, in float64 chunks."""
    channels = images.shape[1]
    total, squares = torch.zeros(channels, dtype=torch.float64), torch.zeros(channels, dtype=torch.float64)
    for chunk in images.split(1024):
        x = chunk.double().div_(255).transpose(0, 1).reshape(channels, -1)
        total += x.sum(1)
        squares += x.square().sum(1)
    count = images.numel() // channels
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(0).sqrt()
    return [round(v, 4) for v in mean.tolist()], [round(v, 4) for v in std.tolist()]


def _normalization(d: DataConfig, computed: tuple, channels: int, folder: Path,
                   where: Path | None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``data.mean``/``data.std`` when given (checked against the channels), else the computed statistics."""
    if d.mean is not None:
        if len(d.mean) != channels:
            kind = "grey (1 channel)" if channels == 1 else f"{channels} channels"
            raise RespkdError(f"data.mean and data.std have {len(d.mean)} values but the images of {folder} are "
                              f"read as {kind}; give {channels}, or set data.channels")
        return tuple(d.mean), tuple(d.std)
    mean, std = computed
    valid = all(isinstance(v, list) and len(v) == channels and all(isinstance(x, float) for x in v)
                for v in (mean, std))
    if not valid:
        raise RespkdError(f"{where}: its recorded mean/std are not {channels} numbers each; delete it to decode "
                          f"{folder} again")
    if min(std) < 1e-4:
        raise RespkdError(f"the training images of {folder} do not vary (a channel's std is {min(std):g}): give "
                          "data.mean and data.std, or set data.normalize: false")
    return tuple(mean), tuple(std)


def _streamed(listing: Listing, d: DataConfig, decoded_bytes: int) -> FolderSplits:
    needs_memory = [k for k in ("jitter", "jitter_views", "val_size") if getattr(d, k)]
    needs_memory += ["transfer"] if d.transfer.active else []
    if needs_memory:
        raise RespkdError(
            f"data.{needs_memory[0]} needs the images in memory, but {listing.root} holds "
            f"{len(listing.train_files) + len(listing.test_files)} images, {decoded_bytes / 2**30:.1f} GiB decoded at "
            f"{'x'.join(map(str, d.image_hw))}: above the {IN_MEMORY_BYTES // 2**30} GiB that data.in_memory: auto "
            f"holds; set data.in_memory: true (if the memory is there) or drop data.{needs_memory[0]}")
    channels = d.channels or 3
    computed = ([], [])
    if d.mean is None:
        sample = evenly_spaced(listing.train_files, STATS_SAMPLE)
        computed = _statistics(_decode(sample, d.image_hw, channels, d.workers)[0])
    mean, std = _normalization(d, computed, channels, listing.root, None)
    info = DatasetInfo("folder", "ImageFolder", listing.class_names, (channels, *d.image_hw), mean, std, None,
                       kind="imagefolder")
    return FolderSplits(info, listing.train_files, listing.test_files, _key(listing, d))
