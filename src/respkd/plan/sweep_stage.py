"""A plan stage that distils one config at every temperature (and hidden size), with its table and plot."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, PrivateAttr

from respkd.config import PathText, RunConfig, Temperature, load_config
from respkd.files import read_json
from respkd.models import MAX_WIDTH
from respkd.plan.stage import Log, StageBase, Unit, config_unit, set_overrides
from respkd.report import read_summary
from respkd.sweep import (Cell, check_plotting, sweep_cells, sweep_folder, sweep_table, width_label,
                          write_sweep_outputs)

__all__ = ["SweepStage"]


class SweepStage(StageBase):
    """One distillation config at every temperature (and hidden size): see :mod:`respkd.sweep`."""

    kind: Literal["sweep"]
    config: PathText
    set: dict[str, Any] = {}
    temperatures: list[Temperature] = Field(..., min_length=1)
    hidden: list[list[Annotated[int, Field(ge=1, le=MAX_WIDTH)]]] = []

    _base: RunConfig | None = PrivateAttr(None)
    _cells: list[Cell] = PrivateAttr(default_factory=list)  # (hidden, T, config) of each run

    def prepare(self, overrides: list[str]) -> None:
        check_plotting()
        self._base = load_config(self.config, set_overrides(self.set) + list(overrides))
        self._cells = sweep_cells(self._base, self.temperatures, self.hidden)
        self._configs = [c.cfg for c in self._cells]

    @property
    def outputs(self) -> list[str]:
        return [*super().outputs, sweep_folder(Path(), self._base).name]

    @property
    def label(self) -> str:
        return self.outputs[-1]

    def _row_labels(self) -> list[str]:
        return [f"h{width_label(tuple(h))}_" for h in self.hidden] or [""]

    def measure_names(self) -> tuple[str, ...]:
        labels = self._row_labels()
        return tuple(f"best_T_{l}".rstrip("_") for l in labels) + tuple(
            f"errors_{l}T{t:g}" for l in labels for t in self.temperatures)

    def shown_measures(self) -> list[str]:
        headline = [m for m in self.measure_names() if m.startswith("best_T")]
        return headline + [m for m in self.paper if m not in headline]

    def units(self, tag: str) -> list[Unit]:
        """One unit per cell, then the table and the plot (light: they read the cells' summaries)."""
        n = len(self._cells)
        cells = [config_unit(c.cfg, f"{tag}[{k}/{n}]") for k, c in enumerate(self._cells, 1)]

        def write_table(root: Path, force: bool, log: Log) -> None:
            write_sweep_outputs(sweep_folder(root, self._base), self._base, self._cells, root)
            log(f"{tag} {self.label}: table and plot written")

        return [*cells, Unit(self.label, tag, [self.label], [c.cfg.name for c in self._cells], write_table,
                             light=True)]

    def measures(self, root: Path) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for cell in self._cells:
            label = f"h{width_label(cell.hidden)}_" if cell.hidden is not None else ""
            errors = read_summary(root / cell.cfg.name)["metrics"]["errors"]
            out[f"errors_{label}T{cell.temperature:g}"] = errors
            key = f"best_T_{label}".rstrip("_")
            best = out.get(key)
            if best is None or errors < out[f"errors_{label}T{best:g}"]:
                out[key] = cell.temperature
        return out

    def section(self, root: Path) -> list[str]:
        folder = sweep_folder(root, self._base)
        result = read_json(folder / "sweep.json")
        rel = os.path.relpath(folder / "sweep.png", root)
        return [f"### Temperature sweep: {self._base.name}", "", sweep_table(result), "", f"![sweep]({rel})"]
