"""Trace generators for the simulator (all deterministic for a given ``seed``).

* :func:`diurnal` - daily waves with slow (autocorrelated) noise, like the seed's experiments;
* :func:`burst` - the diurnal wave plus short bursts of several times the load;
* :func:`outage` - the diurnal wave plus a window in which the cost pool's units can get at
  most a few replicas (an insufficient-capacity event, as in the seed's failover experiment);
* the trace families of the sweeps (:data:`FAMILIES`): one trace per seed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from controller.trace_data import Trace, TraceError

DAY_S = 86400.0


# -------------------------------------------------------------------------------------- generators


def _times(hours: float, step_s: float) -> np.ndarray:
    if step_s <= 0 or hours <= 0:
        raise TraceError("hours and step_s must be > 0")
    n = int(round(hours * 3600.0 / step_s))
    return np.arange(max(n, 1), dtype=float) * step_s


def _wave(t: np.ndarray, base: float, peak: float, trough_h: float) -> np.ndarray:
    """A smooth daily wave: ``base`` at ``trough_h`` o'clock, ``peak`` twelve hours later."""
    phase = 2.0 * math.pi * (t / DAY_S - trough_h / 24.0)
    return base + (peak - base) * 0.5 * (1.0 - np.cos(phase))


def _slow_noise(rng: np.random.Generator, n: int, step_s: float, sigma: float, tau_s: float) -> np.ndarray:
    """AR(1) noise with standard deviation ``sigma`` and correlation time ``tau_s``."""
    if sigma <= 0:
        return np.zeros(n)
    phi = math.exp(-step_s / tau_s)
    eps = rng.standard_normal(n) * sigma * math.sqrt(1.0 - phi * phi)
    out = np.empty(n)
    acc = rng.standard_normal() * sigma
    for k in range(n):  # n is ~10^4: a plain loop is fast enough and obviously right
        acc = phi * acc + eps[k]
        out[k] = acc
    return out


def diurnal(
    hours: float = 24.0,
    step_s: float = 10.0,
    base: float = 150.0,
    peak: float = 800.0,
    trough_h: float = 4.0,
    noise: float = 0.04,
    seed: int = 0,
) -> Trace:
    """Daily waves between ``base`` and ``peak`` requests/s with slow multiplicative noise."""
    if base < 0 or peak < base:
        raise TraceError("need 0 <= base <= peak")
    t = _times(hours, step_s)
    rng = np.random.default_rng(seed)
    demand = _wave(t, base, peak, trough_h) * (1.0 + _slow_noise(rng, t.size, step_s, noise, 600.0))
    return Trace(t, np.round(np.maximum(demand, 0.0), 3))


def burst(
    hours: float = 24.0,
    step_s: float = 10.0,
    base: float = 150.0,
    peak: float = 600.0,
    bursts: int = 6,
    factor: float = 2.0,
    min_burst_s: float = 300.0,
    max_burst_s: float = 1200.0,
    noise: float = 0.04,
    seed: int = 0,
    trough_h: float = 4.0,
) -> Trace:
    """The diurnal wave plus ``bursts`` surges: the load jumps to about ``factor`` x within a minute,
    holds, then decays; start times and lengths are drawn from ``seed``."""
    base_trace = diurnal(hours, step_s, base, peak, trough_h=trough_h, noise=noise, seed=seed)
    t = base_trace.time_s
    rng = np.random.default_rng(seed + 1_000_003)
    mult = np.ones_like(t)
    span = t[-1] + step_s
    for _ in range(bursts):
        start = rng.uniform(0.05, 0.9) * span
        length = rng.uniform(min_burst_s, max_burst_s)
        f = rng.uniform(0.75, 1.25) * (factor - 1.0)
        rise = np.clip((t - start) / 60.0, 0.0, 1.0)
        decay = np.where(t > start + length, np.exp(-(t - start - length) / 180.0), 1.0)
        mult += f * rise * decay * (t >= start)
    return Trace(t, np.round(base_trace.demand * mult, 3))


def outage(
    units: Sequence[str],
    hours: float = 24.0,
    step_s: float = 10.0,
    base: float = 150.0,
    peak: float = 800.0,
    start_h: float = 7.0,
    duration_h: float = 8.0,
    replicas: int = 4,
    noise: float = 0.04,
    seed: int = 0,
    trough_h: float = 4.0,
) -> Trace:
    """The diurnal wave; from ``start_h`` for ``duration_h`` hours each unit in ``units`` (normally
    the cost pool) can get at most ``replicas`` replicas. Outside the window the columns are empty
    (no limit). Pods above the limit when it starts are lost, like a spot reclaim."""
    if not units:
        raise TraceError("outage needs at least one unit name")
    if replicas < 0:
        raise TraceError("replicas must be >= 0")
    tr = diurnal(hours, step_s, base, peak, trough_h=trough_h, noise=noise, seed=seed)
    t = tr.time_s
    inside = (t >= start_h * 3600.0) & (t < (start_h + duration_h) * 3600.0)
    col = np.where(inside, float(replicas), np.nan)
    return Trace(t, tr.demand, {u: col.copy() for u in units})


# ------------------------------------------------------------------------------------ trace families
#
# Families of traces for sweeps (docs/simulation.md, "Sweeps"): each draws one trace per seed,
# deterministically, for the units of a config (anything with .name, .max_replicas and
# .capacity_type). The policy is judged on the distribution over seeds, with one config.

SPOT_NOTICE_S = 120.0  # EC2 spot interruption notice; the capacity is gone after it


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _cap_window(col: np.ndarray, t: np.ndarray, start_s: float, end_s: float, cap: float) -> None:
    inside = (t >= start_s) & (t < end_s)
    col[inside] = np.where(np.isnan(col[inside]), cap, np.minimum(col[inside], cap))


def _outage_cap(rng: np.random.Generator, max_replicas: int) -> float:
    """Total (0) or partial (1 .. half the unit's maximum) with equal odds."""
    if rng.uniform() < 0.5:
        return 0.0
    return float(rng.integers(1, max(1, max_replicas // 2) + 1))


def family_outages(units: Sequence, seed: int, hours: float = 24.0, step_s: float = 10.0) -> Trace:
    """The diurnal day; one unit (any, drawn) loses capacity at any hour for 10 min - 6 h,
    totally or partly; with odds 0.4 a second unit's outage overlaps the first."""
    rng = np.random.default_rng([17, 1, seed])
    base = diurnal(hours, step_s, 150.0, 800.0, noise=0.04, seed=seed)
    t = base.time_s
    span = float(t[-1] + step_s)
    cols = {u.name: np.full(t.size, np.nan) for u in units}
    first = int(rng.integers(len(units)))
    start = rng.uniform(0.0, span - 600.0)
    length = _log_uniform(rng, 600.0, 6 * 3600.0)
    _cap_window(cols[units[first].name], t, start, start + length, _outage_cap(rng, units[first].max_replicas))
    if len(units) > 1 and rng.uniform() < 0.4:
        second = int((first + rng.integers(1, len(units))) % len(units))
        start2 = rng.uniform(start, start + length)
        length2 = _log_uniform(rng, 600.0, 6 * 3600.0)
        _cap_window(cols[units[second].name], t, start2, start2 + length2,
                    _outage_cap(rng, units[second].max_replicas))
    return Trace(t, base.demand, {n: c for n, c in cols.items() if not np.all(np.isnan(c))})


def family_flapping(units: Sequence, seed: int, hours: float = 24.0, step_s: float = 10.0) -> Trace:
    """The diurnal day; for 2-8 h one unit's capacity flaps between none-or-little and full,
    each phase 5-30 min."""
    rng = np.random.default_rng([17, 2, seed])
    base = diurnal(hours, step_s, 150.0, 800.0, noise=0.04, seed=seed)
    t = base.time_s
    span = float(t[-1] + step_s)
    u = units[int(rng.integers(len(units)))]
    col = np.full(t.size, np.nan)
    at = rng.uniform(0.0, max(0.0, span - 2 * 3600.0))
    end = min(span, at + rng.uniform(2 * 3600.0, 8 * 3600.0))
    low = True
    while at < end:
        length = rng.uniform(300.0, 1800.0)
        if low:
            _cap_window(col, t, at, min(end, at + length), float(rng.integers(0, max(1, u.max_replicas // 3) + 1)))
        at += length
        low = not low
    return Trace(t, base.demand, {u.name: col})


def family_bursts(units: Sequence, seed: int, hours: float = 48.0, step_s: float = 10.0) -> Trace:
    """A noisy two-day diurnal curve (150 -> 600 req/s, 8 % slow noise) with 6-10 bursts a day of
    2-5x the load, each lasting 1-30 min (30-s rise, 60-s decay)."""
    rng = np.random.default_rng([17, 3, seed])
    base = diurnal(hours, step_s, 150.0, 600.0, noise=0.08, seed=seed)
    t = base.time_s
    span = float(t[-1] + step_s)
    mult = np.ones_like(t)
    for _ in range(int(rng.integers(6, 11) * max(1.0, hours / 24.0))):
        start = rng.uniform(0.0, span - 60.0)
        length = rng.uniform(60.0, 1800.0)
        f = rng.uniform(2.0, 5.0) - 1.0
        rise = np.clip((t - start) / 30.0, 0.0, 1.0)
        decay = np.exp(-np.maximum(t - start - length, 0.0) / 60.0)
        mult = np.maximum(mult, 1.0 + f * rise * decay * (t >= start))  # overlapping bursts: the larger
    return Trace(t, np.round(base.demand * mult, 3), {})


def spot_interruptions(trace: Trace) -> dict[str, np.ndarray]:
    """Per unit: times (s) at which a spot interruption notice arrives, i.e. ``SPOT_NOTICE_S``
    before each drop of ``available``. Used by the simulator to raise the notice signal."""
    out: dict[str, np.ndarray] = {}
    for name, col in trace.available.items():
        a = np.where(np.isnan(col), np.inf, col)
        drops = np.nonzero(a[1:] < a[:-1])[0] + 1
        out[name] = trace.time_s[drops] - SPOT_NOTICE_S
    return out


def family_spot(units: Sequence, seed: int, hours: float = 24.0, step_s: float = 10.0) -> Trace:
    """The diurnal day; the units on spot capacity (``capacity_type: spot``) are interrupted 3-8
    times a day: after a 2-minute notice the unit keeps at most a few replicas (0-2) for 10-60 min
    while the spot pool is reclaimed. Without spot units the trace has no capacity events."""
    rng = np.random.default_rng([17, 4, seed])
    base = diurnal(hours, step_s, 150.0, 800.0, noise=0.04, seed=seed)
    t = base.time_s
    span = float(t[-1] + step_s)
    spot = [u for u in units if getattr(u, "capacity_type", "on-demand") == "spot"]
    cols = {u.name: np.full(t.size, np.nan) for u in spot}
    if spot:
        for _ in range(int(rng.integers(3, 9) * max(1.0, hours / 24.0))):
            u = spot[int(rng.integers(len(spot)))]
            start = rng.uniform(SPOT_NOTICE_S, span - 600.0)
            _cap_window(cols[u.name], t, start, start + rng.uniform(600.0, 3600.0), float(rng.integers(0, 3)))
    return Trace(t, base.demand, {n: c for n, c in cols.items() if not np.all(np.isnan(c))})


FAMILIES = {"outages": family_outages, "flapping": family_flapping, "bursts": family_bursts, "spot": family_spot}
FAMILY_HOURS = {"outages": 24.0, "flapping": 24.0, "bursts": 48.0, "spot": 24.0}


def family_trace(family: str, units: Sequence, seed: int, step_s: float = 10.0, hours: float | None = None) -> Trace:
    """One trace of ``family`` (see :data:`FAMILIES`) for ``units``."""
    if family not in FAMILIES:
        raise TraceError(f"unknown trace family {family!r} (known: {', '.join(FAMILIES)})")
    if not units:
        raise TraceError("a trace family needs the config's units")
    return FAMILIES[family](list(units), seed, hours or FAMILY_HOURS[family], step_s)
