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


# ---------------------------------------------------------------- an idle device never waits
#
# These tests decide nothing by timing: a fake device that the test opens and closes, a fake clock,
# and batch_wait_s far longer than any test (a batcher that waited would hit the guard timeout).

GUARD_S = 10.0  # a safety net against a hang; no assertion depends on it


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class GatedDevice:
    """A fake device: records each call; blocks while closed; each call advances the fake clock."""

    def __init__(self, clock: FakeClock, call_seconds: float = 1.0):
        self.clock = clock
        self.call_seconds = call_seconds
        self.calls: list[list[str]] = []
        self.open = threading.Event()
        self.open.set()
        self.entered = threading.Semaphore(0)

    def __call__(self, items):
        self.calls.append([text for _, text in items])
        self.entered.release()
        assert self.open.wait(GUARD_S)
        self.clock.now += self.call_seconds
        return [text.upper() for _, text in items]

    async def wait_entered(self) -> None:
        assert await asyncio.to_thread(self.entered.acquire, True, GUARD_S), "the device was never called"


def gated(max_batch_size=4, batch_wait_s=3600.0, call_seconds=1.0):
    clock = FakeClock()
    device = GatedDevice(clock, call_seconds)
    stats = []
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
    batcher = DynamicBatcher(
        device, lambda item: item[0], executor, max_batch_size=max_batch_size, batch_wait_s=batch_wait_s,
        max_queue_size=64, on_batch=stats.append, clock=clock,
    )  # fmt: skip
    return batcher, device, clock, stats


def run_guarded(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, GUARD_S))


async def settle():
    """Let every ready task (the dispatcher included) run until it blocks."""
    for _ in range(20):
        await asyncio.sleep(0)


def test_an_idle_batcher_runs_a_lone_request_at_once_whatever_batch_wait_says():
    batcher, device, _, stats = gated(batch_wait_s=3600.0)

    assert run_guarded(batcher.submit([("k", "alone")])) == ["ALONE"]
    assert device.calls == [["alone"]]
    assert stats[0].held_s == 0 and stats[0].queue_waits == (0.0,)


def test_requests_arriving_while_the_device_is_busy_form_the_next_batch_without_waiting():
    batcher, device, _, stats = gated(max_batch_size=8)

    async def scenario():
        device.open.clear()
        first = asyncio.ensure_future(batcher.submit([("k", "a")]))
        await device.wait_entered()  # "a" runs; the device is busy
        queued = [asyncio.ensure_future(batcher.submit([("k", text)])) for text in ("b", "c", "d")]
        await settle()
        device.open.set()
        return await asyncio.gather(first, *queued)

    assert run_guarded(scenario()) == [["A"], ["B"], ["C"], ["D"]]
    assert device.calls == [["a"], ["b", "c", "d"]]
    assert [batch.held_s for batch in stats] == [0, 0]


def test_a_full_queue_is_split_into_max_batch_size_calls_back_to_back():
    batcher, device, _, stats = gated(max_batch_size=2)

    async def scenario():
        device.open.clear()
        first = asyncio.ensure_future(batcher.submit([("k", "a")]))
        await device.wait_entered()
        queued = [asyncio.ensure_future(batcher.submit([("k", text)])) for text in "bcde"]
        await settle()
        device.open.set()
        await asyncio.gather(first, *queued)

    run_guarded(scenario())
    assert device.calls == [["a"], ["b", "c"], ["d", "e"]]
    assert all(batch.held_s == 0 for batch in stats)


def test_items_with_incompatible_parameters_never_wait_for_each_other():
    batcher, device, _, stats = gated()

    async def scenario():
        device.open.clear()
        first = asyncio.ensure_future(batcher.submit([("64x64", "a0")]))
        await device.wait_entered()
        queued = [
            asyncio.ensure_future(batcher.submit([item]))
            for item in (("64x64", "a1"), ("128x128", "b1"), ("64x64", "a2"))
        ]
        await settle()
        device.open.set()
        await asyncio.gather(first, *queued)

    run_guarded(scenario())
    assert device.calls == [["a0"], ["a1", "a2"], ["b1"]]
    assert all(batch.held_s == 0 for batch in stats)


def test_right_after_a_batch_of_several_the_queue_is_held_for_as_many_as_came_before():
    # A closed loop of 3 clients: their next requests arrive one by one after the batch of 3.
    batcher, device, _, stats = gated(max_batch_size=8, batch_wait_s=30.0, call_seconds=30.0)

    async def scenario():
        await asyncio.gather(*(batcher.submit([("k", text)]) for text in "abc"))
        later = []
        for text in "def":
            later.append(asyncio.ensure_future(batcher.submit([("k", text)])))
            await settle()
        await asyncio.gather(*later)

    run_guarded(scenario())
    assert device.calls == [["a", "b", "c"], ["d", "e", "f"]]


def test_a_held_queue_runs_as_soon_as_an_item_with_other_parameters_arrives():
    batcher, device, _, stats = gated(max_batch_size=8, batch_wait_s=30.0, call_seconds=30.0)

    async def scenario():
        await asyncio.gather(*(batcher.submit([("k", text)]) for text in "abc"))
        held = asyncio.ensure_future(batcher.submit([("k", "d")]))
        await settle()
        assert device.calls == [["a", "b", "c"]]  # "d" is held for company
        other = asyncio.ensure_future(batcher.submit([("other", "x")]))
        await asyncio.gather(held, other)

    run_guarded(scenario())
    assert device.calls == [["a", "b", "c"], ["d"], ["x"]]


def test_no_hold_once_the_last_batch_is_older_than_batch_wait():
    batcher, device, clock, stats = gated(max_batch_size=8, batch_wait_s=0.5, call_seconds=30.0)

    async def scenario():
        await asyncio.gather(*(batcher.submit([("k", text)]) for text in "abc"))
        clock.now += 0.5  # the clients went quiet for batch_wait
        return await batcher.submit([("k", "d")])

    assert run_guarded(scenario()) == ["D"]
    assert device.calls == [["a", "b", "c"], ["d"]]
    assert stats[-1].held_s == 0


def test_batch_wait_zero_never_holds():
    batcher, device, _, stats = gated(max_batch_size=8, batch_wait_s=0.0)

    async def scenario():
        await asyncio.gather(*(batcher.submit([("k", text)]) for text in "abc"))
        return await batcher.submit([("k", "d")])

    assert run_guarded(scenario()) == ["D"]
    assert device.calls == [["a", "b", "c"], ["d"]]


def _batcher_calls_of_lone_requests(max_batch_size: int, batch_wait_s: float, count: int) -> tuple[list, list]:
    """For each of ``count`` lone requests in a row on an idle batcher (after a first one, which
    starts the dispatcher): the functions of predictor.batching it ran, in order, on every thread;
    and the batches' stats."""
    import sys

    batcher, device, clock, stats = gated(max_batch_size=max_batch_size, batch_wait_s=batch_wait_s, call_seconds=0.001)
    calls: list[str] = []

    def profile(frame, event, arg):
        if event == "call" and frame.f_code.co_filename.endswith("predictor/batching.py"):
            calls.append(f"{threading.current_thread().name.split('_')[0]}:{frame.f_code.co_name}")

    async def scenario():
        per_request = []
        await batcher.submit([("k", "first")])
        for index in range(count):
            clock.now += 1.0  # the client thinks between requests (no timing: the fake clock)
            threading.setprofile(profile)
            sys.setprofile(profile)
            try:
                await batcher.submit([("k", f"lone {index}")])
                await settle()  # the dispatcher finishes its round and waits for the next arrival
            finally:
                sys.setprofile(None)
                threading.setprofile(None)
            per_request.append(list(calls))
            calls.clear()
        return per_request

    per_request = run_guarded(scenario())
    assert device.calls == [["first"]] + [[f"lone {index}"] for index in range(count)]
    return per_request, stats


def test_a_lone_request_takes_the_same_batcher_path_whatever_max_batch_size_says():
    """Issue 18: at concurrency 1 the default server (max_batch_size 4, batch_wait 5 ms) must do
    exactly what ``--max_batch_size 1`` does: the same batcher functions, in the same order, on
    the same threads (the inference thread runs the device call only), and never a hold."""
    default, default_stats = _batcher_calls_of_lone_requests(max_batch_size=4, batch_wait_s=0.005, count=3)
    one_at_a_time, _ = _batcher_calls_of_lone_requests(max_batch_size=1, batch_wait_s=0.005, count=3)

    assert all("MainThread:_take_batch" in calls for calls in default)  # the profile saw the dispatcher's round
    assert default == one_at_a_time
    assert [batch.held_s for batch in default_stats] == [0.0] * 4
