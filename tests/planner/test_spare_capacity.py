"""Standing spare capacity chosen by the cost of a drop (``routing.drop_cost_usd``), in the simulator.

Repeated bursts of a known size: 300 req/s, and every 90 minutes 2x that for 10 minutes, rising
within 30 s. No replica started when a burst begins is ready before 300-600 s, so only capacity
that is ready when it comes serves it. With drops priced high, the controller keeps spare ready
replicas sized from the rises it has seen (controller/policy/spare.py) and, after the first
bursts, absorbs the rest; with ``drop_cost_usd`` 0 it keeps none and drops each burst's start.
"""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from controller.config import parse_config
from controller.simulator.model import KpaSettings
from controller.simulator.runner import SimSettings, run_all, summarise
from controller.traces import Trace

from .conftest import SEED_CONFIG

STEP_S = 30.0
BASE_RPS = 300.0
BURST_X = 2.0


def config_with(**routing):
    raw = yaml.safe_load(SEED_CONFIG.read_text())
    raw["routing"] = {**raw["routing"], **routing}
    return parse_config(raw)


def repeated_bursts(hours=12.0, every_s=5400.0, burst_s=600.0, rise_s=30.0) -> Trace:
    """``BASE_RPS``, and from 30 minutes on every ``every_s`` a burst to ``BURST_X`` x for ``burst_s``."""
    t = np.arange(0.0, hours * 3600.0, STEP_S)
    into = (t - 1800.0) % every_s
    ramp = np.clip(into / rise_s, 0.0, 1.0) * (into < burst_s) * (t >= 1800.0)
    return Trace(t, BASE_RPS * (1.0 + (BURST_X - 1.0) * ramp), {})


def replay(config, trace, after_s=0.0):
    """Dropped share of the demand from ``after_s`` on (requests, not steps), and cost / honest oracle."""
    settings = SimSettings(kpa=KpaSettings(target_utilisation=config.routing.target_utilisation))
    runs = run_all(config, trace, ("controller", "oracle"), settings)
    s = summarise(config, runs, settings)
    run = runs["controller"]
    later = run.time_s >= after_s
    dropped = float((run.dropped.sum(axis=1) * run.dt)[later].sum())
    return {"dropped_share": dropped / float((run.demand * run.dt)[later].sum()),
            "oracle_dropped": s["policies"]["oracle"]["dropped"],
            "cost_vs_oracle": s["policies"]["controller"]["cost_vs_oracle"]}


@pytest.fixture(scope="module")
def bursts():
    return repeated_bursts()


def test_with_drops_free_nothing_stands_by_and_every_burst_drops_its_start(bursts):
    free = replay(config_with(drop_cost_usd=0.0), bursts, after_s=4 * 3600.0)
    assert free["oracle_dropped"] == 0
    assert free["dropped_share"] > 0.01


def test_with_drops_priced_high_spare_capacity_absorbs_the_bursts_once_it_has_seen_them(bursts):
    """0.001 $ a drop: the first bursts are dropped (nothing recorded yet), the later ones not."""
    free = replay(config_with(drop_cost_usd=0.0), bursts, after_s=4 * 3600.0)
    dear = replay(config_with(drop_cost_usd=0.001), bursts, after_s=4 * 3600.0)
    assert dear["dropped_share"] < 0.001
    assert dear["dropped_share"] < free["dropped_share"] / 10
    assert free["cost_vs_oracle"] < dear["cost_vs_oracle"]  # the spare is paid for
