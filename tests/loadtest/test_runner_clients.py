"""The open-loop runner and the clients, against fakes (no model): fast and deterministic enough for CI."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loadtest import v2_grpc
from loadtest.analysis import DROPPED, OK, Criteria
from loadtest.clients import EndpointError, RestClient, Target, protocol_of
from loadtest.runner import RunSettings, RunState, run_load_test
from tests.loadtest.fake_v2 import FakeV2Server

REPO = Path(__file__).resolve().parents[2]


class FakeClient:
    """In-process client: a server with ``slots`` parallel slots, each request taking ``service_s``."""

    def __init__(self, service_s=0.02, slots=4, fail_every=0, ready=True, probe_error=None):
        self.target = Target(url="http://fake:1", model="sd", timeout_s=5.0)
        self.service_s = service_s
        self.semaphore = asyncio.Semaphore(slots)
        self.fail_every = fail_every
        self.is_ready = ready
        self.probe_error = probe_error
        self.calls = 0
        self.opened = self.closed = False

    async def open(self):
        self.opened = True

    async def close(self):
        self.closed = True

    async def ready(self):
        return self.is_ready

    async def probe(self):
        if self.probe_error:
            raise EndpointError(self.probe_error)
        return "ok"

    async def infer(self, index):
        self.calls += 1
        if self.fail_every and self.calls % self.fail_every == 0:
            return "503"
        async with self.semaphore:
            await asyncio.sleep(self.service_s)
        return "ok"


def run(client, settings, criteria=None, stop_after=None):
    state = RunState()

    async def main():
        stop = asyncio.Event()
        if stop_after is not None:
            asyncio.get_running_loop().call_later(stop_after, stop.set)
        await run_load_test(client, settings, criteria or Criteria(), state, stop=stop, stream=Devnull())

    asyncio.run(main())
    return state


class Devnull:
    def write(self, text):
        pass

    def flush(self):
        pass

    def isatty(self):
        return False


def test_open_loop_stages_until_the_plan_ends():
    client = FakeClient(service_s=0.01, slots=8)
    state = run(client, RunSettings(rates=(20, 40), stage_seconds=0.5, arrival="uniform", probe_requests=0))
    stats = state.stats()
    assert [s.scheduled for s in stats] == [10, 20]
    assert all(s.ok == s.scheduled and s.error_rate == 0 for s in stats)
    assert state.stop_reason == "rate plan finished" and not state.evaluation.broken
    assert client.opened and client.closed and client.calls == 30


def test_saturated_server_is_the_breaking_point():
    # One slot of 0.1 s: capacity 10 rps. Offered 40 rps queues up: latency and throughput give out.
    client = FakeClient(service_s=0.1, slots=1)
    settings = RunSettings(rates=(4, 40, 80), stage_seconds=1.0, arrival="uniform", probe_requests=0)
    state = run(client, settings, Criteria(slo_latency_s=0.5))
    ev = state.evaluation
    assert ev.breaking_stage == 1 and ev.sustainable_stage == 0
    assert {"latency", "throughput"} <= set(ev.verdicts[1].reasons)
    assert len(state.stats()) == 2  # stopped at the breaking point: the 80 rps stage never ran
    broken = state.stats()[1]
    assert broken.achieved_rps == pytest.approx(10, rel=0.3)
    # Latency from the scheduled send time includes the queue: the last request waited ~3 s.
    assert broken.latency("max") > 2.0


def test_in_flight_cap_drops_instead_of_slowing_down():
    client = FakeClient(service_s=0.5, slots=100)
    settings = RunSettings(rates=(40,), stage_seconds=0.5, arrival="uniform", max_inflight=5, probe_requests=0)
    state = run(client, settings)
    stage = state.stages[0]
    statuses = [r.status for r in stage.records]
    assert statuses.count(OK) == 5 and statuses.count(DROPPED) == 15
    assert state.stats()[0].error_rate == pytest.approx(0.75)
    assert state.evaluation.verdicts[0].reasons[0] == "errors"


def test_server_errors_are_counted_by_status():
    client = FakeClient(service_s=0.01, slots=4, fail_every=4)
    state = run(client, RunSettings(rates=(40,), stage_seconds=0.5, arrival="uniform", probe_requests=0))
    stats = state.stats()[0]
    assert stats.errors == {"503": 5} and stats.ok == 15


def test_request_budget_stops_before_a_stage():
    settings = RunSettings(rates=(10, 20, 40), stage_seconds=0.5, arrival="uniform", max_requests=16, probe_requests=0)
    state = run(FakeClient(), settings)
    assert len(state.stats()) == 2 and "request budget" in state.stop_reason
    assert state.sent == 15


def test_time_budget_stops_before_a_stage():
    settings = RunSettings(
        rates=(10, 20, 40), stage_seconds=0.4, arrival="uniform", max_duration_s=1.0, probe_requests=0
    )
    state = run(FakeClient(), settings)
    assert len(state.stats()) == 2 and "time budget" in state.stop_reason


def test_stop_request_keeps_a_partial_stage():
    client = FakeClient(service_s=0.05, slots=4)
    settings = RunSettings(rates=(10, 20), stage_seconds=2.0, arrival="uniform", probe_requests=0)
    started = time.monotonic()
    state = run(client, settings, stop_after=0.7)
    assert time.monotonic() - started < 2.5
    assert state.interrupted and state.stop_reason == "interrupted"
    (stats,) = state.stats()
    assert not stats.complete and 0.5 < stats.duration_s < 1.0 and stats.ok >= 5
    assert state.evaluation.breaking_stage is None and state.evaluation.sustainable_stage is None


def test_endpoint_not_ready_or_failing_probe_is_an_error():
    with pytest.raises(EndpointError, match="not ready"):
        run(FakeClient(ready=False), RunSettings(rates=(1,), stage_seconds=0.1, ready_timeout_s=0.1))
    with pytest.raises(EndpointError, match="bad request"):
        run(FakeClient(probe_error="bad request"), RunSettings(rates=(1,), stage_seconds=0.1))


def test_run_settings_validation():
    for bad in ({"rates": ()}, {"arrival": "bursty"}, {"stage_seconds": 0}, {"max_inflight": 0}):
        with pytest.raises(ValueError):
            RunSettings(**{"rates": (1,), **bad})


# --------------------------------------------------------------------------- clients


def test_protocol_from_the_url_scheme():
    assert protocol_of("http://a:1") == "rest" and protocol_of("HTTPS://a") == "rest"
    assert protocol_of("grpc://a:1") == "grpc" and protocol_of("grpcs://a:443") == "grpc"
    with pytest.raises(ValueError):
        protocol_of("a:1")


@pytest.fixture
def fake_server():
    server = FakeV2Server(service_s=0.02, slots=2).start()
    yield server
    server.stop()


def test_rest_client_sends_the_host_header_and_reads_statuses(fake_server):
    async def main():
        client = RestClient(
            Target(
                url=fake_server.url,
                model="sd",
                host="sd.sd21.example.com",
                headers={"X-Test": "1"},
                parameters={"num_inference_steps": 2},
            )
        )
        await client.open()
        try:
            assert await client.ready()
            assert await client.probe() == "ok"
            assert await client.infer(0) == "ok"
        finally:
            await client.close()
        other = RestClient(Target(url=fake_server.url, model="other"))
        await other.open()
        try:
            assert not await other.ready()
            assert await other.infer(0) == "404"
            with pytest.raises(EndpointError, match="404"):
                await other.probe()
        finally:
            await other.close()

    asyncio.run(main())
    assert fake_server.hosts[:2] == ["sd.sd21.example.com"] * 2


def test_rest_client_reports_connection_failures():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed once the block ends: nothing listens

    async def main():
        client = RestClient(Target(url=f"http://127.0.0.1:{port}", model="sd", timeout_s=2))
        await client.open()
        try:
            assert await client.infer(0) == "connect-error"
            assert not await client.ready()
        finally:
            await client.close()

    asyncio.run(main())


def test_command_line_against_a_saturating_server_with_a_host_header(tmp_path):
    # 1 slot x 0.1 s: 10 requests/s at most, 4 queued at most, then 503.
    server = FakeV2Server(service_s=0.1, slots=1, max_queue=4).start()
    try:
        out = tmp_path / "out"
        command = [
            sys.executable,
            "-m",
            "loadtest",
            "--url",
            server.url,
            "--host",
            "sd.example.com",
            "--rates",
            "2,5,30",
            "--stage-seconds",
            "1.5",
            "--arrival",
            "uniform",
            "--slo",
            "2",
            "--unit",
            "sd21-g5-cuda",
            "--out",
            str(out),
        ]
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=90)
    finally:
        server.stop()
    assert done.returncode == 0, done.stderr
    result = json.loads((out / "result.json").read_text())
    assert result["breaking_point"]["found"] and result["breaking_point"]["stage"] == 2
    assert "503" in result["stages"][2]["errors"]
    assert result["unit"]["name"] == "sd21-g5-cuda" and result["unit"]["max_throughput"] == pytest.approx(5, rel=0.2)
    assert (out / "result.png").read_bytes().startswith(b"\x89PNG")
    assert len((out / "requests.csv").read_text().splitlines()) == 1 + 3 + 8 + 45
    assert set(server.hosts) == {"sd.example.com"}
    assert "stage 3: offered" in done.stderr
    assert "breaking point: stage 3" in done.stdout


def test_ctrl_c_writes_what_it_has(tmp_path):
    server = FakeV2Server(service_s=0.02, slots=2).start()
    try:
        out = tmp_path / "out"
        command = [
            sys.executable,
            "-m",
            "loadtest",
            "run",
            "--url",
            server.url,
            "--rates",
            "5,10",
            "--stage-seconds",
            "3",
            "--out",
            str(out),
            "--progress-interval",
            "0.2",
        ]
        process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while server.infer_count < 8 and time.monotonic() < deadline:  # the first stage is running
            time.sleep(0.1)
        time.sleep(0.5)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
        server.stop()
    assert process.returncode == 130, stderr
    result = json.loads((out / "result.json").read_text())
    assert result["interrupted"] and result["stop_reason"] == "interrupted"
    assert result["stages"] and not result["stages"][-1]["complete"]
    assert "stopping" in stderr and "interrupted" in stdout


def test_bad_arguments_are_usage_errors():
    done = subprocess.run(
        [sys.executable, "-m", "loadtest", "--url", "ftp://x", "--rates", "1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "unsupported URL" in done.stderr


def test_unreachable_endpoint_fails_fast_without_results(tmp_path):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "out"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "loadtest",
            "--url",
            f"http://127.0.0.1:{port}",
            "--rates",
            "1",
            "--ready-timeout",
            "1",
            "--out",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "is not ready" in done.stderr and not out.exists()


# --------------------------------------------------------------------------- gRPC messages


def test_grpc_messages_round_trip():
    raw = v2_grpc.infer_request(
        "sd", ["a cat", "ü"], {"num_inference_steps": 2, "guidance_scale": 7.5, "flag": True, "name": "x"}
    )
    request = v2_grpc.messages()["ModelInferRequest"].FromString(raw)
    assert request.model_name == "sd" and list(request.inputs[0].shape) == [2]
    assert v2_grpc.deserialize_bytes_tensor(request.raw_input_contents[0]) == [b"a cat", "ü".encode()]
    params = request.parameters
    assert params["num_inference_steps"].int64_param == 2 and params["guidance_scale"].double_param == 7.5
    assert params["flag"].bool_param and params["name"].string_param == "x"

    response = v2_grpc.messages()["ModelInferResponse"](model_name="sd")
    response.outputs.add(name="image", datatype="BYTES").shape.append(1)
    response.raw_output_contents.append(v2_grpc.serialize_bytes_tensor([b"png"]))
    assert v2_grpc.output_tensor(response.SerializeToString(), "image") == [b"png"]
    assert v2_grpc.output_tensor(response.SerializeToString(), "other") is None
    with pytest.raises(ValueError):
        v2_grpc.deserialize_bytes_tensor(b"\x05\x00\x00\x00ab")


def test_grpc_messages_match_the_published_proto_and_load_beside_kserve():
    """Wire-compatible with tritonclient's generated stubs, and importable in a process that has kserve."""
    script = """
import sys
which = sys.argv[1]
if which == "triton":
    from tritonclient.grpc import service_pb2
    from loadtest import v2_grpc
    raw = v2_grpc.infer_request("sd", ["a cat"], {"num_inference_steps": 2, "guidance_scale": 7.5})
    request = service_pb2.ModelInferRequest.FromString(raw)
    assert request.model_name == "sd" and request.inputs[0].datatype == "BYTES"
    assert request.parameters["guidance_scale"].double_param == 7.5
    response = service_pb2.ModelInferResponse(model_name="sd")
    out = response.outputs.add(name="image", datatype="BYTES")
    out.shape.append(1)
    response.raw_output_contents.append(v2_grpc.serialize_bytes_tensor([b"x"]))
    assert v2_grpc.output_tensor(response.SerializeToString(), "image") == [b"x"]
else:
    import kserve.protocol.grpc.grpc_predict_v2_pb2 as pb
    from loadtest import v2_grpc
    raw = v2_grpc.infer_request("sd", ["a cat"], {"num_inference_steps": 2})
    assert pb.ModelInferRequest.FromString(raw).parameters["num_inference_steps"].int64_param == 2
print("ok")
"""
    for which in ("triton", "kserve"):
        done = subprocess.run(
            [sys.executable, "-c", script, which], cwd=REPO, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0 and done.stdout.strip() == "ok", (which, done.stderr[-2000:])
