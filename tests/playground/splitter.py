"""A loopback stand-in for KServe's InferenceGraph router with one Splitter node.

It does what the real router does where the playground can tell (kserve cmd/router/main.go):
``pickupRoute`` draws a number in [0, 100) and walks the cumulative step weights;
``callService`` POSTs the request body unchanged to the step's predictor URL (the v1 path
``/v1/models/<unit>:predict`` for our runtimes) with ``Content-Type: application/json``;
``graphHandler`` answers with the step's body and status code and none of its headers, or with
500 ``{"error": "Failed to process request", "cause": ...}`` when the step cannot be reached.
Random draws come from a seeded generator so runs repeat.
"""

from __future__ import annotations

import json
import random
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler

from tests.servers import ThreadedHTTPServer


@dataclass(frozen=True)
class Step:
    service_url: str  # e.g. http://127.0.0.1:PORT/v1/models/sd:predict
    weight: int


class Splitter:
    def __init__(self, steps: list[Step], seed: int = 7):
        if sum(step.weight for step in steps) != 100:
            raise ValueError("InferenceGraph splitter weights sum to 100")
        self.steps = steps
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        splitter = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status, answer = splitter.route(body)
                self.send_response(status)
                try:
                    json.loads(answer)
                    self.send_header("Content-Type", "application/json")
                except ValueError:
                    pass
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *_args) -> None:
                pass

        self._http = ThreadedHTTPServer(Handler)
        self.url = self._http.url

    def pick(self) -> Step:
        with self._lock:
            point = self._random.randrange(100)
        end = 0
        for step in self.steps:
            end += step.weight
            if point < end:
                return step
        raise RuntimeError("no route was selected by the splitter")

    def route(self, body: bytes) -> tuple[int, bytes]:
        step = self.pick()
        request = urllib.request.Request(
            step.service_url, data=body, method="POST", headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()
        except OSError as error:
            return 500, json.dumps({"error": "Failed to process request", "cause": str(error)}).encode()

    def __enter__(self) -> Splitter:
        return self

    def __exit__(self, *_exc) -> None:
        self._http.close()
