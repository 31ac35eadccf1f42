"""How much demand there is: measured (Prometheus) when it can be trusted, else estimated from the cluster."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterator, Sequence

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
    for u, s, floor in _units_with_signals(config, state, signals):
        if s.desired_replicas > floor:
            total += (min(s.desired_replicas, u.max_replicas) - 1) * u.max_throughput * config.routing.target_utilisation
    return total


def _units_with_signals(config: ControllerConfig, state: PolicyState, signals: Signals) -> Iterator[tuple]:
    """(unit, its signals, the replica floor the controller last gave it) for every unit with signals."""
    for u in config.units:
        s = signals.units.get(u.name)
        if s is not None:
            yield u, s, state.floors.get(u.name, (u.min_replicas, 0.0))[0]


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
    for u, s, floor in _units_with_signals(config, state, signals):
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


# Fewest samples a slope is fitted on (per half in demand_slope): with three, one spike is outvoted.
MIN_SLOPE_SAMPLES = 3


def theil_sen_slope(samples: Sequence[tuple[float, float]]) -> float:
    """The median of the slopes between every pair of (time, value) samples; 0 with fewer than
    :data:`MIN_SLOPE_SAMPLES`. One outlier among n samples changes only n - 1 of the n (n - 1) / 2
    pairwise slopes, too few to move their median (a least-squares fit follows it)."""
    if len(samples) < MIN_SLOPE_SAMPLES:
        return 0.0
    slopes = [(d2 - d1) / (t2 - t1) for i, (t1, d1) in enumerate(samples) for t2, d2 in samples[i + 1:] if t2 > t1]
    return statistics.median(slopes) if slopes else 0.0


def demand_slope(history: Sequence[tuple[float, float]]) -> float:
    """The demand's sustained trend in rate units per second: the lesser of the Theil-Sen slopes
    of the older and the newer half of ``history`` (0 while either half has too few samples).

    A trend is what both halves show. A step (a burst, a spike) shows in at most one half at a
    time - the newer while it is recent, the older once it has aged - with the other half flat,
    so it is never extrapolated; a ramp shows in both. Within a half, Theil-Sen ignores a single
    outlier. Samples older than the window are gone, so nothing is extrapolated forever.
    """
    if len(history) < 2 * MIN_SLOPE_SAMPLES:
        return 0.0
    middle = (history[0][0] + history[-1][0]) / 2
    older = [s for s in history if s[0] <= middle]
    newer = [s for s in history if s[0] >= middle]
    return min(theil_sen_slope(older), theil_sen_slope(newer))


def demand_ahead(config: ControllerConfig, demand: float, history: Sequence[tuple[float, float]]) -> float:
    """Demand to size replicas for: the demand now plus its rising slope over ``prewarm.slope_horizon``
    start-ups (the longest ``startup_s``: replicas started now are ready then), the rise capped at
    ``prewarm.slope_cap`` x the demand now. A flat or falling demand gives the demand now."""
    prewarm = config.prewarm
    if prewarm.slope_horizon <= 0:
        return demand
    horizon = prewarm.slope_horizon * max(u.startup_s for u in config.units)
    rise = max(0.0, demand_slope(history)) * horizon
    return demand + min(rise, prewarm.slope_cap * demand)


def recorded_history(
    config: ControllerConfig, state: PolicyState, now: float, measured: float | None
) -> tuple[tuple[float, float], ...]:
    """``state.demand_history`` within ``prewarm.slope_window_s`` of ``now``, plus ``(now, measured)``
    when the demand was measured. Samples from the future (a clock that went back) are dropped."""
    window = config.prewarm.slope_window_s
    kept = tuple((t, d) for t, d in state.demand_history if now - window <= t < now)
    return kept + ((now, float(measured)),) if measured is not None else kept
