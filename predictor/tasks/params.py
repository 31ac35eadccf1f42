"""Request parameters as pydantic models: one declaration per field, with its default, bounds and doc.

Each task declares a ``RequestParameters`` subclass (``predictor.tasks.text_to_image.ImageParameters``,
...). ``parse`` validates raw values from any protocol (v2 parameters, a v1 ``parameters`` object
or instance, an OpenAI body) and raises ``kserve.errors.InvalidInput`` naming the parameter path,
which the server answers with HTTP 400 / gRPC INVALID_ARGUMENT; unknown names are an error too,
so a typo never runs with defaults.

Some bounds and defaults are the server's (``--max_steps``, the model's label count, how many
seeds a request needs): a field names them (``Between(1, "max_steps")``, ``ServerDefault(...)``)
and ``parse`` takes their values as pydantic's validation context.
"""

from __future__ import annotations

import struct
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from typing import Annotated, Any, NoReturn, Self

from kserve.errors import InvalidInput
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    GetCoreSchemaHandler,
    ValidationError,
    ValidationInfo,
    model_validator,
)
from pydantic_core import PydanticCustomError, core_schema

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

_ERROR = "invalid_parameter"


def fail(message: str, got: str | None = None) -> NoReturn:
    """A validation error whose message follows the parameter's path ("parameter top_k " + message).

    ``got`` ends the message with the value (``", got 5"``); ``got=RAW`` with the value as sent.
    """
    raise PydanticCustomError(_ERROR, "{message}", {"message": message, "got": got})


RAW = "<as sent>"


# ----------------------------------------------------------------------------- value kinds


def exact_integer(value: Any) -> int:
    """JSON/gRPC ints, decimal strings, and integral floats below 2**53; never a bool."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        fail(f"must be an integer, got {value!r}")
    if isinstance(value, str):
        text = value.strip()
        try:
            value = int(text)
        except ValueError:
            try:
                value = float(text)
            except ValueError:
                fail(f"must be an integer, got {value!r}")
    if isinstance(value, float):
        if not value.is_integer():
            fail(f"must be an integer, got {value!r}")
        if abs(value) > EXACT_FLOAT_INTEGER:
            fail(
                f"must be an integer, got the floating-point number {value!r}, which cannot hold "
                f"integers beyond 2**53 exactly; send it as an integer"
            )
        value = int(value)
    return value


def real_number(value: Any) -> float:
    """JSON/gRPC numbers and numeric strings; never a bool."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        fail(f"must be a number, got {value!r}")
    try:
        return float(value)
    except (ValueError, OverflowError):
        fail(f"must be a number, got {value!r}")


def utf8_text(value: Any) -> str:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            fail("must be UTF-8 text")
    if not isinstance(value, str):
        fail(f"must be a string, got {type(value).__name__}")
    return value


class Check(ABC):
    """A check usable as ``Annotated`` metadata, run after the value's conversion; subclasses say
    what they check in ``__call__`` (return the value, or ``fail`` with the reason)."""

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.with_info_after_validator_function(self, handler(source))

    @abstractmethod
    def __call__(self, value: Any, info: ValidationInfo) -> Any: ...


class Between(Check):
    """Inclusive bounds; a bound given as a name is the server's, read from the validation context."""

    def __init__(self, low: float | str, high: float | str):
        self.low, self.high = low, high

    def __call__(self, value: float, info: ValidationInfo) -> float:
        low, high = (
            _context_value(bound, info) if isinstance(bound, str) else bound for bound in (self.low, self.high)
        )
        if not low <= value <= high:  # also rejects NaN
            # integers as converted (a float 1e3 is 1000), numbers as sent (a string stays quoted)
            fail(f"must be between {low} and {high}", RAW if isinstance(value, float) else str(value))
        return value


class MultipleOf(Check):
    def __init__(self, step: int):
        self.step = step

    def __call__(self, value: int, info: ValidationInfo) -> int:
        if value % self.step:
            fail(f"must be a multiple of {self.step}, got {value}")
        return value


class Positive(Check):
    def __call__(self, value: float, info: ValidationInfo) -> float:
        if value <= 0:
            fail("must be greater than 0")
        return value


class NotEmpty(Check):
    def __call__(self, value: str, info: ValidationInfo) -> str:
        if not value:
            fail("is empty")
        return value


class MaxChars(Check):
    def __init__(self, limit: int):
        self.limit = limit

    def __call__(self, value: str, info: ValidationInfo) -> str:
        if len(value) > self.limit:
            fail(f"is longer than {self.limit} characters")
        return value


Integer = Annotated[int, BeforeValidator(exact_integer)]
Number = Annotated[float, BeforeValidator(real_number)]
Text = Annotated[str, BeforeValidator(utf8_text)]
#: One seed per element of a request (seed, seed + 1, ...): the context's ``max_seed`` leaves room for all.
Seed = Annotated[Integer, Between(0, "max_seed")]


def seed_context(count: int) -> dict[str, int]:
    """The validation context of a ``Seed`` for a request of ``count`` elements."""
    return {"max_seed": MAX_SEED - (count - 1)}


class ServerDefault:
    """The default of a field that the server sets (a flag, the model): read from the context."""

    def __init__(self, key: str):
        self.key = key

    def __repr__(self) -> str:
        return f"ServerDefault({self.key!r})"


def _context_value(key: str, info: ValidationInfo) -> Any:
    context = info.context or {}
    if key not in context:
        raise KeyError(f"validation context lacks {key!r}: pass it to parse()")
    return context[key]


# ----------------------------------------------------------------------------- the base model


class RequestParameters(BaseModel):
    """A task's request parameters. Subclasses declare fields; ``parse`` validates raw values."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(cls.model_fields)

    @classmethod
    def check_names(cls, names: Iterable[str], where: str = "") -> None:
        """Unknown names are an error naming them and the supported ones (typos fail loudly)."""
        unknown = sorted(set(names) - set(cls.model_fields))
        if unknown:
            prefix = f"{where}: " if where else ""
            raise InvalidInput(f"{prefix}unknown parameter(s) {unknown}; supported: {sorted(cls.model_fields)}")

    @classmethod
    def parse(cls, raw: Mapping[str, Any], where: str = "", **context: Any) -> Self:
        """Validated parameters; ``where`` prefixes messages (v1 instances), ``context`` holds server values."""
        cls.check_names(raw, where)
        try:
            return cls.model_validate(dict(raw), context=context)
        except ValidationError as error:
            raise InvalidInput(describe(error, where)) from None

    @model_validator(mode="before")
    @classmethod
    def _server_defaults(cls, data: Any, info: ValidationInfo) -> Any:
        """Fill omitted fields whose default is the server's, so they are validated like given ones."""
        if not isinstance(data, dict):
            return data
        for name, field in cls.model_fields.items():
            if isinstance(field.default, ServerDefault) and name not in data:
                data[name] = _context_value(field.default.key, info)
        return data


def describe(error: ValidationError, where: str = "") -> str:
    """Every problem of a ValidationError, each naming its parameter path (``stop[0]``)."""
    messages = []
    for problem in error.errors(include_url=False):
        path = _path(problem["loc"])
        subject = f"{where}: {path}" if where else f"parameter {path}"
        if problem["type"] == _ERROR:
            text, got = problem["ctx"]["message"], problem["ctx"]["got"]
            if got is not None:
                text += f", got {problem['input']!r}" if got == RAW else f", got {got}"
        else:
            text = f"is invalid: {problem['msg']}"
        messages.append(f"{subject} {text}")
    return "; ".join(messages)


def _path(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


# ----------------------------------------------------------------------------- gathering raw values


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


def task_parameters(raw: Mapping[str, Any], model: type[RequestParameters]) -> dict[str, Any]:
    """The task's parameters of ``raw``: protocol parameters dropped, names checked against ``model``."""
    task_raw = {key: value for key, value in raw.items() if not is_protocol_parameter(key)}
    model.check_names(task_raw)
    return task_raw


def v2_parameters(request: Any, model: type[RequestParameters]) -> dict[str, Any]:
    """A v2 request's task parameters as plain values (names checked before any value is decoded)."""
    raw = task_parameters(request.parameters or {}, model)
    raw = {key: parameter_value(key, value) for key, value in raw.items()}
    for key, value in raw.items():
        if value is None:
            raise InvalidInput(f"parameter {key} has no value")
    return raw


def v1_parameters(body: Mapping, model: type[RequestParameters]) -> dict[str, Any]:
    """The request-level ``parameters`` object of a v1 body (names checked against ``model``)."""
    parameters = body.get("parameters") if isinstance(body, Mapping) else None
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        raise InvalidInput("'parameters' must be an object")
    return task_parameters(parameters, model)
