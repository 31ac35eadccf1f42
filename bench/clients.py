"""Benchmark clients: v2 REST over ``http.client`` and v2 gRPC over tritonclient.

This process must never import kserve: kserve and ``tritonclient.grpc`` clash in one process
(protobuf descriptors).
"""

from __future__ import annotations

import http.client
import json
import urllib.parse
from typing import Any

from bench.servers import MODEL_NAME

PROMPT = "a photo of an astronaut riding a horse on mars"


def v2_rest_body(prompt: str, steps: int, height: int, width: int, seed: int) -> dict:
    return {
        "inputs": [{"name": "prompt", "datatype": "BYTES", "shape": [1], "data": [prompt]}],
        "parameters": {"num_inference_steps": steps, "height": height, "width": width, "seed": seed},
    }


class HttpConnection:
    """One keep-alive HTTP/1.1 connection through ``http.client``.

    The benchmark measures the server, so its client should cost little: on the 2-core machine
    ``requests`` spent ~1.6 ms of CPU per v2 call against ~0.5 ms for ``http.client``.
    """

    def __init__(self, base_url: str, timeout: float = 600.0):
        parsed = urllib.parse.urlsplit(base_url)
        self.host, self.port, self.timeout = parsed.hostname, parsed.port, timeout
        self.conn: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        for attempt in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                self.conn.request(method, path, body=body, headers=headers)
                reply = self.conn.getresponse()
                return reply.status, reply.read()
            except (http.client.HTTPException, ConnectionError):
                self.close()  # e.g. the server closed an idle keep-alive connection: reconnect once
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class RestClient:
    """v2 REST infer over one keep-alive connection (one client per thread)."""

    def __init__(self, base_url: str):
        self.http = HttpConnection(base_url)
        self.path = f"/v2/models/{MODEL_NAME}/infer"

    def infer(self, steps: int, height: int, width: int, seed: int) -> None:
        body = json.dumps(v2_rest_body(PROMPT, steps, height, width, seed)).encode()
        status, data = self.http.request("POST", self.path, body)
        if status != 200:
            raise RuntimeError(f"REST infer: HTTP {status}: {data[:300]!r}")
        outputs = json.loads(data)["outputs"]
        if outputs[0]["name"] != "image" or len(outputs[0]["data"]) != 1:
            raise RuntimeError(f"REST infer: unexpected outputs {str(outputs)[:300]}")

    def close(self) -> None:
        self.http.close()


class FixedBodyClient:
    """v2 REST infer of one fixed request body (the classifier's text) over one keep-alive connection."""

    def __init__(self, base_url: str, body: bytes):
        self.http = HttpConnection(base_url)
        self.path = f"/v2/models/{MODEL_NAME}/infer"
        self.body = body

    def infer(self, **_ignored: Any) -> None:
        status, data = self.http.request("POST", self.path, self.body)
        if status != 200:
            raise RuntimeError(f"REST infer: HTTP {status}: {data[:300]!r}")

    def close(self) -> None:
        self.http.close()


def v2_text_body(texts: list[str]) -> bytes:
    """A v2 REST body of texts that our classifier and huggingfaceserver 0.14.1 both accept: one BYTES
    tensor of strings, shape [n], no parameters (huggingfaceserver reads ``inputs[0]`` as a list of
    strings when its datatype is BYTES and its data are str: kserve 0.14.1 ``get_predict_input``)."""
    if not isinstance(texts, list) or not texts or not all(isinstance(text, str) for text in texts):
        raise ValueError(f"v2_text_body takes a non-empty list of strings, got {texts!r}")
    return json.dumps(
        {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts}]}
    ).encode()


CLASSIFIER_BODY = v2_text_body(["what a lovely day for a benchmark"])


class GrpcClient:
    """v2 gRPC through tritonclient (never imported alongside kserve)."""

    def __init__(self, target: str):
        import numpy as np
        import tritonclient.grpc as grpcclient

        self._grpc = grpcclient
        self.client = grpcclient.InferenceServerClient(url=target)
        self.prompt = np.array([PROMPT.encode()], dtype=np.object_)

    def infer(self, steps: int, height: int, width: int, seed: int) -> None:
        tensor = self._grpc.InferInput("prompt", [1], "BYTES")
        tensor.set_data_from_numpy(self.prompt)
        result = self.client.infer(
            MODEL_NAME,
            [tensor],
            outputs=[self._grpc.InferRequestedOutput("image")],
            parameters={"num_inference_steps": steps, "height": height, "width": width, "seed": seed},
            client_timeout=600,
        )
        images = result.as_numpy("image")
        if images is None or images.shape[0] != 1:
            raise RuntimeError("gRPC infer: no image in the response")

    def close(self) -> None:
        self.client.close()
