"""The hostile-input corpus: bad configs, data folders, checkpoints and command lines, each through the CLI.

Every case must end the same way: exit status 2, exactly one line on stderr starting with ``respkd: error:``, no
traceback, and not one byte written or overwritten: the case's whole world (runs root with finished runs, data
folders, the input files, the working directory) is snapshotted before and after, files and folders alike.
Most cases call ``respkd.cli.main`` in-process (fast); those marked ``subprocess`` run ``python -m respkd.cli`` for
real, which also proves that nothing (a warning, a library's log line) slips onto stderr outside Python's capture.
Every case must also end within a time bound (``Case.within``): the hostile sizes (deep nesting, megabytes, 10^5
keys, YAML bombs) within a few seconds, however large the input.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import save_file

from respkd.checkpoint import save_checkpoint
from respkd.cli import main
from respkd.config import DataConfig
from respkd.locks import LOCK_NAME, FolderLock
from respkd.models import build_model

from conftest import corrupt_mnist_cache, synthetic_digits, tiny_config, write_idx
from test_folder import write_own_images
from test_recipes import write_cifar, write_image_folders

SRC = Path(__file__).resolve().parents[1] / "src"


# ---------------------------------------------------------------- the world a case runs in


@dataclass
class World:
    """Everything a case may read or (wrongly) write, under one folder that is also the working directory."""

    root: Path
    idx: Path  # a good synthetic IDX folder (600 train / 200 test)
    runs: Path  # a runs root holding the finished runs 'tiny-teacher' and 'tiny-student-kd'
    locks: list = field(default_factory=list)  # run folders this test's process holds, as another run would

    def hold(self, run: str) -> list[str]:
        """Hold run ``run``'s lock (as a process working in it does) until the case ends; adds no arguments."""
        lock = FolderLock(self.runs / run / LOCK_NAME, f"run '{run}'")
        lock.acquire()
        self.locks.append(lock)
        return []

    @property
    def ckpt(self) -> Path:
        return self.runs / "tiny-teacher" / "model.safetensors"

    def file(self, name: str, content: str | bytes) -> str:
        path = self.root / "inputs" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        return str(path)

    def config(self, name: str = "tiny-teacher", distil: bool = False, **changes) -> str:
        """A config file: the finished teacher's (same name: --force would overwrite it) with dotted ``changes``;
        ``distil`` adds the teacher and kd sections. A change to ``DROP`` removes the key."""
        cfg = tiny_config(name, self.idx, self.root / "data")
        if distil:
            cfg.update(teacher={"run": "tiny-teacher"}, kd={"temperature": 4.0})
        for dotted, value in changes.items():
            *parents, leaf = dotted.split(".")
            node = cfg
            for part in parents:
                node = node.setdefault(part, {})
            if value is DROP:
                node.pop(leaf, None)
            else:
                node[leaf] = value
        return self.file("config.yaml", yaml.safe_dump(cfg, sort_keys=False))

    def idx_copy(self, name: str) -> Path:
        dst = self.root / "inputs" / name
        shutil.copytree(self.idx, dst)
        return dst

    def run_args(self) -> list[str]:
        """The runs root, and --force: even told to overwrite the finished runs, a bad input must not touch them."""
        return ["--runs-root", str(self.runs), "--force"]


DROP = object()


def snapshot(folder: Path) -> dict[str, tuple]:
    """Every file (mtime, mode, bytes) and folder under ``folder``: equal before and after means nothing was written."""
    out: dict[str, tuple] = {}
    for p in sorted(folder.rglob("*")):
        st = p.lstat()
        rel = str(p.relative_to(folder))
        out[rel] = ("dir",) if p.is_dir() else (st.st_mtime_ns, st.st_mode, p.read_bytes())
    return out


# ---------------------------------------------------------------- damaged files


def rewrite_metadata(src: Path, change: Callable[[dict], dict | None]) -> bytes:
    """The bytes of safetensors file ``src`` with its header's ``__metadata__`` replaced by ``change(metadata)``."""
    raw = src.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    meta = change(dict(header.get("__metadata__", {})))
    if meta is None:
        header.pop("__metadata__", None)
    else:
        header["__metadata__"] = meta
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + raw[8 + n :]


def change_respkd_meta(**changes) -> Callable[[dict], dict]:
    def change(meta: dict) -> dict:
        respkd = json.loads(meta["respkd"])
        for k, v in changes.items():
            if v is DROP:
                respkd.pop(k)
            else:
                respkd[k] = v
        return {**meta, "respkd": json.dumps(respkd)}

    return change


def flip_weight_byte(src: Path) -> bytes:
    raw = bytearray(src.read_bytes())
    (n,) = struct.unpack("<Q", raw[:8])
    raw[8 + n + (len(raw) - 8 - n) // 2] ^= 0x01
    return bytes(raw)


def idx_header(code: int, dims: tuple[int, ...]) -> bytes:
    return bytes([0, 0, code, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims)


def csv_folder(w: World, train_rows: str, test_rows: str | None = "0" + ",0" * 784 + "\n") -> str:
    folder = w.root / "inputs" / "csv"
    folder.mkdir(parents=True)
    (folder / "mnist_train.csv").write_text(train_rows)
    if test_rows is not None:
        (folder / "mnist_test.csv").write_text(test_rows)
    return str(folder)


def idx_with(w: World, name: str, **files: bytes | np.ndarray) -> str:
    """A copy of the good IDX folder with some files replaced (keys: train_images, train_labels, ...): an array is
    written as IDX (gzipped where the file's name says so), bytes as they are."""
    folder = w.idx_copy(name)
    for key, content in files.items():
        path = folder / IDX_NAMES[key]
        if isinstance(content, np.ndarray):
            write_idx(path, content)
        else:
            path.write_bytes(content)
    return str(folder)


# the good folder's files (conftest.make_idx_folder gzips some)
IDX_NAMES = {"train_images": "train-images-idx3-ubyte.gz", "train_labels": "train-labels-idx1-ubyte",
             "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte.gz"}


def cifar_with(w: World, kind: str, file: str, content: bytes) -> str:
    """A tiny CIFAR-10 release (test_recipes.write_cifar) with one file replaced by ``content``."""
    folder = write_cifar(w.root / "inputs" / "cifar", "cifar10", kind, n_train=20, n_test=10)
    (folder / file).write_bytes(content)
    return str(folder)


def image_folders(w: World, drop: str | None = None, rename: tuple[str, str] | None = None,
                  drop_class: str | None = None, rename_class: tuple[str, str] | None = None,
                  copy: tuple[str, str] | None = None) -> str:
    """Tiny ImageNet-style class folders (test_recipes.write_image_folders), with a split dropped or a class renamed
    in one split (``drop``, ``rename``: paths under the root), or a class dropped, renamed or copied to another name
    in both (``drop_class``, ``rename_class``, ``copy``)."""
    root = write_image_folders(w.root / "inputs" / "imagenet", n_train=1, n_val=1)
    if drop:
        shutil.rmtree(root / drop)
    if rename:
        (root / rename[0]).rename(root / rename[1])
    for split in ("train", "val"):
        if drop_class:
            shutil.rmtree(root / split / drop_class)
        if rename_class:
            (root / split / rename_class[0]).rename(root / split / rename_class[1])
        if copy:
            shutil.copytree(root / split / copy[0], root / split / copy[1])
    return str(root)


def interrupted_run(w: World) -> str:
    """A run 'broken' left with a (garbage) training state and no summary; returns its config."""
    state = w.runs / "broken" / "resume.safetensors"
    state.parent.mkdir()
    state.write_bytes(b"\x00" * 64)
    return w.config("broken")


class _Booby:
    """Unpickling this creates a file named ``pwned`` (in the working directory, inside the snapshot)."""

    def __reduce__(self):
        return (open, ("pwned", "w"))


def pickle_checkpoint(w: World) -> str:
    """A plain pickle whose loading would run code, under a .safetensors name (a hostile upload)."""
    return w.file("pickled.safetensors", pickle.dumps({"weight": _Booby()}))


def torch_save_checkpoint(w: World) -> str:
    """A torch.save file (a zip holding a pickle) under a .safetensors name (a careless rename)."""
    path = w.root / "inputs" / "torch_save.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"weight": torch.zeros(3)}, path)
    return str(path)


def other_model_checkpoint(w: World, **meta_changes) -> str:
    """A respkd checkpoint whose weights are an 8-unit MLP, with metadata changed by ``meta_changes``."""
    path = w.root / "inputs" / "other.safetensors"
    model = build_model("mlp", 10, (1, 28, 28), hidden=[8])
    meta = {"model": {"name": "mlp", "hidden": [8]}, "num_classes": 10, "in_shape": [1, 28, 28], **meta_changes}
    save_checkpoint(model.state_dict(), path, meta)
    return str(path)


def state_dict_file(w: World, name: str = "weights.pth", num_classes: int = 10, hidden: int = 32) -> str:
    """A plain state dict of a 784-``hidden``-``num_classes`` MLP: ``.pth`` (torch.save) or ``.safetensors``."""
    path = w.root / "inputs" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    state = build_model("mlp", num_classes, (1, 28, 28), hidden=[hidden]).state_dict()
    if path.suffix == ".pth":
        torch.save(state, path)
    else:
        save_file(state, str(path))
    return str(path)


def timm_weights(w: World) -> str:
    """The state dict of timm's (tiny) test_resnet with its default 1000-class classifier, as a .pth."""
    import timm

    path = w.root / "inputs" / "test_resnet.pth"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(timm.create_model("test_resnet").state_dict(), path)
    return str(path)


IMAGENET_CLASSES = ("n01440764", "n01443537", "n01484850")


def imagenet_checkpoint(w: World) -> str:
    """A respkd checkpoint of a (tiny) model trained on image folders of IMAGENET_CLASSES."""
    path = w.root / "inputs" / "folders.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    model = build_model("mlp", 3, (3, 224, 224), hidden=[1])
    config = tiny_config("folders", w.root / "inputs" / "imagenet", w.root / "data", data={"dataset": "imagenet"})
    save_checkpoint(model.state_dict(), path, {"model": {"name": "mlp", "hidden": [1]}, "num_classes": 3,
                                               "in_shape": [3, 224, 224], "class_names": list(IMAGENET_CLASSES),
                                               "config": config})
    return str(path)


def own_images(w: World, counts: dict[str, int] | None = None, grey_only: bool = False) -> Path:
    """A small flat tree of one's own PNGs (test_folder.write_own_images): 3 classes of 5 by default."""
    return write_own_images(w.root / "inputs" / "my_images", counts or {"dark": 5, "light": 5, "stripes": 5},
                            grey_only=grey_only)


def folder_data(tree: Path | str, **changes) -> dict:
    """The ``--set``-free config changes that read ``tree`` as one's own images at 28 x 28 (the MLP's size)."""
    return {"data.dataset": "folder", "data.path": str(tree), "data.image_size": 28, **changes}


def own_train(make: Callable[[World], Path | str] = own_images, distil: bool = False, **changes):
    """``respkd train`` (or distill) on the tree ``make`` builds, with ``changes``."""
    def argv(w: World) -> list[str]:
        name = "tiny-student-kd" if distil else "tiny-teacher"
        return ["distill" if distil else "train", w.config(name, distil=distil, **folder_data(make(w), **changes)),
                *w.run_args()]
    return argv


def decoded_tree(w: World, counts: dict[str, int], **changes) -> Path:
    """A grey tree already decoded into the world's data root (as a first run leaves it), so that a refusal after
    the data are read writes nothing."""
    from respkd.data.folder import load_folder

    tree = own_images(w, counts, grey_only=True)
    cfg = tiny_config("x", w.idx, w.root / "data")
    d = DataConfig.model_validate({**cfg["data"], **{k.removeprefix("data."): v for k, v in folder_data(
        tree, **changes).items()}})
    load_folder(d, d.root, tree)
    return tree


def with_image(tree: Path, relative: str, content: bytes) -> Path:
    (tree / relative).parent.mkdir(parents=True, exist_ok=True)
    (tree / relative).write_bytes(content)
    return tree


def split_tree(w: World, test_name: str | None = "val", test_counts: dict[str, int] | None = None,
               both: bool = False) -> Path:
    """``train/<class>/*`` (2 dark, 2 light) with a ``test_name`` folder beside it (1 of each, or ``test_counts``),
    and with ``both`` a ``test/`` as well."""
    root = w.root / "inputs" / "split_images"
    write_own_images(root / "train", {"dark": 2, "light": 2})
    for name in [test_name] * (test_name is not None) + ["test"] * both:
        write_own_images(root / name, test_counts or {"dark": 1, "light": 1})
    return root


def corrupted_folder_cache(w: World) -> Path:
    """A tree whose cache in the world's data root has one byte of its pixels flipped."""
    tree = decoded_tree(w, {"dark": 5, "light": 5})
    (cache,) = (w.root / "data").glob("folder-*.safetensors")
    raw = bytearray(cache.read_bytes())
    raw[-10] ^= 0x10
    cache.write_bytes(bytes(raw))
    return tree


def renamed_classes(w: World, name: str = "renamed.safetensors") -> str:
    """The finished teacher's checkpoint with its class names changed ('zero' for '0'): its weights untouched."""
    names = ["zero", *map(str, range(1, 10))]
    return w.file(name, rewrite_metadata(w.ckpt, change_respkd_meta(class_names=names)))


def four_class_checkpoint(w: World) -> str:
    """An older respkd checkpoint of 4 classes that records no class names."""
    path = w.root / "inputs" / "four.safetensors"
    model = build_model("mlp", 4, (1, 28, 28), hidden=[8])
    save_checkpoint(model.state_dict(), path, {"model": {"name": "mlp", "hidden": [8]}, "num_classes": 4,
                                                "in_shape": [1, 28, 28], "normalization": {"mean": [0.1307],
                                                                                           "std": [0.3081]}})
    return str(path)


def predict_args(*inputs: Callable[[World], str] | str, extra: tuple[str, ...] = ()) -> Callable[[World], list]:
    return lambda w: ["predict", str(w.ckpt), *[i(w) if callable(i) else i for i in inputs], *extra]


NOT_A_PNG = b"\x89PNG\r\n\x1a\n but the rest is not"


# ---------------------------------------------------------------- the corpus


@dataclass
class Case:
    argv: Callable[[World], list[str]]
    expect: tuple[str, ...] = ()  # fragments the error line must contain
    subprocess: bool = False  # run `python -m respkd.cli` for real instead of main() in-process
    usage: bool = False  # an argparse usage error (main raises SystemExit(2) instead of returning 2)
    within: float | None = None  # seconds the command may take (default: 10 in-process, 60 as a subprocess)


def train(**changes) -> Callable[[World], list[str]]:
    return lambda w: ["train", w.config(**changes), *w.run_args()]


def distill(**changes) -> Callable[[World], list[str]]:
    return lambda w: ["distill", w.config("tiny-student-kd", distil=True, **changes), *w.run_args()]


def train_file(content: str | bytes) -> Callable[[World], list[str]]:
    return lambda w: ["train", w.file("bad.yaml", content), *w.run_args()]


CASES: dict[str, Case] = {
    # ---- configs: YAML
    "yaml-syntax-error": Case(train_file("name: [unclosed\ntrain: {epochs: 1"), ("invalid YAML", "line")),
    "yaml-not-a-mapping": Case(train_file("- train\n- distill\n"), ("expected a mapping",)),
    "yaml-empty-file": Case(train_file(""), ("expected a mapping",)),
    "yaml-duplicate-key": Case(train_file("name: a\nname: b\nmodel: {name: mlp}\ntrain: {epochs: 1, lr: 0.1}\n"),
                               ("duplicate key 'name'",)),
    "yaml-duplicate-nested-key": Case(train_file("name: a\nmodel: {name: mlp}\ntrain: {epochs: 1, lr: 0.1, lr: 9}\n"),
                                      ("duplicate key 'lr'", "line 3")),
    "yaml-python-object-tag": Case(train_file("name: !!python/object/apply:os.system ['touch pwned']\n"),
                                   ("invalid YAML", "python/object")),
    "yaml-not-utf8": Case(train_file(b"name: \xff\xfe\x00bad\n"), ("cannot read",)),
    "config-is-a-folder": Case(lambda w: ["train", str(w.runs), *w.run_args()], ("cannot read",)),
    "config-missing": Case(lambda w: ["train", str(w.root / "nope.yaml"), *w.run_args()], ("does not exist",),
                           subprocess=True),
    # ---- configs: keys, types, ranges
    "unknown-top-level-key": Case(train(epochs=3), ("unknown key 'epochs'",)),
    "misspelt-section": Case(train(trian={"epochs": 1}), ("unknown key 'trian'", "did you mean 'train'")),
    "misspelt-key": Case(train(**{"train.lr_rate": 0.1}), ("unknown key 'train.lr_rate'", "did you mean 'lr'")),
    "wrong-type-string-for-float": Case(train(**{"train.lr": "fast"}), ("'train.lr'", "'fast'")),
    "wrong-type-bool-for-int": Case(train(**{"train.epochs": True}), ("'train.epochs'",)),
    "section-is-a-list": Case(train(train=[1, 2]), ("'train'",)),
    "missing-required-key": Case(train(**{"train.lr": DROP}), ("missing key 'train.lr'",)),
    "negative-epochs": Case(train(**{"train.epochs": -3}), ("'train.epochs'", "-3")),
    "zero-batch-size": Case(train(**{"train.batch_size": 0}), ("'train.batch_size'",)),
    "momentum-out-of-range": Case(train(**{"train.momentum": 1.5}), ("'train.momentum'",)),
    "lr-infinite": Case(train(**{"train.lr": float("inf")}), ("'train.lr'",)),
    "temperature-nan": Case(distill(**{"kd.temperature": float("nan")}), ("'kd.temperature'",)),
    "huge-seed": Case(train(seed=2**70), ("'seed'",)),
    "negative-seed": Case(train(seed=-1), ("'seed'",)),
    "huge-threads": Case(train(threads=10**20), ("'threads'",)),
    "huge-transfer-seed": Case(train(**{"data.transfer": {"fraction": 0.5, "seed": 10**30}}),
                               ("'data.transfer.seed'",)),
    "huge-layer-width": Case(train(model={"name": "mlp", "hidden": [10**30]}), ("model 'mlp'",)),
    "model-option-nan": Case(train(model={"name": "mlp", "dropout_hidden": float("nan")}), ("finite",)),
    "bad-dataset-name": Case(train(**{"data.dataset": "cifar11"}), ("'data.dataset'", "'cifar11'")),
    "run-name-path-traversal": Case(train(name="../../escaped"), ("'name'",)),
    "run-name-dot-dot": Case(train(name=".."), ("'name'",)),  # would be the runs root's parent
    "jitter-too-large": Case(train(**{"data.jitter": 99}), ("'data.jitter'",)),
    "drop-and-keep-classes": Case(train(**{"data.transfer": {"drop_classes": [3], "keep_classes": [7]}}),
                                  ("not both",)),
    "keep-class-that-does-not-exist": Case(train(**{"data.transfer": {"keep_classes": [12]}}), ("class 12",)),
    "val-size-larger-than-data": Case(train(**{"data.val_size": 5000}), ("data.val_size",)),
    "unknown-device": Case(train(device="tpu"), ("device",)),
    # ---- configs: models
    "unknown-model-name": Case(train(model={"name": "resnet9000"}), ("unknown model 'resnet9000'",)),
    "unknown-model-option": Case(train(model={"name": "mlp", "hiden": [8]}), ("'hiden'", "did you mean 'hidden'")),
    "model-option-out-of-range": Case(train(model={"name": "mlp", "dropout_input": 2.0}), ("model 'mlp'",)),
    "negative-layer-width": Case(train(model={"name": "mlp", "hidden": [-5]}), ("model 'mlp'",)),
    "unknown-torchvision-model": Case(train(model={"name": "torchvision.resnet9000"}), ("resnet9000",)),
    # ---- configs: teachers and kd
    "teacher-with-two-sources": Case(distill(teacher={"run": "tiny-teacher", "checkpoint": "x.safetensors"}),
                                     ("exactly one of",)),
    "ensemble-of-one": Case(distill(teacher={"runs": ["tiny-teacher"]}), ("'teacher.runs'",)),
    "ensemble-member-twice": Case(distill(teacher={"runs": ["tiny-teacher", "tiny-teacher"]}), ("twice",)),
    "combine-for-one-teacher": Case(distill(**{"teacher.combine": "mean_logits"}), ("'combine' is for an ensemble",)),
    "kd-without-teacher": Case(lambda w: ["distill", w.config(kd={"temperature": 4.0}), *w.run_args()],
                               ("'teacher' and 'kd' go together",)),
    "distill-without-teacher": Case(lambda w: ["distill", w.config(), *w.run_args()], ("needs 'teacher' and 'kd'",)),
    "missing-teacher-run": Case(distill(teacher={"run": "no-such-run"}), ("no-such-run",)),
    "misspelt-teacher-run": Case(distill(teacher={"run": "tiny-teachr"}), (
        "run 'tiny-teachr' does not exist", "runs there: tiny-teacher, tiny-student-kd")),
    "misspelt-ensemble-member": Case(distill(teacher={"runs": ["tiny-teacher", "tiny-student"]}), (
        "run 'tiny-student' does not exist", "runs there: tiny-student-kd, tiny-teacher")),
    "teacher-pth-of-other-classes": Case(lambda w: ["distill", w.config("tiny-student-kd", distil=True, teacher={
        "weights": state_dict_file(w, num_classes=4), "model": {"name": "mlp", "hidden": [32]}}), *w.run_args()],
        ("does not fit the teacher mlp (10 classes)", "[4, 32] vs [10, 32]")),
    "teacher-model-without-weights": Case(distill(teacher={"model": {"name": "mlp"}}), ("'model' needs its weights",)),
    "teacher-pretrained-and-weights": Case(distill(teacher={"model": {"name": "timm.test_resnet", "pretrained": True},
                                                            "weights": "x.pth"}), ("give exactly one of",)),
    "teacher-torchvision-unknown-weights": Case(distill(teacher={"model": {"name": "torchvision.squeezenet1_1",
                                                                           "weights": "IMAGENET9K_V1"}}),
                                                ("no weights 'IMAGENET9K_V1'", "choose IMAGENET1K_V1, DEFAULT")),
    "teacher-torchvision-weights-of-1000-classes": Case(distill(teacher={
        "model": {"name": "torchvision.squeezenet1_1", "weights": "IMAGENET1K_V1"},
        "input": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}}), ("have 1000 classes, the data has 10",)),
    "teacher-torchvision-pretrained": Case(distill(teacher={"model": {"name": "torchvision.squeezenet1_1",
                                                                      "pretrained": True}}), ("'pretrained' is timm's",
                                                                                             "weights: NAME")),
    "teacher-mlp-pretrained": Case(distill(teacher={"model": {"name": "mlp", "pretrained": True}}),
                                   ("has no option 'pretrained'",)),
    "teacher-timm-pretrained-file-missing": Case(distill(teacher={"model": {
        "name": "timm.test_resnet", "pretrained": True, "pretrained_cfg_overlay": {"file": "/nonexistent/w.pth"}}}),
        ("pretrained_cfg_overlay file /nonexistent/w.pth does not exist",)),
    "teacher-timm-pretrained-with-another-classifier": Case(lambda w: ["distill", w.config(
        "tiny-student-kd", distil=True, teacher={"model": {"name": "timm.test_resnet", "pretrained": True,
                                                           "pretrained_cfg_overlay": {"file": timm_weights(w)}},
                                                 "input": {"mean": [0.5] * 3, "std": [0.5] * 3, "size": 32}}),
        *w.run_args()], ("pretrained weights are for 1000 classes", "needs its own trained classifier")),
    "finished-run-rerun-with-a-wrong-data-path": Case(lambda w: ["train", w.config(**{"data.path": "/nonexistent/m"}),
                                                                 "--runs-root", str(w.runs)], ("does not exist",)),
    "teacher-checkpoint-is-a-folder": Case(lambda w: ["distill", w.config(
        "tiny-student-kd", distil=True, teacher={"checkpoint": str(w.runs)}), *w.run_args()], ("not a file",)),
    "cache-topk-without-cache": Case(distill(**{"kd.cache_topk": 3}), ("'cache_topk' needs 'cache: true'",)),
    "cache-topk-above-classes": Case(distill(**{"kd.cache": True, "kd.cache_topk": 50}), ("cache_topk is 50",)),
    # ---- configs: the response loss and its parameters
    "unknown-loss": Case(distill(**{"kd.loss": "crd"}), ("'kd.loss'", "'crd'")),
    "dkd-params-under-dist": Case(distill(**{"kd.loss": "dist", "kd.dkd": {"alpha": 1.0}}),
                                  ("'dkd' settings are for 'loss: dkd', but loss is dist",)),
    "dist-params-under-default-kd": Case(distill(**{"kd.dist": {"beta": 2.0}}),
                                         ("'dist' settings are for 'loss: dist', but loss is kd",)),
    "dkd-negative-alpha": Case(distill(**{"kd.loss": "dkd", "kd.dkd": {"alpha": -1.0}}), ("'kd.dkd.alpha'", "-1")),
    "dkd-negative-warmup": Case(distill(**{"kd.loss": "dkd", "kd.dkd": {"warmup_epochs": -2}}),
                                ("'kd.dkd.warmup_epochs'", "-2")),
    "dkd-warmup-not-an-int": Case(distill(**{"kd.loss": "dkd", "kd.dkd": {"warmup_epochs": 2.5}}),
                                  ("'kd.dkd.warmup_epochs'",)),
    "dkd-misspelt-param": Case(distill(**{"kd.loss": "dkd", "kd.dkd": {"betta": 8.0}}),
                               ("unknown key 'kd.dkd.betta'", "did you mean 'beta'")),
    "dist-gamma-nan": Case(distill(**{"kd.loss": "dist", "kd.dist": {"gamma": float("nan")}}), ("'kd.dist.gamma'",)),
    "standardize-not-a-bool": Case(distill(**{"kd.standardize": "yes"}), ("'kd.standardize'",)),
    "device-resident-not-a-bool": Case(train(**{"data.device_resident": "yes"}), ("'data.device_resident'",)),
    "compile-not-a-bool": Case(train(**{"train.compile": 1}), ("'train.compile'",)),
    "imagenet-device-resident": Case(train(**{"data.dataset": "imagenet", "data.device_resident": True}),
                                     ("'device_resident' is for in-memory datasets",)),
    "logit-mse-with-topk-cache": Case(distill(**{"kd.loss": "logit_mse", "kd.cache": True, "kd.cache_topk": 3}),
                                      ("'loss: logit_mse' reads the teacher's logits", "drop 'cache_topk'")),
    "standardize-with-topk-cache": Case(distill(**{"kd.standardize": True, "kd.cache": True, "kd.cache_topk": 3}),
                                        ("'standardize: true' reads the teacher's logits",)),
    "dkd-on-a-named-response": Case(distill(**{"kd.loss": "dkd", "kd.teacher_response": "layers.0"}),
                                    ("'loss: dkd' splits each response by its true class",)),
    # ---- data folders
    "data-folder-missing": Case(train(**{"data.path": "/nonexistent/mnist"}), ("does not exist",)),
    "data-folder-empty": Case(lambda w: ["train", w.config(**{"data.path": str(w.root / "inputs")}),
                                         *w.run_args()], ("holds no mnist dataset",)),
    "data-path-is-a-file": Case(lambda w: ["train", w.config(**{"data.path": w.file("f.txt", "x")}),
                                           *w.run_args()], ("not a folder",)),
    "cifar-data-path-is-a-file": Case(lambda w: ["train", w.config(**{
        "data.dataset": "cifar10", "data.path": w.file("f.txt", "x")}), *w.run_args()], ("not a folder",)),
    "imagenet-data-path-is-a-file": Case(lambda w: ["train", w.config(**{
        "data.dataset": "imagenet", "data.path": w.file("f.txt", "x")}), *w.run_args()], ("not a folder",)),
    "idx-truncated": Case(lambda w: ["train", w.config(**{"data.path": idx_with(
        w, "trunc", test_images=(w.idx / "t10k-images-idx3-ubyte").read_bytes()[:-100])}), *w.run_args()],
                          ("truncated",)),
    "idx-wrong-magic": Case(lambda w: ["train", w.config(**{"data.path": idx_with(
        w, "magic", train_labels=b"\x12\x34\x08\x01" + bytes(604))}), *w.run_args()], ("bad magic",)),
    "idx-absurd-dims": Case(lambda w: ["train", w.config(**{"data.path": idx_with(
        w, "dims", test_images=idx_header(0x08, (0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF)) + bytes(64))}),
        *w.run_args()], ("header promises",)),
    "idx-gz-not-gzip": Case(lambda w: ["train", w.config(**{"data.path": idx_with(
        w, "gz", train_images=b"not gzip at all" * 10)}), *w.run_args()], ("cannot read IDX",)),
    "idx-label-count-mismatch": Case(lambda w: ["train", w.config(**{"data.path": idx_with(
        w, "count", test_labels=synthetic_digits(150, seed=2)[1])}), *w.run_args()],
        ("200 test images but 150 test labels",)),
    "idx-labels-out-of-range": Case(lambda w: ["train", w.config(**{"data.path": idx_with(
        w, "labels", test_labels=np.full(200, 12, dtype=np.uint8))}), *w.run_args()], ("labels outside",)),
    "idx-images-wrong-size": Case(lambda w: ["train", w.config(**{"data.path": idx_with(
        w, "size", test_images=np.zeros((200, 32, 32), dtype=np.uint8))}), *w.run_args()], ("shape",)),
    "csv-wrong-columns": Case(lambda w: ["train", w.config(**{"data.path": csv_folder(w, "1,2,3\n4,5,6\n")}),
                                         *w.run_args()], ("columns",)),
    "csv-not-numbers": Case(lambda w: ["train", w.config(**{"data.path": csv_folder(w, "label,a\nx,y\nz,w\n")}),
                                       *w.run_args()], ("cannot read",)),
    "csv-empty": Case(lambda w: ["train", w.config(**{"data.path": csv_folder(w, "")}), *w.run_args()],
                      ("mnist_train.csv",), subprocess=True),
    "csv-without-test-file": Case(lambda w: ["train", w.config(**{"data.path": csv_folder(w, "0" + ",0" * 784, None)}),
                                             *w.run_args()], ("no mnist_test.csv",)),
    "dataset-cache-corrupt": Case(lambda w: ["train", w.config(**{"data.path": None, "data.root": str(
        corrupt_mnist_cache(w.root / "inputs" / "cache_root"))}), *w.run_args()], ("checksum mismatch",)),
    "dataset-cache-garbage": Case(lambda w: ["train", w.config(**{"data.path": None, "data.root": str(Path(w.file(
        "garbage_root/mnist.safetensors", b"\x00" * 50)).parent)}), *w.run_args()], ("unreadable dataset cache",)),
    "cifar-pickle-runs-code": Case(lambda w: ["train", w.config(**{"data.dataset": "cifar10", "data.path": cifar_with(
        w, "python", "data_batch_2", pickle.dumps({"data": _Booby(), "labels": [0]}, protocol=2))}), *w.run_args()],
        ("refused to unpickle",)),
    "cifar-binary-truncated": Case(lambda w: ["train", w.config(**{"data.dataset": "cifar10", "data.path": cifar_with(
        w, "binary", "test_batch.bin", bytes(3073 * 3 + 100))}), *w.run_args()], ("CIFAR records",)),
    "imagenet-without-val": Case(lambda w: ["train", w.config(**{"data.dataset": "imagenet", "data.path": image_folders(
        w, drop="val")}), *w.run_args()], ("no val/ folder",)),
    "imagenet-class-folders-differ": Case(lambda w: ["train", w.config(**{
        "data.dataset": "imagenet", "data.path": image_folders(w, rename=("val/n01440764", "val/n99999999"))}),
        *w.run_args()], ("different class folders",)),
    # ---- checkpoints
    "checkpoint-missing": Case(lambda w: ["eval", str(w.root / "none.safetensors")], ("does not exist",)),
    "checkpoint-empty": Case(lambda w: ["eval", w.file("empty.safetensors", b"")], ("not a readable safetensors",)),
    "checkpoint-truncated": Case(lambda w: ["eval", w.file("t.safetensors", w.ckpt.read_bytes()[:-1000])],
                                 ("t.safetensors",)),
    "checkpoint-not-safetensors": Case(lambda w: ["eval", w.file("g.safetensors", b"PK\x03\x04 a zip" * 30)],
                                       ("not a readable safetensors",)),
    "checkpoint-absurd-header-length": Case(lambda w: ["eval", w.file("h.safetensors", struct.pack("<Q", 2**62) + b"{}")],
                                            ("not a readable safetensors",)),
    "checkpoint-pickle-renamed": Case(lambda w: ["eval", pickle_checkpoint(w)], ("not a readable safetensors",),
                                      subprocess=True),
    "checkpoint-torch-save-renamed": Case(lambda w: ["eval", torch_save_checkpoint(w)], ("not a readable safetensors",)),
    "teacher-checkpoint-is-a-pickle": Case(lambda w: ["distill", w.config(
        "tiny-student-kd", distil=True, teacher={"checkpoint": pickle_checkpoint(w)}), *w.run_args()],
        ("not a readable safetensors",)),
    "checkpoint-without-respkd-metadata": Case(lambda w: ["eval", w.file("nometa.safetensors", rewrite_metadata(
        w.ckpt, lambda m: None))], ("not a respkd checkpoint",)),
    "checkpoint-metadata-json-broken": Case(lambda w: ["eval", w.file("json.safetensors", rewrite_metadata(
        w.ckpt, lambda m: {**m, "respkd": m["respkd"][:-20]}))], ("not a respkd checkpoint",)),
    "checkpoint-metadata-missing-model": Case(lambda w: ["eval", w.file("nomodel.safetensors", rewrite_metadata(
        w.ckpt, change_respkd_meta(model=DROP)))], ("'model'",)),
    "checkpoint-metadata-wrong-type": Case(lambda w: ["eval", w.file("types.safetensors", rewrite_metadata(
        w.ckpt, change_respkd_meta(num_classes="ten")))], ("num_classes",)),
    "checkpoint-metadata-without-config": Case(lambda w: ["eval", w.file("noconfig.safetensors", rewrite_metadata(
        w.ckpt, change_respkd_meta(config=DROP)))], ("embedded config",)),
    "checkpoint-embedded-config-broken": Case(lambda w: ["eval", w.file("cfg.safetensors", rewrite_metadata(
        w.ckpt, change_respkd_meta(config={"name": "x"})))], ("embedded config",)),
    "checkpoint-weights-altered": Case(lambda w: ["eval", w.file("flip.safetensors", flip_weight_byte(w.ckpt))],
                                       ("checksum",)),
    "checkpoint-weights-do-not-fit": Case(lambda w: ["eval", other_model_checkpoint(
        w, model={"name": "mlp", "hidden": [16]})], ("do not fit",)),
    "checkpoint-is-a-folder-without-a-run": Case(lambda w: ["eval", str(w.root / "inputs")], ("does not exist",)),
    "checkpoint-is-a-run-folder-without-weights": Case(lambda w: ["eval", str(Path(w.file(
        "r/summary.json", "{}")).parent)], ("does not exist",)),
    # ---- eval of runs and plain state dicts
    "eval-misspelt-run": Case(lambda w: ["eval", "tiny-teachr", "--runs-root", str(w.runs)],
                              ("tiny-teachr: no such checkpoint, run directory, or run", "runs there: tiny-teacher, tiny-student-kd")),
    "eval-pth-without-model": Case(lambda w: ["eval", state_dict_file(w)], ("a torch.save file, not a respkd "
                                                                           "checkpoint", "--model NAME --dataset")),
    "eval-plain-safetensors-without-model": Case(lambda w: ["eval", state_dict_file(w, "w.safetensors")],
                                                 ("a plain safetensors file", "--model NAME")),
    "eval-model-without-dataset": Case(lambda w: ["eval", state_dict_file(w), "--model", "mlp"],
                                       ("--model needs --dataset",)),
    "eval-dataset-without-model": Case(lambda w: ["eval", str(w.ckpt), "--dataset", "mnist"],
                                       ("--dataset needs --model",)),
    "eval-model-for-a-respkd-checkpoint": Case(lambda w: ["eval", str(w.ckpt), "--model", "mlp", "--dataset",
                                                          "mnist"], ("is a respkd checkpoint", "without --model")),
    "eval-weights-missing": Case(lambda w: ["eval", str(w.root / "no.pth"), "--model", "mlp", "--dataset", "mnist"],
                                 ("no.pth does not exist",)),
    "eval-weights-do-not-fit-the-model": Case(lambda w: ["eval", state_dict_file(w), "--model", "mlp", "--dataset",
                                                         "mnist", "--set", "model.hidden=[16]", "--data-path",
                                                         str(w.idx)], ("does not fit --model mlp", "shape mismatch")),
    "eval-weights-of-other-classes": Case(lambda w: ["eval", state_dict_file(w, num_classes=4), "--model", "mlp",
                                                     "--dataset", "mnist", "--set", "model.hidden=[32]",
                                                     "--data-path", str(w.idx)], ("[4, 32] vs [10, 32]",)),
    "eval-weights-unknown-model": Case(lambda w: ["eval", state_dict_file(w), "--model", "resnet9000", "--dataset",
                                                  "mnist", "--data-path", str(w.idx)], ("unknown model 'resnet9000'",)),
    "eval-weights-unknown-dataset": Case(lambda w: ["eval", state_dict_file(w), "--model", "mlp", "--dataset",
                                                    "mnist3"], ("'data.dataset'", "'mnist3'")),
    "eval-weights-set-a-train-key": Case(lambda w: ["eval", state_dict_file(w), "--model", "mlp", "--dataset",
                                                    "mnist", "--set", "train.lr=1"], ("takes model.* and data.*",)),
    "eval-weights-set-an-unknown-model-option": Case(lambda w: ["eval", state_dict_file(w), "--model", "mlp",
                                                                "--dataset", "mnist", "--set", "model.hiden=[32]",
                                                                "--data-path", str(w.idx)], ("did you mean 'hidden'",)),
    "eval-checkpoint-set-a-model-key": Case(lambda w: ["eval", str(w.ckpt), "--set", "model.hidden=[8]"],
                                            ("data.* keys only",)),
    "eval-checkpoint-set-a-bad-data-key": Case(lambda w: ["eval", str(w.ckpt), "--set", "data.test_limt=5"],
                                               ("unknown key 'data.test_limt'",)),
    "eval-data-path-of-more-classes": Case(lambda w: ["eval", imagenet_checkpoint(w), "--data-path", image_folders(
        w, copy=("n01484850", "n01491361"))], ("the checkpoint has 3 classes but the data has 4", "class 3 is 'n01491361'")),
    "eval-data-path-of-fewer-classes": Case(lambda w: ["eval", imagenet_checkpoint(w), "--data-path", image_folders(
        w, drop_class="n01484850")], ("the checkpoint has 3 classes but the data has 2",)),
    "eval-data-path-of-other-classes": Case(lambda w: ["eval", imagenet_checkpoint(w), "--data-path", image_folders(
        w, rename_class=("n01484850", "n01491361"))], ("the checkpoint's class 2 is 'n01484850' but the data's class 2 is 'n01491361'",)),
    "teacher-checkpoint-corrupt": Case(lambda w: ["distill", w.config(
        "tiny-student-kd", distil=True, teacher={"checkpoint": w.file("flip.safetensors", flip_weight_byte(w.ckpt))}),
        *w.run_args()], ("checksum",)),
    "teacher-weights-pickle-pth": Case(lambda w: ["distill", w.config(
        "tiny-student-kd", distil=True, teacher={"weights": w.file("evil.pth", pickle.dumps({"w": _Booby()})),
                                                 "model": {"name": "mlp", "hidden": [32]}}), *w.run_args()],
        ("evil.pth",)),
    "teacher-weights-without-model": Case(distill(teacher={"weights": "x.safetensors"}),
                                          ("'weights' and 'model' go together",)),
    "init-run-and-checkpoint": Case(train(init={"run": "tiny-teacher", "checkpoint": "x.safetensors"}),
                                    ("exactly one of 'run' or 'checkpoint'",)),
    "init-weights-do-not-fit": Case(lambda w: ["train", w.config(init={"checkpoint": other_model_checkpoint(w)}),
                                               *w.run_args()], ("does not fit",)),
    "export-out-is-input": Case(lambda w: ["export", str(w.ckpt), str(w.ckpt), "--force"], ("input checkpoint",)),
    "export-out-exists": Case(lambda w: ["export", str(w.ckpt), w.file("out.safetensors", "keep me")],
                              ("already exists",)),
    "export-metadata-missing-model": Case(lambda w: ["export", w.file("nomodel.safetensors", rewrite_metadata(
        w.ckpt, change_respkd_meta(model=DROP))), str(w.root / "out.safetensors")], ("'model'",)),
    "export-unknown-run": Case(lambda w: ["export", "no-such-run", "out.pth", *w.run_args()], ("no-such-run",)),
    "export-unknown-format": Case(lambda w: ["export", str(w.ckpt), "out.tflite", "--format", "tflite"],
                                  ("invalid choice", "tflite"), usage=True),
    "export-onnx-out-exists": Case(lambda w: ["export", str(w.ckpt), w.file("student.onnx", "keep me")],
                                   ("already exists",)),
    "export-onnx-out-is-a-folder": Case(lambda w: ["export", "tiny-teacher", str(Path(w.file("d.onnx/x", "")).parent),
                                                   "--runs-root", str(w.runs)], ("is a directory",)),
    "export-onnx-misspelt-run": Case(lambda w: ["export", "tiny-teachr", "student.onnx", "--runs-root", str(w.runs)],
                                     ("runs there: tiny-teacher",)),
    "export-onnx-of-a-damaged-checkpoint": Case(lambda w: ["export", w.file("flip.safetensors", flip_weight_byte(
        w.ckpt)), "student.onnx"], ("checksum",)),
    # ---- resume (the runs root's own files: --force would answer differently, so it is left out)
    "resume-with-nothing-to-resume": Case(lambda w: ["train", w.config("fresh-run"), "--runs-root", str(w.runs),
                                                     "--resume"], ("no training state",)),
    "resume-a-finished-run": Case(lambda w: ["train", w.config(), "--runs-root", str(w.runs), "--resume"],
                                  ("nothing to resume",)),
    "resume-and-force": Case(lambda w: ["train", w.config(), *w.run_args(), "--resume"], ("give only one",)),
    "seeds-resume-and-force": Case(lambda w: ["train", w.config(), *w.run_args(), "--resume", "--seeds", "0,1"],
                                   ("give only one",)),
    "resume-state-garbage": Case(lambda w: ["train", interrupted_run(w), "--runs-root", str(w.runs), "--resume"],
                                 ("cannot resume",)),
    "interrupted-run-without-resume": Case(lambda w: ["train", interrupted_run(w), "--runs-root", str(w.runs)],
                                           ("was interrupted", "--resume")),
    # ---- command lines
    "no-arguments": Case(lambda w: [], ("required",), usage=True, subprocess=True),
    "unknown-subcommand": Case(lambda w: ["frobnicate"], ("invalid choice", "frobnicate"), usage=True,
                               subprocess=True),
    "train-without-config": Case(lambda w: ["train"], ("required", "config"), usage=True),
    "unknown-option": Case(lambda w: ["train", w.config(), "--epochs", "3"], ("unrecognized", "--epochs"),
                           usage=True, subprocess=True),
    "set-without-equals": Case(lambda w: ["train", w.config(), "--set", "train.epochs", *w.run_args()],
                               ("expected KEY=VALUE",)),
    "set-empty-key": Case(lambda w: ["train", w.config(), "--set", "=3", *w.run_args()], ("expected KEY=VALUE",)),
    "set-unknown-key": Case(lambda w: ["train", w.config(), "--set", "train.epocs=3", *w.run_args()],
                            ("unknown key 'train.epocs'", "did you mean 'epochs'")),
    "set-into-a-value": Case(lambda w: ["train", w.config(), "--set", "train.lr.x=1", *w.run_args()],
                             ("'lr' is not a section",)),
    "set-invalid-yaml-value": Case(lambda w: ["train", w.config(), "--set", "train.epochs=[", *w.run_args()],
                                   ("not valid YAML",)),
    "set-python-tag": Case(lambda w: ["train", w.config(), "--set", "name=!!python/name:os.system", *w.run_args()],
                           ("not valid YAML",)),
    "seeds-not-integers": Case(lambda w: ["train", w.config(), "--seeds", "a,b", *w.run_args()], ("--seeds",)),
    "seeds-negative": Case(lambda w: ["train", w.config(), "--seeds", "0,-1", *w.run_args()], ("with seed -1",)),
    "seeds-duplicate": Case(lambda w: ["train", w.config(), "--seeds", "1,1", *w.run_args()], ("repeats",)),
    "seeds-empty": Case(lambda w: ["train", w.config(), "--seeds", ",", *w.run_args()], ("at least one",)),
    "seeds-huge": Case(lambda w: ["train", w.config(), "--seeds", str(2**64), *w.run_args()], ("'seed'",)),
    "seeds-fractional": Case(lambda w: ["train", w.config(), "--seeds", "1.5", *w.run_args()], ("--seeds",)),
    "run-directory-is-a-file": Case(lambda w: ["train", w.config("fresh-run"), "--runs-root",
                                               str(Path(w.file("runs2/fresh-run", "x")).parent)], ("not a folder",)),
    "runs-root-is-a-file": Case(lambda w: ["train", w.config("fresh-run"), "--runs-root", w.file("runs.txt", "x")],
                                ("not a folder",)),
    "eval-ensemble-of-one": Case(lambda w: ["eval-ensemble", str(w.ckpt)], ("at least two",)),
    "eval-ensemble-same-member-twice": Case(lambda w: ["eval-ensemble", str(w.ckpt), str(w.ckpt)], ("twice",)),
    "eval-ensemble-nan-temperature": Case(lambda w: ["eval-ensemble", str(w.ckpt),
                                                     str(w.runs / "tiny-student-kd" / "model.safetensors"),
                                                     "--temperature", "nan"], ("temperature",)),
    "eval-ensemble-unknown-rule": Case(lambda w: ["eval-ensemble", str(w.ckpt), str(w.ckpt), "--rule", "vote"],
                                       ("invalid choice", "vote"), usage=True),
    "adjust-bias-bad-classes": Case(lambda w: ["adjust-bias", str(w.ckpt), "--classes", "three", "--shift", "1"],
                                    ("--classes",)),
    "adjust-bias-class-out-of-range": Case(lambda w: ["adjust-bias", str(w.ckpt), "--classes", "12", "--shift", "1"],
                                           ("class 12",)),
    "adjust-bias-shift-nan": Case(lambda w: ["adjust-bias", str(w.ckpt), "--classes", "3", "--shift", "nan"],
                                  ("shift",)),
    "adjust-bias-range-infinite": Case(lambda w: ["adjust-bias", str(w.ckpt), "--classes", "3", "--search",
                                                  "--range", "0", "inf"], ("finite",)),
    "adjust-bias-out-is-input": Case(lambda w: ["adjust-bias", str(w.ckpt), "--classes", "3", "--shift", "1",
                                                "--out", str(w.ckpt)], ("is the input checkpoint",)),
    "adjust-bias-search-without-validation": Case(lambda w: ["adjust-bias", str(w.ckpt), "--classes", "3",
                                                             "--search"], ("validation split",)),
    "adjust-bias-shift-and-search": Case(lambda w: ["adjust-bias", str(w.ckpt), "--classes", "3", "--shift", "1",
                                                    "--search"], ("not allowed with",), usage=True),
    "sweep-negative-temperature": Case(lambda w: ["sweep", w.config("tiny-student-kd", distil=True),
                                                  "--temperatures", "2,-1", *w.run_args()], ("> 0",)),
    "sweep-nan-temperature": Case(lambda w: ["sweep", w.config("tiny-student-kd", distil=True),
                                             "--temperatures", "2,nan", *w.run_args()], ("temperatures",)),
    "table-of-a-non-run": Case(lambda w: ["table", str(w.root / "inputs")], ("no summary.json",)),
    "table-broken-summary": Case(lambda w: ["table", str(Path(w.file("r/summary.json", "{broken")).parent)],
                                 ("not valid JSON",)),
    "table-summary-not-a-run": Case(lambda w: ["table", str(Path(w.file("r/summary.json", "[1, 2]")).parent)],
                                    ("summary.json",)),
    "table-summary-without-metrics": Case(lambda w: ["table", "--json", str(Path(w.file("r/summary.json", json.dumps(
        {"name": "r", "params": 1, "macs": 1, "config": {}, "metrics": {"top1": 9.0}}))).parent)], ("metrics.top5",)),
    "plot-run-without-metrics": Case(lambda w: ["plot", str(Path(w.file("norun/notes.txt", "x")).parent), "--out",
                                                str(w.root / "c.png")], ("no metrics.jsonl",)),
    "plot-broken-metrics-line": Case(lambda w: ["plot", str(Path(w.file("r/metrics.jsonl", (
        w.runs / "tiny-teacher" / "metrics.jsonl").read_text() + '{"epoch": 3, "loss"\n')).parent), "--out",
        str(w.root / "c.png")], ("line 3 is not valid JSON",)),
    "plot-metrics-line-without-test-errors": Case(lambda w: ["plot", str(Path(w.file("r/metrics.jsonl", json.dumps(
        {"epoch": 1, "loss": 0.5}) + "\n")).parent), "--out", str(w.root / "c.png")], ("line 1", "'test_errors'")),
    "plot-no-such-run": Case(lambda w: ["plot", "no-such-run", "--runs-root", str(w.runs), "--out",
                                        str(w.root / "c.png")], ("no such run directory",)),
    "plot-out-in-missing-folder": Case(lambda w: ["plot", str(w.runs / "tiny-teacher"), "--out",
                                                  str(w.root / "nope" / "c.png")], ("does not exist",)),
    "plot-out-not-a-figure": Case(lambda w: ["plot", str(w.runs / "tiny-teacher"), "--out", str(w.root / "c.jpg")],
                                  (".png, .svg, .pdf",), subprocess=True),
    "reproduce-plan-yaml-error": Case(lambda w: ["reproduce", w.file("plan.yaml", "title: [x\n")],
                                      ("invalid YAML",)),
    "reproduce-plan-duplicate-key": Case(lambda w: ["reproduce", w.file("plan.yaml", "title: a\ntitle: b\nstages: []\n")],
                                         ("duplicate key 'title'",)),
}


# ---------------------------------------------------------------- hostile sizes: the YAML reader's bounds, every range
# Inputs are generated inside the case (in its tmp world), each at or beyond a bound: nesting depth (32), file size
# (4 MiB), keys (10,000), key length (128), values after alias expansion (50,000), integer literals (100 characters).

FAST = 3.0  # seconds: a hostile input is refused this quickly however large it is


def nested_list(depth: int) -> str:
    return "[" * depth + "]" * depth


def nested_map(depth: int) -> str:
    return "{a: " * depth + "1" + "}" * depth


def block_map(depth: int) -> str:
    """``a:`` under ``a:`` ``depth`` times, in block style (one more space of indentation a level)."""
    return "".join(" " * i + "a:\n" for i in range(depth)) + " " * depth + "1\n"


def laughs(levels: int = 9, width: int = 10, mapping: bool = False) -> str:
    """The "billion laughs" bomb: each level an anchored collection of ``width`` aliases of the level below."""
    lines = [f"l0: &l0 [{', '.join(['lol'] * width)}]"]
    for i in range(1, levels):
        items = [f"*l{i - 1}"] * width
        body = "{" + ", ".join(f"k{j}: {a}" for j, a in enumerate(items)) + "}" if mapping else f"[{', '.join(items)}]"
        lines.append(f"l{i}: &l{i} {body}")
    return "\n".join(lines) + "\n"


def many_keys(n: int, indent: str = "") -> str:
    return "".join(f"{indent}key{i}: {i}\n" for i in range(n))


def config_text(w: World, name: str = "tiny-teacher", **changes) -> str:
    """The good config's YAML text (``World.config``), to which a case appends or into which it splices."""
    return Path(w.config(name, **changes)).read_text()


def hostile(make: Callable[[World], str | bytes]) -> Callable[[World], list[str]]:
    """``respkd train FILE``, FILE holding ``make(world)`` (text or bytes)."""
    return lambda w: ["train", w.file("hostile.yaml", make(w)), *w.run_args()]


def with_set(*overrides: str | Callable[[World], str]) -> Callable[[World], list[str]]:
    """``respkd train`` of the good config with ``--set`` overrides (strings, or built from the world)."""
    return lambda w: ["train", w.config(), *[a for o in overrides for a in ("--set", o(w) if callable(o) else o)],
                      *w.run_args()]


def sparse_file(w: World, size: int) -> str:
    """A file of ``size`` bytes that takes no disk space (outside the world: a snapshot would read it)."""
    path = w.root.parent / "sparse.yaml"
    with open(path, "wb") as f:
        f.truncate(size)
    return str(path)


def plan_text(w: World, stage: dict | None = None, **top) -> str:
    """A plan of one run stage (the good config), with ``stage`` keys and top-level keys changed."""
    body = {"title": "t", "runs_root": str(w.runs), "stages": [{"config": w.config("fresh-run"), **(stage or {})}]}
    return yaml.safe_dump({**body, **top}, sort_keys=False)


def reproduce(make: Callable[[World], str]) -> Callable[[World], list[str]]:
    return lambda w: ["reproduce", w.file("plan.yaml", make(w))]


def specialists_text(w: World, **sections) -> str:
    """A specialists config of the finished 'tiny-teacher' as generalist, with sections replaced by ``sections``."""
    cfg = {"name": "tiny-specialists", "generalist": {"run": "tiny-teacher"},
           "subsets": {"count": 2, "max_size": 5, "min_size": 1, "n_init": 2},
           "specialist": {"soft_targets": {"temperature": 2.0},
                          "train": {"epochs": 1, "lr": 0.05, "schedule": "constant", "precision": "fp32"}}}
    for dotted, value in sections.items():
        *parents, leaf = dotted.split(".")
        node = cfg
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return yaml.safe_dump(cfg, sort_keys=False)


def specialists(**sections) -> Callable[[World], list[str]]:
    return lambda w: ["specialists", "subsets", w.file("spec.yaml", specialists_text(w, **sections)),
                      "--runs-root", str(w.runs)]


HUGE = 2**70
LONG = "k" * 100_000
HOSTILE: dict[str, Case] = {
    # ---- nesting depth (the composer used to recurse: RecursionError and a traceback thousands of lines long)
    **{f"yaml-nested-lists-{d}": Case(hostile(lambda w, d=d: config_text(w) + f"deep: {nested_list(d)}\n"),
                                      ("nest",), within=FAST)
       for d in (100, 1000, 10_000, 100_000)},
    "yaml-nested-lists-100000-subprocess": Case(hostile(lambda w: f"deep: {nested_list(100_000)}\n"),
                                                ("nesting depth",), subprocess=True),
    **{f"yaml-nested-maps-{d}": Case(hostile(lambda w, d=d: config_text(w) + f"deep: {nested_map(d)}\n"),
                                     ("nested deeper than 32 levels",), within=FAST) for d in (33, 100, 1000, 100_000)},
    "yaml-nested-block-maps-100": Case(hostile(lambda w: config_text(w) + "deep:\n" + block_map(100).replace(
        "\n", "\n ")), ("nested deeper than 32 levels",), within=FAST),
    "yaml-nested-block-maps-1000": Case(hostile(lambda w: block_map(1000)), ("nested deeper than 32 levels",),
                                        within=FAST),
    "yaml-nested-block-sequences-1000": Case(hostile(lambda w: "- " * 1000 + "1\n"), ("nested deeper",), within=FAST),
    "yaml-nested-mixed-10000": Case(hostile(lambda w: "x: " + "[{a: " * 5000 + "1" + "}]" * 5000 + "\n"),
                                    ("nest",), within=FAST),
    "yaml-nested-in-a-real-key": Case(hostile(lambda w: config_text(w).replace("- 32", "- " + nested_list(40))),
                                      ("nested deeper than 32 levels",), within=FAST),
    "yaml-nested-just-past-the-bound": Case(hostile(lambda w: "a: " + nested_list(32) + "\n"),
                                            ("nested deeper than 32 levels", "line 1"), within=FAST),
    "set-value-nested-lists": Case(with_set("model.hidden=" + nested_list(10_000)), ("override 'model.hidden=[[[",
                                                                                    "nest"), within=FAST),
    "set-value-nested-maps": Case(with_set("train=" + nested_map(1000)), ("override", "nested deeper than 32"),
                                  within=FAST),
    "set-value-nested-past-its-keys": Case(with_set("a.b.c.d.e.f.g.h.i.j=" + nested_list(25)),
                                           ("nested deeper than 32",), within=FAST),
    "set-key-of-100000-parts": Case(with_set(".".join(["a"] * 100_000) + "=1"), ("nested deeper than 32",),
                                    within=FAST),
    "set-key-of-32-parts": Case(with_set(".".join(["a"] * 32) + "=1"), ("nested deeper than 32",), within=FAST),
    "plan-nested-100000": Case(reproduce(lambda w: plan_text(w) + f"deep: {nested_map(100_000)}\n"),
                               ("plan", "nested deeper than 32"), within=FAST),
    "specialists-nested-100000": Case(lambda w: ["specialists", "subsets", w.file("spec.yaml", specialists_text(
        w) + f"deep: {nested_map(100_000)}\n"), "--runs-root", str(w.runs)], ("nested deeper than 32",), within=FAST),
    # ---- file size (checked before reading; at most 4 MiB are ever read)
    "yaml-file-of-5-mib": Case(hostile(lambda w: config_text(w) + "# " + "x" * (5 * 2**20) + "\n"),
                               ("larger than 4 MiB",), within=FAST),
    "yaml-file-one-byte-over": Case(hostile(lambda w: (config_text(w) + "#").ljust(4 * 2**20 + 1, "x")),
                                    ("larger than 4 MiB",), within=FAST),
    "yaml-file-of-4-mib-comment": Case(hostile(lambda w: (config_text(w, epochs=1) + "#").ljust(4 * 2**20 - 1, "x")
                                               + "\n"), ("unknown key 'epochs'",), within=FAST),
    "yaml-file-of-4-mib-blank-lines": Case(hostile(lambda w: config_text(w, epochs=1) + "\n" * (4 * 2**20 - 400)),
                                           ("unknown key 'epochs'",), within=FAST),
    "yaml-file-of-4-mib-string": Case(hostile(lambda w: config_text(w).replace("name: tiny-teacher", "name: " + "x" * (
        4 * 2**20 - 600))), ("'name'", "at most 100 characters", "xxxx..."), within=FAST),
    "yaml-sparse-file-of-1-gib": Case(lambda w: ["train", sparse_file(w, 2**30), *w.run_args()],
                                      ("larger than 4 MiB",), within=FAST),
    "yaml-dev-zero": Case(lambda w: ["train", "/dev/zero", *w.run_args()], ("larger than 4 MiB",), within=FAST),
    "set-value-of-5-mib": Case(with_set("name=" + "x" * (5 * 2**20)), ("larger than 4 MiB",), within=FAST),
    "plan-file-of-5-mib": Case(reproduce(lambda w: plan_text(w) + "#" * (5 * 2**20)), ("plan", "larger than 4 MiB"),
                               within=FAST),
    # ---- number of keys (10,000 at most; a file of 10^5 unknown keys took over 90 s to refuse)
    "yaml-100000-unknown-keys": Case(hostile(lambda w: config_text(w) + many_keys(100_000)), ("more than 10000 keys",),
                                     within=FAST),
    "yaml-1000000-keys": Case(hostile(lambda w: many_keys(1_000_000)), ("larger than 4 MiB",), within=FAST),
    "yaml-100000-keys-in-a-flow-mapping": Case(hostile(lambda w: "x: {" + ", ".join(f"k{i}: 1" for i in range(
        100_000)) + "}\n"), ("more than 10000 keys",), within=FAST),
    "yaml-100000-keys-in-a-section": Case(hostile(lambda w: config_text(w).replace("train:\n", "train:\n" + many_keys(
        100_000, "  "))), ("more than 10000 keys",), within=FAST),
    "yaml-100000-model-options": Case(hostile(lambda w: config_text(w).replace("model:\n", "model:\n" + many_keys(
        100_000, "  "))), ("more than 10000 keys",), within=FAST),
    "yaml-6000-unknown-keys": Case(hostile(lambda w: config_text(w) + many_keys(6000)),
                                   ("unknown key 'key0'", "unknown key 'key4'", "and 5995 more"), within=FAST),
    "yaml-6000-unknown-keys-in-a-section": Case(hostile(lambda w: config_text(w).replace("train:\n", "train:\n" + (
        many_keys(6000, "  ")))), ("unknown key 'train.key0'", "and 5995 more"), within=FAST),
    "plan-100000-keys": Case(reproduce(lambda w: plan_text(w) + many_keys(100_000)), ("plan", "more than 10000 keys"),
                             within=FAST),
    "plan-6000-unknown-stage-keys": Case(reproduce(lambda w: plan_text(w, {f"k{i}": 1 for i in range(6000)})),
                                         ("unknown key 'stages.0.k0'", "and 5995 more"), within=FAST),
    "specialists-100000-keys": Case(lambda w: ["specialists", "subsets", w.file("spec.yaml", specialists_text(
        w) + many_keys(100_000)), "--runs-root", str(w.runs)], ("more than 10000 keys",), within=FAST),
    # ---- key length (128 characters at most; errors quote 40 and '...')
    "yaml-key-of-100000-characters": Case(hostile(lambda w: config_text(w) + f"? {LONG}\n: 1\n"),
                                          ("a key of 100000 characters (at most 128)", "'" + "k" * 40 + "...'"),
                                          within=FAST),
    "yaml-quoted-key-of-100000-characters": Case(hostile(lambda w: config_text(w) + f'"{LONG}": 1\n'),
                                                 ("invalid YAML",), within=FAST),
    "yaml-key-of-129-characters": Case(hostile(lambda w: config_text(w) + f"? {'k' * 129}\n: 1\n"),
                                       ("a key of 129 characters",), within=FAST),
    "yaml-unknown-key-of-128-characters": Case(hostile(lambda w: config_text(w) + f"{'k' * 128}: 1\n"),
                                               ("unknown key '" + "k" * 40 + "...'",), within=FAST),
    "yaml-long-key-in-model-options": Case(hostile(lambda w: config_text(w).replace("model:\n", f"model:\n  ? {LONG}\n"
                                                                                   "  : 1\n")), ("a key of 100000",),
                                           within=FAST),
    "yaml-long-model-option-in-flow": Case(train(model={"name": "mlp", "h" * 120: 1}),
                                           ("has no option '" + "h" * 40 + "...'",), within=FAST),
    "yaml-duplicate-long-key": Case(hostile(lambda w: config_text(w) + f"{'k' * 100}: 1\n{'k' * 100}: 2\n"),
                                    ("duplicate key '" + "k" * 40 + "...'",), within=FAST),
    "set-key-of-100000-characters": Case(with_set(LONG + "=1"), ("a key of 100000 characters (at most 128)",
                                                                 "override '" + "k" * 40 + "...'"), within=FAST),
    "set-section-of-100000-characters": Case(with_set(LONG + ".epochs=1"), ("a key of 100000 characters",), within=FAST),
    "set-unknown-key-of-128-characters": Case(with_set("k" * 128 + "=1"), ("unknown key '" + "k" * 40 + "...'",),
                                              within=FAST),
    "set-unknown-key-no-suggestion-for-long-keys": Case(with_set("train.lr" + "r" * 120 + "=1"),
                                                        ("unknown key 'train.lr",), within=FAST),
    # ---- long strings where a path, a run name or a model name goes
    "name-of-100000-characters": Case(train(name="x" * 100_000), ("'name'", "at most 100 characters"), within=FAST),
    "name-of-101-characters": Case(train(name="x" * 101), ("'name'", "at most 100 characters"), within=FAST),
    "data-path-part-of-300-bytes": Case(train(**{"data.path": "x" * 300}), ("'data.path'", "255"), within=FAST),
    "data-root-of-6000-bytes": Case(train(**{"data.root": "x/" * 3000}), ("'data.root'", "4096"), within=FAST),
    "teacher-run-of-100000-characters": Case(distill(teacher={"run": "x" * 100_000}), ("'teacher.run'",), within=FAST),
    "teacher-checkpoint-part-of-300-bytes": Case(distill(teacher={"checkpoint": "x" * 300 + ".safetensors"}),
                                                 ("'teacher.checkpoint'", "255"), within=FAST),
    "ensemble-member-of-300-bytes": Case(distill(teacher={"runs": ["tiny-teacher", "y" * 300]}), ("'teacher.runs.1'",),
                                         within=FAST),
    "init-checkpoint-of-300-bytes": Case(train(init={"checkpoint": "z" * 300}), ("'init.checkpoint'",), within=FAST),
    "kd-cache-dir-of-300-bytes": Case(distill(**{"kd.cache_dir": "c" * 300}), ("'kd.cache_dir'",), within=FAST),
    "model-name-of-100000-characters": Case(train(model={"name": "m" * 100_000}), ("unknown model '" + "m" * 40 + "...'",),
                                            within=FAST),
    "torchvision-model-of-100000-characters": Case(train(model={"name": "torchvision." + "m" * 100_000}),
                                                   ("unknown torchvision model '" + "m" * 40 + "...'",), within=FAST),
    "eval-path-part-of-300-bytes": Case(lambda w: ["eval", "x" * 300 + ".safetensors"], ("File name too long",
                                                                                       "'" + "x" * 40 + "...'")),
    "reproduce-path-part-of-300-bytes": Case(lambda w: ["reproduce", "p" * 300 + ".yaml"], ("File name too long",)),
    "train-config-path-part-of-300-bytes": Case(lambda w: ["train", "c" * 300 + ".yaml"], ("cannot read",)),
    "device-of-100000-characters": Case(train(device="d" * 100_000), ("'device'", "at most 32"), within=FAST),
    # ---- YAML bombs (aliases: tiny in memory, 10^9 values once walked)
    "yaml-billion-laughs-lists": Case(hostile(lambda w: config_text(w) + laughs()), ("more than 50000 values",),
                                      within=FAST),
    "yaml-billion-laughs-maps": Case(hostile(lambda w: config_text(w) + laughs(mapping=True)),
                                     ("more than 50000 values",), within=FAST),
    "yaml-bomb-in-a-real-key": Case(hostile(lambda w: laughs(6) + config_text(w).replace("- 32", "- 32\n  - *l5")),
                                    ("more than 50000 values",), within=FAST),
    "yaml-bomb-wide-and-shallow": Case(hostile(lambda w: "a: &a [" + ", ".join(["1"] * 30_000) + "]\nb: [*a, *a]\n"),
                                       ("more than 50000 values",), within=FAST),
    "yaml-merge-key-bomb": Case(hostile(lambda w: "a: &a {" + ", ".join(f"k{i}: 1" for i in range(5000)) + "}\n" + "".join(
        f"b{i}: {{<<: *a}}\n" for i in range(20))), ("more than 50000 values",), within=FAST),
    "yaml-recursive-list-alias": Case(hostile(lambda w: "a: &a [1, *a]\n"), ("inside the collection it names",),
                                      within=FAST),
    "yaml-recursive-map-alias": Case(hostile(lambda w: "a: &a {b: *a}\n"), ("inside the collection it names",),
                                     within=FAST),
    "yaml-undefined-alias": Case(hostile(lambda w: config_text(w) + "x: *nowhere\n"), ("invalid YAML", "nowhere"),
                                 within=FAST),
    "set-value-bomb": Case(with_set("model.hidden=[" + ", ".join(["&a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"] + [
        "*a"] * 6000) + "]"), ("override", "more than 50000 values"), within=FAST),
    "plan-bomb": Case(reproduce(lambda w: plan_text(w) + laughs()), ("plan", "more than 50000 values"), within=FAST),
    # ---- bytes that are not a YAML text
    "yaml-latin-1": Case(train_file("name: caf\xe9\n".encode("latin-1")), ("cannot read", "utf-8"), within=FAST),
    "yaml-utf-16": Case(train_file("name: a\nmodel: {name: mlp}\n".encode("utf-16")), ("cannot read",), within=FAST),
    "yaml-nul-in-the-middle": Case(hostile(lambda w: config_text(w) + "x: a\x00b\n"), ("invalid YAML",), within=FAST),
    "yaml-nul-first": Case(train_file(b"\x00name: a\n"), ("invalid YAML",), within=FAST),
    "yaml-control-character": Case(train_file("name: a\x07b\n"), ("invalid YAML",), within=FAST),
    "yaml-random-bytes": Case(train_file(np.random.default_rng(0).bytes(4096)), ("cannot read",), within=FAST),
    "yaml-gzip-bytes": Case(lambda w: ["train", str(w.idx / IDX_NAMES["train_images"]), *w.run_args()],
                            ("cannot read",), within=FAST),
    "yaml-lone-surrogate": Case(train_file('name: "\\ud800"\nmodel: {name: mlp}\ntrain: {epochs: 1, lr: 0.1}\n'),
                                ("invalid YAML", "Unicode"), within=FAST),
    "yaml-binary-tag": Case(train_file("name: !!binary aGVsbG8=\nmodel: {name: mlp}\ntrain: {epochs: 1, lr: 0.1}\n"),
                            ("'name'",), within=FAST),
    # ---- documents that are not a mapping
    "yaml-a-number": Case(train_file("42\n"), ("expected a mapping",), within=FAST),
    "yaml-a-string": Case(train_file("just some text\n"), ("expected a mapping",), within=FAST),
    "yaml-null": Case(train_file("~\n"), ("expected a mapping",), within=FAST),
    "yaml-a-bool": Case(train_file("true\n"), ("expected a mapping",), within=FAST),
    "yaml-only-comments": Case(train_file("# nothing here\n# at all\n"), ("expected a mapping",), within=FAST),
    "yaml-two-documents": Case(train_file("name: a\n---\nname: b\n"), ("invalid YAML",), within=FAST),
    "plan-a-list": Case(reproduce(lambda w: "- title\n- stages\n"), ("plan", "expected a mapping"), within=FAST),
    "specialists-a-number": Case(lambda w: ["specialists", "subsets", w.file("spec.yaml", "7\n")],
                                 ("expected a mapping",), within=FAST),
    # ---- integers too long to be one (Python's int() stops at 4300 digits with a ValueError)
    "yaml-integer-of-100000-digits": Case(hostile(lambda w: config_text(w).replace("seed: 0", "seed: " + "9" * 100_000)),
                                          ("an integer of 100000 characters (at most 100)",), within=FAST),
    "yaml-hex-integer-of-100000-digits": Case(hostile(lambda w: config_text(w).replace("seed: 0", "seed: 0x" + "f" * 99_998)),
                                              ("an integer of 100000 characters",), within=FAST),
    "yaml-sexagesimal-integer": Case(hostile(lambda w: config_text(w).replace("seed: 0", "seed: " + ":".join(
        ["59"] * 40_000))), ("an integer of 119999 characters",), within=FAST),
    "set-integer-of-5000-digits": Case(with_set("seed=" + "9" * 5000), ("override", "an integer of 5000 characters"),
                                       within=FAST),
    "yaml-integer-of-100-digits": Case(train(seed=10**99), ("'seed'", "4294967295"), within=FAST),
    # ---- every size, width, count and rate: 0, -1, huge, float-where-int, bool-where-int, nan, 2**70
    "epochs-zero": Case(train(**{"train.epochs": 0}), ("'train.epochs'", "greater than or equal to 1")),
    "epochs-huge": Case(train(**{"train.epochs": 10**6}), ("'train.epochs'", "100000")),
    "epochs-2-70": Case(train(**{"train.epochs": HUGE}), ("'train.epochs'",)),
    "epochs-float": Case(train(**{"train.epochs": 2.0}), ("'train.epochs'", "valid integer")),
    "batch-size-negative": Case(train(**{"train.batch_size": -1}), ("'train.batch_size'",)),
    "batch-size-2-70": Case(train(**{"train.batch_size": HUGE}), ("'train.batch_size'", "1048576")),
    "batch-size-bool": Case(train(**{"train.batch_size": True}), ("'train.batch_size'", "valid integer")),
    "lr-zero": Case(train(**{"train.lr": 0}), ("'train.lr'", "greater than 0")),
    "lr-negative": Case(train(**{"train.lr": -0.1}), ("'train.lr'",)),
    "lr-huge": Case(train(**{"train.lr": 1e300}), ("'train.lr'", "100")),  # ran, and failed in torch with a traceback
    "lr-nan": Case(train(**{"train.lr": float("nan")}), ("'train.lr'",)),
    "momentum-one": Case(train(**{"train.momentum": 1.0}), ("'train.momentum'", "less than 1")),
    "momentum-negative": Case(train(**{"train.momentum": -0.5}), ("'train.momentum'",)),
    "weight-decay-huge": Case(train(**{"train.weight_decay": 1e300}), ("'train.weight_decay'",)),
    "warmup-fraction-one": Case(train(**{"train.warmup_fraction": 1.0}), ("'train.warmup_fraction'",)),
    "gamma-above-one": Case(train(**{"train.gamma": 10.0}), ("'train.gamma'",)),
    "milestone-zero": Case(train(**{"train.milestones": [0]}), ("'train.milestones.0'",)),
    "milestone-2-70": Case(train(**{"train.milestones": [HUGE]}), ("'train.milestones.0'",)),
    "milestone-twice": Case(train(**{"train.milestones": [3, 3]}), ("lists an epoch twice",)),
    "checkpoint-every-steps-2-70": Case(train(**{"train.checkpoint_every_steps": HUGE}),
                                        ("'train.checkpoint_every_steps'",)),
    "checkpoint-every-steps-negative": Case(train(**{"train.checkpoint_every_steps": -1}),
                                            ("'train.checkpoint_every_steps'",)),
    "on-nonfinite-unknown": Case(train(**{"train.on_nonfinite": "ignore"}), ("'train.on_nonfinite'", "skip_step")),
    "on-nonfinite-bool": Case(train(**{"train.on_nonfinite": False}), ("'train.on_nonfinite'",)),
    "max-skipped-steps-zero": Case(train(**{"train.max_skipped_steps": 0}), ("'train.max_skipped_steps'",)),
    "max-skipped-steps-2-70": Case(train(**{"train.max_skipped_steps": HUGE}), ("'train.max_skipped_steps'",)),
    "max-skipped-steps-float": Case(train(**{"train.max_skipped_steps": 2.5}), ("'train.max_skipped_steps'",)),
    # ---- a run that another process is working in (it holds the run folder's lock)
    "run-in-use": Case(lambda w: ["train", w.config(), *w.run_args(), *w.hold("tiny-teacher")],
                       ("run 'tiny-teacher' is in use by process", ".lock); wait for it or stop it")),
    "run-in-use-resume": Case(lambda w: ["train", w.config(), "--runs-root", str(w.runs), "--resume",
                                         *w.hold("tiny-teacher")], ("run 'tiny-teacher' is in use by process",)),
    "run-in-use-distill": Case(lambda w: ["distill", w.config("tiny-student-kd", distil=True), *w.run_args(),
                                          *w.hold("tiny-student-kd")], ("run 'tiny-student-kd' is in use",)),
    "run-in-use-seeds": Case(lambda w: ["train", w.config("member"), "--runs-root", str(w.runs), "--seeds", "3",
                                        *w.hold("member-seed3")], ("run 'member-seed3' is in use",)),
    "run-in-use-subprocess": Case(lambda w: ["train", w.config(), *w.run_args(), *w.hold("tiny-teacher")],
                                  ("run 'tiny-teacher' is in use by process", "on host"), subprocess=True),
    "seed-float": Case(train(seed=1.0), ("'seed'", "valid integer")),
    "seed-bool": Case(train(seed=True), ("'seed'",)),
    "threads-zero": Case(train(threads=0), ("'threads'",)),
    "workers-2-70": Case(train(**{"data.workers": HUGE}), ("'data.workers'", "256")),
    "workers-negative": Case(train(**{"data.workers": -1}), ("'data.workers'",)),
    "jitter-views-2-70": Case(train(**{"data.jitter": 2, "data.jitter_views": HUGE}), ("'data.jitter_views'",)),
    "train-limit-zero": Case(train(**{"data.train_limit": 0}), ("'data.train_limit'",)),
    "test-limit-2-70": Case(train(**{"data.test_limit": HUGE}), ("'data.test_limit'",)),
    "val-size-negative": Case(train(**{"data.val_size": -1}), ("'data.val_size'",)),
    "val-size-2-70": Case(train(**{"data.val_size": HUGE}), ("'data.val_size'",)),
    "val-size-equal-to-data": Case(train(**{"data.val_size": 600}), ("data.val_size is 600", "only 600")),
    "val-seed-2-70": Case(train(**{"data.val_seed": HUGE}), ("'data.val_seed'",)),
    "transfer-fraction-zero": Case(train(**{"data.transfer": {"fraction": 0}}), ("'data.transfer.fraction'",)),
    "transfer-fraction-above-one": Case(train(**{"data.transfer": {"fraction": 1.5}}), ("'data.transfer.fraction'",)),
    "transfer-fraction-tiny": Case(train(**{"data.transfer": {"fraction": 1e-300}}), ("leaves none",)),
    "transfer-class-2-70": Case(train(**{"data.transfer": {"drop_classes": [HUGE]}}),
                                ("'data.transfer.drop_classes.0'",)),
    "transfer-negative-class": Case(train(**{"data.transfer": {"keep_classes": [-1]}}), ("negative class index",)),
    "temperature-zero": Case(distill(**{"kd.temperature": 0}), ("'kd.temperature'",)),
    "temperature-tiny": Case(distill(**{"kd.temperature": 1e-300}), ("'kd.temperature'", "0.01")),  # trained on NaN
    "temperature-huge": Case(distill(**{"kd.temperature": 1e300}), ("'kd.temperature'", "1000")),  # OverflowError
    "temperature-bool": Case(distill(**{"kd.temperature": True}), ("'kd.temperature'",)),
    "soft-weight-negative": Case(distill(**{"kd.soft_weight": -1}), ("'kd.soft_weight'",)),
    "soft-weight-huge": Case(distill(**{"kd.soft_weight": 1e300}), ("'kd.soft_weight'",)),
    "hard-weight-2-70": Case(distill(**{"kd.hard_weight": HUGE}), ("'kd.hard_weight'",)),
    "both-weights-zero": Case(distill(**{"kd.soft_weight": 0, "kd.hard_weight": 0}), ("nothing to learn from",)),
    "cache-topk-zero": Case(distill(**{"kd.cache": True, "kd.cache_topk": 0}), ("'kd.cache_topk'",)),
    "cache-topk-2-70": Case(distill(**{"kd.cache": True, "kd.cache_topk": HUGE}), ("'kd.cache_topk'",)),
    "teacher-input-size-zero": Case(distill(**{"teacher.input": {"size": 0}}), ("'size' must be from 1 to 4096",)),
    "teacher-input-size-huge": Case(distill(**{"teacher.input": {"size": [10**6, 10**6]}}), ("'size' must be from 1",)),
    "set-epochs-float-inf": Case(with_set("train.epochs=1e999"), ("'train.epochs'",)),
    "set-lr-nan": Case(with_set("train.lr=.nan"), ("'train.lr'",)),
    "set-seed-2-70": Case(with_set(f"seed={HUGE}"), ("'seed'",)),
    "set-batch-size-zero": Case(with_set("train.batch_size=0"), ("'train.batch_size'",)),
    # ---- model options: checked by each factory (a zero width used to warn from torch's init, then train)
    "mlp-hidden-zero": Case(train(model={"name": "mlp", "hidden": [0]}), ("model 'mlp'", "'hidden' widths must be from 1 "
                                                                        "to 65536, got 0")),
    "mlp-hidden-zero-second-layer": Case(train(model={"name": "mlp", "hidden": [8, 0]}), ("'hidden' widths",)),
    "mlp-hidden-2-70": Case(train(model={"name": "mlp", "hidden": [HUGE]}), ("'hidden' widths",)),
    "mlp-hidden-10-9": Case(train(model={"name": "mlp", "hidden": [10**9]}), ("'hidden' widths",)),
    "mlp-hidden-bool": Case(train(model={"name": "mlp", "hidden": [True]}), ("'hidden' must be a list of integers",)),
    "mlp-hidden-float": Case(train(model={"name": "mlp", "hidden": [8.0]}), ("'hidden' must be a list of integers",)),
    "mlp-hidden-not-a-list": Case(train(model={"name": "mlp", "hidden": 8}), ("'hidden' must be a list",)),
    "mlp-hidden-101-layers": Case(train(model={"name": "mlp", "hidden": [4] * 101}), ("0 to 100 layers",)),
    "mlp-dropout-one": Case(train(model={"name": "mlp", "dropout_input": 1.0}), ("'dropout_input'", "below 1")),
    "mlp-dropout-negative": Case(train(model={"name": "mlp", "dropout_hidden": -0.1}), ("'dropout_hidden'",)),
    "mlp-dropout-bool": Case(train(model={"name": "mlp", "dropout_hidden": True}), ("'dropout_hidden'",)),
    "mlp-max-norm-zero": Case(train(model={"name": "mlp", "max_norm": 0}), ("'max_norm' must be above 0",)),
    "mlp-max-norm-negative": Case(train(model={"name": "mlp", "max_norm": -1}), ("'max_norm'",)),  # renorm traceback
    "mlp-max-norm-2-70": Case(train(model={"name": "mlp", "max_norm": HUGE}), ("'max_norm'",)),  # OverflowError
    "mlp-max-norm-infinite": Case(train(model={"name": "mlp", "max_norm": float("inf")}), ("finite",)),
    "cnn-channels-zero": Case(train(model={"name": "cnn", "channels": [0]}), ("model 'cnn'", "'channels' widths")),
    "cnn-channels-empty": Case(train(model={"name": "cnn", "channels": []}), ("'channels' must list 1 to 100",)),
    "cnn-channels-negative": Case(train(model={"name": "cnn", "channels": [8, -1]}), ("'channels' widths",)),
    "cnn-channels-10-9": Case(train(model={"name": "cnn", "channels": [10**9]}), ("'channels' widths",)),
    "cnn-too-many-blocks": Case(train(model={"name": "cnn", "channels": [4] * 6}), ("at most 5",)),
    "cnn-dropout-one": Case(train(model={"name": "cnn", "channels": [4], "dropout": 1.0}), ("'dropout'",)),
    "teacher-model-hidden-zero": Case(lambda w: ["distill", w.config("tiny-student-kd", distil=True, teacher={
        "weights": str(w.ckpt), "model": {"name": "mlp", "hidden": [0]}}), *w.run_args()], ("'hidden' widths",)),
    # ---- plans: the same reader, and a range for every number of every stage kind
    "plan-seed-2-70": Case(reproduce(lambda w: plan_text(w, {"seeds": [HUGE]})), ("'stages.0.seeds.0'",)),
    "plan-seed-negative": Case(reproduce(lambda w: plan_text(w, {"seeds": [0, -1]})), ("'stages.0.seeds.1'",)),
    "plan-sweep-temperature-zero": Case(reproduce(lambda w: plan_text(w, {"kind": "sweep", "temperatures": [0]})),
                                        ("'stages.0.temperatures.0'",)),
    "plan-sweep-hidden-zero": Case(reproduce(lambda w: plan_text(w, {"kind": "sweep", "temperatures": [2],
                                                                     "hidden": [[0]]})), ("'stages.0.hidden.0.0'",)),
    "plan-sweep-hidden-2-70": Case(reproduce(lambda w: plan_text(w, {"kind": "sweep", "temperatures": [2],
                                                                     "hidden": [[HUGE]]})), ("'stages.0.hidden.0.0'",)),
    "plan-specialists-workers-zero": Case(reproduce(lambda w: plan_text(w, {"kind": "specialists", "workers": 0})),
                                          ("'stages.0.workers'",)),
    "plan-specialists-workers-2-70": Case(reproduce(lambda w: plan_text(w, {"kind": "specialists", "workers": HUGE})),
                                          ("'stages.0.workers'",)),
    "plan-bias-step-zero": Case(reproduce(lambda w: yaml.safe_dump({"title": "t", "runs_root": str(w.runs), "stages": [
        {"kind": "bias", "run": "tiny-teacher", "classes": [3], "search": True, "step": 0}]})), ("'stages.0.step'",)),
    "plan-bias-shift-huge": Case(reproduce(lambda w: yaml.safe_dump({"title": "t", "runs_root": str(w.runs), "stages": [
        {"kind": "bias", "run": "tiny-teacher", "classes": [3], "shift": 1e300}]})), ("'stages.0.shift'",)),
    "plan-ensemble-temperature-negative": Case(reproduce(lambda w: yaml.safe_dump({
        "title": "t", "runs_root": str(w.runs), "stages": [{"kind": "ensemble_eval", "name": "e", "runs": [
            "tiny-teacher", "tiny-student-kd"], "temperature": -1}]})), ("'stages.0.temperature'",)),
    "plan-report-name-of-300-bytes": Case(reproduce(lambda w: plan_text(w, report="r" * 300 + ".md")), ("'report'",)),
    "plan-runs-root-part-of-300-bytes": Case(reproduce(lambda w: plan_text(w, runs_root="q" * 300)), ("'runs_root'",)),
    "plan-stage-unknown-key-of-128-characters": Case(reproduce(lambda w: plan_text(w, {"s" * 128: 1})),
                                                     ("unknown key 'stages.0." + "s" * 40 + "...'",)),
    "reproduce-jobs-zero": Case(lambda w: [*reproduce(plan_text)(w), "--jobs", "0"], ("--jobs must be from 1 to",)),
    "reproduce-jobs-huge": Case(lambda w: [*reproduce(plan_text)(w), "--jobs", "100000"], ("got 100000",)),
    "reproduce-jobs-not-a-number": Case(lambda w: [*reproduce(plan_text)(w), "--jobs", "two"], ("--jobs",),
                                        usage=True),
    "reproduce-threads-zero": Case(lambda w: [*reproduce(plan_text)(w), "--jobs", "2", "--threads", "0"],
                                   ("--threads must be from 1 to 4096",)),
    "reproduce-unit-out-of-range": Case(lambda w: [*reproduce(plan_text)(w), "--unit", "2"],
                                        ("--unit 2", "has units 1 to 1")),
    "reproduce-unit-with-jobs": Case(lambda w: [*reproduce(plan_text)(w), "--unit", "1", "--jobs", "2"],
                                     ("--unit runs one unit in this process",)),
    # ---- specialists configs
    "specialists-count-zero": Case(specialists(**{"subsets.count": 0}), ("'subsets.count'",)),
    "specialists-n-init-huge": Case(specialists(**{"subsets.n_init": 10**9}), ("'subsets.n_init'",)),
    "specialists-partners-2-70": Case(specialists(**{"subsets.partners": HUGE}), ("'subsets.partners'",)),
    "specialists-combine-steps-zero": Case(specialists(**{"combine.steps": 0}), ("'combine.steps'",)),
    "specialists-combine-steps-huge": Case(specialists(**{"combine.steps": 10**9}), ("'combine.steps'",)),
    "specialists-combine-lr-zero": Case(specialists(**{"combine.lr": 0}), ("'combine.lr'",)),
    "specialists-temperature-zero": Case(specialists(**{"specialist.soft_targets.temperature": 0}),
                                         ("'specialist.soft_targets.temperature'",)),
    "specialists-both-weights-zero": Case(specialists(**{"specialist.soft_targets": {
        "temperature": 2.0, "soft_weight": 0, "hard_weight": 0}}), ("nothing to learn from",)),
    "specialists-subset-fraction-one": Case(specialists(**{"specialist.subset_fraction": 1.0}),
                                            ("'specialist.subset_fraction'",)),
    "specialists-train-epochs-2-70": Case(specialists(**{"specialist.train.epochs": HUGE}),
                                          ("'specialist.train.epochs'",)),
    "specialists-name-of-101-characters": Case(specialists(name="s" * 101), ("'name'",)),
}
CASES |= HOSTILE

# ---- one's own images (data.dataset: folder), classes checked by name, respkd predict
OWN_IMAGES: dict[str, Case] = {
    "folder-without-image-size": Case(train(**{"data.dataset": "folder"}), ("needs 'image_size'",)),
    "folder-without-path": Case(train(**{"data.dataset": "folder", "data.path": DROP, "data.image_size": 8}),
                                ("needs 'path'",)),
    "folder-key-for-mnist": Case(train(**{"data.test_fraction": 0.3}), ("'test_fraction' is for 'dataset: folder'",)),
    "folder-channels-two": Case(own_train(**{"data.channels": 2}), ("'data.channels'",)),
    "folder-channels-bool": Case(own_train(**{"data.channels": True}), ("'data.channels'",)),
    "folder-image-size-three-values": Case(own_train(**{"data.image_size": [8, 8, 8]}), ("one number or [height",)),
    "folder-image-size-huge": Case(own_train(**{"data.image_size": 10**6}), ("'image_size' must be from 1 to 4096",)),
    "folder-test-fraction-one": Case(own_train(**{"data.test_fraction": 1.0}), ("'data.test_fraction'",)),
    "folder-mean-without-std": Case(own_train(**{"data.mean": [0.5]}), ("give 'mean' and 'std' together",)),
    "folder-missing": Case(own_train(lambda w: w.root / "nowhere"), ("does not exist",)),
    "folder-no-class-folders": Case(own_train(lambda w: Path(w.file("flat/readme.txt", "no classes")).parent),
                                    ("holds no class folders",)),
    "folder-one-class": Case(own_train(lambda w: own_images(w, {"dark": 4})), ("one class folder ('dark')",
                                                                               "at least 2 classes")),
    "folder-empty-class-folder": Case(own_train(lambda w: (own_images(w) / "empty").mkdir() or own_images(w)),
                                      ("empty: class folder holds no images",)),
    "folder-file-not-an-image": Case(own_train(lambda w: with_image(own_images(w), "light/notes.txt", b"hi")),
                                     ("notes.txt: not an image file", "'.txt'")),
    "folder-corrupt-image": Case(own_train(lambda w: with_image(own_images(w), "dark/broken.png", NOT_A_PNG)),
                                 ("broken.png: cannot decode image",)),
    "folder-truncated-image": Case(own_train(lambda w: with_image(own_images(w), "dark/cut.png", (
        own_images(w) / "dark" / "dark_00.png").read_bytes()[:200])), ("cut.png: cannot decode image",)),
    "folder-image-outside-class-folders": Case(own_train(lambda w: with_image(own_images(w), "stray.png", NOT_A_PNG)),
                                               ("stray.png: an image outside any class folder",)),
    "folder-train-and-val-classes-differ": Case(own_train(lambda w: split_tree(w, test_counts={"dark": 1, "lite": 1})),
                                                ("train/ and val/ hold different class folders", "'light'")),
    "folder-train-without-val": Case(own_train(lambda w: split_tree(w, None)), ("no val/ or test/",)),
    "folder-val-and-test": Case(own_train(lambda w: split_tree(w, both=True)), ("both val/ and test/",)),
    "folder-test-fraction-with-split-layout": Case(own_train(lambda w: split_tree(w, "test"), **{
        "data.test_fraction": 0.3}), ("data.test_fraction splits a flat", "is split already")),
    "folder-test-fraction-leaves-no-test-image": Case(own_train(lambda w: own_images(w, {"a": 5, "b": 2})),
                                                      ("leaves class 'b' (2 images) with no test image",)),
    "folder-test-fraction-leaves-no-training-image": Case(own_train(lambda w: own_images(w, {"a": 5, "b": 2}), **{
        "data.test_fraction": 0.8}), ("leaves class 'b' (2 images) with no training image",)),
    "folder-mean-for-rgb-on-grey-images": Case(own_train(lambda w: own_images(w, grey_only=True), **{
        "data.mean": [0.5] * 3, "data.std": [0.2] * 3}), ("have 3 values", "grey (1 channel)")),
    "folder-jitter-streamed": Case(own_train(**{"data.in_memory": False, "data.jitter": 2}),
                                   ("'jitter' needs the images in memory",)),
    "folder-jitter-too-large-for-memory": Case(own_train(lambda w: own_images(w, dict.fromkeys("abc", 15)), **{
        "data.image_size": 4096, "data.jitter": 1}), ("data.jitter needs the images in memory",
                                                      "data.in_memory: true")),
    "folder-kd-cache-streamed": Case(own_train(distil=True, **{"data.in_memory": False, "kd.cache": True}),
                                     ("'kd.cache' cannot be used with a streamed dataset (folder)",)),
    "folder-cache-corrupt": Case(lambda w: ["train", w.config(**folder_data(corrupted_folder_cache(w))),
                                            *w.run_args()], ("checksum mismatch",)),
    "distill-teacher-classes-differ-by-name": Case(own_train(lambda w: decoded_tree(w, dict.fromkeys("abcdefghij", 5)),
                                                             distil=True),
                                                   ("the teacher's class 0 is '0' but the data's class 0 is 'a'",)),
    "distill-teacher-with-renamed-classes": Case(lambda w: ["distill", w.config(
        "tiny-student-kd", distil=True, teacher={"checkpoint": renamed_classes(w)}), *w.run_args()],
        ("the teacher's class 0 is 'zero' but the data's class 0 is '0' (data: mnist",)),
    "distill-old-teacher-of-other-count": Case(lambda w: ["distill", w.config("tiny-student-kd", distil=True, teacher={
        "checkpoint": four_class_checkpoint(w)}), *w.run_args()], ("the teacher has 4 classes but the data has 10",
                                                                   "records no class names")),
    "init-checkpoint-with-renamed-classes": Case(lambda w: ["train", w.config(
        init={"checkpoint": renamed_classes(w)}), *w.run_args()], ("the init checkpoint's class 0 is 'zero'",)),
    "eval-checkpoint-with-renamed-classes": Case(lambda w: ["eval", renamed_classes(w)],
                                                 ("the checkpoint's class 0 is 'zero' but the data's class 0 is '0'",)),
    "predict-missing-image": Case(predict_args("no-such.png"), ("no-such.png: no such image file or folder",)),
    "predict-not-an-image": Case(predict_args(lambda w: w.file("notes.txt", "x")), ("not an image file",)),
    "predict-corrupt-image": Case(predict_args(lambda w: w.file("bad.png", NOT_A_PNG)), ("bad.png: cannot decode",)),
    "predict-empty-folder": Case(predict_args(lambda w: str(Path(w.file("nothing/a.txt", "x")).parent)),
                                 ("a folder holding no image files",)),
    "predict-top-too-large": Case(predict_args(lambda w: str(own_images(w)), extra=("--top", "11")),
                                  ("--top 11: the model has 10 classes",)),
    "predict-top-zero": Case(predict_args(lambda w: str(own_images(w)), extra=("--top", "0")), ("--top 0",)),
    "predict-top-not-a-number": Case(predict_args("x.png", extra=("--top", "two")), ("--top",), usage=True),
    "predict-unknown-run": Case(lambda w: ["predict", "no-such-run", "x.png", "--runs-root", str(w.runs)],
                                ("no-such-run: no such checkpoint",)),
    "predict-checkpoint-without-normalization": Case(lambda w: ["predict", w.file(
        "nonorm.safetensors", rewrite_metadata(w.ckpt, change_respkd_meta(normalization=DROP))), str(own_images(w))],
        ("records no usable input normalization",)),
    "predict-without-images": Case(lambda w: ["predict", str(w.ckpt)], ("required",), usage=True),
}
CASES |= OWN_IMAGES


@pytest.fixture
def world(tmp_path, session_runs, idx_dir, monkeypatch) -> Iterator[World]:
    root = tmp_path / "world"
    runs = root / "runs"
    for name in ("tiny-teacher", "tiny-student-kd"):
        shutil.copytree(session_runs["runs_root"] / name, runs / name, copy_function=shutil.copy2)
    idx = root / "idx"
    shutil.copytree(idx_dir, idx, copy_function=shutil.copy2)
    monkeypatch.chdir(root)  # anything written to a relative default path (runs/, data/) lands in the snapshot
    world = World(root, idx, runs)
    yield world
    for lock in world.locks:
        lock.release()


def run_cli(argv: list[str], in_subprocess: bool, capsys) -> tuple[int, str, str, bool | None]:
    """Exit status, stdout, stderr, and whether argparse ended it (SystemExit; None: not known from a subprocess)."""
    if in_subprocess:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")])),
               "OMP_NUM_THREADS": "1"}
        done = subprocess.run([sys.executable, "-m", "respkd.cli", *argv], capture_output=True, text=True, env=env,
                              timeout=120)
        return done.returncode, done.stdout, done.stderr, None
    capsys.readouterr()
    try:
        code, by_argparse = main(argv), False
    except SystemExit as exit_:  # argparse's usage errors
        code, by_argparse = exit_.code, True
    out, err = capsys.readouterr()
    return code, out, err, by_argparse


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input(case, world, capsys):
    spec = CASES[case]
    argv = spec.argv(world)  # builds the inputs; the snapshot is taken after, so only the command is judged
    before = snapshot(world.root)
    start = time.perf_counter()
    code, out, err, by_argparse = run_cli(argv, spec.subprocess, capsys)
    seconds = time.perf_counter() - start
    assert seconds < (spec.within or (60 if spec.subprocess else 10)), f"took {seconds:.1f} s"
    assert "Traceback" not in out + err, err
    assert by_argparse in (None, spec.usage), "refused by argparse" if by_argparse else "expected argparse to refuse it"
    lines = err.splitlines()
    assert code == 2, (code, err)
    assert len(lines) == 1, err
    assert lines[0].startswith("respkd: error: "), err
    assert len(lines[0]) < 1000, f"an error line of {len(lines[0])} characters"  # input is quoted shortened
    for fragment in spec.expect:
        assert fragment in lines[0], lines[0]
    assert snapshot(world.root) == before, "a bad input wrote or changed files"


def test_corpus_size():
    """The issue asks for at least 30 named cases; every kind of input is represented."""
    assert len(CASES) >= 40
    assert sum(c.subprocess for c in CASES.values()) >= 5
    classes = {"nesting": ("nested",), "size": ("mib", "gib", "dev-zero"), "many keys": ("keys",),
               "long keys": ("key-of", "long-key", "long-model-option"), "long strings": ("characters", "bytes"),
               "bombs": ("laughs", "bomb", "alias"), "not text": ("latin", "utf", "nul", "control", "random", "gzip"),
               "not a mapping": ("a-number", "a-string", "null", "a-bool", "comments", "documents", "a-list"),
               "huge integers": ("2-70", "integer", "huge", "10-9"), "zero": ("zero",)}
    for what, fragments in classes.items():  # each hostile class holds several cases
        assert sum(any(f in name for f in fragments) for name in HOSTILE) >= 5, what
