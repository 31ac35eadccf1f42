"""The KServe model: protocol in, batched task calls, protocol out.

``predict`` is ``async``: it parses and validates on the event loop (cheap), then awaits the
dynamic batcher, whose pipeline calls run on one dedicated inference thread. Loading and the
warm-up inference run on that same thread, in the background, so the server answers liveness
while a large model loads and reports the model ready only once it has produced an image.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from kserve import Model
from kserve.errors import InvalidInput, ModelNotReady
from kserve.protocol.infer_type import InferRequest, InferResponse

from predictor import metrics
from predictor.batching import BatchStats, DynamicBatcher, QueueFullError
from predictor.device import DeviceInfo
from predictor.pipelines.base import Task

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
    ):
        super().__init__(name)
        self.task = task
        self.device = device
        self.warmup = warmup
        self.labels = {"model_name": name, "device": device.kind}
        self.served_by = served_by(name, device)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        # Encoding results (PNG + base64: ~50 ms per 512x512 image) must not run on the event loop,
        # nor delay the next batch on the inference thread.
        self.encoder = ThreadPoolExecutor(max_workers=2, thread_name_prefix="encode")
        self.batcher = DynamicBatcher(
            task.run_batch,
            task.batch_key,
            self.executor,
            max_batch_size=max_batch_size,
            batch_wait_s=batch_wait_ms / 1000.0,
            max_queue_size=max_queue_size,
            on_batch=self._observe_batch,
            on_depth=metrics.QUEUE_DEPTH.labels(**self.labels).set,
        )
        self.load_error: BaseException | None = None
        metrics.MODEL_READY.labels(**self.labels).set(0)
        metrics.start_series(self.labels)

    # ---------------------------------------------------------------- lifecycle

    def load(self) -> bool:
        """Load and warm up (blocking). Sets ``ready`` only after a successful warm-up."""
        started = time.monotonic()
        self.task.load()
        loaded = time.monotonic()
        if self.warmup:
            batches = self.task.warmup_batches()
            for items in batches:
                self.task.run_batch(items)
            logger.info("warm-up inference of %d batch(es) took %.2fs", len(batches), time.monotonic() - loaded)
        logger.info("model %s ready on %s after %.2fs", self.name, self.device.describe(), time.monotonic() - started)
        self.ready = True
        metrics.MODEL_READY.labels(**self.labels).set(1)
        return True

    def load_in_background(self, on_failure: Callable[[BaseException], None]) -> Future:
        """Load on the inference thread; ``on_failure`` decides what a failed load means (exit)."""

        def done(future: Future) -> None:
            error = future.exception()
            if error is not None:
                self.load_error = error
                on_failure(error)

        future = self.executor.submit(self.load)
        future.add_done_callback(done)
        return future

    def stop(self) -> None:
        self.ready = False
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.encoder.shutdown(wait=False, cancel_futures=True)

    # ---------------------------------------------------------------- metadata

    def get_input_types(self) -> list[dict]:
        return self.task.input_types()

    def get_output_types(self) -> list[dict]:
        return self.task.output_types()

    # ---------------------------------------------------------------- inference

    @metrics.counted_request(lambda error: _outcome(error))
    async def predict(self, payload: Any, headers: dict[str, str] | None = None) -> Any:
        if not self.ready:
            raise ModelNotReady(self.name, "the model is still loading")
        try:
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
        outputs = await asyncio.get_running_loop().run_in_executor(self.encoder, self.task.v2_outputs, results, binary)
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
        predictions = await asyncio.get_running_loop().run_in_executor(self.encoder, self.task.v1_predictions, results)
        return {"predictions": predictions, "parameters": dict(self.served_by)}

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
    if isinstance(error, ModelNotReady):
        return "not_ready"
    return "error"


def _json_body(raw: bytes) -> Any:
    """A v1 body sent without a JSON content type arrives as bytes."""
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InvalidInput(f"request body is not valid JSON: {error}") from None
