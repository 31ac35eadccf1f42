"""A gRPC test client, run as a subprocess: tritonclient.grpc cannot share a process with kserve.

Usage: python grpc_client.py ADDRESS SCENARIO  -> prints one JSON object with what it observed.
"""

from __future__ import annotations

import base64
import concurrent.futures
import io
import json
import sys

import numpy as np
import tritonclient.grpc as grpcclient
from PIL import Image
from tritonclient.utils import InferenceServerException


def prompt_input(prompts):
    tensor = grpcclient.InferInput("prompt", [len(prompts)], "BYTES")
    tensor.set_data_from_numpy(np.array([p.encode() for p in prompts], dtype=np.object_))
    return tensor


def png_sizes(result):
    return [list(Image.open(io.BytesIO(base64.b64decode(data))).size) for data in result.as_numpy("image")]


def call(client, prompts, **parameters):
    try:
        result = client.infer("sd", [prompt_input(prompts)], parameters=parameters)
        return {"ok": True, "sizes": png_sizes(result), "images": [x.decode() for x in result.as_numpy("image")]}
    except InferenceServerException as error:
        return {"ok": False, "status": error.status(), "message": error.message()}


def main() -> None:
    address, scenario = sys.argv[1], sys.argv[2]
    client = grpcclient.InferenceServerClient(address)
    out: dict = {}
    if scenario == "basics":
        out["model_ready"] = client.is_model_ready("sd")
        metadata = client.get_model_metadata("sd", as_json=True)
        out["inputs"] = [(i["name"], i["datatype"]) for i in metadata["inputs"]]
        out["outputs"] = [(o["name"], o["datatype"]) for o in metadata["outputs"]]
        first = call(client, ["a fox", "a hen"], seed=4, guidance_scale=6.5, num_inference_steps=2)
        again = call(client, ["a fox", "a hen"], seed=4, guidance_scale=6.5, num_inference_steps=2)
        out["sizes"] = first["sizes"]
        out["deterministic"] = first["images"] == again["images"]
        out["sized"] = call(client, ["tall"], height=96, width=32)["sizes"]
    elif scenario == "bad_input":
        out["empty"] = call(client, [""])
        out["height"] = call(client, ["x"], height=30)
        out["steps"] = call(client, ["x"], num_inference_steps=0)
        wrong = grpcclient.InferInput("prompt", [1], "FP32")
        wrong.set_data_from_numpy(np.array([1.0], dtype=np.float32))
        try:
            client.infer("sd", [wrong])
            out["datatype"] = {"ok": True}
        except InferenceServerException as error:
            out["datatype"] = {"ok": False, "status": error.status(), "message": error.message()}
        out["after"] = call(client, ["still serving"])
    elif scenario == "flood":
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda i: call(client, [f"p{i}"], num_inference_steps=40), range(8)))
        out["statuses"] = [r.get("status", "OK") for r in results]
        out["messages"] = [r.get("message", "") for r in results]
    elif scenario == "served_by":
        result = client.infer("sd", [prompt_input(["who served this"])], parameters={"num_inference_steps": 2})
        parameters = result.get_response().parameters
        out["parameters"] = {key: parameters[key].string_param for key in parameters}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
