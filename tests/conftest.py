"""Helpers shared by every test directory."""

from __future__ import annotations

import os
import shutil

import pytest


def require_binary(name: str) -> str:
    """The path of a system binary; skip the test without it, unless CI_REQUIRE_SYSTEM_TOOLS=1 (then fail)."""
    path = shutil.which(name)
    if path:
        return path
    message = f"{name} is not installed (Debian: apt-get install -y {name}; .ci/run installs it)"
    if os.environ.get("CI_REQUIRE_SYSTEM_TOOLS") == "1":
        pytest.fail(f"CI_REQUIRE_SYSTEM_TOOLS=1 and {message}", pytrace=False)
    pytest.skip(message)
