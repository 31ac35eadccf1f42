"""Pure analysis: percentiles, stage statistics, breaking-point rules, scale targets, stage plans."""

from __future__ import annotations

import random

import numpy as np
import pytest

from loadtest.analysis import (
    CANCELLED,
    DROPPED,
    OK,
    Criteria,
    RequestRecord,
    StageStats,
    evaluate,
    judge_stage,
    percentile,
    scale_targets,
    stage_rates,
    summarize_stage,
)
from loadtest.runner import arrival_offsets


def stage(index, offered, achieved, p90=0.3, error_rate=0.0, complete=True, ok=10) -> StageStats:
    """A synthetic stage: only the fields the rules read matter."""
    latencies = {"p50": p90 * 0.8, "p90": p90, "p99": p90 * 1.2, "mean": p90 * 0.85, "min": 0.1, "max": p90 * 1.3}
    return StageStats(
        index=index,
        target_rps=offered,
        duration_s=10.0,
        scheduled=int(offered * 10),
        sent=int(offered * 10),
        ok=ok,
        dropped=0,
        errors={},
        offered_rps=offered,
        achieved_rps=achieved,
        error_rate=error_rate,
        service_window_s=10.0,
        latency_s=latencies,
        send_lag_p99_s=0.001,
        complete=complete,
    )


# --------------------------------------------------------------------------- percentiles


@pytest.mark.parametrize("q", [0, 1, 25, 50, 90, 99, 100])
def test_percentile_matches_numpy_linear(q):
    rng = random.Random(7)
    values = [rng.expovariate(2.0) for _ in range(137)]
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_percentile_edge_cases():
    assert percentile([], 50) is None
    assert percentile([4.0], 99) == 4.0
    assert percentile([1.0, 2.0], 50) == 1.5
    with pytest.raises(ValueError):
        percentile([1.0], 101)


# --------------------------------------------------------------------------- stage statistics


def test_summarize_counts_statuses_and_rates():
    records = [RequestRecord(scheduled=i * 0.5, status=OK, latency=0.2, send_lag=0.001) for i in range(18)]
    records += [RequestRecord(scheduled=9.0, status="503", latency=0.01, send_lag=0.0)]
    records += [RequestRecord(scheduled=9.5, status=DROPPED)]
    s = summarize_stage(0, 2.0, 10.0, records)
    assert (s.scheduled, s.sent, s.ok, s.dropped) == (20, 19, 18, 1)
    assert s.errors == {"503": 1}
    assert s.offered_rps == pytest.approx(2.0)
    assert s.error_rate == pytest.approx(2 / 20)  # the 503 and the dropped one
    assert s.achieved_rps == pytest.approx(1.8)  # all successes finished inside the stage
    assert s.latency("p50") == pytest.approx(0.2)
    assert s.complete


def test_achieved_rate_counts_the_backlog_window_not_just_the_schedule():
    # A server serving 1 request/s, offered 4/s for 10 s: successes keep arriving long after the schedule.
    records = []
    for i in range(40):
        scheduled = i * 0.25
        done = 1.0 + i  # one per second
        records.append(RequestRecord(scheduled=scheduled, status=OK, latency=done - scheduled))
    s = summarize_stage(0, 4.0, 10.0, records)
    assert s.offered_rps == pytest.approx(4.0)
    assert s.achieved_rps == pytest.approx(1.0, rel=0.05)
    assert s.latency("p99") > 25  # latency from scheduled time shows the queue


def test_underloaded_stage_achieves_its_offered_rate():
    records = [RequestRecord(scheduled=i * 0.1, status=OK, latency=0.35) for i in range(100)]
    s = summarize_stage(0, 10.0, 10.0, records)
    assert s.achieved_rps == pytest.approx(10.0)


def test_cancelled_requests_are_neither_ok_nor_errors():
    records = [RequestRecord(scheduled=0.0, status=OK, latency=0.1), RequestRecord(scheduled=0.5, status=CANCELLED)]
    s = summarize_stage(0, 2.0, 1.0, records, complete=False)
    assert s.cancelled == 1 and s.errors == {} and s.error_rate == 0.0 and not s.complete


def test_stage_without_success_has_no_latency():
    s = summarize_stage(0, 1.0, 2.0, [RequestRecord(scheduled=0.0, status="timeout", latency=60.0)])
    assert s.latency("p90") is None and s.achieved_rps == 0.0 and s.error_rate == 1.0
    assert "no-success" in judge_stage(s, None, Criteria()).reasons


def test_stage_stats_round_trip_through_dict():
    s = stage(2, 4.0, 3.9)
    assert StageStats.from_dict({**s.to_dict(), "sustainable": True, "reasons": []}) == s


def test_summarize_rejects_a_zero_duration():
    with pytest.raises(ValueError):
        summarize_stage(0, 1.0, 0.0, [])


# --------------------------------------------------------------------------- breaking point


def test_latency_past_the_slo_is_the_breaking_point():
    stages = [stage(0, 1, 1, p90=0.4), stage(1, 2, 2, p90=0.6), stage(2, 4, 3.9, p90=1.2)]
    result = evaluate(stages, Criteria(slo_latency_s=0.9))
    assert (result.breaking_stage, result.sustainable_stage) == (2, 1)
    assert result.verdicts[2].reasons == ("latency",)
    assert result.broken


def test_slo_percentile_is_configurable():
    s = stage(0, 1, 1, p90=0.8)  # p99 = 0.96
    assert judge_stage(s, None, Criteria(slo_latency_s=0.9, slo_percentile="p90")).sustainable
    assert judge_stage(s, None, Criteria(slo_latency_s=0.9, slo_percentile="p99")).reasons == ("latency",)


def test_error_rate_breaks():
    stages = [stage(0, 1, 1), stage(1, 2, 1.98, error_rate=0.05)]
    result = evaluate(stages, Criteria(max_error_rate=0.01))
    assert result.breaking_stage == 1 and result.verdicts[1].reasons == ("errors",)


def test_server_not_keeping_up_breaks():
    verdict = judge_stage(stage(0, 10, 8), None, Criteria(min_throughput_ratio=0.9))
    assert verdict.reasons == ("throughput",)


def test_throughput_plateau_breaks_even_when_each_stage_is_near_its_offered_rate():
    # Small steps: each stage serves >= 90% of its offer, but the last step gained almost nothing.
    stages = [stage(0, 10, 10), stage(1, 11, 10.9), stage(2, 12, 11.0)]
    result = evaluate(stages, Criteria(plateau_gain=0.5, min_throughput_ratio=0.9))
    assert result.breaking_stage == 2 and result.verdicts[2].reasons == ("plateau",)
    assert result.sustainable_stage == 1


def test_tiny_load_steps_cannot_show_a_plateau():
    stages = [stage(0, 10, 10), stage(1, 10.2, 10.0)]
    assert evaluate(stages, Criteria()).breaking_stage is None


def test_no_break_means_a_lower_bound():
    stages = [stage(0, 1, 1), stage(1, 2, 2)]
    result = evaluate(stages, Criteria())
    assert result.breaking_stage is None and result.sustainable_stage == 1
    assert any("lower bound" in n for n in result.notes)


def test_first_stage_breaking_leaves_nothing_sustainable():
    result = evaluate([stage(0, 5, 2, p90=3.0)], Criteria())
    assert result.breaking_stage == 0 and result.sustainable_stage is None
    assert any("lower rate" in n for n in result.notes)


def test_interrupted_stage_decides_nothing():
    stages = [stage(0, 1, 1), stage(1, 2, 0.5, p90=5.0, complete=False)]
    result = evaluate(stages, Criteria())
    assert result.breaking_stage is None and result.sustainable_stage == 0
    assert not result.verdicts[1].sustainable  # judged for the record only


def test_criteria_validation():
    with pytest.raises(ValueError):
        Criteria(slo_percentile="p95")
    with pytest.raises(ValueError):
        Criteria(slo_latency_s=0)
    with pytest.raises(ValueError):
        Criteria(min_throughput_ratio=1.5)


# --------------------------------------------------------------------------- scale targets


def test_rps_target_applies_the_utilization():
    t = scale_targets(10.0, 0.5, utilization=0.7)
    assert t.rps == pytest.approx(7.0)
    assert t.concurrency == pytest.approx(10.0 * 0.5 * 0.7)  # Little's law x utilization
    assert (t.scale_metric, t.scale_target) == ("rps", 7)


def test_slow_model_gets_a_concurrency_target():
    # 1.2 requests/s at 2.5 s each: an integer rps target of 0 is impossible, concurrency 2.1 -> 2.
    t = scale_targets(1.2, 2.5, utilization=0.7)
    assert t.rps == pytest.approx(0.84)
    assert (t.scale_metric, t.scale_target) == ("concurrency", 2)


def test_concurrency_target_is_at_least_one():
    t = scale_targets(0.5, 0.9, utilization=0.7)
    assert (t.scale_metric, t.scale_target) == ("concurrency", 1)


@pytest.mark.parametrize("args", [(0, 1, 0.7), (1, 0, 0.7), (1, 1, 0), (1, 1, 1.2)])
def test_scale_targets_reject_bad_inputs(args):
    with pytest.raises(ValueError):
        scale_targets(*args)


# --------------------------------------------------------------------------- stage plans and schedules


def test_stage_rates_geometric_additive_explicit():
    assert stage_rates(start=1, factor=2, count=4) == [1, 2, 4, 8]
    assert stage_rates(start=1, factor=2, count=10, max_rate=5) == [1, 2, 4]
    assert stage_rates(start=0.5, step=0.5, count=3) == [0.5, 1.0, 1.5]
    assert stage_rates([0.5, 1, 3]) == [0.5, 1.0, 3.0]
    for bad in ({"rates": [2, 1]}, {"rates": [0, 1]}, {"start": 0}, {"factor": 1.0}, {"count": 0}):
        with pytest.raises(ValueError):
            stage_rates(**bad)


def test_uniform_schedule_is_evenly_spaced():
    assert arrival_offsets(2.0, 2.0, "uniform", random.Random(0)) == [0.0, 0.5, 1.0, 1.5]


def test_poisson_schedule_has_the_exact_count_within_the_stage_and_is_seeded():
    a = arrival_offsets(5.0, 10.0, "poisson", random.Random(3))
    b = arrival_offsets(5.0, 10.0, "poisson", random.Random(3))
    assert a == b and len(a) == 50 and a == sorted(a) and 0 <= a[0] and a[-1] < 10.0
    gaps = np.diff(a)
    assert gaps.std() > 0.5 * gaps.mean()  # exponential-like, not evenly spaced


def test_schedule_sends_at_least_one_request():
    assert len(arrival_offsets(0.01, 1.0, "uniform", random.Random(0))) == 1
