"""Dynamic batching: coalesce concurrent requests into one pipeline call.

Requests put their items on a bounded queue and await futures. A single dispatcher task takes
the oldest item, waits up to ``batch_wait_s`` (counted from that item's arrival) for more items
with the same batch key, and runs up to ``max_batch_size`` of them in one call on the inference
thread. Items with other keys keep their place for the next call. While a call runs, new items
accumulate, so under load batches fill without any added wait.

The event loop only moves futures around; the pipeline runs on a dedicated thread, so health,
metadata and /metrics stay responsive while images are generated.

A request cancelled while it waits (its client went away) leaves the queue at once and never
reaches the device. Each device call has a deadline; what a failed or overdue call means is
decided by ``predictor.device_health``: out of memory retries the batch's items one at a time,
an unrecoverable error or a missed deadline makes the device unusable (every waiting request
fails with ``DeviceUnhealthy`` and nothing more is dispatched).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from predictor import device_health
from predictor.lifecycle import DeviceOutOfMemory, DeviceUnhealthy, Unavailable

logger = logging.getLogger(__name__)

DEADLINE = "deadline"  # a failure kind besides device_health's


class QueueFullError(Unavailable):
    """The queue is at capacity: HTTP 503 / gRPC UNAVAILABLE, so clients back off and retry."""

    retry_after_s = 1


@dataclass
class _Entry:
    item: Any
    key: Hashable
    future: asyncio.Future
    enqueued_at: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class _Failed:
    """A failed item's outcome (a task may return exception objects as ordinary results)."""

    error: BaseException


@dataclass(frozen=True)
class BatchStats:
    size: int
    queue_waits: tuple[float, ...]
    seconds: float


class DynamicBatcher:
    def __init__(
        self,
        run_batch: Callable[[Sequence[Any]], list[Any]],
        batch_key: Callable[[Any], Hashable],
        executor: Executor,
        *,
        max_batch_size: int,
        batch_wait_s: float,
        max_queue_size: int,
        on_batch: Callable[[BatchStats], None] | None = None,
        on_depth: Callable[[int], None] | None = None,
        deadline_for: Callable[[Sequence[Any]], float | None] | None = None,
        on_device_failure: Callable[[str, str], None] | None = None,
    ):
        """``deadline_for(items)``: seconds a device call for these items may take (None: no limit).
        ``on_device_failure(kind, reason)``: told of every out-of-memory, unrecoverable or overdue call."""
        if max_batch_size < 1 or max_queue_size < 1:
            raise ValueError("max_batch_size and max_queue_size must be at least 1")
        self._run_batch = run_batch
        self._batch_key = batch_key
        self._executor = executor
        self.max_batch_size = max_batch_size
        self.batch_wait_s = max(0.0, batch_wait_s)
        self.max_queue_size = max_queue_size
        self._on_batch = on_batch or (lambda stats: None)
        self._on_depth = on_depth or (lambda depth: None)
        self._deadline_for = deadline_for or (lambda items: None)
        self._on_device_failure = on_device_failure or (lambda kind, reason: None)
        #: Set once the device is unusable: every request from then on fails with it.
        self.unusable: DeviceUnhealthy | None = None
        self._pending: list[_Entry] = []
        self._arrived: asyncio.Event | None = None
        self._dispatcher: asyncio.Task | None = None

    @property
    def depth(self) -> int:
        return len(self._pending)

    async def submit(self, items: Sequence[Any]) -> list[Any]:
        """Queue all items of one request and return their results in order."""
        if self.unusable is not None:
            raise self.unusable
        if len(items) > self.max_queue_size - len(self._pending):
            raise QueueFullError(
                f"queue full: {len(self._pending)} of {self.max_queue_size} items waiting; retry later"
            )
        self._ensure_dispatcher()
        loop = asyncio.get_running_loop()
        entries = [_Entry(item, self._batch_key(item), loop.create_future()) for item in items]
        self._pending.extend(entries)
        self._on_depth(len(self._pending))
        self._arrived.set()
        try:
            return list(await asyncio.gather(*(entry.future for entry in entries)))
        except asyncio.CancelledError:  # the client went away: its items leave the queue now
            for entry in entries:
                entry.future.cancel()
            self._drop_cancelled()
            raise

    def _drop_cancelled(self) -> None:
        before = len(self._pending)
        self._pending = [entry for entry in self._pending if not entry.future.done()]
        if len(self._pending) != before:
            self._on_depth(len(self._pending))

    def _ensure_dispatcher(self) -> None:
        if self._dispatcher is None or self._dispatcher.done():
            self._arrived = asyncio.Event()
            self._dispatcher = asyncio.get_running_loop().create_task(self._dispatch_forever())

    def _take_batch(self) -> list[_Entry]:
        self._pending = [entry for entry in self._pending if not entry.future.done()]
        if not self._pending:
            return []
        key = self._pending[0].key
        batch = [entry for entry in self._pending if entry.key == key][: self.max_batch_size]
        taken = {id(entry) for entry in batch}
        self._pending = [entry for entry in self._pending if id(entry) not in taken]
        self._on_depth(len(self._pending))
        return batch

    def _ready_count(self, key: Hashable) -> int:
        return sum(1 for entry in self._pending if entry.key == key and not entry.future.done())

    async def _dispatch_forever(self) -> None:
        while True:
            self._pending = [entry for entry in self._pending if not entry.future.done()]
            if not self._pending:
                self._arrived.clear()
                await self._arrived.wait()
                continue
            first = self._pending[0]
            deadline = first.enqueued_at + self.batch_wait_s
            while self._ready_count(first.key) < self.max_batch_size:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), remaining)
                except TimeoutError:
                    break
            batch = self._take_batch()
            if not batch:
                continue
            started = time.monotonic()
            waits = tuple(started - entry.enqueued_at for entry in batch)
            try:
                outcomes = await self._run(batch)
            finally:
                self._on_batch(BatchStats(len(batch), waits, time.monotonic() - started))
            for entry, outcome in zip(batch, outcomes, strict=True):
                if entry.future.done():
                    continue
                if isinstance(outcome, _Failed):
                    entry.future.set_exception(outcome.error)
                else:
                    entry.future.set_result(outcome)
            if self.unusable is not None:
                self._fail_pending(self.unusable)
                return

    async def _run(self, batch: list[_Entry]) -> list[Any]:
        """One result or ``_Failed`` per entry. Out of memory on several items: each item alone."""
        try:
            return await self._call_device([entry.item for entry in batch])
        except Exception as error:
            kind = DEADLINE if isinstance(error, DeviceUnhealthy) else device_health.classify(error)
            if kind == device_health.OUT_OF_MEMORY and len(batch) > 1:
                self._on_device_failure(kind, str(error))
                logger.warning("out of device memory on a batch of %d: running its items one at a time", len(batch))
                return [await self._run_alone(entry) for entry in batch]
            return [_Failed(self._failed(kind, error, len(batch)))] * len(batch)

    async def _run_alone(self, entry: _Entry) -> Any:
        if entry.future.done():  # cancelled meanwhile
            return None
        if self.unusable is not None:
            return _Failed(self.unusable)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, device_health.release_cached_memory)
        try:
            return (await self._call_device([entry.item]))[0]
        except Exception as error:
            kind = DEADLINE if isinstance(error, DeviceUnhealthy) else device_health.classify(error)
            return _Failed(self._failed(kind, error, 1))

    def _failed(self, kind: str, error: BaseException, size: int) -> BaseException:
        """The exception the callers of a failed call get; records what it means for the device."""
        if kind == device_health.OTHER:
            logger.exception("batch of %d failed", size, exc_info=error)
            return error
        self._on_device_failure(kind, str(error))
        if kind == device_health.OUT_OF_MEMORY:
            logger.warning("out of device memory on a single item: %s", error)
            return DeviceOutOfMemory(f"out of device memory for this request ({error}); retry later or ask for less")
        if kind == DEADLINE:
            self.unusable = error
            return error
        logger.error("unrecoverable device error on a batch of %d", size, exc_info=error)
        self.unusable = DeviceUnhealthy(f"the device is unhealthy after an unrecoverable error: {error}")
        return error

    async def _call_device(self, items: list[Any]) -> list[Any]:
        loop = asyncio.get_running_loop()
        call = loop.run_in_executor(self._executor, self._run_batch, items)
        deadline = self._deadline_for(items)
        try:
            results = await (asyncio.wait_for(asyncio.shield(call), deadline) if deadline else call)
        except TimeoutError:
            # The thread stays blocked in the call; nothing can interrupt it. The process must restart.
            raise DeviceUnhealthy(
                f"a device call for {len(items)} item(s) did not return within its deadline of {deadline:.1f}s"
            ) from None
        if len(results) != len(items):
            raise RuntimeError(f"pipeline returned {len(results)} results for {len(items)} items")
        return results

    def _fail_pending(self, error: BaseException) -> None:
        for entry in self._pending:
            if not entry.future.done():
                entry.future.set_exception(error)
        self._pending = []
        self._on_depth(0)
