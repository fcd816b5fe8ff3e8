"""Confusable subsets: classes the generalist predicts together, found by K-means on its class covariance.

The paper clusters the columns of the covariance matrix of the generalist's predicted distributions, so classes that
are often given probability together land in one subset. The probabilities come from held-out data (the generalist
run's validation split, ``data.val_size``), never from the test set, and not from the training set the generalist
has fitted.

Rules (``subsets.rule``), each a C x C matrix whose columns K-means clusters:

* ``correlation`` (the default): the correlation of the class probabilities. Scale-free: every class has unit
  variance, so the clustering groups classes by *which* other classes move with them, not by how much their own
  probability varies. In a Fashion-MNIST probe (a plain script that preceded this code; a CNN generalist, k = 4)
  it found the real confusion groups: shoes, T-shirt/shirt, pullover/coat, and the rest.
* ``zero_diagonal``: the covariance with its diagonal set to 0. Found the same groups in that probe, but a class
  whose probability varies a lot still has larger entries everywhere (on the synthetic blocks of the tests it fails
  where the correlation succeeds).
* ``covariance``: the paper's rule, the raw covariance. Its diagonal (each class's variance) dominates every column,
  so K-means groups classes by the spread of their own probability: in that probe, with k = 3, it returned {Bag},
  {Ankle boot} and one 8-class lump. Kept for comparison with the paper.

A class whose probability never varies (never predicted) has an undefined correlation: its row and column are set to
0 (the diagonal to 1), so it joins whichever cluster is nearest the origin.

Sizes: K-means gives ``count`` clusters of any size; a cluster larger than ``max_size`` is split by 2-means until
every part fits. ``partners: p`` then adds to each subset, for each of its classes, the p most similar classes
outside it (the largest off-diagonal entries of the matrix), most similar first and only while the subset has fewer
than ``max_size`` classes: subsets may overlap, and a class confused with two groups is covered by both. Subsets
with fewer than ``min_size`` classes get no specialist (a one-class specialist only says "is it this class").
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from respkd.bias import predict
from respkd.errors import RespkdError
from respkd.files import atomic_write, atomic_write_text
from respkd.plot import pyplot
from respkd.specialists.config import SubsetsConfig

__all__ = [
    "add_partners", "check_libraries", "class_matrix", "find_subsets", "generalist_probabilities", "plot_subsets",
    "subsets_record", "write_subsets",
]


def check_libraries() -> None:
    """K-means needs scikit-learn and the heat map matplotlib: say so before anything runs."""
    missing = [pkg for mod, pkg in (("sklearn", "scikit-learn"), ("matplotlib", "matplotlib"))
               if importlib.util.find_spec(mod) is None]
    if missing:
        raise RespkdError(f"specialists need {' and '.join(missing)}: pip install 'respkd[specialists]' "
                          "(scikit-learn>=1.3, matplotlib>=3.7)")


def class_matrix(probs: np.ndarray, rule: str) -> np.ndarray:
    """The C x C matrix clustered by ``rule`` (module doc), from ``(N, C)`` predicted probabilities, in float64."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or len(probs) < 2:
        raise RespkdError(f"need predicted probabilities of at least 2 examples, got shape {probs.shape}")
    cov = np.cov(probs, rowvar=False)
    if rule == "covariance":
        return cov
    if rule == "zero_diagonal":
        out = cov.copy()
        np.fill_diagonal(out, 0.0)
        return out
    if rule == "correlation":
        std = np.sqrt(np.clip(np.diag(cov), 0.0, None))
        varies = std > 0
        out = np.zeros_like(cov)
        out[np.ix_(varies, varies)] = cov[np.ix_(varies, varies)] / np.outer(std[varies], std[varies])
        np.fill_diagonal(out, 1.0)
        return np.clip(out, -1.0, 1.0)
    raise RespkdError(f"unknown subset rule '{rule}'")


def _kmeans(points: np.ndarray, k: int, cfg: SubsetsConfig) -> np.ndarray:
    from sklearn.cluster import KMeans

    return KMeans(n_clusters=k, n_init=cfg.n_init, random_state=cfg.seed).fit_predict(points)


def _split(matrix: np.ndarray, members: list[int], max_size: int | None, cfg: SubsetsConfig) -> list[list[int]]:
    """``members`` as it is, or split by 2-means (recursively) until every part has at most ``max_size`` classes."""
    if max_size is None or len(members) <= max_size:
        return [members]
    labels = _kmeans(matrix[members], 2, cfg)
    a = [m for m, l in zip(members, labels) if l == 0]
    b = [m for m, l in zip(members, labels) if l == 1]
    if not a or not b:  # identical columns: K-means cannot tell them apart; halve in class order
        a, b = members[: len(members) // 2], members[len(members) // 2:]
    return _split(matrix, a, max_size, cfg) + _split(matrix, b, max_size, cfg)


def add_partners(subset: list[int], similarity: np.ndarray, partners: int, max_size: int | None) -> list[int]:
    """``subset`` plus, for each member, its ``partners`` most similar classes outside it (most similar first),
    while it has fewer than ``max_size`` classes."""
    inside = set(subset)
    candidates = []
    for c in subset:
        ranked = [j for j in np.argsort(-similarity[c], kind="stable") if j != c and j not in inside]
        candidates += [(float(similarity[c, j]), int(j)) for j in ranked[:partners]]
    out = list(subset)
    for _, j in sorted(candidates, key=lambda t: (-t[0], t[1])):
        if max_size is not None and len(out) >= max_size:
            break
        if j not in out:
            out.append(j)
    return sorted(out)


def find_subsets(matrix: np.ndarray, cfg: SubsetsConfig) -> dict[str, Any]:
    """Cluster the columns of ``matrix`` into subsets (module doc). Returns ``clusters`` (the partition, after
    splitting), ``subsets`` (those that get a specialist, partners added, each sorted, in order of their smallest
    class) and ``covered_by`` (how many subsets hold each class)."""
    num_classes = matrix.shape[0]
    if cfg.count > num_classes:
        raise RespkdError(f"subsets.count is {cfg.count} but there are only {num_classes} classes")
    labels = _kmeans(matrix, cfg.count, cfg) if cfg.count > 1 else np.zeros(num_classes, dtype=int)
    clusters = []
    for label in sorted(set(labels.tolist()), key=lambda l: int(np.flatnonzero(labels == l)[0])):
        clusters += _split(matrix, [int(c) for c in np.flatnonzero(labels == label)], cfg.max_size, cfg)
    similarity = matrix.astype(np.float64).copy()
    np.fill_diagonal(similarity, -np.inf)
    subsets: list[list[int]] = []
    for cluster in clusters:
        subset = add_partners(cluster, similarity, cfg.partners, cfg.max_size) if cfg.partners else sorted(cluster)
        if len(subset) >= cfg.min_size and subset not in subsets:
            subsets.append(subset)
    subsets.sort()
    if not subsets:
        raise RespkdError(f"no subset has at least subsets.min_size={cfg.min_size} classes (clusters: {clusters}); "
                          "lower min_size, raise partners or change count")
    full = [s for s in subsets if len(s) == num_classes]
    if full:
        raise RespkdError("a subset covers every class, leaving nothing for its dustbin: raise subsets.count or set "
                          "subsets.max_size")
    covered_by = [sum(c in s for s in subsets) for c in range(num_classes)]
    return {"clusters": [sorted(c) for c in clusters], "subsets": subsets, "covered_by": covered_by}


def generalist_probabilities(model, loader) -> np.ndarray:
    """Softmax of ``model`` over every example of ``loader``, as float64 numpy (rows in loader order)."""
    return torch.softmax(predict(model, loader), dim=1).double().numpy()


def subsets_record(probs: np.ndarray, cfg: SubsetsConfig, class_names: Sequence[str], spec: dict[str, Any]) -> dict[str, Any]:
    """Everything ``subsets.json`` holds: the matrix, the clusters, the subsets (by index and by name), the spec."""
    matrix = class_matrix(probs, cfg.rule)
    found = find_subsets(matrix, cfg)
    return {
        "rule": cfg.rule, "n_val": int(len(probs)), "class_names": list(class_names),
        "matrix": matrix.round(8).tolist(), **found,
        "subset_names": [[class_names[c] for c in s] for s in found["subsets"]],
        "uncovered": [c for c, n in enumerate(found["covered_by"]) if n == 0],
        "spec": spec,
    }


def write_subsets(folder: Path, record: dict[str, Any]) -> None:
    """``subsets.json`` and ``subsets.png`` in ``folder`` (each written atomically)."""
    folder.mkdir(parents=True, exist_ok=True)
    plot_subsets(record, folder / "subsets.png")
    atomic_write_text(folder / "subsets.json", json.dumps(record, indent=2))


def plot_subsets(record: dict[str, Any], path: Path) -> None:
    """Left: the clustered matrix, classes ordered by cluster, each cluster boxed. Right: which classes each
    specialist covers (overlaps show as a class in two rows). matplotlib imported here, Agg backend."""
    check_libraries()
    plt = pyplot("the specialists' heat map")
    from matplotlib.patches import Rectangle

    names, matrix = record["class_names"], np.asarray(record["matrix"])
    order = [c for cluster in record["clusters"] for c in cluster]
    shown = matrix[np.ix_(order, order)]
    off = shown[~np.eye(len(order), dtype=bool)]
    vmax = float(np.abs(off).max()) if off.size and np.abs(off).max() > 0 else 1.0
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 5.2), dpi=110, gridspec_kw={"width_ratios": [1.15, 1]})
    im = ax.imshow(shown, cmap="RdBu_r", vmin=-vmax, vmax=vmax)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    labels = [names[c] for c in order]
    ax.set_xticks(range(len(order)), labels, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(order)), labels, fontsize=8)
    start = 0
    for cluster in record["clusters"]:
        ax.add_patch(Rectangle((start - 0.5, start - 0.5), len(cluster), len(cluster), fill=False, lw=2, ec="k"))
        start += len(cluster)
    ax.set_title(f"{record['rule']} of predicted probabilities\n({record['n_val']} validation examples; "
                 "colour range set by the off-diagonal)", fontsize=9)
    grid = np.array([[1.0 if c in s else 0.0 for c in order] for s in record["subsets"]])
    bx.imshow(grid, cmap="Greens", vmin=0, vmax=1.3, aspect="auto")
    bx.set_xticks(range(len(order)), labels, rotation=60, ha="right", fontsize=8)
    bx.set_yticks(range(len(record["subsets"])), [f"specialist {k}" for k in range(len(record["subsets"]))], fontsize=8)
    bx.set_xticks(np.arange(-0.5, len(order)), minor=True)
    bx.set_yticks(np.arange(-0.5, len(record["subsets"])), minor=True)
    bx.grid(which="minor", color="w", lw=1.5)
    bx.tick_params(which="minor", length=0)
    bx.set_title("classes covered by each specialist (dustbin: the rest)", fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
