"""Issue 17's goals, asserted on a fixed set of seeds per trace family, with the shipped configs.

Goals (controller.simulator.sweep): cost / honest oracle <= 1.05 at the median and <= 1.10 at
worst, and no more dropped than the oracle + 0.1 % of demand. Families where a goal is not met
are asserted at the figure measured (docs/simulation.md, "Sweeps"), so a change that makes them
worse fails too; the reason they are not met is written next to each.
Steps of 60 s (30 s for bursts) keep each test to seconds on 2 cores; the code is the same.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from controller.config import load_config, parse_config
from controller.simulate import main
from controller.simulator.model import ClusterSettings, KpaSettings
from controller.simulator.runner import SimSettings
from controller.simulator.sweep import GOAL_EXCESS_DROP_SHARE, GOAL_MEDIAN, GOAL_WORST, run_sweep

from .conftest import REPO, SEED_CONFIG

SPOT_CONFIG = REPO / "examples" / "sd21-spot.yaml"
SEEDS = range(6)


def _dist(result, metric):
    return result["distribution"][metric]


@pytest.fixture(scope="module")
def spot_config():
    return load_config(SPOT_CONFIG)


@pytest.mark.parametrize("family", ["outages", "flapping"])
def test_capacity_outages_and_flapping_meet_every_goal(seed_config, family):
    r = run_sweep(seed_config, family, SEEDS, step_s=60.0)
    assert _dist(r, "cost_vs_oracle")["median"] <= GOAL_MEDIAN
    assert _dist(r, "cost_vs_oracle")["worst"] <= GOAL_WORST
    assert _dist(r, "excess_dropped_share")["worst"] <= GOAL_EXCESS_DROP_SHARE
    assert all(run["capacity_events"] for run in r["runs"])  # every trace has a capacity event


def test_spot_interruptions_meet_the_cost_goals_and_drop_at_most_half_a_percent(spot_config):
    r = run_sweep(spot_config, "spot", SEEDS, step_s=60.0)
    assert _dist(r, "cost_vs_oracle")["median"] <= GOAL_MEDIAN
    assert _dist(r, "cost_vs_oracle")["worst"] <= GOAL_WORST
    # Not met: 0.1 %. The notice is 2 minutes, replacements start in 300-600 s; the oracle starts
    # them before the interruption. Measured worst 0.47 % of demand on these seeds.
    assert _dist(r, "excess_dropped_share")["worst"] <= 0.005


def test_reacting_to_the_spot_notice_drops_less_than_waiting_for_the_pods_to_go(spot_config):
    kpa = KpaSettings(target_utilisation=spot_config.routing.target_utilisation)
    heeded = run_sweep(spot_config, "spot", [0, 4], 60.0, SimSettings(kpa=kpa))
    ignored = run_sweep(spot_config, "spot", [0, 4], 60.0,
                        SimSettings(kpa=kpa, cluster=ClusterSettings(spot_notice_s=0.0)))
    for with_notice, without in zip(heeded["runs"], ignored["runs"], strict=True):
        assert with_notice["dropped_share"] < without["dropped_share"]


def test_bursts_meet_the_cost_goals_but_drop_what_arrives_before_replicas_can_start(seed_config):
    r = run_sweep(seed_config, "bursts", range(3), step_s=30.0)
    assert _dist(r, "cost_vs_oracle")["median"] <= GOAL_MEDIAN
    assert _dist(r, "cost_vs_oracle")["worst"] <= GOAL_WORST
    # Not met: 0.1 %. A burst of 2-5x for 1-30 min arrives within 30 s; replicas start in 300-600 s.
    # The oracle knows it is coming and drops nothing; any policy without foresight drops the
    # burst's first minutes unless it pays for spare capacity all day (> 2x the cost at 5x bursts).
    assert all(run["oracle_dropped_share"] == 0 for run in r["runs"])
    assert _dist(r, "excess_dropped_share")["worst"] <= 0.07


def seed_config_with(section, **values):
    raw = yaml.safe_load(SEED_CONFIG.read_text())
    raw[section] = {**raw[section], **values}
    return parse_config(raw)


def test_on_bursts_spare_capacity_buys_drops_only_at_a_cost_far_beyond_the_cost_goal(seed_config):
    """Why the bursts' drop goal is not met (docs/simulation.md, "Sweeps", the frontier): only
    ready spare capacity catches a burst. A drop priced high keeps standing spare sized from the
    bursts seen (policy/spare.py), a lower scale target keeps it everywhere; either way, cutting
    the drops far costs far beyond the cost goal."""
    seeds = range(3)
    shipped = run_sweep(seed_config, "bursts", seeds, step_s=30.0)
    oracle = np.array([r["oracle_usd"] for r in shipped["runs"]])

    def cost_and_drops(config):
        runs = run_sweep(config, "bursts", seeds, step_s=30.0)["runs"]
        return (float(np.median([r["cost_usd"] for r in runs] / oracle)),
                max(r["excess_dropped_share"] for r in runs))

    shipped_drops = max(r["excess_dropped_share"] for r in shipped["runs"])
    dear_cost, dear_drops = cost_and_drops(seed_config_with("routing", drop_cost_usd=0.001))  # 50x shipped
    assert dear_drops < shipped_drops / 10 and dear_cost > 2.0  # measured worst 0.22 % against 5.9 %, 2.46x
    spare_cost, spare_drops = cost_and_drops(seed_config_with("routing", target_utilisation=0.35))
    assert spare_cost > 1.5 and spare_drops > GOAL_EXCESS_DROP_SHARE  # measured 1.68x, worst 1.9 %


def test_slope_pre_warm_leaves_the_families_as_they_were(seed_config):
    """Sized by start-up x slope (shipped: slope_horizon 1.5): the families' demand rises either
    slowly (the diurnal curve, within the autoscaler's headroom) or in steps (bursts), neither a
    sustained fast rise, so the sweeps are the same with it off (tests/planner/test_slope_prewarm.py
    shows the rise it is for)."""
    off = seed_config_with("prewarm", slope_horizon=0.0)
    for family, seeds, step in (("bursts", range(2), 30.0), ("outages", range(3), 60.0)):
        with_slope = run_sweep(seed_config, family, seeds, step_s=step)["runs"]
        without = run_sweep(off, family, seeds, step_s=step)["runs"]
        for a, b in zip(with_slope, without, strict=True):
            assert a["dropped_share"] == pytest.approx(b["dropped_share"], abs=1e-4)
            assert a["cost_usd"] == pytest.approx(b["cost_usd"], rel=0.01)


def test_cli_sweep_writes_the_distribution_and_a_plot(tmp_path, capsys):
    rc = main(["--config", str(REPO / "examples" / "sd21-seed.yaml"), "--sweep", "outages", "--seeds", "2",
               "--step", "120", "--out", str(tmp_path)])
    assert rc == 0
    result = json.loads((tmp_path / "sweep-outages.json").read_text())
    assert [r["seed"] for r in result["runs"]] == [0, 1]
    assert set(result["distribution"]["cost_vs_oracle"]) == {"median", "p90", "worst"}
    assert (tmp_path / "sweep-outages.png").stat().st_size > 1000
    out = capsys.readouterr().out
    assert "cost_vs_oracle" in out and "weight_updates" in out and "goals:" in out


def test_cli_sweep_of_spot_needs_spot_units(tmp_path, capsys):
    rc = main(["--config", str(REPO / "examples" / "sd21-seed.yaml"), "--sweep", "spot", "--seeds", "1",
               "--out", str(tmp_path)])
    assert rc == 2 and "capacity_type: spot" in capsys.readouterr().err
