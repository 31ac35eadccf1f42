"""Pure arithmetic shared by the planner and the simulator's oracle: merit-order dispatch,
blended cost, KPA scaling targets. No I/O, no config parsing, no clock."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Dispatch:
    """Result of a merit-order dispatch: requests/s given to each unit and what is left over."""

    allocation: dict[str, float]
    unmet: float
    order: tuple[str, ...]  # units from cheapest to dearest

    @property
    def served(self) -> float:
        return float(sum(self.allocation.values()))


def merit_order(costs: Mapping[str, float], capacities: Mapping[str, float], demand: float) -> Dispatch:
    """Fill units from the lowest cost per inference up to their capacity until ``demand`` is met.

    ``costs`` and ``capacities`` are keyed by unit name (capacities in requests/s). Ties in cost
    are broken by name so that the result is deterministic. ``unmet`` is the demand left when
    every unit is full (0 otherwise).
    """
    if demand < 0 or not math.isfinite(demand):
        raise ValueError(f"demand must be finite and >= 0, got {demand!r}")
    if set(costs) != set(capacities):
        raise ValueError("costs and capacities must name the same units")
    order = tuple(sorted(costs, key=lambda n: (costs[n], n)))
    left = float(demand)
    alloc: dict[str, float] = {}
    for name in order:
        cap = float(capacities[name])
        if cap < 0:
            raise ValueError(f"capacity of {name} must be >= 0")
        take = min(cap, left)
        alloc[name] = take
        left -= take
    return Dispatch(allocation=alloc, unmet=max(left, 0.0), order=order)


def merit_order_matrix(costs: Sequence[float], capacities: np.ndarray, demand: np.ndarray) -> np.ndarray:
    """Vectorised :func:`merit_order` over time: ``capacities`` is ``[T, N]``, ``demand`` is ``[T]``;
    returns the ``[T, N]`` allocation (columns in the input order)."""
    caps = np.asarray(capacities, dtype=float)
    dem = np.asarray(demand, dtype=float)
    order = sorted(range(len(costs)), key=lambda i: (costs[i], i))
    ordered = caps[:, order]
    before = np.cumsum(ordered, axis=1) - ordered  # capacity of the cheaper units
    take = np.clip(dem[:, None] - before, 0.0, ordered)
    out = np.empty_like(take)
    out[:, order] = take
    return out


def blended_cost(weights: Mapping[str, float], costs: Mapping[str, float]) -> float:
    """Cost per inference of the traffic mix ``weights`` (any positive scale): sum(w_i c_i) / sum(w_i)."""
    total = float(sum(weights.values()))
    if total <= 0:
        raise ValueError("weights must have a positive sum")
    missing = set(weights) - set(costs)
    if missing:
        raise ValueError(f"no cost for units {sorted(missing)}")
    return float(sum(w * costs[n] for n, w in weights.items()) / total)


def scale_target(max_throughput: float, utilisation: float) -> int:
    """KPA ``scaleTarget`` (metric rps): requests/s per replica at ``utilisation`` of the breaking
    point, rounded down (the field is an integer; rounding down keeps the headroom), at least 1."""
    if not 0 < utilisation <= 1:
        raise ValueError("utilisation must be in (0, 1]")
    return max(1, math.floor(max_throughput * utilisation + 1e-9))


def container_concurrency(max_throughput: float, latency_s: float) -> int:
    """Suggested ``containerConcurrency``: requests in flight in one replica at its breaking point,
    by Little's law L = throughput x latency, rounded up."""
    return max(1, math.ceil(max_throughput * latency_s - 1e-9))


def replicas_for(rps: float, target_rps: float) -> int:
    """Replicas a KPA with per-replica target ``target_rps`` settles on for a steady ``rps``."""
    if rps <= 0:
        return 0
    return math.ceil(rps / target_rps - 1e-9)
