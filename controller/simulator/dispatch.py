"""Pure arithmetic shared by the planner and the simulator's oracle: merit-order dispatch,
blended cost, KPA scaling targets. No I/O, no config parsing, no clock."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from controller.allocation import Dispatch, merit_order

__all__ = ["Dispatch", "merit_order", "merit_order_matrix", "blended_cost", "scale_target",
           "container_concurrency", "replicas_for"]


def merit_order_matrix(costs: Sequence[float], capacities: np.ndarray, demand: np.ndarray) -> np.ndarray:
    """Vectorised :func:`controller.allocation.merit_order` over time: ``capacities`` is ``[T, N]``, ``demand`` is ``[T]``;
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
