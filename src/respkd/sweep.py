"""Temperature sweeps: the same student distilled at each T (and each hidden size), then a table and a plot.

The paper: with 300 or more units per hidden layer every T above 8 gave about the same result; with 30 units, T
from 2.5 to 4 worked much better than higher or lower. ``respkd sweep CONFIG --temperatures 1,2,2.5,3,4,8,20
--hidden 300,300 --hidden 30,30`` runs ``<name>-h<width>-T<T>`` for every pair (skipping finished ones), then
writes ``<runs_root>/<name>-sweep/`` with ``sweep.md`` (test errors, rows hidden sizes, columns T), ``sweep.png``
(errors against T) and ``sweep.json``. With ``kd.cache: true`` (full logits) one teacher cache serves every T.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from respkd import distributed
from respkd.config import RunConfig, config_to_dict, validate_config
from respkd.errors import RespkdError
from respkd.experiment import run_many
from respkd.files import atomic_write, atomic_write_text
from respkd.models import accepts_option
from respkd.plot import pyplot, require_matplotlib
from respkd.report import read_summary

__all__ = [
    "Cell", "cell_name", "check_plotting", "plot_sweep", "row_label", "run_sweep", "sweep_cells", "sweep_folder",
    "sweep_table", "width_label", "write_sweep_outputs",
]


@dataclass(frozen=True)
class Cell:
    hidden: tuple[int, ...] | None  # None: the config's own model
    temperature: float
    cfg: RunConfig


def width_label(hidden: tuple[int, ...]) -> str:
    """``(300, 300)`` -> ``300``; layers of different widths are joined by ``x``: ``(300, 100)`` -> ``300x100``."""
    return str(hidden[0]) if len(set(hidden)) == 1 else "x".join(map(str, hidden))


def cell_name(base: str, hidden: tuple[int, ...] | None, temperature: float) -> str:
    return f"{base}{'' if hidden is None else '-h' + width_label(hidden)}-T{temperature:g}"


def sweep_folder(runs_root: Path, base: RunConfig) -> Path:
    return Path(runs_root) / f"{base.name}-sweep"


def sweep_cells(base: RunConfig, temperatures: list[float], hiddens: list[list[int]]) -> list[Cell]:
    """Every (hidden, T) config, validated; a user error (not a distillation, bad T, names clash) is one line."""
    if not base.distills:
        raise RespkdError(f"'{base.name}': a temperature sweep needs a distillation config ('teacher' and 'kd')")
    if not temperatures:
        raise RespkdError("a sweep needs at least one temperature")
    if any(t <= 0 for t in temperatures):
        raise RespkdError(f"temperatures must be > 0, got {temperatures}")
    if len({f'{t:g}' for t in temperatures}) != len(temperatures):
        raise RespkdError(f"temperatures {temperatures} repeat a value")
    if hiddens and not accepts_option(base.model.name, "hidden"):
        raise RespkdError(f"model '{base.model.name}' has no 'hidden' option to sweep")
    if any(not h or any(w < 1 for w in h) for h in hiddens):
        raise RespkdError(f"hidden sizes must be non-empty lists of positive widths, got {hiddens}")
    raw = config_to_dict(base)
    cells = []
    for hidden in [tuple(h) for h in hiddens] or [None]:
        for t in temperatures:
            cfg = dict(raw, name=cell_name(base.name, hidden, t), kd={**raw["kd"], "temperature": float(t)})
            if hidden is not None:
                cfg["model"] = {**raw["model"], "hidden": list(hidden)}
            cells.append(Cell(hidden, float(t), validate_config(cfg, f"sweep cell {cfg['name']}")))
    names = [c.cfg.name for c in cells]
    if len(set(names)) != len(names):
        raise RespkdError(f"two sweep cells get the same run name ({', '.join(sorted(n for n in set(names) if names.count(n) > 1))}); "
                          "give hidden sizes that differ in their widths")
    return cells


def check_plotting() -> None:
    """The plot needs matplotlib (the ``plots`` or ``dev`` extras): say so before anything runs."""
    require_matplotlib("the sweep plot")


def run_sweep(
    base: RunConfig, temperatures: list[float], hiddens: list[list[int]], runs_root: str | Path = "runs",
    force: bool = False, replace_changed: bool = False, log: Callable[[str], None] | None = None,
    tag: str = "",
) -> dict[str, Any] | None:
    """Run every unfinished cell (see :func:`respkd.experiment.run_many`), then write the table and the plot.

    Under torchrun every process trains the cells; process 0 alone writes the outputs, the others return None.
    """
    check_plotting()
    cells = sweep_cells(base, temperatures, hiddens)
    tags = [f"{tag}[{i}/{len(cells)}]" for i in range(1, len(cells) + 1)]
    run_many([c.cfg for c in cells], runs_root, force=force, replace_changed=replace_changed, log=log, tags=tags)
    if not distributed.is_main_process():
        return None
    return write_sweep_outputs(sweep_folder(Path(runs_root), base), base, cells, Path(runs_root))


def row_label(base: RunConfig, hidden: tuple[int, ...] | None) -> str:
    if hidden is None:
        hidden = base.model.options().get("hidden")
    return f"{base.model.name} {'-'.join(map(str, hidden))}" if hidden else base.model.name


def write_sweep_outputs(folder: Path, base: RunConfig, cells: list[Cell], runs_root: Path) -> dict[str, Any]:
    """Read the cells' summaries and write ``sweep.json``, ``sweep.md`` and ``sweep.png`` into ``folder``."""
    rows: dict[str, dict[float, dict[str, Any]]] = {}
    for c in cells:
        summary = read_summary(runs_root / c.cfg.name)
        rows.setdefault(row_label(base, c.hidden), {})[c.temperature] = {
            "run": c.cfg.name, "errors": summary["metrics"]["errors"], "n": summary["metrics"]["n"],
            "top1": summary["metrics"]["top1"],
        }
    temps = sorted({c.temperature for c in cells})
    result = {"name": base.name, "temperatures": temps,
              "rows": [{"label": label, "cells": [{"temperature": t, **row[t]} for t in temps]}
                       for label, row in rows.items()]}
    for r in result["rows"]:
        best = min(r["cells"], key=lambda c: (c["errors"], c["temperature"]))
        r["best_temperature"], r["best_errors"] = best["temperature"], best["errors"]
    folder.mkdir(parents=True, exist_ok=True)
    table = sweep_table(result)
    atomic_write_text(folder / "sweep.json", json.dumps(result, indent=2))
    atomic_write_text(folder / "sweep.md", f"# Temperature sweep: {base.name}\n\n{table}\n")
    plot_sweep(result, folder / "sweep.png")
    result["table"] = table
    return result


def sweep_table(result: dict[str, Any]) -> str:
    """Markdown: rows hidden sizes, columns T, cells test errors (the best of each row in bold)."""
    temps = result["temperatures"]
    lines = ["| student | " + " | ".join(f"T = {t:g}" for t in temps) + " |",
             "|---|" + "|".join("---:" for _ in temps) + "|"]
    for r in result["rows"]:
        cells = [f"**{c['errors']}**" if c["errors"] == r["best_errors"] else str(c["errors"]) for c in r["cells"]]
        lines.append(f"| {r['label']} | " + " | ".join(cells) + " |")
    n = result["rows"][0]["cells"][0]["n"] if result["rows"] else 0
    lines += ["", f"Test errors out of {n}; bold: the fewest in the row."]
    return "\n".join(lines)


def plot_sweep(result: dict[str, Any], path: Path) -> None:
    """Test errors against T (log axis), one line per hidden size; matplotlib imported here, Agg backend."""
    plt = pyplot("the sweep plot")
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for r in result["rows"]:
        ax.plot([c["temperature"] for c in r["cells"]], [c["errors"] for c in r["cells"]], marker="o", label=r["label"])
    ax.set_xscale("log")
    ax.set_xticks(result["temperatures"], [f"{t:g}" for t in result["temperatures"]])
    ax.minorticks_off()
    ax.set_xlabel("distillation temperature T")
    ax.set_ylabel("test errors")
    ax.set_title(f"Temperature sweep: {result['name']}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
