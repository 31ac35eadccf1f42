"""The units of a controller config file, checked as docs/controller.md ("Configuration") documents them.

``loadtest apply`` writes two numbers of one unit into a controller config, so before the edited
file replaces the original it checks the part of the documented format it touches: the
``units`` list, each unit's required keys and their bounds, unique names, one unit in each pool,
and ``throughput_per``. It reads the file format, not the controller package (which a load
testing machine need not have); the messages name the key path the way the controller's own
(``units[2].price_per_hour: must be > 0``) do. The controller still checks the rest when it loads
the file.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

POOLS = ("cost", "capacity")
THROUGHPUT_PER = {"second": 1.0, "minute": 60.0}  # config throughput units per request/s
# units[] keys whose value must be a number above a bound: key -> (bound, inclusive, integer)
UNIT_NUMBERS: dict[str, tuple[float, bool, bool]] = {
    "price_per_hour": (0, False, False),
    "max_throughput": (0, False, False),
    "latency_s": (0, False, False),
    "max_replicas": (1, True, True),
}
UNIT_REQUIRED = ("name", "pool", "instance_type", *UNIT_NUMBERS)


class ConfigFileError(ValueError):
    """The config breaks the documented format; the message starts with the key path."""


def throughput_scale(data: Any) -> float:
    """Config throughput units per measured request/s: 60 when the config says ``throughput_per: minute``."""
    per = data.get("throughput_per", "second") if isinstance(data, Mapping) else "second"
    if per not in THROUGHPUT_PER:
        raise ConfigFileError(f"throughput_per: must be second or minute, got {per!r}")
    return THROUGHPUT_PER[per]


def check_units(data: Any) -> None:
    """Raise :class:`ConfigFileError` naming the first problem of the config's ``units``."""
    if not isinstance(data, Mapping):
        raise ConfigFileError(f"<root>: must be a mapping, got {type(data).__name__}")
    throughput_scale(data)
    units = data.get("units")
    if not isinstance(units, list) or not units:
        raise ConfigFileError("units: must be a non-empty list")
    seen: dict[str, int] = {}
    for index, unit in enumerate(units):
        path = f"units[{index}]"
        _check_unit(unit, path)
        if unit["name"] in seen:
            raise ConfigFileError(
                f"{path}.name: duplicate unit name {unit['name']!r} (also units[{seen[unit['name']]}])"
            )
        seen[unit["name"]] = index
    for pool in POOLS:
        if not any(unit["pool"] == pool for unit in units):
            raise ConfigFileError(f"units: need at least one unit with pool: {pool}")


def _check_unit(unit: Any, path: str) -> None:
    if not isinstance(unit, Mapping):
        raise ConfigFileError(f"{path}: must be a mapping, got {type(unit).__name__}")
    for key in UNIT_REQUIRED:
        if unit.get(key) is None:
            raise ConfigFileError(f"{path}.{key}: is required")
    for key in ("name", "instance_type"):
        if not isinstance(unit[key], str) or not unit[key]:
            raise ConfigFileError(f"{path}.{key}: must be a non-empty string, got {unit[key]!r}")
    if unit["pool"] not in POOLS:
        raise ConfigFileError(f"{path}.pool: must be one of {', '.join(POOLS)}, got {unit['pool']!r}")
    for key, (bound, inclusive, integer) in UNIT_NUMBERS.items():
        _check_number(unit[key], f"{path}.{key}", bound, inclusive, integer)


def _check_number(value: Any, path: str, bound: float, inclusive: bool, integer: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigFileError(f"{path}: must be {'an integer' if integer else 'a number'}, got {value!r}")
    if integer and not float(value).is_integer():
        raise ConfigFileError(f"{path}: must be an integer, got {value!r}")
    if not math.isfinite(value):
        raise ConfigFileError(f"{path}: must be finite")
    if inclusive and not value >= bound:
        raise ConfigFileError(f"{path}: must be >= {bound:g}")
    if not inclusive and not value > bound:
        raise ConfigFileError(f"{path}: must be > {bound:g}")
