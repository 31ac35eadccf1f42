"""The reconcile loop: read signals -> decide -> actuate, with leader election and backoff.

One :meth:`Controller.reconcile`:

1. Stand by unless this replica holds the Lease.
2. Read the router (weights + the controller's annotations). On the first reconcile as leader,
   rebuild the policy state from the cluster (the ``state`` annotation, else inferred from the
   weights), so a crash-restart or a new leader resumes where the last one left off.
3. Read the signals. If they cannot be read, or :func:`controller.policy.decide` calls them stale,
   hold everything and say so (log, /status, ``traffic_controller_signals_stale``).
4. If the router is paused, or a person changed the weights since the controller last wrote them,
   leave the weights alone (and pause, recording why).
5. Pre-warm the capacity pool's minReplicas, then patch the weights only if they change, with the
   previous weights and the state in annotations. Conflicts (409) re-read and retry; transient
   errors retry with exponential backoff. Record an Event on a mode switch.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from kubernetes.client.exceptions import ApiException

from controller.actuators import (
    APPLIED,
    PAUSED,
    PAUSED_REASON,
    PREVIOUS,
    STATE,
    EventRecorder,
    MinReplicasActuator,
    Router,
    RouterView,
    dump_weights,
    make_router,
)
from controller.config import ControllerConfig
from controller.kube import Backoff, Kube, api_client, describe, is_conflict, with_retry
from controller.leader import LeaseElector, default_identity
from controller.metrics import HealthServer, Metrics
from controller.policy import CAPACITY, COST, Decision, PolicyState, decide, with_weights
from controller.signals import KubernetesSignals, PrometheusDemand, SignalSource
from controller.weights import valid_weights

log = logging.getLogger(__name__)


@dataclass
class Result:
    action: str  # standby | unavailable | stale | paused | dry-run | applied | unchanged | conflict
    decision: Decision | None = None
    message: str = ""

    def as_dict(self) -> dict:
        d: dict = {"action": self.action, "message": self.message}
        if self.decision is not None:
            dec = self.decision
            d.update(
                mode=dec.state.mode,
                since=dec.state.since,
                weights=dec.weights,
                switched=dec.switched,
                stale=dec.stale,
                reason=dec.reason,
                prewarm=dec.prewarm,
                demand_rps=dec.demand_rps,
                cost_headroom_since=dec.state.cost_headroom_since,
            )
        return d


def _fmt(weights: Mapping[str, int]) -> str:
    return ", ".join(f"{k}={v}" for k, v in weights.items())


class Controller:
    def __init__(
        self,
        config: ControllerConfig,
        *,
        signals: SignalSource,
        router: Router,
        prewarm: MinReplicasActuator | None = None,
        events: EventRecorder | None = None,
        elector: LeaseElector | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        dry_run: bool = False,
    ) -> None:
        self.config = config
        self.signals = signals
        self.router = router
        self.prewarm = prewarm
        self.events = events
        self.elector = elector
        self.clock = clock
        self.sleep = sleep
        self.dry_run = dry_run
        names = [u.name for u in config.units]
        self.metrics = metrics or Metrics(names, clock=clock, liveness_s=max(120.0, 5 * config.timing.interval_s))
        self.metrics.describe_units(config.units, config.per_second)
        t = config.timing
        self.backoff = Backoff(retries=t.api_retries, initial_s=t.backoff_initial_s, max_s=t.backoff_max_s)
        self.state: PolicyState | None = None
        self.last_signals_at: float | None = None
        self.last_result: Result | None = None

    # ------------------------------------------------------------------ helpers

    def _retry(self, fn, what: str, source: str):
        def count(exc: BaseException) -> None:
            self.metrics.errors.labels(source).inc()

        return with_retry(fn, self.backoff, self.sleep, what, on_retry=count)

    def _done(self, result: Result) -> Result:
        self.last_result = result
        status = result.as_dict()
        status["leader"] = self.elector.is_leader if self.elector else True
        status["signal_age_s"] = (self.clock() - self.last_signals_at) if self.last_signals_at else None
        status["at"] = self.clock()
        self.metrics.status = status
        self.metrics.last_reconcile.set(self.clock())
        self.metrics.observe_result(result.action, result.decision.reason if result.decision else None)
        return result

    def _bootstrap(self, view: RouterView, now: float) -> PolicyState:
        names = [u.name for u in self.config.units]
        saved = view.saved_state
        if saved and saved.get("mode") in (COST, CAPACITY) and isinstance(saved.get("since"), int | float):
            until = saved.get("prewarm_until")
            state = PolicyState(
                mode=saved["mode"],
                since=min(float(saved["since"]), now),
                weights=dict(view.weights),
                prewarm_until=float(until) if isinstance(until, int | float) else None,
            )
            log.info(
                "resuming from the cluster: %s since %.0f, weights %s", state.mode, state.since, _fmt(view.weights)
            )
            return state
        cost_share = sum(view.weights.get(u.name, 0) for u in self.config.cost_units)
        mode = CAPACITY if valid_weights(view.weights, names) and cost_share < 100 else COST
        log.info("no saved state on the router: starting %s (cost pool has %d%% of traffic)", mode, cost_share)
        return PolicyState(mode=mode, since=now, weights=dict(view.weights))

    @staticmethod
    def _state_annotation(state: PolicyState) -> str:
        return json.dumps(
            {"mode": state.mode, "since": round(state.since, 3), "prewarm_until": state.prewarm_until},
            separators=(",", ":"),
        )

    def _write(
        self, view: RouterView, weights: Mapping[str, int] | None, annotations: Mapping[str, str | None]
    ) -> RouterView | None:
        """Write with optimistic concurrency. None if the weights changed under us (decide again)."""
        expected = dict(view.weights)
        delays = self.backoff.delays()
        for attempt in range(len(delays) + 1):
            try:
                new = self._retry(lambda v=view: self.router.write(v, weights, annotations), "write router", "router")
                self.metrics.patches.labels("router").inc()
                return new
            except ApiException as exc:
                if not is_conflict(exc) or attempt >= len(delays):
                    raise
                self.metrics.errors.labels("router").inc()
                log.info("router changed while writing (409); re-reading")
                self.sleep(delays[attempt])
                view = self._retry(self.router.read, "read router", "router")
                if view.paused or view.weights != expected:
                    log.warning("router weights changed while writing; not overwriting them")
                    return None
        return None  # pragma: no cover

    # ------------------------------------------------------------------ one reconcile

    def lease_tick(self) -> bool:
        if self.elector is None:
            self.metrics.leader.set(1)
            return True
        leader = self.elector.tick()
        self.metrics.leader.set(1 if leader else 0)
        self.metrics.api_ok(self.elector.api_reachable)
        if not self.elector.api_reachable:
            self.metrics.errors.labels("lease").inc()
        return leader

    def step(self) -> Result:
        """Lease tick, then one reconcile (what --once and the tests use)."""
        self.lease_tick()
        return self.reconcile()

    def reconcile(self) -> Result:
        now = self.clock()
        if self.elector is not None and not self.elector.is_leader:
            self.state = None  # a future leadership resumes from the cluster, not from memory
            return self._done(Result("standby", message=f"standing by; lease held by {self.elector.holder()}"))

        view = self._retry(self.router.read, "read router", "router")
        self.metrics.api_ok(True)
        self.metrics.observe_router(view.weights, view.paused)
        if self.state is None:
            self.state = self._bootstrap(view, now)
        self.state = with_weights(self.state, view.weights)

        try:
            signals = self.signals.read(now)
        except Exception as exc:
            self.metrics.errors.labels("kubernetes").inc()
            self.metrics.stale.set(1)
            if self.last_signals_at is not None:
                self.metrics.signal_age.set(now - self.last_signals_at)
            msg = f"signals unavailable ({describe(exc)}); holding weights"
            log.warning(msg)
            return self._done(Result("unavailable", message=msg))
        self.last_signals_at = signals.at
        now = self.clock()  # after reading: signals that took too long to read are stale too
        self.metrics.observe_signals(signals, now, self.config.timing.signal_max_age_s)

        decision = decide(self.config, self.state, signals, now)
        self.metrics.observe_decision(decision, self.config.per_second)
        if decision.stale:
            log.warning("%s", decision.reason)
            return self._done(Result("stale", decision, decision.reason))
        if self.elector is not None and not self.elector.is_leader:
            # Reading took so long that the lease may have passed to another replica: do not write.
            self.state = None
            return self._done(Result("standby", decision, "lease expired while reading signals; not acting"))

        applied = view.applied
        hand_set_others = {k: v for k, v in view.others.items() if v}
        if view.paused:
            if applied != view.weights and not self.dry_run:
                self._write(view, None, {APPLIED: dump_weights(view.weights)})  # the person's weights are the base
            self.state = with_weights(decision.state, view.weights)
            msg = f"paused by annotation {PAUSED}; would set {_fmt(decision.weights)} ({decision.reason})"
            log.info(msg)
            return self._done(Result("paused", decision, msg))
        if applied is not None and applied != view.weights:
            extra = f" and {_fmt(hand_set_others)} outside the configured units" if hand_set_others else ""
            msg = (
                f"weights were changed by hand ({_fmt(applied)} -> {_fmt(view.weights)}{extra}); pausing. "
                f"Remove the annotation {PAUSED} to let the controller manage them again"
            )
            log.warning(msg)
            if not self.dry_run:
                stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
                self._write(
                    view,
                    None,
                    {
                        PAUSED: "true",
                        APPLIED: dump_weights(view.weights),
                        PAUSED_REASON: f"manual edit of the weights detected at {stamp}",
                    },
                )
                if self.events:
                    self.events.record(view.ref, "ManualEdit", msg, "Warning")
            self.state = with_weights(decision.state, view.weights)
            return self._done(Result("paused", decision, msg))

        if self.dry_run:
            self.state = decision.state
            verb = "would set" if decision.weights != view.weights else "would keep"
            return self._done(Result("dry-run", decision, f"{verb} {_fmt(decision.weights)}: {decision.reason}"))

        if decision.prewarm and self.prewarm is not None:
            try:
                changed = self._retry(lambda: self.prewarm.apply(decision.prewarm), "pre-warm", "prewarm")
                for name, (old, new) in changed.items():
                    self.metrics.patches.labels("prewarm").inc()
                    log.info("pre-warm: %s minReplicas %s -> %d", name, old, new)
            except Exception as exc:  # pre-warm helps; it must not block the weights
                self.metrics.errors.labels("prewarm").inc()
                log.warning("pre-warm failed: %s", describe(exc))

        saved = view.saved_state
        change = decision.weights != view.weights or bool(hand_set_others)
        if hand_set_others:
            log.warning(
                "router entries outside the configured units carry weight (%s); setting them to 0",
                _fmt(hand_set_others),
            )
        if change or saved is None or saved.get("mode") != decision.state.mode or applied is None:
            annotations: dict[str, str | None] = {
                STATE: self._state_annotation(decision.state),
                APPLIED: dump_weights(decision.weights),
            }
            if change:
                annotations[PREVIOUS] = dump_weights(view.weights)
            if PAUSED_REASON in view.annotations:
                annotations[PAUSED_REASON] = None
            written = self._write(view, decision.weights if change else None, annotations)
            if written is None:
                return self._done(Result("conflict", decision, "weights changed while writing; deciding again"))
            self.metrics.observe_router(written.weights, written.paused)
            view = written
        self.state = decision.state
        if decision.switched:
            self.metrics.switches.labels(decision.state.mode).inc()
            if self.events:
                failover = decision.state.mode == CAPACITY
                self.events.record(
                    view.ref,
                    "Failover" if failover else "Fallback",
                    f"{decision.reason}; weights {_fmt(decision.weights)}",
                    "Warning" if failover else "Normal",
                )
        if change:
            log.info("weights %s (%s)", _fmt(decision.weights), decision.reason)
        else:
            log.debug("weights unchanged (%s)", decision.reason)
        return self._done(Result("applied" if change else "unchanged", decision, decision.reason))

    # ------------------------------------------------------------------ the loop

    def run(self, stop: threading.Event | None = None, max_iterations: int | None = None) -> None:
        """Reconcile every interval_s (lease renewed every renew_s) until ``stop`` is set."""
        stop = stop or threading.Event()
        t = self.config.timing
        tick = min(t.interval_s, self.config.lease.renew_s) if self.elector is not None else t.interval_s
        next_reconcile = self.clock()
        failures = 0
        iterations = 0
        try:
            while not stop.is_set() and (max_iterations is None or iterations < max_iterations):
                iterations += 1
                was_leader = self.elector.is_leader if self.elector else True
                leader = self.lease_tick()
                now = self.clock()
                if leader and not was_leader:
                    next_reconcile = now  # a new leader acts at once
                if now >= next_reconcile:
                    try:
                        self.reconcile()
                        failures = 0
                        next_reconcile = now + t.interval_s
                    except Exception as exc:
                        failures += 1
                        self.metrics.errors.labels("reconcile").inc()
                        self.metrics.api_ok(False)
                        delay = min(t.backoff_max_s, t.backoff_initial_s * 2 ** (failures - 1))
                        next_reconcile = now + delay
                        log.error(
                            "reconcile failed (%d in a row), next try in %.1fs: %s", failures, delay, describe(exc)
                        )
                        self._done(Result("error", message=describe(exc)))
                self.metrics.heartbeat()
                wait = max(0.0, next_reconcile - self.clock())
                stop.wait(min(wait, tick))
        finally:
            if self.elector is not None:
                self.elector.release()


def build(
    config: ControllerConfig,
    kube: Kube,
    *,
    identity: str | None = None,
    dry_run: bool = False,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
    metrics: Metrics | None = None,
) -> Controller:
    """Wire a Controller to a cluster."""
    identity = identity or default_identity()
    names = [u.name for u in config.units]
    metrics = metrics or Metrics(names, clock=clock, liveness_s=max(120.0, 5 * config.timing.interval_s))
    demand = None
    if config.prometheus is not None:
        demand = PrometheusDemand(config.prometheus, config.namespace, names)
    signals = KubernetesSignals(
        config, kube, demand, sleep=sleep, on_error=lambda source, exc: metrics.errors.labels(source).inc()
    )
    elector = None
    if config.lease.enabled and not dry_run:  # a dry run writes nothing, not even the Lease
        elector = LeaseElector(kube, config.lease, identity, clock)
    return Controller(
        config,
        signals=signals,
        router=make_router(kube, config.router, config.units),
        prewarm=MinReplicasActuator(kube, config.units) if config.prewarm.enabled else None,
        events=EventRecorder(kube, identity, clock),
        elector=elector,
        metrics=metrics,
        clock=clock,
        sleep=sleep,
        dry_run=dry_run,
    )


def run_cli(
    config: ControllerConfig,
    *,
    kubeconfig: str | None,
    context: str | None,
    once: bool,
    dry_run: bool,
    identity: str | None,
    metrics_port: int | None,
) -> int:
    try:
        kube = Kube(api_client(kubeconfig, context), timeout_s=config.timing.api_timeout_s)
    except Exception as exc:
        where = f"kubeconfig {kubeconfig}" if kubeconfig else "in-cluster config (no --kubeconfig given)"
        print(f"cannot configure the Kubernetes client from {where}: {exc}", file=sys.stderr)
        return 2
    controller = build(config, kube, identity=identity, dry_run=dry_run)
    if once:
        try:
            result = controller.step()
        except Exception as exc:
            print(json.dumps({"action": "error", "message": describe(exc)}), flush=True)
            return 1
        finally:
            if controller.elector is not None:
                controller.elector.release()
        print(json.dumps(result.as_dict(), sort_keys=True), flush=True)
        return 0
    port = config.metrics_port if metrics_port is None else metrics_port
    server = HealthServer(controller.metrics, config.metrics_host, port).start()
    stop = threading.Event()

    def _stop(signum, frame):  # noqa: ARG001 - signal handler signature
        log.info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    log.info(
        "controller starting: %d units, router %s %s/%s, interval %gs%s",
        len(config.units),
        config.router.kind,
        config.router.namespace,
        config.router.name,
        config.timing.interval_s,
        " (dry run)" if dry_run else "",
    )
    try:
        controller.run(stop)
    finally:
        server.stop()
    return 0
