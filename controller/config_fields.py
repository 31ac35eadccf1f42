"""Building blocks of the controller config models (controller/config.py): strict value types
with the error texts the CLI reports, the :class:`Section` base (immutable, unknown keys are
errors) and the translation of pydantic's errors into one :class:`ConfigError` naming key paths.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class ConfigError(ValueError):
    """Invalid controller configuration; the message names the key path."""


# --------------------------------------------------------------------------- value types


def fail(message: str, value: Any = None, *, field: str | None = None) -> PydanticCustomError:
    """A validation error whose text is ``message`` (``{value}`` is the repr of ``value``).

    ``field`` names the key under the validated object that the error is about (model
    validators check several fields at once; the error should point at one of them)."""
    ctx: dict[str, Any] = {"value": repr(value)}
    if field is not None:
        ctx["field"] = field
    return PydanticCustomError("controller_config", message, ctx)


def number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise fail("must be a number, got {value}", value)
    if not math.isfinite(value):
        raise fail("must be finite")
    return float(value)


def integer(value: Any) -> int:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise fail("must be an integer, got {value}", value)
    return value


def text(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise fail("must be a non-empty string, got {value}", value)
    return value


def dns_name(value: str) -> str:
    if len(value) > 253 or not DNS1123.match(value):
        raise fail("must be a lowercase DNS-1123 name, got {value}", value)
    return value


def flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise fail("must be true or false, got {value}", value)
    return value


def choice(allowed: tuple[str, ...], message: str | None = None) -> BeforeValidator:
    text = message or f"must be one of {', '.join(allowed)}, got {{value}}"

    def check(value: Any) -> Any:
        if value not in allowed:
            raise fail(text, value)
        return value

    return BeforeValidator(check)


def http_url(value: str) -> str:
    if not re.match(r"^https?://", value):
        raise fail("must start with http:// or https://, got {value}", value)
    return value.rstrip("/")


def optional_dns_name(value: Any) -> str:
    """Empty (or null) means "none"; anything else must be a DNS-1123 name."""
    return "" if value in (None, "") else dns_name(text(value))


Number = Annotated[float, BeforeValidator(number)]
Integer = Annotated[int, BeforeValidator(integer)]
Text = Annotated[str, BeforeValidator(text)]
DnsName = Annotated[str, AfterValidator(dns_name), BeforeValidator(text)]
Flag = Annotated[bool, BeforeValidator(flag)]


class Section(BaseModel):
    """A mapping in the config file: immutable, unknown keys are errors, ``null`` for a
    required key reads as missing."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, BaseModel):
            return data
        if not isinstance(data, Mapping):
            raise fail(f"must be a mapping, got {type(data).__name__}")
        allowed = ", ".join(sorted(cls.model_fields))
        for key in data:
            if key not in cls.model_fields:
                raise fail(f"unknown key (allowed: {allowed})", field=str(key))
        return {k: v for k, v in data.items() if v is not None or not cls.model_fields[k].is_required()}


def section_field(cls: type[Section]) -> Any:
    """A section with all defaults; ``null`` in the file means the same."""
    return Field(default_factory=cls, description=(cls.__doc__ or "").strip().splitlines()[0])


# --------------------------------------------------------------------------- errors


def _key_path(loc: tuple[str | int, ...]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


_BOUNDS: dict[str, tuple[str, str]] = {
    "greater_than": ("gt", ">"),
    "greater_than_equal": ("ge", ">="),
    "less_than": ("lt", "<"),
    "less_than_equal": ("le", "<="),
}


def _message(error: Mapping[str, Any]) -> str:
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind == "missing":
        return "is required"
    if kind in _BOUNDS:
        key, op = _BOUNDS[kind]
        return f"must be {op} {ctx[key]:g}"
    if kind == "extra_forbidden":
        return "unknown key"
    return str(error["msg"])


def config_error(exc: ValidationError) -> ConfigError:
    """One :class:`ConfigError` naming the key path of each of ``exc``'s errors."""
    lines = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        extra = (error.get("ctx") or {}).get("field")
        path = _key_path(loc)
        if extra:
            path = f"{path}.{extra}" if path else extra
        lines.append(f"{path or '<root>'}: {_message(error)}")
    return ConfigError("; ".join(lines))
