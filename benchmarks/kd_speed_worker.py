"""One measured method of benchmarks/kd_speed.py, in a process of its own, driven by the driver over stdin/stdout.

The protocol, one line each way: the worker builds its data and models and replies once; then it answers each
command the driver writes to its stdin: ``prepare`` (one-time work timed apart, e.g. building the teacher cache),
``epoch`` (one timed epoch: training, or the forward passes or products that method stands for) and ``finish``
(test accuracy and peak memory, then exit). Replies are JSON on lines starting with :data:`REPLY`, so whatever a
library prints on stdout is ignored. The driver sends ``epoch`` to every worker in turn, so the methods' epochs
interleave and a shared machine's drift reaches all of them alike.

Every method trains the same student (same initial weights) on the same examples with the same optimiser
(SGD, nesterov momentum 0.9, one-cycle learning rate over all epochs), batch size and precision.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from matmul_limit import linear_products, time_products
from respkd.checkpoint import load_model, read_checkpoint_meta
from respkd.compilation import compile_modules, compile_unavailable
from respkd.config import TrainConfig
from respkd.data.datasets import dataset_info, load_dataset
from respkd.data.memory import BatchLoader
from respkd.distill import Distiller, Supervised
from respkd.engine import autocast, build_optimizer, build_scheduler, evaluate, train_one_epoch
from respkd.environment import resolve_device
from respkd.models import build_model
from respkd.teacher_cache import build_cache, cache_spec

__all__ = ["REPLY", "PAIRS", "METHODS", "serve"]

REPLY = "KDSPEED "

PAIRS: dict[str, dict[str, Any]] = {
    "mlp": {
        "title": "MNIST MLPs 1200-1200 -> 800-800",
        "dataset": "mnist",
        "teacher": {"name": "mlp", "hidden": [1200, 1200]},
        "student": {"name": "mlp", "hidden": [800, 800]},
        "temperature": 20.0,
        "channels_last": False,
    },
    "cnn": {
        "title": "Fashion-MNIST CNNs [64,128,256] -> [16,32,64], channels_last",
        "dataset": "fashion_mnist",
        "teacher": {"name": "cnn", "channels": [64, 128, 256]},
        "student": {"name": "cnn", "channels": [16, 32, 64]},
        "temperature": 4.0,
        "channels_last": True,
    },
}
# What each method's epoch is (the driver's rows).
METHODS = {
    "matmul": "the student's Linear-layer products alone (torch.mm: forward, input and weight gradients)",
    "student": "respkd, the student alone on hard labels",
    "teacher": "the teacher's forward passes alone (what online distillation must add)",
    "online": "respkd distillation, teacher queried every step",
    "cached": "respkd distillation from the teacher-output cache (built once, timed apart)",
    "torchdistill": "torchdistill 1.1.5's DistillationBox built from its YAML config, a tensor-backed Dataset",
    "torchdistill_pil": "torchdistill 1.1.5's KDLoss in a hand-written loop fed by a per-sample PIL Dataset",
    "pipelines": "the input pipelines alone: respkd's batches, tensor Dataset + DataLoader, PIL Dataset + DataLoader",
}


def reply(obj: dict[str, Any]) -> None:
    print(REPLY + json.dumps(obj), flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _status_kib(field: str) -> int | None:
    try:
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


class PeakMemory:
    """Peak resident set size of this process from now on: VmHWM after resetting it (Linux), else ru_maxrss."""

    def __init__(self) -> None:
        import resource

        self.resource = resource
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS
            self.method = "VmHWM reset at start"
        except OSError:
            self.method = "ru_maxrss (peak since process start)"
        self.before_kib = _status_kib("VmRSS") or 0

    def result(self) -> dict[str, Any]:
        peak = _status_kib("VmHWM") if self.method.startswith("VmHWM") else None
        if peak is None:
            peak = self.resource.getrusage(self.resource.RUSAGE_SELF).ru_maxrss
        return {"rss_before_mib": round(self.before_kib / 1024, 1), "peak_rss_mib": round(peak / 1024, 1),
                "memory_method": self.method}


class SyntheticSplits:
    """Random uint8 images of a dataset's shape with random labels: timing only, where the data files are absent."""

    def __init__(self, name: str, n_train: int, n_test: int, seed: int) -> None:
        self.info = dataset_info(name)
        g = torch.Generator().manual_seed(seed)
        c, h, w = self.info.image_shape
        k = len(self.info.class_names)
        self.train_images = torch.randint(0, 256, (n_train, c, h, w), dtype=torch.uint8, generator=g)
        self.train_labels = torch.randint(0, k, (n_train,), generator=g)
        self.test_images = torch.randint(0, 256, (n_test, c, h, w), dtype=torch.uint8, generator=g)
        self.test_labels = torch.randint(0, k, (n_test,), generator=g)
        self.num_classes = k
        self.sha256 = f"synthetic-{name}-{n_train}-{n_test}-{seed}"


class Bench:
    """What every method of one job shares: the device, the examples, the models' recipes, the training config."""

    def __init__(self, job: dict[str, Any]) -> None:
        if job["threads"]:
            torch.set_num_threads(job["threads"])
        self.job = job
        self.pair = PAIRS[job["pair"]]
        self.device = resolve_device(job["device"])
        if job["synthetic"]:
            data = SyntheticSplits(self.pair["dataset"], job["train_limit"] or 60000, job["test_limit"] or 10000,
                                   job["seed"])
        else:
            data = load_dataset(self.pair["dataset"], job["data_root"])
        self.data = data
        self.train_x, self.train_y = data.train_images[: job["train_limit"]], data.train_labels[: job["train_limit"]]
        self.test_x, self.test_y = data.test_images[: job["test_limit"]], data.test_labels[: job["test_limit"]]
        self.info, self.temperature = data.info, self.pair["temperature"]
        self.channels_last = self.pair["channels_last"]
        self.memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        # Inputs are normalised as the teacher's run normalised them (the paper's MLPs take raw pixels / 255).
        self.mean, self.std = self.info.mean, self.info.std
        if job["teacher_path"]:
            norm = read_checkpoint_meta(Path(job["teacher_path"])).get("normalization") or {}
            self.mean, self.std = tuple(norm.get("mean", self.mean)), tuple(norm.get("std", self.std))
        self.epochs = job["epochs"] + 1  # one warm-up epoch, trained but not timed
        self.cfg = TrainConfig(epochs=self.epochs, batch_size=job["batch_size"], optimizer="sgd", lr=job["lr"],
                               schedule="onecycle")

    def make_student(self) -> nn.Module:
        torch.manual_seed(self.job["seed"])  # every method starts from the same student
        spec = dict(self.pair["student"])
        model = build_model(spec.pop("name"), self.data.num_classes, self.info.image_shape, **spec)
        return model.to(self.device, memory_format=self.memory_format)

    def make_teacher(self) -> nn.Module:
        if self.job["teacher_path"]:
            teacher, meta = load_model(self.job["teacher_path"], self.device)
            if meta["num_classes"] != self.data.num_classes or tuple(meta["in_shape"]) != self.info.image_shape:
                raise SystemExit(f"{self.job['teacher_path']}: a teacher for other data than {self.pair['dataset']}")
        else:
            torch.manual_seed(self.job["seed"] + 1000)
            spec = dict(self.pair["teacher"])
            teacher = build_model(spec.pop("name"), self.data.num_classes, self.info.image_shape, **spec)
        return teacher.to(self.device, memory_format=self.memory_format).eval().requires_grad_(False)

    def batch_loader(self, resident: bool = True) -> BatchLoader:
        """respkd's training batches, device-resident or host-fed (respkd.data.residency)."""
        return BatchLoader(self.train_x, self.train_y, self.job["batch_size"], self.mean, self.std, shuffle=True,
                           jitter=self.job["jitter"], jitter_views=self.job["jitter_views"], drop_last=True,
                           seed=self.job["seed"], device=self.device, channels_last=self.channels_last,
                           device_resident=resident)

    def steps_per_epoch(self) -> int:
        return len(self.train_x) // self.job["batch_size"]

    def test_top1(self, student: nn.Module) -> float:
        loader = BatchLoader(self.test_x, self.test_y, 1000, self.mean, self.std, device=self.device,
                             channels_last=self.channels_last)
        return evaluate(student, loader, self.data.num_classes)["top1"]

    def normalized_train_images(self) -> torch.Tensor:
        """The training images as float32 model inputs on the CPU, normalised once (what a tensor Dataset holds)."""
        mean = torch.tensor(self.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.std).view(1, -1, 1, 1)
        return (self.train_x.float() / 255 - mean) / std

    def jitter_transform(self):
        """torchvision's RandomCrop with zero padding: the per-sample form of the loader's jitter (None without)."""
        from torchvision import transforms

        return transforms.RandomCrop(self.info.image_shape[1:], padding=self.job["jitter"]) if self.job["jitter"] else None

    def describe(self) -> dict[str, Any]:
        return {"device": str(self.device), "threads": torch.get_num_threads(), "n_train": len(self.train_x),
                "n_test": len(self.test_x), "synthetic": bool(self.job["synthetic"])}


class TensorImages(torch.utils.data.Dataset):
    """A tensor-backed Dataset (what a torchdistill user without PIL writes): already normalised float images."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform=None) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.images[i]
        return (x if self.transform is None else self.transform(x)), self.labels[i]


class PILImages(torch.utils.data.Dataset):
    """torchvision.datasets.MNIST's ``__getitem__`` on the same uint8 images: a PIL image per sample, then transforms."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform) -> None:
        self.images, self.labels, self.transform = images[:, 0], labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i].numpy())), int(self.labels[i])


def pil_loader(bench: Bench) -> torch.utils.data.DataLoader:
    """What most training scripts do: a torchvision-style Dataset (PIL per sample) + DataLoader, no workers."""
    from torchvision import transforms

    jitter = bench.jitter_transform()
    steps = ([jitter] if jitter else []) + [transforms.ToTensor(), transforms.Normalize(bench.mean, bench.std)]
    generator = torch.Generator().manual_seed(bench.job["seed"])
    return torch.utils.data.DataLoader(
        PILImages(bench.train_x, bench.train_y, transforms.Compose(steps)), batch_size=bench.job["batch_size"],
        shuffle=True, drop_last=True, num_workers=0, generator=generator)


class Method:
    """One row of the benchmark: ``prepare`` once, ``epoch`` per round, ``finish`` at the end."""

    def __init__(self, bench: Bench) -> None:
        self.bench = bench
        self.memory: PeakMemory | None = None
        self.epoch_number = 0

    def prepare(self) -> dict[str, Any]:
        self.memory = PeakMemory()
        return {}

    def timed(self, fn) -> float:
        start = time.perf_counter()
        fn()
        sync(self.bench.device)
        return time.perf_counter() - start

    def epoch(self) -> dict[str, Any]:
        raise NotImplementedError

    def finish(self) -> dict[str, Any]:
        out = self.memory.result() if self.memory else {}
        if self.bench.device.type == "cuda":
            out["cuda_peak_mib"] = torch.cuda.max_memory_allocated(self.bench.device) / 2**20
        return out


class MatmulOnly(Method):
    def __init__(self, bench: Bench, bf16: bool) -> None:
        super().__init__(bench)
        self.dtype = torch.bfloat16 if bf16 else torch.float32
        self.products = linear_products(bench.make_student(), bench.job["batch_size"], bench.info.image_shape)

    def epoch(self) -> dict[str, Any]:
        result = time_products(self.products, self.bench.steps_per_epoch(), self.bench.device, self.dtype,
                               seed=self.epoch_number)
        self.epoch_number += 1
        return {"epoch_s": result["seconds"], "gflops_per_s": result["gflops_per_s"]}

    def finish(self) -> dict[str, Any]:
        flops = sum(p.flops for p in self.products)
        return {**super().finish(), "flops_per_step": flops, "steps_per_epoch": self.bench.steps_per_epoch(),
                "products": [{"layer": p.layer, "role": p.role, "shape": [p.m, p.k, p.n]} for p in self.products]}


class TeacherForward(Method):
    def __init__(self, bench: Bench, bf16: bool, resident: bool) -> None:
        super().__init__(bench)
        self.bf16, self.teacher, self.loader = bf16, bench.make_teacher(), bench.batch_loader(resident)

    def epoch(self) -> dict[str, Any]:
        self.epoch_number += 1
        self.loader.set_epoch(self.epoch_number)

        def forward_passes() -> None:
            for x, _, _ in self.loader:
                with torch.inference_mode(), autocast(self.bench.device, self.bf16):
                    self.teacher(x)

        return {"epoch_s": self.timed(forward_passes)}


class RespkdTraining(Method):
    """respkd's engine: ``train_one_epoch`` on in-memory batches (device-resident or host-fed), hard labels or
    distillation; compiled (the student, and an online teacher) as ``train.compile`` does, when asked."""

    def __init__(self, bench: Bench, kind: str, bf16: bool, resident: bool = True, compiled: bool = False) -> None:
        super().__init__(bench)
        self.kind, self.bf16 = kind, bf16
        self.student, self.loader = bench.make_student(), bench.batch_loader(resident)
        self.task = Supervised(self.student) if kind == "student" else \
            Distiller(self.student, bench.make_teacher(), bench.temperature)
        if compiled:
            compile_modules([self.student] + ([self.task.teacher] if kind == "online" else []), bench.device,
                            lambda line: print(line, file=sys.stderr))
        self.optimizer = build_optimizer(self.student, bench.cfg)
        self.scheduler = build_scheduler(self.optimizer, bench.cfg, len(self.loader))
        self.lookup = None
        self.cache_dir: str | None = None

    def prepare(self) -> dict[str, Any]:
        out = super().prepare()
        if self.kind != "cached":
            return out
        b = self.bench
        self.cache_dir = tempfile.mkdtemp(prefix="kd_speed_cache_")
        spec = cache_spec(teacher_weights_sha256="benchmark", teacher_response=None, dataset=b.pair["dataset"],
                          data_sha256=b.data.sha256, train_limit=b.job["train_limit"], n_train=len(b.train_x),
                          mean=b.mean, std=b.std, loader=self.loader, teacher_bf16=self.bf16)
        start = time.perf_counter()
        cache = build_cache(self.cache_dir, spec, self.task.teacher_logits, self.loader, self.bf16)
        out["cache_build_s"] = time.perf_counter() - start
        out["cache_mib"] = sum(f["bytes"] for f in cache.meta["files"].values()) / 2**20
        self.lookup = cache.for_loader(self.loader, b.device)
        return out

    def epoch(self) -> dict[str, Any]:
        self.epoch_number += 1
        self.loader.set_epoch(self.epoch_number)
        seconds = self.timed(lambda: train_one_epoch(
            self.task, self.loader, self.optimizer, scheduler=self.scheduler, device=self.bench.device,
            bf16=self.bf16, epoch=self.epoch_number, progress=False, teacher_logits=self.lookup))
        return {"epoch_s": seconds}

    def finish(self) -> dict[str, Any]:
        out = {**super().finish(), "test_top1": self.bench.test_top1(self.student)}
        if self.cache_dir:
            shutil.rmtree(self.cache_dir, ignore_errors=True)
        return out


# The peer as its users configure it: a YAML file read by torchdistill's own loader. Values in braces are filled
# in from the benchmark's settings, so the box trains exactly what respkd's rows train: soft targets only, T^2 * KL
# (torchdistill 1.1.5's KDLoss returns the plain KL, without T^2, when alpha is 0, hence the term's weight T^2),
# SGD with nesterov momentum, a per-step one-cycle schedule with respkd's warm-up fraction.
TORCHDISTILL_YAML = """\
train:
  log_freq: 1000
  num_epochs: {epochs}
  train_data_loader:
    dataset_id: 'train'
    sampler:
      class_or_func: !import_get
        key: 'torch.utils.data.RandomSampler'
      kwargs:
    kwargs:
      batch_size: {batch_size}
      num_workers: {workers}
      pin_memory: {pin_memory}
      persistent_workers: {persistent_workers}
      drop_last: True
  teacher:
    forward_proc: 'forward_batch_only'
    sequential: []
    requires_grad: False
  student:
    forward_proc: 'forward_batch_only'
    adaptations:
    sequential: []
    requires_grad: True
    frozen_modules: []
  optimizer:
    key: 'SGD'
    kwargs:
      lr: {lr}
      momentum: {momentum}
      nesterov: {nesterov}
      weight_decay: {weight_decay}
  scheduler:
    key: 'OneCycleLR'
    kwargs:
      max_lr: {lr}
      total_steps: {total_steps}
      pct_start: {pct_start}
      cycle_momentum: {cycle_momentum}
    scheduling_step: 1
  criterion:
    key: 'WeightedSumLoss'
    kwargs:
      sub_terms:
        kd:
          criterion:
            key: 'KDLoss'
            kwargs:
              student_module_path: '.'
              student_module_io: 'output'
              teacher_module_path: '.'
              teacher_module_io: 'output'
              temperature: {temperature}
              alpha: 0.0
              reduction: 'batchmean'
          weight: {kd_weight}
"""


class TorchdistillBox(Method):
    """torchdistill's own pipeline: ``get_distillation_box`` from its YAML config, its DataLoader, its
    ``pre_epoch_process`` / ``forward_process`` / ``post_forward_process`` / ``post_epoch_process`` loop (that of
    its example scripts, with one loss sync per epoch instead of a logged ``loss.item()`` per step).

    torchdistill 1.1.5 has no precision setting of its own (mixed precision goes through a Hugging Face
    Accelerator); the bf16 row wraps ``forward_process`` in ``torch.autocast``, as a user's loop would.
    """

    def __init__(self, bench: Bench, workers: int, bf16: bool) -> None:
        super().__init__(bench)
        from torchdistill.common.yaml_util import load_yaml_file
        from torchdistill.core.distillation import get_distillation_box

        self.bf16 = bf16
        self.student, teacher = bench.make_student(), bench.make_teacher()
        cfg, steps = bench.cfg, bench.steps_per_epoch()
        total = cfg.epochs * steps
        text = TORCHDISTILL_YAML.format(
            epochs=cfg.epochs, batch_size=cfg.batch_size, workers=workers, pin_memory=bench.device.type == "cuda",
            persistent_workers=workers > 0, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
            weight_decay=cfg.weight_decay, total_steps=total,
            pct_start=max(cfg.warmup_fraction, min(1.5 / total, 0.75)),  # as respkd.engine.build_scheduler
            cycle_momentum=cfg.cycle_momentum, temperature=bench.temperature, kd_weight=bench.temperature**2)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "kd.yaml"
            path.write_text(text)
            config = load_yaml_file(str(path))
        dataset = TensorImages(bench.normalized_train_images(), bench.train_y, bench.jitter_transform())
        device_ids = [bench.device.index or 0] if bench.device.type == "cuda" else None
        self.box = get_distillation_box(teacher, self.student, {"train": dataset}, config["train"], bench.device,
                                        device_ids, distributed=False, lr_factor=1)
        if self.box.student_model is not self.student:
            raise SystemExit("torchdistill's box trains a copy of the student: the benchmark cannot evaluate it")
        self.yaml = text

    def epoch(self) -> dict[str, Any]:
        box, device, fmt = self.box, self.bench.device, self.bench.memory_format
        self.epoch_number += 1

        def one_epoch() -> None:
            box.pre_epoch_process(epoch=self.epoch_number)
            total = torch.zeros((), device=device)
            for sample_batch, targets, supp_dict in box.train_data_loader:
                sample_batch = sample_batch.to(device, non_blocking=True, memory_format=fmt)
                targets = targets.to(device, non_blocking=True)
                with autocast(device, self.bf16):
                    loss = box.forward_process(sample_batch, targets, supp_dict)
                box.post_forward_process(loss=loss)
                total += loss.detach()
            box.post_epoch_process()
            float(total)  # one sync per epoch, as respkd's engine does

        return {"epoch_s": self.timed(one_epoch)}

    def finish(self) -> dict[str, Any]:
        import torchdistill

        return {**super().finish(), "test_top1": self.bench.test_top1(self.student),
                "torchdistill": torchdistill.__version__, "yaml": self.yaml}


class TorchdistillPIL(Method):
    """torchdistill's KDLoss in a hand-written loop fed by a per-sample PIL Dataset (torchvision's MNIST style)."""

    def __init__(self, bench: Bench) -> None:
        super().__init__(bench)
        from torchdistill.losses.mid_level import KDLoss

        self.student, self.teacher, self.loader = bench.make_student(), bench.make_teacher(), pil_loader(bench)
        # alpha=0 makes KDLoss the plain KL (no T^2): multiply by T^2 here, as respkd's soft-only objective has it.
        self.kd_loss = KDLoss("logits", "output", "logits", "output", temperature=bench.temperature, alpha=0.0,
                              reduction="batchmean")
        self.optimizer = build_optimizer(self.student, bench.cfg)
        self.scheduler = build_scheduler(self.optimizer, bench.cfg, len(self.loader))

    def epoch(self) -> dict[str, Any]:
        device, fmt, T = self.bench.device, self.bench.memory_format, self.bench.temperature

        def one_epoch() -> None:
            self.student.train()
            total = torch.zeros((), device=device)
            for x, y in self.loader:
                x, y = x.to(device, memory_format=fmt), y.to(device)
                student_logits = self.student(x)
                with torch.no_grad():
                    teacher_logits = self.teacher(x)
                loss = T**2 * self.kd_loss({"logits": {"output": student_logits}},
                                           {"logits": {"output": teacher_logits}}, y)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                self.scheduler.step()
                total += loss.detach()
            float(total)

        return {"epoch_s": self.timed(one_epoch)}

    def finish(self) -> dict[str, Any]:
        return {**super().finish(), "test_top1": self.bench.test_top1(self.student)}


class Pipelines(Method):
    """Iterating the input pipelines alone, each batch moved to the device: respkd's in-memory batches, a tensor
    Dataset + DataLoader (0 workers, torchdistill's row's input), a PIL Dataset + DataLoader (the PIL row's)."""

    def __init__(self, bench: Bench) -> None:
        super().__init__(bench)
        self.ours = bench.batch_loader()
        dataset = TensorImages(bench.normalized_train_images(), bench.train_y, bench.jitter_transform())
        self.tensor = torch.utils.data.DataLoader(dataset, batch_size=bench.job["batch_size"], shuffle=True,
                                                  drop_last=True)
        self.pil = pil_loader(bench)

    def epoch(self) -> dict[str, Any]:
        device, fmt = self.bench.device, self.bench.memory_format
        self.epoch_number += 1
        self.ours.set_epoch(self.epoch_number)

        def drain(loader) -> None:
            for batch in loader:
                batch[0].to(device, memory_format=fmt)

        parts = {"respkd_batches": self.timed(lambda: drain(self.ours)),
                 "tensor_dataloader": self.timed(lambda: drain(self.tensor)),
                 "pil_dataloader": self.timed(lambda: drain(self.pil))}
        return {"epoch_s": sum(parts.values()), "parts": parts}


def build_method(bench: Bench, job: dict[str, Any]) -> Method:
    method, bf16 = job["method"], job["bf16"]
    if method == "matmul":
        return MatmulOnly(bench, bf16)
    if method == "teacher":
        return TeacherForward(bench, bf16, job["resident"])
    if method in ("student", "online", "cached"):
        return RespkdTraining(bench, method, bf16, job["resident"], job["compiled"])
    if method == "torchdistill":
        return TorchdistillBox(bench, job["workers"], bf16)
    if method == "torchdistill_pil":
        return TorchdistillPIL(bench)
    if method == "pipelines":
        return Pipelines(bench)
    raise SystemExit(f"unknown method {method}")


def serve(job: dict[str, Any]) -> int:
    """Answer the driver's commands for one method until ``finish`` (or until the driver goes away)."""
    if job["method"].startswith("torchdistill"):
        try:
            import torchdistill  # noqa: F401
        except ImportError as err:
            reply({"skipped": f"torchdistill is not installed ({err}); run `make benchmark-setup`"})
            return 0
    bench = Bench(job)
    if job["compiled"] and (reason := compile_unavailable(bench.device)) is not None:
        reply({"skipped": f"torch.compile is not available here ({reason})"})
        return 0
    method = build_method(bench, job)
    reply({"ready": True, **bench.describe()})
    for line in sys.stdin:
        command = line.strip()
        if command == "prepare":
            reply(method.prepare())
        elif command == "epoch":
            began = time.time()  # wall-clock times, comparable between processes: they show the interleaving
            reply({**method.epoch(), "wall": [began, time.time()]})
        elif command == "finish":
            reply(method.finish())
            return 0
        else:
            raise SystemExit(f"unknown command {command!r}")
    return 1
