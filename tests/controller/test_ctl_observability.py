"""The controller metrics the dashboards and alerts read beyond the basics: decisions by action
and reason, and the per-unit price and replica throughput behind cost and capacity panels."""

from __future__ import annotations

import re

from controller.metrics import REASONS, reason_category


def metric_lines(ctl) -> list[str]:
    return ctl.metrics.render().decode().splitlines()


def test_every_reconcile_counts_a_decision_by_action_and_reason(world, clock):
    ctl = world.controller()
    ctl.step()
    world.inf2_outage()
    clock.advance(30)
    result = ctl.step()
    assert result.action == "applied" and result.decision.state.mode == "capacity-optimized"
    lines = metric_lines(ctl)
    counted = [line for line in lines if line.startswith("traffic_controller_decisions_total{")]
    assert f'traffic_controller_decisions_total{{action="applied",reason="{reason_category(result.decision.reason)}"}} 1.0' in counted
    assert sum(float(line.rsplit(" ", 1)[1]) for line in counted) == 2.0


def test_a_standby_replica_counts_its_decisions_as_standby_without_a_reason(world, clock):
    world.controller(identity="a").step()
    b = world.controller(identity="b")
    assert b.step().action == "standby"
    assert 'traffic_controller_decisions_total{action="standby",reason="none"} 1.0' in metric_lines(b)


def test_unit_price_and_replica_throughput_are_exported_per_second(world):
    ctl = world.controller(throughput_per="minute")
    lines = metric_lines(ctl)
    assert 'traffic_controller_unit_price_per_hour{unit="sd21-inf2"} 0.7582' in lines
    assert 'traffic_controller_unit_replica_max_rps{unit="sd21-inf2"} 1.75' in lines  # 105 per minute


def test_reason_categories_are_the_policys_leading_words():
    assert reason_category("failover: cost pool short of capacity; holding it") == "failover"
    assert reason_category("cost-optimized (weights kept: within routing.min_weight_change)") == "cost-optimized"
    assert reason_category("stale: signals are 200 s old (max 120 s); holding weights") == "stale"
    assert reason_category("something new") == "other"
    assert reason_category(None) == "none"
    assert set(REASONS) == {"cost-optimized", "capacity-optimized", "failover", "fallback", "stale"}


def test_every_reason_the_policy_writes_has_its_own_category():
    from pathlib import Path

    import controller.policy

    # every module of the policy package (the strategies write their own reasons)
    source = "".join(p.read_text() for p in sorted(Path(controller.policy.__file__).parent.glob("*.py")))
    leading = set(re.findall(r'(?:why = |reason=)f?"([a-z-]+)[:"]', source))
    assert leading and leading <= set(REASONS), leading - set(REASONS)
