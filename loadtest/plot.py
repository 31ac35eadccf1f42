"""Latency and throughput against offered load, from a result document (matplotlib, no display)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_result(result: dict[str, Any], path: str | Path, title: str | None = None) -> Path:
    """Write a PNG: latency percentiles (top) and achieved rate (bottom) against the offered rate."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib import pyplot as plt

    stages = [s for s in result.get("stages", []) if s.get("complete", True)]
    crit = result["criteria"]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    fig, (latency_ax, rate_ax) = plt.subplots(
        2, 1, sharex=True, figsize=(8, 6.4), dpi=120, gridspec_kw={"height_ratios": [3, 2]}
    )
    offered = [s["offered_rps"] for s in stages]

    styles = {"p50": ("tab:blue", "-"), "p90": ("tab:orange", "-"), "p99": ("tab:red", ":")}
    for stat, (color, line) in styles.items():
        points = [(x, s["latency_s"].get(stat)) for x, s in zip(offered, stages, strict=True)]
        points = [(x, y) for x, y in points if y is not None]
        if points:
            xs, ys = zip(*points, strict=True)
            latency_ax.plot(xs, ys, line, marker="o", color=color, label=f"latency {stat}")
    latency_ax.axhline(
        crit["slo_latency_s"],
        color="grey",
        linestyle="--",
        linewidth=1,
        label=f"SLO: {crit['slo_percentile']} <= {crit['slo_latency_s']:g}s",
    )
    latency_ax.set_ylabel("latency (s)\nfrom scheduled send")
    latency_ax.set_ylim(bottom=0)

    achieved = [s["achieved_rps"] for s in stages]
    if stages:
        top = max(offered + achieved)
        rate_ax.plot([0, top], [0, top], color="grey", linestyle="--", linewidth=1, label="achieved = offered")
        rate_ax.plot(offered, achieved, "-s", color="tab:green", label="achieved throughput")
    rate_ax.set_ylabel("throughput (requests/s)")
    rate_ax.set_xlabel("offered load (requests/s)")
    rate_ax.set_ylim(bottom=0)
    rate_ax.set_xlim(left=0)

    bp = result.get("breaking_point") or {}
    ms = result.get("max_sustainable")
    for ax in (latency_ax, rate_ax):
        if ms:
            ax.axvline(
                ms["offered_rps"],
                color="tab:green",
                linestyle="-.",
                linewidth=1,
                label=f"max sustainable: {ms['achieved_rps']:.3g} rps" if ax is rate_ax else None,
            )
        if bp.get("found"):
            ax.axvline(
                bp["offered_rps"],
                color="tab:red",
                linestyle="-.",
                linewidth=1,
                label=f"breaking point ({', '.join(bp['reasons'])})" if ax is rate_ax else None,
            )
    for x, s in zip(offered, stages, strict=True):
        if s["error_rate"] > 0:
            rate_ax.annotate(
                f"{s['error_rate']:.0%} errors",
                (x, s["achieved_rps"]),
                textcoords="offset points",
                xytext=(0, -12),
                ha="center",
                fontsize=7,
                color="tab:red",
            )
    latency_ax.legend(loc="upper left", fontsize=7, framealpha=0.8)
    rate_ax.legend(loc="upper left", fontsize=7, framealpha=0.8)
    for ax in (latency_ax, rate_ax):
        ax.grid(True, alpha=0.3)
    target = result.get("target") or {}
    name = (result.get("unit") or {}).get("name") or target.get("model") or ""
    heading = f"{name} ({target.get('protocol', '')}): latency and throughput vs offered load"
    latency_ax.set_title(title or heading, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
