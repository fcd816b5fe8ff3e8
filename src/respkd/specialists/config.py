"""The specialists config: which generalist, how to find the subsets, how to train a specialist, how to combine.

Data only, validated like run configs (strict types, unknown keys are errors naming the key). The data a specialist
trains on, its normalisation and the validation split the subsets are found on are the generalist's own (read from
the config embedded in its checkpoint), so specialists and generalist always see the same examples the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, model_validator

from respkd.config import (MAX_CLASSES, LossWeight, ModelConfig, PathText, RunName, Section, Seed, Temperature,
                           TrainConfig, format_validation_error, read_yaml_mapping)
from respkd.errors import RespkdError

__all__ = [
    "SUBSET_RULES", "CombineConfig", "GeneralistRef", "SoftTargetsConfig", "SpecialistConfig", "SpecialistsConfig",
    "SubsetsConfig", "load_specialists_config", "validate_specialists_config",
]

SUBSET_RULES = ("correlation", "zero_diagonal", "covariance")


class GeneralistRef(Section):
    """The generalist: an earlier run's name under the same runs root, or a checkpoint path."""

    run: PathText | None = None
    checkpoint: PathText | None = None

    @model_validator(mode="after")
    def _one(self) -> "GeneralistRef":
        if (self.run is None) == (self.checkpoint is None):
            raise ValueError("give exactly one of 'run' or 'checkpoint'")
        return self


class SubsetsConfig(Section):
    """How the confusable subsets are found (see :mod:`respkd.specialists.subsets`).

    ``rule``: what K-means clusters, one column per class: ``correlation`` (default) of the generalist's predicted
    probabilities on the validation split, their ``covariance`` with the diagonal set to zero (``zero_diagonal``), or
    the raw ``covariance`` (the paper's). ``count`` clusters; a cluster larger than ``max_size`` is split in two
    until none is; ``partners`` adds to each subset the most-similar classes of each member (overlapping subsets,
    still at most ``max_size``); subsets smaller than ``min_size`` get no specialist.
    """

    rule: Literal["correlation", "zero_diagonal", "covariance"] = "correlation"
    count: int = Field(..., ge=1, le=MAX_CLASSES)
    max_size: int | None = Field(None, ge=1, le=MAX_CLASSES)
    min_size: int = Field(2, ge=1, le=MAX_CLASSES)
    partners: int = Field(0, ge=0, le=MAX_CLASSES)
    n_init: int = Field(10, ge=1, le=1000)  # K-means restarts (the best inertia wins)
    seed: Seed = 0

    @model_validator(mode="after")
    def _sizes(self) -> "SubsetsConfig":
        if self.max_size is not None and self.min_size > self.max_size:
            raise ValueError("'min_size' must not exceed 'max_size'")
        return self


class SoftTargetsConfig(Section):
    """Distil the generalist into the specialist (the paper's remedy for specialists overfitting their small data):
    the generalist's probabilities at T mapped to subset + dustbin (the dustbin gets the mass outside the subset)."""

    temperature: Temperature
    soft_weight: LossWeight = 1.0
    hard_weight: LossWeight = 1.0

    @model_validator(mode="after")
    def _some_weight(self) -> "SoftTargetsConfig":
        if not self.soft_weight and not self.hard_weight:
            raise ValueError("'soft_weight' and 'hard_weight' are both 0: nothing to learn from")
        return self


class SpecialistConfig(Section):
    """How each specialist is built and trained.

    ``model``: None (default) fine-tunes a copy of the generalist with its output layer resized to subset + dustbin;
    a model section (e.g. a wider ``cnn``) trains that net from scratch instead (more capacity than a copy).
    ``subset_fraction``: the share of each batch drawn from the subset; the rest is drawn from the other classes.
    ``jitter``: training translation in pixels (None: the generalist's ``data.jitter``).
    """

    model: ModelConfig | None = None
    subset_fraction: float = Field(0.5, gt=0, lt=1)
    jitter: int | None = Field(None, ge=0, le=8)
    soft_targets: SoftTargetsConfig | None = None
    train: TrainConfig


class CombineConfig(Section):
    """Inference (see :mod:`respkd.specialists.combine`): the generalist's ``top_n`` classes pick the active
    specialists; Adam on the logits of q for at most ``steps``, stopping once every gradient entry is below ``tol``."""

    top_n: int = Field(1, ge=1, le=MAX_CLASSES)
    steps: int = Field(500, ge=1, le=100_000)
    lr: float = Field(0.3, gt=0, le=100)
    tol: float = Field(1e-6, ge=0, le=1)


class SpecialistsConfig(Section):
    name: RunName
    seed: Seed = 0
    device: str = Field("cpu", max_length=32)
    threads: int | None = Field(None, ge=1, le=4096)
    generalist: GeneralistRef
    subsets: SubsetsConfig
    specialist: SpecialistConfig
    combine: CombineConfig = CombineConfig()


def validate_specialists_config(raw: dict, source: str = "config") -> SpecialistsConfig:
    try:
        return SpecialistsConfig.model_validate(raw)
    except ValidationError as err:
        raise RespkdError(f"{source}: {format_validation_error(err, root=SpecialistsConfig)}") from None


def load_specialists_config(path: str | Path, overrides: list[str] = ()) -> SpecialistsConfig:
    """Read, override (``--set specialist.train.epochs=2``) and validate; errors are one line."""
    return validate_specialists_config(read_yaml_mapping(path, overrides), str(path))
