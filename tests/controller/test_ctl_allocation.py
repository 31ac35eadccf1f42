"""Merit-order allocation, as a specification (controller/allocation.py). Pure arithmetic."""

import math
import random
from pathlib import Path

import pytest

from controller.allocation import FLOOR_SHARE_OF_TARGET, allocate, urgent_bridge
from controller.config import load_config

CFG = load_config(Path(__file__).resolve().parents[2] / "examples" / "sd21-seed.yaml")
UNITS = CFG.units
NAMES = [u.name for u in UNITS]
MX = {u.name: u.max_throughput for u in UNITS}
INF2, TRN1, G5T, G6T, G5C = NAMES
ALL_READY_ONE = {n: 1 for n in NAMES}
GROWABLE = {u.name: float(u.max_replicas) for u in UNITS}
UNITS_BY_NAME = {u.name: u for u in UNITS}


def floor_rps(name, demand):
    return MX[name] * 0.7 * FLOOR_SHARE_OF_TARGET - demand * 0.005


def test_paid_for_floors_serve_first_then_the_cheapest_unit_takes_the_rest():
    a = allocate(UNITS, 400.0, {**ALL_READY_ONE, INF2: 3}, GROWABLE)
    for n in (TRN1, G5T, G6T, G5C):
        assert a.planned_rps[n] == pytest.approx(floor_rps(n, 400.0))
        assert a.replicas[n] == 1  # below the scale target: the autoscaler keeps one replica
    assert a.planned_rps[INF2] == pytest.approx(400.0 - sum(floor_rps(n, 400.0) for n in (TRN1, G5T, G6T, G5C)))
    assert a.replicas[INF2] == math.ceil(a.planned_rps[INF2] / (105 * 0.7))
    assert a.unmet_rps == 0 and sum(a.weights.values()) == 100


def test_low_demand_fills_the_cheapest_floors_first():
    a = allocate(UNITS, 60.0, {**ALL_READY_ONE, INF2: 1}, GROWABLE)
    assert a.planned_rps[INF2] == pytest.approx(60.0)  # inf2's own floor takes it all
    assert a.weights[INF2] == 100


def test_a_short_cost_pool_is_held_to_what_it_has_and_the_next_cheapest_unit_grows():
    a = allocate(UNITS, 800.0, {**ALL_READY_ONE, INF2: 4}, {**GROWABLE, INF2: 4.0})
    assert a.replicas[INF2] == 4 and a.planned_rps[INF2] <= 4 * 105 * 0.7 + 1e-9
    # trn1 is next in merit order (cost per inference 0.0103 < g5-triton 0.0112 < ...)
    assert a.replicas[TRN1] > 1 and all(a.replicas[n] == 1 for n in (G5T, G6T, G5C))
    assert a.unmet_rps == 0


def test_routing_never_sends_a_unit_more_than_its_ready_replicas_carry_while_others_have_room():
    # trn1 is planned for several replicas but has one ready: the rest waits on replicas with room
    # (ready replicas carry 685 rps at 90 %).
    a = allocate(UNITS, 600.0, {**ALL_READY_ONE, INF2: 4}, {**GROWABLE, INF2: 4.0})
    assert a.replicas[TRN1] == 2  # 181 rps at 91 rps per replica
    ready = {**ALL_READY_ONE, INF2: 4}
    for n in NAMES:
        assert a.routed_rps[n] <= ready[n] * MX[n] * 0.9 + 1e-6
    assert sum(a.routed_rps.values()) == pytest.approx(600.0)
    assert a.routed_rps[TRN1] < a.planned_rps[TRN1]


def test_overflow_fills_ready_room_to_the_target_before_running_anything_hotter():
    ready = {**ALL_READY_ONE, INF2: 5}
    # inf2 planned far beyond its 5 ready replicas (it can grow to 12): the overflow lands on the
    # floors' room up to the target first, so no unit is pushed past its scale target needlessly.
    a = allocate(UNITS, 560.0, ready, GROWABLE)
    assert a.routed_rps[INF2] == pytest.approx(min(a.planned_rps[INF2], 5 * 105 * 0.9))
    for n in (TRN1, G5T, G6T, G5C):
        assert a.routed_rps[n] <= MX[n] * 0.7 + 1e-6


def test_demand_beyond_every_ready_replica_is_spread_by_capacity_and_reported_when_beyond_everything():
    a = allocate(UNITS, 2000.0, ALL_READY_ONE, {n: 1.0 for n in NAMES})
    assert a.unmet_rps == pytest.approx(2000.0 - sum(MX[n] * 0.9 for n in NAMES))
    assert sum(a.routed_rps.values()) == pytest.approx(2000.0)
    total = sum(MX.values())
    for n in NAMES:  # every replica is overloaded by the same factor
        assert a.routed_rps[n] / MX[n] == pytest.approx(2000.0 / total)
    assert all(a.replicas[n] == 1 for n in NAMES)


def test_a_unit_without_ready_replicas_gets_no_traffic_but_keeps_its_plan():
    ready = {**ALL_READY_ONE, INF2: 0}
    a = allocate(UNITS, 300.0, ready, GROWABLE)
    assert a.weights[INF2] == 0 and a.routed_rps[INF2] == 0
    assert a.planned_rps[INF2] > 0 and a.replicas[INF2] >= 1


def test_no_demand_sends_the_trickle_to_the_cheapest_ready_unit_and_nothing_ready_falls_back_to_the_cost_pool():
    assert allocate(UNITS, 0.0, {**ALL_READY_ONE, INF2: 0}, GROWABLE).weights[TRN1] == 100
    assert allocate(UNITS, 0.0, {n: 0 for n in NAMES}, GROWABLE).weights[INF2] == 100


def test_replicas_stay_within_min_and_what_the_unit_can_get():
    a = allocate(UNITS, 5000.0, ALL_READY_ONE, {**GROWABLE, TRN1: 3.0})
    assert a.replicas[TRN1] == 3
    assert a.replicas[INF2] == 12  # max_replicas
    assert a.unmet_rps > 0


def test_rejects_bad_arguments():
    with pytest.raises(ValueError):
        allocate(UNITS, -1.0, ALL_READY_ONE, GROWABLE)
    with pytest.raises(ValueError):
        allocate(UNITS, 1.0, ALL_READY_ONE, GROWABLE, target_utilisation=0.9, max_utilisation=0.8)


@pytest.mark.parametrize("seed", range(20))
def test_random_inputs_keep_the_invariants(seed):
    rng = random.Random(seed)
    ready = {n: rng.randint(0, 6) for n in NAMES}
    can = {u.name: float(rng.choice([u.max_replicas, rng.randint(0, u.max_replicas)])) for u in UNITS}
    demand = rng.choice([0.0, rng.uniform(0, 3000)])
    a = allocate(UNITS, demand, ready, can)
    assert sum(a.weights.values()) == 100 and all(w >= 0 for w in a.weights.values())
    assert sum(a.planned_rps.values()) + a.unmet_rps == pytest.approx(demand)
    if any(ready.values()) and demand > 0:
        assert sum(a.routed_rps.values()) == pytest.approx(demand)
        assert all(a.weights[n] == 0 for n in NAMES if ready[n] == 0)
    for u in UNITS:
        assert u.min_replicas <= a.replicas[u.name] <= max(u.min_replicas, can[u.name])


# ------------------------------------------------------------------- urgent overflow (issue 17)


def _lost_inf2(demand=900.0):
    """inf2 (cheapest, 600-s start-up) lost its pods; one ready replica on every other unit."""
    ready = {**ALL_READY_ONE, INF2: 0}
    plan = allocate(UNITS, demand, ready, GROWABLE)
    return ready, plan


def test_urgent_overflow_bridges_on_the_fastest_starting_unit_when_a_drop_costs_enough():
    ready, plan = _lost_inf2()
    assert plan.replicas[INF2] > 0  # the plan restarts inf2, ready in 600 s
    bridge = urgent_bridge(UNITS, 900.0, ready, GROWABLE, plan.replicas, drop_cost_usd=0.001, hold_s=600)
    assert bridge and min(UNITS_BY_NAME[n].startup_s for n in bridge) == 300  # g5-cuda starts in 300 s
    assert set(bridge) <= {G5C, G5T, G6T}  # only units faster than inf2's 600 s
    assert all(plan.replicas[n] + k <= UNITS_BY_NAME[n].max_replicas for n, k in bridge.items())


def test_no_bridge_when_a_drop_is_cheap_nothing_is_urgent_or_the_trade_off_is_off():
    ready, plan = _lost_inf2()
    assert urgent_bridge(UNITS, 900.0, ready, GROWABLE, plan.replicas, drop_cost_usd=1e-7, hold_s=600) == {}
    assert urgent_bridge(UNITS, 900.0, ready, GROWABLE, plan.replicas, drop_cost_usd=0.0) == {}
    calm = {**ALL_READY_ONE, INF2: 10}
    ok = allocate(UNITS, 500.0, calm, GROWABLE)
    assert urgent_bridge(UNITS, 500.0, calm, GROWABLE, ok.replicas, drop_cost_usd=1.0) == {}
