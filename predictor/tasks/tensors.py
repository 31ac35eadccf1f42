"""Wire helpers shared by the tasks: reading v2 inputs and v1 instances, writing outputs.

Every problem with a request raises ``kserve.errors.InvalidInput`` naming the input or
parameter, which the server answers with HTTP 400 / gRPC INVALID_ARGUMENT.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferOutput, InferRequest
from pydantic_core import PydanticCustomError

from predictor.tasks.params import RequestParameters, utf8_text, v1_parameters


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
    """UTF-8 text of a BYTES element or string; InvalidInput naming ``where`` otherwise."""
    try:
        return utf8_text(value)
    except PydanticCustomError as error:
        raise InvalidInput(f"{where} {error.message()}") from None


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


def v1_instances(body: Mapping, limit: int, example: str, model: type[RequestParameters]) -> tuple[list, dict]:
    """The ``instances`` list and request-level task ``parameters`` of a v1 body (unknown ones: 400)."""
    instances = body.get("instances") if isinstance(body, Mapping) else None
    if not isinstance(instances, list) or not instances:
        raise InvalidInput(f'v1 body must be {{"instances": [{example}, ...]}} with at least one instance')
    check_batch(len(instances), limit, "instances")
    return instances, v1_parameters(body, model)


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
