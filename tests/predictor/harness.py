"""Test harness: start the real predictor as a subprocess on free loopback ports, and request helpers."""

from __future__ import annotations

import base64
import io
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    process: subprocess.Popen
    http: str
    grpc: str
    log: Path

    def logs(self) -> str:
        return self.log.read_text(errors="replace")


def start_server(
    model_dir: Path,
    log_dir: Path,
    *extra: str,
    name: str = "sd",
    timeout: float = 90,
    env: dict[str, str] | None = None,
) -> Server:
    """``env`` adds to (or overrides) this process's environment for the server."""
    http_port, grpc_port = free_port(), free_port()
    log = log_dir / f"server-{http_port}.log"
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"),
        **(env or {}),
    }
    command = [
        sys.executable,
        "-m",
        "predictor",
        "--model_name",
        name,
        "--model_dir",
        str(model_dir),
        "--http_port",
        str(http_port),
        "--grpc_port",
        str(grpc_port),
        "--enable_latency_logging",
        "false",
        *extra,
    ]
    with open(log, "wb") as sink:
        process = subprocess.Popen(command, cwd=REPO, stdout=sink, stderr=subprocess.STDOUT, env=env)
    server = Server(process, f"http://127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}", log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{server.logs()}")
        try:
            if requests.get(f"{server.http}/v2/models/{name}/ready", timeout=1).json().get("ready"):
                return server
        except (requests.ConnectionError, requests.Timeout, ValueError):
            pass
        time.sleep(0.2)
    stop_server(server)
    raise RuntimeError(f"server not ready after {timeout}s:\n{server.logs()}")


def stop_server(server: Server) -> None:
    if server.process.poll() is None:
        server.process.terminate()
        try:
            server.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()


def decode_png(encoded: str | bytes):
    from PIL import Image

    image = Image.open(io.BytesIO(base64.b64decode(encoded)))
    image.load()
    return image


def v2_body(prompts, parameters=None, negative=None, request_id=None) -> dict:
    body: dict = {"inputs": [{"name": "prompt", "datatype": "BYTES", "shape": [len(prompts)], "data": prompts}]}
    if negative is not None:
        body["inputs"].append(
            {"name": "negative_prompt", "datatype": "BYTES", "shape": [len(negative)], "data": negative}
        )
    if parameters:
        body["parameters"] = parameters
    if request_id:
        body["id"] = request_id
    return body
