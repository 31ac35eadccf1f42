"""The KServe model: protocol in, batched task calls, protocol out.

``predict`` is ``async``: it parses and validates on the event loop (cheap), then awaits the
dynamic batcher, whose pipeline calls run on one dedicated inference thread. Loading and the
warm-up inference run on that same thread, in the background, so the server answers liveness
while a large model loads and reports the model ready only once it has produced an image.

The model's :class:`~predictor.lifecycle.Lifecycle` decides whether a request may start (loading,
draining, unhealthy device: 503 / UNAVAILABLE) and counts requests in flight for the drain. The
model is loaded exactly once: kserve's ``load()`` hook, which kserve's data plane calls again when
a gRPC request finds the model not ready, never loads (see ``load``). The warm-up's duration sets
the deadline of every later device call (``deadline_for``). docs/lifecycle.md has the whole story.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from kserve import Model
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferRequest, InferResponse

from predictor import device_health, metrics
from predictor.batching import BatchStats, DynamicBatcher, QueueFullError
from predictor.device import DeviceInfo
from predictor.lifecycle import Lifecycle, ModelLoading, ShuttingDown
from predictor.tasks.base import Task

logger = logging.getLogger(__name__)

# The deployment unit's name, when it differs from --model_name (the runtimes pass the
# InferenceService name, i.e. the unit, as --model_name already).
UNIT_ENV = "PREDICTOR_UNIT"


def served_by(model_name: str, device: DeviceInfo) -> dict[str, str]:
    """What each answer reports about where it was produced.

    In the body, because KServe's InferenceGraph router returns a unit's body and status but not
    its headers (kserve cmd/router/main.go: ``callService``/``graphHandler``).
    """
    return {
        "unit": os.environ.get(UNIT_ENV) or model_name,
        "device": device.kind,
        "device_name": ";".join(device.names),
    }


class PredictorModel(Model):
    def __init__(
        self,
        name: str,
        task: Task,
        device: DeviceInfo,
        *,
        max_batch_size: int = 4,
        batch_wait_ms: float = 5.0,
        max_queue_size: int = 64,
        warmup: bool = True,
        batch_deadline_s: float | None = None,
    ):
        """``batch_deadline_s``: fixed deadline of a device call; None derives it from the warm-up."""
        super().__init__(name)
        self.task = task
        self.device = device
        self.warmup = warmup
        self.batch_deadline_s = batch_deadline_s or None
        self.labels = {"model_name": name, "device": device.kind}
        self.served_by = served_by(name, device)
        self.lifecycle = Lifecycle(
            name,
            on_serving=lambda serving: metrics.MODEL_READY.labels(**self.labels).set(int(serving)),
            on_inflight=metrics.INFLIGHT.labels(**self.labels).set,
        )
        #: (seconds, cost) of the warm-up call, once it ran
        self.warmup_call: tuple[float, float] | None = None
        self._device_calls = 0
        self._device_calls_lock = threading.Lock()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        # Encoding results (PNG + base64: ~50 ms per 512x512 image) must not run on the event loop,
        # nor delay the next batch on the inference thread.
        self.encoder = ThreadPoolExecutor(max_workers=2, thread_name_prefix="encode")
        self.batcher = DynamicBatcher(
            self._device_call,
            task.batch_key,
            self.executor,
            max_batch_size=max_batch_size,
            batch_wait_s=batch_wait_ms / 1000.0,
            max_queue_size=max_queue_size,
            on_batch=self._observe_batch,
            on_depth=metrics.QUEUE_DEPTH.labels(**self.labels).set,
            deadline_for=self.deadline_for,
            on_device_failure=self._device_failed,
        )
        self.load_error: BaseException | None = None
        metrics.MODEL_READY.labels(**self.labels).set(0)
        metrics.start_series(self.labels)

    # ---------------------------------------------------------------- lifecycle

    def load(self) -> bool:
        """kserve's hook, which must not load a second copy.

        kserve 0.21's ``DataPlane.get_model`` calls ``model.load()`` on the event loop whenever a
        request finds the model not ready (gRPC ModelInfer does not check readiness first). The
        one real load runs in the background (``load_in_background``); here a model that cannot
        serve says why (loading, draining, unhealthy: 503 / UNAVAILABLE).
        """
        rejection = self.lifecycle.rejection()
        if rejection is not None:
            raise rejection
        return self.ready

    async def healthy(self) -> bool:
        return self.ready and self.lifecycle.serving

    def _load_and_warm_up(self) -> bool:
        """Load and warm up (blocking, on the inference thread); ready only after a successful warm-up."""
        started = time.monotonic()
        self.task.load()
        loaded = time.monotonic()
        if self.warmup:
            batches = self.task.warmup_batches()
            for items in batches:
                self.task.run_batch(items)
            seconds = time.monotonic() - loaded
            # The deadline scales with work: the warm-up's seconds per unit of batch cost.
            self.warmup_call = (seconds, sum(self.task.batch_cost(items) for items in batches))
            logger.info("warm-up inference of %d batch(es) took %.2fs", len(batches), seconds)
        self._log_deadline()
        logger.info("model %s ready on %s after %.2fs", self.name, self.device.describe(), time.monotonic() - started)
        self.ready = True
        self.lifecycle.mark_loaded()
        return True

    def load_in_background(self, on_failure: Callable[[BaseException], None]) -> Future:
        """Load on the inference thread; ``on_failure`` decides what a failed load means (exit)."""

        def done(future: Future) -> None:
            error = future.exception()
            if error is not None:
                self.load_error = error
                on_failure(error)

        future = self.executor.submit(self._on_device, self._load_and_warm_up)
        future.add_done_callback(done)
        return future

    def stop(self) -> None:
        self.ready = False
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.encoder.shutdown(wait=False, cancel_futures=True)

    @property
    def device_busy(self) -> bool:
        """True while the inference thread is inside a load or a device call (possibly a wedged one)."""
        return self._device_calls > 0

    # ---------------------------------------------------------------- device calls

    def _on_device(self, call: Callable[..., Any], *args: Any) -> Any:
        with self._device_calls_lock:
            self._device_calls += 1
        try:
            return call(*args)
        finally:
            with self._device_calls_lock:
                self._device_calls -= 1

    def _device_call(self, items: list[Any]) -> list[Any]:
        return self._on_device(self.task.run_batch, items)

    def deadline_for(self, items: list[Any]) -> float:
        """Seconds a device call for ``items`` may take before the device counts as wedged."""
        if self.batch_deadline_s:
            return self.batch_deadline_s
        if self.warmup_call is None:
            return device_health.FALLBACK_DEADLINE_S
        seconds, cost = self.warmup_call
        return device_health.derived_deadline(seconds, cost, self.task.batch_cost(items))

    def _log_deadline(self) -> None:
        if self.batch_deadline_s:
            logger.info("batch deadline: %.1fs (--batch_deadline_s)", self.batch_deadline_s)
        elif self.warmup_call is None:
            logger.info("batch deadline: %.0fs (no warm-up to derive it from)", device_health.FALLBACK_DEADLINE_S)
        else:
            logger.info(
                "batch deadline derived from the warm-up: %.0fs for a call like the warm-up, growing with the work "
                "in a call (at least %.0fs; --batch_deadline_s overrides)",
                self.deadline_for(self.task.warmup_items()), device_health.MIN_DERIVED_DEADLINE_S,
            )  # fmt: skip

    def _device_failed(self, kind: str, reason: str) -> None:
        metrics.DEVICE_FAILURES.labels(**self.labels, kind=kind).inc()
        if kind != device_health.OUT_OF_MEMORY:
            self.lifecycle.mark_unhealthy(reason)

    # ---------------------------------------------------------------- metadata

    def get_input_types(self) -> list[dict]:
        return self.task.input_types()

    def get_output_types(self) -> list[dict]:
        return self.task.output_types()

    # ---------------------------------------------------------------- inference

    @metrics.counted_request(lambda error: _outcome(error))
    async def predict(self, payload: Any, headers: dict[str, str] | None = None) -> Any:
        rejection = self.lifecycle.rejection()
        if rejection is not None:
            raise rejection
        try:
            with self.lifecycle.track():
                if isinstance(payload, (bytes, bytearray)):
                    payload = _json_body(payload)
                if isinstance(payload, InferRequest):
                    return await self._predict_v2(payload)
                if isinstance(payload, dict):
                    return await self._predict_v1(payload)
        except InvalidInput:
            metrics.REJECTED.labels(**self.labels, reason="invalid_input").inc()
            raise
        except QueueFullError:
            metrics.REJECTED.labels(**self.labels, reason="queue_full").inc()
            raise
        metrics.REJECTED.labels(**self.labels, reason="invalid_input").inc()
        raise InvalidInput(f"unsupported request body of type {type(payload).__name__}")

    async def _predict_v2(self, request: InferRequest) -> InferResponse:
        items = await self.task.off_loop(self.task.parse_v2, request)
        results = await self.batcher.submit(items)
        binary = bool(request.use_binary_outputs)
        outputs = await self._encode(results, self.task.v2_outputs, results, binary)
        return InferResponse(
            response_id=request.id or str(uuid.uuid4()),
            model_name=self.name,
            infer_outputs=outputs,
            from_grpc=request.from_grpc,
            use_binary_outputs=binary,
            requested_outputs=request.request_outputs,
            parameters=dict(self.served_by),
        )

    async def _predict_v1(self, body: dict) -> dict:
        items = await self.task.off_loop(self.task.parse_v1, body)
        results = await self.batcher.submit(items)
        predictions = await self._encode(results, self.task.v1_predictions, results)
        return {"predictions": predictions, "parameters": dict(self.served_by)}

    async def _encode(self, results: list[Any], encode: Callable[..., Any], *args: Any) -> Any:
        """Small results are encoded right here; large ones (PNGs of big images) on the encoder pool."""
        if self.task.encodes_inline(results):
            return encode(*args)
        return await asyncio.get_running_loop().run_in_executor(self.encoder, encode, *args)

    def _observe_batch(self, stats: BatchStats) -> None:
        metrics.BATCH_SIZE.labels(**self.labels).observe(stats.size)
        metrics.PIPELINE_SECONDS.labels(**self.labels).observe(stats.seconds)
        wait = metrics.QUEUE_WAIT_SECONDS.labels(**self.labels)
        for seconds in stats.queue_waits:
            wait.observe(seconds)


def _outcome(error: BaseException) -> str:
    """The predictor_requests_total outcome of a failed request."""
    if isinstance(error, InvalidInput):
        return "invalid_input"
    if isinstance(error, QueueFullError):
        return "queue_full"
    if isinstance(error, ModelLoading | ShuttingDown):
        return "not_ready"
    return "error"


def _json_body(raw: bytes) -> Any:
    """A v1 body sent without a JSON content type arrives as bytes."""
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InvalidInput(f"request body is not valid JSON: {error}") from None
