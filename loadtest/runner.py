"""The open-loop load generator: stages of requests launched on a schedule.

Each stage launches requests at its scheduled times whatever the server does (open loop): a
request is never held back because earlier ones have not finished. Only when ``max_inflight``
requests are outstanding is a due request not sent; it is recorded as ``dropped`` (the client is
saturated) and counts as an error, so the tool never quietly slows down. Latency is measured
from the scheduled send time, so delays on the client side count too (no coordinated omission);
each record also keeps its send lag (actual send - scheduled).

After a stage's schedule ends, its outstanding requests are awaited (at most the request
timeout) before the next stage starts, so stages do not overlap. The run stops at the breaking
point, when the rate plan ends, or when the time or request budget would be exceeded; a stop
request (Ctrl-C) ends the current stage early and keeps what was measured.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

from loadtest.analysis import (
    CANCELLED,
    DROPPED,
    OK,
    Criteria,
    Evaluation,
    RequestRecord,
    StageStats,
    evaluate,
    percentile,
    summarize_stage,
)
from loadtest.clients import Client, EndpointError

ARRIVALS = ("poisson", "uniform")


@dataclass(frozen=True)
class RunSettings:
    rates: tuple[float, ...]
    stage_seconds: float = 30.0
    arrival: str = "poisson"
    max_inflight: int = 128
    max_duration_s: float = 1800.0  # the stages' schedules must fit in it; a watchdog stops at + timeout
    max_requests: int = 20000
    probe_requests: int = 1  # sequential, fully checked requests before the first stage (not counted)
    ready_timeout_s: float = 60.0
    interrupt_grace_s: float = 3.0  # after a stop request, how long outstanding requests may finish
    seed: int = 0
    progress_interval_s: float = 1.0

    def __post_init__(self) -> None:
        if not self.rates:
            raise ValueError("at least one stage rate is needed")
        if self.arrival not in ARRIVALS:
            raise ValueError(f"arrival must be one of {', '.join(ARRIVALS)}")
        if not self.stage_seconds > 0:
            raise ValueError("stage_seconds must be > 0")
        if self.max_inflight < 1:
            raise ValueError("max_inflight must be >= 1")
        if self.max_requests < 1:
            raise ValueError("max_requests must be >= 1")


@dataclass
class StageRun:
    index: int
    target_rps: float
    records: list[RequestRecord] = field(default_factory=list)
    stats: StageStats | None = None


@dataclass
class RunState:
    """Everything measured so far; the caller keeps it, so an interrupted run can still be written."""

    stages: list[StageRun] = field(default_factory=list)
    evaluation: Evaluation | None = None
    stop_reason: str = "not started"
    interrupted: bool = False
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    sent: int = 0

    def stats(self) -> list[StageStats]:
        return [s.stats for s in self.stages if s.stats is not None]


def arrival_offsets(rate: float, duration: float, arrival: str, rng: random.Random) -> list[float]:
    """Send times (seconds from the stage start) of ``round(rate x duration)`` requests, at least one.

    ``uniform``: evenly spaced. ``poisson``: a Poisson process conditioned on its count (sorted
    uniform times), so the offered rate is exact while the gaps are exponential-like.
    """
    count = max(1, round(rate * duration))
    if arrival == "uniform":
        return [i * duration / count for i in range(count)]
    if arrival == "poisson":
        return sorted(rng.uniform(0.0, duration) for _ in range(count))
    raise ValueError(f"unknown arrival process {arrival!r}")


class Progress:
    """Progress on a stream: a live line on a terminal, a line every few seconds otherwise."""

    def __init__(self, stream: TextIO, interval_s: float, total_stages: int):
        self.stream = stream
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.interval_s = interval_s if self.tty else max(5.0, interval_s * 5)
        self.total = total_stages
        self.pending_line = False

    def write(self, text: str) -> None:
        if self.pending_line:
            self.stream.write("\r\033[K")
            self.pending_line = False
        self.stream.write(text + "\n")
        self.stream.flush()

    def live(self, text: str) -> None:
        if self.tty:
            self.stream.write("\r\033[K" + text)
            self.pending_line = True
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def stage_line(self, stage: StageRun, elapsed: float, planned: float, inflight: int) -> str:
        counts = {OK: 0, DROPPED: 0}
        errors = 0
        latencies = []
        for record in stage.records:
            if record.status == OK:
                counts[OK] += 1
                latencies.append(record.latency)
            elif record.status == DROPPED:
                counts[DROPPED] += 1
            elif record.status != CANCELLED:
                errors += 1
        p90 = percentile(latencies, 90)
        p90_text = f"{p90:.3f}s" if p90 is not None else "-"
        return (
            f"[stage {stage.index + 1}/{self.total} {stage.target_rps:g} rps] {min(elapsed, planned):5.1f}/{planned:g}s"
            f"  ok {counts[OK]}  err {errors}  dropped {counts[DROPPED]}  in-flight {inflight}  p90 {p90_text}"
        )


def describe_stage(stats: StageStats, verdict_reasons: tuple[str, ...], slo_stat: str) -> str:
    lat = stats.latency(slo_stat)
    lat_text = f"{lat:.3f}s" if lat is not None else "-"
    errors = ", ".join(f"{k}:{v}" for k, v in stats.errors.items()) or "none"
    state = "sustainable" if not verdict_reasons else "BREAKS (" + ", ".join(verdict_reasons) + ")"
    partial = " [interrupted]" if not stats.complete else ""
    return (
        f"stage {stats.index + 1}: offered {stats.offered_rps:.3g} rps, achieved {stats.achieved_rps:.3g} rps, "
        f"{slo_stat} {lat_text}, p50 {_fmt(stats.latency('p50'))}, p99 {_fmt(stats.latency('p99'))}, "
        f"errors {errors}, dropped {stats.dropped} -> {state}{partial}"
    )


def _fmt(value: float | None) -> str:
    return f"{value:.3f}s" if value is not None else "-"


async def _wait_ready(client: Client, timeout_s: float, stop: asyncio.Event) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if await client.ready():
            return
        if time.monotonic() >= deadline or stop.is_set():
            raise EndpointError(
                f"model {client.target.model!r} at {client.target.url} is not ready (waited {timeout_s:g}s); "
                "check the URL, --model and --host"
            )
        await asyncio.sleep(0.5)


async def _run_stage(
    client: Client,
    stage: StageRun,
    settings: RunSettings,
    state: RunState,
    stop: asyncio.Event,
    progress: Progress,
    rng: random.Random,
) -> tuple[float, bool]:
    """Run one stage; returns (schedule duration, complete)."""
    loop = asyncio.get_running_loop()
    offsets = arrival_offsets(stage.target_rps, settings.stage_seconds, settings.arrival, rng)
    inflight: set[asyncio.Task] = set()
    start = loop.time() + 0.01

    async def one(number: int, due: float) -> None:
        sent_at = loop.time()
        try:
            status = await client.infer(number)
        except asyncio.CancelledError:
            stage.records.append(RequestRecord(scheduled=due - start, status=CANCELLED, send_lag=sent_at - due))
            raise
        except Exception as error:  # noqa: BLE001 - a client bug must not kill the run; count it
            status = f"client-exception:{type(error).__name__}"
        done = loop.time()
        stage.records.append(
            RequestRecord(scheduled=due - start, status=status, latency=done - due, send_lag=sent_at - due)
        )

    last_report = loop.time()
    complete = True
    stopped_at: float | None = None
    for offset in offsets:
        due = start + offset
        while (delay := due - loop.time()) > 0 and not stop.is_set():
            await asyncio.sleep(min(delay, 0.2))
            if loop.time() - last_report >= progress.interval_s:
                last_report = loop.time()
                progress.live(progress.stage_line(stage, loop.time() - start, settings.stage_seconds, len(inflight)))
        if stop.is_set():
            complete, stopped_at = False, loop.time()
            break
        if len(inflight) >= settings.max_inflight:
            stage.records.append(RequestRecord(scheduled=offset, status=DROPPED))
            continue
        task = asyncio.create_task(one(state.sent, due))
        state.sent += 1
        inflight.add(task)
        task.add_done_callback(inflight.discard)

    # Drain: wait for this stage's outstanding requests (they time out on their own).
    drain_deadline = loop.time() + client.target.timeout_s + 5.0
    while inflight and not stop.is_set() and loop.time() < drain_deadline:
        await asyncio.wait(set(inflight), timeout=min(progress.interval_s, 0.5))
        if loop.time() - last_report >= progress.interval_s:
            last_report = loop.time()
            progress.live(progress.stage_line(stage, loop.time() - start, settings.stage_seconds, len(inflight)))
    if inflight and stop.is_set():
        complete = False
        stopped_at = stopped_at or loop.time()
        await asyncio.wait(set(inflight), timeout=settings.interrupt_grace_s)
    for task in list(inflight):
        task.cancel()
    if inflight:
        await asyncio.gather(*inflight, return_exceptions=True)
    duration = settings.stage_seconds
    if not complete and stopped_at is not None:
        duration = min(settings.stage_seconds, max(stopped_at - start, 1e-3))
    return duration, complete


async def run_load_test(
    client: Client,
    settings: RunSettings,
    criteria: Criteria,
    state: RunState,
    stop: asyncio.Event | None = None,
    stream: TextIO | None = None,
    on_stage: Callable[[RunState], None] | None = None,
) -> RunState:
    """Probe the endpoint, then run stages until the breaking point, the plan's end or a budget."""
    stop = stop or asyncio.Event()
    stream = stream or sys.stderr
    progress = Progress(stream, settings.progress_interval_s, len(settings.rates))
    rng = random.Random(settings.seed)
    loop = asyncio.get_running_loop()
    began = loop.time()

    async def watchdog() -> None:
        hard_limit = settings.max_duration_s + client.target.timeout_s + 10.0
        await asyncio.sleep(hard_limit)
        progress.write(f"time budget exceeded ({hard_limit:g}s): stopping")
        state.stop_reason = "time budget"
        stop.set()

    guard = asyncio.create_task(watchdog())
    try:
        await client.open()
        await _wait_ready(client, settings.ready_timeout_s, stop)
        for _ in range(settings.probe_requests):
            await client.probe()
        rates = ", ".join(f"{r:g}" for r in settings.rates)
        progress.write(
            f"{client.target.url} model {client.target.model!r} ready; probe request ok; "
            f"{len(settings.rates)} stage(s) of {settings.stage_seconds:g}s at {rates} requests/s"
        )
        state.stop_reason = "rate plan finished"
        for index, rate in enumerate(settings.rates):
            expected = max(1, round(rate * settings.stage_seconds))
            if state.sent + expected > settings.max_requests:
                state.stop_reason = f"request budget ({settings.max_requests}) reached before stage {index + 1}"
                break
            if loop.time() - began + settings.stage_seconds > settings.max_duration_s:
                state.stop_reason = f"time budget ({settings.max_duration_s:g}s) reached before stage {index + 1}"
                break
            if stop.is_set():
                break
            stage = StageRun(index=index, target_rps=rate)
            state.stages.append(stage)
            duration, complete = await _run_stage(client, stage, settings, state, stop, progress, rng)
            stage.stats = summarize_stage(index, rate, duration, stage.records, complete=complete)
            state.evaluation = evaluate(state.stats(), criteria)
            verdict = state.evaluation.verdicts[-1]
            progress.write(describe_stage(stage.stats, verdict.reasons, criteria.slo_percentile))
            if on_stage is not None:
                on_stage(state)
            if state.evaluation.broken:
                state.stop_reason = f"breaking point at stage {state.evaluation.breaking_stage + 1}"
                break
            if stop.is_set():
                break
        if stop.is_set() and state.stop_reason != "time budget":
            state.interrupted = True
            state.stop_reason = "interrupted"
    finally:
        guard.cancel()
        state.finished_at = time.time()
        if state.evaluation is None or len(state.evaluation.verdicts) != len(state.stats()):
            state.evaluation = evaluate(state.stats(), criteria)
        await client.close()
    return state
