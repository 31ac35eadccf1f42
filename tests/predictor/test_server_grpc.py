"""The real server over gRPC (GRPCInferenceService), called by tritonclient.grpc in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.predictor.harness import start_server, stop_server, v2_body

CLIENT = Path(__file__).with_name("grpc_client.py")


def grpc_scenario(address: str, scenario: str) -> dict:
    completed = subprocess.run([sys.executable, str(CLIENT), address, scenario], capture_output=True, text=True,
                               timeout=180)
    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout.strip().splitlines()[-1])


def test_model_ready_metadata_and_infer_over_grpc(server):
    out = grpc_scenario(server.grpc, "basics")
    assert out["model_ready"] is True
    assert ["prompt", "BYTES"] in out["inputs"] and out["outputs"] == [["image", "BYTES"]]
    assert out["sizes"] == [[64, 64], [64, 64]]
    assert out["deterministic"] is True
    assert out["sized"] == [[32, 96]]


def test_bad_input_over_grpc_is_invalid_argument_and_the_server_keeps_serving(server):
    out = grpc_scenario(server.grpc, "bad_input")
    for case, needle in (("empty", "prompt[0] is empty"), ("height", "multiple of 8"),
                         ("steps", "num_inference_steps"), ("datatype", "BYTES")):
        assert out[case]["ok"] is False, case
        assert out[case]["status"] == "StatusCode.INVALID_ARGUMENT", (case, out[case])
        assert needle in out[case]["message"], (case, out[case])
    assert out["after"]["ok"] is True


@pytest.fixture(scope="module")
def tiny_queue_server(tiny_model, tmp_path_factory):
    """No batching, room for one waiting item: concurrent slow requests overflow the queue."""
    instance = start_server(tiny_model, tmp_path_factory.mktemp("logs"), "--max_batch_size", "1",
                            "--max_queue_size", "1", "--batch_wait_ms", "0", "--max_steps", "100")
    yield instance
    stop_server(instance)


def test_a_full_queue_answers_unavailable_over_grpc(tiny_queue_server):
    out = grpc_scenario(tiny_queue_server.grpc, "flood")
    assert "StatusCode.UNAVAILABLE" in out["statuses"], out
    assert "OK" in out["statuses"]
    assert any("queue full" in message for message in out["messages"])


def test_a_full_queue_answers_503_over_http_and_recovers(tiny_queue_server):
    import concurrent.futures

    body = v2_body(["slow"], {"num_inference_steps": 40})
    url = f"{tiny_queue_server.http}/v2/models/sd/infer"
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda _: requests.post(url, json=body, timeout=120).status_code, range(8)))
    assert 503 in codes and 200 in codes, codes
    assert requests.post(url, json=v2_body(["after the flood"]), timeout=60).status_code == 200
    metrics = requests.get(f"{tiny_queue_server.http}/metrics", timeout=5).text
    assert 'predictor_requests_rejected_total{device="cpu",model_name="sd",reason="queue_full"}' in metrics or (
        'reason="queue_full"' in metrics)
