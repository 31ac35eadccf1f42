"""A stand-in for ``python -m huggingfaceserver`` (kserve 0.14.1) that needs no peer venv: a real
HTTP/1.1 server on loopback speaking the v2 REST subset the benchmark uses.

It takes huggingfaceserver's arguments (``-m huggingfaceserver --model_dir ... --model_name ...
--task ... --http_port ... --grpc_port ...``), serves ``/v2/models/{name}/ready`` and answers
``/v2/models/{name}/infer`` like huggingfaceserver 0.14.1's sequence classifier: one INT64 tensor
``output-0`` of class indices, shape [n] (encoder_model.py ``postprocess``). The index is
``FAKE_PEER_CLASS`` (default 0): this fake runs no model. A body whose first input is not a BYTES
tensor of strings gets 400, as kserve's ``get_predict_input`` would not read it as texts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("-m", dest="module", required=True, choices=["huggingfaceserver"])
    parser.add_argument("--model_dir", required=True)
    parser.add_argument("--model_name", required=True)
    parser.add_argument("--task", required=True, choices=["sequence_classification"])
    parser.add_argument("--http_port", type=int, required=True)
    parser.add_argument("--grpc_port", type=int, required=True)
    args, _unknown = parser.parse_known_args(argv)
    json.loads((Path(args.model_dir) / "config.json").read_text())  # fails like the real one on a bad dir
    return args


def texts_of(body: bytes) -> list[str] | None:
    try:
        first = json.loads(body)["inputs"][0]
    except (ValueError, KeyError, IndexError, TypeError):
        return None
    data = first.get("data") if isinstance(first, dict) else None
    if first.get("datatype") != "BYTES" or not data or not all(isinstance(item, str) for item in data):
        return None
    return data


def handler(model_name: str, label_index: int) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as uvicorn

        def log_message(self, *_args) -> None:
            pass

        def reply(self, status: int, payload: dict) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == f"/v2/models/{model_name}/ready":
                self.reply(200, {"name": model_name, "ready": True})
            else:
                self.reply(404, {"error": f"no route {self.path}"})

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.path != f"/v2/models/{model_name}/infer":
                self.reply(404, {"error": f"no route {self.path}"})
                return
            texts = texts_of(body)
            if texts is None:
                self.reply(400, {"error": "expected inputs[0]: a BYTES tensor of strings"})
                return
            output = {
                "name": "output-0",
                "shape": [len(texts)],
                "datatype": "INT64",
                "data": [label_index] * len(texts),
            }
            self.reply(200, {"model_name": model_name, "id": "fake", "outputs": [output]})

    return Handler


def main(argv: list[str]) -> int:
    args = parse(argv)
    server = ThreadingHTTPServer(
        ("127.0.0.1", args.http_port), handler(args.model_name, int(os.environ.get("FAKE_PEER_CLASS", "0")))
    )
    server.daemon_threads = True
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
