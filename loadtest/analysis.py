"""Pure analysis of a load test: stage statistics, the breaking point, scale targets.

Nothing here does I/O or reads a clock, so every rule is unit-tested on synthetic stages.

Definitions (also in docs/loadtest.md):

* **Latency** of a request is measured from its *scheduled* send time to the end of its
  response, so a client or server that falls behind shows up as latency instead of being
  hidden (no coordinated omission). Percentiles are over successful requests only.
* **Offered rate** = requests scheduled in the stage / stage duration.
* **Achieved rate** = successful responses / service window, where the service window is the
  stage duration or, when the last successes finished later, the time from the stage start to
  the last success minus the fastest success's latency (the backlog the server was still
  working through when the schedule ended), whichever is longer.
* **Error rate** = (errors + requests the client could not launch) / requests scheduled.
* A stage is **sustainable** when its latency percentile is within the SLO, its error rate is
  within the limit, the server kept up (achieved >= ``min_throughput_ratio`` x offered) and
  throughput did not plateau (going from the previous stage, at least ``plateau_gain`` of the
  extra offered load was served). The first stage that is not sustainable is the **breaking
  point**; the stage before it gives the **max sustainable rate**.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field

OK = "ok"
DROPPED = "dropped"  # never sent: the in-flight cap was reached at its scheduled time (client saturated)
CANCELLED = "cancelled"  # still in flight when the run was interrupted; not counted as an error
PERCENTILES = ("p50", "p90", "p99")
LATENCY_STATS = (*PERCENTILES, "mean")


@dataclass(frozen=True)
class RequestRecord:
    """One scheduled request. Times are seconds relative to the stage start."""

    scheduled: float  # when it was due to be sent
    status: str  # "ok", an HTTP status ("503"), a gRPC code name ("UNAVAILABLE"), "timeout", "dropped", ...
    latency: float | None = None  # completion - scheduled; None when never sent
    send_lag: float | None = None  # actual send - scheduled: the client's own delay


@dataclass(frozen=True)
class StageStats:
    index: int
    target_rps: float  # the rate asked for
    duration_s: float  # the schedule's length (shorter than planned when interrupted)
    scheduled: int
    sent: int
    ok: int
    dropped: int
    errors: dict[str, int]  # by status; excludes "ok", "dropped" and "cancelled"
    offered_rps: float
    achieved_rps: float
    error_rate: float
    service_window_s: float
    latency_s: dict[str, float | None]  # p50/p90/p99/mean/min/max of successful requests
    send_lag_p99_s: float | None
    complete: bool = True  # False when the stage was cut short (Ctrl-C)
    cancelled: int = 0

    def latency(self, stat: str) -> float | None:
        return self.latency_s.get(stat)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> StageStats:
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class Criteria:
    """What 'sustainable' means. Defaults follow the seed: 900 ms, and throughput must follow load."""

    slo_latency_s: float = 0.9
    slo_percentile: str = "p90"
    max_error_rate: float = 0.01
    min_throughput_ratio: float = 0.9
    plateau_gain: float = 0.5

    def __post_init__(self) -> None:
        if self.slo_percentile not in LATENCY_STATS:
            raise ValueError(f"slo_percentile must be one of {', '.join(LATENCY_STATS)}, got {self.slo_percentile!r}")
        if not self.slo_latency_s > 0:
            raise ValueError("slo_latency_s must be > 0")
        if not 0 <= self.max_error_rate <= 1:
            raise ValueError("max_error_rate must be within [0, 1]")
        if not 0 < self.min_throughput_ratio <= 1:
            raise ValueError("min_throughput_ratio must be within (0, 1]")
        if not 0 <= self.plateau_gain <= 1:
            raise ValueError("plateau_gain must be within [0, 1]")


@dataclass(frozen=True)
class StageVerdict:
    index: int
    sustainable: bool
    reasons: tuple[str, ...] = ()  # why not: "latency", "errors", "throughput", "plateau", "no-success"


@dataclass(frozen=True)
class Evaluation:
    verdicts: tuple[StageVerdict, ...]
    breaking_stage: int | None  # index of the first unsustainable stage, None when none broke
    sustainable_stage: int | None  # index of the last sustainable stage before it
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def broken(self) -> bool:
        return self.breaking_stage is not None


# --------------------------------------------------------------------------- statistics


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated percentile (numpy's default method); ``q`` in [0, 100]; None if empty."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within [0, 100], got {q}")
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    fraction = position - low
    return ordered[low] + (ordered[high] - ordered[low]) * fraction


def latency_summary(latencies: Sequence[float]) -> dict[str, float | None]:
    if not latencies:
        return {"p50": None, "p90": None, "p99": None, "mean": None, "min": None, "max": None}
    return {
        "p50": percentile(latencies, 50),
        "p90": percentile(latencies, 90),
        "p99": percentile(latencies, 99),
        "mean": sum(latencies) / len(latencies),
        "min": min(latencies),
        "max": max(latencies),
    }


def summarize_stage(
    index: int, target_rps: float, duration_s: float, records: Iterable[RequestRecord], complete: bool = True
) -> StageStats:
    """Turn one stage's request records into its statistics."""
    if duration_s <= 0:
        raise ValueError("duration_s must be > 0")
    records = list(records)
    statuses = Counter(r.status for r in records)
    cancelled = statuses.pop(CANCELLED, 0)
    dropped = statuses.pop(DROPPED, 0)
    ok = statuses.pop(OK, 0)
    errors = dict(sorted(statuses.items()))
    scheduled = len(records)
    ok_records = [r for r in records if r.status == OK and r.latency is not None]
    latencies = [r.latency for r in ok_records]
    window = duration_s
    if ok_records:
        last_done = max(r.scheduled + r.latency for r in ok_records)
        window = max(duration_s, last_done - min(latencies))
    lags = [r.send_lag for r in records if r.send_lag is not None]
    error_count = sum(errors.values()) + dropped
    return StageStats(
        index=index,
        target_rps=target_rps,
        duration_s=duration_s,
        scheduled=scheduled,
        sent=scheduled - dropped,
        ok=ok,
        dropped=dropped,
        errors=errors,
        offered_rps=scheduled / duration_s,
        achieved_rps=ok / window,
        error_rate=error_count / scheduled if scheduled else 0.0,
        service_window_s=window,
        latency_s=latency_summary(latencies),
        send_lag_p99_s=percentile(lags, 99),
        complete=complete,
        cancelled=cancelled,
    )


# --------------------------------------------------------------------------- the breaking point


def judge_stage(stage: StageStats, previous: StageStats | None, criteria: Criteria) -> StageVerdict:
    reasons: list[str] = []
    if stage.ok == 0:
        reasons.append("no-success")
    value = stage.latency(criteria.slo_percentile)
    if value is not None and value > criteria.slo_latency_s:
        reasons.append("latency")
    if stage.error_rate > criteria.max_error_rate:
        reasons.append("errors")
    if stage.achieved_rps < criteria.min_throughput_ratio * stage.offered_rps:
        reasons.append("throughput")
    if previous is not None and previous.complete:
        extra_offered = stage.offered_rps - previous.offered_rps
        # Only a meaningful step up in load can show a plateau.
        if extra_offered > 0.05 * previous.offered_rps:
            extra_served = stage.achieved_rps - previous.achieved_rps
            if extra_served < criteria.plateau_gain * extra_offered:
                reasons.append("plateau")
    return StageVerdict(index=stage.index, sustainable=not reasons, reasons=tuple(reasons))


def evaluate(stages: Sequence[StageStats], criteria: Criteria) -> Evaluation:
    """Judge stages in order; the first complete unsustainable one is the breaking point.

    Incomplete (interrupted) stages are judged for the record but never decide anything.
    """
    verdicts: list[StageVerdict] = []
    notes: list[str] = []
    breaking: int | None = None
    sustainable: int | None = None
    previous: StageStats | None = None
    for position, stage in enumerate(stages):
        verdict = judge_stage(stage, previous, criteria)
        verdicts.append(verdict)
        if not stage.complete:
            notes.append(f"stage {stage.index} was interrupted; it does not count")
            continue
        if breaking is None:
            if verdict.sustainable:
                sustainable = position
            else:
                breaking = position
        previous = stage
    if breaking is None and stages:
        notes.append("no breaking point within the stages run: the max sustainable rate is a lower bound")
    if breaking is not None and sustainable is None:
        notes.append("the first stage already broke: start at a lower rate")
    return Evaluation(
        verdicts=tuple(verdicts),
        breaking_stage=stages[breaking].index if breaking is not None else None,
        sustainable_stage=stages[sustainable].index if sustainable is not None else None,
        notes=tuple(notes),
    )


# --------------------------------------------------------------------------- scale targets


@dataclass(frozen=True)
class ScaleTargets:
    utilization: float
    max_rps_per_replica: float
    mean_latency_s: float
    rps: float  # KPA target, metric rps: max sustainable rps x utilization
    concurrency: float  # KPA target, metric concurrency: rps x mean latency (Little's law) x utilization
    scale_metric: str  # the one recommended for the InferenceService
    scale_target: int  # integer value for spec.predictor.scaleTarget

    def to_dict(self) -> dict:
        return asdict(self)


def scale_targets(max_rps_per_replica: float, mean_latency_s: float, utilization: float = 0.7) -> ScaleTargets:
    """KPA targets with headroom.

    ``rps = max_rps x utilization``; ``concurrency = max_rps x mean latency x utilization``
    (Little's law: requests in flight = arrival rate x time in system). KServe's ``scaleTarget``
    is an integer, so the recommended metric is rps while its target is at least 1 request/s,
    else concurrency (slow models such as diffusion at a fraction of a request per second).
    """
    if not 0 < utilization <= 1:
        raise ValueError("utilization must be within (0, 1]")
    if not max_rps_per_replica > 0:
        raise ValueError("max_rps_per_replica must be > 0")
    if not mean_latency_s > 0:
        raise ValueError("mean_latency_s must be > 0")
    rps = max_rps_per_replica * utilization
    concurrency = max_rps_per_replica * mean_latency_s * utilization
    if math.floor(rps) >= 1:
        metric, target = "rps", math.floor(rps)
    else:
        metric, target = "concurrency", max(1, math.floor(concurrency))
    return ScaleTargets(
        utilization=utilization,
        max_rps_per_replica=max_rps_per_replica,
        mean_latency_s=mean_latency_s,
        rps=rps,
        concurrency=concurrency,
        scale_metric=metric,
        scale_target=target,
    )


# --------------------------------------------------------------------------- stage plans


def stage_rates(
    rates: Sequence[float] | None = None,
    *,
    start: float = 1.0,
    factor: float = 1.5,
    step: float | None = None,
    count: int = 10,
    max_rate: float | None = None,
) -> list[float]:
    """The offered rate of each stage: an explicit list, or ``start`` raised by ``step`` or x ``factor``."""
    if rates:
        result = [float(r) for r in rates]
        if any(not r > 0 for r in result):
            raise ValueError("rates must be > 0")
        if any(b <= a for a, b in zip(result, result[1:], strict=False)):
            raise ValueError("rates must increase")
        return result
    if not start > 0:
        raise ValueError("start rate must be > 0")
    if step is None and not factor > 1:
        raise ValueError("factor must be > 1")
    if step is not None and not step > 0:
        raise ValueError("step must be > 0")
    if count < 1:
        raise ValueError("count must be >= 1")
    result = []
    rate = start
    for _ in range(count):
        if max_rate is not None and rate > max_rate * (1 + 1e-9):
            break
        result.append(round(rate, 6))
        rate = rate + step if step is not None else rate * factor
    return result
