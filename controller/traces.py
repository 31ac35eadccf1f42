"""Demand/capacity traces for the simulator: the names callers import, and the command line.

The data type and its CSV form live in controller/trace_data.py, the generators in
controller/trace_generators.py; this module re-exports both.

A trace is a table sampled at increasing times::

    time_s,demand,available.sd21-inf2
    0,310.5,
    10,312.0,4

``demand`` is the offered load in requests per second over the step that starts at ``time_s``.
``available.<unit>`` columns are optional: the number of replicas the cloud can give that unit
from that time on (an empty cell or a missing column means "as many as the unit's max replicas").

Generators (all deterministic for a given ``seed``):

* :func:`diurnal` - daily waves with slow (autocorrelated) noise, like the seed's experiments;
* :func:`burst` - the diurnal wave plus short bursts of several times the load;
* :func:`outage` - the diurnal wave plus a window in which the cost pool's units can get at
  most a few replicas (an insufficient-capacity event, as in the seed's failover experiment).

Command line::

    python -m controller.traces diurnal --out diurnal.csv
    python -m controller.traces burst --out burst.csv --seed 3
    python -m controller.traces outage --config examples/sd21-seed.yaml --out outage.csv
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from controller.trace_data import AVAILABLE_PREFIX, Trace, TraceError, read_csv, write_csv
from controller.trace_generators import (
    DAY_S,
    FAMILIES,
    FAMILY_HOURS,
    SPOT_NOTICE_S,
    burst,
    diurnal,
    family_bursts,
    family_flapping,
    family_outages,
    family_spot,
    family_trace,
    outage,
    spot_interruptions,
)

__all__ = [
    "AVAILABLE_PREFIX", "DAY_S", "FAMILIES", "FAMILY_HOURS", "SPOT_NOTICE_S", "Trace", "TraceError", "burst",
    "diurnal", "family_bursts", "family_flapping", "family_outages", "family_spot", "family_trace", "main", "outage",
    "read_csv", "spot_interruptions", "write_csv",
]

_EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
# --config of `python -m controller.traces FAMILY` when none is given (the repository's examples)
DEFAULT_FAMILY_CONFIG = {"outages": _EXAMPLES / "sd21-seed.yaml", "flapping": _EXAMPLES / "sd21-seed.yaml",
                         "bursts": _EXAMPLES / "sd21-seed.yaml", "spot": _EXAMPLES / "sd21-spot.yaml"}


# --------------------------------------------------------------------------------------------- CLI


def _cost_pool_units(config_path: str) -> list[str]:
    from controller.config import load_config  # the shared config loader

    cfg = load_config(config_path)
    names = [u.name for u in cfg.units if u.pool == "cost"]
    if not names:
        raise TraceError(f"{config_path}: no unit with pool: cost")
    return names


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m controller.traces", description="Generate a simulator trace CSV.")
    p.add_argument("kind", choices=["diurnal", "burst", "outage", *FAMILIES],
                   help="a single trace (diurnal, burst, outage) or a family drawn per --seed "
                        f"({', '.join(FAMILIES)}; for the units of --config, default examples/sd21-seed.yaml, "
                        "spot: examples/sd21-spot.yaml)")
    p.add_argument("--out", required=True, help="CSV file to write")
    p.add_argument("--hours", type=float, default=24.0, help="length (default 24; families: their own)")
    p.add_argument("--step", type=float, default=10.0, help="seconds between rows (default 10)")
    p.add_argument("--base", type=float, default=150.0, help="demand at the daily trough, requests/s")
    p.add_argument("--peak", type=float, default=None,
                   help="demand at the daily peak before noise and bursts, requests/s (default 800; burst: 600)")
    p.add_argument("--trough-h", type=float, default=4.0, help="hour of the daily trough (peak 12 h later)")
    p.add_argument("--noise", type=float, default=0.04, help="relative std-dev of the slow noise")
    p.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("burst")
    g.add_argument("--bursts", type=int, default=6)
    g.add_argument("--factor", type=float, default=2.0, help="load multiplier at a burst's top")
    g = p.add_argument_group("outage")
    g.add_argument("--config", help="controller config; the outage hits its units with pool: cost")
    g.add_argument("--units", help="comma-separated unit names to limit (instead of --config)")
    g.add_argument("--start-h", type=float, default=7.0, help="hour the outage starts")
    g.add_argument("--duration-h", type=float, default=8.0)
    g.add_argument("--replicas", type=int, default=4, help="replicas each unit can get during the outage")
    a = p.parse_args(argv)
    try:
        if a.kind in FAMILIES:
            from controller.config import ConfigError, load_config

            config = a.config or str(DEFAULT_FAMILY_CONFIG[a.kind])
            try:
                units = load_config(config).units
            except ConfigError as exc:
                print(f"error: {a.kind} draws capacity events for the units of --config: {exc}", file=sys.stderr)
                return 2
            tr = family_trace(a.kind, units, a.seed, a.step,
                              a.hours if "--hours" in (argv or sys.argv) else None)
        elif a.kind == "diurnal":
            tr = diurnal(a.hours, a.step, a.base, a.peak or 800.0, a.trough_h, noise=a.noise, seed=a.seed)
        elif a.kind == "burst":
            tr = burst(a.hours, a.step, a.base, a.peak or 600.0, a.bursts, a.factor, noise=a.noise, seed=a.seed,
                       trough_h=a.trough_h)
        else:
            if a.units:
                names = [u.strip() for u in a.units.split(",") if u.strip()]
            elif a.config:
                names = _cost_pool_units(a.config)
            else:
                p.error("outage needs --config or --units")
            tr = outage(
                names, a.hours, a.step, a.base, a.peak or 800.0, a.start_h, a.duration_h, a.replicas,
                noise=a.noise, seed=a.seed, trough_h=a.trough_h,
            )
    except TraceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    path = write_csv(tr, a.out)
    print(f"wrote {path} ({len(tr)} rows, {tr.duration_s / 3600:.1f} h, peak {tr.demand.max():.0f} req/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
