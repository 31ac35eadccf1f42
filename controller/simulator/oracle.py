"""Hindsight-optimal cost: the lower bound every policy is compared with.

At every step the oracle knows the demand and what the cloud can give each unit, and has
replicas exactly when and where it wants them (no start-up delay, fractional replicas, no
autoscaler lag). It keeps the same replica floors the policies face (``min_replicas``; one
replica per unit unless scale-to-zero is on), and runs replicas at the same target utilisation
as the autoscaler, so it is comparable and still a lower bound:

1. the floor replicas are paid for anyway, so they serve first (at target utilisation);
2. the rest of the demand is dispatched in merit order (cheapest cost per inference first) on the
   capacity the trace allows, ``(available - floor) x utilisation x max_throughput``;
3. demand still left is served by the (by now all running) available replicas up to their
   breaking point; what is left after that is dropped (no policy could serve it).

Cost is ``replicas x price x dt / 3600`` with ``replicas = floor + load / (utilisation x max)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from controller.simulator.dispatch import merit_order_matrix
from controller.simulator.model import KpaSettings, Run, SimUnit, SloSettings, evaluate_slo
from controller.traces import Trace


def oracle_run(units: Sequence[SimUnit], trace: Trace, kpa: KpaSettings | None = None,
               slo: SloSettings | None = None) -> Run:
    kpa = kpa or KpaSettings()
    slo = slo or SloSettings()
    names = tuple(u.name for u in units)
    T = len(trace)
    util = kpa.target_utilisation
    mx = np.array([u.max_throughput for u in units])
    prices = np.array([u.price_per_hour for u in units])
    costs = [u.price_per_hour / u.max_throughput for u in units]
    avail = np.stack([trace.available_replicas(u.name, u.max_replicas) for u in units], axis=1).astype(float)
    floor_cfg = np.array([max(u.min_replicas, 0 if kpa.scale_to_zero else 1) for u in units], dtype=float)
    floor = np.minimum(floor_cfg[None, :], avail)
    demand = trace.demand

    # 1. floors serve first (already paid)
    stage0 = merit_order_matrix(costs, floor * util * mx, demand)
    left = demand - stage0.sum(axis=1)
    # 2. merit order on the capacity above the floors
    stage1 = merit_order_matrix(costs, (avail - floor) * util * mx, left)
    left = left - stage1.sum(axis=1)
    left = np.where(left > 1e-9 * np.maximum(demand, 1.0), left, 0.0)  # float noise is not overflow
    # 3. overflow up to the breaking point on every available replica
    load = stage0 + stage1
    stage2 = merit_order_matrix(costs, np.maximum(avail * mx - load, 0.0), np.maximum(left, 0.0))
    served = load + stage2
    replicas = floor + stage1 / (util * mx)
    replicas = np.where((left > 0)[:, None], avail, np.minimum(replicas, avail))

    with np.errstate(divide="ignore", invalid="ignore"):
        weights = np.where(demand[:, None] > 0, 100.0 * served / np.maximum(demand[:, None], 1e-300), 0.0)
    # The oracle re-dispatches every step; count a "switch" when the set of units in use changes.
    in_use = served > 1e-9
    switches = int(np.any(in_use[1:] != in_use[:-1], axis=1).sum()) if T > 1 else 0
    # Arrivals: the oracle routes exactly what it serves, plus the unservable rest spread by capacity.
    unserved = np.maximum(demand - served.sum(axis=1), 0.0)
    full = avail * mx
    share = np.where(full.sum(axis=1, keepdims=True) > 0, full / np.maximum(full.sum(axis=1, keepdims=True), 1e-300),
                     1.0 / len(units))
    arrivals = served + unserved[:, None] * share
    run = Run(
        policy="oracle", names=names, time_s=trace.time_s.copy(), dt=trace.dt.copy(), demand=demand.copy(),
        weights=weights, arrivals=arrivals, served=served, ready=replicas, billed=replicas,
        desired=replicas, blocked=np.zeros_like(replicas), available=avail, prices=prices,
        mode=["oracle"] * T, switches=switches,
    )
    return evaluate_slo(run, units, slo)
