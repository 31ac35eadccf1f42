"""Fixtures for the controller's integration tests: a fake API server with the sd21 world in it."""

from __future__ import annotations

import pytest

from .ctl_fakeapi import FakeKube
from .ctl_world import NS, Clock, World


@pytest.fixture
def fake():
    with FakeKube() as server:
        yield server


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def world(fake, clock, tmp_path):
    return World(fake, clock, fake.write_kubeconfig(tmp_path / "kubeconfig", NS))
