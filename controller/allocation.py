"""Merit-order allocation of demand over deployment units: pure arithmetic, no I/O, no clock.

This is how the ``merit-order`` routing strategy turns one observation into weights and replica
floors. Three questions, answered in this order:

1. **Where should the traffic be?** (``planned_rps``) Replicas that are paid for anyway (each
   unit's ``min_replicas``, once ready) serve first, at a little below the autoscaler's target so
   that rounding does not make it add a replica. The rest goes in merit order (cheapest cost per
   inference first) to the capacity each unit can get (``obtainable`` replicas at the target
   utilisation). Demand beyond that runs every obtainable replica up to ``max_utilisation``;
   whatever is still left is ``unmet``.
2. **How many replicas does that take?** (``replicas``) The planned load at the target
   utilisation, what the autoscaler settles on, never below ``min_replicas`` nor above what the
   unit can get.
3. **What may the router send now?** (``routed_rps``) The plan, but never more to a unit than
   its *ready* replicas carry at ``max_utilisation``. What a unit cannot take yet goes to the
   ready replicas that have room: first up to the target utilisation, then up to
   ``max_utilisation``; only when every ready replica is that busy is the rest spread by ready
   capacity (those requests will queue or fail wherever they go).

Replicas that are planned but not ready yet are started by raising ``minReplicas`` (the policy
does that), so traffic moves to a unit when its pods can serve it and not before.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from controller.config import Unit
from controller.weights import cost_optimized_weights, cost_per_inference, integer_weights

# Floor replicas serve at this fraction of the target, so integer weights and demand noise between
# two decisions do not push a paid-for replica over its scale target (the KPA would add another).
FLOOR_SHARE_OF_TARGET = 0.95
WEIGHT_ROUNDING = 0.005  # integer percentages: a share may be rounded up by half a point


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


@dataclass(frozen=True)
class Allocation:
    demand_rps: float
    planned_rps: dict[str, float]  # where the traffic should be once replicas exist
    replicas: dict[str, int]  # replicas that carry the plan at the target utilisation
    routed_rps: dict[str, float]  # what the router may send now (bounded by ready replicas)
    unmet_rps: float  # demand beyond every obtainable replica at max utilisation
    weights: dict[str, int]  # routed_rps as integer percentages summing to 100


def _spread(amount: float, room: Mapping[str, float]) -> dict[str, float]:
    """Split ``amount`` over ``room`` in proportion to it, giving no key more than its room."""
    total = sum(room.values())
    if total <= 0 or amount <= 0:
        return {n: 0.0 for n in room}
    share = min(1.0, amount / total)
    return {n: r * share for n, r in room.items()}


def allocate(
    units: Sequence[Unit],
    demand_rps: float,
    ready: Mapping[str, int],
    obtainable: Mapping[str, float],
    target_utilisation: float = 0.7,
    max_utilisation: float = 0.9,
) -> Allocation:
    """Plan, size and route ``demand_rps`` over ``units`` (see the module docstring).

    ``ready``: ready replicas per unit. ``obtainable``: replicas each unit can have (its
    ``max_replicas`` if it can grow, what it holds if it is short of capacity).
    """
    if not 0 < target_utilisation <= max_utilisation <= 1:
        raise ValueError("need 0 < target_utilisation <= max_utilisation <= 1")
    if demand_rps < 0 or not math.isfinite(demand_rps):
        raise ValueError(f"demand must be finite and >= 0, got {demand_rps!r}")
    units = list(units)
    names = [u.name for u in units]
    cpi = {u.name: cost_per_inference(u) for u in units}
    mx = {u.name: float(u.max_throughput) for u in units}
    rdy = {u.name: max(0, int(ready.get(u.name, 0))) for u in units}
    can = {u.name: max(0.0, min(float(obtainable.get(u.name, 0.0)), float(u.max_replicas))) for u in units}
    floor = {u.name: float(min(u.min_replicas, rdy[u.name], can[u.name])) for u in units}
    at_target = {n: mx[n] * target_utilisation for n in names}

    # 1. plan: paid-for floors, then merit order at the target, then every replica up to max.
    # Less half a weight point: integer weights may round a unit's share up by that much.
    rounding = demand_rps * WEIGHT_ROUNDING
    stage0 = merit_order(
        cpi, {n: max(0.0, floor[n] * at_target[n] * FLOOR_SHARE_OF_TARGET - rounding) for n in names}, demand_rps
    )
    stage1 = merit_order(cpi, {n: max(0.0, can[n] - floor[n]) * at_target[n] for n in names}, stage0.unmet)
    used = {n: stage0.allocation[n] + stage1.allocation[n] for n in names}
    stage2 = merit_order(cpi, {n: max(0.0, can[n] * mx[n] * max_utilisation - used[n]) for n in names}, stage1.unmet)
    planned = {n: used[n] + stage2.allocation[n] for n in names}
    unmet = stage2.unmet

    replicas: dict[str, int] = {}
    for u in units:
        n = u.name
        need = math.ceil(planned[n] / at_target[n] - 1e-9) if planned[n] > 0 else 0
        if stage2.allocation[n] > 0:  # running above target: every replica it can get
            need = math.floor(can[n])
        replicas[n] = max(u.min_replicas, min(need, math.floor(can[n] + 1e-9), u.max_replicas))

    # 2. route: the plan within ready capacity, the rest to ready replicas with room.
    ceiling = {n: rdy[n] * mx[n] * max_utilisation for n in names}
    routed = {n: min(planned[n], ceiling[n]) for n in names}
    left = demand_rps - sum(routed.values())
    for level in (target_utilisation, max_utilisation):
        if left <= 1e-9:
            break
        extra = _spread(left, {n: max(0.0, rdy[n] * mx[n] * level - routed[n]) for n in names})
        for n in names:
            routed[n] += extra[n]
        left -= sum(extra.values())
    if left > 1e-9:  # every ready replica is at max utilisation: overload them evenly
        capacity = {n: rdy[n] * mx[n] for n in names}
        total = sum(capacity.values())
        if total > 0:
            for n in names:
                routed[n] += left * capacity[n] / total

    if sum(routed.values()) > 0:
        weights = integer_weights(routed)
    elif any(rdy.values()):  # no demand: whatever trickles in goes to the cheapest ready unit
        cheapest = min((n for n in names if rdy[n]), key=lambda n: (cpi[n], n))
        weights = integer_weights({n: (1.0 if n == cheapest else 0.0) for n in names})
    else:  # nothing ready anywhere: the cost pool, as the proportional strategy does
        weights = cost_optimized_weights(units)
    return Allocation(
        demand_rps=float(demand_rps),
        planned_rps=planned,
        replicas=replicas,
        routed_rps=routed,
        unmet_rps=unmet,
        weights=weights,
    )


def urgent_bridge(
    units: Sequence[Unit],
    demand_rps: float,
    lasting_ready: Mapping[str, int],
    obtainable: Mapping[str, float],
    replicas: Mapping[str, int],
    drop_cost_usd: float,
    hold_s: float = 0.0,
    target_utilisation: float = 0.7,
    max_utilisation: float = 0.9,
) -> dict[str, int]:
    """Bridge replicas for *urgent* overflow, chosen by the cost of a drop.

    Demand beyond what every lasting ready replica carries at ``max_utilisation`` is dropped until
    the plan's new replicas (``replicas``) are ready, i.e. for the longest start-up among the units
    that start some. A unit that starts faster serves that overflow for the difference. One more
    replica on it (fastest first, then the cheapest) is worth it when the requests it saves in that
    window, at ``drop_cost_usd`` each, cost more than the replica does from its start until the
    plan's replicas are ready plus the floor hold (``hold_s``) that keeps it afterwards. Returns
    replicas to add to ``replicas``; empty when nothing is urgent or ``drop_cost_usd`` is 0.
    """
    if drop_cost_usd <= 0:
        return {}
    carry = sum(max(0, int(lasting_ready.get(u.name, 0))) * u.max_throughput * max_utilisation for u in units)
    urgent = demand_rps - carry
    extra: dict[str, int] = {}
    if urgent <= 1e-9:
        return extra
    starting = [u.startup_s for u in units if replicas[u.name] > lasting_ready.get(u.name, 0)]
    relief_s = max(starting) if starting else max(u.startup_s for u in units)
    for u in sorted(units, key=lambda u: (u.startup_s, cost_per_inference(u), u.name)):
        window = relief_s - u.startup_s
        room = math.floor(min(float(obtainable.get(u.name, 0.0)), float(u.max_replicas)) + 1e-9) - replicas[u.name]
        if window <= 0 or room <= 0:
            continue
        paid_h = (u.startup_s + window + hold_s) / 3600.0
        while room > 0 and urgent > 1e-9:
            saved = min(urgent, u.max_throughput * max_utilisation) * window * drop_cost_usd
            if saved <= u.price_per_hour * paid_h:
                break
            extra[u.name] = extra.get(u.name, 0) + 1
            urgent -= u.max_throughput * max_utilisation
            room -= 1
    return extra
