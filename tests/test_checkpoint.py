"""Checkpoints: safetensors + JSON metadata, atomic writes, corruption and truncation refused with one line."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from respkd.checkpoint import (
    CHECKPOINT_FORMAT,
    load_checkpoint,
    load_model,
    read_checkpoint_meta,
    save_checkpoint,
    tensors_digest,
)
from respkd.errors import RespkdError
from respkd.files import atomic_write, atomic_write_text
from respkd.models import build_model

META = {"model": {"name": "mlp", "hidden": [6]}, "num_classes": 10, "in_shape": [1, 4, 4], "note": "hello"}


def data_region(path: Path) -> tuple[int, int]:
    """Start and end offsets of a safetensors file's tensor bytes (after the 8-byte length and the JSON header)."""
    raw = path.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    return 8 + header_len, len(raw)


def flip_byte(path: Path, offset: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0xFF
    path.write_bytes(bytes(raw))


@pytest.fixture
def model_and_ckpt(tmp_path):
    torch.manual_seed(0)
    model = build_model("mlp", 10, (1, 4, 4), hidden=[6])
    path = tmp_path / "m.safetensors"
    save_checkpoint(model.state_dict(), path, META)
    return model, path


def test_round_trip(model_and_ckpt):
    model, path = model_and_ckpt
    tensors, meta = load_checkpoint(path)
    assert set(tensors) == set(model.state_dict())
    for k, v in model.state_dict().items():
        assert torch.equal(tensors[k], v)
    assert meta["note"] == "hello" and meta["format"] == CHECKPOINT_FORMAT
    assert meta["weights_sha256"] == tensors_digest(model.state_dict())
    assert read_checkpoint_meta(path) == meta


def test_load_model_rebuilds_network(model_and_ckpt):
    model, path = model_and_ckpt
    rebuilt, meta = load_model(path)
    x = torch.randn(3, 1, 4, 4)
    model.eval(), rebuilt.eval()
    torch.testing.assert_close(rebuilt(x), model(x))


def test_no_temp_files_left(model_and_ckpt, tmp_path):
    _, path = model_and_ckpt
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_digest_depends_on_name_dtype_shape_and_bytes():
    a = {"w": torch.arange(6, dtype=torch.float32)}
    d = tensors_digest(a)
    assert tensors_digest({"w": torch.arange(6, dtype=torch.float32)}) == d
    assert tensors_digest({"v": torch.arange(6, dtype=torch.float32)}) != d
    assert tensors_digest({"w": torch.arange(6, dtype=torch.float32).reshape(2, 3)}) != d
    assert tensors_digest({"w": torch.arange(6, dtype=torch.int32)}) != d
    b = torch.arange(6, dtype=torch.float32)
    b[3] = 3.0000002
    assert tensors_digest({"w": b}) != d


def test_flipped_weight_byte_is_refused(model_and_ckpt):
    _, path = model_and_ckpt
    start, end = data_region(path)
    flip_byte(path, (start + end) // 2)
    read_checkpoint_meta(path)  # the header is intact...
    with pytest.raises(RespkdError, match="checksum") as info:  # ...but the weights are not
        load_checkpoint(path)
    assert "\n" not in str(info.value)
    with pytest.raises(RespkdError, match="checksum"):
        load_model(path)


@pytest.mark.parametrize("keep", [0, 5, 100, -1])
def test_truncated_checkpoint_is_refused(model_and_ckpt, keep):
    _, path = model_and_ckpt
    raw = path.read_bytes()
    path.write_bytes(raw[:keep] if keep >= 0 else raw[:-1])
    with pytest.raises(RespkdError) as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value)
    assert str(path) in str(info.value)


def test_garbage_file_is_refused(tmp_path):
    path = tmp_path / "x.safetensors"
    path.write_bytes(b"this is not a checkpoint at all" * 10)
    with pytest.raises(RespkdError, match="not a readable safetensors"):
        load_checkpoint(path)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(RespkdError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.safetensors")


def test_plain_safetensors_is_not_a_respkd_checkpoint(tmp_path):
    path = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(RespkdError, match="not a respkd checkpoint"):
        load_checkpoint(path)
    save_file({"w": torch.zeros(2)}, str(path), metadata={"respkd": "{not json"})
    with pytest.raises(RespkdError, match="not a respkd checkpoint"):
        load_checkpoint(path)
    save_file({"w": torch.zeros(2)}, str(path), metadata={"respkd": json.dumps({"format": "other"})})
    with pytest.raises(RespkdError, match="not a respkd checkpoint"):
        load_checkpoint(path)


def test_weights_not_fitting_metadata(tmp_path):
    path = tmp_path / "m.safetensors"
    model = build_model("mlp", 10, (1, 4, 4), hidden=[6])
    save_checkpoint(model.state_dict(), path, {**META, "model": {"name": "mlp", "hidden": [7]}})
    with pytest.raises(RespkdError, match="do not fit"):
        load_model(path)


def test_tied_weights_can_be_saved(tmp_path):
    w = torch.randn(3, 3)
    path = tmp_path / "tied.safetensors"
    save_checkpoint({"a": w, "b": w}, path, {})
    tensors, _ = load_checkpoint(path)
    assert torch.equal(tensors["a"], tensors["b"])


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "f.txt"
    atomic_write_text(path, "old")

    def failing(tmp: Path) -> None:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError):
        atomic_write(path, failing)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_atomic_write_creates_parents(tmp_path):
    path = tmp_path / "a" / "b" / "c.txt"
    atomic_write_text(path, "x")
    assert path.read_text() == "x"
