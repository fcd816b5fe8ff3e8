"""What every kind of plan stage has and does: each validates what it runs, runs itself, and reports its measures
and its section.

A stage is data (a pydantic model, extra keys refused). :meth:`StageBase.prepare` validates what it will run before
any stage runs and keeps it (the run configs, a sweep's cells, a specialists config); :meth:`StageBase.execute` runs
it, skipping what already exists from the same inputs (:mod:`respkd.provenance`); :meth:`StageBase.measures` reads
back the numbers its ``paper:`` may name, and :meth:`StageBase.section` its detail in the report. The kinds are one
module each (``*_stage.py``); :mod:`respkd.plan` lists them in ``STAGE_TYPES``, and nothing dispatches on the kind.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar

from pydantic import BaseModel, ConfigDict, PrivateAttr

from respkd.config import RunConfig

__all__ = ["Job", "Log", "StageBase", "needed_runs", "set_overrides"]

Log = Callable[[str], None]


def set_overrides(values: dict[str, Any]) -> list[str]:
    """A stage's ``set`` as ``--set`` overrides (``KEY=<JSON value>``)."""
    return [f"{k}={json.dumps(v)}" for k, v in values.items()]


def needed_runs(cfg: RunConfig) -> list[str]:
    """The earlier runs a config reads: its teacher(s) and the run its student starts from (``init.run``)."""
    t, init = cfg.teacher, cfg.init
    teachers = [] if t is None else [t.run] if t.run is not None else list(t.runs or [])
    return teachers + ([init.run] if init is not None and init.run is not None else [])


class StageBase(BaseModel):
    """What every stage has (``paper``: the published numbers by measure name; ``note``: shown in the report) and
    does; the defaults fit a stage that makes runs from configs."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)
    paper: dict[str, float] = {}
    note: str = ""

    MEASURES: ClassVar[tuple[str, ...]] = ()  # what it reports, by the names `paper:` may use
    HEADLINE: ClassVar[tuple[str, ...]] = ()  # listed in the report's paper table even without a paper number
    _configs: list[RunConfig] = PrivateAttr(default_factory=list)  # the runs it makes, once prepared

    def prepare(self, overrides: list[str]) -> None:
        """Validate what the stage runs (``overrides``: the plan's ``--set``), before any stage runs."""

    @property
    def configs(self) -> list[RunConfig]:
        return self._configs

    @property
    def outputs(self) -> list[str]:
        """The names the stage writes under the plan's root."""
        return [c.name for c in self._configs]

    @property
    def needs(self) -> list[str]:
        """The runs the stage reads, which an earlier stage makes or the root already holds."""
        return sorted({r for c in self._configs for r in needed_runs(c)})

    @property
    def label(self) -> str:
        return self.outputs[0]

    def measure_names(self) -> tuple[str, ...]:
        return self.MEASURES

    def shown_measures(self) -> list[str]:
        """The measures the report's paper table lists: the headline ones, then those with a paper number."""
        headline = list(self.HEADLINE)
        return headline + [m for m in self.paper if m not in headline]

    def check_inputs(self, made: dict[str, StageBase], where: str) -> None:
        """Refuse (one line starting with ``where``) inputs that the stages before this one (``made``: output name
        -> stage) cannot provide."""

    def table_runs(self) -> list[str]:
        """The runs the report's results table lists."""
        return []

    def execute(self, tag: str, root: Path, force: bool, log: Log) -> None:
        """Run the stage (``tag``: its place in the plan, prefixing its progress lines), skipping what already
        exists from the same inputs unless ``force``."""
        raise NotImplementedError

    def measures(self, root: Path) -> dict[str, float | None]:
        """The numbers the finished stage reports, by the names its ``paper:`` may use."""
        raise NotImplementedError

    def section(self, root: Path) -> list[str]:
        """The stage's detail in the report (markdown lines); none by default."""
        return []


@dataclass
class Job:
    """A stage validated against the plan: its place in it, and (through the stage) what it makes and reads."""

    index: int
    stage: StageBase

    @property
    def label(self) -> str:
        return self.stage.label

    @property
    def outputs(self) -> list[str]:
        return self.stage.outputs

    @property
    def needs(self) -> list[str]:
        return self.stage.needs

    @property
    def where(self) -> str:
        return f"plan stage {self.index} ({self.label})"
