"""The predictor suite's helpers: the real predictor on free loopback ports (tests/servers.py), request bodies."""

from __future__ import annotations

import base64
import io

from tests.servers import REPO, Predictor, free_port, start_predictor

__all__ = ["REPO", "Server", "decode_png", "free_port", "start_server", "stop_server", "v2_body"]

# The predictor suite's names for the shared harness (tests/servers.py), which other suites import too.
Server = Predictor
start_server = start_predictor


def stop_server(server: Server) -> None:
    server.stop()


def decode_png(encoded: str | bytes):
    from PIL import Image

    image = Image.open(io.BytesIO(base64.b64decode(encoded)))
    image.load()
    return image


def v2_body(prompts, parameters=None, negative=None, request_id=None) -> dict:
    body: dict = {"inputs": [{"name": "prompt", "datatype": "BYTES", "shape": [len(prompts)], "data": prompts}]}
    if negative is not None:
        body["inputs"].append(
            {"name": "negative_prompt", "datatype": "BYTES", "shape": [len(negative)], "data": negative}
        )
    if parameters:
        body["parameters"] = parameters
    if request_id:
        body["id"] = request_id
    return body
