"""The planner: seed Table 1 and 2 arithmetic, merit order, weights, blended cost, the CLI."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from controller.plan import WeightsSpecError, build_plan, format_table, main, parse_weights
from controller.simulator.dispatch import (
    blended_cost,
    container_concurrency,
    merit_order,
    merit_order_matrix,
    replicas_for,
    scale_target,
)

from .conftest import REPO, SEED_CONFIG

# Seed README, Table 1 (cost of inference) and Table 2 (adjusted throughput).
SEED_TABLE_1 = {
    "sd21-inf2": 0.00733,
    "sd21-trn1": 0.01023,
    "sd21-g5-triton": 0.01118,
    "sd21-g6-triton": 0.01320,
    "sd21-g5-cuda": 0.01677,
}
SEED_TABLE_2 = {"sd21-inf2": 89.2, "sd21-trn1": 89.2, "sd21-g5-triton": 89.2, "sd21-g6-triton": 61.0,
                "sd21-g5-cuda": 60.0}
NAMES = list(SEED_TABLE_1)


def _units(plan):
    return {u["name"]: u for u in plan["units"]}


# ------------------------------------------------------------------------------------ seed tables


def test_cost_per_inference_is_price_per_hour_over_max_throughput(seed_config):
    units = _units(build_plan(seed_config))
    for u in seed_config.units:
        assert units[u.name]["cost_per_inference"] == pytest.approx(u.price_per_hour / u.max_throughput, rel=1e-12)


def test_plan_reproduces_seed_table_1_within_two_percent(seed_config):
    units = _units(build_plan(seed_config))
    for name, table in SEED_TABLE_1.items():
        assert units[name]["cost_per_inference"] == pytest.approx(table, rel=0.02), name


def test_plan_matches_seed_table_1_to_its_last_printed_digit_except_inf2_and_trn1(seed_config):
    # g5-triton, g6-triton and g5-cuda agree with the table to within one unit of its 5th decimal
    # (0.8048/61 = 0.013193 is printed 0.01320). The seed's inf2 (0.00733) and trn1 (0.01023)
    # entries are not price/throughput: 0.7582/105 = 0.00722 and 1.3438/130 = 0.01034.
    units = _units(build_plan(seed_config))
    for name in ("sd21-g5-triton", "sd21-g6-triton", "sd21-g5-cuda"):
        assert abs(units[name]["cost_per_inference"] - SEED_TABLE_1[name]) <= 1e-5, name
    for name in ("sd21-inf2", "sd21-trn1"):
        assert abs(units[name]["cost_per_inference"] - SEED_TABLE_1[name]) > 1e-4, name
    assert round(units["sd21-inf2"]["cost_per_inference"], 5) == 0.00722
    assert round(units["sd21-trn1"]["cost_per_inference"], 5) == 0.01034


def test_plan_reproduces_seed_table_2_target_and_adjusted_throughput(seed_config):
    plan = build_plan(seed_config)
    assert plan["capacity_target"] == pytest.approx((105 + 130 + 90 + 61 + 60) / 5)
    assert plan["capacity_target"] == pytest.approx(89.2)
    units = _units(plan)
    for name, adj in SEED_TABLE_2.items():
        assert units[name]["adjusted_throughput"] == pytest.approx(adj), name


# ------------------------------------------------------------------------------------------ weights


@pytest.mark.parametrize("demand", [None, 0.0, 150.0, 1260.0, 2000.0, 3988.0, 10_000.0])
def test_every_weight_set_is_integers_summing_to_100(seed_config, demand):
    plan = build_plan(seed_config, demand=demand)
    assert set(plan["weights"]) >= {"cost-optimized", "capacity-optimized"}
    for state, w in plan["weights"].items():
        assert set(w) == set(NAMES), state
        assert all(isinstance(v, int) and v >= 0 for v in w.values()), state
        assert sum(w.values()) == 100, state


def test_without_demand_cost_optimized_sends_everything_to_the_cost_pool(seed_config):
    plan = build_plan(seed_config)
    assert plan["weights"]["cost-optimized"] == {"sd21-inf2": 100, "sd21-trn1": 0, "sd21-g5-triton": 0,
                                                  "sd21-g6-triton": 0, "sd21-g5-cuda": 0}
    assert plan["unmet_demand"] is None
    assert plan["blended_cost_per_inference"]["cost-optimized"] == pytest.approx(0.7582 / 105)


def test_capacity_optimized_weights_follow_adjusted_throughput_times_max_replicas(seed_config):
    plan = build_plan(seed_config)
    shares = {u.name: SEED_TABLE_2[u.name] * u.max_replicas for u in seed_config.units}
    total = sum(shares.values())
    for name, w in plan["weights"]["capacity-optimized"].items():
        assert abs(w - 100 * shares[name] / total) < 1.0, name


def test_merit_order_fills_the_cheapest_unit_up_to_max_replicas_times_max_throughput(seed_config):
    plan = build_plan(seed_config, demand=2000.0)
    units = _units(plan)
    # inf2 (cheapest) is full at 12 x 105 = 1260, trn1 (next) takes the remaining 740.
    assert units["sd21-inf2"]["dispatch_rps"] == pytest.approx(1260.0)
    assert units["sd21-trn1"]["dispatch_rps"] == pytest.approx(740.0)
    for name in ("sd21-g5-triton", "sd21-g6-triton", "sd21-g5-cuda"):
        assert units[name]["dispatch_rps"] == 0.0
    assert plan["weights"]["cost-optimized"] == {"sd21-inf2": 63, "sd21-trn1": 37, "sd21-g5-triton": 0,
                                                  "sd21-g6-triton": 0, "sd21-g5-cuda": 0}
    assert plan["unmet_demand"] == 0.0
    expected = (1260 * 0.7582 / 105 + 740 * 1.3438 / 130) / 2000
    assert plan["blended_cost_per_inference"]["cost-optimized"] == pytest.approx(expected, rel=0.01)


def test_merit_order_reports_unmet_demand_when_every_unit_is_full(seed_config):
    total = sum(u.max_replicas * u.max_throughput for u in seed_config.units)
    plan = build_plan(seed_config, demand=total + 500.0)
    assert plan["unmet_demand"] == pytest.approx(500.0)
    for u in plan["units"]:
        assert u["dispatch_rps"] == pytest.approx(u["capacity_rps"])
        assert u["replicas"] == u["max_replicas"]


def test_merit_order_can_fill_units_only_up_to_their_scale_target(seed_config):
    plan = build_plan(seed_config, demand=2000.0, fill="target")
    units = _units(plan)
    assert units["sd21-inf2"]["dispatch_rps"] == pytest.approx(12 * 73)
    assert units["sd21-trn1"]["dispatch_rps"] == pytest.approx(8 * 91)
    assert units["sd21-g5-triton"]["dispatch_rps"] == pytest.approx(2000 - 12 * 73 - 8 * 91)
    assert not any(u["above_target"] for u in plan["units"])
    with pytest.raises(ValueError):
        build_plan(seed_config, demand=1.0, fill="nope")


def test_merit_order_with_small_demand_uses_only_the_cheapest_unit(seed_config):
    plan = build_plan(seed_config, demand=100.0)
    units = _units(plan)
    assert units["sd21-inf2"]["dispatch_rps"] == 100.0
    assert units["sd21-inf2"]["replicas"] == 2  # ceil(100 / 73)
    assert plan["weights"]["cost-optimized"]["sd21-inf2"] == 100


def test_blended_cost_of_command_line_weights_is_the_weighted_mean(seed_config):
    seed = parse_weights("40/20/15/15/10", NAMES)
    plan = build_plan(seed_config, extra_weights={"seed": seed})
    cpi = {u.name: u.price_per_hour / u.max_throughput for u in seed_config.units}
    expected = sum(seed[n] * cpi[n] for n in NAMES) / 100
    assert plan["blended_cost_per_inference"]["seed"] == pytest.approx(expected)
    assert plan["weights"]["seed"] == seed
    bc = plan["blended_cost_per_inference"]
    assert bc["cost-optimized"] < bc["seed"] < bc["capacity-optimized"]


# --------------------------------------------------------------------------------- pure arithmetic


def test_merit_order_breaks_cost_ties_by_name_and_respects_zero_capacity():
    d = merit_order({"b": 1.0, "a": 1.0, "c": 0.5}, {"a": 10.0, "b": 10.0, "c": 0.0}, 15.0)
    assert d.order == ("c", "a", "b")
    assert d.allocation == {"c": 0.0, "a": 10.0, "b": 5.0}
    assert d.unmet == 0.0


def test_merit_order_rejects_bad_input():
    with pytest.raises(ValueError):
        merit_order({"a": 1.0}, {"a": 1.0}, -1.0)
    with pytest.raises(ValueError):
        merit_order({"a": 1.0}, {"b": 1.0}, 1.0)


def test_vectorised_merit_order_matches_the_scalar_one():
    import numpy as np

    costs = [0.3, 0.1, 0.2]
    caps = np.array([[5.0, 1.0, 2.0], [0.0, 4.0, 4.0], [1.0, 1.0, 1.0]])
    demand = np.array([6.0, 3.0, 10.0])
    out = merit_order_matrix(costs, caps, demand)
    for k in range(3):
        d = merit_order({"x": 0.3, "y": 0.1, "z": 0.2}, dict(zip("xyz", caps[k], strict=True)), demand[k])
        assert out[k].tolist() == pytest.approx([d.allocation["x"], d.allocation["y"], d.allocation["z"]])


def test_scale_target_keeps_headroom_and_concurrency_follows_littles_law():
    assert scale_target(105, 0.7) == 73  # floor(73.5)
    assert scale_target(130, 0.8) == 104
    assert scale_target(1, 0.5) == 1
    assert container_concurrency(105, 0.67) == 71  # ceil(70.35)
    assert container_concurrency(60, 0.92) == 56  # ceil(55.2)
    assert replicas_for(0, 73) == 0
    assert replicas_for(73, 73) == 1
    assert replicas_for(73.01, 73) == 2
    with pytest.raises(ValueError):
        scale_target(105, 0)


def test_blended_cost_needs_positive_weights():
    assert blended_cost({"a": 1, "b": 3}, {"a": 1.0, "b": 2.0}) == pytest.approx(1.75)
    with pytest.raises(ValueError):
        blended_cost({"a": 0}, {"a": 1.0})


def test_utilisation_option_changes_the_scale_target(seed_config):
    units = _units(build_plan(seed_config, utilisation=0.8))
    assert units["sd21-inf2"]["scale_target"] == 84
    with pytest.raises(ValueError):
        build_plan(seed_config, utilisation=1.5)


# -------------------------------------------------------------------------------------- weights spec


def test_weights_spec_accepts_config_order_or_names():
    assert parse_weights("40/20/15/15/10", NAMES) == dict(zip(NAMES, [40, 20, 15, 15, 10], strict=True))
    assert parse_weights("40,20,15,15,10", NAMES) == dict(zip(NAMES, [40, 20, 15, 15, 10], strict=True))
    assert parse_weights("sd21-inf2=70,sd21-trn1=30", NAMES) == {"sd21-inf2": 70, "sd21-trn1": 30,
                                                                 "sd21-g5-triton": 0, "sd21-g6-triton": 0,
                                                                 "sd21-g5-cuda": 0}


@pytest.mark.parametrize("spec", ["", "40/20", "a=1", "40/20/15/15/x", "0/0/0/0/0", "-1/20/20/20/41"])
def test_weights_spec_rejects_malformed_input(spec):
    with pytest.raises(WeightsSpecError):
        parse_weights(spec, NAMES)


# ------------------------------------------------------------------------------------------------ CLI


def test_cli_json_has_the_documented_fields(capsys):
    rc = main(["--config", str(SEED_CONFIG), "--demand", "2000", "--format", "json",
               "--weights", "seed:40/20/15/15/10"])
    assert rc == 0
    plan = json.loads(capsys.readouterr().out)
    for key in ("units", "weights", "blended_cost_per_inference", "unmet_demand"):
        assert key in plan
    for u in plan["units"]:
        for key in ("name", "pool", "cost_per_inference", "max_throughput", "adjusted_throughput", "scale_target"):
            assert key in u
    assert set(plan["weights"]) == {"cost-optimized", "capacity-optimized", "seed"}
    assert set(plan["blended_cost_per_inference"]) == {"cost-optimized", "capacity-optimized", "seed"}
    assert all(math.isfinite(v) for v in plan["blended_cost_per_inference"].values())


def test_cli_table_lists_every_unit_and_weight_set(capsys):
    assert main(["--config", str(SEED_CONFIG), "--weights", "40/20/15/15/10"]) == 0
    out = capsys.readouterr().out
    for name in NAMES:
        assert name in out
    assert "w:cost-optimized" in out and "w:capacity-optimized" in out and "w:40/20/15/15/10" in out
    assert "0.00722" in out and "89.2" in out


def test_table_mentions_unmet_demand_with_a_demand(seed_config):
    text = format_table(build_plan(seed_config, demand=10_000))
    assert "unmet demand" in text


@pytest.mark.parametrize("argv", [["--weights", "1/2"], ["--demand", "-5"], ["--utilisation", "0"]])
def test_cli_rejects_bad_arguments_with_exit_status_2(argv, capsys):
    assert main(["--config", str(SEED_CONFIG), *argv]) == 2
    assert "error" in capsys.readouterr().err


def test_cli_reports_config_errors(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("units: []\n")
    assert main(["--config", str(bad)]) == 2
    assert "config error" in capsys.readouterr().err


def test_python_dash_m_controller_plan_runs():
    res = subprocess.run([sys.executable, "-m", "controller", "plan", "--config", str(SEED_CONFIG),
                          "--format", "json"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["capacity_target"] == pytest.approx(89.2)


def test_example_config_holds_the_seed_units(seed_config):
    seed = {  # name: (instance type, USD/h, max rps, latency s) from the seed's Tables 1 and 2
        "sd21-inf2": ("inf2.xlarge", 0.7582, 105, 0.67),
        "sd21-trn1": ("trn1.2xlarge", 1.3438, 130, 0.51),
        "sd21-g5-triton": ("g5.xlarge", 1.0060, 90, 0.68),
        "sd21-g6-triton": ("g6.xlarge", 0.8048, 61, 0.96),
        "sd21-g5-cuda": ("g5.xlarge", 1.0060, 60, 0.92),
    }
    assert [u.name for u in seed_config.units] == list(seed)
    for u in seed_config.units:
        assert (u.instance_type, u.price_per_hour, u.max_throughput, u.latency_s) == seed[u.name]
    assert [u.name for u in seed_config.cost_units] == ["sd21-inf2"]
