"""The layout's promises, checked on the source: the runtime and the controller stay small, acyclic
and free of tools (issue 16). Function-level imports count: a cycle hidden in a function is a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.source_imports import ROOT, Module, cycles, import_graph, imported_names, modules

MEASURED_PACKAGES = ("predictor", "controller")
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 80


@pytest.mark.parametrize("package", MEASURED_PACKAGES)
def test_no_import_cycles(package: str) -> None:
    found = modules(package)
    assert cycles(import_graph(found)) == []


@pytest.mark.parametrize("package", MEASURED_PACKAGES)
def test_modules_stay_small(package: str) -> None:
    too_long = {
        str(module.path.relative_to(ROOT)): lines
        for module in modules(package).values()
        if (lines := len(module.path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert too_long == {}, f"modules over {MAX_MODULE_LINES} lines: split them by job"


@pytest.mark.parametrize("package", MEASURED_PACKAGES)
def test_functions_stay_short(package: str) -> None:
    too_long = {}
    for module in modules(package).values():
        for node in ast.walk(module.tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long[f"{module.path.relative_to(ROOT)}:{node.lineno} {node.name}"] = length
    assert too_long == {}, f"functions over {MAX_FUNCTION_LINES} lines"


def test_task_protocol_never_imports_a_backend() -> None:
    """Imports go backends -> tasks: the protocol side of a task knows no engine."""
    found = modules("predictor")
    offending = {
        name: sorted(t for t in imported_names(module) if t.startswith("predictor.backends"))
        for name, module in found.items()
        if name.startswith("predictor.tasks")
    }
    assert {name: targets for name, targets in offending.items() if targets} == {}


def test_cycle_finder_sees_function_level_cycles(tmp_path: Path) -> None:
    """The checker itself: a cycle hidden in a function body is found."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    source = ast.parse("def f():\n    from .b import thing\n")
    module = Module("pkg.a", tmp_path / "a.py", source)
    assert "pkg.b" in set(imported_names(module))
