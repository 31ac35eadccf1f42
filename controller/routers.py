"""Routers: read and write the traffic split, with the controller's bookkeeping annotations.

Select with ``router.kind``:

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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from controller.config import Router as RouterConfig
from controller.config import Unit
from controller.kube import GATEWAY, KSERVE_GRAPH, Kube

PREFIX = "hw-agnostic-inference.io/"
APPLIED = PREFIX + "applied-weights"
PREVIOUS = PREFIX + "previous-weights"
STATE = PREFIX + "state"
PAUSED = PREFIX + "paused"
PAUSED_REASON = PREFIX + "paused-reason"


class RouterError(Exception):
    """The router object is missing or does not match the configured units."""


def _json_object(raw: str | None) -> dict | None:
    """An annotation's JSON object; None when absent or not a JSON object."""
    if not raw:
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _parse_weights(raw: str | None) -> dict[str, int] | None:
    data = _json_object(raw)
    if data is None or not all(isinstance(v, int) for v in data.values()):
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
    def hand_set_others(self) -> dict[str, int]:
        """Entries outside the configured units that carry weight: only a person puts it there."""
        return {k: v for k, v in self.others.items() if v}

    @property
    def paused(self) -> bool:
        return str(self.annotations.get(PAUSED, "")).strip().lower() in ("true", "1", "yes")

    @property
    def applied(self) -> dict[str, int] | None:
        return _parse_weights(self.annotations.get(APPLIED))

    @property
    def saved_state(self) -> dict | None:
        return _json_object(self.annotations.get(STATE))


class Router(Protocol):
    def read(self) -> RouterView: ...

    def write(
        self, view: RouterView, weights: Mapping[str, int] | None, annotations: Mapping[str, str | None]
    ) -> RouterView: ...


def _view(
    obj: dict, index: Mapping[str, int], others: Mapping[str, int], weight: Callable[[int], int]
) -> RouterView:
    """The view of a router object: ``weight(i)`` reads the weight of its i-th backend."""
    meta = obj.get("metadata") or {}
    return RouterView(
        weights={n: weight(i) for n, i in index.items()},
        annotations=dict(meta.get("annotations") or {}),
        resource_version=meta.get("resourceVersion", ""),
        ref=_ref(obj),
        obj=obj,
        others={k: weight(i) for k, i in others.items()},
    )


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
        return _view(obj, index, others, lambda i: int(steps[i].get("weight") or 0))

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
        return _view(obj, index, others, lambda i: int(groups[i].get("weight") or 0))

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

        # Gateway API's default weight is 1
        return _view(obj, index, others, lambda i: int(refs[i].get("weight", 1)))

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
