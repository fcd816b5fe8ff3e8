"""The results table, in the seed README's columns plus test errors, read from finished runs' summary.json.

``respkd table`` folds runs that differ only by their seed into one row of mean ± sample standard deviation
(:mod:`respkd.seeds`); ``--per-run`` (and plan reports) keep one row per run.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from respkd.checkpoint import SUMMARY_NAME
from respkd.errors import RespkdError
from respkd.files import read_json
from respkd.seeds import fmt_mean_std, group_runs, seed_report

__all__ = [
    "COLUMNS", "METRIC_KEYS", "SUMMARY_KEYS", "group_row", "read_summary", "read_table_summary", "results_json",
    "results_table", "run_groups", "table_row",
]

COLUMNS = ("Model", "Params(M)", "Flops(G)", "Top-1 (%)", "Top-5 (%)", "Test errors", "Config", "Download")
# what the table and the seed statistics read; anything else in summary.json is optional here
SUMMARY_KEYS = {"name": str, "params": int, "macs": int, "metrics": dict, "config": dict}
METRIC_KEYS = ("top1", "top5", "errors", "n")


def read_summary(run_dir: Path) -> dict[str, Any]:
    path = run_dir / SUMMARY_NAME
    if not path.is_file():
        raise RespkdError(f"{run_dir}: no summary.json (the run has not finished)")
    summary = read_json(path, "summary")
    if not isinstance(summary, dict) or not isinstance(summary.get("metrics"), dict):
        raise RespkdError(f"{path}: not a respkd run summary (expected a JSON object with 'metrics')")
    return summary


def read_table_summary(run_dir: Path) -> dict[str, Any]:
    """A summary with everything a table row and the seed statistics read (one line naming what is missing)."""
    summary = read_summary(run_dir)
    for key, kind in SUMMARY_KEYS.items():
        if not isinstance(summary.get(key), kind):
            raise RespkdError(f"{run_dir / 'summary.json'}: not a respkd run summary ('{key}' missing or not a "
                              f"{kind.__name__})")
    missing = [k for k in METRIC_KEYS if not isinstance(summary["metrics"].get(k), (int, float))]
    if missing:
        raise RespkdError(f"{run_dir / 'summary.json'}: not a respkd run summary (no metrics.{missing[0]})")
    return summary


def _link(run_dir: Path, target: str, text: str, link_root: Path | None) -> str:
    path = run_dir / target
    rel = os.path.relpath(path, link_root) if link_root is not None else str(path)
    return f"[{text}]({rel})"


def table_row(run_dir: Path, link_root: Path | None = None, summary: dict[str, Any] | None = None) -> list[str]:
    s = summary or read_table_summary(run_dir)
    m = s["metrics"]
    return [
        s["name"], f"{s['params'] / 1e6:.2f}", f"{s['macs'] / 1e9:.4f}", f"{m['top1']:.2f}", f"{m['top5']:.2f}",
        f"{m['errors']} / {m['n']}", _link(run_dir, "config.yaml", "config", link_root),
        _link(run_dir, "model.safetensors", "model", link_root),
    ]


def group_row(run_dirs: list[Path], summaries: list[dict[str, Any]], link_root: Path | None = None) -> list[str]:
    """One row for runs that differ only by seed: each metric as mean ± sample std, with every seed's model."""
    if len(run_dirs) == 1:
        return table_row(run_dirs[0], link_root, summaries[0])
    r, s = seed_report(run_dirs, summaries), summaries[0]
    models = " ".join(_link(d, "model.safetensors", f"seed {seed}", link_root) for d, seed in zip(run_dirs, r["seeds"]))
    return [
        f"{r['name']} (n={r['n']})", f"{s['params'] / 1e6:.2f}", f"{s['macs'] / 1e9:.4f}",
        fmt_mean_std(r["top1"], 2), fmt_mean_std(r["top5"], 2), f"{fmt_mean_std(r['errors'], 1)} / {r['test_n']}",
        _link(run_dirs[0], "config.yaml", "config", link_root), models,
    ]


def run_groups(run_dirs: list[Path], per_run: bool = False) -> list[tuple[list[Path], list[dict[str, Any]]]]:
    """``(run_dirs, summaries)`` per row: runs of one config differing only by seed together, unless ``per_run``.

    A folder named twice counts once; rows come in the order their first run was named.
    """
    run_dirs = list(dict.fromkeys(run_dirs))
    summaries = [read_table_summary(d) for d in run_dirs]
    groups = [[i] for i in range(len(run_dirs))] if per_run else group_runs(summaries)
    return [([run_dirs[i] for i in g], [summaries[i] for i in g]) for g in groups]


def results_table(run_dirs: list[Path], link_root: Path | None = None, group_seeds: bool = False) -> str:
    """A markdown table, one row per run (or per group of seeds). Flops(G) counts a multiply-add as one (GMACs, as
    timm and MMRazor). With ``group_seeds``, metrics of a group are mean ± sample standard deviation over its runs."""
    rows = [group_row(dirs, sums, link_root) for dirs, sums in run_groups(run_dirs, per_run=not group_seeds)]
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join(":---:" for _ in COLUMNS) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def results_json(run_dirs: list[Path], per_run: bool = False) -> list[dict[str, Any]]:
    """The numbers behind the table: per row the seed report (n, seeds, mean and std of each metric, per-run values)
    plus the parameter and multiply-add counts."""
    return [{**seed_report(dirs, sums), "params": sums[0]["params"], "macs": sums[0]["macs"]}
            for dirs, sums in run_groups(run_dirs, per_run)]
