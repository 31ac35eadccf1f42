"""The ``proportional`` strategy: all traffic to the cost pool, or spread over every unit.

* ``cost-optimized``: all traffic to the ready units of the cost pool
  (:func:`controller.weights.cost_optimized_weights`).
* ``capacity-optimized``: traffic spread over every unit in proportion to the capacity it can get,
  weighted by the adjusted throughput of seed Table 2
  (:func:`controller.weights.capacity_optimized_weights`).

Capacity units are pre-warmed (their replica floors raised) ahead of a failover and held for
``prewarm.hold_s`` after the trigger ends.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from controller.config import ControllerConfig
from controller.policy.demand import estimate_demand
from controller.policy.model import (
    CAPACITY,
    COST,
    Decision,
    Mode,
    PolicyState,
    Signals,
    fallback_due,
    fmt,
    headroom_clock,
    last_decision,
    unit_short,
)
from controller.weights import (
    capacity_optimized_weights,
    cost_optimized_weights,
    integer_weights,
    ramp_weights,
    valid_weights,
)


@dataclass(frozen=True)
class PoolView:
    """What the policy derives from one set of signals (exposed for status, metrics and tests)."""

    demand_rps: float
    demand_estimated: bool
    cost_served_rps: float  # ready cost replicas * max throughput
    cost_max_rps: float  # cost pool at max_replicas
    cost_short: bool  # insufficient capacity shown by the cost pool
    cost_headroom: bool  # cost pool gets what it asks for and could carry all demand
    ready: dict[str, bool]
    obtainable: dict[str, float]  # replicas each unit can get (capacity-optimized weights)
    short_capacity: dict[str, float]  # memory for the next state (see PolicyState.short_capacity)


def observe(config: ControllerConfig, state: PolicyState, signals: Signals) -> PoolView:
    """Derive pool-level facts from per-unit signals (no decision yet)."""
    demand, estimated = estimate_demand(config, state, signals)
    cost_units = config.cost_units
    us = signals.units
    cost_served = sum(us[u.name].ready_replicas * u.max_throughput for u in cost_units)
    cost_max = sum(u.max_replicas * u.max_throughput for u in cost_units)
    cost_short = any(unit_short(us[u.name]) for u in cost_units)
    all_obtained = all(us[u.name].ready_replicas >= us[u.name].desired_replicas for u in cost_units)
    any_ready = any(us[u.name].ready_replicas > 0 for u in cost_units)
    headroom = not cost_short and all_obtained and any_ready and demand * config.thresholds.headroom_ratio <= cost_max
    ready = {u.name: us[u.name].ready_replicas > 0 for u in config.units}
    obtainable: dict[str, float] = {}
    short_capacity: dict[str, float] = {}
    for u in config.units:
        s = us[u.name]
        if unit_short(s):
            # A unit that cannot get capacity is credited with what it has (the least seen while
            # short, so a flapping ready count does not make the weights flap).
            have = float(min(s.ready_replicas, u.max_replicas))
            seen = state.short_capacity.get(u.name)
            short_capacity[u.name] = have if seen is None else min(seen, have)
            obtainable[u.name] = short_capacity[u.name]
        else:
            obtainable[u.name] = float(u.max_replicas)  # can grow to max_replicas
    return PoolView(
        demand_rps=demand,
        demand_estimated=estimated,
        cost_served_rps=cost_served,
        cost_max_rps=cost_max,
        cost_short=cost_short,
        cost_headroom=headroom,
        ready=ready,
        obtainable=obtainable,
        short_capacity=short_capacity,
    )


def target_weights(config: ControllerConfig, mode: Mode, view: PoolView) -> dict[str, int]:
    """Weights the given mode wants for these observations (before any ramp)."""
    if mode == COST:
        return cost_optimized_weights(config.units, ready=view.ready)
    return capacity_optimized_weights(config.units, capacity=view.obtainable, ready=view.ready)


def _prewarm_replicas(config: ControllerConfig, view: PoolView) -> dict[str, int]:
    """minReplicas per capacity unit so it can carry its capacity-optimized share of demand."""
    shares = capacity_optimized_weights(config.units, capacity=view.obtainable)
    out: dict[str, int] = {}
    for u in config.capacity_units:
        need = math.ceil(view.demand_rps * shares[u.name] / 100.0 / u.max_throughput - 1e-9)
        out[u.name] = min(u.max_replicas, max(config.prewarm.min_replicas, u.min_replicas, need))
    return out


def _next_mode(
    config: ControllerConfig, state: PolicyState, view: PoolView, headroom_since: float | None, now: float
) -> tuple[Mode, bool, str]:
    """(mode, switched, why): fail over at once on a shortage that drops demand; fall back after the hold."""
    timing = config.timing
    unit = config.rate_unit
    if state.mode == COST:
        if view.cost_short and view.demand_rps > view.cost_served_rps:
            why = (
                f"failover: cost pool short of capacity and demand {fmt(view.demand_rps)} {unit} > "
                f"{fmt(view.cost_served_rps)} {unit} it serves"
            )
            return CAPACITY, True, why
        if view.demand_rps > view.cost_max_rps:
            why = (
                f"failover: demand {fmt(view.demand_rps)} {unit} exceeds the cost pool maximum "
                f"{fmt(view.cost_max_rps)} {unit}"
            )
            return CAPACITY, True, why
        why = (
            f"cost-optimized: demand {fmt(view.demand_rps)} {unit}, cost pool serves "
            f"{fmt(view.cost_served_rps)} {unit}" + (" (short of capacity)" if view.cost_short else "")
        )
        return COST, False, why
    in_state = now - state.since
    held, due = fallback_due(timing, state, headroom_since, now)
    if due:
        why = f"fallback: cost pool had headroom for {fmt(held)} s (hold {timing.fallback_hold_s:g} s)"
        return COST, True, why
    if headroom_since is not None:
        why = (
            f"capacity-optimized: cost pool headroom for {fmt(held)} s of {timing.fallback_hold_s:g} s, "
            f"{fmt(in_state)} s in state (min {timing.min_state_s:g} s)"
        )
    else:
        why = "capacity-optimized: cost pool has no headroom" + (
            " (short of capacity)"
            if view.cost_short
            else f" (demand {fmt(view.demand_rps)} {unit}, cost pool max {fmt(view.cost_max_rps)} {unit})"
        )
    return CAPACITY, False, why


def _weights(
    config: ControllerConfig, mode: Mode, switched: bool, view: PoolView, current: dict[str, int]
) -> dict[str, int]:
    """The target for the mode, never to unready units, ramped except on failover."""
    names = [u.name for u in config.units]
    target = target_weights(config, mode, view)
    if switched and mode == CAPACITY:
        return target  # failover is urgent: no ramp
    base = current
    if base and any(view.ready.values()):
        # Drop unready units at once, then ramp the rest.
        if any(base[n] > 0 and not view.ready[n] for n in names):
            live = {n: (float(base[n]) if view.ready[n] else 0.0) for n in names}
            base = _renormalize(live, target)
    return ramp_weights(base, target, config.timing.max_weight_step) if base else target


def _prewarm(
    config: ControllerConfig, state: PolicyState, signals: Signals, view: PoolView, mode: Mode, now: float
) -> tuple[dict[str, int], float | None]:
    """(floors to set, prewarm_until): pre-warm the capacity pool ahead of a failover."""
    prewarm_until = state.prewarm_until
    if not config.prewarm.enabled:
        return {}, prewarm_until
    trigger = (
        view.cost_short
        or any(signals.units[u.name].pending_replicas > 0 for u in config.cost_units)
        or view.demand_rps > config.prewarm.utilization * view.cost_max_rps
        or mode == CAPACITY
    )
    if trigger:
        prewarm_until = math.inf
    elif prewarm_until == math.inf:  # the trigger has just ended: hold from the last one
        prewarm_until = last_decision(state, now) + config.prewarm.hold_s
    if prewarm_until is not None and now < prewarm_until:
        return _prewarm_replicas(config, view), prewarm_until
    return {u.name: u.min_replicas for u in config.capacity_units}, None


def decide_proportional(
    config: ControllerConfig, state: PolicyState, signals: Signals, now: float, current: dict[str, int]
) -> Decision:
    """One decision of the ``proportional`` strategy on fresh, complete signals."""
    view = observe(config, state, signals)
    headroom_since = headroom_clock(state, view.cost_headroom, now)  # reset by any shortage
    mode, switched, why = _next_mode(config, state, view, headroom_since, now)
    weights = _weights(config, mode, switched, view, current)
    if not valid_weights(weights, [u.name for u in config.units]):  # pragma: no cover - guarded by the weight functions
        raise AssertionError(f"policy produced invalid weights {weights}")
    prewarm, prewarm_until = _prewarm(config, state, signals, view, mode, now)
    new_state = PolicyState(
        mode=mode,
        since=now if switched else state.since,
        cost_headroom_since=headroom_since,
        weights=dict(weights),
        prewarm_until=prewarm_until,
        short_capacity=view.short_capacity,
        decided_at=now,
    )
    return Decision(
        state=new_state,
        weights=dict(weights),
        switched=switched,
        stale=False,
        reason=why,
        prewarm=prewarm,
        demand_rps=view.demand_rps,
    )


def _renormalize(live: dict[str, float], fallback: dict[str, int]) -> dict[str, int]:
    if sum(live.values()) <= 0:
        return dict(fallback)
    return integer_weights(live)
