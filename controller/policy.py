"""The switching policy: pure functions, no I/O, no clock, no randomness.

Two states, as in the seed's option 3:

* ``cost-optimized``: all traffic to the ready units of the cost pool
  (:func:`controller.weights.cost_optimized_weights`).
* ``capacity-optimized``: traffic spread over every unit in proportion to the capacity it can get,
  weighted by the adjusted throughput of seed Table 2
  (:func:`controller.weights.capacity_optimized_weights`).

Failover (cost -> capacity) happens at the first decision where the cost pool shows insufficient
capacity (pods unschedulable past the grace period, or InsufficientCapacityError events / failed
NodeClaims) while demand exceeds what its ready replicas serve, or as soon as demand exceeds what
the cost pool could serve even at max_replicas. It is never delayed: delaying it drops requests.

Fallback (capacity -> cost) happens only after the cost pool has shown ready headroom
continuously for ``timing.fallback_hold_s`` and the controller has been capacity-optimized for at
least ``timing.min_state_s``. Any sign of shortage resets the headroom clock, so flapping signals
cannot make the weights oscillate.

The controller (:mod:`controller.loop`) and the simulator both call :func:`decide`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

from controller.allocation import allocate, urgent_bridge
from controller.config import ControllerConfig, Timing
from controller.weights import (
    capacity_optimized_weights,
    cost_optimized_weights,
    integer_weights,
    ramp_weights,
    valid_weights,
)

COST = "cost-optimized"
CAPACITY = "capacity-optimized"
Mode = Literal["cost-optimized", "capacity-optimized"]


@dataclass(frozen=True)
class UnitSignals:
    ready_replicas: int
    desired_replicas: int  # what the autoscaler asked for
    pending_replicas: int = 0  # pods not yet running (scheduling, pulling, starting)
    unschedulable_replicas: int = 0  # pending because unschedulable for longer than the grace period
    capacity_errors: int = 0  # InsufficientCapacityError events / failed NodeClaims in the window
    # Pods on nodes that got a spot interruption notice (Karpenter's SpotInterrupted events): they
    # are gone within 2 minutes, so they count as neither ready nor obtainable, and the unit is short.
    interrupting_replicas: int = 0


@dataclass(frozen=True)
class Signals:
    at: float  # epoch seconds when observed
    units: Mapping[str, UnitSignals]
    demand_rps: float | None = None  # total request rate; None = estimate from the autoscaler
    # The demand query returned no series at all (demand_rps is then 0.0). That is zero demand only
    # when nothing serves; while units with weight have ready replicas it is a signal failure (a
    # renamed metric, a Prometheus restart, a scrape that stopped): see measured_demand().
    demand_no_series: bool = False
    demand_error: str | None = None  # why the demand source gave no figure (for the reason)


@dataclass(frozen=True)
class PolicyState:
    mode: Mode
    since: float  # when the current mode was entered
    cost_headroom_since: float | None = None  # start of the current run of cost-pool headroom
    weights: Mapping[str, int] = field(default_factory=dict)  # weights in effect (last applied)
    # Keep capacity units pre-warmed until then; math.inf while the trigger holds (the hold starts
    # at the last decision that saw the trigger).
    prewarm_until: float | None = None
    # Replicas each capacity-short unit is credited with: the fewest ready replicas seen since
    # it became short, so capacity-optimized weights drop fast and rise only once it is not short.
    short_capacity: Mapping[str, float] = field(default_factory=dict)
    # merit-order: replica floors in effect and until when each is held before it may go down
    # (math.inf while the plan still wants it). Hold timers only change when what is wanted
    # changes, so the state that is persisted (controller/state.py) is written on transitions only.
    floors: Mapping[str, tuple[int, float]] = field(default_factory=dict)
    # merit-order: where the last decision planned the demand (config units), the base of the
    # estimate when demand cannot be measured (cluster_demand_estimate).
    planned: Mapping[str, float] = field(default_factory=dict)
    decided_at: float | None = None  # time of the decision that produced this state


@dataclass(frozen=True)
class Decision:
    state: PolicyState  # the state to carry into the next decision
    weights: dict[str, int]  # weights to apply (always sums to 100)
    switched: bool  # mode changed in this decision
    stale: bool  # signals were stale or incomplete: nothing must be actuated
    reason: str  # one line for logs, status and Events
    prewarm: dict[str, int] = field(default_factory=dict)  # unit -> minReplicas to set (empty: no pre-warm)
    demand_rps: float | None = None  # demand the decision used (measured or estimated)
    planned_rps: dict[str, float] = field(default_factory=dict)  # merit-order: where traffic should be


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


def initial_state(config: ControllerConfig, now: float) -> PolicyState:
    """Start cost-optimized, with no weights known yet (the loop fills them from the cluster)."""
    return PolicyState(mode=COST, since=now)


def measured_demand(state: PolicyState, signals: Signals) -> tuple[float | None, str]:
    """The measured demand if it can be trusted, else None and why not.

    Not trusted: no measurement, a value that is not a finite number >= 0, and "no series" while a
    unit that carries weight (any unit, when the weights are unknown) has a ready replica: those
    replicas were serving, so an empty result means the metric is missing, not that demand is 0.
    """
    value = signals.demand_rps
    if value is None:
        return None, "no demand measurement" + (f" ({signals.demand_error})" if signals.demand_error else "")
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None, f"demand measurement {value!r} is not a number"
    if not math.isfinite(value) or value < 0:
        return None, f"demand measurement {value!r} is not a finite rate >= 0"
    if signals.demand_no_series:
        routed = {n for n, w in state.weights.items() if w > 0} or set(signals.units)
        if any(signals.units[n].ready_replicas > 0 for n in routed if n in signals.units):
            return None, "the demand query returned no series while units with weight have ready replicas"
        return 0.0, ""
    return value, ""


def autoscaler_demand_floor(config: ControllerConfig, state: PolicyState, signals: Signals) -> float:
    """Load the autoscalers are provably scaled for: a KPA that wants ``desired`` replicas above
    the floor the controller gave it sees more than ``desired - 1`` replicas' worth of load at the
    target (it rounds up). A measurement below that misses requests: a rate over a window that
    is only partly filled after a Prometheus restart, or a query that matches only some series."""
    total = 0.0
    for u in config.units:
        s = signals.units.get(u.name)
        if s is None:
            continue
        floor = state.floors.get(u.name, (u.min_replicas, 0.0))[0]
        if s.desired_replicas > floor:
            total += (min(s.desired_replicas, u.max_replicas) - 1) * u.max_throughput * config.routing.target_utilisation
    return total


def _routed_units(config: ControllerConfig, state: PolicyState) -> set[str]:
    """Units that currently get traffic; when the weights are unknown, those the mode routes to."""
    routed = {name for name, w in state.weights.items() if w > 0}
    if not routed:
        routed = {u.name for u in (config.cost_units if state.mode == COST else config.units)}
    return routed


def cluster_demand_estimate(config: ControllerConfig, state: PolicyState, signals: Signals) -> float:
    """Demand as the cluster shows it (merit-order without a measurement), in config units.

    Per unit: Knative's KPA sets ``desiredScale`` from the concurrency that the unit's pods and the
    activator report (requests buffered for a unit with no ready pod count too), so a unit whose
    autoscaler wants more than the floor the controller gave it carries about
    ``desired * max_throughput * target_utilisation``. A unit held at its floor says nothing about
    its load (the KPA's desiredScale is clamped to min-scale): it counts what the last decision
    planned for it, or, with no plan known (a fresh start), what its ready replicas carry at the
    target if it gets traffic. So the floors set from this estimate cannot feed back into it and
    ratchet it up. And since a falling load is invisible behind a floor, that planned share decays
    (half-life ``prewarm.hold_s``): the floors come down, and where the load is real the
    autoscaler asks for more than the floor again, which the estimate sees at once. Lowering a
    floor never removes replicas that carry load: the KPA keeps what its observed concurrency needs.
    """
    routed = _routed_units(config, state)
    target = config.routing.target_utilisation
    elapsed = max(0.0, signals.at - state.decided_at) if state.decided_at is not None else 0.0
    decay = 0.5 ** (elapsed / config.prewarm.hold_s) if config.prewarm.hold_s > 0 else 1.0
    total = 0.0
    for u in config.units:
        s = signals.units.get(u.name)
        if s is None:
            continue
        floor = state.floors.get(u.name, (u.min_replicas, 0.0))[0]
        at_target = u.max_throughput * target
        if s.desired_replicas > floor and (u.name in routed or not state.planned):
            total += min(s.desired_replicas, u.max_replicas) * at_target
        elif state.planned:
            total += float(state.planned.get(u.name, 0.0)) * decay
        elif u.name in routed:
            total += min(s.desired_replicas, s.ready_replicas, u.max_replicas) * at_target
    return total


def route_around_unready(
    config: ControllerConfig, weights: Mapping[str, int], units: Mapping[str, UnitSignals]
) -> dict[str, int]:
    """``weights`` with nothing left on a unit known to have no ready replica, if another has one.

    The safety net under every decision, stale or not: whatever the signals do, traffic is not
    stranded. The weight taken away goes to the units with ready replicas in proportion to their
    ready capacity (``ready * max_throughput``); units without signals are left as they are.
    """
    names = [u.name for u in config.units]
    if not valid_weights(weights, names):
        return dict(weights)
    dead = [n for n in names if weights[n] > 0 and n in units and units[n].ready_replicas <= 0]
    capacity = {u.name: units[u.name].ready_replicas * u.max_throughput
                for u in config.units if u.name in units and units[u.name].ready_replicas > 0}
    if not dead or not capacity:
        return dict(weights)
    moved = sum(weights[n] for n in dead)
    total = sum(capacity.values())
    shares = {n: (0.0 if n in dead else float(weights[n])) + moved * capacity.get(n, 0.0) / total for n in names}
    return integer_weights(shares)


def estimate_demand(config: ControllerConfig, state: PolicyState, signals: Signals) -> tuple[float, bool]:
    """Demand in requests/s and whether it was estimated.

    Measured demand (Prometheus) wins when it can be trusted (:func:`measured_demand`). Without
    it, demand is what the autoscaler asked for on the units that currently receive traffic:
    sum(desired_replicas * max_throughput). That is an upper bound (the autoscaler rounds up),
    which errs towards failing over and against falling back.
    """
    measured, _ = measured_demand(state, signals)
    if measured is not None:
        return measured, False
    routed = _routed_units(config, state)
    total = 0.0
    for u in config.units:
        s = signals.units.get(u.name)
        if s is None or u.name not in routed:
            continue
        total += s.desired_replicas * u.max_throughput
    return total, True


def _unit_short(s: UnitSignals) -> bool:
    return s.unschedulable_replicas > 0 or s.capacity_errors > 0 or s.interrupting_replicas > 0


def _lasting_ready(s: UnitSignals) -> int:
    """Ready replicas that will still be there in two minutes (not on an interrupted node)."""
    return max(0, s.ready_replicas - s.interrupting_replicas)


def observe(config: ControllerConfig, state: PolicyState, signals: Signals) -> PoolView:
    """Derive pool-level facts from per-unit signals (no decision yet)."""
    demand, estimated = estimate_demand(config, state, signals)
    cost_units = config.cost_units
    us = signals.units
    cost_served = sum(us[u.name].ready_replicas * u.max_throughput for u in cost_units)
    cost_max = sum(u.max_replicas * u.max_throughput for u in cost_units)
    cost_short = any(_unit_short(us[u.name]) for u in cost_units)
    all_obtained = all(us[u.name].ready_replicas >= us[u.name].desired_replicas for u in cost_units)
    any_ready = any(us[u.name].ready_replicas > 0 for u in cost_units)
    headroom = not cost_short and all_obtained and any_ready and demand * config.thresholds.headroom_ratio <= cost_max
    ready = {u.name: us[u.name].ready_replicas > 0 for u in config.units}
    obtainable: dict[str, float] = {}
    short_capacity: dict[str, float] = {}
    for u in config.units:
        s = us[u.name]
        if _unit_short(s):
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


def _fmt(x: float) -> str:
    return f"{x:.1f}"


def decide(config: ControllerConfig, state: PolicyState, signals: Signals, now: float) -> Decision:
    """One decision: the next state, the weights to apply, and why."""
    names = [u.name for u in config.units]
    timing = config.timing
    current = dict(state.weights) if valid_weights(state.weights, names) else {}

    # ---- stale or incomplete signals: hold everything, say so.
    age = now - signals.at
    missing = [n for n in names if n not in signals.units]
    if age > timing.signal_max_age_s or missing or age < -timing.signal_max_age_s:
        if missing:
            why = f"stale: no signals for {', '.join(missing)}; holding weights"
        else:
            why = f"stale: signals are {_fmt(age)} s old (max {timing.signal_max_age_s:g} s); holding weights"
        held = current or (
            cost_optimized_weights(config.units) if state.mode == COST else capacity_optimized_weights(config.units)
        )
        safe = route_around_unready(config, held, signals.units)
        if safe != held:
            why += "; traffic moved off units without a ready replica"
        return Decision(state=with_weights(state, safe) if current else state, weights=safe, switched=False,
                        stale=True, reason=why)

    if config.routing.strategy == "merit-order":
        return _decide_merit_order(config, state, signals, now, current)

    view = observe(config, state, signals)

    # ---- headroom clock (reset by any shortage).
    headroom_since = _headroom_clock(state, view.cost_headroom, now)

    mode: Mode = state.mode
    since = state.since
    switched = False
    if state.mode == COST:
        if view.cost_short and view.demand_rps > view.cost_served_rps:
            mode, switched = CAPACITY, True
            why = (
                f"failover: cost pool short of capacity and demand {_fmt(view.demand_rps)} {config.rate_unit} > "
                f"{_fmt(view.cost_served_rps)} {config.rate_unit} it serves"
            )
        elif view.demand_rps > view.cost_max_rps:
            mode, switched = CAPACITY, True
            why = (
                f"failover: demand {_fmt(view.demand_rps)} {config.rate_unit} exceeds the cost pool maximum "
                f"{_fmt(view.cost_max_rps)} {config.rate_unit}"
            )
        else:
            why = (
                f"cost-optimized: demand {_fmt(view.demand_rps)} {config.rate_unit}, cost pool serves "
                f"{_fmt(view.cost_served_rps)} {config.rate_unit}" + (" (short of capacity)" if view.cost_short else "")
            )
    else:
        in_state = now - state.since
        held, due = _fallback_due(timing, state, headroom_since, now)
        if due:
            mode, switched = COST, True
            why = f"fallback: cost pool had headroom for {_fmt(held)} s (hold {timing.fallback_hold_s:g} s)"
        elif headroom_since is not None:
            why = (
                f"capacity-optimized: cost pool headroom for {_fmt(held)} s of {timing.fallback_hold_s:g} s, "
                f"{_fmt(in_state)} s in state (min {timing.min_state_s:g} s)"
            )
        else:
            why = "capacity-optimized: cost pool has no headroom" + (
                " (short of capacity)"
                if view.cost_short
                else f" (demand {_fmt(view.demand_rps)} {config.rate_unit}, cost pool max {_fmt(view.cost_max_rps)} {config.rate_unit})"
            )
    if switched:
        since = now

    # ---- weights: target for the mode, never to unready units, ramped except on failover.
    target = target_weights(config, mode, view)
    if switched and mode == CAPACITY:
        weights = target  # failover is urgent: no ramp
    else:
        base = current
        if base and any(view.ready.values()):
            # Drop unready units at once, then ramp the rest.
            if any(base[n] > 0 and not view.ready[n] for n in names):
                live = {n: (float(base[n]) if view.ready[n] else 0.0) for n in names}
                base = _renormalize(live, target)
        weights = ramp_weights(base, target, timing.max_weight_step) if base else target
    if not valid_weights(weights, names):  # pragma: no cover - guarded by the weight functions
        raise AssertionError(f"policy produced invalid weights {weights}")

    # ---- pre-warm the capacity pool ahead of a failover.
    prewarm: dict[str, int] = {}
    prewarm_until = state.prewarm_until
    if config.prewarm.enabled:
        cost_units = config.cost_units
        trigger = (
            view.cost_short
            or any(signals.units[u.name].pending_replicas > 0 for u in cost_units)
            or view.demand_rps > config.prewarm.utilization * view.cost_max_rps
            or mode == CAPACITY
        )
        if trigger:
            prewarm_until = math.inf
        elif prewarm_until == math.inf:  # the trigger has just ended: hold from the last one
            prewarm_until = _last_decision(state, now) + config.prewarm.hold_s
        if prewarm_until is not None and now < prewarm_until:
            prewarm = _prewarm_replicas(config, view)
        else:
            prewarm_until = None
            prewarm = {u.name: u.min_replicas for u in config.capacity_units}

    new_state = PolicyState(
        mode=mode,
        since=since,
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


def _decide_merit_order(
    config: ControllerConfig, state: PolicyState, signals: Signals, now: float, current: dict[str, int]
) -> Decision:
    """The ``merit-order`` strategy (see :mod:`controller.allocation`).

    The mode still says whether the cost pool is short of capacity, with the same hysteresis as
    the proportional strategy, but it no longer moves all traffic at once: it only decides whether
    the cost pool may grow (cost-optimized) or is held to the replicas it runs (capacity-optimized).
    In capacity-optimized mode the cost pool keeps asking for the replicas the cost-optimized plan
    would give it (its ``minReplicas``): those pods are the capacity probe. When they schedule
    and become ready, traffic moves back to them and the capacity units' floors come down; the
    mode returns to cost-optimized once the cost pool has held everything it asked for, without
    any shortage, for ``fallback_hold_s``.
    """
    timing = config.timing
    routing = config.routing
    demand, untrusted = measured_demand(state, signals)
    # Half: the KPA keeps its replicas for a while after the load drops (stable window, scale-down
    # delay), so only a measurement far below what it is scaled for is a missing measurement.
    if demand is not None and demand < 0.5 * (least := autoscaler_demand_floor(config, state, signals)):
        untrusted = (f"measured {_fmt(demand)} {config.rate_unit} is less than the {_fmt(least)} the autoscalers "
                     "are scaled for")
        demand = None
    estimated = demand is None
    if demand is None:
        # Decide from what the cluster shows rather than hold: holding keeps the weights on a unit
        # that may have lost every pod.
        demand = cluster_demand_estimate(config, state, signals)
    us = signals.units
    cost_units = config.cost_units
    short = any(_unit_short(us[u.name]) for u in cost_units)
    # Pods that cannot schedule, or capacity errors while the cost pool wants more than it runs.
    blocked = any(
        us[u.name].unschedulable_replicas > 0
        or us[u.name].interrupting_replicas > 0
        or (us[u.name].capacity_errors > 0 and us[u.name].desired_replicas > us[u.name].ready_replicas)
        for u in cost_units
    )
    holds_all = all(us[u.name].ready_replicas >= us[u.name].desired_replicas for u in cost_units)
    headroom = not short and holds_all
    headroom_since = _headroom_clock(state, headroom, now)

    mode: Mode = state.mode
    switched = False
    if state.mode == COST:
        if blocked:
            mode, switched = CAPACITY, True
            why = "failover: cost pool short of capacity; holding it to the replicas it runs"
        else:
            why = "cost-optimized"
    else:
        held, due = _fallback_due(timing, state, headroom_since, now)
        if due:
            mode, switched = COST, True
            why = f"fallback: cost pool held all it asked for, no shortage, for {_fmt(held)} s"
        elif headroom_since is not None:
            why = f"capacity-optimized: cost pool headroom for {_fmt(held)} s of {timing.fallback_hold_s:g} s"
        else:
            why = "capacity-optimized: cost pool " + ("short of capacity" if short else "starting the replicas it asked for")
    since = now if switched else state.since

    # Interrupted replicas still serve until their node goes (the router may use them), but the
    # plan counts only the lasting ones: their replacements start at the notice.
    ready = {u.name: us[u.name].ready_replicas for u in config.units}
    growable = {u.name: float(u.max_replicas) for u in config.units}
    obtainable = dict(growable)
    for u in config.units:
        s = us[u.name]
        if (mode == CAPACITY and u.pool == "cost") or _unit_short(s):
            # What it runs (Pending pods may never schedule); a cost unit that is not short any
            # more is credited with everything it asked for.
            running = s.desired_replicas - s.pending_replicas - s.interrupting_replicas
            have = running if _unit_short(s) else s.desired_replicas - s.unschedulable_replicas
            obtainable[u.name] = float(min(u.max_replicas, max(_lasting_ready(s), have)))
    plan = allocate(config.units, demand, ready, obtainable, routing.target_utilisation, routing.max_utilisation)
    why += (
        f": demand {_fmt(demand)} {config.rate_unit}"
        + (f" (estimated from the autoscaler: {untrusted})" if estimated else "")
        + "; routed "
        + ", ".join(f"{n} {_fmt(r)}" for n, r in plan.routed_rps.items() if r > 0.05)
        + (f"; {_fmt(plan.unmet_rps)} {config.rate_unit} beyond every replica" if plan.unmet_rps > 0.05 else "")
    )

    weights = dict(plan.weights)
    if current and not switched and not _must_reroute(config, current, plan.weights, ready, demand):
        weights = current
        why += " (weights kept: within routing.min_weight_change)"

    prewarm: dict[str, int] = {}
    floors: dict[str, tuple[int, float]] = {}
    if config.prewarm.enabled:
        want = dict(plan.replicas)
        if mode == CAPACITY:  # the probe: what the cost pool would run if it could grow
            probe = allocate(config.units, demand, ready, {**obtainable, **{u.name: growable[u.name] for u in cost_units}},
                             routing.target_utilisation, routing.max_utilisation)
            for u in cost_units:
                want[u.name] = max(want[u.name], probe.replicas[u.name])
        else:  # the autoscaler sizes a cost pool that can grow, unless it must grow faster than its traffic
            for u in cost_units:
                urgent = plan.planned_rps[u.name] > plan.routed_rps[u.name] + 0.5 * u.max_throughput
                want[u.name] = plan.replicas[u.name] if urgent else u.min_replicas
        lasting = {u.name: _lasting_ready(us[u.name]) for u in config.units}
        for name, n in urgent_bridge(config.units, demand, lasting, obtainable, plan.replicas, routing.drop_cost_usd,
                                     config.prewarm.hold_s, routing.target_utilisation,
                                     routing.max_utilisation).items():
            want[name] += n
        for u in config.units:
            if mode == CAPACITY and config.prewarm.hold_until_fallback and u.pool != "cost":
                want[u.name] = max(want[u.name], state.floors.get(u.name, (u.min_replicas, 0.0))[0])
            floors[u.name] = _hold_floor(state, u.name, u.min_replicas, want[u.name], now, config.prewarm.hold_s)
            prewarm[u.name] = floors[u.name][0]

    new_state = PolicyState(mode=mode, since=since, cost_headroom_since=headroom_since, weights=dict(weights),
                            floors=floors, planned=dict(plan.planned_rps), decided_at=now)
    return Decision(state=new_state, weights=dict(weights), switched=switched, stale=False, reason=why,
                    prewarm=prewarm, demand_rps=demand, planned_rps=dict(plan.planned_rps))


def _last_decision(state: PolicyState, now: float) -> float:
    return state.decided_at if state.decided_at is not None else now


def _hold_floor(state: PolicyState, name: str, default: int, want: int, now: float, hold_s: float) -> tuple[int, float]:
    """The next (floor, held until) of one unit: raise at once; lower to ``want`` only once the
    floor has not been wanted for ``hold_s`` (counted from the last decision that wanted it)."""
    value, until = state.floors.get(name, (default, math.inf))
    if want >= value:
        return want, math.inf
    if until == math.inf:  # wanted until the last decision
        until = _last_decision(state, now) + hold_s
    if now >= until:
        return want, math.inf
    return value, until


def _headroom_clock(state: PolicyState, headroom: bool, now: float) -> float | None:
    """Start of the current run of cost-pool headroom (None while there is none: any shortage resets it)."""
    if not headroom:
        return None
    return state.cost_headroom_since if state.cost_headroom_since is not None else now


def _fallback_due(timing: Timing, state: PolicyState, headroom_since: float | None, now: float) -> tuple[float, bool]:
    """How long the headroom has held, and whether that and the time in state allow a fallback."""
    if headroom_since is None:
        return 0.0, False
    held = now - headroom_since
    return held, held >= timing.fallback_hold_s and now - state.since >= timing.min_state_s


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


def _renormalize(live: Mapping[str, float], fallback: Mapping[str, int]) -> dict[str, int]:
    if sum(live.values()) <= 0:
        return dict(fallback)
    return integer_weights(live)


def with_weights(state: PolicyState, weights: Mapping[str, int]) -> PolicyState:
    """The same state with the weights actually in effect (after a paused or failed actuation)."""
    return replace(state, weights=dict(weights))
