"""The merit-order strategy of the switching policy, as a specification. Pure: times are explicit."""

import math
import random

import pytest

from controller.config import ConfigError, parse_config
from controller.policy import CAPACITY, COST, Signals, UnitSignals, decide, initial_state
from controller.weights import valid_weights

from .test_ctl_policy import run  # drive decide() like the loop does

NAMES = ["sd21-inf2", "sd21-trn1", "sd21-g5-triton", "sd21-g6-triton", "sd21-g5-cuda"]
INF2, TRN1, G5T, G6T, G5C = NAMES
TPUT = {INF2: 105, TRN1: 130, G5T: 90, G6T: 61, G5C: 60}
PRICE = {INF2: 0.7582, TRN1: 1.3438, G5T: 1.006, G6T: 0.8048, G5C: 1.006}
HOLD = 600.0


def make_config(**overrides):
    data = {
        "namespace": "sd21",
        "units": [
            {
                "name": n,
                "pool": "cost" if n == INF2 else "capacity",
                "instance_type": "x",
                "price_per_hour": PRICE[n],
                "max_throughput": TPUT[n],
                "latency_s": 0.7,
                "max_replicas": 10,
                "min_replicas": 1,
            }
            for n in NAMES
        ],
        "router": {"name": "sd21-router"},
        "timing": {"interval_s": 30, "signal_max_age_s": 120, "min_state_s": 300, "fallback_hold_s": 900},
        "prometheus": {"url": "http://prometheus:9090"},
        "prewarm": {"enabled": True, "hold_s": HOLD},
    }
    data.update(overrides)
    return parse_config(data)


CFG = make_config()


def signals(t, demand, inf2_ready=4, **inf2):
    others = inf2.pop("others", {})
    units = {n: UnitSignals(ready_replicas=1, desired_replicas=1) for n in NAMES}
    units[INF2] = UnitSignals(ready_replicas=inf2_ready, desired_replicas=inf2.pop("desired", inf2_ready), **inf2)
    units.update(others)
    return Signals(at=t, units=units, demand_rps=demand)


def outage(t, demand=600.0, running=4):
    """inf2 runs 4 replicas and wants 8; 4 pods cannot be scheduled, with capacity errors."""
    return signals(t, demand, inf2_ready=running, desired=8, pending_replicas=4, unschedulable_replicas=4,
                   capacity_errors=3)


def test_merit_order_is_the_default_with_measured_demand_and_runs_on_the_cluster_estimate_without():
    assert CFG.routing.strategy == "merit-order"
    assert make_config(prometheus=None).routing.strategy == "proportional"
    # Without Prometheus it decides from what the cluster shows (cluster_demand_estimate).
    assert make_config(prometheus=None, routing={"strategy": "merit-order"}).routing.strategy == "merit-order"
    with pytest.raises(ConfigError, match="routing.max_utilisation"):
        make_config(routing={"target_utilisation": 0.8, "max_utilisation": 0.7})


def test_steady_state_uses_the_paid_for_replicas_and_sends_the_rest_to_the_cost_pool():
    d = decide(CFG, initial_state(CFG, 0), signals(0, 400.0), 0)
    assert d.state.mode == COST and not d.switched and not d.stale
    assert all(d.weights[n] > 0 for n in NAMES) and d.weights[INF2] == max(d.weights.values())
    for n in NAMES[1:]:  # one replica each, kept below its scale target
        assert d.weights[n] / 100 * 400.0 < TPUT[n] * 0.7
    assert d.prewarm == {n: 1 for n in NAMES}  # nothing to pre-warm; the autoscaler sizes inf2
    assert d.demand_rps == 400.0 and sum(d.planned_rps.values()) == pytest.approx(400.0)


def test_failover_holds_the_cost_pool_to_what_it_runs_and_starts_the_next_cheapest_unit():
    state = decide(CFG, initial_state(CFG, 0), signals(0, 600.0), 0).state
    d = decide(CFG, state, outage(30), 30)
    assert d.switched and d.state.mode == CAPACITY and "failover" in d.reason
    # inf2 keeps the traffic its 4 ready replicas carry: the failover moves only what it cannot take
    # (planned at the target utilisation; routed up to 90 % while trn1's new replicas start).
    assert 3.9 * 105 * 0.7 <= d.planned_rps[INF2] <= 4 * 105 * 0.7
    assert d.planned_rps[INF2] - 6 <= d.weights[INF2] / 100 * 600.0 <= 4 * 105 * 0.9 + 6
    # trn1 (the next cheapest) gets replicas for the rest; the dearer units stay at their floor.
    assert d.prewarm[TRN1] >= 2 and d.prewarm[G5T] == d.prewarm[G6T] == d.prewarm[G5C] == 1
    # The capacity probe: inf2 keeps asking for what the cost-optimized plan would give it.
    assert d.prewarm[INF2] > 4


def test_capacity_errors_without_unmet_wants_do_not_fail_over():
    d = decide(CFG, initial_state(CFG, 0), signals(0, 300.0, capacity_errors=2), 0)
    assert d.state.mode == COST and not d.switched


def test_lost_pods_with_capacity_errors_fail_over_before_the_grace_period():
    lost = signals(0, 500.0, inf2_ready=0, desired=5, pending_replicas=5, capacity_errors=1)
    d = decide(CFG, initial_state(CFG, 0), lost, 0)
    assert d.switched and d.weights[INF2] == 0 and all(d.weights[n] > 0 for n in NAMES[1:])


def test_fallback_after_the_probe_pods_are_ready_and_no_shortage_for_the_hold():
    def world(t):
        if t < 600:
            return outage(t)
        if t < 1200:  # capacity is back: the probe pods schedule and start
            return signals(t, 600.0, inf2_ready=4, desired=8, pending_replicas=4)
        return signals(t, 600.0, inf2_ready=8, desired=8)

    decisions = run(CFG, world, end=3600)
    modes = [(t, d.state.mode) for t, d in decisions]
    fallback = next(t for t, m in modes if t > 0 and m == COST)
    assert fallback == 1200 + 900  # all it asked for from 1200 s, held for fallback_hold_s
    switches = [t for t, d in decisions if d.switched]
    assert switches == [0, fallback]
    # Once the probe pods schedule, inf2 is credited with them: traffic moves back as far as its ready
    # replicas carry, and trn1's extra replicas are released after the pre-warm hold.
    w = {t: d.weights for t, d in decisions}
    floors = {t: d.prewarm for t, d in decisions}
    assert w[600][INF2] > w[570][INF2] and w[600][TRN1] < w[570][TRN1]
    assert floors[570][TRN1] >= 2 and floors[600 + HOLD][TRN1] == 1


def test_a_shortage_during_the_hold_resets_it():
    def world(t):
        if t < 300 or 900 <= t < 930:
            return outage(t)
        return signals(t, 600.0, inf2_ready=8, desired=8)

    decisions = run(CFG, world, end=3600)
    fallback = next(t for t, d in decisions if t > 0 and d.state.mode == COST)
    assert fallback == 930 + 900


def test_floors_rise_at_once_and_come_down_only_after_the_hold():
    state = decide(CFG, initial_state(CFG, 0), outage(0, demand=800.0), 0).state
    high = state.floors[TRN1][0]
    assert high >= 3
    # demand falls: the trn1 floor is held for prewarm.hold_s, then follows the plan
    state_t = state
    seen = []
    for t in range(30, 1300, 30):
        d = decide(CFG, state_t, outage(t, demand=500.0), t)
        seen.append((t, d.prewarm[TRN1]))
        state_t = d.state
    assert all(v == high for t, v in seen if t < HOLD)
    assert all(v < high for t, v in seen if t >= HOLD)


def test_unmeasured_demand_decides_from_the_cluster_and_keeps_the_floors():
    state = decide(CFG, initial_state(CFG, 0), signals(0, 400.0), 0).state
    # inf2's autoscaler wants the 3 replicas that its 181 rps need at the target utilisation
    d = decide(CFG, state, signals(30, None, inf2_ready=4, desired=3), 30)
    assert not d.stale and "estimated from the autoscaler: no demand measurement" in d.reason
    assert 400 <= d.demand_rps <= 450  # an upper bound: the autoscaler rounds up
    assert all(abs(d.weights[n] - state.weights[n]) <= 5 for n in NAMES)
    assert all(d.prewarm[n] >= state.floors[n][0] for n in NAMES)


def test_never_routes_to_a_unit_without_ready_replicas():
    units = {G5T: UnitSignals(ready_replicas=0, desired_replicas=1, pending_replicas=1)}
    d = decide(CFG, initial_state(CFG, 0), signals(0, 400.0, others=units), 0)
    assert d.weights[G5T] == 0 and sum(d.weights.values()) == 100


def test_prewarm_disabled_emits_no_floors():
    cfg = make_config(prewarm={"enabled": False})
    d = decide(cfg, initial_state(cfg, 0), outage(0), 0)
    assert d.switched and d.prewarm == {}


@pytest.mark.parametrize("seed", range(8))
def test_random_signal_sequences_keep_the_invariants(seed):
    rng = random.Random(seed)
    state = initial_state(CFG, 0)
    for i in range(200):
        t = i * 30.0
        units = {}
        for n in NAMES:
            desired = rng.randint(0, 10)
            ready = rng.randint(0, desired) if rng.random() < 0.8 else rng.randint(0, 10)
            pending = max(0, desired - ready) if rng.random() < 0.7 else rng.randint(0, 5)
            units[n] = UnitSignals(ready_replicas=ready, desired_replicas=desired, pending_replicas=pending,
                                   unschedulable_replicas=rng.randint(0, pending),
                                   capacity_errors=rng.choice([0, 0, 0, 2]))
        demand = rng.choice([None, 0.0, rng.uniform(0, 2500)]) if rng.random() < 0.2 else rng.uniform(0, 2500)
        d = decide(CFG, state, Signals(at=t, units=units, demand_rps=demand), t)
        assert valid_weights(d.weights, NAMES)
        if not d.stale:
            if any(u.ready_replicas for u in units.values()):
                assert all(d.weights[n] == 0 for n in NAMES if units[n].ready_replicas == 0)
            for u in CFG.units:
                assert u.min_replicas <= d.prewarm[u.name] <= u.max_replicas
        state = d.state


def test_small_changes_keep_the_router_as_it_is_but_an_overloaded_unit_is_relieved_at_once():
    state = decide(CFG, initial_state(CFG, 0), signals(0, 600.0, inf2_ready=6), 0).state
    d = decide(CFG, state, signals(30, 610.0, inf2_ready=6), 30)
    assert d.weights == dict(state.weights) and "weights kept" in d.reason
    d = decide(CFG, state, signals(30, 570.0, inf2_ready=6), 30)
    assert d.weights == dict(state.weights)  # fewer rps for everyone: nothing overloaded
    # Demand rises: the capacity units' shares in effect would push them over their scale target.
    d = decide(CFG, state, signals(30, 660.0, inf2_ready=9), 30)
    assert d.weights != dict(state.weights)
    assert all(d.weights[n] / 100 * 660.0 <= TPUT[n] * 0.7 for n in NAMES[1:])


def test_merit_order_cannot_start_idle_units_without_prewarm():
    data = {
        "units": [{"name": n, "pool": "cost" if n == INF2 else "capacity", "instance_type": "x",
                   "price_per_hour": PRICE[n], "max_throughput": TPUT[n], "latency_s": 0.7, "max_replicas": 10,
                   "min_replicas": 0 if n == G5C else 1} for n in NAMES],
        "router": {"name": "sd21-router"},
        "prometheus": {"url": "http://prometheus:9090"},
    }
    with pytest.raises(ConfigError, match=r"prewarm.enabled: .*sd21-g5-cuda"):
        parse_config(data)
    assert parse_config({**data, "prewarm": {"enabled": True}}).routing.strategy == "merit-order"
    assert parse_config({**data, "routing": {"strategy": "proportional"}}).routing.strategy == "proportional"


def test_a_spot_interruption_notice_moves_traffic_and_starts_replacements_before_the_pods_go():
    units = [{"name": n, "pool": "cost" if n == INF2 else "capacity", "instance_type": "x",
              "price_per_hour": 0.43 if n == G5T else PRICE[n], "max_throughput": TPUT[n], "latency_s": 0.7,
              "max_replicas": 10, "min_replicas": 1, **({"capacity_type": "spot"} if n == G5T else {})}
             for n in NAMES]
    cfg = make_config(units=units)  # g5-triton on spot: the cheapest unit, it carries most of the load
    others = {G5T: UnitSignals(ready_replicas=7, desired_replicas=7)}
    calm = decide(cfg, initial_state(cfg, 0), signals(0, 700.0, inf2_ready=1, desired=1, others=others), 0)
    assert calm.weights[G5T] >= 60
    # 5 of its 7 ready replicas got the 2-minute notice.
    noticed = {G5T: UnitSignals(ready_replicas=7, desired_replicas=7, interrupting_replicas=5)}
    d = decide(cfg, calm.state, signals(30, 700.0, inf2_ready=1, desired=1, others=noticed), 30)
    # The plan puts on g5-triton no more than its two lasting replicas carry at max utilisation (its
    # interrupted replicas still serve until their node goes, so the router may still use them)...
    assert d.planned_rps[G5T] <= 2 * 90 * 0.9
    assert d.state.mode == COST  # a capacity unit's interruption is not a cost-pool failover
    # ...and replicas replacing the five are started now, elsewhere (floors above the plan's old ones).
    added = sum((d.prewarm[n] - calm.prewarm[n]) * TPUT[n] for n in NAMES if n != G5T)
    assert added >= 5 * 90 * 0.7  # the interrupted replicas' load at the target utilisation
    # (g5-triton's floor of 8 is held for prewarm.hold_s like any floor: pods it cannot schedule are
    # not paid, and they are the probe that finds the spot capacity when it returns.)


def test_a_cost_unit_whose_plan_outruns_its_traffic_is_pre_warmed_to_its_plan():
    # inf2 has 2 ready replicas and can grow; the plan wants ~7 of them for 600 req/s. The router
    # gives it only what 2 replicas carry, so its autoscaler alone would add a replica per start-up.
    d = decide(CFG, initial_state(CFG, 0), signals(0, 600.0, inf2_ready=2, desired=2), 0)
    assert d.state.mode == COST
    assert d.prewarm[INF2] == math.ceil(d.planned_rps[INF2] / (TPUT[INF2] * 0.7) - 1e-9) >= 6
    # with its replicas ready the autoscaler sizes it again (its floor is the configured one)
    ready = decide(CFG, initial_state(CFG, 0), signals(0, 300.0, inf2_ready=5, desired=5), 0)
    assert ready.prewarm[INF2] == 1


def test_with_hold_until_fallback_capacity_floors_stay_up_until_the_cost_pool_has_held_for_the_hold():
    cfg = make_config(prewarm={"enabled": True, "hold_s": HOLD, "hold_until_fallback": True})

    def world(t):
        if t < 600:
            return outage(t)
        if t < 1200:
            return signals(t, 600.0, inf2_ready=4, desired=8, pending_replicas=4)
        return signals(t, 600.0, inf2_ready=8, desired=8)

    decisions = dict(run(cfg, world, end=3600 + HOLD))
    fallback = next(t for t, d in sorted(decisions.items()) if t > 0 and d.state.mode == COST)
    assert fallback == 1200 + 900
    assert min(decisions[t].prewarm[TRN1] for t in decisions if 570 <= t < fallback) >= 2  # spare until fallback
    assert decisions[fallback + HOLD].prewarm[TRN1] == 1  # then the ordinary hold
    # without the option (the default) trn1's floor comes down after the hold, before the fallback
    default = dict(run(CFG, world, end=3600))
    assert default[600 + HOLD].prewarm[TRN1] == 1
