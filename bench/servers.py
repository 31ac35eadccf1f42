"""The servers the benchmark measures: ``python -m predictor`` subprocesses on free loopback ports."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MODEL_NAME = "sd"
READY_INFLIGHT = 16


def free_ports(count: int) -> list[int]:
    """Distinct free loopback ports (all sockets stay open until every port is chosen)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass
class ServerSpec:
    """A server's batching flags; None leaves the flag out (the predictor's default)."""

    label: str
    max_batch_size: int | None
    batch_wait_ms: float | None


@dataclass
class Server:
    """A ``python -m predictor`` subprocess on free loopback ports."""

    spec: ServerSpec
    model_dir: str
    device: str
    dtype: str
    log_path: Path
    env: dict[str, str]
    extra_args: list[str] = field(default_factory=list)
    process: subprocess.Popen | None = None
    http_port: int = 0
    grpc_port: int = 0
    _log_file: Any = None

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "predictor",
            "--model_name",
            MODEL_NAME,
            "--model_dir",
            self.model_dir,
            "--http_port",
            str(self.http_port),
            "--grpc_port",
            str(self.grpc_port),
            "--device",
            self.device,
            "--dtype",
            self.dtype,
            *(["--max_batch_size", str(self.spec.max_batch_size)] if self.spec.max_batch_size is not None else []),
            *(["--batch_wait_ms", str(self.spec.batch_wait_ms)] if self.spec.batch_wait_ms is not None else []),
            "--max_queue_size",
            str(max(64, 2 * READY_INFLIGHT)),
            *self.extra_args,
        ]

    def start(self) -> None:
        self.http_port, self.grpc_port = free_ports(2)
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            self.command(), cwd=REPO, env=self.env, stdout=self._log_file, stderr=subprocess.STDOUT
        )

    def wait_ready(self, timeout: float) -> None:
        import requests

        deadline = time.monotonic() + timeout
        with requests.Session() as session:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"server {self.spec.label} exited with {self.process.returncode}:\n{self.log_tail()}"
                    )
                try:
                    reply = session.get(f"{self.http}/v2/models/{MODEL_NAME}/ready", timeout=2)
                    if reply.status_code == 200 and reply.json().get("ready"):
                        return
                except (requests.RequestException, ValueError):
                    pass
                time.sleep(0.1)
        raise RuntimeError(f"server {self.spec.label} not ready after {timeout:.0f}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def cpu_seconds(self) -> float:
        """CPU time (user + system, all threads) the server process has used so far (Linux /proc)."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def metrics(self) -> dict[str, float]:
        """The predictor's own Prometheus samples (``predictor_*``), summed over labels."""
        import requests

        text = requests.get(f"{self.http}/metrics", timeout=5).text
        values: dict[str, float] = {}
        for line in text.splitlines():
            match = re.match(r"^(predictor_[a-z_]+)(?:\{[^}]*\})?\s+([0-9.eE+-]+)$", line)
            if match and "_bucket" not in match.group(1):
                values[match.group(1)] = values.get(match.group(1), 0.0) + float(match.group(2))
        return values
