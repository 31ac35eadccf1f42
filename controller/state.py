"""What a strategy needs to continue after a restart, and where it is kept: a ConfigMap.

A controller that is killed (or loses the Lease) in the middle of a failover must not change a
weight or a floor that the outage does not call for when it, or another replica, starts again.
So everything :func:`controller.policy.decide` carries from one decision to the next is written
to a ConfigMap next to the router (``state.json``) and read back on the first reconcile as
leader: the mode and since when, the headroom clock, the proportional pre-warm hold, the
merit-order floors with their hold timers, the last plan (the base of the demand estimate when
Prometheus is down), the recent measured demand (the base of the slope that pre-warm extrapolates,
``prewarm.slope_horizon``), and the weights and floors that were applied.

Why a ConfigMap and not the router's annotations: KServe copies an InferenceGraph's annotations
into the router's Knative revision template (``createKnativeService(graph.ObjectMeta, ...)`` in
kserve pkg/controller/v1alpha1/inferencegraph), so every annotation edit rolls out a new router
revision. A ConfigMap write has no side effect.

Hold timers are stored as transitions (``math.inf`` while a floor is still wanted; see
:class:`controller.policy.PolicyState`), so the ConfigMap is only written when something a
restart would need changes, not on every decision. The plan, the decision time and the demand
history change every decision and are written along with the next real change only (samples older
than ``prewarm.slope_window_s`` are dropped by the first decision after a restart).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

from kubernetes.client.exceptions import ApiException

from controller.kube import Kube
from controller.policy import CAPACITY, COST, PolicyState

log = logging.getLogger(__name__)

KEY = "state.json"
VERSION = 1
# Written with the next real change only: they move on every decision.
VOLATILE = ("planned", "decided_at", "saved_at", "demand_history", "demand_rises")


def encode_time(value: float | None) -> float | str | None:
    """Epoch seconds for JSON; a hold that lasts while its trigger does (math.inf) is "held"."""
    if value is None:
        return None
    return "held" if value == math.inf else round(float(value), 3)


def decode_time(value: Any) -> float | None:
    """The inverse of :func:`encode_time`; None for anything else."""
    if value == "held":
        return math.inf
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def encode_state(state: PolicyState, applied_floors: Mapping[str, int] | None = None) -> dict:
    """The JSON-safe record of ``state`` (``math.inf`` hold timers as "held")."""
    return {
        "version": VERSION,
        "mode": state.mode,
        "since": encode_time(state.since),
        "cost_headroom_since": encode_time(state.cost_headroom_since),
        "prewarm_until": encode_time(state.prewarm_until),
        "short_capacity": {k: float(v) for k, v in sorted(state.short_capacity.items())},
        "floors": {k: [int(v), encode_time(u)] for k, (v, u) in sorted(state.floors.items())},
        "weights": {k: int(v) for k, v in state.weights.items()},
        "applied_floors": {k: int(v) for k, v in sorted((applied_floors or {}).items())},
        "planned": {k: round(float(v), 3) for k, v in sorted(state.planned.items())},
        "decided_at": encode_time(state.decided_at),
        "demand_history": [[round(float(t), 3), round(float(d), 3)] for t, d in state.demand_history],
        "demand_rises": [[round(float(t), 3), round(float(r), 4)] for t, r in state.demand_rises],
    }


def change_key(record: Mapping) -> dict:
    """The part of a record whose change must be written (everything but the volatile fields)."""
    return {k: v for k, v in record.items() if k not in VOLATILE}


def decode_state(
    record: Mapping, names: Sequence[str], weights: Mapping[str, int], now: float, interval_s: float
) -> PolicyState | None:
    """The state a record describes, with the router's ``weights`` (the truth about what is in
    effect); None if the record is not one this version wrote.

    The last decision before the restart was at most one interval before ``now`` (the previous
    controller decided every interval until it stopped): a floor that was still wanted is held
    from then, never from an older time, so it does not come down early.
    """
    if not isinstance(record, Mapping) or record.get("version") != VERSION:
        return None
    mode = record.get("mode")
    since = decode_time(record.get("since"))
    if mode not in (COST, CAPACITY) or since is None:
        return None
    floors: dict[str, tuple[int, float]] = {}
    for name, value in (record.get("floors") or {}).items():
        if name in names and isinstance(value, list) and len(value) == 2 and isinstance(value[0], int):
            until = decode_time(value[1])
            floors[name] = (value[0], until if until is not None else math.inf)
    decided = decode_time(record.get("decided_at"))
    last = now - interval_s if decided is None else max(decided, now - interval_s)
    return PolicyState(
        mode=mode,
        since=min(since, now),
        cost_headroom_since=decode_time(record.get("cost_headroom_since")),
        weights=dict(weights),
        prewarm_until=decode_time(record.get("prewarm_until")),
        short_capacity={k: float(v) for k, v in (record.get("short_capacity") or {}).items()
                        if k in names and decode_time(v) is not None},
        floors=floors,
        planned={k: float(v) for k, v in (record.get("planned") or {}).items()
                 if k in names and decode_time(v) is not None},
        decided_at=min(last, now),
        demand_history=_decode_history(record.get("demand_history"), now),
        demand_rises=_decode_history(record.get("demand_rises"), now),
    )


def _decode_history(value: Any, now: float) -> tuple[tuple[float, float], ...]:
    """(time, value >= 0) samples (demand, or demand rises), oldest first, none from after ``now``;
    malformed entries are skipped."""
    samples = []
    for item in value if isinstance(value, list) else []:
        if isinstance(item, list) and len(item) == 2:
            t, d = decode_time(item[0]), decode_time(item[1])
            if t is not None and d is not None and d >= 0 and t <= now:
                samples.append((t, d))
    return tuple(sorted(samples))


class ConfigMapStateStore:
    """``state.json`` in one ConfigMap, created on the first save, then merge-patched with the
    resourceVersion that was read (a concurrent writer gets 409 rather than a lost update).

    Reads and writes go through :class:`Kube` like every other call: its one retry policy, and
    its fence before each write attempt (a replica that lost the Lease raises NotLeader and
    writes nothing)."""

    def __init__(self, kube: Kube, namespace: str, name: str) -> None:
        self.kube = kube
        self.namespace = namespace
        self.name = name
        self._resource_version: str | None = None

    def load(self) -> dict | None:
        obj = self.kube.get_configmap(self.namespace, self.name)
        if obj is None:
            self._resource_version = None
            return None
        self._resource_version = (obj.get("metadata") or {}).get("resourceVersion")
        raw = (obj.get("data") or {}).get(KEY)
        try:
            data = json.loads(raw) if raw else None
        except ValueError:
            log.warning("ConfigMap %s/%s: %s is not JSON; ignoring it", self.namespace, self.name, KEY)
            return None
        return data if isinstance(data, dict) else None

    def save(self, record: Mapping) -> None:
        text = json.dumps(record, separators=(",", ":"), sort_keys=True)
        if self._resource_version is None:
            try:
                obj = self.kube.create_configmap(self.namespace, {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "metadata": {
                        "name": self.name,
                        "namespace": self.namespace,
                        "labels": {"app.kubernetes.io/name": "inference-traffic-controller"},
                    },
                    "data": {KEY: text},
                })
                self._resource_version = (obj.get("metadata") or {}).get("resourceVersion")
                return
            except ApiException as exc:
                if exc.status != 409:
                    raise
                self.load()  # it exists already: patch it below
        patch = {"metadata": {"resourceVersion": self._resource_version}, "data": {KEY: text}}
        try:
            obj = self.kube.patch_configmap(self.namespace, self.name, patch)
        except ApiException as exc:
            if exc.status in (404, 409):
                self._resource_version = None  # re-read (or re-create) on the next save
            raise
        self._resource_version = (obj.get("metadata") or {}).get("resourceVersion")
