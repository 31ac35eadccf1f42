"""Latency against the SLO: each replica is an M/M/c queue.

A replica that sustains ``max_throughput`` requests/s with latency ``latency_s`` at its breaking
point holds ``c = round(max_throughput x latency_s)`` requests in flight (Little's law), so it is
modelled as ``c`` servers of rate ``max_throughput / c`` each. The router spreads a unit's traffic
evenly over its ready replicas. With per-replica arrival rate ``r`` and offered load
``a = r c / max_throughput`` the Erlang C formula gives the probability of queueing, and

    P(response > slo) = P(wait > slo - latency_s) = C(c, a) * exp(-(max_throughput - r) (slo - latency_s))

A replica at or beyond its breaking point (r >= max_throughput) answers every request late.
Dropped requests are late by definition. Everything here is vectorised over time.
"""

from __future__ import annotations

import numpy as np


def servers_per_replica(max_throughput: float, latency_s: float) -> int:
    return max(1, int(round(max_throughput * latency_s)))


def erlang_c(c: int, a: np.ndarray) -> np.ndarray:
    """Probability of waiting in an M/M/c queue with offered load ``a`` (Erlangs), for a < c.

    Uses the stable Erlang B recursion B_k = a B_{k-1} / (k + a B_{k-1}), then
    C = c B / (c - a (1 - B)). Values for a >= c are returned as 1.
    """
    a = np.asarray(a, dtype=float)
    b = np.ones_like(a)
    for k in range(1, c + 1):
        b = a * b / (k + a * b)
    with np.errstate(divide="ignore", invalid="ignore"):
        cq = c * b / (c - a * (1.0 - b))
    return np.where(a >= c, 1.0, np.clip(np.nan_to_num(cq, nan=1.0), 0.0, 1.0))


def late_probability(
    served_rps: np.ndarray, ready: np.ndarray, max_throughput: float, latency_s: float, slo_s: float
) -> np.ndarray:
    """Fraction of one unit's served requests answered slower than ``slo_s`` (array over time)."""
    served = np.asarray(served_rps, dtype=float)
    ready = np.asarray(ready, dtype=float)
    if slo_s <= latency_s:
        return np.where(served > 0, 1.0, 0.0)
    c = servers_per_replica(max_throughput, latency_s)
    mu = max_throughput / c
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(ready > 0, served / np.maximum(ready, 1.0), 0.0)
    a = r / mu
    saturated = r >= max_throughput * (1.0 - 1e-9)
    pc = erlang_c(c, np.where(saturated, 0.0, a))
    p = pc * np.exp(-(max_throughput - r) * (slo_s - latency_s))
    p = np.where(saturated, 1.0, np.clip(p, 0.0, 1.0))
    return np.where(served > 0, p, 0.0)
