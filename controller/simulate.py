"""``python -m controller simulate``: replay policies on a demand/capacity trace.

    python -m controller simulate --config examples/sd21-seed.yaml --trace trace.csv --out DIR \
        [--policies static,seed-two-state,controller,oracle]

Writes ``DIR/summary.json`` (per policy: cost_usd, served, dropped, slo_violation_s, switches and
more), PNG plots in ``DIR`` and prints a table. The ``controller`` policy calls
:func:`controller.policy.decide`, the function the live controller runs. See docs/simulation.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from controller.config import ConfigError, load_config
from controller.plan import WeightsSpecError, parse_weights
from controller.simulator.model import ClusterSettings, KpaSettings, SloSettings
from controller.simulator.runner import POLICIES, SimSettings, run_all, summarise
from controller.traces import FAMILIES, TraceError, read_csv


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m controller simulate",
        description="Replay routing policies on a trace and compare cost, drops, SLO and switches.",
    )
    p.add_argument("--config", required=True, help="controller config (the one `controller run` uses)")
    p.add_argument("--trace", help="CSV: time_s,demand[,available.<unit>...] (see controller.traces)")
    p.add_argument("--sweep", choices=sorted(FAMILIES),
                   help="instead of --trace: replay the controller and the oracles on --seeds traces of this family")
    p.add_argument("--seeds", type=int, default=20, help="sweep: seeds 0..N-1 (default 20)")
    p.add_argument("--step", type=float, default=30.0, help="sweep: seconds per step (default 30)")
    p.add_argument("--out", required=True, help="directory for summary.json and the PNG plots")
    p.add_argument("--policies", default=",".join(POLICIES),
                   help=f"comma-separated subset of {','.join(POLICIES)} (default: all)")
    p.add_argument("--static-weights", default="cost-optimized",
                   help="weights of the static policy: cost-optimized, capacity-optimized, 40/20/15/15/10 "
                        "(config order) or name=40,name=20,... (default: cost-optimized)")
    p.add_argument("--utilisation", type=float, default=None,
                   help="KPA target utilisation of the breaking-point throughput "
                        "(default: the config's routing.target_utilisation, 0.7 unless set)")
    p.add_argument("--scale-to-zero", action="store_true", help="let units without traffic scale to zero")
    p.add_argument("--stable-window", type=float, default=60.0, help="KPA stable window, s (default 60)")
    p.add_argument("--panic-threshold", type=float, default=2.0, help="KPA panic threshold (default 2.0)")
    p.add_argument("--slo", type=float, default=1.5, help="latency SLO, s (default 1.5)")
    p.add_argument("--slo-quantile", type=float, default=0.99,
                   help="share of requests that must meet the SLO in a step (default 0.99)")
    p.add_argument("--demand", choices=["config", "measured", "autoscaler"], default="config",
                   help="what demand the controller policy sees: measured (Prometheus), autoscaler "
                        "(estimated by the policy) or as the config says (default)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    return p


def format_table(summary: dict) -> str:
    cols = [("policy", "{}"), ("cost $", "{:,.2f}"), ("vs oracle", "{:.3f}"), ("served", "{:,.0f}"),
            ("dropped", "{:,.0f}"), ("excess drop", "{:,.0f}"), ("SLO viol s", "{:,.0f}"), ("switches", "{}")]
    keys = [None, "cost_usd", "cost_vs_oracle", "served", "dropped", "excess_dropped", "slo_violation_s", "switches"]
    rows = []
    for name, s in summary["policies"].items():
        row = []
        for (_, fmt), key in zip(cols, keys, strict=True):
            v = name if key is None else s.get(key)
            row.append("-" if v is None else fmt.format(v))
        rows.append(row)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, (h, _) in enumerate(cols)]
    line = "  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, ((h, _), w) in enumerate(zip(cols, widths,
                                                                                                strict=True)))
    out = [line, "-" * len(line)]
    for r in rows:
        out.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths,
                                                                                                  strict=True))))
    goals = summary.get("goals")
    if goals:
        out.append("")
        out.append("goals (controller): " + ", ".join(f"{k}={'yes' if v else 'NO'}" for k, v in goals.items()))
    return "\n".join(out)


def _plots_unavailable(args: argparse.Namespace) -> str | None:
    """Why the plots asked for cannot be drawn (matplotlib comes with the ``plots`` extra), or None."""
    if args.no_plots:
        return None
    try:
        import matplotlib  # noqa: F401  (only to check it is there; plots.py imports it when drawing)
    except ImportError:
        return "error: plots need matplotlib (pip install 'hw-agnostic-inference[plots]'), or pass --no-plots"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    no_plots = _plots_unavailable(args)
    if no_plots:
        print(no_plots, file=sys.stderr)
        return 2
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    bad = [p for p in policies if p not in POLICIES]
    if bad or not policies:
        print(f"error: unknown policies {bad} (known: {', '.join(POLICIES)})", file=sys.stderr)
        return 2
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    if args.sweep:
        return _sweep(args, config)
    if not args.trace:
        print("error: give --trace FILE or --sweep FAMILY", file=sys.stderr)
        return 2
    try:
        trace = read_csv(args.trace, units=[u.name for u in config.units])
    except TraceError as exc:
        print(f"trace error: {exc}", file=sys.stderr)
        return 2
    static: str | dict = args.static_weights
    if static not in ("cost-optimized", "capacity-optimized"):
        try:
            static = parse_weights(static, [u.name for u in config.units])
        except WeightsSpecError as exc:
            print(f"error: --static-weights: {exc}", file=sys.stderr)
            return 2
    utilisation = config.routing.target_utilisation if args.utilisation is None else args.utilisation
    try:
        settings = SimSettings(
            kpa=KpaSettings(target_utilisation=utilisation, stable_window_s=args.stable_window,
                            panic_threshold=args.panic_threshold, scale_to_zero=args.scale_to_zero),
            cluster=ClusterSettings(),
            slo=SloSettings(latency_s=args.slo, quantile=args.slo_quantile),
            static_weights=static,
            demand_measured={"config": None, "measured": True, "autoscaler": False}[args.demand],
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    runs = run_all(config, trace, policies, settings)
    elapsed = time.perf_counter() - t0
    summary = summarise(config, runs, settings)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    doc = {
        "config": str(args.config),
        "trace": str(args.trace),
        "steps": len(trace),
        "duration_s": trace.duration_s,
        "settings": settings.as_dict(),
        "static_weights": runs["static"].weights[0].round().astype(int).tolist() if "static" in runs else None,
        "units": [u.name for u in config.units],
        **summary,
        "switch_events": {name: [{"t_s": t, "mode": m, "reason": r} for t, m, r in run.events]
                          for name, run in runs.items() if run.events},
        "elapsed_s": round(elapsed, 3),
    }
    (out / "summary.json").write_text(json.dumps(doc, indent=2) + "\n")
    if not args.no_plots:
        from controller.simulator.plots import plot_all

        plot_all(list(runs.values()), out, settings.slo.latency_s)
    print(format_table(summary))
    print(f"\n{len(trace)} steps x {len(policies)} policies in {elapsed:.2f} s; wrote {out / 'summary.json'}"
          + ("" if args.no_plots else " and plots"))
    return 0


def _sweep(args: argparse.Namespace, config) -> int:
    from controller.simulator.sweep import format_sweep, plot_sweep, run_sweep

    if args.seeds < 1 or args.step <= 0:
        print("error: --seeds must be >= 1 and --step > 0", file=sys.stderr)
        return 2
    if args.sweep == "spot" and not any(u.capacity_type == "spot" for u in config.units):
        print(f"error: --sweep spot needs units with capacity_type: spot in {args.config} "
              "(e.g. examples/sd21-spot.yaml)", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    result = run_sweep(config, args.sweep, range(args.seeds), args.step)
    result["elapsed_s"] = round(time.perf_counter() - t0, 2)
    result["config"] = str(args.config)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"sweep-{args.sweep}.json").write_text(json.dumps(result, indent=2) + "\n")
    if not args.no_plots:
        plot_sweep(result, out)
    print(format_sweep(result))
    print(f"\n{args.seeds} traces in {result['elapsed_s']:.1f} s; wrote {out / f'sweep-{args.sweep}.json'}"
          + ("" if args.no_plots else " and a plot"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
