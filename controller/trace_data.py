"""Demand/capacity traces for the simulator: the data type and its CSV form.

A trace is a table sampled at increasing times::

    time_s,demand,available.sd21-inf2
    0,310.5,
    10,312.0,4

``demand`` is the offered load in requests per second over the step that starts at ``time_s``.
``available.<unit>`` columns are optional: the number of replicas the cloud can give that unit
from that time on (an empty cell or a missing column means "as many as the unit's max replicas").
Generators: controller/trace_generators.py; command line: controller/traces.py.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

AVAILABLE_PREFIX = "available."


class TraceError(ValueError):
    """A trace file or generator argument is invalid."""


@dataclass(frozen=True)
class Trace:
    """Demand (requests/s) and optional per-unit replica availability over time.

    ``available[unit][k]`` is NaN where the trace says nothing (meaning: the unit's max replicas).
    """

    time_s: np.ndarray
    demand: np.ndarray
    available: Mapping[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        t = np.asarray(self.time_s, dtype=float)
        d = np.asarray(self.demand, dtype=float)
        if t.ndim != 1 or d.shape != t.shape:
            raise TraceError("time_s and demand must be 1-D arrays of the same length")
        if t.size == 0:
            raise TraceError("a trace needs at least one row")
        if not np.all(np.isfinite(t)) or np.any(np.diff(t) <= 0):
            raise TraceError("time_s must be finite and strictly increasing")
        if not np.all(np.isfinite(d)) or np.any(d < 0):
            raise TraceError("demand must be finite and >= 0")
        avail: dict[str, np.ndarray] = {}
        for name, values in self.available.items():
            a = np.asarray(values, dtype=float)
            if a.shape != t.shape:
                raise TraceError(f"available.{name} has {a.size} values, expected {t.size}")
            known = a[~np.isnan(a)]
            if np.any(known < 0) or np.any(known != np.floor(known)) or np.any(np.isinf(known)):
                raise TraceError(f"available.{name} must hold whole numbers >= 0 (or be empty)")
            avail[str(name)] = a
        object.__setattr__(self, "time_s", t)
        object.__setattr__(self, "demand", d)
        object.__setattr__(self, "available", avail)

    def __len__(self) -> int:
        return int(self.time_s.size)

    @property
    def dt(self) -> np.ndarray:
        """Duration of each step in seconds; the last step repeats the previous one (or 1 s)."""
        if self.time_s.size == 1:
            return np.ones(1)
        d = np.diff(self.time_s)
        return np.append(d, d[-1])

    @property
    def duration_s(self) -> float:
        return float(self.dt.sum())

    def available_replicas(self, unit: str, max_replicas: int) -> np.ndarray:
        """Replicas the cloud can give ``unit`` at each step (int array), capped at ``max_replicas``."""
        a = self.available.get(unit)
        if a is None:
            return np.full(len(self), int(max_replicas), dtype=np.int64)
        filled = np.where(np.isnan(a), max_replicas, np.minimum(a, max_replicas))
        return filled.astype(np.int64)


# --------------------------------------------------------------------------------------------- CSV


def _fmt(x: float) -> str:
    if math.isnan(x):
        return ""
    if float(x).is_integer() and abs(x) < 1e15:
        return str(int(x))
    return f"{x:.10g}"


def write_csv(trace: Trace, path: str | Path) -> Path:
    """Write ``trace`` as CSV (``time_s,demand,available.<unit>...``); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = sorted(trace.available)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["time_s", "demand", *(AVAILABLE_PREFIX + n for n in names)])
        cols = [trace.available[n] for n in names]
        for k in range(len(trace)):
            w.writerow([_fmt(trace.time_s[k]), _fmt(trace.demand[k]), *(_fmt(c[k]) for c in cols)])
    return path


def read_csv(path: str | Path, units: Iterable[str] | None = None) -> Trace:
    """Read a trace CSV. With ``units``, ``available.<name>`` columns for other names are an error."""
    path = Path(path)
    try:
        fh = path.open(newline="")
    except OSError as exc:
        raise TraceError(f"cannot read trace {path}: {exc}") from exc
    with fh:
        reader = csv.reader(fh)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise TraceError(f"{path}: empty file") from None
        if header[:2] != ["time_s", "demand"]:
            raise TraceError(f"{path}: header must start with 'time_s,demand', got {','.join(header[:2])!r}")
        names: list[str] = []
        for h in header[2:]:
            if not h.startswith(AVAILABLE_PREFIX) or len(h) == len(AVAILABLE_PREFIX):
                raise TraceError(f"{path}: unexpected column {h!r} (only available.<unit> columns are allowed)")
            names.append(h[len(AVAILABLE_PREFIX) :])
        if len(set(names)) != len(names):
            raise TraceError(f"{path}: duplicate available.<unit> columns")
        if units is not None:
            known = set(units)
            unknown = [n for n in names if n not in known]
            if unknown:
                raise TraceError(f"{path}: available.<unit> columns for units not in the config: {unknown}")
        rows: list[list[float]] = []
        for lineno, row in enumerate(reader, start=2):
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != len(header):
                raise TraceError(f"{path}:{lineno}: expected {len(header)} fields, got {len(row)}")
            try:
                vals = [float(row[0]), float(row[1])]
                vals += [float(c) if c.strip() else math.nan for c in row[2:]]
            except ValueError as exc:
                raise TraceError(f"{path}:{lineno}: {exc}") from None
            rows.append(vals)
    if not rows:
        raise TraceError(f"{path}: no data rows")
    arr = np.asarray(rows, dtype=float)
    try:
        return Trace(arr[:, 0], arr[:, 1], {n: arr[:, 2 + i] for i, n in enumerate(names)})
    except TraceError as exc:
        raise TraceError(f"{path}: {exc}") from None
