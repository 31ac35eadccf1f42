"""Fixtures for the transformers tasks: tiny random models and real servers on free loopback ports.

All four servers start together (in parallel) the first time any of them is needed, so the
suite pays the interpreter and model start-up once. gRPC clients run in a subprocess
(``grpc_client.py``): ``kserve`` and ``tritonclient.grpc`` cannot share one process.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.servers import Predictor, start_predictor, stop_all

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
TASKS = ("text-classification", "image-classification", "object-detection", "text-generation")
MODEL_NAME = {
    "text-classification": "sentiment",
    "image-classification": "vit",
    "object-detection": "yolos",
    "text-generation": "llama",
}
START_TIMEOUT_S = 90


@dataclass
class Server:
    """A task's predictor (tests/servers.py) under the names this suite's tests use."""

    task: str
    predictor: Predictor
    name: str = field(init=False)
    http_port: int = field(init=False)
    url: str = field(init=False)  # http://127.0.0.1:PORT
    grpc_url: str = field(init=False)  # 127.0.0.1:PORT
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        served = self.predictor
        self.name, self.http_port, self.log_path = served.model_name, served.http_port, served.log
        self.url, self.grpc_url = served.http, served.grpc

    def wait_ready(self) -> None:
        self.predictor.wait_ready(START_TIMEOUT_S)

    def grpc(self, calls: list[dict]) -> list[dict]:
        """Run gRPC calls in a subprocess (see grpc_client.py) and return their results."""
        completed = subprocess.run(
            [sys.executable, str(HERE / "grpc_client.py"), self.grpc_url, self.name],
            input=json.dumps(calls),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert completed.returncode == 0, completed.stderr
        return json.loads(completed.stdout)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    from modelbuild.tiny_models import build

    root = tmp_path_factory.mktemp("tiny-models")
    return {task: build(task, root / task) for task in TASKS}


def _start(task: str, model_dir: Path, log_path: Path, extra_args: list[str], env: dict, wait: str | None) -> Server:
    """``python -m predictor`` on CPU serving ``model_dir`` as the task's model, on free loopback ports."""
    predictor = start_predictor(
        model_dir, log_path, "--device", "cpu", *extra_args, name=MODEL_NAME[task], env=env, wait=wait,
        timeout=START_TIMEOUT_S,
    )  # fmt: skip
    return Server(task, predictor)


@contextmanager
def text_generation_server(
    model_dir: Path, log_path: Path, extra_args: list[str], env: dict[str, str | None]
) -> Iterator[Server]:
    """``python -m predictor`` serving model ``llama`` from ``model_dir`` on free loopback ports,
    ready when entered; SIGTERM (then kill after 8 s) on exit. ``env`` adds to this process's
    environment (None unsets)."""
    server = _start("text-generation", model_dir, log_path, extra_args, env, wait="model")
    try:
        yield server
    finally:
        server.predictor.stop(grace=8)


@pytest.fixture(scope="session")
def servers(tiny_models, tmp_path_factory):
    """All four task servers, started together; each task's fixture waits for its own."""
    logs = tmp_path_factory.mktemp("server-logs")
    env = {"PREDICTOR_DEVICE": "cpu", "OMP_NUM_THREADS": "1"}
    extra_args = ["--max_batch_size", "4", "--batch_wait_ms", "50"]
    started: dict[str, Server] = {}
    try:
        for task in TASKS:
            started[task] = _start(task, tiny_models[task], logs / f"{task}.log", extra_args, env, wait=None)
        yield started
    finally:
        stop_all((server.predictor for server in started.values()), grace=8)


def _ready_server(task: str, fixture_name: str):
    """A session fixture named ``fixture_name``: the task's server, once its model is ready."""

    @pytest.fixture(scope="session", name=fixture_name)
    def ready(servers: dict[str, Server]) -> Server:
        """The task's server (started with the others by ``servers``), once its model is ready."""
        server = servers[task]
        server.wait_ready()
        return server

    return ready


text_classifier = _ready_server("text-classification", "text_classifier")
image_classifier = _ready_server("image-classification", "image_classifier")
detector = _ready_server("object-detection", "detector")
generator = _ready_server("text-generation", "generator")
