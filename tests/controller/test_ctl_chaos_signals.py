"""Signal failures at each phase of an outage, against the fake API over HTTP (official client).

The issue's operator: merit-order (examples/sd21-seed.yaml), the cost unit loses every pod
(Pending, Karpenter InsufficientCapacityError) while Prometheus is down, slow, empty or talking
nonsense, or while a Kubernetes list call fails. After every step: no weight on a unit without
a ready replica while another unit has one (unless the router is paused).
"""

from __future__ import annotations

import pytest

from controller.routers import PAUSED

from .ctl_world import INTERVAL, NAMES, NS
from .test_ctl_signals import _Prom

INF2 = "sd21-inf2"
GOOD = [{"metric": {}, "value": [0, "500"]}]


def ready_counts(world) -> dict[str, int]:
    counts = dict.fromkeys(NAMES, 0)
    for p in world.fake.list("v1", "Pod", NS):
        conds = {c["type"]: c["status"] for c in p["status"].get("conditions", [])}
        if p["status"].get("phase") == "Running" and conds.get("Ready") == "True":
            counts[p["metadata"]["labels"]["serving.kserve.io/inferenceservice"]] += 1
    return counts


def assert_nothing_stranded(world) -> None:
    ready, weights = ready_counts(world), world.weights()
    assert sum(weights.values()) == 100
    if any(ready.values()) and world.annotations().get(PAUSED) != "true":
        stranded = {n: w for n, w in weights.items() if w > 0 and ready[n] == 0}
        assert stranded == {}, f"weight on units without a ready replica: {stranded}"


def lose_every_inf2_pod(world) -> None:
    world.set_unit(INF2, ready=0, desired=6, unschedulable=6)
    world.ice("inf2", 3)


def break_prometheus(prom, how: str) -> None:
    if how == "down":
        prom.code = 503
    elif how == "slow":
        prom.delay_s = 3.0  # the controller's prometheus.timeout_s is 1
    elif how == "empty":
        prom.answer = {"status": "success", "data": {"resultType": "vector", "result": []}}
    elif how == "nan":
        prom.answer = {"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}, "value": [0, "NaN"]}]}}
    elif how == "negative":
        prom.answer = {"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}, "value": [0, "-3"]}]}}
    elif how == "garbage":
        prom.answer = {"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}}]}}
    elif how == "not-an-object":
        prom.answer = ["not", "a", "prometheus", "answer"]


def merit_controller(world, prom, **overrides):
    return world.controller(prometheus={"url": prom.url, "timeout_s": 1}, **overrides)


@pytest.mark.parametrize("how", ["down", "slow", "empty", "nan", "negative", "garbage", "not-an-object"])
def test_prometheus_failing_while_the_cost_unit_loses_every_pod_strands_no_traffic(world, clock, how):
    with _Prom() as prom:
        prom.answer["data"]["result"] = GOOD
        ctl = merit_controller(world, prom)
        world.set_unit(INF2, ready=4, desired=4)
        ctl.step()
        assert world.weights()[INF2] > 0
        break_prometheus(prom, how)
        lose_every_inf2_pod(world)
        clock.advance(INTERVAL)
        r = ctl.step()
        assert r.action == "applied", r.message
        assert world.weights()[INF2] == 0
        assert_nothing_stranded(world)
        assert "estimated from the autoscaler" in r.decision.reason
        # The next cheapest units are asked to grow for inf2's demand.
        assert sum(world.min_replicas(n) for n in NAMES if n != INF2) > len(NAMES) - 1


@pytest.mark.parametrize("how", ["down", "slow", "empty"])
@pytest.mark.parametrize("phase", ["before", "during", "recovering"])
def test_prometheus_failing_at_each_phase_of_an_outage(world, clock, phase, how):
    """Prometheus fails before the outage, in the middle of it, or while inf2 comes back."""
    with _Prom() as prom:
        prom.answer["data"]["result"] = GOOD
        ctl = merit_controller(world, prom)
        world.set_unit(INF2, ready=4, desired=4)
        ctl.step()
        script = [lose_every_inf2_pod, lose_every_inf2_pod, lose_every_inf2_pod,
                  lambda w: w.inf2_recovered(ready=2), lambda w: w.inf2_recovered(ready=4),
                  lambda w: w.inf2_recovered(ready=4)]
        fail_at = {"before": 0, "during": 2, "recovering": 3}[phase]
        for i, change in enumerate(script):
            if i == fail_at:
                break_prometheus(prom, how)
            change(world)
            clock.advance(INTERVAL)
            ctl.step()
            assert_nothing_stranded(world)
        # inf2 is back with ready replicas: it serves again although demand is still unmeasured.
        assert world.weights()[INF2] > 0


def test_pod_list_failing_falls_back_to_the_autoscalers_ready_count(world, clock):
    with _Prom() as prom:
        prom.answer["data"]["result"] = GOOD
        ctl = merit_controller(world, prom)
        world.set_unit(INF2, ready=4, desired=4)
        ctl.step()
        lose_every_inf2_pod(world)
        world.fake.fail(r"/pods$", status=500, times=1000, method="GET")  # every pod list fails
        clock.advance(INTERVAL)
        r = ctl.step()
        assert r.action == "applied" and not r.decision.stale
        assert world.weights()[INF2] == 0
        assert_nothing_stranded(world)
        assert any("list pods" in d for d in ctl.signals.degraded)
        assert any("list pods" in d for d in ctl.metrics.status["degraded"])  # /status says so


def test_events_and_nodeclaims_failing_still_fail_over_on_unschedulable_pods(world, clock):
    with _Prom() as prom:
        prom.answer["data"]["result"] = GOOD
        ctl = merit_controller(world, prom)
        world.set_unit(INF2, ready=4, desired=4)
        ctl.step()
        world.fake.fail(r"/(events|nodeclaims)$", status=500, times=1000, method="GET")
        lose_every_inf2_pod(world)
        clock.advance(INTERVAL)
        r = ctl.step()
        assert r.decision.switched and world.weights()[INF2] == 0
        assert_nothing_stranded(world)


def test_a_unit_that_cannot_be_read_at_all_is_held_and_the_others_still_route_around_unready_units(world, clock):
    with _Prom() as prom:
        prom.answer["data"]["result"] = GOOD
        ctl = merit_controller(world, prom)
        world.set_unit(INF2, ready=4, desired=4)
        ctl.step()
        # g6's pods and PodAutoscalers cannot be listed; inf2 loses every pod meanwhile.
        world.fake.fail(r"inferenceservice=sd21-g6-triton", status=500, times=1000)
        world.fake.fail(r"sd21-g6-triton", status=500, times=1000, method="GET")
        lose_every_inf2_pod(world)
        clock.advance(INTERVAL)
        r = ctl.step()
        assert r.decision.stale and "sd21-g6-triton" in r.decision.reason
        assert world.weights()[INF2] == 0
        assert_nothing_stranded(world)


def test_stale_signals_after_a_slow_read_still_move_traffic_off_a_dead_unit(world, clock):
    with _Prom() as prom:
        prom.answer["data"]["result"] = GOOD
        ctl = merit_controller(world, prom, lease={"enabled": False})  # a single replica: no lease to lose
        world.set_unit(INF2, ready=4, desired=4)
        ctl.step()
        lose_every_inf2_pod(world)
        clock.advance(INTERVAL)
        real_read = ctl.signals.read

        def slow_read(now):  # the reads took longer than signal_max_age_s
            sig = real_read(now)
            clock.advance(200)
            return sig

        ctl.signals.read = slow_read
        r = ctl.step()
        assert r.decision.stale and world.weights()[INF2] == 0
        assert_nothing_stranded(world)


def test_a_paused_router_is_left_alone_even_when_a_unit_has_no_ready_replica(world, clock):
    with _Prom() as prom:
        prom.code = 503
        ctl = merit_controller(world, prom)
        world.set_unit(INF2, ready=4, desired=4)
        ctl.step()
        before = world.weights()
        world.fake.edit("serving.kserve.io/v1alpha1", "InferenceGraph", "sd21-router", NS,
                        lambda g: g["metadata"].setdefault("annotations", {}).update({PAUSED: "true"}))
        lose_every_inf2_pod(world)
        clock.advance(INTERVAL)
        assert ctl.step().action == "paused"
        assert world.weights() == before


def test_inference_service_reads_failing_or_without_status_fall_back_to_the_pods(world, clock):
    with _Prom() as prom:
        prom.answer["data"]["result"] = GOOD
        ctl = merit_controller(world, prom)
        world.set_unit(INF2, ready=4, desired=4)
        ctl.step()
        # sd21-trn1's InferenceService has no status yet; every InferenceService GET fails.
        world.fake.edit("serving.kserve.io/v1beta1", "InferenceService", "sd21-trn1", NS,
                        lambda o: o.pop("status", None))
        world.fake.fail(r"/inferenceservices/", status=500, times=1000, method="GET")
        lose_every_inf2_pod(world)
        clock.advance(INTERVAL)
        r = ctl.step()
        assert not r.decision.stale and world.weights()[INF2] == 0
        assert_nothing_stranded(world)
        assert any("get InferenceService" in d for d in ctl.signals.degraded)
