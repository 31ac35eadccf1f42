"""deploy/monitoring scrapes what deploy/ runs: the ServiceMonitor selects the controller's
metrics Service by a port it has, the PodMonitor the predictor pods' Knative user port, all in
the namespace of the targets (no namespaceSelector: a monitor watches its own namespace)."""

from __future__ import annotations

from typing import Any

import pytest
from k8slib import ObjectSet

MONITORING = "deploy/monitoring"
KNATIVE_USER_PORT = "user-port"  # knative.dev/serving pkg/apis/serving/v1 UserPortName


@pytest.fixture(scope="module")
def monitoring(builds: dict[str, Any]) -> ObjectSet:
    result = builds.get(MONITORING)
    assert result is not None and not isinstance(result, RuntimeError), result
    return result


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        if expression["operator"] == "Exists" and expression["key"] not in labels:
            return False
        if expression["operator"] == "In" and labels.get(expression["key"]) not in expression["values"]:
            return False
    return True


def test_the_service_monitor_scrapes_the_controllers_metrics_service(monitoring: ObjectSet, deploy: ObjectSet) -> None:
    (monitor,) = monitoring.of_kind("ServiceMonitor")
    namespace = monitor["metadata"]["namespace"]
    assert "namespaceSelector" not in monitor["spec"]
    selected = [
        service for service in deploy.of_kind("Service")
        if service["metadata"]["namespace"] == namespace
        and _selects(monitor["spec"]["selector"], service["metadata"].get("labels", {}))
    ]
    assert [s["metadata"]["name"] for s in selected] == ["inference-traffic-controller-metrics"]
    ports = {port["name"] for port in selected[0]["spec"]["ports"]}
    assert {endpoint["port"] for endpoint in monitor["spec"]["endpoints"]} <= ports
    deployment = deploy.get("Deployment", "inference-traffic-controller", namespace)
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert {p["name"] for p in container["ports"]} >= {selected[0]["spec"]["ports"][0]["targetPort"]}


def test_the_pod_monitor_scrapes_the_predictor_pods_on_knatives_user_port(monitoring: ObjectSet, deploy: ObjectSet) -> None:
    (monitor,) = monitoring.of_kind("PodMonitor")
    assert "namespaceSelector" not in monitor["spec"]
    units = deploy.of_kind("InferenceService")
    assert {u["metadata"]["namespace"] for u in units} == {monitor["metadata"]["namespace"]}
    # KServe labels every predictor pod serving.kserve.io/inferenceservice=<name>.
    for unit in units:
        pod_labels = {"serving.kserve.io/inferenceservice": unit["metadata"]["name"], "component": "predictor"}
        assert _selects(monitor["spec"]["selector"], pod_labels), unit["metadata"]["name"]
    assert not _selects(monitor["spec"]["selector"], {"app.kubernetes.io/name": "inference-traffic-controller"})
    for endpoint in monitor["spec"]["podMetricsEndpoints"]:
        assert endpoint["port"] == KNATIVE_USER_PORT and endpoint["path"] == "/metrics"


def test_dashboards_and_rules_are_in_the_build(monitoring: ObjectSet) -> None:
    (dashboards,) = monitoring.of_kind("ConfigMap")
    assert dashboards["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert set(dashboards["data"]) == {"sd21-units.json", "sd21-traffic-controller.json"}
    (rule,) = monitoring.of_kind("PrometheusRule")
    assert rule["spec"]["groups"][0]["rules"]
