"""Fixtures for the planner/simulator tests: the seed's five units and short traces."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.config import load_config

REPO = Path(__file__).resolve().parents[2]
SEED_CONFIG = REPO / "examples" / "sd21-seed.yaml"


@pytest.fixture(scope="session")
def seed_config():
    return load_config(SEED_CONFIG)
