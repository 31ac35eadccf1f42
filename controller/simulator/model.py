"""Discrete-time model of the serving system: router -> units -> replicas, with a KPA per unit.

One step of length ``dt`` (the trace's sampling interval) at time ``t`` does, in order:

1. **policy** - if a decision is due, the policy sees the state at the end of the previous step
   (the same per-unit signals the live controller reads) and may set new router weights and
   replica floors (pre-warm ``minReplicas``). Weights apply at once.
2. **reconcile** - each unit's pod count moves to the autoscaler's desired count (computed at the
   end of the previous step, clipped to ``[floor, max_replicas]``). New pods first wait for
   capacity: while the cloud cannot give the unit more replicas (trace ``available.<unit>``) they
   stay *blocked* (unschedulable). A scheduled pod bills from then on and becomes ready
   ``startup_s`` later. If capacity falls below the pods running, the newest pods are lost and
   recreated as blocked pods. Scale-down removes blocked, then starting, then ready pods.
3. **serve** - the router splits demand by weight; unit i serves
   ``min(arrivals_i, ready_i x max_throughput_i)`` and drops the rest (HTTP 5xx at the breaking
   point). Per step ``served + dropped == demand x dt``.
4. **bill** - every scheduled pod (starting or ready) costs ``price_per_hour x dt / 3600``.
5. **autoscale** - a KPA per unit (requests-per-second metric, target ``utilisation x
   max_throughput``) updates its desired count from the arrivals: stable-window average, panic
   window, panic threshold, max scale-down rate, optional scale-to-zero (otherwise at least 1).

Latency against the SLO is computed afterwards from the served rates (:mod:`.queueing`).
Everything is deterministic; randomness only lives in the trace generators.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np

from controller.simulator.queueing import late_probability
from controller.traces import Trace

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


# ----------------------------------------------------------------------------------- the model


class _UnitState:
    """Pods and autoscaler of one unit. Times are simulation seconds."""

    __slots__ = ("u", "kpa", "target", "ready", "starting", "blocked", "desired", "floor", "panic_since",
                 "win", "win_sum", "win_dt", "ice_events", "last_ice", "ice_retry_s")

    def __init__(self, u: SimUnit, kpa: KpaSettings, ice_retry_s: float = 60.0) -> None:
        self.u = u
        self.kpa = kpa
        self.ice_retry_s = ice_retry_s
        self.target = kpa.target_utilisation * u.max_throughput  # rps per replica
        self.ready = 0
        self.starting: deque[float] = deque()  # ready-at times, ascending
        self.blocked: deque[float] = deque()  # blocked-since times; scheduled from the left (evicted pods first)
        self.desired = 0
        self.floor = max(u.min_replicas, 0 if kpa.scale_to_zero else 1)
        self.panic_since: float | None = None
        self.win: deque[tuple[float, float, float]] = deque()  # (t, rps*dt, dt)
        self.win_sum = 0.0
        self.win_dt = 0.0
        self.ice_events: deque[float] = deque()
        self.last_ice = -math.inf

    # -- pods
    @property
    def scheduled(self) -> int:
        return self.ready + len(self.starting)

    def warm_start(self, t: float, rps: float, avail: int) -> None:
        n = math.ceil(rps / self.target - 1e-9) if rps > 0 else 0
        self.desired = min(max(n, self.floor), self.u.max_replicas)
        self.ready = min(self.desired, avail)
        self.blocked.extend([t] * (self.desired - self.ready))
        self.win.append((t - self.kpa.stable_window_s, rps * self.kpa.stable_window_s, self.kpa.stable_window_s))
        self.win_sum = rps * self.kpa.stable_window_s
        self.win_dt = self.kpa.stable_window_s

    def reconcile(self, t: float, avail: int) -> None:
        want = min(max(self.desired, self.floor), self.u.max_replicas)
        total = self.scheduled + len(self.blocked)
        if want > total:
            self.blocked.extend([t] * (want - total))
        elif want < total:
            extra = total - want
            while extra and self.blocked:
                self.blocked.pop()
                extra -= 1
            while extra and self.starting:
                self.starting.pop()
                extra -= 1
            if extra:
                self.ready -= extra
        # capacity lost: newest pods go first and come back as blocked pods
        lost = self.scheduled - avail
        if lost > 0:
            for _ in range(lost):
                if self.starting:
                    self.starting.pop()
                else:
                    self.ready -= 1
                self.blocked.appendleft(t)
        # capacity free: schedule the oldest blocked pods
        free = avail - self.scheduled
        ready_at = t + self.u.startup_s
        while free > 0 and self.blocked:
            self.blocked.popleft()
            self.starting.append(ready_at)
            free -= 1
        if self.blocked and t - self.last_ice >= self.ice_retry_s:
            self.ice_events.append(t)
            self.last_ice = t
        # promote pods that finished starting
        while self.starting and self.starting[0] <= t:
            self.starting.popleft()
            self.ready += 1

    # -- autoscaler
    def autoscale(self, t: float, rps: float, dt: float) -> None:
        kpa = self.kpa
        self.win.append((t, rps * dt, dt))
        self.win_sum += rps * dt
        self.win_dt += dt
        horizon = t + dt - kpa.stable_window_s
        while len(self.win) > 1 and self.win[0][0] + self.win[0][2] <= horizon + 1e-9:
            _, s, d = self.win.popleft()
            self.win_sum -= s
            self.win_dt -= d
        stable = max(self.win_sum / self.win_dt, 0.0) if self.win_dt > 0 else 0.0
        panic = rps  # the panic window (6 s) is shorter than a step
        want_stable = math.ceil(stable / self.target - 1e-9) if stable > 1e-12 else 0
        want_panic = math.ceil(panic / self.target - 1e-9) if panic > 1e-12 else 0
        # Knative: panic while the panic-window load needs panic_threshold x the ready pods; stay in
        # panic until a whole stable window has passed without that.
        if panic / self.target / max(1, self.ready) >= kpa.panic_threshold:
            self.panic_since = t
        elif self.panic_since is not None and t - self.panic_since >= kpa.stable_window_s:
            self.panic_since = None
        if self.panic_since is not None:
            want = max(want_panic, want_stable, self.desired)  # never scale down in panic
        else:
            want = max(want_stable, math.floor(self.ready / kpa.max_scale_down_rate))
        if not kpa.scale_to_zero:
            want = max(want, 1)
        self.desired = min(want, self.u.max_replicas)

    def observe(self, t: float, cluster: ClusterSettings, avail_ahead: int | None = None) -> UnitObservation:
        """The unit's signals; ``avail_ahead`` (spot units) is the least capacity the cloud leaves it
        within the notice: pods above it have got their interruption notice (newest first)."""
        while self.ice_events and self.ice_events[0] <= t - cluster.capacity_error_window_s:
            self.ice_events.popleft()
        grace = cluster.pending_grace_s
        unsched = sum(1 for since in self.blocked if t - since > grace)
        # a starting pod is Pending until pending_s after it was scheduled, then Running (not Ready)
        still_pending = t + self.u.startup_s - cluster.pending_s
        pending = sum(1 for ready_at in self.starting if ready_at > still_pending)
        return UnitObservation(
            ready=self.ready,
            desired=min(max(self.desired, self.floor), self.u.max_replicas),
            pending=len(self.blocked) + pending,
            unschedulable=unsched,
            capacity_errors=len(self.ice_events),
            interrupting=max(0, self.scheduled - avail_ahead) if avail_ahead is not None else 0,
        )


def window_extreme(t: np.ndarray, values: np.ndarray, span_s: float, forward: bool, use_max: bool) -> np.ndarray:
    """Max (or min) of ``values`` over ``[t_k, t_k + span]`` (forward) or ``[t_k - span, t_k]``."""
    n = t.size
    out = np.empty(n)
    q: deque[int] = deque()
    better = (lambda a, b: a >= b) if use_max else (lambda a, b: a <= b)
    if forward:
        for k in range(n - 1, -1, -1):
            while q and better(values[k], values[q[-1]]):
                q.pop()
            q.append(k)
            while q and t[q[0]] > t[k] + span_s + 1e-9:
                q.popleft()
            out[k] = values[q[0]]
    else:
        for k in range(n):
            while q and better(values[k], values[q[-1]]):
                q.pop()
            q.append(k)
            while q and t[q[0]] < t[k] - span_s - 1e-9:
                q.popleft()
            out[k] = values[q[0]]
    return out


def _normalise(weights: Mapping[str, float], names: Sequence[str]) -> np.ndarray:
    w = np.array([max(0.0, float(weights.get(n, 0))) for n in names])
    total = w.sum()
    if total <= 0:
        raise ValueError(f"policy returned weights without a positive sum: {dict(weights)}")
    return w * (100.0 / total)


def _pool_errors(seen: dict[str, UnitObservation], units: Sequence[SimUnit]) -> dict[str, UnitObservation]:
    """Capacity errors are reported per NodePool: units sharing a pool see each other's errors."""
    per_pool: dict[str, int] = {}
    for u in units:
        if u.nodepool:
            per_pool[u.nodepool] = per_pool.get(u.nodepool, 0) + seen[u.name].capacity_errors
    return {u.name: (replace(seen[u.name], capacity_errors=per_pool[u.nodepool]) if u.nodepool else seen[u.name])
            for u in units}


def simulate_policy(
    units: Sequence[SimUnit],
    trace: Trace,
    policy: Policy,
    kpa: KpaSettings | None = None,
    cluster: ClusterSettings | None = None,
    slo: SloSettings | None = None,
) -> Run:
    """Run ``policy`` over ``trace`` and return the per-step record (with SLO lateness filled)."""
    kpa = kpa or KpaSettings()
    cluster = cluster or ClusterSettings()
    slo = slo or SloSettings()
    names = tuple(u.name for u in units)
    n, T = len(units), len(trace)
    t_arr, dt_arr, dem = trace.time_s, trace.dt, trace.demand
    avail = np.stack([trace.available_replicas(u.name, u.max_replicas) for u in units], axis=1)
    prices = np.array([u.price_per_hour for u in units])
    caps = [u.max_throughput for u in units]

    rec = {k: np.zeros((T, n)) for k in ("weights", "arrivals", "served", "ready", "billed", "desired", "blocked")}
    modes: list[str] = []
    events: list[tuple[float, str, str]] = []
    switches = 0

    states = [_UnitState(u, kpa, cluster.ice_retry_s) for u in units]
    # Spot units: the least capacity within the notice ahead (EC2 warns 2 minutes before it reclaims).
    ahead = {i: window_extreme(t_arr, avail[:, i].astype(float), cluster.spot_notice_s, forward=True, use_max=False)
             for i, u in enumerate(units) if u.capacity_type == "spot" and cluster.spot_notice_s > 0}
    pools = [u.nodepool for u in units if u.nodepool]
    shared_pools = len(pools) != len(set(pools))
    w = _normalise(policy.initial_weights(), names)
    t0 = float(t_arr[0])
    for i, s in enumerate(states):
        s.warm_start(t0, dem[0] * w[i] / 100.0, int(avail[0, i]))
    mode = ""
    next_decision = t0
    # measured demand: running window of (t, demand*dt, dt)
    dwin: deque[tuple[float, float, float]] = deque()
    dsum = ddt = 0.0

    for k in range(T):
        t, dt, d = float(t_arr[k]), float(dt_arr[k]), float(dem[k])
        # 1. policy
        if t >= next_decision - 1e-9:
            seen = {nm: s.observe(t, cluster, int(ahead[i][k]) if i in ahead else None)
                    for i, (nm, s) in enumerate(zip(names, states, strict=True))}
            if shared_pools:
                seen = _pool_errors(seen, units)
            obs = Observation(now=t, demand_rps=(dsum / ddt) if ddt > 0 else d, units=seen)
            act = policy.decide(obs)
            w = _normalise(act.weights, names)
            if act.floors is not None:
                for nm, s in zip(names, states, strict=True):
                    if nm in act.floors:
                        s.floor = max(int(act.floors[nm]), s.u.min_replicas, 0 if kpa.scale_to_zero else 1)
            if act.switched:
                switches += 1
                events.append((t, act.mode, act.reason))
            mode = act.mode or mode
            next_decision += policy.interval_s * max(1, math.floor((t - next_decision) / policy.interval_s) + 1)
        # 2-5. reconcile, serve, bill, autoscale
        for i, s in enumerate(states):
            s.reconcile(t, int(avail[k, i]))
            lam = d * w[i] / 100.0
            srv = min(lam, s.ready * caps[i])
            rec["weights"][k, i] = w[i]
            rec["arrivals"][k, i] = lam
            rec["served"][k, i] = srv
            rec["ready"][k, i] = s.ready
            rec["billed"][k, i] = s.scheduled
            rec["blocked"][k, i] = len(s.blocked)
            s.autoscale(t, lam, dt)
            rec["desired"][k, i] = s.desired
        modes.append(mode)
        dwin.append((t, d * dt, dt))
        dsum += d * dt
        ddt += dt
        while len(dwin) > 1 and dwin[0][0] + dwin[0][2] <= t + dt - cluster.demand_window_s + 1e-9:
            _, a, b = dwin.popleft()
            dsum -= a
            ddt -= b

    run = Run(
        policy=policy.name, names=names, time_s=t_arr.copy(), dt=dt_arr.copy(), demand=dem.copy(),
        weights=rec["weights"], arrivals=rec["arrivals"], served=rec["served"], ready=rec["ready"],
        billed=rec["billed"], desired=rec["desired"], blocked=rec["blocked"], available=avail.astype(float),
        prices=prices, mode=modes, switches=switches, events=events,
    )
    return evaluate_slo(run, units, slo)
