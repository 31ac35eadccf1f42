"""Real servers for tests: one way to start, wait for, and stop them.

Every suite that runs a server as a subprocess (the predictor, the playground, Prometheus, the
traffic controller, llama.cpp/vLLM text servers) or as a thread in the test process (fake APIs,
exporters, routers) uses this module:

* :func:`free_port` - a free loopback port;
* :func:`start_process` - a subprocess with its output in a log file, as a :class:`ServerProcess`
  that waits for readiness (:meth:`ServerProcess.wait_until`, :meth:`ServerProcess.wait_http`)
  and stops with SIGTERM, then SIGKILL after a grace period (:meth:`ServerProcess.stop`,
  :func:`stop_all`, or ``with``);
* :func:`start_predictor` - ``python -m predictor`` (or a test entry point wrapping it) on free
  ports, as a :class:`Predictor`;
* :class:`ThreadedHTTPServer` - an ``http.server`` handler served from a thread on loopback.

A server that exits or is not ready by the deadline is killed and raises :class:`ServerNotReady`,
whose message names the server and what was awaited, and ends with the tail of the server's log.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self, TypeVar

import requests

REPO = Path(__file__).resolve().parents[1]
LOG_TAIL_CHARS = 6000
# What a readiness check may raise while the server is still coming up: "not yet".
NOT_YET = (requests.RequestException, OSError, ValueError, KeyError)


class ServerNotReady(RuntimeError):
    """A server exited, or was not ready in time; the message ends with its log tail."""


def free_port() -> int:
    """A loopback port nothing listens on right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def poll_until(check: Callable[[], object], timeout: float, interval: float = 0.2) -> bool:
    """Call ``check`` until it returns something true (True) or ``timeout`` passes (False);
    the exceptions in :data:`NOT_YET` count as "not yet"."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return True
        except NOT_YET:
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


@dataclass
class ServerProcess:
    """A server subprocess whose stdout and stderr go to ``log``."""

    process: subprocess.Popen
    log: Path
    name: str

    def logs(self) -> str:
        return self.log.read_text(errors="replace")

    def log_tail(self, chars: int = LOG_TAIL_CHARS) -> str:
        return self.logs()[-chars:]

    def wait_until(self, check: Callable[[], object], what: str, timeout: float, interval: float = 0.2) -> None:
        """Wait until ``check()`` is true. If the process exits first or ``timeout`` passes, kill it
        and raise :class:`ServerNotReady` with its log tail. Exceptions in :data:`NOT_YET` mean "not yet"."""

        def done() -> bool:
            if self.process.poll() is not None:
                raise ServerNotReady(self._failure(f"{what}: exited with {self.process.returncode}"))
            return bool(check())

        if not poll_until(done, timeout, interval):
            self.kill()
            raise ServerNotReady(self._failure(f"{what}: not after {timeout:g}s"))

    def wait_http(self, url: str, timeout: float, ok: Callable[[requests.Response], bool] | None = None) -> None:
        """Wait until GET ``url`` answers 200 (and ``ok(response)`` holds, when given)."""

        def answered() -> bool:
            response = requests.get(url, timeout=2)
            return response.status_code == 200 and (ok is None or ok(response))

        self.wait_until(answered, f"GET {url}", timeout)

    def _failure(self, reason: str) -> str:
        return f"{self.name} {reason}; the end of its log ({self.log}):\n{self.log_tail()}"

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self, grace: float = 15) -> None:
        """SIGTERM, then SIGKILL if it has not exited after ``grace`` seconds."""
        stop_all([self], grace)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


Started = TypeVar("Started", bound=ServerProcess)


def stop_all(servers: Iterable[ServerProcess], grace: float = 15) -> None:
    """SIGTERM to all at once, then SIGKILL to each one still running after ``grace`` seconds."""
    servers = list(servers)
    for server in servers:
        if server.process.poll() is None:
            server.process.terminate()
    deadline = time.monotonic() + grace
    for server in servers:
        try:
            server.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(f"{server.name} did not stop on SIGTERM within {grace:g}s; killing it", file=sys.stderr)
            server.kill()


def start_process(
    command: Sequence[str],
    log: Path,
    *,
    name: str | None = None,
    env: dict[str, str | None] | None = None,
    cwd: Path = REPO,
    kind: type[Started] = ServerProcess,
    **fields: Any,
) -> Started:
    """Start ``command`` with stdout and stderr in ``log``; it is not waited for. ``env`` adds to
    this process's environment (unbuffered Python output included; a None value unsets). The
    result is a ``kind`` (a ServerProcess subclass) with its other ``fields``."""
    merged = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env = {key: value for key, value in merged.items() if value is not None}
    with open(log, "wb") as sink:
        process = subprocess.Popen(list(command), cwd=cwd, stdout=sink, stderr=subprocess.STDOUT, env=full_env)
    return kind(process, log, name or Path(command[0]).name, **fields)


@dataclass
class Predictor(ServerProcess):
    """``python -m predictor`` (or a test entry point wrapping it) serving ``model_name``."""

    http: str = ""  # http://127.0.0.1:PORT
    grpc: str = ""  # 127.0.0.1:PORT
    model_name: str = "sd"
    http_port: int = 0
    grpc_port: int = 0

    def model_ready(self) -> bool:
        response = requests.get(f"{self.http}/v2/models/{self.model_name}/ready", timeout=2)
        return response.status_code == 200 and response.json().get("ready") is True

    def wait_ready(self, timeout: float = 90) -> None:
        """Wait until the model answers ready on /v2/models/{name}/ready."""
        self.wait_until(self.model_ready, "model ready", timeout)


def start_predictor(
    model_dir: Path,
    log: Path,
    *extra: str,
    name: str = "sd",
    module: str = "predictor",
    env: dict[str, str | None] | None = None,
    wait: str | None = "model",
    timeout: float = 90,
) -> Predictor:
    """``python -m {module} --model_name {name} --model_dir {model_dir} ... {extra}`` on free
    loopback ports, logging to ``log`` (a file, or a folder to put ``server-PORT.log`` in).

    ``wait``: "model" returns once the model is ready, "live" once /v2/health/live answers,
    None at once. ``env`` adds to the environment (OMP_NUM_THREADS defaults to 2).
    """
    if wait not in ("model", "live", None):
        raise ValueError(f"wait must be 'model', 'live' or None, not {wait!r}")
    http_port, grpc_port = free_port(), free_port()
    if log.is_dir():
        log = log / f"server-{http_port}.log"
    command = [
        sys.executable, "-m", module,
        "--model_name", name, "--model_dir", str(model_dir),
        "--http_port", str(http_port), "--grpc_port", str(grpc_port),
        "--enable_latency_logging", "false",
        *extra,
    ]  # fmt: skip
    full_env = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"), **(env or {})}
    server = start_process(
        command, log, name=f"predictor {name}", env=full_env, kind=Predictor, http=f"http://127.0.0.1:{http_port}",
        grpc=f"127.0.0.1:{grpc_port}", model_name=name, http_port=http_port, grpc_port=grpc_port,
    )  # fmt: skip
    if wait == "model":
        server.wait_ready(timeout)
    elif wait == "live":
        server.wait_http(f"{server.http}/v2/health/live", timeout)
    return server


@dataclass
class ThreadedHTTPServer:
    """An ``http.server`` handler class served on a free loopback port from a daemon thread."""

    handler: type[BaseHTTPRequestHandler]
    server_class: type[ThreadingHTTPServer] = ThreadingHTTPServer
    server: ThreadingHTTPServer = field(init=False)

    def __post_init__(self) -> None:
        self.server = self.server_class(("127.0.0.1", 0), self.handler)
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> ThreadedHTTPServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
