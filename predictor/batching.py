"""Dynamic batching: coalesce concurrent requests into one pipeline call.

Requests put their items on a bounded queue and await futures. A single dispatcher task takes
the oldest item, waits up to ``batch_wait_s`` (counted from that item's arrival) for more items
with the same batch key, and runs up to ``max_batch_size`` of them in one call on the inference
thread. Items with other keys keep their place for the next call. While a call runs, new items
accumulate, so under load batches fill without any added wait.

The event loop only moves futures around; the pipeline runs on a dedicated thread, so health,
metadata and /metrics stay responsive while images are generated.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from kserve.errors import ServerNotReady

logger = logging.getLogger(__name__)


class QueueFullError(ServerNotReady):
    """The queue is at capacity: HTTP 503 / gRPC UNAVAILABLE, so clients back off and retry."""

    def __init__(self, detail: str):
        super().__init__(detail)
        # kserve's gRPC interceptor reads ``reason``, which ServerNotReady itself lacks.
        self.reason = detail
        self.error_msg = detail

    def __str__(self) -> str:
        return self.reason


@dataclass
class _Entry:
    item: Any
    key: Hashable
    future: asyncio.Future
    enqueued_at: float = field(default_factory=time.monotonic)


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
    ):
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
        self._pending: list[_Entry] = []
        self._arrived: asyncio.Event | None = None
        self._dispatcher: asyncio.Task | None = None

    @property
    def depth(self) -> int:
        return len(self._pending)

    async def submit(self, items: Sequence[Any]) -> list[Any]:
        """Queue all items of one request and return their results in order."""
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
        except asyncio.CancelledError:
            for entry in entries:
                entry.future.cancel()
            raise

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
        loop = asyncio.get_running_loop()
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
                results = await loop.run_in_executor(self._executor, self._run_batch, [e.item for e in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"pipeline returned {len(results)} results for {len(batch)} items")
            except Exception as error:  # every caller of this batch gets the error
                logger.exception("batch of %d failed", len(batch))
                for entry in batch:
                    if not entry.future.done():
                        entry.future.set_exception(error)
                continue
            finally:
                self._on_batch(BatchStats(len(batch), waits, time.monotonic() - started))
            for entry, result in zip(batch, results, strict=True):
                if not entry.future.done():
                    entry.future.set_result(result)
