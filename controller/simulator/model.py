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
from dataclasses import replace

import numpy as np

from controller.simulator.data import (
    Action,
    ClusterSettings,
    KpaSettings,
    Observation,
    Policy,
    Run,
    SimUnit,
    SloSettings,
    UnitObservation,
    evaluate_slo,
)
from controller.simulator.unit_state import UnitState
from controller.traces import Trace

# the data types are imported from here by the simulator's callers
__all__ = [
    "Action", "ClusterSettings", "KpaSettings", "Observation", "Policy", "Run", "SimUnit", "SloSettings",
    "UnitObservation", "evaluate_slo", "simulate_policy", "window_extreme",
]


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


_RECORDED = ("weights", "arrivals", "served", "ready", "billed", "desired", "blocked")


class _DemandWindow:
    """Measured demand: the mean over the last ``window_s`` (Prometheus ``rate(...[2m])``)."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self.steps: deque[tuple[float, float, float]] = deque()  # (t, demand*dt, dt)
        self.total = 0.0
        self.span = 0.0

    def mean(self, fallback: float) -> float:
        return (self.total / self.span) if self.span > 0 else fallback

    def add(self, t: float, demand: float, dt: float) -> None:
        self.steps.append((t, demand * dt, dt))
        self.total += demand * dt
        self.span += dt
        while len(self.steps) > 1 and self.steps[0][0] + self.steps[0][2] <= t + dt - self.window_s + 1e-9:
            _, a, b = self.steps.popleft()
            self.total -= a
            self.span -= b


class _Decisions:
    """When the policy decides next, the mode it reported and its switches."""

    def __init__(self, first_s: float, interval_s: float) -> None:
        self.next_s = first_s
        self.interval_s = interval_s
        self.mode = ""
        self.switches = 0
        self.events: list[tuple[float, str, str]] = []

    def due(self, t: float) -> bool:
        return t >= self.next_s - 1e-9

    def taken(self, t: float, act: Action) -> None:
        if act.switched:
            self.switches += 1
            self.events.append((t, act.mode, act.reason))
        self.mode = act.mode or self.mode
        self.next_s += self.interval_s * max(1, math.floor((t - self.next_s) / self.interval_s) + 1)


def _spot_ahead(units: Sequence[SimUnit], t: np.ndarray, avail: np.ndarray,
                cluster: ClusterSettings) -> dict[int, np.ndarray]:
    """Spot units: the least capacity within the notice ahead (EC2 warns 2 minutes before it reclaims)."""
    return {i: window_extreme(t, avail[:, i].astype(float), cluster.spot_notice_s, forward=True, use_max=False)
            for i, u in enumerate(units) if u.capacity_type == "spot" and cluster.spot_notice_s > 0}


def _observe(states: Sequence[UnitState], units: Sequence[SimUnit], t: float, k: int, cluster: ClusterSettings,
             ahead: Mapping[int, np.ndarray]) -> dict[str, UnitObservation]:
    seen = {u.name: s.observe(t, cluster, int(ahead[i][k]) if i in ahead else None)
            for i, (u, s) in enumerate(zip(units, states, strict=True))}
    pools = [u.nodepool for u in units if u.nodepool]
    return _pool_errors(seen, units) if len(pools) != len(set(pools)) else seen


def _apply_floors(states: Sequence[UnitState], floors: Mapping[str, int] | None, kpa: KpaSettings) -> None:
    for s in states:
        if floors is not None and s.u.name in floors:
            s.floor = max(int(floors[s.u.name]), s.u.min_replicas, 0 if kpa.scale_to_zero else 1)


def _step_units(states: Sequence[UnitState], rec: dict[str, np.ndarray], k: int, t: float, dt: float,
                demand: float, w: np.ndarray, avail: np.ndarray) -> None:
    """Steps 2-5 for every unit: reconcile, serve, bill, autoscale; recorded in row ``k``."""
    for i, s in enumerate(states):
        s.reconcile(t, int(avail[i]))
        lam = demand * w[i] / 100.0
        srv = min(lam, s.ready * s.u.max_throughput)
        rec["weights"][k, i] = w[i]
        rec["arrivals"][k, i] = lam
        rec["served"][k, i] = srv
        rec["ready"][k, i] = s.ready
        rec["billed"][k, i] = s.scheduled
        rec["blocked"][k, i] = len(s.blocked)
        s.autoscale(t, lam, dt)
        rec["desired"][k, i] = s.desired


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
    t_arr, dt_arr, dem = trace.time_s, trace.dt, trace.demand
    avail = np.stack([trace.available_replicas(u.name, u.max_replicas) for u in units], axis=1)
    rec = {key: np.zeros((len(trace), len(units))) for key in _RECORDED}
    modes: list[str] = []

    states = [UnitState(u, kpa, cluster.ice_retry_s) for u in units]
    ahead = _spot_ahead(units, t_arr, avail, cluster)
    w = _normalise(policy.initial_weights(), names)
    t0 = float(t_arr[0])
    for i, s in enumerate(states):
        s.warm_start(t0, dem[0] * w[i] / 100.0, int(avail[0, i]))
    decisions = _Decisions(t0, policy.interval_s)
    measured = _DemandWindow(cluster.demand_window_s)

    for k in range(len(trace)):
        t, dt, d = float(t_arr[k]), float(dt_arr[k]), float(dem[k])
        if decisions.due(t):  # 1. policy
            seen = _observe(states, units, t, k, cluster, ahead)
            act = policy.decide(Observation(now=t, demand_rps=measured.mean(d), units=seen))
            w = _normalise(act.weights, names)
            _apply_floors(states, act.floors, kpa)
            decisions.taken(t, act)
        _step_units(states, rec, k, t, dt, d, w, avail[k])  # 2-5. reconcile, serve, bill, autoscale
        modes.append(decisions.mode)
        measured.add(t, d, dt)

    run = Run(
        policy=policy.name, names=names, time_s=t_arr.copy(), dt=dt_arr.copy(), demand=dem.copy(),
        weights=rec["weights"], arrivals=rec["arrivals"], served=rec["served"], ready=rec["ready"],
        billed=rec["billed"], desired=rec["desired"], blocked=rec["blocked"], available=avail.astype(float),
        prices=np.array([u.price_per_hour for u in units]), mode=modes, switches=decisions.switches,
        events=decisions.events,
    )
    return evaluate_slo(run, units, slo)
