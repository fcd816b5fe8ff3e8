"""The results table, in the seed README's columns plus test errors, read from finished runs' summary.json.

``respkd table`` folds runs that differ only by their seed into one row of mean ± sample standard deviation
(:mod:`respkd.seeds`); ``--per-run`` (and plan reports) keep one row per run. :func:`distillation_verdicts` sets a
distilled student against the same student trained on hard labels, with its teacher's test errors beside them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from respkd.checkpoint import CHECKPOINT_NAME, SUMMARY_NAME, read_checkpoint_meta
from respkd.config import read_yaml_mapping
from respkd.errors import RespkdError
from respkd.files import read_json
from respkd.seeds import fmt_mean_std, group_runs, seed_report

__all__ = [
    "COLUMNS", "METRIC_KEYS", "SUMMARY_KEYS", "control_key", "distillation_verdicts", "group_row", "read_summary",
    "read_table_summary", "results_json", "results_table", "run_groups", "table_row", "teacher_reference",
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


def _model_links(run_dirs: list[Path], texts: list[str], link_root: Path | None) -> str:
    """Links to the runs' weights that exist ("-" when none does): a results table links no file it cannot serve (the
    repository keeps only its results table's weights)."""
    links = [_link(d, CHECKPOINT_NAME, t, link_root) for d, t in zip(run_dirs, texts) if (d / CHECKPOINT_NAME).is_file()]
    return " ".join(links) or "-"


def table_row(run_dir: Path, link_root: Path | None = None, summary: dict[str, Any] | None = None) -> list[str]:
    s = summary or read_table_summary(run_dir)
    m = s["metrics"]
    return [
        s["name"], f"{s['params'] / 1e6:.2f}", f"{s['macs'] / 1e9:.4f}", f"{m['top1']:.2f}", f"{m['top5']:.2f}",
        f"{m['errors']} / {m['n']}", _link(run_dir, "config.yaml", "config", link_root),
        _model_links([run_dir], ["model"], link_root),
    ]


def group_row(run_dirs: list[Path], summaries: list[dict[str, Any]], link_root: Path | None = None) -> list[str]:
    """One row for runs that differ only by seed: each metric as mean ± sample std, with every seed's model."""
    if len(run_dirs) == 1:
        return table_row(run_dirs[0], link_root, summaries[0])
    r, s = seed_report(run_dirs, summaries), summaries[0]
    models = _model_links(run_dirs, [f"seed {seed}" for seed in r["seeds"]], link_root)
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


# ---------------------------------------------------------------- a distillation against its hard-label control


def teacher_reference(run_dir: Path) -> dict[str, Any] | None:
    """The teacher of a distillation run and its test errors: ``{"name", "errors", "n"}``, or None when the run does
    not distil or the teacher's errors are not known (an ensemble, weights from elsewhere).

    Read from the run's ``summary.json``: its ``teacher_metrics`` when present, else the summary (or the checkpoint
    metadata) beside the teacher checkpoint it names. A run still training has no summary: its ``config.yaml`` names
    the teacher (a checkpoint, or a run beside this one). A teacher evaluated on another number of test examples
    than the run is not a reference for it: None.
    """
    run_dir = Path(run_dir)
    summary = read_summary(run_dir) if (run_dir / "summary.json").is_file() else None
    n = summary["metrics"].get("n") if summary is not None else None
    if summary is not None:
        teacher, known = summary.get("teacher"), summary.get("teacher_metrics")
        if isinstance(known, dict) and isinstance(known.get("errors"), int):
            return _same_test_set(Path(teacher).parent.name if isinstance(teacher, str) else "ensemble", known, n)
    else:
        teacher = _configured_teacher(run_dir)
    if not isinstance(teacher, str):  # None: trained on labels; a list: an ensemble, whose errors no member holds
        return None
    path = Path(teacher)
    if (path.parent / "summary.json").is_file():
        found = read_summary(path.parent)
        return _same_test_set(found.get("name", path.parent.name), found["metrics"], n)
    try:
        meta = read_checkpoint_meta(path)
    except RespkdError:  # not a respkd checkpoint (weights from elsewhere), or gone: no metrics to show
        return None
    metrics = meta.get("metrics")
    return _same_test_set(meta.get("name", path.parent.name), metrics, n) if isinstance(metrics, dict) else None


def _same_test_set(name: str, metrics: dict[str, Any], n: int | None) -> dict[str, Any] | None:
    if not isinstance(metrics.get("errors"), int) or (n is not None and metrics.get("n") not in (None, n)):
        return None
    return {"name": name, "errors": metrics["errors"], "n": metrics.get("n")}


def _configured_teacher(run_dir: Path) -> str | None:
    """The teacher checkpoint a running run's ``config.yaml`` names (a ``run`` is a folder beside this run's)."""
    path = run_dir / "config.yaml"
    teacher = read_yaml_mapping(path, what="run config").get("teacher") if path.is_file() else None
    if not isinstance(teacher, dict):
        return None
    if isinstance(teacher.get("checkpoint"), str):
        return teacher["checkpoint"]
    if isinstance(teacher.get("run"), str):
        return str(run_dir.parent / teacher["run"] / "model.safetensors")
    return None


def control_key(config: dict[str, Any]) -> str:
    """What a distillation shares with its hard-label control: the whole config but the name, the teacher, the
    distillation settings and the thread count (same student, data, seed, optimizer, schedule and epochs)."""
    return json.dumps({k: v for k, v in config.items() if k not in ("name", "teacher", "kd", "threads")},
                      sort_keys=True)


def distillation_verdicts(run_dirs: list[Path]) -> list[str]:
    """One line per finished distillation among ``run_dirs`` that has its hard-label control among them too (the
    first such run that is not its own teacher): the test errors of both, as measured, and the teacher's when known."""
    finished = [(Path(d), read_table_summary(Path(d))) for d in run_dirs if (Path(d) / "summary.json").is_file()]
    lines = []
    for d, s in finished:
        if s["config"].get("teacher") is None:
            continue
        teacher_dirs = {Path(t).parent.resolve() for t in _as_list(s.get("teacher"))}
        key = control_key(s["config"])
        control = next((c for cd, c in finished if c["config"].get("teacher") is None
                        and cd.resolve() not in teacher_dirs and control_key(c["config"]) == key), None)
        if control is None:
            continue
        ours, theirs = s["metrics"]["errors"], control["metrics"]["errors"]
        diff = (f"{theirs - ours} fewer than" if ours < theirs else f"{ours - theirs} more than" if ours > theirs
                else "as many as")
        teacher = teacher_reference(d)
        t = (s["config"].get("kd") or {}).get("temperature")
        lines.append(f"{s['name']} (distilled{f' at T = {t:g}' if t is not None else ''}): {ours} test errors, {diff} "
                     f"the same student on hard labels ({control['name']}: {theirs}); both {s['config']['train']['epochs']} "
                     f"epochs, seed {s['config'].get('seed')}"
                     + (f"; teacher {teacher['name']}: {teacher['errors']}" if teacher is not None else ""))
    return lines


def _as_list(teacher: str | list[str] | None) -> list[str]:
    return [] if teacher is None else [teacher] if isinstance(teacher, str) else list(teacher)
