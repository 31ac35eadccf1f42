"""Prometheus metrics of the runtime, served by kserve's /metrics (the default registry)."""

from __future__ import annotations

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
INFLIGHT = Gauge(
    "predictor_inflight_requests", "Inference requests admitted and not yet answered (what a drain waits for)", LABELS
)
DEVICE_FAILURES = Counter(
    "predictor_device_failures_total",
    "Device calls that ran out of memory, failed unrecoverably, or missed their deadline",
    (*LABELS, "kind"),
)
