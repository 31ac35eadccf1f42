"""The simulator's data types: units and settings, the policy interface, and the per-step record
of a run (with its SLO evaluation). The model that fills them is :mod:`.model`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from controller.simulator.queueing import late_probability

# ----------------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class SimUnit:
    """The simulator's view of a deployment unit (built from ``controller.config.Unit``)."""

    name: str
    pool: str
    price_per_hour: float
    max_throughput: float
    latency_s: float
    max_replicas: int
    min_replicas: int = 0
    startup_s: float = 300.0
    nodepool: str | None = None  # capacity errors are reported per NodePool
    capacity_type: str = "on-demand"  # "spot": capacity losses come with an interruption notice

    @classmethod
    def from_unit(cls, u) -> SimUnit:
        return cls(u.name, u.pool, float(u.price_per_hour), float(u.max_throughput), float(u.latency_s),
                   int(u.max_replicas), int(u.min_replicas), float(u.startup_s), getattr(u, "nodepool", None),
                   getattr(u, "capacity_type", "on-demand"))


@dataclass(frozen=True)
class KpaSettings:
    """Knative Pod Autoscaler knobs (metric: requests per second per replica)."""

    target_utilisation: float = 0.7  # scaleTarget = utilisation x breaking-point throughput
    stable_window_s: float = 60.0
    panic_window_s: float = 6.0  # shorter than a step: the last step is the panic window
    panic_threshold: float = 2.0  # panic when the panic-window load needs 2x the ready pods
    max_scale_down_rate: float = 2.0  # at most halve the ready pods per evaluation
    scale_to_zero: bool = False  # False: every unit keeps at least one replica

    def __post_init__(self) -> None:
        if not 0 < self.target_utilisation <= 1:
            raise ValueError("target_utilisation must be in (0, 1]")
        if self.stable_window_s <= 0 or self.panic_window_s <= 0:
            raise ValueError("windows must be > 0")
        if self.max_scale_down_rate < 1:
            raise ValueError("max_scale_down_rate must be >= 1")


@dataclass(frozen=True)
class ClusterSettings:
    """How the cluster reports what happens (mirrors the live controller's signal sources)."""

    pending_grace_s: float = 120.0  # a pod blocked for longer counts as unschedulable
    pending_s: float = 120.0  # a scheduled pod stays in phase Pending this long (node launch, image pull)
    capacity_error_window_s: float = 600.0  # InsufficientCapacity events are counted over this window
    ice_retry_s: float = 60.0  # Karpenter retries a blocked launch (one event each try)
    demand_window_s: float = 120.0  # measured demand = mean over this window (rate(...[2m]))
    spot_notice_s: float = 120.0  # a spot unit's pods about to be lost are announced this long before (0: never)


@dataclass(frozen=True)
class SloSettings:
    latency_s: float = 1.5  # a request answered slower than this is late
    quantile: float = 0.99  # a step violates the SLO when more than 1 - quantile of requests are late or dropped

    def __post_init__(self) -> None:
        if self.latency_s <= 0 or not 0 < self.quantile < 1:
            raise ValueError("SLO latency must be > 0 and quantile in (0, 1)")


# -------------------------------------------------------------------------- policy interface


@dataclass(frozen=True)
class UnitObservation:
    ready: int
    desired: int  # autoscaler's desired count incl. floors
    pending: int  # pods in phase Pending: blocked, or scheduled less than pending_s ago
    unschedulable: int  # blocked for longer than the grace period
    capacity_errors: int  # InsufficientCapacity events within the window
    interrupting: int = 0  # spot units: pods with an interruption notice (lost within spot_notice_s)


@dataclass(frozen=True)
class Observation:
    now: float
    demand_rps: float  # mean demand over ClusterSettings.demand_window_s
    units: Mapping[str, UnitObservation]


@dataclass(frozen=True)
class Action:
    weights: Mapping[str, int]
    floors: Mapping[str, int] | None = None  # replica floors (minReplicas); None = unchanged
    mode: str = ""
    switched: bool = False
    reason: str = ""


class Policy(Protocol):
    name: str
    interval_s: float

    def initial_weights(self) -> Mapping[str, int]: ...

    def decide(self, obs: Observation) -> Action: ...


# ------------------------------------------------------------------------------------- results


@dataclass
class Run:
    """Per-step record of one policy on one trace (arrays are [T] or [T, N], units in ``names`` order)."""

    policy: str
    names: tuple[str, ...]
    time_s: np.ndarray
    dt: np.ndarray
    demand: np.ndarray  # requests/s
    weights: np.ndarray  # percent
    arrivals: np.ndarray  # requests/s routed to each unit
    served: np.ndarray  # requests/s
    ready: np.ndarray  # replicas
    billed: np.ndarray  # replicas paid for (starting + ready)
    desired: np.ndarray
    blocked: np.ndarray  # pods waiting for capacity
    available: np.ndarray  # replicas the cloud allows
    prices: np.ndarray  # USD per replica-hour
    mode: list[str]
    switches: int = 0
    events: list[tuple[float, str, str]] = field(default_factory=list)  # (t, mode, reason) at switches
    late: np.ndarray | None = None  # requests/s late or dropped (filled by evaluate_slo)

    @property
    def dropped(self) -> np.ndarray:
        return self.arrivals - self.served

    @property
    def cost_per_step(self) -> np.ndarray:
        """USD per step and unit: replicas x price x dt / 3600."""
        return self.billed * self.prices[None, :] * self.dt[:, None] / 3600.0

    @property
    def cost_usd(self) -> float:
        return float(self.cost_per_step.sum())

    @property
    def weight_updates(self) -> int:
        w = np.rint(self.weights).astype(np.int64)
        return int(np.any(w[1:] != w[:-1], axis=1).sum())

    def slo_violation_mask(self, slo: SloSettings) -> np.ndarray:
        if self.late is None:
            raise ValueError("call evaluate_slo first")
        with np.errstate(divide="ignore", invalid="ignore"):
            frac = np.where(self.demand > 0, self.late / np.maximum(self.demand, 1e-300), 0.0)
        return frac > (1.0 - slo.quantile) + 1e-12

    def summary(self, slo: SloSettings) -> dict:
        served = float((self.served * self.dt[:, None]).sum())
        demand = float((self.demand * self.dt).sum())
        dropped = float((self.dropped * self.dt[:, None]).sum())
        late = float((self.late * self.dt).sum()) if self.late is not None else float("nan")
        return {
            "cost_usd": round(self.cost_usd, 4),
            "served": round(served, 3),
            "dropped": round(dropped, 3),
            "demand": round(demand, 3),
            "slo_violation_s": float(self.dt[self.slo_violation_mask(slo)].sum()),
            "switches": int(self.switches),
            "weight_updates": self.weight_updates,
            "late_or_dropped_fraction": round(late / demand, 6) if demand > 0 else 0.0,
            "usd_per_million_served": round(self.cost_usd / served * 1e6, 4) if served > 0 else None,
            "replica_hours": round(float((self.billed * self.dt[:, None]).sum() / 3600.0), 3),
        }


def evaluate_slo(run: Run, units: Sequence[SimUnit], slo: SloSettings) -> Run:
    """Fill ``run.late``: requests/s dropped or answered slower than the SLO, per step."""
    late = run.dropped.sum(axis=1)
    for i, u in enumerate(units):
        p = late_probability(run.served[:, i], run.ready[:, i], u.max_throughput, u.latency_s, slo.latency_s)
        late = late + run.served[:, i] * p
    run.late = late
    return run
