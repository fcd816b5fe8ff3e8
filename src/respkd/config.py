"""Experiment configs: YAML files that are plain data, validated with types.

A config never imports or executes code: it is read with a ``yaml.SafeLoader`` (that also refuses a key given twice)
and checked by pydantic models in strict mode, so a misspelt key (``lr_rate``) or a wrong type (``epochs: "ten"``) is
an error that names the key, before anything runs or is written. Single keys can be overridden from the command line: ``--set train.epochs=3``.
"""

from __future__ import annotations

from pathlib import Path
import math
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from respkd.errors import RespkdError, closest_name


class Section(BaseModel):
    # allow_inf_nan=False: an `lr: .inf` or `temperature: .nan` passes every range check but ruins the run
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


# A run's name is a folder under the runs root: letters, digits, '_', '.', '-', and at least one that is not a dot
# ('.' and '..' would be the runs root itself and its parent).
NAME_PATTERN = r"^[A-Za-z0-9_.-]*[A-Za-z0-9_-][A-Za-z0-9_.-]*$"
# numpy's global seed takes 0 .. 2**32 - 1; a wider range would fail deep inside a run
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]


class TransferConfig(Section):
    """Which training examples form the transfer set: the training set of this run, after the validation hold-out.

    The paper's experiments on what distillation transfers: a transfer set without one class (``drop_classes: [3]``),
    with only some classes (``keep_classes: [7, 8]``), or with a small share of the data (``fraction: 0.03``, taken
    per class in proportion to its count, seeded by ``seed``). The test set is never filtered.
    """

    drop_classes: list[int] = []
    keep_classes: list[int] | None = Field(None, min_length=1)
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
}
STREAMED_DATASETS = ("imagenet",)  # read from disk batch by batch with torchvision's transforms, not held in memory


class DataConfig(Section):
    dataset: Literal["mnist", "fashion_mnist", "cifar10", "cifar100", "imagenet"] = "mnist"
    root: str = "data"  # where the checksummed cache lives
    # MNIST: a folder of IDX or CSV files; CIFAR: its binary or Python release; ImageNet: the folder holding train/
    # and val/ class folders (required). None: the cache or offline copy, else torchvision's download.
    path: str | None = None
    source: Literal["auto", "idx", "csv", "python", "binary", "download"] = "auto"
    # Standardise inputs with the dataset's mean/std; false feeds raw pixels / 255 in [0, 1] (the paper's MLPs).
    normalize: bool = True
    jitter: int = Field(0, ge=0, le=8)  # random translation of training inputs by up to this many pixels
    # Cycle through this many fixed jitter draws (epoch e uses view e mod V) instead of a new draw every epoch:
    # what lets kd.cache store the teacher's outputs for every view the student will see.
    jitter_views: int | None = Field(None, ge=1)
    # Mirror training inputs left-right at random (each example with probability 1/2). With jitter: 4 it is CIFAR's
    # standard augmentation (RandomCrop(32, padding=4) + RandomHorizontalFlip).
    flip: bool = False
    # Processes decoding images for streamed datasets (imagenet); in-memory datasets need none and ignore it.
    workers: int = Field(8, ge=0)
    train_limit: int | None = Field(None, ge=1)  # keep only the first N training examples (quick runs)
    test_limit: int | None = Field(None, ge=1)  # evaluate on the first N test examples only
    # A validation split held out of the training set (stratified by class, seeded by val_seed) BEFORE the transfer
    # filter, so every run with the same val_size/val_seed holds out the same examples whatever its seed or transfer
    # set. Used to choose things like bias shifts (respkd adjust-bias --search), never the test set.
    val_size: int = Field(0, ge=0)
    val_seed: Seed = 0
    transfer: TransferConfig = TransferConfig()

    @model_validator(mode="after")
    def _fits_dataset(self) -> "DataConfig":
        if self.source not in DATA_SOURCES[self.dataset]:
            raise ValueError(f"'source' {self.source} does not apply to {self.dataset}: choose "
                             f"{', '.join(DATA_SOURCES[self.dataset])}")
        if self.dataset in STREAMED_DATASETS:
            # Its augmentation is torchvision's reference recipe, and it is never held in memory to be split.
            given = [k for k in ("jitter", "jitter_views", "flip", "val_size") if getattr(self, k)]
            if self.transfer.active:
                given.append("transfer")
            if given:
                raise ValueError(f"'{given[0]}' is for in-memory datasets; {self.dataset} is streamed with "
                                 "torchvision's reference augmentation (RandomResizedCrop + flip)")
        return self


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


COMBINE_RULES = ("mean_probs", "mean_logits")


class TeacherInputConfig(Section):
    """The inputs a teacher expects when they differ from the student's batches (see :mod:`respkd.adapter`).

    ``mean``/``std``: the teacher's per-channel normalisation of ``pixels / 255`` (three values for an RGB teacher
    of a grey student: the grey channel is repeated); ``size``: its input resolution, one number for a square or
    ``[height, width]``. What is left out stays as the student's.
    """

    mean: list[float] | None = Field(None, min_length=1)
    std: list[float] | None = Field(None, min_length=1)
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
        if any(v < 1 for v in sizes):
            raise ValueError("'size' must be at least 1")
        return self


class TeacherConfig(Section):
    """The teacher: a checkpoint file or an earlier run's name, or an ensemble of several (``checkpoints`` / ``runs``),
    or weights from elsewhere: ``model`` (an architecture, as the student's ``model``) plus ``weights`` (a state dict
    file: safetensors, or a torchvision/timm ``.pth``; see :func:`respkd.checkpoint.load_weights`).

    An ensemble's members are combined by ``combine`` (see :mod:`respkd.ensemble`): ``mean_probs`` (default, the
    paper's rule) averages the members' probabilities at the distillation temperature, ``mean_logits`` takes their
    geometric mean. ``input`` converts the student's batches into what the teacher expects (another normalisation
    or resolution, grey to RGB; see :mod:`respkd.adapter`).
    """

    checkpoint: str | None = None
    run: str | None = None
    checkpoints: list[str] | None = Field(None, min_length=2)
    runs: list[str] | None = Field(None, min_length=2)
    weights: str | None = None
    model: ModelConfig | None = None
    combine: Literal["mean_probs", "mean_logits"] | None = None
    input: TeacherInputConfig | None = None

    @model_validator(mode="after")
    def _one_source(self) -> "TeacherConfig":
        given = [k for k in ("checkpoint", "run", "checkpoints", "runs", "weights") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of 'checkpoint' or 'run' (one teacher), 'checkpoints' or 'runs' (an "
                             "ensemble), or 'weights' with 'model' (a state dict for an architecture)")
        if (self.weights is None) != (self.model is None):
            raise ValueError("'weights' and 'model' go together: 'model' names the architecture of the 'weights' file "
                             "(a respkd checkpoint or run already records its own)")
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


class KDConfig(Section):
    temperature: float = Field(..., gt=0)
    soft_weight: float = Field(1.0, ge=0)
    hard_weight: float = Field(0.0, ge=0)
    # The response to distil: the model's output by default, or the output of a named submodule.
    student_response: str | None = None
    teacher_response: str | None = None
    # Teacher outputs computed once before training and read back per batch (see respkd.teacher_cache), instead
    # of a teacher forward pass every step. cache_topk keeps only the k largest probabilities at T (FKD-style).
    cache: bool = False
    cache_topk: int | None = Field(None, ge=1)
    cache_dir: str = "data/teacher_cache"

    @model_validator(mode="after")
    def _topk_needs_cache(self) -> "KDConfig":
        if self.cache_topk is not None and not self.cache:
            raise ValueError("'cache_topk' needs 'cache: true'")
        return self


class TrainConfig(Section):
    epochs: int = Field(..., ge=1)
    batch_size: int = Field(128, ge=1)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(..., gt=0)  # peak learning rate
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = True
    weight_decay: float = Field(0.0, ge=0)
    schedule: Literal["constant", "cosine", "onecycle", "step"] = "onecycle"
    warmup_fraction: float = Field(0.3, ge=0, lt=1)  # onecycle: fraction of steps spent warming up
    # onecycle with SGD: cycle momentum inversely to the lr between 0.85 and 0.95 (torch's OneCycleLR default)
    # instead of holding it at `momentum`.
    cycle_momentum: bool = False
    milestones: list[int] = []  # step: epochs at which the lr is multiplied by gamma
    gamma: float = Field(0.1, gt=0)
    # bf16 autocast (the KD loss stays in float32) roughly halves step time on GPUs and on CPUs with avx512_bf16 or
    # AMX, but is several times *slower* on CPUs without them; "auto" picks bf16 only where it is fast.
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    channels_last: bool = False
    # Also write the training state (<run>/resume.safetensors, see respkd.resume) every this many optimizer steps,
    # besides every epoch end; 0: at epoch ends only. Changing it does not change the run, so a resume ignores it.
    checkpoint_every_steps: int = Field(0, ge=0)
    # Also write each epoch's metrics as TensorBoard scalars into <run>/tensorboard/ (respkd.tensorboard; needs the
    # tensorboard extra). Changing it does not change the run, so a resume ignores it.
    tensorboard: bool = False
    # Under torchrun on GPUs: batch-norm statistics over the global batch (torch.nn.SyncBatchNorm) instead of each
    # process's share. Nothing changes in one process.
    sync_batchnorm: bool = False


class InitConfig(Section):
    """Start the student from existing weights (fine-tuning, or training on): an earlier ``run``'s model or a
    ``checkpoint`` file (respkd, safetensors or a ``.pth`` state dict). With ``strict`` every key must fit the
    student exactly; without, what fits is loaded and the rest is logged and recorded in ``summary.json``."""

    run: str | None = None
    checkpoint: str | None = None
    strict: bool = True

    @model_validator(mode="after")
    def _one_source(self) -> "InitConfig":
        if (self.run is None) == (self.checkpoint is None):
            raise ValueError("give exactly one of 'run' or 'checkpoint'")
        return self


class RunConfig(Section):
    name: str = Field(..., pattern=NAME_PATTERN)
    seed: Seed = 0
    device: str = "cpu"  # "cpu", "cuda", "cuda:1", or "auto" (cuda when available)
    threads: int | None = Field(None, ge=1, le=4096)  # the bound keeps torch.set_num_threads from overflowing
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
        if self.kd is not None and self.kd.cache and (self.data.flip or self.data.dataset in STREAMED_DATASETS):
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


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` (plain data, no tags that build objects) that refuses a key given twice in one mapping.

    PyYAML silently keeps the last of two equal keys, so ``lr: 0.1`` further down a config would quietly win over
    the ``lr`` the reader sees first.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key: SafeLoader's own error says so
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key '{key}'", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def load_yaml(text: str) -> Any:
    """Parse YAML text as plain data (see :class:`UniqueKeyLoader`)."""
    return yaml.load(text, Loader=UniqueKeyLoader)


def read_yaml_mapping(path: str | Path, overrides: list[str] = (), what: str = "config") -> dict[str, Any]:
    """A YAML file's top-level mapping with ``key.sub=value`` overrides applied (not validated: the caller's model
    does that). ``what`` names the file in messages. Errors are one-line RespkdErrors."""
    path = Path(path)
    try:
        raw = load_yaml(path.read_text())
    except FileNotFoundError:
        raise RespkdError(f"{what} {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as err:
        raise RespkdError(f"{what} {path}: cannot read ({err})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = " ".join(str(getattr(err, "problem", None) or err).split())
        raise RespkdError(f"{what} {path}:{where} invalid YAML ({problem})") from None
    if not isinstance(raw, dict):
        raise RespkdError(f"{what} {path}: expected a mapping of keys to values at the top level")
    for override in overrides:
        apply_override(raw, override)
    return raw


def apply_override(raw: dict[str, Any], override: str) -> None:
    """Set one dotted key from ``key.sub=value``; the value is parsed as YAML (``3``, ``0.1``, ``[800, 800]``)."""
    key, sep, text = override.partition("=")
    if not sep or not key:
        raise RespkdError(f"override '{override}': expected KEY=VALUE, e.g. train.epochs=3")
    try:
        value = load_yaml(text)
    except yaml.YAMLError:
        raise RespkdError(f"override '{override}': value is not valid YAML") from None
    *parents, leaf = key.split(".")
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise RespkdError(f"override '{override}': '{part}' is not a section")
    node[leaf] = value


def validate_config(raw: dict[str, Any], source: str = "config") -> RunConfig:
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as err:
        raise RespkdError(f"{source}: {format_validation_error(err)}") from None


def format_validation_error(err: ValidationError | list[dict], root: type[BaseModel] | None = RunConfig) -> str:
    """All problems on one line, each naming its key; misspelt keys get a suggestion from ``root``'s fields."""
    problems = []
    for e in err.errors() if isinstance(err, ValidationError) else err:
        loc = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            msg = f"unknown key '{loc}'" + (key_suggestion(e["loc"], root) if root is not None else "")
        elif e["type"] == "missing":
            msg = f"missing key '{loc}'"
        else:
            given = e.get("input")
            shown = "" if isinstance(given, (dict, list)) else f" (got {given!r})"
            msg = f"'{loc}': {e['msg'].removeprefix('Value error, ')}{shown}" if loc else e["msg"].removeprefix("Value error, ")
        problems.append(msg)
    return "; ".join(problems)


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
