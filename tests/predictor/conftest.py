"""Fixtures: a tiny model built from configs, and the real server started as a subprocess."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.predictor.harness import Server, start_server, stop_server


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from modelbuild.tiny import build_tiny_sd

    return build_tiny_sd(tmp_path_factory.mktemp("tiny-sd"))


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory) -> Iterator[Server]:
    """One server for a test module: batching on, small queue, 2-step default."""
    instance = start_server(
        tiny_model,
        tmp_path_factory.mktemp("logs"),
        "--max_batch_size",
        "4",
        "--batch_wait_ms",
        "50",
        "--max_queue_size",
        "32",
        "--default_steps",
        "2",
        "--max_height",
        "256",
        "--max_width",
        "256",
    )
    yield instance
    stop_server(instance)
