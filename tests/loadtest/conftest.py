"""Fixtures: the real predictor serving a tiny model, started as a subprocess on free loopback ports."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 180


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class TinyServer:
    process: subprocess.Popen
    http_url: str
    grpc_url: str
    log: Path

    def metric(self, name: str) -> float:
        """Sum of a Prometheus sample over its label sets, read from /metrics."""
        with urllib.request.urlopen(f"{self.http_url}/metrics", timeout=10) as response:
            text = response.read().decode()
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(name + "{") or line.startswith(name + " ")
        )


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/v2/models/sd/ready", timeout=2) as response:
            return b'"ready":true' in response.read().replace(b" ", b"")
    except OSError:
        return False


@pytest.fixture(scope="module")
def tiny_server(tmp_path_factory) -> Iterator[TinyServer]:
    from modelbuild.tiny import build_tiny_sd

    model = build_tiny_sd(tmp_path_factory.mktemp("tiny-sd"))
    http_port, grpc_port = free_port(), free_port()
    log = tmp_path_factory.mktemp("logs") / "server.log"
    command = [
        sys.executable,
        "-m",
        "predictor",
        "--model_name",
        "sd",
        "--model_dir",
        str(model),
        "--http_port",
        str(http_port),
        "--grpc_port",
        str(grpc_port),
        "--default_steps",
        "2",
        "--max_batch_size",
        "4",
        "--enable_latency_logging",
        "false",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    with open(log, "wb") as sink:
        process = subprocess.Popen(command, cwd=REPO, stdout=sink, stderr=subprocess.STDOUT, env=env)
    server = TinyServer(process, f"http://127.0.0.1:{http_port}", f"grpc://127.0.0.1:{grpc_port}", log)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not _ready(server.http_url):
            if process.poll() is not None:
                pytest.fail(f"server exited with {process.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"server not ready after {READY_TIMEOUT_S}s:\n{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.3)
        yield server
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
