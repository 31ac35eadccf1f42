"""``python -m controller plan``: weights, scaling targets and blended cost, before touching a cluster.

    python -m controller plan --config examples/sd21-seed.yaml [--demand RATE] [--format json|table]
        [--utilisation 0.7] [--weights seed:40/20/15/15/10 ...]

Per unit: cost per inference (price per hour / max throughput - the seed's Table 1 units), the
capacity-optimized target and adjusted throughput (seed Table 2), the KPA scale target and a
containerConcurrency suggestion. Weights for both controller states (integers summing to 100),
with ``--demand`` a merit-order dispatch for the cost-optimized state, and the blended cost per
inference of each weight set. The arithmetic is in docs/planning.md.

The pure part is :func:`build_plan` (config in, JSON-ready dict out); :func:`main` only parses
arguments and prints.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Mapping, Sequence

from controller.config import ConfigError, ControllerConfig, load_config
from controller.simulator.dispatch import (
    blended_cost,
    container_concurrency,
    merit_order,
    replicas_for,
    scale_target,
)
from controller.weights import (
    adjusted_throughput,
    capacity_optimized_weights,
    capacity_target,
    cost_optimized_weights,
    cost_per_inference,
    integer_weights,
)

COST = "cost-optimized"
CAPACITY = "capacity-optimized"
DEFAULT_UTILISATION = 0.7
FILLS = ("breaking-point", "target")


class WeightsSpecError(ValueError):
    """A --weights argument could not be parsed."""


def parse_weights(spec: str, names: Sequence[str]) -> dict[str, int]:
    """Parse ``40/20/15/15/10`` (one integer per unit, in config order; ``,`` also separates) or
    ``name=40,name=20,...`` (units not named get 0). Weights are integers >= 0 with a positive sum."""
    spec = spec.strip()
    if not spec:
        raise WeightsSpecError("empty weights")
    out: dict[str, int] = {n: 0 for n in names}
    if "=" in spec:
        for part in spec.split(","):
            if not part.strip():
                continue
            key, sep, val = part.partition("=")
            key = key.strip()
            if not sep or key not in out:
                raise WeightsSpecError(f"{part.strip()!r}: expected UNIT=INT with UNIT one of {', '.join(names)}")
            out[key] = _weight_int(val)
    else:
        parts = [p for p in re.split(r"[/,]", spec)]
        if len(parts) != len(names):
            raise WeightsSpecError(f"{spec!r}: {len(parts)} weights for {len(names)} units ({', '.join(names)})")
        for n, p in zip(names, parts, strict=True):
            out[n] = _weight_int(p)
    if sum(out.values()) <= 0:
        raise WeightsSpecError(f"{spec!r}: weights must have a positive sum")
    return out


def _weight_int(text: str) -> int:
    try:
        v = int(text.strip())
    except ValueError:
        raise WeightsSpecError(f"{text.strip()!r} is not an integer weight") from None
    if v < 0:
        raise WeightsSpecError(f"weight {v} is negative")
    return v


def _labelled(spec: str, index: int) -> tuple[str, str]:
    """``label:spec`` -> (label, spec); without a label the spec itself is the label."""
    head, sep, tail = spec.partition(":")
    if sep and head.strip() and "=" not in head and "/" not in head:
        return head.strip(), tail
    return spec.strip() or f"custom-{index}", spec


def build_plan(
    config: ControllerConfig,
    demand: float | None = None,
    utilisation: float = DEFAULT_UTILISATION,
    extra_weights: Mapping[str, Mapping[str, int]] | None = None,
    fill: str = "breaking-point",
) -> dict:
    """The plan as a JSON-ready dict (see module docstring and docs/planning.md).

    ``fill`` sets each unit's capacity in the merit order: ``breaking-point`` (max_replicas x
    max_throughput, the default) or ``target`` (max_replicas x scale target: no unit is asked to
    run above its scale target).
    """
    if not 0 < utilisation <= 1:
        raise ValueError("utilisation must be in (0, 1]")
    if fill not in FILLS:
        raise ValueError(f"fill must be one of {', '.join(FILLS)}")
    if demand is not None and (not math.isfinite(demand) or demand < 0):
        raise ValueError("demand must be a finite number >= 0")
    units = list(config.units)
    cpi = {u.name: cost_per_inference(u) for u in units}
    adjusted = adjusted_throughput(units)
    capacity_rps = {u.name: u.max_replicas * u.max_throughput for u in units}
    if fill == "target":
        fill_rps = {u.name: u.max_replicas * scale_target(u.max_throughput, utilisation) for u in units}
    else:
        fill_rps = dict(capacity_rps)

    dispatch = None
    if demand is not None:
        dispatch = merit_order(cpi, fill_rps, demand)
        alloc = dispatch.allocation
        cost_w = integer_weights(alloc) if dispatch.served > 0 else cost_optimized_weights(units)
    else:
        cost_w = cost_optimized_weights(units)
    # What the live controller applies when every unit can grow to max_replicas.
    cap_w = capacity_optimized_weights(units, capacity={u.name: u.max_replicas for u in units})
    weights: dict[str, dict[str, int]] = {COST: cost_w, CAPACITY: cap_w}
    for label, w in (extra_weights or {}).items():
        if label in weights:
            raise ValueError(f"weights label {label!r} is taken")
        weights[label] = {u.name: int(w.get(u.name, 0)) for u in units}

    rows = []
    for u in units:
        st = scale_target(u.max_throughput, utilisation)
        row = {
            "name": u.name,
            "pool": u.pool,
            "instance_type": u.instance_type,
            "price_per_hour": u.price_per_hour,
            "max_throughput": u.max_throughput,
            "latency_s": u.latency_s,
            "max_replicas": u.max_replicas,
            "cost_per_inference": cpi[u.name],
            "usd_per_million_requests": u.price_per_hour / 3600.0 / u.max_throughput * 1e6,
            "adjusted_throughput": adjusted[u.name],
            "capacity_rps": capacity_rps[u.name],
            "scale_target": st,
            "scale_metric": "rps",
            "container_concurrency": container_concurrency(u.max_throughput, u.latency_s),
        }
        if dispatch is not None:
            rps = dispatch.allocation[u.name]
            need = replicas_for(rps, st)
            row["dispatch_rps"] = rps
            row["replicas"] = min(need, u.max_replicas)
            row["above_target"] = need > u.max_replicas  # must run above target utilisation
        rows.append(row)

    return {
        "config": {"units": len(units), "router": f"{config.router.kind}/{config.router.name}"},
        "target_utilisation": utilisation,
        "capacity_target": capacity_target(units),
        "demand": demand,
        "fill": fill,
        "units": rows,
        "weights": weights,
        "blended_cost_per_inference": {label: blended_cost(w, cpi) for label, w in weights.items()},
        "unmet_demand": dispatch.unmet if dispatch is not None else None,
        "total_capacity_rps": sum(fill_rps.values()),
    }


def format_table(plan: dict) -> str:
    states = list(plan["weights"])
    head = ["unit", "pool", "$/h", "max rps", "cost/inf", "adjusted", "scaleTarget", "concurrency"]
    with_demand = plan["demand"] is not None
    if with_demand:
        head += ["dispatch rps", "replicas"]
    head += [f"w:{s}" for s in states]
    rows = []
    for r in plan["units"]:
        row = [r["name"], r["pool"], f"{r['price_per_hour']:.4f}", f"{r['max_throughput']:g}",
               f"{r['cost_per_inference']:.5f}", f"{r['adjusted_throughput']:.1f}", str(r["scale_target"]),
               str(r["container_concurrency"])]
        if with_demand:
            row += [f"{r['dispatch_rps']:.1f}", f"{r['replicas']}{'!' if r['above_target'] else ''}"]
        row += [str(plan["weights"][s][r["name"]]) for s in states]
        rows.append(row)
    widths = [max(len(h), *(len(x[i]) for x in rows)) for i, h in enumerate(head)]

    def fmt(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths,
                                                                                            strict=True)))

    lines = [fmt(head), "-" * len(fmt(head))] + [fmt(r) for r in rows]
    lines.append("")
    lines.append(f"capacity-optimized target throughput: {plan['capacity_target']:.1f} rps "
                 f"(sum of max throughputs / {len(plan['units'])})")
    lines.append(f"scaleTarget = floor({plan['target_utilisation']:g} x max rps), metric rps; "
                 "concurrency = ceil(max rps x latency)")
    lines.append("blended cost per inference ($/h per rps, as cost/inf):")
    for label, v in plan["blended_cost_per_inference"].items():
        lines.append(f"  {label:<24} {v:.5f}")
    if with_demand:
        at = "their breaking point" if plan["fill"] == "breaking-point" else "their scale target"
        lines.append(f"demand {plan['demand']:g} rps; unmet demand: {plan['unmet_demand']:g} rps "
                     f"(all units at max replicas serve {plan['total_capacity_rps']:g} rps at {at})")
        if any(r["above_target"] for r in plan["units"]):
            lines.append("! = the unit needs more than max_replicas at its scaleTarget (it runs above target)")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m controller plan",
        description="Plan weights, scaling targets and blended cost per inference for a controller config.",
    )
    p.add_argument("--config", required=True, help="controller config (the one `controller run` uses)")
    p.add_argument("--demand", type=float, help="demand in requests/s: merit-order cost-optimized weights")
    p.add_argument("--format", choices=["json", "table"], default="table")
    p.add_argument("--utilisation", type=float, default=None,
                   help="target utilisation of the breaking-point throughput for scaleTarget "
                        "(default: the config's routing.target_utilisation, 0.7 unless set)")
    p.add_argument("--fill", choices=FILLS, default="breaking-point",
                   help="unit capacity in the merit order: max_replicas x max throughput (breaking-point, "
                        "default) or x scale target (target)")
    p.add_argument("--weights", action="append", default=[], metavar="[LABEL:]SPEC",
                   help="extra weights to compare, e.g. seed:40/20/15/15/10 (config order) or "
                        "sd21-inf2=40,sd21-trn1=60; repeatable")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    names = [u.name for u in config.units]
    extra: dict[str, dict[str, int]] = {}
    for i, raw in enumerate(args.weights, start=1):
        label, spec = _labelled(raw, i)
        try:
            extra[label] = parse_weights(spec, names)
        except WeightsSpecError as exc:
            print(f"error: --weights {raw}: {exc}", file=sys.stderr)
            return 2
    try:
        utilisation = config.routing.target_utilisation if args.utilisation is None else args.utilisation
        plan = build_plan(config, args.demand, utilisation, extra, args.fill)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.format == "json":
        print(json.dumps(plan, indent=2))
    else:
        print(format_table(plan))
    return 0


if __name__ == "__main__":
    sys.exit(main())
