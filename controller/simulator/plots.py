"""PNG plots of simulation runs (matplotlib, Agg backend). One figure per question:

* ``served-<policy>.png`` - demand vs what each unit served, and what was dropped;
* ``weights.png`` - router weights per unit over time, one panel per policy;
* ``replicas.png`` - replicas paid for per unit (and the cloud's limit) per policy;
* ``cost.png`` - cumulative cost per policy, and the share of requests late or dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from controller.simulator.model import Run  # noqa: E402

_COLOURS = ["#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666"]
_POLICY_STYLE = {"oracle": dict(color="black", linestyle="--"), "static": dict(color="#999999"),
                 "seed-two-state": dict(color="#d95f02"), "controller": dict(color="#1f78b4")}


def _hours(run: Run) -> np.ndarray:
    return run.time_s / 3600.0


def _unit_colours(names: Sequence[str]) -> dict[str, str]:
    return {n: _COLOURS[i % len(_COLOURS)] for i, n in enumerate(names)}


def _smooth(x: np.ndarray, n: int) -> np.ndarray:
    """Centred moving average over ``n`` steps along axis 0 (shorter windows at the edges)."""
    if n <= 1 or x.shape[0] < n:
        return x
    kernel = np.ones(n)
    norm = np.convolve(np.ones(x.shape[0]), kernel, mode="same")
    if x.ndim == 1:
        return np.convolve(x, kernel, mode="same") / norm
    return np.stack([np.convolve(x[:, i], kernel, mode="same") / norm for i in range(x.shape[1])], axis=1)


def _smoothing_steps(run: Run, seconds: float = 300.0) -> int:
    step = float(np.median(run.dt)) if run.dt.size else 1.0
    return max(1, int(round(seconds / step))) if run.time_s.size > 2000 else 1


def plot_served(run: Run, path: Path, title_suffix: str = "") -> Path:
    h = _hours(run)
    col = _unit_colours(run.names)
    n = _smoothing_steps(run)
    served = _smooth(run.served, n)
    dropped = _smooth(run.dropped.sum(axis=1), n)
    demand = _smooth(run.demand, n)
    fig, ax = plt.subplots(figsize=(11, 4.8))
    ax.stackplot(h, served.T, labels=[f"served by {u}" for u in run.names], colors=[col[u] for u in run.names],
                 alpha=0.85)
    top = served.sum(axis=1)
    ax.fill_between(h, top, top + dropped, color="red", alpha=0.6, label="dropped")
    ax.plot(h, demand, color="black", linewidth=1.2, label="demand")
    ax.set_xlabel("time (h)")
    ax.set_ylabel("requests/s")
    smooth = " (5-min average)" if n > 1 else ""
    ax.set_title(f"{run.policy}: demand vs served per unit{smooth}{title_suffix}")
    ax.set_xlim(h[0], h[-1] if h.size > 1 else h[0] + 1)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _panels(runs: Sequence[Run], height: float = 2.3):
    fig, axes = plt.subplots(len(runs), 1, figsize=(11, height * len(runs) + 0.8), sharex=True, squeeze=False)
    return fig, [a[0] for a in axes]


def plot_weights(runs: Sequence[Run], path: Path) -> Path:
    fig, axes = _panels(runs)
    for ax, run in zip(axes, runs, strict=True):
        col = _unit_colours(run.names)
        ax.stackplot(_hours(run), run.weights.T, labels=list(run.names), colors=[col[u] for u in run.names],
                     step="post" if run.policy != "oracle" else None)
        ax.set_ylim(0, 100)
        ax.set_ylabel("weight (%)")
        ax.set_title(f"{run.policy}: router weights ({run.switches} switches)", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(loc="upper left", fontsize=8, ncol=len(runs[0].names))
    axes[-1].set_xlabel("time (h)")
    fig.suptitle("Router weights over time (percent of requests per unit)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_replicas(runs: Sequence[Run], path: Path) -> Path:
    fig, axes = _panels(runs)
    for ax, run in zip(axes, runs, strict=True):
        col = _unit_colours(run.names)
        h = _hours(run)
        for i, u in enumerate(run.names):
            ax.plot(h, run.billed[:, i], color=col[u], linewidth=1.1, label=f"{u} (paid)")
            limited = run.available[:, i] < np.nanmax(run.available[:, i])
            if limited.any():
                ax.plot(h, np.where(limited, run.available[:, i], np.nan), color=col[u], linestyle=":",
                        linewidth=2.0, label=f"{u} cloud limit")
        ax.set_ylabel("replicas")
        ax.set_ylim(bottom=0)
        ax.set_title(f"{run.policy}: replicas paid for (starting + ready) per unit", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=7, ncol=3)
    axes[-1].set_xlabel("time (h)")
    fig.suptitle("Replicas per unit; dotted: replicas the cloud can give (capacity outage)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_cost(runs: Sequence[Run], path: Path, slo_latency_s: float) -> Path:
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(11, 7), sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    for run in runs:
        style = _POLICY_STYLE.get(run.policy, {})
        h = _hours(run)
        ax.plot(h, np.cumsum(run.cost_per_step.sum(axis=1)), label=f"{run.policy}: ${run.cost_usd:,.2f}",
                linewidth=1.6, **style)
        if run.late is not None:
            with np.errstate(divide="ignore", invalid="ignore"):
                frac = np.where(run.demand > 0, run.late / np.maximum(run.demand, 1e-300), 0.0)
            ax2.plot(h, 100 * _smooth(frac, _smoothing_steps(run)), linewidth=1.2, label=run.policy, **style)
    ax.set_ylabel("cumulative cost (USD)")
    ax.set_title("Cost of compute per policy (replica-seconds x price)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=9)
    ax2.set_ylabel("late or dropped (%)")
    ax2.set_xlabel("time (h)")
    ax2.set_title(f"Requests dropped or slower than the {slo_latency_s:g} s SLO (5-min average)", fontsize=10)
    ax2.set_ylim(bottom=0)
    ax2.grid(alpha=0.3)
    ax2.legend(loc="upper left", fontsize=8, ncol=4)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_all(runs: Sequence[Run], out: Path, slo_latency_s: float) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [plot_served(r, out / f"served-{r.policy}.png") for r in runs]
    paths.append(plot_weights(runs, out / "weights.png"))
    paths.append(plot_replicas(runs, out / "replicas.png"))
    paths.append(plot_cost(runs, out / "cost.png", slo_latency_s))
    return paths
