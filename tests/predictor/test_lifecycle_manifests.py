"""The ServingRuntimes and InferenceServices give the predictor's drain and health checks room to work.

In Knative mode (every InferenceService here) the pod's terminationGracePeriodSeconds is the revision's
timeoutSeconds, which KServe takes from ``spec.predictor.timeout`` (knative/serving
pkg/reconciler/revision/resources/deploy.go, ``makePodSpec``); a ServingRuntime cannot set it (its
pod spec has no such field, see tests/k8s/crds). Before SIGTERM reaches the predictor, the user
container's preStop, which Knative sets itself, waits for the queue-proxy to drain: at least its
quiet period, ``network.DefaultDrainTimeout`` = 45 s.
"""

from __future__ import annotations

import functools

import pytest

from predictor.lifecycle import FLUSH_GRACE_S
from tests.k8s.k8slib import REPO_ROOT, find_kubectl, kustomize_build

KNATIVE_QUEUE_PROXY_DRAIN_S = 45
KNATIVE_DEFAULT_TIMEOUT_S = 300  # config-defaults revision-timeout-seconds


@functools.cache
def _documents(directory: str, kind: str) -> tuple[dict, ...]:
    """The objects as applied: `kubectl kustomize`, which adds the shared parts from components/."""
    kubectl = find_kubectl()
    if kubectl is None:
        pytest.fail("kubectl not found (needed for `kubectl kustomize`): run .ci/install-kubectl.sh", pytrace=False)
    return tuple(doc for doc in kustomize_build(kubectl, REPO_ROOT / directory) if doc.get("kind") == kind)


def _runtimes() -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for doc in _documents("servingruntimes", "ClusterServingRuntime")}


RUNTIME_NAMES = ("diffusers-cpu", "diffusers-neuron", "diffusers-nvidia")
SERVICE_NAMES = ("sd21-inf2", "sd21-trn1", "sd21-g5-triton", "sd21-g6-triton", "sd21-g5-cuda", "sd21-cpu")


def test_the_parametrized_names_are_every_runtime_and_service():
    assert set(_runtimes()) == set(RUNTIME_NAMES)
    assert {s["metadata"]["name"] for s in _documents("inferenceservices", "InferenceService")} == set(SERVICE_NAMES)


def _container(runtime: dict) -> dict:
    [container] = [c for c in runtime["spec"]["containers"] if c["name"] == "kserve-container"]
    return container


def _flag(container: dict, name: str) -> str | None:
    for arg in container.get("args", []):
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
    return None


@pytest.mark.parametrize("name", RUNTIME_NAMES)
def test_each_runtime_sets_the_drain_and_points_its_probes_at_what_reflects_the_lifecycle(name):
    container = _container(_runtimes()[name])
    assert float(_flag(container, "drain_timeout_s")) > 0
    assert _flag(container, "enable_repository_api") == "false"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"  # fails when the device is unhealthy
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/models/{{.Name}}/ready"
    assert "lifecycle" not in container, "Knative sets the preStop of the serving container itself"


@pytest.mark.parametrize("name", SERVICE_NAMES)
def test_each_inference_service_gives_its_pods_a_grace_period_that_covers_the_drain(name):
    (service,) = [s for s in _documents("inferenceservices", "InferenceService") if s["metadata"]["name"] == name]
    predictor = service["spec"]["predictor"]
    container = _container(_runtimes()[predictor["model"]["runtime"]])
    drain = float(_flag(container, "drain_timeout_s"))
    mode = service["metadata"].get("annotations", {}).get("serving.kserve.io/deploymentMode", "Knative")
    if mode == "Knative":
        grace = predictor.get("timeout", KNATIVE_DEFAULT_TIMEOUT_S)
        assert grace >= KNATIVE_QUEUE_PROXY_DRAIN_S + drain + FLUSH_GRACE_S
    else:
        assert predictor.get("terminationGracePeriodSeconds", 30) >= drain + FLUSH_GRACE_S
