"""Test accuracy of the generalist alone and of the generalist combined with its specialists.

Reported, as in the paper's tables 3 and 4: top-1 over the whole test set; on the test examples whose true class is
covered by at least one specialist ("covered classes"); on the inputs for which at least one specialist was active;
and by the number of specialists covering the true class (0, 1, 2, ...): examples, correct answers of each, the
change in correct answers and the relative change in accuracy. Also what the specialists cost, in training examples
processed (``examples_seen``, and in epochs of the generalist's training set), for a compute-matched control.
Nothing here chooses anything: the test set is only measured.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any, Sequence

import torch

from respkd.bias import predict
from respkd.checkpoint import CHECKPOINT_NAME, SUMMARY_NAME, load_model, read_checkpoint_meta
from respkd.data.memory import BatchLoader
from respkd.errors import RespkdError
from respkd.files import atomic_write_text, read_json
from respkd.provenance import made_from, read_record, same_inputs
from respkd.specialists.combine import combine
from respkd.specialists.config import SpecialistsConfig
from respkd.specialists.context import (SUBSETS_NAME, generalist_path, is_trained, load_context, specialist_dir,
                                        subsets_spec)

__all__ = ["CHUNK", "EVAL_NAME", "accuracy_report", "control_section", "eval_up_to_date", "evaluate_specialists",
           "markdown_section", "read_eval"]

EVAL_NAME = "eval.json"
CHUNK = 4096  # rows combined at once (each row is its own problem; this only bounds memory)


def accuracy_report(p_g: torch.Tensor, q: torch.Tensor, labels: torch.Tensor, covered_by: Sequence[int],
                    active: torch.Tensor) -> dict[str, Any]:
    """Top-1 of the generalist (``p_g``) and the combination (``q``): overall, covered, active, by covering count."""
    gen_ok = p_g.argmax(dim=1) == labels
    comb_ok = q.argmax(dim=1) == labels
    cover = torch.tensor(list(covered_by))[labels]

    def part(mask: torch.Tensor) -> dict[str, Any]:
        n = int(mask.sum())
        g, c = int(gen_ok[mask].sum()), int(comb_ok[mask].sum())
        return {"n": n, "generalist_correct": g, "combined_correct": c,
                "generalist_top1": 100.0 * g / n if n else None, "combined_top1": 100.0 * c / n if n else None}

    everything = torch.ones_like(labels, dtype=torch.bool)
    by_covering = []
    for m in sorted(set(cover.tolist())):
        row = part(cover == m)
        row["delta_correct"] = row["combined_correct"] - row["generalist_correct"]
        row["relative_change_pct"] = (100.0 * row["delta_correct"] / row["generalist_correct"]
                                      if row["generalist_correct"] else None)
        by_covering.append({"specialists": m, **row})
    active_any = active.any(dim=1) if active.numel() else torch.zeros_like(labels, dtype=torch.bool)
    return {"overall": part(everything), "covered": part(cover > 0), "active": part(active_any),
            "by_covering": by_covering}


def evaluate_specialists(cfg: SpecialistsConfig, runs_root: str | Path = "runs", write: bool = True) -> dict[str, Any]:
    """Combine the finished specialists with the generalist on the test set; writes ``eval.json`` and
    ``specialists.md`` into the specialists' folder (``write``). Every specialist must be finished."""
    ctx = load_context(cfg, runs_root)
    record = read_record(ctx.out_dir / SUBSETS_NAME)
    if record is None or not same_inputs(record.get("spec"), subsets_spec(ctx)):
        raise RespkdError(f"{ctx.out_dir / SUBSETS_NAME} is missing or was made from another generalist or subsets "
                          f"config: run 'respkd specialists train' first")
    subsets = [list(s) for s in record["subsets"]]
    missing = [k for k in range(len(subsets)) if not is_trained(ctx, subsets, k)]
    if missing:
        raise RespkdError(f"specialist(s) {', '.join(map(str, missing))} of {len(subsets)} not finished (or stale) in "
                          f"{ctx.out_dir}: run 'respkd specialists train' first")
    data = ctx.data
    loader = BatchLoader(data.test_images, data.test_labels, 1000, *ctx.norm, device=ctx.device)
    p_g = torch.softmax(predict(ctx.generalist, loader), dim=1)
    summaries, probs, digests = [], [], []
    for k in range(len(subsets)):
        model, meta = load_model(specialist_dir(ctx.out_dir, k) / CHECKPOINT_NAME, ctx.device)
        probs.append(torch.softmax(predict(model, loader), dim=1))
        digests.append(meta["weights_sha256"])
        summaries.append(read_json(specialist_dir(ctx.out_dir, k) / SUMMARY_NAME, "summary"))
    c = cfg.combine
    parts = [combine(p_g[i:i + CHUNK], [p[i:i + CHUNK] for p in probs], subsets, c.top_n, c.steps, c.lr, c.tol)
             for i in range(0, len(p_g), CHUNK)]
    q = torch.cat([r.probs for r in parts])
    active = torch.cat([r.active for r in parts])
    seen = sum(s["examples_seen"] for s in summaries)
    result = {
        "name": cfg.name, "dataset": ctx.gen_cfg.data.dataset, "generalist": str(ctx.gen_path),
        "class_names": list(data.info.class_names), "subsets": subsets, "rule": record["rule"],
        "subset_names": record["subset_names"], "covered_by": record["covered_by"],
        **accuracy_report(p_g, q, data.test_labels, record["covered_by"], active),
        "combine": {**c.model_dump(), "steps_taken": max(r.steps for r in parts),
                    "max_grad": max(r.max_grad for r in parts)},
        "specialists": [{key: s[key] for key in ("k", "subset_names", "dustbin_correction", "examples_seen",
                                                 "train_time_s", "params")}
                        | {"test_top1_subset_dustbin": s["test_metrics"]["top1"]} for s in summaries],
        "compute": {"specialist_examples_seen": seen, "generalist_train_examples": len(data.train_labels),
                    "generalist_epochs_equivalent": seen / max(len(data.train_labels), 1),
                    "specialist_train_time_s": round(sum(s["train_time_s"] for s in summaries), 2)},
        "spec": {"generalist_weights_sha256": ctx.gen_meta["weights_sha256"], "specialists_weights_sha256": digests,
                 "combine": c.model_dump(), "data_sha256": data.sha256},
    }
    if write:
        atomic_write_text(ctx.out_dir / EVAL_NAME, json.dumps(result, indent=2))
        atomic_write_text(ctx.out_dir / "specialists.md", markdown_section([result]) + "\n")
    return result


def eval_up_to_date(cfg: SpecialistsConfig, runs_root: str | Path) -> bool:
    """Whether ``eval.json`` was made from the current generalist, specialists (their weights) and combine settings.

    Reads checkpoint headers only, so a plan can skip the evaluation without loading any data."""
    folder = Path(runs_root) / cfg.name
    record = read_record(folder / SUBSETS_NAME)
    if record is None:
        return False
    try:
        digests = [read_checkpoint_meta(specialist_dir(folder, k) / CHECKPOINT_NAME)["weights_sha256"]
                   for k in range(len(record["subsets"]))]
        generalist = read_checkpoint_meta(generalist_path(cfg, Path(runs_root)))["weights_sha256"]
    except (RespkdError, KeyError):
        return False
    current = {"generalist_weights_sha256": generalist, "specialists_weights_sha256": digests,
               "combine": cfg.combine.model_dump()}
    # Only these parts of the recorded spec: its data digest cannot be checked without loading the data.
    return made_from(folder / EVAL_NAME, current, normalize=lambda spec: {key: spec.get(key) for key in current})


def _mean_std(values: list[float | None]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return ""
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def markdown_section(results: list[dict[str, Any]]) -> str:
    """The results as markdown: generalist vs generalist + specialists, then the paper's table 4 shape.

    Several results (one per seed) give mean ± sample standard deviation in the first table and counts summed over
    the seeds in the second.
    """
    if not results:
        raise RespkdError("no specialists results to tabulate")
    r0, s = results[0], len(results)
    ks = sorted({len(r["subsets"]) for r in results})
    seeds = f" ({s} runs: mean ± standard deviation)" if s > 1 else ""
    lines = [f"| model | test top-1 (%){seeds} | top-1 on covered classes (%) | top-1 where a specialist is active (%) |",
             "|---|---:|---:|---:|"]
    for who in ("generalist", "combined"):
        label = "generalist" if who == "generalist" else f"generalist + {'/'.join(map(str, ks))} specialists"
        lines.append(f"| {label} | {_mean_std([r['overall'][f'{who}_top1'] for r in results])} | "
                     f"{_mean_std([r['covered'][f'{who}_top1'] for r in results])} | "
                     f"{_mean_std([r['active'][f'{who}_top1'] for r in results])} |")
    rows: dict[int, list[int]] = {}
    for r in results:
        for row in r["by_covering"]:
            acc = rows.setdefault(row["specialists"], [0, 0, 0])
            acc[0] += row["n"]
            acc[1] += row["generalist_correct"]
            acc[2] += row["combined_correct"]
    summed = f" (summed over {s} runs)" if s > 1 else ""
    lines += ["", f"| specialists covering the true class | test examples{summed} | generalist correct | "
                  "combined correct | change in correct | relative accuracy change |",
              "|---:|---:|---:|---:|---:|---:|"]
    for m in sorted(rows):
        n, g, c = rows[m]
        rel = f"{100.0 * (c - g) / g:+.2f}%" if g else ""
        lines.append(f"| {m} | {n} | {g} | {c} | {c - g:+d} | {rel} |")
    active = [100.0 * r["active"]["n"] / r["overall"]["n"] for r in results]
    epochs = [r["compute"]["generalist_epochs_equivalent"] for r in results]
    lines += ["", f"{r0['dataset']}, subsets by {r0['rule']}: "
                  + "; ".join("{" + ", ".join(n) + "}" for n in r0["subset_names"])
              + (" (first run)" if s > 1 else "") + f". A specialist was active for {_mean_std(active)}% of the test "
              f"inputs (top-{r0['combine']['top_n']} rule). The specialists processed "
              f"{_mean_std(epochs)} epochs' worth of the generalist's training set."]
    return "\n".join(lines)


def control_section(results: list[dict[str, Any]], controls: list[dict[str, Any]]) -> str:
    """Generalist + specialists against a compute-matched control, one control run per specialists run (same order,
    e.g. the same seeds): the generalist trained further, from its own weights, for about the specialists' compute.

    The verdict asks whether the combination beats the control by more than one standard deviation of the seeds (the
    larger of the two rows' sample standard deviations): a gain smaller than that is not told apart from noise.
    """
    if len(controls) != len(results):
        raise RespkdError(f"{len(controls)} control run(s) for {len(results)} specialists run(s): give one control per "
                          "specialists folder, in the same order")
    combined = [r["overall"]["combined_top1"] for r in results]
    try:
        control = [float(c["metrics"]["top1"]) for c in controls]
    except (KeyError, TypeError, ValueError):
        raise RespkdError("a control's summary.json has no test top-1 (metrics.top1): give finished training runs "
                          "as --control") from None
    diffs = [a - b for a, b in zip(combined, control)]
    lines = ["| model | test top-1 (%) | per run |", "|---|---:|---|",
             f"| generalist | {_mean_std([r['overall']['generalist_top1'] for r in results])} | "
             + ", ".join(f"{r['overall']['generalist_top1']:.2f}" for r in results) + " |",
             f"| generalist + specialists | {_mean_std(combined)} | " + ", ".join(f"{v:.2f}" for v in combined) + " |",
             f"| compute-matched control | {_mean_std(control)} | " + ", ".join(f"{v:.2f}" for v in control) + " |",
             f"| specialists minus control | {_mean_std(diffs)} | " + ", ".join(f"{v:+.2f}" for v in diffs) + " |"]
    gap = statistics.mean(diffs)
    if len(results) > 1:
        sd = max(statistics.stdev(combined), statistics.stdev(control))
        verdict = "above" if gap > sd else "not above"
        lines += ["", f"Generalist + specialists are {verdict} the control by more than one standard deviation of the "
                      f"seeds (mean difference {gap:+.2f} points, standard deviation {sd:.2f})."]
    epochs = [c.get("epochs") for c in controls]
    spent = [r["compute"]["generalist_epochs_equivalent"] for r in results]
    lines += ["", f"The control trained {'/'.join(str(e) for e in sorted(set(epochs)))} more epochs; the specialists "
                  f"processed {_mean_std(spent)} epochs' worth of examples (plus a generalist forward pass per example "
                  "when they learn from its soft targets)."]
    return "\n".join(lines)


def read_eval(folder: Path) -> dict[str, Any]:
    value = read_record(Path(folder) / EVAL_NAME)
    if value is None:
        raise RespkdError(f"{folder}: no {EVAL_NAME} (run 'respkd specialists eval' first)")
    return value
