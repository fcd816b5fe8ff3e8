"""benchmarks/kd_speed.py: the matmul limit counts what a training step multiplies, the rows (device-resident,
host-fed, compiled) are planned as asked, interleave round-robin in their worker processes, the ratios come from
the medians, a failing row leaves the others running, and torchdistill's box trains the same objective as respkd's
rows. One measurement of three tiny rows in worker processes serves the tests of the driver; the methods themselves
are also run in this process."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from respkd.models import build_model

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import kd_speed  # noqa: E402
from kd_speed import Run, measure, pair_table, plan_runs, ratios, spread  # noqa: E402
from kd_speed_worker import Bench, MatmulOnly, RespkdTraining  # noqa: E402
from matmul_limit import linear_products, time_products  # noqa: E402

SMALL_JOB = {"pair": "mlp", "teacher_path": None, "epochs": 1, "train_limit": 512, "test_limit": 200,
             "synthetic": True, "batch_size": 128, "lr": 0.1, "jitter": 0, "jitter_views": None, "device": "cpu",
             "threads": 1, "seed": 0, "data_root": "data"}


def torchdistill_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("torchdistill") is not None


def test_the_matmul_limit_counts_exactly_the_products_of_a_training_step():
    model = build_model("mlp", 10, (1, 28, 28), hidden=[800, 800])
    products = linear_products(model, 128, (1, 28, 28))
    assert [(p.layer, p.role) for p in products] == [
        (0, "forward"), (0, "grad_weight"),  # no input gradient for the data
        (1, "forward"), (1, "grad_input"), (1, "grad_weight"),
        (2, "forward"), (2, "grad_input"), (2, "grad_weight")]
    by_hand = 2 * 128 * (2 * 784 * 800 + 3 * 800 * 800 + 3 * 800 * 10)
    assert sum(p.flops for p in products) == by_hand
    # the same count as torch's own counter over one forward and backward pass of the student
    x, y = torch.randn(128, 1, 28, 28), torch.randint(0, 10, (128,))
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
    assert counter.get_total_flops() == by_hand


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_timing_the_products_runs_each_one_per_step(dtype):
    products = linear_products(build_model("mlp", 10, (1, 8, 8), hidden=[16]), 4, (1, 8, 8))
    result = time_products(products, steps=3, device=torch.device("cpu"), dtype=dtype)
    assert result["flops"] == 3 * 2 * 4 * (2 * 64 * 16 + 3 * 16 * 10)
    assert result["seconds"] > 0
    assert result["gflops_per_s"] == pytest.approx(result["flops"] / result["seconds"] / 1e9)


def test_rows_of_a_pair_in_their_order_with_one_torchdistill_row_per_worker_count():
    runs = plan_runs(["matmul", "student", "torchdistill", "torchdistill_pil", "pipelines"], True, [0, 2], True)
    assert [r.key for r in runs] == [
        "matmul", "student", "torchdistill-w0", "torchdistill-w2", "torchdistill_pil", "pipelines",
        "matmul-bf16", "student-bf16", "torchdistill-bf16-w0", "torchdistill-bf16-w2"]
    # a convolutional student has no Linear-layer limit
    assert [r.key for r in plan_runs(["matmul", "student"], False, [0], False)] == ["student"]


def test_host_fed_and_compiled_rows():
    methods = ["student", "teacher", "online", "cached", "torchdistill"]
    on_gpu = plan_runs(methods, False, [0], True, ("resident", "host"), compile_rows=True, on_cpu=False)
    assert [r.key for r in on_gpu] == [
        "student", "student-host", "student-compiled", "teacher", "teacher-host", "online", "online-host",
        "online-compiled", "cached", "cached-host", "cached-compiled", "torchdistill-w0"]
    assert [(r.resident, r.compiled) for r in on_gpu[:3]] == [(True, False), (False, False), (True, True)]
    # on the CPU only the cached row's work differs between the feeds (its cache memory-mapped or a tensor)
    on_cpu = plan_runs(methods, False, [0], True, ("resident", "host"))
    assert [r.key for r in on_cpu] == ["student", "teacher", "online", "cached", "cached-host", "torchdistill-w0"]
    assert [r.key for r in plan_runs(["cached"], True, [0], True, ("host",), on_cpu=False)] == [
        "cached-host", "cached-bf16-host"]


def test_spread_of_the_timed_epochs():
    assert spread([3.0, 1.0, 2.0, 5.0, 4.0]) == {"median_s": 3.0, "min_s": 1.0, "max_s": 5.0, "q1_s": 2.0, "q3_s": 4.0}


def row(method: str, median: float, bf16: bool = False, workers: int | None = None) -> dict:
    return {"method": method, "bf16": bf16, "workers": workers, "median_s": median, "min_s": median,
            "max_s": median, "epoch_s": [median]}


def test_ratios_are_those_of_the_medians_with_the_fastest_torchdistill_row():
    results = {"matmul": row("matmul", 2.0), "student": row("student", 4.0), "teacher": row("teacher", 1.0),
               "online": row("online", 6.0), "cached": row("cached", 5.0),
               "torchdistill-w0": row("torchdistill", 9.0, workers=0),
               "torchdistill-w1": row("torchdistill", 7.5, workers=1),
               "torchdistill_pil": row("torchdistill_pil", 20.0), "student-bf16": row("student", 1.0, True)}
    fp32 = ratios(results, bf16=False)
    assert fp32["cached_over_student"] == 5.0 / 4.0
    assert fp32["online_over_student_plus_teacher"] == 6.0 / (4.0 + 1.0)
    assert fp32["torchdistill_fastest"] == "torchdistill-w1"
    assert fp32["torchdistill_over_cached"] == 7.5 / 5.0
    assert fp32["torchdistill_over_online"] == 7.5 / 6.0
    assert fp32["torchdistill_pil_over_cached"] == 20.0 / 5.0
    assert fp32["over_matmul"]["online"] == 3.0 and "student-bf16" not in fp32["over_matmul"]
    bf16 = ratios(results, bf16=True)
    assert bf16["cached_over_student"] is None and bf16["over_matmul"] == {"student-bf16": None}
    assert fp32["host_cached_over_student"] is None and fp32["host_over_resident"] == {}  # no host-fed rows
    table, _ = pair_table("mlp", results, {"batch_size": 128, "epochs": 5, "teacher": {"mlp": "random"}})
    assert "| KD, torchdistill DistillationBox from YAML, tensor Dataset, DataLoader with 1 worker, fastest |" in table
    assert "| cached KD / student only (1.0: distillation costs nothing extra) | 1.250 | - |" in table
    assert "| student only (respkd) [device-resident batches] | fp32 | 4.000 (4.000-4.000) | 2.00 |" in table


def test_ratios_of_host_fed_and_compiled_rows():
    results = {"student": row("student", 4.0), "teacher": row("teacher", 1.0), "online": row("online", 6.0),
               "cached": row("cached", 5.0), "cached-host": {**row("cached", 5.5), "resident": False},
               "student-compiled": {**row("student", 3.0), "compiled": True, "warmup_s": 40.0}}
    fp32 = ratios(results, bf16=False)
    assert fp32["host_over_resident"] == {"cached": 5.5 / 5.0}
    # on the CPU the other rows have no host-fed twin: theirs is the resident one
    assert fp32["host_cached_over_student"] == 5.5 / 4.0
    assert fp32["host_online_over_student_plus_teacher"] == 6.0 / 5.0
    assert fp32["compiled_over_eager"] == {"student": 3.0 / 4.0}
    table, _ = pair_table("mlp", results, {"batch_size": 128, "epochs": 5, "teacher": {"mlp": "random"}})
    assert "| cached KD / student only, host-fed batches | 1.375 |" in table
    assert "| cached: host-fed / device-resident | 1.100 |" in table
    assert "| student: compiled / eager | 0.750 |" in table
    assert "| student only (respkd) [device-resident batches; compiled, warm-up epoch 40.0 s] | fp32 |" in table


@pytest.mark.skipif(not torchdistill_installed(), reason="torchdistill is not installed (make benchmark-setup)")
def test_torchdistill_box_trains_the_objective_of_respkds_rows():
    from kd_speed_worker import Bench, RespkdTraining, TorchdistillBox

    bench = Bench({**SMALL_JOB, "method": "torchdistill", "bf16": False, "workers": 0})
    box, ours = TorchdistillBox(bench, 0, False), RespkdTraining(bench, "online", False)
    ours.task.teacher.load_state_dict(box.box.teacher_model.state_dict())
    assert all(torch.equal(p, q) for p, q in zip(box.student.parameters(), ours.student.parameters()))
    x, y = bench.normalized_train_images()[:128], bench.train_y[:128]
    theirs_loss, our_loss = box.box.forward_process(x, y, {}), ours.task(x, y)["loss"]
    torch.testing.assert_close(theirs_loss, our_loss, rtol=1e-3, atol=0.0)  # T^2 * KL, soft targets only
    theirs_loss.backward()
    our_loss.backward()
    for p, q in zip(box.student.parameters(), ours.student.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-3, atol=1e-7)
    theirs_lr, our_lr = [], []  # the same optimiser and per-step one-cycle schedule
    for _ in range(bench.cfg.epochs * bench.steps_per_epoch()):
        theirs_lr.append(box.box.optimizer.param_groups[0]["lr"])
        our_lr.append(ours.optimizer.param_groups[0]["lr"])
        box.box.optimizer.step(), ours.optimizer.step()
        box.box.lr_scheduler.step(), ours.scheduler.step()
    assert theirs_lr == our_lr
    assert box.box.optimizer.defaults["nesterov"] and box.box.optimizer.defaults["momentum"] == 0.9


def test_host_fed_and_resident_rows_train_alike_and_matmul_counts_its_rate():
    """The workers' methods in this process: the cached row host-fed (memory-mapped cache) and device-resident (the
    cache a tensor) train the same student bitwise; the matmul row reports its products' rate."""
    bench = Bench({**SMALL_JOB, "method": "cached", "bf16": False, "workers": None})
    students = []
    for resident in (False, True):
        method = RespkdTraining(bench, "cached", False, resident=resident)
        assert method.prepare()["cache_build_s"] > 0
        assert method.epoch()["epoch_s"] > 0
        assert 0 <= method.finish()["test_top1"] <= 100
        students.append(method.student.state_dict())
    assert all(torch.equal(students[0][k], students[1][k]) for k in students[0])
    matmul = MatmulOnly(bench, False).epoch()
    assert matmul["epoch_s"] > 0 and matmul["gflops_per_s"] > 0


@pytest.fixture(scope="module")
def measured() -> dict:
    """Three rows interleaved in worker processes, one of them failing: 4 steps an epoch, 1 warm-up + 2 timed."""
    job = {**SMALL_JOB, "train_limit": 256, "test_limit": 100, "batch_size": 64, "epochs": 2}
    return measure([Run("student"), Run("cached"), Run("no_such_method")], job, epochs=2, tag="test")


def test_a_failing_row_is_reported_and_the_others_still_run(measured):
    assert "unknown method no_such_method" in measured["no_such_method"]["error"]
    for key in ("student", "cached"):
        r = measured[key]
        assert "error" not in r and len(r["epoch_s"]) == 2 and r["min_s"] <= r["median_s"] <= r["max_s"]
        assert 0 <= r["test_top1"] <= 100 and r["n_train"] == 256 and r["resident"] is True
    assert measured["cached"]["cache_build_s"] > 0


def test_the_rows_interleave_round_robin(measured):
    timed = {k: r for k, r in measured.items() if "error" not in r}
    # the wall-clock order of all epochs: round 0 (warm-up) of every row, then round 1 of every row, ...
    order = sorted((start, end, k, i) for k, r in timed.items() for i, (start, end) in enumerate(r["wall"]))
    assert [(k, i) for _, _, k, i in order] == [(k, i) for i in range(3) for k in timed]
    assert all(a[1] <= b[0] for a, b in zip(order, order[1:]))  # one epoch at a time


def test_the_command_writes_its_measurements_and_table(tmp_path, monkeypatch, measured):
    """kd_speed.main with the measurement above standing in for the rows it plans: the JSON, the markdown beside
    it, the header naming the command, and the ratios from the medians."""
    planned = []

    def measure_planned(runs, base_job, epochs, tag):
        planned.append(([r.key for r in runs], base_job, epochs))
        return measured

    monkeypatch.setattr(kd_speed, "measure", measure_planned)
    out = tmp_path / "kd.json"
    args = ["--pairs", "mlp", "--random-teacher", "--synthetic", "--train-limit", "256", "--batch-size", "64",
            "--epochs", "2", "--bf16-rows", "no", "--methods", "student", "cached", "--note", "A shared machine.",
            "--out", str(out)]
    assert kd_speed.main(args) == 0
    assert planned[0][0] == ["student", "cached", "cached-host"] and planned[0][2] == 2
    assert planned[0][1]["synthetic"] and planned[0][1]["teacher_path"] is None
    data = json.loads(out.read_text())
    fp32 = data["pairs"]["mlp"]["ratios"]["fp32"]
    assert fp32["cached_over_student"] == measured["cached"]["median_s"] / measured["student"]["median_s"]
    assert data["machine"]["cores"] >= 1 and data["machine"]["torch"] == torch.__version__
    text = out.with_suffix(".md").read_text()
    assert text.startswith("<!-- Output of: python benchmarks/kd_speed.py --pairs mlp --random-teacher")
    assert "A shared machine." in text and "random images (timing only)" in text
    assert "Only 2 timed epochs per row: a short run, not figures to quote." in text
    assert "| student only (respkd) [device-resident batches] | fp32 | " in text
    assert "failed: start: exit status 1: " in text  # the failing row, in its place


@pytest.mark.parametrize("args,message", [
    (["--epochs", "0"], "--epochs must be at least 1"),
    (["--train-limit", "100"], "--train-limit 100 is less than one batch of 128"),
    (["--train-limit", "256", "--epochs", "1"], "too few optimiser steps"),
    (["--jitter", "2"], "--jitter with the cached method needs --jitter-views"),
    ([], "give --mlp-teacher PATH, or --random-teacher"),
])
def test_the_command_refuses_bad_arguments(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        kd_speed.main(["--pairs", "mlp", *args])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
