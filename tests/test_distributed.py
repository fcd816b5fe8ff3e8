"""Training under torchrun: 2 processes (gloo, CPU) against the same configs in one process.

The claim checked: with the same global batch, a 2-process run is the 1-process run up to float rounding (the same
loss curve, weights and test errors), evaluation counts every test example exactly once (199 test examples, an odd
number, so a padding sampler would show), and only process 0 writes files or prints. Two torchrun launches (each
costs seconds of imports): tests/ddp_worker.py (the helpers, hard labels, online distillation with KD, DKD and DIST,
logit matching from a cache, a refused batch size, and the uninterrupted run that a run stopped by signals is
compared with) and the CLI distilling from a cached teacher with jitter views. Three more launch that run, stopped
by SIGTERM to torchrun, then by SIGINT to process 1 alone, then resumed to its end.
DIST's intra-class term correlates each process's share of the batch (as its authors' multi-GPU code), so that run
is checked for completing, not compared number for number.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import respkd
from respkd import distributed
from respkd.cli import main
from respkd.data.memory import BatchLoader

from conftest import make_idx_folder, tiny_config, write_yaml

N_TRAIN, N_TEST, N_VAL = 600, 199, 50
RUN_FILES = {"config.yaml", "environment.json", "metrics.jsonl", "log.txt", "model.safetensors", "summary.json"}
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
KD = {"temperature": 4.0, "soft_weight": 1.0, "hard_weight": 0.5}


def torchrun_env() -> dict[str, str]:
    """This checkout's respkd, one thread per process."""
    src = str(Path(respkd.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    return env


def torchrun(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node 2 ARGS``; past its time limit torchrun and its workers are killed together (a
    SIGKILLed torchrun would leave its workers running)."""
    launcher = subprocess.Popen(TORCHRUN + args, cwd=cwd, env=torchrun_env(), text=True, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = launcher.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(launcher.pid, signal.SIGKILL)
        launcher.communicate()
        raise
    return subprocess.CompletedProcess(launcher.args, launcher.returncode, out, err)


def long_config(base: Path, idx: Path) -> Path:
    """A run long enough to be stopped while it trains: 150 steps per epoch, 5 epochs, dropout."""
    return write_yaml(base / "long.yaml", tiny_config(
        "long", idx, base / "data", model={"name": "mlp", "hidden": [32], "dropout_input": 0.2},
        train={"epochs": 5, "batch_size": 4}))


def configs(base: Path, idx: Path, teacher: Path, root: str) -> dict[str, Path]:
    """The three compared runs; ``root`` names the folder for this side's data and teacher caches."""
    data_root = base / root / "data"
    return {
        "hard": write_yaml(base / root / "hard.yaml",
                           tiny_config("hard", idx, data_root, data={"val_size": N_VAL})),
        "kd": write_yaml(base / root / "kd.yaml",
                         tiny_config("kd", idx, data_root, teacher={"checkpoint": str(teacher)}, kd=KD)),
        "kd-cached": write_yaml(base / root / "kd-cached.yaml", tiny_config(
            "kd-cached", idx, data_root, teacher={"checkpoint": str(teacher)}, data={"jitter": 1, "jitter_views": 2},
            kd={**KD, "cache": True, "cache_dir": str(base / root / "cache")})),
        "dkd": write_yaml(base / root / "dkd.yaml", tiny_config(
            "dkd", idx, data_root, teacher={"checkpoint": str(teacher)},
            kd={**KD, "loss": "dkd", "standardize": True, "dkd": {"warmup_epochs": 2}})),
        "mse-cached": write_yaml(base / root / "mse-cached.yaml", tiny_config(
            "mse-cached", idx, data_root, teacher={"checkpoint": str(teacher)},
            kd={**KD, "loss": "logit_mse", "soft_weight": 0.1, "cache": True, "cache_dir": str(base / root / "c2")})),
        "dist": write_yaml(base / root / "dist.yaml", tiny_config(
            "dist", idx, data_root, teacher={"checkpoint": str(teacher)}, kd={**KD, "loss": "dist"})),
    }


@pytest.fixture(scope="module")
def compared(tmp_path_factory) -> dict:
    """Every run once in one process (in this process) and once under torchrun with 2 processes."""
    base = tmp_path_factory.mktemp("ddp")
    idx = make_idx_folder(base / "idx", N_TRAIN, N_TEST)
    teacher_cfg = write_yaml(base / "teacher.yaml", tiny_config("teacher", idx, base / "data"))
    assert main(["train", str(teacher_cfg), "--runs-root", str(base / "teachers")]) == 0
    teacher = base / "teachers" / "teacher" / "model.safetensors"
    one, two = configs(base, idx, teacher, "one"), configs(base, idx, teacher, "two")
    for name, cfg in one.items():
        assert main(["train" if name == "hard" else "distill", str(cfg), "--runs-root", str(base / "runs1")]) == 0

    bad = write_yaml(base / "two" / "bad.yaml", tiny_config("bad", idx, base / "two" / "data"))
    (base / "worker").mkdir()
    diverging = write_yaml(base / "two" / "diverging.yaml", tiny_config(
        "diverging", idx, base / "two" / "data",
        train={"epochs": 3, "batch_size": 100, "lr": 100, "schedule": "constant", "checkpoint_every_steps": 2}))
    worker = torchrun([str(Path(__file__).with_name("ddp_worker.py")), str(base / "worker"), str(base / "runs2"),
                       str(bad), str(diverging), *(str(two[k]) for k in ("hard", "kd", "dkd", "mse-cached", "dist")),
                       str(long_config(base, idx))], base)
    cli = torchrun(["-m", "respkd.cli", "distill", str(two["kd-cached"]), "--runs-root", str(base / "runs2")], base)
    assert cli.returncode == 0, cli.stderr[-3000:]
    return {"base": base, "worker": worker, "cli": cli, "long": base / "long.yaml"}


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("name", ["hard", "kd", "kd-cached", "dkd", "mse-cached"])
def test_two_processes_match_one(compared, name):
    base = compared["base"]
    one, two = base / "runs1" / name, base / "runs2" / name
    m1, m2 = metrics(one), metrics(two)
    assert [m["epoch"] for m in m2] == [1, 2]
    for a, b in zip(m1, m2):
        losses = [k for k in a if k.endswith("loss")]
        assert {"loss", "hard_loss", "test_loss"} <= set(losses)
        assert [b[k] for k in losses] == pytest.approx([a[k] for k in losses], rel=1e-4)
        assert b["lr"] == pytest.approx(a["lr"], rel=1e-9)
        assert (b["test_errors"], b["test_top5"]) == (a["test_errors"], a["test_top5"])
    expected_terms = {"hard": set(), "dkd": {"tckd_loss", "nckd_loss"}, "mse-cached": {"mse_loss"}}
    assert expected_terms.get(name, {"soft_loss"}) <= set(m1[0])

    s1, s2 = (json.loads((d / "summary.json").read_text()) for d in (one, two))
    assert (s1["processes"], s2["processes"]) == (1, 2)
    assert s2["metrics"]["n"] == s1["metrics"]["n"] == N_TEST  # every test example once: no padded duplicates
    for key in ("errors", "errors_per_class", "top5"):
        assert s2["metrics"][key] == s1["metrics"][key]
    if name == "hard":
        assert s2["val_metrics"]["n"] == N_VAL and s2["val_metrics"]["errors"] == s1["val_metrics"]["errors"]

    w1, w2 = (load_file(str(d / "model.safetensors")) for d in (one, two))
    assert w1.keys() == w2.keys()  # no "module." prefix from DistributedDataParallel
    for key in w1:
        torch.testing.assert_close(w2[key], w1[key], rtol=1e-4, atol=1e-5)
    assert "x 2 processes" in (two / "log.txt").read_text()


def test_only_process_zero_writes(compared):
    base = compared["base"]
    written = {str(p.relative_to(base / "runs2")) for p in (base / "runs2").rglob("*") if p.is_file()}
    runs = ("hard", "kd", "kd-cached", "dkd", "mse-cached", "dist", "long")
    diverged = {"diverging/" + f for f in ("config.yaml", "environment.json", "metrics.jsonl", "log.txt",
                                           "resume.safetensors")}  # no model, no summary
    assert written == {f"{run}/{f}" for run in runs for f in RUN_FILES} | diverged  # nothing of "bad", no lock
    # One teacher cache, built by process 0, identical to the one a single process builds.
    caches = [p for p in (base / "two" / "cache").iterdir()]
    assert len(caches) == 1 and not caches[0].name.endswith(".tmp")
    ref = next((base / "one" / "cache").iterdir())
    assert caches[0].name == ref.name
    assert (caches[0] / "logits.npy").read_bytes() == (ref / "logits.npy").read_bytes()


def test_only_process_zero_prints(compared):
    worker, cli = compared["worker"], compared["cli"]
    # hard, kd, dkd, mse-cached, dist (2 epochs) and long (5)
    assert worker.stdout.count("epoch   1/2") == 5 and worker.stdout.count("] done: test errors") == 6
    assert cli.stdout.count("epoch   1/2") == 1 and cli.stdout.count("building teacher cache") == 1
    assert "x 2 processes" in cli.stdout


def test_agreement_and_reductions(compared):
    worker = compared["worker"]
    results = {r["rank"]: r for r in (json.loads(p.read_text()) for p in (compared["base"] / "worker").glob("result*"))}
    assert set(results) == {0, 1}, worker.stderr[-3000:]
    r0, r1 = results[0], results[1]
    assert r0["all_pass"] == r1["all_pass"] == "ok"
    # A failure in one process stops both; process 0 reports it, the other stays silent.
    assert r0["user_error_on_1"] == "error: process 1 of 2: bad input seen by process 1 only"
    assert r1["user_error_on_1"].startswith("elsewhere: ")
    assert r0["bug_on_1"] == "error: process 1 of 2: ValueError: a bug in process 1"
    assert r1["bug_on_1"] == "raised ValueError: a bug in process 1"  # its own traceback, in its own process
    assert r0["user_error_on_0"] == "error: bad input seen by process 0 only"
    assert r1["user_error_on_0"].startswith("elsewhere: ")
    assert r0["sum"] == r1["sum"] == [3.0, 20.0] and r0["mean"] == r1["mean"] == [0.5]
    assert (r0["shard"], r1["shard"]) == ([0, 100], [100, 199])
    assert (r0["built"], r1["built"]) == (True, False)
    assert r0["value"] == r1["value"] == "built by process 0"


def rank_pids(launcher: subprocess.Popen) -> dict[int, int]:
    """The processes torchrun started, by their RANK."""
    pids = {}
    for task in Path(f"/proc/{launcher.pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            env = dict(e.split("=", 1) for e in Path(f"/proc/{child}/environ").read_text().split("\0") if "=" in e)
            if "RANK" in env:
                pids[int(env["RANK"])] = int(child)
    return pids


def stop_while_training(args: list[str], cwd: Path, metrics_file: Path, lines: int, stop) -> tuple[str, int]:
    """Launch ``torchrun ... ARGS``; once ``metrics_file`` has ``lines`` lines call ``stop(launcher)``; return
    torchrun's stderr and the lines the run's metrics had when it stopped."""
    launcher = subprocess.Popen(TORCHRUN + args, cwd=cwd, env=torchrun_env(), text=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        end = time.monotonic() + 240
        while not (metrics_file.is_file() and len(metrics_file.read_text().splitlines()) >= lines):
            assert launcher.poll() is None, launcher.communicate()[1][-3000:]
            assert time.monotonic() < end
            time.sleep(0.05)
        stop(launcher)
        err = launcher.communicate(timeout=120)[1]
    finally:
        with contextlib.suppress(ProcessLookupError):  # torchrun and whatever it started, if still there
            os.killpg(launcher.pid, signal.SIGKILL)
    return err, len(metrics_file.read_text().splitlines())


STOP_LINE = re.compile(r"^respkd: stopped by (SIG\w+) at epoch (\d+), batch (\d+) \(step (\d+)\); the training state "
                       r"is in (\S+); resume with: respkd train (\S+) --runs-root (\S+) --resume \(under torchrun "
                       r"with 2 processes, as before\)$", re.M)


def test_a_signal_stops_every_process_at_the_same_step(compared, tmp_path):
    """SIGTERM to torchrun (which forwards it to every process), then, resumed, SIGINT to process 1 alone: both
    times every process stops after the same step (the processes vote), process 0 writes the training state and
    prints one line, and the run resumed to its end is bitwise the uninterrupted 2-process run."""
    runs = tmp_path / "runs"
    args = ["-m", "respkd.cli", "train", str(compared["long"]), "--runs-root", str(runs)]
    metrics_file = runs / "long" / "metrics.jsonl"
    stops = []
    err, kept = stop_while_training(args, tmp_path, metrics_file, 1, lambda p: p.send_signal(signal.SIGTERM))
    stops.append(err)
    err, _ = stop_while_training(args + ["--resume"], tmp_path, metrics_file, kept + 1,
                                 lambda p: os.kill(rank_pids(p)[1], signal.SIGINT))
    stops.append(err)
    for sig, err in zip(("SIGTERM", "SIGINT"), stops):
        found = STOP_LINE.findall(err)
        assert len(found) == 1 and found[0][0] == sig, err[-3000:]
        assert found[0][4] == str(runs / "long" / "resume.safetensors")
        assert "respkd: error" not in err
    final = torchrun(args + ["--resume"], tmp_path)
    assert final.returncode == 0, final.stderr[-3000:]
    summary = json.loads((runs / "long" / "summary.json").read_text())
    assert [(r["epoch"], r["batch"], r["step"]) for r in summary["resumes"]] == [
        tuple(int(x) for x in STOP_LINE.findall(err)[0][1:4]) for err in stops]
    a = load_file(str(compared["base"] / "runs2" / "long" / "model.safetensors"))
    b = load_file(str(runs / "long" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [{k: v for k, v in m.items() if k != "epoch_time_s"} for m in metrics(runs / "long")] == [
        {k: v for k, v in m.items() if k != "epoch_time_s"} for m in metrics(compared["base"] / "runs2" / "long")]


def test_dist_runs_on_each_process_share(compared):
    """DIST under torchrun: one run folder, every test example counted once, finite terms; its intra-class term is
    over each process's half of the global batch, so its losses are not the one-process run's."""
    base = compared["base"]
    two = json.loads((base / "runs2" / "dist" / "summary.json").read_text())
    assert two["processes"] == 2 and two["metrics"]["n"] == N_TEST
    for line in metrics(base / "runs2" / "dist"):
        assert all(math.isfinite(line[k]) for k in ("loss", "inter_loss", "intra_loss", "hard_loss"))


def test_a_non_finite_loss_stops_every_process(compared):
    """The processes check every 8 steps (and at saves and epoch ends), agree on the first bad step, and stop
    there together: exit status 3 in both, one line from process 0, the last good state kept."""
    base = compared["base"]
    assert [json.loads((base / "worker" / f"diverged{r}.json").read_text()) for r in (0, 1)] == [3, 3]
    errors = [line for line in compared["worker"].stderr.splitlines() if "loss became nan" in line]
    assert len(errors) == 1, compared["worker"].stderr[-3000:]
    found = re.fullmatch(r"respkd: error: loss became nan at epoch (\d), batch (\d) \(step (\d+)\): loss=nan "
                         r"hard_loss=nan; the last good training state, at epoch \d, batch \d \(step (\d+)\), is in "
                         r"(\S+)", errors[0])
    assert found, errors[0]
    epoch, batch, step, good = (int(x) for x in found.groups()[:4])
    assert step == (epoch - 1) * 6 + batch and step - 2 <= good < step
    assert found.group(5) == str(base / "runs2" / "diverging" / "resume.safetensors")


def test_refused_batch_size_is_one_line(compared):
    worker = compared["worker"]
    assert worker.returncode != 0
    errors = [line for line in worker.stderr.splitlines() if line.startswith("respkd: error:") and "nan" not in line]
    assert errors == ["respkd: error: train.batch_size 127 does not split evenly over 2 processes: it is the global "
                      "batch, so make it a multiple of 2"]
    assert not (compared["base"] / "runs2" / "bad").exists()


# ---------------------------------------------------------------- in this process: no torchrun needed


def test_batches_are_split_into_contiguous_shares():
    images = torch.randint(0, 256, (70, 1, 8, 8), dtype=torch.uint8)
    labels = torch.arange(70) % 10

    def loader(rank: int, world: int) -> BatchLoader:
        return BatchLoader(images, labels, 16, (0.5,), (0.25,), shuffle=True, jitter=2, jitter_views=3,
                           drop_last=True, seed=3, rank=rank, world_size=world)

    for epoch in (1, 2):
        whole, halves = loader(0, 1), [loader(0, 2), loader(1, 2)]
        for lo in (whole, *halves):
            lo.set_epoch(epoch)
        assert len(whole) == len(halves[0]) == len(halves[1]) == 4
        for full, first, second in zip(whole, *halves):
            for k in range(3):  # inputs (with the same jitter), labels, example ids
                assert torch.equal(torch.cat([first[k], second[k]]), full[k])
            assert len(first[0]) == len(second[0]) == 8


def test_one_process_is_untouched():
    assert distributed.launch() is None and distributed.world_size() == 1 and distributed.is_main_process()
    t = torch.tensor([1.0, 2.0])
    assert distributed.all_reduce_sum(t) is t and distributed.all_reduce_mean(t) is t
    assert distributed.shard(199) == slice(0, 199)
    distributed.check_batch_size(127, 600)  # any batch size
    with pytest.raises(respkd.errors.RespkdError, match="as is"):
        with distributed.together():
            raise respkd.errors.RespkdError("as is")
    assert distributed.build_once(lambda: None, lambda: "new") == ("new", True)
    assert distributed.build_once(lambda: "old", lambda: "new") == ("old", False)


def test_shards_cover_every_example_once(monkeypatch):
    for world in (2, 3, 8):
        parts = []
        for r in range(world):
            monkeypatch.setenv("WORLD_SIZE", str(world))
            monkeypatch.setenv("RANK", str(r))
            parts.append(distributed.shard(199))
        covered = [i for p in parts for i in range(p.start, p.stop)]
        assert covered == list(range(199))
        assert max(p.stop - p.start for p in parts) - min(p.stop - p.start for p in parts) <= 1
        with pytest.raises(respkd.errors.RespkdError, match="one batch, smaller than train.batch_size"):
            distributed.check_batch_size(256, 199)
        distributed.check_batch_size(world * 16, 600)


def test_single_process_commands_are_refused_under_torchrun(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert main(["table", "runs/x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["respkd: error: 'respkd table' runs in one process; under torchrun only train, distill, sweep "
                   "run in several"]
    assert not distributed.is_initialized()


def test_what_several_processes_refuse(monkeypatch):
    distributed.check_supported(True, "features", torch.device("cpu"))  # one process: anything goes
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(respkd.errors.RespkdError, match="sync_batchnorm needs CUDA"):
        distributed.check_supported(True, None, torch.device("cpu"))
    with pytest.raises(respkd.errors.RespkdError, match="kd.student_response is not supported under torchrun"):
        distributed.check_supported(False, "features", torch.device("cpu"))
    distributed.check_supported(False, None, torch.device("cpu"))
    assert not distributed.is_main_process() and distributed.shard(5) == slice(3, 5)


def test_streamed_image_folders_under_torchrun(tmp_path):
    """ImageNet-style folders under torchrun: each process decodes its share of every global batch (4 + 4 of 8) and
    evaluates its slice of the 9 validation images (5 + 4), so n is exactly 9; one run folder, written by process 0.
    (Random crops are drawn per process, so this run is not compared number for number with a 1-process run.)"""
    from test_recipes import write_image_folders

    folder = write_image_folders(tmp_path / "imagenet", n_train=8, n_val=3)
    repo = Path(__file__).resolve().parent.parent
    args = ["-m", "respkd.cli", "train", str(repo / "configs/imagenet/resnet18.yaml"), "--runs-root",
            str(tmp_path / "runs"), "--set", f"data.path={folder}", "--set", "model={name: cnn, channels: [4]}",
            "--set", "train.epochs=1", "--set", "train.batch_size=8", "--set", "device=cpu",
            "--set", "train.channels_last=false", "--set", "data.workers=0", "--set", "name=folders"]
    result = torchrun(args, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "runs" / "folders"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["processes"], summary["n_train"], summary["metrics"]["n"]) == (2, 24, 9)
    assert {p.name for p in run_dir.iterdir()} == RUN_FILES
    assert result.stdout.count("done: test errors") == 1  # printed by process 0 alone


def test_folder_loader_shares_make_up_the_one_process_batches(tmp_path):
    """FolderLoader (streamed images) with 2 processes: process r's batch k is the r-th half of the 1-process batch k,
    also when resuming part-way (skip); evaluation files are sliced by make_loader, not here."""
    from respkd.data.streamed import FolderLoader, load_image_folders, reference_transform
    from respkd.data.datasets import dataset_info
    from test_recipes import write_image_folders

    folder = write_image_folders(tmp_path / "imagenet", n_train=4, n_val=1)
    files = load_image_folders(dataset_info("imagenet"), str(folder)).train_files

    def indices(rank: int, world: int, skip: int = 0) -> list[list[int]]:
        loader = FolderLoader(files, 4, (0.5,) * 3, (0.5,) * 3, reference_transform(True, 16), train=True, seed=3,
                              rank=rank, world_size=world)
        loader.set_epoch(2, skip=skip)
        return [batch[2].tolist() for batch in loader]

    whole = indices(0, 1)
    assert len(whole) == 3 and sorted(sum(whole, [])) == list(range(12))
    assert [a + b for a, b in zip(indices(0, 2), indices(1, 2))] == whole
    assert [a + b for a, b in zip(indices(0, 2, skip=1), indices(1, 2, skip=1))] == whole[1:]
