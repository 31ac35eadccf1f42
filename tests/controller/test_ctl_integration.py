"""The controller against a fake Kubernetes API over real HTTP, through the official client.

Each scenario drives the controller one decision at a time with an injected clock: a "step" is
what the run loop does once per decision interval (lease tick + reconcile).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from controller.policy import CAPACITY, COST
from controller.routers import APPLIED, PAUSED, PAUSED_REASON, PREVIOUS, STATE

from .ctl_world import COST_WEIGHTS, INTERVAL, NAMES, NS


def steps(ctl, clock, n, every=INTERVAL):
    results = []
    for _ in range(n):
        clock.advance(every)
        results.append(ctl.step())
    return results


def test_steady_state_keeps_weights_and_does_not_patch_them(world, clock):
    ctl = world.controller()
    results = [ctl.step()] + steps(ctl, clock, 10)
    assert {r.action for r in results} == {"unchanged"}
    assert world.weights() == COST_WEIGHTS
    assert world.graph_weight_writes() == 0
    # Not even annotations: an InferenceGraph edit rolls out a router revision, so the bookkeeping
    # rides with weight changes only; the state is in the state ConfigMap.
    assert world.fake.writes("/inferencegraphs/") == [] and world.fake.rollouts == []
    cm = world.fake.get("v1", "ConfigMap", "inference-traffic-controller-state", NS)
    record = json.loads(cm["data"]["state.json"])
    assert record["mode"] == COST and record["weights"] == COST_WEIGHTS
    assert world.events() == []


def test_inf2_outage_fails_over_within_one_decision_interval(world, clock):
    ctl = world.controller()
    ctl.step()
    clock.advance(5)
    world.inf2_outage()  # pods pending + InsufficientCapacityError events
    clock.advance(INTERVAL - 5)
    result = ctl.step()  # the next decision
    assert result.action == "applied" and result.decision.switched
    w = world.weights()
    assert sum(w.values()) == 100
    assert w["sd21-inf2"] < 100 and all(w[n] > 0 for n in NAMES)  # every unit has a ready replica
    ann = world.annotations()
    assert json.loads(ann[STATE])["mode"] == CAPACITY
    assert json.loads(ann[PREVIOUS]) == COST_WEIGHTS and json.loads(ann[APPLIED]) == w
    (event,) = world.events("Failover")
    assert event["type"] == "Warning" and "short of capacity" in event["message"]
    assert event["involvedObject"]["name"] == "sd21-router"
    # Pre-warm raised the capacity pool's minReplicas.
    assert all(world.min_replicas(n) >= 2 for n in NAMES if n != "sd21-inf2")
    assert world.min_replicas("sd21-inf2") == 1


def test_recovery_falls_back_only_after_the_hold_period(world, clock):
    ctl = world.controller()  # min_state 120 s, fallback_hold 300 s, capacity_error_window 300 s
    ctl.step()
    world.inf2_outage()
    clock.advance(INTERVAL)
    ctl.step()
    assert world.weights() != COST_WEIGHTS
    clock.advance(INTERVAL)
    world.inf2_recovered()
    recovered_at = clock()
    modes = []
    while clock() < recovered_at + 800:
        r = ctl.step()
        modes.append((clock() - recovered_at, r.decision.state.mode))
        clock.advance(INTERVAL)
    fallback_at = next(t for t, m in modes if m == COST)
    # Headroom starts at the first decision after the last InsufficientCapacityError left the
    # 300 s window (events at recovered_at - 60, so at recovered_at + 270); the fallback comes
    # exactly fallback_hold_s (300 s) later, not a decision earlier.
    assert fallback_at == 270 + 300
    assert world.weights() == COST_WEIGHTS
    (event,) = world.events("Fallback")
    assert event["type"] == "Normal"
    assert [m for _, m in modes[modes.index((fallback_at, COST)) :]] == [COST] * (
        len(modes) - modes.index((fallback_at, COST))
    )
    # Pre-warm is released once its hold (120 s) has passed after the fallback.
    assert all(world.min_replicas(n) == 1 for n in NAMES)


def test_flapping_signals_do_not_oscillate(world, clock):
    ctl = world.controller()
    ctl.step()
    for i in range(30):  # 15 minutes of the cost pool flipping every decision
        if i % 2 == 0:
            world.inf2_outage()
        else:
            world.inf2_recovered()
        clock.advance(INTERVAL)
        ctl.step()
    assert world.graph_weight_writes() == 1  # the failover, and nothing after
    assert len(world.events("Failover")) == 1 and world.events("Fallback") == []


def test_manual_edit_pauses_the_controller_until_the_annotation_is_removed(world, clock):
    ctl = world.controller()
    ctl.step()
    by_hand = {"sd21-inf2": 50, "sd21-trn1": 50, "sd21-g5-triton": 0, "sd21-g6-triton": 0, "sd21-g5-cuda": 0}

    def edit(obj):
        for step in obj["spec"]["nodes"]["root"]["steps"]:
            step["weight"] = by_hand.get(step["serviceName"], 0)

    world.fake.edit("serving.kserve.io/v1alpha1", "InferenceGraph", "sd21-router", NS, edit)
    clock.advance(INTERVAL)
    r = ctl.step()
    assert r.action == "paused" and "changed by hand" in r.message
    ann = world.annotations()
    assert ann[PAUSED] == "true" and "manual edit" in ann[PAUSED_REASON]
    assert len(world.events("ManualEdit")) == 1
    world.inf2_outage()  # even a failover does not override the person
    for r in steps(ctl, clock, 4):
        assert r.action == "paused" and r.decision.state.mode == CAPACITY
    assert world.weights() == by_hand
    assert len(world.events("ManualEdit")) == 1  # logged once, not every interval

    def unpause(obj):
        del obj["metadata"]["annotations"][PAUSED]

    world.fake.edit("serving.kserve.io/v1alpha1", "InferenceGraph", "sd21-router", NS, unpause)
    clock.advance(INTERVAL)
    r = ctl.step()
    assert r.action == "applied"
    assert world.weights() != by_hand and world.weights()["sd21-g5-cuda"] > 0
    assert PAUSED_REASON not in world.annotations()


def test_paused_annotation_set_by_a_person_is_followed(world, clock):
    ctl = world.controller()
    ctl.step()
    world.fake.edit(
        "serving.kserve.io/v1alpha1",
        "InferenceGraph",
        "sd21-router",
        NS,
        lambda o: o["metadata"].setdefault("annotations", {}).update({PAUSED: "true"}),
    )
    world.inf2_outage()
    results = steps(ctl, clock, 3)
    assert [r.action for r in results] == ["paused"] * 3
    assert world.weights() == COST_WEIGHTS
    assert world.events("ManualEdit") == []


def test_transient_api_errors_and_timeouts_are_retried_with_backoff(world, clock):
    sleeps = []
    ctl = world.controller(sleeps=sleeps, timing={"api_timeout_s": 0.3})
    ctl.step()
    world.inf2_outage()
    world.fake.fail(r"/pods$", status=500, times=2, method="GET")
    world.fake.fail(r"/inferencegraphs/", status=503, times=1, method="PATCH")
    world.fake.fail(r"/events$", status=0, times=1, method="GET", delay_s=0.6)  # a read timeout
    clock.advance(INTERVAL)
    r = ctl.step()
    assert r.action == "applied" and r.decision.switched
    # Backoff 0.01 s doubling per retry of the same call (+ up to 10% jitter): pods 0.01 then
    # 0.02, events 0.01, the graph patch 0.01.
    bases = [0.01, 0.01, 0.01, 0.02]
    assert len(sleeps) == 4
    assert all(b <= s <= b * 1.1 for b, s in zip(bases, sorted(sleeps), strict=True))
    text = ctl.metrics.render().decode()
    assert 'traffic_controller_errors_total{source="kubernetes"}' in text
    assert 'traffic_controller_errors_total{source="router"} 1.0' in text


def test_conflict_on_write_rereads_and_retries(world, clock):
    ctl = world.controller()
    ctl.step()
    world.inf2_outage()
    world.fake.fail(r"/inferencegraphs/sd21-router$", status=409, times=1, method="PATCH", reason="Conflict")
    clock.advance(INTERVAL)
    r = ctl.step()
    assert r.action == "applied"
    assert world.weights() != COST_WEIGHTS
    patches = [w for w in world.fake.writes("/inferencegraphs/") if w[0] == "PATCH"]
    assert all(p[2] == "application/merge-patch+json" for p in patches)
    assert all(p[3]["metadata"]["resourceVersion"] for p in patches)  # optimistic concurrency


def test_persistent_api_errors_hold_weights_and_the_next_reconcile_recovers(world, clock):
    ctl = world.controller()
    ctl.step()
    world.inf2_outage()
    # Neither the pods nor the autoscalers (their fallback) can be listed: nothing is known.
    world.fake.fail(r"/(pods|podautoscalers)$", status=500, times=100, method="GET")
    clock.advance(INTERVAL)
    r = ctl.step()
    assert r.action == "unavailable" and "holding weights" in r.message
    assert world.weights() == COST_WEIGHTS
    assert "traffic_controller_signals_stale 1.0" in ctl.metrics.render().decode()
    world.fake.clear_faults()
    clock.advance(INTERVAL)
    assert ctl.step().decision.switched
    assert "traffic_controller_signals_stale 0.0" in ctl.metrics.render().decode()


def test_router_write_failure_is_not_committed_and_is_retried_next_interval(world, clock):
    ctl = world.controller()
    ctl.step()
    world.inf2_outage()
    world.fake.fail(r"/inferencegraphs/", status=500, times=100, method="PATCH")
    clock.advance(INTERVAL)
    try:
        ctl.step()
        raised = False
    except Exception:
        raised = True
    assert raised and world.weights() == COST_WEIGHTS and ctl.state.mode == COST
    world.fake.clear_faults()
    clock.advance(INTERVAL)
    assert ctl.step().decision.switched and world.weights() != COST_WEIGHTS


def test_stale_signals_are_reported_and_not_acted_on(world, clock):
    ctl = world.controller()
    ctl.step()
    world.inf2_outage()
    real_read = ctl.signals.read
    ctl.signals.read = lambda now: real_read(now - 600)  # a source that lags ten minutes
    clock.advance(INTERVAL)
    r = ctl.step()
    assert r.action == "stale" and "stale" in r.message
    assert world.weights() == COST_WEIGHTS
    text = ctl.metrics.render().decode()
    assert "traffic_controller_signals_stale 1.0" in text
    assert ctl.metrics.status["action"] == "stale"


def test_signals_that_take_too_long_to_read_are_stale(world, clock):
    ctl = world.controller()
    ctl.step()
    world.inf2_outage()
    real_read = ctl.signals.read

    def slow_read(now):
        signals = real_read(now)
        clock.advance(200)  # e.g. minutes of retries against a struggling API server
        return signals

    ctl.signals.read = slow_read
    clock.advance(INTERVAL)
    assert ctl.step().action == "stale"
    assert world.weights() == COST_WEIGHTS


def test_a_leader_whose_lease_ran_out_while_reading_does_not_write(world, clock):
    ctl = world.controller()
    ctl.step()
    world.inf2_outage()
    real_read = ctl.signals.read

    def slow_read(now):
        signals = real_read(now)
        clock.advance(11)  # past duration_s - renew_s = 10 s without a renewal
        return signals

    ctl.signals.read = slow_read
    clock.advance(1)
    r = ctl.step()
    assert r.action == "standby" and "lease expired" in r.message
    assert world.weights() == COST_WEIGHTS


def test_two_replicas_one_lease_only_the_leader_acts(world, clock):
    a = world.controller(identity="ctl-a")
    b = world.controller(identity="ctl-b")
    assert a.step().action == "unchanged"
    assert b.step().action == "standby"
    world.inf2_outage()
    for _ in range(4):
        clock.advance(5)
        ra, rb = a.step(), b.step()
        assert rb.action == "standby" and ra.action in ("applied", "unchanged")
    assert world.graph_weight_writes() == 1
    lease = world.fake.get("coordination.k8s.io/v1", "Lease", "traffic-controller", NS)
    assert lease["spec"]["holderIdentity"] == "ctl-a"
    # ctl-a dies without releasing: ctl-b waits out the lease duration, then resumes from the cluster.
    taken = None
    for i in range(1, 10):
        clock.advance(5)
        r = b.step()
        if r.action != "standby":
            taken = i * 5
            break
    assert taken is not None and 15 <= taken <= 20
    assert b.state.mode == CAPACITY  # resumed from the state annotation, no fallback
    assert (
        world.fake.get("coordination.k8s.io/v1", "Lease", "traffic-controller", NS)["spec"]["holderIdentity"] == "ctl-b"
    )
    # The old leader comes back: it must stand by.
    clock.advance(1)
    assert a.step().action == "standby"


def test_crash_restart_resumes_the_hold_from_the_cluster(world, clock):
    ctl = world.controller()
    ctl.step()
    world.inf2_outage()
    clock.advance(INTERVAL)
    assert ctl.step().decision.switched
    world.inf2_recovered()
    clock.advance(INTERVAL)
    ctl.step()
    ctl.elector.release()
    restarted = world.controller(identity="ctl-a-restarted")  # a new process: no memory
    clock.advance(INTERVAL)
    restart_at = clock()
    r = restarted.step()
    assert r.decision.state.mode == CAPACITY and not r.decision.switched
    assert r.decision.state.since == ctl.state.since  # resumed, not restarted, the capacity state
    fallback_at = None
    for r in steps(restarted, clock, 40):
        if r.decision.switched:
            fallback_at = clock()
            break
    # The headroom clock is not persisted: after a restart the full hold is needed again.
    assert fallback_at is not None and fallback_at - restart_at >= 300
    assert world.weights() == COST_WEIGHTS


def test_fresh_start_on_spread_weights_starts_capacity_optimized(world, clock):
    seed_weights = {"sd21-inf2": 40, "sd21-trn1": 20, "sd21-g5-triton": 15, "sd21-g6-triton": 10, "sd21-g5-cuda": 15}
    world.graph(seed_weights)
    ctl = world.controller()
    r = ctl.step()
    assert r.decision.state.mode == CAPACITY
    assert json.loads(world.annotations()[STATE])["mode"] == CAPACITY


def test_dry_run_writes_nothing(world, clock):
    ctl = world.controller(dry_run=True)
    world.inf2_outage()
    r = ctl.step()
    assert r.action == "dry-run" and r.decision.switched and "would set" in r.message
    assert world.fake.writes() == []


def test_unit_without_ready_replicas_gets_no_traffic(world, clock):
    ctl = world.controller()
    ctl.step()
    world.set_unit("sd21-g6-triton", ready=0, pending=1)
    world.inf2_outage()
    clock.advance(INTERVAL)
    ctl.step()
    w = world.weights()
    assert w["sd21-g6-triton"] == 0 and sum(w.values()) == 100


def test_isvc_not_ready_counts_as_no_ready_replicas(world, clock):
    ctl = world.controller()
    ctl.step()
    world.fake.edit(
        "serving.kserve.io/v1beta1",
        "InferenceService",
        "sd21-g5-cuda",
        NS,
        lambda o: o["status"]["conditions"][0].update(status="False"),
    )
    world.inf2_outage()
    clock.advance(INTERVAL)
    ctl.step()
    assert world.weights()["sd21-g5-cuda"] == 0


def test_alb_ingress_router(world, clock):
    world.ingress(COST_WEIGHTS)
    ctl = world.controller(router={"kind": "alb-ingress", "name": "sd21-ing", "action": "weighted-routing"})
    ctl.step()
    world.inf2_outage()
    clock.advance(INTERVAL)
    assert ctl.step().decision.switched
    ing = world.fake.get("networking.k8s.io/v1", "Ingress", "sd21-ing", NS)
    action = json.loads(ing["metadata"]["annotations"]["alb.ingress.kubernetes.io/actions.weighted-routing"])
    groups = {g["serviceName"]: g for g in action["forwardConfig"]["targetGroups"]}
    assert sum(g["weight"] for g in groups.values()) == 100 and groups["sd21-inf2"]["weight"] < 100
    assert all(g["servicePort"] == 80 for g in groups.values())  # other fields kept
    assert ing["metadata"]["annotations"]["kubernetes.io/ingress.class"] == "alb"
    assert json.loads(ing["metadata"]["annotations"][PREVIOUS]) == COST_WEIGHTS
    patches = [w for w in world.fake.writes("/ingresses/") if w[0] == "PATCH"]
    assert patches and all(p[2] == "application/merge-patch+json" for p in patches)


def test_steps_outside_the_configured_units_are_kept_at_zero(world, clock):
    world.graph({"sd21-inf2": 90, "sd21-trn1": 0, "sd21-g5-triton": 0, "sd21-g6-triton": 0, "sd21-g5-cuda": 0}, cpu=10)
    ctl = world.controller()
    ctl.step()
    assert world.step_weights() == {**COST_WEIGHTS, "sd21-cpu": 0}
    world.inf2_outage()
    clock.advance(INTERVAL)
    ctl.step()
    assert world.step_weights()["sd21-cpu"] == 0 and sum(world.weights().values()) == 100


def test_the_repository_inference_graph_is_driven_as_is(world, clock):
    path = Path(__file__).resolve().parents[2] / "inferenceservices" / "inferencegraph.yaml"
    if not path.exists():
        pytest.skip("inferenceservices/inferencegraph.yaml not in this checkout")
    graph = yaml.safe_load(path.read_text())
    graph["metadata"]["namespace"] = NS
    world.fake.put(graph)
    ctl = world.controller()
    r = ctl.step()  # the seed's option-1 weights: traffic is spread, so start capacity-optimized
    assert r.decision.state.mode == CAPACITY
    world.inf2_outage()
    clock.advance(INTERVAL)
    ctl.step()
    after = world.fake.get("serving.kserve.io/v1alpha1", "InferenceGraph", "sd21-router", NS)
    steps = after["spec"]["nodes"]["root"]["steps"]
    assert [s["name"] for s in steps] == [s["name"] for s in graph["spec"]["nodes"]["root"]["steps"]]
    assert sum(s["weight"] for s in steps) == 100
    assert after["spec"]["routerTimeouts"] == graph["spec"]["routerTimeouts"]  # the rest untouched


def test_router_that_does_not_match_the_config_is_an_error(world, clock):
    world.graph({"sd21-inf2": 100, "sd21-trn1": 0})  # three units missing
    ctl = world.controller()
    try:
        ctl.step()
        message = ""
    except Exception as exc:  # RouterError
        message = str(exc)
    assert "no entry for unit(s) sd21-g5-triton, sd21-g6-triton, sd21-g5-cuda" in message
    assert world.fake.writes("/inferencegraphs/") == []
