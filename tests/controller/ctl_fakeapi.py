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
* fault injection (status codes, delays) and a request log for assertions.

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
}


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

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._objects: dict[tuple[str, str, str, str], dict] = {}
        self._rv = itertools.count(1000)
        self._faults: list[Fault] = []
        self.requests: list[tuple[str, str, str | None, object]] = []
        self.missing: set[str] = set()  # resource plurals that are "not installed" (404)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> FakeKube:
        fake = self

        class Handler(_Handler):
            kube = fake

        self._server = _QuietServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True, name="fake-kube"
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)

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
            fn(obj)
            obj["metadata"]["resourceVersion"] = str(next(self._rv))
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

    def handle(self, method: str, raw_path: str, content_type: str | None, body: bytes) -> tuple[int, dict]:
        parsed = urlparse(raw_path)
        path = unquote(parsed.path).strip("/")
        query = {k: v[0] for k, v in parse_qs(parsed.query).items()}
        payload = json.loads(body) if body else None
        with self._lock:
            self.requests.append((method, "/" + path, content_type, payload))
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
            if method == "POST" and not name:
                return self._create(base, plural, ns, payload)
            if method == "PUT" and name:
                return self._replace(base, plural, ns, name, payload)
            if method == "PATCH" and name:
                return self._patch(base, plural, ns, name, content_type or "", payload)
            if method == "DELETE" and name:
                obj = self._objects.pop((base, plural, ns, name), None)
                if obj is None:
                    return 404, _status(404, "NotFound", f'{plural} "{name}" not found')
                return 200, obj
        return 405, _status(405, "MethodNotAllowed", f"{method} not supported on /{path}")

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
            code, payload = self.kube.handle(self.command, self.path, self.headers.get("Content-Type"), body)
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
