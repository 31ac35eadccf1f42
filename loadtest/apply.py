"""Copy a measured unit capacity into the controller config, leaving the rest of the file as it was.

Only the two scalars ``max_throughput`` and ``latency_s`` of the named unit change: their
positions come from the YAML parser's node marks, so comments, key order, quoting and layout of
everything else stay byte-for-byte the same. The edited file's units are checked against the
documented file format (``loadtest.controller_config``) before it replaces the original (atomically).
"""

from __future__ import annotations

import difflib
import math
from pathlib import Path
from typing import Any

import yaml

from loadtest import controller_config
from loadtest.controller_config import ConfigFileError, check_units

FIELDS = ("max_throughput", "latency_s")


class ApplyError(ValueError):
    """The result or the config cannot be applied; the message says why."""


def format_number(value: float, digits: int = 4) -> str:
    """Plain YAML number with ``digits`` significant digits and never an exponent."""
    if not math.isfinite(value) or value <= 0:
        raise ApplyError(f"refusing to write {value!r}: values must be finite and > 0")
    rounded = float(f"{value:.{digits}g}")
    if rounded.is_integer():
        return str(int(rounded))
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(rounded))))
    return f"{rounded:.{decimals}f}".rstrip("0").rstrip(".")


def _mapping_get(node: yaml.MappingNode, key: str) -> tuple[yaml.Node, yaml.Node] | None:
    for key_node, value_node in node.value:
        if isinstance(key_node, yaml.ScalarNode) and key_node.value == key:
            return key_node, value_node
    return None


def find_unit(root: yaml.Node, unit: str) -> yaml.MappingNode:
    if not isinstance(root, yaml.MappingNode):
        raise ApplyError("the config is not a mapping")
    pair = _mapping_get(root, "units")
    if pair is None or not isinstance(pair[1], yaml.SequenceNode):
        raise ApplyError("the config has no 'units' list")
    names = []
    for item in pair[1].value:
        if not isinstance(item, yaml.MappingNode):
            continue
        name = _mapping_get(item, "name")
        if name is None or not isinstance(name[1], yaml.ScalarNode):
            continue
        names.append(name[1].value)
        if name[1].value == unit:
            return item
    raise ApplyError(f"no unit named {unit!r} in the config (units: {', '.join(names) or 'none'})")


def update_unit_text(text: str, unit: str, values: dict[str, float]) -> tuple[str, dict[str, Any]]:
    """Return the new config text and the old values of the fields changed."""
    try:
        root = yaml.compose(text)
    except yaml.YAMLError as error:
        raise ApplyError(f"invalid YAML: {error}") from None
    if root is None:
        raise ApplyError("the config is empty")
    item = find_unit(root, unit)
    old: dict[str, Any] = {}
    edits: list[tuple[int, int, str]] = []
    missing: list[str] = []
    for field in FIELDS:
        if field not in values:
            continue
        rendered = format_number(values[field])
        pair = _mapping_get(item, field)
        if pair is None:
            missing.append(field)
            old[field] = None
            continue
        value_node = pair[1]
        if not isinstance(value_node, yaml.ScalarNode):
            raise ApplyError(f"units[{unit}].{field} is not a scalar")
        old[field] = value_node.value
        edits.append((value_node.start_mark.index, value_node.end_mark.index, rendered))
    if missing:
        if item.flow_style:
            raise ApplyError(f"unit {unit!r} is a flow mapping without {', '.join(missing)}; add the keys by hand")
        name_key, name_value = _mapping_get(item, "name")
        line_end = text.find("\n", name_value.end_mark.index)
        insert_at = len(text) if line_end < 0 else line_end + 1
        indent = " " * name_key.start_mark.column
        block = "".join(f"{indent}{field}: {format_number(values[field])}\n" for field in missing)
        if line_end < 0:
            block = "\n" + block
        edits.append((insert_at, insert_at, block))
    for start, end, replacement in sorted(edits, reverse=True):
        text = text[:start] + replacement + text[end:]
    return text, old


def validate(text: str) -> None:
    """Check the edited config's units as docs/controller.md documents them."""
    try:
        check_units(yaml.safe_load(text))
    except ConfigFileError as error:
        raise ApplyError(f"the updated config does not validate: {error}") from None


def throughput_scale(config_text: str) -> float:
    """Config throughput units per measured request/s: 60 when the config says ``throughput_per: minute``."""
    try:
        data = yaml.safe_load(config_text)
    except yaml.YAMLError as error:
        raise ApplyError(f"the config is not valid YAML: {error}") from None
    try:
        return controller_config.throughput_scale(data)
    except ConfigFileError as error:
        raise ApplyError(str(error)) from None


def unit_values(result: dict[str, Any]) -> dict[str, Any]:
    unit = result.get("unit")
    if not unit or unit.get("max_throughput") is None or unit.get("latency_s") is None:
        reason = "; ".join(result.get("notes") or []) or "no sustainable stage"
        raise ApplyError(f"the result has no measured unit capacity ({reason})")
    return unit


def apply_result(
    result: dict[str, Any], config_path: str | Path, unit: str | None = None, dry_run: bool = False
) -> tuple[str, str]:
    """Update ``config_path`` from a result; returns (unified diff, unit name). Writes unless ``dry_run``."""
    from loadtest.report import write_atomic

    measured = unit_values(result)
    name = unit or measured.get("name")
    if not name:
        raise ApplyError("which unit? pass --unit (the result was recorded without --unit)")
    path = Path(config_path)
    try:
        original = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ApplyError(f"{path}: cannot read: {error.strerror or error}") from None
    values = {field: float(measured[field]) for field in FIELDS}
    values["max_throughput"] *= throughput_scale(original)
    updated, _old = update_unit_text(original, name, values)
    validate(updated)
    diff = "".join(
        difflib.unified_diff(
            original.splitlines(keepends=True), updated.splitlines(keepends=True), str(path), str(path)
        )
    )
    if not dry_run and updated != original:
        write_atomic(path, updated)
    return diff, name
