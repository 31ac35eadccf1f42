"""The entry points (deploy/entrypoint/gateway, deploy/entrypoint/alb) reach what deploy/ runs.

What an operator would hit on a cluster and no schema catches: a route or Ingress path to a
Service that does not exist or selects no pod of the stack, a health check on the readiness
path that lies (KServe's /v2/health/ready is 200 before the model is loaded), an edge that gives
up before the router does (a 504 while the unit still renders), plain HTTP, or an API key that
guards only some routes.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from k8slib import REPO_ROOT, ObjectSet, dig, kustomize_build

GATEWAY = "deploy/entrypoint/gateway"
ALB = "deploy/entrypoint/alb"
NAMESPACE = "sd21"
ROUTER = "sd21-router"
HEALTHCHECK_PATH = "alb.ingress.kubernetes.io/healthcheck-path"
QUEUE_PROXY_HTTP_PORT = 8012  # Knative queue-proxy, in front of the runtime's 8080


def _built(builds: dict[str, Any], name: str) -> ObjectSet:
    result = builds.get(name)
    assert result is not None, f"no kustomization at {name}/"
    if isinstance(result, RuntimeError):
        pytest.fail(str(result), pytrace=False)
    return result


@pytest.fixture(scope="module")
def gateway(builds: dict[str, Any]) -> ObjectSet:
    return _built(builds, GATEWAY)


@pytest.fixture(scope="module")
def alb(builds: dict[str, Any]) -> ObjectSet:
    return _built(builds, ALB)


def _seconds(duration: str) -> float:
    """Gateway API Duration (GEP-2257: e.g. 1h, 10m, 660s, 500ms, combined)."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    parts = re.findall(r"(\d+)(ms|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"not a Gateway API duration: {duration!r}"
    return sum(int(n) * units[u] for n, u in parts)


def _alb_attributes(annotation: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in annotation.split(","))


def _longest_request_s(deploy: ObjectSet) -> float:
    """The longest any request may legitimately take behind the edge: the router's and units' timeouts."""
    graph = deploy.get("InferenceGraph", ROUTER, NAMESPACE)
    timeouts = [graph["spec"]["timeout"], *dig(graph, "spec", "routerTimeouts", default={}).values()]
    timeouts = [t for t in timeouts if t is not None]
    idle = dig(graph, "spec", "routerTimeouts", "serverIdle")
    if idle is not None:
        timeouts.remove(idle)  # keep-alive idle time, not a request's duration
    timeouts += [isvc["spec"]["predictor"]["timeout"] for isvc in deploy.of_kind("InferenceService")]
    return float(max(timeouts))


def _knative_service_targets(deploy: ObjectSet) -> dict[str, str]:
    """Knative Service name -> what it serves: KServe names the predictor's `<isvc>-predictor` and
    the InferenceGraph's after the graph; Knative labels every revision pod serving.knative.dev/service."""
    targets = {f"{isvc['metadata']['name']}-predictor": isvc["metadata"]["name"] for isvc in deploy.of_kind("InferenceService")}
    targets[ROUTER] = ROUTER
    return targets


def _route_backends(objects: ObjectSet) -> list[tuple[str, str, dict[str, Any]]]:
    """(owner, path prefix, backendRef) for every HTTPRoute rule with a backend."""
    found = []
    for route in objects.of_kind("HTTPRoute"):
        for rule in route["spec"].get("rules", []):
            for ref in rule.get("backendRefs", []):
                for match in rule.get("matches", [{}]):
                    found.append((route["metadata"]["name"], dig(match, "path", "value", default="/"), ref))
    return found


def _ingress_backends(objects: ObjectSet) -> list[tuple[str, str, dict[str, Any]]]:
    found = []
    for ingress in objects.of_kind("Ingress"):
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                service = path["backend"]["service"]
                found.append((ingress["metadata"]["name"], path["path"], {"name": service["name"], "port": service["port"]["number"]}))
    return found


def _expected_target(path: str) -> str:
    """/v2/models/<unit> goes to that unit; everything else to the router."""
    match = re.fullmatch(r"/v2/models/([a-z0-9-]+)", path)
    return match.group(1) if match else ROUTER


# --------------------------------------------------------------------------------------------
# Both entry points


@pytest.mark.parametrize("entry", [GATEWAY, ALB])
def test_every_edge_backend_is_a_service_that_selects_the_pods_of_its_path(entry, builds, deploy) -> None:
    objects = _built(builds, entry)
    targets = _knative_service_targets(deploy)
    backends = _route_backends(objects) + _ingress_backends(objects)
    assert backends, f"{entry} routes nowhere"
    for owner, path, ref in backends:
        assert ref.get("kind", "Service") == "Service" and ref.get("namespace", NAMESPACE) == NAMESPACE
        service = objects.get("Service", ref["name"], NAMESPACE)
        assert service is not None, f"{entry} {owner} {path}: Service {ref['name']} is not in the build"
        (port,) = [p for p in service["spec"]["ports"] if p["port"] == ref["port"]]
        assert port["targetPort"] == QUEUE_PROXY_HTTP_PORT, f"{ref['name']}: bypasses Knative's queue-proxy"
        knative_service = service["spec"]["selector"].get("serving.knative.dev/service")
        assert knative_service in targets, f"{ref['name']} selects no pod of deploy/ ({service['spec']['selector']})"
        assert targets[knative_service] == _expected_target(path), f"{entry} {path} reaches {targets[knative_service]}"


@pytest.mark.parametrize("entry", [GATEWAY, ALB])
def test_every_unit_and_the_router_are_reachable(entry, builds, deploy) -> None:
    objects = _built(builds, entry)
    reached = {_expected_target(path) for _, path, _ in _route_backends(objects) + _ingress_backends(objects)}
    units = {isvc["metadata"]["name"] for isvc in deploy.of_kind("InferenceService")}
    assert reached == units | {ROUTER}


@pytest.mark.parametrize("entry", [GATEWAY, ALB])
def test_health_checks_use_the_per_model_readiness_path(entry, builds, deploy) -> None:
    objects = _built(builds, entry)
    targets = _knative_service_targets(deploy)
    for service in objects.of_kind("Service"):
        path = service["metadata"]["annotations"][HEALTHCHECK_PATH]
        served = targets[service["spec"]["selector"]["serving.knative.dev/service"]]
        expected = "/readyz" if served == ROUTER else f"/v2/models/{served}/ready"
        assert path == expected, f"{service['metadata']['name']} health-checks {path}"
        assert path != "/v2/health/ready"


# --------------------------------------------------------------------------------------------
# Gateway API


def test_the_gateway_terminates_tls_and_plain_http_only_redirects(gateway: ObjectSet) -> None:
    (gw,) = gateway.of_kind("Gateway")
    listeners = {listener["name"]: listener for listener in gw["spec"]["listeners"]}
    https = listeners["https"]
    assert https["protocol"] == "HTTPS" and https["port"] == 443
    assert https["tls"]["mode"] == "Terminate" and https["tls"]["certificateRefs"]
    for route in gateway.of_kind("HTTPRoute"):
        for parent in route["spec"]["parentRefs"]:
            assert parent["name"] == gw["metadata"]["name"], f"{route['metadata']['name']} attaches elsewhere"
            listener = listeners[parent["sectionName"]]
            assert set(route["spec"]["hostnames"]) <= {listener["hostname"]}
            if listener["protocol"] == "HTTP":
                for rule in route["spec"]["rules"]:
                    assert not rule.get("backendRefs"), f"{route['metadata']['name']} serves plain HTTP"
                    assert [f["requestRedirect"]["scheme"] for f in rule["filters"]] == ["https"]


def test_gateway_timeouts_outlast_the_longest_request(gateway: ObjectSet, deploy: ObjectSet) -> None:
    longest = _longest_request_s(deploy)
    for owner, path, _ in _route_backends(gateway):
        route = gateway.get("HTTPRoute", owner, NAMESPACE)
        for rule in route["spec"]["rules"]:
            timeouts = rule.get("timeouts")
            assert timeouts, f"{owner}: a rule without timeouts gets the implementation's default (often 15 s)"
            assert _seconds(timeouts["backendRequest"]) > longest, f"{owner} {path}: gives up before the router"
            assert _seconds(timeouts["request"]) >= _seconds(timeouts["backendRequest"])


def test_the_api_key_component_guards_every_route_to_a_backend(kubectl: str, tmp_path: Path) -> None:
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    gateway_dir = REPO_ROOT / GATEWAY
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "resources": [os.path.relpath(gateway_dir, overlay)],
                "components": [os.path.relpath(gateway_dir / "api-key", overlay)],
            }
        )
    )
    objects = ObjectSet(kustomize_build(kubectl, overlay))
    key = yaml.safe_load((gateway_dir / "api-key" / "api-key.yaml").read_text())["data"]["key"]
    guarded = 0
    for route in objects.of_kind("HTTPRoute"):
        for rule in route["spec"]["rules"]:
            if not rule.get("backendRefs"):
                continue
            for match in rule["matches"]:
                assert {"type": "Exact", "name": "x-api-key", "value": key} in match.get("headers", []), (
                    f"{route['metadata']['name']} {match} is reachable without the API key"
                )
                guarded += 1
    assert guarded == len(_route_backends(objects))
    assert not objects.of_kind("ConfigMap"), "the key's ConfigMap is local-config, not applied"


# --------------------------------------------------------------------------------------------
# ALB


def test_the_alb_serves_https_only_and_outlasts_the_longest_request(alb: ObjectSet, deploy: ObjectSet) -> None:
    (ingress,) = alb.of_kind("Ingress")
    notes = ingress["metadata"]["annotations"]
    assert ingress["spec"]["ingressClassName"] == "alb"
    assert notes["alb.ingress.kubernetes.io/certificate-arn"].startswith("arn:aws:acm:")
    assert notes["alb.ingress.kubernetes.io/ssl-redirect"] == "443"
    assert notes["alb.ingress.kubernetes.io/target-type"] == "ip", "Knative's Services have no NodePort"
    idle = _alb_attributes(notes["alb.ingress.kubernetes.io/load-balancer-attributes"])["idle_timeout.timeout_seconds"]
    assert int(idle) > _longest_request_s(deploy)
