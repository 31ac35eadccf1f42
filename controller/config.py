"""Controller configuration: pydantic v2 models, parsing and validation.

The same file is read by ``python -m controller run`` and by the planner/simulator, so that what
is simulated is what runs. YAML keys are the model field names (snake_case). Each field is
declared once, with its default, bounds and description; checks that involve several fields are
model validators. Every validation error is a :class:`ConfigError` whose message starts with the
offending key path, e.g. ``units[2].price_per_hour: must be > 0`` (several errors are joined by
``; ``).

Values are strict where YAML could silently mean something else: a number must be a YAML number
(not ``"5"``, not ``true``), an integer may be written ``4.0``, a flag must be ``true``/``false``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BeforeValidator, Field, ValidationError, model_validator

from controller.config_fields import (
    DNS1123,
    ConfigError,
    DnsName,
    Flag,
    Integer,
    Number,
    Section,
    Text,
    choice,
    config_error,
    fail,
    http_url,
    optional_dns_name,
    section_field,
    text,
)

POOLS = ("cost", "capacity")
THROUGHPUT_PER = {"second": 1.0, "minute": 60.0}  # config throughput units per request/s
STRATEGIES = ("merit-order", "proportional")
ROUTER_KINDS = ("inferencegraph", "alb-ingress", "httproute")
CAPACITY_TYPES = ("on-demand", "spot")
_ANNOTATION_SUFFIX = re.compile(r"^[A-Za-z0-9][-A-Za-z0-9_.]*$")


# --------------------------------------------------------------------------- sections


class Unit(Section):
    """One deployment unit: an InferenceService on one accelerator type."""

    name: DnsName = Field(description="InferenceService name (also the router step name)")
    namespace: DnsName = Field(description="the unit's namespace; defaults to the top-level namespace")
    pool: Annotated[Literal["cost", "capacity"], choice(POOLS)] = Field(
        description="cost: preferred while it has capacity; capacity: the fallback")
    instance_type: Text = Field(description="EC2 instance type of the unit's nodes")
    price_per_hour: Number = Field(gt=0, description="USD per replica-hour")
    max_throughput: Number = Field(gt=0, description="requests/s (throughput_per) one replica sustains at its "
                                   "breaking point")
    latency_s: Number = Field(gt=0, description="latency at the breaking point")
    max_replicas: Integer = Field(ge=1, description="the InferenceService's maxReplicas")
    min_replicas: Integer = Field(0, ge=0, description="replicas kept running (paid for) at all times")
    startup_s: Number = Field(300.0, ge=0, description="time from scale-up to a ready replica (pre-warm, simulator)")
    nodepool: DnsName | None = Field(None, description="Karpenter NodePool feeding this unit")
    capacity_type: Annotated[Literal["on-demand", "spot"], choice(CAPACITY_TYPES, "must be on-demand or spot, "
                                                                   "got {value}")] = Field(
        "on-demand", description="Karpenter capacity type of the unit's nodes (karpenter.sh/capacity-type). spot: "
        "priced at spot in price_per_hour, interrupted with a 2-minute notice (docs/simulation.md, spot)")
    service_name: DnsName | None = Field(None, description="ALB target group service; defaults to name")
    service_port: Integer = Field(80, ge=1, le=65535, description="ALB target group port")

    @model_validator(mode="after")
    def _floor_below_ceiling(self) -> Unit:
        if self.min_replicas > self.max_replicas:
            raise fail(f"must be <= max_replicas ({self.max_replicas})", field="min_replicas")
        return self


class Router(Section):
    """The object whose weights the controller edits."""

    kind: Annotated[Literal["inferencegraph", "alb-ingress", "httproute"], choice(ROUTER_KINDS)] = Field(
        "inferencegraph", description="InferenceGraph, ALB Ingress or Gateway API HTTPRoute")
    name: DnsName = Field(description="the router object's name")
    namespace: DnsName = Field(description="the router's namespace; defaults to the top-level namespace")
    action: Text | None = Field(None, description="ALB action name: annotation alb.ingress.kubernetes.io/actions."
                                "<action> (kind alb-ingress only; default weighted-routing)")

    @model_validator(mode="before")
    @classmethod
    def _alb_action_default(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and data.get("kind") == "alb-ingress" and data.get("action") is None:
            return {**data, "action": "weighted-routing"}
        return data

    @model_validator(mode="after")
    def _action_fits_kind(self) -> Router:
        if self.kind == "alb-ingress":
            if not _ANNOTATION_SUFFIX.match(self.action or ""):
                raise fail("not a valid annotation suffix: {value}", self.action, field="action")
        elif self.action is not None:
            raise fail("only valid with kind: alb-ingress", field="action")
        return self


class Timing(Section):
    """Decision interval, staleness, holds, ramps and API retries."""

    interval_s: Number = Field(30, gt=0, description="decision interval")
    signal_max_age_s: Number = Field(120, gt=0, description="older signals are stale: no action")
    pending_grace_s: Number = Field(120, ge=0, description="a pod unschedulable for longer counts as unschedulable")
    min_state_s: Number = Field(300, ge=0, description="minimum time in capacity-optimized before a fallback")
    fallback_hold_s: Number = Field(900, ge=0, description="cost pool must show ready headroom this long before "
                                    "fallback")
    max_weight_step: Integer = Field(100, ge=1, le=100, description="max change of one unit's weight per decision "
                                     "(100 = no ramp)")
    capacity_error_window_s: Number = Field(600, gt=0, description="InsufficientCapacityError events counted over "
                                            "this window")
    api_timeout_s: Number = Field(10, gt=0, description="per Kubernetes / Prometheus request")
    backoff_initial_s: Number = Field(1, gt=0, description="first retry delay for API errors, doubled per retry")
    backoff_max_s: Number = Field(30, gt=0, description="retry delay cap")
    api_retries: Integer = Field(4, ge=0, le=20, description="retries of one API call before the reconcile gives up")

    @model_validator(mode="after")
    def _consistent(self) -> Timing:
        if self.signal_max_age_s < self.interval_s:
            raise fail(f"must be >= interval_s ({self.interval_s:g}), or every signal is stale",
                        field="signal_max_age_s")
        if self.backoff_max_s < self.backoff_initial_s:
            raise fail("must be >= backoff_initial_s", field="backoff_max_s")
        return self


class Thresholds(Section):
    """When the cost pool can take the traffic back."""

    headroom_ratio: Number = Field(1.2, ge=1, description="fallback needs demand * headroom_ratio <= what the cost "
                                   "pool can serve at max_replicas")


class Routing(Section):
    """How weights are computed (see controller/allocation.py and docs/controller.md).

    ``merit-order`` (needs measured demand): replicas that are paid for anyway (``min_replicas``)
    serve first, the rest goes to the cheapest units that can get capacity, never more to a unit
    than its ready replicas carry at ``max_utilisation``; the controller sets ``minReplicas`` so
    units grow before traffic moves to them. ``proportional``: the seed's two weight sets, all to
    the cost pool, or seed Table 2 proportions when the cost pool is short.
    """

    strategy: Annotated[Literal["merit-order", "proportional"], choice(STRATEGIES)] = Field(
        "proportional", description="merit-order or proportional; in a config file the default is merit-order "
        "when prometheus.url is set (measured demand), else proportional")
    target_utilisation: Number = Field(0.7, gt=0, le=1, description="the InferenceServices' scaleTarget / "
                                       "max_throughput")
    max_utilisation: Number = Field(0.9, gt=0, le=1, description="never route more to a unit's ready replicas while "
                                    "others have room")
    min_weight_change: Integer = Field(5, ge=1, le=100, description="leave the router alone unless a weight would "
                                       "move by at least this many points (or a unit is overloaded or not ready): "
                                       "every InferenceGraph edit rolls out a new router revision")
    drop_cost_usd: Number = Field(0.0, ge=0, description="the cost of a dropped request (USD): merit-order starts "
                                  "bridge replicas on the fastest-starting units for demand that no ready replica "
                                  "carries only where the requests they save are worth more than they cost "
                                  "(allocation.urgent_bridge), and keeps standing spare replicas where the drops "
                                  "the recorded demand rises predict are worth more than their price per hour "
                                  "(policy/spare.py). 0: never")
    spare_memory_s: Number = Field(86400, ge=0, le=7 * 86400, description="merit-order, with drop_cost_usd > 0: "
                                   "demand rises beyond the scale target's headroom within one start-up are "
                                   "remembered this long to size standing spare replicas (policy/spare.py). 0: no "
                                   "standing spare")

    @model_validator(mode="after")
    def _ceiling_above_target(self) -> Routing:
        if self.max_utilisation < self.target_utilisation:
            raise fail(f"must be >= target_utilisation ({self.target_utilisation:g})", field="max_utilisation")
        return self


class Prometheus(Section):
    """Where measured demand comes from."""

    url: Annotated[str, AfterValidator(http_url), BeforeValidator(text)] = Field(
        description="http(s) URL of the Prometheus API (trailing / dropped); empty: no Prometheus")
    # The default sums Knative's queue-proxy request counter over the units' predictor revisions
    # (KServe names the predictor's Knative Service <isvc>-predictor; metric and labels:
    # knative.dev/docs/serving/services/service-metrics). Requests waiting in the activator for a
    # unit with no ready pod are not in it yet: with an InferenceGraph router, count at the router
    # instead (controller/deploy/controller.yaml does).
    query: Text = Field(
        'sum(rate(revision_request_count{namespace_name="$namespace",configuration_name=~"($names)-predictor.*"}[2m]))',
        description="PromQL for the demand in requests/s; string.Template placeholders: $namespace, $names (regex "
        "alternation of unit names), $router (the router object's name)")
    timeout_s: Number = Field(5.0, gt=0, description="per query")


class Prewarm(Section):
    """Raise minReplicas on capacity-pool units ahead of a failover."""

    enabled: Flag = Field(False, description="pre-warm at all")
    min_replicas: Integer = Field(1, ge=1, description="floor for each capacity unit while pre-warmed")
    utilization: Number = Field(0.8, gt=0, le=1, description="pre-warm when demand > utilization * cost pool max "
                                "capacity")
    hold_s: Number = Field(600, ge=0, description="keep pre-warm this long after the last trigger")
    hold_until_fallback: Flag = Field(False, description="merit-order: while capacity-optimized (the cost pool has "
                                      "been short and has not yet held everything it asked for for fallback_hold_s), "
                                      "capacity units' floors do not come down: the spare capacity for a cost pool "
                                      "whose capacity comes and goes (flapping)")
    slope_horizon: Number = Field(1.5, ge=0, le=4, description="merit-order: replica floors are sized for the "
                                  "demand expected this many start-ups ahead (x the longest units[].startup_s), "
                                  "extrapolating the measured demand's sustained slope (demand.demand_slope), "
                                  "carried at max_utilisation: a rise within the autoscaler's headroom, a burst "
                                  "or a falling demand pre-warms nothing. 0: off (floors follow the demand now)")
    slope_window_s: Number = Field(600, ge=60, le=3600, description="merit-order: measured demand of this long "
                                   "is fitted for the slope (Theil-Sen on each half; a trend must show in both)")
    slope_cap: Number = Field(1.0, ge=0, le=4, description="merit-order: the extrapolated rise is at most this "
                              "share of the demand now")


class Lease(Section):
    """Leader election: one active controller replica."""

    enabled: Flag = Field(True, description="hold a coordination.k8s.io Lease before acting")
    name: DnsName = Field("inference-traffic-controller-leader", description="the Lease's name")
    namespace: DnsName = Field("default", description="the Lease's namespace; defaults to the top-level namespace")
    duration_s: Number = Field(15, gt=0, description="lease duration")
    renew_s: Number = Field(5, gt=0, description="renew period; must be < duration_s")

    @model_validator(mode="after")
    def _renew_within_duration(self) -> Lease:
        if self.renew_s >= self.duration_s:
            raise fail(f"must be < duration_s ({self.duration_s:g})", field="renew_s")
        return self


def _unit_list(value: Any) -> Any:
    if not isinstance(value, list | tuple) or not value:
        raise fail("must be a non-empty list")
    return value


class ControllerConfig(Section):
    """The whole controller config file."""

    namespace: DnsName = Field("default", description="default namespace of units, router and lease")
    units: Annotated[tuple[Unit, ...], BeforeValidator(_unit_list)] = Field(
        description="the deployment units, at least one per pool, at most 100")
    router: Router = Field(description="the object whose weights the controller edits")
    timing: Timing = section_field(Timing)
    thresholds: Thresholds = section_field(Thresholds)
    prometheus: Prometheus | None = Field(None, description="measured demand; absent or empty url: demand comes "
                                          "from the autoscaler")
    prewarm: Prewarm = section_field(Prewarm)
    routing: Routing = section_field(Routing)
    lease: Lease = section_field(Lease)
    state_configmap: Annotated[str, BeforeValidator(optional_dns_name)] = Field(
        "inference-traffic-controller-state", description="ConfigMap (in the router's namespace) that keeps the "
        "policy state across restarts (controller/state.py); empty: not persisted beyond the router's annotations")
    metrics_port: Integer = Field(8080, ge=0, le=65535, description="port of /metrics and the health endpoints")
    metrics_host: Text = Field("0.0.0.0", description="address the metrics server binds")
    throughput_per: Annotated[Literal["second", "minute"], choice(tuple(THROUGHPUT_PER))] = Field(
        "second", description='unit of max_throughput (and of demand in plan/simulate): requests per "second" or '
        'per "minute" (the seed\'s tables count per minute); measured demand is converted to it')

    @model_validator(mode="before")
    @classmethod
    def _file_defaults(cls, data: Any) -> Any:
        """Defaults that depend on other keys of the file: namespaces inherit the top-level one,
        an empty Prometheus URL means no Prometheus, and measured demand routes merit-order."""
        if not isinstance(data, Mapping):
            return data
        out = dict(data)
        for key in ("router", "timing", "thresholds", "prewarm", "routing", "lease"):
            if out.get(key, "") is None:
                del out[key]  # null: the section's defaults (router: still required)
        namespace = out.get("namespace", "default")
        if not (isinstance(namespace, str) and DNS1123.match(namespace)):
            namespace = "default"  # the error is reported at namespace itself
        if isinstance(out.get("units"), list):
            out["units"] = [_inherit_namespace(u, namespace) for u in out["units"]]
        if "router" in out:
            out["router"] = _inherit_namespace(out["router"], namespace)
        out["lease"] = _inherit_namespace(out.get("lease", {}), namespace)
        prometheus = out.get("prometheus")
        if isinstance(prometheus, Mapping) and prometheus.get("url") in (None, "") and set(prometheus) <= set(
                Prometheus.model_fields):
            prometheus = out["prometheus"] = None
        routing = out.get("routing", {})
        if isinstance(routing, Mapping):
            out["routing"] = {"strategy": "proportional" if prometheus is None else "merit-order", **routing}
        return out

    @model_validator(mode="after")
    def _units_fit_together(self) -> ControllerConfig:
        first: dict[str, int] = {}
        for i, u in enumerate(self.units):
            if u.name in first:
                raise fail(f"duplicate unit name {u.name!r} (also units[{first[u.name]}])", field=f"units[{i}].name")
            first[u.name] = i
        for pool in POOLS:
            if not any(u.pool == pool for u in self.units):
                raise fail(f"need at least one unit with pool: {pool}", field="units")
        if len(self.units) > 100:
            raise fail("at most 100 units (weights are integer percentages)", field="units")
        if self.router.kind == "inferencegraph":
            for i, u in enumerate(self.units):
                if u.namespace != self.router.namespace:
                    raise fail(f"must equal router.namespace ({self.router.namespace}) for an InferenceGraph router",
                                field=f"units[{i}].namespace")
        idle = [u.name for u in self.units if u.min_replicas == 0]
        if self.routing.strategy == "merit-order" and not self.prewarm.enabled and idle:
            raise fail("merit-order routes only to ready replicas, so units with min_replicas 0 "
                        f"({', '.join(idle)}) can only be started by pre-warm: enable it or set min_replicas >= 1",
                        field="prewarm.enabled")
        return self

    @property
    def per_second(self) -> float:
        """Config throughput units in one request per second (60 for throughput_per: minute)."""
        return THROUGHPUT_PER[self.throughput_per]

    @property
    def rate_unit(self) -> str:
        """How rates in this config's units are written in logs: rps or rpm."""
        return "rps" if self.throughput_per == "second" else "rpm"

    def unit(self, name: str) -> Unit:
        for u in self.units:
            if u.name == name:
                return u
        raise KeyError(name)

    @property
    def cost_units(self) -> tuple[Unit, ...]:
        return tuple(u for u in self.units if u.pool == "cost")

    @property
    def capacity_units(self) -> tuple[Unit, ...]:
        return tuple(u for u in self.units if u.pool == "capacity")


def _inherit_namespace(section: Any, namespace: Any) -> Any:
    """``section`` with ``namespace`` filled in from the top level when it is absent or empty."""
    if isinstance(section, Mapping) and not section.get("namespace"):
        return {**section, "namespace": namespace}
    return section


# --------------------------------------------------------------------------- loading


# Site settings that deploy/settings hands to the controller's Deployment as environment
# variables (the config file itself is a generated ConfigMap that kustomize cannot edit inside).
ENV_OVERRIDES = {
    "TRAFFIC_CONTROLLER_PROMETHEUS_URL": ("prometheus", "url"),
    "TRAFFIC_CONTROLLER_PROMETHEUS_QUERY": ("prometheus", "query"),
}


def apply_env(data: Mapping, env: Mapping[str, str]) -> dict:
    """``data`` with the non-empty ENV_OVERRIDES found in ``env`` set (a copy)."""
    out = dict(data)
    for var, (section, key) in ENV_OVERRIDES.items():
        value = env.get(var, "").strip()
        if value:
            sub = out.get(section)
            out[section] = {**(sub if isinstance(sub, Mapping) else {}), key: value}
    return out


def parse_config(data: Mapping) -> ControllerConfig:
    """Validate a parsed YAML/JSON mapping and build a :class:`ControllerConfig`."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"<root>: must be a mapping, got {type(data).__name__}")
    try:
        return ControllerConfig.model_validate(data)
    except ValidationError as exc:
        raise config_error(exc) from None


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> ControllerConfig:
    """Read a YAML file and validate it. File and YAML errors are ConfigErrors too.

    ``env`` (the process environment when run from the CLI) may override the Prometheus URL and
    query (:data:`ENV_OVERRIDES`)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read config: {exc.strerror or exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: invalid YAML: {exc}") from exc
    if data is None:
        raise ConfigError(f"{p}: config file is empty")
    if env is not None and isinstance(data, Mapping):
        data = apply_env(data, env)
    return parse_config(data)
