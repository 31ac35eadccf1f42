"""Hindsight oracles: what every policy is compared with.

Two figures (docs/simulation.md, "The oracles"):

* :func:`oracle_run` - the **honest oracle**, a schedule a real cluster could run if it knew
  the future. It knows the demand and what the cloud can give each unit at every step, and it
  obeys what the policies obey:

  - **start-up delays**: a replica that serves at time t was scheduled at ``t - startup_s`` or
    earlier and is paid from then (starting pods are billed);
  - **whole replicas**: replica counts are integers, each serving at most the autoscaler's target
    utilisation of its breaking point (above it only when every usable replica is needed);
  - **the same capacity caps**: a replica that serves at t held a slot for its whole start-up, so
    a unit can use at most ``min(available)`` over ``[t - startup_s, t]`` replicas at t, and the
    pods paid at t never exceed ``available(t)``;
  - **the same floors** (``min_replicas``, at least one unless scale-to-zero), paid anyway;
  - **the same warm start**: at the first step the replicas it needs are ready, as the
    simulator's policies start with the replicas their autoscaler wants.

  Per step it fills the usable replicas in merit order (cheapest cost per inference first), whole
  replicas at the target utilisation; then each unit pays, at t, for the most replicas it needs
  ready at any time in ``[t, t + startup_s]`` (the fewest pods that have them ready in time,
  removing the newest first). It is a feasible schedule, not a proven optimum: a cheaper one may
  exist (e.g. a fast-starting dear unit for a short burst instead of a slow cheap one), which the
  loose bound below covers.

* :func:`relaxed_oracle_run` - the **relaxed oracle** (the lower bound kept as a second figure):
  no start-up delay, fractional replicas, free starting pods. No policy can reach it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from controller.simulator.dispatch import merit_order_matrix
from controller.simulator.model import KpaSettings, Run, SimUnit, SloSettings, evaluate_slo, window_extreme
from controller.traces import Trace


def _floors(units: Sequence[SimUnit], kpa: KpaSettings) -> np.ndarray:
    return np.array([max(u.min_replicas, 0 if kpa.scale_to_zero else 1) for u in units], dtype=float)


def usable_replicas(units: Sequence[SimUnit], trace: Trace) -> np.ndarray:
    """``[T, N]`` replicas each unit can have *ready* at each step: the fewest the cloud allowed
    during the start-up before it (a pod that serves at t held a slot since ``t - startup_s``)."""
    t = trace.time_s
    cols = []
    for u in units:
        avail = trace.available_replicas(u.name, u.max_replicas).astype(float)
        cols.append(window_extreme(t, avail, u.startup_s, forward=False, use_max=False))
    return np.stack(cols, axis=1)


def integer_dispatch(costs: Sequence[float], per_replica: np.ndarray, usable: np.ndarray, floor: np.ndarray,
                     demand: float) -> np.ndarray:
    """Whole replicas for one step: floors first, then the cheapest unit's replicas one at a time
    (the last one partly used) until ``demand`` is covered at ``per_replica`` rps each."""
    n = np.minimum(floor, usable).astype(float)
    left = demand - float((n * per_replica).sum())
    for i in sorted(range(len(costs)), key=lambda i: (costs[i], i)):
        if left <= 1e-9:
            break
        room = usable[i] - n[i]
        if room <= 0 or per_replica[i] <= 0:
            continue
        add = min(room, math.ceil(left / per_replica[i] - 1e-9))
        n[i] += add
        left -= add * per_replica[i]
    if left > 1e-9:  # not enough at the target: every usable replica, up to its breaking point
        n = usable.astype(float).copy()
    return n


def oracle_run(units: Sequence[SimUnit], trace: Trace, kpa: KpaSettings | None = None,
               slo: SloSettings | None = None) -> Run:
    """The honest oracle (module docstring)."""
    kpa = kpa or KpaSettings()
    slo = slo or SloSettings()
    T = len(trace)
    util = kpa.target_utilisation
    mx = np.array([u.max_throughput for u in units])
    prices = np.array([u.price_per_hour for u in units])
    costs = [u.price_per_hour / u.max_throughput for u in units]
    avail = np.stack([trace.available_replicas(u.name, u.max_replicas) for u in units], axis=1).astype(float)
    usable = usable_replicas(units, trace)
    floor = _floors(units, kpa)
    demand = trace.demand

    ready = np.empty((T, len(units)))
    for k in range(T):
        ready[k] = integer_dispatch(costs, util * mx, usable[k], floor, float(demand[k]))
    # Paid at t: the most replicas needed ready within one start-up ahead, and at least the floor
    # the cloud allows (the policies pay that too).
    billed = np.stack([window_extreme(trace.time_s, ready[:, i], u.startup_s, forward=True, use_max=True)
                       for i, u in enumerate(units)], axis=1)
    billed = np.minimum(np.maximum(billed, np.minimum(floor[None, :], avail)), avail)
    billed = np.maximum(billed, ready)  # a ready pod is paid (equal unless the warm start)

    at_target = merit_order_matrix(costs, ready * util * mx, demand)
    left = np.maximum(demand - at_target.sum(axis=1), 0.0)
    overflow = merit_order_matrix(costs, np.maximum(ready * mx - at_target, 0.0), left)
    served = at_target + overflow
    return _finish("oracle", units, trace, served, ready, billed, avail, prices, slo)


def relaxed_oracle_run(units: Sequence[SimUnit], trace: Trace, kpa: KpaSettings | None = None,
                       slo: SloSettings | None = None) -> Run:
    """The relaxed oracle: no start-up delay, fractional replicas, free starting pods (a lower
    bound no policy reaches). Floors serve first (they are paid anyway), the rest goes in merit
    order at the target utilisation on the capacity the trace allows, then up to the breaking
    point; only what exceeds every available replica at its breaking point is dropped."""
    kpa = kpa or KpaSettings()
    slo = slo or SloSettings()
    util = kpa.target_utilisation
    mx = np.array([u.max_throughput for u in units])
    prices = np.array([u.price_per_hour for u in units])
    costs = [u.price_per_hour / u.max_throughput for u in units]
    avail = np.stack([trace.available_replicas(u.name, u.max_replicas) for u in units], axis=1).astype(float)
    floor = np.minimum(_floors(units, kpa)[None, :], avail)
    demand = trace.demand

    stage0 = merit_order_matrix(costs, floor * util * mx, demand)
    left = demand - stage0.sum(axis=1)
    stage1 = merit_order_matrix(costs, (avail - floor) * util * mx, left)
    left = left - stage1.sum(axis=1)
    left = np.where(left > 1e-9 * np.maximum(demand, 1.0), left, 0.0)  # float noise is not overflow
    load = stage0 + stage1
    stage2 = merit_order_matrix(costs, np.maximum(avail * mx - load, 0.0), np.maximum(left, 0.0))
    served = load + stage2
    replicas = floor + stage1 / (util * mx)
    replicas = np.where((left > 0)[:, None], avail, np.minimum(replicas, avail))
    return _finish("oracle-relaxed", units, trace, served, replicas, replicas, avail, prices, slo)


def _finish(name: str, units: Sequence[SimUnit], trace: Trace, served: np.ndarray, ready: np.ndarray,
            billed: np.ndarray, avail: np.ndarray, prices: np.ndarray, slo: SloSettings) -> Run:
    T = len(trace)
    demand = trace.demand
    with np.errstate(divide="ignore", invalid="ignore"):
        weights = np.where(demand[:, None] > 0, 100.0 * served / np.maximum(demand[:, None], 1e-300), 0.0)
    # An oracle re-dispatches every step; count a "switch" when the set of units in use changes.
    in_use = served > 1e-9
    switches = int(np.any(in_use[1:] != in_use[:-1], axis=1).sum()) if T > 1 else 0
    # Arrivals: what it serves, plus the unservable rest spread by capacity.
    unserved = np.maximum(demand - served.sum(axis=1), 0.0)
    full = avail * np.array([u.max_throughput for u in units])
    tot = full.sum(axis=1, keepdims=True)
    share = np.where(tot > 0, full / np.maximum(tot, 1e-300), 1.0 / len(units))
    run = Run(
        policy=name, names=tuple(u.name for u in units), time_s=trace.time_s.copy(), dt=trace.dt.copy(),
        demand=demand.copy(), weights=weights, arrivals=served + unserved[:, None] * share, served=served,
        ready=ready, billed=billed, desired=ready, blocked=np.zeros_like(ready), available=avail, prices=prices,
        mode=[name] * T, switches=switches,
    )
    return evaluate_slo(run, units, slo)
