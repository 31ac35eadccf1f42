"""Fixtures: the real predictor serving a tiny model, started as a subprocess on free loopback ports."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from tests.servers import REPO as REPO  # the repository root, for this suite's tests
from tests.servers import Predictor, start_predictor

READY_TIMEOUT_S = 180


@dataclass
class TinyServer:
    """The predictor (tests/servers.py) under the names the load tester's tests use."""

    predictor: Predictor
    http_url: str = field(init=False)
    grpc_url: str = field(init=False)

    def __post_init__(self) -> None:
        self.http_url, self.grpc_url = self.predictor.http, f"grpc://{self.predictor.grpc}"

    def metric(self, name: str) -> float:
        """Sum of a Prometheus sample over its label sets, read from /metrics."""
        with urllib.request.urlopen(f"{self.http_url}/metrics", timeout=10) as response:
            text = response.read().decode()
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(name + "{") or line.startswith(name + " ")
        )


@pytest.fixture(scope="module")
def tiny_server(tmp_path_factory) -> Iterator[TinyServer]:
    from modelbuild.tiny import build_tiny_sd

    model = build_tiny_sd(tmp_path_factory.mktemp("tiny-sd"))
    log = tmp_path_factory.mktemp("logs") / "server.log"
    extra = ("--default_steps", "2", "--max_batch_size", "4")
    predictor = start_predictor(model, log, *extra, env={"OMP_NUM_THREADS": "1"}, timeout=READY_TIMEOUT_S)
    try:
        yield TinyServer(predictor)
    finally:
        predictor.stop(grace=20)
