"""Recipes beyond MNIST: CIFAR-10/100 in both on-disk releases, ImageNet as class folders, the CIFAR ResNets, and
the shipped recipe configs run end to end through the CLI on tiny generated data in the real formats."""

from __future__ import annotations

import json
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from respkd.cli import main
from respkd.config import load_config
from respkd.data.cifar import RELEASES
from respkd.data.datasets import CIFAR100_CLASSES, load_dataset
from respkd.data.memory import BatchLoader
from respkd.data.safe_pickle import load_numpy_pickle
from respkd.errors import RespkdError
from respkd.models import build_model, count_parameters

from test_cli import one_line_error

REPO = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- writing the real formats


def cifar_arrays(n: int, num_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` 3x32x32 uint8 images on faint noise, with the label written into them: the red channel's first row
    holds the label, so a reader that mixes up labels, channels or examples is caught."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % num_classes
    rng.shuffle(labels)
    images = rng.integers(0, 40, size=(n, 3, 32, 32), dtype=np.uint8)
    images[:, 0, 0, :] = labels[:, None]
    images[:, 1, 8:16, 8:16] = 200  # a green square: the green plane comes second in the release's pixel order
    return images, labels


class Python2Pickler(pickle._Pickler):
    """Writes ``bytes`` with Python 2's str opcodes (SHORT_BINSTRING/BINSTRING), as cPickle wrote CIFAR's release."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def write_python2_pickle(path: Path, obj) -> None:
    """Like the release: protocol 2, Python 2 strings, and numpy 1's module names (numpy.core.multiarray)."""
    import io

    buffer = io.BytesIO()
    Python2Pickler(buffer, protocol=2).dump(obj)
    path.write_bytes(buffer.getvalue().replace(b"numpy._core.", b"numpy.core."))


def write_cifar(folder: Path, name: str, kind: str, n_train: int, n_test: int, seed: int = 0) -> Path:
    """A tiny CIFAR release (``kind`` python or binary) in its standard folder under ``folder``; returns that."""
    r = RELEASES[name]
    out = folder / (r.python_dir if kind == "python" else r.binary_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = r.python_files if kind == "python" else r.binary_files
    for split, n in (("train", n_train), ("test", n_test)):
        images, labels = cifar_arrays(n, r.num_classes, seed + (split == "test"))
        for k, file in enumerate(files[split]):
            part = slice(k * n // len(files[split]), (k + 1) * n // len(files[split]))
            x, y = images[part], labels[part]
            if kind == "binary":
                heads = [(y // 5)[:, None], y[:, None]] if r.label_bytes == 2 else [y[:, None]]  # coarse, fine
                table = np.concatenate([*heads, x.reshape(len(x), -1)], axis=1).astype(np.uint8)
                (out / file).write_bytes(table.tobytes())
            else:
                batch = {b"batch_label": b"training batch", b"data": x.reshape(len(x), -1),
                         b"filenames": [b"img_%d.png" % i for i in range(len(x))]}
                if name == "cifar100":
                    batch.update({b"fine_labels": y.tolist(), b"coarse_labels": (y // 5).tolist()})
                else:
                    batch[b"labels"] = y.tolist()
                write_python2_pickle(out / file, batch)
    return out


def write_image_folders(root: Path, classes=("n01440764", "n01443537", "n01484850"), n_train=4, n_val=2) -> Path:
    """``root/train/<wnid>/*.JPEG`` and ``root/val/<wnid>/*.JPEG``: small JPEGs of varied sizes, one colour per
    class."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        for c, wnid in enumerate(classes):
            (root / split / wnid).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                h, w = int(rng.integers(40, 70)), int(rng.integers(40, 70))
                pixels = rng.integers(0, 60, size=(h, w, 3), dtype=np.uint8)
                pixels[..., c] = 220
                Image.fromarray(pixels).save(root / split / wnid / f"{wnid}_{i}.JPEG", quality=90)
    return root


# ---------------------------------------------------------------- CIFAR readers


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_binary_and_python_releases_read_the_same(tmp_path, name):
    n_classes = RELEASES[name].num_classes
    want_x, want_y = cifar_arrays(2 * n_classes, n_classes, seed=0)
    for kind in ("python", "binary"):
        write_cifar(tmp_path / kind, name, kind, n_train=2 * n_classes, n_test=n_classes)
        for path in (tmp_path / kind, next((tmp_path / kind).iterdir())):  # the parent folder, or the release's own
            data = load_dataset(name, root=tmp_path / "root", path=path)
            assert data.train_images.shape == (2 * n_classes, 3, 32, 32) and data.train_images.dtype == torch.uint8
            assert torch.equal(data.train_images, torch.from_numpy(want_x))  # R, G, B planes in order
            assert torch.equal(data.train_labels, torch.from_numpy(want_y))  # CIFAR-100: the fine label
            assert data.test_labels.dtype == torch.long and len(data.test_labels) == n_classes
            assert data.canonical is None  # no canonical digest recorded for CIFAR yet
    assert not (tmp_path / "root").exists()  # an explicit folder is read as it is, never cached


def test_cifar_without_path_is_converted_once_to_a_checksummed_cache(tmp_path):
    # What torchvision's download leaves in data.root: the Python release, found there and not downloaded again.
    write_cifar(tmp_path, "cifar100", "python", n_train=200, n_test=100)
    first = load_dataset("cifar100", root=tmp_path)
    assert (tmp_path / "cifar100.safetensors").is_file()
    for file in (tmp_path / "cifar-100-python").iterdir():
        file.unlink()  # the cache alone must now serve it
    again = load_dataset("cifar100", root=tmp_path)
    assert torch.equal(again.train_images, first.train_images) and again.sha256 == first.sha256


def test_cifar100_class_names():
    assert len(CIFAR100_CLASSES) == 100 == len(set(CIFAR100_CLASSES))
    assert list(CIFAR100_CLASSES) == sorted(CIFAR100_CLASSES)  # the release's label order is alphabetical


@pytest.mark.parametrize("payload", ["os_system", "builtins_exec"])
def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path, capsys, payload):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            if payload == "os_system":
                return os.system, (f"touch {marker}",)
            return exec, (f"open({str(marker)!r}, 'w').write('x')",)

    folder = write_cifar(tmp_path / "data", "cifar10", "python", n_train=20, n_test=10)
    batch = {"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1], "x": Evil()}
    (folder / "data_batch_3").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(RespkdError, match=r"data_batch_3: refused to unpickle: it references (posix|os|builtins|__builtin__)\."):
        load_numpy_pickle(folder / "data_batch_3")
    assert not marker.exists()

    # Through the CLI: one line, exit 2, no run directory, and still nothing ran.
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps({"name": "evil", "data": {"dataset": "cifar10", "path": str(folder)},
                               "model": {"name": "cnn", "channels": [4]}, "train": {"epochs": 1, "lr": 0.1}}))
    assert main(["train", str(cfg), "--runs-root", str(tmp_path / "runs")]) == 2
    assert "refused to unpickle" in one_line_error(capsys)
    assert not marker.exists() and not (tmp_path / "runs").exists()


def test_numpy_pickles_of_every_protocol_load(tmp_path):
    """What a re-save by Python 3 writes (protocol 2 needs _codecs.encode for bytes; 5 uses _frombuffer)."""
    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    for protocol in (2, 3, 4, 5):
        path = tmp_path / f"p{protocol}"
        path.write_bytes(pickle.dumps({b"data": array, "labels": [np.int64(1), 2]}, protocol=protocol))
        loaded = load_numpy_pickle(path)
        assert np.array_equal(loaded[b"data"], array) and loaded["labels"] == [1, 2]


@pytest.mark.parametrize("kind", ["binary", "python"])
def test_truncated_cifar_files_are_refused(tmp_path, kind, capsys):
    folder = write_cifar(tmp_path, "cifar100", kind, n_train=200, n_test=100)
    file = folder / ("train.bin" if kind == "binary" else "train")
    file.write_bytes(file.read_bytes()[:-100])
    pattern = "not a whole number of 3074-byte CIFAR records" if kind == "binary" else "truncated or damaged"
    with pytest.raises(RespkdError, match=pattern):
        load_dataset("cifar100", root=tmp_path / "root", path=folder)


def test_bad_cifar_contents_are_refused(tmp_path):
    folder = write_cifar(tmp_path / "bin", "cifar100", "binary", n_train=200, n_test=100)
    table = bytearray((folder / "test.bin").read_bytes())
    table[3074 * 7] = 20  # the coarse label of example 7: CIFAR-100 has 20 superclasses, 0..19
    (folder / "test.bin").write_bytes(bytes(table))
    with pytest.raises(RespkdError, match=r"test.bin: coarse label byte of example 7 is 20, outside 0..19"):
        load_dataset("cifar100", root=tmp_path, path=folder)

    folder = write_cifar(tmp_path / "py", "cifar10", "python", n_train=20, n_test=10)
    write_python2_pickle(folder / "test_batch", {b"data": np.zeros((2, 3071), np.uint8), b"labels": [0, 1]})
    with pytest.raises(RespkdError, match=r"test_batch: 'data' is ndarray uint8 of shape \(2, 3071\)"):
        load_dataset("cifar10", root=tmp_path, path=folder)
    write_python2_pickle(folder / "test_batch", {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]})
    with pytest.raises(RespkdError, match=r"'labels' of example 1 is 10, outside 0..9"):
        load_dataset("cifar10", root=tmp_path, path=folder)
    (folder / "data_batch_4").unlink()
    with pytest.raises(RespkdError, match="no data_batch_4: an incomplete cifar10 release"):
        load_dataset("cifar10", root=tmp_path, path=folder)
    with pytest.raises(RespkdError, match="holds no cifar10 binary release"):
        load_dataset("cifar10", root=tmp_path, path=folder, source="binary")


# ---------------------------------------------------------------- augmentation, models


def test_flip_mirrors_about_half_and_leaves_the_jitter_unchanged():
    images = torch.randint(0, 256, (400, 3, 8, 8), dtype=torch.uint8)
    labels = torch.zeros(400, dtype=torch.long)
    plain = BatchLoader(images, labels, 400, (0.0,) * 3, (1.0,) * 3, jitter=2, seed=3)
    flipping = BatchLoader(images, labels, 400, (0.0,) * 3, (1.0,) * 3, jitter=2, flip=True, seed=3)
    assert torch.equal(plain.view_offsets(1), flipping.view_offsets(1))
    flips = flipping.view_flips(1)
    assert 150 < int(flips.sum()) < 250 and not torch.equal(flips, flipping.view_flips(2))
    idx = torch.arange(400)
    shifted, _, _ = plain.make_batch(idx, plain.view_offsets(1))
    out, _, _ = flipping.make_batch(idx, flipping.view_offsets(1), flips)
    assert torch.equal(out[flips], shifted[flips].flip(3)) and torch.equal(out[~flips], shifted[~flips])


def test_cifar_resnets_match_the_benchmarks_sizes():
    # RepDistiller/mdistiller: resnet8x4 1.23M and resnet32x4 7.43M parameters for CIFAR-100
    assert round(count_parameters(build_model("resnet8x4", 100, (3, 32, 32))) / 1e6, 2) == 1.23
    assert round(count_parameters(build_model("resnet32x4", 100, (3, 32, 32))) / 1e6, 2) == 7.43
    assert round(count_parameters(build_model("torchvision.resnet18", 1000, (3, 224, 224))) / 1e6, 2) == 11.69
    model = build_model("resnet8x4", 10, (3, 32, 32))
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert {"conv1.weight", "layer1.0.downsample.0.weight", "layer3.0.conv2.weight", "fc.bias"} <= set(model.state_dict())


# ---------------------------------------------------------------- the shipped recipes


RECIPES = {
    "cifar100/resnet32x4.yaml": None, "cifar100/resnet8x4.yaml": None,
    "cifar100/resnet32x4_resnet8x4.yaml": (4.0, 0.9, 0.1),
    "imagenet/resnet34.yaml": None, "imagenet/resnet18.yaml": None,
    "imagenet/resnet34_resnet18.yaml": (1.0, 3.0, 1.0),  # MMRazor: tau 1, loss_weight 3, student CE at weight 1
}


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_recipe_configs_validate_with_the_issue_schedules(recipe):
    cfg = load_config(REPO / "configs" / recipe, ["data.path=/datasets/x"])
    assert cfg.data.path == "/datasets/x"
    t = cfg.train
    if recipe.startswith("cifar100"):
        assert (cfg.data.dataset, cfg.data.jitter, cfg.data.flip) == ("cifar100", 4, True)
        assert (t.epochs, t.batch_size, t.lr, t.milestones, t.weight_decay) == (240, 64, 0.05, [150, 180, 210], 5e-4)
    else:
        assert cfg.data.dataset == "imagenet"
        assert (t.epochs, t.batch_size, t.lr, t.milestones, t.weight_decay) == (100, 256, 0.1, [30, 60, 90], 1e-4)
    assert (t.optimizer, t.schedule, t.gamma, t.nesterov) == ("sgd", "step", 0.1, False)
    weights = RECIPES[recipe]
    assert (cfg.kd is None) == (weights is None)
    if weights:
        assert (cfg.kd.temperature, cfg.kd.soft_weight, cfg.kd.hard_weight) == weights


def run_cli(capsys, *argv) -> int:
    return main([str(a) for a in argv])


def test_cifar100_recipe_trains_and_distills_end_to_end(tmp_path, capsys):
    """The shipped CIFAR-100 configs through the CLI, shrunk by --set: a tiny CNN stands in for the resnet32x4
    teacher; the resnet8x4 student keeps the recipe's augmentation, KD weights and step schedule."""
    folder = write_cifar(tmp_path, "cifar100", "binary", n_train=200, n_test=100)
    runs = tmp_path / "runs"
    tiny = ["--set", f"data.path={folder}", "--set", "data.train_limit=64", "--set", "data.test_limit=50",
            "--set", "train.epochs=2", "--set", "train.batch_size=32", "--set", "train.milestones=[1]",
            "--set", "device=cpu", "--set", "train.channels_last=false", "--runs-root", runs]
    assert run_cli(capsys, "train", REPO / "configs/cifar100/resnet32x4.yaml",
                   "--set", "model={name: cnn, channels: [8, 16]}", *tiny) == 0
    assert run_cli(capsys, "distill", REPO / "configs/cifar100/resnet32x4_resnet8x4.yaml", *tiny) == 0
    summary = json.loads((runs / "cifar100-resnet32x4-resnet8x4-kd" / "summary.json").read_text())
    assert summary["teacher"] == str(runs / "cifar100-resnet32x4" / "model.safetensors")
    assert (summary["dataset"], summary["n_train"], summary["metrics"]["n"]) == ("cifar100", 64, 50)
    assert summary["params"] == 1_233_540 and summary["data_canonical"] is None
    metrics = [json.loads(line) for line in (runs / summary["name"] / "metrics.jsonl").read_text().splitlines()]
    assert {"soft_loss", "hard_loss"} <= set(metrics[0])
    assert [round(m["lr"], 6) for m in metrics] == [0.005, 0.005]  # x0.1 after epoch 1 (the --set milestone)


def test_imagenet_folders_train_distill_and_eval_end_to_end(tmp_path, capsys):
    """The shipped ImageNet configs through the CLI on a folder of 12 + 6 JPEGs, with a tiny CNN instead of the
    ResNets (224 px inputs): decoding in a worker process, and every validation image counted once."""
    folder = write_image_folders(tmp_path / "imagenet")
    runs = tmp_path / "runs"
    tiny = ["--set", f"data.path={folder}", "--set", "model={name: cnn, channels: [4, 8]}", "--set", "train.epochs=1",
            "--set", "train.batch_size=4", "--set", "device=cpu", "--set", "train.channels_last=false",
            "--runs-root", runs]
    assert run_cli(capsys, "train", REPO / "configs/imagenet/resnet34.yaml", "--set", "data.workers=0", *tiny) == 0
    assert run_cli(capsys, "distill", REPO / "configs/imagenet/resnet34_resnet18.yaml", "--set", "data.workers=1",
                   *tiny) == 0
    # The same from a teacher trained elsewhere: a torch.save'd state dict, as the config's comment shows.
    from respkd.checkpoint import load_model

    teacher, _ = load_model(runs / "imagenet-resnet34" / "model.safetensors")
    torch.save(teacher.state_dict(), tmp_path / "teacher.pth")
    assert run_cli(capsys, "distill", REPO / "configs/imagenet/resnet34_resnet18.yaml", "--set", "data.workers=0",
                   "--set", f"teacher={{weights: {tmp_path / 'teacher.pth'}, model: {{name: cnn, channels: [4, 8]}}}}",
                   "--set", "name=kd-from-pth", *tiny) == 0
    external = json.loads((runs / "kd-from-pth" / "summary.json").read_text())
    summary = json.loads((runs / "imagenet-resnet34-resnet18-kd" / "summary.json").read_text())
    assert external["metrics"]["n"] == 6 and external["teacher"] == str(tmp_path / "teacher.pth")
    assert (summary["dataset"], summary["n_train"], summary["metrics"]["n"]) == ("imagenet", 12, 6)
    assert summary["n_train_per_class"] == [4, 4, 4]
    metrics = json.loads((runs / summary["name"] / "metrics.jsonl").read_text().splitlines()[0])
    assert {"soft_loss", "hard_loss"} <= set(metrics)
    capsys.readouterr()
    checkpoint = runs / summary["name"] / "model.safetensors"
    assert run_cli(capsys, "eval", checkpoint, "--json") == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["n"], result["errors"]) == (6, summary["metrics"]["errors"])  # the same 6 images, each once
    from respkd.checkpoint import read_checkpoint_meta

    assert read_checkpoint_meta(checkpoint)["class_names"] == ["n01440764", "n01443537", "n01484850"]


def test_imagenet_limits_keep_every_class(tmp_path):
    from respkd.data.streamed import load_image_folders
    from respkd.data.datasets import dataset_info

    data = load_image_folders(dataset_info("imagenet"), str(write_image_folders(tmp_path, n_train=10, n_val=1)))
    small = data.limited(6, None)
    assert sorted(small.train_labels.tolist()) == [0, 0, 1, 1, 2, 2] and len(small.test_files) == 3


def test_imagenet_input_errors_are_one_line(tmp_path, capsys):
    folder = write_image_folders(tmp_path / "imagenet")
    cfg = REPO / "configs/imagenet/resnet18.yaml"
    tiny = ["--set", "model={name: cnn, channels: [4]}", "--set", "train.epochs=1", "--set", "train.batch_size=4",
            "--set", "device=cpu", "--runs-root", tmp_path / "runs"]

    assert run_cli(capsys, "train", cfg, "--set", f"data.path={tmp_path / 'nowhere'}", *tiny) == 2
    assert "does not exist" in one_line_error(capsys)
    (folder / "val" / "n01484850").rename(folder / "val" / "n99999999")
    assert run_cli(capsys, "train", cfg, "--set", f"data.path={folder}", *tiny) == 2
    assert "train/ and val/ hold different class folders" in one_line_error(capsys)
    assert run_cli(capsys, "train", cfg, "--set", f"data.path={folder}", "--set", "data.jitter=2", *tiny) == 2
    assert "'jitter' is for in-memory datasets" in one_line_error(capsys)
    assert not (tmp_path / "runs").exists()

    # A file that is not an image is found while training (decoding all of them first would cost an epoch): the
    # error still names it on one line, also when a worker process met it.
    (folder / "val" / "n99999999").rename(folder / "val" / "n01484850")
    (folder / "train" / "n01443537" / "n01443537_1.JPEG").write_bytes(b"not a jpeg")
    assert run_cli(capsys, "train", cfg, "--set", f"data.path={folder}", "--set", "data.workers=1", *tiny) == 2
    assert "n01443537_1.JPEG: cannot decode image" in one_line_error(capsys)


def test_imagenet_cannot_use_the_teacher_cache_or_in_memory_commands(tmp_path, capsys):
    cfg = REPO / "configs/imagenet/resnet34_resnet18.yaml"
    assert run_cli(capsys, "distill", cfg, "--set", "kd.cache=true", "--runs-root", tmp_path) == 2
    assert "'kd.cache' cannot be used with a streamed dataset (imagenet)" in one_line_error(capsys)
    with pytest.raises(RespkdError, match="imagenet is streamed from image folders"):
        load_dataset("imagenet", root=tmp_path, path=tmp_path)
