"""Text-to-image answers that do not depend on the batch, exact seeds, and unknown parameters.

Served for real (HTTP, and gRPC through tritonclient in a subprocess) with a tiny Stable Diffusion
and a tiny Stable Diffusion XL pipeline. SDXL uses zero embeddings for "no negative prompt" but
encodes "" when another row of the call has a negative prompt, so without care an image would
change with what else is in its batch.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import requests

from tests.predictor.harness import decode_png, start_server, stop_server, v2_body

TASKS_GRPC_CLIENT = Path(__file__).resolve().parents[1] / "tasks" / "grpc_client.py"


@pytest.fixture(scope="module")
def sdxl_server(tmp_path_factory):
    from modelbuild.tiny import build_tiny_sdxl

    model_dir = build_tiny_sdxl(tmp_path_factory.mktemp("tiny-sdxl"))
    server = start_server(
        model_dir, tmp_path_factory.mktemp("sdxl-logs"),
        "--device", "cpu", "--max_batch_size", "4", "--batch_wait_ms", "50", "--default_steps", "2",
        "--max_height", "128", "--max_width", "128",
        name="sdxl",
    )  # fmt: skip
    yield server
    stop_server(server)


@pytest.fixture(params=["sd", "sdxl"])
def served(request):
    """(server, model name) for both pipeline shapes."""
    if request.param == "sd":
        return request.getfixturevalue("server"), "sd"
    return request.getfixturevalue("sdxl_server"), "sdxl"


def infer(server, name: str, body: dict) -> requests.Response:
    return requests.post(f"{server.http}/v2/models/{name}/infer", json=body, timeout=120)


def pixels(response: requests.Response) -> list[np.ndarray]:
    assert response.status_code == 200, response.text
    return [np.asarray(decode_png(data)).astype(int) for data in response.json()["outputs"][0]["data"]]


def test_image_without_negative_prompt_is_the_same_beside_one_with_a_negative_prompt(served):
    server, name = served
    (alone,) = pixels(infer(server, name, v2_body(["a cat"], {"seed": 5})))
    # One request, two rows of one batch: the first has no negative prompt, the second has one.
    batched = pixels(infer(server, name, v2_body(["a cat", "a dog"], {"seed": 5}, negative=["", "blurry"])))
    assert np.abs(batched[0] - alone).max() <= 1, np.abs(batched[0] - alone).max()  # float noise at most


def test_image_with_negative_prompt_is_the_same_beside_one_without(served):
    server, name = served
    (alone,) = pixels(infer(server, name, v2_body(["a dog"], {"seed": 6}, negative=["blurry"])))
    batched = pixels(infer(server, name, v2_body(["a cat", "a dog"], {"seed": 5}, negative=["", "blurry"])))
    assert np.abs(batched[1] - alone).max() <= 1  # same image (allowing float noise of batched kernels)


def test_a_negative_prompt_still_changes_the_sdxl_image(sdxl_server):
    (plain,) = pixels(infer(sdxl_server, "sdxl", v2_body(["a cat"], {"seed": 5})))
    (negated,) = pixels(infer(sdxl_server, "sdxl", v2_body(["a cat"], {"seed": 5}, negative=["blurry"])))
    assert np.abs(plain - negated).max() > 8


# ----------------------------------------------------------------------------- seeds


def test_seed_beyond_the_generators_32_bits_is_400_not_a_silent_collision(server):
    response = infer(server, "sd", v2_body(["a lighthouse"], {"seed": 2**33 + 12345}))
    assert response.status_code == 400, response.text
    assert "seed must be between 0 and 4294967295" in response.text


@pytest.mark.parametrize("prompts", [1, 3])
def test_the_largest_seed_the_error_message_states_is_accepted(server, prompts):
    response = infer(server, "sd", v2_body(["a lighthouse"] * prompts, {"seed": 2**63 - 2}))
    assert response.status_code == 400, response.text
    high = int(re.search(r"seed must be between 0 and (\d+)", response.text).group(1))
    assert high == 2**32 - prompts  # prompt i uses seed + i: every one in the generator's range
    assert infer(server, "sd", v2_body(["a lighthouse"] * prompts, {"seed": high})).status_code == 200
    assert infer(server, "sd", v2_body(["a lighthouse"] * prompts, {"seed": high + 1})).status_code == 400


def test_seed_above_2_53_is_not_rounded_through_a_float(server):
    response = infer(server, "sd", v2_body(["a lighthouse"], {"seed": 2.0**53 + 2}))
    assert response.status_code == 400 and "seed" in response.text


# ----------------------------------------------------------------------------- unknown parameters


def test_v2_unknown_parameter_is_400_naming_it_and_the_accepted_ones(server):
    response = infer(server, "sd", v2_body(["a cat"], {"num_inference_step": 3}))
    assert response.status_code == 400, response.text
    assert "num_inference_step'" in response.text and "num_inference_steps" in response.text


def test_v1_unknown_request_parameter_is_400(server):
    body = {"instances": [{"prompt": "a cat"}], "parameters": {"num_inference_step": 3}}
    response = requests.post(f"{server.http}/v1/models/sd:predict", json=body, timeout=120)
    assert response.status_code == 400, response.text
    assert "num_inference_step'" in response.text and "num_inference_steps" in response.text


def test_v1_unknown_instance_field_is_400_naming_the_accepted_ones(server):
    body = {"instances": [{"prompt": "a cat", "num_inference_step": 3}]}
    response = requests.post(f"{server.http}/v1/models/sd:predict", json=body, timeout=120)
    assert response.status_code == 400, response.text
    assert "num_inference_step'" in response.text and "num_inference_steps" in response.text


def test_reserved_protocol_parameters_are_accepted(server):
    response = infer(server, "sd", v2_body(["a cat"], {"binary_data_output": False, "priority": 1, "seed": 1}))
    assert response.status_code == 200, response.text


def test_grpc_unknown_parameter_is_invalid_argument(server):
    prompt = {"name": "prompt", "datatype": "BYTES", "shape": [1], "data": ["a cat"]}
    calls = [
        {"op": "infer", "inputs": [prompt], "parameters": {"num_inference_step": 3}},
        {"op": "infer", "inputs": [prompt], "parameters": {"seed": 1}, "priority": 1, "timeout": 60_000_000},
    ]
    completed = subprocess.run(
        [sys.executable, str(TASKS_GRPC_CLIENT), server.grpc, "sd"],
        input=json.dumps(calls), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    typo, reserved = json.loads(completed.stdout)
    assert typo["error"]["code"] == "StatusCode.INVALID_ARGUMENT", typo
    assert "num_inference_step'" in typo["error"]["message"]
    assert "num_inference_steps" in typo["error"]["message"]
    assert reserved["outputs"]["image"]["shape"] == [1], reserved
