"""Unknown parameters are a 400 / INVALID_ARGUMENT naming them, on every task and protocol.

A typo (``max_token``, ``num_inference_step``) must not silently run the default. The
parameters that KServe clients themselves send (tritonclient's reserved request parameters:
``binary_data_output``, ``sequence_*``, ``priority``, ``timeout``, ``headers``; see
``tritonclient/utils/__init__.py`` ``TRITON_RESERVED_REQUEST_PARAMS``) are accepted.
"""

from __future__ import annotations

import base64

import pytest
import requests

from tests.tasks.helpers import png

# task -> (fixture, v2 input, a v1 instance, a valid parameter, its typo)
CASES = {
    "text-classification": ("text_classifier", "text", "great movie", "top_k", "topk"),
    "image-classification": ("image_classifier", "image", None, "top_k", "top_K"),
    "object-detection": ("detector", "image", None, "threshold", "treshold"),
    "text-generation": ("generator", "text_input", "once upon", "max_tokens", "max_token"),
}


def _value(task: str) -> str:
    fixture, name, text, *_ = CASES[task]
    return text if text is not None else base64.b64encode(png(32, 32)).decode()


def _v2_body(task: str, parameters: dict) -> dict:
    _, name, *_ = CASES[task]
    return {
        "inputs": [{"name": name, "datatype": "BYTES", "shape": [1], "data": [_value(task)]}],
        "parameters": parameters,
    }


@pytest.mark.parametrize("task", list(CASES))
def test_v2_unknown_parameter_is_400_naming_it_and_the_accepted_ones(task, request):
    fixture, _, _, known, typo = CASES[task]
    server = request.getfixturevalue(fixture)
    response = requests.post(
        f"{server.url}/v2/models/{server.name}/infer", json=_v2_body(task, {typo: 1}), timeout=60
    )
    assert response.status_code == 400, response.text
    assert typo in response.text and known in response.text


@pytest.mark.parametrize("task", list(CASES))
def test_v1_unknown_parameter_is_400_naming_it(task, request):
    fixture, _, _, known, typo = CASES[task]
    server = request.getfixturevalue(fixture)
    body = {"instances": [_value(task)], "parameters": {typo: 1}}
    response = requests.post(f"{server.url}/v1/models/{server.name}:predict", json=body, timeout=60)
    assert response.status_code == 400, response.text
    assert typo in response.text and known in response.text


@pytest.mark.parametrize("task", list(CASES))
def test_grpc_unknown_parameter_is_invalid_argument_and_reserved_ones_pass(task, request):
    fixture, name, text, known, typo = CASES[task]
    server = request.getfixturevalue(fixture)
    value = {"b64": base64.b64encode(png(32, 32)).decode()} if text is None else text
    tensor = {"name": name, "datatype": "BYTES", "shape": [1], "data": [value]}
    typo_call, reserved_call = server.grpc(
        [
            {"op": "infer", "inputs": [tensor], "parameters": {typo: 1}},
            # tritonclient itself adds these for sequence_id / priority / timeout arguments
            {"op": "infer", "inputs": [tensor], "priority": 1, "timeout": 60_000_000},
        ]
    )
    assert typo_call["error"]["code"] == "StatusCode.INVALID_ARGUMENT", typo_call
    assert typo in typo_call["error"]["message"] and known in typo_call["error"]["message"]
    assert "outputs" in reserved_call, reserved_call


@pytest.mark.parametrize("task", list(CASES))
def test_kserve_and_triton_reserved_parameters_are_accepted_over_rest(task, request):
    fixture, *_ = CASES[task]
    server = request.getfixturevalue(fixture)
    reserved = {"binary_data_output": False, "priority": 1, "timeout": 60_000_000}
    response = requests.post(
        f"{server.url}/v2/models/{server.name}/infer", json=_v2_body(task, reserved), timeout=60
    )
    assert response.status_code == 200, response.text
