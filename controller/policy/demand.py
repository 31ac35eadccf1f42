"""How much demand there is: measured (Prometheus) when it can be trusted, else estimated from the cluster."""

from __future__ import annotations

import math

from controller.config import ControllerConfig
from controller.policy.model import COST, PolicyState, Signals


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


def routed_units(config: ControllerConfig, state: PolicyState) -> set[str]:
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
    routed = routed_units(config, state)
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
    routed = routed_units(config, state)
    total = 0.0
    for u in config.units:
        s = signals.units.get(u.name)
        if s is None or u.name not in routed:
            continue
        total += s.desired_replicas * u.max_throughput
    return total, True

