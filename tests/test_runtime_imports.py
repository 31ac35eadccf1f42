"""The runtime is only the server (issue 16): ``predictor/`` never imports a tool package, the
controller, or the tools' heavy dependencies, and ``python -m predictor`` loads none of them.

Imports are read from the source (every level: module, function and ``if`` bodies count), so an
import hidden in a function that no test happens to call is still caught.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# top-level names no runtime module may import
FORBIDDEN_IN_RUNTIME = (
    "modelbuild",
    "loadtest",
    "bench",
    "controller",
    "playground",
    "observability",
    "matplotlib",
    "kubernetes",
    "tritonclient",
)
# what `import predictor.__main__` must not load (optional extras, not core deps)
NOT_LOADED_BY_THE_SERVER = ("matplotlib", "kubernetes", "tritonclient")


def imported_modules(path: Path, top: Path) -> set[str]:
    """Every module an ``import`` or ``from ... import`` anywhere in the file names (absolute form);
    ``top`` is the directory holding the top-level package (for relative imports)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = ".".join(path.relative_to(top).with_suffix("").parts[:-1])
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the file's package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                names.add(".".join([*base, node.module] if node.module else base))
            elif node.module:
                names.add(node.module)
    return names


def forbidden_imports(root: Path, forbidden: tuple[str, ...]) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        for name in sorted(imported_modules(path, root.parent)):
            if name.split(".")[0] in forbidden:
                found.append(f"{path.relative_to(root.parent)} imports {name}")
    return found


def test_the_import_reader_sees_function_level_and_relative_imports(tmp_path):
    """The check itself: imports inside functions and relative ones are found, plain names are not."""
    package = tmp_path / "predictor"
    (package / "sub").mkdir(parents=True)
    (package / "sub" / "mod.py").write_text(
        "import json\n\n\ndef f():\n    import matplotlib.pyplot\n\n\n"
        "def g():\n    from ...bench import servers\n    from . import sibling\n"
    )
    assert imported_modules(package / "sub" / "mod.py", tmp_path) == {
        "json",
        "matplotlib.pyplot",
        "bench",
        "predictor.sub",
    }
    assert forbidden_imports(package, FORBIDDEN_IN_RUNTIME) == [
        "predictor/sub/mod.py imports bench",
        "predictor/sub/mod.py imports matplotlib.pyplot",
    ]


def test_no_runtime_module_imports_a_tool_the_controller_or_their_dependencies():
    assert forbidden_imports(REPO / "predictor", FORBIDDEN_IN_RUNTIME) == []


def test_loadtest_reads_controller_configs_without_importing_the_controller():
    assert forbidden_imports(REPO / "loadtest", ("controller",)) == []


# Records, for each watched top-level package, the module whose code imported it first.
IMPORTER_PROBE = """
import json, sys

WATCHED = set(sys.argv[1].split(","))
first_importer = {}


class Watch:
    def find_spec(self, name, path=None, target=None):
        if name in WATCHED and name not in first_importer:
            frame = sys._getframe(1)
            while frame.f_code.co_filename.startswith("<frozen importlib"):
                frame = frame.f_back
            first_importer[name] = frame.f_globals.get("__name__")
        return None


sys.meta_path.insert(0, Watch())
import predictor.__main__  # noqa: E402

print(json.dumps(first_importer))
"""


def test_starting_the_server_module_loads_none_of_the_tools_dependencies():
    """matplotlib and tritonclient stay out; kubernetes only comes in through kserve itself
    (kserve/__init__.py imports its own KServeClient, which needs the kubernetes client, so kserve
    depends on it: it is not the runtime's dependency)."""
    done = subprocess.run(
        [sys.executable, "-c", IMPORTER_PROBE, ",".join(NOT_LOADED_BY_THE_SERVER)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    first_importer = json.loads(done.stdout.strip().splitlines()[-1])
    assert "matplotlib" not in first_importer and "tritonclient" not in first_importer, first_importer
    importer = first_importer.get("kubernetes")
    assert importer is None or importer.split(".")[0] == "kserve", first_importer


@pytest.mark.parametrize("package", ["modelbuild", "loadtest", "bench"])
def test_the_tools_are_top_level_packages_beside_the_runtime(package):
    assert (REPO / package / "__init__.py").is_file()
    assert not (REPO / "predictor" / package).exists() and not (REPO / "predictor" / f"{package}.py").exists()
