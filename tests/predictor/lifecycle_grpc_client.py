"""gRPC client for the lifecycle tests, run as a subprocess (tritonclient.grpc cannot share a process with kserve).

Usage: python lifecycle_grpc_client.py ADDRESS PROMPT COUNT [TIMEOUT_S]
Sends COUNT concurrent ModelInfer calls with prompts "PROMPT 0", "PROMPT 1", ... and prints one JSON
list, one {"status", "message"} per call ("OK" for a success).
With PROMPT "--unload" it calls RepositoryModelUnload for "sd" instead (COUNT is ignored).
"""

from __future__ import annotations

import concurrent.futures
import json
import sys

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException


def infer(client: grpcclient.InferenceServerClient, prompt: str, timeout_s: float) -> dict:
    tensor = grpcclient.InferInput("prompt", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([prompt.encode()], dtype=np.object_))
    try:
        result = client.infer("sd", [tensor], client_timeout=timeout_s)
        return {"status": "OK", "message": "", "images": len(result.as_numpy("image"))}
    except InferenceServerException as error:
        return {"status": str(error.status()), "message": error.message() or ""}


def main() -> None:
    address, prompt, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    timeout_s = float(sys.argv[4]) if len(sys.argv) > 4 else 120.0
    client = grpcclient.InferenceServerClient(address)
    if prompt == "--unload":
        try:
            client.unload_model("sd")
            print(json.dumps([{"status": "OK", "message": ""}]))
        except InferenceServerException as error:
            print(json.dumps([{"status": str(error.status()), "message": error.message() or ""}]))
        return
    with concurrent.futures.ThreadPoolExecutor(max(1, count)) as pool:
        results = list(pool.map(lambda i: infer(client, f"{prompt} {i}", timeout_s), range(count)))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
