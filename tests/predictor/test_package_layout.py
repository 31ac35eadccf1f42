"""How the runtime's task and backend packages depend on each other (issue 16, part 2).

* ``predictor.tasks`` (protocol: parse, validate, shape answers) never imports
  ``predictor.backends`` (what runs a task), not even inside a function;
* no import cycle among them, function-level imports counted;
* a tool can load a diffusers pipeline and encode PNGs as the server does without importing kserve
  (the benchmark re-implemented both because the old module imported kserve at module level).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("predictor/tasks", "predictor/backends")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """Every ``predictor.*`` module each module of PACKAGES imports, wherever the import statement is."""
    graph: dict[str, set[str]] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            targets: set[str] = set()
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    targets.add(node.module)
                    targets.update(f"{node.module}.{alias.name}" for alias in node.names)
                elif isinstance(node, ast.Import):
                    targets.update(alias.name for alias in node.names)
            graph[_module_name(path)] = {t for t in targets if t.startswith("predictor.")}
    return graph


def test_tasks_never_import_backends():
    wrong = {
        module: sorted(t for t in targets if t.startswith("predictor.backends"))
        for module, targets in _imports().items()
        if module.startswith("predictor.tasks")
    }
    assert {module: targets for module, targets in wrong.items() if targets} == {}


def test_no_import_cycles_among_tasks_and_backends():
    graph = _imports()
    edges = {module: {t for t in targets if t in graph and t != module} for module, targets in graph.items()}

    def on_a_cycle(module: str) -> bool:
        """Depth-first from ``module``: does any path lead back to it?"""
        seen: set[str] = set()
        stack = list(edges[module])
        while stack:
            current = stack.pop()
            if current == module:
                return True
            if current not in seen:
                seen.add(current)
                stack.extend(edges[current])
        return False

    assert sorted(module for module in edges if on_a_cycle(module)) == []


@pytest.mark.parametrize(
    "modules",
    [
        ("predictor.backends.diffusers", "predictor.tasks.encoding"),
        ("predictor.tasks", "predictor.backends"),
    ],
)
def test_diffusers_loading_and_png_encoding_import_without_kserve(modules):
    code = (
        "import importlib, sys\n"
        f"for name in {list(modules)!r}: importlib.import_module(name)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('kserve', 'torch', 'diffusers')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True, cwd=ROOT
    )
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_a_tool_renders_like_the_server(tiny_model):
    """``DiffusersBackend`` + ``encode_png`` outside the server: a PNG of the requested size."""
    import base64
    import io

    from PIL import Image

    from predictor.backends.diffusers import DiffusersBackend
    from predictor.tasks.encoding import encode_png
    from predictor.tasks.text_to_image import ImageParams

    backend = DiffusersBackend(str(tiny_model), "cpu")
    (image,) = backend.generate(["a red cube"], [""], ImageParams(2, 7.5, 64, 64), [7])
    with Image.open(io.BytesIO(base64.b64decode(encode_png(image)))) as decoded:
        assert (decoded.format, decoded.size) == ("PNG", (64, 64))
