"""The protocol edges of the real server, seen from real clients (issue 13, item 9).

Binary-extension bodies that do not add up, clients that send no Content-Type (tritonclient.http in
JSON mode), fields the Open Inference Protocol does not define, bodies beyond the size limit, and
what a client error leaves in the log.
"""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
import requests

from tests.predictor.harness import decode_png, v2_body

RAW_GRPC_CLIENT = Path(__file__).with_name("grpc_raw_client.py")
DEFAULT_LIMIT = 64 * 1024 * 1024  # --max_request_bytes default


def infer_url(server) -> str:
    return f"{server.http}/v2/models/sd/infer"


def serialize_bytes(values: list[bytes]) -> bytes:
    """Triton's BYTES wire format: each element as a 4-byte little-endian length, then the bytes."""
    return b"".join(struct.pack("<I", len(value)) + value for value in values)


def binary_request(head: dict, payload: bytes, header_value: str | None = None) -> tuple[bytes, dict]:
    """A v2 binary-extension body: the JSON head, then the raw tensors, and its headers."""
    encoded = json.dumps(head).encode()
    headers = {"Inference-Header-Content-Length": header_value or str(len(encoded))}
    return encoded + payload, headers


def prompt_head(size: int, count: int = 1, extra: dict | None = None) -> dict:
    tensor = {"name": "prompt", "datatype": "BYTES", "shape": [count], "parameters": {"binary_data_size": size}}
    head = {"inputs": [tensor], "parameters": {"num_inference_steps": 2}}
    head.update(extra or {})
    return head


def still_serving(server) -> bool:
    return requests.post(infer_url(server), json=v2_body(["still serving"]), timeout=60).status_code == 200


def log_after(server, offset: int, marker: str, timeout: float = 5.0) -> str:
    """What the server logged after ``offset``, once a line with ``marker`` has appeared."""
    deadline = time.monotonic() + timeout
    while True:
        text = server.logs()[offset:]
        if marker in text or time.monotonic() > deadline:
            return text
        time.sleep(0.05)


# ------------------------------------------------------------------ start-up


def test_start_up_prints_no_avoidable_warnings_or_progress_bars(server):
    startup = server.logs()  # runs first in this module: the log holds start-up and the readiness probes
    for noise in ("FutureWarning", "DeprecationWarning", "it/s]", "Traceback", "pip install accelerate",
                  "requires torchvision"):
        assert noise not in startup, f"{noise!r} in the start-up log:\n{startup}"


# ------------------------------------------------------------------ binary extension


@pytest.mark.parametrize("content_type", [None, "application/octet-stream", "application/json"])
def test_a_well_formed_binary_request_is_served_whatever_its_content_type(server, content_type):
    """The binary header decides: a client that labels the whole body JSON still gets it read as binary."""
    payload = serialize_bytes([b"a castle"])
    body, headers = binary_request(prompt_head(len(payload)), payload)
    if content_type:
        headers["Content-Type"] = content_type
    response = requests.post(infer_url(server), data=body, headers=headers, timeout=60)
    assert response.status_code == 200, response.text
    assert decode_png(response.json()["outputs"][0]["data"][0]).size == (64, 64)


BAD_BINARY = {
    "header not a number": (
        lambda: binary_request(prompt_head(12), serialize_bytes([b"a castle"]), header_value="abc"),
        "Inference-Header-Content-Length",
    ),
    "header negative": (
        lambda: binary_request(prompt_head(12), serialize_bytes([b"a castle"]), header_value="-5"),
        "Inference-Header-Content-Length",
    ),
    "header longer than the body": (
        lambda: binary_request(prompt_head(12), serialize_bytes([b"a castle"]), header_value="100000"),
        "100000",
    ),
    "head not JSON": (lambda: (b"{not json" + serialize_bytes([b"x"]), {"Inference-Header-Content-Length": "9"}),
                      "JSON"),
    "binary_data_size beyond the payload": (
        lambda: binary_request(prompt_head(5000), serialize_bytes([b"a castle"])),
        "binary_data_size",
    ),
    "binary_data_size not an integer": (
        lambda: binary_request(prompt_head("twelve"), serialize_bytes([b"a castle"])),  # type: ignore[arg-type]
        "binary_data_size",
    ),
    "element length beyond its tensor": (
        lambda: binary_request(prompt_head(12), struct.pack("<I", 400) + b"a castle"),
        "prompt",
    ),
    "fewer elements than the shape": (
        lambda: binary_request(prompt_head(12, count=2), serialize_bytes([b"a castle"])),
        "prompt",
    ),
    "bytes left after the tensors": (
        lambda: binary_request(prompt_head(12), serialize_bytes([b"a castle"]) + b"trailing"),
        "8 byte",
    ),
    "inputs missing": (lambda: binary_request({"parameters": {}}, b""), "inputs"),
    "fixed-size tensor of the wrong length": (
        lambda: binary_request(
            {"inputs": [{"name": "prompt", "datatype": "FP32", "shape": [2], "parameters": {"binary_data_size": 7}}]},
            b"\x00" * 7,
        ),
        "needs 8 bytes",
    ),
}


@pytest.mark.parametrize("case", list(BAD_BINARY))
def test_an_undecodable_binary_body_is_a_400_naming_the_problem(server, case):
    build, expected = BAD_BINARY[case]
    body, headers = build()
    response = requests.post(infer_url(server), data=body, headers=headers, timeout=30)
    assert response.status_code == 400, response.text
    assert expected in response.json()["error"]
    assert still_serving(server)


def test_raw_grpc_contents_that_do_not_match_their_tensor_are_invalid_argument(server):
    offset = len(server.logs())
    completed = subprocess.run(
        [sys.executable, str(RAW_GRPC_CLIENT), server.grpc], capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == 0, completed.stderr
    out = json.loads(completed.stdout.strip().splitlines()[-1])
    for case in ("overlong element", "missing element", "trailing bytes"):
        assert out[case]["code"] == "INVALID_ARGUMENT", (case, out[case])
        assert "prompt" in out[case]["message"], (case, out[case])
    assert out["well formed"]["code"] == "OK", out["well formed"]
    # Each refusal is one WARNING line naming the problem, without kserve's traceback.
    logged = server.logs()[offset:]
    assert "Traceback" not in logged, logged
    refusals = [line for line in logged.splitlines() if "Error processing inference request" in line]
    assert len(refusals) == 3 and all("WARNING" in line and "prompt" in line for line in refusals), logged


# ------------------------------------------------------------------ no Content-Type


def test_a_json_body_without_content_type_is_read_as_json(server):
    body = json.dumps(v2_body(["no content type"], {"seed": 1})).encode()
    response = requests.post(infer_url(server), data=body, timeout=60)  # requests sets no Content-Type for bytes
    assert response.status_code == 200, response.text
    assert decode_png(response.json()["outputs"][0]["data"][0]).size == (64, 64)


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_tritonclient_http_works_as_is(server, binary):
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(urlsplit(server.http).netloc)
    prompt = httpclient.InferInput("prompt", [2], "BYTES")
    prompt.set_data_from_numpy(np.array([b"a castle", b"a bridge"], dtype=np.object_), binary_data=binary)
    result = client.infer(
        "sd",
        [prompt],
        parameters={"seed": 9, "num_inference_steps": 2},
        outputs=[httpclient.InferRequestedOutput("image", binary_data=binary)],
    )
    images = result.as_numpy("image")
    assert images.shape == (2,)
    assert [decode_png(data).size for data in images] == [(64, 64), (64, 64)]


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_tritonclient_http_with_a_compressed_request_body(server, binary, algorithm):
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(urlsplit(server.http).netloc)
    prompt = httpclient.InferInput("prompt", [1], "BYTES")
    prompt.set_data_from_numpy(np.array([b"a packed castle"], dtype=np.object_), binary_data=binary)
    result = client.infer(
        "sd",
        [prompt],
        parameters={"num_inference_steps": 2},
        outputs=[httpclient.InferRequestedOutput("image", binary_data=binary)],
        request_compression_algorithm=algorithm,
        response_compression_algorithm=algorithm,
    )
    assert decode_png(result.as_numpy("image")[0]).size == (64, 64)


def test_a_compressed_body_that_inflates_beyond_the_limit_is_a_413(server):
    bomb = zlib.compressobj(wbits=31)  # gzip framing
    body = bomb.compress(b" " * (DEFAULT_LIMIT + 1024)) + bomb.flush()
    assert len(body) < DEFAULT_LIMIT // 100
    response = requests.post(
        infer_url(server), data=body, headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
        timeout=60,
    )
    assert response.status_code == 413, response.text
    assert still_serving(server)


@pytest.mark.parametrize("encoding, body, status, message", [
    ("br", b"\x1b\x00", 415, "gzip"),
    ("gzip", b"not gzip at all", 400, "gzip"),
    ("gzip", zlib.compress(b'{"inputs": []}', wbits=31)[:-6], 400, "gzip"),
], ids=["unsupported", "corrupt", "truncated"])
def test_a_body_in_an_encoding_that_cannot_be_read_is_refused(server, encoding, body, status, message):
    response = requests.post(
        infer_url(server), data=body, headers={"Content-Encoding": encoding, "Content-Type": "application/json"},
        timeout=30,
    )
    assert response.status_code == status, response.text
    assert message in response.json()["error"]


# ------------------------------------------------------------------ fields the protocol does not define


def test_an_unknown_top_level_field_is_a_400_naming_it_and_the_accepted_ones(server):
    body = {**v2_body(["x"]), "paramters": {"seed": 1}}
    response = requests.post(infer_url(server), json=body, timeout=30)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert "paramters" in error and all(name in error for name in ("id", "parameters", "inputs", "outputs"))


def test_an_unknown_field_of_an_input_is_a_400(server):
    body = v2_body(["x"])
    body["inputs"][0]["dtype"] = "BYTES"
    response = requests.post(infer_url(server), json=body, timeout=30)
    assert response.status_code == 400, response.text
    assert "dtype" in response.json()["error"]


def test_an_unknown_top_level_field_in_a_binary_head_is_a_400_too(server):
    payload = serialize_bytes([b"a castle"])
    body, headers = binary_request(prompt_head(len(payload), extra={"priority": 1}), payload)
    response = requests.post(infer_url(server), data=body, headers=headers, timeout=30)
    assert response.status_code == 400, response.text
    assert "priority" in response.json()["error"]


def test_a_20_mb_body_with_an_unknown_field_is_refused_not_served(server):
    body = {**v2_body(["x"]), "padding": "x" * (20 * 1024 * 1024)}
    response = requests.post(infer_url(server), json=body, timeout=60)
    assert response.status_code == 400, response.text
    assert "padding" in response.json()["error"]


# ------------------------------------------------------------------ body size limit


def raw_connection(server) -> socket.socket:
    parts = urlsplit(server.http)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=20)
    return sock


def read_response(sock: socket.socket) -> tuple[int, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = next(
        (int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")), 0
    )
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return status, rest


def test_a_declared_content_length_beyond_the_limit_is_refused_before_the_body_is_sent(server):
    port = urlsplit(server.http).port
    with raw_connection(server) as sock:
        sock.sendall(
            f"POST /v2/models/sd/infer HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {DEFAULT_LIMIT + 1}\r\n\r\n".encode()
        )
        # No body is sent: a server that waited for it would never answer (the socket times out).
        status, body = read_response(sock)
    assert status == 413, body
    assert str(DEFAULT_LIMIT) in json.loads(body)["error"]
    assert still_serving(server)


def test_a_streamed_body_beyond_the_limit_is_refused_while_it_streams(server):
    port = urlsplit(server.http).port
    chunk = b"x" * (1024 * 1024)
    framed = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    sent = 0
    with raw_connection(server) as sock:
        sock.sendall(
            f"POST /v2/models/sd/infer HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\n\r\n".encode()
        )
        try:
            while sent < 4 * DEFAULT_LIMIT:
                sock.sendall(framed)
                sent += len(chunk)
                sock.setblocking(False)
                try:
                    if sock.recv(1, socket.MSG_PEEK):
                        break  # the server answered while the body was still streaming
                except BlockingIOError:
                    pass
                finally:
                    sock.setblocking(True)
                    sock.settimeout(20)
        except (BrokenPipeError, ConnectionResetError):
            pass
        status, body = read_response(sock)
    assert status == 413, body
    assert sent < 2 * DEFAULT_LIMIT, f"the server read {sent} bytes before refusing"
    assert still_serving(server)


# ------------------------------------------------------------------ logs


def test_a_client_error_logs_one_warning_line_without_a_traceback(server):
    offset = len(server.logs())
    marker = "no-such-field-marker"
    response = requests.post(infer_url(server), json={**v2_body(["x"]), marker: 1}, timeout=30)
    assert response.status_code == 400
    missing = requests.post(f"{server.http}/v2/models/nope/infer", json=v2_body(["x"]), timeout=30)
    assert missing.status_code == 404
    logged = log_after(server, offset, "/v2/models/nope/infer 404")
    assert "Traceback" not in logged, logged
    assert " ERROR " not in logged and "ERROR:" not in logged, logged
    mine = [line for line in logged.splitlines() if marker in line]
    assert len(mine) == 1, logged
    assert "WARNING" in mine[0] and "POST /v2/models/sd/infer 400" in mine[0], mine
    not_found = [line for line in logged.splitlines() if "/v2/models/nope/infer 404" in line and "WARNING" in line]
    assert len(not_found) == 1, logged
