"""Leader election with a ``coordination.k8s.io/v1`` Lease, so two replicas never both act.

The algorithm follows client-go's leader election:

* No Lease: create it holding it. A 409 on create means another replica won the race.
* We hold it: renew (PUT with the resourceVersion we read; a 409 means we lost it).
* Someone else holds it: take it over only when its record (holder, renewTime) has not changed
  for ``leaseDurationSeconds`` as measured by *our* clock since we first saw that record, so
  clock skew between replicas does not matter. An empty holder (released) is free at once.

A leader considers itself leader only until ``duration_s - renew_s`` after its last successful
renewal, which is earlier than any other replica may take over; a leader that cannot reach the
API server therefore stops acting before another one starts.

Expiry is measured on the monotonic clock (a wall-clock step must not extend or cut a lease);
``renewTime``/``acquireTime`` are written from the wall clock as ``metav1.MicroTime``, as
Kubernetes and other replicas read them. :meth:`LeaseElector.run` renews on its own thread, so a
slow reconcile does not lose the lease, and :meth:`LeaseElector.fence` is checked before every
write the controller makes (``Kube.fence``): the Lease must still name this replica with the
renewTime it last wrote, else the write is refused (:class:`controller.kube.NotLeader`).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

from controller.config import Lease
from controller.kube import Kube, NotLeader, describe, is_conflict

log = logging.getLogger(__name__)


def micro_time(ts: float) -> str:
    """metav1.MicroTime: RFC 3339 with exactly six fractional digits."""
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def default_identity() -> str:
    base = os.environ.get("POD_NAME") or socket.gethostname()
    return f"{base}_{uuid.uuid4().hex[:6]}"


class LeaseElector:
    def __init__(
        self,
        kube: Kube,
        lease: Lease,
        identity: str,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.kube = kube
        self.lease = lease
        self.identity = identity
        self.clock = clock  # monotonic: every expiry decision
        self.wall = wall  # renewTime / acquireTime only
        self._lock = threading.RLock()  # tick (timer thread) vs fence (reconcile thread)
        self._renewed_at: float | None = None  # our last successful acquire/renew (monotonic)
        self._written: str | None = None  # the renewTime of our last successful write
        self._observed: tuple[str | None, str | None] | None = None  # (holder, renewTime) last seen
        self._observed_at = 0.0
        self.transitions = 0
        self.api_reachable = False  # the last tick got an answer from the API server

    @property
    def is_leader(self) -> bool:
        renewed = self._renewed_at
        if renewed is None:
            return False
        return self.clock() - renewed < self.lease.duration_s - self.lease.renew_s

    def fence(self) -> None:
        """Raise :class:`NotLeader` unless this replica may write now.

        Checked before every write attempt: leadership must not have expired on our monotonic
        clock, and the Lease must still carry our identity and the renewTime we last wrote (so a
        Lease taken by another holder stops our writes at once, not at our next renewal). A
        failure to read the Lease is raised as is (transient errors are retried by the caller's
        policy, which fences again)."""
        with self._lock:
            if not self.is_leader:
                raise NotLeader(f"{self.identity} does not hold lease {self.lease.namespace}/{self.lease.name}")
            current = self.kube.get_lease(self.lease.namespace, self.lease.name)
            spec = (current or {}).get("spec") or {}
            holder, renewed = spec.get("holderIdentity"), spec.get("renewTime")
            if holder != self.identity or renewed != self._written:
                self._observed, self._observed_at = (holder or None, renewed), self.clock()
                self._lost(f"lease now held by {holder or 'nobody'} (renewTime {renewed})")
                raise NotLeader(f"lease {self.lease.namespace}/{self.lease.name} is held by {holder or 'nobody'}")

    def run(self, stop: threading.Event, on_tick: Callable[[bool], None] | None = None) -> threading.Thread:
        """Acquire/renew every ``renew_s`` on a daemon thread until ``stop`` is set."""

        def loop() -> None:
            while not stop.is_set():
                leader = self.tick()
                if on_tick is not None:
                    on_tick(leader)
                stop.wait(self.lease.renew_s)

        thread = threading.Thread(target=loop, name=f"lease-{self.lease.name}", daemon=True)
        thread.start()
        return thread

    def holder(self) -> str | None:
        return self._observed[0] if self._observed else None

    def _body(self, acquire: bool, current: dict | None) -> dict:
        stamp = micro_time(self.wall())
        spec = dict((current or {}).get("spec") or {})
        spec["holderIdentity"] = self.identity
        spec["leaseDurationSeconds"] = int(max(1, round(self.lease.duration_s)))
        spec["renewTime"] = stamp
        if acquire:
            spec["acquireTime"] = stamp
            spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + (1 if current else 0)
        meta = {"name": self.lease.name, "namespace": self.lease.namespace}
        if current:
            meta["resourceVersion"] = current["metadata"]["resourceVersion"]
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta, "spec": spec}

    def tick(self) -> bool:
        """Try to acquire or renew. Returns whether we are leader now. Never raises on API errors."""
        with self._lock:
            return self._tick()

    def _tick(self) -> bool:
        now = self.clock()  # taken before the request: the lease is ours from no later than this
        ns, name = self.lease.namespace, self.lease.name
        try:
            current = self.kube.get_lease(ns, name)
            self.api_reachable = True
            if current is None:
                written = self.kube.create_lease(ns, self._body(acquire=True, current=None))
                self._won(now, written, "created the lease")
                return True
            spec = current.get("spec") or {}
            holder = spec.get("holderIdentity") or None
            record = (holder, spec.get("renewTime"))
            if record != self._observed:
                self._observed, self._observed_at = record, now
            if holder == self.identity and (self._renewed_at is not None or spec.get("renewTime") == self._written):
                written = self.kube.replace_lease(ns, name, self._body(acquire=False, current=current))
                self._won(now, written, "renewed")
                return True
            duration = float(spec.get("leaseDurationSeconds") or self.lease.duration_s)
            if holder is None or now - self._observed_at >= duration:
                written = self.kube.replace_lease(ns, name, self._body(acquire=True, current=current))
                self._won(now, written, f"took over from {holder or 'nobody'}")
                return True
            self._lost(f"held by {holder}")
            return False
        except Exception as exc:
            if is_conflict(exc):
                self._lost("lost a write race (409)")
                return False
            self.api_reachable = False
            log.warning("lease %s/%s: %s", ns, name, describe(exc))
            if not self.is_leader:
                self._renewed_at = None
            return self.is_leader

    def _won(self, now: float, written: dict, how: str) -> None:
        if self._renewed_at is None or not self.is_leader:
            self.transitions += 1
            log.info("lease %s/%s: %s is leader (%s)", self.lease.namespace, self.lease.name, self.identity, how)
        self._renewed_at = now
        self._written = (written.get("spec") or {}).get("renewTime")
        self._observed = (self.identity, self._written)
        self._observed_at = now

    def _lost(self, why: str) -> None:
        if self._renewed_at is not None:
            log.info(
                "lease %s/%s: %s is no longer leader (%s)", self.lease.namespace, self.lease.name, self.identity, why
            )
        self._renewed_at = None

    def release(self) -> None:
        """Give the lease up (on shutdown) so a standby takes over at once."""
        if self._renewed_at is None:
            return
        ns, name = self.lease.namespace, self.lease.name
        try:
            current = self.kube.get_lease(ns, name)
            if current and (current.get("spec") or {}).get("holderIdentity") == self.identity:
                body = self._body(acquire=False, current=current)
                body["spec"]["holderIdentity"] = None
                body["spec"]["leaseDurationSeconds"] = 1
                self.kube.replace_lease(ns, name, body)
                log.info("lease %s/%s: released by %s", ns, name, self.identity)
        except Exception as exc:
            log.warning("lease %s/%s: release failed: %s", ns, name, describe(exc))
        self._renewed_at = None
