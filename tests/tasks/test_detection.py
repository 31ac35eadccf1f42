"""Object detection served for real: boxes, labels, scores per image over v1, v2 HTTP and gRPC."""

from __future__ import annotations

import base64

import numpy as np
import requests
import tritonclient.http as httpclient

from tests.tasks.helpers import jpeg, png

LABELS = {"cat", "dog", "person"}


def _infer(server, images, parameters=None):
    body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [len(images)], "data": images}]}
    if parameters is not None:
        body["parameters"] = parameters
    return requests.post(f"{server.url}/v2/models/{server.name}/infer", json=body, timeout=30)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_metadata(detector):
    metadata = requests.get(f"{detector.url}/v2/models/{detector.name}", timeout=10).json()
    assert [output["name"] for output in metadata["outputs"]] == ["boxes", "labels", "scores", "image_index"]


def test_v2_detections_of_two_images(detector):
    sizes = [(64, 48), (20, 30)]
    response = _infer(detector, [_b64(png(w, h, i)) for i, (w, h) in enumerate(sizes)], {"threshold": 0.0, "top_k": 3})
    assert response.status_code == 200, response.text
    outputs = {output["name"]: output for output in response.json()["outputs"]}
    count = outputs["scores"]["shape"][0]
    assert count == 6  # threshold 0 keeps every detection token; top_k 3 per image
    assert outputs["boxes"]["shape"] == [count, 4] and outputs["boxes"]["datatype"] == "FP32"
    assert outputs["labels"]["shape"] == [count] and set(outputs["labels"]["data"]) <= LABELS
    assert outputs["image_index"]["datatype"] == "INT32"
    index = np.array(outputs["image_index"]["data"])
    assert list(index) == [0, 0, 0, 1, 1, 1]
    boxes = np.array(outputs["boxes"]["data"], dtype=np.float32).reshape(count, 4)
    scores = np.array(outputs["scores"]["data"])
    for image, (width, height) in enumerate(sizes):
        mine = boxes[index == image]
        assert (mine[:, 0] >= 0).all() and (mine[:, 2] <= width).all()
        assert (mine[:, 1] >= 0).all() and (mine[:, 3] <= height).all()
        assert (mine[:, 0] <= mine[:, 2]).all() and (mine[:, 1] <= mine[:, 3]).all()
        assert list(scores[index == image]) == sorted(scores[index == image], reverse=True)


def test_threshold_filters_and_empty_result(detector):
    response = _infer(detector, [_b64(png(32, 32, 9))], {"threshold": 1.0})
    assert response.status_code == 200, response.text
    outputs = {output["name"]: output for output in response.json()["outputs"]}
    assert outputs["boxes"]["shape"] == [0, 4]
    assert outputs["labels"]["shape"] == [0] and outputs["image_index"]["shape"] == [0]


def test_v1_predictions(detector):
    response = requests.post(
        f"{detector.url}/v1/models/{detector.name}:predict",
        json={"instances": [{"image": {"b64": _b64(jpeg(40, 40, 1))}}, _b64(png(24, 24, 2))],
              "parameters": {"threshold": 0.0, "top_k": 2}},
        timeout=30,
    )  # fmt: skip
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert [len(found) for found in predictions] == [2, 2]
    for found in predictions:
        for detection in found:
            assert detection["label"] in LABELS and 0 <= detection["score"] <= 1
            assert set(detection["box"]) == {"xmin", "ymin", "xmax", "ymax"}


def test_binary_outputs_tritonclient(detector):
    client = httpclient.InferenceServerClient(url=f"127.0.0.1:{detector.http_port}")
    tensor = httpclient.InferInput("image", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([base64.b64encode(png(30, 20, 3))], dtype=np.object_))
    outputs = [httpclient.InferRequestedOutput(name, binary_data=True) for name in ("boxes", "labels", "scores")]
    try:
        result = client.infer(detector.name, [tensor], outputs=outputs, parameters={"threshold": 0.0, "top_k": 4})
    finally:
        client.close()
    assert result.as_numpy("boxes").shape == (4, 4)
    assert result.as_numpy("scores").dtype == np.float32


def test_bad_requests_are_400(detector):
    for parameters, expected in (({"threshold": 2}, "threshold"), ({"top_k": 0}, "top_k"), ({"iou": 1}, "unknown")):
        response = _infer(detector, [_b64(png(8, 8))], parameters)
        assert response.status_code == 400 and expected in response.json()["error"], response.text
    response = _infer(detector, ["not base64 or image"])
    assert response.status_code == 400 and "not a readable image" in response.json()["error"]


def test_grpc_raw_bytes(detector):
    calls = [
        {"op": "infer", "inputs": [{"name": "image", "datatype": "BYTES", "shape": [2],
                                    "data": [{"b64": _b64(png(40, 30, 4))}, {"b64": _b64(jpeg(16, 16, 5))}]}],
         "parameters": {"threshold": 0.0, "top_k": 2}},  # a Triton double_param, which kserve's proto lacks
        {"op": "infer", "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [{"b64": _b64(b"x")}]}]},
        {"op": "infer", "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [{"b64": _b64(png(8, 8))}]}],
         "parameters": {"threshold": "1.5"}},
    ]  # fmt: skip
    ok, bad, out_of_range = detector.grpc(calls)
    assert ok["outputs"]["boxes"]["shape"] == [4, 4]
    assert ok["outputs"]["image_index"]["data"] == [0, 0, 1, 1]
    assert bad["error"]["code"] == "StatusCode.INVALID_ARGUMENT"
    assert out_of_range["error"]["code"] == "StatusCode.INVALID_ARGUMENT"
    assert "threshold must be between 0.0 and 1.0" in out_of_range["error"]["message"]
