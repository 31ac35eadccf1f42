"""A gRPC client that sends hand-built ModelInferRequests (raw_input_contents that do not add up).

Run as a subprocess (tritonclient.grpc cannot share a process with kserve):
``python grpc_raw_client.py ADDRESS`` -> prints one JSON object: per case, the status code and message.
"""

from __future__ import annotations

import json
import struct
import sys

import grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc


def element(value: bytes) -> bytes:
    return struct.pack("<I", len(value)) + value


def request(raw: bytes, count: int = 1) -> service_pb2.ModelInferRequest:
    message = service_pb2.ModelInferRequest(model_name="sd")
    tensor = message.inputs.add(name="prompt", datatype="BYTES", shape=[count])
    del tensor  # the tensor's contents travel in raw_input_contents
    message.parameters["num_inference_steps"].int64_param = 2
    message.raw_input_contents.append(raw)
    return message


CASES = {
    "well formed": request(element(b"a castle")),
    "overlong element": request(struct.pack("<I", 400) + b"a castle"),
    "missing element": request(element(b"a castle"), count=2),
    "trailing bytes": request(element(b"a castle") + b"xy"),
}


def main() -> None:
    with grpc.insecure_channel(sys.argv[1]) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        out = {}
        for case, message in CASES.items():
            try:
                stub.ModelInfer(message, timeout=60)
                out[case] = {"code": "OK", "message": ""}
            except grpc.RpcError as error:
                out[case] = {"code": error.code().name, "message": error.details()}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
