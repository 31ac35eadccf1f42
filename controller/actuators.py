"""Actuators: execute a reconcile's :class:`controller.reconcile.Plan`, one write after another.

What each write goes to: the router (:mod:`controller.routers`), the replica floors
(:class:`controller.floors.FloorActuator`), the state ConfigMap
(:class:`controller.state.ConfigMapStateStore`) and Events on the router (:class:`EventRecorder`).

Every write goes through :class:`controller.kube.Kube`, which fences it against leadership and
retries transient errors (the one retry policy). When the fence refuses a write
(:class:`~controller.kube.NotLeader`) the rest of the plan is dropped: :meth:`Actuator.apply`
returns ``standby`` with the writes that were not made. A router write that meets a 409
(someone else wrote the router since it was read) is not retried blindly: see
:meth:`Actuator.write_router`. Floors, the state record and Events are best effort: a failure is
logged and counted, and the plan goes on (the next reconcile writes them again).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from kubernetes.client.exceptions import ApiException

from controller.floors import FloorActuator
from controller.kube import Kube, NotLeader, describe, is_conflict
from controller.metrics import Metrics
from controller.reconcile import Plan, RecordEvent, SaveState, SetFloors, Write, WriteRouter
from controller.routers import Router, RouterView
from controller.state import ConfigMapStateStore

log = logging.getLogger(__name__)

COMPONENT = "inference-traffic-controller"


class EventRecorder:
    """Best-effort core/v1 Events on the router object."""

    def __init__(self, kube: Kube, identity: str, clock: Callable[[], float] = time.time) -> None:
        self.kube = kube
        self.identity = identity
        self.clock = clock

    def record(self, ref: dict, reason: str, message: str, type_: str = "Normal") -> None:
        ts = datetime.fromtimestamp(self.clock(), tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        namespace = ref.get("namespace") or "default"
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{ref.get('name')}.", "namespace": namespace},
            "involvedObject": {k: v for k, v in ref.items() if v},
            "reason": reason,
            "message": message[:1024],
            "type": type_,
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "reportingInstance": self.identity[:128],
            "firstTimestamp": ts,
            "lastTimestamp": ts,
            "count": 1,
        }
        try:
            self.kube.create_event(namespace, body)
        except NotLeader:
            raise
        except Exception as exc:  # an Event is never worth failing a reconcile for
            log.warning("could not record Event %s on %s/%s: %s", reason, namespace, ref.get("name"), describe(exc))


@dataclass
class Applied:
    """What became of a plan's writes."""

    outcome: str  # done | conflict (the router changed under a write) | standby (NotLeader: the rest dropped)
    view: RouterView  # the router as last read or written
    saved: dict | None = None  # the record the state ConfigMap holds now, when this plan saved one
    message: str = ""
    dropped: tuple[Write, ...] = field(default=())


class Actuator:
    """Executes plans against the router, the floors, the state ConfigMap and Events."""

    def __init__(
        self,
        router: Router,
        metrics: Metrics,
        floors: FloorActuator | None = None,
        events: EventRecorder | None = None,
        state_store: ConfigMapStateStore | None = None,
    ) -> None:
        self.router = router
        self.metrics = metrics
        self.floors = floors
        self.events = events
        self.state_store = state_store

    def apply(self, plan: Plan, view: RouterView) -> Applied:
        """Make the plan's writes in order, starting from the router as observed."""
        saved: dict | None = None
        for i, write in enumerate(plan.writes):
            try:
                if isinstance(write, WriteRouter):
                    written = self.write_router(view, write)
                    if written is None:
                        if write.abort_on_conflict:
                            return Applied("conflict", view, saved, "weights changed while writing; deciding again",
                                           plan.writes[i + 1:])
                        continue
                    view = written
                elif isinstance(write, SetFloors):
                    self._set_floors(write)
                elif isinstance(write, SaveState):
                    saved = self._save_state(write) or saved
                elif isinstance(write, RecordEvent) and self.events is not None:
                    self.events.record(view.ref, write.reason, write.message, write.type)
            except NotLeader as exc:
                # The lease ran out or was taken: this write was not sent, nor are the ones after it.
                return Applied("standby", view, saved, str(exc), plan.writes[i:])
        return Applied("done", view, saved)

    def write_router(self, view: RouterView, write: WriteRouter) -> RouterView | None:
        """Write with optimistic concurrency; None if the router changed under us.

        The write carries the resourceVersion that was read. A 409 is not a transient error to
        retry (Kube retries those) but news that someone else wrote: the router is read again,
        and only if its weights are still the ones this plan was made from (someone changed only
        annotations, or our own earlier attempt landed) is the write made once more, on the new
        resourceVersion; otherwise, or on a second 409, the plan is dropped and the next
        reconcile decides on what is there. NotLeader propagates."""
        expected = dict(view.weights)
        for attempt in (1, 2):
            try:
                new = self.router.write(view, write.weights, write.annotations)
                self.metrics.patches.labels("router").inc()
                self.metrics.observe_router(new.weights, new.paused)
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

    def _set_floors(self, write: SetFloors) -> None:
        if self.floors is None:
            return
        try:
            changed = self.floors.apply(write.targets)
        except NotLeader:
            raise
        except Exception as exc:  # floors help; they must not block the weights
            self.metrics.errors.labels("prewarm").inc()
            log.warning("pre-warm failed: %s", describe(exc))
            return
        for name, (old, new) in changed.items():
            self.metrics.patches.labels("prewarm").inc()
            log.info("floor: %s min-scale %s -> %d", name, old, new)

    def _save_state(self, write: SaveState) -> dict | None:
        """The record saved, or None when it could not be (the next reconcile saves it again)."""
        if self.state_store is None:
            return None
        try:
            self.state_store.save(write.record)
        except NotLeader:
            raise  # fenced like every write: the reconcile stops and stands by
        except Exception as exc:
            self.metrics.errors.labels("state").inc()
            log.warning("could not save the state: %s", describe(exc))
            return None
        self.metrics.patches.labels("state").inc()
        return dict(write.record)
