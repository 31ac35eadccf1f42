"""A real Prometheus scrapes a running predictor pair and a running traffic controller; every
dashboard query and every alert expression is evaluated there and must return data.

The scene, on loopback only:

* predictor ``sd21-inf2`` on a tiny model with a one-slot queue, under a steady trickle of
  requests plus one burst (queue-full rejections) and one bad request;
* predictor ``sd21-g5-cuda`` whose model volume never arrives (gated_predictor.py): up,
  serving /metrics, never ready;
* the traffic controller (``python -m controller run``) against the fake Kubernetes API, using
  this Prometheus for measured demand, driven through phases: flapping capacity on inf2, an
  outage that persists, a hand edit that routes to a unit without ready replicas, stale
  signals, and finally a lease held by someone else.

Each alert expression is evaluated at the end of the phase built for it; the dashboards at the
moment everything is running (leader, paused router, traffic).
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml

from observability.dashboards import dashboards, queries
from observability.rules import alerts
from tests.conftest import require_binary
from tests.controller.ctl_fakeapi import FakeKube
from tests.controller.ctl_world import NS, World, config_dict
from tests.predictor.harness import v2_body
from tests.servers import Predictor, ServerProcess, free_port, start_predictor, start_process, stop_all

ROOT = Path(__file__).resolve().parents[2]
SCRAPE_S = 1
WINDOW = "30s"  # stands for Grafana's $__rate_interval
LABEL_VALUES = re.compile(r"^label_values\((?P<metric>[a-z_]+), (?P<label>[a-z_]+)\)$")
DEMAND_SCALE = 150
DEMAND_FLOOR_RPS = 250
SMALL = {"num_inference_steps": 2, "height": 64, "width": 64}


class WallClock:
    """World's clock for a controller in another process: real time."""

    def __call__(self) -> float:
        return time.time()


def start_unit(
    name: str, model_dir: Path, tmp: Path, *extra: str, module: str = "predictor", env: dict | None = None
) -> Predictor:
    """A predictor for one unit, logging to ``{name}.log``; not waited for."""
    env = {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env or {})}
    return start_predictor(model_dir, tmp / f"{name}.log", *extra, name=name, module=module, env=env, wait=None)


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url

    def query(self, expr: str, at: float) -> list[dict]:
        response = requests.get(f"{self.url}/api/v1/query", params={"query": expr, "time": f"{at:.3f}"}, timeout=10)
        body = response.json()
        assert body.get("status") == "success", f"{expr}: {body}"
        return body["data"]["result"]


def grafana_to_promql(expr: str) -> str:
    """What Grafana sends for a query: variables substituted; label_values() as the series it reads."""
    match = LABEL_VALUES.match(expr)
    if match:
        return f"count by ({match['label']}) ({match['metric']})"
    return expr.replace("$__rate_interval", WINDOW).replace('"$unit"', '".+"')


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Iterator[dict]:
    prometheus_bin = require_binary("prometheus")
    promtool = require_binary("promtool")
    tmp = tmp_path_factory.mktemp("live")
    started: list[ServerProcess] = []
    cuda = None
    fake = FakeKube().start()
    try:
        from modelbuild.tiny import build_tiny_sd

        tiny = build_tiny_sd(tmp / "tiny")
        inf2 = start_unit("sd21-inf2", tiny, tmp, "--max_batch_size", "1", "--max_queue_size", "1",
                          "--default_steps", "2", "--max_height", "128", "--max_width", "128")
        # A test double that cannot shut down cleanly (its load never returns): killed at the end.
        cuda = start_unit("sd21-g5-cuda", tiny, tmp, module="tests.observability.gated_predictor",
                          env={"PREDICTOR_LOAD_GATE": str(tmp / "never-created")})
        started += [inf2, cuda]

        world = World(fake, WallClock(), fake.write_kubeconfig(tmp / "kubeconfig", NS))
        prom_port, ctl_port = free_port(), free_port()
        prom_url = f"http://127.0.0.1:{prom_port}"
        rule = yaml.safe_load((ROOT / "deploy" / "monitoring" / "prometheusrule.yaml").read_text())
        (tmp / "rules.yml").write_text(yaml.safe_dump(rule["spec"]))
        check = subprocess.run([promtool, "check", "rules", str(tmp / "rules.yml")], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr

        def target(url: str) -> str:
            return url.removeprefix("http://")

        config = {
            "global": {"scrape_interval": f"{SCRAPE_S}s", "evaluation_interval": f"{SCRAPE_S}s"},
            "rule_files": [str(tmp / "rules.yml")],
            "scrape_configs": [
                {"job_name": "sd21-predictors",
                 "static_configs": [{"targets": [target(inf2.http), target(cuda.http)], "labels": {"namespace": NS}}]},
                {"job_name": "inference-traffic-controller",
                 "static_configs": [{"targets": [f"127.0.0.1:{ctl_port}"], "labels": {"namespace": NS}}]},
            ],
        }
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
        prom = start_process([prometheus_bin, f"--config.file={tmp / 'prometheus.yml'}",
                              f"--storage.tsdb.path={tmp / 'tsdb'}", f"--web.listen-address=127.0.0.1:{prom_port}"],
                             tmp / "prometheus.log")
        started.append(prom)

        ctl_config = config_dict(
            timing={"interval_s": 0.25, "signal_max_age_s": 5, "pending_grace_s": 1, "min_state_s": 0.5,
                    "fallback_hold_s": 0.5, "capacity_error_window_s": 300},
            lease={"name": "traffic-controller", "duration_s": 2, "renew_s": 0.5},
            prewarm={"enabled": True, "min_replicas": 1, "hold_s": 1},
            # Measured demand from this Prometheus, each tiny CPU request standing for DEMAND_SCALE real
            # ones, and at least DEMAND_FLOOR_RPS however slow this machine serves the trickle: more
            # than two ready inf2 replicas carry (2 x 105 x 0.8), so their coming and going moves weights.
            prometheus={"url": prom_url,
                        "query": f"clamp_min(sum(rate(predictor_requests_total[30s])) * {DEMAND_SCALE}, {DEMAND_FLOOR_RPS})",
                        "timeout_s": 2},
            metrics_port=ctl_port,
        )
        (tmp / "controller.yaml").write_text(yaml.safe_dump(ctl_config))

        prom.wait_http(f"{prom_url}/-/ready", timeout=60)
        inf2.wait_ready(timeout=180)
        cuda.wait_until(lambda: "predictor_model_ready" in requests.get(f"{cuda.http}/metrics", timeout=2).text,
                        "serving /metrics", 180)

        ctl = start_process([sys.executable, "-m", "controller", "run", "--config", str(tmp / "controller.yaml"),
                             "--kubeconfig", str(world.kubeconfig), "--identity", "ctl-live"],
                            tmp / "controller.log", name="controller", env={"PYTHONPATH": str(ROOT)})
        started.append(ctl)
        ctl_metrics = f"http://127.0.0.1:{ctl_port}/metrics"
        ctl.wait_until(lambda: "traffic_controller_leader 1.0" in requests.get(ctl_metrics, timeout=2).text,
                       "leader", 60)

        stop = threading.Event()
        infer = f"{inf2.http}/v2/models/sd21-inf2/infer"

        def trickle() -> None:
            while not stop.is_set():
                try:
                    requests.post(infer, json=v2_body(["a lighthouse"], SMALL), timeout=60)
                except requests.RequestException:
                    pass
                stop.wait(0.3)

        trickler = threading.Thread(target=trickle, daemon=True)
        trickler.start()
        phases: dict[str, float] = {}
        try:
            phases.update(drive(world, fake, infer, ctl))
        finally:
            stop.set()
            trickler.join(timeout=60)
        yield {"prometheus": Prometheus(prom_url), "phases": phases, "logs": {p.log.name: p for p in started}}
    finally:
        if cuda is not None:
            cuda.kill()
        stop_all(reversed(started))
        fake.stop()


def settle(seconds: float = 3 * SCRAPE_S + 1) -> float:
    """Let Prometheus scrape the new state a few times; the evaluation time for the phase."""
    time.sleep(seconds)
    return time.time()


def drive(world: World, fake: FakeKube, infer: str, controller: ServerProcess) -> dict[str, float]:
    phases: dict[str, float] = {}
    # Queue full: one slow image holds the only batch slot, the next the one queue place; the rest
    # of a simultaneous burst bounces (503) until the predictor has counted some.
    slow = v2_body(["slow"], {"num_inference_steps": 100, "height": 128, "width": 128})
    for _ in range(5):
        burst = threading.Barrier(8)

        def send(burst: threading.Barrier = burst) -> None:
            burst.wait()
            requests.post(infer, json=slow, timeout=300)

        threads = [threading.Thread(target=send) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if 'reason="queue_full"' in requests.get(infer.split("/v2/")[0] + "/metrics", timeout=10).text:
            break
    assert requests.post(infer, json={"inputs": "not a tensor list"}, timeout=30).status_code == 400
    phases["traffic"] = settle()

    # inf2's replicas come and go: the controller moves the traffic away and back, again and again.
    deadline = time.monotonic() + 120
    while world.graph_weight_writes() <= 14 and time.monotonic() < deadline:
        world.set_unit("sd21-inf2", ready=0, desired=4, pending=4)
        time.sleep(1.5)
        world.set_unit("sd21-inf2", ready=4)
        time.sleep(1.5)
    assert world.graph_weight_writes() > 14, "the controller did not rewrite the weights often enough"
    world.inf2_outage()  # and then it stays out
    phases["flapping"] = settle(5)

    # Someone routes 10 % to sd21-g6-triton by hand while it has no ready replica.
    world.set_unit("sd21-g6-triton", ready=0, desired=1, pending=1)

    def hand_edit(graph: dict) -> dict:
        steps = graph["spec"]["nodes"]["root"]["steps"]
        g6 = next(step for step in steps if step["serviceName"] == "sd21-g6-triton")
        donor = max((step for step in steps if step is not g6), key=lambda step: step["weight"])
        donor["weight"] -= 10
        g6["weight"] += 10
        return graph

    fake.edit("serving.kserve.io/v1alpha1", "InferenceGraph", "sd21-router", NS, hand_edit)
    phases["paused"] = settle(5)

    # The pods and autoscaler APIs fail: with neither, no unit's replicas are known and the signals
    # are stale (the pods alone are not enough: ready replicas then come from the autoscalers).
    fake.fail(r"/(pods|podautoscalers)", status=503, times=10**6)
    phases["stale"] = settle(8)
    fake.clear_faults()

    # Someone else holds the lease: nobody leads.
    def take_lease(lease: dict) -> dict:
        lease["spec"].update(holderIdentity="someone-else", leaseDurationSeconds=3600,
                             renewTime=time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime()))
        return lease

    fake.edit("coordination.k8s.io/v1", "Lease", "traffic-controller", NS, take_lease)
    phases["no-leader"] = settle(5)

    # The controller is gone: its scrape fails, its series go stale.
    controller.stop()
    phases["controller-down"] = settle(5)
    return phases


ALERT_PHASE = {
    "TrafficControllerDown": "controller-down",
    "TrafficControllerNoLeader": "no-leader",
    "TrafficControllerSignalsStale": "stale",
    "UnitTrafficWithoutReadyReplica": "paused",
    "PredictorQueueFull": "traffic",
    "PredictorNotReady": "traffic",
    "UnitCapacityErrors": "flapping",
    "TrafficWeightsFlapping": "flapping",
}


def _has_data(result: list[dict]) -> bool:
    return any(not math.isnan(float(sample["value"][1])) for sample in result)


def test_every_alert_has_a_scene_phase() -> None:
    assert {alert.name for alert in alerts()} == set(ALERT_PHASE)


@pytest.mark.parametrize("alert", alerts(), ids=lambda a: a.name)
def test_every_alert_expression_fires_in_its_phase(scene, alert) -> None:
    at = scene["phases"][ALERT_PHASE[alert.name]]
    result = scene["prometheus"].query(alert.expr, at)
    assert _has_data(result), f"{alert.name} returned {result} at phase {ALERT_PHASE[alert.name]}"


def test_healthy_phases_do_not_raise_the_controller_alerts(scene) -> None:
    """The alerts fire because of their phase, not always: before it, they return nothing."""
    prom, phases = scene["prometheus"], scene["phases"]
    for name in ("TrafficControllerDown", "TrafficControllerNoLeader", "TrafficControllerSignalsStale",
                 "UnitTrafficWithoutReadyReplica"):
        (alert,) = [a for a in alerts() if a.name == name]
        assert prom.query(alert.expr, phases["traffic"]) == [], name


@pytest.mark.parametrize(
    "panel", [(stem, title, expr) for stem, model in dashboards().items() for title, expr in queries(model)],
    ids=lambda p: f"{p[0]}: {p[1]}: {p[2][:40]}",
)
def test_every_dashboard_query_returns_data(scene, panel) -> None:
    _, title, expr = panel
    result = scene["prometheus"].query(grafana_to_promql(expr), scene["phases"]["paused"])
    assert _has_data(result), f"{title}: {expr} returned {result}"


def test_prometheus_evaluated_every_rule_without_error(scene) -> None:
    body = requests.get(f"{scene['prometheus'].url}/api/v1/rules", timeout=10).json()
    rules = [rule for group in body["data"]["groups"] for rule in group["rules"]]
    assert {rule["name"] for rule in rules} == {alert.name for alert in alerts()}
    assert all(rule["health"] == "ok" for rule in rules), json.dumps(rules, indent=1)[:3000]


def test_every_scrape_target_was_up_while_the_scene_ran(scene) -> None:
    result = scene["prometheus"].query("up", scene["phases"]["paused"])
    assert len(result) == 3 and all(sample["value"][1] == "1" for sample in result), result
