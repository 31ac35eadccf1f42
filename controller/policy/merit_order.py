"""The ``merit-order`` strategy (see :mod:`controller.allocation`).

The mode still says whether the cost pool is short of capacity, with the same hysteresis as the
proportional strategy, but it no longer moves all traffic at once: it only decides whether the
cost pool may grow (cost-optimized) or is held to the replicas it runs (capacity-optimized). In
capacity-optimized mode the cost pool keeps asking for the replicas the cost-optimized plan would
give it (its ``minReplicas``): those pods are the capacity probe. When they schedule and become
ready, traffic moves back to them and the capacity units' floors come down; the mode returns to
cost-optimized once the cost pool has held everything it asked for, without any shortage, for
``fallback_hold_s``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from controller.allocation import Allocation, allocate, urgent_bridge
from controller.config import ControllerConfig
from controller.policy.demand import (
    autoscaler_demand_floor,
    cluster_demand_estimate,
    demand_ahead,
    measured_demand,
    recorded_history,
)
from controller.policy.model import (
    CAPACITY,
    COST,
    Decision,
    Mode,
    PolicyState,
    Signals,
    UnitSignals,
    fallback_due,
    fmt,
    headroom_clock,
    last_decision,
    lasting_ready,
    unit_short,
)
from controller.policy.spare import record_rises, spare_replicas
from controller.weights import integer_weights


def _demand(config: ControllerConfig, state: PolicyState, signals: Signals) -> tuple[float, str | None]:
    """(demand, why it was estimated; None when measured)."""
    demand, untrusted = measured_demand(state, signals)
    # Half: the KPA keeps its replicas for a while after the load drops (stable window, scale-down
    # delay), so only a measurement far below what it is scaled for is a missing measurement.
    if demand is not None and demand < 0.5 * (least := autoscaler_demand_floor(config, state, signals)):
        untrusted = (f"measured {fmt(demand)} {config.rate_unit} is less than the {fmt(least)} the autoscalers "
                     "are scaled for")
        demand = None
    if demand is not None:
        return demand, None
    # Decide from what the cluster shows rather than hold: holding keeps the weights on a unit
    # that may have lost every pod.
    return cluster_demand_estimate(config, state, signals), untrusted


def _next_mode(
    config: ControllerConfig, state: PolicyState, us: Mapping[str, UnitSignals], now: float
) -> tuple[Mode, bool, str, float | None]:
    """(mode, switched, why, headroom_since) from the cost pool's shortage and headroom."""
    timing = config.timing
    cost_units = config.cost_units
    short = any(unit_short(us[u.name]) for u in cost_units)
    # Pods that cannot schedule, or capacity errors while the cost pool wants more than it runs.
    blocked = any(
        us[u.name].unschedulable_replicas > 0
        or us[u.name].interrupting_replicas > 0
        or (us[u.name].capacity_errors > 0 and us[u.name].desired_replicas > us[u.name].ready_replicas)
        for u in cost_units
    )
    holds_all = all(us[u.name].ready_replicas >= us[u.name].desired_replicas for u in cost_units)
    headroom_since = headroom_clock(state, not short and holds_all, now)
    if state.mode == COST:
        if blocked:
            why = "failover: cost pool short of capacity; holding it to the replicas it runs"
            return CAPACITY, True, why, headroom_since
        why = "cost-optimized"
        return COST, False, why, headroom_since
    held, due = fallback_due(timing, state, headroom_since, now)
    if due:
        why = f"fallback: cost pool held all it asked for, no shortage, for {fmt(held)} s"
        return COST, True, why, headroom_since
    if headroom_since is not None:
        why = f"capacity-optimized: cost pool headroom for {fmt(held)} s of {timing.fallback_hold_s:g} s"
    else:
        why = "capacity-optimized: cost pool " + ("short of capacity" if short else "starting the replicas it asked for")
    return CAPACITY, False, why, headroom_since


def _obtainable(config: ControllerConfig, us: Mapping[str, UnitSignals], mode: Mode) -> dict[str, float]:
    """Replicas each unit can get: max_replicas, or what a short unit (or the held cost pool) runs."""
    obtainable = {u.name: float(u.max_replicas) for u in config.units}
    for u in config.units:
        s = us[u.name]
        if (mode == CAPACITY and u.pool == "cost") or unit_short(s):
            # What it runs (Pending pods may never schedule); a cost unit that is not short any
            # more is credited with everything it asked for.
            running = s.desired_replicas - s.pending_replicas - s.interrupting_replicas
            have = running if unit_short(s) else s.desired_replicas - s.unschedulable_replicas
            obtainable[u.name] = float(min(u.max_replicas, max(lasting_ready(s), have)))
    return obtainable


def _floors(
    config: ControllerConfig,
    state: PolicyState,
    us: Mapping[str, UnitSignals],
    mode: Mode,
    plan: Allocation,
    ahead: Allocation,
    demand: float,
    obtainable: Mapping[str, float],
    now: float,
    rises: tuple[tuple[float, float], ...] = (),
) -> tuple[dict[str, tuple[int, float]], dict[str, int]]:
    """Each unit's next (floor, held until): its plan, the plan for the demand one start-up ahead
    (``ahead``, prewarm.slope_horizon; the plan itself when off), the capacity probe, the urgent
    bridge, and the standing spare the recorded demand ``rises`` are worth (policy/spare.py);
    with the spare replicas wanted per unit."""
    routing = config.routing
    cost_units = config.cost_units
    ready = {u.name: us[u.name].ready_replicas for u in config.units}
    want = {u.name: max(plan.replicas[u.name], ahead.replicas[u.name]) for u in config.units}
    if mode == CAPACITY:  # the probe: what the cost pool would run if it could grow
        growable = {u.name: float(u.max_replicas) for u in cost_units}
        probe = allocate(config.units, ahead.demand_rps, ready, {**obtainable, **growable},
                         routing.target_utilisation, routing.max_utilisation)
        for u in cost_units:
            want[u.name] = max(want[u.name], probe.replicas[u.name])
    else:  # the autoscaler sizes a cost pool that can grow, unless it must grow faster than its traffic
        for u in cost_units:
            urgent = ahead.planned_rps[u.name] > plan.routed_rps[u.name] + 0.5 * u.max_throughput
            want[u.name] = want[u.name] if urgent else u.min_replicas
    lasting = {u.name: lasting_ready(us[u.name]) for u in config.units}
    for name, n in urgent_bridge(config.units, demand, lasting, obtainable, plan.replicas, routing.drop_cost_usd,
                                 config.prewarm.hold_s, routing.target_utilisation,
                                 routing.max_utilisation).items():
        want[name] += n
    # Spare goes on top of what the plan runs (a growing cost pool's floor is left to its
    # autoscaler, so its plan counts, not its floor).
    kept = {u.name: max(want[u.name], plan.replicas[u.name]) for u in config.units}
    room = {u.name: int(min(obtainable[u.name], u.max_replicas)) - kept[u.name] for u in config.units}
    spare = spare_replicas(config.units, demand, rises, kept, room, routing.drop_cost_usd, config.timing.interval_s,
                           routing.spare_memory_s, routing.max_utilisation)
    for name, n in spare.items():
        want[name] = kept[name] + n
    floors: dict[str, tuple[int, float]] = {}
    for u in config.units:
        if mode == CAPACITY and config.prewarm.hold_until_fallback and u.pool != "cost":
            want[u.name] = max(want[u.name], state.floors.get(u.name, (u.min_replicas, 0.0))[0])
        floors[u.name] = _hold_floor(state, u.name, u.min_replicas, want[u.name], now, config.prewarm.hold_s)
    return floors, spare


def _burst_safe_weights(config: ControllerConfig, us: Mapping[str, UnitSignals], demand: float) -> dict[str, int]:
    """Weights in proportion to each unit's lasting ready capacity at ``max_utilisation``, while
    that carries ``demand`` (else empty). Spare is spare only if the router leaves every unit room:
    with the plan's weights, a burst of 2x sends 2x to units held at their floor near the target
    and drops there in the decision interval before the weights follow; in proportion to ready
    capacity, every unit has the same room, and a burst up to that capacity is served."""
    capacity = {u.name: lasting_ready(us[u.name]) * u.max_throughput * config.routing.max_utilisation
                for u in config.units}
    if sum(capacity.values()) <= demand:
        return {}
    return integer_weights(capacity)


def decide_merit_order(
    config: ControllerConfig, state: PolicyState, signals: Signals, now: float, current: dict[str, int]
) -> Decision:
    """One decision of the ``merit-order`` strategy on fresh, complete signals."""
    routing = config.routing
    demand, untrusted = _demand(config, state, signals)
    history = recorded_history(config, state, now, demand if untrusted is None else None)
    rises = record_rises(config, state.demand_rises, history, now, untrusted is None)
    us = signals.units
    mode, switched, why, headroom_since = _next_mode(config, state, us, now)
    # Interrupted replicas still serve until their node goes (the router may use them), but the
    # plan counts only the lasting ones: their replacements start at the notice.
    ready = {u.name: us[u.name].ready_replicas for u in config.units}
    obtainable = _obtainable(config, us, mode)
    plan = allocate(config.units, demand, ready, obtainable, routing.target_utilisation, routing.max_utilisation)
    why += (
        f": demand {fmt(demand)} {config.rate_unit}"
        + (f" (estimated from the autoscaler: {untrusted})" if untrusted is not None else "")
        + "; routed "
        + ", ".join(f"{n} {fmt(r)}" for n, r in plan.routed_rps.items() if r > 0.05)
        + (f"; {fmt(plan.unmet_rps)} {config.rate_unit} beyond every replica" if plan.unmet_rps > 0.05 else "")
    )
    floors: dict[str, tuple[int, float]] = {}
    spare: dict[str, int] = {}
    if config.prewarm.enabled:
        # Sized for the demand one start-up ahead only when it is measured: the cluster estimate
        # follows the floors, and extrapolating it would ratchet them up.
        expected = demand_ahead(config, demand, history) if untrusted is None else demand
        # Replicas started now are ready when that demand is there; they need to carry it only at
        # max_utilisation (the autoscaler adds more once it sees it). So a rise within the headroom
        # between the target and max_utilisation (noise, a slow ramp) pre-warms nothing.
        sized = expected * routing.target_utilisation / routing.max_utilisation
        ahead = plan if sized <= demand else allocate(config.units, sized, ready, obtainable,
                                                      routing.target_utilisation, routing.max_utilisation)
        if sized > demand:
            why += f"; replicas for {fmt(expected)} {config.rate_unit} one start-up ahead (demand rising)"
        floors, spare = _floors(config, state, us, mode, plan, ahead, demand, obtainable, now, rises)
    target = plan.weights
    if spare:
        why += "; spare " + ", ".join(f"{n} +{k}" for n, k in spare.items()) + " for the recorded demand rises"
        target = _burst_safe_weights(config, us, demand) or target
    weights = dict(target)
    if current and not switched and not _must_reroute(config, current, target, ready, demand):
        weights = current
        why += " (weights kept: within routing.min_weight_change)"
    new_state = PolicyState(mode=mode, since=now if switched else state.since, cost_headroom_since=headroom_since,
                            weights=dict(weights), floors=floors, planned=dict(plan.planned_rps), decided_at=now,
                            demand_history=history, demand_rises=rises)
    return Decision(state=new_state, weights=dict(weights), switched=switched, stale=False, reason=why,
                    prewarm={name: f[0] for name, f in floors.items()}, demand_rps=demand,
                    planned_rps=dict(plan.planned_rps))


def _hold_floor(state: PolicyState, name: str, default: int, want: int, now: float, hold_s: float) -> tuple[int, float]:
    """The next (floor, held until) of one unit: raise at once; lower to ``want`` only once the
    floor has not been wanted for ``hold_s`` (counted from the last decision that wanted it)."""
    value, until = state.floors.get(name, (default, math.inf))
    if want >= value:
        return want, math.inf
    if until == math.inf:  # wanted until the last decision
        until = last_decision(state, now) + hold_s
    if now >= until:
        return want, math.inf
    return value, until


def _must_reroute(
    config: ControllerConfig, current: Mapping[str, int], target: Mapping[str, int], ready: Mapping[str, int],
    demand: float,
) -> bool:
    """Whether the weights in effect must give way to ``target`` (merit-order deadband)."""
    if max(abs(target[n] - current.get(n, 0)) for n in target) >= config.routing.min_weight_change:
        return True
    for u in config.units:
        share = current.get(u.name, 0)
        if share > 0 and ready.get(u.name, 0) == 0:
            return True  # traffic to a unit with nothing ready
        # Above its scale target the autoscaler adds a replica that the new weights would not need.
        carry = ready.get(u.name, 0) * u.max_throughput * config.routing.target_utilisation
        if share > target[u.name] and demand * share / 100.0 > carry:
            return True
    return False
