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


# Request-level parameters that belong to the protocol, not to a task: the clients send them on their
# own. tritonclient (http and grpc ``_get_inference_request``) adds ``binary_data_output`` when no
# outputs are named, and ``sequence_id/start/end``, ``priority`` and ``timeout`` from its call
# arguments; its ``TRITON_RESERVED_REQUEST_PARAMS`` (tritonclient/utils/__init__.py) also reserve
# ``headers`` and every ``triton_`` name. ``binary_data`` and ``binary_data_size`` are kserve's
# tensor-level binary-extension parameters (kserve/protocol/infer_type.py); a client that puts them
# at request level means no task parameter either. They are accepted and do not change the answer.
PROTOCOL_PARAMETERS = frozenset(
    (
        "binary_data_output",
        "binary_data",
        "binary_data_size",
        "headers",
        "sequence_id",
        "sequence_start",
        "sequence_end",
        "priority",
        "timeout",
    )
)
PROTOCOL_PARAMETER_PREFIX = "triton_"


def is_protocol_parameter(name: str) -> bool:
    return name in PROTOCOL_PARAMETERS or name.startswith(PROTOCOL_PARAMETER_PREFIX)


def task_parameters(raw: Mapping[str, Any], known: Iterable[str], where: str = "") -> dict[str, Any]:
    """The task's parameters of ``raw`` (protocol parameters dropped); unknown names are an error."""
    known = list(known)
    task_raw = {key: value for key, value in raw.items() if not is_protocol_parameter(key)}
    unknown = sorted(set(task_raw) - set(known))
    if unknown:
        prefix = f"{where}: " if where else ""
        raise InvalidInput(f"{prefix}unknown parameter(s) {unknown}; supported: {sorted(known)}")
    return task_raw


def request_parameters(request: InferRequest, known: Iterable[str]) -> dict[str, Any]:
    """The request's task parameters as plain values; unknown names are an error (typos fail loudly)."""
    given = {key: value for key, value in (request.parameters or {}).items() if not is_protocol_parameter(key)}
    raw = task_parameters(given, known)  # names first: a protocol parameter's value is never decoded
    raw = {key: parameter_value(key, value) for key, value in raw.items()}
    for key, value in raw.items():
        if value is None:
            raise InvalidInput(f"parameter {key} has no value")
    return raw


def v1_parameters(body: Mapping, known: Iterable[str]) -> dict[str, Any]:
    """The request-level ``parameters`` object of a v1 body; unknown names are an error."""
    parameters = body.get("parameters") if isinstance(body, Mapping) else None
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        raise InvalidInput("'parameters' must be an object")
    return task_parameters(parameters, known)


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


def v1_instances(body: Mapping, limit: int, example: str, known: Iterable[str]) -> tuple[list, dict]:
    """The ``instances`` list and request-level task ``parameters`` of a v1 body (unknown ones: 400)."""
    instances = body.get("instances") if isinstance(body, Mapping) else None
    if not isinstance(instances, list) or not instances:
        raise InvalidInput(f'v1 body must be {{"instances": [{example}, ...]}} with at least one instance')
    check_batch(len(instances), limit, "instances")
    return instances, v1_parameters(body, known)


# The largest integer every float represents exactly: a JSON number beyond it may already have
# been rounded by the client's or the server's JSON parser.
EXACT_FLOAT_INTEGER = 2**53

# Seeds seed ``torch.Generator`` objects. diffusers' initial latents come from CPU generators on
# every device (as diffusers recommends, for the same image everywhere), and CPU sampling of text
# does too. The CPU mt19937 engine keeps only the low 32 bits of a seed (ATen/core/MT19937RNGEngine.h,
# ``init_with_uint32``: ``state_[0] = seed & 0xffffffff``), so 12345 and 2**33 + 12345 give the same
# stream. CUDA's Philox generator keeps all 64 bits (ATen/cuda/CUDAGeneratorImpl.h ``seed_``), but
# one range for every device and task is the one the CPU engine honours.
MAX_SEED = 2**32 - 1


def _subject(name: str, where: str) -> str:
    return f"{where}: {name}" if where else f"parameter {name}"


def integer(value: Any, name: str, low: int, high: int, where: str = "") -> int:
    """An exact integer in [low, high]: JSON/gRPC ints, decimal strings, and integral floats below 2**53."""
    subject = _subject(name, where)
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise InvalidInput(f"{subject} must be an integer, got {value!r}")
    if isinstance(value, str):
        text = value.strip()
        try:
            value = int(text)
        except ValueError:
            try:
                value = float(text)
            except ValueError:
                raise InvalidInput(f"{subject} must be an integer, got {value!r}") from None
    if isinstance(value, float):
        if not value.is_integer():
            raise InvalidInput(f"{subject} must be an integer, got {value!r}")
        if abs(value) > EXACT_FLOAT_INTEGER:
            raise InvalidInput(
                f"{subject} must be an integer, got the floating-point number {value!r}, which cannot hold "
                f"integers beyond 2**53 exactly; send it as an integer"
            )
        value = int(value)
    if not low <= value <= high:
        raise InvalidInput(f"{subject} must be between {low} and {high}, got {value}")
    return value


def seed(value: Any, count: int = 1, where: str = "") -> int:
    """The first of ``count`` consecutive seeds (one per element of a request), all in [0, MAX_SEED]."""
    return integer(value, "seed", 0, MAX_SEED - (count - 1), where)


def number(value: Any, name: str, low: float, high: float, where: str = "") -> float:
    subject = _subject(name, where)
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise InvalidInput(f"{subject} must be a number, got {value!r}")
    try:
        result = float(value)
    except ValueError:
        raise InvalidInput(f"{subject} must be a number, got {value!r}") from None
    if not (low <= result <= high):  # also rejects NaN
        raise InvalidInput(f"{subject} must be between {low} and {high}, got {value!r}")
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
