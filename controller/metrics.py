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
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from controller.policy import CAPACITY, COST, Decision, Signals

log = logging.getLogger(__name__)
MODES = (COST, CAPACITY)

# Metric names: the only place they are spelled (observability/ builds dashboards and alerts
# from these constants).
_P = "traffic_controller_"
MODE = _P + "mode"
WEIGHT = _P + "weight_percent"
PLANNED_RPS = _P + "unit_planned_rps"
MIN_REPLICAS = _P + "unit_min_replicas"
ROUTER_WEIGHT = _P + "router_weight_percent"
SWITCHES = _P + "switches_total"
PATCHES = _P + "patches_total"
ERRORS = _P + "errors_total"
SIGNAL_AGE = _P + "signal_age_seconds"
SIGNALS_STALE = _P + "signals_stale"
LEADER = _P + "leader"
PAUSED = _P + "paused"
DEMAND_RPS = _P + "demand_rps"
LAST_RECONCILE = _P + "last_reconcile_timestamp_seconds"
READY_REPLICAS = _P + "unit_ready_replicas"
DESIRED_REPLICAS = _P + "unit_desired_replicas"
CAPACITY_ERRORS = _P + "unit_capacity_errors"
DECISIONS = _P + "decisions_total"
PRICE_PER_HOUR = _P + "unit_price_per_hour"
REPLICA_RPS = _P + "unit_replica_max_rps"
# Decision.reason starts with one of these (controller/policy/); the rest of the line carries
# numbers, so only the category becomes a label. "none": no decision (standby, unavailable, error).
REASONS = ("cost-optimized", "capacity-optimized", "failover", "fallback", "stale")


def reason_category(reason: str | None) -> str:
    """The bounded label for a decision's free-text reason (its leading word)."""
    if not reason:
        return "none"
    head = reason.split(":", 1)[0].split(" (", 1)[0].strip()
    return head if head in REASONS else "other"


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
        self.mode = Gauge(MODE, "1 for the current policy mode", ["mode"], registry=r)
        self.weight = Gauge(WEIGHT, "Weight the controller wants for each unit", ["unit"], registry=r)
        self.planned = Gauge(PLANNED_RPS, "Requests/s the merit-order plan puts on each unit", ["unit"], registry=r)
        self.floor = Gauge(MIN_REPLICAS, "minReplicas the controller sets on each unit (pre-warm)", ["unit"], registry=r)
        self.router_weight = Gauge(ROUTER_WEIGHT, "Weight read from the router", ["unit"], registry=r)
        self.switches = Counter(SWITCHES, "Mode switches", ["to"], registry=r)
        self.patches = Counter(PATCHES, "Writes to the cluster", ["target"], registry=r)
        self.errors = Counter(ERRORS, "Errors by source", ["source"], registry=r)
        self.signal_age = Gauge(SIGNAL_AGE, "Age of the newest good signals", registry=r)
        self.stale = Gauge(SIGNALS_STALE, "1 when signals are stale or unavailable (no action)", registry=r)
        self.leader = Gauge(LEADER, "1 when this replica holds the lease", registry=r)
        self.paused = Gauge(PAUSED, "1 when the router is paused (manual weights)", registry=r)
        self.demand = Gauge(DEMAND_RPS, "Demand the last decision used (requests/s)", registry=r)
        self.last_reconcile = Gauge(LAST_RECONCILE, "End of the last reconcile", registry=r)
        self.ready_replicas = Gauge(READY_REPLICAS, "Ready replicas per unit", ["unit"], registry=r)
        self.desired_replicas = Gauge(DESIRED_REPLICAS, "Desired replicas per unit", ["unit"], registry=r)
        self.capacity_errors = Gauge(CAPACITY_ERRORS, "Capacity errors in the window", ["unit"], registry=r)
        self.decisions = Counter(
            DECISIONS, "Reconcile outcomes: action taken and the decision's reason", ["action", "reason"], registry=r
        )
        self.price = Gauge(PRICE_PER_HOUR, "On-demand price of one replica's instance ($/hour)", ["unit"], registry=r)
        self.replica_rps = Gauge(
            REPLICA_RPS, "Requests/s one replica sustains at its breaking point (config max_throughput)", ["unit"],
            registry=r,
        )
        for m in MODES:
            self.mode.labels(m).set(0)
            self.switches.labels(m)
        for n in unit_names:
            self.weight.labels(n).set(0)
        for s in ("kubernetes", "prometheus", "router", "prewarm", "reconcile", "lease"):
            self.errors.labels(s)
        for target in ("router", "prewarm"):  # from 0, so increase() sees the first write too
            self.patches.labels(target)
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

    def describe_units(self, units: Sequence[Any], per_second: float = 1.0) -> None:
        """Constant per-unit facts for cost and capacity panels: price and per-replica throughput."""
        for unit in units:
            self.price.labels(unit.name).set(unit.price_per_hour)
            self.replica_rps.labels(unit.name).set(unit.max_throughput / per_second)

    def observe_result(self, action: str, reason: str | None) -> None:
        self.decisions.labels(action, reason_category(reason)).inc()

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
