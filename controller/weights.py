"""Pure weight math shared by the controller and the planner/simulator.

Weights are integer percentages that always sum to exactly 100 (the InferenceGraph Splitter and
the ALB forward action both reject anything else). All functions here are deterministic and do
no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from controller.config import Unit


def cost_per_inference(unit: Unit) -> float:
    """USD-per-hour price divided by the requests/s one replica serves (seed Table 1's last column)."""
    return unit.price_per_hour / unit.max_throughput


def capacity_target(units: Iterable[Unit]) -> float:
    """Target throughput: the mean of the units' max throughput (seed Table 2)."""
    units = list(units)
    if not units:
        raise ValueError("capacity_target needs at least one unit")
    return sum(u.max_throughput for u in units) / len(units)


def adjusted_throughput(units: Iterable[Unit]) -> dict[str, float]:
    """min(target, max_throughput_i) per unit; 105/130/90/61/60 -> 89.2, 89.2, 89.2, 61, 60."""
    units = list(units)
    target = capacity_target(units)
    return {u.name: min(target, u.max_throughput) for u in units}


def integer_weights(shares: Mapping[str, float]) -> dict[str, int]:
    """Scale non-negative shares to integers summing to exactly 100 (largest remainder method).

    Ties in the remainder go to the key that comes first in ``shares`` (insertion order), so the
    result is deterministic. A key with a zero share always gets 0. If every share is zero, the
    100 is split equally. Keys keep their order in the result.
    """
    if not shares:
        raise ValueError("integer_weights needs at least one share")
    for key, value in shares.items():
        if not isinstance(value, int | float) or math.isnan(value) or value < 0 or math.isinf(value):
            raise ValueError(f"share for {key!r} must be a finite number >= 0, got {value!r}")
    keys = list(shares)
    total = float(sum(shares.values()))
    if total <= 0:
        values = {k: 1.0 for k in keys}
        total = float(len(keys))
    else:
        values = {k: float(shares[k]) for k in keys}
    exact = {k: values[k] * 100.0 / total for k in keys}
    result = {k: int(math.floor(exact[k] + 1e-9)) for k in keys}
    left = 100 - sum(result.values())
    order = sorted(range(len(keys)), key=lambda i: (-(exact[keys[i]] - result[keys[i]]), i))
    for i in order:
        if left <= 0:
            break
        if values[keys[i]] > 0:
            result[keys[i]] += 1
            left -= 1
    if left != 0:  # pragma: no cover - impossible by construction; keep the invariant loud
        raise AssertionError(f"integer_weights could not reach 100 (left {left})")
    return result


def _is_ready(ready: Mapping[str, bool] | None, name: str) -> bool:
    return True if ready is None else bool(ready.get(name, False))


def cost_optimized_weights(units: Iterable[Unit], ready: Mapping[str, bool] | None = None) -> dict[str, int]:
    """Cost-optimized state: all traffic to the ready units of the cost pool.

    Several cost units share in proportion to the throughput they can serve at max replicas
    (max_throughput * max_replicas). If no cost unit is ready but another unit is, this returns
    :func:`capacity_optimized_weights` over the ready units (never route to a unit without a ready
    replica). If nothing is ready at all, the cost pool gets the traffic as if it were ready.
    Every configured unit appears in the result (0 for units not routed to).
    """
    units = list(units)
    if not units:
        raise ValueError("cost_optimized_weights needs at least one unit")
    cost = [u for u in units if u.pool == "cost"]
    if not cost:
        raise ValueError("cost_optimized_weights needs at least one unit with pool 'cost'")
    candidates = [u for u in cost if _is_ready(ready, u.name)]
    if not candidates:
        if any(_is_ready(ready, u.name) for u in units):
            return capacity_optimized_weights(units, ready=ready)
        candidates = cost
    shares = {u.name: (u.max_throughput * u.max_replicas if u in candidates else 0.0) for u in units}
    return integer_weights(shares)


def capacity_optimized_weights(
    units: Iterable[Unit], capacity: Mapping[str, float] | None = None, ready: Mapping[str, bool] | None = None
) -> dict[str, int]:
    """Capacity-optimized state: spread over every pool by the capacity each unit can get.

    share_i = adjusted_throughput_i * capacity_i, where adjusted throughput follows seed Table 2
    (target = mean of all configured units' max throughput) and ``capacity_i`` is the number of
    replicas unit i can actually get (default 1 each, which reproduces Table 2's proportions).
    Units that are not ready get 0 unless no unit is ready. If the ready units all have zero
    capacity they share by adjusted throughput alone; if no unit is ready, readiness is ignored.
    The result always sums to 100.
    """
    units = list(units)
    if not units:
        raise ValueError("capacity_optimized_weights needs at least one unit")
    adj = adjusted_throughput(units)

    def cap(name: str) -> float:
        if capacity is None:
            return 1.0
        return max(0.0, float(capacity.get(name, 0.0)))

    live = [u for u in units if _is_ready(ready, u.name)] or units  # nothing ready: ignore readiness
    shares = {u.name: (adj[u.name] * cap(u.name) if u in live else 0.0) for u in units}
    if sum(shares.values()) <= 0:  # no capacity credited to the live units: Table 2 proportions
        shares = {u.name: (adj[u.name] if u in live else 0.0) for u in units}
    return integer_weights(shares)


def ramp_weights(current: Mapping[str, int], target: Mapping[str, int], max_step: int) -> dict[str, int]:
    """Move from ``current`` toward ``target`` changing no weight by more than ``max_step``.

    Both must have the same keys and sum to 100; the result sums to 100 too. With max_step >= 100,
    or when current has other keys, or is not a valid weight set, the target is returned as is.
    """
    if max_step >= 100 or set(current) != set(target) or sum(current.values()) != 100:
        return dict(target)
    delta = {k: target[k] - current[k] for k in target}
    biggest = max(abs(d) for d in delta.values())
    if biggest <= max_step:
        return dict(target)
    scale = max_step / biggest
    return integer_weights({k: max(0.0, current[k] + delta[k] * scale) for k in target})


def valid_weights(weights: Mapping[str, int], names: Iterable[str]) -> bool:
    """True if weights cover exactly ``names`` with non-negative integers summing to 100."""
    names = list(names)
    return (
        set(weights) == set(names)
        and all(isinstance(v, int) and v >= 0 for v in weights.values())
        and sum(weights.values()) == 100
    )
