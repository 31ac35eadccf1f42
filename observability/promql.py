"""PromQL building blocks shared by the dashboards and the alerts."""

from __future__ import annotations

from observability import names as n

# Grafana's per-panel rate window (at least 4 scrape intervals); tests substitute a fixed window.
RATE = "$__rate_interval"
UNIT_FILTER = 'model_name=~"$unit"'


def leader_only(series: str) -> str:
    """The controller's view of the cluster: the leader's series only (a standby's go stale)."""
    return f"({series} and on (instance) ({n.C_LEADER} == 1))"


def by_unit(series: str) -> str:
    """One value per unit from the leader, whatever the number of controller replicas."""
    return f"max by (unit) {leader_only(series)}"


def rate_sum(series: str, by: str, selector: str = "", window: str = RATE) -> str:
    return f"sum by ({by}) (rate({series}{{{selector}}}[{window}]))"


def quantile(q: float, histogram: str, by: str, selector: str = "", window: str = RATE) -> str:
    return f"histogram_quantile({q}, sum by ({by}, le) (rate({histogram}_bucket{{{selector}}}[{window}])))"


def mean(histogram: str, by: str, selector: str = "", window: str = RATE) -> str:
    return (
        f"sum by ({by}) (rate({histogram}_sum{{{selector}}}[{window}]))"
        f" / sum by ({by}) (rate({histogram}_count{{{selector}}}[{window}]))"
    )


def unit_capacity_rps() -> str:
    """Requests/s the ready replicas sustain at their breaking point, per unit."""
    return f"{by_unit(n.C_READY)} * on (unit) {by_unit(n.C_REPLICA_RPS)}"


def unit_cost_per_hour() -> str:
    """$/hour of the replicas each unit asks for (desired: pods starting are paid for too)."""
    return f"{by_unit(n.C_DESIRED)} * on (unit) {by_unit(n.C_PRICE)}"
