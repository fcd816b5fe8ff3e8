"""README.md and docs/*.md cannot drift from the code or the committed results: every command line they show parses
with the real command line and those that read only committed files run; every link, config, plan, results path and
test they name exists; the generated tables equal what their sources print today; the configuration reference lists
every key; and no page tells how the work went instead of what the software does.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

import pytest

from respkd import config_reference
from respkd.cli import build_parser, main
from respkd.config import RunConfig, TrainConfig
from respkd.specialists.config import SpecialistsConfig

from test_readme import argv_of, braces, subcommand

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
import update_docs  # noqa: E402

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
TEXT = {page: page.read_text() for page in PAGES}


def name(page: Path) -> str:
    return str(page.relative_to(REPO))


def without_generated(text: str) -> str:
    """The page's own prose: generated blocks hold what their sources print (tests check those against the source)."""
    return update_docs.BLOCK.sub("", text)


def fenced_blocks(text: str, language: str = "[a-z]*") -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, re.S | re.M)


def fenced_commands(text: str) -> list[str]:
    """Every line of a fenced block that starts with `respkd ` (continued lines joined)."""
    lines = []
    for block in fenced_blocks(text):
        lines += [line.strip() for line in block.replace("\\\n", " ").splitlines() if line.strip().startswith("respkd ")]
    return lines


def inline_commands(text: str) -> list[str]:
    return re.findall(r"`(respkd [a-z][^`]*)`", text)


ALL_FENCED = sorted({(name(p), line) for p in PAGES for line in fenced_commands(TEXT[p])})
ALL_SUBCOMMANDS = sorted({" ".join(subcommand(argv_of(c))) for p in PAGES
                          for c in fenced_commands(TEXT[p]) + inline_commands(TEXT[p])})


# ---------------------------------------------------------------- commands


def test_the_pages_show_commands():
    assert len(ALL_FENCED) >= 50 and len({c for p in PAGES for c in inline_commands(TEXT[p])}) >= 20


@pytest.mark.parametrize("page,line", ALL_FENCED)
def test_every_command_line_parses(page, line):
    """The flags and arguments of each command line in a code block are what the parser takes (parsing runs
    nothing)."""
    try:
        build_parser().parse_args(argv_of(line))
    except SystemExit as exit_:
        pytest.fail(f"{page}: {line!r} does not parse (exit {exit_.code})")


@pytest.mark.parametrize("command", ALL_SUBCOMMANDS)
def test_every_subcommand_named_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*command.split(), "--help"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: respkd {command}")


def in_committed_world(tmp_path: Path, real_mnist_root: Path, monkeypatch) -> None:
    """Work in ``tmp_path``, which sees the repository's results/ and configs/ and a data root with the real MNIST."""
    for folder in ("results", "configs"):
        (tmp_path / folder).symlink_to(REPO / folder)
    (tmp_path / "data").symlink_to(real_mnist_root)
    monkeypatch.chdir(tmp_path)


def test_the_commands_on_committed_results_run(tmp_path, real_mnist_root, monkeypatch, capsys):
    """The lines that read only the repository's committed runs (results/) run, and print what their comment says."""
    runnable = sorted({line for _, line in ALL_FENCED if any(a.startswith("results/") for a in argv_of(line))})
    assert len(runnable) >= 5
    in_committed_world(tmp_path, real_mnist_root, monkeypatch)
    for line in runnable:
        assert main(argv_of(line)) == 0, line
        out = capsys.readouterr().out
        assert out.strip(), line
        if claimed := re.search(r"#.*?(\d+) test errors", line):  # the comment states the result: it must be it
            assert f"test errors {claimed.group(1)}/" in out, (line, out)


def test_the_results_tables_models_re_evaluate_to_their_recorded_errors(tmp_path, real_mnist_root, monkeypatch,
                                                                        capsys):
    """Every MNIST model of the README's results table, evaluated again by `respkd eval` (fp32), makes exactly the
    test errors its summary.json records (the Fashion-MNIST one needs files that only apt installs: not here)."""
    source = re.search(r"<!-- generated: (respkd table [^>]*?)-->", TEXT[REPO / "README.md"], re.S).group(1)
    runs = [w for w in source.split() if w.startswith("results/mnist/")]
    assert len(runs) >= 4
    in_committed_world(tmp_path, real_mnist_root, monkeypatch)
    for run in runs:
        assert main(["eval", run, "--json"]) == 0, run
        errors = json.loads(capsys.readouterr().out)["errors"]
        assert errors == update_docs.read_summary(REPO / run)["metrics"]["errors"], run


@pytest.mark.parametrize("page", [p for p in PAGES if p.parent.name == "docs" and fenced_blocks(TEXT[p], "python")],
                         ids=name)
def test_every_python_block_of_the_docs_runs(page, tmp_path, real_mnist_root, monkeypatch, capsys):
    """Each page's Python examples, in order in one namespace, from a folder holding the repository's configs and
    results and the offline MNIST cache as data/."""
    in_committed_world(tmp_path, real_mnist_root, monkeypatch)
    for k, block in enumerate(fenced_blocks(TEXT[page], "python")):
        exec(compile(block, f"{name(page)} python block {k + 1}", "exec"), {"__name__": "__docs__"})
        assert capsys.readouterr().out.strip(), f"block {k + 1} printed nothing"


def test_the_cli_page_shows_every_subcommand():
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    specialists = next(a for a in commands["specialists"]._actions if isinstance(a, argparse._SubParsersAction))
    every = [c for c in commands if c not in ("distil", "specialists")] + [f"specialists {c}" for c in specialists.choices]
    shown = {" ".join(subcommand(argv_of(line))) for line in fenced_commands(TEXT[REPO / "docs" / "cli.md"])}
    assert [c for c in every if c not in shown] == []


def test_make_targets_named_exist():
    targets = set(re.findall(r"^([a-z][\w-]*):", (REPO / "Makefile").read_text(), re.M))
    named = {t for p in PAGES for t in re.findall(r"(?:`|^)make ([a-z][\w-]*)", TEXT[p], re.M)}
    assert named and named <= targets, named - targets


# ---------------------------------------------------------------- what the pages name exists


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation but '-' and '_' dropped, spaces as '-'."""
    text = re.sub(r"[`*]", "", heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
    seen: dict[str, int] = {}
    found = set()
    for heading in re.findall(r"^#{1,6} (.+)$", text, re.M):
        base = slug(heading)
        found.add(base if base not in seen else f"{base}-{seen[base]}")
        seen[base] = seen.get(base, 0) + 1
    return found


LINKS = [(p, target) for p in PAGES for target in re.findall(r"\]\(([^)\s]+)\)", TEXT[p])
         if not re.match(r"[a-z]+:", target)]


@pytest.mark.parametrize("page,target", LINKS, ids=[f"{name(p)}->{t}" for p, t in LINKS])
def test_every_link_resolves(page, target):
    path, _, anchor = target.partition("#")
    dest = (page.parent / path).resolve() if path else page
    assert dest.exists(), f"{name(page)}: {target} does not exist"
    if anchor:
        assert dest.suffix == ".md" and anchor in anchors(dest), f"{name(page)}: no heading #{anchor} in {dest.name}"


def repository_paths(text: str) -> set[str]:
    """Paths under configs/, results/, benchmarks/, scripts/ and tests/ that a page names (brace groups expanded,
    patterns kept); what a command writes (after --out) is not required to exist."""
    text = re.sub(r"--out\s+\S+", "", text)
    found = set()
    for path in re.findall(r"(?<![\w./-])((?:configs|results|benchmarks|scripts|tests|src)/[\w./{},:*-]*[\w/}*])", text):
        while path.count("}") > path.count("{"):  # the end of a YAML flow mapping around the path
            path = path[:-1]
        found.update(braces(path))
    return found


PATHS = sorted({(name(p), path) for p in PAGES for path in repository_paths(TEXT[p]) if "<" not in path})


@pytest.mark.parametrize("page,path", PATHS)
def test_every_path_named_exists(page, path):
    file, _, test_name = path.partition("::")
    if "*" in file:  # a pattern (a generated block naming a plan's runs) names at least one path
        assert any(REPO.glob(file)), f"{page}: nothing matches {file}"
        return
    assert (REPO / file).exists(), f"{page}: {file} does not exist"
    if test_name:
        assert re.search(rf"^def {re.escape(test_name)}\(", (REPO / file).read_text(), re.M), f"{page}: no {path}"


PLANS = sorted({(name(p), plan) for p in PAGES for plan in re.findall(r"respkd reproduce ([a-z][\w]*)", TEXT[p])})


@pytest.mark.parametrize("page,plan", PLANS)
def test_every_plan_named_exists(page, plan):
    assert (REPO / "configs" / "plans" / f"{plan}.yaml").is_file(), f"{page}: no plan {plan}"


def test_every_docs_page_is_in_the_index_and_the_readme_links_the_index():
    index = TEXT[REPO / "docs" / "README.md"]
    pages = [p for p in PAGES if p.parent.name == "docs" and p.name != "README.md"]
    assert [p.name for p in pages if f"]({p.name})" not in index] == []
    assert "](docs/README.md)" in TEXT[REPO / "README.md"]


# ---------------------------------------------------------------- generated tables and the configuration reference


def test_the_generated_tables_are_what_their_sources_print_today():
    assert update_docs.stale_blocks() == {}, "run: python scripts/update_docs.py"


def test_the_readme_and_the_paper_table_are_generated_from_run_folders():
    readme = TEXT[REPO / "README.md"]
    sources = [m["source"].split() for m in update_docs.BLOCK.finditer(readme)]
    assert ["respkd", "table"] in [s[:2] for s in sources] and ["paper", "mnist_table"] in sources
    results = next(s for s in sources if s[:2] == ["respkd", "table"])[2:]
    committed = {str(p.parent.relative_to(REPO)) for p in (REPO / "results").glob("*/*/model.safetensors")}
    assert set(results) <= committed and results, "the README's table lists the committed models"


def test_the_configuration_page_names_every_key():
    page = TEXT[REPO / "docs" / "configuration.md"]
    keys = config_reference.config_keys(RunConfig)
    assert "train.epochs" in keys and "data.transfer.fraction" in keys and "kd.dkd.beta" in keys
    assert [k for k in keys if f"`{k}`" not in page] == []
    specialists = config_reference.config_keys(SpecialistsConfig, referenced=(TrainConfig,))
    assert [k for k in specialists if f"`{k}`" not in TEXT[REPO / "docs" / "specialists.md"]] == []


def test_the_reference_refuses_a_key_without_a_meaning_and_a_meaning_without_a_key(monkeypatch):
    meanings = dict(config_reference.RUN_MEANINGS)
    del meanings["kd.cache_topk"]
    with pytest.raises(ValueError, match="no meaning for kd.cache_topk"):
        config_reference.reference_table(RunConfig, meanings)
    meanings = {**config_reference.RUN_MEANINGS, "train.lr_rate": "a key no model has"}
    with pytest.raises(ValueError, match="does not have: train.lr_rate"):
        config_reference.reference_table(RunConfig, meanings)


def test_the_reference_shows_types_defaults_and_ranges():
    rows = {key: rest for key, *rest in config_reference.reference_rows(RunConfig)}
    assert rows["data.jitter"] == ["int", "`0`", "0 to 8"]
    assert rows["train.lr"] == ["float", "required", "(0, 100]"]
    assert rows["train.momentum"] == ["float", "`0.9`", "[0, 1)"]
    assert rows["train.batch_size"] == ["int", "`128`", "1 to 2^20"]
    assert rows["seed"][2] == "0 to 2^32 - 1"
    assert rows["kd.loss"][:2] == ["one of `kd`, `logit_mse`, `dkd`, `dist`", "`kd`"]
    assert rows["data.transfer.keep_classes"] == ["list of int or null", "null", "1 or more values; each at most 99,999"]
    assert rows["data.std"][2] == "1 to 3 values; each at most 1"


def test_the_paper_table_says_a_miss_plainly_with_the_measured_number(tmp_path, monkeypatch):
    """Each row of the MNIST table: its runs' test errors (mean +- sample std over seeds) beside the paper's number,
    and the verdict they give; the soft-targets-only row has no paper number."""
    with update_docs.in_repository():
        table = update_docs.paper_table("mnist_table", REPO)
    rows = [line for line in table.splitlines()[2:]]
    assert len(rows) == 4
    paper = {"mnist-teacher-1200": 67, "mnist-student-800-hard": 146, "mnist-student-800-kd-T20": 74}
    for row in rows:
        runs = re.findall(r"\[([\w.-]+)\]\((results/mnist/[\w.-]+)\)", row)
        errors = [update_docs.read_summary(REPO / path)["metrics"]["errors"] for _, path in runs]
        mean = statistics.mean(errors)
        shown = f"{errors[0]}" if len(errors) == 1 else f"{mean:.1f} ± {statistics.stdev(errors):.1f}"
        assert f"**{shown}** / 10000" in row
        target = paper.get(runs[0][0].rsplit("-seed", 1)[0])
        if target is None:
            assert row.endswith("| - | **" + shown + "** / 10000 | not in the paper |")
        elif mean <= target:
            assert row.endswith("| met |")
        else:
            assert "**missed**: " + (f"{mean:.1f}".removesuffix(".0")) + f" vs {target} |" in row


def table_rows(text: str) -> list[tuple[list[str], list[str]]]:
    """(header cells, row cells) of every markdown table row outside the generated blocks."""
    rows, header = [], None
    for line in without_generated(text).splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip()[1:-1])]
        if header is None:
            header = cells
        elif not set("".join(cells)) <= set("-: "):
            rows.append((header, cells))
    return rows


def numbers_recorded(target: Path) -> list[float]:
    """Every number written in a results file, or in the JSON and markdown files of a run folder."""
    files = [target] if target.is_file() else [*target.glob("*.json"), *target.glob("*.md")]
    return [float(n) for f in files for n in re.findall(r"\d+(?:\.\d+)?(?:e-?\d+)?", f.read_text())]


MEASURED = [(name(p), header.index("measured"), cells) for p in PAGES for header, cells in table_rows(TEXT[p])
            if "measured" in header and "../results/" in " ".join(cells)]


@pytest.mark.parametrize("page,column,cells", MEASURED, ids=[f"{p}:{c[0][:40]}" for p, _, c in MEASURED])
def test_every_measured_number_is_in_the_run_folder_its_row_links(page, column, cells):
    """A hand-written results row: each number of its "measured" cell (shares in % apart, which are ratios of
    them) is written, to its shown precision, in a file of the run folders or results files the row links."""
    measured = cells[column]
    recorded = [n for target in re.findall(r"\]\(\.\./(results/[^)#]+)\)", " ".join(cells))
                for n in numbers_recorded(REPO / target)]
    for token in re.findall(r"(?<![\w.])(\d+(?:\.\d+)?)(?![\d.]*%)", measured):
        digits = len(token.partition(".")[2])
        assert any(round(n, digits) == float(token) for n in recorded), f"{page}: {token} ({measured})"


# ---------------------------------------------------------------- what the pages say


NARRATIVE = [r"\bsession\b", r"\bprobes?\b", r"\bso far\b", r"\bnext try\b", r"\bearlier\b", r"\bother jobs\b",
             r"\bshared the\b", r"\bat first\b", r"\bpreceded\b", r"\bwas busy\b", r"\bthis time\b", r"\bwe tried\b"]
COMMIT = r"\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{7,40}\b"


@pytest.mark.parametrize("page", PAGES, ids=name)
def test_no_page_tells_how_the_work_went(page):
    prose = without_generated(TEXT[page])
    found = [m.group(0) for pattern in NARRATIVE for m in re.finditer(pattern, prose, re.I)]
    found += re.findall(COMMIT, prose)
    assert found == [], f"{name(page)}: {found}"


def test_the_readme_is_a_front_door():
    readme = TEXT[REPO / "README.md"]
    assert len(readme.splitlines()) <= 250
    sections = re.findall(r"^## (.+)$", readme, re.M)
    order = ["Two commands", "Results and models", "In your own training loop", "Command line",
             "Measured against the paper", "Documentation"]
    assert [s for s in sections if s in order] == order
    command_line = readme.split("## Command line\n")[1].split("\n## ")[0]
    assert 8 <= len(fenced_commands(command_line)) <= 12
