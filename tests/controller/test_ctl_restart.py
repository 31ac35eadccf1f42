"""Restarts change nothing: a controller killed mid-failover and started again (or replaced by
the other replica) makes the same decisions as one that kept running.

Each scenario runs twice against its own fake API server over HTTP (official client): once with
one controller throughout, once with the controller killed (no Lease release, no goodbye) after
step ``k`` and a new process with another identity taking over at the next interval. The
weights, the floors (``minReplicas``) and the mode after every step must be the same.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time

import pytest

from controller.policy import CAPACITY, COST, PolicyState
from controller.state import KEY, change_key, decode_state, encode_state

from .ctl_fakeapi import FakeKube
from .ctl_world import INTERVAL, NAMES, NS, Clock, World
from .test_ctl_chaos_signals import assert_nothing_stranded
from .test_ctl_signals import _Prom

INF2 = "sd21-inf2"
STATE_CM = "inference-traffic-controller-state"


def demand(prom, rps: float) -> None:
    prom.code = 200
    prom.answer = {"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}, "value": [0, str(rps)]}]}}


# A failover and its recovery, one entry per decision interval: (what happens, demand in rps).
SCRIPT = (
    [("healthy", 500)] * 2
    + [("outage", 500)] * 2
    + [("outage", 800)] * 2  # the capacity units' floors go up
    + [("outage", 450)] * 5  # ... and are held for prewarm.hold_s (120 s) while demand is lower
    + [("recovered", 450)] * 4
    + [("recovered", None)] * 2  # Prometheus goes down during the recovery
    + [("recovered", 450)] * 16  # the headroom hold (300 s) runs, then the fallback
)


def run(
    tmp_path, restart_after: int | None, strategy: str = "merit-order", knative=(1, 21), **config
) -> list[tuple]:
    """The trajectory of one run: (weights, floors, mode in the state) after each step."""
    with FakeKube(knative_version=knative) as fake, _Prom() as prom:
        clock = Clock()
        world = World(fake, clock, fake.write_kubeconfig(tmp_path / f"kc-{restart_after}", NS))
        overrides = {"prometheus": {"url": prom.url, "timeout_s": 1}, "routing": {"strategy": strategy}, **config}
        ctl = world.controller("ctl-a", **overrides)
        trajectory = []
        weights_before = world.weights()
        for i, (what, rps) in enumerate(SCRIPT):
            router_rollouts = len(fake.rollouts)
            if what == "healthy":
                world.set_unit(INF2, ready=4, desired=4)
            elif what == "outage" and (i == 0 or SCRIPT[i - 1][0] != "outage"):
                world.inf2_outage()
            elif what == "recovered" and SCRIPT[i - 1][0] == "outage":
                world.inf2_recovered(ready=6)
            if rps is None:
                prom.code = 503
            else:
                demand(prom, rps)
            result = ctl.step()
            assert result.action not in ("standby", "error"), (i, result.message)
            assert_nothing_stranded(world)
            # The router (an InferenceGraph: every edit, annotations included, rolls out a router
            # revision) is written only when the weights change, the first step after a restart too;
            # floors (restored ones included) go to the Revisions' autoscalers, never the
            # InferenceServices, so no unit is rolled out.
            weights = world.weights()
            if config.get("state_configmap") != "":  # (without it the annotations are the only record)
                assert len(fake.rollouts) - router_rollouts == (weights != weights_before), (i, fake.rollouts)
            assert fake.unit_rollouts() == [] and fake.writes("/inferenceservices/") == [], i
            weights_before = weights
            trajectory.append((weights, {n: world.min_replicas(n) for n in NAMES}, ctl.state.mode))
            if i == restart_after:  # killed: the Lease is not released
                clock.advance(5)
                ctl = world.controller("ctl-b", **overrides)  # the new pod sees ctl-a's Lease ...
                assert ctl.lease_tick() is False
                clock.advance(INTERVAL - 5)  # ... and takes it over once it has expired
            else:
                clock.advance(INTERVAL)
        return trajectory


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    return run(tmp_path_factory.mktemp("run"), None)


@pytest.mark.parametrize("restart_after", [3, 5, 8, 12, 15, 16, 20])  # 15: Prometheus down on the first step after
def test_a_restart_at_any_step_of_a_failover_changes_no_weight_and_no_floor(tmp_path, uninterrupted,
                                                                             restart_after):
    restarted = run(tmp_path, restart_after)
    for step, (want, got) in enumerate(zip(uninterrupted, restarted, strict=True)):
        assert got == want, f"step {step} (restart after step {restart_after}): {SCRIPT[step]}"


def test_restored_floors_go_to_the_podautoscalers_on_knative_before_1_21(tmp_path, uninterrupted):
    """Floors restored from the ConfigMap take the same path as any floor (FloorActuator): the
    PodAutoscaler's min-scale there, never the InferenceService (run() asserts no unit rollout)."""
    assert run(tmp_path, 8, knative=(1, 15)) == uninterrupted


def test_the_comparison_can_fail_a_restart_without_the_saved_state_changes_floors(tmp_path, uninterrupted):
    """Resuming from the router's annotations alone (mode and since) loses the held floors."""
    modes = [mode for _, _, mode in uninterrupted]
    assert CAPACITY in modes and modes[-1] == COST  # the scenario fails over and falls back
    restarted = run(tmp_path, 5, state_configmap="")
    first = next(i for i, (a, b) in enumerate(zip(uninterrupted, restarted, strict=True)) if a != b)
    assert restarted[first][1]["sd21-trn1"] < uninterrupted[first][1]["sd21-trn1"]  # a held floor came down


def test_proportional_restarts_change_nothing_either(tmp_path):
    want = run(tmp_path, None, strategy="proportional")
    got = run(tmp_path, 12, strategy="proportional")
    assert got == want


def test_the_state_lives_in_a_configmap_written_on_changes_only(world, clock):
    with _Prom() as prom:
        demand(prom, 500)
        ctl = world.controller(prometheus={"url": prom.url, "timeout_s": 1})
        for _ in range(10):  # steady state
            ctl.step()
            clock.advance(INTERVAL)
        writes = [w for w in world.fake.writes("/configmaps") if STATE_CM in w[1] or w[0] == "POST"]
        assert len(writes) == 1  # created once, not rewritten every interval
        cm = world.fake.get("v1", "ConfigMap", STATE_CM, NS)
        record = json.loads(cm["data"][KEY])
        assert record["mode"] == COST and set(record["floors"]) == set(NAMES)
        world.inf2_outage()
        ctl.step()
        record = json.loads(world.fake.get("v1", "ConfigMap", STATE_CM, NS)["data"][KEY])
        assert record["mode"] == CAPACITY and record["applied_floors"]["sd21-trn1"] >= 2


def test_state_records_round_trip():
    state = PolicyState(mode=CAPACITY, since=100.0, cost_headroom_since=400.5, weights={"a": 60, "b": 40},
                        prewarm_until=math.inf, short_capacity={"a": 2.0}, floors={"a": (6, math.inf), "b": (3, 700.0)},
                        planned={"a": 300.0, "b": 120.0}, decided_at=990.0,
                        demand_history=((930.0, 300.0), (960.0, 310.5), (990.0, 322.25)))
    record = json.loads(json.dumps(encode_state(state, {"a": 6, "b": 3})))  # plain JSON, no Infinity
    assert "Infinity" not in json.dumps(record)
    back = decode_state(record, ["a", "b"], {"a": 60, "b": 40}, now=1000.0, interval_s=30)
    assert back == state
    # The last decision before a restart was at most one interval ago: never held from earlier.
    assert decode_state(record, ["a", "b"], {}, now=5000.0, interval_s=30).decided_at == 4970.0
    assert change_key(encode_state(state)) == change_key(encode_state(
        PolicyState(**{**state.__dict__, "planned": {"a": 1.0}, "decided_at": 5.0, "demand_history": ()})))
    # Demand samples from after the restart's clock (a clock that went back) are not trusted.
    assert decode_state(record, ["a", "b"], {}, now=960.0, interval_s=30).demand_history == ((930.0, 300.0),
                                                                                            (960.0, 310.5))
    assert decode_state({"version": 99}, ["a"], {}, 0, 30) is None


def test_a_standby_on_its_lease_thread_takes_over_from_the_state_configmap(fake, tmp_path, caplog):
    """As deployed: the standby runs Controller.run, its Lease renewed on its own thread. The leader
    fails over and dies without releasing the Lease; the standby takes over once the Lease expires,
    resumes from the state ConfigMap the leader saved (fenced writes, the leader's only), and rolls
    out no router revision except with a weight change."""
    from .test_ctl_leader import REALTIME

    world = World(fake, time.time, fake.write_kubeconfig(tmp_path / "kc", NS))
    a = world.controller("ctl-a", **REALTIME)
    assert a.step().action == "unchanged"
    world.inf2_outage()
    assert a.step().decision.switched
    assert json.loads(world.fake.get("v1", "ConfigMap", STATE_CM, NS)["data"][KEY])["mode"] == CAPACITY
    b = world.controller("ctl-b", **REALTIME)
    stop = threading.Event()
    thread = threading.Thread(target=b.run, args=(stop,), daemon=True)
    with caplog.at_level(logging.INFO, logger="controller.loop"):
        thread.start()
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and (b.last_result is None or b.last_result.action == "standby"):
                time.sleep(0.02)
        finally:
            stop.set()
            thread.join(timeout=5)
    assert b.last_result is not None and b.last_result.action in ("unchanged", "applied"), b.last_result
    assert b.state.mode == CAPACITY
    assert "resuming from the state ConfigMap" in caplog.text
    assert world.fake.non_leader_writes(REALTIME["lease"]["name"]) == []
    assert world.fake.unit_rollouts() == []
    assert len(world.fake.rollouts) == world.graph_weight_writes()  # router rollouts = weight changes
