"""Runs that differ only by their seed, reported as one: mean and sample standard deviation of the test metrics.

One run's test errors move by several errors from seed to seed (on MNIST, 800-800 nets trained alike span 141-158),
so a gain smaller than that spread is indistinguishable from noise. ``respkd train CONFIG --seeds 0,1,2`` ends with
:func:`seed_report` over its runs (written to ``<runs-root>/<name>.seeds.json`` and ``.md``: a dot, not a dash, so
``runs/<name>-seed*`` still matches only the run folders), and ``respkd table`` folds runs of the same config into
one row with :func:`group_runs`.

The standard deviation is the sample one (n - 1 in the denominator, ``statistics.stdev``): the seeds are a sample of
the seeds one could have drawn. With one run it is undefined (None).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from respkd import distributed
from respkd.files import atomic_write_text

__all__ = [
    "METRICS", "base_name", "fmt_mean_std", "group_runs", "mean_std", "report_seeds", "seed_report",
    "seed_report_markdown", "without_seed", "write_seed_report",
]

METRICS = ("top1", "top5", "errors")  # test top-1 and top-5 accuracy (%), test errors


def mean_std(values: list[float]) -> dict[str, float | None]:
    """``{"mean", "std"}``; ``std`` is the sample standard deviation, None for a single value."""
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else None}


def without_seed(config: dict[str, Any]) -> str:
    """What two runs must share to be seeds of one experiment: the whole config except ``seed`` and ``name``."""
    return json.dumps({k: v for k, v in config.items() if k not in ("seed", "name")}, sort_keys=True)


def base_name(names: list[str], seeds: list[int]) -> str:
    """``x`` for runs named ``x-seed<k>`` after their own seeds (what ``--seeds`` names them), else the names joined."""
    suffixes = [f"-seed{seed}" for seed in seeds]
    if all(n.endswith(x) for n, x in zip(names, suffixes)):
        bases = {n.removesuffix(x) for n, x in zip(names, suffixes)}
        if len(bases) == 1:
            return bases.pop()
    return ", ".join(dict.fromkeys(names))


def group_runs(summaries: list[dict[str, Any]]) -> list[list[int]]:
    """Indices of ``summaries`` grouped by config-without-seed, groups and members in order of first appearance."""
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(summaries):
        groups.setdefault(without_seed(s["config"]), []).append(i)
    return list(groups.values())


def seed_report(run_dirs: list[Path], summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-run test metrics of runs that differ only by seed, and their mean and sample standard deviation."""
    seeds = [s["config"].get("seed") for s in summaries]
    per_seed = [{"seed": seed, "run": str(d), **{k: s["metrics"][k] for k in METRICS}}
                for seed, d, s in zip(seeds, run_dirs, summaries)]
    return {
        "name": base_name([s["name"] for s in summaries], seeds), "n": len(summaries), "seeds": seeds,
        "test_n": summaries[0]["metrics"]["n"],
        **{k: mean_std([float(r[k]) for r in per_seed]) for k in METRICS},
        "per_seed": per_seed,
    }


def fmt_mean_std(stats: dict[str, float | None], digits: int) -> str:
    """``98.52 ± 0.07``, or the mean alone when there is no standard deviation (one run)."""
    if stats["std"] is None:
        return f"{stats['mean']:.{digits}f}"
    return f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f}"


def seed_report_markdown(report: dict[str, Any]) -> str:
    """The per-seed values, then mean ± sample standard deviation, as a markdown table."""
    lines = [f"# {report['name']}: {report['n']} seeds", "",
             "| seed | run | Top-1 (%) | Top-5 (%) | Test errors |", "| ---: | --- | ---: | ---: | ---: |"]
    for r in report["per_seed"]:
        lines.append(f"| {r['seed']} | {r['run']} | {r['top1']:.2f} | {r['top5']:.2f} | {r['errors']} / "
                     f"{report['test_n']} |")
    lines.append(f"| mean ± std (n={report['n']}) | | {fmt_mean_std(report['top1'], 2)} | "
                 f"{fmt_mean_std(report['top5'], 2)} | {fmt_mean_std(report['errors'], 1)} / {report['test_n']} |")
    lines += ["", "std: sample standard deviation (n - 1) over the seeds."]
    return "\n".join(lines) + "\n"


def write_seed_report(runs_root: Path, name: str, report: dict[str, Any]) -> Path:
    """``<runs_root>/<name>.seeds.json`` and ``.md`` (written atomically); returns the .md path."""
    md = Path(runs_root) / f"{name}.seeds.md"
    atomic_write_text(md.with_suffix(".json"), json.dumps(report, indent=2))
    atomic_write_text(md, seed_report_markdown(report))
    return md


def report_seeds(name: str, runs_root: Path, run_dirs: list[Path], summaries: list[dict[str, Any]]) -> None:
    """What ``--seeds`` ends with: print the seed report; with two or more runs, also write it (see above).

    One seed alone (``--seeds 3``: one member of an array job) writes nothing, so members trained in parallel do not
    overwrite each other's report; ``respkd table`` groups the finished members afterwards. Under torchrun every
    process trained the runs, and process 0 alone reports them.
    """
    if not distributed.is_main_process():
        return
    report = seed_report(run_dirs, summaries)
    print(seed_report_markdown(report), end="")
    if len(run_dirs) > 1:
        md = write_seed_report(runs_root, name, report)
        print(f"written to {md} and {md.with_suffix('.json')}")
