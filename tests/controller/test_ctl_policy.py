"""The switching policy, as a specification. Pure: every test passes times explicitly."""

import dataclasses
import math
import random

import pytest

from controller.config import parse_config
from controller.policy import (
    CAPACITY,
    COST,
    PolicyState,
    Signals,
    UnitSignals,
    decide,
    estimate_demand,
    initial_state,
)
from controller.weights import valid_weights

NAMES = ["sd21-inf2", "sd21-trn1", "sd21-g5-triton", "sd21-g6-triton", "sd21-g5-cuda"]
TPUT = {"sd21-inf2": 105, "sd21-trn1": 130, "sd21-g5-triton": 90, "sd21-g6-triton": 61, "sd21-g5-cuda": 60}


def make_config(**overrides):
    data = {
        "namespace": "sd21",
        "units": [
            {
                "name": n,
                "pool": "cost" if n == "sd21-inf2" else "capacity",
                "instance_type": "x",
                "price_per_hour": 1.0 if n != "sd21-inf2" else 0.7582,
                "max_throughput": TPUT[n],
                "latency_s": 0.7,
                "max_replicas": 10,
                "min_replicas": 1,
            }
            for n in NAMES
        ],
        "router": {"name": "sd21-router"},
        "timing": {"interval_s": 30, "signal_max_age_s": 120, "min_state_s": 300, "fallback_hold_s": 900},
    }
    for key, value in overrides.items():
        data[key] = value
    return parse_config(data)


CFG = make_config()


def healthy(t, inf2_ready=3, demand=200.0, **inf2):
    units = {n: UnitSignals(ready_replicas=1, desired_replicas=1) for n in NAMES}
    units["sd21-inf2"] = UnitSignals(
        ready_replicas=inf2_ready, desired_replicas=inf2.pop("desired", inf2_ready), **inf2
    )
    return Signals(at=t, units=units, demand_rps=demand)


def outage(t, demand=500.0):
    """inf2 cannot get nodes: 2 ready, 5 wanted, 3 unschedulable, ICE events."""
    return healthy(
        t, inf2_ready=2, demand=demand, desired=5, pending_replicas=3, unschedulable_replicas=3, capacity_errors=4
    )


def run(config, signals_at, start=0.0, end=3600.0, step=30.0, state=None):
    """Drive decide() like the loop does; return the decisions."""
    state = state or initial_state(config, start)
    out = []
    t = start
    while t <= end:
        d = decide(config, state, signals_at(t), t)
        out.append((t, d))
        state = d.state
        t += step
    return out


def test_initial_state_is_cost_optimized_with_no_weights():
    s = initial_state(CFG, 100.0)
    assert s.mode == COST and s.since == 100.0 and dict(s.weights) == {}


def test_steady_state_stays_cost_optimized_and_sends_everything_to_inf2():
    decisions = run(CFG, lambda t: healthy(t))
    assert all(d.state.mode == COST and not d.switched and not d.stale for _, d in decisions)
    assert decisions[-1][1].weights == {
        "sd21-inf2": 100,
        "sd21-trn1": 0,
        "sd21-g5-triton": 0,
        "sd21-g6-triton": 0,
        "sd21-g5-cuda": 0,
    }


def test_failover_happens_in_the_first_decision_that_sees_the_outage():
    state = decide(CFG, initial_state(CFG, 0), healthy(0), 0).state
    d = decide(CFG, state, outage(30), 30)
    assert d.switched and d.state.mode == CAPACITY and d.state.since == 30
    assert d.reason.startswith("failover")
    assert sum(d.weights.values()) == 100
    assert d.weights["sd21-inf2"] > 0  # its 2 ready replicas still serve
    assert d.weights["sd21-trn1"] > d.weights["sd21-inf2"]  # inf2 capacity limited to what it has


def test_failover_is_not_ramped_even_with_a_small_weight_step():
    cfg = make_config(timing={"interval_s": 30, "max_weight_step": 5})
    state = decide(cfg, initial_state(cfg, 0), healthy(0), 0).state
    d = decide(cfg, state, outage(30), 30)
    assert d.switched and d.weights["sd21-inf2"] < 50


def test_shortage_without_unserved_demand_does_not_fail_over():
    # Capacity errors, but inf2's 3 ready replicas (315 rps) cover 200 rps.
    sig = healthy(0, inf2_ready=3, demand=200, desired=4, capacity_errors=2, unschedulable_replicas=1)
    d = decide(CFG, initial_state(CFG, 0), sig, 0)
    assert d.state.mode == COST and not d.switched
    assert "short of capacity" in d.reason


def test_demand_beyond_the_cost_pool_maximum_fails_over():
    d = decide(CFG, initial_state(CFG, 0), healthy(0, inf2_ready=10, demand=1500), 0)
    assert d.switched and "exceeds the cost pool maximum" in d.reason


def test_fallback_only_after_hold_period_of_headroom():
    # Outage 0..600 s, healthy afterwards: fallback when headroom has held 900 s -> at t = 600 + 900.
    decisions = run(CFG, lambda t: outage(t) if t < 600 else healthy(t, inf2_ready=5, demand=300))
    switches = [(t, d.state.mode) for t, d in decisions if d.switched]
    assert switches == [(0.0, CAPACITY), (1500.0, COST)]
    fallback = dict(decisions)[1500.0]
    assert fallback.reason.startswith("fallback") and fallback.weights["sd21-inf2"] == 100


def test_fallback_waits_for_min_state_time_even_with_headroom():
    cfg = make_config(timing={"interval_s": 30, "min_state_s": 1200, "fallback_hold_s": 60})
    decisions = run(cfg, lambda t: outage(t) if t < 30 else healthy(t), end=2000)
    switches = [(t, d.state.mode) for t, d in decisions if d.switched]
    assert switches == [(0.0, CAPACITY), (1200.0, COST)]


def test_flapping_signals_do_not_oscillate():
    # The cost pool flips between outage and healthy every decision for an hour.
    decisions = run(CFG, lambda t: outage(t) if int(t // 30) % 2 == 0 else healthy(t))
    assert sum(d.switched for _, d in decisions) == 1
    assert decisions[-1][1].state.mode == CAPACITY
    # ... and once it stops flapping, exactly one fallback after the hold.
    state = decisions[-1][1].state
    later = run(CFG, lambda t: healthy(t), start=3630, end=3630 + 1200, state=state)
    assert [t for t, d in later if d.switched] == [3630 + 900]


def test_headroom_needs_all_desired_replicas_ready_and_room_for_demand():
    state = PolicyState(mode=CAPACITY, since=0)
    # inf2 asks for 4, has 3: no headroom yet.
    d = decide(CFG, state, healthy(10, inf2_ready=3, desired=4), 10)
    assert d.state.cost_headroom_since is None
    # Demand 1000 rps * 1.2 > 10 * 105: no headroom even though nothing is pending.
    d = decide(CFG, state, healthy(10, inf2_ready=3, demand=1000), 10)
    assert d.state.cost_headroom_since is None
    d = decide(CFG, state, healthy(10, inf2_ready=3, demand=300), 10)
    assert d.state.cost_headroom_since == 10


def test_stale_signals_hold_weights_and_state():
    state = decide(CFG, initial_state(CFG, 0), healthy(0), 0).state
    d = decide(CFG, state, outage(0), 500)  # observed 500 s ago, max age 120 s
    assert d.stale and not d.switched and d.state == state
    assert d.weights == dict(state.weights) and "stale" in d.reason and d.prewarm == {}


def test_missing_unit_signals_are_stale():
    sig = healthy(0)
    partial = Signals(at=0, units={k: v for k, v in sig.units.items() if k != "sd21-g6-triton"}, demand_rps=1)
    d = decide(CFG, initial_state(CFG, 0), partial, 0)
    assert d.stale and "sd21-g6-triton" in d.reason
    assert valid_weights(d.weights, NAMES)


def test_never_routes_to_a_unit_without_ready_replicas():
    state = PolicyState(mode=CAPACITY, since=0)
    sig = outage(0)
    units = dict(sig.units)
    units["sd21-trn1"] = UnitSignals(ready_replicas=0, desired_replicas=1, pending_replicas=1)
    d = decide(CFG, state, dataclasses.replace(sig, units=units), 0)
    assert d.weights["sd21-trn1"] == 0 and sum(d.weights.values()) == 100


def test_unready_unit_is_dropped_at_once_even_when_ramping():
    cfg = make_config(timing={"interval_s": 30, "max_weight_step": 10})
    state = PolicyState(
        mode=COST,
        since=0,
        weights={"sd21-inf2": 60, "sd21-trn1": 40, "sd21-g5-triton": 0, "sd21-g6-triton": 0, "sd21-g5-cuda": 0},
    )
    units = dict(healthy(0).units)
    units["sd21-trn1"] = UnitSignals(ready_replicas=0, desired_replicas=1)
    d = decide(cfg, state, Signals(at=0, units=units, demand_rps=100), 0)
    assert d.weights["sd21-trn1"] == 0 and d.weights["sd21-inf2"] == 100


def test_when_nothing_is_ready_weights_still_sum_to_100():
    units = {n: UnitSignals(ready_replicas=0, desired_replicas=1, pending_replicas=1) for n in NAMES}
    d = decide(CFG, initial_state(CFG, 0), Signals(at=0, units=units, demand_rps=0), 0)
    assert d.weights["sd21-inf2"] == 100


def test_fallback_ramps_by_max_weight_step():
    cfg = make_config(timing={"interval_s": 30, "min_state_s": 0, "fallback_hold_s": 0, "max_weight_step": 25})
    state = decide(cfg, initial_state(cfg, 0), outage(0), 0).state
    inf2 = []
    t = 30.0
    for _ in range(6):
        d = decide(cfg, state, healthy(t), t)
        state = d.state
        inf2.append(d.weights["sd21-inf2"])
        t += 30
    assert state.mode == COST
    assert inf2[-1] == 100
    assert all(b - a <= 25 for a, b in zip(inf2, inf2[1:], strict=False))
    assert inf2[0] < 100


def test_demand_is_estimated_from_the_autoscaler_without_prometheus():
    state = PolicyState(
        mode=COST,
        since=0,
        weights={"sd21-inf2": 100, "sd21-trn1": 0, "sd21-g5-triton": 0, "sd21-g6-triton": 0, "sd21-g5-cuda": 0},
    )
    sig = dataclasses.replace(outage(0), demand_rps=None)
    assert estimate_demand(CFG, state, sig) == (5 * 105, True)  # only the routed unit counts
    d = decide(CFG, state, sig, 0)
    assert d.switched and d.demand_rps == 525
    # Weights unknown (fresh start, cost mode): the cost pool's own request.
    assert estimate_demand(CFG, initial_state(CFG, 0), sig) == (525, True)


def test_prewarm_raises_capacity_min_replicas_ahead_of_failover_and_restores_later():
    cfg = make_config(prewarm={"enabled": True, "min_replicas": 2, "hold_s": 300})
    state = initial_state(cfg, 0)
    d = decide(cfg, state, healthy(0), 0)
    assert d.prewarm == {n: 1 for n in NAMES[1:]}  # configured min_replicas: nothing to pre-warm
    # inf2 is scaling up (pending pods) but nothing failed yet: pre-warm without switching.
    d = decide(cfg, d.state, healthy(30, inf2_ready=3, desired=4, pending_replicas=1), 30)
    assert not d.switched and all(v >= 2 for v in d.prewarm.values())
    assert d.state.prewarm_until == math.inf  # held while the trigger lasts
    d = decide(cfg, d.state, healthy(60), 60)
    assert all(v >= 2 for v in d.prewarm.values()) and d.state.prewarm_until == 330  # hold_s after the trigger
    d = decide(cfg, d.state, healthy(400), 400)
    assert d.prewarm == {n: 1 for n in NAMES[1:]} and d.state.prewarm_until is None


def test_prewarm_sizes_capacity_units_for_their_share_of_demand():
    cfg = make_config(prewarm={"enabled": True, "min_replicas": 1})
    d = decide(cfg, PolicyState(mode=CAPACITY, since=0), outage(0, demand=900), 0)
    assert d.prewarm["sd21-trn1"] >= 2 and all(1 <= v <= 10 for v in d.prewarm.values())


def test_prewarm_disabled_emits_nothing():
    assert decide(CFG, initial_state(CFG, 0), outage(0), 0).prewarm == {}


def test_decide_is_deterministic_and_does_not_mutate_inputs():
    state = initial_state(CFG, 0)
    sig = outage(10)
    a = decide(CFG, state, sig, 10)
    b = decide(CFG, state, sig, 10)
    assert a == b and state == initial_state(CFG, 0)


@pytest.mark.parametrize("seed", range(5))
def test_random_signal_sequences_keep_the_invariants(seed):
    rng = random.Random(seed)
    cfg = make_config(
        timing={
            "interval_s": 30,
            "min_state_s": 60,
            "fallback_hold_s": 120,
            "max_weight_step": rng.choice([10, 50, 100]),
        }
    )
    state = initial_state(cfg, 0)
    last_switch = None
    for i in range(300):
        t = i * 30.0
        units = {}
        for n in NAMES:
            desired = rng.randint(0, 6)
            ready = rng.randint(0, desired)
            units[n] = UnitSignals(
                ready_replicas=ready,
                desired_replicas=desired,
                pending_replicas=desired - ready,
                unschedulable_replicas=rng.choice([0, 0, desired - ready]),
                capacity_errors=rng.choice([0, 0, 0, 1]),
            )
        sig = Signals(
            at=t - rng.choice([0, 0, 0, 200]), units=units, demand_rps=rng.choice([None, rng.uniform(0, 1500)])
        )
        d = decide(cfg, state, sig, t)
        assert valid_weights(d.weights, NAMES)
        if any(u.ready_replicas for u in units.values()):  # stale or not: nothing stranded
            assert all(d.weights[n] == 0 for n in NAMES if units[n].ready_replicas == 0)
        if d.stale:  # nothing but the weights (taken off units without a ready replica) changes
            assert dataclasses.replace(d.state, weights=state.weights) == state
        if d.switched and d.state.mode == COST:
            assert last_switch is not None and t - last_switch >= 60  # min time in capacity state
        if d.switched:
            last_switch = t
        state = d.state
