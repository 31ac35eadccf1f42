"""The reconcile loop: read signals -> decide -> actuate, with leader election and backoff.

One :meth:`Controller.reconcile`:

1. Stand by unless this replica holds the Lease.
2. Read the router (weights + the controller's annotations). On the first reconcile as leader,
   restore the policy state from the state ConfigMap (:mod:`controller.state`; else the ``state``
   annotation, else inferred from the weights), so a crash-restart or a new leader resumes where
   the last one left off.
3. Read the signals. If they cannot be read, hold everything and say so. If
   :func:`controller.policy.decide` calls them stale, hold the state and only take weight off
   units they show without a ready replica (log, /status, ``traffic_controller_signals_stale``).
4. If the router is paused, or a person changed the weights since the controller last wrote them,
   leave the weights alone (and pause, recording why).
5. Set the units' replica floors (without a rollout: :class:`controller.actuators.FloorActuator`),
   then patch the weights only if they change, with the previous weights and the state in
   annotations (never annotations alone: an InferenceGraph edit rolls out a router revision). A
   conflict (409) re-reads once and writes again unless the weights changed in between. Save the
   policy state to its ConfigMap when it changed. Record an Event on a mode switch.

Only the leader writes: the Lease is renewed on its own thread (:meth:`LeaseElector.run`), and
every write goes through ``Kube.fence`` (:meth:`LeaseElector.fence`), so a reconcile that outlives
its lease, or whose Lease another replica took, drops its remaining writes (``NotLeader``) and
stands by. Transient API errors are retried in one place, ``Kube`` (one policy for every call);
a reconcile that still fails is retried by the run loop after a backoff.
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
    FloorActuator,
    Router,
    RouterView,
    dump_weights,
    make_router,
)
from controller.config import ControllerConfig
from controller.kube import Backoff, Kube, NotLeader, api_client, describe, is_conflict
from controller.leader import LeaseElector, default_identity
from controller.metrics import HealthServer, Metrics
from controller.policy import CAPACITY, COST, Decision, PolicyState, decide, with_weights
from controller.signals import KubernetesSignals, PrometheusDemand, SignalSource
from controller.state import ConfigMapStateStore, change_key, decode_state, decode_time, encode_state, encode_time
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
        prewarm: FloorActuator | None = None,
        events: EventRecorder | None = None,
        elector: LeaseElector | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        dry_run: bool = False,
        state_store: ConfigMapStateStore | None = None,
    ) -> None:
        self.config = config
        self.state_store = state_store
        self._stored_key: dict | None = None  # change_key of what the state store holds
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
        self.state: PolicyState | None = None
        self.last_signals_at: float | None = None
        self.last_result: Result | None = None

    # ------------------------------------------------------------------ helpers

    def _done(self, result: Result) -> Result:
        self.last_result = result
        status = result.as_dict()
        status["leader"] = self.elector.is_leader if self.elector else True
        status["signal_age_s"] = (self.clock() - self.last_signals_at) if self.last_signals_at else None
        status["degraded"] = list(getattr(self.signals, "degraded", []))  # sources decided without
        status["at"] = self.clock()
        self.metrics.status = status
        self.metrics.last_reconcile.set(self.clock())
        self.metrics.observe_result(result.action, result.decision.reason if result.decision else None)
        return result

    def _restore(self, view: RouterView, now: float) -> PolicyState | None:
        """The state the state ConfigMap holds (None without one, or when it cannot be read)."""
        if self.state_store is None:
            return None
        try:
            record = self.state_store.load()
        except Exception as exc:
            self.metrics.errors.labels("state").inc()
            log.warning("could not read the saved state, resuming from the router: %s", describe(exc))
            return None
        if record is None:
            return None
        state = decode_state(record, [u.name for u in self.config.units], view.weights, now,
                             self.config.timing.interval_s)
        if state is not None:
            self._stored_key = change_key(record)
            log.info("resuming from the state ConfigMap: %s since %.0f, floors %s, weights %s", state.mode,
                     state.since, {n: f[0] for n, f in state.floors.items()}, _fmt(view.weights))
        return state

    def _persist(self, decision: Decision) -> None:
        """Save the state a restart needs when it changed (best effort: the next reconcile retries)."""
        if self.state_store is None or self.dry_run:
            return
        record = encode_state(decision.state, decision.prewarm)
        if change_key(record) == self._stored_key:
            return
        try:
            self.state_store.save(record)
            self._stored_key = change_key(record)
            self.metrics.patches.labels("state").inc()
        except NotLeader:
            raise  # fenced like every write: the reconcile stops and stands by
        except Exception as exc:
            self.metrics.errors.labels("state").inc()
            log.warning("could not save the state: %s", describe(exc))

    def _stored_weights(self) -> dict[str, int] | None:
        """The weights recorded in the state ConfigMap (restored or last saved), if any."""
        weights = (self._stored_key or {}).get("weights")
        return dict(weights) if isinstance(weights, dict) else None

    def _bootstrap(self, view: RouterView, now: float) -> PolicyState:
        restored = self._restore(view, now)
        if restored is not None:
            return restored
        names = [u.name for u in self.config.units]
        saved = view.saved_state
        if saved and saved.get("mode") in (COST, CAPACITY) and isinstance(saved.get("since"), int | float):
            until = saved.get("prewarm_until")
            state = PolicyState(
                mode=saved["mode"],
                since=min(float(saved["since"]), now),
                weights=dict(view.weights),
                prewarm_until=decode_time(until),
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
            {"mode": state.mode, "since": round(state.since, 3), "prewarm_until": encode_time(state.prewarm_until)},
            separators=(",", ":"),
        )

    def _write(
        self, view: RouterView, weights: Mapping[str, int] | None, annotations: Mapping[str, str | None]
    ) -> RouterView | None:
        """Write with optimistic concurrency. None if the weights changed under us (decide again).

        A 409 re-reads the router once: if its weights are still the ones decided on (someone
        else changed only annotations, or our own earlier attempt landed) it writes once more;
        otherwise, or on a second 409, it gives up until the next decision. Transient errors are
        retried by Kube; NotLeader propagates."""
        expected = dict(view.weights)
        for attempt in (1, 2):
            try:
                new = self.router.write(view, weights, annotations)
                self.metrics.patches.labels("router").inc()
                return new
            except ApiException as exc:
                if not is_conflict(exc):
                    raise
                self.metrics.errors.labels("router").inc()
                if attempt == 2:
                    log.warning("router changed again while writing (409); deciding again next time")
                    return None
                log.info("router changed while writing (409); re-reading")
                view = self.router.read()
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
        if self.elector is not None and not self.elector.is_leader:
            self.state = None  # a future leadership resumes from the cluster, not from memory
            self._stored_key = None
            return self._done(Result("standby", message=f"standing by; lease held by {self.elector.holder()}"))
        try:
            return self._reconcile()
        except NotLeader as exc:
            # The lease ran out or was taken mid-reconcile: the remaining writes were dropped.
            self.state = None
            self.metrics.leader.set(0)
            msg = f"lost the lease during the reconcile; remaining writes dropped ({exc})"
            log.warning(msg)
            return self._done(Result("standby", message=msg))

    def _reconcile(self) -> Result:
        now = self.clock()
        view = self.router.read()
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
            if decision.weights == view.weights:
                return self._done(Result("stale", decision, decision.reason))
            # Stale signals still take traffic off units without a ready replica: write that.
        if self.elector is not None and not self.elector.is_leader:
            # Reading took so long that the lease may have passed to another replica: do not write.
            self.state = None
            return self._done(Result("standby", decision, "lease expired while reading signals; not acting"))

        # What the controller last set: the router's annotation, else (never written with a weight
        # change yet) the weights in the state ConfigMap.
        applied = view.applied if view.applied is not None else self._stored_weights()
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
                changed = self.prewarm.apply(decision.prewarm)
                for name, (old, new) in changed.items():
                    self.metrics.patches.labels("prewarm").inc()
                    log.info("floor: %s min-scale %s -> %d", name, old, new)
            except NotLeader:
                raise
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
        # Router annotations go with weight changes only: KServe copies an InferenceGraph's
        # annotations into the router's revision template, so an annotation-only write rolls out
        # a router revision. Without a state ConfigMap they are the only record (mode, applied).
        bookkeeping = self.state_store is None and (
            saved is None or saved.get("mode") != decision.state.mode or applied is None
        )
        if change or bookkeeping:
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
        self._persist(decision)
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
        """Reconcile every interval_s until ``stop`` is set; the Lease is renewed on its own thread."""
        stop = stop or threading.Event()
        t = self.config.timing
        lease_stop = threading.Event()
        became_leader = threading.Event()
        lease_thread = None
        if self.elector is not None:

            def on_tick(leader: bool) -> None:
                self.metrics.leader.set(1 if leader else 0)
                self.metrics.api_ok(self.elector.api_reachable)
                if not self.elector.api_reachable:
                    self.metrics.errors.labels("lease").inc()
                if leader:
                    became_leader.set()

            lease_thread = self.elector.run(lease_stop, on_tick)
        else:
            self.metrics.leader.set(1)
        tick = min(t.interval_s, self.config.lease.renew_s) if self.elector is not None else t.interval_s
        next_reconcile = self.clock()
        failures = 0
        iterations = 0
        was_leader = False
        try:
            while not stop.is_set() and (max_iterations is None or iterations < max_iterations):
                iterations += 1
                leader = self.elector.is_leader if self.elector is not None else True
                now = self.clock()
                if leader and not was_leader:
                    next_reconcile = now  # a new leader acts at once
                was_leader = leader
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
                became_leader.wait(min(max(0.0, next_reconcile - self.clock()), tick))  # or the lease is won
                became_leader.clear()
        finally:
            lease_stop.set()
            if lease_thread is not None:
                lease_thread.join(timeout=self.config.timing.api_timeout_s + 1)
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
    t = config.timing
    # The one retry policy: every API call, in Kube (see controller/kube.py).
    kube.backoff = Backoff(retries=t.api_retries, initial_s=t.backoff_initial_s, max_s=t.backoff_max_s)
    kube.sleep = sleep
    kube.on_retry = lambda source, exc: metrics.errors.labels(source).inc()
    kube.set_identity(identity)
    demand = None
    if config.prometheus is not None:
        demand = PrometheusDemand(config.prometheus, config.namespace, names, router=config.router.name)
    signals = KubernetesSignals(
        config, kube, demand, sleep=sleep, on_error=lambda source, exc: metrics.errors.labels(source).inc()
    )
    elector = None
    if config.lease.enabled and not dry_run:  # a dry run writes nothing, not even the Lease
        # Expiry on the monotonic clock; an injected clock (tests, simulation) stands for both.
        monotonic = time.monotonic if clock is time.time else clock
        elector = LeaseElector(kube, config.lease, identity, monotonic, clock)
        kube.fence = elector.fence
    elif dry_run:

        def refuse() -> None:
            raise NotLeader("dry run: no writes")

        kube.fence = refuse
    return Controller(
        config,
        signals=signals,
        router=make_router(kube, config.router, config.units),
        prewarm=FloorActuator(kube, config.units) if config.prewarm.enabled else None,
        events=EventRecorder(kube, identity, clock),
        elector=elector,
        state_store=(
            ConfigMapStateStore(kube, config.router.namespace, config.state_configmap)
            if config.state_configmap
            else None
        ),
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
