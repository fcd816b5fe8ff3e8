"""Experiment configs: YAML files that are plain data, validated with types.

A config never imports or executes code: it is read with a ``yaml.SafeLoader`` (that also refuses a key given twice)
and checked by pydantic models in strict mode, so a misspelt key (``lr_rate``) or a wrong type (``epochs: "ten"``) is
an error that names the key, before anything runs or is written. Single keys can be overridden from the command line: ``--set train.epochs=3``.

A hostile file cannot make the reader run long or use much memory: it refuses, with one line, a file over
``MAX_YAML_BYTES`` (4 MiB), nesting deeper than ``MAX_YAML_DEPTH`` (32), more than ``MAX_YAML_KEYS`` (10,000) keys, a
key longer than ``MAX_KEY_LENGTH`` (128 characters), more than ``MAX_YAML_VALUES`` (50,000) values once every alias
is expanded (a "billion laughs" bomb), an alias inside the collection it names, and an integer literal longer than
``MAX_INT_LENGTH`` (100 characters). The largest shipped plan has 6,658 bytes, depth 6, 121 keys and 320 values.
libyaml scans a 4 MiB file in well under a second; composing costs about 15 microseconds a value, so the counts
stop a hostile file within a second. The same bounds apply to run configs, plans, specialists configs and each
``--set`` value.
"""

from __future__ import annotations

from pathlib import Path
import math
from typing import Annotated, Any, Literal

import yaml
from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator,
                      model_validator)

from respkd.errors import RespkdError, closest_name, quote, shorten

__all__ = [
    # the sections of a run config, and the types their keys share
    "ClassIndex", "DataConfig", "DISTConfig", "DKDConfig", "InitConfig", "KDConfig", "LossWeight", "ModelConfig",
    "PathText", "RunConfig", "RunName", "Section", "Seed", "TeacherConfig", "TeacherInputConfig", "Temperature",
    "TrainConfig", "TransferConfig",
    # what each dataset accepts, and the bounds on every number
    "COMBINE_RULES", "DATA_SOURCES", "MAX_CLASSES", "MAX_COUNT", "MAX_EPOCHS", "STREAMED_DATASETS",
    # reading, overriding and validating (also reused by plans and specialists configs)
    "MAX_INT_LENGTH", "MAX_KEY_LENGTH", "MAX_PROBLEMS", "MAX_YAML_BYTES", "MAX_YAML_DEPTH", "MAX_YAML_KEYS",
    "MAX_YAML_VALUES", "BoundedComposer", "ConfigLoader", "PythonYAMLEvents", "YAMLLimitError", "apply_override",
    "config_to_dict", "dotted", "format_validation_error", "join_problems", "key_suggestion", "load_config",
    "load_yaml", "parse_list", "read_yaml_mapping", "validate_config", "with_seed",
]


class Section(BaseModel):
    # allow_inf_nan=False: an `lr: .inf` or `temperature: .nan` passes every range check but ruins the run
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


# A run's name is a folder under the runs root: letters, digits, '_', '.', '-', and at least one that is not a dot
# ('.' and '..' would be the runs root itself and its parent).
NAME_PATTERN = r"^[A-Za-z0-9_.-]*[A-Za-z0-9_-][A-Za-z0-9_.-]*$"
# At most 100 characters, so that what is derived from it (<name>-seed<k>, <name>-h300x300-T2.5, <name>.seeds.md)
# still fits the 255 bytes of a file name.
RunName = Annotated[str, Field(pattern=NAME_PATTERN, max_length=100)]
# numpy's global seed takes 0 .. 2**32 - 1; a wider range would fail deep inside a run
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]
# Every number in a config has a range. Where nothing smaller is natural the upper bound is far above any real
# setting and low enough that no arithmetic on it overflows (float32 steps, int64 counts, Python's int printing).
MAX_COUNT = 2**31 - 1  # examples, steps
MAX_CLASSES = 100_000  # ImageNet-21k has 21,841
MAX_EPOCHS = 100_000
MAX_THREADS = 4096  # keeps torch.set_num_threads from overflowing
MAX_WORKERS = 256
# T = 1e-300 made logits / T infinite and the loss NaN; distillation uses 1 to 20 (the paper's sweeps).
Temperature = Annotated[float, Field(ge=0.01, le=1000)]
LossWeight = Annotated[float, Field(ge=0, le=1000)]
ClassIndex = Annotated[int, Field(le=MAX_CLASSES - 1)]  # the lower bound is the validators' (a clearer message)


def _fits_filesystem(path: str) -> str:
    """A path that a file system can name: at most 4096 bytes (PATH_MAX), each part at most 255 (NAME_MAX).

    Longer ones fail with ENAMETOOLONG in whichever ``Path.exists()`` first meets them."""
    if len(path.encode()) > 4096:
        raise ValueError(f"a path of {len(path.encode())} bytes is longer than the 4096 a file system allows")
    if part := next((p for p in Path(path).parts if len(p.encode()) > 255), None):
        raise ValueError(f"a path part of {len(part.encode())} bytes is longer than the 255 a file name may have")
    return path


PathText = Annotated[str, AfterValidator(_fits_filesystem)]  # a file or folder path, or a run's name under the root


class TransferConfig(Section):
    """Which training examples form the transfer set: the training set of this run, after the validation hold-out.

    The paper's experiments on what distillation transfers: a transfer set without one class (``drop_classes: [3]``),
    with only some classes (``keep_classes: [7, 8]``), or with a small share of the data (``fraction: 0.03``, taken
    per class in proportion to its count, seeded by ``seed``). The test set is never filtered.
    """

    drop_classes: list[ClassIndex] = []
    keep_classes: list[ClassIndex] | None = Field(None, min_length=1)
    fraction: float | None = Field(None, gt=0, le=1)
    seed: Seed = 0  # draws the `fraction` subset; independent of the run's seed, so runs of any seed share it

    @model_validator(mode="after")
    def _consistent(self) -> "TransferConfig":
        if self.drop_classes and self.keep_classes is not None:
            raise ValueError("give 'drop_classes' or 'keep_classes', not both")
        for key in ("drop_classes", "keep_classes"):
            classes = getattr(self, key) or []
            if any(c < 0 for c in classes):
                raise ValueError(f"'{key}' holds a negative class index")
            if len(set(classes)) != len(classes):
                raise ValueError(f"'{key}' lists a class twice")
        return self

    @property
    def active(self) -> bool:
        return bool(self.drop_classes) or self.keep_classes is not None or self.fraction is not None


# Which data.source values each dataset's reader understands ("auto" and "download" apply to all in-memory ones).
DATA_SOURCES = {
    "mnist": ("auto", "idx", "csv", "download"),
    "fashion_mnist": ("auto", "idx", "csv", "download"),
    "cifar10": ("auto", "python", "binary", "download"),
    "cifar100": ("auto", "python", "binary", "download"),
    "imagenet": ("auto",),
    "folder": ("auto",),
}
STREAMED_DATASETS = ("imagenet",)  # read from disk batch by batch with torchvision's transforms, not held in memory
IN_MEMORY_DATASETS = ("mnist", "fashion_mnist", "cifar10", "cifar100")  # always tensors in memory: no workers
# Keys for a folder of one's own images (data.dataset: folder, see respkd.data.folder); other datasets refuse them.
FOLDER_KEYS = ("image_size", "channels", "test_fraction", "split_seed", "mean", "std", "in_memory")


class DataConfig(Section):
    dataset: Literal["mnist", "fashion_mnist", "cifar10", "cifar100", "imagenet", "folder"] = "mnist"
    root: PathText = "data"  # where the checksummed cache lives
    # MNIST: a folder of IDX or CSV files; CIFAR: its binary or Python release; ImageNet: the folder holding train/
    # and val/ class folders (required); folder: <class>/* images, or train/<class>/* and val/ (or test/)
    # <class>/* (required). None: the cache or offline copy, else torchvision's download.
    path: PathText | None = None
    source: Literal["auto", "idx", "csv", "python", "binary", "download"] = "auto"
    # Standardise inputs with the dataset's mean/std; false feeds raw pixels / 255 in [0, 1] (the paper's MLPs).
    normalize: bool = True
    jitter: int = Field(0, ge=0, le=8)  # random translation of training inputs by up to this many pixels
    # Cycle through this many fixed jitter draws (epoch e uses view e mod V) instead of a new draw every epoch:
    # what lets kd.cache store the teacher's outputs for every view the student will see.
    jitter_views: int | None = Field(None, ge=1, le=1000)
    # Mirror training inputs left-right at random (each example with probability 1/2). With jitter: 4 it is CIFAR's
    # standard augmentation (RandomCrop(32, padding=4) + RandomHorizontalFlip).
    flip: bool = False
    # Processes decoding image files (imagenet, folder); None: min(8, the cores this process may use). The in-memory
    # datasets (mnist, fashion_mnist, cifar*) decode nothing: for them it is recorded as None whatever was given.
    workers: int | None = Field(None, ge=0, le=MAX_WORKERS)
    # In-memory datasets: keep the images, labels and teacher cache on the training device, so a step copies nothing
    # from the host (true), or build each batch in host memory and copy it (false); null: on CUDA when they fit in
    # half of its memory, on the CPU false (see respkd.data.residency). Both give bitwise the same batches.
    device_resident: bool | None = None
    train_limit: int | None = Field(None, ge=1, le=MAX_COUNT)  # keep only the first N training examples (quick runs)
    test_limit: int | None = Field(None, ge=1, le=MAX_COUNT)  # evaluate on the first N test examples only
    # A validation split held out of the training set (stratified by class, seeded by val_seed) BEFORE the transfer
    # filter, so every run with the same val_size/val_seed holds out the same examples whatever its seed or transfer
    # set. Used to choose things like bias shifts (respkd adjust-bias --search), never the test set.
    val_size: int = Field(0, ge=0, le=MAX_COUNT)  # below the training set's size: checked when it is read
    val_seed: Seed = 0
    transfer: TransferConfig = TransferConfig()
    # ---- data.dataset: folder only (respkd.data.folder)
    # Every image is resized to this (one number: a square; or [height, width]): scaled to cover it, centre-cropped.
    image_size: int | list[int] | None = None
    channels: Literal[1, 3] | None = None  # None: 1 if every image is grey, else 3 (grey repeated); streamed: 3
    # A flat <class>/* tree is split into train and test, stratified by class: this share of each class is the test
    # set (None: 0.2), drawn with split_seed (None: 0). A train/ + val/ (or test/) tree is used as it is.
    test_fraction: float | None = Field(None, gt=0, lt=1)
    split_seed: Seed | None = None
    # Per-channel normalisation of pixels / 255; None: computed from the training images (and recorded).
    mean: list[Annotated[float, Field(ge=0, le=1)]] | None = Field(None, min_length=1, max_length=3)
    std: list[Annotated[float, Field(le=1)]] | None = Field(None, min_length=1, max_length=3)  # > 0: checked below
    # Decode the images once into uint8 tensors (cached under root): true, false (stream them with workers), or
    # auto: in memory when they fit in respkd.data.folder.IN_MEMORY_BYTES (2 GiB) decoded.
    in_memory: Literal["auto"] | bool = "auto"

    @model_validator(mode="after")
    def _fits_dataset(self) -> "DataConfig":
        if self.source not in DATA_SOURCES[self.dataset]:
            raise ValueError(f"'source' {self.source} does not apply to {self.dataset}: choose "
                             f"{', '.join(DATA_SOURCES[self.dataset])}")
        if self.dataset in STREAMED_DATASETS or (self.dataset == "folder" and self.in_memory is False):
            # Its augmentation is torchvision's reference recipe (or none), and it is never held in memory to be split.
            given = [k for k in ("jitter", "jitter_views", "val_size", "device_resident") if getattr(self, k)]
            given += ["flip"] if self.flip and self.dataset != "folder" else []
            if self.transfer.active:
                given.append("transfer")
            if given and self.dataset == "folder":
                raise ValueError(f"'{given[0]}' needs the images in memory, but 'in_memory' is false (they are "
                                 "streamed from the files)")
            if given:
                raise ValueError(f"'{given[0]}' is for in-memory datasets; {self.dataset} is streamed with "
                                 "torchvision's reference augmentation (RandomResizedCrop + flip)")
        return self

    @field_validator("channels", mode="before")
    @classmethod
    def _channels_not_bool(cls, value: Any) -> Any:
        if isinstance(value, bool):  # Literal[1, 3] would take True as 1
            raise ValueError("Input should be 1 or 3")
        return value

    @model_validator(mode="after")
    def _folder_keys(self) -> "DataConfig":
        defaults = {"in_memory": "auto"}
        given = [k for k in FOLDER_KEYS if getattr(self, k) != defaults.get(k)]
        if self.dataset != "folder":
            if given:
                raise ValueError(f"'{given[0]}' is for 'dataset: folder' (your own images), not {self.dataset}")
            return self
        if self.path is None:
            raise ValueError("'dataset: folder' needs 'path': a folder holding <class>/* images, or train/<class>/* "
                             "and val/<class>/*")
        if self.image_size is None:
            raise ValueError("'dataset: folder' needs 'image_size' (e.g. 64, or [48, 64] as [height, width]): every "
                             "image is resized to it")
        sizes = [self.image_size] if isinstance(self.image_size, int) else self.image_size
        if isinstance(self.image_size, list) and len(self.image_size) != 2:
            raise ValueError("'image_size' is one number or [height, width]")
        if any(not 1 <= v <= 4096 for v in sizes):
            raise ValueError("'image_size' must be from 1 to 4096")
        if (self.mean is None) != (self.std is None):
            raise ValueError("give 'mean' and 'std' together")
        if self.mean is not None:
            if len(self.mean) != len(self.std) or len(self.mean) not in (1, 3):
                raise ValueError(f"'mean' and 'std' need 1 or 3 values each, got {len(self.mean)} and {len(self.std)}")
            if any(s <= 0 for s in self.std):
                raise ValueError("'std' values must be > 0")
            if self.channels is not None and len(self.mean) != self.channels:
                raise ValueError(f"'mean' has {len(self.mean)} values but 'channels' is {self.channels}")
        return self

    @model_validator(mode="before")
    @classmethod
    def _no_workers_in_memory(cls, data: Any) -> Any:
        """An in-memory dataset starts no worker: a valid ``workers`` is recorded as None, so that configs recorded
        with the 8 that older respkd defaulted to still match today's (respkd.provenance compares them)."""
        if (isinstance(data, dict) and data.get("dataset", "mnist") in IN_MEMORY_DATASETS
                and type(data.get("workers")) is int and 0 <= data["workers"] <= MAX_WORKERS):
            return {**data, "workers": None}
        return data

    @property
    def image_hw(self) -> tuple[int, int] | None:
        """``image_size`` as (height, width)."""
        if self.image_size is None:
            return None
        return (self.image_size, self.image_size) if isinstance(self.image_size, int) else tuple(self.image_size)


class ModelConfig(BaseModel):
    """``name`` plus the model's own options, which its factory checks (an unknown option is an error)."""

    model_config = ConfigDict(extra="allow", strict=True, frozen=True)
    name: str

    @model_validator(mode="after")
    def _finite_options(self) -> "ModelConfig":
        def finite(value: Any) -> bool:
            if isinstance(value, float):
                return math.isfinite(value)
            return all(map(finite, value)) if isinstance(value, list) else True

        for key, value in self.options().items():
            if not finite(value):
                raise ValueError(f"option '{key}' must be a finite number, got {value}")
        return self

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    @property
    def pretrained(self) -> bool:
        """Whether its library loads pretrained weights: timm's ``pretrained: true``, torchvision's ``weights: NAME``."""
        options = self.options()
        return options.get("pretrained") is True or options.get("weights") is not None


COMBINE_RULES = ("mean_probs", "mean_logits")


class TeacherInputConfig(Section):
    """The inputs a teacher expects when they differ from the student's batches (see :mod:`respkd.adapter`).

    ``mean``/``std``: the teacher's per-channel normalisation of ``pixels / 255`` (three values for an RGB teacher
    of a grey student: the grey channel is repeated); ``size``: its input resolution, one number for a square or
    ``[height, width]``. What is left out stays as the student's.
    """

    mean: list[Annotated[float, Field(ge=0, le=1)]] | None = Field(None, min_length=1)  # of pixels / 255
    std: list[Annotated[float, Field(le=1)]] | None = Field(None, min_length=1)  # > 0: _consistent says it
    size: int | list[int] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> "TeacherInputConfig":
        if (self.mean is None) != (self.std is None):
            raise ValueError("give 'mean' and 'std' together")
        if self.mean is not None and len(self.mean) != len(self.std):
            raise ValueError(f"'mean' has {len(self.mean)} values but 'std' has {len(self.std)}")
        if self.std is not None and any(s <= 0 for s in self.std):
            raise ValueError("'std' values must be > 0")
        sizes = [self.size] if isinstance(self.size, int) else self.size or []
        if isinstance(self.size, list) and len(self.size) != 2:
            raise ValueError("'size' is one number or [height, width]")
        if any(not 1 <= v <= 4096 for v in sizes):
            raise ValueError("'size' must be from 1 to 4096")
        return self


class TeacherConfig(Section):
    """The teacher: a checkpoint file or an earlier run's name, or an ensemble of several (``checkpoints`` / ``runs``),
    or weights from elsewhere: ``model`` (an architecture, as the student's ``model``) plus ``weights`` (a state dict
    file: safetensors, or a torchvision/timm ``.pth``; see :func:`respkd.checkpoint.load_weights`), or ``model``
    alone with its library's pretrained weights (``pretrained: true`` for ``timm.*``, ``weights: IMAGENET1K_V1`` for
    ``torchvision.*``).

    An ensemble's members are combined by ``combine`` (see :mod:`respkd.ensemble`): ``mean_probs`` (default, the
    paper's rule) averages the members' probabilities at the distillation temperature, ``mean_logits`` takes their
    geometric mean. ``input`` converts the student's batches into what the teacher expects (another normalisation
    or resolution, grey to RGB; see :mod:`respkd.adapter`).
    """

    checkpoint: PathText | None = None
    run: PathText | None = None
    checkpoints: list[PathText] | None = Field(None, min_length=2)
    runs: list[PathText] | None = Field(None, min_length=2)
    weights: PathText | None = None
    model: ModelConfig | None = None
    combine: Literal["mean_probs", "mean_logits"] | None = None
    input: TeacherInputConfig | None = None

    @model_validator(mode="after")
    def _one_source(self) -> "TeacherConfig":
        given = [k for k in ("checkpoint", "run", "checkpoints", "runs", "weights") if getattr(self, k) is not None]
        pretrained = self.model is not None and self.model.pretrained
        if self.model is not None and not pretrained and self.weights is None:
            raise ValueError("'model' needs its weights: a 'weights' file, or the library's own (timm: "
                             "'pretrained: true', torchvision: 'weights: IMAGENET1K_V1')")
        if self.weights is not None and self.model is None:
            raise ValueError("'weights' and 'model' go together: 'model' names the architecture of the 'weights' file "
                             "(a respkd checkpoint or run already records its own)")
        if len(given) + pretrained != 1:
            raise ValueError("give exactly one of 'checkpoint' or 'run' (one teacher), 'checkpoints' or 'runs' (an "
                             "ensemble), 'weights' with 'model' (a state dict for an architecture), or a 'model' "
                             "with its library's pretrained weights")
        members = self.checkpoints or self.runs
        if members is None and self.combine is not None:
            raise ValueError("'combine' is for an ensemble ('runs' or 'checkpoints'), not one teacher")
        if members is not None and len(set(members)) != len(members):
            raise ValueError(f"'{given[0]}' lists a member twice")
        return self

    @property
    def is_ensemble(self) -> bool:
        return self.checkpoints is not None or self.runs is not None

    @property
    def rule(self) -> str | None:
        """The ensemble's combination rule (None for one teacher)."""
        return (self.combine or "mean_probs") if self.is_ensemble else None


class DKDConfig(Section):
    """Decoupled KD's parameters (:func:`respkd.losses.dkd_loss`). The defaults are the authors' CIFAR-100 settings
    (mdistiller's ``CFG.DKD``: alpha 1, beta 8, warm-up 20 epochs; their T 4 is ``kd.temperature``)."""

    alpha: LossWeight = 1.0  # weight of TCKD
    beta: LossWeight = 8.0  # weight of NCKD
    # The DKD term is multiplied by min(epoch / warmup_epochs, 1), epochs counted from 1; 0: no warm-up.
    warmup_epochs: int = Field(20, ge=0, le=MAX_EPOCHS)


class DISTConfig(Section):
    """DIST's parameters (:func:`respkd.losses.dist_loss`); the defaults are the authors' (beta = gamma = 1)."""

    beta: LossWeight = 1.0  # weight of the inter-class relation (rows)
    gamma: LossWeight = 1.0  # weight of the intra-class relation (columns)


class KDConfig(Section):
    """How the student learns from the teacher (see :mod:`respkd.losses`):
    ``loss = hard_weight * CE + soft_weight * response term``.

    ``loss`` picks the response term: ``kd`` (Hinton's soft targets at ``temperature``), ``logit_mse`` (logit
    matching; no temperature), ``dkd`` (with the ``dkd`` parameters) or ``dist`` (with the ``dist`` parameters), each
    at ``temperature``; ``standardize`` standardizes both models' logits first (Sun et al. 2024). The parameters of the
    chosen loss are filled in with its defaults; giving those of another loss is an error.

    What a top-k cache (``cache_topk``) can serve: it stores the teacher's k largest probabilities at ``temperature``
    (the rest spread evenly), so it serves the losses that read only the teacher's softened probabilities at that T:
    ``kd``, ``dkd`` and ``dist``. Not ``logit_mse`` nor ``standardize``, which read the logits themselves.
    """

    temperature: Temperature
    soft_weight: LossWeight = 1.0
    hard_weight: LossWeight = 0.0
    loss: Literal["kd", "logit_mse", "dkd", "dist"] = "kd"
    standardize: bool = False
    dkd: DKDConfig | None = None
    dist: DISTConfig | None = None
    # The response to distil: the model's output by default, or the output of a named submodule.
    student_response: str | None = None
    teacher_response: str | None = None
    # Teacher outputs computed once before training and read back per batch (see respkd.teacher_cache), instead
    # of a teacher forward pass every step. cache_topk keeps only the k largest probabilities at T (FKD-style).
    cache: bool = False
    cache_topk: int | None = Field(None, ge=1, le=MAX_CLASSES)
    cache_dir: PathText = "data/teacher_cache"

    @model_validator(mode="before")
    @classmethod
    def _loss_defaults(cls, data: Any) -> Any:
        """The chosen loss's parameters with their defaults, so a run's recorded config names the values it used."""
        if isinstance(data, dict) and data.get("loss") in ("dkd", "dist") and data.get(data["loss"]) is None:
            data = {**data, data["loss"]: {}}
        return data

    @model_validator(mode="after")
    def _topk_needs_cache(self) -> "KDConfig":
        if self.cache_topk is not None and not self.cache:
            raise ValueError("'cache_topk' needs 'cache: true'")
        return self

    @model_validator(mode="after")
    def _some_weight(self) -> "KDConfig":
        if not self.soft_weight and not self.hard_weight:
            raise ValueError("'soft_weight' and 'hard_weight' are both 0: nothing to learn from")
        return self

    @model_validator(mode="after")
    def _loss_settings(self) -> "KDConfig":
        for key in ("dkd", "dist"):
            if getattr(self, key) is not None and self.loss != key:
                raise ValueError(f"'{key}' settings are for 'loss: {key}', but loss is {self.loss}")
        if self.cache_topk is not None and (self.loss == "logit_mse" or self.standardize):
            what = "'loss: logit_mse'" if self.loss == "logit_mse" else "'standardize: true'"
            raise ValueError(f"{what} reads the teacher's logits, but a top-k cache holds only its k largest "
                             "probabilities at T (it serves kd, dkd, dist): drop 'cache_topk' for a full cache")
        if self.loss == "dkd" and (self.student_response or self.teacher_response):
            raise ValueError("'loss: dkd' splits each response by its true class, so it distils the models' class "
                             "outputs: drop 'student_response' / 'teacher_response'")
        return self

    @property
    def loss_params(self) -> dict[str, float]:
        """The chosen loss's own parameters, by the names of its function in respkd.losses."""
        if self.loss == "dkd":
            return {"alpha": self.dkd.alpha, "beta": self.dkd.beta}
        if self.loss == "dist":
            return {"beta": self.dist.beta, "gamma": self.dist.gamma}
        return {}

    @property
    def warmup_epochs(self) -> int:
        """Epochs over which the response term warms up linearly (DKD's; 0 for the other losses)."""
        return self.dkd.warmup_epochs if self.loss == "dkd" else 0

    @property
    def reads_raw_logits(self) -> bool:
        """Whether the loss depends on the teacher's logits themselves, not only up to a constant per example
        (softmax, standardization and so every other loss ignore one): logit matching without standardization."""
        return self.loss == "logit_mse" and not self.standardize


class TrainConfig(Section):
    epochs: int = Field(..., ge=1, le=MAX_EPOCHS)
    batch_size: int = Field(128, ge=1, le=2**20)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(..., gt=0, le=100)  # peak learning rate (MoCo's linear probe uses 30)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = True
    weight_decay: float = Field(0.0, ge=0, le=1)
    schedule: Literal["constant", "cosine", "onecycle", "step"] = "onecycle"
    warmup_fraction: float = Field(0.3, ge=0, lt=1)  # onecycle: fraction of steps spent warming up
    # onecycle with SGD: cycle momentum inversely to the lr between 0.85 and 0.95 (torch's OneCycleLR default)
    # instead of holding it at `momentum`.
    cycle_momentum: bool = False
    milestones: list[Annotated[int, Field(ge=1, le=MAX_EPOCHS)]] = []  # step: epochs at which lr is multiplied by gamma
    gamma: float = Field(0.1, gt=0, le=1)
    # bf16 autocast (the KD loss stays in float32) roughly halves step time on GPUs and on CPUs with avx512_bf16 or
    # AMX, but is several times *slower* on CPUs without them; "auto" picks bf16 only where it is fast.
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    channels_last: bool = False
    # Run the student (and an online teacher) through torch.compile; where compile cannot work here, one log line
    # says why and the run trains without it (see respkd.compilation).
    compile: bool = False
    # Also write the training state (<run>/resume.safetensors, see respkd.resume) every this many optimizer steps,
    # besides every epoch end; 0: at epoch ends only. Changing it does not change the run, so a resume ignores it.
    checkpoint_every_steps: int = Field(0, ge=0, le=MAX_COUNT)
    # A step whose loss is NaN or infinite: stop the run there (keeping the last good training state), or skip the
    # step and go on, stopping after more than max_skipped_steps skips in the whole run (see respkd.guard).
    on_nonfinite: Literal["stop", "skip_step"] = "stop"
    max_skipped_steps: int = Field(10, ge=1, le=MAX_COUNT)
    # Also write each epoch's metrics as TensorBoard scalars into <run>/tensorboard/ (respkd.tensorboard; needs the
    # tensorboard extra). Changing it does not change the run, so a resume ignores it.
    tensorboard: bool = False
    # Under torchrun on GPUs: batch-norm statistics over the global batch (torch.nn.SyncBatchNorm) instead of each
    # process's share. Nothing changes in one process.
    sync_batchnorm: bool = False

    @model_validator(mode="after")
    def _milestones_once(self) -> "TrainConfig":
        if len(set(self.milestones)) != len(self.milestones):
            raise ValueError("'milestones' lists an epoch twice")
        return self


class InitConfig(Section):
    """Start the student from existing weights (fine-tuning, or training on): an earlier ``run``'s model or a
    ``checkpoint`` file (respkd, safetensors or a ``.pth`` state dict). With ``strict`` every key must fit the
    student exactly; without, what fits is loaded and the rest is logged and recorded in ``summary.json``."""

    run: PathText | None = None
    checkpoint: PathText | None = None
    strict: bool = True

    @model_validator(mode="after")
    def _one_source(self) -> "InitConfig":
        if (self.run is None) == (self.checkpoint is None):
            raise ValueError("give exactly one of 'run' or 'checkpoint'")
        return self


class RunConfig(Section):
    name: RunName
    seed: Seed = 0
    device: str = Field("cpu", max_length=32)  # "cpu", "cuda", "cuda:1", or "auto" (cuda when available)
    threads: int | None = Field(None, ge=1, le=MAX_THREADS)
    data: DataConfig = DataConfig()
    model: ModelConfig
    init: InitConfig | None = None
    teacher: TeacherConfig | None = None
    kd: KDConfig | None = None
    train: TrainConfig

    @model_validator(mode="after")
    def _teacher_and_kd_together(self) -> "RunConfig":
        if (self.teacher is None) != (self.kd is None):
            raise ValueError("'teacher' and 'kd' go together: give both to distil, neither to train with labels")
        return self

    @model_validator(mode="after")
    def _jitter_views_for_cache(self) -> "RunConfig":
        if self.data.jitter_views is not None and not self.data.jitter:
            raise ValueError("'data.jitter_views' needs 'data.jitter' > 0")
        if self.kd is not None and self.kd.cache and self.data.jitter and self.data.jitter_views is None:
            raise ValueError(
                "'kd.cache' with 'data.jitter' needs 'data.jitter_views' (the cache stores the teacher's outputs for a "
                "fixed number of jittered views; a new draw every epoch cannot be cached)"
            )
        streamed = self.data.dataset in STREAMED_DATASETS or self.data.in_memory is False
        if self.kd is not None and self.kd.cache and (self.data.flip or streamed):
            why = "'data.flip'" if self.data.flip else f"a streamed dataset ({self.data.dataset})"
            raise ValueError(f"'kd.cache' cannot be used with {why}: the cache stores fixed views, these inputs change "
                             "every epoch; distil from the online teacher (kd.cache: false)")
        return self

    @model_validator(mode="after")
    def _ensemble_response(self) -> "RunConfig":
        if self.teacher is not None and self.teacher.is_ensemble and self.kd is not None and self.kd.teacher_response:
            raise ValueError("'kd.teacher_response' cannot be used with an ensemble teacher (it distils the combined output)")
        return self

    @property
    def distills(self) -> bool:
        return self.teacher is not None


def load_config(path: str | Path, overrides: list[str] = ()) -> RunConfig:
    """Read a YAML config, apply ``key.sub=value`` overrides, validate. Errors are one-line RespkdErrors."""
    return validate_config(read_yaml_mapping(path, overrides), str(path))


MAX_YAML_BYTES = 4 * 2**20
MAX_YAML_DEPTH = 32
MAX_YAML_KEYS = 10_000
MAX_KEY_LENGTH = 128
MAX_YAML_VALUES = 50_000
MAX_INT_LENGTH = 100  # also keeps Python's int() below its 4300-digit limit, which raises a ValueError


class YAMLLimitError(yaml.MarkedYAMLError):
    """A YAML document beyond one of the reader's bounds; ``problem`` says which, ``problem_mark`` where."""

    def __init__(self, problem: str, mark: yaml.Mark | None) -> None:
        super().__init__(problem=problem, problem_mark=mark)


class PythonYAMLEvents(yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser):
    """PyYAML's own scanner and parser, for a PyYAML built without libyaml (5x slower on values, 100x on blank lines and comments)."""

    def __init__(self, stream: str) -> None:
        yaml.reader.Reader.__init__(self, stream)
        yaml.scanner.Scanner.__init__(self)
        yaml.parser.Parser.__init__(self)


# libyaml's scanner and parser (C, iterative) turn the text into events; only composing them into nodes, where the
# bounds are kept, and constructing the data run in Python.
YAML_EVENTS: type = yaml.cyaml.CParser if yaml.__with_libyaml__ else PythonYAMLEvents


class BoundedComposer(yaml.composer.Composer, yaml.constructor.SafeConstructor, yaml.resolver.Resolver):
    """PyYAML's composer and safe constructor (plain data, no tags that build objects) that refuse a key given twice
    in one mapping and bound what a document may make them build (the ``MAX_YAML_*`` limits above). The events
    come from a parser mixed in after it (:class:`ConfigLoader`).

    PyYAML silently keeps the last of two equal keys, so ``lr: 0.1`` further down a config would quietly win over
    the ``lr`` the reader sees first. Its composer recurses once per nesting level (a 10,000-deep ``[[[...`` ends in
    ``RecursionError``), and an alias is the same object again, so ``a: &a [x, x]; b: &b [*a, *a]; ...`` is tiny
    in memory until validation, ``repr`` or ``json.dumps`` walk it as the tree it stands for. Depth, keys and
    values are counted as the document is composed, so a bound is hit after reading at most that much of it.
    """

    def __init__(self, max_depth: int = MAX_YAML_DEPTH) -> None:
        yaml.composer.Composer.__init__(self)
        yaml.constructor.SafeConstructor.__init__(self)
        yaml.resolver.Resolver.__init__(self)
        self.max_depth = max_depth
        self.depth = 0
        self.keys = 0
        self.values = 0  # nodes composed so far, each alias counting as every node of what it names
        self.alias_values: dict[int, int] = {}  # id(anchored node) -> its node count, once composed

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        event = self.peek_event()
        is_key = isinstance(parent, yaml.MappingNode) and index is None
        if is_key:
            self.keys += 1
            if self.keys > MAX_YAML_KEYS:
                raise YAMLLimitError(f"more than {MAX_YAML_KEYS} keys", event.start_mark)
        if isinstance(event, yaml.AliasEvent):
            node = super().compose_node(parent, index)
            size = self.alias_values.get(id(node))
            if size is None:  # its collection is still being composed: the alias is inside what it names
                raise YAMLLimitError(f"alias '*{shorten(event.anchor)}' is inside the collection it names",
                                     event.start_mark)
            self._count(size, event.start_mark)
            return node
        if self.depth >= self.max_depth:
            raise YAMLLimitError(f"nested deeper than {MAX_YAML_DEPTH} levels", event.start_mark)
        first = self.values
        self._count(1, event.start_mark)
        self.depth += 1
        node = super().compose_node(parent, index)
        self.depth -= 1
        if event.anchor is not None:
            self.alias_values[id(node)] = self.values - first
        if is_key and isinstance(node, yaml.ScalarNode) and len(node.value) > MAX_KEY_LENGTH:
            raise YAMLLimitError(f"a key of {len(node.value)} characters (at most {MAX_KEY_LENGTH}): "
                                 f"'{shorten(node.value)}'", event.start_mark)
        return node

    def _count(self, values: int, mark: yaml.Mark) -> None:
        self.values += values
        if self.values > MAX_YAML_VALUES:
            raise YAMLLimitError(f"more than {MAX_YAML_VALUES} values (each alias counts as all it names)", mark)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base`: merged keys may be overridden; flattened below
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key: SafeLoader's own error says so
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key '{shorten(str(key))}'",
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)

    def construct_bounded_int(self, node: yaml.ScalarNode) -> int:
        if len(node.value) > MAX_INT_LENGTH:
            raise YAMLLimitError(f"an integer of {len(node.value)} characters (at most {MAX_INT_LENGTH})",
                                 node.start_mark)
        return self.construct_yaml_int(node)


BoundedComposer.add_constructor("tag:yaml.org,2002:int", BoundedComposer.construct_bounded_int)


class ConfigLoader(BoundedComposer, YAML_EVENTS):
    """The reader of configs, plans and ``--set`` values: :class:`BoundedComposer` on libyaml's events."""

    def __init__(self, stream: str, max_depth: int = MAX_YAML_DEPTH) -> None:
        YAML_EVENTS.__init__(self, stream)
        BoundedComposer.__init__(self, max_depth)


def load_yaml(text: str, max_depth: int = MAX_YAML_DEPTH, loader: type = ConfigLoader) -> Any:
    """Parse YAML text as plain data within the reader's bounds (see :class:`ConfigLoader`); ``max_depth`` is less
    for a value that sits below some keys already. Raises ``yaml.YAMLError`` (``YAMLLimitError`` for a bound)."""
    loader = loader(text, max_depth)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def read_yaml_mapping(path: str | Path, overrides: list[str] = (), what: str = "config") -> dict[str, Any]:
    """A YAML file's top-level mapping with ``key.sub=value`` overrides applied (not validated: the caller's model
    does that). ``what`` names the file in messages. Errors are one-line RespkdErrors."""
    path = Path(path)
    too_big = f"{what} {path}: larger than {MAX_YAML_BYTES // 2**20} MiB, the most a {what} may hold"
    try:
        if path.stat().st_size > MAX_YAML_BYTES:
            raise RespkdError(too_big)
        with path.open("rb") as file:
            data = file.read(MAX_YAML_BYTES + 1)  # a FIFO or /dev/zero reports no size: read no more than the limit
        if len(data) > MAX_YAML_BYTES:
            raise RespkdError(too_big)
        raw = load_yaml(data.decode("utf-8"))
    except FileNotFoundError:
        raise RespkdError(f"{what} {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as err:
        raise RespkdError(f"{what} {path}: cannot read ({err})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = " ".join(str(getattr(err, "problem", None) or err).split())
        if isinstance(err, YAMLLimitError):
            raise RespkdError(f"{what} {path}:{where}: {problem}") from None
        raise RespkdError(f"{what} {path}:{where} invalid YAML ({problem})") from None
    if not isinstance(raw, dict):
        raise RespkdError(f"{what} {path}: expected a mapping of keys to values at the top level")
    for override in overrides:
        apply_override(raw, override)
    return raw


def apply_override(raw: dict[str, Any], override: str) -> None:
    """Set one dotted key from ``key.sub=value``; the value is parsed as YAML (``3``, ``0.1``, ``[800, 800]``) within
    the reader's bounds, counting the key's own levels."""
    key, sep, text = override.partition("=")
    quoted = f"override '{shorten(override)}'"
    if not sep or not key:
        raise RespkdError(f"{quoted}: expected KEY=VALUE, e.g. train.epochs=3")
    *parents, leaf = key.split(".")
    if len(parents) + 1 >= MAX_YAML_DEPTH:
        raise RespkdError(f"{quoted}: nested deeper than {MAX_YAML_DEPTH} levels")
    if longest := max((p for p in (*parents, leaf) if len(p) > MAX_KEY_LENGTH), key=len, default=None):
        raise RespkdError(f"{quoted}: a key of {len(longest)} characters (at most {MAX_KEY_LENGTH})")
    if len(text) > MAX_YAML_BYTES:
        raise RespkdError(f"{quoted}: a value larger than {MAX_YAML_BYTES // 2**20} MiB")
    try:
        value = load_yaml(text, max_depth=MAX_YAML_DEPTH - len(parents) - 1)
    except YAMLLimitError as err:
        raise RespkdError(f"{quoted}: {err.problem}") from None
    except yaml.YAMLError as err:
        problem = " ".join(str(getattr(err, "problem", None) or err).split())
        raise RespkdError(f"{quoted}: value is not valid YAML ({problem})") from None
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise RespkdError(f"{quoted}: '{part}' is not a section")
    node[leaf] = value


def validate_config(raw: dict[str, Any], source: str = "config") -> RunConfig:
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as err:
        raise RespkdError(f"{source}: {format_validation_error(err)}") from None


MAX_PROBLEMS = 5  # an error line names this many problems, then how many more there are


def format_validation_error(err: ValidationError | list[dict], root: type[BaseModel] | None = RunConfig) -> str:
    """The first problems on one line, each naming its key; misspelt keys get a suggestion from ``root``'s fields.

    Keys and values are quoted shortened (see :func:`respkd.errors.shorten`), and only the problems shown are
    looked up for a suggestion, so a file of 10,000 unknown keys costs five lookups."""
    errors = err.errors() if isinstance(err, ValidationError) else err
    problems = []
    for e in errors[:MAX_PROBLEMS]:
        loc = dotted(e["loc"])
        if e["type"] == "extra_forbidden":
            msg = f"unknown key '{loc}'" + (key_suggestion(e["loc"], root) if root is not None else "")
        elif e["type"] == "missing":
            msg = f"missing key '{loc}'"
        else:
            given = e.get("input")
            shown = "" if isinstance(given, (dict, list)) else f" (got {quote(given)})"
            msg = f"'{loc}': {e['msg'].removeprefix('Value error, ')}{shown}" if loc else e["msg"].removeprefix("Value error, ")
        problems.append(msg)
    return join_problems(problems, len(errors))


def dotted(loc: tuple) -> str:
    """A validation error's location as the dotted key a config spells, each part shortened."""
    return ".".join(shorten(str(p)) for p in loc)


def join_problems(problems: list[str], total: int) -> str:
    """``problems`` on one line, followed by how many of ``total`` were left out."""
    more = f"; and {total - len(problems)} more" if total > len(problems) else ""
    return "; ".join(problems) + more


def _submodel(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation such as ``X | None`` or ``list[X]``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        if (sub := _submodel(arg)) is not None:
            return sub
    return None


def key_suggestion(loc: tuple, root: type[BaseModel] = RunConfig) -> str:
    model: type[BaseModel] | None = root
    for part in loc[:-1]:
        if isinstance(part, int):  # a list index: the item model was already picked from the list's annotation
            continue
        field = model.model_fields.get(str(part))
        model = _submodel(getattr(field, "annotation", None))
        if model is None:
            return ""
    close = closest_name(str(loc[-1]), list(model.model_fields))
    return f" (did you mean '{close}'?)" if close else ""


def config_to_dict(cfg: RunConfig) -> dict[str, Any]:
    return cfg.model_dump(mode="json", exclude_none=False)


def with_seed(cfg: RunConfig, seed: int) -> RunConfig:
    """The same experiment with another seed, named ``<name>-seed<k>``: one member of a seed ensemble."""
    return validate_config({**config_to_dict(cfg), "seed": seed, "name": f"{cfg.name}-seed{seed}"},
                           f"{cfg.name} with seed {seed}")


def parse_list(text: str, what: str, kind: type = int, unique: bool = True) -> list:
    """``"0,1,2"`` -> ``[0, 1, 2]`` (``kind`` int or float); a user error names ``what``."""
    noun = "integers" if kind is int else "finite numbers"
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise RespkdError(f"{what}: expected comma-separated {noun}, got '{text}'") from None
    if not all(map(math.isfinite, values)):  # float('nan') and float('inf') parse, but no option wants them
        raise RespkdError(f"{what}: expected comma-separated {noun}, got '{text}'")
    if not values:
        raise RespkdError(f"{what}: expected at least one value, got '{text}'")
    if unique and len(set(values)) != len(values):
        raise RespkdError(f"{what}: '{text}' repeats a value")
    return values
