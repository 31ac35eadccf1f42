"""The ServingRuntimes and InferenceServices give the predictor's drain and health checks room to work.

In Knative mode (every InferenceService here) the pod's terminationGracePeriodSeconds is the revision's
timeoutSeconds, which KServe takes from ``spec.predictor.timeout`` (knative/serving
pkg/reconciler/revision/resources/deploy.go, ``makePodSpec``); a ServingRuntime cannot set it (its
pod spec has no such field, see tests/k8s/crds). Before SIGTERM reaches the predictor, the user
container's preStop, which Knative sets itself, waits for the queue-proxy to drain: at least its
quiet period, ``network.DefaultDrainTimeout`` = 45 s.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from predictor.lifecycle import FLUSH_GRACE_S

REPO = Path(__file__).resolve().parents[2]
KNATIVE_QUEUE_PROXY_DRAIN_S = 45
KNATIVE_DEFAULT_TIMEOUT_S = 300  # config-defaults revision-timeout-seconds


def _documents(directory: str, kind: str) -> list[dict]:
    found = []
    for path in sorted((REPO / directory).glob("*.yaml")):
        found += [doc for doc in yaml.safe_load_all(path.read_text()) if doc and doc.get("kind") == kind]
    return found


RUNTIMES = {doc["metadata"]["name"]: doc for doc in _documents("servingruntimes", "ClusterServingRuntime")}
SERVICES = _documents("inferenceservices", "InferenceService")


def _container(runtime: dict) -> dict:
    [container] = [c for c in runtime["spec"]["containers"] if c["name"] == "kserve-container"]
    return container


def _flag(container: dict, name: str) -> str | None:
    for arg in container.get("args", []):
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
    return None


@pytest.mark.parametrize("name", sorted(RUNTIMES))
def test_each_runtime_sets_the_drain_and_points_its_probes_at_what_reflects_the_lifecycle(name):
    container = _container(RUNTIMES[name])
    assert float(_flag(container, "drain_timeout_s")) > 0
    assert _flag(container, "enable_repository_api") == "false"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"  # fails when the device is unhealthy
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/models/{{.Name}}/ready"
    assert "lifecycle" not in container, "Knative sets the preStop of the serving container itself"


@pytest.mark.parametrize("service", SERVICES, ids=lambda s: s["metadata"]["name"])
def test_each_inference_service_gives_its_pods_a_grace_period_that_covers_the_drain(service):
    predictor = service["spec"]["predictor"]
    container = _container(RUNTIMES[predictor["model"]["runtime"]])
    drain = float(_flag(container, "drain_timeout_s"))
    mode = service["metadata"].get("annotations", {}).get("serving.kserve.io/deploymentMode", "Knative")
    if mode == "Knative":
        grace = predictor.get("timeout", KNATIVE_DEFAULT_TIMEOUT_S)
        assert grace >= KNATIVE_QUEUE_PROXY_DRAIN_S + drain + FLUSH_GRACE_S
    else:
        assert predictor.get("terminationGracePeriodSeconds", 30) >= drain + FLUSH_GRACE_S
