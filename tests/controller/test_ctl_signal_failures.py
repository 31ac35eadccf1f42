"""A failed signal never strands traffic: the policy side, pure (times are explicit).

Whatever the demand signal does (Prometheus down, slow, empty, nonsense) and however stale or
incomplete the cluster signals are, the weights never stay on a unit without a ready replica
while another unit has one. Without a demand figure the merit-order strategy decides from what
the cluster shows (the autoscaler's desired scale and the ready replicas) instead of holding.
"""

import dataclasses
import math
import random

import pytest

from controller.policy import (
    CAPACITY,
    COST,
    PolicyState,
    Signals,
    UnitSignals,
    cluster_demand_estimate,
    decide,
    initial_state,
)
from controller.weights import valid_weights

from .test_ctl_policy import CFG as PROPORTIONAL
from .test_ctl_policy_merit import CFG, G5C, G5T, G6T, HOLD, INF2, NAMES, TPUT, TRN1, outage, signals

ALL_TO_INF2 = {n: (100 if n == INF2 else 0) for n in NAMES}


def inf2_lost_every_pod(t, demand=None, no_series=False, wanted=6):
    """The cost unit's pods are all gone and cannot be scheduled; Karpenter reports ICE."""
    sig = signals(t, demand, inf2_ready=0, desired=wanted, pending_replicas=wanted,
                  unschedulable_replicas=wanted, capacity_errors=3)
    return dataclasses.replace(sig, demand_no_series=no_series)


def serving_on_inf2(t=0.0):
    """Cost-optimized, everything routed to inf2 (what the issue's operator saw)."""
    return PolicyState(mode=COST, since=t, weights=dict(ALL_TO_INF2))


def assert_no_weight_on_unready(d, sig):
    assert valid_weights(d.weights, NAMES)
    ready = {n: s.ready_replicas for n, s in sig.units.items()}
    if any(ready.values()):
        stranded = {n: w for n, w in d.weights.items() if w > 0 and ready.get(n, 1) == 0}
        assert stranded == {}, f"weight on units without a ready replica: {stranded} ({d.reason})"


def test_prometheus_down_while_the_cost_unit_loses_every_pod_moves_traffic_to_ready_units():
    sig = inf2_lost_every_pod(30)
    d = decide(CFG, serving_on_inf2(), sig, 30)
    assert not d.stale and d.weights[INF2] == 0
    assert_no_weight_on_unready(d, sig)
    # Demand comes from what the cluster shows: inf2's autoscaler wants 6 replicas at its target.
    assert d.demand_rps == pytest.approx(6 * TPUT[INF2] * CFG.routing.target_utilisation)
    assert "estimated" in d.reason and d.switched and d.state.mode == CAPACITY
    # The next cheapest units are started for the stranded demand, not left at their floor of 1.
    assert sum(d.prewarm[n] for n in NAMES[1:]) > len(NAMES) - 1


def test_an_empty_prometheus_result_while_units_serve_is_a_signal_failure_not_zero_demand():
    state = decide(CFG, initial_state(CFG, 0), signals(0, 900.0, inf2_ready=8, desired=8), 0).state
    raised = dict(state.floors)
    empty = dataclasses.replace(signals(30, 0.0, inf2_ready=8, desired=8), demand_no_series=True)
    d = decide(CFG, state, empty, 30)
    assert d.demand_rps > 0 and "no series" in d.reason
    # Zero demand would put everything on the cheapest ready unit; the estimate keeps the split.
    assert all(abs(d.weights[n] - state.weights[n]) < 5 for n in NAMES)
    assert {n: f[0] for n, f in d.state.floors.items()} == {n: f[0] for n, f in raised.items()}


def test_an_empty_result_with_nothing_serving_is_zero_demand():
    nothing = {n: UnitSignals(ready_replicas=0, desired_replicas=0) for n in NAMES}
    sig = Signals(at=0, units=nothing, demand_rps=0.0, demand_no_series=True)
    d = decide(CFG, initial_state(CFG, 0), sig, 0)
    assert d.demand_rps == 0.0 and "estimated" not in d.reason


@pytest.mark.parametrize("nonsense", [math.nan, math.inf, -5.0])
def test_nonsense_demand_is_treated_as_no_measurement(nonsense):
    sig = dataclasses.replace(inf2_lost_every_pod(30), demand_rps=nonsense)
    d = decide(CFG, serving_on_inf2(), sig, 30)
    assert math.isfinite(d.demand_rps) and d.demand_rps > 0 and d.weights[INF2] == 0


def test_without_a_measurement_floors_come_down_after_the_hold_and_back_with_the_load():
    """Behind a floor a falling load is invisible (the KPA's desired scale is clamped to it): the
    estimate lets held floors decay after prewarm.hold_s; where the load is real, the autoscaler
    asks for more than the floor and the estimate (and the floor) follow at once."""
    state = decide(CFG, initial_state(CFG, 0), outage(0, demand=800.0), 0).state
    high = state.floors[TRN1][0]
    assert high >= 3
    t, seen = 0.0, []

    def pinned(t, state):
        units = {}
        for n in NAMES:  # every unit's autoscaler is clamped to its floor; inf2 runs 4 of its pods
            floor = state.floors[n][0]
            ready = min(floor, 4) if n == INF2 else floor
            units[n] = UnitSignals(ready_replicas=ready, desired_replicas=floor, pending_replicas=floor - ready,
                                   unschedulable_replicas=floor - ready, capacity_errors=3 if n == INF2 else 0)
        return units

    for _ in range(60):
        t += 30
        d = decide(CFG, state, Signals(at=t, units=pinned(t, state), demand_rps=None), t)
        seen.append((t, d.prewarm[TRN1]))
        state = d.state
    assert all(v == high for when, v in seen if when < HOLD)
    assert seen[-1][1] < high
    units = pinned(t + 30, state)
    units[TRN1] = UnitSignals(ready_replicas=state.floors[TRN1][0], desired_replicas=high)  # the load is back
    d = decide(CFG, state, Signals(at=t + 30, units=units, demand_rps=None), t + 30)
    assert d.demand_rps >= high * TPUT[TRN1] * CFG.routing.target_utilisation
    assert d.prewarm[TRN1] > seen[-1][1]


def test_the_estimate_is_stable_when_it_feeds_back_through_the_floors_it_sets():
    """Floors set from an estimate show up as desired replicas: the estimate must not ratchet."""
    state = serving_on_inf2()
    t = 0.0
    estimates = []
    for _ in range(20):
        t += 30
        units = dict(inf2_lost_every_pod(t).units)
        for n in NAMES[1:]:  # each capacity unit runs (and reports as desired) the floor it was given
            floor = state.floors.get(n, (1, 0))[0]
            units[n] = UnitSignals(ready_replicas=floor, desired_replicas=floor)
        d = decide(CFG, state, Signals(at=t, units=units, demand_rps=None), t)
        estimates.append(d.demand_rps)
        state = d.state
    assert max(estimates) <= estimates[0] * 1.3


def test_cluster_estimate_counts_what_each_routed_unit_serves_or_wants():
    sig = inf2_lost_every_pod(0)
    # inf2 wants 6 above its floor of 1: its autoscaler sees the buffered requests.
    est = cluster_demand_estimate(CFG, serving_on_inf2(), sig)
    assert est == pytest.approx(6 * 105 * CFG.routing.target_utilisation)
    # A unit at the floor the controller set counts only what its ready replicas carry.
    state = PolicyState(mode=CAPACITY, since=0, weights={INF2: 50, TRN1: 50, G5T: 0, G6T: 0, G5C: 0},
                        floors={INF2: (6, math.inf), TRN1: (3, math.inf)})
    units = dict(sig.units)
    units[INF2] = UnitSignals(ready_replicas=2, desired_replicas=6, pending_replicas=4, unschedulable_replicas=4)
    units[TRN1] = UnitSignals(ready_replicas=3, desired_replicas=3)
    est = cluster_demand_estimate(CFG, state, dataclasses.replace(sig, units=units))
    assert est == pytest.approx((2 * 105 + 3 * 130) * CFG.routing.target_utilisation)


@pytest.mark.parametrize("config", [CFG, PROPORTIONAL], ids=["merit-order", "proportional"])
def test_stale_signals_still_take_weight_off_a_unit_without_ready_replicas(config):
    sig = inf2_lost_every_pod(0, demand=500.0)
    d = decide(config, serving_on_inf2(), sig, 500)  # observed 500 s ago: stale
    assert d.stale and d.state.mode == COST  # nothing else is decided on old signals
    assert d.weights[INF2] == 0
    assert_no_weight_on_unready(d, sig)


@pytest.mark.parametrize("config", [CFG, PROPORTIONAL], ids=["merit-order", "proportional"])
def test_missing_unit_signals_still_take_weight_off_a_unit_known_to_have_no_ready_replica(config):
    sig = inf2_lost_every_pod(0, demand=500.0)
    partial = dataclasses.replace(sig, units={k: v for k, v in sig.units.items() if k != G6T})
    d = decide(config, serving_on_inf2(), partial, 0)
    assert d.stale and G6T in d.reason
    assert d.weights[INF2] == 0 and d.weights[G6T] == 0 and valid_weights(d.weights, NAMES)


def test_stale_signals_leave_weights_alone_when_every_unit_with_weight_is_ready():
    state = decide(CFG, initial_state(CFG, 0), signals(0, 400.0), 0).state
    d = decide(CFG, state, signals(0, 400.0), 500)
    assert d.stale and d.weights == dict(state.weights)


@pytest.mark.parametrize("seed", range(6))
def test_random_signal_failures_never_leave_weight_on_a_unit_without_ready_replicas(seed):
    rng = random.Random(seed)
    state = serving_on_inf2()
    for i in range(200):
        t = i * 30.0
        units = {}
        for n in NAMES:
            desired = rng.randint(0, 10)
            ready = rng.randint(0, desired) if rng.random() < 0.7 else 0
            pending = max(0, desired - ready)
            units[n] = UnitSignals(ready_replicas=ready, desired_replicas=desired, pending_replicas=pending,
                                   unschedulable_replicas=rng.randint(0, pending),
                                   capacity_errors=rng.choice([0, 0, 3]))
        if rng.random() < 0.15:
            del units[rng.choice(NAMES)]
        demand = rng.choice([None, None, 0.0, math.nan, -1.0, rng.uniform(0, 2500)])
        at = t - rng.choice([0, 0, 0, 400])  # sometimes stale
        sig = Signals(at=at, units=units, demand_rps=demand, demand_no_series=demand == 0.0 and rng.random() < 0.5)
        d = decide(CFG, state, sig, t)
        assert_no_weight_on_unready(d, sig)
        if not d.stale:
            for u in CFG.units:
                assert u.min_replicas <= d.prewarm[u.name] <= u.max_replicas
        state = d.state


def test_a_measurement_far_below_what_the_autoscalers_are_scaled_for_is_not_believed():
    """A partly filled rate window (Prometheus restarted) or a query missing series reads low."""
    state = decide(CFG, initial_state(CFG, 0), signals(0, 600.0, inf2_ready=8, desired=8), 0).state
    low = decide(CFG, state, signals(30, 60.0, inf2_ready=8, desired=8), 30)  # inf2's KPA wants 8
    assert "is less than the" in low.reason and low.demand_rps > 7 * TPUT[INF2] * 0.7
    # A real drop shows up at the autoscaler too (or is within the KPA's lag): it is believed.
    fell = decide(CFG, state, signals(30, 300.0, inf2_ready=8, desired=8), 30)
    assert fell.demand_rps == 300.0 and "estimated" not in fell.reason
