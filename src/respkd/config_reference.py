"""The configuration reference (docs/configuration.md), generated from the config models themselves.

Every key of a run config (:class:`respkd.config.RunConfig`), of a specialists config
(:class:`respkd.specialists.config.SpecialistsConfig`) and every option of respkd's own models is listed with its
type, default and range as the pydantic models and factories declare them; only the meaning of each key is written
here, in :data:`RUN_MEANINGS`, :data:`SPECIALISTS_MEANINGS` and :data:`MODEL_OPTION_MEANINGS`. A key without a
meaning, or a meaning without a key, is an error, so the reference cannot fall behind the models::

    python -m respkd.config_reference run           # the run config's keys, a markdown table
    python -m respkd.config_reference models        # the options of model.name: mlp, cnn, ...
    python -m respkd.config_reference specialists   # the specialists config's keys

``scripts/update_docs.py`` writes these tables into docs/configuration.md and docs/specialists.md.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from respkd import models
from respkd.config import PathText, RunConfig, RunName, TrainConfig
from respkd.specialists.config import SpecialistsConfig

__all__ = [
    "MODEL_OPTION_MEANINGS", "RUN_MEANINGS", "SPECIALISTS_MEANINGS", "config_keys", "main", "model_options_table",
    "reference_rows", "reference_table", "run_reference", "specialists_reference",
]

HEADER = ("key", "type", "default", "range", "meaning")

RUN_MEANINGS: dict[str, str] = {
    "name": "the run's folder under the runs root (`<runs-root>/<name>/`)",
    "seed": "seeds torch, numpy and Python: initial weights, batch order, jitter, dropout",
    "device": "`cpu`, `cuda`, `cuda:1`, or `auto` (CUDA when available); under torchrun each process takes "
              "`cuda:LOCAL_RANK`",
    "threads": "torch's intra-op threads; null: torch's default",
    "data": "what the run learns from and is tested on: [data.md](data.md)",
    "data.dataset": "`folder` is a folder of your own images ([data.md](data.md#your-own-images))",
    "data.root": "where the checksummed dataset caches live",
    "data.path": "the dataset's files: IDX or CSV files (MNIST, Fashion-MNIST), a CIFAR release, ImageNet's "
                 "`train/` and `val/` class folders (required), or your images (required); null: the cache, the "
                 "offline copy, else torchvision's download",
    "data.source": "which reader: `idx`, `csv` (MNIST, Fashion-MNIST), `python`, `binary` (CIFAR), `download` "
                   "(torchvision's download); `auto` tries them in that order; ImageNet and folder: `auto` only",
    "data.normalize": "standardise inputs with the dataset's mean and std; false: pixels / 255 in [0, 1] (the "
                      "paper's MLPs)",
    "data.jitter": "translate each training image by its own random offset of up to this many pixels (zero fill)",
    "data.jitter_views": "cycle through this many fixed jitter draws (epoch e uses view e mod V) instead of a new "
                         "draw every epoch: what lets `kd.cache` hold the teacher's answer to every view; needs "
                         "`jitter` > 0",
    "data.flip": "mirror a random half of the training images left-right (with `jitter: 4`: CIFAR's standard "
                 "augmentation)",
    "data.workers": "processes decoding image files (imagenet, folder); null: min(8, the usable cores); recorded "
                    "as null for the in-memory datasets, which decode nothing",
    "data.device_resident": "in-memory datasets: true keeps images, labels and teacher cache on the training "
                            "device (no host-to-device copy per step), false builds each batch in host memory; "
                            "null: true on CUDA when they fit in half of its memory, else false. Both give bitwise "
                            "the same batches",
    "data.train_limit": "keep only the first N training examples (ImageNet: N evenly spaced files)",
    "data.test_limit": "evaluate on the first N test examples only",
    "data.val_size": "hold this many training examples out as a validation split (stratified by class, before the "
                     "transfer filter); evaluated once at the end (`val_metrics`); below the training set's size",
    "data.val_seed": "draws the validation split, independently of the run's seed",
    "data.transfer": "which of the remaining training examples form the transfer set; the test set is never "
                     "filtered",
    "data.transfer.drop_classes": "leave these classes out (e.g. `[3]`); not with `keep_classes`",
    "data.transfer.keep_classes": "keep only these classes (e.g. `[7, 8]`); not with `drop_classes`",
    "data.transfer.fraction": "keep this share of every class (e.g. `0.03`), after the class filter",
    "data.transfer.seed": "draws the `fraction` subset, independently of the run's seed",
    "data.image_size": "folder only, required: every image is scaled to cover this size and centre-cropped; one "
                       "number (a square) or `[height, width]`, each 1 to 4096",
    "data.channels": "folder only: null: 1 if every image is grey, else 3 (grey images repeated); streamed: 3",
    "data.test_fraction": "folder only, a flat `<class>/*` tree: this share of each class is the test set (null: "
                          "0.2)",
    "data.split_seed": "folder only: draws the test split of a flat tree (null: 0)",
    "data.mean": "folder only: per-channel mean of pixels / 255 (1 or 3 values, with `std`); null: computed from "
                 "the training split and recorded",
    "data.std": "folder only: per-channel std of pixels / 255, each > 0 (with `mean`)",
    "data.in_memory": "folder only: decode once into uint8 tensors (true), stream from the files with `workers` "
                      "(false), or `auto`: in memory when the decoded pixels fit in 2 GiB",
    "model": "the student (or the trained model): `name` plus that model's options (see the options table)",
    "model.name": "`mlp`, `cnn`, `resnet8x4`, `resnet32x4`, `torchvision.<arch>` or `timm.<arch>`",
    "init": "start the student from existing weights before its first step ([teachers.md](teachers.md#init-"
            "starting-the-student-from-weights))",
    "init.run": "an earlier run's model, by name under the runs root; exactly one of `run`, `checkpoint`",
    "init.checkpoint": "a weights file: respkd checkpoint, `.safetensors`, or a `.pth`/`.pt`/`.bin` state dict",
    "init.strict": "true: every key of the student must be in the file with the same shape, nothing else; false: "
                   "load what fits, log and record the rest",
    "teacher": "the model to distil from, with `kd`; exactly one source ([teachers.md](teachers.md))",
    "teacher.checkpoint": "one teacher: a respkd checkpoint file",
    "teacher.run": "one teacher: an earlier run's name under the same runs root",
    "teacher.checkpoints": "an ensemble: two or more checkpoint files",
    "teacher.runs": "an ensemble: two or more run names",
    "teacher.weights": "a state dict file (safetensors or torchvision/timm `.pth`), loaded strictly into `model`",
    "teacher.model": "the architecture of `weights`, or a pretrained model by name (`timm.*` with `pretrained: "
                     "true`, `torchvision.*` with `weights: ENUM_NAME`)",
    "teacher.model.name": "as `model.name`; the other keys are that model's options",
    "teacher.combine": "an ensemble's rule (null: `mean_probs`): `mean_probs`, the paper's, averages the members' "
                       "probabilities at `kd.temperature`; `mean_logits` averages their logits",
    "teacher.input": "what the teacher expects when it differs from the student's batches: its normalisation, "
                     "size, RGB for a grey student",
    "teacher.input.mean": "the teacher's per-channel mean of pixels / 255 (three values for an RGB teacher of a "
                          "grey student)",
    "teacher.input.std": "the teacher's per-channel std of pixels / 255, each > 0",
    "teacher.input.size": "the teacher's input resolution, one number or `[height, width]`, each 1 to 4096 "
                          "(bilinear, antialiased)",
    "kd": "how the student learns from the teacher: `hard_weight * CE + soft_weight * response term` "
          "([losses.md](losses.md))",
    "kd.temperature": "T: both models' logits are divided by it for the response term (evaluation uses T = 1)",
    "kd.soft_weight": "weight of the response term (which includes its T^2); not 0 together with `hard_weight`",
    "kd.hard_weight": "weight of the cross-entropy of the student's raw logits with the labels",
    "kd.loss": "the response term: `kd` (soft targets, KL times T^2), `logit_mse`, `dkd` or `dist`",
    "kd.standardize": "standardize both models' logits per example before the loss (Sun et al. 2024)",
    "kd.dkd": "`loss: dkd` only, filled with its defaults when that loss is chosen",
    "kd.dkd.alpha": "weight of TCKD (the target-vs-rest part)",
    "kd.dkd.beta": "weight of NCKD (the part over the non-target classes)",
    "kd.dkd.warmup_epochs": "the DKD term is multiplied by min(epoch / warmup_epochs, 1); 0: no warm-up",
    "kd.dist": "`loss: dist` only, filled with its defaults when that loss is chosen",
    "kd.dist.beta": "weight of the inter-class relation (rows of the batch)",
    "kd.dist.gamma": "weight of the intra-class relation (columns of the batch)",
    "kd.student_response": "distil this named submodule's output of the student instead of its final output",
    "kd.teacher_response": "the teacher's submodule whose output is the target (not for ensembles)",
    "kd.cache": "compute the teacher's outputs once before training and read them back per batch "
                "([teacher-cache.md](teacher-cache.md))",
    "kd.cache_topk": "store only the k largest probabilities at T (needs `cache`; serves `kd`, `dkd`, `dist`); at "
                     "most the classes",
    "kd.cache_dir": "where teacher caches live, one folder per key",
    "train": "the optimisation",
    "train.epochs": "passes over the transfer set",
    "train.batch_size": "the global batch: under torchrun it is split between the processes (a multiple of their "
                        "number)",
    "train.optimizer": "`sgd` (with `momentum`, `nesterov`) or `adamw`",
    "train.lr": "the peak learning rate",
    "train.momentum": "SGD momentum (held, unless `cycle_momentum`)",
    "train.nesterov": "SGD: Nesterov momentum (when `momentum` > 0)",
    "train.weight_decay": "torch's `weight_decay` of the optimizer: L2 added to the gradient (SGD), decoupled (AdamW)",
    "train.schedule": "the learning rate, set every step: `onecycle` (torch's OneCycleLR: warm-up to `lr`, then "
                      "cosine annealing), `cosine` (from `lr` to 0), `step` (times `gamma` at each of "
                      "`milestones`) or `constant`",
    "train.warmup_fraction": "onecycle: the share of steps spent warming up",
    "train.cycle_momentum": "onecycle with SGD: momentum cycled between 0.85 and 0.95 against the lr (torch's "
                            "OneCycleLR default) instead of held at `momentum`",
    "train.milestones": "step schedule: the epochs (each once) after which the lr is multiplied by `gamma`",
    "train.gamma": "step schedule: the lr's factor at each milestone",
    "train.precision": "`bf16` autocast (the losses stay in float32), `fp32`, or `auto`: bf16 only where it is fast "
                       "(CUDA, a CPU with avx512_bf16 or AMX)",
    "train.channels_last": "the student and teacher in channels-last memory format (CNNs)",
    "train.compile": "run the student, and an online teacher, through `torch.compile`; where it cannot work, one log "
                     "line says why and the run trains eagerly",
    "train.checkpoint_every_steps": "also save the training state every N optimizer steps, besides epoch ends; 0: "
                                    "epoch ends only ([resume.md](resume.md)); a resume may change it",
    "train.on_nonfinite": "a step whose loss is NaN or infinite: `stop` the run there (keeping the last good "
                          "training state), or `skip_step` and go on ([robustness.md](robustness.md)); a resume may "
                          "change it",
    "train.max_skipped_steps": "`skip_step`: stop after more skipped steps than this in the whole run; a resume may "
                               "change it",
    "train.tensorboard": "also write each epoch's metrics as TensorBoard scalars into `<run>/tensorboard/` (the "
                         "`tensorboard` extra); a resume may change it",
    "train.sync_batchnorm": "under torchrun on GPUs: batch-norm statistics over the global batch "
                            "(`torch.nn.SyncBatchNorm`)",
}

SPECIALISTS_MEANINGS: dict[str, str] = {
    "name": "the specialists folder under the runs root",
    "seed": "seeds the specialists' training",
    "device": "as a run config's `device`",
    "threads": "torch threads of one worker; null: cores // `--workers`",
    "generalist": "the generalist whose specialists these are: its data, normalisation and validation split are "
                  "used as they are",
    "generalist.run": "an earlier run's name under the runs root; exactly one of `run`, `checkpoint`",
    "generalist.checkpoint": "a checkpoint path",
    "subsets": "how the confusable subsets are found, on the generalist's validation split",
    "subsets.rule": "what K-means clusters (a column per class): the `correlation` of the generalist's predicted "
                    "probabilities, their covariance with a zero diagonal (`zero_diagonal`), or the raw "
                    "`covariance` (the paper's)",
    "subsets.count": "clusters K-means forms",
    "subsets.max_size": "a larger cluster is split by 2-means until none is; null: no limit",
    "subsets.min_size": "smaller subsets get no specialist; at most `max_size`",
    "subsets.partners": "add each member's p most correlated classes to its subset (overlapping subsets, still at "
                        "most `max_size`)",
    "subsets.n_init": "K-means restarts (the best inertia wins)",
    "subsets.seed": "seeds K-means",
    "specialist": "how each specialist is built and trained",
    "specialist.model": "null: a copy of the generalist with its output layer cut to subset + dustbin, fine-tuned; "
                        "a model section: that net trained from scratch instead",
    "specialist.model.name": "as a run config's `model.name`; the other keys are that model's options",
    "specialist.subset_fraction": "the share of each batch drawn from the subset; the rest from the other classes",
    "specialist.jitter": "training translation in pixels; null: the generalist's `data.jitter`",
    "specialist.soft_targets": "also learn from the generalist's distribution at T mapped to subset + dustbin",
    "specialist.soft_targets.temperature": "T of the generalist's soft targets",
    "specialist.soft_targets.soft_weight": "weight of the soft-target term; not 0 together with `hard_weight`",
    "specialist.soft_targets.hard_weight": "weight of the labels' cross-entropy",
    "specialist.train": "the keys of a run config's `train` section ([configuration.md](configuration.md))",
    "combine": "inference: the distribution q that best agrees with the generalist and the active specialists",
    "combine.top_n": "the generalist's top n classes activate the specialists whose subset holds one",
    "combine.steps": "at most this many Adam steps on the logits of q",
    "combine.lr": "Adam's learning rate",
    "combine.tol": "stop once every gradient entry is below this",
}

# (model name, option) -> meaning, with the range each factory checks (the factories' signatures give the defaults).
MODEL_OPTION_MEANINGS: dict[tuple[str, str], str] = {
    ("mlp", "hidden"): "widths of the hidden layers: 0 to 100 layers of 1 to 65,536 units",
    ("mlp", "dropout_input"): "dropout on the input pixels, [0, 1) (the paper's teacher: 0.2)",
    ("mlp", "dropout_hidden"): "dropout on each hidden layer's output, [0, 1) (the paper's teacher: 0.5)",
    ("mlp", "max_norm"): "max L2 norm of each hidden unit's incoming weights, (0, 1000]; null: none (the paper's "
                         "teacher: 3.5)",
    ("cnn", "channels"): "channels of each conv-BN-ReLU block, 1 to 100 blocks of 1 to 65,536; each block after "
                         "the first halves the resolution, so no more blocks than the input can be halved",
    ("cnn", "dropout"): "dropout before the classifier, [0, 1)",
}

def _number(value: float) -> str:
    """``2**31 - 1`` as "2^31 - 1", ``2**20`` as "2^20", 100000 as "100,000"."""
    if isinstance(value, int) and value >= 2**16:
        if (value + 1).bit_count() == 1:
            return f"2^{(value + 1).bit_length() - 1} - 1"
        if value.bit_count() == 1:
            return f"2^{value.bit_length() - 1}"
    return f"{value:,}" if isinstance(value, int) and value >= 10_000 else f"{value:g}"


def _bounds(metadata: list[Any], integer: bool) -> str:
    """annotated_types bounds (Ge, Gt, Le, Lt) as a range: "0 to 8" for integers, "[0, 1)" for numbers."""
    low = high = None
    low_open = high_open = False
    for m in metadata:
        if isinstance(m, annotated_types.Ge):
            low = m.ge
        elif isinstance(m, annotated_types.Gt):
            low, low_open = m.gt, True
        elif isinstance(m, annotated_types.Le):
            high = m.le
        elif isinstance(m, annotated_types.Lt):
            high, high_open = m.lt, True
    if low is None and high is None:
        return ""
    if low is None:  # a lower bound a validator checks (e.g. std > 0) is in the meaning
        return f"{'below' if high_open else 'at most'} {_number(high)}"
    if high is None:
        return f"{'above' if low_open else 'at least'} {_number(low)}"
    if integer and not (low_open or high_open):
        return f"{_number(low)} to {_number(high)}"
    return f"{'(' if low_open else '['}{_number(low)}, {_number(high)}{')' if high_open else ']'}"


def _lengths(metadata: list[Any]) -> str:
    """MinLen/MaxLen of a list as "2 or more values", "1 to 3 values"."""
    low = next((m.min_length for m in metadata if isinstance(m, annotated_types.MinLen)), None)
    high = next((m.max_length for m in metadata if isinstance(m, annotated_types.MaxLen)), None)
    if low is not None and high is not None:
        return f"{low} to {high} values"
    if low is not None:
        return f"{low} or more values"
    return f"at most {high} values" if high is not None else ""


def _constraints(annotation: Any) -> tuple[Any, list[Any]]:
    """An ``Annotated[base, ...]`` as (base, its bounds), pydantic's FieldInfo metadata unpacked."""
    if get_origin(annotation) is not typing.Annotated:
        return annotation, []
    base, *extras = get_args(annotation)
    metadata = []
    for extra in extras:
        metadata += extra.metadata if isinstance(extra, FieldInfo) else [extra]
    return base, metadata


def _describe(annotation: Any, metadata: list[Any]) -> tuple[str, str, bool]:
    """(type, range, nullable) of an annotation whose own bounds are ``metadata``."""
    if annotation == PathText:
        return "path", "at most 4096 bytes, each part at most 255", False
    if annotation == RunName:
        return "name", "letters, digits, `_`, `.`, `-`; at most 100 characters", False
    base, inner = _constraints(annotation)
    metadata = [*inner, *metadata]
    origin = get_origin(base)
    if origin in (Union, types.UnionType):
        members = [a for a in get_args(base) if a is not type(None)]
        parts = [_describe(a, metadata if len(members) == 1 else []) for a in members]
        ranges = [p[1] for p in parts if p[1]]
        return " or ".join(p[0] for p in parts), "; ".join(dict.fromkeys(ranges)), len(members) < len(get_args(base))
    if origin is Literal:
        values = [json.dumps(v) if isinstance(v, bool) or v is None else str(v) for v in get_args(base)]
        return "one of " + ", ".join(f"`{v}`" for v in values), "", False
    if origin is list:
        item_type, item_range, _ = _describe(get_args(base)[0], [])
        ranges = [r for r in (_lengths(metadata), f"each {item_range}" if item_range else "") if r]
        return f"list of {item_type}", "; ".join(ranges), False
    if isinstance(base, type) and issubclass(base, BaseModel):
        return "section", "", False
    names = {bool: "bool", int: "int", float: "float", str: "string"}
    text = names.get(base, getattr(base, "__name__", str(base)))
    limit = next((m.max_length for m in metadata if isinstance(m, annotated_types.MaxLen)), None)
    if base is str and limit is not None:
        return text, f"at most {limit} characters", False
    return text, _bounds(metadata, integer=base is int), False


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return ""  # a section present by default: its keys' defaults apply
    if value is None:
        return "null"
    if isinstance(value, str):
        return f"`{value}`"
    return f"`{json.dumps(value)}`"  # true, 0.0, 1e-06, [] as YAML reads them


def _submodel(annotation: Any) -> type[BaseModel] | None:
    base, _ = _constraints(annotation)
    if isinstance(base, type) and issubclass(base, BaseModel):
        return base
    for arg in get_args(base):
        if (sub := _submodel(arg)) is not None:
            return sub
    return None


def reference_rows(model: type[BaseModel], prefix: str = "", referenced: tuple[type[BaseModel], ...] = ()
                   ) -> list[tuple[str, str, str, str]]:
    """(key, type, default, range) of every key of ``model``, sections followed by their keys; a section whose
    model is in ``referenced`` is one row (documented where it first appears)."""
    rows = []
    hints = get_type_hints(model, include_extras=True)
    for name, field in model.model_fields.items():
        key = prefix + name
        type_text, range_text, nullable = _describe(hints[name], list(field.metadata))
        rows.append((key, type_text + (" or null" if nullable else ""), _default(field), range_text))
        sub = _submodel(hints[name])
        if sub is not None and sub not in referenced:
            rows += reference_rows(sub, key + ".", referenced)
    return rows


def config_keys(model: type[BaseModel], referenced: tuple[type[BaseModel], ...] = ()) -> list[str]:
    """Every dotted key of ``model`` (sections included)."""
    return [row[0] for row in reference_rows(model, referenced=referenced)]


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    for row in rows:
        if any("|" in cell for cell in row):
            raise ValueError(f"a table cell holds '|': {row}")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def reference_table(model: type[BaseModel], meanings: dict[str, str],
                    referenced: tuple[type[BaseModel], ...] = ()) -> str:
    """The markdown table of ``model``'s keys; refuses a key without a meaning and a meaning without a key."""
    rows = reference_rows(model, referenced=referenced)
    keys = [row[0] for row in rows]
    if missing := [k for k in keys if k not in meanings]:
        raise ValueError(f"no meaning for {', '.join(missing)} ({model.__name__}): add it to respkd.config_reference")
    if stale := sorted(set(meanings) - set(keys)):
        raise ValueError(f"meanings for keys that {model.__name__} does not have: {', '.join(stale)}")
    return _table(HEADER, [(f"`{key}`", t, d, r, meanings[key]) for key, t, d, r in rows])


def run_reference() -> str:
    return reference_table(RunConfig, RUN_MEANINGS)


def specialists_reference() -> str:
    return reference_table(SpecialistsConfig, SPECIALISTS_MEANINGS, referenced=(TrainConfig,))


def model_options_table() -> str:
    """The options of respkd's own models that take any (``model.<option>``), with the factories' defaults."""
    rows, seen = [], set()
    for name in models.list_models():  # each registered under its factory's name, a function of respkd.models
        for option, param in inspect.signature(getattr(models, name)).parameters.items():
            if option in ("num_classes", "in_shape"):
                continue
            key = (name, option)
            if key not in MODEL_OPTION_MEANINGS:
                raise ValueError(f"no meaning for model option {name}.{option}: add it to respkd.config_reference")
            seen.add(key)
            default = param.default
            shown = "null" if default is None else f"`{json.dumps(list(default) if isinstance(default, tuple) else default)}`"
            rows.append((f"`{name}`", f"`{option}`", shown, MODEL_OPTION_MEANINGS[key]))
    if stale := sorted(set(MODEL_OPTION_MEANINGS) - seen):
        raise ValueError(f"meanings for model options that do not exist: {stale}")
    return _table(("model.name", "option", "default", "meaning"), rows)


TABLES = {"run": run_reference, "models": model_options_table, "specialists": specialists_reference}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m respkd.config_reference", description=__doc__.splitlines()[0])
    parser.add_argument("table", choices=list(TABLES), help="which reference to print (markdown)")
    args = parser.parse_args(argv)
    print(TABLES[args.table]())
    return 0


if __name__ == "__main__":
    sys.exit(main())
