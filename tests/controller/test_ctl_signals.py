"""Signal sources: pods, autoscaler, Karpenter capacity errors, Prometheus demand."""

from __future__ import annotations

import json
import time
from http.server import BaseHTTPRequestHandler

import pytest

from controller.config import Prometheus
from controller.signals import NoSeries, PrometheusDemand, SignalError, nodepool_of, pod_counts
from tests.servers import ThreadedHTTPServer

from .ctl_fakeapi import ice_event, nodeclaim, now_iso, pod
from .ctl_world import INTERVAL, NAMES, NS


def test_pod_counts_ready_pending_and_unschedulable_past_the_grace_period():
    now = 10_000.0
    pods = [
        pod("a", NS, "u"),  # ready
        pod("b", NS, "u", ready=False, phase="Running"),  # running, not ready yet
        pod("c", NS, "u", ready=False),  # pending, scheduled (pulling the image)
        pod("d", NS, "u", unschedulable_since=now - 30),  # unschedulable, within grace
        pod("e", NS, "u", unschedulable_since=now - 300),  # unschedulable past grace
        pod("f", NS, "u", phase="Succeeded"),
    ]
    terminating = pod("g", NS, "u")
    terminating["metadata"]["deletionTimestamp"] = now_iso(now)
    pods.append(terminating)
    assert pod_counts(pods, now, grace_s=120) == (5, 1, 3, 1)  # live, ready, pending, unschedulable


def test_nodeclaim_names_map_to_the_longest_matching_nodepool():
    pools = ["inference-g5", "inference-g5-large", "inference-inf2"]
    assert nodepool_of("inference-g5-abcde", pools, {}) == "inference-g5"
    assert nodepool_of("inference-g5-large-abcde", pools, {}) == "inference-g5-large"
    assert nodepool_of("other-abcde", pools, {}) is None
    assert nodepool_of("inference-g5-abcde", pools, {"inference-g5-abcde": "inference-inf2"}) == "inference-inf2"


def test_capacity_errors_are_attributed_to_the_units_of_the_nodepool_within_the_window(world, clock):
    ctl = world.controller()
    # Two units share the g5 pool; an old event and a Normal event do not count.
    world.fake.put(ice_event("new", "g5", clock()))
    world.fake.put(ice_event("old", "g5", clock() - 301))
    normal = ice_event("normal", "g5", clock())
    normal["type"] = "Normal"
    world.fake.put(normal)
    world.fake.put(nodeclaim("g6-stuck", "g6", launched="False"))
    world.fake.put(nodeclaim("g6-fine", "g6", launched="True"))
    pool_event = ice_event("np", "trn1", clock())
    pool_event["involvedObject"] = {"apiVersion": "karpenter.sh/v1", "kind": "NodePool", "name": "trn1"}
    world.fake.put(pool_event)
    pod_event = ice_event("pod", "x", clock(), namespace=NS)
    pod_event["involvedObject"] = {"kind": "Pod", "name": "sd21-inf2-0", "namespace": NS}
    world.fake.put(pod_event)
    sig = ctl.signals.read(clock())
    errors = {n: s.capacity_errors for n, s in sig.units.items()}
    assert errors == {"sd21-inf2": 1, "sd21-trn1": 1, "sd21-g5-triton": 1, "sd21-g6-triton": 1, "sd21-g5-cuda": 1}


def test_unit_signals_from_pods_and_the_knative_autoscaler(world, clock):
    world.set_unit("sd21-inf2", ready=2, desired=5, unschedulable=3, unschedulable_for=90)
    sig = world.controller().signals.read(clock())
    s = sig.units["sd21-inf2"]
    assert (s.ready_replicas, s.desired_replicas, s.pending_replicas, s.unschedulable_replicas) == (2, 5, 3, 3)
    assert sig.at == clock() and sig.demand_rps is None
    assert set(sig.units) == set(NAMES)


def test_desired_replicas_without_knative_come_from_the_deployment_then_the_pods(world, clock):
    world.without_knative()
    world.fake.put(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": "sd21-inf2-predictor",
                "namespace": NS,
                "labels": {"serving.kserve.io/inferenceservice": "sd21-inf2"},
            },
            "spec": {"replicas": 7},
        }
    )
    ctl = world.controller()
    sig = ctl.signals.read(clock())
    assert sig.units["sd21-inf2"].desired_replicas == 7
    assert sig.units["sd21-trn1"].desired_replicas == 1  # no Deployment: live pods
    # Knative is looked up once, then skipped.
    clock.advance(INTERVAL)
    before = sum(1 for r in world.fake.requests if "podautoscalers" in r[1])
    ctl.signals.read(clock())
    assert sum(1 for r in world.fake.requests if "podautoscalers" in r[1]) == before


def test_karpenter_not_installed_still_reads_events(world, clock):
    world.fake.missing.add("nodeclaims")
    world.fake.put(ice_event("a", "inf2", clock()))
    sig = world.controller().signals.read(clock())
    assert sig.units["sd21-inf2"].capacity_errors == 1


class _Prom:
    """A Prometheus /api/v1/query endpoint on loopback that answers what the test sets."""

    def __init__(self):
        self.answer = {"status": "success", "data": {"resultType": "vector", "result": []}}
        self.code = 200
        self.delay_s = 0.0  # answer this late (a slow Prometheus)
        self.queries = []
        prom = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):  # noqa: N802
                from urllib.parse import parse_qs, urlparse

                prom.queries.append(parse_qs(urlparse(self.path).query)["query"][0])
                if prom.delay_s:
                    time.sleep(prom.delay_s)
                body = json.dumps(prom.answer).encode()
                self.send_response(prom.code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.http = ThreadedHTTPServer(Handler)
        self.url = self.http.url

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.http.close()


def test_prometheus_demand_query_and_errors():
    with _Prom() as prom:
        src = PrometheusDemand(Prometheus(url=prom.url, timeout_s=2), NS, ["b-unit", "a-unit"])
        with pytest.raises(NoSeries):  # no series: the policy decides whether that means no traffic
            src.demand_rps(0)
        assert 'namespace_name="sd21"' in prom.queries[0] and "(a-unit|b-unit)-predictor" in prom.queries[0]
        prom.answer["data"]["result"] = [{"metric": {}, "value": [0, "12.5"]}, {"metric": {}, "value": [0, "1"]}]
        assert src.demand_rps(0) == 13.5
        prom.answer = {"status": "error", "error": "bad query"}
        with pytest.raises(SignalError, match="bad query"):
            src.demand_rps(0)
        prom.code = 503
        with pytest.raises(SignalError):
            src.demand_rps(0)


def test_prometheus_demand_drives_the_decision_and_its_failure_falls_back_to_the_autoscaler(world, clock):
    with _Prom() as prom:
        prom.answer["data"]["result"] = [{"metric": {}, "value": [0, "900"]}]
        ctl = world.controller(prometheus={"url": prom.url, "timeout_s": 2}, routing={"strategy": "proportional"})
        world.set_unit("sd21-inf2", ready=3, desired=3, unschedulable=1)  # short, 315 rps served
        r = ctl.step()
        assert r.decision.demand_rps == 900 and r.decision.switched  # measured demand > served
        prom.code = 500
        clock.advance(INTERVAL)
        r = ctl.step()
        assert r.action in ("applied", "unchanged") and r.decision.demand_rps == 3 * 105 + 130 + 90 + 61 + 60
        assert 'traffic_controller_errors_total{source="prometheus"} 1.0' in ctl.metrics.render().decode()


def test_merit_order_routes_measured_demand_and_estimates_it_when_prometheus_fails(world, clock):
    with _Prom() as prom:
        prom.answer["data"]["result"] = [{"metric": {}, "value": [0, "500"]}]
        ctl = world.controller(prometheus={"url": prom.url, "timeout_s": 2})  # merit-order by default
        world.set_unit("sd21-inf2", ready=3, desired=3)
        r = ctl.step()
        assert r.action == "applied" and r.decision.demand_rps == 500
        w = world.weights()
        # Every unit's paid-for replica serves (below its scale target), inf2 takes the rest.
        assert all(w[n] > 0 for n in w) and w["sd21-inf2"] == max(w.values())
        prom.code = 500
        clock.advance(INTERVAL)
        r = ctl.step()
        assert not r.decision.stale and "estimated from the autoscaler: no demand measurement" in r.decision.reason
        assert all(v > 0 for v in world.weights().values())  # still every ready unit, nothing stranded
        assert 'traffic_controller_errors_total{source="prometheus"} 1.0' in ctl.metrics.render().decode()


def test_merit_order_failover_in_the_cluster_keeps_inf2_serving_and_probes_for_its_capacity(world, clock):
    with _Prom() as prom:
        prom.answer["data"]["result"] = [{"metric": {}, "value": [0, "500"]}]
        ctl = world.controller(prometheus={"url": prom.url, "timeout_s": 2})
        world.set_unit("sd21-inf2", ready=4, desired=4)
        ctl.step()
        assert world.min_replicas("sd21-inf2") == 1
        world.inf2_outage()  # 2 ready, 6 wanted, 4 unschedulable, ICE events
        clock.advance(INTERVAL)
        r = ctl.step()
        assert r.action == "applied" and r.decision.switched
        w = world.weights()
        assert w["sd21-inf2"] > 0  # its two ready replicas keep serving
        assert world.min_replicas("sd21-trn1") >= 2  # the next cheapest unit grows for the rest
        assert world.min_replicas("sd21-inf2") > 2  # the capacity probe: inf2 still asks for its share
        (event,) = world.events("Failover")
        assert "short of capacity" in event["message"]
        text = ctl.metrics.render().decode()
        assert 'traffic_controller_unit_min_replicas{unit="sd21-trn1"}' in text
        assert 'traffic_controller_unit_planned_rps{unit="sd21-inf2"}' in text


def test_measured_requests_per_second_are_converted_to_a_per_minute_config(world, clock):
    with _Prom() as prom:
        prom.answer["data"]["result"] = [{"metric": {}, "value": [0, "5"]}]  # 5 requests/s
        ctl = world.controller(prometheus={"url": prom.url, "timeout_s": 2}, throughput_per="minute")
        assert ctl.config.per_second == 60 and ctl.config.rate_unit == "rpm"
        r = ctl.step()
        assert r.decision.demand_rps == 300  # requests/minute, the unit of max_throughput
        assert "demand 300.0 rpm" in r.decision.reason
        assert "traffic_controller_demand_rps 5.0" in ctl.metrics.render().decode()  # exported per second


def _spot_interrupted_event(pod_name: str, at: float) -> dict:
    """What Karpenter's interruption controller records on each pod of an interrupted spot node
    (aws/karpenter-provider-aws pkg/controllers/interruption/events: SpotInterrupted)."""
    ev = ice_event(pod_name, "x", at, namespace=NS)
    ev["involvedObject"] = {"kind": "Pod", "name": pod_name, "namespace": NS}
    ev["reason"] = "SpotInterrupted"
    ev["message"] = "Spot interruption warning was triggered"
    return ev


def test_pods_on_a_spot_interrupted_node_count_as_interrupting_within_the_window(world, clock):
    world.set_unit("sd21-g5-triton", ready=3)
    world.fake.put(_spot_interrupted_event("sd21-g5-triton-0", clock() - 30))
    world.fake.put(_spot_interrupted_event("sd21-g5-triton-1", clock() - 30))
    world.fake.put(_spot_interrupted_event("sd21-g5-triton-2", clock() - 3600))  # long ago: not now
    world.fake.put(_spot_interrupted_event("sd21-g5-triton-9", clock() - 30))  # that pod is gone
    sig = world.controller().signals.read(clock())
    assert sig.units["sd21-g5-triton"].interrupting_replicas == 2
    assert sig.units["sd21-g5-triton"].ready_replicas == 3  # still serving until the node goes
    assert all(s.interrupting_replicas == 0 for n, s in sig.units.items() if n != "sd21-g5-triton")
