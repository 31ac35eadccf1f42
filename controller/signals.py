"""Signal sources: what the policy needs to know about each unit, read from the cluster.

Everything the policy consumes is a :class:`controller.policy.Signals`. Sources sit behind two
small protocols so others (CloudWatch through boto3, a recorded trace) can be added:

* :class:`SignalSource` -- ``read(now) -> Signals`` for all units;
* :class:`DemandSource` -- ``demand_rps(now) -> float`` (total request rate).

:class:`KubernetesSignals` reads, per unit:

* ready replicas -- pods labelled ``serving.kserve.io/inferenceservice=<name>`` whose Ready
  condition is True, counted as 0 when the InferenceService's own Ready condition is False;
* pending replicas -- pods in phase Pending; unschedulable replicas -- those whose PodScheduled
  condition has been False/Unschedulable for longer than ``timing.pending_grace_s``;
* desired replicas -- the Knative PodAutoscaler's ``status.desiredScale`` (KPA), else the
  predictor Deployment's ``spec.replicas`` (raw deployment mode), else the number of live pods;
* capacity errors -- Warning events with reason ``InsufficientCapacityError`` in the last
  ``timing.capacity_error_window_s`` (listed in ``default``, where events about cluster-scoped
  NodeClaims/NodePools are recorded, and in the units' namespaces) attributed to the unit's
  NodePool (NodeClaims are named ``<nodepool>-<suffix>`` and labelled ``karpenter.sh/nodepool``)
  or to the unit's own pods, plus the NodePool's NodeClaims whose ``Launched`` condition is False;
* interrupting replicas -- live pods with a Warning event ``SpotInterrupted`` in the window. On an
  EC2 spot interruption warning (2 minutes ahead), Karpenter's interruption controller records
  that event on the NodeClaim, the Node and every pod on the node, then deletes the NodeClaim
  (taint ``karpenter.sh/disrupted:NoSchedule``, drain): ``SpotInterrupted(pods, node, nodeClaim)``
  in aws/karpenter-provider-aws pkg/controllers/interruption/events. The simulator raises the same
  signal ``spot_notice_s`` before a spot unit loses capacity.

Demand comes from the configured :class:`DemandSource` (Prometheus); when there is none, or it
fails, ``demand_rps`` is None and the policy estimates demand from the desired replicas. A query
that matches no series is reported as such (``Signals.demand_no_series``), not as zero demand:
the policy decides whether that is idleness or a missing metric.

Each source degrades on its own, so one failing list call does not blind the controller: ready
replicas fall back from the pods to the PodAutoscaler's ``status.actualScale`` (Knative's KPA
writes the ready pod count there: ``computeStatus`` in knative/serving
pkg/reconciler/autoscaling/kpa/kpa.go), a failed InferenceService read leaves its Ready
condition out, and failed event/NodeClaim lists count no capacity errors (pods unschedulable
past the grace period still show a shortage). A unit whose ready replicas cannot be read from
any source is left out of the signals; the policy then holds what it cannot see and still takes
traffic off the units it can see have no ready replica. Only when no unit can be read at all does
:meth:`KubernetesSignals.read` raise.
"""

from __future__ import annotations

import json
import logging
import math
import string
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Protocol

from controller.config import ControllerConfig, Prometheus, Unit
from controller.kube import KARPENTER, KNATIVE_PA, Kube, NotFound, describe
from controller.policy import Signals, UnitSignals

log = logging.getLogger(__name__)

ISVC_LABEL = "serving.kserve.io/inferenceservice"
NODEPOOL_LABEL = "karpenter.sh/nodepool"
ICE_REASON = "InsufficientCapacityError"
SPOT_INTERRUPTED_REASON = "SpotInterrupted"  # Karpenter interruption controller, per pod on the node
EVENTS_NAMESPACE = "default"  # where Kubernetes records events about cluster-scoped objects


class SignalError(Exception):
    """A signal could not be read."""


class NoSeries(SignalError):
    """The demand query matched no series (a missing metric, or nothing ever served)."""


class SignalSource(Protocol):
    def read(self, now: float) -> Signals: ...


class DemandSource(Protocol):
    def demand_rps(self, now: float) -> float: ...


def parse_time(value: str | None) -> float | None:
    """RFC 3339 (Time or MicroTime) to epoch seconds."""
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _condition(obj: dict, kind: str) -> dict | None:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == kind:
            return c
    return None


def pod_counts(pods: Iterable[dict], now: float, grace_s: float) -> tuple[int, int, int, int]:
    """(live, ready, pending, unschedulable past the grace period) for one unit's pods."""
    live = ready = pending = unschedulable = 0
    for p in pods:
        meta = p.get("metadata") or {}
        phase = (p.get("status") or {}).get("phase")
        if meta.get("deletionTimestamp") or phase in ("Succeeded", "Failed"):
            continue
        live += 1
        rc = _condition(p, "Ready")
        if phase == "Running" and rc is not None and rc.get("status") == "True":
            ready += 1
        if phase == "Pending":
            pending += 1
            sc = _condition(p, "PodScheduled")
            if sc is not None and sc.get("status") == "False" and sc.get("reason") == "Unschedulable":
                since = parse_time(sc.get("lastTransitionTime")) or parse_time(meta.get("creationTimestamp"))
                if since is not None and now - since > grace_s:
                    unschedulable += 1
    return live, ready, pending, unschedulable


def event_time(ev: dict) -> float | None:
    series = ev.get("series") or {}
    for value in (
        series.get("lastObservedTime"),
        ev.get("lastTimestamp"),
        ev.get("eventTime"),
        ev.get("firstTimestamp"),
        (ev.get("metadata") or {}).get("creationTimestamp"),
    ):
        t = parse_time(value)
        if t is not None:
            return t
    return None


def nodepool_of(name: str, pools: Iterable[str], claim_pools: dict[str, str]) -> str | None:
    """NodePool of a NodeClaim: its label when the claim still exists, else the longest name prefix."""
    if name in claim_pools:
        return claim_pools[name]
    best = None
    for pool in pools:
        if name.startswith(pool + "-") and (best is None or len(pool) > len(best)):
            best = pool
    return best


def _prometheus_error(exc: urllib.error.HTTPError) -> str:
    """The ``error`` Prometheus puts in the body of a failed query (e.g. the PromQL parse error)."""
    try:
        body = json.loads(exc.read() or b"{}")
    except (ValueError, OSError):
        return str(exc.reason)
    return f"{body.get('errorType', '')}: {body.get('error', exc.reason)}" if isinstance(body, dict) else str(exc.reason)


class PrometheusDemand:
    """Total request rate from a Prometheus instant query (``/api/v1/query``)."""

    def __init__(
        self,
        prom: Prometheus,
        namespace: str,
        names: Iterable[str],
        opener: Callable[..., object] = urllib.request.urlopen,
        router: str = "",
    ) -> None:
        self.prom = prom
        self.query = string.Template(prom.query).safe_substitute(
            namespace=namespace, names="|".join(sorted(names)), router=router
        )
        self.opener = opener

    def demand_rps(self, now: float) -> float:
        url = f"{self.prom.url}/api/v1/query?" + urllib.parse.urlencode({"query": self.query})
        try:
            with self.opener(url, timeout=self.prom.timeout_s) as resp:  # type: ignore[attr-defined]
                body = json.loads(resp.read())
        except urllib.error.HTTPError as exc:  # 400 (bad query), 422 (cannot execute), 503 ...
            raise SignalError(f"prometheus query failed: HTTP {exc.code}: {_prometheus_error(exc)}") from exc
        except Exception as exc:
            raise SignalError(f"prometheus query failed: {exc}") from exc
        if not isinstance(body, dict) or body.get("status") != "success":
            raise SignalError(f"prometheus query failed: {body.get('error') if isinstance(body, dict) else body!r}")
        data = body.get("data") or {}
        result = data.get("result")
        if data.get("resultType") == "scalar" and isinstance(result, list):
            result = [{"value": result}]
        if not result:
            raise NoSeries(f"prometheus query matched no series: {self.query}")
        try:
            values = [float(r["value"][1]) for r in result]
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise SignalError(f"prometheus returned an unexpected result: {result!r}") from exc
        total = sum(values)
        if not math.isfinite(total) or any(v < 0 for v in values):
            raise SignalError(f"prometheus returned a rate that is not a finite number >= 0: {values!r}")
        return total


class KubernetesSignals:
    """Reads :class:`Signals` for every configured unit through the Kubernetes API."""

    def __init__(
        self,
        config: ControllerConfig,
        kube: Kube,
        demand: DemandSource | None = None,
        on_error: Callable[[str, BaseException], None] | None = None,
    ) -> None:
        self.config = config
        self.kube = kube
        self.demand = demand
        self.on_error = on_error or (lambda source, exc: None)
        # Events about cluster-scoped objects (NodeClaims, NodePools) are recorded in "default";
        # events about the units' pods in the units' namespaces. Listing only these keeps RBAC to Roles.
        self.event_namespaces = sorted({EVENTS_NAMESPACE} | {u.namespace for u in config.units})
        self._has_kpa = True
        self._has_nodeclaims = True
        self.last_demand_error: str | None = None
        self.degraded: list[str] = []  # sources that failed in the last read (decided without them)

    def _isvc_ready(self, unit: Unit) -> bool:
        obj = self.kube.get_custom("serving.kserve.io", "v1beta1", unit.namespace, "inferenceservices", unit.name)
        if obj is None:
            raise SignalError(f"InferenceService {unit.namespace}/{unit.name} not found")
        cond = _condition(obj, "Ready")
        return cond is None or cond.get("status") != "False"

    def _autoscaler(self, unit: Unit) -> tuple[int, int] | None:
        """(desiredScale, actualScale) summed over the unit's KPA PodAutoscalers; None without any."""
        if not self._has_kpa:
            return None
        try:
            pas = self.kube.list_custom(
                *KNATIVE_PA, "podautoscalers", namespace=unit.namespace, label_selector=f"{ISVC_LABEL}={unit.name}"
            )
        except NotFound:
            self._has_kpa = False  # Knative not installed: raw deployment mode
            return None
        desired = actual = 0
        found = False
        for pa in pas:
            status = pa.get("status") or {}
            want, have = status.get("desiredScale"), status.get("actualScale")
            if isinstance(want, int | float) and want >= 0:
                found = True
                desired += int(want)
                actual += int(have) if isinstance(have, int | float) and have >= 0 else 0
        return (desired, actual) if found else None

    def _desired(self, unit: Unit, live_pods: int, autoscaler: tuple[int, int] | None) -> int:
        """The KPA's desiredScale, else the predictor Deployment's replicas (raw mode), else live pods."""
        if autoscaler is not None:
            return autoscaler[0]
        selector = f"{ISVC_LABEL}={unit.name}"
        deps = self.kube.list_deployments(unit.namespace, selector)
        replicas = [(d.get("spec") or {}).get("replicas") for d in deps]
        replicas = [int(r) for r in replicas if isinstance(r, int)]
        if replicas:
            return sum(replicas)
        return live_pods

    def _degrade(self, what: str, exc: BaseException) -> None:
        self.degraded.append(f"{what}: {describe(exc)}")
        log.warning("%s failed, deciding without it: %s", what, describe(exc))
        self.on_error("kubernetes", exc)

    def _unit(self, u: Unit, now: float, per_pool: dict[str, int], per_pod: dict[str, int],
              interrupted: frozenset[str] = frozenset()) -> UnitSignals | None:
        """One unit's signals from whatever can be read; None when its ready replicas cannot be."""
        pods: list[dict] | None
        try:
            pods = self.kube.list_pods(u.namespace, f"{ISVC_LABEL}={u.name}")
        except Exception as exc:
            self._degrade(f"list pods of {u.name}", exc)
            pods = None
        try:
            autoscaler = self._autoscaler(u)
        except Exception as exc:
            self._degrade(f"list PodAutoscalers of {u.name}", exc)
            autoscaler = None
        if pods is not None:
            live, ready, pending, unschedulable = pod_counts(pods, now, self.config.timing.pending_grace_s)
        elif autoscaler is not None:  # the KPA counts the ready pods too
            live = ready = autoscaler[1]
            pending, unschedulable = max(0, autoscaler[0] - ready), 0
        else:
            return None
        try:
            if not self._isvc_ready(u):
                ready = 0
        except Exception as exc:
            self._degrade(f"get InferenceService {u.name}", exc)
        try:
            desired = self._desired(u, live, autoscaler)
        except Exception as exc:
            self._degrade(f"list Deployments of {u.name}", exc)
            desired = live
        errors = per_pool.get(u.nodepool, 0) if u.nodepool else 0
        errors += sum(per_pod.get(f"{u.namespace}/{p['metadata']['name']}", 0) for p in pods or [])
        noticed = sum(1 for p in pods or [] if f"{u.namespace}/{p['metadata']['name']}" in interrupted
                      and not (p.get("metadata") or {}).get("deletionTimestamp")
                      and (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed"))
        return UnitSignals(
            ready_replicas=ready,
            desired_replicas=desired,
            pending_replicas=pending,
            unschedulable_replicas=unschedulable,
            capacity_errors=errors,
            interrupting_replicas=noticed,
        )

    def _spot_interrupted(self, now: float) -> frozenset[str]:
        """``namespace/name`` of pods with a SpotInterrupted Warning event in the window."""
        window = self.config.timing.capacity_error_window_s
        out: set[str] = set()
        for ns in sorted({u.namespace for u in self.config.units}):
            for ev in self.kube.list_events(ns, f"reason={SPOT_INTERRUPTED_REASON},type=Warning"):
                t = event_time(ev)
                obj = ev.get("involvedObject") or {}
                if t is None or now - t > window or obj.get("kind") != "Pod":
                    continue
                out.add(f"{obj.get('namespace') or ns}/{obj.get('name') or ''}")
        return frozenset(out)

    def _capacity_errors(self, now: float) -> tuple[dict[str, int], dict[str, int]]:
        """(errors per NodePool, errors per pod name) in the window."""
        window = self.config.timing.capacity_error_window_s
        pools = {u.nodepool for u in self.config.units if u.nodepool}
        claim_pools: dict[str, str] = {}
        per_pool: dict[str, int] = {}
        if pools and self._has_nodeclaims:
            try:
                claims = self.kube.list_custom(*KARPENTER, "nodeclaims")
                for c in claims:
                    pool = ((c.get("metadata") or {}).get("labels") or {}).get(NODEPOOL_LABEL)
                    if not pool:
                        continue
                    claim_pools[c["metadata"]["name"]] = pool
                    launched = _condition(c, "Launched")
                    if pool in pools and launched is not None and launched.get("status") == "False":
                        per_pool[pool] = per_pool.get(pool, 0) + 1
            except NotFound:
                self._has_nodeclaims = False  # Karpenter not installed
        events: list[dict] = []
        for ns in self.event_namespaces:
            events += self.kube.list_events(ns, f"reason={ICE_REASON},type=Warning")
        per_pod: dict[str, int] = {}
        for ev in events:
            t = event_time(ev)
            if t is None or now - t > window:
                continue
            obj = ev.get("involvedObject") or {}
            kind, name = obj.get("kind"), obj.get("name") or ""
            if kind == "Pod":
                key = f"{obj.get('namespace') or (ev.get('metadata') or {}).get('namespace')}/{name}"
                per_pod[key] = per_pod.get(key, 0) + 1
                continue
            pool = name if kind == "NodePool" else nodepool_of(name, pools, claim_pools)
            if pool in pools:
                per_pool[pool] = per_pool.get(pool, 0) + 1
        return per_pool, per_pod

    def read(self, now: float) -> Signals:
        """All units' signals observed at ``now``, from whatever sources answer (see the module
        docstring). Raises only when no unit's ready replicas can be read."""
        self.degraded = []
        try:
            per_pool, per_pod = self._capacity_errors(now)
        except Exception as exc:
            self._degrade("capacity errors (events, NodeClaims)", exc)
            per_pool, per_pod = {}, {}
        try:
            interrupted = self._spot_interrupted(now)
        except Exception as exc:
            self._degrade("spot interruption events", exc)
            interrupted = frozenset()
        units: dict[str, UnitSignals] = {}
        for u in self.config.units:
            unit = self._unit(u, now, per_pool, per_pod, interrupted)
            if unit is not None:
                units[u.name] = unit
        if not units:
            raise SignalError("no unit's ready replicas could be read: " + "; ".join(self.degraded))
        demand, no_series = None, False
        if self.demand is not None:
            try:
                # requests/s from Prometheus, in the config's throughput unit
                demand = float(self.demand.demand_rps(now)) * self.config.per_second
                self.last_demand_error = None
            except NoSeries as exc:
                demand, no_series = 0.0, True
                self.last_demand_error = str(exc)
                log.warning("%s", exc)
            except Exception as exc:
                self.last_demand_error = str(exc)
                log.warning("demand source failed, estimating demand from the autoscaler: %s", describe(exc))
                self.on_error("prometheus", exc)
        return Signals(at=now, units=units, demand_rps=demand, demand_no_series=no_series,
                       demand_error=self.last_demand_error if demand is None else None)
