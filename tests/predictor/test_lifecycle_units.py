"""The pieces behind the lifecycle tests: failure classification, deadlines, the batcher under device faults.

The behaviour over real HTTP and gRPC is in test_lifecycle.py; these pin down the rules it relies on.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from predictor import device_health
from predictor.batching import DynamicBatcher, QueueFullError
from predictor.lifecycle import DeviceOutOfMemory, DeviceUnhealthy, Lifecycle, ModelLoading, ShuttingDown


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB"), device_health.OUT_OF_MEMORY),
        (RuntimeError("CUDA error: out of memory"), device_health.OUT_OF_MEMORY),
        (torch.AcceleratorError("CUDA error: device-side assert triggered"), device_health.UNRECOVERABLE),
        (RuntimeError("CUDA error: an illegal memory access was encountered"), device_health.UNRECOVERABLE),
        (RuntimeError("CUBLAS_STATUS_EXECUTION_FAILED when calling cublasGemmEx"), device_health.UNRECOVERABLE),
        (torch.AcceleratorError("CUDA error: unknown error"), device_health.UNRECOVERABLE),
        (ValueError("height must be a multiple of 8"), device_health.OTHER),
        (IndexError("index out of range in self"), device_health.OTHER),
    ],
)
def test_device_errors_are_classified_by_type_then_message(error, kind):
    assert device_health.classify(error) == kind


def test_the_derived_deadline_scales_with_the_work_and_has_a_floor():
    # a warm-up of 2 s for 1 unit of work: a call of 30 units may take 10 x 2 x 30 = 600 s
    assert device_health.derived_deadline(2.0, 1.0, 30.0) == pytest.approx(600.0)
    # small calls never get less than the floor, nor less than the warm-up's own scale
    assert device_health.derived_deadline(0.1, 4.0, 1.0) == device_health.MIN_DERIVED_DEADLINE_S
    assert device_health.derived_deadline(0.0, 1.0, 1.0) == device_health.FALLBACK_DEADLINE_S


def test_admission_says_why_a_request_cannot_start():
    lifecycle = Lifecycle("sd")
    assert isinstance(lifecycle.rejection(), ModelLoading)
    lifecycle.mark_loaded()
    assert lifecycle.rejection() is None and lifecycle.live
    lifecycle.begin_drain()
    assert isinstance(lifecycle.rejection(), ShuttingDown) and lifecycle.live
    lifecycle.mark_unhealthy("device-side assert")
    assert isinstance(lifecycle.rejection(), DeviceUnhealthy) and not lifecycle.live


def test_a_request_counts_once_in_flight_however_deep_it_is_tracked():
    lifecycle = Lifecycle("sd")

    async def scenario():
        with lifecycle.track():
            with lifecycle.track():  # the REST middleware, then the model's predict
                assert lifecycle.inflight == 1
        return lifecycle.inflight, await lifecycle.wait_idle(0)

    assert asyncio.run(scenario()) == (0, True)


# ----------------------------------------------------------------------------- the batcher under faults


class FaultyDevice:
    """Records each call; "oom" items fail when batched, "oom-always" always, "assert" is unrecoverable."""

    def __init__(self):
        self.calls: list[list[str]] = []
        self.release = threading.Event()

    def __call__(self, items):
        self.calls.append(list(items))
        if "hold" in items:
            self.release.wait(10)
        if "hang" in items:
            self.release.wait(10)
        if "assert" in items:
            raise torch.AcceleratorError("CUDA error: device-side assert triggered")
        if "oom-always" in items or (len(items) > 1 and "oom" in items):
            raise torch.OutOfMemoryError("CUDA out of memory")
        return [item.upper() for item in items]


def batcher_for(device, failures: list | None = None, **overrides) -> DynamicBatcher:
    settings = dict(max_batch_size=4, batch_wait_s=0.0, max_queue_size=2)
    settings.update(overrides)
    return DynamicBatcher(
        device, lambda item: "same", ThreadPoolExecutor(1), **settings,
        on_device_failure=lambda kind, reason: (failures if failures is not None else []).append(kind),
    )  # fmt: skip


def test_a_cancelled_request_leaves_the_queue_at_once_and_never_reaches_the_device():
    device = FaultyDevice()
    batcher = batcher_for(device)

    async def scenario():
        running = asyncio.ensure_future(batcher.submit(["hold"]))
        while not device.calls:
            await asyncio.sleep(0.01)
        waiting = [asyncio.ensure_future(batcher.submit([f"gone {i}"])) for i in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(QueueFullError):
            await batcher.submit(["one too many"])
        for task in waiting:
            task.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)  # the cancellations have been delivered
        assert batcher.depth == 0
        fresh = asyncio.ensure_future(batcher.submit(["fresh"]))
        device.release.set()
        return await running, await fresh

    assert asyncio.run(scenario()) == (["HOLD"], ["FRESH"])
    assert device.calls == [["hold"], ["fresh"]]


def test_out_of_memory_on_a_batch_runs_its_items_one_at_a_time():
    device, failures = FaultyDevice(), []
    batcher = batcher_for(device, failures, max_queue_size=8)

    async def scenario():
        blocker = asyncio.ensure_future(batcher.submit(["hold"]))
        while not device.calls:
            await asyncio.sleep(0.01)
        waiting = [asyncio.ensure_future(batcher.submit([item])) for item in ("oom", "b", "oom-always")]
        await asyncio.sleep(0)
        device.release.set()
        await blocker
        return await asyncio.gather(*waiting, return_exceptions=True)

    oom, b, always = asyncio.run(scenario())
    assert (oom, b) == (["OOM"], ["B"])
    assert isinstance(always, DeviceOutOfMemory)
    assert device.calls[1:] == [["oom", "b", "oom-always"], ["oom"], ["b"], ["oom-always"]]
    assert failures == [device_health.OUT_OF_MEMORY, device_health.OUT_OF_MEMORY]
    assert batcher.unusable is None


def test_an_overdue_call_makes_the_device_unusable_and_fails_everything_waiting():
    device, failures = FaultyDevice(), []
    batcher = batcher_for(device, failures, deadline_for=lambda items: 0.2)

    async def scenario():
        stuck = asyncio.ensure_future(batcher.submit(["hang"]))
        while not device.calls:
            await asyncio.sleep(0.01)
        queued = asyncio.ensure_future(batcher.submit(["queued"]))
        results = await asyncio.gather(stuck, queued, return_exceptions=True)
        with pytest.raises(DeviceUnhealthy):
            await batcher.submit(["later"])
        device.release.set()
        return results

    stuck, queued = asyncio.run(scenario())
    assert isinstance(stuck, DeviceUnhealthy) and "deadline" in str(stuck)
    assert isinstance(queued, DeviceUnhealthy)
    assert failures == ["deadline"] and device.calls == [["hang"]]


def test_an_unrecoverable_error_fails_its_batch_and_makes_the_device_unusable():
    device, failures = FaultyDevice(), []
    batcher = batcher_for(device, failures)

    async def scenario():
        first = await asyncio.gather(batcher.submit(["assert"]), return_exceptions=True)
        with pytest.raises(DeviceUnhealthy):
            await batcher.submit(["later"])
        return first[0]

    error = asyncio.run(scenario())
    assert isinstance(error, torch.AcceleratorError)
    assert failures == [device_health.UNRECOVERABLE]


def test_exception_objects_a_task_returns_as_results_stay_results():
    """Image tasks return a decoding error as one item's result (that request gets 400, the others their answer)."""
    problem = ValueError("image could not be decoded")
    batcher = batcher_for(lambda items: [problem if item == "bad" else item.upper() for item in items])

    async def scenario():
        return await asyncio.gather(batcher.submit(["bad"]), batcher.submit(["good"]))

    assert asyncio.run(scenario()) == [[problem], ["GOOD"]]
