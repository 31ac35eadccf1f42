"""The result of a run: one JSON document (read by ``apply`` and ``plot``), a per-request CSV, a summary.

The JSON's ``unit`` object holds exactly what the controller config calls a unit's measured
capacity: ``max_throughput`` (requests/s one replica sustains at its breaking point) and
``latency_s`` (latency there), so ``python -m loadtest apply`` can copy them in.
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loadtest.analysis import Criteria, Evaluation, StageStats, scale_targets

# The identifier results were written with since the first version (when the package was
# predictor.loadtest): kept, so earlier result.json files still load and apply.
SCHEMA = "predictor.loadtest/result-v1"


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, tz=UTC).isoformat(timespec="seconds")


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def build_result(
    *,
    stages: list[StageStats],
    evaluation: Evaluation,
    criteria: Criteria,
    target: dict[str, Any],
    settings: dict[str, Any],
    replicas: int = 1,
    utilization: float = 0.7,
    unit_name: str | None = None,
    started_at: float | None = None,
    finished_at: float | None = None,
    stop_reason: str = "",
    interrupted: bool = False,
    command: str | None = None,
) -> dict[str, Any]:
    """Assemble the result document from the stages and their evaluation (pure)."""
    if replicas < 1:
        raise ValueError("replicas must be >= 1")
    verdicts = {v.index: v for v in evaluation.verdicts}
    by_index = {s.index: s for s in stages}
    stage_docs = []
    for stage in stages:
        doc = stage.to_dict()
        verdict = verdicts.get(stage.index)
        doc["sustainable"] = bool(verdict and verdict.sustainable and stage.complete)
        doc["reasons"] = list(verdict.reasons) if verdict else []
        stage_docs.append(doc)

    breaking: dict[str, Any] = {"found": evaluation.broken}
    if evaluation.broken:
        stage = by_index[evaluation.breaking_stage]
        breaking.update(
            stage=stage.index,
            offered_rps=_round(stage.offered_rps),
            achieved_rps=_round(stage.achieved_rps),
            latency_s=_round(stage.latency(criteria.slo_percentile)),
            error_rate=_round(stage.error_rate),
            reasons=list(verdicts[stage.index].reasons),
        )

    sustainable = None
    unit = None
    targets = None
    notes = list(evaluation.notes)
    if evaluation.sustainable_stage is not None:
        stage = by_index[evaluation.sustainable_stage]
        per_replica = stage.achieved_rps / replicas
        latency = stage.latency(criteria.slo_percentile)
        mean = stage.latency("mean")
        sustainable = {
            "stage": stage.index,
            "offered_rps": _round(stage.offered_rps),
            "achieved_rps": _round(stage.achieved_rps),
            "rps_per_replica": _round(per_replica),
            "replicas": replicas,
            "latency_s": {k: _round(v) for k, v in stage.latency_s.items()},
            "lower_bound": not evaluation.broken,
        }
        unit = {
            "name": unit_name,
            "max_throughput": _round(per_replica),
            "latency_s": _round(latency),
            "latency_stat": criteria.slo_percentile,
            "lower_bound": not evaluation.broken,
        }
        if mean and per_replica > 0:
            st = scale_targets(per_replica, mean, utilization)
            targets = {k: (_round(v) if isinstance(v, float) else v) for k, v in st.to_dict().items()}
            targets["inferenceservice"] = {
                "spec": {"predictor": {"scaleMetric": st.scale_metric, "scaleTarget": st.scale_target}},
                # KPA multiplies the target by target-utilization-percentage (default 70%); the
                # headroom above is already applied, so keep KPA's at 100 to apply it once.
                "metadata": {"annotations": {"autoscaling.knative.dev/target-utilization-percentage": "100"}},
            }
    else:
        notes.append("no sustainable stage: nothing to apply")

    return {
        "schema": SCHEMA,
        "command": command,
        "started_at": _iso(started_at),
        "finished_at": _iso(finished_at),
        "elapsed_s": _round(finished_at - started_at, 2) if started_at and finished_at else None,
        "interrupted": interrupted,
        "stop_reason": stop_reason,
        "target": target,
        "settings": settings,
        "criteria": {
            "slo_latency_s": criteria.slo_latency_s,
            "slo_percentile": criteria.slo_percentile,
            "max_error_rate": criteria.max_error_rate,
            "min_throughput_ratio": criteria.min_throughput_ratio,
            "plateau_gain": criteria.plateau_gain,
        },
        "latency_measured_from": "scheduled send time (open loop; no coordinated omission)",
        "stages": stage_docs,
        "breaking_point": breaking,
        "max_sustainable": sustainable,
        "unit": unit,
        "scale_targets": targets,
        "notes": notes,
    }


def stages_from_result(result: dict[str, Any]) -> list[StageStats]:
    return [StageStats.from_dict(doc) for doc in result.get("stages", [])]


def load_result(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except OSError as error:
        raise ValueError(f"{p}: cannot read: {error.strerror or error}") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{p}: not JSON: {error}") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise ValueError(f"{p}: not a load-test result (schema {SCHEMA!r})")
    return data


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = path.stat().st_mode & 0o7777 if path.exists() else 0o644
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(result: dict[str, Any], path: Path) -> None:
    write_atomic(path, json.dumps(result, indent=2) + "\n")


def write_requests_csv(stages, path: Path) -> None:
    """One row per scheduled request: stage, offered rate, scheduled offset, status, latency, send lag."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["stage", "target_rps", "scheduled_s", "status", "latency_s", "send_lag_s"])
        for stage in stages:
            for r in sorted(stage.records, key=lambda r: r.scheduled):
                writer.writerow(
                    [
                        stage.index,
                        stage.target_rps,
                        f"{r.scheduled:.6f}",
                        r.status,
                        "" if r.latency is None else f"{r.latency:.6f}",
                        "" if r.send_lag is None else f"{r.send_lag:.6f}",
                    ]
                )


def summary_text(result: dict[str, Any]) -> str:
    """What a person reads at the end of a run."""
    lines = []
    crit = result["criteria"]
    lines.append(
        f"stopped: {result['stop_reason']}" + ("  (interrupted: partial results)" if result.get("interrupted") else "")
    )
    bp = result["breaking_point"]
    if bp["found"]:
        lat = bp.get("latency_s")
        lat_text = f"{lat:.3f}s" if lat is not None else "-"
        lines.append(
            f"breaking point: stage {bp['stage'] + 1} at {bp['offered_rps']:.4g} rps offered "
            f"({bp['achieved_rps']:.4g} achieved, {crit['slo_percentile']} {lat_text}): {', '.join(bp['reasons'])}"
        )
    else:
        lines.append("breaking point: not reached")
    ms = result["max_sustainable"]
    if ms:
        bound = " (lower bound)" if ms["lower_bound"] else ""
        lat = ms["latency_s"].get(crit["slo_percentile"])
        lines.append(
            f"max sustainable: {ms['rps_per_replica']:.4g} rps per replica{bound} "
            f"({ms['achieved_rps']:.4g} rps over {ms['replicas']} replica(s)), "
            f"{crit['slo_percentile']} {lat:.3f}s, p50 {ms['latency_s']['p50']:.3f}s "
            f"(SLO {crit['slo_percentile']} <= {crit['slo_latency_s']:g}s)"
        )
    st = result.get("scale_targets")
    if st:
        lines.append(
            f"KPA targets at {st['utilization']:.0%} utilization: rps {st['rps']:.3g}, "
            f"concurrency {st['concurrency']:.3g} -> "
            f"scaleMetric: {st['scale_metric']}, scaleTarget: {st['scale_target']}"
        )
    unit = result.get("unit")
    if unit:
        lines.append(
            f"controller unit: max_throughput: {unit['max_throughput']:.4g}, latency_s: {unit['latency_s']:.4g}"
        )
    for note in result.get("notes", []):
        lines.append(f"note: {note}")
    return "\n".join(lines)
