"""README.md's own-loop Python block runs as written, within the CPU time the README promises. The helpers that read
a README command line as the shell hands it over are shared with tests/test_docs.py, which checks every command,
link, path and generated table of README.md and docs/*.md.
"""

from __future__ import annotations

import os
import re
import resource
import shlex
import subprocess
import sys
from pathlib import Path

import pytest


REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
SRC = REPO / "src"


def section(title: str) -> str:
    """The text of the README section ``## title``, up to the next heading of that level."""
    found = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", README, re.S | re.M)
    assert found, f"README has no section '## {title}'"
    return found.group(1)


def python_block(title: str) -> str:
    blocks = re.findall(r"^```python\n(.*?)^```", section(title), re.S | re.M)
    assert len(blocks) == 1, f"'{title}' should hold one python block, it holds {len(blocks)}"
    return blocks[0]


def braces(word: str) -> list[str]:
    """A shell's brace expansion of one ``{a,b,c}`` group: ``run-seed{0,1}`` -> ``run-seed0 run-seed1``."""
    found = re.search(r"\{([^{}]*,[^{}]*)\}", word)
    if found is None:
        return [word]
    return [w for part in found.group(1).split(",") for w in braces(word[:found.start()] + part + word[found.end():])]


def argv_of(line: str) -> list[str]:
    """A README command line as the shell hands it over: comments and optional ``[...]`` parts dropped, braces
    expanded."""
    line = re.sub(r"\[[^\]]*\]", "", line)
    return [w for word in shlex.split(line, comments=True)[1:] for w in braces(word)]


def subcommand(argv: list[str]) -> list[str]:
    return argv[:2] if argv[0] == "specialists" else argv[:1]


def test_the_own_loop_block_is_short_and_uses_the_public_face():
    code = python_block("In your own training loop")
    assert len(code.splitlines()) <= 20
    assert "from respkd import" in code and "DataLoader" in code and "Distiller" in code


def test_the_own_loop_block_runs_as_written(tmp_path, real_mnist_root):
    """In a fresh interpreter, in a folder where results/ is the repository's and data/ the offline MNIST cache,
    the block trains; its student ends far better than chance, within the CPU time the README promises."""
    (tmp_path / "results").symlink_to(REPO / "results")
    (tmp_path / "data").symlink_to(real_mnist_root)
    script = tmp_path / "own_loop.py"
    script.write_text(python_block("In your own training loop"))
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, env=env,
                          timeout=300)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert done.returncode == 0, done.stderr
    last = done.stdout.strip().splitlines()[-1]
    errors = int(re.fullmatch(r"epoch 2: loss [\d.]+, (\d+) test errors", last).group(1))
    assert errors < 1500, last  # chance is 9000 of 10,000
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert cpu < 40, f"{cpu:.0f} s of CPU"
