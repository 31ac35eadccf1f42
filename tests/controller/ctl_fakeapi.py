"""A small stateful fake of the Kubernetes API, served over real HTTP on 127.0.0.1.

Enough of the API for the controller's integration tests, talked to with the official
``kubernetes`` client through a kubeconfig:

* namespaced and cluster-scoped resources of any group/version, stored as plain JSON objects;
* GET (object or list, with ``labelSelector`` equality/existence and ``fieldSelector`` on dotted
  paths), POST (create, ``generateName``), PUT (replace, optimistic concurrency on
  ``metadata.resourceVersion``), PATCH (JSON merge patch and JSON patch; strategic merge patch on
  custom resources is refused with 415 like a real API server), DELETE;
* ``metadata.resourceVersion`` bumped on every write, and a 409 Conflict when a write carries a
  stale one;
* an admission check for InferenceGraph Splitter weights (must sum to 100), like KServe's webhook;
* fault injection (status codes, delays) and a request log for assertions;
* the KServe and Knative reconcilers where the controller's writes touch them (see
  :class:`KnativeModel`): an edit of an InferenceService's predictor template creates a new
  Revision and replaces the unit's pods; a Revision's annotations flow to its PodAutoscaler and
  its Deployment as the Knative version in use does; an InferenceGraph spec or annotation edit rolls
  out a new router revision. Every rollout is recorded in ``rollouts``;
* an audit of every write: who sent it (the client's User-Agent) and who held each Lease at that
  moment, so a test can check that only the leader wrote.

It is a test helper, not a full API server: no watches, no field managers, no defaulting.
"""

from __future__ import annotations

import copy
import itertools
import json
import re
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

from tests.servers import ThreadedHTTPServer

CLUSTER_SCOPED = {"nodeclaims", "nodepools", "nodes", "namespaces", "ec2nodeclasses"}
CORE_GROUPS = {
    "api/v1",
    "apis/apps/v1",
    "apis/networking.k8s.io/v1",
    "apis/coordination.k8s.io/v1",
    "apis/events.k8s.io/v1",
}
KINDS = {
    "pods": "Pod",
    "events": "Event",
    "leases": "Lease",
    "ingresses": "Ingress",
    "deployments": "Deployment",
    "inferenceservices": "InferenceService",
    "inferencegraphs": "InferenceGraph",
    "nodeclaims": "NodeClaim",
    "nodepools": "NodePool",
    "podautoscalers": "PodAutoscaler",
    "configmaps": "ConfigMap",
    "revisions": "Revision",
    "httproutes": "HTTPRoute",
}

AUTOSCALING = "autoscaling.knative.dev/"
ISVC_LABEL = "serving.kserve.io/inferenceservice"
REVISION_LABEL = "serving.knative.dev/revision"
ROUTING_STATE = "serving.knative.dev/routingState"
# knative/serving pkg/reconciler/revision/resources/meta.go: excludeAnnotations
KNATIVE_EXCLUDED = {
    "serving.knative.dev/lastPinned",
    "serving.knative.dev/no-gc",
    "serving.knative.dev/routingStateModified",
    "serving.knative.dev/routes",
}
# reconcile_resources.go defaultKPAAnnotations (added by defaulting; never removed from the PA)
KPA_DEFAULTED = {AUTOSCALING + "class", AUTOSCALING + "metric"}


def now_iso(ts: float | None = None) -> str:
    return datetime.fromtimestamp(time.time() if ts is None else ts, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def merge_patch(target, patch):
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


class PatchError(Exception):
    pass


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f"bad JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def json_patch(doc, ops):
    """RFC 6902 JSON patch (add, remove, replace, test, copy, move)."""
    doc = copy.deepcopy(doc)

    def parent(parts):
        cur = doc
        for p in parts[:-1]:
            cur = cur[int(p)] if isinstance(cur, list) else cur[p]
        return cur

    def get(parts):
        cur = doc
        for p in parts:
            cur = cur[int(p)] if isinstance(cur, list) else cur[p]
        return cur

    for op in ops:
        try:
            parts = _pointer(op["path"])
            kind = op["op"]
            if kind == "test":
                if get(parts) != op["value"]:
                    raise PatchError(f"test failed at {op['path']}")
                continue
            if kind in ("copy", "move"):
                src = _pointer(op["from"])
                value = copy.deepcopy(get(src))
                if kind == "move":
                    p = parent(src)
                    del p[int(src[-1]) if isinstance(p, list) else src[-1]]
                kind, op = "add", {"path": op["path"], "value": value}
            p = parent(parts)
            last = parts[-1]
            if kind == "add":
                if isinstance(p, list):
                    p.insert(len(p) if last == "-" else int(last), copy.deepcopy(op["value"]))
                else:
                    p[last] = copy.deepcopy(op["value"])
            elif kind == "remove":
                del p[int(last) if isinstance(p, list) else last]
            elif kind == "replace":
                if isinstance(p, list):
                    p[int(last)] = copy.deepcopy(op["value"])
                else:
                    if last not in p:
                        raise PatchError(f"replace of missing {op['path']}")
                    p[last] = copy.deepcopy(op["value"])
            else:
                raise PatchError(f"unknown op {kind!r}")
        except (KeyError, IndexError, ValueError, TypeError) as exc:
            raise PatchError(f"cannot apply {op}: {exc}") from exc
    return doc


def _dig(obj, dotted: str):
    cur = obj
    for part in dotted.split("."):
        if not isinstance(cur, dict):
            return None
        cur = cur.get(part)
    return cur


def _selector_matches(labels: dict, selector: str) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            k, v = term.split("!=", 1)
            if labels.get(k.strip()) == v.strip():
                return False
        elif "=" in term:
            k, v = re.split(r"==?", term, maxsplit=1)
            if labels.get(k.strip()) != v.strip():
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


def _fields_match(obj: dict, selector: str) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        neg = "!=" in term
        k, v = re.split(r"!=|==?", term, maxsplit=1)
        actual = _dig(obj, k.strip())
        actual = "" if actual is None else str(actual)
        if (actual == v.strip()) == neg:
            return False
    return True


@dataclass
class Fault:
    method: str | None
    path_re: re.Pattern
    status: int
    times: int
    delay_s: float = 0.0
    reason: str = "InternalError"


class FakeKube:
    """The fake API server. Use as a context manager or call start()/stop()."""

    def __init__(self, knative_version: tuple[int, int] = (1, 21)) -> None:
        self._lock = threading.RLock()
        self._objects: dict[tuple[str, str, str, str], dict] = {}
        self._rv = itertools.count(1000)
        self._faults: list[Fault] = []
        self.requests: list[tuple[str, str, str | None, object]] = []
        self.knative_version = knative_version
        self.rollouts: list[Rollout] = []
        self.audit: list[WriteRecord] = []
        self.on_request: list = []  # callables (method, path) run before a request is served
        self.missing: set[str] = set()  # resource plurals that are "not installed" (404)
        self._http: ThreadedHTTPServer | None = None
        self.url = ""

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> FakeKube:
        fake = self

        class Handler(_Handler):
            kube = fake

        self._http = ThreadedHTTPServer(Handler, _QuietServer)
        self.url = self._http.url
        return self

    def stop(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None

    def __enter__(self) -> FakeKube:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def write_kubeconfig(self, path: Path, namespace: str = "default") -> Path:
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": "fake-token"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": namespace}}],
        }
        path.write_text(json.dumps(cfg))  # JSON is YAML
        return path

    # ------------------------------------------------------------------ direct store access (tests)

    @staticmethod
    def _base(api_version: str) -> str:
        return "api/v1" if api_version == "v1" else f"apis/{api_version}"

    def put(self, obj: dict) -> dict:
        """Create or replace an object as is (the test's 'cluster state')."""
        obj = copy.deepcopy(obj)
        plural = _plural(obj["kind"])
        meta = obj.setdefault("metadata", {})
        ns = "" if plural in CLUSTER_SCOPED else meta.setdefault("namespace", "default")
        with self._lock:
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", now_iso())
            meta["resourceVersion"] = str(next(self._rv))
            self._objects[(self._base(obj["apiVersion"]), plural, ns, meta["name"])] = obj
        return copy.deepcopy(obj)

    def get(self, api_version: str, kind: str, name: str, namespace: str = "") -> dict | None:
        plural = _plural(kind)
        ns = "" if plural in CLUSTER_SCOPED else (namespace or "default")
        with self._lock:
            obj = self._objects.get((self._base(api_version), plural, ns, name))
            return copy.deepcopy(obj) if obj is not None else None

    def list(self, api_version: str, kind: str, namespace: str | None = None) -> list[dict]:
        plural = _plural(kind)
        base = self._base(api_version)
        with self._lock:
            return [
                copy.deepcopy(o)
                for (b, p, ns, _), o in sorted(self._objects.items())
                if b == base and p == plural and (namespace is None or ns == namespace)
            ]

    def edit(self, api_version: str, kind: str, name: str, namespace: str, fn) -> dict:
        """Apply fn(obj) -> None in place, bump the resourceVersion (a 'person' editing)."""
        plural = _plural(kind)
        key = (self._base(api_version), plural, "" if plural in CLUSTER_SCOPED else namespace, name)
        with self._lock:
            obj = self._objects[key]
            before = copy.deepcopy(obj)
            fn(obj)
            obj["metadata"]["resourceVersion"] = str(next(self._rv))
            self._reconcile_after_write(plural, key[2], name, before)
            return copy.deepcopy(obj)

    def delete(self, api_version: str, kind: str, name: str, namespace: str = "") -> None:
        plural = _plural(kind)
        with self._lock:
            self._objects.pop(
                (self._base(api_version), plural, "" if plural in CLUSTER_SCOPED else namespace, name), None
            )

    # ------------------------------------------------------------------ faults and log

    def fail(
        self,
        path_regex: str,
        status: int = 500,
        times: int = 1,
        method: str | None = None,
        delay_s: float = 0.0,
        reason: str = "InternalError",
    ) -> None:
        """The next ``times`` requests matching method/path get ``status`` (after ``delay_s``).
        status 0 means: only delay, then serve normally."""
        with self._lock:
            self._faults.append(Fault(method, re.compile(path_regex), status, times, delay_s, reason))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def writes(self, path_part: str = "") -> list[tuple[str, str, str | None, object]]:
        with self._lock:
            return [r for r in self.requests if r[0] in ("POST", "PUT", "PATCH", "DELETE") and path_part in r[1]]

    def _take_fault(self, method: str, path: str, query: str = "") -> Fault | None:
        """The first fault for this request: its regex matches the path, or the path?query."""
        with self._lock:
            for f in self._faults:
                matches = f.path_re.search(path) or (query and f.path_re.search(f"{path}?{query}"))
                if f.times > 0 and (f.method is None or f.method == method) and matches:
                    f.times -= 1
                    return f
        return None

    # ------------------------------------------------------------------ request handling

    def handle(
        self, method: str, raw_path: str, content_type: str | None, body: bytes, agent: str = ""
    ) -> tuple[int, dict]:
        parsed = urlparse(raw_path)
        path = unquote(parsed.path).strip("/")
        query = {k: v[0] for k, v in parse_qs(parsed.query).items()}
        payload = json.loads(body) if body else None
        with self._lock:
            self.requests.append((method, "/" + path, content_type, payload))
        for hook in list(self.on_request):
            hook(method, "/" + path)
        fault = self._take_fault(method, "/" + path, unquote(parsed.query))
        if fault is not None:
            if fault.delay_s:
                time.sleep(fault.delay_s)
            if fault.status:
                return fault.status, _status(fault.status, fault.reason, f"injected {fault.status}")
        try:
            base, plural, ns, name = _route(path)
        except ValueError as exc:
            return 404, _status(404, "NotFound", str(exc))
        if plural in self.missing:
            return 404, _status(404, "NotFound", f"the server could not find the requested resource ({plural})")
        with self._lock:
            if method == "GET":
                return self._get(base, plural, ns, name, query)
            before = copy.deepcopy(self._objects.get((base, plural, ns, name))) if name else None
            if method == "POST" and not name:
                code, result = self._create(base, plural, ns, payload)
            elif method == "PUT" and name:
                code, result = self._replace(base, plural, ns, name, payload)
            elif method == "PATCH" and name:
                code, result = self._patch(base, plural, ns, name, content_type or "", payload)
            elif method == "DELETE" and name:
                obj = self._objects.pop((base, plural, ns, name), None)
                if obj is None:
                    return 404, _status(404, "NotFound", f'{plural} "{name}" not found')
                code, result = 200, obj
            else:
                return 405, _status(405, "MethodNotAllowed", f"{method} not supported on /{path}")
            if 200 <= code < 300:
                self.audit.append(WriteRecord(method, "/" + path, _identity(agent), self._lease_holders()))
                if method != "DELETE":
                    self._reconcile_after_write(plural, ns, result["metadata"]["name"], before)
            return code, result

    def _lease_holders(self) -> dict[str, str | None]:
        return {
            name: (obj.get("spec") or {}).get("holderIdentity")
            for (_, plural, _, name), obj in self._objects.items()
            if plural == "leases"
        }

    def writes_by(self, identity: str, exclude: str = "/leases/") -> list[WriteRecord]:
        """Successful writes sent by a controller identity (other than to paths containing exclude)."""
        with self._lock:
            return [w for w in self.audit if w.agent == identity and exclude not in w.path]

    def non_leader_writes(self, lease: str) -> list[WriteRecord]:
        """Controller writes (not to Leases) that the holder of ``lease`` did not send."""
        with self._lock:
            return [
                w for w in self.audit if w.agent and "/leases" not in w.path and w.lease_holders.get(lease) != w.agent
            ]

    # ------------------------------------------------------------------ KServe + Knative, as their reconcilers act
    #
    # KServe (pkg/controller/v1beta1/inferenceservice/reconcilers/knative/ksvc_reconciler.go) renders
    # the predictor into the Knative Service's template, minReplicas as the template annotation
    # autoscaling.knative.dev/min-scale (pkg/controller/v1alpha1/utils/utils.go SetAutoScalingAnnotations);
    # any template change makes Knative's Configuration reconciler create a new Revision, whose pods
    # replace the old ones. A Revision's own metadata is mutable (revision_validation.go checks only
    # spec); the Revision reconciler (pkg/reconciler/revision/reconcile_resources.go) then:
    # * Knative >= 1.21 (PR #16186): copies the Revision's autoscaling.* annotations to its
    #   PodAutoscaler (syncAnnotationsForKPA: the Revision is the source of truth, a PA-only edit is
    #   reverted) and keeps them off the Deployment's pod template (resources/meta.go podAnnotations);
    # * Knative < 1.21: copies all Revision annotations into the Deployment's pod template
    #   (makeAnnotationsForPod), so an annotation edit rolls the pods, and never updates the PA's
    #   annotations after creating it (reconcilePA compares the spec only).

    def knative_init(self, namespace: str, isvc_name: str) -> dict:
        """Create the first Revision (with its PodAutoscaler and Deployment) of an InferenceService."""
        with self._lock:
            return self._new_revision(namespace, isvc_name, reason=None)

    def _reconcile_after_write(self, plural: str, ns: str, name: str, before: dict | None) -> None:
        after = self._objects.get(self._key_of(plural, ns, name))
        if after is None or before is None:
            return
        if plural == "inferenceservices" and "revisions" in self.missing:
            # Raw deployment mode: minReplicas/maxReplicas go to the HPA (KServe
            # reconcilers/hpa/hpa_reconciler.go), everything else of the predictor to the pod template.
            if _isvc_template(before, raw=True) != _isvc_template(after, raw=True):
                self.rollouts.append(Rollout("Deployment", ns, name, "predictor pod template changed"))
                self._replace_pods(ns, name)
        elif plural == "inferenceservices" and _isvc_template(before) != _isvc_template(after):
            self._new_revision(ns, name, reason="InferenceService predictor template changed")
        elif plural == "inferencegraphs" and before.get("spec") != after.get("spec"):
            self.rollouts.append(Rollout("InferenceGraph", ns, name, "InferenceGraph spec changed"))
        elif plural == "inferencegraphs" and _annotations(before) != _annotations(after):
            # KServe renders the graph's annotations into the router's Knative revision template
            # (inferencegraph/knative_reconciler.go createKnativeService: componentMeta annotations
            # -> Template.ObjectMeta.Annotations): an annotation-only edit is a router rollout too.
            self.rollouts.append(Rollout("InferenceGraph", ns, name, "InferenceGraph annotations changed"))
        elif plural == "revisions":
            self._reconcile_revision(ns, name)
        elif plural == "podautoscalers" and self.knative_version >= (1, 21):
            self._reconcile_revision(ns, name)  # the PA's owner Revision is reconciled again

    def _key_of(self, plural: str, ns: str, name: str) -> tuple[str, str, str, str]:
        for key in self._objects:
            if key[1:] == (plural, ns, name):
                return key
        return ("", plural, ns, name)

    def _store(self, obj: dict) -> dict:
        plural = _plural(obj["kind"])
        meta = obj["metadata"]
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", now_iso())
        meta["resourceVersion"] = str(next(self._rv))
        self._objects[(self._base(obj["apiVersion"]), plural, meta.get("namespace", ""), meta["name"])] = obj
        return obj

    def revisions(self, namespace: str, isvc_name: str) -> list[dict]:
        return [
            r
            for r in self.list("serving.knative.dev/v1", "Revision", namespace)
            if (r["metadata"].get("labels") or {}).get(ISVC_LABEL) == isvc_name
        ]

    def _new_revision(self, ns: str, isvc_name: str, reason: str | None) -> dict:
        isvc_obj = self._objects[(self._base("serving.kserve.io/v1beta1"), "inferenceservices", ns, isvc_name)]
        predictor = (isvc_obj.get("spec") or {}).get("predictor") or {}
        previous = sorted(self.revisions(ns, isvc_name), key=lambda r: r["metadata"]["name"])
        generation = len(previous) + 1
        rev_name = f"{isvc_name}-predictor-{generation:05d}"
        annotations = {AUTOSCALING + "class": "kpa.autoscaling.knative.dev"}
        annotations[AUTOSCALING + "min-scale"] = str(predictor.get("minReplicas", 1))
        if predictor.get("maxReplicas"):
            annotations[AUTOSCALING + "max-scale"] = str(predictor["maxReplicas"])
        labels = {ISVC_LABEL: isvc_name, "component": "predictor", ROUTING_STATE: "active"}
        labels["serving.knative.dev/configuration"] = f"{isvc_name}-predictor"
        revision = self._store(
            {
                "apiVersion": "serving.knative.dev/v1",
                "kind": "Revision",
                "metadata": {"name": rev_name, "namespace": ns, "labels": labels, "annotations": annotations},
                "spec": {"containers": [{"name": "kserve-container", "image": "x"}]},
            }
        )
        desired = 1
        for old in previous:
            old_pa = self._objects.get(self._key_of("podautoscalers", ns, old["metadata"]["name"]))
            if old_pa is not None:
                desired = (old_pa.get("status") or {}).get("desiredScale", desired)
                old_pa["spec"]["reachability"] = "Unreachable"
                old_pa["metadata"]["resourceVersion"] = str(next(self._rv))
            old["metadata"]["labels"][ROUTING_STATE] = "reserve"
            old["metadata"]["resourceVersion"] = str(next(self._rv))
        pa_labels = {k: v for k, v in labels.items() if k != ROUTING_STATE} | {REVISION_LABEL: rev_name}
        self._store(
            {
                "apiVersion": "autoscaling.internal.knative.dev/v1alpha1",
                "kind": "PodAutoscaler",
                "metadata": {
                    "name": rev_name,
                    "namespace": ns,
                    "labels": pa_labels,
                    "annotations": {k: v for k, v in annotations.items() if k not in KNATIVE_EXCLUDED},
                },
                "spec": {"reachability": "Reachable"},
                "status": {"desiredScale": desired, "actualScale": desired},
            }
        )
        self._store(
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": f"{rev_name}-deployment", "namespace": ns, "labels": dict(pa_labels)},
                "spec": {
                    "replicas": desired,
                    "template": {
                        "metadata": {"labels": dict(pa_labels), "annotations": self._pod_annotations(revision)}
                    },
                },
            }
        )
        isvc_obj.setdefault("status", {}).setdefault("components", {})["predictor"] = {
            "latestCreatedRevision": rev_name
        }
        if reason is not None:
            self.rollouts.append(Rollout("InferenceService", ns, isvc_name, reason, rev_name))
            self._replace_pods(ns, isvc_name)
        return copy.deepcopy(revision)

    def _pod_annotations(self, revision: dict) -> dict[str, str]:
        ann = {k: v for k, v in (revision["metadata"].get("annotations") or {}).items() if k not in KNATIVE_EXCLUDED}
        if self.knative_version >= (1, 21):
            ann = {k: v for k, v in ann.items() if not k.startswith(AUTOSCALING)}
        return ann

    def _reconcile_revision(self, ns: str, rev_name: str) -> None:
        revision = self._objects.get(self._key_of("revisions", ns, rev_name))
        if revision is None:
            return
        isvc_name = revision["metadata"]["labels"].get(ISVC_LABEL, "")
        deployment = self._objects.get(self._key_of("deployments", ns, f"{rev_name}-deployment"))
        if deployment is not None:
            want = self._pod_annotations(revision)
            template = deployment["spec"]["template"]["metadata"]
            if template.get("annotations") != want:  # checkAndUpdateDeployment: a new pod template
                template["annotations"] = want
                deployment["metadata"]["resourceVersion"] = str(next(self._rv))
                self.rollouts.append(Rollout("Deployment", ns, isvc_name, "pod template annotations changed", rev_name))
                self._replace_pods(ns, isvc_name)
        pa = self._objects.get(self._key_of("podautoscalers", ns, rev_name))
        if pa is None or self.knative_version < (1, 21):
            return
        src = {k: v for k, v in (revision["metadata"].get("annotations") or {}).items() if k not in KNATIVE_EXCLUDED}
        dst = pa["metadata"].setdefault("annotations", {})
        synced = {k: v for k, v in dst.items() if not k.startswith(AUTOSCALING) or k in KPA_DEFAULTED} | src
        if synced != dst:
            pa["metadata"]["annotations"] = synced
            pa["metadata"]["resourceVersion"] = str(next(self._rv))

    def _replace_pods(self, ns: str, isvc_name: str) -> None:
        """A rollout: the unit's pods are replaced by new ones that are not ready yet."""
        mine = [
            key
            for key, o in self._objects.items()
            if key[1] == "pods" and key[2] == ns and (o["metadata"].get("labels") or {}).get(ISVC_LABEL) == isvc_name
        ]
        for key in mine:
            del self._objects[key]
        for i in range(len(mine)):
            self._store(pod(f"{isvc_name}-new{next(self._rv)}-{i}", ns, isvc_name, ready=False))

    def unit_rollouts(self) -> list[Rollout]:
        """Rollouts that replaced a unit's pods (a new Revision or a new pod template)."""
        with self._lock:
            return [r for r in self.rollouts if r.kind != "InferenceGraph"]

    def set_autoscaler(self, namespace: str, isvc_name: str, desired: int, actual: int | None = None) -> None:
        """KPA status of the unit's routed Revision (what the autoscaler decided)."""
        with self._lock:
            active = [
                r
                for r in self.revisions(namespace, isvc_name)
                if r["metadata"]["labels"].get(ROUTING_STATE) != "reserve"
            ]
            for r in active:
                key = self._key_of("podautoscalers", namespace, r["metadata"]["name"])
                pa = self._objects.get(key)
                if pa is None:
                    continue
                pa["status"] = {"desiredScale": desired, "actualScale": desired if actual is None else actual}
                pa["metadata"]["resourceVersion"] = str(next(self._rv))
                dep = self._objects.get(self._key_of("deployments", namespace, f"{r['metadata']['name']}-deployment"))
                if dep is not None:
                    dep["spec"]["replicas"] = desired

    def _get(self, base, plural, ns, name, query):
        if name:
            obj = self._objects.get((base, plural, ns, name))
            if obj is None:
                return 404, _status(404, "NotFound", f'{plural} "{name}" not found')
            return 200, copy.deepcopy(obj)
        items = []
        for (b, p, n, _), obj in sorted(self._objects.items()):
            if b != base or p != plural or (ns and n != ns):
                continue
            if "labelSelector" in query and not _selector_matches(
                obj["metadata"].get("labels") or {}, query["labelSelector"]
            ):
                continue
            if "fieldSelector" in query and not _fields_match(obj, query["fieldSelector"]):
                continue
            items.append(copy.deepcopy(obj))
        kind = KINDS.get(plural, plural.capitalize()) + "List"
        return 200, {
            "kind": kind,
            "apiVersion": base.split("/", 1)[1] if base != "api/v1" else "v1",
            "metadata": {"resourceVersion": str(next(self._rv))},
            "items": items,
        }

    def _create(self, base, plural, ns, obj):
        if not isinstance(obj, dict):
            return 400, _status(400, "BadRequest", "body must be an object")
        meta = obj.setdefault("metadata", {})
        if not meta.get("name"):
            if not meta.get("generateName"):
                return 422, _status(422, "Invalid", "metadata.name or generateName is required")
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        if plural not in CLUSTER_SCOPED:
            meta["namespace"] = ns
        key = (base, plural, ns, meta["name"])
        if key in self._objects:
            return 409, _status(409, "AlreadyExists", f'{plural} "{meta["name"]}" already exists')
        problem = _admit(plural, obj)
        if problem:
            return 422, _status(422, "Invalid", problem)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_iso()
        meta["resourceVersion"] = str(next(self._rv))
        self._objects[key] = obj
        return 201, copy.deepcopy(obj)

    def _replace(self, base, plural, ns, name, obj):
        key = (base, plural, ns, name)
        current = self._objects.get(key)
        if current is None:
            return 404, _status(404, "NotFound", f'{plural} "{name}" not found')
        rv = (obj.get("metadata") or {}).get("resourceVersion")
        if rv and rv != current["metadata"]["resourceVersion"]:
            return 409, _status(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {plural} "{name}": '
                "the object has been modified; please apply your changes "
                "to the latest version and try again",
            )
        problem = _admit(plural, obj)
        if problem:
            return 422, _status(422, "Invalid", problem)
        meta = obj.setdefault("metadata", {})
        for k in ("uid", "creationTimestamp", "namespace", "name"):
            if k in current["metadata"]:
                meta[k] = current["metadata"][k]
        meta["resourceVersion"] = str(next(self._rv))
        self._objects[key] = obj
        return 200, copy.deepcopy(obj)

    def _patch(self, base, plural, ns, name, content_type, patch):
        key = (base, plural, ns, name)
        current = self._objects.get(key)
        if current is None:
            return 404, _status(404, "NotFound", f'{plural} "{name}" not found')
        ctype = content_type.split(";")[0].strip()
        try:
            if ctype == "application/merge-patch+json":
                updated = merge_patch(current, patch)
            elif ctype == "application/json-patch+json":
                updated = json_patch(current, patch)
            elif ctype == "application/strategic-merge-patch+json" and base in CORE_GROUPS:
                updated = merge_patch(current, patch)  # close enough for maps
            else:
                return 415, _status(
                    415,
                    "UnsupportedMediaType",
                    f"the body of the request was in an unknown format - accepted media types "
                    f"include: application/json-patch+json, application/merge-patch+json "
                    f"(got {ctype!r})",
                )
        except PatchError as exc:
            return 422, _status(422, "Invalid", str(exc))
        rv = (updated.get("metadata") or {}).get("resourceVersion")
        if rv and rv != current["metadata"]["resourceVersion"]:
            return 409, _status(
                409, "Conflict", f'Operation cannot be fulfilled on {plural} "{name}": the object has been modified'
            )
        problem = _admit(plural, updated)
        if problem:
            return 422, _status(422, "Invalid", problem)
        updated["metadata"]["resourceVersion"] = str(next(self._rv))
        self._objects[key] = updated
        return 200, copy.deepcopy(updated)


@dataclass
class Rollout:
    kind: str  # InferenceService (new Revision) | Deployment (new pod template) | InferenceGraph
    namespace: str
    name: str
    reason: str
    revision: str = ""


@dataclass
class WriteRecord:
    method: str
    path: str
    agent: str  # the controller identity from the User-Agent, "" for other clients
    lease_holders: dict


def _identity(agent: str) -> str:
    """The controller's identity from its User-Agent ``inference-traffic-controller/<identity>``."""
    prefix = "inference-traffic-controller/"
    return agent[len(prefix) :].split(" ")[0] if agent.startswith(prefix) else ""


def _isvc_template(obj: dict, raw: bool = False) -> tuple:
    """What KServe renders into the Knative revision template: the predictor and the annotations
    (raw deployment mode: the predictor without the autoscaler's bounds)."""
    meta = obj.get("metadata") or {}
    predictor = dict((obj.get("spec") or {}).get("predictor") or {})
    if raw:
        for key in ("minReplicas", "maxReplicas", "scaleTarget", "scaleMetric"):
            predictor.pop(key, None)
    annotations = {
        k: v
        for k, v in (meta.get("annotations") or {}).items()
        if k != "kubectl.kubernetes.io/last-applied-configuration"
    }
    return json.dumps(predictor, sort_keys=True), json.dumps(annotations, sort_keys=True)


def _plural(kind: str) -> str:
    for plural, k in KINDS.items():
        if k == kind:
            return plural
    return kind.lower() + "s"


def _route(path: str) -> tuple[str, str, str, str]:
    parts = path.split("/")
    if parts[:2] == ["api", "v1"]:
        base, rest = "api/v1", parts[2:]
    elif parts[0] == "apis" and len(parts) >= 4:
        base, rest = "/".join(parts[:3]), parts[3:]
    else:
        raise ValueError(f"no route for /{path}")
    if rest and rest[0] == "namespaces" and len(rest) >= 3:
        ns, rest = rest[1], rest[2:]
    else:
        ns = ""
    if not rest or len(rest) > 2:
        raise ValueError(f"no route for /{path}")
    plural = rest[0]
    name = rest[1] if len(rest) == 2 else ""
    return base, plural, ns, name


def _admit(plural: str, obj: dict) -> str | None:
    if plural == "inferencegraphs":
        for node_name, node in ((obj.get("spec") or {}).get("nodes") or {}).items():
            if node.get("routerType") == "Splitter":
                total = sum(int(s.get("weight") or 0) for s in node.get("steps") or [])
                if total != 100:
                    return f"spec.nodes.{node_name}: Splitter step weights must sum to 100, got {total}"
    return None


def _status(code: int, reason: str, message: str) -> dict:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        pass  # a client that timed out and hung up (injected delays) is expected here


class _Handler(BaseHTTPRequestHandler):
    kube: FakeKube
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in separate writes

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        try:
            code, payload = self.kube.handle(
                self.command, self.path, self.headers.get("Content-Type"), body, self.headers.get("User-Agent") or ""
            )
        except Exception as exc:  # pragma: no cover - a bug in the fake itself
            code, payload = 500, _status(500, "InternalError", f"fake error: {exc!r}")
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve


# ---------------------------------------------------------------------- object builders for tests


def isvc(name: str, namespace: str, ready: bool = True, min_replicas: int = 1, max_replicas: int = 10) -> dict:
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "predictor": {
                "minReplicas": min_replicas,
                "maxReplicas": max_replicas,
                "model": {"modelFormat": {"name": "custom"}},
            }
        },
        "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


def pod(
    name: str,
    namespace: str,
    isvc_name: str,
    *,
    ready: bool = True,
    unschedulable_since: float | None = None,
    phase: str | None = None,
) -> dict:
    conditions = []
    if unschedulable_since is not None:
        phase = phase or "Pending"
        conditions.append(
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "lastTransitionTime": now_iso(unschedulable_since),
                "message": "0/3 nodes are available",
            }
        )
    else:
        phase = phase or ("Running" if ready else "Pending")
        conditions.append({"type": "PodScheduled", "status": "True"})
        conditions.append({"type": "Ready", "status": "True" if ready else "False"})
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {"serving.kserve.io/inferenceservice": isvc_name}},
        "spec": {"containers": [{"name": "kserve-container", "image": "x"}]},
        "status": {"phase": phase, "conditions": conditions},
    }


def _annotations(obj: dict) -> dict:
    return (obj.get("metadata") or {}).get("annotations") or {}


def podautoscaler(isvc_name: str, namespace: str, desired: int, actual: int | None = None) -> dict:
    return {
        "apiVersion": "autoscaling.internal.knative.dev/v1alpha1",
        "kind": "PodAutoscaler",
        "metadata": {
            "name": f"{isvc_name}-predictor-00001",
            "namespace": namespace,
            "labels": {"serving.kserve.io/inferenceservice": isvc_name},
        },
        "status": {"desiredScale": desired, "actualScale": desired if actual is None else actual},
    }


def ice_event(name: str, nodepool: str, at: float, namespace: str = "default") -> dict:
    nodeclaim = f"{nodepool}-{name}"
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{nodeclaim}.{uuid.uuid4().hex[:8]}", "namespace": namespace},
        "involvedObject": {"apiVersion": "karpenter.sh/v1", "kind": "NodeClaim", "name": nodeclaim},
        "reason": "InsufficientCapacityError",
        "type": "Warning",
        "message": f"NodeClaim {nodeclaim} event: creating nodeclaim, insufficient capacity",
        "firstTimestamp": now_iso(at),
        "lastTimestamp": now_iso(at),
        "count": 1,
    }


def nodeclaim(name: str, nodepool: str, launched: str = "False") -> dict:
    return {
        "apiVersion": "karpenter.sh/v1",
        "kind": "NodeClaim",
        "metadata": {"name": name, "labels": {"karpenter.sh/nodepool": nodepool}},
        "status": {"conditions": [{"type": "Launched", "status": launched, "reason": "InsufficientCapacity"}]},
    }


def inference_graph(name: str, namespace: str, weights: dict[str, int]) -> dict:
    return {
        "apiVersion": "serving.kserve.io/v1alpha1",
        "kind": "InferenceGraph",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "nodes": {
                "root": {
                    "routerType": "Splitter",
                    "steps": [{"serviceName": n, "name": n, "weight": w} for n, w in weights.items()],
                }
            }
        },
    }


def alb_ingress(name: str, namespace: str, action: str, weights: dict[str, int]) -> dict:
    fwd = {
        "type": "forward",
        "forwardConfig": {
            "targetGroups": [{"serviceName": n, "servicePort": 80, "weight": w} for n, w in weights.items()]
        },
    }
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "annotations": {
                "kubernetes.io/ingress.class": "alb",
                f"alb.ingress.kubernetes.io/actions.{action}": json.dumps(fwd),
            },
        },
        "spec": {
            "rules": [
                {
                    "http": {
                        "paths": [
                            {
                                "path": "/",
                                "pathType": "Prefix",
                                "backend": {"service": {"name": action, "port": {"name": "use-annotation"}}},
                            }
                        ]
                    }
                }
            ]
        },
    }


def http_route(name: str, namespace: str, weights: dict[str, int], gateway: str = "inference-gateway") -> dict:
    """A Gateway API HTTPRoute whose one rule splits over the units' predictor Services."""
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "parentRefs": [{"name": gateway}],
            "rules": [
                {
                    "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                    "backendRefs": [{"name": f"{n}-predictor", "port": 80, "weight": w} for n, w in weights.items()],
                }
            ],
        },
    }
