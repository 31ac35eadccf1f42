"""KServe v2 (Open Inference Protocol) gRPC messages, built without kserve or tritonclient.

``kserve`` and ``tritonclient.grpc`` both register ``grpc_service.proto`` in protobuf's default
descriptor pool, so they clash in one process. This module declares the few messages the load
tester needs (ModelInfer and ModelReady) in a *private* descriptor pool, so it imports cleanly
next to either of them, and needs only ``grpcio`` and ``protobuf``. Field numbers follow the
published ``grpc_predict_v2.proto``; fields the load tester never reads are left out (protobuf
keeps them as unknown fields when parsing).
"""

from __future__ import annotations

import struct
from functools import lru_cache
from typing import Any

SERVICE = "inference.GRPCInferenceService"
MODEL_INFER = f"/{SERVICE}/ModelInfer"
MODEL_READY = f"/{SERVICE}/ModelReady"


@lru_cache(maxsize=1)
def messages() -> dict[str, Any]:
    """Message classes by name: ModelInferRequest, ModelInferResponse, InferParameter, ModelReady*."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(
        name="predictor_loadtest/grpc_predict_v2_subset.proto", package="inference", syntax="proto3"
    )

    def message(container, name: str, fields: list[tuple], map_entry: bool = False):
        msg = container.add(name=name)
        if map_entry:
            msg.options.map_entry = True
        for spec in fields:
            fname, number, ftype, *rest = spec
            label = rest[0] if rest else F.LABEL_OPTIONAL
            type_name = rest[1] if len(rest) > 1 else None
            field = msg.field.add(name=fname, number=number, type=ftype, label=label)
            if type_name:
                field.type_name = type_name
            if len(rest) > 2:
                field.oneof_index = rest[2]
        return msg

    opt, rep = F.LABEL_OPTIONAL, F.LABEL_REPEATED
    param = message(
        proto.message_type,
        "InferParameter",
        [
            ("bool_param", 1, F.TYPE_BOOL, opt, None, 0),
            ("int64_param", 2, F.TYPE_INT64, opt, None, 0),
            ("string_param", 3, F.TYPE_STRING, opt, None, 0),
            ("double_param", 4, F.TYPE_DOUBLE, opt, None, 0),
            ("uint64_param", 5, F.TYPE_UINT64, opt, None, 0),
        ],
    )
    param.oneof_decl.add(name="parameter_choice")
    message(proto.message_type, "InferTensorContents", [("bytes_contents", 8, F.TYPE_BYTES, rep)])

    def parameters_map(msg, number: int) -> None:
        message(
            msg.nested_type,
            "ParametersEntry",
            [("key", 1, F.TYPE_STRING), ("value", 2, F.TYPE_MESSAGE, opt, ".inference.InferParameter")],
            map_entry=True,
        )
        msg.field.add(
            name="parameters",
            number=number,
            type=F.TYPE_MESSAGE,
            label=rep,
            type_name=f".inference.{msg.name}.ParametersEntry",
        )

    request = message(
        proto.message_type,
        "ModelInferRequest",
        [
            ("model_name", 1, F.TYPE_STRING),
            ("model_version", 2, F.TYPE_STRING),
            ("id", 3, F.TYPE_STRING),
            ("inputs", 5, F.TYPE_MESSAGE, rep, ".inference.ModelInferRequest.InferInputTensor"),
            ("raw_input_contents", 7, F.TYPE_BYTES, rep),
        ],
    )
    parameters_map(request, 4)
    message(
        request.nested_type,
        "InferInputTensor",
        [
            ("name", 1, F.TYPE_STRING),
            ("datatype", 2, F.TYPE_STRING),
            ("shape", 3, F.TYPE_INT64, rep),
            ("contents", 5, F.TYPE_MESSAGE, opt, ".inference.InferTensorContents"),
        ],
    )

    response = message(
        proto.message_type,
        "ModelInferResponse",
        [
            ("model_name", 1, F.TYPE_STRING),
            ("model_version", 2, F.TYPE_STRING),
            ("id", 3, F.TYPE_STRING),
            ("outputs", 5, F.TYPE_MESSAGE, rep, ".inference.ModelInferResponse.InferOutputTensor"),
            ("raw_output_contents", 6, F.TYPE_BYTES, rep),
        ],
    )
    message(
        response.nested_type,
        "InferOutputTensor",
        [
            ("name", 1, F.TYPE_STRING),
            ("datatype", 2, F.TYPE_STRING),
            ("shape", 3, F.TYPE_INT64, rep),
            ("contents", 5, F.TYPE_MESSAGE, opt, ".inference.InferTensorContents"),
        ],
    )
    message(proto.message_type, "ModelReadyRequest", [("name", 1, F.TYPE_STRING), ("version", 2, F.TYPE_STRING)])
    message(proto.message_type, "ModelReadyResponse", [("ready", 1, F.TYPE_BOOL)])

    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    names = (
        "InferParameter",
        "ModelInferRequest",
        "ModelInferResponse",
        "ModelReadyRequest",
        "ModelReadyResponse",
    )
    return {n: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"inference.{n}")) for n in names}


def serialize_bytes_tensor(values: list[bytes]) -> bytes:
    """The v2 raw encoding of a BYTES tensor: each element as a 4-byte little-endian length, then its bytes."""
    return b"".join(struct.pack("<I", len(v)) + v for v in values)


def deserialize_bytes_tensor(raw: bytes) -> list[bytes]:
    values, offset = [], 0
    while offset + 4 <= len(raw):
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        values.append(raw[offset : offset + length])
        offset += length
    if offset != len(raw):
        raise ValueError("malformed BYTES tensor")
    return values


def infer_request(model: str, prompts: list[str], parameters: dict[str, Any], request_id: str = "") -> bytes:
    """A serialized ModelInferRequest: ``prompt`` BYTES [N] in raw_input_contents, plus parameters."""
    m = messages()
    request = m["ModelInferRequest"](model_name=model, id=request_id)
    tensor = request.inputs.add(name="prompt", datatype="BYTES")
    tensor.shape.append(len(prompts))
    request.raw_input_contents.append(serialize_bytes_tensor([p.encode("utf-8") for p in prompts]))
    for key, value in parameters.items():
        target = request.parameters[key]
        if isinstance(value, bool):
            target.bool_param = value
        elif isinstance(value, int):
            target.int64_param = value
        elif isinstance(value, float):
            target.double_param = value
        else:
            target.string_param = str(value)
    return request.SerializeToString()


def output_tensor(raw_response: bytes, name: str) -> list[bytes] | None:
    """The BYTES elements of output ``name`` in a serialized ModelInferResponse, or None if absent."""
    response = messages()["ModelInferResponse"].FromString(raw_response)
    for position, output in enumerate(response.outputs):
        if output.name != name:
            continue
        if position < len(response.raw_output_contents):
            return deserialize_bytes_tensor(response.raw_output_contents[position])
        return list(output.contents.bytes_contents)
    return None


def ready_request(model: str) -> bytes:
    return messages()["ModelReadyRequest"](name=model).SerializeToString()


def ready_response(raw: bytes) -> bool:
    return bool(messages()["ModelReadyResponse"].FromString(raw).ready)
