"""Shared test helpers."""

from __future__ import annotations

import os
import shutil

import pytest


def require_binary(name: str) -> str:
    """Path of a system binary; skip the test without it, unless CI_REQUIRE_SYSTEM_TOOLS=1 (then fail)."""
    path = shutil.which(name)
    if path:
        return path
    message = f"{name} is not installed (Debian: apt-get install {name}; .ci/run installs it)"
    if os.environ.get("CI_REQUIRE_SYSTEM_TOOLS") == "1":
        pytest.fail(message + " and CI_REQUIRE_SYSTEM_TOOLS=1", pytrace=False)
    pytest.skip(message)
