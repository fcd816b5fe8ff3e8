"""What every kind of plan stage has and does: each validates what it runs, runs itself, and reports its measures
and its section.

A stage is data (a pydantic model, extra keys refused). :meth:`StageBase.prepare` validates what it will run before
any stage runs and keeps it (the run configs, a sweep's cells, a specialists config); :meth:`StageBase.units` splits
it into the parts that can run by themselves (:class:`Unit`: one run, one sweep cell, a sweep's table, a whole bias,
ensemble or specialists stage), each skipping what already exists from the same inputs (:mod:`respkd.provenance`);
:meth:`StageBase.measures` reads back the numbers its ``paper:`` may name, and :meth:`StageBase.section` its detail
in the report. The kinds are one module each (``*_stage.py``); :mod:`respkd.plan` lists them in ``STAGE_TYPES``, and
nothing dispatches on the kind.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, ClassVar

from pydantic import BaseModel, ConfigDict, PrivateAttr

from respkd.config import RunConfig
from respkd.experiment import run_many
from respkd.rundir import is_finished

__all__ = ["Job", "Log", "StageBase", "Unit", "config_unit", "needed_runs", "set_overrides"]

Log = Callable[[str], None]


def set_overrides(values: dict[str, Any]) -> list[str]:
    """A stage's ``set`` as ``--set`` overrides (``KEY=<JSON value>``)."""
    return [f"{k}={json.dumps(v)}" for k, v in values.items()]


def needed_runs(cfg: RunConfig) -> list[str]:
    """The earlier runs a config reads: its teacher(s) and the run its student starts from (``init.run``)."""
    t, init = cfg.teacher, cfg.init
    teachers = [] if t is None else [t.run] if t.run is not None else list(t.runs or [])
    return teachers + ([init.run] if init is not None and init.run is not None else [])


@dataclass
class Unit:
    """A part of a stage that runs by itself: in order, in this process, or beside others in a process of its own
    (``respkd reproduce --jobs``, see :mod:`respkd.plan.scheduler`).

    ``execute(root, force, log)`` runs it (skipping it when finished, unless ``force``); ``finished(root)`` tells,
    without running anything, whether its outputs already exist from the same inputs (the check ``execute`` makes;
    None where only running it can tell). ``tag`` prefixes its progress lines, as in a plan run in order.
    ``exclusive``: it starts processes of its own, so nothing runs beside it; ``light``: quick bookkeeping that the
    scheduling process does itself.
    """

    label: str
    tag: str
    outputs: list[str]
    needs: list[str]
    execute: Callable[[Path, bool, Log], None]
    finished: Callable[[Path], bool | None] = field(default=lambda root: None)
    exclusive: bool = False
    light: bool = False


def config_unit(cfg: RunConfig, tag: str) -> Unit:
    """The unit that trains or distils ``cfg``: skipped when finished from this very config, resumed when interrupted,
    run again when finished from another (see :func:`respkd.experiment.run_many`)."""

    def execute(root: Path, force: bool, log: Log) -> None:
        run_many([cfg], root, force=force, replace_changed=True, log=log, tags=[tag])

    return Unit(cfg.name, tag, [cfg.name], needed_runs(cfg), execute, lambda root: is_finished(cfg, root))


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

    def units(self, tag: str) -> list[Unit]:
        """The parts of the stage that run by themselves, in order (``tag``: the stage's place in the plan); by
        default one, the whole stage (:meth:`execute`, skipped when :meth:`finished`)."""
        return [Unit(self.label, tag, self.outputs, self.needs, partial(self.execute, tag), self.finished)]

    def execute(self, tag: str, root: Path, force: bool, log: Log) -> None:
        """Run the whole stage (``tag`` prefixes its progress lines), skipping what already exists from the same
        inputs unless ``force``; a stage of several units has none (see :meth:`units`)."""
        raise NotImplementedError

    def finished(self, root: Path) -> bool | None:
        """Whether the stage's outputs already exist from its current inputs, read without running anything (None:
        only running it can tell)."""
        return None

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
