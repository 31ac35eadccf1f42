"""Every answer says which deployment unit and which device produced it.

Through KServe's InferenceGraph router a client cannot tell otherwise: the router returns only the
chosen unit's body and status code, never its headers (kserve cmd/router/main.go, ``callService``
reads ``resp.Body`` and ``graphHandler`` writes it with a fresh header set). So the predictor puts
``unit``, ``device`` and ``device_name`` in the body: the v2 response's ``parameters`` (REST and
gRPC), and a ``parameters`` object beside v1's ``predictions``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.predictor.harness import Server, start_server, stop_server, v2_body

CLIENT = Path(__file__).with_name("grpc_client.py")
TINY = {"num_inference_steps": 2, "height": 32, "width": 32}


@pytest.fixture(scope="module")
def named_unit(tiny_model, tmp_path_factory) -> Iterator[Server]:
    """A server whose unit name is set by the environment, as a Deployment would set it."""
    instance = start_server(
        tiny_model, tmp_path_factory.mktemp("logs"), "--default_steps", "2", env={"PREDICTOR_UNIT": "sd21-cpu-a"}
    )
    yield instance
    stop_server(instance)


def test_v2_answer_names_the_unit_from_the_environment_and_the_device(named_unit):
    response = requests.post(f"{named_unit.http}/v2/models/sd/infer", json=v2_body(["a kite"], TINY), timeout=60)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_name"] == "sd"
    assert body["parameters"]["unit"] == "sd21-cpu-a"
    assert body["parameters"]["device"] == "cpu"
    assert body["parameters"]["device_name"]  # e.g. "x86_64 x2": what the device probe reported


def test_v1_answer_carries_the_same_parameters_beside_the_predictions(named_unit):
    body = {"instances": [{"prompt": "a kite", "num_inference_steps": 2, "height": 32, "width": 32}]}
    response = requests.post(f"{named_unit.http}/v1/models/sd:predict", json=body, timeout=60)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert len(answer["predictions"]) == 1 and answer["predictions"][0]["image"]
    assert answer["parameters"]["unit"] == "sd21-cpu-a"
    assert answer["parameters"]["device"] == "cpu"


def test_without_a_unit_in_the_environment_the_unit_is_the_model_name(server):
    """In the cluster the runtime passes --model_name={{.Name}}: the InferenceService, i.e. the unit."""
    response = requests.post(f"{server.http}/v2/models/sd/infer", json=v2_body(["a kite"], TINY), timeout=60)
    assert response.json()["parameters"]["unit"] == "sd"


def test_grpc_answer_carries_the_unit_and_device_as_string_parameters(named_unit):
    completed = subprocess.run(
        [sys.executable, str(CLIENT), named_unit.grpc, "served_by"], capture_output=True, text=True, timeout=180
    )
    assert completed.returncode == 0, completed.stderr
    parameters = json.loads(completed.stdout.strip().splitlines()[-1])["parameters"]
    assert parameters["unit"] == "sd21-cpu-a" and parameters["device"] == "cpu"
