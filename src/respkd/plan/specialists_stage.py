"""A plan stage that trains a generalist's specialists, then evaluates them with it on the test set."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, PrivateAttr

from respkd.config import PathText
from respkd.plan.stage import Log, StageBase, Unit, set_overrides
from respkd.specialists.config import SpecialistsConfig, load_specialists_config
from respkd.specialists.results import eval_up_to_date, evaluate_specialists, markdown_section, read_eval
from respkd.specialists.subsets import check_libraries
from respkd.specialists.train import train_all

__all__ = ["SpecialistsStage"]


class SpecialistsStage(StageBase):
    """Train the specialists of a specialists config (``workers`` processes at a time), then evaluate them with the
    generalist on the test set (see :mod:`respkd.specialists`). Only the stage's own ``set`` applies: the plan's
    ``--set`` overrides are run-config keys."""

    kind: Literal["specialists"]
    config: PathText
    set: dict[str, Any] = {}
    workers: int = Field(1, ge=1, le=256)

    MEASURES: ClassVar[tuple[str, ...]] = ("generalist_top1", "combined_top1", "generalist_covered_top1",
                                           "combined_covered_top1")
    HEADLINE: ClassVar[tuple[str, ...]] = MEASURES
    _specialists: SpecialistsConfig | None = PrivateAttr(None)

    def prepare(self, overrides: list[str]) -> None:
        check_libraries()
        self._specialists = load_specialists_config(self.config, set_overrides(self.set))

    @property
    def outputs(self) -> list[str]:
        return [self._specialists.name]

    @property
    def needs(self) -> list[str]:
        g = self._specialists.generalist
        return [g.run] if g.run is not None else []

    def units(self, tag: str) -> list[Unit]:
        """One unit, exclusive: it trains its specialists in ``workers`` processes of its own, and only running it
        tells which are finished (that needs the generalist and the data)."""
        return [replace(unit, exclusive=True) for unit in super().units(tag)]

    def execute(self, tag: str, root: Path, force: bool, log: Log) -> None:
        cfg = self._specialists
        log(f"{tag} {cfg.name}: specialists of {cfg.generalist.run or cfg.generalist.checkpoint}, {self.workers} "
            "worker(s)")
        train_all(cfg, self.config, set_overrides(self.set), root, workers=self.workers, force=force, log=log)
        if force or not eval_up_to_date(cfg, root):
            evaluate_specialists(cfg, root)
        else:
            log(f"{tag} {cfg.name}: evaluation up to date, skipped")

    def measures(self, root: Path) -> dict[str, float | None]:
        r = read_eval(root / self._specialists.name)
        return {"generalist_top1": r["overall"]["generalist_top1"], "combined_top1": r["overall"]["combined_top1"],
                "generalist_covered_top1": r["covered"]["generalist_top1"],
                "combined_covered_top1": r["covered"]["combined_top1"]}

    def section(self, root: Path) -> list[str]:
        cfg = self._specialists
        return [f"### Specialists: {cfg.name}", "", markdown_section([read_eval(root / cfg.name)])]
