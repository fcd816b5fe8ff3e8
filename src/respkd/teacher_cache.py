"""Teacher outputs computed once for the whole transfer set, stored compactly, read back by example id.

Why: a frozen teacher in eval mode answers the same input the same way every epoch, so querying it online repeats
work; with its outputs cached, distillation costs about what training the student alone costs. The cache holds the
teacher's outputs for every training example (the transfer set, indexed by example id as the loader yields them)
and, when the loader jitters its inputs with ``jitter_views = V``, for each of the V fixed views: shape
``(V, N, C)``. Epoch ``e`` trains on view ``e mod V`` and reads the outputs of that same view, so teacher and student
always see the same translated image ("consistent teaching", Beyer et al. 2022, "Knowledge distillation: A good
teacher is patient and consistent").

Two formats, both ``.npy`` files read with ``np.load(mmap_mode="r", allow_pickle=False)`` (memory-mapped: only the
rows of a batch are touched, nothing is unpickled):

* full: ``logits.npy``, float16 ``(V, N, C)``. Each row is shifted so its largest logit is 0 before rounding
  (softmax ignores a per-row shift), which spends float16's precision on the classes that carry the probability
  mass; values below float16's range are clamped to its minimum (their probability is 0 at any sane T). Every
  loss of :mod:`respkd.losses` but one ignores the shift too; logit matching (``kd.loss: logit_mse`` without
  ``kd.standardize``) compares the logits themselves, so its cache also keeps each row's maximum (``row_max.npy``,
  float32 ``(V, N)``; ``row_max: true`` in the spec) and :meth:`TeacherCache.lookup` adds it back.
* top-k (FKD-style, Shen & Xing 2022): ``topk_probs.npy`` float16 and ``topk_indices.npy`` int16 ``(V, N, k)``: the k
  largest teacher probabilities at the temperature T, the remaining mass spread uniformly over the other classes.
  They are handed to the loss as "logits" ``T * log(q)``, which :func:`respkd.losses.soft_target_loss` softens back
  to exactly ``q``. Such a cache is tied to its T, and serves the losses that read only the teacher's probabilities
  at T (``kd``, ``dkd``, ``dist``), not those that read its logits (``logit_mse``, ``kd.standardize``).

A cache lives in ``<cache_dir>/<key[:16]>/`` where ``key`` is the SHA-256 of everything that determines its contents
(:func:`cache_spec`): the teacher's ``weights_sha256`` and recorded response, the dataset's SHA-256 and the transfer
set's selection (``train_limit``, and a digest of the chosen examples when a validation hold-out or transfer
filter picked them), the normalisation, the jitter (pixels, seed, number of views, and a digest of the
offsets themselves, so a change in how the loader draws them is noticed), the teacher's precision, top-k and (with
top-k) T. ``meta.json`` records all of them plus the files' sizes and SHA-256; a cache whose meta does not match what
the run needs, or whose files are truncated or altered, is refused with a one-line :class:`RespkdError`, never reused.
A cache is written in a temporary folder and renamed into place, so a crash, a signal (:mod:`respkd.preemption`) or
a full disk never leaves half of one: its files' space is reserved before they are filled (a write into a memory
map on a full disk would kill the process), and a failed write is one line
(:class:`~respkd.errors.WriteFailed`). One process builds a given cache at a time (a lock beside it,
:mod:`respkd.locks`); another that needs the same cache waits for it and then uses it.

What a cache cannot serve, by construction:

* random augmentation that is not a fixed, enumerable set of views (a fresh jitter/crop/mixup draw every epoch):
  the teacher's output for an input nobody has seen yet cannot have been stored; use the online teacher, or
  ``data.jitter_views``;
* a teacher queried in train mode (dropout on, batch-norm batch statistics): its targets are random per query;
  respkd's Distiller always keeps the teacher in eval mode, and the cache stores those eval-mode outputs;
* a teacher that changes during training (online or mutual distillation, an EMA teacher): the key pins the weights.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from respkd import preemption
from respkd.data.memory import BatchLoader
from respkd.engine import autocast
from respkd.errors import RespkdError, first_line
from respkd.files import read_json, writing
from respkd.locks import FolderLock
from respkd.provenance import differences

__all__ = [
    "CACHE_FORMAT", "FLOAT16_MIN", "META_NAME", "MIN_PROB", "TeacherCache", "build_cache", "cache_folder", "cache_key",
    "cache_spec", "find_cache", "full_to_stored", "offsets_digest", "open_cache", "selection_digest", "topk_of",
    "topk_to_logits",
]

CACHE_FORMAT = "respkd-teacher-cache-v1"
META_NAME = "meta.json"
FLOAT16_MIN = float(np.finfo(np.float16).min)
# Floor for reconstructed top-k probabilities: log(0) = -inf would make the KL term NaN (0 * inf).
MIN_PROB = 1e-12


def offsets_digest(loader: BatchLoader, views: int) -> str | None:
    """SHA-256 of the jitter offsets of every view (None without jitter): what the cached inputs actually were."""
    if not loader.jitter:
        return None
    h = hashlib.sha256()
    for view in range(views):
        h.update(loader.view_offsets(view).to(torch.int64).numpy().tobytes())
    return h.hexdigest()


def cache_spec(
    *,
    teacher_weights_sha256: str,
    teacher_response: str | None,
    dataset: str,
    data_sha256: str,
    train_limit: int | None,
    n_train: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    loader: BatchLoader,
    teacher_bf16: bool,
    topk: int | None = None,
    temperature: float | None = None,
    train_selection_sha256: str | None = None,
    teacher_input: dict[str, Any] | None = None,
    teacher_model: dict[str, Any] | None = None,
    raw_logits: bool = False,
) -> dict[str, Any]:
    """Everything that determines a cache's contents, as a JSON-ready dict (hashed by :func:`cache_key`).

    The seed only matters through the jitter offsets, so without jitter it is left out: runs that differ only in
    their seed share one cache. ``temperature`` is part of the key only with top-k (full logits serve any T).
    ``teacher_weights_sha256`` is one checkpoint's, or for an ensemble :func:`respkd.ensemble.ensemble_digest`.
    ``train_selection_sha256`` (:func:`selection_digest`) pins which training examples form the transfer set when a
    validation hold-out or a transfer filter picked them; it is left out of the spec when None, so caches of
    unfiltered runs keep the keys they had before transfer sets existed. Likewise ``teacher_input`` (the settings of
    a teacher input adapter, :meth:`respkd.adapter.TeacherInputAdapter.spec`: it changes what the teacher sees) and
    ``teacher_model`` (the architecture of a teacher given as ``model`` + ``weights``, whose state dict alone does not
    pin it) enter the spec only when given. ``raw_logits`` (a loss that reads the logits themselves, see the module
    doc) adds ``row_max: true``; caches without it keep their keys.
    """
    jitter = int(loader.jitter)
    if jitter and not loader.jitter_views:
        raise RespkdError(
            "a teacher cache with jitter needs a fixed number of jitter views (set data.jitter_views): a new random "
            "draw every epoch cannot be cached"
        )
    views = int(loader.jitter_views) if jitter else 1
    if topk is not None and temperature is None:
        raise ValueError("a top-k cache needs the temperature its probabilities are taken at")
    if topk is not None and raw_logits:
        raise ValueError("a top-k cache holds probabilities, not the teacher's logits")
    return {
        "format": CACHE_FORMAT,
        "teacher_weights_sha256": teacher_weights_sha256,
        "teacher_response": teacher_response,
        "teacher_precision": "bf16" if teacher_bf16 else "fp32",
        "dataset": dataset,
        "data_sha256": data_sha256,
        "train_limit": train_limit,
        "n_train": int(n_train),
        "normalization": {"mean": [float(m) for m in mean], "std": [float(s) for s in std]},
        "jitter": jitter,
        "jitter_seed": int(loader.seed) if jitter else None,
        "views": views,
        "jitter_offsets_sha256": offsets_digest(loader, views),
        "topk": topk,
        "temperature": float(temperature) if topk is not None else None,
        **({"train_selection_sha256": train_selection_sha256} if train_selection_sha256 is not None else {}),
        **({"teacher_input": teacher_input} if teacher_input is not None else {}),
        **({"teacher_model": teacher_model} if teacher_model is not None else {}),
        **({"row_max": True} if raw_logits else {}),
    }


def selection_digest(indices: torch.Tensor) -> str:
    """SHA-256 of the positions (in the original training set) of the examples a transfer set holds."""
    return hashlib.sha256(indices.to(torch.int64).contiguous().numpy().tobytes()).hexdigest()


def cache_key(spec: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def cache_folder(cache_dir: str | Path, spec: dict[str, Any]) -> Path:
    return Path(cache_dir) / cache_key(spec)[:16]


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def full_to_stored(logits: torch.Tensor) -> np.ndarray:
    """float16 rows shifted so each maximum is 0 (exact under softmax), clamped into float16's range."""
    logits = logits.float()
    shifted = (logits - logits.amax(dim=1, keepdim=True)).clamp_min(FLOAT16_MIN)
    return shifted.to(torch.float16).cpu().numpy()


def topk_of(logits: torch.Tensor, k: int, temperature: float) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` largest probabilities at ``temperature`` (float16) and their class indices (stored as int16)."""
    probs = torch.softmax(logits.float() / temperature, dim=1)
    values, indices = probs.topk(k, dim=1)
    return values.to(torch.float16).cpu().numpy(), indices.cpu().numpy()


def topk_to_logits(probs: torch.Tensor, indices: torch.Tensor, num_classes: int, temperature: float) -> torch.Tensor:
    """``T * log(q)`` where ``q`` keeps the top-k ``probs`` and spreads the rest of the mass over the other classes.

    ``softmax(T * log(q) / T) = q / sum(q)``, and ``sum(q)`` is 1 (up to the ``MIN_PROB`` floor and float16 rounding
    of the stored probabilities), so the existing loss sees exactly the reconstructed distribution.
    """
    p = probs.float()
    k = p.shape[1]
    rest = (1.0 - p.sum(dim=1, keepdim=True)).clamp_min(0.0) / max(num_classes - k, 1)
    q = rest.expand(p.shape[0], num_classes).clone()
    q.scatter_(1, indices.long(), p)
    return temperature * q.clamp_min(MIN_PROB).log()


@dataclass
class TeacherCache:
    """An opened, verified cache: :meth:`lookup` returns the teacher's outputs for a batch of example ids.

    ``arrays`` are the memory-mapped files; :meth:`on_device` gives the cache read once into ``tensors`` on a device
    (what a device-resident loader uses, :mod:`respkd.data.residency`), whose lookups are bitwise the same.
    """

    folder: Path
    meta: dict[str, Any]
    arrays: dict[str, np.ndarray]  # memory-mapped, read-only
    tensors: dict[str, torch.Tensor] | None = None  # the same arrays on one device, after on_device
    built_here: bool = False  # built by this process (not found, nor built meanwhile by another)

    @property
    def views(self) -> int:
        return int(self.meta["spec"]["views"])

    @property
    def num_classes(self) -> int:
        return int(self.meta["num_classes"])

    @property
    def build_time_s(self) -> float:
        return float(self.meta.get("build_time_s", 0.0))

    def on_device(self, device: torch.device | str) -> TeacherCache:
        """This cache with its arrays read once into tensors on ``device``: lookups index those, copying nothing."""
        tensors = {name: torch.from_numpy(np.array(array)).to(device) for name, array in self.arrays.items()}
        return replace(self, tensors=tensors)

    def lookup(self, indices: torch.Tensor, view: int = 0, device: torch.device | str = "cpu") -> torch.Tensor:
        """float32 ``(B, C)`` teacher "logits" of examples ``indices`` in jitter view ``view`` (taken mod V); after
        :meth:`on_device`, on that device (``device`` is then unused) and ``indices`` are best already there."""
        view %= self.views
        if self.tensors is not None:
            idx = indices.to(next(iter(self.tensors.values())).device)

            def rows(name: str) -> torch.Tensor:
                return self.tensors[name][view][idx]
        else:
            idx = indices.cpu().numpy()

            def rows(name: str) -> torch.Tensor:
                return torch.from_numpy(np.asarray(self.arrays[name][view][idx])).to(device)
        spec = self.meta["spec"]
        if spec["topk"] is None:
            logits = rows("logits").float()
            if "row_max" in self.arrays:  # the teacher's own logits, not only up to a shift per row
                logits = logits + rows("row_max")[:, None]
            return logits
        return topk_to_logits(rows("topk_probs"), rows("topk_indices"), self.num_classes, spec["temperature"])

    def for_loader(
        self, loader: BatchLoader, device: torch.device | str = "cpu"
    ) -> Callable[[torch.Tensor, int], torch.Tensor]:
        """The ``(indices, epoch) -> teacher logits`` function the engine takes: epoch ``e`` reads the loader's view.

        For a device-resident loader the cache is read onto ``device`` first (:meth:`on_device`), so a lookup indexes
        a tensor there with the batch's indices, which the loader keeps there too; otherwise rows are read from the
        memory-mapped files and copied to ``device``."""
        jittered = bool(loader.jitter)
        if (loader.jitter_views if jittered else 1) != self.views or len(loader.images) != self.meta["spec"]["n_train"]:
            raise ValueError(f"loader ({len(loader.images)} examples, {loader.jitter_views} views) does not match the "
                             f"cache ({self.meta['spec']['n_train']} examples, {self.views} views)")
        cache = self.on_device(device) if loader.device_resident else self

        def teacher_logits(indices: torch.Tensor, epoch: int) -> torch.Tensor:
            return cache.lookup(indices, loader.view_of_epoch(epoch) if jittered else 0, device)

        return teacher_logits


def _file_names(spec: dict[str, Any]) -> tuple[str, ...]:
    if spec["topk"] is not None:
        return ("topk_probs", "topk_indices")
    return ("logits", "row_max") if spec.get("row_max") else ("logits",)


def open_cache(folder: str | Path, spec: dict[str, Any], verify: bool = True) -> TeacherCache:
    """Open the cache in ``folder`` if it was built for exactly ``spec``; refuse (RespkdError) anything else.

    ``verify`` recomputes the files' SHA-256 (one sequential read; a few ms for MNIST), which catches a file
    altered in place, not only a truncated one.
    """
    folder = Path(folder)
    hint = "delete the folder to rebuild it"
    if not (folder / META_NAME).exists():
        raise RespkdError(f"teacher cache {folder}: no {META_NAME}, not a complete cache; {hint}")
    try:
        meta = read_json(folder / META_NAME, META_NAME)
    except RespkdError as err:
        raise RespkdError(f"teacher cache {err}; {hint}") from None
    if not isinstance(meta, dict) or meta.get("format") != CACHE_FORMAT or not isinstance(meta.get("spec"), dict):
        raise RespkdError(f"teacher cache {folder}: not a {CACHE_FORMAT} cache; {hint}")
    stored = meta["spec"]
    if differences(stored, spec) or meta.get("key") != cache_key(spec):
        diffs = list(dict.fromkeys(k.split(".")[0] for k in differences(stored, spec))) or ["key"]
        shown = "; ".join(f"{k}: cached {_short(stored.get(k))}, needed {_short(spec.get(k))}" for k in diffs[:3])
        raise RespkdError(f"teacher cache {folder} was built for other inputs ({shown}); stale cache, {hint}")
    arrays = {}
    for name in _file_names(spec):
        path = folder / f"{name}.npy"
        info = meta.get("files", {}).get(name, {})
        if not path.is_file():
            raise RespkdError(f"teacher cache {folder}: {path.name} is missing; {hint}")
        if path.stat().st_size != info.get("bytes"):
            raise RespkdError(
                f"teacher cache {path}: {path.stat().st_size} bytes, expected {info.get('bytes')} (truncated or "
                f"corrupt); {hint}"
            )
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as err:
            raise RespkdError(f"teacher cache {path}: unreadable ({first_line(err)}); {hint}") from None
        if list(array.shape) != info.get("shape") or str(array.dtype) != info.get("dtype"):
            raise RespkdError(
                f"teacher cache {path}: shape {list(array.shape)} {array.dtype}, expected {info.get('shape')} "
                f"{info.get('dtype')}; {hint}"
            )
        if verify and _file_sha256(path) != info.get("sha256"):
            raise RespkdError(f"teacher cache {path}: checksum mismatch (corrupt or modified); {hint}")
        arrays[name] = array
    return TeacherCache(folder, meta, arrays)


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text[:13] + "..." if len(text) > 16 else text


def find_cache(cache_dir: str | Path, spec: dict[str, Any]) -> TeacherCache | None:
    """The cache for ``spec`` under ``cache_dir`` if one exists (verified), None if none was built yet."""
    folder = cache_folder(cache_dir, spec)
    return open_cache(folder, spec) if folder.exists() else None


def build_cache(
    cache_dir: str | Path,
    spec: dict[str, Any],
    teacher_fn: Callable[[torch.Tensor], torch.Tensor],
    loader: BatchLoader,
    bf16: bool = False,
    batch_size: int | None = None,
    log: Callable[[str], None] | None = None,
    extra_meta: dict[str, Any] | None = None,
) -> TeacherCache:
    """Query the teacher on every training example in every view, once, and write the cache for ``spec``.

    ``teacher_fn`` maps a batch of inputs to the teacher's response (e.g. :meth:`respkd.distill.Distiller.
    teacher_logits`); it runs under ``torch.inference_mode`` and, when ``bf16``, bf16 autocast. Inputs come from
    ``loader.make_batch`` with the offsets of each view, i.e. exactly the tensors that training will produce.
    """
    if spec["jitter"] != loader.jitter or spec["views"] != (loader.jitter_views if loader.jitter else 1):
        raise ValueError("spec and loader disagree about the jitter")
    cache_dir = Path(cache_dir)
    final = cache_folder(cache_dir, spec)
    if len(loader.images) == 0:
        raise RespkdError("cannot build a teacher cache for an empty training set")
    log = log or (lambda line: None)
    lock = FolderLock(cache_dir / f".{final.name}.lock", f"teacher cache {final}")
    lock.wait(log)
    try:
        if lock.taken_over is not None:
            log(f"took over {lock.path} from {lock.taken_over.describe()}, which ended without releasing it")
        if (final / META_NAME).exists():  # built by the process this one waited for
            log(f"using teacher cache {final}, built by another process meanwhile")
            return open_cache(final, spec)
        with writing(final, "no partial teacher cache was left"):
            cache = _build(cache_dir, final, spec, teacher_fn, loader, bf16, batch_size, log, extra_meta)
    finally:
        lock.release()
    return cache


def _build(
    cache_dir: Path, final: Path, spec: dict[str, Any], teacher_fn: Callable[[torch.Tensor], torch.Tensor],
    loader: BatchLoader, bf16: bool, batch_size: int | None, log: Callable[[str], None],
    extra_meta: dict[str, Any] | None,
) -> TeacherCache:
    """:func:`build_cache`'s work, under its lock: a temporary folder filled, then renamed to ``final``."""
    key = cache_key(spec)
    n, views, topk = len(loader.images), spec["views"], spec["topk"]
    start = time.perf_counter()
    what = (f"top-{topk} probabilities at T={spec['temperature']:g}" if topk else
            "float16 logits" + (" and their row maxima" if spec.get("row_max") else ""))
    log(f"building teacher cache: {views} view(s) x {n} examples, {what} -> {final}")
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=cache_dir))
    os.chmod(tmp, 0o755)  # mkdtemp's 0700 would survive the rename
    try:
        arrays: dict[str, np.ndarray] = {}
        for view in range(views):
            offsets = loader.view_offsets(view) if loader.jitter else None
            # Batches no larger than training's, so building the cache never needs more memory than training
            # (a 1024-image batch through a CNN teacher raised peak memory 25% above student-only training).
            step = batch_size or loader.batch_size
            for lo in range(0, n, step):
                preemption.check()  # under torchrun a signal is only noted: stop here, between batches
                idx = torch.arange(lo, min(lo + step, n))
                inputs, _, _ = loader.make_batch(idx, None if offsets is None else offsets[idx])
                with torch.inference_mode(), autocast(inputs.device, bf16):
                    out = teacher_fn(inputs)
                out = out.reshape(len(idx), -1).float()
                if not torch.isfinite(out).all():
                    raise RespkdError("the teacher produced non-finite outputs; refusing to cache them")
                if not arrays:
                    arrays = _create_arrays(tmp, views, n, out.shape[1], topk, bool(spec.get("row_max")))
                if topk is None:
                    arrays["logits"][view, lo : lo + len(idx)] = full_to_stored(out)
                    if "row_max" in arrays:
                        arrays["row_max"][view, lo : lo + len(idx)] = out.amax(dim=1).cpu().numpy()
                else:
                    probs, classes = topk_of(out, topk, spec["temperature"])
                    arrays["topk_probs"][view, lo : lo + len(idx)] = probs
                    arrays["topk_indices"][view, lo : lo + len(idx)] = classes
        num_classes = out.shape[1]
        files = {}
        for name, array in arrays.items():
            array.flush()
            path = tmp / f"{name}.npy"
            with open(path, "rb") as f:
                os.fsync(f.fileno())
            files[name] = {"shape": list(array.shape), "dtype": str(array.dtype), "bytes": path.stat().st_size,
                           "sha256": _file_sha256(path)}
        arrays.clear()
        build_time = time.perf_counter() - start
        meta = {"format": CACHE_FORMAT, "key": key, "spec": spec, "num_classes": int(num_classes), "files": files,
                "build_time_s": round(build_time, 3), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                **(extra_meta or {})}
        (tmp / META_NAME).write_text(json.dumps(meta, indent=2))
        try:
            os.replace(tmp, final)
        except OSError:  # a process this lock does not reach (another host) finished it first: use theirs
            if not (final / META_NAME).exists():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
            return open_cache(final, spec)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    size = sum(f["bytes"] for f in files.values())
    log(f"teacher cache built in {build_time:.2f}s ({views * n / max(build_time, 1e-9):,.0f} teacher "
        f"forwards/s, {size / 2**20:.1f} MiB)")
    cache = open_cache(final, spec)
    cache.built_here = True
    return cache


def _index_dtype(num_classes: int) -> type:
    return np.int16 if num_classes <= np.iinfo(np.int16).max + 1 else np.int32


def _create_arrays(
    folder: Path, views: int, n: int, num_classes: int, topk: int | None, row_max: bool = False
) -> dict[str, np.ndarray]:
    if topk is None:
        arrays = {"logits": _open_memmap(folder / "logits.npy", np.float16, (views, n, num_classes))}
        if row_max:
            arrays["row_max"] = _open_memmap(folder / "row_max.npy", np.float32, (views, n))
        return arrays
    if topk > num_classes:
        raise RespkdError(f"kd.cache_topk is {topk} but the teacher has only {num_classes} outputs")
    return {
        "topk_probs": _open_memmap(folder / "topk_probs.npy", np.float16, (views, n, topk)),
        "topk_indices": _open_memmap(folder / "topk_indices.npy", _index_dtype(num_classes), (views, n, topk)),
    }


def _open_memmap(path: Path, dtype: type, shape: tuple[int, ...]) -> np.ndarray:
    """A new ``.npy`` file mapped for writing, its space reserved first: filling a sparse file's pages on a full
    disk raises SIGBUS, which kills the process; reserving it raises ENOSPC, which is one line."""
    array = np.lib.format.open_memmap(path, "w+", dtype, shape)
    if hasattr(os, "posix_fallocate"):
        with open(path, "r+b") as f:
            os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
    return array
