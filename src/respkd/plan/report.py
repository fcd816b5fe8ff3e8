"""A plan's report (``REPORT.md`` in its runs root): the results table of its runs, each stage's measures against
the paper's numbers, each stage's own section, the notes, and what the plan cost."""

from __future__ import annotations

from pathlib import Path

from respkd.environment import capture_environment
from respkd.files import atomic_write_text
from respkd.plan.stage import Job
from respkd.report import read_summary, results_table

__all__ = ["MEASURE_TEXT", "write_report"]

MEASURE_TEXT = {"test_errors": "test errors", "test_error_pct": "test error %"}  # the names shown, where they differ


def _fmt(value: float | None) -> str:
    if value is None:
        return ""
    return str(int(value)) if float(value).is_integer() else f"{value:.2f}"


def write_report(title: str, jobs: list[Job], root: Path, report_name: str, elapsed: float,
                 processes: tuple[int, int] | None = None,
                 unfinished: list[tuple[str, list[str], str]] = ()) -> str:
    """Write ``root / report_name`` for the finished ``jobs``; returns its text. ``elapsed``: this invocation's
    seconds (the runs' own wall times are read from their summaries); ``processes``: (N, threads) when the
    invocation ran N processes at a time (``--jobs``), None when it ran everything in itself. ``unfinished``: the
    units that did not finish (``--keep-going``), as (``[K/U name]``, outputs, why): a stage that was to make any of
    their outputs shows no measures or section, and the report lists them."""
    lost = {name for _, outputs, _ in unfinished for name in outputs}
    done = {job.index for job in jobs if not lost & set(job.stage.outputs)}
    run_dirs = [root / name for job in jobs for name in job.stage.table_runs()
                if name not in lost and (root / name / "summary.json").is_file()]
    lines = [f"# {title}", ""]
    if unfinished:
        lines += ["## Not finished", "", *[f"- {unit} {why}" for unit, _, why in unfinished], ""]
    if run_dirs:
        summaries = [read_summary(d) for d in run_dirs]
        # Runs that held out a validation split (data.val_size) were chosen on it: its errors sit beside the test's.
        with_val = any(s.get("val_metrics") for s in summaries)
        lines += [results_table(run_dirs, link_root=root), "",
                  "| run | test errors |" + (" validation errors |" if with_val else "")
                  + " training examples | wall time (min) | s/epoch | precision |",
                  "|---|---:|" + ("---:|" if with_val else "") + "---:|---:|---:|---|"]
        for s in summaries:
            val = s.get("val_metrics")
            val_cell = (f" {val['errors']} / {val['n']} |" if val else " |") if with_val else ""
            lines.append(f"| {s['name']} | {s['metrics']['errors']} |{val_cell} {s.get('n_train', '')} | "
                         f"{s['wall_time_s'] / 60:.1f} | {s['seconds_per_epoch']:.2f} | {s.get('precision', '')} |")
        lines.append("")
    lines += ["## Against the paper", "", "| stage | measure | ours | paper |", "|---|---|---:|---:|"]
    for job in jobs:
        ours = job.stage.measures(root) if job.index in done else {}
        for m in job.stage.shown_measures():
            value = _fmt(ours.get(m)) if job.index in done else "not finished"
            lines.append(f"| {job.label} | {MEASURE_TEXT.get(m, m)} | {value} | {_fmt(job.stage.paper.get(m))} |")
    for job in (j for j in jobs if j.index in done):
        section = job.stage.section(root)
        if section:
            lines += ["", *section]
    notes = [f"- **{job.label}**: {job.stage.note}" for job in jobs if job.stage.note]
    if notes:
        lines += ["", "## Notes", "", *notes]
    env = read_summary(run_dirs[-1])["environment"] if run_dirs else capture_environment()
    # The whole plan's cost, whichever invocations ran its stages: the runs' own wall times (training + evaluation)
    # plus the time spent building or opening their teacher caches.
    runs_wall = sum(s["wall_time_s"] + ((s.get("teacher_cache") or {}).get("setup_time_s") or 0)
                    for s in map(read_summary, run_dirs))
    machine = f"{env['cpu']}, {env['torch_threads']} threads" if processes is None else env["cpu"]
    how = "" if processes is None else (f", running up to {processes[0]} processes of {processes[1]} thread(s) "
                                        "side by side")
    lines += ["", f"Machine: {machine}, torch {env['torch']}. "
              f"The plan's runs took {runs_wall / 60:.1f} min of wall time together (each run's own, as measured "
              f"when it ran). This invocation took {elapsed / 60:.1f} min{how} (finished stages are skipped, not "
              "rerun)."]
    text = "\n".join(lines) + "\n"
    atomic_write_text(root / report_name, text)
    return text
