"""Fixtures for the transformers tasks: tiny random models and real servers on free loopback ports.

All four servers start together (in parallel) the first time any of them is needed, so the
suite pays the interpreter and model start-up once. gRPC clients run in a subprocess
(``grpc_client.py``): ``kserve`` and ``tritonclient.grpc`` cannot share one process.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    task: str
    name: str
    http_port: int
    grpc_port: int
    process: subprocess.Popen
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"{self.task} server exited with {self.process.returncode}:\n{self.log()}")
            try:
                if requests.get(f"{self.url}/v2/models/{self.name}/ready", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.3)
        pytest.fail(f"{self.task} server not ready after {START_TIMEOUT_S}s:\n{self.log()}")

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


@contextmanager
def text_generation_server(
    model_dir: Path, log_path: Path, extra_args: list[str], env: dict[str, str]
) -> Iterator[Server]:
    """``python -m predictor`` serving model ``llama`` from ``model_dir`` on free loopback ports,
    ready when entered; SIGTERM (then kill after 8 s) on exit."""
    http_port, grpc_port = free_port(), free_port()
    command = [
        sys.executable, "-m", "predictor",
        "--model_name", "llama",
        "--model_dir", str(model_dir),
        "--device", "cpu",
        "--http_port", str(http_port),
        "--grpc_port", str(grpc_port),
        *extra_args,
    ]  # fmt: skip
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    server = Server("text-generation", "llama", http_port, grpc_port, process, log_path)
    try:
        server.wait_ready()
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=8)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def servers(tiny_models, tmp_path_factory):
    logs = tmp_path_factory.mktemp("server-logs")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PREDICTOR_DEVICE": "cpu", "OMP_NUM_THREADS": "1"}
    started: dict[str, Server] = {}
    for task in TASKS:
        http_port, grpc_port = free_port(), free_port()
        log_path = logs / f"{task}.log"
        command = [
            sys.executable, "-m", "predictor",
            "--model_name", MODEL_NAME[task],
            "--model_dir", str(tiny_models[task]),
            "--device", "cpu",
            "--http_port", str(http_port),
            "--grpc_port", str(grpc_port),
            "--max_batch_size", "4",
            "--batch_wait_ms", "50",
        ]  # fmt: skip
        with open(log_path, "wb") as log:
            process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        started[task] = Server(task, MODEL_NAME[task], http_port, grpc_port, process, log_path)
    yield started
    for server in started.values():
        server.process.terminate()
    deadline = time.monotonic() + 8
    for server in started.values():
        try:
            server.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(f"{server.task} server did not stop on SIGTERM; killing it", file=sys.stderr)
            server.process.kill()
            server.process.wait()


def _ready(servers: dict[str, Server], task: str) -> Server:
    server = servers[task]
    server.wait_ready()
    return server


@pytest.fixture(scope="session")
def text_classifier(servers) -> Server:
    return _ready(servers, "text-classification")


@pytest.fixture(scope="session")
def image_classifier(servers) -> Server:
    return _ready(servers, "image-classification")


@pytest.fixture(scope="session")
def detector(servers) -> Server:
    return _ready(servers, "object-detection")


@pytest.fixture(scope="session")
def generator(servers) -> Server:
    return _ready(servers, "text-generation")
