"""Two real predictor servers on a tiny model (units cpu-a and cpu-b), a KServe-like splitter in
front of them, and the playground as a subprocess configured with all three plus a closed port."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.playground.splitter import Splitter, Step
from tests.predictor.conftest import tiny_model  # noqa: F401 - the session fixture, shared
from tests.predictor.harness import Server, start_server
from tests.servers import ServerProcess, free_port, start_process, stop_all

UNITS = ("cpu-a", "cpu-b")


@dataclass
class Playground(ServerProcess):
    """``python -m playground`` (tests/servers.py) at ``url``; ``down_url`` is an endpoint it
    was configured with where nothing listens."""

    url: str = ""
    down_url: str = ""


@pytest.fixture(scope="session")
def units(tiny_model, tmp_path_factory) -> Iterator[dict[str, Server]]:  # noqa: F811
    """One predictor per unit; PREDICTOR_UNIT names it the way a Deployment's env would."""
    logs = tmp_path_factory.mktemp("predictor-logs")
    servers: dict[str, Server] = {}
    try:
        for unit in UNITS:
            servers[unit] = start_server(
                tiny_model, logs, "--default_steps", "2", "--max_height", "256", "--max_width", "256",
                env={"PREDICTOR_UNIT": unit},
            )
        yield servers
    finally:
        stop_all(servers.values())


@pytest.fixture(scope="session")
def splitter(units) -> Iterator[Splitter]:
    steps = [Step(f"{units[unit].http}/v1/models/sd:predict", 50) for unit in UNITS]
    with Splitter(steps) as instance:
        yield instance


def start_playground(specs: list[str], log_dir: Path, *extra: str, down_url: str = "") -> Playground:
    """``python -m playground`` as a subprocess on a free loopback port, once /healthz answers."""
    port = free_port()
    command = [sys.executable, "-m", "playground", "--port", str(port), *extra]
    for spec in specs:
        command += ["--endpoint", spec]
    log = log_dir / f"playground-{port}.log"
    url = f"http://127.0.0.1:{port}"
    instance = start_process(command, log, name="playground", kind=Playground, url=url, down_url=down_url)
    instance.wait_http(f"{instance.url}/healthz", timeout=60)
    return instance


def stop_playground(instance: Playground) -> None:
    instance.stop()


@pytest.fixture(scope="session")
def playground(units, splitter, tmp_path_factory) -> Iterator[Playground]:
    down_url = f"http://127.0.0.1:{free_port()}/v2/models/sd"  # nothing listens there
    specs = [
        f"cpu-a={units['cpu-a'].http}/v2/models/sd",
        f"cpu-b={units['cpu-b'].http}/v2/models/sd",
        f"router={splitter.url}",
        f"down={down_url}",
    ]
    extra = ("--timeout", "120", "--max_requests", "40", "--default_steps", "2", "--default_size", "64")
    instance = start_playground(specs, tmp_path_factory.mktemp("playground-logs"), *extra, down_url=down_url)
    with instance:
        yield instance
