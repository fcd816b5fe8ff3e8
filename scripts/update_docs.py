"""Regenerate the tables of README.md and docs/*.md that are made from committed run folders and from the code.

A generated block names what makes it and ends with a closing marker::

    <!-- generated: respkd table results/mnist/mnist-teacher-1200 results/mnist/mnist-student-800-hard -->
    | Model | Params(M) | ...
    <!-- end generated -->

What a block may name:

* ``respkd ARGS``: a respkd command that prints markdown from files in the repository (``respkd table``,
  ``respkd specialists table``); it runs in this process, from the repository root, and its output is the block;
* ``paper PLAN``: the plan's run stages that carry a paper number of test errors, each run's measured test errors
  from its ``summary.json`` beside the paper's, linked to its run folder;
* ``python -m respkd.config_reference TABLE``: the configuration reference (see :mod:`respkd.config_reference`).

Run it after new runs land or a config key changes; ``--check`` changes nothing and exits 1 when a block is stale
(tests/test_docs.py runs that check)::

    python scripts/update_docs.py            # rewrite the stale blocks
    python scripts/update_docs.py --check    # list them
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import io
import os
import re
import shlex
import statistics
import sys
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from respkd import config_reference  # noqa: E402
from respkd.cli import main as respkd_main  # noqa: E402
from respkd.plan import RunStage, load_plan, resolve  # noqa: E402
from respkd.report import read_summary  # noqa: E402

__all__ = ["BLOCK", "in_repository", "objective", "pages", "paper_table", "render", "stale_blocks", "update"]

BLOCK = re.compile(r"(<!-- generated: (?P<source>.+?) -->\n)(?P<body>.*?)(<!-- end generated -->)", re.S)


def pages() -> list[Path]:
    """The files that may hold generated blocks: README.md and every page under docs/."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def objective(config: dict) -> str:
    """What a run learnt from, as its recorded config says: hard labels, or the teacher's soft targets and how much
    of the hard labels."""
    kd = config.get("kd")
    if kd is None:
        return "hard labels"
    loss = kd.get("loss", "kd")  # runs recorded before kd.loss existed distilled with soft targets
    response = f"{'soft targets' if loss == 'kd' else loss} at T = {kd['temperature']:g}"
    if not kd.get("hard_weight"):
        return f"{response} only"
    return f"hard labels (weight {kd['hard_weight']:g}) + {response} (weight {kd.get('soft_weight', 1.0):g})"


def paper_table(plan_name: str, page_dir: Path) -> str:
    """The plan's run stages: ours (read from each run's summary.json; mean +- sample std over seeds) beside the
    paper's number of test errors where the stage has one."""
    plan = load_plan(plan_name)
    root = Path(plan.runs_root)
    lines = ["| run (its folder) | trained on | test errors, paper | test errors, measured | at most the paper's |",
             "|---|---|---:|---:|---|"]
    for job in resolve(plan, [], root):
        stage = job.stage
        if not isinstance(stage, RunStage):
            continue
        summaries = [read_summary(root / name) for name in stage.outputs]
        errors = [summary["metrics"]["errors"] for summary in summaries]
        ours = statistics.mean(errors)
        runs = ", ".join(f"[{name}]({os.path.relpath(ROOT / root / name, page_dir)})" for name in stage.outputs)
        if len(errors) == 1:
            label, shown = runs, f"{ours:g}"
        else:
            label = f"{runs} ({len(errors)} seeds: {', '.join(map(str, errors))})"
            shown = f"{ours:.1f} ± {statistics.stdev(errors):.1f}"
        paper = stage.paper.get("test_errors")
        if paper is None:
            paper_text, verdict = "-", "not in the paper"
        else:
            paper_text = f"{paper:g}"
            verdict = "met" if ours <= paper else f"**missed**: {f'{ours:.1f}'.removesuffix('.0')} vs {paper:g}"
        lines.append(f"| {label} | {objective(summaries[0]['config'])} | {paper_text} | **{shown}** / "
                     f"{summaries[0]['metrics']['n']} | {verdict} |")
    return "\n".join(lines)


def render(source: str, page: Path) -> str:
    """The text of the block that ``source`` names, for ``page`` (whose folder relative links start from)."""
    words = shlex.split(source)
    if words[0] == "respkd":
        # A pattern expands as a shell would (sorted), so a block can name every run of a plan's runs_root.
        words = [w for word in words for w in (sorted(glob.glob(word)) or [word] if "*" in word else [word])]
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = respkd_main(words[1:])
        if code != 0:
            raise SystemExit(f"{page.name}: '{source}' exited with {code}")
        return out.getvalue().rstrip("\n")
    if words[0] == "paper" and len(words) == 2:
        return paper_table(words[1], page.parent)
    if words[:3] == ["python", "-m", "respkd.config_reference"] and len(words) == 4:
        return config_reference.TABLES[words[3]]()
    raise SystemExit(f"{page.name}: unknown generated block source '{source}'")


def update(page: Path, write: bool) -> list[str]:
    """Regenerate ``page``'s blocks; returns the sources of those that were stale (written back when ``write``)."""
    text = page.read_text()
    stale = []

    def fresh(match: re.Match) -> str:
        body = render(match["source"], page) + "\n"
        if body != match["body"]:
            stale.append(match["source"])
        return match[1] + body + match[4]

    new = BLOCK.sub(fresh, text)
    if write and new != text:
        page.write_text(new)
    return stale


@contextlib.contextmanager
def in_repository() -> Iterator[None]:
    """Run from the repository root, where plans and run folders are named from (contextlib.chdir is 3.11+)."""
    before = os.getcwd()
    os.chdir(ROOT)
    try:
        yield
    finally:
        os.chdir(before)


def stale_blocks() -> dict[str, list[str]]:
    """Page name -> the sources of its stale blocks, for every page that has any (nothing is written)."""
    with in_repository():
        found = {str(p.relative_to(ROOT)): update(p, write=False) for p in pages()}
    return {page: sources for page, sources in found.items() if sources}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a block is stale")
    args = parser.parse_args(argv)
    with in_repository():
        stale = {str(p.relative_to(ROOT)): update(p, write=not args.check) for p in pages()}
    for page, sources in stale.items():
        for source in sources:
            print(f"{page}: {'stale' if args.check else 'updated'}: {source}")
    return 1 if args.check and any(stale.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
