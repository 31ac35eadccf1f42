"""Replica floors without a rollout: :class:`FloorActuator` (see its docstring and docs/controller.md)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from controller.config import Unit
from controller.kube import KNATIVE, KNATIVE_PA, KSERVE, Kube, NotFound
from controller.routers import RouterError

log = logging.getLogger(__name__)

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
