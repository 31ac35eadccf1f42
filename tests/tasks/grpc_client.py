"""gRPC calls for the task tests, in their own process (``tritonclient.grpc`` and ``kserve`` clash).

Usage: ``python grpc_client.py HOST:PORT MODEL`` with a JSON list of calls on stdin; prints a JSON
list of results. A call is ``{"op": "metadata"}`` or ``{"op": "infer", "inputs": [{"name",
"datatype", "shape", "data" (strings, numbers, or {"b64": ...} for raw bytes)}], "parameters": {...}}``
(optionally ``"priority"`` and ``"timeout"``: tritonclient's own arguments, sent as reserved parameters).
A result is ``{"outputs": {name: {"shape", "datatype", "data"}}}`` or ``{"error": {"code", "message"}}``.
"""

from __future__ import annotations

import base64
import json
import sys

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException


def _array(spec: dict) -> np.ndarray:
    data = spec["data"]
    if spec["datatype"] == "BYTES":
        values = [base64.b64decode(v["b64"]) if isinstance(v, dict) else v.encode("utf-8") for v in data]
        return np.array(values, dtype=np.object_).reshape(spec["shape"])
    dtype = {"FP32": np.float32, "INT32": np.int32, "INT64": np.int64}[spec["datatype"]]
    return np.array(data, dtype=dtype).reshape(spec["shape"])


def _plain(array: np.ndarray) -> list:
    flat = array.reshape(-1).tolist()
    return [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in flat]


def main() -> int:
    url, model = sys.argv[1], sys.argv[2]
    calls = json.loads(sys.stdin.read())
    client = grpcclient.InferenceServerClient(url=url)
    results = []
    for call in calls:
        try:
            if call["op"] == "metadata":
                metadata = client.get_model_metadata(model, as_json=True)
                results.append({"metadata": metadata})
                continue
            inputs = []
            for spec in call["inputs"]:
                tensor = grpcclient.InferInput(spec["name"], spec["shape"], spec["datatype"])
                tensor.set_data_from_numpy(_array(spec))
                inputs.append(tensor)
            response = client.infer(
                model,
                inputs,
                parameters=call.get("parameters") or None,
                priority=call.get("priority", 0),
                timeout=call.get("timeout"),
            )
            outputs = {}
            for output in response.get_response(as_json=True)["outputs"]:
                array = response.as_numpy(output["name"])
                outputs[output["name"]] = {
                    "shape": [int(s) for s in output["shape"]],
                    "datatype": output["datatype"],
                    "data": _plain(array),
                }
            results.append({"outputs": outputs})
        except InferenceServerException as error:
            results.append({"error": {"code": str(error.status()), "message": error.message()}})
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
