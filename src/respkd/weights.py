"""Weights in and out: a student started from existing weights, a teacher built from a state dict file, and a
trained student exported as a plain state dict for the library constructor it came from, or as an ONNX graph.

Reading goes through :func:`respkd.checkpoint.load_weights` (respkd checkpoints, safetensors, ``.pth`` state dicts
read with ``torch.load(weights_only=True)``); loading into a model through :func:`fit_weights`, which either
demands an exact fit (every key, every shape) or loads what fits and says what it skipped.
"""

from __future__ import annotations

import importlib
import json
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from respkd.checkpoint import (Weights, atomic_save_safetensors, check_model_meta, checkpoint_of, load_checkpoint,
                               load_model, load_weights, tensors_digest)
from respkd.classes import check_classes
from respkd.config import ModelConfig
from respkd.errors import RespkdError, first_line
from respkd.files import atomic_write
from respkd.models import build_model

__all__ = [
    "EXPORT_FORMATS", "ONNX_INPUT", "ONNX_MODULES", "ONNX_OUTPUT", "constructor_call", "describe_fit", "export_onnx",
    "export_student", "first_conv_note", "fit_weights", "init_student", "load_external_model", "require_onnx",
]

EXPORT_FORMATS = ("safetensors", "pth", "onnx")
# The extra that ONNX export needs: torch.onnx.export's exporter (torch.export + onnxscript) writes with onnx.
ONNX_MODULES = ("onnx", "onnxscript")
ONNX_INPUT, ONNX_OUTPUT = "input", "logits"


def _few(keys: list[str], n: int = 3) -> str:
    return ", ".join(keys[:n]) + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def fit_weights(model: nn.Module, weights: Weights, strict: bool, what: str, strict_key: str | None = None
                ) -> dict[str, Any]:
    """Load ``weights`` into ``model``; returns what was loaded and skipped (for logs and summary.json).

    ``strict``: every key of the model must be in the file with the same shape and the file must hold nothing else,
    otherwise a one-line :class:`RespkdError` names a few offending keys (and, when the caller has one, the config
    key ``strict_key`` that would load what fits). Not strict: the tensors whose name and shape match are loaded,
    the rest listed under ``missing`` (in the model, not in the file), ``unexpected`` (in the file only) and
    ``shape_mismatch``; loading nothing at all is still an error.
    """
    own, given = model.state_dict(), weights.state
    missing = [k for k in own if k not in given]
    unexpected = [k for k in given if k not in own]
    mismatch = [k for k in own if k in given and tuple(given[k].shape) != tuple(own[k].shape)]
    problems = ([f"missing {_few(missing)}"] if missing else []) + (
        [f"unexpected {_few(unexpected)}"] if unexpected else []) + (
        [f"shape mismatch {_few([f'{k} {list(given[k].shape)} vs {list(own[k].shape)}' for k in mismatch])}"]
        if mismatch else [])
    fitting = {k: given[k] for k in own if k in given and k not in mismatch}
    if problems and (strict or not fitting):
        hint = ("; nothing fits" if not strict else f"; with {strict_key}: false what fits is loaded" if strict_key
                else "")
        raise RespkdError(f"{weights.path} does not fit {what}: {'; '.join(problems)}{hint}")
    try:
        model.load_state_dict(fitting, strict=not problems)
    except RuntimeError as err:
        raise RespkdError(f"{weights.path} does not fit {what} ({first_line(err)})") from None
    return {"source": str(weights.path), "kind": weights.kind, "weights_sha256": weights.sha256, "strict": strict,
            "loaded": len(fitting), "of": len(own), "notes": weights.notes, "missing": missing,
            "unexpected": unexpected, "shape_mismatch": mismatch}


def describe_fit(info: dict[str, Any]) -> str:
    """One log line for :func:`fit_weights`'s result."""
    notes = f" ({'; '.join(info['notes'])})" if info["notes"] else ""
    line = f"{info['loaded']}/{info['of']} tensors from {info['source']} [{info['kind']}]{notes}"
    skipped = [f"{len(info[k])} {k.replace('_', ' ')} ({_few(info[k])})"
               for k in ("missing", "unexpected", "shape_mismatch") if info[k]]
    return line + (f"; skipped: {'; '.join(skipped)}" if skipped else "")


def init_student(student: nn.Module, path: Path, strict: bool, class_names: Sequence[str] = ()) -> dict[str, Any]:
    """The config's ``init``: start the student from the weights in ``path``. A respkd checkpoint whose output layer
    is loaded (strict, or as many classes) must have the data's ``class_names`` (:mod:`respkd.classes`)."""
    weights = load_weights(path)
    if weights.meta is not None and class_names and (strict or weights.meta.get("num_classes") == len(class_names)):
        check_classes(weights.meta, class_names, "init checkpoint", "data", f"init: {path}")
    return fit_weights(student, weights, strict, "the student", strict_key="init.strict")


def load_external_model(
    model_cfg: ModelConfig, path: Path | None, num_classes: int, in_shape: tuple[int, ...],
    normalization: dict[str, list], device: torch.device | str = "cpu", what: str = "the teacher",
) -> tuple[nn.Module, dict[str, Any]]:
    """A model that is not a respkd checkpoint: ``model`` (an architecture, built as a student would be) with the
    state dict in ``path`` loaded strictly (a teacher must fit exactly: a layer left at random would distil noise),
    or, without ``path``, with its library's pretrained weights (``pretrained: true`` for ``timm.*``,
    ``weights: NAME`` for ``torchvision.*``), which must include a classifier for ``num_classes`` classes.

    Its metadata looks like a checkpoint's, so the checks and the teacher cache treat it alike; ``normalization`` is
    what the config says its inputs are (the file cannot say). ``what`` names the model in messages.
    """
    options = model_cfg.options()
    model = build_model(model_cfg.name, num_classes, in_shape, **options)
    label = f"{what} {model_cfg.name} ({num_classes} classes)"
    if path is not None:
        weights = load_weights(path)
        fit = fit_weights(model, weights, strict=True, what=label)
        source, digest, notes = str(path), weights.sha256, fit["notes"]
    else:
        classes = getattr(model, "pretrained_cfg", {}).get("num_classes") if options.get("pretrained") else None
        if classes is not None and classes != num_classes:  # timm gave it a new, random classifier
            raise RespkdError(f"{label}: its pretrained weights are for {classes} classes; {what} needs its own "
                              "trained classifier (a state dict for these classes: 'weights: FILE')")
        source, digest, notes = None, tensors_digest(model.state_dict()), []
    meta = {"model": {"name": model_cfg.name, **options}, "num_classes": num_classes, "in_shape": list(in_shape),
            "normalization": normalization, "weights_sha256": digest, "weights": source, "notes": notes}
    return model.to(device), meta


# ---------------------------------------------------------------- export


def export_student(
    source: str | Path, out: str | Path, fmt: str | None = None, force: bool = False, runs_root: str | Path = "runs"
) -> dict[str, Any]:
    """Write the student of a respkd run or checkpoint as a plain state dict (nothing but the model's tensors), or as
    an ONNX graph.

    ``fmt`` is ``safetensors``, ``pth`` (a ``torch.save`` of the state dict) or ``onnx`` (:func:`export_onnx`); by
    default taken from ``out``'s suffix (``.pth``/``.pt``: pth, ``.onnx``: onnx, anything else: safetensors).
    ``out`` is never the input and never overwritten without ``force``. Returns what was written and, for a state
    dict, the constructor call that it loads into.
    """
    path = checkpoint_of(source, runs_root)
    out = Path(out)
    suffix = out.suffix.lower()
    fmt = fmt or ("pth" if suffix in (".pth", ".pt") else "onnx" if suffix == ".onnx" else "safetensors")
    if fmt not in EXPORT_FORMATS:
        raise RespkdError(f"unknown export format '{fmt}': use {' or '.join(EXPORT_FORMATS)}")
    if out.exists() and out.resolve() == path.resolve():
        raise RespkdError(f"{out} is the input checkpoint: export writes a new file")
    if out.is_dir():
        raise RespkdError(f"{out} is a directory: give the file to write")
    if out.exists() and not force:
        raise RespkdError(f"{out} already exists; pass --force to overwrite it")
    if fmt == "onnx":
        require_onnx()  # before reading anything: the one thing missing is the extra
        network, meta = load_model(path)
        opset = export_onnx(network, tuple(meta["in_shape"]), out)
        return {"checkpoint": str(path), "out": str(out), "format": fmt, "opset": opset, "in_shape": meta["in_shape"],
                "num_classes": meta["num_classes"], "normalization": meta.get("normalization")}
    state, meta = load_checkpoint(path)
    check_model_meta(meta, path)
    model = dict(meta["model"])
    name, options = model.pop("name"), model
    in_shape, num_classes = tuple(meta["in_shape"]), meta["num_classes"]
    state = {k: v.detach().cpu().clone().contiguous() for k, v in state.items()}
    if fmt == "safetensors":
        # The model's inputs go in the header as strings (safetensors metadata is str -> str); loaders ignore them.
        info = {"format": "pt", "respkd_model": json.dumps(meta["model"]), "num_classes": str(num_classes),
                "in_shape": json.dumps(list(in_shape)), "normalization": json.dumps(meta.get("normalization"))}
        atomic_save_safetensors(state, out, info)
    else:
        atomic_write(out, lambda tmp: _torch_save(state, tmp))
    return {"checkpoint": str(path), "out": str(out), "format": fmt, "tensors": len(state),
            "constructor": constructor_call(name, num_classes, in_shape, options),
            "note": first_conv_note(name, num_classes, in_shape, options, state),
            "in_shape": list(in_shape), "normalization": meta.get("normalization")}


def require_onnx() -> None:
    """Refuse ONNX export in one line, naming the extra to install, when its packages are missing."""
    for module in ONNX_MODULES:
        try:
            importlib.import_module(module)
        except ImportError:
            raise RespkdError(f"ONNX export needs the '{module}' package: pip install 'respkd[onnx]' (onnx, "
                              "onnxscript, and onnxruntime to run the file)") from None


def export_onnx(model: nn.Module, in_shape: tuple[int, ...], out: str | Path) -> int:
    """Write ``model`` (in eval mode, on the CPU) as an ONNX graph taking ``input`` ``(batch, *in_shape)`` (the
    batch size is free) to ``logits`` ``(batch, classes)``, through torch.onnx's exporter (torch.export), atomically;
    returns the graph's opset. The inputs are normalised as the checkpoint records, as for the state dict."""
    require_onnx()
    import onnx

    model = model.cpu().eval()
    example = torch.zeros(2, *in_shape)
    batch = torch.export.Dim("batch", min=1)

    def write(tmp: Path) -> None:
        with warnings.catch_warnings():  # the exporter's notes (decompositions, opset upgrades) are not the user's
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (example,), str(tmp), input_names=[ONNX_INPUT], output_names=[ONNX_OUTPUT],
                              dynamic_shapes=({0: batch},), dynamo=True, external_data=False, verbose=False)

    try:
        atomic_write(Path(out), write)
    except Exception as err:  # noqa: BLE001 - an operator the exporter cannot translate, and the like
        raise RespkdError(f"ONNX export of {type(model).__name__} failed ({type(err).__name__}: "
                          f"{first_line(err)})") from None
    graph = onnx.load(str(out), load_external_data=False)
    return next(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx"))


def constructor_call(name: str, num_classes: int, in_shape: tuple[int, ...], options: dict[str, Any]) -> str:
    """The plain library call building the architecture an exported state dict loads into."""
    library, _, arch = name.partition(".")
    opts = "".join(f", {k}={v!r}" for k, v in options.items())
    if library == "torchvision" and arch:
        return f"torchvision.models.{arch}(num_classes={num_classes}{opts})"
    if library == "timm" and arch:
        return f"timm.create_model({arch!r}, num_classes={num_classes}, in_chans={in_shape[0]}{opts})"
    return f"respkd.models.build_model({name!r}, {num_classes}, {tuple(in_shape)}{opts})"


def first_conv_note(
    name: str, num_classes: int, in_shape: tuple[int, ...], options: dict[str, Any], state: dict[str, torch.Tensor]
) -> str | None:
    """torchvision models take RGB; respkd gives a grey student a first conv of 1 input channel. Name the tensor
    that differs from the plain constructor's, found by building that constructor's model and comparing shapes."""
    if not name.startswith("torchvision.") or in_shape[0] == 3:
        return None
    plain = build_model(name, num_classes, (3, *in_shape[1:]), **options).state_dict()
    differ = [k for k in state if k in plain and plain[k].shape != state[k].shape]
    if not differ:
        return None
    return (f"{', '.join(differ)} takes {in_shape[0]} input channel(s) (respkd adapted the first conv): replace that "
            f"conv with nn.Conv2d({in_shape[0]}, ...) of the same other settings before load_state_dict")


def _torch_save(state: dict[str, torch.Tensor], path: Path) -> None:
    """``torch.save`` through a Python file, whose failed writes are OSErrors (with errno) rather than torch's own
    RuntimeError without one."""
    with open(path, "wb") as f:
        torch.save(state, f)
