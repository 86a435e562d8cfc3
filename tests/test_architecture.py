"""The package's import graph runs one way: no cycles, no arrow from a lower layer to a higher.

Layers, lowest first: the base modules (errors, configuration, names, formatting, the run
directory), data, models, training, evaluation, reporting, and the entry points (the CLI, the
demo and the package root, which re-exports the public API). Imports inside functions and under
``TYPE_CHECKING`` count: a cycle hidden in a function is still a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "neurounlearn"

LAYERS = ("base", "data", "models", "training", "evaluation", "reporting", "entry")

#: top-level modules by layer (subpackages take their own name's layer)
TOP_LEVEL = {
    "neurounlearn.errors": "base",
    "neurounlearn.atomic": "base",
    "neurounlearn.rng": "base",
    "neurounlearn.query": "base",
    "neurounlearn.losses": "base",
    "neurounlearn.config": "base",
    "neurounlearn.choices": "base",
    "neurounlearn.formatting": "base",
    "neurounlearn.results": "base",
    "neurounlearn.rundir": "base",
    "neurounlearn.version": "base",
    "neurounlearn.checks": "data",
    "neurounlearn.erasure": "models",
    "neurounlearn.registry": "training",
    "neurounlearn.cli": "entry",
    "neurounlearn.__main__": "entry",
    "neurounlearn.demo": "entry",
    "neurounlearn": "entry",
}


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every package module ``name`` imports, wherever the import statement sits."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # `from pkg import mod` imports the submodule; `from mod import name` the module
            submodules = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in known]
            found.update(submodules or ([target] if target in known else []))
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in known)
    found.discard(name)
    return found


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each import cycle a depth-first walk meets, as the path that closes it."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    return cycles


def layer_of(name: str) -> str:
    if name in TOP_LEVEL:
        return TOP_LEVEL[name]
    sub = name.split(".")[1]
    if sub in LAYERS:
        return sub
    raise AssertionError(f"{name} has no layer: add it to TOP_LEVEL in {Path(__file__).name}")


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports(name, path, set(found)) for name, path in found.items()}


def test_every_module_has_a_layer(graph: dict[str, set[str]]) -> None:
    for name in graph:
        assert layer_of(name) in LAYERS


def test_no_module_imports_a_higher_layer(graph: dict[str, set[str]]) -> None:
    upward = [
        f"{name} ({layer_of(name)}) -> {target} ({layer_of(target)})"
        for name, targets in graph.items()
        for target in sorted(targets)
        if LAYERS.index(layer_of(target)) > LAYERS.index(layer_of(name))
    ]
    assert upward == []


def test_no_import_cycle(graph: dict[str, set[str]]) -> None:
    assert find_cycles(graph) == []


def test_the_checker_sees_function_level_imports(tmp_path: Path) -> None:
    source = tmp_path / "mod.py"
    source.write_text("def f():\n    from neurounlearn.reporting import report\n")
    known = {"neurounlearn.reporting", "neurounlearn.reporting.report"}
    assert imports("neurounlearn.data.mod", source, known) == {"neurounlearn.reporting.report"}


def test_the_checker_finds_a_planted_cycle() -> None:
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
