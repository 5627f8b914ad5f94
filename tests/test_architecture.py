"""The import graph: packages point one way, rooms talk through doors, no cycles, no private names across.

DESIGN.md: ``degradations`` <- ``pipelines`` <- ``training``; ``cluster`` imports none of them; ``omnilv`` holds
the CLI and the two shared kernels (``omnilv.errors``, ``omnilv.lazy``). Inside ``training`` the rooms point
``model`` <- ``data`` <- ``run`` and ``model`` <- ``eval``. A package or room is entered through its door (its
``__init__``): ``from pipelines import Store``, never ``from pipelines.storage import Store``.

The graph is read from the source (``ast``), imports inside functions included, ``if TYPE_CHECKING:`` blocks left
out (they never run).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("omnilv", "degradations", "pipelines", "training", "cluster")
ROOMS = ("training.model", "training.data", "training.run", "training.eval")
#: Which units each unit may import (a unit is a top package, or a room of training).
ALLOWED = {
    "omnilv": {"degradations", "pipelines", "training", "cluster"},  # omnilv.cli mounts every package's commands
    "degradations": {"omnilv"},
    "pipelines": {"omnilv", "degradations"},
    "cluster": {"omnilv"},
    "training": {"omnilv", "degradations", "pipelines", *ROOMS},  # training/cli.py, quickstart.py, config.py
    "training.model": {"omnilv", "degradations", "pipelines"},  # Lumen decodes heatmaps with degradations' kernels
    "training.data": {"omnilv", "pipelines", "training", "training.model"},
    "training.run": {"omnilv", "pipelines", "training", "training.model", "training.data"},
    "training.eval": {"omnilv", "degradations", "pipelines", "training.model"},  # Lumen's instruction templates
}
#: Modules any unit may import besides the doors: the shared kernels, and the training config every room reads.
KERNELS = {"omnilv.errors", "omnilv.lazy", "omnilv.options", "training.config"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))}


def unit(module: str) -> str:
    """The package, or training's room, a module belongs to."""
    return next((r for r in ROOMS if module == r or module.startswith(r + ".")), module.split(".")[0])


def door(module: str) -> str:
    """The door a module is entered through from outside its unit (the unit itself)."""
    return unit(module)


def _type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING" or \
        isinstance(node.test, ast.Attribute) and node.test.attr == "TYPE_CHECKING"


def imports(module: str) -> list[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for every import that can run."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[str, list[str], int]] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking(child):
                for other in child.orelse:
                    visit(other)
                continue
            if isinstance(child, ast.Import):
                found.extend((a.name, [], child.lineno) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parts = package.split(".")
                    base = ".".join(parts[: len(parts) - child.level + 1] + ([base] if base else []))
                found.append((base, [a.name for a in child.names], child.lineno))
            visit(child)

    visit(tree)
    return [(m, names, line) for m, names, line in found if m.split(".")[0] in PACKAGES]


def lazy_exports(package: str) -> dict[str, str]:
    """name -> defining module of a door written with ``omnilv.lazy.door`` (empty for an eager ``__init__``)."""
    tree = ast.parse(MODULES[package].read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "door" and len(node.args) == 2:
            table = ast.literal_eval(node.args[1])
            return {name: package + mod for name, mod in table.items()}
    return {}


def edges(module: str) -> set[str]:
    """Modules ``module`` imports, a door's lazily exported names resolved to the module that defines them."""
    out: set[str] = set()
    for target, names, _ in imports(module):
        for name in names or [None]:
            sub = f"{target}.{name}" if name else None
            if sub in MODULES:
                out.add(sub)
            elif target in MODULES and name in lazy_exports(target):
                out.add(lazy_exports(target)[name])
            elif target in MODULES:
                out.add(target)
    if MODULES[module].name == "__init__.py":
        out |= set(lazy_exports(module).values())
    out.discard(module)
    return out


def test_the_graph_was_read():
    assert len(MODULES) > 60 and "training.run.worker" in MODULES and "pipelines.storage" in MODULES
    assert "pipelines.storage" in edges("training.run.tensorboard")  # through the pipelines door
    assert "training.run.checkpoint" in edges("training.run.worker")


def test_no_import_cycles():
    graph = {m: edges(m) for m in MODULES}
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def walk(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycles.append(stack[stack.index(n):] + [n])
            elif n not in state:
                walk(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            walk(m)
    # A package's own __init__ importing its modules (an eager door) is not a cycle of design.
    real = [c for c in cycles if not any(MODULES[x].name == "__init__.py" for x in c)]
    assert not real, "import cycles:\n" + "\n".join(" -> ".join(c) for c in real)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_units_point_one_way_and_enter_through_doors(module):
    mine = unit(module)
    problems = []
    for target, _names, line in imports(module):
        theirs = unit(target)
        if theirs == mine or target in KERNELS:
            continue
        if mine == "omnilv" and target.endswith(".cli"):  # the root app mounts each package's commands
            continue
        where = f"{MODULES[module].relative_to(REPO)}:{line}"
        if theirs not in ALLOWED[mine]:
            problems.append(f"{where}: {mine} may not import {theirs} ({target})")
        elif target != door(target):
            problems.append(f"{where}: imports {target}; use the door `from {door(target)} import …`")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_private_names_across_units(module):
    problems = []
    for target, names, line in imports(module):
        if unit(target) == unit(module):
            continue
        private = [n for n in names if n.startswith("_") and not n.startswith("__")]
        private += [p for p in target.split(".") if p.startswith("_") and not p.startswith("__")]
        if private:
            problems.append(f"{MODULES[module].relative_to(REPO)}:{line}: {target} {private}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("package", sorted(m for m in MODULES if MODULES[m].name == "__init__.py"))
def test_door_names_are_not_shadowed_by_submodules(package):
    """Importing ``pkg.x`` sets attribute ``x`` on ``pkg``: a door exporting a function named ``x`` would then hand
    out the module instead."""
    submodules = {m.rpartition(".")[2] for m in MODULES if m.rpartition(".")[0] == package}
    clash = sorted(set(lazy_exports(package)) & submodules)
    assert not clash, f"{package} exports {clash}, which are also its module names"
