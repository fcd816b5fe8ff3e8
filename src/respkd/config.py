"""Experiment configs: YAML files that are plain data, validated with types.

A config never imports or executes code: it is read with ``yaml.safe_load`` and checked by pydantic models in
strict mode, so a misspelt key (``lr_rate``) or a wrong type (``epochs: "ten"``) is an error that names the key,
before anything runs or is written. Single keys can be overridden from the command line: ``--set train.epochs=3``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from respkd.errors import RespkdError, closest_name


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class DataConfig(Section):
    dataset: Literal["mnist", "fashion_mnist"] = "mnist"
    root: str = "data"  # where the checksummed cache lives
    path: str | None = None  # a folder of IDX or CSV files; None: the offline copy, else torchvision's download
    source: Literal["auto", "idx", "csv", "download"] = "auto"
    # Standardise inputs with the dataset's mean/std; false feeds raw pixels / 255 in [0, 1] (the paper's MLPs).
    normalize: bool = True
    jitter: int = Field(0, ge=0, le=8)  # random translation of training inputs by up to this many pixels
    # Cycle through this many fixed jitter draws (epoch e uses view e mod V) instead of a new draw every epoch:
    # what lets kd.cache store the teacher's outputs for every view the student will see.
    jitter_views: int | None = Field(None, ge=1)
    train_limit: int | None = Field(None, ge=1)  # keep only the first N training examples (quick runs)
    test_limit: int | None = Field(None, ge=1)  # evaluate on the first N test examples only


class ModelConfig(BaseModel):
    """``name`` plus the model's own options, which its factory checks (an unknown option is an error)."""

    model_config = ConfigDict(extra="allow", strict=True, frozen=True)
    name: str

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class TeacherConfig(Section):
    """The teacher: a checkpoint file, or the name of an earlier run whose ``model.safetensors`` is used."""

    checkpoint: str | None = None
    run: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> "TeacherConfig":
        if (self.checkpoint is None) == (self.run is None):
            raise ValueError("give exactly one of 'checkpoint' or 'run'")
        return self


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


class RunConfig(Section):
    name: str = Field(..., pattern=r"^[A-Za-z0-9_.-]+$")
    seed: int = 0
    device: str = "cpu"  # "cpu", "cuda", "cuda:1", or "auto" (cuda when available)
    threads: int | None = Field(None, ge=1)
    data: DataConfig = DataConfig()
    model: ModelConfig
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
        return self

    @property
    def distills(self) -> bool:
        return self.teacher is not None


def load_config(path: str | Path, overrides: list[str] = ()) -> RunConfig:
    """Read a YAML config, apply ``key.sub=value`` overrides, validate. Errors are one-line RespkdErrors."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise RespkdError(f"config {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as err:
        raise RespkdError(f"config {path}: cannot read ({err})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise RespkdError(f"config {path}:{where} invalid YAML ({getattr(err, 'problem', err)})") from None
    if not isinstance(raw, dict):
        raise RespkdError(f"config {path}: expected a mapping of keys to values at the top level")
    for override in overrides:
        apply_override(raw, override)
    return validate_config(raw, str(path))


def apply_override(raw: dict[str, Any], override: str) -> None:
    """Set one dotted key from ``key.sub=value``; the value is parsed as YAML (``3``, ``0.1``, ``[800, 800]``)."""
    key, sep, text = override.partition("=")
    if not sep or not key:
        raise RespkdError(f"override '{override}': expected KEY=VALUE, e.g. train.epochs=3")
    try:
        value = yaml.safe_load(text)
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


def format_validation_error(err: ValidationError) -> str:
    """All problems on one line, each naming its key; misspelt keys get a suggestion."""
    problems = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            msg = f"unknown key '{loc}'" + _suggestion(e["loc"])
        elif e["type"] == "missing":
            msg = f"missing key '{loc}'"
        else:
            given = e.get("input")
            shown = "" if isinstance(given, (dict, list)) else f" (got {given!r})"
            msg = f"'{loc}': {e['msg'].removeprefix('Value error, ')}{shown}" if loc else e["msg"].removeprefix("Value error, ")
        problems.append(msg)
    return "; ".join(problems)


def _suggestion(loc: tuple) -> str:
    model: type[BaseModel] = RunConfig
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        candidates = [a for a in getattr(annotation, "__args__", (annotation,)) if isinstance(a, type)]
        sub = next((a for a in candidates if issubclass(a, BaseModel)), None)
        if sub is None:
            return ""
        model = sub
    close = closest_name(str(loc[-1]), list(model.model_fields))
    return f" (did you mean '{close}'?)" if close else ""


def config_to_dict(cfg: RunConfig) -> dict[str, Any]:
    return cfg.model_dump(mode="json", exclude_none=False)
