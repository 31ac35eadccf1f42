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
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

from controller.config import Lease
from controller.kube import Kube, describe, is_conflict

log = logging.getLogger(__name__)


def micro_time(ts: float) -> str:
    """metav1.MicroTime: RFC 3339 with exactly six fractional digits."""
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def default_identity() -> str:
    base = os.environ.get("POD_NAME") or socket.gethostname()
    return f"{base}_{uuid.uuid4().hex[:6]}"


class LeaseElector:
    def __init__(self, kube: Kube, lease: Lease, identity: str, clock: Callable[[], float] = time.time) -> None:
        self.kube = kube
        self.lease = lease
        self.identity = identity
        self.clock = clock
        self._renewed_at: float | None = None  # our last successful acquire/renew (our clock)
        self._observed: tuple[str | None, str | None] | None = None  # (holder, renewTime) last seen
        self._observed_at = 0.0
        self.transitions = 0
        self.api_reachable = False  # the last tick got an answer from the API server

    @property
    def is_leader(self) -> bool:
        if self._renewed_at is None:
            return False
        return self.clock() - self._renewed_at < self.lease.duration_s - self.lease.renew_s

    def holder(self) -> str | None:
        return self._observed[0] if self._observed else None

    def _body(self, now: float, acquire: bool, current: dict | None) -> dict:
        spec = dict((current or {}).get("spec") or {})
        spec["holderIdentity"] = self.identity
        spec["leaseDurationSeconds"] = int(max(1, round(self.lease.duration_s)))
        spec["renewTime"] = micro_time(now)
        if acquire:
            spec["acquireTime"] = micro_time(now)
            spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + (1 if current else 0)
        meta = {"name": self.lease.name, "namespace": self.lease.namespace}
        if current:
            meta["resourceVersion"] = current["metadata"]["resourceVersion"]
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta, "spec": spec}

    def tick(self) -> bool:
        """Try to acquire or renew. Returns whether we are leader now. Never raises on API errors."""
        now = self.clock()
        ns, name = self.lease.namespace, self.lease.name
        try:
            current = self.kube.get_lease(ns, name)
            self.api_reachable = True
            if current is None:
                self.kube.create_lease(ns, self._body(now, acquire=True, current=None))
                self._won(now, "created the lease")
                return True
            spec = current.get("spec") or {}
            holder = spec.get("holderIdentity") or None
            record = (holder, spec.get("renewTime"))
            if record != self._observed:
                self._observed, self._observed_at = record, now
            if holder == self.identity:
                self.kube.replace_lease(ns, name, self._body(now, acquire=False, current=current))
                self._renewed_at = now
                return True
            duration = float(spec.get("leaseDurationSeconds") or self.lease.duration_s)
            if holder is None or now - self._observed_at >= duration:
                self.kube.replace_lease(ns, name, self._body(now, acquire=True, current=current))
                self._won(now, f"took over from {holder or 'nobody'}")
                return True
            self._lost(f"held by {holder}")
            return False
        except Exception as exc:
            if is_conflict(exc):
                self._lost("lost a write race (409)")
                return False
            self.api_reachable = False
            log.warning("lease %s/%s: %s", ns, name, describe(exc))
            return self.is_leader

    def _won(self, now: float, how: str) -> None:
        if self._renewed_at is None or not self.is_leader:
            self.transitions += 1
            log.info("lease %s/%s: %s is leader (%s)", self.lease.namespace, self.lease.name, self.identity, how)
        self._renewed_at = now
        self._observed = (self.identity, micro_time(now))
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
                body = self._body(self.clock(), acquire=False, current=current)
                body["spec"]["holderIdentity"] = None
                body["spec"]["leaseDurationSeconds"] = 1
                self.kube.replace_lease(ns, name, body)
                log.info("lease %s/%s: released by %s", ns, name, self.identity)
        except Exception as exc:
            log.warning("lease %s/%s: release failed: %s", ns, name, describe(exc))
        self._renewed_at = None
