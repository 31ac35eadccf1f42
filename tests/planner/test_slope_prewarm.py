"""Pre-warm sized by start-up delay x demand slope (``prewarm.slope_horizon``), in the simulator.

A demand that grows faster than the autoscaler's headroom covers over one start-up: an
exponential rise from 100 to 2500 req/s doubling every 12 minutes (a launch, a morning rush).
The KPA sizes replicas for the demand it sees (target 0.7: 43 % headroom to the breaking point);
an inf2 replica started now is ready in 600 s, when demand is 1.8x what it is now. Sized for the
demand now, the controller falls behind and drops; sized for the demand one start-up ahead,
extrapolating the measured slope, it keeps within the drop goal. Both run the seed's shipped config
otherwise.
"""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from controller.config import parse_config
from controller.simulator.model import KpaSettings
from controller.simulator.runner import SimSettings, run_all, summarise
from controller.simulator.sweep import GOAL_EXCESS_DROP_SHARE, GOAL_WORST
from controller.traces import Trace

from .conftest import SEED_CONFIG

STEP_S = 30.0


def seed_config_with(**prewarm):
    raw = yaml.safe_load(SEED_CONFIG.read_text())
    raw["prewarm"] = {**raw["prewarm"], **prewarm}
    return parse_config(raw)


def exponential_rise(low=100.0, high=2500.0, doubling_s=700.0, flat_s=3600.0) -> Trace:
    """``low`` for ``flat_s``, then doubling every ``doubling_s`` up to ``high``, then ``high`` for ``flat_s``."""
    tau = doubling_s / np.log(2)
    rise_s = tau * np.log(high / low)
    t = np.arange(0.0, 2 * flat_s + rise_s, STEP_S)
    return Trace(t, np.clip(low * np.exp(np.maximum(t - flat_s, 0.0) / tau), low, high), {})


def replay(config, trace):
    settings = SimSettings(kpa=KpaSettings(target_utilisation=config.routing.target_utilisation))
    s = summarise(config, run_all(config, trace, ("controller", "oracle"), settings), settings)
    c, o = s["policies"]["controller"], s["policies"]["oracle"]
    return {"dropped_share": c["dropped"] / c["demand"], "oracle_dropped_share": o["dropped"] / o["demand"],
            "cost_vs_oracle": c["cost_vs_oracle"]}


@pytest.fixture(scope="module")
def rise():
    return exponential_rise()


def test_sized_for_the_demand_now_the_controller_falls_behind_a_fast_rise(rise):
    now = replay(seed_config_with(slope_horizon=0.0), rise)
    assert now["oracle_dropped_share"] == 0
    assert now["dropped_share"] > GOAL_EXCESS_DROP_SHARE


def test_sized_for_the_demand_one_start_up_ahead_it_keeps_up(rise):
    """The shipped setting (prewarm.slope_horizon 1.5, slope_cap 1.0): measured 0.015 % against 0.17 %."""
    now = replay(seed_config_with(slope_horizon=0.0), rise)
    ahead = replay(seed_config_with(), rise)
    assert ahead["oracle_dropped_share"] == 0
    assert ahead["dropped_share"] <= GOAL_EXCESS_DROP_SHARE
    assert ahead["dropped_share"] < now["dropped_share"] / 5
    assert ahead["cost_vs_oracle"] <= GOAL_WORST
