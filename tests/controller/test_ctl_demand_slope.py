"""Pre-warm sized by start-up delay x demand slope (prewarm.slope_horizon), as a specification.

The slope is fitted on the measured demand of the last ``prewarm.slope_window_s`` (Theil-Sen, the
median of the pairwise slopes, on each half; the lesser counts), extrapolated over
``prewarm.slope_horizon`` start-ups of the slowest unit, capped at ``prewarm.slope_cap`` x the
demand now, and never negative. Pure: times are explicit.
"""

import random

import pytest

from controller.config import ConfigError
from controller.policy import Signals, UnitSignals, decide, initial_state
from controller.policy.demand import demand_ahead, demand_slope

from .test_ctl_policy_merit import INF2, NAMES, make_config

STEP = 30.0
STARTUP = 600.0  # make_config's units start in 300 s; these tests set 600 s on every unit


def slope_config(horizon=1.0, cap=0.5, window=600):
    cfg = make_config(prewarm={"enabled": True, "hold_s": 600, "slope_horizon": horizon, "slope_cap": cap,
                               "slope_window_s": window})
    units = [u.model_dump() | {"startup_s": STARTUP} for u in cfg.units]
    return make_config(units=units, prewarm=cfg.prewarm.model_dump())


def samples(values, t0=0.0):
    return tuple((t0 + i * STEP, float(v)) for i, v in enumerate(values))


def test_the_slope_of_a_noisy_ramp_is_its_trend():
    rng = random.Random(3)
    ramp = [300 + 0.5 * i * STEP + rng.gauss(0, 15) for i in range(21)]  # 0.5 req/s per s, 5 % noise
    assert demand_slope(samples(ramp)) == pytest.approx(0.5, abs=0.1)


def test_noise_around_a_flat_demand_gives_almost_no_slope_and_almost_no_pre_warm():
    rng = random.Random(7)
    flat = [400 + rng.gauss(0, 20) for _ in range(21)]
    cfg = slope_config()
    assert abs(demand_slope(samples(flat))) < 0.1
    assert demand_ahead(cfg, 400.0, samples(flat)) < 400.0 * 1.1


def test_a_single_spike_is_not_extrapolated():
    history = samples([400.0] * 19 + [1200.0, 400.0])
    assert demand_slope(history) == 0.0
    # Even while the spike is the latest sample, the others outvote it.
    assert demand_slope(samples([400.0] * 20 + [1200.0])) == 0.0
    assert demand_ahead(slope_config(), 1200.0, samples([400.0] * 20 + [1200.0])) == 1200.0


def test_a_burst_is_not_a_trend_at_any_point_of_the_window():
    """A step up shows in one half of the window at a time, the other half flat: no slope."""
    for high in range(1, 21):
        assert demand_slope(samples([400.0] * (21 - high) + [1600.0] * high)) == 0.0


def test_falling_demand_pre_warms_nothing():
    falling = samples([800 - 0.5 * i * STEP for i in range(21)])
    assert demand_slope(falling) < 0
    assert demand_ahead(slope_config(), 500.0, falling) == 500.0


def test_the_rise_is_the_slope_over_the_slowest_start_up_and_capped():
    ramp = samples([300 + 0.2 * i * STEP for i in range(21)])  # 0.2 req/s per s
    assert demand_ahead(slope_config(horizon=1.0, cap=1.0), 420.0, ramp) == pytest.approx(420 + 0.2 * STARTUP)
    assert demand_ahead(slope_config(horizon=0.5, cap=1.0), 420.0, ramp) == pytest.approx(420 + 0.1 * STARTUP)
    assert demand_ahead(slope_config(horizon=1.0, cap=0.1), 420.0, ramp) == pytest.approx(420 * 1.1)
    assert demand_ahead(slope_config(horizon=0.0), 420.0, ramp) == 420.0  # off


def test_too_few_samples_give_no_slope():
    assert demand_slope(samples([100.0, 200.0])) == 0.0


def run_ramp(cfg, demands, estimated=False):
    """decide() every 30 s on the given demands; the last decision."""
    state = initial_state(cfg, 0.0)
    decision = None
    for i, d in enumerate(demands):
        units = {n: UnitSignals(ready_replicas=1, desired_replicas=1) for n in NAMES}
        units[INF2] = UnitSignals(ready_replicas=4, desired_replicas=4)
        decision = decide(cfg, state, Signals(at=i * STEP, units=units, demand_rps=None if estimated else d), i * STEP)
        state = decision.state
    return decision


def test_a_rising_measured_demand_raises_the_floors_for_the_demand_one_start_up_ahead():
    ramp = [200 + 0.5 * i * STEP for i in range(21)]  # 200 -> 500 req/s in 10 min
    off = run_ramp(slope_config(horizon=0.0), ramp)
    on = run_ramp(slope_config(horizon=1.0), ramp)
    assert sum(on.prewarm.values()) > sum(off.prewarm.values())
    assert on.prewarm[INF2] > off.prewarm[INF2]  # the cost pool grows ahead of its traffic
    assert on.weights == off.weights  # routing follows the demand now; only the floors look ahead
    assert "one start-up ahead" in on.reason
    assert len(on.state.demand_history) == 21  # 10 min window at 30-s decisions


def test_a_falling_demand_keeps_the_floors_of_the_demand_now():
    falling = [800 - 0.5 * i * STEP for i in range(21)]
    assert run_ramp(slope_config(horizon=1.0), falling).prewarm == run_ramp(slope_config(horizon=0.0), falling).prewarm


def test_estimated_demand_is_not_extrapolated():
    """Without a measurement the estimate follows the floors: extrapolating it would ratchet them."""
    ramp = [200 + 0.5 * i * STEP for i in range(21)]
    d = run_ramp(slope_config(horizon=1.0), ramp, estimated=True)
    assert d.state.demand_history == ()
    assert "one start-up ahead" not in d.reason


@pytest.mark.parametrize("key,value", [("slope_horizon", -1), ("slope_horizon", 5), ("slope_cap", -0.1),
                                       ("slope_window_s", 10)])
def test_out_of_range_slope_settings_are_config_errors(key, value):
    with pytest.raises(ConfigError, match=f"prewarm.{key}"):
        make_config(prewarm={"enabled": True, key: value})
