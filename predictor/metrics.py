"""Prometheus metrics of the runtime, served by kserve's /metrics (the default registry).

The names here are the only place metric names are spelled: observability/ builds the Grafana
dashboards and the PrometheusRule alerts from these objects (tests/observability checks that
every query uses only names the code exports).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, Info

LABELS = ("model_name", "device")

DEVICE_INFO = Info("predictor_device", "Accelerator the predictor runs on")
QUEUE_WAIT_SECONDS = Histogram(
    "predictor_queue_wait_seconds",
    "Time a request waited before its batch started",
    LABELS,
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
BATCH_SIZE = Histogram(
    "predictor_batch_size",
    "Items per pipeline call",
    LABELS,
    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64),
)
PIPELINE_SECONDS = Histogram(
    "predictor_pipeline_seconds",
    "Duration of one pipeline call",
    LABELS,
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64),
)
QUEUE_DEPTH = Gauge("predictor_queue_depth", "Items waiting for a batch", LABELS)
REJECTED = Counter("predictor_requests_rejected_total", "Requests refused before inference", (*LABELS, "reason"))
MODEL_READY = Gauge("predictor_model_ready", "1 once the model is loaded and warmed up", LABELS)
REQUESTS = Counter(
    "predictor_requests_total",
    "Inference requests (REST v1, v2 and gRPC) by outcome: ok, invalid_input, queue_full, not_ready, error",
    (*LABELS, "outcome"),
)
REQUEST_SECONDS = Histogram(
    "predictor_request_seconds",
    "Time from a request reaching the model to its answer (parse, queue, pipeline, encoding), answered requests",
    LABELS,
    # Milliseconds on a GPU for a small image, minutes for 512x512 on the CPU unit (timeout 600 s).
    buckets=(0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 20, 30, 60, 120, 300, 600),
)


# Every value of the outcome and reason labels. The series start at 0 with the model
# (start_series): a counter child created by its first increment is first scraped with the
# increment already in it, so rate()/increase() -- and the alerts on them -- would miss it.
OUTCOMES = ("ok", "invalid_input", "queue_full", "not_ready", "error")
REJECTION_REASONS = ("invalid_input", "queue_full")


def start_series(labels: dict[str, str]) -> None:
    """Create the model's request and rejection counters at 0 (call once the model exists)."""
    for outcome in OUTCOMES:
        REQUESTS.labels(**labels, outcome=outcome)
    for reason in REJECTION_REASONS:
        REJECTED.labels(**labels, reason=reason)


def counted_request(
    outcome_of: Callable[[BaseException], str],
) -> Callable[[Callable[..., Awaitable[Any]]], Callable[..., Awaitable[Any]]]:
    """Decorate a model's async ``predict``: count every call by outcome, time the answered ones.

    ``outcome_of`` names the outcome of an exception (the model knows its exception types).
    The model instance must have ``labels`` (model_name, device).
    """

    def decorate(predict: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        @functools.wraps(predict)
        async def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            started = time.monotonic()
            try:
                result = await predict(self, *args, **kwargs)
            except BaseException as error:
                REQUESTS.labels(**self.labels, outcome=outcome_of(error)).inc()
                raise
            REQUESTS.labels(**self.labels, outcome="ok").inc()
            REQUEST_SECONDS.labels(**self.labels).observe(time.monotonic() - started)
            return result

        return wrapper

    return decorate
INFLIGHT = Gauge(
    "predictor_inflight_requests", "Inference requests admitted and not yet answered (what a drain waits for)", LABELS
)
DEVICE_FAILURES = Counter(
    "predictor_device_failures_total",
    "Device calls that ran out of memory, failed unrecoverably, or missed their deadline",
    (*LABELS, "kind"),
)
