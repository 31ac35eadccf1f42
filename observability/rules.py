"""PrometheusRule alerts. docs/operating.md says what each one means and what to do."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from observability import names as n
from observability.promql import leader_only

RUNBOOK = "docs/operating.md"  # its alert sections are named after the alerts
# Router writes per hour above which the weights flap: each InferenceGraph edit rolls out a new
# router revision (Knative), so more than one every 5 minutes on average is churn, not control.
FLAP_ROUTER_WRITES_PER_HOUR = 12


@dataclass(frozen=True)
class Alert:
    name: str
    expr: str
    for_: str
    severity: str
    summary: str
    description: str

    def rule(self) -> dict[str, Any]:
        return {
            "alert": self.name,
            "expr": self.expr,
            "for": self.for_,
            "labels": {"severity": self.severity},
            "annotations": {
                "summary": self.summary,
                "description": self.description,
                "runbook_url": f"{RUNBOOK}#{self.name.lower()}",
            },
        }


def alerts() -> list[Alert]:
    return [
        Alert(
            "TrafficControllerNoLeader",
            f"max by (namespace) ({n.C_LEADER}) == 0",
            "5m",
            "critical",
            "No traffic controller replica holds the lease in {{ $labels.namespace }}",
            "Every replica of the traffic controller is standing by: nobody moves traffic away from a unit "
            "that loses capacity.",
        ),
        Alert(
            "TrafficControllerDown",
            f"absent({n.C_LEADER})",
            "10m",
            "critical",
            "No traffic controller replica has been scraped for 10 minutes",
            "Prometheus has no traffic_controller_leader series: every replica is down or not scraped, so "
            "TrafficControllerNoLeader cannot fire either.",
        ),
        Alert(
            "TrafficControllerSignalsStale",
            f"max by (namespace) ({leader_only(n.C_SIGNALS_STALE)}) == 1",
            "5m",
            "warning",
            "The traffic controller is holding the weights: its signals are stale in {{ $labels.namespace }}",
            "The leader cannot read fresh signals (pods, autoscalers, events, or the demand query) and keeps the "
            "weights as they are until it can.",
        ),
        Alert(
            "UnitTrafficWithoutReadyReplica",
            f"(max by (namespace, unit) ({leader_only(n.C_ROUTER_WEIGHT)}) > 0)"
            f" and on (namespace, unit) (max by (namespace, unit) ({leader_only(n.C_READY)}) == 0)",
            "2m",
            "critical",
            "{{ $labels.unit }} gets {{ $value }}% of the traffic but has no ready replica",
            "sd21-router sends part of the requests to a unit without a ready replica: those requests wait for "
            "a cold start or fail.",
        ),
        Alert(
            "PredictorQueueFull",
            f'sum by (namespace, model_name) (rate({n.P_REJECTED}{{reason="queue_full"}}[5m])) > 0',
            "5m",
            "warning",
            "{{ $labels.model_name }} rejects requests: its queue is full",
            "The predictor answered 503 (queue full) to {{ $value | humanize }} requests/s over 5 minutes: more "
            "requests reach the pod than --max_queue_size admits.",
        ),
        Alert(
            "PredictorNotReady",
            f"max by (namespace, pod, instance, model_name) ({n.P_MODEL_READY}) == 0",
            "20m",
            "warning",
            "{{ $labels.model_name }} on {{ $labels.pod }} has not been ready for 20 minutes",
            "The model has not finished loading and warming up for longer than the startup probe allows "
            "(15 minutes).",
        ),
        Alert(
            "UnitCapacityErrors",
            f"max by (namespace, unit) ({leader_only(n.C_CAPACITY_ERRORS)}) > 0",
            "15m",
            "warning",
            "{{ $labels.unit }} cannot get capacity ({{ $value }} errors in the window) for 15 minutes",
            "Karpenter keeps failing to launch nodes for the unit's pool (InsufficientCapacity, failed "
            "NodeClaims): the unit cannot grow.",
        ),
        Alert(
            "TrafficWeightsFlapping",
            f'sum by (namespace) (increase({n.C_PATCHES}{{target="router"}}[1h])) > {FLAP_ROUTER_WRITES_PER_HOUR}',
            "0m",
            "warning",
            "The traffic controller rewrote sd21-router's weights {{ $value | humanize }} times in an hour",
            "Weights change back and forth; every InferenceGraph edit rolls out a new router revision.",
        ),
    ]


def prometheus_rule() -> dict[str, Any]:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "sd21-alerts",
            "labels": {"release": "kube-prometheus-stack", "app.kubernetes.io/component": "monitoring"},
        },
        "spec": {"groups": [{"name": "sd21", "rules": [alert.rule() for alert in alerts()]}]},
    }
