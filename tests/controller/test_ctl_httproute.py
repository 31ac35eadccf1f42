"""The Gateway API HTTPRoute router: weights on ``backendRefs``; a weight change is a
configuration push to the Gateway, not a rollout (an InferenceGraph edit rolls out a new router
revision, which the fake records like KServe's reconciler does)."""

from __future__ import annotations

import json

from controller.routers import APPLIED, PAUSED

from .ctl_fakeapi import http_route
from .ctl_world import COST_WEIGHTS, INTERVAL, NAMES, NS

ROUTE = {"kind": "httproute", "name": "sd21-route"}


def route(world) -> dict:
    return world.fake.get("gateway.networking.k8s.io/v1", "HTTPRoute", "sd21-route", NS)


def backend_weights(world) -> dict[str, int]:
    (rule,) = route(world)["spec"]["rules"]
    return {b["name"]: b["weight"] for b in rule["backendRefs"]}


def test_failover_and_fallback_through_an_httproute_without_any_rollout(world, clock):
    world.fake.put(http_route("sd21-route", NS, COST_WEIGHTS))
    ctl = world.controller(router=ROUTE)
    assert ctl.step().action == "unchanged"
    world.inf2_outage()
    clock.advance(INTERVAL)
    assert ctl.step().decision.switched
    weights = backend_weights(world)
    assert weights["sd21-inf2-predictor"] < 100 and sum(weights.values()) == 100
    assert all(weights[f"{n}-predictor"] > 0 for n in NAMES)
    obj = route(world)
    assert json.loads(obj["metadata"]["annotations"][APPLIED]) == {n: weights[f"{n}-predictor"] for n in NAMES}
    (rule,) = obj["spec"]["rules"]
    assert rule["matches"] == [{"path": {"type": "PathPrefix", "value": "/"}}]  # the rest is kept
    assert obj["spec"]["parentRefs"] == [{"name": "inference-gateway"}]
    patches = [w for w in world.fake.writes("/httproutes/") if w[0] == "PATCH"]
    assert all(p[3]["metadata"]["resourceVersion"] for p in patches)
    world.inf2_recovered()
    for _ in range(40):
        clock.advance(INTERVAL)
        ctl.step()
    assert backend_weights(world)["sd21-inf2-predictor"] == 100
    assert world.fake.rollouts == []  # neither a unit nor the router was rolled out


def test_the_same_failover_through_the_inferencegraph_rolls_out_router_revisions(world, clock):
    ctl = world.controller()
    ctl.step()
    world.inf2_outage()
    clock.advance(INTERVAL)
    ctl.step()
    assert [r.kind for r in world.fake.rollouts] == ["InferenceGraph"]  # the trade-off, measured


def test_a_hand_edit_of_the_route_pauses_the_controller(world, clock):
    world.fake.put(http_route("sd21-route", NS, COST_WEIGHTS))
    ctl = world.controller(router=ROUTE)
    ctl.step()

    def hand_edit(obj):
        for b in obj["spec"]["rules"][0]["backendRefs"]:
            b["weight"] = 50 if b["name"] in ("sd21-inf2-predictor", "sd21-trn1-predictor") else 0

    world.fake.edit("gateway.networking.k8s.io/v1", "HTTPRoute", "sd21-route", NS, hand_edit)
    clock.advance(INTERVAL)
    assert ctl.step().action == "paused"
    assert route(world)["metadata"]["annotations"][PAUSED] == "true"
    assert backend_weights(world)["sd21-trn1-predictor"] == 50
