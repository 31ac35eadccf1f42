"""--event_loop picks the loop the whole server runs on (kserve 0.21 passes it to uvicorn only,
which never creates the loop: kserve's ModelServer.start runs everything in its own asyncio.run)."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import asyncio, sys
from predictor.lifecycle import install_event_loop
installed = install_event_loop(sys.argv[1])
async def loop_type():
    return type(asyncio.get_running_loop()).__module__
print(installed, asyncio.run(loop_type()))
"""


@pytest.mark.parametrize(
    ("choice", "expected"),
    [("auto", "uvloop uvloop"), ("uvloop", "uvloop uvloop"), ("asyncio", "asyncio asyncio.unix_events")],
)
def test_event_loop_choice_is_the_loop_asyncio_run_serves_on(choice, expected):
    # A fresh interpreter per choice: the policy is process-wide.
    done = subprocess.run([sys.executable, "-c", PROBE, choice], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.split()[-2:] == expected.split()


def test_auto_falls_back_to_asyncio_without_uvloop():
    probe = "import sys; sys.modules['uvloop'] = None\n" + PROBE
    done = subprocess.run([sys.executable, "-c", probe, "auto"], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.split()[-2:] == ["asyncio", "asyncio.unix_events"]
