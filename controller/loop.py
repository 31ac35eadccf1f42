"""The reconcile loop: observe -> plan -> apply, with leader election and backoff.

One :meth:`Controller.reconcile`:

1. Stand by unless this replica holds the Lease.
2. **Observe** (:meth:`Controller.observe`): read the router (weights + the controller's
   annotations). On the first reconcile as leader, restore the policy state from the state
   ConfigMap (:mod:`controller.state`; else the ``state`` annotation, else inferred from the
   weights), so a crash-restart or a new leader resumes where the last one left off. Then read the
   signals (a failure is part of the observation), and whether this replica still leads.
3. **Plan** (:func:`controller.reconcile.plan`, pure): decide (:func:`controller.policy.decide`)
   and turn the decision into the writes to make. Pause, a hand edit of the weights (never
   overwritten: the controller pauses itself), stale signals (only traffic off units without a
   ready replica), dry-run and a lease lost while reading are outcomes of the plan, not branches
   here; the table is in :mod:`controller.reconcile`.
4. **Apply** (:class:`controller.actuators.Actuator`): floors without a rollout, the weights with
   their bookkeeping annotations (annotations ride with weight changes only), the state
   ConfigMap, Events. The new state is kept only once the writes landed.

Only the leader writes: the Lease is renewed on its own thread (:meth:`LeaseElector.run`), and
every write goes through ``Kube.fence`` (:meth:`LeaseElector.fence`), so a reconcile that outlives
its lease, or whose Lease another replica took, drops its remaining writes (``NotLeader``) and
stands by.

One retry policy, :class:`controller.kube.Backoff` with ``timing.api_retries`` and
``timing.backoff_initial_s``/``backoff_max_s``: ``Kube`` retries each API call with it, and a
reconcile that fails anyway (the router cannot be read or written) is tried again by the run loop
after the same backoff. A 409 on the router write is not a retry: it means another writer, so the
router is read again and written only if its weights are still the ones the plan was made from
(:meth:`controller.actuators.Actuator.write_router`). The Lease is not retried either: its renewal
timer is.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from controller.actuators import Actuator, Applied, EventRecorder
from controller.config import ControllerConfig
from controller.floors import FloorActuator
from controller.kube import Backoff, Kube, NotLeader, api_client, describe
from controller.leader import LeaseElector, default_identity
from controller.metrics import HealthServer, Metrics
from controller.policy import CAPACITY, COST, Decision, PolicyState, with_weights
from controller.reconcile import Observation, Plan, fmt_weights, plan
from controller.routers import Router, RouterView, make_router
from controller.signals import KubernetesSignals, PrometheusDemand, SignalSource
from controller.state import ConfigMapStateStore, change_key, decode_state, decode_time
from controller.weights import valid_weights

log = logging.getLogger(__name__)


@dataclass
class Result:
    action: str  # standby | unavailable | stale | paused | dry-run | applied | unchanged | conflict | error
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
        dry_run: bool = False,
        state_store: ConfigMapStateStore | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        self.config = config
        self.state_store = state_store
        self._stored_key: dict | None = None  # change_key of what the state store holds
        self.signals = signals
        self.router = router
        self.elector = elector
        self.clock = clock
        self.dry_run = dry_run
        t = config.timing
        # Failed reconciles are tried again after the same backoff as failed API calls.
        self.backoff = backoff or Backoff(retries=t.api_retries, initial_s=t.backoff_initial_s, max_s=t.backoff_max_s)
        names = [u.name for u in config.units]
        self.metrics = metrics or Metrics(names, clock=clock, liveness_s=max(120.0, 5 * config.timing.interval_s))
        self.metrics.describe_units(config.units, config.per_second)
        self.actuator = Actuator(router, self.metrics, floors=prewarm, events=events, state_store=state_store)
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
                     state.since, {n: f[0] for n, f in state.floors.items()}, fmt_weights(view.weights))
        return state

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
                "resuming from the cluster: %s since %.0f, weights %s",
                state.mode, state.since, fmt_weights(view.weights),
            )
            return state
        cost_share = sum(view.weights.get(u.name, 0) for u in self.config.cost_units)
        mode = CAPACITY if valid_weights(view.weights, names) and cost_share < 100 else COST
        log.info("no saved state on the router: starting %s (cost pool has %d%% of traffic)", mode, cost_share)
        return PolicyState(mode=mode, since=now, weights=dict(view.weights))

    # ------------------------------------------------------------------ one reconcile

    def lease_tick(self) -> bool:
        if self.elector is None:
            self.metrics.leader.set(1)
            return True
        leader = self.elector.tick()
        self._lease_metrics(leader)
        return leader

    def _lease_metrics(self, leader: bool) -> None:
        assert self.elector is not None
        self.metrics.leader.set(1 if leader else 0)
        self.metrics.api_ok(self.elector.api_reachable)
        if not self.elector.api_reachable:
            self.metrics.errors.labels("lease").inc()

    def step(self) -> Result:
        """Lease tick, then one reconcile (what --once and the tests use)."""
        self.lease_tick()
        return self.reconcile()

    def reconcile(self) -> Result:
        """observe -> plan -> apply; raises only when the router cannot be read or written."""
        if self.elector is not None and not self.elector.is_leader:
            self.state = None  # a future leadership resumes from the cluster, not from memory
            self._stored_key = None
            return self._done(Result("standby", message=f"standing by; lease held by {self.elector.holder()}"))
        observation = self.observe()
        assert self.state is not None  # observe() restored it
        planned = plan(observation, self.state, self.config, dry_run=self.dry_run,
                       state_configmap=self.state_store is not None)
        if planned.decision is not None:
            self.metrics.observe_decision(planned.decision, self.config.per_second)
        for level, note in planned.notes:
            log.log(level, "%s", note)
        return self._finish(planned, self.actuator.apply(planned, observation.view))

    def observe(self) -> Observation:
        """Read the router (restoring the state on the first reconcile as leader), then the signals."""
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
            return Observation(now, view, None, signals_error=describe(exc), stored=self._stored_key)
        self.last_signals_at = signals.at
        now = self.clock()  # after reading: signals that took too long to read are stale too
        self.metrics.observe_signals(signals, now, self.config.timing.signal_max_age_s)
        leader = self.elector.is_leader if self.elector is not None else True
        return Observation(now, view, signals, leader=leader, stored=self._stored_key)

    def _finish(self, planned: Plan, applied: Applied) -> Result:
        """Carry the plan's state on once its writes landed, and report."""
        if applied.saved is not None:
            self._stored_key = change_key(applied.saved)
        if applied.outcome == "standby":
            # The lease ran out or was taken mid-reconcile: the remaining writes were dropped.
            self.state = None
            self.metrics.leader.set(0)
            msg = f"lost the lease during the reconcile; remaining writes dropped ({applied.message})"
            log.warning(msg)
            return self._done(Result("standby", message=msg))
        if applied.outcome == "conflict":
            return self._done(Result("conflict", planned.decision, applied.message))
        self.state = planned.state
        decision = planned.decision
        if planned.outcome in ("applied", "unchanged") and decision is not None:
            if decision.switched:
                self.metrics.switches.labels(decision.state.mode).inc()
            if planned.outcome == "applied":
                log.info("weights %s (%s)", fmt_weights(decision.weights), decision.reason)
            else:
                log.debug("weights unchanged (%s)", decision.reason)
        return self._done(Result(planned.outcome, decision, planned.message))

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
                self._lease_metrics(leader)
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
                        delay = self.backoff.delay(failures)
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
    # The one retry policy: every API call in Kube (see controller/kube.py), and failed reconciles.
    backoff = Backoff(retries=t.api_retries, initial_s=t.backoff_initial_s, max_s=t.backoff_max_s)
    kube.backoff = backoff
    kube.sleep = sleep
    kube.on_retry = lambda source, exc: metrics.errors.labels(source).inc()
    kube.set_identity(identity)
    demand = None
    if config.prometheus is not None:
        demand = PrometheusDemand(config.prometheus, config.namespace, names, router=config.router.name)
    signals = KubernetesSignals(
        config, kube, demand, on_error=lambda source, exc: metrics.errors.labels(source).inc()
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
        dry_run=dry_run,
        backoff=backoff,
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
