"""What a failed device call means, and how long a device call may take.

Three kinds of failure, by exception type first and message second (torch raises plain
``RuntimeError`` for many CUDA and Neuron runtime errors, with a stable message prefix):

* out of memory (``torch.OutOfMemoryError``, "out of memory"): recoverable; a smaller call may fit,
  so the batcher retries the batch's items one at a time before any of them fails;
* unrecoverable (a CUDA device-side assert, an illegal memory access, an ECC error, a lost device,
  a Neuron runtime execution failure): the CUDA context (or the NeuronCore) is unusable until the
  process restarts, so every later call would fail too. The model reports not ready and not live,
  and Kubernetes restarts the container;
* anything else: the request's own problem; that batch fails, the server keeps serving.

A call that does not return within its deadline is treated like an unrecoverable error.
"""

from __future__ import annotations

import logging
import math
import sys

logger = logging.getLogger(__name__)

OUT_OF_MEMORY = "out_of_memory"
UNRECOVERABLE = "unrecoverable"
OTHER = "other"

# Lower-case fragments of messages that leave the device unusable (CUDA runtime, cuBLAS/cuDNN, NCCL,
# the Neuron runtime). "CUDA error: out of memory" is deliberately absent: it is classified as OOM first.
UNRECOVERABLE_MESSAGES = (
    "device-side assert",
    "illegal memory access",
    "illegal instruction",
    "unspecified launch failure",
    "misaligned address",
    "uncorrectable ecc error",
    "cuda error: an illegal",
    "cuda error: unknown error",
    "cuda error: launch failure",
    "cudaerrorlaunchfailure",
    "cuda-capable device(s) is/are busy or unavailable",
    "cublas_status_execution_failed",
    "cublas_status_internal_error",
    "cudnn_status_execution_failed",
    "cudnn_status_internal_error",
    "nccl error",
    "nrt_exec",
    "nrt_execute",
    "neuron runtime error",
    "nrt error",
)
OUT_OF_MEMORY_MESSAGES = ("out of memory", "failed to allocate", "nrt_resource")

#: A derived deadline is never shorter than this: a first call after a quiet period may be slow.
MIN_DERIVED_DEADLINE_S = 60.0
#: How much slower than the warm-up (per unit of work) a call may be before the device counts as wedged.
DEADLINE_SLACK = 10.0
#: Without a warm-up to measure, and without --batch_deadline_s.
FALLBACK_DEADLINE_S = 600.0


def classify(error: BaseException) -> str:
    """``OUT_OF_MEMORY``, ``UNRECOVERABLE`` or ``OTHER`` for an exception raised by a device call."""
    torch = sys.modules.get("torch")  # never import torch here: tasks that need it have imported it
    if torch is not None and isinstance(error, getattr(torch, "OutOfMemoryError", ())):
        return OUT_OF_MEMORY
    message = str(error).lower()
    if isinstance(error, MemoryError) or any(fragment in message for fragment in OUT_OF_MEMORY_MESSAGES):
        return OUT_OF_MEMORY
    if any(fragment in message for fragment in UNRECOVERABLE_MESSAGES):
        return UNRECOVERABLE
    if torch is not None and isinstance(error, getattr(torch, "AcceleratorError", ())):
        return UNRECOVERABLE  # torch >= 2.8 raises this for CUDA runtime errors
    return OTHER


def release_cached_memory() -> None:
    """Return cached allocator blocks to the device before retrying after an out-of-memory error."""
    torch = sys.modules.get("torch")
    if torch is None:
        return
    try:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.empty_cache()
    except Exception:  # best effort: the retry itself reports what is wrong
        logger.debug("emptying the CUDA cache failed", exc_info=True)


def derived_deadline(warmup_seconds: float, warmup_cost: float, batch_cost: float) -> float:
    """Deadline of a call costing ``batch_cost`` when a call costing ``warmup_cost`` took ``warmup_seconds``.

    The warm-up is the first call on the device (allocator growth, kernel selection, lazy
    initialisation), so it over-estimates the time per unit of work; the slack covers the rest
    (a busy host, thermal throttling). ``batch_cost`` comes from ``Task.batch_cost``.
    """
    if warmup_seconds <= 0 or warmup_cost <= 0 or not math.isfinite(warmup_seconds):
        return FALLBACK_DEADLINE_S
    scaled = DEADLINE_SLACK * warmup_seconds * max(batch_cost, warmup_cost) / warmup_cost
    return max(MIN_DERIVED_DEADLINE_S, scaled)
