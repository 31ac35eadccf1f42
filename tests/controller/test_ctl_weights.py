"""Weight math shared with the planner: seed Tables 1 and 2, sums of exactly 100."""

import itertools
import random

import pytest

from controller.config import Unit
from controller.weights import (
    adjusted_throughput,
    capacity_optimized_weights,
    capacity_target,
    cost_optimized_weights,
    cost_per_inference,
    integer_weights,
    ramp_weights,
    valid_weights,
)


def unit(name, pool, price, tput, latency=0.7, max_replicas=10):
    return Unit(
        name=name,
        namespace="sd21",
        pool=pool,
        instance_type="x",
        price_per_hour=price,
        max_throughput=tput,
        latency_s=latency,
        max_replicas=max_replicas,
    )


TABLE1 = [
    unit("sd21-inf2", "cost", 0.7582, 105, 0.67),
    unit("sd21-trn1", "capacity", 1.3438, 130, 0.51),
    unit("sd21-g5-triton", "capacity", 1.0060, 90, 0.68),
    unit("sd21-g6-triton", "capacity", 0.8048, 61, 0.96),
    unit("sd21-g5-cuda", "capacity", 1.0060, 60, 0.92),
]


def test_cost_per_inference_orders_units_like_table1():
    ordered = sorted(TABLE1, key=cost_per_inference)
    assert [u.name for u in ordered] == ["sd21-inf2", "sd21-trn1", "sd21-g5-triton", "sd21-g6-triton", "sd21-g5-cuda"]
    assert cost_per_inference(TABLE1[0]) == pytest.approx(0.7582 / 105)


def test_adjusted_throughput_reproduces_table2():
    assert capacity_target(TABLE1) == pytest.approx(89.2)
    adj = adjusted_throughput(TABLE1)
    assert adj == pytest.approx(
        {"sd21-inf2": 89.2, "sd21-trn1": 89.2, "sd21-g5-triton": 89.2, "sd21-g6-triton": 61.0, "sd21-g5-cuda": 60.0}
    )


def test_integer_weights_largest_remainder_sums_to_100_and_breaks_ties_by_order():
    assert integer_weights({"a": 1, "b": 1, "c": 1}) == {"a": 34, "b": 33, "c": 33}
    assert integer_weights({"c": 1, "b": 1, "a": 1}) == {"c": 34, "b": 33, "a": 33}
    assert integer_weights({"a": 0, "b": 0}) == {"a": 50, "b": 50}
    assert integer_weights({"a": 0, "b": 3}) == {"a": 0, "b": 100}
    rng = random.Random(7)
    for _ in range(500):
        shares = {f"u{i}": rng.choice([0, rng.random() * 100]) for i in range(rng.randint(1, 9))}
        w = integer_weights(shares)
        assert sum(w.values()) == 100
        assert all(w[k] == 0 for k, v in shares.items() if v == 0 and sum(shares.values()) > 0)


@pytest.mark.parametrize("bad", [{}, {"a": -1}, {"a": float("nan")}, {"a": float("inf")}])
def test_integer_weights_rejects_bad_shares(bad):
    with pytest.raises(ValueError):
        integer_weights(bad)


def test_capacity_optimized_weights_follow_table2():
    assert capacity_optimized_weights(TABLE1) == {
        "sd21-inf2": 23,
        "sd21-trn1": 23,
        "sd21-g5-triton": 23,
        "sd21-g6-triton": 16,
        "sd21-g5-cuda": 15,
    }


def test_capacity_optimized_weights_scale_with_obtainable_replicas_and_skip_unready():
    cap = {"sd21-inf2": 0, "sd21-trn1": 2, "sd21-g5-triton": 2, "sd21-g6-triton": 1, "sd21-g5-cuda": 1}
    w = capacity_optimized_weights(TABLE1, capacity=cap)
    assert w["sd21-inf2"] == 0 and sum(w.values()) == 100
    assert w["sd21-trn1"] == w["sd21-g5-triton"] > w["sd21-g6-triton"] >= w["sd21-g5-cuda"]
    ready = {u.name: u.name != "sd21-trn1" for u in TABLE1}
    w = capacity_optimized_weights(TABLE1, ready=ready)
    assert w["sd21-trn1"] == 0 and sum(w.values()) == 100


def test_capacity_optimized_weights_never_all_zero():
    none_ready = {u.name: False for u in TABLE1}
    assert sum(capacity_optimized_weights(TABLE1, ready=none_ready).values()) == 100
    no_capacity = {u.name: 0 for u in TABLE1}
    assert capacity_optimized_weights(TABLE1, capacity=no_capacity) == capacity_optimized_weights(TABLE1)
    # Ready units without credited capacity still beat units that are not ready.
    ready = {u.name: u.name in ("sd21-inf2", "sd21-g5-cuda") for u in TABLE1}
    w = capacity_optimized_weights(TABLE1, capacity=no_capacity, ready=ready)
    assert w == {"sd21-inf2": 60, "sd21-trn1": 0, "sd21-g5-triton": 0, "sd21-g6-triton": 0, "sd21-g5-cuda": 40}


def test_cost_optimized_weights_send_everything_to_the_ready_cost_pool():
    assert cost_optimized_weights(TABLE1) == {
        "sd21-inf2": 100,
        "sd21-trn1": 0,
        "sd21-g5-triton": 0,
        "sd21-g6-triton": 0,
        "sd21-g5-cuda": 0,
    }
    two_cost = [
        unit("a", "cost", 1, 100, max_replicas=3),
        unit("b", "cost", 1, 50, max_replicas=2),
        unit("c", "capacity", 2, 100),
    ]
    assert cost_optimized_weights(two_cost) == {"a": 75, "b": 25, "c": 0}
    assert cost_optimized_weights(two_cost, ready={"a": False, "b": True, "c": True}) == {"a": 0, "b": 100, "c": 0}


def test_cost_optimized_weights_without_a_ready_cost_unit_use_ready_others():
    ready = {u.name: u.pool == "capacity" for u in TABLE1}
    w = cost_optimized_weights(TABLE1, ready=ready)
    assert w["sd21-inf2"] == 0 and sum(w.values()) == 100
    assert cost_optimized_weights(TABLE1, ready={})["sd21-inf2"] == 100  # nothing ready: cost pool anyway


def test_ramp_weights_limits_each_step_and_keeps_sum():
    start = {"a": 0, "b": 100}
    target = {"a": 100, "b": 0}
    seen = [start]
    w = start
    for _ in range(10):
        w = ramp_weights(w, target, 30)
        assert sum(w.values()) == 100
        assert all(abs(w[k] - seen[-1][k]) <= 30 for k in w)
        seen.append(w)
    assert w == target
    assert [s["a"] for s in seen[:5]] == [0, 30, 60, 90, 100]
    assert ramp_weights(start, target, 100) == target
    assert ramp_weights({"x": 100}, target, 10) == target  # different keys: jump


def test_ramp_weights_random_walks_respect_step():
    rng = random.Random(3)
    keys = ["a", "b", "c", "d"]
    for step, _ in itertools.product([1, 7, 25], range(40)):
        cur = integer_weights({k: rng.random() for k in keys})
        tgt = integer_weights({k: rng.random() for k in keys})
        nxt = ramp_weights(cur, tgt, step)
        assert valid_weights(nxt, keys)
        assert all(abs(nxt[k] - cur[k]) <= step for k in keys)
