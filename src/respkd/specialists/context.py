"""What the specialists of one config share: the generalist, its data, and where and from what each was made.

A specialists folder ``<runs_root>/<name>/`` holds ``subsets.json`` (see :mod:`respkd.specialists.subsets`) and one
``specialist-<k>/`` per subset (see :mod:`respkd.specialists.train`). A specialist is finished when its
``summary.json`` records the same spec as :func:`specialist_spec` gives now (generalist weights, subset, specialist
config, seed, data; compared as :mod:`respkd.provenance` compares every output's inputs).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from respkd.checkpoint import CHECKPOINT_NAME, SUMMARY_NAME, load_model
from respkd.config import DataConfig, RunConfig, config_to_dict, validate_config
from respkd.data import load_in_memory, select
from respkd.data.datasets import Splits, input_normalization
from respkd.environment import resolve_device
from respkd.errors import RespkdError
from respkd.models import build_model
from respkd.provenance import recorded_inputs, same_inputs
from respkd.specialists.config import SpecialistConfig, SpecialistsConfig
from respkd.specialists.subsets import check_libraries

__all__ = [
    "SUBSETS_NAME", "Context", "generalist_path", "is_trained", "load_context", "recorded_spec", "specialist_dir",
    "specialist_spec", "subsets_spec",
]

SUBSETS_NAME = "subsets.json"


@dataclass
class Context:
    """Everything the specialists of one config share, loaded and checked before anything is written."""

    cfg: SpecialistsConfig
    out_dir: Path
    device: torch.device
    generalist: nn.Module
    gen_meta: dict[str, Any]
    gen_path: Path
    gen_cfg: RunConfig
    data: Splits
    norm: tuple[tuple[float, ...], tuple[float, ...]]

    @property
    def in_shape(self) -> tuple[int, ...]:
        return tuple(self.gen_meta["in_shape"])

    @property
    def num_classes(self) -> int:
        return int(self.gen_meta["num_classes"])


def specialist_dir(out_dir: Path, k: int) -> Path:
    return out_dir / f"specialist-{k}"


def generalist_path(cfg: SpecialistsConfig, runs_root: Path) -> Path:
    g = cfg.generalist
    return runs_root / g.run / CHECKPOINT_NAME if g.run is not None else Path(g.checkpoint)


def load_context(cfg: SpecialistsConfig, runs_root: str | Path, threads: int | None = None) -> Context:
    """Load the generalist and its data; refuse (one line) what cannot work, before anything is written.

    ``threads``: torch threads for this process (a worker's share), else the config's ``threads``, else torch's.
    """
    check_libraries()
    runs_root = Path(runs_root)
    if threads or cfg.threads:
        torch.set_num_threads(threads or cfg.threads)
    device = resolve_device(cfg.device)
    path = generalist_path(cfg, runs_root)
    if not path.is_file():
        raise RespkdError(f"generalist checkpoint {path} does not exist (train the generalist run first)")
    generalist, meta = load_model(path, device)
    generalist.requires_grad_(False).eval()
    gen_cfg = validate_config(meta.get("config"), f"{path} (embedded config)")
    if gen_cfg.data.val_size == 0:
        raise RespkdError(f"{path}: subsets are found on the generalist run's validation split, but its run had "
                          "data.val_size 0 (retrain the generalist with data.val_size > 0)")
    d = gen_cfg.data
    data = select(load_in_memory(d), gen_cfg)
    if cfg.specialist.model is not None:  # a fresh net: check its options now, not in a worker an hour later
        build_model(cfg.specialist.model.name, 2, data.info.image_shape, **cfg.specialist.model.options())
    return Context(cfg, runs_root / cfg.name, device, generalist, meta, path, gen_cfg, data,
                   input_normalization(data.info, d.normalize))


def subsets_spec(ctx: Context) -> dict[str, Any]:
    """What ``subsets.json`` must have been found from, to be reused."""
    d = ctx.gen_cfg.data
    return {"generalist_weights_sha256": ctx.gen_meta["weights_sha256"], "subsets": ctx.cfg.subsets.model_dump(),
            "data_sha256": ctx.data.sha256, "train_limit": d.train_limit, "val_size": d.val_size, "val_seed": d.val_seed}


def specialist_spec(ctx: Context, subset: list[int], k: int) -> dict[str, Any]:
    """What a finished specialist must have been trained from, to be reused."""
    return {"k": k, "subset": subset, "generalist_weights_sha256": ctx.gen_meta["weights_sha256"],
            "specialist": ctx.cfg.specialist.model_dump(mode="json"), "seed": ctx.cfg.seed,
            "data": config_to_dict(ctx.gen_cfg)["data"], "data_sha256": ctx.data.sha256}


def recorded_spec(out_dir: Path, k: int) -> dict[str, Any] | None:
    """The spec a finished specialist k recorded in its summary, or None when there is none.

    Its config parts are validated again, so a key added to respkd since (with a default that changes nothing)
    does not make a finished specialist look different and train it again."""
    def today(spec: dict[str, Any]) -> dict[str, Any]:
        return {**spec, "specialist": SpecialistConfig.model_validate(spec["specialist"]).model_dump(mode="json"),
                "data": DataConfig.model_validate(spec["data"]).model_dump(mode="json")}

    return recorded_inputs(specialist_dir(out_dir, k) / SUMMARY_NAME, "spec", normalize=today)


def is_trained(ctx: Context, subsets: list[list[int]], k: int) -> bool:
    """Whether specialist ``k`` is finished, from the spec it would be trained from now."""
    return same_inputs(recorded_spec(ctx.out_dir, k), specialist_spec(ctx, list(subsets[k]), k))
