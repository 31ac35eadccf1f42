"""Dynamic batching: coalesce compatible requests, keep order, bound the queue, isolate failures."""

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from predictor.batching import DynamicBatcher, QueueFullError


class Recorder:
    """A stand-in pipeline: records each call's items; results are the items upper-cased."""

    def __init__(self, delay: float = 0.0, fail_on: str | None = None):
        self.calls: list[list[tuple[str, str]]] = []
        self.delay = delay
        self.fail_on = fail_on
        self.thread_names: set[str] = set()

    def __call__(self, items):
        self.thread_names.add(threading.current_thread().name)
        self.calls.append(list(items))
        time.sleep(self.delay)
        if self.fail_on and any(text == self.fail_on for _, text in items):
            raise RuntimeError("pipeline failed")
        return [text.upper() for _, text in items]


def make(recorder, **overrides):
    settings = dict(max_batch_size=4, batch_wait_s=0.05, max_queue_size=16)
    settings.update(overrides)
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
    return DynamicBatcher(recorder, lambda item: item[0], executor, **settings)


def run(coroutine):
    return asyncio.run(coroutine)


def test_concurrent_compatible_requests_share_one_pipeline_call():
    recorder = Recorder()
    batcher = make(recorder)

    async def scenario():
        return await asyncio.gather(*(batcher.submit([("k", f"p{i}")]) for i in range(4)))

    assert run(scenario()) == [["P0"], ["P1"], ["P2"], ["P3"]]
    assert len(recorder.calls) == 1 and len(recorder.calls[0]) == 4


def test_results_go_back_to_the_right_callers_for_multi_item_requests():
    batcher = make(Recorder())

    async def scenario():
        return await asyncio.gather(batcher.submit([("k", "a"), ("k", "b")]), batcher.submit([("k", "c")]))

    assert run(scenario()) == [["A", "B"], ["C"]]


def test_batches_never_exceed_max_batch_size():
    recorder = Recorder()
    batcher = make(recorder, max_batch_size=3)

    async def scenario():
        return await asyncio.gather(*(batcher.submit([("k", str(i))]) for i in range(7)))

    run(scenario())
    assert [len(call) for call in recorder.calls] == [3, 3, 1]


def test_incompatible_parameters_are_never_mixed_in_one_call():
    recorder = Recorder()
    batcher = make(recorder)

    async def scenario():
        return await asyncio.gather(*(batcher.submit([("64x64" if i % 2 else "128x128", str(i))]) for i in range(6)))

    run(scenario())
    for call in recorder.calls:
        assert len({key for key, _ in call}) == 1
    assert sorted(len(call) for call in recorder.calls) == [3, 3]


def test_a_lone_request_waits_at_most_batch_wait():
    batcher = make(Recorder(), batch_wait_s=0.05)

    async def scenario():
        started = time.monotonic()
        await batcher.submit([("k", "x")])
        return time.monotonic() - started

    assert run(scenario()) < 1.0


def test_full_queue_rejects_instead_of_growing():
    recorder = Recorder(delay=0.3)
    batcher = make(recorder, max_batch_size=1, max_queue_size=2, batch_wait_s=0)

    async def scenario():
        first = asyncio.ensure_future(batcher.submit([("k", "running")]))
        await asyncio.sleep(0.1)  # now running on the inference thread, queue empty
        queued = [asyncio.ensure_future(batcher.submit([("k", f"q{i}")])) for i in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(QueueFullError, match="queue full"):
            await batcher.submit([("k", "one too many")])
        return await asyncio.gather(first, *queued)

    assert run(scenario()) == [["RUNNING"], ["Q0"], ["Q1"]]


def test_a_request_larger_than_the_free_queue_is_rejected_whole():
    batcher = make(Recorder(), max_queue_size=2)

    async def scenario():
        await batcher.submit([("k", "a"), ("k", "b"), ("k", "c")])

    with pytest.raises(QueueFullError):
        run(scenario())


def test_a_failing_batch_fails_its_callers_and_the_next_batch_still_runs():
    recorder = Recorder(fail_on="bad")
    batcher = make(recorder, max_batch_size=1)

    async def scenario():
        failed = batcher.submit([("k", "bad")])
        with pytest.raises(RuntimeError, match="pipeline failed"):
            await failed
        return await batcher.submit([("k", "good")])

    assert run(scenario()) == ["GOOD"]


def test_cancelled_requests_are_dropped_before_their_batch_runs():
    recorder = Recorder(delay=0.2)
    batcher = make(recorder, max_batch_size=1, batch_wait_s=0)

    async def scenario():
        first = asyncio.ensure_future(batcher.submit([("k", "first")]))
        await asyncio.sleep(0.05)
        abandoned = asyncio.ensure_future(batcher.submit([("k", "abandoned")]))
        await asyncio.sleep(0)
        abandoned.cancel()
        kept = await batcher.submit([("k", "kept")])
        return await first, kept

    assert run(scenario()) == (["FIRST"], ["KEPT"])
    assert ("k", "abandoned") not in [item for call in recorder.calls for item in call]


def test_pipeline_runs_on_the_inference_thread_not_the_event_loop():
    recorder = Recorder()
    run(make(recorder).submit([("k", "x")]))
    assert all(name.startswith("inference") for name in recorder.thread_names)


def test_event_loop_stays_responsive_while_a_batch_runs():
    batcher = make(Recorder(delay=0.5), batch_wait_s=0)

    async def scenario():
        job = asyncio.ensure_future(batcher.submit([("k", "slow")]))
        await asyncio.sleep(0.05)
        started = time.monotonic()
        await asyncio.sleep(0.01)  # would be delayed ~0.5 s if the pipeline blocked the loop
        lag = time.monotonic() - started
        await job
        return lag

    assert run(scenario()) < 0.2
