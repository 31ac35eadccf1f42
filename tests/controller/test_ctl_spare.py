"""Standing spare replicas chosen by the cost of a drop (controller/policy/spare.py), as a specification.

A spare replica covers a band of demand above what the plan runs (its replicas at max_utilisation).
The recorded demand rises, scaled to the demand now, say how many requests per second would fall
into that band at a random moment; at ``routing.drop_cost_usd`` each, over an hour, that is what
the replica saves. It stands while that exceeds its price per hour. Pure: times are explicit.
"""

import pytest

from controller.config import Unit
from controller.policy import Signals, UnitSignals, decide, initial_state
from controller.policy.spare import demand_rise, expected_overflow, record_rises, spare_replicas
from controller.state import decode_state, encode_state

from .test_ctl_policy_merit import INF2, NAMES, TPUT, make_config

HOUR = 3600.0
# One unit whose replica carries 100 req/s at max_utilisation 1.0 for 1 $ an hour: the arithmetic is plain.
PLAIN = Unit(name="plain", namespace="x", pool="cost", instance_type="x", price_per_hour=1.0, max_throughput=100, latency_s=0.5,
             max_replicas=10, min_replicas=1, startup_s=300)


def tripled_tenth_of_the_time(n=12):
    """Rises to 3x the demand, ``n`` samples of 30 s each, over a memory of 10 x that: 10 % of the time."""
    return tuple((i * 30.0, 3.0) for i in range(n)), n * 30.0 * 10


def spare(drop_cost, rises=None, memory_s=None, demand=100.0, plan=1, room=10):
    if rises is None:
        rises, memory_s = tripled_tenth_of_the_time()
    return spare_replicas([PLAIN], demand, rises, {"plain": plan}, {"plain": room}, drop_cost, 30.0,
                          memory_s or HOUR, max_utilisation=1.0)


def test_no_recorded_rise_no_spare():
    assert spare(1.0, rises=(), memory_s=HOUR) == {}


def test_drops_free_no_spare():
    assert spare(0.0) == {}


def test_each_band_the_rises_reach_is_worth_its_expected_spill():
    """3x of 100 req/s, 10 % of the time: 100 req/s in each of the bands 100-200 and 200-300 for a tenth
    of the time (10 req/s expected), nothing above. At drop cost c a spare saves 36000 c $ an hour."""
    rises, memory = tripled_tenth_of_the_time()
    assert expected_overflow(100.0, rises, 30.0, memory, low=100.0, width=100.0) == pytest.approx(10.0)
    assert expected_overflow(100.0, rises, 30.0, memory, low=200.0, width=100.0) == pytest.approx(10.0)
    assert expected_overflow(100.0, rises, 30.0, memory, low=300.0, width=100.0) == 0.0
    assert spare(1.1 / 36000) == {"plain": 2}  # worth 1.1 $/h each, priced 1 $/h
    assert spare(10.0) == {"plain": 2}  # no band above 3x: however dear a drop, no third


def test_a_spare_whose_price_is_above_the_saving_is_not_kept():
    assert spare(0.9 / 36000) == {}  # 0.9 $/h saved against 1 $/h


def test_more_spare_for_a_dearer_drop_never_less():
    rises = tuple((i * 30.0, 1.5 + 0.25 * (i % 8)) for i in range(40))  # rises of 1.5x - 3.25x
    counts = [sum(spare(c, rises=rises, memory_s=HOUR).values()) for c in (0, 1e-6, 1e-5, 3e-5, 1e-4, 1e-3, 1e-2)]
    assert counts == sorted(counts)
    assert counts[0] == 0 and counts[-1] > 0


def test_spare_is_limited_to_the_room_a_unit_has():
    assert spare(10.0, room=1) == {"plain": 1}
    assert spare(10.0, room=0) == {}


def test_the_rise_is_the_demand_now_over_the_least_of_the_last_start_up():
    history = tuple((t, 200.0) for t in range(0, 600, 30)) + ((600.0, 500.0),)
    assert demand_rise(history, 300.0) == pytest.approx(2.5)
    assert demand_rise(((0.0, 100.0),), 300.0) is None


def test_only_rises_beyond_the_scale_targets_headroom_are_recorded_and_only_for_the_memory():
    cfg = make_config(routing={"drop_cost_usd": 0.001, "spare_memory_s": 3600})
    flat = tuple((float(t), 300.0) for t in range(0, 600, 30))
    noisy = flat + ((600.0, 360.0),)  # 1.2x: the 0.9 / 0.7 headroom covers it
    assert record_rises(cfg, (), noisy, 600.0, measured=True) == ()
    burst = flat + ((600.0, 900.0),)
    assert record_rises(cfg, ((0.0, 2.0),), burst, 600.0, measured=True) == ((0.0, 2.0), (600.0, 3.0))
    assert record_rises(cfg, ((0.0, 2.0),), burst, 4000.0, measured=True) == ()  # forgotten after an hour
    assert record_rises(cfg, (), burst, 600.0, measured=False) == ()  # estimated demand is not a rise
    free = make_config(routing={"drop_cost_usd": 0.0})
    assert record_rises(free, ((0.0, 2.0),), burst, 600.0, measured=True) == ()


def _signals(t, demand):
    units = {n: UnitSignals(ready_replicas=1, desired_replicas=1) for n in NAMES}
    units[INF2] = UnitSignals(ready_replicas=4, desired_replicas=4)
    return Signals(at=t, units=units, demand_rps=demand)


def _replay(cfg, demands):
    state, d = initial_state(cfg, 0.0), None
    for i, demand in enumerate(demands):
        d = decide(cfg, state, _signals(30.0 * i, demand), 30.0 * i)
        state = d.state
    return d


BURSTY = [300.0] * 20 + [650.0] * 10 + [300.0] * 20  # a burst past the 4 ready inf2 replicas, then calm


def test_after_a_burst_dear_drops_keep_spare_on_the_cheapest_capacity_and_free_drops_do_not():
    dear = _replay(make_config(routing={"drop_cost_usd": 0.01, "spare_memory_s": 3600}), BURSTY)
    free = _replay(make_config(routing={"drop_cost_usd": 0.0}), BURSTY)
    assert dear.state.demand_rises and not free.state.demand_rises
    assert "spare sd21-inf2 +" in dear.reason and "spare" not in free.reason
    assert dear.prewarm[INF2] > free.prewarm[INF2]
    # The router leaves every unit the same room (weights in proportion to ready capacity), so a burst
    # to 2x fits what every unit has ready; with the plan's weights, the units held at their floor overflow.
    ready = {n: _signals(0, 0).units[n].ready_replicas * TPUT[n] * 0.9 for n in NAMES}
    assert all(dear.weights[n] / 100 * 600.0 <= ready[n] for n in NAMES)
    assert any(free.weights[n] / 100 * 600.0 > ready[n] for n in NAMES)


def test_the_recorded_rises_survive_a_restart():
    d = _replay(make_config(routing={"drop_cost_usd": 0.01, "spare_memory_s": 3600}), BURSTY)
    now = 30.0 * len(BURSTY)
    back = decode_state(encode_state(d.state), NAMES, d.weights, now=now, interval_s=30)
    assert [t for t, _ in back.demand_rises] == [t for t, _ in d.state.demand_rises]
    assert [r for _, r in back.demand_rises] == pytest.approx([r for _, r in d.state.demand_rises], abs=1e-4)
