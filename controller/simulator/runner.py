"""Run several policies on one trace and summarise them (no files, no printing)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from controller.config import ControllerConfig
from controller.simulator.dispatch import merit_order_matrix
from controller.simulator.model import ClusterSettings, KpaSettings, Run, SimUnit, SloSettings, simulate_policy
from controller.simulator.oracle import oracle_run, relaxed_oracle_run
from controller.simulator.policies import ControllerPolicy, SeedTwoStatePolicy, StaticPolicy
from controller.traces import Trace
from controller.weights import capacity_optimized_weights, cost_optimized_weights

POLICIES = ("static", "seed-two-state", "controller", "oracle")


@dataclass(frozen=True)
class SimSettings:
    kpa: KpaSettings = field(default_factory=KpaSettings)
    cluster: ClusterSettings = field(default_factory=ClusterSettings)
    slo: SloSettings = field(default_factory=SloSettings)
    static_weights: str | Mapping[str, int] | None = None  # None: cost-optimized; or a state name
    demand_measured: bool | None = None  # None: as the config says (measured iff prometheus is set)

    def as_dict(self) -> dict:
        d = {"kpa": asdict(self.kpa), "cluster": asdict(self.cluster), "slo": asdict(self.slo)}
        sw = self.static_weights
        d["static_weights"] = dict(sw) if isinstance(sw, Mapping) else (sw or "cost-optimized")
        d["demand_measured"] = self.demand_measured
        return d


def sim_units(config: ControllerConfig) -> list[SimUnit]:
    """Units with the cluster-level settings folded in (pending grace etc. come from config.timing)."""
    return [SimUnit.from_unit(u) for u in config.units]


def cluster_from_config(config: ControllerConfig, base: ClusterSettings | None = None) -> ClusterSettings:
    """``base`` with the grace period and the capacity-error window of the config's timing."""
    return replace(base or ClusterSettings(), pending_grace_s=float(config.timing.pending_grace_s),
                   capacity_error_window_s=float(config.timing.capacity_error_window_s))


def named_weights(config: ControllerConfig, spec: str | Mapping[str, int] | None) -> dict[str, int]:
    if spec is None or spec == "cost-optimized":
        return cost_optimized_weights(config.units)
    if spec == "capacity-optimized":
        return capacity_optimized_weights(config.units, capacity={u.name: u.max_replicas for u in config.units})
    if isinstance(spec, Mapping):
        return {u.name: int(spec.get(u.name, 0)) for u in config.units}
    raise ValueError(f"unknown weights {spec!r}")


def make_policy(name: str, config: ControllerConfig, settings: SimSettings):
    if name == "static":
        return StaticPolicy(named_weights(config, settings.static_weights))
    if name == "seed-two-state":
        return SeedTwoStatePolicy(config)
    if name == "controller":
        return ControllerPolicy(config, demand_measured=settings.demand_measured)
    raise ValueError(f"unknown policy {name!r} (known: {', '.join(POLICIES)})")


def floors(units: Sequence[SimUnit], kpa: KpaSettings) -> np.ndarray:
    return np.array([max(u.min_replicas, 0 if kpa.scale_to_zero else 1) for u in units], dtype=float)


def lower_bound_usd(run: Run, units: Sequence[SimUnit], kpa: KpaSettings) -> float:
    """A provable lower bound on ``run``'s cost: at each step, the cheapest way to serve what the
    run served, at the breaking point (no headroom), with fractional replicas and the same floors.

    Why it holds: a unit serving s requests/s has at least s / max_throughput ready replicas,
    every scheduled replica is paid, and a unit never has fewer scheduled replicas than
    min(floor, available).
    """
    mx = np.array([u.max_throughput for u in units])
    prices = np.array([u.price_per_hour for u in units])
    costs = [u.price_per_hour / u.max_throughput for u in units]
    fl = np.minimum(floors(units, kpa)[None, :], run.available)
    served = run.served.sum(axis=1)
    stage0 = merit_order_matrix(costs, fl * mx, served)
    stage1 = merit_order_matrix(costs, (run.available - fl) * mx, np.maximum(served - stage0.sum(axis=1), 0.0))
    replicas = fl + stage1 / mx
    return float((replicas * prices[None, :] * run.dt[:, None] / 3600.0).sum())


def run_all(config: ControllerConfig, trace: Trace, policies: Sequence[str] = POLICIES,
            settings: SimSettings | None = None) -> dict[str, Run]:
    settings = settings or SimSettings()
    units = sim_units(config)
    names = {u.name for u in units}
    unknown = set(trace.available) - names
    if unknown:
        raise ValueError(f"trace has available.<unit> columns for unknown units: {sorted(unknown)}")
    cluster = cluster_from_config(config, settings.cluster)
    runs: dict[str, Run] = {}
    for name in policies:
        if name == "oracle":
            runs[name] = oracle_run(units, trace, settings.kpa, settings.slo)
        else:
            runs[name] = simulate_policy(units, trace, make_policy(name, config, settings), settings.kpa, cluster,
                                         settings.slo)
    return runs


def summarise(config: ControllerConfig, runs: Mapping[str, Run], settings: SimSettings) -> dict:
    """``{"policies": {name: {...}}, "goals": {...}}`` (JSON-ready)."""
    units = sim_units(config)
    out: dict = {"policies": {}}
    oracle = runs.get("oracle")
    relaxed = None
    if runs:
        any_run = next(iter(runs.values()))
        trace = Trace(any_run.time_s, any_run.demand,
                      {n: any_run.available[:, i] for i, n in enumerate(any_run.names)})
        relaxed = relaxed_oracle_run(units, trace, settings.kpa, settings.slo)
        out["relaxed_oracle"] = {"cost_usd": round(relaxed.cost_usd, 4),
                                 "dropped": round(float((relaxed.dropped * relaxed.dt[:, None]).sum()), 3)}
    for name, run in runs.items():
        s = run.summary(settings.slo)
        s["lower_bound_usd"] = round(lower_bound_usd(run, units, settings.kpa), 4)
        if oracle is not None:
            s["cost_vs_oracle"] = round(run.cost_usd / oracle.cost_usd, 4) if oracle.cost_usd > 0 else None
            s["excess_dropped"] = round(max(0.0, s["dropped"] - float((oracle.dropped * oracle.dt[:, None]).sum())),
                                        3)
        if relaxed is not None and relaxed.cost_usd > 0:
            s["cost_vs_relaxed_oracle"] = round(run.cost_usd / relaxed.cost_usd, 4)
        out["policies"][name] = s
    pol = out["policies"]
    if {"controller", "oracle"} <= set(pol):
        goals = {
            "cost_within_10pct_of_oracle": pol["controller"]["cost_vs_oracle"] is not None
            and abs(pol["controller"]["cost_vs_oracle"] - 1.0) <= 0.10,
            "nothing_dropped_that_capacity_allowed": pol["controller"]["excess_dropped"] < 1.0,
        }
        if "seed-two-state" in pol:
            c, sd = pol["controller"]["switches"], pol["seed-two-state"]["switches"]
            goals["fewer_switches_than_seed"] = c < sd or c == sd == 0
        out["goals"] = goals
    return out
