"""Grafana dashboards (JSON model, schemaVersion 39) for the units and the traffic controller."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from observability import names as n
from observability.promql import (
    RATE,
    UNIT_FILTER,
    by_unit,
    leader_only,
    mean,
    quantile,
    rate_sum,
    unit_capacity_rps,
    unit_cost_per_hour,
)

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


@dataclass
class Panel:
    title: str
    targets: list[tuple[str, str]]  # (expr, legend)
    unit: str = "short"
    kind: str = "timeseries"
    description: str = ""
    options: dict[str, Any] = field(default_factory=dict)


def _panel(panel: Panel, index: int) -> dict[str, Any]:
    width = 12
    targets = [
        {"datasource": DATASOURCE, "expr": expr, "legendFormat": legend, "refId": chr(ord("A") + i)}
        for i, (expr, legend) in enumerate(panel.targets)
    ]
    if panel.kind == "table":
        for target in targets:
            target |= {"instant": True, "format": "table"}
    return {
        "id": index + 1,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": 8, "w": width, "x": (index % 2) * width, "y": (index // 2) * 8},
        "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
        "options": panel.options,
        "targets": targets,
    }


def _dashboard(uid: str, title: str, description: str, panels: list[Panel], variables: list[dict]) -> dict[str, Any]:
    datasource = {
        "name": "datasource",
        "label": "Prometheus",
        "type": "datasource",
        "query": "prometheus",
        "current": {},
        "hide": 0,
    }
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["hw-agnostic-inference", "sd21"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": [datasource, *variables]},
        "annotations": {"list": []},
        "panels": [_panel(panel, i) for i, panel in enumerate(panels)],
    }


def units_dashboard() -> dict[str, Any]:
    sel = UNIT_FILTER
    unit_variable = {
        "name": "unit",
        "label": "Unit",
        "type": "query",
        "datasource": DATASOURCE,
        "query": {"query": f"label_values({n.P_MODEL_READY}, model_name)", "refId": "units"},
        "definition": f"label_values({n.P_MODEL_READY}, model_name)",
        "includeAll": True,
        "multi": True,
        "allValue": ".+",
        "current": {"text": "All", "value": "$__all"},
        "refresh": 2,
        "hide": 0,
    }
    latency = [
        (quantile(q, n.P_REQUEST_SECONDS, "model_name", sel), f"{{{{model_name}}}} p{int(q * 100)}")
        for q in (0.5, 0.95, 0.99)
    ]
    controller_ready = n.C_READY + '{unit=~"$unit"}'
    panels = [
        Panel("Request rate by outcome", [(rate_sum(n.P_REQUESTS, "model_name, outcome", sel), "{{model_name}} {{outcome}}")],
              "reqps", description="Inference requests reaching each unit's model (REST v1/v2 and gRPC)."),
        Panel("Latency p50 / p95 / p99", latency, "s",
              description="From the request reaching the model to its answer: parse, queue, pipeline, encoding."),
        Panel("Queue depth", [(f"sum by (model_name) ({n.P_QUEUE_DEPTH}{{{sel}}})", "{{model_name}}")],
              description="Items waiting for a batch, summed over the unit's pods."),
        Panel("Queue wait p95", [(quantile(0.95, n.P_QUEUE_WAIT_SECONDS, "model_name", sel), "{{model_name}}")], "s"),
        Panel("Batch size (mean items per pipeline call)", [(mean(n.P_BATCH_SIZE, "model_name", sel), "{{model_name}}")]),
        Panel("Pipeline call p95", [(quantile(0.95, n.P_PIPELINE_SECONDS, "model_name", sel), "{{model_name}}")], "s"),
        Panel("Rejections by reason", [(rate_sum(n.P_REJECTED, "model_name, reason", sel), "{{model_name}} {{reason}}")],
              "reqps", description="queue_full: more requests than --max_queue_size; invalid_input: the client's error."),
        Panel(
            "Ready replicas",
            [
                (f"sum by (model_name) ({n.P_MODEL_READY}{{{sel}}})", "{{model_name}} (pods reporting ready)"),
                (f"max by (unit) {leader_only(controller_ready)}",
                 "{{unit}} (controller's view)"),
            ],
        ),
        Panel(
            "Device per pod",
            [(f"max by (instance, kind, names, count) ({n.P_DEVICE_INFO}) * on (instance) group_left (model_name) "
              f"max by (instance, model_name) ({n.P_MODEL_READY}{{{sel}}})", "")],
            kind="table",
            description="The accelerator each pod runs on (kind, device names) and whether its model is ready (value).",
        ),
    ]
    return _dashboard("sd21-units", "sd21 units", "Per deployment unit: traffic, latency, queue, batches, rejections, "
                      "replicas, device.", panels, [unit_variable])


def controller_dashboard() -> dict[str, Any]:
    panels = [
        Panel("Router weights per unit", [(by_unit(n.C_ROUTER_WEIGHT), "{{unit}}")], "percent",
              description="Weights in effect on sd21-router, as the controller last read them."),
        Panel("Weights the controller wants", [(by_unit(n.C_WEIGHT), "{{unit}}")], "percent"),
        Panel("State", [
            (f"max by (mode) ({leader_only(n.C_MODE)}) == 1", "{{mode}}"),
            (f"max {leader_only(n.C_PAUSED)}", "paused"),
            (f"max {leader_only(n.C_SIGNALS_STALE)}", "signals stale"),
            (f"sum ({n.C_LEADER})", "replicas holding the lease"),
        ], description="Policy mode (cost- or capacity-optimized), paused by a hand edit, stale signals, leaders (1)."),
        Panel("Capacity errors per unit", [(by_unit(n.C_CAPACITY_ERRORS), "{{unit}}")],
              description="InsufficientCapacity events and failed NodeClaims in the window (timing.capacity_error_window_s)."),
        Panel("Decisions by action and reason",
              [(f"sum by (action, reason) (increase({n.C_DECISIONS}[{RATE}]))", "{{action}}: {{reason}}")],
              description="Every reconcile: what was done (applied, unchanged, paused, stale, ...) and why; "
                          "the full reason line is in /status and in Events on sd21-router."),
        Panel("Demand against capacity", [
            (f"max {leader_only(n.C_DEMAND)}", "demand (controller)"),
            (f"sum ({unit_capacity_rps()})", "capacity of ready replicas"),
            (f'sum (rate({n.P_REQUESTS}{{outcome="ok"}}[{RATE}]))', "answered by the predictors"),
        ], "reqps"),
        Panel("Planned requests/s per unit", [(by_unit(n.C_PLANNED), "{{unit}}")], "reqps"),
        Panel("Cost per hour", [(unit_cost_per_hour(), "{{unit}}"), (f"sum ({unit_cost_per_hour()})", "total")],
              "currencyUSD", description="On-demand price x desired replicas per unit."),
        Panel("Replicas: ready and desired", [
            (by_unit(n.C_READY), "{{unit}} ready"),
            (by_unit(n.C_DESIRED), "{{unit}} desired"),
        ]),
        Panel("Writes and errors", [
            (f"sum by (target) (increase({n.C_PATCHES}[{RATE}]))", "writes: {{target}}"),
            (f"sum by (source) (increase({n.C_ERRORS}[{RATE}]))", "errors: {{source}}"),
        ]),
    ]
    return _dashboard("sd21-traffic-controller", "sd21 traffic controller",
                      "Weights per unit over time, state, capacity errors, decisions, demand against capacity, cost.",
                      panels, [])


def dashboards() -> dict[str, dict[str, Any]]:
    """file stem -> dashboard JSON model."""
    return {"sd21-units": units_dashboard(), "sd21-traffic-controller": controller_dashboard()}


def queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expr) of every target in a dashboard, and its query variables."""
    found = [(panel["title"], target["expr"]) for panel in dashboard["panels"] for target in panel["targets"]]
    for variable in dashboard["templating"]["list"]:
        if variable.get("type") == "query":
            found.append((f"variable {variable['name']}", variable["definition"]))
    return found
