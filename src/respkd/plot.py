"""Training curves of finished or running runs: training loss and test errors per epoch, read from ``metrics.jsonl``.

``respkd plot RUN... --out curves.png`` draws every run on one figure of two panels; when the runs distil, their
teacher's test errors are a horizontal line. The functions here take parsed records and draw: reading a run folder
(:func:`read_metrics`, :func:`run_curves`) is separate from drawing (:func:`plot_curves`), and matplotlib (the
``plots`` extra) is imported only when a figure is drawn.
"""

from __future__ import annotations

import importlib.util
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from respkd.errors import RespkdError
from respkd.files import atomic_write
from respkd.report import teacher_reference
from respkd.rundir import METRICS_NAME

__all__ = ["FIGURE_FORMATS", "Curve", "TeacherLine", "check_figure_path", "epoch_series", "plot_curves", "pyplot",
           "read_metrics", "require_matplotlib", "run_curves", "run_folder"]

FIGURE_FORMATS = (".png", ".svg", ".pdf")
RECORD_KEYS = {"epoch": int, "loss": (int, float), "test_errors": int}


@dataclass(frozen=True)
class Curve:
    """One run's series, one value per epoch. ``label_loss`` (training cross-entropy on the labels) is kept only
    where it differs from ``loss``, as it does for a distillation, whose objective includes the soft targets."""

    name: str
    epochs: list[int]
    loss: list[float]
    test_errors: list[int]
    label_loss: list[float] | None = None


@dataclass(frozen=True)
class TeacherLine:
    """A teacher's final test errors, drawn as a horizontal line."""

    name: str
    test_errors: int


def require_matplotlib(what: str) -> None:
    """Say before anything runs that ``what`` (e.g. "the sweep plot") needs matplotlib, the ``plots`` extra."""
    if importlib.util.find_spec("matplotlib") is None:
        raise RespkdError(f"{what} needs matplotlib: pip install 'respkd[plots]' (or matplotlib>=3.7)")


def pyplot(what: str = "plotting"):
    """``matplotlib.pyplot`` on the Agg backend (files only, no display needed)."""
    require_matplotlib(what)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def run_folder(source: str | Path, runs_root: str | Path = "runs") -> Path:
    """The run folder named by ``source``: a folder, or a run's name under ``runs_root``."""
    path = Path(source)
    if not path.is_dir() and (Path(runs_root) / str(source)).is_dir():
        path = Path(runs_root) / str(source)
    if not path.is_dir():
        raise RespkdError(f"{source}: no such run directory, or run under {runs_root}/")
    return path


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The records of ``run_dir/metrics.jsonl``, one per epoch, each checked to hold an epoch, a loss and test errors
    (one line naming the file and line number when one does not)."""
    path = Path(run_dir) / METRICS_NAME
    if not path.is_file():
        raise RespkdError(f"{run_dir}: no {METRICS_NAME} (not a respkd run folder, or no epoch finished yet)")
    records = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise RespkdError(f"{path}: line {number} is not valid JSON ({err.msg})") from None
        if not isinstance(record, dict):
            raise RespkdError(f"{path}: line {number} is not a JSON object")
        for key, kind in RECORD_KEYS.items():
            value = record.get(key)
            if not isinstance(value, kind) or isinstance(value, bool) or not math.isfinite(value):
                raise RespkdError(f"{path}: line {number} has no valid '{key}'")
        records.append(record)
    if not records:
        raise RespkdError(f"{path}: no epoch recorded yet")
    return records


def epoch_series(name: str, records: list[dict[str, Any]]) -> Curve:
    """The series of one run from its metrics records (as :func:`read_metrics` returns them), in epoch order."""
    records = sorted(records, key=lambda r: r["epoch"])
    label_loss = [float(r.get("hard_loss", r["loss"])) for r in records]
    loss = [float(r["loss"]) for r in records]
    return Curve(name, [r["epoch"] for r in records], loss, [r["test_errors"] for r in records],
                 label_loss if label_loss != loss else None)


def run_curves(run_dirs: list[Path]) -> tuple[list[Curve], list[TeacherLine]]:
    """Every run's curve and the distinct teachers (of known test errors) of the runs that distil."""
    curves, teachers = [], {}
    for d in run_dirs:
        curves.append(epoch_series(d.name, read_metrics(d)))
        ref = teacher_reference(d)
        if ref is not None:
            teachers.setdefault(ref["name"], TeacherLine(ref["name"], ref["errors"]))
    return curves, list(teachers.values())


def check_figure_path(path: Path) -> None:
    """A figure is written as PNG, SVG or PDF (by its suffix) into a folder that exists."""
    path = Path(path)
    if path.suffix.lower() not in FIGURE_FORMATS:
        raise RespkdError(f"--out {path}: a figure file ends in {', '.join(FIGURE_FORMATS)}")
    if not path.parent.is_dir():
        raise RespkdError(f"--out {path}: folder {path.parent} does not exist")
    if path.is_dir():
        raise RespkdError(f"--out {path}: is a folder")


def plot_curves(curves: list[Curve], teachers: list[TeacherLine], path: Path, title: str | None = None) -> None:
    """Two panels, one line per run: training loss (log axis) and test errors (log axis) against the epoch; each
    teacher a dashed horizontal line on the second. Written atomically, in the format of ``path``'s suffix."""
    check_figure_path(path)
    plt = pyplot("respkd plot")
    from matplotlib.lines import Line2D
    from matplotlib.ticker import LogLocator, MaxNLocator, NullFormatter, ScalarFormatter

    fig, (ax_loss, ax_err) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=120)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, c in enumerate(curves):
        colour = colours[i % len(colours)]
        marker = "o" if len(c.epochs) <= 20 else None
        ax_loss.plot(c.epochs, c.loss, color=colour, marker=marker, markersize=3, label=c.name)
        if c.label_loss is not None:
            ax_loss.plot(c.epochs, c.label_loss, color=colour, linestyle=":", linewidth=1.2)
        ax_err.plot(c.epochs, c.test_errors, color=colour, marker=marker, markersize=3,
                    label=f"{c.name} ({c.test_errors[-1]} at epoch {c.epochs[-1]})")
    for i, t in enumerate(teachers):
        ax_err.axhline(t.test_errors, color="0.25", linestyle=("--", "-.", ":")[i % 3], linewidth=1.2,
                       label=f"teacher {t.name} ({t.test_errors})")
    ax_loss.set_yscale("log")
    ax_loss.set_title("training loss")
    ax_loss.set_ylabel("mean loss over the epoch")
    if any(c.label_loss is not None for c in curves):
        handles, labels = ax_loss.get_legend_handles_labels()
        handles.append(Line2D([], [], color="0.4", linestyle=":"))
        labels.append("dotted: cross-entropy on the labels\n(distilled runs; solid: their objective)")
        ax_loss.legend(handles, labels, fontsize=8)
    else:
        ax_loss.legend(fontsize=8)
    ax_err.set_yscale("log")
    # plain numbers on the log axis (60, 70, 100, 150, ...): error counts read better than powers of ten
    ax_err.yaxis.set_major_locator(LogLocator(subs=(1.0, 1.5, 2.0, 3.0, 5.0, 7.0)))
    ax_err.yaxis.set_major_formatter(ScalarFormatter())
    ax_err.yaxis.set_minor_formatter(NullFormatter())
    ax_err.set_title("test errors")
    ax_err.set_ylabel("test errors (log scale)")
    ax_err.legend(fontsize=8)
    for ax in (ax_loss, ax_err):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3, which="major")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fmt = Path(path).suffix.lower().lstrip(".")
    atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format=fmt))
    plt.close(fig)
