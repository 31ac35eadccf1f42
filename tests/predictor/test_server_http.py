"""The real server over HTTP: KServe v2 JSON and binary, v1, metadata, readiness, errors, batching."""

from __future__ import annotations

import concurrent.futures
import time

import numpy as np
import pytest
import requests

from tests.predictor.harness import decode_png, v2_body

JSON = {"content-type": "application/json"}


def infer(server, body, **kwargs):
    return requests.post(f"{server.http}/v2/models/sd/infer", json=body, timeout=60, **kwargs)


def test_v2_json_returns_one_png_per_prompt_at_the_requested_size(server):
    response = infer(server, v2_body(["a red apple", "a blue car"], {"height": 64, "width": 128, "seed": 3}))
    assert response.status_code == 200, response.text
    (output,) = response.json()["outputs"]
    assert (output["name"], output["datatype"], output["shape"]) == ("image", "BYTES", [2])
    sizes = [decode_png(data).size for data in output["data"]]
    assert sizes == [(128, 64), (128, 64)]


def test_request_without_an_id_still_works_and_an_id_is_echoed(server):
    assert infer(server, v2_body(["x"])).json()["id"]
    assert infer(server, v2_body(["x"], request_id="req-42")).json()["id"] == "req-42"


def test_same_seed_gives_the_same_image_and_another_seed_does_not(server):
    def image(seed):
        return infer(server, v2_body(["a lighthouse"], {"seed": seed})).json()["outputs"][0]["data"][0]

    assert image(11) == image(11)
    assert image(11) != image(12)


def test_negative_prompt_changes_the_image(server):
    plain = infer(server, v2_body(["a dog"], {"seed": 5})).json()["outputs"][0]["data"][0]
    negated = infer(server, v2_body(["a dog"], {"seed": 5}, negative=["cartoon"])).json()["outputs"][0]["data"][0]
    assert plain != negated


def test_v1_predict_returns_base64_pngs(server):
    body = {"instances": [{"prompt": "a boat", "seed": 1}, {"prompt": "a tree", "height": 32, "width": 32}]}
    response = requests.post(f"{server.http}/v1/models/sd:predict", json=body, timeout=60)
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert [decode_png(p["image"]).size for p in predictions] == [(64, 64), (32, 32)]


def test_tritonclient_http_with_binary_tensors(server):
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(server.http.removeprefix("http://"))
    prompt = httpclient.InferInput("prompt", [2], "BYTES")
    prompt.set_data_from_numpy(np.array([b"a castle", b"a bridge"], dtype=np.object_), binary_data=True)
    result = client.infer("sd", [prompt], parameters={"seed": 9, "num_inference_steps": 2},
                          outputs=[httpclient.InferRequestedOutput("image", binary_data=True)])
    images = result.as_numpy("image")
    assert images.shape == (2,)
    assert all(decode_png(data).size == (64, 64) for data in images)


def test_metadata_describes_inputs_and_outputs_truthfully(server):
    metadata = requests.get(f"{server.http}/v2/models/sd", timeout=5).json()
    assert metadata["name"] == "sd"
    assert {(i["name"], i["datatype"]) for i in metadata["inputs"]} == {("prompt", "BYTES"), ("negative_prompt", "BYTES")}
    assert [(o["name"], o["datatype"], o["shape"]) for o in metadata["outputs"]] == [("image", "BYTES", [-1])]


def test_per_model_readiness_on_v1_and_v2(server):
    assert requests.get(f"{server.http}/v2/models/sd/ready", timeout=5).json()["ready"] is True
    assert requests.get(f"{server.http}/v1/models/sd", timeout=5).json()["ready"] is True
    assert requests.get(f"{server.http}/v2/models/nope/ready", timeout=5).status_code == 404


BAD_V2 = [
    ("not json", "{bad", "invalid request body"),
    ("no prompt", {"inputs": []}, "'prompt' is required"),
    ("empty prompt", v2_body([""]), "prompt[0] is empty"),
    ("wrong datatype", {"inputs": [{"name": "prompt", "datatype": "INT32", "shape": [1], "data": [1]}]}, "BYTES"),
    ("wrong shape", {"inputs": [{"name": "prompt", "datatype": "BYTES", "shape": [2], "data": ["a"]}]}, "shape"),
    ("too many prompts", v2_body(["a"] * 5), "batch limit of 4"),
    ("height not /8", v2_body(["a"], {"height": 60}), "multiple of 8"),
    ("width too large", v2_body(["a"], {"width": 512}), "between 8 and 256"),
    ("steps out of range", v2_body(["a"], {"num_inference_steps": 1000}), "num_inference_steps"),
    ("guidance out of range", v2_body(["a"], {"guidance_scale": 99}), "guidance_scale"),
]


@pytest.mark.parametrize("case, body, message", BAD_V2, ids=[case for case, _, _ in BAD_V2])
def test_bad_v2_input_is_a_400_naming_the_problem_and_the_server_keeps_serving(server, case, body, message):
    if isinstance(body, str):
        response = requests.post(f"{server.http}/v2/models/sd/infer", data=body, headers=JSON, timeout=10)
    else:
        response = infer(server, body)
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]
    assert infer(server, v2_body(["still alive"])).status_code == 200


@pytest.mark.parametrize("body, message", [
    ("{bad", "Unrecognized request format"),
    ('{"instances": []}', "at least one instance"),
    ('{"instances": [{"prompt": "a", "width": 33}]}', "multiple of 8"),
])
def test_bad_v1_input_is_a_400(server, body, message):
    response = requests.post(f"{server.http}/v1/models/sd:predict", data=body, headers=JSON, timeout=10)
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]


def test_concurrent_requests_are_batched_and_each_caller_gets_its_own_image(server):
    before = batch_counts(server)
    seeds = list(range(100, 108))
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda s: infer(server, v2_body([f"prompt {s}"], {"seed": s})), seeds))
    assert all(r.status_code == 200 for r in responses)
    batched = [r.json()["outputs"][0]["data"][0] for r in responses]
    after = batch_counts(server)
    calls, items = after[0] - before[0], after[1] - before[1]
    assert items == 8 and calls < 8, f"{items} items ran in {calls} pipeline calls"
    # Each caller got the image for its own seed: the same request alone gives the same picture.
    alone = infer(server, v2_body(["prompt 103"], {"seed": 103})).json()["outputs"][0]["data"][0]
    assert np.abs(image_array(alone) - image_array(batched[3])).max() <= 2
    assert np.abs(image_array(alone) - image_array(batched[4])).max() > 2


def test_health_and_metrics_answer_promptly_while_inferences_run(server):
    slow = v2_body(["busy"], {"num_inference_steps": 40, "height": 128, "width": 128})
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        jobs = [pool.submit(infer, server, slow) for _ in range(8)]
        time.sleep(0.3)
        latencies = []
        for _ in range(10):
            started = time.monotonic()
            assert requests.get(f"{server.http}/v2/models/sd/ready", timeout=5).status_code == 200
            latencies.append(time.monotonic() - started)
        busy = any(not job.done() for job in jobs)
        assert all(job.result().status_code == 200 for job in jobs)
    assert busy, "inferences finished before health was probed; the test proved nothing"
    assert max(latencies) < 1.0, latencies


def test_metrics_expose_queue_batch_and_pipeline_histograms_by_model_and_device(server):
    infer(server, v2_body(["metrics"]))
    text = requests.get(f"{server.http}/metrics", timeout=5).text
    for name in ("predictor_queue_wait_seconds_bucket", "predictor_batch_size_bucket", "predictor_pipeline_seconds_sum"):
        lines = [line for line in text.splitlines() if line.startswith(name + "{")]
        assert lines and all('model_name="sd"' in line and 'device="cpu"' in line for line in lines), name
    assert 'predictor_device_info{count="1",kind="cpu"' in text
    assert 'predictor_model_ready{device="cpu",model_name="sd"} 1.0' in text


def batch_counts(server) -> tuple[float, float]:
    text = requests.get(f"{server.http}/metrics", timeout=5).text
    values = {}
    for line in text.splitlines():
        if line.startswith(("predictor_batch_size_count", "predictor_batch_size_sum")) and 'model_name="sd"' in line:
            values[line.split("{")[0]] = float(line.rsplit(" ", 1)[1])
    return values.get("predictor_batch_size_count", 0.0), values.get("predictor_batch_size_sum", 0.0)


def image_array(encoded: str) -> np.ndarray:
    return np.asarray(decode_png(encoded), dtype=np.int16)
