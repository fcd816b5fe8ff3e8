"""A folder of one's own images (respkd.data.folder, respkd.data.images): layouts, the split, decoding, the cache,
streaming, and the whole path through the CLI (train, distil with kd.cache and jitter, predict)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from respkd.config import DataConfig, validate_config
from respkd.data import folder as folder_module
from respkd.data import load_data, make_loader
from respkd.data.datasets import read_cache_arrays
from respkd.data.folder import list_folder, load_folder
from respkd.data.images import cover_crop, decoding_workers, read_image
from respkd.data.streamed import FolderSplits
from respkd.errors import RespkdError

from conftest import one_line_error

CLASSES = ("dark", "light", "stripes")


def own_image(name: str, h: int, w: int, rgb: bool, rng: np.random.Generator) -> Image.Image:
    """One image of class ``name``: dark or light noise, or horizontal stripes; grey, or RGB with a random tint."""
    if name == "dark":
        grey = rng.normal(45, 15, (h, w))
    elif name == "light":
        grey = rng.normal(210, 15, (h, w))
    else:
        grey = np.where((np.arange(h) // 3) % 2 == 0, 30.0, 225.0)[:, None].repeat(w, 1) + rng.normal(0, 10, (h, w))
    pixels = grey[..., None] + rng.normal(0, 20, 3) if rgb else grey
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def write_own_images(root: Path, counts: dict[str, int] | None = None, seed: int = 0, grey_only: bool = False) -> Path:
    """A flat ``root/<class>/*.png`` tree: odd sizes (17 to 60 pixels a side), every other image RGB."""
    rng = np.random.default_rng(seed)
    for name, n in (counts or dict.fromkeys(CLASSES, 30)).items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            h, w = int(rng.integers(17, 61)), int(rng.integers(17, 61))
            own_image(name if name in CLASSES else CLASSES[0], h, w, rgb=bool(i % 2) and not grey_only,
                      rng=rng).save(root / name / f"{name}_{i:02d}.png")
    return root


def folder_config(path: Path, root: Path, **data) -> DataConfig:
    return DataConfig.model_validate({"dataset": "folder", "path": str(path), "root": str(root), "image_size": 12,
                                      "workers": 0, **data})


# ---------------------------------------------------------------- layouts and the split


def test_a_flat_tree_is_split_per_class_by_test_fraction_and_seed(tmp_path):
    tree = write_own_images(tmp_path / "imgs", {"dark": 10, "light": 7, "stripes": 5})
    d = folder_config(tree, tmp_path)
    listing = list_folder(tree, d)
    assert listing.class_names == CLASSES and listing.layout == "flat"
    per_class = np.bincount([label for _, label in listing.test_files], minlength=3).tolist()
    assert per_class == [2, 1, 1]  # round(0.2 x 10, 7, 5): 2, 1.4 -> 1, 1.0 -> 1
    assert len(listing.train_files) == 22 - 4
    assert list_folder(tree, d).test_files == listing.test_files  # seeded: the same split again
    other = list_folder(tree, folder_config(tree, tmp_path, split_seed=1))
    assert other.test_files != listing.test_files
    assert np.bincount([c for _, c in list_folder(tree, folder_config(tree, tmp_path, test_fraction=0.5)).test_files]
                       ).tolist() == [5, 4, 3]  # 3.5 rounds up
    # One more image in 'dark' leaves the split of the other classes as it was.
    own_image("dark", 20, 20, False, np.random.default_rng(9)).save(tree / "dark" / "dark_99.png")
    again = list_folder(tree, d)
    assert [f for f in again.test_files if "dark" not in f[0]] == [f for f in listing.test_files if "dark" not in f[0]]


def test_train_and_test_folders_are_used_as_they_are(tmp_path):
    for split, n in (("train", 4), ("test", 2)):
        write_own_images(tmp_path / "imgs" / split, {"b": n, "a": n, "c": n}, seed=len(split))
    (tmp_path / "imgs" / "README.txt").write_text("beside the splits: ignored")
    (tmp_path / "imgs" / "train" / ".DS_Store").write_bytes(b"\0")
    listing = list_folder(tmp_path / "imgs", folder_config(tmp_path / "imgs", tmp_path))
    assert listing.class_names == ("a", "b", "c") and listing.layout == "train/test"  # folder names, sorted
    assert [label for _, label in listing.train_files] == [0] * 4 + [1] * 4 + [2] * 4
    assert all("/test/" in f for f, _ in listing.test_files) and len(listing.test_files) == 6


# ---------------------------------------------------------------- decoding


def test_cover_crop_scales_to_cover_then_takes_the_centre():
    pixels = np.zeros((20, 40), np.uint8)
    pixels[:, 20:] = 255  # left half black, right half white
    out = np.asarray(cover_crop(Image.fromarray(pixels), (10, 10)))
    # scale max(10/20, 10/40) = 0.5 -> 10 x 20, centre columns 5..14: five black, then five white
    assert out.shape == (10, 10)
    assert (out[:, :4] == 0).all() and (out[:, 6:] == 255).all()
    assert np.asarray(cover_crop(Image.fromarray(pixels), (5, 20))).shape == (5, 20)


def test_grey_rgb_16_bit_and_exif_orientation(tmp_path):
    grey, rgb = tmp_path / "g.png", tmp_path / "c.jpg"
    Image.fromarray(np.full((8, 8), 100, np.uint8)).save(grey)
    Image.fromarray(np.tile(np.array([200, 50, 10], np.uint8), (8, 8, 1))).save(rgb, quality=100)
    assert read_image(grey, (8, 8), None).shape == (1, 8, 8)  # grey stays grey
    assert read_image(grey, (8, 8), 3).tolist() == [[[100] * 8] * 8] * 3  # repeated into three channels
    luma = read_image(rgb, (8, 8), 1)  # PIL's ITU-R 601-2 luma: (299 R + 587 G + 114 B) / 1000
    assert luma.shape == (1, 8, 8) and abs(int(luma[0, 4, 4]) - round(0.299 * 200 + 0.587 * 50 + 0.114 * 10)) <= 2
    wide = tmp_path / "w16.png"
    Image.fromarray(np.array([[65535, 32896], [0, 257]], np.uint16)).save(wide)
    assert read_image(wide, (2, 2), None)[0].tolist() == [[255, 128], [0, 1]]  # scaled, not clipped at 255
    # EXIF orientation 6 (rotate 90 degrees clockwise to view): a 4 x 8 file shows as 8 x 4.
    exif = Image.Exif()
    exif[0x0112] = 6
    tall = tmp_path / "rotated.jpg"
    Image.fromarray(np.zeros((4, 8, 3), np.uint8)).save(tall, exif=exif)
    assert read_image(tall, (8, 4), 3, exif_transpose=True).shape == (3, 8, 4)
    from respkd.data.images import open_image

    assert open_image(tall).size == (4, 8) and open_image(tall, exif_transpose=False).size == (8, 4)


def test_mixed_images_load_as_rgb_with_the_training_split_statistics(tmp_path):
    tree = write_own_images(tmp_path / "imgs", {"dark": 6, "light": 6, "stripes": 6})
    data = load_folder(folder_config(tree, tmp_path / "cache"), tmp_path / "cache", tree)
    assert data.info.image_shape == (3, 12, 12) and data.info.class_names == CLASSES
    assert data.train_images.dtype == torch.uint8 and len(data.train_labels) == 15 and len(data.test_labels) == 3
    x = data.train_images.double() / 255
    mean = x.mean(dim=(0, 2, 3))
    std = ((x - mean[None, :, None, None]) ** 2).mean(dim=(0, 2, 3)).sqrt()
    assert data.info.mean == tuple(round(v, 4) for v in mean.tolist())
    assert data.info.std == tuple(round(v, 4) for v in std.tolist())
    (cache,) = (tmp_path / "cache").glob("folder-*.safetensors")
    _, meta = read_cache_arrays(cache)
    assert (meta["mean"], meta["std"], meta["class_names"]) == (list(data.info.mean), list(data.info.std),
                                                                list(CLASSES))
    given = load_folder(folder_config(tree, tmp_path / "cache", mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25]),
                        tmp_path / "cache", tree)
    assert (given.info.mean, given.info.std) == ((0.5,) * 3, (0.25,) * 3)
    grey = write_own_images(tmp_path / "grey", {"dark": 3, "light": 3}, grey_only=True)
    assert load_folder(folder_config(grey, tmp_path / "cache"), tmp_path / "cache", grey).info.image_shape[0] == 1
    forced = load_folder(folder_config(tree, tmp_path / "cache", channels=1), tmp_path / "cache", tree)
    assert forced.train_images.shape[1:] == (1, 12, 12)


def test_the_cache_is_reused_and_a_changed_folder_decoded_again(tmp_path, monkeypatch):
    tree = write_own_images(tmp_path / "imgs", {"dark": 5, "light": 5})
    d = folder_config(tree, tmp_path / "cache")
    first = load_folder(d, d.root, tree)

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again")

    with monkeypatch.context() as m:
        m.setattr(folder_module, "_decode", no_decoding)
        again = load_folder(d, d.root, tree)  # from the cache
    assert again.sha256 == first.sha256 and torch.equal(again.train_images, first.train_images)
    image = tree / "dark" / "dark_00.png"
    Image.fromarray(np.full((30, 30), 255, np.uint8)).save(image)
    os.utime(image, ns=(1, 1))  # another size and modification time: another key
    changed = load_folder(d, d.root, tree)
    assert changed.sha256 != first.sha256 and len(list((tmp_path / "cache").glob("folder-*"))) == 2
    other_size = load_folder(folder_config(tree, tmp_path / "cache", image_size=[8, 10]), d.root, tree)
    assert other_size.info.image_shape == (3, 8, 10)
    # a damaged cache is refused, never used
    newest = max((tmp_path / "cache").glob("folder-*"), key=lambda p: p.stat().st_mtime_ns)
    raw = bytearray(newest.read_bytes())
    raw[-5] ^= 0xFF
    newest.write_bytes(bytes(raw))
    with pytest.raises(RespkdError, match="checksum mismatch"):
        load_folder(folder_config(tree, tmp_path / "cache", image_size=[8, 10]), d.root, tree)


def test_a_set_above_the_memory_limit_streams_with_its_own_resize(tmp_path, monkeypatch):
    tree = write_own_images(tmp_path / "imgs", {"dark": 6, "light": 6})
    monkeypatch.setattr(folder_module, "IN_MEMORY_BYTES", 100)
    cfg = validate_config({"name": "s", "model": {"name": "mlp"}, "train": {"epochs": 1, "lr": 0.1, "batch_size": 4},
                           "data": {"dataset": "folder", "path": str(tree), "root": str(tmp_path), "image_size": [6, 8],
                                    "workers": 0, "flip": True}})
    data = load_data(cfg.data)
    assert isinstance(data, FolderSplits) and data.info.streamed and data.info.image_shape == (3, 6, 8)
    assert not list(tmp_path.glob("folder-*"))  # nothing decoded into a cache
    batches = list(make_loader(data, "train", cfg, "cpu"))
    assert len(batches) == 2 and batches[0][0].shape == (4, 3, 6, 8) and batches[0][0].dtype == torch.float32
    assert [len(b[1]) for b in make_loader(data, "test", cfg, "cpu")] == [2]  # round(0.2 x 6) = 1 per class
    with pytest.raises(RespkdError, match="data.val_size needs the images in memory.*data.in_memory: true"):
        load_data(cfg.data.model_copy(update={"val_size": 2}))
    assert not isinstance(load_data(cfg.data.model_copy(update={"in_memory": True})), FolderSplits)


def test_workers_default_to_the_cores_and_in_memory_datasets_record_none():
    cores = len(os.sched_getaffinity(0))
    assert decoding_workers(None) == min(8, cores) and decoding_workers(3) == 3
    base = {"name": "w", "model": {"name": "mlp"}, "train": {"epochs": 1, "lr": 0.1}}
    assert validate_config({**base, "data": {"workers": 8}}).data.workers is None  # older configs recorded 8
    assert validate_config({**base, "data": {"dataset": "imagenet", "workers": 3}}).data.workers == 3


# ---------------------------------------------------------------- the whole path, through the CLI


def test_own_images_train_distill_and_predict_through_the_cli(tmp_path, capsys):
    """What a new user does: a flat tree of their PNGs (3 classes, odd sizes, grey and RGB mixed), a teacher, a
    student distilled from it with kd.cache and jitter, a prediction on one new image."""
    import yaml

    from respkd.checkpoint import read_checkpoint_meta
    from respkd.cli import main

    tree = write_own_images(tmp_path / "my_images")
    runs = tmp_path / "runs"
    data = {"dataset": "folder", "path": str(tree), "root": str(tmp_path / "data"), "image_size": 16}
    teacher = {"name": "own-teacher", "data": data, "model": {"name": "mlp", "hidden": [64]},
               "train": {"epochs": 10, "batch_size": 16, "lr": 0.05, "precision": "fp32"}}
    student = {"name": "own-student", "data": {**data, "jitter": 1, "jitter_views": 2},
               "model": {"name": "mlp", "hidden": [16]}, "teacher": {"run": "own-teacher"},
               "kd": {"temperature": 4.0, "cache": True, "cache_dir": str(tmp_path / "teacher_cache")},
               "train": {"epochs": 10, "batch_size": 16, "lr": 0.005, "precision": "fp32"}}
    for cfg in (teacher, student):
        (tmp_path / f"{cfg['name']}.yaml").write_text(yaml.safe_dump(cfg))

    assert main(["train", str(tmp_path / "own-teacher.yaml"), "--runs-root", str(runs)]) == 0
    summary = json.loads((runs / "own-teacher" / "summary.json").read_text())
    assert summary["class_names"] == list(CLASSES) and (summary["n_train"], summary["metrics"]["n"]) == (72, 18)
    assert summary["metrics"]["top1"] >= 75  # three easy classes: chance is 33%
    meta = read_checkpoint_meta(runs / "own-teacher" / "model.safetensors")
    (cache,) = (tmp_path / "data").glob("folder-*.safetensors")
    stats = read_cache_arrays(cache)[1]
    assert meta["class_names"] == list(CLASSES) and meta["in_shape"] == [3, 16, 16]
    assert meta["normalization"] == {"mean": stats["mean"], "std": stats["std"]}
    assert meta["preprocessing"]["resize"] == "cover_center_crop"

    assert main(["distill", str(tmp_path / "own-student.yaml"), "--runs-root", str(runs)]) == 0
    summary = json.loads((runs / "own-student" / "summary.json").read_text())
    assert summary["teacher_cache"]["used"] and summary["teacher_cache"]["views"] == 2
    assert summary["class_names"] == list(CLASSES) and summary["metrics"]["top1"] >= 60

    new_image = tmp_path / "new.png"
    own_image("dark", 33, 47, rgb=False, rng=np.random.default_rng(5)).save(new_image)
    capsys.readouterr()
    assert main(["predict", "own-student", str(new_image), "--runs-root", str(runs), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    (prediction,) = result["predictions"]
    assert prediction["image"] == str(new_image) and [t["class"] for t in prediction["top"]][0] == "dark"
    assert sorted(t["class"] for t in prediction["top"]) == sorted(CLASSES)  # --top defaults to min(5, classes)
    probabilities = [t["probability"] for t in prediction["top"]]
    assert probabilities == sorted(probabilities, reverse=True) and abs(sum(probabilities) - 1) < 1e-4
    assert main(["predict", str(runs / "own-student"), str(new_image), "--top", "1"]) == 0
    assert capsys.readouterr().out == f"{new_image}: dark {probabilities[0]:.3f}\n"

    # Exported to ONNX, the student gives PyTorch's logits (within 1e-4) on the new image, preprocessed as predict
    # does from the checkpoint's record, and the class predict named.
    ort = pytest.importorskip("onnxruntime")
    from respkd.checkpoint import load_model
    from respkd.data.memory import PixelNormalizer
    from respkd.predict import input_spec

    assert main(["export", "own-student", str(tmp_path / "student.onnx"), "--runs-root", str(runs)]) == 0
    model, meta = load_model(runs / "own-student" / "model.safetensors")
    spec = input_spec(meta, runs / "own-student" / "model.safetensors")
    pixels = read_image(new_image, spec["size"], spec["channels"], spec["crop_fraction"], spec["exif_transpose"])
    x = PixelNormalizer(spec["mean"], spec["std"], "cpu")(pixels[None])
    with torch.no_grad():
        expected = model.eval()(x).numpy()
    session = ort.InferenceSession(str(tmp_path / "student.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)
    assert meta["class_names"][int(got.argmax())] == "dark"

    # The student's data must have the teacher's classes, by name: a renamed class folder is refused.
    (tree / "stripes").rename(tree / "zebra")
    assert main(["distill", str(tmp_path / "own-student.yaml"), "--runs-root", str(runs), "--force"]) == 2
    assert one_line_error(capsys) == ("respkd: error: the teacher's class 2 is 'stripes' but the data's class 2 is "
                                      f"'zebra' (data: folder {tree})")
