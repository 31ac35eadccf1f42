"""deploy/playground: least privilege, probes and resources, and endpoints that exist in deploy/."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from k8slib import REPO_ROOT, ObjectSet, dig, kustomize_build

from playground.endpoints import V1, V2, parse_endpoints


@pytest.fixture(scope="module")
def playground(builds) -> ObjectSet:
    result = builds.get("deploy/playground")
    if isinstance(result, RuntimeError) or result is None:
        pytest.fail(f"deploy/playground does not build: {result}", pytrace=False)
    return result


def _container(playground: ObjectSet) -> dict:
    (deployment,) = playground.of_kind("Deployment")
    (container,) = dig(deployment, "spec", "template", "spec", "containers")
    return container


def test_the_pod_runs_non_root_read_only_without_a_token_and_with_probes_and_limits(playground):
    (deployment,) = playground.of_kind("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = _container(playground)
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert pod["automountServiceAccountToken"] is False
    (account,) = playground.of_kind("ServiceAccount")
    assert account["automountServiceAccountToken"] is False and pod["serviceAccountName"] == account["metadata"]["name"]
    assert not playground.of_kind("Role") and not playground.of_kind("RoleBinding"), "it never calls the API server"
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["resources"]["requests"]["memory"] and container["resources"]["limits"]["memory"]


def test_its_endpoints_are_the_router_and_the_units_that_deploy_serves(playground, deploy):
    args = _container(playground)["args"]
    specs = [arg.removeprefix("--endpoint=") for arg in args if arg.startswith("--endpoint=")]
    endpoints = {endpoint.name: endpoint for endpoint in parse_endpoints(specs)}
    units = deploy.names("InferenceService")
    assert set(endpoints) == {"router", *units}
    (graph,) = deploy.of_kind("InferenceGraph")
    router = endpoints["router"]
    assert router.protocol == V1 and urlsplit(router.url).hostname == f"{graph['metadata']['name']}.sd21.svc.cluster.local"
    for unit in units:
        endpoint = endpoints[unit]
        # Knative's cluster-local Service for the predictor (kserve constants.PredictorServiceName);
        # the runtimes pass --model_name={{.Name}}, so the model is the InferenceService's name.
        assert endpoint.protocol == V2 and endpoint.model == unit
        assert urlsplit(endpoint.url).hostname == f"{unit}-predictor.sd21.svc.cluster.local"


@pytest.fixture(scope="module")
def playground_on_the_edge(kubectl: str, tmp_path_factory) -> ObjectSet:
    """deploy/playground with its optional edge-route component."""
    overlay = tmp_path_factory.mktemp("playground-edge")
    base = REPO_ROOT / "deploy" / "playground"
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "resources": [os.path.relpath(base, overlay)],
                "components": [os.path.relpath(base / "edge-route", overlay)],
            }
        )
    )
    return ObjectSet(kustomize_build(kubectl, Path(overlay)))


def test_the_edge_route_is_opt_in(playground):
    """No login on the page, and a browser cannot send the edge's x-api-key header: not public by default."""
    assert not playground.of_kind("HTTPRoute")


def test_the_edge_route_reaches_the_service_port_the_pod_listens_on(playground_on_the_edge):
    playground = playground_on_the_edge
    (service,) = playground.of_kind("Service")
    (route,) = playground.of_kind("HTTPRoute")
    assert [parent["name"] for parent in route["spec"]["parentRefs"]] == ["sd21-edge"]
    container = _container(playground)
    backends = [ref for rule in route["spec"]["rules"] for ref in rule.get("backendRefs", [])]
    assert backends == [{"name": service["metadata"]["name"], "port": service["spec"]["ports"][0]["port"]}]
    assert service["spec"]["ports"][0]["targetPort"] == container["ports"][0]["name"]
    port = container["ports"][0]["containerPort"]
    assert f"--port={port}" in container["args"] and "--host=0.0.0.0" in container["args"]
    assert service["spec"]["selector"].items() <= container_labels(playground).items()


def container_labels(playground: ObjectSet) -> dict:
    (deployment,) = playground.of_kind("Deployment")
    return deployment["spec"]["template"]["metadata"]["labels"]
