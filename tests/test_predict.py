"""respkd predict: class names and probabilities of image files, read as the checkpoint's training inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from respkd.checkpoint import load_checkpoint, load_model, save_checkpoint
from respkd.cli import main
from respkd.errors import RespkdError
from respkd.predict import image_files, predict

from conftest import synthetic_digits


@pytest.fixture
def digit_pngs(tmp_path):
    """Eight synthetic test digits (the generator the session's teacher was trained on) as PNG files."""
    images, labels = synthetic_digits(8, seed=2)
    folder = tmp_path / "digits"
    folder.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"digit_{i}.png")
    return folder, images, labels


def test_probabilities_are_the_models_softmax_on_the_recorded_normalization(session_runs, digit_pngs):
    folder, images, _ = digit_pngs
    ckpt = session_runs["teacher_dir"] / "model.safetensors"
    result = predict(ckpt, [folder], top=3)
    model, meta = load_model(ckpt)
    mean, std = meta["normalization"]["mean"][0], meta["normalization"]["std"][0]
    x = (torch.from_numpy(images).float()[:, None] / 255 - mean) / std
    with torch.inference_mode():
        probs = torch.softmax(model.eval()(x), dim=1)
    assert [p["image"] for p in result["predictions"]] == [str(folder / f"digit_{i}.png") for i in range(8)]
    for p, expected in zip(result["predictions"], probs):
        values, indices = expected.topk(3)
        assert [t["index"] for t in p["top"]] == indices.tolist()
        assert [t["class"] for t in p["top"]] == [str(i) for i in indices.tolist()]  # MNIST's names: the digits
        assert np.allclose([t["probability"] for t in p["top"]], values.tolist(), atol=1e-6)
    assert result["input"] == {"shape": [1, 28, 28], "mean": [mean], "std": [std]}


def test_an_rgb_file_of_another_size_is_read_as_the_training_images(session_runs, digit_pngs, tmp_path):
    folder, images, _ = digit_pngs
    ckpt = session_runs["teacher_dir"] / "model.safetensors"
    big = tmp_path / "big.jpg"  # 56 x 56 RGB: made grey, halved
    Image.fromarray(np.repeat(np.kron(images[0], np.ones((2, 2), np.uint8))[..., None], 3, 2)).save(big, quality=100)
    (same,) = predict(ckpt, [big], top=1)["predictions"]
    (original,) = predict(ckpt, [folder / "digit_0.png"], top=1)["predictions"]
    assert same["top"][0]["class"] == original["top"][0]["class"]


def test_a_checkpoint_without_class_names_names_classes_by_index(session_runs, digit_pngs, tmp_path):
    folder, _, _ = digit_pngs
    state, meta = load_checkpoint(session_runs["teacher_dir"] / "model.safetensors")
    old = tmp_path / "old.safetensors"
    save_checkpoint(state, old, {k: v for k, v in meta.items() if k not in ("class_names", "preprocessing")})
    (p, *_) = predict(old, [folder], top=2)["predictions"]
    assert all(t["class"] == str(t["index"]) for t in p["top"])


def test_inputs_are_checked(session_runs, digit_pngs, tmp_path, capsys):
    folder, _, _ = digit_pngs
    (folder / "notes.txt").write_text("skipped inside a folder")
    assert len(image_files([folder])) == 8
    with pytest.raises(RespkdError, match="not an image file"):
        image_files([folder / "notes.txt"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(RespkdError, match="a folder holding no image files"):
        image_files([tmp_path / "empty"])
    ckpt = session_runs["teacher_dir"] / "model.safetensors"
    with pytest.raises(RespkdError, match="--top 11: the model has 10 classes, so --top is 1 to 10"):
        predict(ckpt, [folder], top=11)
    capsys.readouterr()
    assert main(["predict", str(ckpt), str(folder / "digit_3.png"), "--json"]) == 0
    (p,) = json.loads(capsys.readouterr().out)["predictions"]
    assert len(p["top"]) == 5  # the default
