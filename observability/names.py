"""Exposed series names, taken from the code that exports them (never spelled here)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, Info
from prometheus_client.metrics import MetricWrapperBase

from controller import metrics as controller_metrics
from predictor import metrics as predictor_metrics


def exposed(collector: MetricWrapperBase) -> str:
    """The name a collector's samples carry on /metrics (histograms: the base of _bucket/_sum/_count)."""
    (family,) = collector.describe()
    if isinstance(collector, Counter):
        return family.name + "_total"
    if isinstance(collector, Info):
        return family.name + "_info"
    if isinstance(collector, (Gauge, Histogram)):
        return family.name
    raise TypeError(f"unsupported collector {type(collector).__name__}")


# Predictor (one series set per pod; labels model_name = the unit, device).
P_REQUESTS = exposed(predictor_metrics.REQUESTS)
P_REQUEST_SECONDS = exposed(predictor_metrics.REQUEST_SECONDS)
P_REJECTED = exposed(predictor_metrics.REJECTED)
P_QUEUE_DEPTH = exposed(predictor_metrics.QUEUE_DEPTH)
P_QUEUE_WAIT_SECONDS = exposed(predictor_metrics.QUEUE_WAIT_SECONDS)
P_BATCH_SIZE = exposed(predictor_metrics.BATCH_SIZE)
P_PIPELINE_SECONDS = exposed(predictor_metrics.PIPELINE_SECONDS)
P_MODEL_READY = exposed(predictor_metrics.MODEL_READY)
P_DEVICE_INFO = exposed(predictor_metrics.DEVICE_INFO)

# Traffic controller (one series set per replica; only the leader's describe the cluster).
C = controller_metrics
C_LEADER = C.LEADER
C_MODE = C.MODE
C_PAUSED = C.PAUSED
C_SIGNALS_STALE = C.SIGNALS_STALE
C_SIGNAL_AGE = C.SIGNAL_AGE
C_WEIGHT = C.WEIGHT
C_ROUTER_WEIGHT = C.ROUTER_WEIGHT
C_READY = C.READY_REPLICAS
C_DESIRED = C.DESIRED_REPLICAS
C_CAPACITY_ERRORS = C.CAPACITY_ERRORS
C_DECISIONS = C.DECISIONS
C_PATCHES = C.PATCHES
C_SWITCHES = C.SWITCHES
C_ERRORS = C.ERRORS
C_DEMAND = C.DEMAND_RPS
C_PLANNED = C.PLANNED_RPS
C_PRICE = C.PRICE_PER_HOUR
C_REPLICA_RPS = C.REPLICA_RPS


def predictor_series() -> set[str]:
    """Every series name the predictor exports (histograms with their suffixes)."""
    return _with_suffixes(
        [P_REQUESTS, P_REJECTED, P_QUEUE_DEPTH, P_MODEL_READY, P_DEVICE_INFO],
        [P_REQUEST_SECONDS, P_QUEUE_WAIT_SECONDS, P_BATCH_SIZE, P_PIPELINE_SECONDS],
    )


def controller_series() -> set[str]:
    registry = controller_metrics.Metrics([]).registry
    return {sample.name for family in registry.collect() for sample in family.samples} | {
        family.name + ("_total" if family.type == "counter" else "") for family in registry.collect()
    }


def _with_suffixes(plain: list[str], histograms: list[str]) -> set[str]:
    return set(plain) | {h + suffix for h in histograms for suffix in ("_bucket", "_sum", "_count")}
