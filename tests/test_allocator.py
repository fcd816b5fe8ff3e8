"""respkd.allocator: glibc keeps freed blocks, so a training step's buffers stop costing page faults."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

STEP_FAULTS = textwrap.dedent("""
    import resource, sys, torch
    from torch import nn
    from respkd import allocator
    if sys.argv[1] == "keep":
        assert allocator.keep_freed_memory()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(784, 800), nn.ReLU(), nn.Linear(800, 800), nn.ReLU(), nn.Linear(800, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.rand(128, 784), torch.randint(0, 10, (128,))
    def steps(n):
        for _ in range(n):
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    steps(30)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    steps(20)
    print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20)
""")


def faults_per_step(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", STEP_FAULTS, mode], capture_output=True, text=True, check=True)
    return float(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_a_steady_training_step_makes_no_page_faults():
    """Without it each step maps its large buffers afresh (the 800-800 MLP: hundreds of faults per step in fp32, more
    than a thousand under bf16 autocast); with it the freed blocks are reused."""
    kept, system = faults_per_step("keep"), faults_per_step("system")
    assert system > 20 and kept * 5 < system


def test_the_environment_can_leave_glibc_alone(monkeypatch):
    from respkd import allocator

    monkeypatch.setenv("RESPKD_MALLOC", "system")
    assert allocator.keep_freed_memory() is False


def test_the_command_sets_it_first(monkeypatch):
    from respkd import allocator, cli

    called = []
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda: called.append(True) or True)
    with pytest.raises(SystemExit):
        cli.main(["--version"])
    assert called == [True]
