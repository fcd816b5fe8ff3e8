"""train.compile (respkd.compilation): a compiled run trains as the eager one does and resumes exactly, and where
compile cannot work the run says why in one line and trains without it.

Compiling with inductor generates and builds C++ kernels, about 45 s the first time on a 2-core CPU: too slow for
this suite. These tests therefore compile with dynamo's ``aot_eager`` backend, which captures the forward and
backward graphs exactly as inductor's front half does and runs them without code generation;
tests/test_gpu.py::test_compiled_distillation_matches_eager runs inductor itself (scripts/gpu_check.sh).
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from torch._dynamo.utils import counters

from respkd import compilation
from respkd.config import validate_config
from respkd.experiment import run

from conftest import tiny_config
from crash_hooks import SimulatedCrash, install


@pytest.fixture
def traced(monkeypatch):
    """Compile with aot_eager (module doc); skip where torch.compile cannot run at all."""
    monkeypatch.setattr(compilation, "BACKEND", "aot_eager")
    reason = compilation.compile_unavailable(torch.device("cpu"))
    if reason is not None:
        pytest.skip(f"torch.compile is not available here: {reason}")


def distil(tmp_path, idx_dir, session_runs, name: str, compile: bool, crash: str | None = None,
           monkeypatch=None) -> dict:
    """Online distillation (student and teacher compiled), 2 epochs of 4 steps, the training state saved every 2;
    crashed at ``crash`` (tests/crash_hooks.py) and resumed when given. Returns the summary, metrics lines, log."""
    cfg = validate_config(tiny_config(
        name, idx_dir, tmp_path / "data", threads=1,
        teacher={"checkpoint": str(session_runs["teacher_dir"] / "model.safetensors")},
        kd={"temperature": 4.0, "hard_weight": 0.5}, train={"compile": compile, "checkpoint_every_steps": 2}))
    if crash is not None:
        with monkeypatch.context() as patch, pytest.raises(SimulatedCrash):
            install(crash, patch.setattr)
            run(cfg, tmp_path / "runs", quiet=True)
    summary = run(cfg, tmp_path / "runs", quiet=True, resume=crash is not None)
    lines = (tmp_path / "runs" / name / "metrics.jsonl").read_text().splitlines()
    return {"summary": summary, "metrics": [json.loads(line) for line in lines],
            "log": (tmp_path / "runs" / name / "log.txt").read_text(),
            "weights": load_file(tmp_path / "runs" / name / "model.safetensors")}


def test_a_compiled_run_trains_as_the_eager_one_and_resumes_exactly(tmp_path, idx_dir, session_runs, traced,
                                                                    monkeypatch):
    eager = distil(tmp_path, idx_dir, session_runs, "eager", compile=False)
    graphs = counters["stats"]["unique_graphs"]
    compiled = distil(tmp_path, idx_dir, session_runs, "compiled", compile=True)
    assert counters["stats"]["unique_graphs"] > graphs  # dynamo captured graphs: the models ran compiled
    resumed = distil(tmp_path, idx_dir, session_runs, "resumed", compile=True, crash="step:7", monkeypatch=monkeypatch)
    assert resumed["summary"]["resumes"] == [{"epoch": 2, "batch": 2, "step": 6}]
    assert all(torch.equal(compiled["weights"][k], resumed["weights"][k]) for k in compiled["weights"])
    assert [{k: v for k, v in m.items() if k != "epoch_time_s"} for m in resumed["metrics"]] == \
        [{k: v for k, v in m.items() if k != "epoch_time_s"} for m in compiled["metrics"]]
    assert compiled["summary"]["compiled"] is True and eager["summary"]["compiled"] is False
    assert "train.compile" not in compiled["log"]
    for e, c in zip(eager["metrics"], compiled["metrics"], strict=True):
        for key in ("loss", "soft_loss", "hard_loss"):
            assert c[key] == pytest.approx(e[key], rel=1e-5, abs=1e-7), key
    assert compiled["summary"]["metrics"]["errors"] == eager["summary"]["metrics"]["errors"]


def test_where_compile_cannot_work_the_run_says_why_and_trains(tmp_path, idx_dir, session_runs, monkeypatch):
    monkeypatch.setattr(compilation, "BACKEND", "no_such_backend")
    reason = compilation.compile_unavailable(torch.device("cpu"))
    assert reason is not None and "no_such_backend" in reason and "\n" not in reason
    out = distil(tmp_path, idx_dir, session_runs, "fallback", compile=True)
    lines = [line for line in out["log"].splitlines() if line.startswith("train.compile:")]
    assert lines == [f"train.compile: torch.compile is not available here ({reason}); training without it"]
    assert out["summary"]["compiled"] is False and len(out["metrics"]) == 2
    assert out["metrics"][-1]["loss"] < out["metrics"][0]["loss"]  # it trained


def test_the_probe_catches_a_backend_that_computes_wrongly(monkeypatch):
    def wrong(graph, example_inputs):
        return lambda *args: [torch.zeros_like(o) for o in graph(*args)]

    monkeypatch.setattr(compilation, "BACKEND", wrong)
    assert compilation.compile_unavailable(torch.device("cpu")) == \
        "RuntimeError: a compiled function computed a wrong result"
