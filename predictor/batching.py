"""Dynamic batching: coalesce concurrent requests into one pipeline call, never at an idle device's expense.

Requests put their items on a bounded queue and await futures. A single dispatcher task runs one
device call at a time on the inference thread:

* When the device is free, what is queued runs at once: the oldest item and every queued item with
  the same batch key, up to ``max_batch_size``. A lone request on an idle server never waits.
* What arrives while a call runs forms the next batch, so under load batches fill by themselves.
* The one wait: right after a batch of several items of the same key, a closed loop of clients is
  about to send that many requests again. If the queue then holds only fewer items of that key,
  the dispatcher holds them until as many as the last batch are queued, for at most
  ``batch_wait_s`` and never longer than the last call took (waiting longer than a call costs
  more than it can save). Anything with another key ends the hold at once: items with
  incompatible parameters never wait for each other. ``batch_wait_s`` = 0 disables the hold.

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
from dataclasses import dataclass
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
    enqueued_at: float


@dataclass(frozen=True)
class _Failed:
    """A failed item's outcome (a task may return exception objects as ordinary results)."""

    error: BaseException


@dataclass(frozen=True)
class BatchStats:
    size: int
    queue_waits: tuple[float, ...]
    seconds: float
    #: how long the dispatcher held the batch open for more items (0: it ran as soon as the device was free)
    held_s: float = 0.0


@dataclass(frozen=True)
class _LastBatch:
    key: Hashable
    size: int
    ended_at: float
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
        clock: Callable[[], float] = time.monotonic,
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
        self._clock = clock
        self._last_batch: _LastBatch | None = None

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
        now = self._clock()
        entries = [_Entry(item, self._batch_key(item), loop.create_future(), now) for item in items]
        self._pending.extend(entries)
        self._on_depth(len(self._pending))
        self._arrived.set()
        try:
            if len(entries) == 1:  # a lone item: its future itself, without gather's wrapper and callbacks
                return [await entries[0].future]
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
        if len(self._pending) <= self.max_batch_size and all(entry.key == key for entry in self._pending):
            batch, self._pending = self._pending, []  # the common case: everything queued goes
        else:
            batch = [entry for entry in self._pending if entry.key == key][: self.max_batch_size]
            taken = {id(entry) for entry in batch}
            self._pending = [entry for entry in self._pending if id(entry) not in taken]
        self._on_depth(len(self._pending))
        return batch

    def _company_expected(self) -> tuple[int, float]:
        """(items worth holding the queue's head for, for at most how many seconds); (0, 0) to run now.

        Only right after a batch of several items of the head's key, and only while the queue holds
        nothing but fewer such items: the evidence that more of the same are on their way back.
        """
        last = self._last_batch
        if last is None or last.size < 2 or self.batch_wait_s <= 0 or self.max_batch_size < 2:
            return 0, 0.0
        key = self._pending[0].key
        if last.key != key or self._clock() - last.ended_at >= self.batch_wait_s:
            return 0, 0.0
        if any(entry.key != key for entry in self._pending):
            return 0, 0.0
        wanted = min(last.size, self.max_batch_size)
        if len(self._pending) >= wanted:
            return 0, 0.0
        return wanted, min(self.batch_wait_s, last.seconds)

    async def _hold_for_company(self) -> float:
        """Hold the queue (see ``_company_expected``); the seconds held."""
        wanted, limit = self._company_expected()
        if not wanted:
            return 0.0
        started = self._clock()
        key = self._pending[0].key
        while True:
            live = [entry for entry in self._pending if not entry.future.done()]
            if not live or len(live) >= wanted or any(entry.key != key for entry in live):
                break
            remaining = started + limit - self._clock()
            if remaining <= 0:
                break
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                break
        return self._clock() - started

    async def _dispatch_forever(self) -> None:
        while True:
            if not self._pending or self._pending[0].future.done():
                self._pending = [entry for entry in self._pending if not entry.future.done()]
            if not self._pending:
                self._arrived.clear()
                await self._arrived.wait()
                continue
            held = await self._hold_for_company()
            batch = self._take_batch()
            if not batch:
                continue
            started = self._clock()
            waits = tuple(started - entry.enqueued_at for entry in batch)
            try:
                outcomes = await self._run(batch)
            finally:
                ended = self._clock()
                self._last_batch = _LastBatch(batch[0].key, len(batch), ended, ended - started)
                self._on_batch(BatchStats(len(batch), waits, ended - started, held))
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
        if deadline:
            # asyncio.wait leaves the call running when it times out or the dispatcher is cancelled
            # (as shield would), with one waiter instead of wait_for's and shield's layers.
            await asyncio.wait((call,), timeout=deadline)
            if not call.done():
                # The thread stays blocked in the call; nothing can interrupt it. The process must restart.
                raise DeviceUnhealthy(
                    f"a device call for {len(items)} item(s) did not return within its deadline of {deadline:.1f}s"
                )
        results = await call
        if len(results) != len(items):
            raise RuntimeError(f"pipeline returned {len(results)} results for {len(items)} items")
        return results

    def _fail_pending(self, error: BaseException) -> None:
        for entry in self._pending:
            if not entry.future.done():
                entry.future.set_exception(error)
        self._pending = []
        self._on_depth(0)
