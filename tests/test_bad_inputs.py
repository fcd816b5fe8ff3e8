"""The hostile-input corpus: bad configs, data folders, checkpoints and command lines, each through the CLI.

Every case must end the same way: exit status 2, exactly one line on stderr starting with ``respkd: error:``, no
traceback, and not one byte written or overwritten: the case's whole world (runs root with finished runs, data
folders, the input files, the working directory) is snapshotted before and after, files and folders alike.
Most cases call ``respkd.cli.main`` in-process (fast); those marked ``subprocess`` run ``python -m respkd.cli`` for
real, which also proves that nothing (a warning, a library's log line) slips onto stderr outside Python's capture.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
import yaml

from respkd.checkpoint import save_checkpoint
from respkd.cli import main
from respkd.models import build_model

from conftest import corrupt_mnist_cache, synthetic_digits, tiny_config, write_idx
from test_recipes import write_cifar, write_image_folders

SRC = Path(__file__).resolve().parents[1] / "src"


# ---------------------------------------------------------------- the world a case runs in


@dataclass
class World:
    """Everything a case may read or (wrongly) write, under one folder that is also the working directory."""

    root: Path
    idx: Path  # a good synthetic IDX folder (600 train / 200 test)
    runs: Path  # a runs root holding the finished runs 'tiny-teacher' and 'tiny-student-kd'

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


def image_folders(w: World, drop: str | None = None, rename: tuple[str, str] | None = None) -> str:
    """Tiny ImageNet-style class folders (test_recipes.write_image_folders), with a split dropped or a class renamed."""
    root = write_image_folders(w.root / "inputs" / "imagenet", n_train=1, n_val=1)
    if drop:
        shutil.rmtree(root / drop)
    if rename:
        (root / rename[0]).rename(root / rename[1])
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


# ---------------------------------------------------------------- the corpus


@dataclass
class Case:
    argv: Callable[[World], list[str]]
    expect: tuple[str, ...] = ()  # fragments the error line must contain
    subprocess: bool = False  # run `python -m respkd.cli` for real instead of main() in-process
    usage: bool = False  # an argparse usage error (main raises SystemExit(2) instead of returning 2)


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
    "teacher-checkpoint-is-a-folder": Case(lambda w: ["distill", w.config(
        "tiny-student-kd", distil=True, teacher={"checkpoint": str(w.runs)}), *w.run_args()], ("not a file",)),
    "cache-topk-without-cache": Case(distill(**{"kd.cache_topk": 3}), ("'cache_topk' needs 'cache: true'",)),
    "cache-topk-above-classes": Case(distill(**{"kd.cache": True, "kd.cache_topk": 50}), ("cache_topk is 50",)),
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
    "checkpoint-is-a-folder": Case(lambda w: ["eval", str(w.runs / "tiny-teacher")], ("not a file",)),
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
    "export-unknown-format": Case(lambda w: ["export", str(w.ckpt), "out.onnx", "--format", "onnx"],
                                  ("invalid choice", "onnx"), usage=True),
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


@pytest.fixture
def world(tmp_path, session_runs, idx_dir, monkeypatch) -> World:
    root = tmp_path / "world"
    runs = root / "runs"
    for name in ("tiny-teacher", "tiny-student-kd"):
        shutil.copytree(session_runs["runs_root"] / name, runs / name, copy_function=shutil.copy2)
    idx = root / "idx"
    shutil.copytree(idx_dir, idx, copy_function=shutil.copy2)
    monkeypatch.chdir(root)  # anything written to a relative default path (runs/, data/) lands in the snapshot
    return World(root, idx, runs)


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
    code, out, err, by_argparse = run_cli(argv, spec.subprocess, capsys)
    assert "Traceback" not in out + err, err
    assert by_argparse in (None, spec.usage), "refused by argparse" if by_argparse else "expected argparse to refuse it"
    lines = err.splitlines()
    assert code == 2, (code, err)
    assert len(lines) == 1, err
    assert lines[0].startswith("respkd: error: "), err
    for fragment in spec.expect:
        assert fragment in lines[0], lines[0]
    assert snapshot(world.root) == before, "a bad input wrote or changed files"


def test_corpus_size():
    """The issue asks for at least 30 named cases; every kind of input is represented."""
    assert len(CASES) >= 40
    assert sum(c.subprocess for c in CASES.values()) >= 5
