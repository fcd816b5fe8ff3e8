"""Plans: an ordered list of experiments run by one command, resuming where a previous invocation stopped.

A plan is a YAML file (data only, validated like configs)::

    title: The paper's MNIST table
    runs_root: results/mnist
    report: REPORT.md                     # optional: the report's file name in runs_root
    stages:
      - config: configs/mnist/teacher_1200.yaml
        paper: {test_errors: 67}          # the published number, shown beside ours
        set: {train.epochs: 3}            # optional per-stage overrides
      - config: configs/mnist/member_800.yaml
        seeds: [0, 1, 2, 3, 4]            # one run per seed: <name>-seed<k>
      - kind: bias                        # shift output biases of a finished run, chosen on its validation split
        run: mnist-student-no3
        classes: [3]
        search: true                      # or shift: 3.5 (low/high/step bound the search: -15, 15, 0.1)
        paper: {test_errors_after: 109}
      - kind: ensemble_eval               # an ensemble vs its members vs a net distilled from it
        name: mnist-ensemble
        runs: [mnist-member-800-seed0, mnist-member-800-seed1]
        distilled: mnist-student-ensemble
      - kind: sweep                       # one distillation config at several T (and hidden sizes)
        config: configs/mnist/student_sweep.yaml
        temperatures: [1, 2, 4, 8, 20]
        hidden: [[300, 300], [30, 30]]
      - kind: specialists                 # a generalist's specialists, trained in parallel, then combined
        config: configs/fashion_mnist/specialists.yaml
        workers: 2

Every stage kind is data (:mod:`respkd.plan.stage`, and one module per kind that runs and reports it); each may carry
``paper`` (numbers from the paper, by measure name: the measures each kind reports are its ``MEASURES``; an unknown
name is an error) and ``note`` (shown in the report). Everything is
validated before the first stage runs: configs, names (no two stages may write the same run), and that every run a
stage reads is made by an earlier stage or already exists under ``runs_root``. A stage whose outputs already exist
for exactly the same inputs is skipped, so an interrupted reproduction continues with the first unfinished stage.
At the end the plan writes its report (``REPORT.md``, :mod:`respkd.plan.report`) in ``runs_root``, comparing each
measure with the paper's.

A stage runs as units (:meth:`StageBase.units`): one per run (per seed), one per sweep cell plus the sweep's table,
one for a bias, ensemble or specialists stage. ``respkd reproduce PLAN`` runs them one after another in its own
process; ``--jobs N`` runs up to N at a time, each in a child process (``respkd reproduce PLAN --unit K``) with
``cores // N`` torch threads (``--threads`` to choose), a unit starting once the runs it reads have been made
(:mod:`respkd.plan.scheduler`). The runs are the same either way (same configs, seeds and resumes), bitwise at the
same thread count; the report's closing line says how many processes of how many threads ran.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any, Callable, Union

import torch
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError

from respkd.checkpoint import CHECKPOINT_NAME
from respkd.config import (MAX_PROBLEMS, MAX_THREADS, PathText, dotted, format_validation_error, join_problems,
                           key_suggestion, read_yaml_mapping)
from respkd.data import describe_data, prepare_dataset
from respkd.environment import usable_cores
from respkd.errors import RespkdError
from respkd.plan.bias_stage import BiasStage
from respkd.plan.ensemble_stage import EnsembleEvalStage
from respkd.plan.report import write_report
from respkd.plan.run_stage import RunStage
from respkd.plan.scheduler import PlanStopped, child_command, dependencies, run_parallel, unit_prefix
from respkd.plan.specialists_stage import SpecialistsStage
from respkd.plan.stage import Job, StageBase, Unit
from respkd.plan.sweep_stage import SweepStage
from respkd.rundir import is_finished

__all__ = [
    "PLANS_DIR", "STAGE_TYPES", "BiasStage", "EnsembleEvalStage", "Job", "Plan", "PlanStopped", "RunStage",
    "SpecialistsStage", "Stage", "SweepStage", "Unit", "check_processes", "load_plan", "plan_error", "plan_units",
    "resolve", "resolve_plan_path", "run_plan", "run_plan_unit",
]

PLANS_DIR = Path("configs/plans")

STAGE_TYPES: dict[str, type[StageBase]] = {
    "run": RunStage, "sweep": SweepStage, "bias": BiasStage, "ensemble_eval": EnsembleEvalStage,
    "specialists": SpecialistsStage,
}


def _stage_kind(value: Any) -> str:
    """The stage's ``kind``; a stage without one is a run (what plans held before other kinds existed)."""
    return value.get("kind", "run") if isinstance(value, dict) else getattr(value, "kind", "run")


Stage = Annotated[
    Union[tuple(Annotated[cls, Tag(kind)] for kind, cls in STAGE_TYPES.items())],  # type: ignore[misc]
    Discriminator(_stage_kind),
]


class Plan(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)
    title: str
    runs_root: PathText
    report: str = Field("REPORT.md", pattern=r"^[A-Za-z0-9_.-]+\.md$", max_length=255)
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
    raw = read_yaml_mapping(path, what="plan")
    try:
        return Plan.model_validate(raw)
    except ValidationError as err:
        raise RespkdError(f"plan {path}: {plan_error(err)}") from None


def plan_error(err: ValidationError) -> str:
    """Validation errors on one line, with the stage kind pydantic puts in the location taken out again."""
    problems, errors = [], err.errors()
    for e in errors[:MAX_PROBLEMS]:
        loc = tuple(e["loc"])
        if len(loc) >= 3 and loc[0] == "stages" and isinstance(loc[1], int) and loc[2] in STAGE_TYPES:
            kind, loc = loc[2], loc[:2] + loc[3:]
            if e["type"] == "extra_forbidden" and len(loc) == 3:
                problems.append(f"unknown key '{dotted(loc)}'" + key_suggestion(loc[2:], STAGE_TYPES[kind]))
                continue
            e = {**e, "loc": loc}
        if e["type"] == "union_tag_invalid":
            e = {**e, "msg": f"unknown stage kind {e['ctx'].get('tag')!r}: use one of {', '.join(STAGE_TYPES)}"}
        problems.append(format_validation_error([e], root=None))
    return join_problems(problems, len(errors))


def resolve(plan: Plan, overrides: list[str], root: Path) -> list[Job]:
    """Validate every stage before any runs, so a typo in the last one does not surface an hour in."""
    jobs = []
    for i, stage in enumerate(plan.stages, 1):
        stage.prepare(list(overrides))
        job = Job(i, stage)
        unknown = sorted(set(stage.paper) - set(stage.measure_names()))
        if unknown:
            raise RespkdError(f"{job.where}: unknown paper measure '{unknown[0]}' (known: "
                              f"{', '.join(stage.measure_names())})")
        jobs.append(job)

    made: dict[str, Job] = {}
    for job in jobs:
        for need in job.needs:
            if need not in made and not (root / need / CHECKPOINT_NAME).is_file():
                raise RespkdError(f"{job.where} reads run '{need}', which no earlier stage makes and "
                                  f"{root / need / CHECKPOINT_NAME} does not exist")
        job.stage.check_inputs({name: made[name].stage for name in made}, job.where)
        for name in job.outputs:
            if name in made:
                raise RespkdError(f"plan: two stages share a run name ('{name}': stages {made[name].index} and "
                                  f"{job.index})")
            made[name] = job
    return jobs


def plan_units(jobs: list[Job]) -> list[Unit]:
    """Every stage's units, in plan order: unit K of a plan is ``plan_units(...)[K - 1]``."""
    return [unit for job in jobs for unit in job.stage.units(f"[{job.index}/{len(jobs)}]")]


def check_processes(jobs: int, threads: int | None) -> None:
    """Refuse a ``--jobs`` outside 1..4 x the cores, or ``--threads`` below 1 (one line each)."""
    most = 4 * usable_cores()
    if not 1 <= jobs <= most:
        raise RespkdError(f"--jobs must be from 1 to {most} (4 x the {usable_cores()} cores this process may use), "
                          f"got {jobs}")
    if threads is not None and not 1 <= threads <= MAX_THREADS:
        raise RespkdError(f"--threads must be from 1 to {MAX_THREADS}, got {threads}")


def run_plan(name: str, runs_root: str | None = None, overrides: list[str] = (), force: bool = False,
             jobs: int = 1, threads: int | None = None, keep_going: bool = False) -> str:
    """Run the plan ``name`` (a YAML path, or a plan under ``configs/plans/``), then write and return its report.

    ``jobs`` 1: unit after unit in this process (``threads``: its torch threads, default torch's); more: that many
    child processes at a time, of ``threads`` torch threads each (default ``cores // jobs``; see
    :mod:`respkd.plan.scheduler`). A failing unit stops the plan (its error raised, no report), unless
    ``keep_going``: then every unit that reads nothing a failed unit makes still runs, the report is written for
    what finished and lists what did not, and :class:`PlanStopped` (exit status 1) says how many failed."""
    check_processes(jobs, threads)
    plan = load_plan(name)
    root = Path(runs_root or plan.runs_root)
    stages = resolve(plan, list(overrides), root)
    units = plan_units(stages)
    start = time.perf_counter()
    prepare_data(stages, root, force, _log)
    if jobs == 1:
        if threads is not None:
            torch.set_num_threads(threads)
        unfinished = _run_in_order(units, root, force, keep_going)
        processes = None
    else:
        threads = threads or max(1, usable_cores() // jobs)
        unfinished = run_parallel(units, child_command(name, root, list(overrides), force, threads), root, force,
                                  jobs, threads, _log, keep_going)
        processes = (jobs, threads)
    lost = [(unit_prefix(units, i), units[i].outputs, why) for i, why in sorted(unfinished.items())]
    report = write_report(plan.title, stages, root, plan.report, time.perf_counter() - start, processes, lost)
    print(report)
    if unfinished:
        failed = sum(why.startswith("failed") for why in unfinished.values())
        raise PlanStopped(f"plan: {failed} unit(s) failed and {len(unfinished) - failed} not run (they read what a "
                          f"failed unit makes); {root / plan.report} lists them", 1)
    return report


def _run_in_order(units: list[Unit], root: Path, force: bool, keep_going: bool) -> dict[int, str]:
    """Every unit in this process, in plan order. A failure propagates, unless ``keep_going``: then it is logged,
    the units that read what it makes are not run, and the result maps each unit that did not finish to why. A
    signal (:class:`respkd.errors.Stopped`) always stops the plan."""
    deps, unfinished = dependencies(units), {}
    for i, unit in enumerate(units):
        if not keep_going:
            unit.execute(root, force, _log)
            continue
        lost = sorted(deps[i] & set(unfinished))
        if lost:
            unfinished[i] = f"not run: it waits for {unit_prefix(units, lost[0])}, which did not finish"
        else:
            try:
                unit.execute(root, force, _log)
            except Exception as err:  # noqa: BLE001 (--keep-going: any unit's error is reported, the plan goes on)
                unfinished[i] = f"failed: {err}"
            else:
                continue
        _log(f"{unit_prefix(units, i)} {unfinished[i]}")
    return unfinished


def prepare_data(jobs: list[Job], root: Path, force: bool, log: Callable[[str], None]) -> None:
    """Every built-in dataset that the plan's unfinished runs read from their cache, made ready before the first
    unit starts (the cache built from the offline copy, or downloaded): a dataset that cannot be had stops the plan
    at once, with the same line its first run would print, instead of after the hours of the units before that run;
    and ``--jobs`` children find the cache built instead of each building it. A ``data.path`` is left to the runs
    that read it, and a plan whose runs are all finished (and not ``force``d) needs no data."""
    seen: set[tuple] = set()
    for job in jobs:
        for cfg in job.stage.configs:
            key = (cfg.data.dataset, cfg.data.root, cfg.data.source)
            if cfg.data.path is None and key not in seen and (force or not is_finished(cfg, root)):
                seen.add(key)
                try:
                    prepare_dataset(cfg.data)
                except RespkdError as err:
                    raise RespkdError(f"{job.where} reads {describe_data(cfg.data)}: {err}") from None
    if seen:
        log(f"plan: data ready ({', '.join(sorted({k[0] for k in seen}))})")


def run_plan_unit(name: str, number: int, runs_root: str | None = None, overrides: list[str] = (),
                  force: bool = False, threads: int | None = None) -> None:
    """Run unit ``number`` (1-based, see :func:`plan_units`) of the plan ``name`` alone, in this process: what each
    child of ``--jobs`` runs (or an array job). The runs it reads must be finished."""
    check_processes(1, threads)
    plan = load_plan(name)
    root = Path(runs_root or plan.runs_root)
    units = plan_units(resolve(plan, list(overrides), root))
    if not 1 <= number <= len(units):
        raise RespkdError(f"--unit {number}: plan {resolve_plan_path(name)} has units 1 to {len(units)}")
    if threads is not None:
        torch.set_num_threads(threads)
    units[number - 1].execute(root, force, _log)


def _log(line: str) -> None:
    """A stage's progress line, on stdout at once."""
    print(line, flush=True)
