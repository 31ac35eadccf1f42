"""Controller configuration: dataclasses, parsing and validation.

The same file is read by ``python -m controller run`` and by the planner/simulator, so that what
is simulated is what runs. YAML keys are the dataclass field names (snake_case). Every
validation error is a :class:`ConfigError` whose message starts with the offending key path,
e.g. ``units[2].price_per_hour: must be > 0``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import yaml

POOLS = ("cost", "capacity")
THROUGHPUT_PER = {"second": 1.0, "minute": 60.0}  # config throughput units per request/s
STRATEGIES = ("merit-order", "proportional")
ROUTER_KINDS = ("inferencegraph", "alb-ingress", "httproute")
_DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class ConfigError(ValueError):
    """Invalid controller configuration; the message names the key path."""


@dataclass(frozen=True)
class Unit:
    """One deployment unit: an InferenceService on one accelerator type."""

    name: str  # InferenceService name (also the router step name)
    namespace: str
    pool: Literal["cost", "capacity"]
    instance_type: str
    price_per_hour: float  # USD per replica-hour
    max_throughput: float  # requests/s one replica sustains at its breaking point
    latency_s: float  # latency at the breaking point
    max_replicas: int
    min_replicas: int = 0
    startup_s: float = 300.0  # time from scale-up to a ready replica (pre-warm, simulator)
    nodepool: str | None = None  # Karpenter NodePool feeding this unit
    # Karpenter capacity type the unit's nodes run on (karpenter.sh/capacity-type). "spot": priced
    # at spot in price_per_hour, interrupted with a 2-minute notice (docs/simulation.md, spot).
    capacity_type: Literal["on-demand", "spot"] = "on-demand"
    service_name: str | None = None  # ALB target group service; defaults to ``name``
    service_port: int = 80  # ALB target group port


@dataclass(frozen=True)
class Router:
    """The object whose weights the controller edits."""

    kind: Literal["inferencegraph", "alb-ingress", "httproute"]
    name: str
    namespace: str
    action: str | None = None  # ALB action name: annotation alb.ingress.kubernetes.io/actions.<action>


@dataclass(frozen=True)
class Timing:
    interval_s: float = 30  # decision interval
    signal_max_age_s: float = 120  # older signals are stale: no action
    pending_grace_s: float = 120  # a pod unschedulable for longer counts as unschedulable
    min_state_s: float = 300  # minimum time in capacity-optimized before a fallback
    fallback_hold_s: float = 900  # cost pool must show ready headroom this long before fallback
    max_weight_step: int = 100  # max change of one unit's weight per decision (100 = no ramp)
    capacity_error_window_s: float = 600  # InsufficientCapacityError events counted over this window
    api_timeout_s: float = 10  # per Kubernetes / Prometheus request
    backoff_initial_s: float = 1  # first retry delay for API errors, doubled per retry
    backoff_max_s: float = 30  # retry delay cap
    api_retries: int = 4  # retries of one API call before the reconcile gives up


@dataclass(frozen=True)
class Thresholds:
    # Fallback needs demand * headroom_ratio <= what the cost pool can serve at max_replicas.
    headroom_ratio: float = 1.2


@dataclass(frozen=True)
class Routing:
    """How weights are computed (see controller/allocation.py and docs/controller.md).

    ``merit-order`` (needs measured demand): replicas that are paid for anyway (``min_replicas``)
    serve first, the rest goes to the cheapest units that can get capacity, never more to a unit
    than its ready replicas carry at ``max_utilisation``; the controller sets ``minReplicas`` so
    units grow before traffic moves to them. ``proportional``: the seed's two weight sets, all to
    the cost pool, or seed Table 2 proportions when the cost pool is short.
    """

    strategy: Literal["merit-order", "proportional"] = "proportional"
    target_utilisation: float = 0.7  # the InferenceServices' scaleTarget / max_throughput
    max_utilisation: float = 0.9  # never route more to a unit's ready replicas while others have room
    # Leave the router alone unless a weight would move by at least this many points (or a unit
    # is overloaded or not ready): every InferenceGraph edit rolls out a new router revision.
    min_weight_change: int = 5
    # The cost of a dropped request (USD), the trade-off between paying for replicas and dropping:
    # merit-order starts bridge replicas on the fastest-starting units for demand that no ready
    # replica carries only where the requests they save are worth more than they cost
    # (allocation.urgent_bridge). 0: never (the autoscaler and the plan alone).
    drop_cost_usd: float = 0.0


@dataclass(frozen=True)
class Prometheus:
    url: str
    # string.Template placeholders: $namespace, $names (regex alternation of unit names), $router
    # (the router object's name). The default sums Knative's queue-proxy request counter over the
    # units' predictor revisions (KServe names the predictor's Knative Service <isvc>-predictor;
    # metric and labels: knative.dev/docs/serving/services/service-metrics). Requests waiting in
    # the activator for a unit with no ready pod are not in it yet: with an InferenceGraph router,
    # count at the router instead (controller/deploy/controller.yaml does).
    query: str = (
        'sum(rate(revision_request_count{namespace_name="$namespace",configuration_name=~"($names)-predictor.*"}[2m]))'
    )
    timeout_s: float = 5.0


@dataclass(frozen=True)
class Prewarm:
    """Raise minReplicas on capacity-pool units ahead of a failover."""

    enabled: bool = False
    min_replicas: int = 1  # floor for each capacity unit while pre-warmed
    utilization: float = 0.8  # pre-warm when demand > utilization * cost pool max capacity
    hold_s: float = 600  # keep pre-warm this long after the last trigger
    # merit-order: while capacity-optimized (the cost pool has been short and has not yet held
    # everything it asked for for fallback_hold_s), capacity units' floors do not come down: the
    # spare capacity for a cost pool whose capacity comes and goes (flapping).
    hold_until_fallback: bool = False


@dataclass(frozen=True)
class Lease:
    enabled: bool = True
    name: str = "inference-traffic-controller-leader"
    namespace: str = "default"
    duration_s: float = 15
    renew_s: float = 5  # renew period; must be < duration_s


@dataclass(frozen=True)
class ControllerConfig:
    units: tuple[Unit, ...]
    router: Router
    timing: Timing = field(default_factory=Timing)
    thresholds: Thresholds = field(default_factory=Thresholds)
    namespace: str = "default"
    prometheus: Prometheus | None = None
    prewarm: Prewarm = field(default_factory=Prewarm)
    routing: Routing = field(default_factory=Routing)
    lease: Lease = field(default_factory=Lease)
    # ConfigMap (in the router's namespace) that keeps the policy state across restarts
    # (controller/state.py); empty: not persisted beyond the router's annotations.
    state_configmap: str = "inference-traffic-controller-state"
    metrics_port: int = 8080
    metrics_host: str = "0.0.0.0"
    # Unit of max_throughput (and of demand in plan/simulate): requests per "second" or per
    # "minute" (the seed's tables count per minute). Measured demand is converted to it.
    throughput_per: Literal["second", "minute"] = "second"

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


# --------------------------------------------------------------------------- parsing helpers


def _err(path: str, msg: str) -> ConfigError:
    return ConfigError(f"{path}: {msg}")


def _mapping(value: Any, path: str) -> Mapping:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _err(path, f"must be a mapping, got {type(value).__name__}")
    return value


def _check_keys(data: Mapping, allowed: set[str], path: str) -> None:
    for key in data:
        if key not in allowed:
            where = f"{path}.{key}" if path else str(key)
            raise _err(where, f"unknown key (allowed: {', '.join(sorted(allowed))})")


def _number(
    value: Any, path: str, *, gt: float | None = None, ge: float | None = None, le: float | None = None
) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _err(path, f"must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise _err(path, "must be finite")
    if gt is not None and not v > gt:
        raise _err(path, f"must be > {gt:g}")
    if ge is not None and not v >= ge:
        raise _err(path, f"must be >= {ge:g}")
    if le is not None and not v <= le:
        raise _err(path, f"must be <= {le:g}")
    return v


def _int(value: Any, path: str, *, ge: int | None = None, le: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise _err(path, f"must be an integer, got {value!r}")
    if ge is not None and value < ge:
        raise _err(path, f"must be >= {ge}")
    if le is not None and value > le:
        raise _err(path, f"must be <= {le}")
    return value


def _str(value: Any, path: str, *, dns: bool = False) -> str:
    if not isinstance(value, str) or not value:
        raise _err(path, f"must be a non-empty string, got {value!r}")
    if dns and (len(value) > 253 or not _DNS1123.match(value)):
        raise _err(path, f"must be a lowercase DNS-1123 name, got {value!r}")
    return value


def _bool(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise _err(path, f"must be true or false, got {value!r}")
    return value


def _required(data: Mapping, key: str, path: str) -> Any:
    if key not in data or data[key] is None:
        raise _err(f"{path}.{key}" if path else key, "is required")
    return data[key]


def _field_names(cls: type) -> set[str]:
    return {f.name for f in fields(cls)}


# --------------------------------------------------------------------------- sections


def _parse_unit(raw: Any, path: str, default_ns: str) -> Unit:
    data = _mapping(raw, path)
    _check_keys(data, _field_names(Unit), path)
    name = _str(_required(data, "name", path), f"{path}.name", dns=True)
    namespace = _str(data.get("namespace") or default_ns, f"{path}.namespace", dns=True)
    pool = _required(data, "pool", path)
    if pool not in POOLS:
        raise _err(f"{path}.pool", f"must be one of {', '.join(POOLS)}, got {pool!r}")
    instance_type = _str(_required(data, "instance_type", path), f"{path}.instance_type")
    price = _number(_required(data, "price_per_hour", path), f"{path}.price_per_hour", gt=0)
    tput = _number(_required(data, "max_throughput", path), f"{path}.max_throughput", gt=0)
    latency = _number(_required(data, "latency_s", path), f"{path}.latency_s", gt=0)
    max_r = _int(_required(data, "max_replicas", path), f"{path}.max_replicas", ge=1)
    min_r = _int(data.get("min_replicas", 0), f"{path}.min_replicas", ge=0)
    if min_r > max_r:
        raise _err(f"{path}.min_replicas", f"must be <= max_replicas ({max_r})")
    startup = _number(data.get("startup_s", 300.0), f"{path}.startup_s", ge=0)
    nodepool = data.get("nodepool")
    if nodepool is not None:
        nodepool = _str(nodepool, f"{path}.nodepool", dns=True)
    capacity_type = data.get("capacity_type", "on-demand")
    if capacity_type not in ("on-demand", "spot"):
        raise _err(f"{path}.capacity_type", f"must be on-demand or spot, got {capacity_type!r}")
    service_name = data.get("service_name")
    if service_name is not None:
        service_name = _str(service_name, f"{path}.service_name", dns=True)
    port = _int(data.get("service_port", 80), f"{path}.service_port", ge=1, le=65535)
    return Unit(
        name=name,
        namespace=namespace,
        pool=pool,
        instance_type=instance_type,
        price_per_hour=price,
        max_throughput=tput,
        latency_s=latency,
        max_replicas=max_r,
        min_replicas=min_r,
        startup_s=startup,
        nodepool=nodepool,
        capacity_type=capacity_type,
        service_name=service_name,
        service_port=port,
    )


def _parse_router(raw: Any, default_ns: str) -> Router:
    path = "router"
    if raw is None:
        raise _err(path, "is required")
    data = _mapping(raw, path)
    _check_keys(data, _field_names(Router), path)
    kind = data.get("kind", "inferencegraph")
    if kind not in ROUTER_KINDS:
        raise _err(f"{path}.kind", f"must be one of {', '.join(ROUTER_KINDS)}, got {kind!r}")
    name = _str(_required(data, "name", path), f"{path}.name", dns=True)
    namespace = _str(data.get("namespace") or default_ns, f"{path}.namespace", dns=True)
    action = data.get("action")
    if kind == "alb-ingress":
        action = _str(action if action is not None else "weighted-routing", f"{path}.action")
        if not re.match(r"^[A-Za-z0-9][-A-Za-z0-9_.]*$", action):
            raise _err(f"{path}.action", f"not a valid annotation suffix: {action!r}")
    elif action is not None:
        raise _err(f"{path}.action", "only valid with kind: alb-ingress")
    return Router(kind=kind, name=name, namespace=namespace, action=action)


def _parse_timing(raw: Any) -> Timing:
    path = "timing"
    data = _mapping(raw, path)
    _check_keys(data, _field_names(Timing), path)
    d = Timing()
    kw: dict[str, Any] = {}
    for f in fields(Timing):
        value = data.get(f.name, getattr(d, f.name))
        key = f"{path}.{f.name}"
        if f.name == "max_weight_step":
            kw[f.name] = _int(value, key, ge=1, le=100)
        elif f.name == "api_retries":
            kw[f.name] = _int(value, key, ge=0, le=20)
        elif f.name in (
            "interval_s",
            "signal_max_age_s",
            "api_timeout_s",
            "backoff_initial_s",
            "backoff_max_s",
            "capacity_error_window_s",
        ):
            kw[f.name] = _number(value, key, gt=0)
        else:
            kw[f.name] = _number(value, key, ge=0)
    t = Timing(**kw)
    if t.signal_max_age_s < t.interval_s:
        raise _err(f"{path}.signal_max_age_s", f"must be >= interval_s ({t.interval_s:g}), or every signal is stale")
    if t.backoff_max_s < t.backoff_initial_s:
        raise _err(f"{path}.backoff_max_s", "must be >= backoff_initial_s")
    return t


def _parse_thresholds(raw: Any) -> Thresholds:
    path = "thresholds"
    data = _mapping(raw, path)
    _check_keys(data, _field_names(Thresholds), path)
    ratio = _number(data.get("headroom_ratio", Thresholds.headroom_ratio), f"{path}.headroom_ratio", ge=1)
    return Thresholds(headroom_ratio=ratio)


def _parse_prometheus(raw: Any) -> Prometheus | None:
    path = "prometheus"
    if raw is None:
        return None
    data = _mapping(raw, path)
    _check_keys(data, _field_names(Prometheus), path)
    url = data.get("url")
    if url in (None, ""):
        return None  # an empty url means "no Prometheus": demand comes from the autoscaler
    url = _str(url, f"{path}.url")
    if not re.match(r"^https?://", url):
        raise _err(f"{path}.url", f"must start with http:// or https://, got {url!r}")
    query = _str(data.get("query", Prometheus.query), f"{path}.query")
    timeout = _number(data.get("timeout_s", Prometheus.timeout_s), f"{path}.timeout_s", gt=0)
    return Prometheus(url=url.rstrip("/"), query=query, timeout_s=timeout)


def _parse_prewarm(raw: Any) -> Prewarm:
    path = "prewarm"
    data = _mapping(raw, path)
    _check_keys(data, _field_names(Prewarm), path)
    return Prewarm(
        enabled=_bool(data.get("enabled", False), f"{path}.enabled"),
        min_replicas=_int(data.get("min_replicas", 1), f"{path}.min_replicas", ge=1),
        utilization=_number(data.get("utilization", 0.8), f"{path}.utilization", gt=0, le=1),
        hold_s=_number(data.get("hold_s", 600), f"{path}.hold_s", ge=0),
        hold_until_fallback=_bool(data.get("hold_until_fallback", False), f"{path}.hold_until_fallback"),
    )


def _parse_routing(raw: Any, measured_demand: bool) -> Routing:
    path = "routing"
    data = _mapping(raw, path)
    _check_keys(data, _field_names(Routing), path)
    strategy = data.get("strategy", "merit-order" if measured_demand else "proportional")
    if strategy not in STRATEGIES:
        raise _err(f"{path}.strategy", f"must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    target = _number(data.get("target_utilisation", Routing.target_utilisation), f"{path}.target_utilisation",
                     gt=0, le=1)
    highest = _number(data.get("max_utilisation", Routing.max_utilisation), f"{path}.max_utilisation", gt=0, le=1)
    if highest < target:
        raise _err(f"{path}.max_utilisation", f"must be >= target_utilisation ({target:g})")
    step = _int(data.get("min_weight_change", Routing.min_weight_change), f"{path}.min_weight_change", ge=1, le=100)
    drop_cost = _number(data.get("drop_cost_usd", Routing.drop_cost_usd), f"{path}.drop_cost_usd", ge=0)
    return Routing(strategy=strategy, target_utilisation=target, max_utilisation=highest, min_weight_change=step,
                   drop_cost_usd=drop_cost)


def _parse_lease(raw: Any, default_ns: str) -> Lease:
    path = "lease"
    data = _mapping(raw, path)
    _check_keys(data, _field_names(Lease), path)
    lease = Lease(
        enabled=_bool(data.get("enabled", True), f"{path}.enabled"),
        name=_str(data.get("name", Lease.name), f"{path}.name", dns=True),
        namespace=_str(data.get("namespace") or default_ns, f"{path}.namespace", dns=True),
        duration_s=_number(data.get("duration_s", 15), f"{path}.duration_s", gt=0),
        renew_s=_number(data.get("renew_s", 5), f"{path}.renew_s", gt=0),
    )
    if lease.renew_s >= lease.duration_s:
        raise _err(f"{path}.renew_s", f"must be < duration_s ({lease.duration_s:g})")
    return lease


_TOP_KEYS = {
    "units",
    "router",
    "timing",
    "thresholds",
    "namespace",
    "prometheus",
    "prewarm",
    "routing",
    "lease",
    "metrics_port",
    "metrics_host",
    "throughput_per",
    "state_configmap",
}

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
    _check_keys(data, _TOP_KEYS, "")
    namespace = _str(data.get("namespace", "default"), "namespace", dns=True)

    raw_units = data.get("units")
    if not isinstance(raw_units, list) or not raw_units:
        raise _err("units", "must be a non-empty list")
    units = tuple(_parse_unit(u, f"units[{i}]", namespace) for i, u in enumerate(raw_units))
    seen: dict[str, int] = {}
    for i, u in enumerate(units):
        if u.name in seen:
            raise _err(f"units[{i}].name", f"duplicate unit name {u.name!r} (also units[{seen[u.name]}])")
        seen[u.name] = i
    if not any(u.pool == "cost" for u in units):
        raise _err("units", "need at least one unit with pool: cost")
    if not any(u.pool == "capacity" for u in units):
        raise _err("units", "need at least one unit with pool: capacity")
    if len(units) > 100:
        raise _err("units", "at most 100 units (weights are integer percentages)")

    router = _parse_router(data.get("router"), namespace)
    if router.kind == "inferencegraph":
        for i, u in enumerate(units):
            if u.namespace != router.namespace:
                raise _err(
                    f"units[{i}].namespace",
                    f"must equal router.namespace ({router.namespace}) for an InferenceGraph router",
                )

    prometheus = _parse_prometheus(data.get("prometheus"))
    prewarm = _parse_prewarm(data.get("prewarm"))
    routing = _parse_routing(data.get("routing"), measured_demand=prometheus is not None)
    idle = [u.name for u in units if u.min_replicas == 0]
    if routing.strategy == "merit-order" and not prewarm.enabled and idle:
        raise _err("prewarm.enabled", "merit-order routes only to ready replicas, so units with min_replicas 0 "
                   f"({', '.join(idle)}) can only be started by pre-warm: enable it or set min_replicas >= 1")
    metrics_port = _int(data.get("metrics_port", 8080), "metrics_port", ge=0, le=65535)
    metrics_host = _str(data.get("metrics_host", "0.0.0.0"), "metrics_host")
    per = data.get("throughput_per", "second")
    if per not in THROUGHPUT_PER:
        raise _err("throughput_per", f"must be one of {', '.join(THROUGHPUT_PER)}, got {per!r}")
    return ControllerConfig(
        units=units,
        router=router,
        timing=_parse_timing(data.get("timing")),
        thresholds=_parse_thresholds(data.get("thresholds")),
        namespace=namespace,
        prometheus=prometheus,
        prewarm=prewarm,
        routing=routing,
        lease=_parse_lease(data.get("lease"), namespace),
        metrics_port=metrics_port,
        metrics_host=metrics_host,
        throughput_per=per,
        state_configmap=_state_configmap(data.get("state_configmap", ControllerConfig.state_configmap)),
    )


def _state_configmap(value: Any) -> str:
    if value in (None, ""):
        return ""
    return _str(value, "state_configmap", dns=True)


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
