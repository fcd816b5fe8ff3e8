"""Plans: an ordered list of experiments run by one command, resuming where a previous invocation stopped.

A plan is a YAML file (data only, validated like configs)::

    title: The paper's MNIST table
    runs_root: results/mnist
    stages:
      - config: configs/mnist/teacher_1200.yaml
        paper: {test_errors: 67}          # the published number, shown beside ours
        set: {train.epochs: 3}            # optional per-stage overrides

A stage whose run directory already holds a summary made from the same config is skipped, so an interrupted
reproduction continues with the first unfinished stage. At the end the plan writes ``REPORT.md`` in ``runs_root``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from respkd.checkpoint import atomic_write_text
from respkd.config import RunConfig, apply_override, config_to_dict, format_validation_error, load_config
from respkd.errors import RespkdError
from respkd.experiment import SUMMARY_NAME, run
from respkd.report import read_summary, results_table

PLANS_DIR = Path("configs/plans")


class Stage(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    config: str
    set: dict[str, Any] = {}
    paper: dict[str, float] = {}


class Plan(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    title: str
    runs_root: str
    stages: list[Stage] = Field(..., min_length=1)


def resolve_plan_path(name: str) -> Path:
    path = Path(name)
    if path.suffix in (".yaml", ".yml"):
        return path
    return PLANS_DIR / f"{name}.yaml"


def load_plan(name: str) -> Plan:
    path = resolve_plan_path(name)
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PLANS_DIR.glob("*.yaml"))) if PLANS_DIR.is_dir() else "none found"
        raise RespkdError(f"no plan '{name}' ({path} does not exist); plans under {PLANS_DIR}: {known}")
    try:
        raw = yaml.safe_load(path.read_text())
        return Plan.model_validate(raw)
    except yaml.YAMLError as err:
        raise RespkdError(f"plan {path}: invalid YAML ({err})") from None
    except ValidationError as err:
        raise RespkdError(f"plan {path}: {format_validation_error(err)}") from None


def stage_config(stage: Stage, overrides: list[str]) -> RunConfig:
    return load_config(stage.config, [f"{k}={json.dumps(v)}" for k, v in stage.set.items()] + list(overrides))


def is_finished(cfg: RunConfig, runs_root: Path) -> bool:
    """True when the stage's run directory holds a summary made from exactly this config."""
    path = runs_root / cfg.name / SUMMARY_NAME
    if not path.is_file():
        return False
    return read_summary(path.parent).get("config") == config_to_dict(cfg)


def run_plan(name: str, runs_root: str | None = None, overrides: list[str] = (), force: bool = False) -> str:
    plan = load_plan(name)
    root = Path(runs_root or plan.runs_root)
    # Validate every stage before running any, so a typo in the last config does not surface an hour in.
    configs = [stage_config(stage, overrides) for stage in plan.stages]
    names = [c.name for c in configs]
    if len(set(names)) != len(names):
        raise RespkdError(f"plan {name}: two stages share a run name ({', '.join(names)})")
    start = time.perf_counter()
    for i, cfg in enumerate(configs, 1):
        if is_finished(cfg, root) and not force:
            print(f"[{i}/{len(configs)}] {cfg.name}: already finished in {root / cfg.name}, skipped", flush=True)
            continue
        print(f"[{i}/{len(configs)}] {cfg.name}", flush=True)
        run(cfg, root, force=True)
    report = write_report(plan, configs, root, time.perf_counter() - start)
    print(report)
    return report


def write_report(plan: Plan, configs: list[RunConfig], root: Path, elapsed: float) -> str:
    dirs = [root / c.name for c in configs]
    lines = [f"# {plan.title}", "", results_table(dirs, link_root=root), "", "## Against the paper", "",
             "| run | test errors (ours) | test errors (paper) | wall time (min) | s/epoch | precision |",
             "|---|---:|---:|---:|---:|---|"]
    for stage, d in zip(plan.stages, dirs):
        s = read_summary(d)
        paper = stage.paper.get("test_errors")
        lines.append(f"| {s['name']} | {s['metrics']['errors']} | {'' if paper is None else int(paper)} | "
                     f"{s['wall_time_s'] / 60:.1f} | {s['seconds_per_epoch']:.2f} | {s.get('precision', '')} |")
    env = read_summary(dirs[-1])["environment"]
    lines += ["", f"Machine: {env['cpu']}, {env['torch_threads']} threads, torch {env['torch']}. "
              f"This invocation took {elapsed / 60:.1f} min (finished stages are skipped, not rerun)."]
    text = "\n".join(lines) + "\n"
    atomic_write_text(root / "REPORT.md", text)
    return text
