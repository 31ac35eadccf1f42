"""Standing spare replicas chosen by the cost of a drop (``routing.drop_cost_usd``).

A burst that rises faster than replicas start (300-600 s) is served only by replicas that are
ready when it comes. Spare ready capacity costs its price every hour; the drops it prevents are
worth ``drop_cost_usd`` each. This module makes that trade-off explicit, from what the demand did:

* **Rises.** At every decision with measured demand, the *rise* is the demand now over the least
  demand of the last start-up (the longest ``startup_s``, within the recorded history): the part
  of the demand now that replicas started in reaction to it could not be ready for. Rises the
  autoscaler's own headroom covers (up to ``max_utilisation / target_utilisation``) are not worth
  keeping; larger ones are kept, as ratios, for ``routing.spare_memory_s`` (:func:`record_rises`).
* **Spare.** The k-th spare replica covers the demand between the plan's capacity (its replicas at
  ``max_utilisation``) plus k - 1 spares and one replica more. Scaled to the demand now, the rises
  say how many requests per second would fall into that band at a random moment; over an hour
  and at ``drop_cost_usd`` each, that is what the replica saves. It is kept while that exceeds its
  price per hour, on the unit with the cheapest capacity that has room (:func:`spare_replicas`).

With no rises recorded (a flat or slowly moving demand, a fresh start) or ``drop_cost_usd`` 0,
there is no spare. Pure functions: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from controller.config import ControllerConfig, Unit
from controller.weights import cost_per_inference


def demand_rise(history: Sequence[tuple[float, float]], horizon_s: float) -> float | None:
    """The last demand over the least demand within ``horizon_s`` before it; None without two
    samples in that span or when that least demand is 0 (a rise from nothing has no ratio)."""
    if len(history) < 2:
        return None
    now, latest = history[-1]
    window = [d for t, d in history if now - horizon_s <= t <= now]
    if len(window) < 2 or min(window) <= 0:
        return None
    return latest / min(window)


def rise_threshold(config: ControllerConfig) -> float:
    """Rises up to this ratio fit in the headroom the scale target leaves (replicas sized for the
    demand at ``target_utilisation`` carry it up to ``max_utilisation``): not worth recording."""
    return config.routing.max_utilisation / config.routing.target_utilisation


def record_rises(
    config: ControllerConfig, rises: Sequence[tuple[float, float]], history: Sequence[tuple[float, float]],
    now: float, measured: bool,
) -> tuple[tuple[float, float], ...]:
    """``rises`` within ``routing.spare_memory_s`` of ``now``, plus ``(now, rise)`` when the
    demand was measured and rose beyond :func:`rise_threshold` in the last start-up. Nothing is
    recorded while ``drop_cost_usd`` is 0 (the state stays as it was without this feature)."""
    routing = config.routing
    if routing.drop_cost_usd <= 0 or routing.spare_memory_s <= 0:
        return ()
    kept = tuple((t, r) for t, r in rises if now - routing.spare_memory_s <= t < now)
    rise = demand_rise(history, max(u.startup_s for u in config.units)) if measured and history else None
    if rise is not None and history[-1][0] == now and rise > rise_threshold(config):
        kept += ((now, float(rise)),)
    return kept


def expected_overflow(demand: float, rises: Sequence[tuple[float, float]], sample_s: float, memory_s: float,
                      low: float, width: float) -> float:
    """Requests/s expected, at a random moment, in the band [low, low + width] of demand: each
    recorded rise, scaled to ``demand``, stands for ``sample_s`` of the ``memory_s`` remembered."""
    if memory_s <= 0 or width <= 0:
        return 0.0
    spill = sum(min(width, max(0.0, demand * r - low)) for _, r in rises)
    return spill * min(sample_s, memory_s) / memory_s


def spare_replicas(
    units: Sequence[Unit],
    demand_rps: float,
    rises: Sequence[tuple[float, float]],
    replicas: Mapping[str, int],
    room: Mapping[str, int],
    drop_cost_usd: float,
    sample_s: float,
    memory_s: float,
    max_utilisation: float = 0.9,
) -> dict[str, int]:
    """Spare replicas per unit to keep on top of ``replicas`` (the plan), chosen by expected value.

    ``rises``: (time, demand ratio) as :func:`record_rises` keeps them, one per ``sample_s`` (the
    decision interval) over ``memory_s``. ``room``: replicas each unit can still add. One spare
    at a time, on the unit with room and the lowest price per request/s (then the name): it is
    kept while ``drop_cost_usd`` x 3600 x the requests/s expected in its band (above the plan's
    capacity at ``max_utilisation`` and the spares before it) exceeds its ``price_per_hour``.
    Empty with no rises, no demand or ``drop_cost_usd`` 0; never fewer spares for a higher drop cost.
    """
    if drop_cost_usd <= 0 or not rises or demand_rps <= 0:
        return {}
    left = {u.name: max(0, int(room.get(u.name, 0))) for u in units}
    low = sum(replicas.get(u.name, 0) * u.max_throughput * max_utilisation for u in units)
    spare: dict[str, int] = {}
    for u in sorted(units, key=lambda u: (cost_per_inference(u), u.name)):
        width = u.max_throughput * max_utilisation
        while left[u.name] > 0:
            saved_per_hour = drop_cost_usd * 3600.0 * expected_overflow(demand_rps, rises, sample_s, memory_s,
                                                                        low, width)
            if saved_per_hour <= u.price_per_hour:
                return spare
            spare[u.name] = spare.get(u.name, 0) + 1
            left[u.name] -= 1
            low += width
    return spare
