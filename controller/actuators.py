"""Actuators: write weights to the router, pre-warm minReplicas, record Events.

Routers (select with ``router.kind``):

* :class:`InferenceGraphRouter` -- the KServe InferenceGraph whose root node is a ``Splitter``;
  each unit is the step whose ``serviceName`` (or ``name``) is the unit name, and its
  ``weight`` is edited. Steps that are not configured units are written as 0 (the weights of
  the units sum to 100).
* :class:`HttpRouteRouter` -- the ``backendRefs`` weights of a Gateway API HTTPRoute (a weight
  change is a configuration push, no rollout: the recommended router where a Gateway runs).
* :class:`AlbIngressRouter` -- the ALB ingress ``alb.ingress.kubernetes.io/actions.<action>``
  forward action (the seed's weighted routing); each unit is the target group whose
  ``serviceName`` is the unit's ``service_name`` (default: its name).

Writes are JSON merge patches that carry the ``resourceVersion`` that was read, so a concurrent
edit makes the API server answer 409 instead of silently losing one of the writes. Next to the
weights the controller keeps its bookkeeping in annotations on the router object:

``hw-agnostic-inference.io/applied-weights``   JSON weights the controller last wrote
``hw-agnostic-inference.io/previous-weights``  JSON weights in place before that write
``hw-agnostic-inference.io/state``             JSON {mode, since, prewarm_until} (crash-restart)
``hw-agnostic-inference.io/paused``            "true": hands off the weights
``hw-agnostic-inference.io/paused-reason``     why the controller paused itself
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from controller.config import Router as RouterConfig
from controller.config import Unit
from controller.kube import GATEWAY, KNATIVE, KNATIVE_PA, KSERVE, KSERVE_GRAPH, Kube, NotFound, NotLeader, describe

log = logging.getLogger(__name__)

PREFIX = "hw-agnostic-inference.io/"
APPLIED = PREFIX + "applied-weights"
PREVIOUS = PREFIX + "previous-weights"
STATE = PREFIX + "state"
PAUSED = PREFIX + "paused"
PAUSED_REASON = PREFIX + "paused-reason"
COMPONENT = "inference-traffic-controller"


class RouterError(Exception):
    """The router object is missing or does not match the configured units."""


def _parse_weights(raw: str | None) -> dict[str, int] | None:
    if not raw:
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(data, dict) or not all(isinstance(v, int) for v in data.values()):
        return None
    return {str(k): int(v) for k, v in data.items()}


def dump_weights(weights: Mapping[str, int]) -> str:
    return json.dumps(dict(weights), separators=(",", ":"))


@dataclass
class RouterView:
    """The router as read: current weights per unit plus the controller's annotations."""

    weights: dict[str, int]
    annotations: dict[str, str]
    resource_version: str
    ref: dict  # involvedObject for Events
    obj: dict = field(repr=False, default_factory=dict)
    # Entries for services that are not configured units (e.g. a CPU smoke-test step). The
    # controller owns the whole split, so it writes 0 for them; non-zero means a person set them.
    others: dict[str, int] = field(default_factory=dict)

    @property
    def paused(self) -> bool:
        return str(self.annotations.get(PAUSED, "")).strip().lower() in ("true", "1", "yes")

    @property
    def applied(self) -> dict[str, int] | None:
        return _parse_weights(self.annotations.get(APPLIED))

    @property
    def saved_state(self) -> dict | None:
        raw = self.annotations.get(STATE)
        if not raw:
            return None
        try:
            data = json.loads(raw)
        except ValueError:
            return None
        return data if isinstance(data, dict) else None


class Router(Protocol):
    def read(self) -> RouterView: ...

    def write(
        self, view: RouterView, weights: Mapping[str, int] | None, annotations: Mapping[str, str | None]
    ) -> RouterView: ...


def _ref(obj: dict) -> dict:
    meta = obj.get("metadata") or {}
    return {
        "apiVersion": obj.get("apiVersion"),
        "kind": obj.get("kind"),
        "name": meta.get("name"),
        "namespace": meta.get("namespace"),
        "uid": meta.get("uid"),
        "resourceVersion": meta.get("resourceVersion"),
    }


def _match(names: Sequence[str], keys: Sequence[str | None], what: str) -> tuple[dict[str, int], dict[str, int]]:
    """(index of each configured unit, index of every other entry) in keys; each unit exactly once."""
    index: dict[str, int] = {}
    others: dict[str, int] = {}
    for i, key in enumerate(keys):
        if key in index:
            raise RouterError(f"{what} has unit {key!r} twice")
        if key in names:
            index[key] = i
        else:
            others[str(key) if key else f"#{i}"] = i
    missing = [n for n in names if n not in index]
    if missing:
        raise RouterError(f"{what} has no entry for unit(s) {', '.join(missing)}")
    return index, others


class InferenceGraphRouter:
    """Weights of the Splitter at ``spec.nodes.root`` of a KServe InferenceGraph."""

    def __init__(self, kube: Kube, router: RouterConfig, units: Sequence[Unit]) -> None:
        self.kube = kube
        self.router = router
        self.names = [u.name for u in units]

    def read(self) -> RouterView:
        r = self.router
        obj = self.kube.get_custom(*KSERVE_GRAPH, r.namespace, "inferencegraphs", r.name)
        if obj is None:
            raise RouterError(f"InferenceGraph {r.namespace}/{r.name} not found")
        root = ((obj.get("spec") or {}).get("nodes") or {}).get("root") or {}
        if root.get("routerType") != "Splitter":
            raise RouterError(
                f"InferenceGraph {r.namespace}/{r.name}: spec.nodes.root.routerType is "
                f"{root.get('routerType')!r}, not Splitter"
            )
        steps = root.get("steps") or []
        index, others = _match(
            self.names,
            [s.get("serviceName") or s.get("name") for s in steps],
            f"InferenceGraph {r.name} spec.nodes.root.steps",
        )
        weights = {n: int(steps[i].get("weight") or 0) for n, i in index.items()}
        meta = obj.get("metadata") or {}
        return RouterView(
            weights=weights,
            annotations=dict(meta.get("annotations") or {}),
            resource_version=meta.get("resourceVersion", ""),
            ref=_ref(obj),
            obj=obj,
            others={k: int(steps[i].get("weight") or 0) for k, i in others.items()},
        )

    def write(
        self, view: RouterView, weights: Mapping[str, int] | None, annotations: Mapping[str, str | None]
    ) -> RouterView:
        patch: dict = {"metadata": {"resourceVersion": view.resource_version, "annotations": dict(annotations)}}
        if weights is not None:
            steps = copy.deepcopy(view.obj["spec"]["nodes"]["root"]["steps"])
            for step in steps:
                step["weight"] = int(weights.get(step.get("serviceName") or step.get("name"), 0))
            patch["spec"] = {"nodes": {"root": {"steps": steps}}}
        r = self.router
        self.kube.patch_custom(*KSERVE_GRAPH, r.namespace, "inferencegraphs", r.name, patch)
        return self.read()


class AlbIngressRouter:
    """Weights of an ALB ingress forward action (``alb.ingress.kubernetes.io/actions.<action>``)."""

    def __init__(self, kube: Kube, router: RouterConfig, units: Sequence[Unit]) -> None:
        self.kube = kube
        self.router = router
        self.names = [u.name for u in units]
        self.service_to_unit = {(u.service_name or u.name): u.name for u in units}
        self.key = f"alb.ingress.kubernetes.io/actions.{router.action}"

    def _groups(self, obj: dict) -> tuple[dict, list[dict]]:
        r = self.router
        raw = ((obj.get("metadata") or {}).get("annotations") or {}).get(self.key)
        if not raw:
            raise RouterError(f"Ingress {r.namespace}/{r.name} has no annotation {self.key}")
        try:
            action = json.loads(raw)
            groups = action["forwardConfig"]["targetGroups"]
            if not isinstance(groups, list):
                raise TypeError("targetGroups is not a list")
        except (ValueError, KeyError, TypeError) as exc:
            raise RouterError(
                f"Ingress {r.namespace}/{r.name} annotation {self.key} is not a forward action "
                f"with forwardConfig.targetGroups: {exc}"
            ) from exc
        return action, groups

    def read(self) -> RouterView:
        r = self.router
        obj = self.kube.get_ingress(r.namespace, r.name)
        if obj is None:
            raise RouterError(f"Ingress {r.namespace}/{r.name} not found")
        obj.setdefault("apiVersion", "networking.k8s.io/v1")
        obj.setdefault("kind", "Ingress")
        _, groups = self._groups(obj)
        units = [self.service_to_unit.get(g.get("serviceName"), g.get("serviceName")) for g in groups]
        index, others = _match(self.names, units, f"Ingress {r.name} {self.key} targetGroups")
        weights = {n: int(groups[i].get("weight") or 0) for n, i in index.items()}
        meta = obj.get("metadata") or {}
        return RouterView(
            weights=weights,
            annotations=dict(meta.get("annotations") or {}),
            resource_version=meta.get("resourceVersion", ""),
            ref=_ref(obj),
            obj=obj,
            others={k: int(groups[i].get("weight") or 0) for k, i in others.items()},
        )

    def write(
        self, view: RouterView, weights: Mapping[str, int] | None, annotations: Mapping[str, str | None]
    ) -> RouterView:
        ann = dict(annotations)
        if weights is not None:
            action, groups = self._groups(copy.deepcopy(view.obj))
            for g in groups:
                g["weight"] = int(weights.get(self.service_to_unit.get(g.get("serviceName"), ""), 0))
            ann[self.key] = json.dumps(action, separators=(",", ":"))
        patch = {"metadata": {"resourceVersion": view.resource_version, "annotations": ann}}
        self.kube.patch_ingress(self.router.namespace, self.router.name, patch)
        return self.read()


class HttpRouteRouter:
    """Weights of the ``backendRefs`` of a Gateway API ``HTTPRoute`` (gateway.networking.k8s.io/v1).

    The rule that names the units' Services is edited (each unit is the backendRef whose ``name``
    is its ``service_name``, else ``<unit>-predictor``, KServe's predictor Service, or the unit's
    name, in the unit's namespace); every other field is kept. A weight change is a configuration
    push to the Gateway implementation: nothing is rolled out (unlike an InferenceGraph, whose
    router is a Knative revision of its own). Gateway API weights are proportional, so the
    percentages the controller writes are read as such."""

    def __init__(self, kube: Kube, router: RouterConfig, units: Sequence[Unit]) -> None:
        self.kube = kube
        self.router = router
        self.names = [u.name for u in units]
        self.by_backend: dict[tuple[str, str], str] = {}
        for u in units:
            for service in [u.service_name] if u.service_name else [f"{u.name}-predictor", u.name]:
                self.by_backend[(u.namespace, service)] = u.name

    def _unit(self, ref: dict) -> str | None:
        return self.by_backend.get((ref.get("namespace") or self.router.namespace, ref.get("name") or ""))

    def _rule(self, obj: dict) -> int:
        rules = (obj.get("spec") or {}).get("rules") or []
        found = [i for i, r in enumerate(rules) if any(self._unit(b) for b in r.get("backendRefs") or [])]
        r = self.router
        if len(found) != 1:
            raise RouterError(
                f"HTTPRoute {r.namespace}/{r.name}: {'no rule' if not found else 'more than one rule'} "
                "has backendRefs to the units' Services"
            )
        return found[0]

    def read(self) -> RouterView:
        r = self.router
        obj = self.kube.get_custom(*GATEWAY, r.namespace, "httproutes", r.name)
        if obj is None:
            raise RouterError(f"HTTPRoute {r.namespace}/{r.name} not found")
        refs = obj["spec"]["rules"][self._rule(obj)].get("backendRefs") or []
        keys = [self._unit(b) or b.get("name") for b in refs]
        index, others = _match(self.names, keys, f"HTTPRoute {r.name} backendRefs")

        def weight(i: int) -> int:
            return int(refs[i].get("weight", 1))  # Gateway API's default weight is 1

        meta = obj.get("metadata") or {}
        return RouterView(
            weights={n: weight(i) for n, i in index.items()},
            annotations=dict(meta.get("annotations") or {}),
            resource_version=meta.get("resourceVersion", ""),
            ref=_ref(obj),
            obj=obj,
            others={k: weight(i) for k, i in others.items()},
        )

    def write(
        self, view: RouterView, weights: Mapping[str, int] | None, annotations: Mapping[str, str | None]
    ) -> RouterView:
        patch: dict = {"metadata": {"resourceVersion": view.resource_version, "annotations": dict(annotations)}}
        if weights is not None:
            rules = copy.deepcopy(view.obj["spec"]["rules"])
            for ref in rules[self._rule(view.obj)].get("backendRefs") or []:
                ref["weight"] = int(weights.get(self._unit(ref) or "", 0))
            patch["spec"] = {"rules": rules}  # a merge patch replaces the list as a whole
        r = self.router
        self.kube.patch_custom(*GATEWAY, r.namespace, "httproutes", r.name, patch)
        return self.read()


def make_router(kube: Kube, router: RouterConfig, units: Sequence[Unit]) -> Router:
    if router.kind == "alb-ingress":
        return AlbIngressRouter(kube, router, units)
    if router.kind == "httproute":
        return HttpRouteRouter(kube, router, units)
    return InferenceGraphRouter(kube, router, units)


MIN_SCALE = "autoscaling.knative.dev/min-scale"
MAX_SCALE = "autoscaling.knative.dev/max-scale"
AUTOSCALING_PREFIX = "autoscaling.knative.dev/"
ISVC_LABEL = "serving.kserve.io/inferenceservice"
REVISION_LABEL = "serving.knative.dev/revision"
ROUTING_STATE_LABEL = "serving.knative.dev/routingState"


def _int(value: object) -> int | None:
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return None


class FloorActuator:
    """Sets each unit's replica floor (pre-warm, merit-order floors, the capacity probe) without a
    rollout.

    Knative mode (KServe serverless): ``spec.predictor.minReplicas`` is rendered into the revision
    template, so editing it creates a new Revision and a new set of pods. Instead the floor is the
    ``autoscaling.knative.dev/min-scale`` annotation of each routed Revision's autoscaler input:

    * Knative >= 1.21: the Revision's own metadata (mutable: revision_validation.go checks only the
      spec). The Revision reconciler copies its autoscaling annotations to the PodAutoscaler, which
      the KPA reads (``ScaleBounds``), and keeps them off the pod template (knative/serving PR
      #16186: reconcile_resources.go ``reconcilePA``/``syncAnnotationsForKPA``, resources/meta.go
      ``podAnnotations``). A PodAutoscaler-only edit would be reverted there.
    * Knative < 1.21: a Revision annotation is copied into the Deployment's pod template
      (``makeAnnotationsForPod``), which would roll the pods; the PodAutoscaler's annotations are
      left alone after it is created (``reconcilePA`` compares the spec only), so the floor is
      written on the PodAutoscaler.

    Which one applies is read from the cluster, not configured: a Revision whose Deployment pod
    template carries ``autoscaling.knative.dev/*`` annotations (KServe always sets the class and
    min-scale) runs on a Knative that copies them there. A Revision without a Deployment yet is left
    alone until the next decision. A new Revision (a real rollout) starts from the template's
    min-scale (the InferenceService's minReplicas) and gets the floor again at the next decision.

    Raw deployment mode (no Knative Revisions installed): ``minReplicas`` is the HPA's/KEDA's
    minimum or the Deployment's replica count, not part of the pod template, so the
    InferenceService is patched (with the resourceVersion read).
    """

    def __init__(self, kube: Kube, units: Sequence[Unit]) -> None:
        self.kube = kube
        self.units = {u.name: u for u in units}
        self.knative = True  # until the Revision resource turns out not to be installed

    def apply(self, targets: Mapping[str, int]) -> dict[str, tuple[int | None, int]]:
        """Set each unit's floor where it differs; returns {unit: (old, new)} for the changes."""
        changed: dict[str, tuple[int | None, int]] = {}
        for name, target in targets.items():
            u = self.units[name]
            change = self._knative(u, target) if self.knative else None
            if change is None and not self.knative:
                change = self._inferenceservice(u, target)
            if change:
                changed[name] = change
        return changed

    def _knative(self, u: Unit, target: int) -> tuple[int | None, int] | None:
        selector = f"{ISVC_LABEL}={u.name},component=predictor"
        try:
            revisions = self.kube.list_custom(*KNATIVE, "revisions", namespace=u.namespace, label_selector=selector)
        except NotFound:
            self.knative = False  # raw deployment mode
            return None
        routed = [r for r in revisions if _labels(r).get(ROUTING_STATE_LABEL) != "reserve"]
        if not routed:
            log.warning("floor of %s: no routed Knative Revision found; not set", u.name)
            return None
        pod_templates = {
            _labels(d).get(REVISION_LABEL): ((d.get("spec") or {}).get("template") or {}).get("metadata") or {}
            for d in self.kube.list_deployments(u.namespace, f"{ISVC_LABEL}={u.name}")
        }
        pas: dict[str, dict] | None = None
        result = None
        for revision in routed:
            rev_name = revision["metadata"]["name"]
            template = pod_templates.get(rev_name)
            if template is None:
                log.info("floor of %s: Revision %s has no Deployment yet; next decision", u.name, rev_name)
                continue
            if any(k.startswith(AUTOSCALING_PREFIX) for k in (template.get("annotations") or {})):
                if pas is None:  # Knative < 1.21: the PodAutoscaler holds the floor
                    pas = {
                        pa["metadata"]["name"]: pa
                        for pa in self.kube.list_custom(
                            *KNATIVE_PA, "podautoscalers", namespace=u.namespace, label_selector=selector
                        )
                    }
                obj, api, plural = pas.get(rev_name), KNATIVE_PA, "podautoscalers"
                if obj is None:
                    continue
            else:
                obj, api, plural = revision, KNATIVE, "revisions"
            change = self._set_min_scale(obj, api, plural, target)
            result = change or result
        return result

    def _set_min_scale(
        self, obj: dict, api: tuple[str, str], plural: str, target: int
    ) -> tuple[int | None, int] | None:
        meta = obj["metadata"]
        annotations = meta.get("annotations") or {}
        current = _int(annotations.get(MIN_SCALE))
        ceiling = _int(annotations.get(MAX_SCALE))
        want = min(target, ceiling) if ceiling and ceiling > 0 else target  # the webhook requires min <= max
        if want == current:
            return None
        patch = {"metadata": {"resourceVersion": meta.get("resourceVersion"), "annotations": {MIN_SCALE: str(want)}}}
        self.kube.patch_custom(*api, meta["namespace"], plural, meta["name"], patch)
        return current, want

    def _inferenceservice(self, u: Unit, target: int) -> tuple[int | None, int] | None:
        obj = self.kube.get_custom(*KSERVE, u.namespace, "inferenceservices", u.name)
        if obj is None:
            raise RouterError(f"InferenceService {u.namespace}/{u.name} not found")
        predictor = (obj.get("spec") or {}).get("predictor") or {}
        current = predictor.get("minReplicas")
        ceiling = predictor.get("maxReplicas")
        want = min(target, ceiling) if isinstance(ceiling, int) and ceiling > 0 else target
        effective = current if isinstance(current, int) else 1  # KServe's default
        if want == effective:
            return None
        patch = {
            "metadata": {"resourceVersion": obj["metadata"].get("resourceVersion")},
            "spec": {"predictor": {"minReplicas": want}},
        }
        self.kube.patch_custom(*KSERVE, u.namespace, "inferenceservices", u.name, patch)
        return current, want


def _labels(obj: dict) -> dict:
    return (obj.get("metadata") or {}).get("labels") or {}


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
