"""A plan stage that trains or distils one config, or one run per seed (reported as their mean)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from respkd.config import PathText, Seed, load_config, with_seed
from respkd.plan.stage import StageBase, Unit, config_unit, set_overrides
from respkd.report import read_summary

__all__ = ["RunStage"]


class RunStage(StageBase):
    """Train or distil one config (or one run per seed)."""

    kind: Literal["run"] = "run"
    config: PathText
    set: dict[str, Any] = {}
    seeds: list[Seed] | None = Field(None, min_length=1)

    MEASURES: ClassVar[tuple[str, ...]] = ("test_errors", "test_error_pct")
    HEADLINE: ClassVar[tuple[str, ...]] = ("test_errors",)

    @model_validator(mode="after")
    def _unique_seeds(self) -> "RunStage":
        if self.seeds is not None and len(set(self.seeds)) != len(self.seeds):
            raise ValueError("'seeds' repeats a seed")
        return self

    def prepare(self, overrides: list[str]) -> None:
        cfg = load_config(self.config, set_overrides(self.set) + list(overrides))
        self._configs = [cfg] if self.seeds is None else [with_seed(cfg, k) for k in self.seeds]

    @property
    def label(self) -> str:
        if self.seeds is None:
            return self._configs[0].name
        return f"{self._configs[0].name.rsplit('-seed', 1)[0]} (seeds {', '.join(map(str, self.seeds))}; mean)"

    def table_runs(self) -> list[str]:
        return self.outputs

    def units(self, tag: str) -> list[Unit]:
        """One unit per run (per seed)."""
        n = len(self._configs)
        tags = [tag] if n == 1 else [f"{tag}[{k}/{n}]" for k in range(1, n + 1)]
        return [config_unit(cfg, t) for cfg, t in zip(self._configs, tags)]

    def measures(self, root: Path) -> dict[str, float | None]:
        ms = [read_summary(root / c.name)["metrics"] for c in self._configs]
        errors = sum(m["errors"] for m in ms) / len(ms)
        return {"test_errors": errors, "test_error_pct": 100.0 * errors / ms[0]["n"]}
