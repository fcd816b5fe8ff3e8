"""The shape of the package, read from the source: imports point down, never in a circle, and every module says what
it exports.

Every ``import`` of a respkd module counts, also one inside a function. The orchestrators (a run, many runs, a plan,
the command line) may import the library; the library never imports an orchestrator. Only the command line imports
inside functions (each command loads what it needs when it runs, so ``respkd --help`` and a bad argument answer at
once): anywhere else a local import would only hide a cycle. The package's face (``respkd/__init__.py``) sits above
everything: it names what it re-exports (orchestrator's ``run`` included) and imports each on first use, and no
module of the package imports it (every ``import respkd.x`` runs it first).
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
ORCHESTRATORS = ("respkd.experiment", "respkd.sweep", "respkd.plan", "respkd.cli", "respkd.specialists.train")
LOCAL_IMPORTS_ALLOWED = ("respkd.cli",)
FACE = "respkd"


def module_files() -> dict[str, Path]:
    modules = {}
    for path in sorted((SRC / "respkd").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


MODULES = module_files()


def imports_of(name: str) -> list[tuple[str, bool]]:
    """The respkd modules ``name`` imports, each with whether the import is inside a function.

    ``from package import submodule`` imports the submodule; ``from module import name`` the module.
    """
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            targets: list[str] = []
            if isinstance(child, ast.Import):
                targets = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    up = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                    base = ".".join(up + ([child.module] if child.module else []))
                subs = [f"{base}.{a.name}" for a in child.names if f"{base}.{a.name}" in MODULES]
                targets = subs + ([base] if len(subs) < len(child.names) else [])
            found.extend((t, inside) for t in targets if t in MODULES and t != name)
            visit(child, inside)

    visit(ast.parse(path.read_text()), False)
    return found


GRAPH = {name: sorted({target for target, _ in imports_of(name)}) for name in MODULES}


def is_orchestrator(name: str) -> bool:
    return name == FACE or any(name == o or name.startswith(o + ".") for o in ORCHESTRATORS)


def find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    """One import cycle as a list of modules (the first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := walk(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in graph:
        if node not in state and (cycle := walk(node)):
            return cycle
    return None


def test_the_walk_sees_the_package():
    assert {"respkd.experiment", "respkd.data", "respkd.data.memory", "respkd.plan.stage", "respkd.cli"} <= set(MODULES)
    assert "respkd.data.memory" in GRAPH["respkd.data"] and "respkd.checkpoint" in GRAPH["respkd.ensemble"]
    assert ("respkd.experiment", True) in imports_of("respkd.cli")  # an import inside a function is seen


def test_find_cycle_finds_one():
    assert find_cycle({"a": ["b"], "b": ["c"], "c": ["a"], "d": []}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": ["b"], "b": [], "c": ["a", "b"]}) is None


def test_no_import_cycles():
    assert find_cycle(GRAPH) is None, " -> ".join(find_cycle(GRAPH))


def test_the_library_never_imports_an_orchestrator():
    climbing = [(name, target) for name, targets in GRAPH.items() if not is_orchestrator(name)
                for target in targets if is_orchestrator(target)]
    assert climbing == []


def test_nothing_but_the_orchestrators_imports_the_experiment():
    importers = sorted(name for name, targets in GRAPH.items() if "respkd.experiment" in targets)
    assert importers and all(is_orchestrator(name) for name in importers), importers


def test_no_local_imports_outside_the_command_line():
    local = [(name, target) for name in MODULES if name not in LOCAL_IMPORTS_ALLOWED
             for target, inside in imports_of(name) if inside]
    assert local == []


@pytest.mark.parametrize("name", list(MODULES))
def test_every_module_says_what_it_exports(name):
    module = importlib.import_module(name)
    assert isinstance(getattr(module, "__all__", None), list), f"{name} has no __all__"
    missing = [n for n in module.__all__ if not hasattr(module, n)]
    assert missing == [], f"{name}.__all__ names what it does not define: {missing}"


def test_nothing_in_the_package_imports_its_face():
    assert [name for name, targets in GRAPH.items() if FACE in targets] == []


def test_the_face_names_each_export_once_where_it_lives():
    """``__all__``, the lazy table and the imports static tools read (under TYPE_CHECKING) name the same things."""
    face = importlib.import_module(FACE)
    tree = ast.parse(MODULES[FACE].read_text())
    typed = {alias.name: node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
             and node.module != "respkd.version" and node.module != "__future__"
             for alias in node.names if node.module.startswith("respkd")}
    assert typed == face.EXPORTS
    assert sorted(face.__all__) == sorted(face.EXPORTS)
    assert {"Distiller", "Supervised", "distillation_loss", "soft_target_loss", "hard_label_loss", "Ensemble",
            "build_model", "load_model", "train_one_epoch", "evaluate", "run", "load_config"} <= set(face.__all__)
    from respkd.distill import Distiller
    from respkd.experiment import run

    assert face.Distiller is Distiller and face.run is run
    with pytest.raises(AttributeError, match="no attribute 'Distillr'"):
        face.Distillr


def loaded_after(statement: str) -> set[str]:
    """The top-level modules a fresh interpreter has loaded after ``statement``."""
    code = f"import sys; {statement}; print(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True,
                          env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"})
    return set(done.stdout.split())


def test_importing_the_package_is_cheap():
    """``import respkd`` (and so every ``respkd`` command before it loads what it needs) imports no torch; the
    training loop's names bring torch, not torchvision, pydantic or the orchestration (``respkd.run`` is the face's
    own test above)."""
    assert "torch" not in loaded_after("import respkd")
    light = loaded_after("from respkd import Distiller, train_one_epoch, evaluate, soft_target_loss")
    assert "torch" in light and not {"torchvision", "pydantic", "yaml"} & light, light
