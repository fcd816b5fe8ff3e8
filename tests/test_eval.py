"""`respkd eval` as users reach for it: a run folder or a run's name like a checkpoint file, and a plain state dict
of a named architecture; the numbers are those of the run's own summary. (Refusals: tests/test_bad_inputs.py.)"""

from __future__ import annotations

import json

import torch
from safetensors.torch import save_file

from respkd.checkpoint import load_checkpoint
from respkd.cli import main

from conftest import N_TEST


def eval_json(capsys, *args) -> dict:
    capsys.readouterr()
    assert main(["eval", *map(str, args), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_a_run_folder_and_a_run_name_are_its_checkpoint(session_runs, capsys):
    runs, folder = session_runs["runs_root"], session_runs["teacher_dir"]
    by_file = eval_json(capsys, folder / "model.safetensors")
    by_folder = eval_json(capsys, folder)
    by_name = eval_json(capsys, "tiny-teacher", "--runs-root", runs)
    summary = json.loads((folder / "summary.json").read_text())
    assert by_file == by_folder == by_name
    assert by_name["errors"] == summary["metrics"]["errors"] and by_name["n"] == N_TEST
    assert by_name["checkpoint"] == str(folder / "model.safetensors")


def test_data_overrides_reach_the_embedded_config(session_runs, capsys):
    result = eval_json(capsys, session_runs["teacher_dir"], "--set", "data.test_limit=50")
    assert result["n"] == 50


def test_a_plain_state_dict_with_model_and_dataset(tmp_path, session_runs, idx_dir, capsys):
    """The teacher's weights alone, as .pth and as plain safetensors: the same test errors as its checkpoint."""
    state, _ = load_checkpoint(session_runs["teacher_dir"] / "model.safetensors")
    torch.save(state, tmp_path / "teacher.pth")
    save_file(state, str(tmp_path / "teacher.safetensors"))
    expected = json.loads((session_runs["teacher_dir"] / "summary.json").read_text())["metrics"]
    for name in ("teacher.pth", "teacher.safetensors"):
        result = eval_json(capsys, tmp_path / name, "--model", "mlp", "--set", "model.hidden=[32]", "--dataset",
                           "mnist", "--data-path", idx_dir)
        assert (result["errors"], result["n"]) == (expected["errors"], N_TEST), name
        assert result["model"] == {"name": "mlp", "hidden": [32]}


def test_plain_state_dict_text_line(tmp_path, session_runs, idx_dir, capsys):
    state, _ = load_checkpoint(session_runs["teacher_dir"] / "model.safetensors")
    torch.save({"state_dict": state}, tmp_path / "wrapped.pth")  # wrapped as timm's train.py saves it
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "wrapped.pth"), "--model", "mlp", "--set", "model.hidden=[32]",
                 "--dataset", "mnist", "--data-path", str(idx_dir)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{tmp_path / 'wrapped.pth'}: test errors ") and f"/{N_TEST}, top-1" in out
