"""The results table, in the seed README's columns plus test errors, read from finished runs' summary.json."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from respkd.errors import RespkdError

COLUMNS = ("Model", "Params(M)", "Flops(G)", "Top-1 (%)", "Top-5 (%)", "Test errors", "Config", "Download")
# what the table and the seed statistics read; anything else in summary.json is optional here
SUMMARY_KEYS = {"name": str, "params": int, "macs": int, "metrics": dict, "config": dict}
METRIC_KEYS = ("top1", "top5", "errors", "n")


def read_summary(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "summary.json"
    if not path.is_file():
        raise RespkdError(f"{run_dir}: no summary.json (the run has not finished)")
    try:
        summary = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RespkdError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(summary, dict):
        raise RespkdError(f"{path}: not a respkd run summary (expected a JSON object)")
    for key, kind in SUMMARY_KEYS.items():
        if not isinstance(summary.get(key), kind):
            raise RespkdError(f"{path}: not a respkd run summary ('{key}' missing or not a {kind.__name__})")
    missing = [k for k in METRIC_KEYS if not isinstance(summary["metrics"].get(k), (int, float))]
    if missing:
        raise RespkdError(f"{path}: not a respkd run summary (no metrics.{missing[0]})")
    return summary


def table_row(run_dir: Path, link_root: Path | None = None) -> list[str]:
    s = read_summary(run_dir)
    m = s["metrics"]

    def link(name: str, target: str) -> str:
        path = run_dir / target
        rel = os.path.relpath(path, link_root) if link_root is not None else str(path)
        return f"[{name}]({rel})"

    return [
        s["name"], f"{s['params'] / 1e6:.2f}", f"{s['macs'] / 1e9:.4f}", f"{m['top1']:.2f}", f"{m['top5']:.2f}",
        f"{m['errors']} / {m['n']}", link("config", "config.yaml"), link("model", "model.safetensors"),
    ]


def results_table(run_dirs: list[Path], link_root: Path | None = None) -> str:
    """A markdown table, one row per run. Flops(G) counts a multiply-add as one (GMACs, as timm and MMRazor)."""
    rows = [table_row(d, link_root) for d in run_dirs]
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join(":---:" for _ in COLUMNS) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)
