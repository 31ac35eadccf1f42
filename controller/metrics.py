"""Prometheus metrics and the HTTP endpoints: /metrics, /healthz, /readyz, /status.

Each controller owns a :class:`Metrics` with its own CollectorRegistry, so several controllers
can live in one process (tests run two replicas side by side).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from controller.policy import CAPACITY, COST, Decision, Signals

log = logging.getLogger(__name__)
MODES = (COST, CAPACITY)


class Metrics:
    def __init__(
        self,
        unit_names: Sequence[str],
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.time,
        liveness_s: float = 120.0,
    ) -> None:
        self.registry = registry or CollectorRegistry()
        self.clock = clock
        self.liveness_s = liveness_s
        r = self.registry
        p = "traffic_controller_"
        self.mode = Gauge(p + "mode", "1 for the current policy mode", ["mode"], registry=r)
        self.weight = Gauge(p + "weight_percent", "Weight the controller wants for each unit", ["unit"], registry=r)
        self.planned = Gauge(p + "unit_planned_rps", "Requests/s the merit-order plan puts on each unit", ["unit"],
                             registry=r)
        self.floor = Gauge(p + "unit_min_replicas", "minReplicas the controller sets on each unit (pre-warm)", ["unit"],
                           registry=r)
        self.router_weight = Gauge(p + "router_weight_percent", "Weight read from the router", ["unit"], registry=r)
        self.switches = Counter(p + "switches_total", "Mode switches", ["to"], registry=r)
        self.patches = Counter(p + "patches_total", "Writes to the cluster", ["target"], registry=r)
        self.errors = Counter(p + "errors_total", "Errors by source", ["source"], registry=r)
        self.signal_age = Gauge(p + "signal_age_seconds", "Age of the newest good signals", registry=r)
        self.stale = Gauge(p + "signals_stale", "1 when signals are stale or unavailable (no action)", registry=r)
        self.leader = Gauge(p + "leader", "1 when this replica holds the lease", registry=r)
        self.paused = Gauge(p + "paused", "1 when the router is paused (manual weights)", registry=r)
        self.demand = Gauge(p + "demand_rps", "Demand the last decision used (requests/s)", registry=r)
        self.last_reconcile = Gauge(p + "last_reconcile_timestamp_seconds", "End of the last reconcile", registry=r)
        self.ready_replicas = Gauge(p + "unit_ready_replicas", "Ready replicas per unit", ["unit"], registry=r)
        self.desired_replicas = Gauge(p + "unit_desired_replicas", "Desired replicas per unit", ["unit"], registry=r)
        self.capacity_errors = Gauge(p + "unit_capacity_errors", "Capacity errors in the window", ["unit"], registry=r)
        for m in MODES:
            self.mode.labels(m).set(0)
            self.switches.labels(m)
        for n in unit_names:
            self.weight.labels(n).set(0)
        for s in ("kubernetes", "prometheus", "router", "prewarm", "reconcile", "lease"):
            self.errors.labels(s)
        self._heartbeat = clock()
        self._api_ok = False
        self._api_failures = 0
        self._lock = threading.Lock()
        self.status: dict = {"state": "starting"}

    # ---- updates from the loop
    def heartbeat(self) -> None:
        self._heartbeat = self.clock()

    def api_ok(self, ok: bool) -> None:
        with self._lock:
            if ok:
                self._api_ok, self._api_failures = True, 0
            else:
                self._api_failures += 1
                if self._api_failures >= 3:
                    self._api_ok = False

    def set_mode(self, mode: str) -> None:
        for m in MODES:
            self.mode.labels(m).set(1 if m == mode else 0)

    def observe_signals(self, signals: Signals, now: float, max_age: float) -> None:
        age = max(0.0, now - signals.at)
        self.signal_age.set(age)
        self.stale.set(1 if age > max_age else 0)
        for name, s in signals.units.items():
            self.ready_replicas.labels(name).set(s.ready_replicas)
            self.desired_replicas.labels(name).set(s.desired_replicas)
            self.capacity_errors.labels(name).set(s.capacity_errors)

    def observe_decision(self, decision: Decision, per_second: float = 1.0) -> None:
        """``per_second``: the config's throughput units per request/s (rates are exported per second)."""
        self.set_mode(decision.state.mode)
        self.stale.set(1 if decision.stale else 0)
        if decision.demand_rps is not None:
            self.demand.set(decision.demand_rps / per_second)
        for name, w in decision.weights.items():
            self.weight.labels(name).set(w)
        for name, rps in decision.planned_rps.items():
            self.planned.labels(name).set(rps / per_second)
        for name, n in decision.prewarm.items():
            self.floor.labels(name).set(n)

    def observe_router(self, weights: Mapping[str, int], paused: bool) -> None:
        for name, w in weights.items():
            self.router_weight.labels(name).set(w)
        self.paused.set(1 if paused else 0)

    # ---- health
    def live(self) -> bool:
        return self.clock() - self._heartbeat < self.liveness_s

    def ready(self) -> bool:
        return self._api_ok

    def render(self) -> bytes:
        return generate_latest(self.registry)


class HealthServer:
    """Serves /metrics, /healthz (loop alive), /readyz (API reachable), /status (last decision)."""

    def __init__(self, metrics: Metrics, host: str = "0.0.0.0", port: int = 8080) -> None:
        self.metrics = metrics
        m = metrics

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server API
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, m.render(), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    ok = m.live()
                    self._send(200 if ok else 503, b"ok\n" if ok else b"reconcile loop stalled\n")
                elif path == "/readyz":
                    ok = m.ready()
                    self._send(200 if ok else 503, b"ok\n" if ok else b"kubernetes API not reachable\n")
                elif path == "/status":
                    self._send(200, json.dumps(m.status, sort_keys=True, default=str).encode(), "application/json")
                else:
                    self._send(404, b"not found\n")

            def _send(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True, name="controller-http"
        )

    def start(self) -> HealthServer:
        self._thread.start()
        log.info("metrics and health on port %d", self.port)
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)
