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

Every stage kind is data; each may carry ``paper`` (numbers from the paper, by measure name: the measures each kind
reports are listed in ``MEASURES``; an unknown name is an error) and ``note`` (shown in the report). Everything is
validated before the first stage runs: configs, names (no two stages may write the same run), and that every run a
stage reads is made by an earlier stage or already exists under ``runs_root``. A stage whose outputs already exist
for exactly the same inputs is skipped, so an interrupted reproduction continues with the first unfinished stage.
At the end the plan writes its report (``REPORT.md``) in ``runs_root``, comparing each measure with the paper's.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, model_validator

from respkd.bias import adjust_bias
from respkd.checkpoint import atomic_write_text, read_checkpoint_meta
from respkd.config import (MAX_PROBLEMS, ClassIndex, PathText, RunConfig, RunName, Seed, Temperature, dotted,
                           format_validation_error, join_problems, key_suggestion, load_config, read_yaml_mapping,
                           with_seed)
from respkd.errors import RespkdError
from respkd.evaluate import evaluate_ensemble
from respkd.experiment import CHECKPOINT_NAME, environment, is_finished, run_many  # is_finished: re-exported
from respkd.models import MAX_WIDTH
from respkd.report import read_summary, results_table
from respkd.sweep import Cell, check_plotting, run_sweep, sweep_cells, sweep_folder, sweep_table, width_label

PLANS_DIR = Path("configs/plans")


class StageBase(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)
    paper: dict[str, float] = {}
    note: str = ""


class RunStage(StageBase):
    """Train or distil one config (or one run per seed)."""

    kind: Literal["run"] = "run"
    config: PathText
    set: dict[str, Any] = {}
    seeds: list[Seed] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _unique_seeds(self) -> "RunStage":
        if self.seeds is not None and len(set(self.seeds)) != len(self.seeds):
            raise ValueError("'seeds' repeats a seed")
        return self


class SweepStage(StageBase):
    """One distillation config at every temperature (and hidden size): see :mod:`respkd.sweep`."""

    kind: Literal["sweep"]
    config: PathText
    set: dict[str, Any] = {}
    temperatures: list[Temperature] = Field(..., min_length=1)
    hidden: list[list[Annotated[int, Field(ge=1, le=MAX_WIDTH)]]] = []


class BiasStage(StageBase):
    """Shift output biases of a finished run's model (see :mod:`respkd.bias`); writes ``<name>/``."""

    kind: Literal["bias"]
    run: PathText
    name: RunName | None = None  # default: <run>-bias
    classes: list[Annotated[ClassIndex, Field(ge=0)]] = Field(..., min_length=1)
    shift: float | None = Field(None, ge=-1000, le=1000)
    search: bool = False
    low: float = Field(-15.0, ge=-1000, le=1000)
    high: float = Field(15.0, ge=-1000, le=1000)
    step: float = Field(0.1, gt=0, le=1000)

    @model_validator(mode="after")
    def _shift_or_search(self) -> "BiasStage":
        if (self.shift is None) == (not self.search):
            raise ValueError("give either 'shift' or 'search: true'")
        if self.search and not self.low < self.high:
            raise ValueError("'low' must be below 'high'")
        return self

    @property
    def out_name(self) -> str:
        return self.name or f"{self.run}-bias"


class SpecialistsStage(StageBase):
    """Train the specialists of a specialists config (``workers`` processes at a time), then evaluate them with the
    generalist on the test set (see :mod:`respkd.specialists`). Only the stage's own ``set`` applies: the plan's
    ``--set`` overrides are run-config keys."""

    kind: Literal["specialists"]
    config: PathText
    set: dict[str, Any] = {}
    workers: int = Field(1, ge=1, le=256)


class EnsembleEvalStage(StageBase):
    """Test errors of an ensemble of finished runs, of each member, and of a net distilled from it."""

    kind: Literal["ensemble_eval"]
    name: RunName
    runs: list[PathText] = Field(..., min_length=2)
    combine: Literal["mean_probs", "mean_logits"] = "mean_probs"
    temperature: Temperature = 1.0
    distilled: PathText | None = None


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


# What each kind reports, by the names `paper:` may use. Percentages are of the test set.
RUN_MEASURES = ("test_errors", "test_error_pct")
BIAS_MEASURES = ("shift", "test_errors_before", "test_errors_after", "test_error_pct_before", "test_error_pct_after",
                 "class_errors_before", "class_errors_after", "class_correct_pct_before", "class_correct_pct_after")
ENSEMBLE_MEASURES = ("ensemble_errors", "member_errors_mean", "distilled_errors", "gain_fraction",
                     "ensemble_error_pct", "member_error_pct_mean", "distilled_error_pct")
SPECIALIST_MEASURES = ("generalist_top1", "combined_top1", "generalist_covered_top1", "combined_covered_top1")
MEASURE_TEXT = {"test_errors": "test errors", "test_error_pct": "test error %"}


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


def stage_config(stage: RunStage | SweepStage, overrides: list[str]) -> RunConfig:
    return load_config(stage.config, [f"{k}={json.dumps(v)}" for k, v in stage.set.items()] + list(overrides))


# ---------------------------------------------------------------- stages resolved against the plan


@dataclass
class Job:
    """A validated stage: the runs it makes (configs), the names it writes under the root, the runs it reads."""

    index: int
    stage: StageBase
    configs: list[RunConfig] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    needs: list[str] = field(default_factory=list)
    cells: list[Cell] = field(default_factory=list)  # sweep stages: (hidden, T, config) of each run
    sweep_base: RunConfig | None = None
    specialists: Any = None  # specialists stages: the validated SpecialistsConfig

    @property
    def label(self) -> str:
        s = self.stage
        if isinstance(s, RunStage):
            if s.seeds is None:
                return self.configs[0].name
            return f"{self.configs[0].name.rsplit('-seed', 1)[0]} (seeds {', '.join(map(str, s.seeds))}; mean)"
        if isinstance(s, SweepStage):
            return self.outputs[-1]
        return self.outputs[0]

    def stage_overrides(self) -> list[str]:
        return [f"{k}={json.dumps(v)}" for k, v in getattr(self.stage, "set", {}).items()]

    def allowed_measures(self) -> tuple[str, ...]:
        s = self.stage
        if isinstance(s, BiasStage):
            return BIAS_MEASURES
        if isinstance(s, EnsembleEvalStage):
            return ENSEMBLE_MEASURES
        if isinstance(s, SpecialistsStage):
            return SPECIALIST_MEASURES
        if isinstance(s, SweepStage):
            labels = [f"h{width_label(tuple(h))}_" for h in s.hidden] or [""]
            return tuple(f"best_T_{l}".rstrip("_") for l in labels) + tuple(
                f"errors_{l}T{t:g}" for l in labels for t in s.temperatures)
        return RUN_MEASURES


def needed_runs(cfg: RunConfig) -> list[str]:
    """The earlier runs a config reads: its teacher(s) and the run its student starts from (``init.run``)."""
    t, init = cfg.teacher, cfg.init
    teachers = [] if t is None else [t.run] if t.run is not None else list(t.runs or [])
    return teachers + ([init.run] if init is not None and init.run is not None else [])


def resolve(plan: Plan, overrides: list[str], root: Path) -> list[Job]:
    """Validate every stage before any runs, so a typo in the last one does not surface an hour in."""
    jobs = []
    for i, stage in enumerate(plan.stages, 1):
        job = Job(i, stage)
        if isinstance(stage, RunStage):
            cfg = stage_config(stage, overrides)
            job.configs = [cfg] if stage.seeds is None else [with_seed(cfg, k) for k in stage.seeds]
        elif isinstance(stage, SweepStage):
            check_plotting()
            base = stage_config(stage, overrides)
            job.sweep_base, job.cells = base, sweep_cells(base, stage.temperatures, stage.hidden)
            job.configs = [c.cfg for c in job.cells]
        job.outputs = [c.name for c in job.configs]
        if isinstance(stage, SweepStage):
            job.outputs.append(sweep_folder(Path(), job.sweep_base).name)
        job.needs = sorted({r for c in job.configs for r in needed_runs(c)})
        if isinstance(stage, BiasStage):
            job.outputs, job.needs = [stage.out_name], [stage.run]
        elif isinstance(stage, EnsembleEvalStage):
            job.outputs, job.needs = [stage.name], [*stage.runs, *([stage.distilled] if stage.distilled else [])]
        elif isinstance(stage, SpecialistsStage):
            from respkd.specialists.config import load_specialists_config
            from respkd.specialists.subsets import check_libraries

            check_libraries()
            job.specialists = load_specialists_config(stage.config, job.stage_overrides())
            g = job.specialists.generalist
            job.outputs, job.needs = [job.specialists.name], [g.run] if g.run is not None else []
        unknown = sorted(set(stage.paper) - set(job.allowed_measures()))
        if unknown:
            raise RespkdError(f"plan stage {i} ({job.label}): unknown paper measure '{unknown[0]}' (known: "
                              f"{', '.join(job.allowed_measures())})")
        jobs.append(job)

    made: dict[str, Job] = {}
    for job in jobs:
        for need in job.needs:
            if need not in made and not (root / need / CHECKPOINT_NAME).is_file():
                raise RespkdError(f"plan stage {job.index} ({job.label}) reads run '{need}', which no earlier stage "
                                  f"makes and {root / need / CHECKPOINT_NAME} does not exist")
        if isinstance(job.stage, BiasStage) and job.stage.search and job.stage.run in made:
            source = next(c for c in made[job.stage.run].configs if c.name == job.stage.run)
            if source.data.val_size == 0:
                raise RespkdError(f"plan stage {job.index} ({job.label}): the bias search needs a validation split, "
                                  f"but run '{source.name}' has data.val_size 0")
        for name in job.outputs:
            if name in made:
                raise RespkdError(f"plan: two stages share a run name ('{name}': stages {made[name].index} and "
                                  f"{job.index})")
            made[name] = job
    return jobs


# ---------------------------------------------------------------- running a stage


def bias_spec(stage: BiasStage, root: Path) -> dict[str, Any]:
    source = read_checkpoint_meta(root / stage.run / CHECKPOINT_NAME)
    fields = stage.model_dump(exclude={"paper", "note"})
    return {**fields, "source_weights_sha256": source["weights_sha256"]}


def ensemble_spec(stage: EnsembleEvalStage, root: Path) -> dict[str, Any]:
    runs = [*stage.runs, *([stage.distilled] if stage.distilled else [])]
    digests = [read_checkpoint_meta(root / r / CHECKPOINT_NAME)["weights_sha256"] for r in runs]
    return {**stage.model_dump(exclude={"paper", "note"}), "weights_sha256": digests}


def _stored_spec(path: Path) -> Any:
    try:
        return json.loads(path.read_text()).get("spec")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None


def execute(job: Job, n_stages: int, root: Path, force: bool) -> None:
    s, tag = job.stage, f"[{job.index}/{n_stages}]"

    def log(line: str) -> None:
        print(line, flush=True)

    if isinstance(s, RunStage):
        n = len(job.configs)
        tags = [tag] if n == 1 else [f"{tag}[{k}/{n}]" for k in range(1, n + 1)]
        run_many(job.configs, root, force=force, replace_changed=True, log=log, tags=tags)
    elif isinstance(s, SweepStage):
        run_sweep(job.sweep_base, s.temperatures, s.hidden, root, force=force, replace_changed=True, log=log, tag=tag)
        log(f"{tag} {job.label}: table and plot written")
    elif isinstance(s, BiasStage):
        out_dir, spec = root / s.out_name, bias_spec(s, root)
        if not force and _stored_spec(out_dir / "bias.json") == spec and (out_dir / CHECKPOINT_NAME).is_file():
            log(f"{tag} {s.out_name}: already finished in {out_dir}, skipped")
            return
        log(f"{tag} {s.out_name}: bias of class(es) {s.classes} of {s.run}, " + (f"searched over {s.low:g}..{s.high:g}"
                                                                          if s.search else f"shift {s.shift:+g}"))
        (out_dir / "bias.json").unlink(missing_ok=True)
        result = adjust_bias(root / s.run / CHECKPOINT_NAME, s.classes, shift=s.shift, search=s.search, low=s.low,
                             high=s.high, step=s.step, out=out_dir / CHECKPOINT_NAME, overwrite_out=True)
        atomic_write_text(out_dir / "bias.json", json.dumps({"spec": spec, "result": result}, indent=2))
    elif isinstance(s, SpecialistsStage):
        from respkd.specialists.evaluate import eval_up_to_date, evaluate_specialists
        from respkd.specialists.train import train_all

        cfg = job.specialists
        log(f"{tag} {cfg.name}: specialists of {cfg.generalist.run or cfg.generalist.checkpoint}, {s.workers} worker(s)")
        train_all(cfg, s.config, job.stage_overrides(), root, workers=s.workers, force=force, log=log)
        if force or not eval_up_to_date(cfg, root):
            evaluate_specialists(cfg, root)
        else:
            log(f"{tag} {cfg.name}: evaluation up to date, skipped")
    elif isinstance(s, EnsembleEvalStage):
        out_dir, spec = root / s.name, ensemble_spec(s, root)
        if not force and _stored_spec(out_dir / "ensemble.json") == spec:
            log(f"{tag} {s.name}: already finished in {out_dir}, skipped")
            return
        log(f"{tag} {s.name}: ensemble of {len(s.runs)} ({s.combine}, T={s.temperature:g})")
        result = evaluate_ensemble([root / r / CHECKPOINT_NAME for r in s.runs], s.combine, s.temperature,
                                   distilled=root / s.distilled / CHECKPOINT_NAME if s.distilled else None)
        atomic_write_text(out_dir / "ensemble.json", json.dumps({"spec": spec, "result": result}, indent=2))


def run_plan(name: str, runs_root: str | None = None, overrides: list[str] = (), force: bool = False) -> str:
    plan = load_plan(name)
    root = Path(runs_root or plan.runs_root)
    jobs = resolve(plan, list(overrides), root)
    start = time.perf_counter()
    for job in jobs:
        execute(job, len(jobs), root, force)
    report = write_report(plan, jobs, root, time.perf_counter() - start)
    print(report)
    return report


# ---------------------------------------------------------------- the report


def measures(job: Job, root: Path) -> dict[str, float | None]:
    """The numbers a finished stage reports, by the names its ``paper:`` may use."""
    s = job.stage
    if isinstance(s, RunStage):
        ms = [read_summary(root / c.name)["metrics"] for c in job.configs]
        errors = sum(m["errors"] for m in ms) / len(ms)
        return {"test_errors": errors, "test_error_pct": 100.0 * errors / ms[0]["n"]}
    if isinstance(s, BiasStage):
        r = json.loads((root / s.out_name / "bias.json").read_text())["result"]
        out = {"shift": r["shift"]}
        for when in ("before", "after"):
            m = r[when]
            out.update({f"test_errors_{when}": m["errors"], f"test_error_pct_{when}": m["error_pct"],
                        f"class_errors_{when}": m["class_errors"], f"class_correct_pct_{when}": m["class_correct_pct"]})
        return out
    if isinstance(s, EnsembleEvalStage):
        r = json.loads((root / s.name / "ensemble.json").read_text())["result"]
        n = r["ensemble"]["n"]
        d = r.get("distilled")
        return {"ensemble_errors": r["ensemble"]["errors"], "member_errors_mean": r["member_errors_mean"],
                "distilled_errors": d["errors"] if d else None, "gain_fraction": r.get("gain_fraction"),
                "ensemble_error_pct": 100.0 * r["ensemble"]["errors"] / n,
                "member_error_pct_mean": 100.0 * r["member_errors_mean"] / n,
                "distilled_error_pct": 100.0 * d["errors"] / n if d else None}
    if isinstance(s, SpecialistsStage):
        r = json.loads((root / job.specialists.name / "eval.json").read_text())
        return {"generalist_top1": r["overall"]["generalist_top1"], "combined_top1": r["overall"]["combined_top1"],
                "generalist_covered_top1": r["covered"]["generalist_top1"],
                "combined_covered_top1": r["covered"]["combined_top1"]}
    if isinstance(s, SweepStage):
        out: dict[str, float | None] = {}
        for cell in job.cells:
            label = f"h{width_label(cell.hidden)}_" if cell.hidden is not None else ""
            errors = read_summary(root / cell.cfg.name)["metrics"]["errors"]
            out[f"errors_{label}T{cell.temperature:g}"] = errors
            key = f"best_T_{label}".rstrip("_")
            best = out.get(key)
            if best is None or errors < out[f"errors_{label}T{best:g}"]:
                out[key] = cell.temperature
        return out
    return {}


def _fmt(value: float | None) -> str:
    if value is None:
        return ""
    return str(int(value)) if float(value).is_integer() else f"{value:.2f}"


def _shown_measures(job: Job) -> list[str]:
    """Measures listed in the paper table: those with a paper number, plus each kind's headline ones."""
    s = job.stage
    headline = {RunStage: ["test_errors"], BiasStage: ["shift", "test_errors_before", "test_errors_after"],
                EnsembleEvalStage: ["member_errors_mean", "ensemble_errors", "distilled_errors", "gain_fraction"],
                SpecialistsStage: list(SPECIALIST_MEASURES),
                SweepStage: [m for m in job.allowed_measures() if m.startswith("best_T")]}[type(s)]
    return headline + [m for m in s.paper if m not in headline]


def write_report(plan: Plan, jobs: list[Job], root: Path, elapsed: float) -> str:
    run_dirs = [root / c.name for j in jobs if isinstance(j.stage, RunStage) for c in j.configs]
    lines = [f"# {plan.title}", ""]
    if run_dirs:
        lines += [results_table(run_dirs, link_root=root), "",
                  "| run | test errors | training examples | wall time (min) | s/epoch | precision |",
                  "|---|---:|---:|---:|---:|---|"]
        for d in run_dirs:
            s = read_summary(d)
            lines.append(f"| {s['name']} | {s['metrics']['errors']} | {s.get('n_train', '')} | "
                         f"{s['wall_time_s'] / 60:.1f} | {s['seconds_per_epoch']:.2f} | {s.get('precision', '')} |")
        lines.append("")
    lines += ["## Against the paper", "", "| stage | measure | ours | paper |", "|---|---|---:|---:|"]
    for job in jobs:
        ours = measures(job, root)
        for m in _shown_measures(job):
            lines.append(f"| {job.label} | {MEASURE_TEXT.get(m, m)} | {_fmt(ours.get(m))} | {_fmt(job.stage.paper.get(m))} |")
    for job in jobs:
        section = stage_section(job, root)
        if section:
            lines += ["", *section]
    notes = [f"- **{job.label}**: {job.stage.note}" for job in jobs if job.stage.note]
    if notes:
        lines += ["", "## Notes", "", *notes]
    env = read_summary(run_dirs[-1])["environment"] if run_dirs else environment()
    # The whole plan's cost, whichever invocations ran its stages: the runs' own wall times (training + evaluation)
    # plus the time spent building or opening their teacher caches.
    runs_wall = sum(s["wall_time_s"] + ((s.get("teacher_cache") or {}).get("setup_time_s") or 0)
                    for s in map(read_summary, run_dirs))
    lines += ["", f"Machine: {env['cpu']}, {env['torch_threads']} threads, torch {env['torch']}. "
              f"The plan's runs took {runs_wall / 60:.1f} min of wall time together (each run's own, as measured "
              f"when it ran). This invocation took {elapsed / 60:.1f} min (finished stages are skipped, not rerun)."]
    text = "\n".join(lines) + "\n"
    atomic_write_text(root / plan.report, text)
    return text


def stage_section(job: Job, root: Path) -> list[str]:
    """The detail of a non-run stage for the report (markdown lines); none for plain runs."""
    s = job.stage
    if isinstance(s, BiasStage):
        r = json.loads((root / s.out_name / "bias.json").read_text())["result"]
        how = (f"searched on {r['search']['n']} validation examples over {s.low:g}..{s.high:g}, step {s.step:g}"
               if r["searched"] else "given")
        classes = ",".join(map(str, s.classes))
        lines = [f"### {s.out_name}: bias of class(es) {classes} of {s.run} shifted by {r['shift']:+g} ({how})", "",
                 f"| | test errors | test error % | errors on class(es) {classes} | per class |", "|---|---:|---:|---:|---|"]
        for when in ("before", "after"):
            m = r[when]
            lines.append(f"| {when} | {m['errors']} / {m['n']} | {m['error_pct']:.2f} | {m['class_errors']} / "
                         f"{m['class_n']} | {' '.join(map(str, m['errors_per_class']))} |")
        return lines
    if isinstance(s, EnsembleEvalStage):
        r = json.loads((root / s.name / "ensemble.json").read_text())["result"]
        lines = [f"### {s.name}: ensemble of {len(s.runs)} ({s.combine}, T = {s.temperature:g})", "",
                 "| model | test errors | top-1 (%) |", "|---|---:|---:|"]
        for m in r["members"]:
            lines.append(f"| member {m['name']} | {m['errors']} | {m['top1']:.2f} |")
        lines.append(f"| mean member | {r['member_errors_mean']:.1f} | |")
        lines.append(f"| ensemble | {r['ensemble']['errors']} | {r['ensemble']['top1']:.2f} |")
        if r.get("distilled"):
            d = r["distilled"]
            lines.append(f"| distilled {d['name']} | {d['errors']} | {d['top1']:.2f} |")
            if r.get("gain_fraction") is not None:
                lines += ["", f"The distilled net kept {100 * r['gain_fraction']:.0f}% of the ensemble's improvement "
                              "over the mean member (the paper, speech: more than 80%)."]
        return lines
    if isinstance(s, SpecialistsStage):
        from respkd.specialists.evaluate import markdown_section, read_eval

        cfg = job.specialists
        return [f"### Specialists: {cfg.name}", "", markdown_section([read_eval(root / cfg.name)])]
    if isinstance(s, SweepStage):
        folder = sweep_folder(root, job.sweep_base)
        result = json.loads((folder / "sweep.json").read_text())
        rel = os.path.relpath(folder / "sweep.png", root)
        return [f"### Temperature sweep: {job.sweep_base.name}", "", sweep_table(result), "", f"![sweep]({rel})"]
    return []
