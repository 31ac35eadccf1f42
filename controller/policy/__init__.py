"""The switching policy: pure functions, no I/O, no clock, no randomness.

Two states, as in the seed's option 3: ``cost-optimized`` (the cost pool can grow and takes the
traffic) and ``capacity-optimized`` (the cost pool is short of capacity and traffic spreads over
the pools that have it). How the weights follow from the state is the routing strategy:
:mod:`controller.policy.proportional` or :mod:`controller.policy.merit_order`.

Failover (cost -> capacity) happens at the first decision where the cost pool shows insufficient
capacity (pods unschedulable past the grace period, or InsufficientCapacityError events / failed
NodeClaims) while demand exceeds what its ready replicas serve, or as soon as demand exceeds what
the cost pool could serve even at max_replicas. It is never delayed: delaying it drops requests.

Fallback (capacity -> cost) happens only after the cost pool has shown ready headroom
continuously for ``timing.fallback_hold_s`` and the controller has been capacity-optimized for at
least ``timing.min_state_s``. Any sign of shortage resets the headroom clock, so flapping signals
cannot make the weights oscillate.

The package is laid out by job: :mod:`~controller.policy.model` (signals, state, decision),
:mod:`~controller.policy.demand` (measured or estimated demand), one module per strategy, and here
:func:`decide`, which holds on stale signals and otherwise asks the configured strategy. The
controller (through :func:`controller.reconcile.plan`) and the simulator both call :func:`decide`.
"""

from __future__ import annotations

from collections.abc import Mapping

from controller.config import ControllerConfig
from controller.policy.demand import (
    autoscaler_demand_floor,
    cluster_demand_estimate,
    estimate_demand,
    measured_demand,
)
from controller.policy.merit_order import decide_merit_order
from controller.policy.model import (
    CAPACITY,
    COST,
    Decision,
    Mode,
    PolicyState,
    Signals,
    UnitSignals,
    fmt,
    initial_state,
    with_weights,
)
from controller.policy.proportional import PoolView, decide_proportional, observe, target_weights
from controller.weights import capacity_optimized_weights, cost_optimized_weights, integer_weights, valid_weights

__all__ = [
    "CAPACITY",
    "COST",
    "Decision",
    "Mode",
    "PolicyState",
    "PoolView",
    "Signals",
    "UnitSignals",
    "autoscaler_demand_floor",
    "cluster_demand_estimate",
    "decide",
    "estimate_demand",
    "initial_state",
    "measured_demand",
    "observe",
    "route_around_unready",
    "target_weights",
    "with_weights",
]


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
            why = f"stale: signals are {fmt(age)} s old (max {timing.signal_max_age_s:g} s); holding weights"
        held = current or (
            cost_optimized_weights(config.units) if state.mode == COST else capacity_optimized_weights(config.units)
        )
        safe = route_around_unready(config, held, signals.units)
        if safe != held:
            why += "; traffic moved off units without a ready replica"
        return Decision(state=with_weights(state, safe) if current else state, weights=safe, switched=False,
                        stale=True, reason=why)

    if config.routing.strategy == "merit-order":
        return decide_merit_order(config, state, signals, now, current)
    return decide_proportional(config, state, signals, now, current)
