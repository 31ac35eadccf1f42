"""Sweeps: the controller policy against the honest oracle on many traces of one family.

``python -m controller simulate --config C --sweep FAMILY --seeds N --out DIR`` draws seeds
``0..N-1`` of ``controller.traces.FAMILIES[FAMILY]`` for the config's units, replays the
``controller`` policy and the oracles on each, and reports the distribution (median, p90, worst)
of cost / honest oracle, cost / relaxed oracle, the dropped share, the share dropped beyond the
oracle, switches and router edits (docs/simulation.md, "Sweeps").
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from controller.config import ControllerConfig
from controller.simulator.runner import SimSettings, run_all, summarise
from controller.traces import family_trace

# Goals of issue 17 on a family: cost / honest oracle at most this at the median and at worst,
# and no more dropped than the oracle plus this share of demand.
GOAL_MEDIAN = 1.05
GOAL_WORST = 1.10
GOAL_EXCESS_DROP_SHARE = 0.001

METRICS = ("cost_vs_oracle", "cost_vs_relaxed_oracle", "dropped_share", "excess_dropped_share", "switches",
           "weight_updates")


def run_seed(config: ControllerConfig, family: str, seed: int, step_s: float, settings: SimSettings) -> dict:
    """One trace of the family: the controller's figures against the oracles."""
    trace = family_trace(family, config.units, seed, step_s)
    runs = run_all(config, trace, ("controller", "oracle"), settings)
    s = summarise(config, runs, settings)
    c, o = s["policies"]["controller"], s["policies"]["oracle"]
    demand = c["demand"] or 1.0
    return {
        "seed": seed,
        "cost_usd": c["cost_usd"],
        "oracle_usd": o["cost_usd"],
        "relaxed_oracle_usd": s["relaxed_oracle"]["cost_usd"],
        "cost_vs_oracle": c["cost_vs_oracle"],
        "cost_vs_relaxed_oracle": c["cost_vs_relaxed_oracle"],
        "dropped_share": c["dropped"] / demand,
        "oracle_dropped_share": o["dropped"] / demand,
        "excess_dropped_share": max(0.0, c["dropped"] - o["dropped"]) / demand,
        "switches": c["switches"],
        "weight_updates": c["weight_updates"],
        "capacity_events": sorted(trace.available),
    }


def distribution(values: Sequence[float]) -> dict:
    v = np.asarray(values, dtype=float)
    return {"median": float(np.median(v)), "p90": float(np.quantile(v, 0.9)), "worst": float(v.max())}


def run_sweep(config: ControllerConfig, family: str, seeds: Sequence[int], step_s: float = 30.0,
              settings: SimSettings | None = None) -> dict:
    settings = settings or SimSettings(kpa=_kpa_of(config))
    rows = [run_seed(config, family, seed, step_s, settings) for seed in seeds]
    dist = {m: distribution([r[m] for r in rows]) for m in METRICS}
    goals = {
        "median_cost_within_5pct_of_oracle": dist["cost_vs_oracle"]["median"] <= GOAL_MEDIAN,
        "worst_cost_within_10pct_of_oracle": dist["cost_vs_oracle"]["worst"] <= GOAL_WORST,
        "drops_within_oracle_plus_0.1pct": dist["excess_dropped_share"]["worst"] <= GOAL_EXCESS_DROP_SHARE,
    }
    return {"family": family, "step_s": step_s, "seeds": list(seeds), "runs": rows, "distribution": dist,
            "goals": goals}


def _kpa_of(config: ControllerConfig):
    from controller.simulator.model import KpaSettings

    return KpaSettings(target_utilisation=config.routing.target_utilisation)


def format_sweep(result: dict) -> str:
    d = result["distribution"]
    lines = [f"sweep {result['family']}: {len(result['seeds'])} seeds at {result['step_s']:g}-s steps",
             f"{'':24}{'median':>10}{'p90':>10}{'worst':>10}"]
    for m in METRICS:
        pct = m.endswith("share")
        fmt = (lambda x: f"{100 * x:9.3f}%") if pct else (lambda x: f"{x:10.3f}")
        lines.append(f"{m:24}{fmt(d[m]['median'])}{fmt(d[m]['p90'])}{fmt(d[m]['worst'])}")
    lines.append("goals: " + ", ".join(f"{k}={'yes' if v else 'NO'}" for k, v in result["goals"].items()))
    return "\n".join(lines)


def plot_sweep(result: dict, out: Path) -> Path:
    """Per-seed cost / oracle and excess drops, with the goal lines (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["runs"]
    seeds = [r["seed"] for r in rows]
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    a1.plot(seeds, [r["cost_vs_oracle"] for r in rows], "o", label="controller / honest oracle")
    a1.plot(seeds, [r["cost_vs_relaxed_oracle"] for r in rows], "x", alpha=0.6, label="controller / relaxed oracle")
    a1.axhline(GOAL_MEDIAN, ls="--", c="g", lw=1, label="1.05 (median goal)")
    a1.axhline(GOAL_WORST, ls="--", c="r", lw=1, label="1.10 (worst goal)")
    a1.set_ylabel("cost ratio")
    a1.legend(fontsize=8)
    a1.set_title(f"sweep {result['family']} ({len(seeds)} seeds)")
    a2.bar(seeds, [100 * r["excess_dropped_share"] for r in rows], color="tab:red", label="dropped beyond oracle")
    a2.axhline(100 * GOAL_EXCESS_DROP_SHARE, ls="--", c="r", lw=1, label="0.1 % goal")
    a2.set_ylabel("% of demand")
    a2.set_xlabel("seed")
    a2.legend(fontsize=8)
    fig.tight_layout()
    path = Path(out) / f"sweep-{result['family']}.png"
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
