"""Wire helpers shared by the transformers tasks: reading v2 inputs and parameters, writing outputs.

Every problem with a request raises ``kserve.errors.InvalidInput`` naming the input or
parameter, which the server answers with HTTP 400 / gRPC INVALID_ARGUMENT.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferOutput, InferRequest

# Field numbers of InferParameter values that kserve's proto lacks but Triton clients send
# (the Triton proto adds double_param = 4 and uint64_param = 5).
_FIXED64_DOUBLE_FIELD = 4
_VARINT_UINT64_FIELD = 5


def parameter_value(name: str, value: Any) -> Any:
    """Plain value of a gRPC InferParameter.

    kserve's InferParameter has only bool/int64/string; a float sent by tritonclient
    (double_param) arrives as an unknown field, which we decode instead of dropping it.
    """
    if not hasattr(value, "WhichOneof"):
        return value
    field = value.WhichOneof("parameter_choice")
    if field:
        return getattr(value, field)
    from google.protobuf import unknown_fields

    for unknown in unknown_fields.UnknownFieldSet(value):
        if unknown.field_number == _FIXED64_DOUBLE_FIELD and unknown.wire_type == 1:
            return struct.unpack("<d", struct.pack("<Q", unknown.data))[0]
        if unknown.field_number == _VARINT_UINT64_FIELD and unknown.wire_type == 0:
            return int(unknown.data)
    raise InvalidInput(f"parameter '{name}' has no value this server can read; send a bool, int64 or string")


def request_parameters(request: InferRequest, known: Iterable[str]) -> dict[str, Any]:
    """The request's parameters as plain values; unknown names are an error (typos fail loudly)."""
    raw = {key: parameter_value(key, value) for key, value in (request.parameters or {}).items()}
    # Clients and kserve itself may add protocol-level parameters; they are not task parameters.
    raw = {key: value for key, value in raw.items() if key not in ("binary_data_output", "headers")}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise InvalidInput(f"unknown parameter(s) {unknown}; supported: {sorted(known)}")
    for key, value in raw.items():
        if value is None:
            raise InvalidInput(f"parameter {key} has no value")
    return raw


def check_input_names(request: InferRequest, known: Sequence[str]) -> None:
    unknown = [tensor.name for tensor in request.inputs if tensor.name not in known]
    if unknown:
        raise InvalidInput(f"unknown input(s) {unknown}; expected {list(known)}")


def bytes_elements(request: InferRequest, name: str, required: bool = True) -> list[bytes | str] | None:
    """Elements of a BYTES input of shape [N] (or [N, 1]), as sent: ``bytes`` or ``str``."""
    tensor = request.get_input_by_name(name)
    if tensor is None:
        if required:
            raise InvalidInput(f"input '{name}' is required (BYTES, shape [N])")
        return None
    if tensor.datatype != "BYTES":
        raise InvalidInput(f"input '{name}' must have datatype BYTES, got {tensor.datatype}")
    shape = list(tensor.shape or [])
    if len(shape) == 2 and shape[1] == 1:
        shape = shape[:1]
    if len(shape) != 1:
        raise InvalidInput(f"input '{name}' must have shape [N], got {list(tensor.shape or [])}")
    try:
        values = tensor.as_numpy().reshape(-1).tolist()
    except (ValueError, TypeError, struct.error) as error:
        raise InvalidInput(f"input '{name}': data does not match shape {list(tensor.shape)}: {error}") from None
    if len(values) != shape[0]:
        raise InvalidInput(f"input '{name}': shape says {shape[0]} elements, data has {len(values)}")
    if not values:
        raise InvalidInput(f"input '{name}' is empty: give at least one element")
    for value in values:
        if not isinstance(value, (bytes, str)):
            raise InvalidInput(f"input '{name}' must hold strings or bytes, got {type(value).__name__}")
    return values


def as_text(value: bytes | str, where: str) -> str:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInput(f"{where} must be UTF-8 text") from None
    if not isinstance(value, str):
        raise InvalidInput(f"{where} must be a string, got {type(value).__name__}")
    return value


def text_elements(request: InferRequest, name: str, max_chars: int) -> list[str]:
    texts = [as_text(value, f"input '{name}'[{index}]") for index, value in enumerate(bytes_elements(request, name))]
    check_texts(texts, f"input '{name}'", max_chars)
    return texts


def check_texts(texts: Sequence[str], where: str, max_chars: int) -> None:
    for index, text in enumerate(texts):
        if not text.strip():
            raise InvalidInput(f"{where}[{index}] is empty")
        if len(text) > max_chars:
            raise InvalidInput(f"{where}[{index}] is longer than {max_chars} characters")


def check_batch(count: int, limit: int, what: str) -> None:
    if count > limit:
        raise InvalidInput(f"{count} {what} exceed the batch limit of {limit}")


def v1_instances(body: Mapping, limit: int, example: str) -> tuple[list, dict]:
    """The ``instances`` list and request-level ``parameters`` of a v1 body."""
    instances = body.get("instances") if isinstance(body, Mapping) else None
    if not isinstance(instances, list) or not instances:
        raise InvalidInput(f'v1 body must be {{"instances": [{example}, ...]}} with at least one instance')
    check_batch(len(instances), limit, "instances")
    parameters = body.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InvalidInput("'parameters' must be an object")
    return instances, parameters


def integer(value: Any, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise InvalidInput(f"parameter {name} must be an integer, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise InvalidInput(f"parameter {name} must be an integer, got {value!r}") from None
    if not number.is_integer():
        raise InvalidInput(f"parameter {name} must be an integer, got {value!r}")
    if not low <= number <= high:
        raise InvalidInput(f"parameter {name} must be between {low} and {high}, got {int(number)}")
    return int(number)


def number(value: Any, name: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise InvalidInput(f"parameter {name} must be a number, got {value!r}")
    try:
        result = float(value)
    except ValueError:
        raise InvalidInput(f"parameter {name} must be a number, got {value!r}") from None
    if not (low <= result <= high):  # also rejects NaN
        raise InvalidInput(f"parameter {name} must be between {low} and {high}, got {value!r}")
    return result


def bytes_output(name: str, values: Sequence[str | bytes], shape: Sequence[int], binary: bool) -> InferOutput:
    data = np.array([v.encode("utf-8") if isinstance(v, str) else v for v in values], dtype=np.object_)
    output = InferOutput(name=name, shape=list(shape), datatype="BYTES")
    output.set_data_from_numpy(data.reshape(shape), binary_data=binary)
    return output


def numeric_output(name: str, values: Any, shape: Sequence[int], dtype: str, binary: bool) -> InferOutput:
    numpy_dtype = {"FP32": np.float32, "INT32": np.int32, "INT64": np.int64}[dtype]
    data = np.asarray(values, dtype=numpy_dtype).reshape(shape)
    output = InferOutput(name=name, shape=list(shape), datatype=dtype)
    output.set_data_from_numpy(data, binary_data=binary)
    return output
