"""A real Prometheus (Debian's ``prometheus``) in the loop: the PromQL the controller sends is
parsed and evaluated by the real engine.

The test serves Knative-like request counters on a loopback port (queue-proxy's
``revision_request_count`` with its labels: knative.dev/docs/serving/services/service-metrics),
with ten minutes of history backfilled by ``promtool tsdb create-blocks-from openmetrics`` so
that a ``rate(...[2m])`` has its whole window at once, and Prometheus scrapes the endpoint every
second from then on. The controller's :class:`PrometheusDemand` queries it with the deployed
query (controller/deploy/controller.yaml) and the default one; then the metric disappears
(a rename: no series) and Prometheus goes away, while the cost unit loses every pod.
"""

from __future__ import annotations

import subprocess
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
import requests

from controller.config import Prometheus, load_config
from controller.signals import NoSeries, PrometheusDemand, SignalError
from tests.conftest import require_binary
from tests.servers import ThreadedHTTPServer, free_port, start_process

from .ctl_world import INTERVAL, NAMES, NS

ROOT = Path(__file__).resolve().parents[2]
HISTORY_S = 600  # backfilled: longer than the queries' 2 m window
STEP_S = 1  # the scrape interval: rate() extrapolates by the mean sample interval
ROUTER_RPS = 450.0  # requests/s entering sd21-router
UNIT_RPS = {"sd21-inf2": 300.0, "sd21-trn1": 90.0, "sd21-g5-triton": 60.0}  # what reaches each predictor
INF2 = "sd21-inf2"


def series() -> list[tuple[str, float]]:
    """(label set, requests/s) of every counter the fake queue-proxies export."""
    def labels(config: str, revision: str, code: str = "200") -> str:
        return (f'configuration_name="{config}",container_name="queue-proxy",namespace_name="{NS}",'
                f'pod_name="{revision}-deployment-abc12",response_code="{code}",response_code_class="{code[0]}xx",'
                f'revision_name="{revision}",service_name="{config}"')
    out = [(labels("sd21-router", "sd21-router-00003"), ROUTER_RPS * 0.98),
           (labels("sd21-router", "sd21-router-00003", "503"), ROUTER_RPS * 0.02)]
    out += [(labels(f"{n}-predictor", f"{n}-predictor-00001"), rps) for n, rps in UNIT_RPS.items()]
    return out


class Exporter:
    """Counters growing at fixed rates since ``start`` (epoch seconds), in Prometheus text format."""

    def __init__(self, start: float) -> None:
        self.start = start
        self.enabled = True
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):  # noqa: N802
                body = exporter.render(time.time()).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.http = ThreadedHTTPServer(Handler)
        self.port = self.http.port

    def render(self, now: float) -> str:
        if not self.enabled:
            return "# nothing exported\n"
        lines = ["# HELP revision_request_count The number of requests that are routed to queue-proxy",
                 "# TYPE revision_request_count counter"]
        lines += [f"revision_request_count{{{lab}}} {rps * (now - self.start):.3f}" for lab, rps in series()]
        return "\n".join(lines) + "\n"

    def history(self, until: float) -> str:
        """The same counters every STEP_S from ``start`` to ``until``, as OpenMetrics for promtool."""
        lines = []
        target = f'instance="127.0.0.1:{self.port}",job="queue-proxy"'  # what the scrape adds: one series
        for lab, rps in series():
            t = self.start
            while t <= until:
                lines.append(f"revision_request_count{{{lab},{target}}} {rps * (t - self.start):.3f} {t:.3f}")
                t += STEP_S
        return "\n".join(lines) + "\n# EOF\n"

    def close(self) -> None:
        self.http.close()


class RealPrometheus:
    def __init__(self, binary: str, promtool: str, exporter: Exporter, tmp: Path, history: bool = True) -> None:
        data = tmp / "tsdb"
        data.mkdir()
        if history:  # without: a Prometheus that has just (re)started with no storage
            om = tmp / "history.om"
            om.write_text(exporter.history(time.time() - 5))
            out = subprocess.run([promtool, "tsdb", "create-blocks-from", "openmetrics", str(om), str(data)],
                                 capture_output=True, text=True, timeout=120)
            assert out.returncode == 0, out.stderr + out.stdout
        config = tmp / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            "  - job_name: queue-proxy\n"
            f"    static_configs: [{{targets: ['127.0.0.1:{exporter.port}']}}]\n"
        )
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = start_process(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={data}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=1d"],
            tmp / "prometheus.log",
        )  # fmt: skip
        self.server.wait_http(f"{self.url}/-/ready", timeout=60)
        # The first scrape is in: the query sees history and live samples.
        self.server.wait_until(lambda: self.query('up{job="queue-proxy"} == 1'), "the first scrape", timeout=60)

    def query(self, expr: str) -> list:
        body = requests.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=5).json()
        return body["data"]["result"] if body.get("status") == "success" else []

    def stop(self) -> None:
        self.server.stop(grace=20)


def _prometheus(tmp_path, history: bool):
    binary, promtool = require_binary("prometheus"), require_binary("promtool")
    exporter = Exporter(start=time.time() - HISTORY_S)
    prom = RealPrometheus(binary, promtool, exporter, tmp_path, history=history)
    prom.exporter = exporter
    try:
        yield prom
    finally:
        prom.stop()
        exporter.close()


@pytest.fixture
def prometheus(tmp_path):
    yield from _prometheus(tmp_path, history=True)


@pytest.fixture
def fresh_prometheus(tmp_path):
    """Prometheus just restarted without persistent storage: a few seconds of samples."""
    yield from _prometheus(tmp_path, history=False)


def deployed_prometheus(url: str) -> Prometheus:
    cfg = load_config(ROOT / "controller" / "deploy" / "controller.yaml", env={"TRAFFIC_CONTROLLER_PROMETHEUS_URL": url})
    assert cfg.prometheus is not None and cfg.prometheus.url == url
    return cfg.prometheus


def test_the_deployed_query_measures_the_requests_entering_the_router(prometheus):
    src = PrometheusDemand(deployed_prometheus(prometheus.url), NS, NAMES, router="sd21-router")
    assert src.demand_rps(time.time()) == pytest.approx(ROUTER_RPS, rel=0.05)  # errors included


def test_the_default_query_sums_the_units_predictors(prometheus):
    src = PrometheusDemand(Prometheus(url=prometheus.url, timeout_s=5), NS, NAMES)
    assert src.demand_rps(time.time()) == pytest.approx(sum(UNIT_RPS.values()), rel=0.05)
    other = PrometheusDemand(Prometheus(url=prometheus.url, timeout_s=5), "elsewhere", NAMES)
    with pytest.raises(NoSeries):  # another namespace: the engine returns an empty vector
        other.demand_rps(time.time())


def test_a_renamed_metric_is_no_series_and_a_bad_query_names_the_parse_error(prometheus):
    renamed = Prometheus(url=prometheus.url, query='sum(rate(revision_request_total{namespace_name="$namespace"}[2m]))')
    with pytest.raises(NoSeries):
        PrometheusDemand(renamed, NS, NAMES).demand_rps(time.time())
    broken = Prometheus(url=prometheus.url, query="sum(rate(revision_request_count[2m])")
    with pytest.raises(SignalError, match="parse error"):
        PrometheusDemand(broken, NS, NAMES).demand_rps(time.time())


def test_the_controller_routes_on_the_measurement_and_strands_nothing_when_it_goes(world, clock, prometheus):
    """merit-order against the fake API, demand from the real Prometheus: measured, then the
    metric disappears while inf2 loses every pod, then Prometheus itself is gone."""
    query = load_config(ROOT / "controller" / "deploy" / "controller.yaml").prometheus.query
    ctl = world.controller(prometheus={"url": prometheus.url, "timeout_s": 2, "query": query})
    world.set_unit(INF2, ready=6, desired=6)
    r = ctl.step()
    assert r.decision.demand_rps == pytest.approx(ROUTER_RPS, rel=0.05)
    assert "estimated" not in r.decision.reason and world.weights()[INF2] > 0

    # The router's counter is renamed away: the query now matches nothing, while inf2 serves.
    ctl.signals.demand.query = ctl.signals.demand.query.replace("revision_request_count", "revision_request_total")
    world.set_unit(INF2, ready=0, desired=6, unschedulable=6)
    world.ice("inf2", 3)
    clock.advance(INTERVAL)
    r = ctl.step()
    assert "no series" in r.decision.reason and r.decision.demand_rps > 0
    assert world.weights()[INF2] == 0 and sum(world.weights().values()) == 100

    prometheus.stop()  # Prometheus is gone
    world.set_unit(INF2, ready=2, desired=6, unschedulable=4)
    clock.advance(INTERVAL)
    r = ctl.step()
    assert "estimated from the autoscaler" in r.decision.reason and "prometheus query failed" in r.decision.reason
    assert world.weights()[INF2] > 0  # its two ready replicas serve again, demand or not
    assert sum(world.weights().values()) == 100


def test_a_freshly_restarted_prometheus_underestimates_and_the_controller_does_not_believe_it(world, clock,
                                                                                               fresh_prometheus):
    """rate(...[2m]) over the few seconds a restarted Prometheus has is a fraction of the real rate.
    inf2's autoscaler is scaled for far more: the controller decides from the cluster instead."""
    query = load_config(ROOT / "controller" / "deploy" / "controller.yaml").prometheus.query
    src = PrometheusDemand(Prometheus(url=fresh_prometheus.url, query=query), NS, NAMES, router="sd21-router")
    deadline = time.monotonic() + 30
    while True:  # the second scrape gives rate() its first value
        try:
            partial = src.demand_rps(time.time())
            break
        except NoSeries:
            assert time.monotonic() < deadline, "no rate after 30 s"
            time.sleep(0.5)
    assert partial < ROUTER_RPS / 2  # what the engine answers this early
    ctl = world.controller(prometheus={"url": fresh_prometheus.url, "timeout_s": 2, "query": query})
    world.set_unit(INF2, ready=6, desired=6)  # its KPA sees the real load
    r = ctl.step()
    assert "is less than the" in r.decision.reason and "estimated from the autoscaler" in r.decision.reason
    assert r.decision.demand_rps >= 6 * 105 * 0.7
