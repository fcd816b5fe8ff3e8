"""Bias adjustment of a trained net's output layer, for classes it saw too little of (or too much of) in transfer.

The paper's MNIST experiments: a student distilled on a transfer set without any 3 still learns a lot about 3s
from the soft targets of other digits, but its output bias for class 3 is too low; raising it by 3.5 fixes most
errors on 3s. A student that saw only 7s and 8s needs the biases of 7 and 8 *lowered* (by 7.6).

A shift ``s`` added to the output layer's bias of classes ``K`` adds ``s`` to exactly those logits, so the search
over shifts runs on logits computed once: ``logits[:, K] + s`` for every ``s`` of the grid. The shift is chosen on
the run's validation split (``data.val_size`` > 0, held out before the transfer filter), never on the test set; the
test set only reports the errors before and after.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from respkd.checkpoint import load_model, save_checkpoint
from respkd.classes import check_classes
from respkd.config import validate_config
from respkd.data import load_in_memory, select
from respkd.data.datasets import input_normalization
from respkd.data.memory import BatchLoader
from respkd.engine import evaluate
from respkd.errors import RespkdError

__all__ = [
    "MAX_GRID", "adjust_bias", "format_result", "output_layer", "predict", "search_shift", "shift_bias", "shift_grid",
]

MAX_GRID = 100_000


def output_layer(model: nn.Module, in_shape: tuple[int, ...]) -> nn.Linear:
    """The ``nn.Linear`` whose output is the model's output (the last one called in a forward pass), with a bias.

    Found by running one input through the model, not by module order (an MLP may register its classifier first),
    and checked: the layer's output must equal the model's output, so a bias shift shifts the logits exactly.
    """
    calls: list[tuple[nn.Linear, torch.Tensor]] = []
    hooks = [m.register_forward_hook(lambda mod, args, out: calls.append((mod, out)))
             for m in model.modules() if isinstance(m, nn.Linear)]
    param = next(model.parameters())
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, *in_shape, device=param.device, dtype=param.dtype))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    if not calls:
        raise RespkdError(f"{type(model).__name__} has no nn.Linear layer: no output bias to adjust")
    layer, last = calls[-1]
    if last.shape[-1] != out.shape[-1] or not torch.equal(last.reshape(out.shape), out):
        raise RespkdError(f"the output of {type(model).__name__} is not its last linear layer's output: "
                          "cannot shift class biases")
    if layer.bias is None:
        raise RespkdError(f"the output layer of {type(model).__name__} has no bias to adjust")
    return layer


@torch.no_grad()
def shift_bias(layer: nn.Linear, classes: Sequence[int], shift: float) -> None:
    """Add ``shift`` to the bias of ``classes`` (in place); every other parameter stays as it was."""
    layer.bias[list(classes)] += shift


def shift_grid(low: float, high: float, step: float) -> np.ndarray:
    """``low, low + step, ..., <= high`` (rounded to 1e-9, so 0 and the paper's 3.5 or -7.6 are hit exactly)."""
    if not 0 < step < np.inf:
        raise RespkdError(f"bias search step must be > 0 and finite, got {step}")
    if not np.isfinite([low, high]).all():
        raise RespkdError(f"bias search range must be finite, got {low}..{high}")
    if not low < high:
        raise RespkdError(f"bias search range must have low < high, got {low}..{high}")
    count = int(np.floor((high - low) / step + 1e-9)) + 1
    if count > MAX_GRID:
        raise RespkdError(f"bias search grid of {count} shifts is too fine (at most {MAX_GRID})")
    return np.round(low + step * np.arange(count), 9)


def search_shift(
    logits: torch.Tensor, labels: torch.Tensor, classes: Sequence[int], grid: np.ndarray
) -> tuple[float, list[int]]:
    """The shift of ``grid`` that makes the most of ``logits`` correct, and the correct counts for every shift.

    Ties: the longest run of consecutive best shifts wins (a plateau's edge is where accuracy is about to fall),
    and its middle is returned; between equally long runs, the one nearest to 0.
    """
    logits, labels = logits.float().cpu(), labels.cpu()
    mask = torch.zeros(logits.shape[1])
    mask[list(classes)] = 1.0
    correct = [int(((logits + float(s) * mask).argmax(dim=1) == labels).sum()) for s in grid]
    best = max(correct)
    runs: list[tuple[int, int]] = []  # [start, end] index ranges of consecutive best shifts
    for i, c in enumerate(correct):
        if c == best:
            if runs and runs[-1][1] == i - 1:
                runs[-1] = (runs[-1][0], i)
            else:
                runs.append((i, i))
    start, end = max(runs, key=lambda r: (r[1] - r[0], -min(abs(grid[r[0]]), abs(grid[r[1]]))))
    return float(grid[(start + end) // 2]), correct


@torch.no_grad()
def predict(model: nn.Module, loader: BatchLoader) -> torch.Tensor:
    model.eval()
    return torch.cat([model(x).float().cpu() for x, _, _ in loader])


def _class_report(metrics: dict[str, Any], classes: Sequence[int], n_per_class: list[int]) -> dict[str, Any]:
    class_errors = sum(metrics["errors_per_class"][c] for c in classes)
    class_n = sum(n_per_class[c] for c in classes)
    return {**metrics, "error_pct": 100.0 - metrics["top1"], "class_errors": class_errors, "class_n": class_n,
            "class_correct_pct": 100.0 * (class_n - class_errors) / max(class_n, 1), "n_per_class": n_per_class}


def adjust_bias(
    checkpoint: str | Path,
    classes: Sequence[int],
    shift: float | None = None,
    search: bool = False,
    low: float = -15.0,
    high: float = 15.0,
    step: float = 0.1,
    out: str | Path | None = None,
    overwrite_out: bool = False,
    data_path: str | None = None,
    data_root: str | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Shift the output bias of ``classes`` by ``shift``, or by the shift a grid search picks on the validation split.

    Returns the shift, the search (grid, correct counts on the validation split) and the test metrics before and
    after, overall and for ``classes``. With ``out``, writes the adjusted checkpoint there (never over
    ``checkpoint``; an existing ``out`` only with ``overwrite_out``), its metadata recording the adjustment.
    Every check of the input comes before any computation or writing.
    """
    if (shift is None) == (not search):
        raise RespkdError("give either a shift or search (not both, not neither)")
    if shift is not None and not np.isfinite(shift):
        raise RespkdError(f"the shift must be a finite number, got {shift}")
    classes = list(classes)
    if not classes:
        raise RespkdError("name at least one class whose bias to shift")
    if len(set(classes)) != len(classes):
        raise RespkdError(f"classes {classes} repeat a class")
    grid = shift_grid(low, high, step) if search else None
    if out is not None:
        out = Path(out)
        if out.resolve() == Path(checkpoint).resolve():
            raise RespkdError(f"--out {out} is the input checkpoint: the adjusted model is written to a new file")
        if out.exists() and not overwrite_out:
            raise RespkdError(f"{out} already exists; choose another --out")
    model, meta = load_model(checkpoint, device)
    cfg = validate_config(meta.get("config"), f"{checkpoint} (embedded config)")
    num_classes = int(meta["num_classes"])
    bad = [c for c in classes if not 0 <= c < num_classes]
    if bad:
        raise RespkdError(f"class {bad[0]} does not exist (the model has classes 0..{num_classes - 1})")
    if search and cfg.data.val_size == 0:
        raise RespkdError(f"{checkpoint}: the bias search needs a validation split, but its run had data.val_size 0 "
                          "(retrain with data.val_size > 0, or give a fixed shift)")
    layer = output_layer(model, tuple(meta["in_shape"]))
    d = cfg.data
    data = select(load_in_memory(d, data_root, data_path), cfg)
    check_classes(meta, data.info.class_names, "checkpoint", "data")
    norm = input_normalization(data.info, d.normalize)
    test_loader = BatchLoader(data.test_images, data.test_labels, 1000, *norm, device=device)
    n_per_class = torch.bincount(data.test_labels, minlength=num_classes).tolist()
    before = _class_report(evaluate(model, test_loader, num_classes), classes, n_per_class)

    result: dict[str, Any] = {"checkpoint": str(checkpoint), "classes": classes, "searched": search}
    if search:
        val_loader = BatchLoader(data.val_images, data.val_labels, 1000, *norm, device=device)
        shift, correct = search_shift(predict(model, val_loader), data.val_labels, classes, grid)
        n_val = len(data.val_labels)
        zero = int(np.argmin(np.abs(grid)))
        result["search"] = {
            "split": "validation", "n": n_val, "low": low, "high": high, "step": step,
            "val_errors_at_best": n_val - max(correct),
            "val_errors_at_nearest_to_zero": n_val - correct[zero],
            "grid": [float(g) for g in grid], "val_correct": correct,
        }
    shift_bias(layer, classes, shift)
    after = _class_report(evaluate(model, test_loader, num_classes), classes, n_per_class)
    result.update({"shift": float(shift), "before": before, "after": after})

    if out is not None:
        adjustment = {"classes": classes, "shift": float(shift), "searched": search,
                      "source": str(checkpoint), "source_weights_sha256": meta["weights_sha256"]}
        new_meta = {k: v for k, v in meta.items() if k not in ("format", "weights_sha256")}
        new_meta.update({"metrics": {k: after[k] for k in ("top1", "top5", "errors", "n", "loss", "errors_per_class")},
                         "bias_adjustment": adjustment})
        save_checkpoint(model.state_dict(), out, new_meta)
        result["out"] = str(out)
    return result


def format_result(r: dict[str, Any]) -> str:
    """Before/after in a few lines, for the terminal."""
    b, a = r["before"], r["after"]
    how = (f"searched on {r['search']['n']} validation examples over {r['search']['low']:g}..{r['search']['high']:g} "
           f"step {r['search']['step']:g}" if r["searched"] else "given")
    lines = [
        f"{r['checkpoint']}: bias of class(es) {','.join(map(str, r['classes']))} shifted by {r['shift']:+g} ({how})",
        f"  test errors {b['errors']}/{b['n']} ({b['error_pct']:.2f}%) -> {a['errors']}/{a['n']} ({a['error_pct']:.2f}%)",
        f"  errors on class(es) {','.join(map(str, r['classes']))}: {b['class_errors']}/{b['class_n']} -> "
        f"{a['class_errors']}/{a['class_n']}",
        "  per class (before -> after): " + ", ".join(
            f"{c}: {x}->{y}" for c, (x, y) in enumerate(zip(b["errors_per_class"], a["errors_per_class"]))),
    ]
    if "out" in r:
        lines.append(f"  adjusted checkpoint written to {r['out']}")
    return "\n".join(lines)
