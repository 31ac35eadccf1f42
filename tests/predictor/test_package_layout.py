"""How the runtime's task and backend packages depend on each other (issue 16, part 2).

(``tests/test_architecture.py`` checks that tasks never import backends and that nothing in the
runtime forms an import cycle.) Here:

* a tool can load a diffusers pipeline and encode PNGs as the server does without importing kserve
  (the benchmark re-implemented both because the old module imported kserve at module level).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


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
