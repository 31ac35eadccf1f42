"""tests/conftest.require_binary: skip without the binary, fail instead when CI requires system tools."""

from __future__ import annotations

import pytest

from tests.conftest import require_binary

MISSING = "no-such-binary-for-the-tests"


def test_a_missing_binary_skips_with_how_to_install_it(monkeypatch):
    monkeypatch.delenv("CI_REQUIRE_SYSTEM_TOOLS", raising=False)
    with pytest.raises(pytest.skip.Exception, match=f"apt-get install -y {MISSING}"):
        require_binary(MISSING)


def test_a_missing_binary_fails_when_ci_requires_system_tools(monkeypatch):
    monkeypatch.setenv("CI_REQUIRE_SYSTEM_TOOLS", "1")
    with pytest.raises(pytest.fail.Exception, match=f"CI_REQUIRE_SYSTEM_TOOLS=1 and {MISSING} is not installed"):
        require_binary(MISSING)


def test_a_present_binary_is_found(monkeypatch):
    monkeypatch.setenv("CI_REQUIRE_SYSTEM_TOOLS", "1")
    assert require_binary("sh").endswith("/sh")
