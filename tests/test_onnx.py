"""`respkd export RUN student.onnx`: onnxruntime runs the file and gives PyTorch's logits (within 1e-4) for any
batch size; without the onnx extra, one line naming it and nothing written."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from respkd.checkpoint import load_model, save_checkpoint
from respkd.cli import main
from respkd.models import build_model

from conftest import one_line_error, snapshot

ort = pytest.importorskip("onnxruntime")


def run_onnx(path, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input"] and session.get_inputs()[0].shape[0] == "batch"
    return session.run(None, {"input": x.numpy()})[0]


def test_export_a_run_to_onnx_and_run_it(tmp_path, session_runs, capsys):
    out = tmp_path / "student.onnx"
    capsys.readouterr()
    assert main(["export", "tiny-student-kd", str(out), "--runs-root", str(session_runs["runs_root"])]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"wrote {out} (ONNX, opset ") and "'input' [batch, 1, 28, 28] -> 'logits' [batch, 10]" \
        in printed
    model, _ = load_model(session_runs["student_dir"] / "model.safetensors")
    model.eval()
    for n in (7, 1):  # the batch axis is free
        x = torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(n))
        with torch.no_grad():
            expected = model(x).numpy()
        got = run_onnx(out, x)
        assert got.shape == (n, 10)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


def test_a_convolutional_student_too(tmp_path):
    torch.manual_seed(0)
    cnn = build_model("cnn", 10, (1, 28, 28), channels=[4, 8])
    ckpt = tmp_path / "cnn.safetensors"
    save_checkpoint(cnn.state_dict(), ckpt, {"model": {"name": "cnn", "channels": [4, 8]}, "num_classes": 10,
                                             "in_shape": [1, 28, 28]})
    assert main(["export", str(ckpt), str(tmp_path / "cnn.onnx")]) == 0
    x = torch.randn(5, 1, 28, 28)
    with torch.no_grad():
        expected = cnn.eval()(x).numpy()
    np.testing.assert_allclose(run_onnx(tmp_path / "cnn.onnx", x), expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize("missing", ["onnx", "onnxscript"])
def test_without_the_onnx_extra(tmp_path, session_runs, monkeypatch, capsys, missing):
    monkeypatch.setitem(sys.modules, missing, None)  # `import onnx` now raises ImportError, as when not installed
    before = snapshot(tmp_path)
    assert main(["export", str(session_runs["student_dir"]), str(tmp_path / "student.onnx")]) == 2
    line = one_line_error(capsys)
    assert f"ONNX export needs the '{missing}' package: pip install 'respkd[onnx]'" in line
    assert snapshot(tmp_path) == before
