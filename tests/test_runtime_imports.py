"""The runtime is only the server (issue 16): ``predictor/`` never imports a tool package, the
controller, or the tools' heavy dependencies, and ``python -m predictor`` loads none of them.

Imports are read from the source (every level: module, function and ``if`` bodies count), so an
import hidden in a function that no test happens to call is still caught.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.source_imports import imported_names, modules

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


def forbidden_imports(package: str, forbidden: tuple[str, ...], root: Path = REPO) -> list[str]:
    """``PATH imports TOP`` for each forbidden top-level package a module of ``package`` imports."""
    found = set()
    for module in modules(package, root).values():
        for name in imported_names(module):
            if name.split(".")[0] in forbidden:
                found.add(f"{module.path.relative_to(root)} imports {name.split('.')[0]}")
    return sorted(found)


def test_the_import_reader_sees_function_level_and_relative_imports(tmp_path):
    """The check itself: imports inside functions and relative ones are found, plain names are not."""
    package = tmp_path / "predictor"
    (package / "sub").mkdir(parents=True)
    (package / "sub" / "mod.py").write_text(
        "import json\n\n\ndef f():\n    import matplotlib.pyplot\n\n\n"
        "def g():\n    from ...bench import servers\n    from . import sibling\n"
    )
    (module,) = modules("predictor", tmp_path).values()
    assert {"json", "matplotlib.pyplot", "bench", "predictor.sub.sibling"} <= set(imported_names(module))
    assert forbidden_imports("predictor", FORBIDDEN_IN_RUNTIME, tmp_path) == [
        "predictor/sub/mod.py imports bench",
        "predictor/sub/mod.py imports matplotlib",
    ]


def test_no_runtime_module_imports_a_tool_the_controller_or_their_dependencies():
    assert forbidden_imports("predictor", FORBIDDEN_IN_RUNTIME) == []


def test_loadtest_reads_controller_configs_without_importing_the_controller():
    assert forbidden_imports("loadtest", ("controller",)) == []


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
