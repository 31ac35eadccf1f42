"""The server's lifecycle over real HTTP and gRPC: drain on SIGTERM, load once, drop abandoned work, a sick device.

Each test starts the real predictor (``tests.predictor.lifecycle_faults``: production code with a device
that misbehaves when a prompt asks it to) on loopback ports. docs/lifecycle.md describes what is tested here.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.predictor.harness import Server, stop_server, v2_body
from tests.predictor.lifecycle_faults import launch
from tests.servers import poll_until

GRPC_CLIENT = Path(__file__).with_name("lifecycle_grpc_client.py")


# ----------------------------------------------------------------------------- helpers


def wait_until(predicate: Callable[[], bool], timeout: float = 30.0) -> bool:
    """Poll ``predicate`` (exceptions count as "not yet"); True once it holds, False after ``timeout``."""
    return poll_until(predicate, timeout, interval=0.05)


def metric(server: Server, name: str) -> float:
    """The value of one sample of the server's /metrics (the sd model's), 0 when absent."""
    text = requests.get(f"{server.http}/metrics", timeout=5).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels.get("model_name", "sd") == "sd":
                return sample.value
    return 0.0


def infer(server: Server, prompt: str, timeout: float = 120) -> requests.Response:
    return requests.post(f"{server.http}/v2/models/sd/infer", json=v2_body([prompt]), timeout=timeout)


def grpc_clients(server: Server, prompt: str, count: int, timeout_s: float = 120) -> subprocess.Popen:
    command = [sys.executable, str(GRPC_CLIENT), server.grpc, prompt, str(count), str(timeout_s)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def grpc_results(process: subprocess.Popen, timeout: float = 120) -> list[dict]:
    stdout, stderr = process.communicate(timeout=timeout)
    assert process.returncode == 0, stderr
    return json.loads(stdout.strip().splitlines()[-1])


def device_calls(server: Server) -> list[str]:
    return [line for line in server.logs().splitlines() if line.startswith("FAULT device call:")]


def open_and_abandon(server: Server, prompt: str) -> socket.socket:
    """Send a complete v2 request on a raw connection and return the socket (the caller closes it unread)."""
    body = json.dumps(v2_body([prompt])).encode()
    host, port = server.http.removeprefix("http://").split(":")
    connection = socket.create_connection((host, int(port)))
    head = (
        f"POST /v2/models/sd/infer HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    connection.sendall(head.encode() + body)
    return connection


@pytest.fixture
def gate(tmp_path) -> Path:
    """A file that does not exist yet: "hold" prompts stay on the device until the test creates it."""
    return tmp_path / "gate"


# ----------------------------------------------------------------------------- 1. drain on SIGTERM


def test_sigterm_finishes_accepted_requests_on_every_protocol_refuses_new_ones_and_exits_0(tiny_model, tmp_path, gate):
    server = launch(
        tiny_model, tmp_path, "--max_batch_size", "1", "--max_queue_size", "16", "--batch_wait_ms", "0",
        "--drain_timeout_s", "120", env={"FAULT_GATE_FILE": str(gate)},
    )  # fmt: skip
    try:
        with ThreadPoolExecutor(4) as pool:
            over_http = [pool.submit(infer, server, f"hold http {i}") for i in range(4)]
            over_grpc = grpc_clients(server, "hold grpc", 4)
            # one call on the device, seven waiting: all eight accepted
            assert wait_until(lambda: metric(server, "predictor_queue_depth") == 7), server.logs()

            server.process.send_signal(signal.SIGTERM)

            assert wait_until(lambda: requests.get(f"{server.http}/v2/models/sd/ready", timeout=2).status_code == 503,
                              timeout=5), "readiness did not turn false on SIGTERM"
            assert requests.get(f"{server.http}/v2/health/ready", timeout=2).status_code == 503
            assert requests.get(f"{server.http}/v2/health/live", timeout=2).status_code == 200
            late = infer(server, "late over http")
            assert late.status_code == 503, late.text
            assert "shutting down" in late.text and int(late.headers["Retry-After"]) > 0
            late_v1 = requests.post(f"{server.http}/v1/models/sd:predict", json={"instances": [{"prompt": "late"}]},
                                    timeout=10)
            assert late_v1.status_code == 503 and "Retry-After" in late_v1.headers
            [late_grpc] = grpc_results(grpc_clients(server, "late over grpc", 1, 30))
            assert late_grpc["status"] == "StatusCode.UNAVAILABLE" and "shutting down" in late_grpc["message"]
            assert server.process.poll() is None, "the server exited with requests in flight"

            gate.touch()
            statuses = [future.result().status_code for future in over_http]
        assert statuses == [200] * 4
        assert [r["status"] for r in grpc_results(over_grpc)] == ["OK"] * 4
        assert server.process.wait(timeout=60) == 0, server.logs()
        assert not any("late" in call for call in device_calls(server))
    finally:
        stop_server(server)


# ----------------------------------------------------------------------------- 2. one load


def test_requests_while_loading_get_503_saying_so_on_every_protocol_and_the_model_loads_once(tiny_model, tmp_path):
    loaded, load_log = tmp_path / "loaded", tmp_path / "loads.log"
    server = launch(tiny_model, tmp_path, env={"FAULT_LOAD_GATE_FILE": str(loaded), "FAULT_LOAD_LOG": str(load_log)},
                    wait_ready=False)
    try:
        assert wait_until(load_log.exists), server.logs()
        v1 = requests.post(f"{server.http}/v1/models/sd:predict", json={"instances": [{"prompt": "early"}]}, timeout=10)
        v2 = infer(server, "early", timeout=10)
        for response in (v1, v2):
            assert response.status_code == 503, response.text
            assert "loading" in response.text and int(response.headers["Retry-After"]) > 0
        [over_grpc] = grpc_results(grpc_clients(server, "early", 1, 20))
        assert over_grpc["status"] == "StatusCode.UNAVAILABLE", over_grpc
        assert "loading" in over_grpc["message"]
        assert requests.get(f"{server.http}/v2/health/ready", timeout=2).status_code == 503
        assert requests.get(f"{server.http}/v2/health/live", timeout=2).status_code == 200

        loaded.touch()
        assert wait_until(lambda: requests.get(f"{server.http}/v2/models/sd/ready", timeout=2).status_code == 200)
        assert requests.get(f"{server.http}/v2/health/ready", timeout=2).status_code == 200
        assert infer(server, "after loading").status_code == 200
        assert [r["status"] for r in grpc_results(grpc_clients(server, "after loading", 2))] == ["OK", "OK"]
        assert load_log.read_text().count("load ") == 1
    finally:
        stop_server(server)


# ----------------------------------------------------------------------------- 3. abandoned requests


def test_requests_whose_clients_left_leave_the_queue_at_once_and_never_reach_the_device(tiny_model, tmp_path, gate):
    server = launch(tiny_model, tmp_path, "--max_batch_size", "1", "--max_queue_size", "2", "--batch_wait_ms", "0",
                    env={"FAULT_GATE_FILE": str(gate)})
    try:
        with ThreadPoolExecutor(2) as pool:
            occupant = pool.submit(infer, server, "hold occupant")
            assert wait_until(lambda: any("hold occupant" in call for call in device_calls(server))), server.logs()
            abandoned = [open_and_abandon(server, f"abandoned {i}") for i in range(2)]
            assert wait_until(lambda: metric(server, "predictor_queue_depth") == 2), server.logs()
            for connection in abandoned:
                connection.shutdown(socket.SHUT_RDWR)
                connection.close()
            wait_until(lambda: metric(server, "predictor_queue_depth") == 0, timeout=10)

            fresh = pool.submit(infer, server, "fresh")
            wait_until(lambda: fresh.done() or metric(server, "predictor_queue_depth") == 1, timeout=10)
            gate.touch()
            assert fresh.result().status_code == 200, fresh.result().text
            assert occupant.result().status_code == 200
        assert metric(server, "predictor_batch_size_sum") == 2  # the occupant and the fresh request, nothing else
        assert not any("abandoned" in call for call in device_calls(server))
    finally:
        stop_server(server)


def test_grpc_requests_cancelled_by_their_deadline_leave_the_queue_and_never_reach_the_device(tiny_model, tmp_path,
                                                                                               gate):
    server = launch(tiny_model, tmp_path, "--max_batch_size", "1", "--max_queue_size", "2", "--batch_wait_ms", "0",
                    env={"FAULT_GATE_FILE": str(gate)})
    try:
        with ThreadPoolExecutor(2) as pool:
            occupant = pool.submit(infer, server, "hold occupant")
            assert wait_until(lambda: any("hold occupant" in call for call in device_calls(server))), server.logs()
            clients = grpc_clients(server, "abandoned over grpc", 2, timeout_s=10)
            assert wait_until(lambda: metric(server, "predictor_queue_depth") == 2), server.logs()
            assert {r["status"] for r in grpc_results(clients)} == {"StatusCode.DEADLINE_EXCEEDED"}
            wait_until(lambda: metric(server, "predictor_queue_depth") == 0, timeout=10)

            fresh = pool.submit(infer, server, "fresh")
            wait_until(lambda: fresh.done() or metric(server, "predictor_queue_depth") == 1, timeout=10)
            gate.touch()
            assert fresh.result().status_code == 200, fresh.result().text
            assert occupant.result().status_code == 200
        assert metric(server, "predictor_batch_size_sum") == 2
        assert not any("abandoned" in call for call in device_calls(server))
    finally:
        stop_server(server)


# ----------------------------------------------------------------------------- 4. a sick device


def _not_ready_and_not_live(server: Server) -> None:
    assert requests.get(f"{server.http}/v2/models/sd/ready", timeout=5).status_code == 503
    assert requests.get(f"{server.http}/v2/health/ready", timeout=5).status_code == 503
    live = requests.get(f"{server.http}/v2/health/live", timeout=5)
    assert live.status_code == 503, live.text
    assert metric(server, "predictor_model_ready") == 0


def test_a_device_call_past_its_deadline_fails_its_requests_readiness_and_liveness(tiny_model, tmp_path):
    server = launch(tiny_model, tmp_path, "--batch_deadline_s", "2")
    try:
        stuck = infer(server, "hang forever", timeout=60)
        assert stuck.status_code == 503, stuck.text
        assert "deadline" in stuck.text
        _not_ready_and_not_live(server)
        after = infer(server, "after the hang", timeout=10)
        assert after.status_code == 503 and "unhealthy" in after.text, after.text
        assert metric(server, "predictor_device_failures_total") == 1
    finally:
        stop_server(server)


def test_the_deadline_is_derived_from_the_warm_up_when_not_given(tiny_model, tmp_path):
    server = launch(tiny_model, tmp_path)
    try:
        assert "batch deadline derived from the warm-up" in server.logs()
        assert infer(server, "an ordinary request").status_code == 200
    finally:
        stop_server(server)


def test_an_unrecoverable_device_error_fails_readiness_and_liveness_at_once(tiny_model, tmp_path):
    server = launch(tiny_model, tmp_path)
    try:
        failed = infer(server, "device-assert please")
        assert failed.status_code == 500 and "device-side assert" in failed.text, failed.text
        _not_ready_and_not_live(server)
        after = infer(server, "after the assert", timeout=10)
        assert after.status_code == 503 and "unhealthy" in after.text, after.text
    finally:
        stop_server(server)


def test_out_of_memory_retries_the_batch_one_item_at_a_time_before_any_fails(tiny_model, tmp_path, gate):
    server = launch(tiny_model, tmp_path, "--max_batch_size", "4", "--max_queue_size", "8", "--batch_wait_ms", "0",
                    env={"FAULT_GATE_FILE": str(gate)})
    try:
        prompts = ["oom on a batch", "fine b", "fine c", "oom-always d"]
        with ThreadPoolExecutor(5) as pool:
            occupant = pool.submit(infer, server, "hold occupant")
            assert wait_until(lambda: any("hold occupant" in call for call in device_calls(server))), server.logs()
            futures = [pool.submit(infer, server, prompt) for prompt in prompts]
            assert wait_until(lambda: metric(server, "predictor_queue_depth") == 4), server.logs()
            gate.touch()
            responses = [future.result() for future in futures]
            assert occupant.result().status_code == 200
        assert [r.status_code for r in responses] == [200, 200, 200, 503], [r.text for r in responses]
        assert "out of memory" in responses[3].text
        calls = device_calls(server)
        assert any(all(p in call for p in prompts) for call in calls), calls  # they did share one call first
        assert requests.get(f"{server.http}/v2/models/sd/ready", timeout=5).status_code == 200
        assert requests.get(f"{server.http}/v2/health/live", timeout=5).status_code == 200
    finally:
        stop_server(server)


# ----------------------------------------------------------------------------- 9. repository endpoints


def test_repository_load_and_unload_are_off_by_default(tiny_model, tmp_path):
    server = launch(tiny_model, tmp_path)
    try:
        for action in ("unload", "load"):
            response = requests.post(f"{server.http}/v2/repository/models/sd/{action}", timeout=10)
            assert response.status_code == 501, response.text
            assert "--enable_repository_api" in response.text
        [over_grpc] = grpc_results(grpc_clients(server, "--unload", 1))
        assert over_grpc["status"] == "StatusCode.UNIMPLEMENTED" and "--enable_repository_api" in over_grpc["message"]
        assert requests.get(f"{server.http}/v2/health/ready", timeout=5).status_code == 200
        assert infer(server, "still here").status_code == 200
    finally:
        stop_server(server)


def test_with_the_repository_api_enabled_an_unloaded_model_makes_the_server_not_ready(tiny_model, tmp_path):
    server = launch(tiny_model, tmp_path, "--enable_repository_api", "true")
    try:
        assert requests.post(f"{server.http}/v2/repository/models/sd/unload", timeout=10).status_code == 200
        assert requests.get(f"{server.http}/v2/health/ready", timeout=5).status_code == 503
        assert infer(server, "gone", timeout=10).status_code == 404
    finally:
        stop_server(server)
