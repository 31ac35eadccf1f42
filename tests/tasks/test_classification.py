"""Text and image classification served for real: v1 and v2 over HTTP, v2 over gRPC, 400s."""

from __future__ import annotations

import base64
from types import SimpleNamespace

import numpy as np
import pytest
import requests
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.servers import start_predictor
from tests.tasks.helpers import jpeg, png

TEXT_LABELS = {"NEGATIVE", "POSITIVE"}
IMAGE_LABELS = {"cat", "dog", "bird"}


def _infer(server, inputs, parameters=None):
    body = {"inputs": inputs}
    if parameters is not None:
        body["parameters"] = parameters
    return requests.post(f"{server.url}/v2/models/{server.name}/infer", json=body, timeout=30)


def _outputs(response) -> dict:
    assert response.status_code == 200, response.text
    return {output["name"]: output for output in response.json()["outputs"]}


# ----------------------------------------------------------------------------- text


def test_text_metadata(text_classifier):
    metadata = requests.get(f"{text_classifier.url}/v2/models/{text_classifier.name}", timeout=10).json()
    assert metadata["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert [output["name"] for output in metadata["outputs"]] == ["labels", "scores"]


def test_text_v2_json_top_k(text_classifier):
    texts = ["hello world", "a very bad movie", "good"]
    outputs = _outputs(
        _infer(text_classifier, [{"name": "text", "datatype": "BYTES", "shape": [3], "data": texts}], {"top_k": 2})
    )
    assert outputs["labels"]["shape"] == [3, 2] and outputs["scores"]["shape"] == [3, 2]
    labels = np.array(outputs["labels"]["data"]).reshape(3, 2)
    scores = np.array(outputs["scores"]["data"], dtype=np.float32).reshape(3, 2)
    for row_labels, row_scores in zip(labels, scores, strict=True):
        assert set(row_labels) == TEXT_LABELS
        assert row_scores[0] >= row_scores[1]
        assert row_scores.sum() == pytest.approx(1.0, abs=1e-4)  # softmax over both labels


def test_text_batched_equals_single(text_classifier):
    """One request of three texts scores each text as three single requests do."""
    texts = ["hello world", "not good", "awful"]
    batched = _outputs(_infer(text_classifier, [{"name": "text", "datatype": "BYTES", "shape": [3], "data": texts}]))
    assert batched["labels"]["shape"] == [3, 1]
    for index, text in enumerate(texts):
        single = _outputs(
            _infer(text_classifier, [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [text]}])
        )
        assert single["labels"]["data"][0] == batched["labels"]["data"][index]
        assert single["scores"]["data"][0] == pytest.approx(batched["scores"]["data"][index], abs=1e-4)


def test_text_v2_binary_tritonclient(text_classifier):
    client = httpclient.InferenceServerClient(url=f"127.0.0.1:{text_classifier.http_port}")
    tensor = httpclient.InferInput("text", [2], "BYTES")
    tensor.set_data_from_numpy(np.array([b"hello", "grüße".encode()], dtype=np.object_), binary_data=True)
    outputs = [httpclient.InferRequestedOutput(name, binary_data=True) for name in ("labels", "scores")]
    try:
        result = client.infer(text_classifier.name, [tensor], outputs=outputs, parameters={"top_k": 1})
    finally:
        client.close()
    assert result.as_numpy("labels").shape == (2, 1)
    assert {label.decode() for label in result.as_numpy("labels").reshape(-1)} <= TEXT_LABELS
    assert result.as_numpy("scores").dtype == np.float32


def test_text_v1(text_classifier):
    response = requests.post(
        f"{text_classifier.url}/v1/models/{text_classifier.name}:predict",
        json={"instances": ["hello world", {"text": "bad"}], "parameters": {"top_k": 2}},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert len(predictions) == 2
    for prediction in predictions:
        assert set(prediction["labels"]) == TEXT_LABELS and len(prediction["scores"]) == 2


@pytest.mark.parametrize(
    ("inputs", "parameters", "expected"),
    [
        (
            [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["hi"]}],
            {"top_k": 3},
            "top_k must be between 1",
        ),
        ([{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["hi"]}], {"top_k": "x"}, "top_k"),
        ([{"name": "text", "datatype": "BYTES", "shape": [1], "data": [" "]}], None, "is empty"),
        ([{"name": "prompt", "datatype": "BYTES", "shape": [1], "data": ["hi"]}], None, "unknown input"),
        ([{"name": "text", "datatype": "INT32", "shape": [1], "data": [1]}], None, "must have datatype BYTES"),
        ([{"name": "text", "datatype": "BYTES", "shape": [5], "data": ["a"] * 5}], None, "batch limit"),
        (
            [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["hi"]}],
            {"temperature": 1},
            "unknown parameter",
        ),
    ],
)
def test_text_bad_v2_is_400(text_classifier, inputs, parameters, expected):
    response = _infer(text_classifier, inputs, parameters)
    assert response.status_code == 400, response.text
    assert expected in response.json()["error"]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"instances": []}, "at least one instance"),
        ({"instances": [{"txt": "hi"}]}, "must be a string"),
        ({"instances": [3]}, "must be a string"),
        ({"instances": ["hi"], "parameters": {"top_k": 0}}, "top_k"),
    ],
)
def test_text_bad_v1_is_400(text_classifier, body, expected):
    response = requests.post(f"{text_classifier.url}/v1/models/{text_classifier.name}:predict", json=body, timeout=10)
    assert response.status_code == 400, response.text
    assert expected in response.json()["error"]


def test_text_grpc(text_classifier):
    calls = [
        {"op": "metadata"},
        {
            "op": "infer",
            "inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": ["hello", "world"]}],
            "parameters": {"top_k": 2},
        },
        {"op": "infer", "inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["hi"]}],
         "parameters": {"top_k": 9}},
    ]  # fmt: skip
    metadata, ok, bad = text_classifier.grpc(calls)
    assert metadata["metadata"]["inputs"][0]["name"] == "text"
    assert ok["outputs"]["labels"]["shape"] == [2, 2]
    assert set(ok["outputs"]["labels"]["data"]) == TEXT_LABELS
    assert ok["outputs"]["scores"]["datatype"] == "FP32"
    assert bad["error"]["code"] == "StatusCode.INVALID_ARGUMENT"
    assert "top_k" in bad["error"]["message"]


# ----------------------------------------------------------------------------- images


def test_image_v2_base64_json(image_classifier):
    images = [base64.b64encode(png(64, 48, 1)).decode(), base64.b64encode(jpeg(20, 30, 2)).decode()]
    outputs = _outputs(
        _infer(image_classifier, [{"name": "image", "datatype": "BYTES", "shape": [2], "data": images}], {"top_k": 3})
    )
    assert outputs["labels"]["shape"] == [2, 3]
    labels = np.array(outputs["labels"]["data"]).reshape(2, 3)
    scores = np.array(outputs["scores"]["data"], dtype=np.float32).reshape(2, 3)
    for row_labels, row_scores in zip(labels, scores, strict=True):
        assert set(row_labels) == IMAGE_LABELS
        assert list(row_scores) == sorted(row_scores, reverse=True)
        assert row_scores.sum() == pytest.approx(1.0, abs=1e-4)


def test_image_v2_binary_extension_base64(image_classifier):
    """Over REST, kserve 0.21 turns binary BYTES into JSON strings (UTF-8 only): send base64 there too."""
    client = httpclient.InferenceServerClient(url=f"127.0.0.1:{image_classifier.http_port}")
    tensor = httpclient.InferInput("image", [2], "BYTES")
    images = [base64.b64encode(png(32, 32, 3)), base64.b64encode(jpeg(40, 40, 4))]
    tensor.set_data_from_numpy(np.array(images, dtype=np.object_), binary_data=True)
    try:
        result = client.infer(image_classifier.name, [tensor])
    finally:
        client.close()
    assert result.as_numpy("labels").shape == (2, 1)
    assert {label.decode() for label in result.as_numpy("labels").reshape(-1)} <= IMAGE_LABELS


def test_image_v1_forms(image_classifier):
    encoded = base64.b64encode(png(50, 50, 5)).decode()
    instances = [{"image": {"b64": encoded}}, {"b64": encoded}, encoded, {"image": encoded}]
    response = requests.post(
        f"{image_classifier.url}/v1/models/{image_classifier.name}:predict", json={"instances": instances}, timeout=30
    )
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert len(predictions) == 4
    assert all(p == predictions[0] for p in predictions)  # the same image four ways


def test_image_bad_inputs_are_400(image_classifier):
    not_image = base64.b64encode(b"definitely not an image").decode()
    response = _infer(image_classifier, [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [not_image]}])
    assert response.status_code == 400 and "not a readable image" in response.json()["error"]
    truncated = base64.b64encode(png(64, 64, 6)[:80]).decode()  # the header is fine, the pixels are cut off
    response = _infer(image_classifier, [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [truncated]}])
    assert response.status_code == 400 and "could not be decoded" in response.json()["error"]
    response = requests.post(
        f"{image_classifier.url}/v1/models/{image_classifier.name}:predict",
        json={"instances": [{"img": 1}]},
        timeout=10,
    )
    assert response.status_code == 400


def test_image_grpc(image_classifier):
    raw = base64.b64encode(png(30, 30, 7)).decode()
    calls = [
        {"op": "infer", "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [{"b64": raw}]}],
         "parameters": {"top_k": 2}},
        {"op": "infer", "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["nope"]}]},
    ]  # fmt: skip
    ok, bad = image_classifier.grpc(calls)
    assert ok["outputs"]["labels"]["shape"] == [1, 2]
    assert set(ok["outputs"]["labels"]["data"]) <= IMAGE_LABELS
    assert bad["error"]["code"] == "StatusCode.INVALID_ARGUMENT"


def test_tritonclient_error_surface(image_classifier):
    client = httpclient.InferenceServerClient(url=f"127.0.0.1:{image_classifier.http_port}")
    tensor = httpclient.InferInput("image", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([b"junk"], dtype=np.object_))
    try:
        with pytest.raises(InferenceServerException, match="not a readable image"):
            client.infer(image_classifier.name, [tensor])
    finally:
        client.close()


# ----------------------------------------------------------------------------- default batch size


def test_a_text_classifier_batches_32_texts_unless_told_otherwise(tiny_models, tmp_path):
    """Without --max_batch_size, a text classifier takes the task's 32 texts per device call (and
    request), not text-to-image's 4: short texts batch for almost nothing, so under concurrent load
    one call serves many clients. --max_batch_size still sets it (the suite's servers pass 4)."""
    predictor = start_predictor(
        tiny_models["text-classification"], tmp_path / "server.log", "--device", "cpu", name="sentiment",
        env={"OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    try:
        server = SimpleNamespace(url=predictor.http, name="sentiment")
        texts = [f"text number {index}" for index in range(33)]
        full = _outputs(_infer(server, [{"name": "text", "datatype": "BYTES", "shape": [32], "data": texts[:32]}]))
        assert full["labels"]["shape"] == [32, 1]
        over = _infer(server, [{"name": "text", "datatype": "BYTES", "shape": [33], "data": texts}])
        assert over.status_code == 400 and "batch limit of 32" in over.json()["error"], over.text
        log = (tmp_path / "server.log").read_text()
        assert "max_batch_size: 32 (the task's default" in log
        assert "event loop: uvloop (--event_loop auto)" in log  # kserve's default, applied (test_event_loop.py)
    finally:
        predictor.stop(grace=8)
