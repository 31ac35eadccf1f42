"""The measurements: (a) interleaved latency, (b) closed-loop throughput, (c) ready under load."""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Callable
from typing import Any

from bench.clients import HttpConnection, RestClient
from bench.servers import MODEL_NAME, READY_INFLIGHT, Server
from bench.stats import summarize

CONCURRENCY_LEVELS = (1, 4, 16)
READY_P99_GOAL_MS = 50.0


def measure_latency(
    calls: dict[str, Callable[[int], None]], repeats: int, warmup: int, gap_s: float, on_direct: Callable[[], None]
) -> dict[str, list[float]]:
    """Interleave the calls: every round runs each once, in an order rotated round by round.

    ``gap_s`` of idle time before each call lets the previous caller's OpenMP workers stop
    spinning, so no call pays for the one before it.
    """
    names = list(calls)
    for round_index in range(warmup):  # warm-up rounds are numbered -1, -2, ...: callers may skip them
        for name in names:
            calls[name](-1 - round_index)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            time.sleep(gap_s)
            started = time.perf_counter()
            calls[name](round_index)
            samples[name].append(time.perf_counter() - started)
            if name == "direct":
                on_direct()
    return samples


# ----------------------------------------------------------------------------- (b) throughput


def closed_loop(
    make_client: Callable[[], Any], concurrency: int, total: int, infer_args: dict, keep_samples: bool = False
) -> dict:
    """``concurrency`` clients, each sending its next request when the last returns, ``total`` in all."""
    lock = threading.Lock()
    issued = 0
    latencies: list[float] = []
    errors: list[str] = []
    clients = [make_client() for _ in range(concurrency)]
    barrier = threading.Barrier(concurrency + 1)

    def worker(client) -> None:
        nonlocal issued
        barrier.wait()
        while True:
            with lock:
                if issued >= total or errors:
                    return
                issued += 1
                seed = issued
            started = time.perf_counter()
            try:
                client.infer(seed=seed, **infer_args)
            except Exception as error:  # noqa: BLE001 - reported, ends the level
                with lock:
                    errors.append(repr(error))
                return
            with lock:
                latencies.append(time.perf_counter() - started)

    threads = [threading.Thread(target=worker, args=(client,), daemon=True) for client in clients]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    for client in clients:
        client.close()
    if errors:
        raise RuntimeError(f"closed loop at concurrency {concurrency}: {errors[0]}")
    result = summarize(latencies)
    result.update(
        concurrency=concurrency,
        requests=len(latencies),
        wall_s=round(wall, 3),
        images_per_s=round(len(latencies) / wall, 3),
    )
    if keep_samples:
        result["samples_s"] = latencies
    return result


# ----------------------------------------------------------------------------- (c) ready under load


def ready_under_load(server: Server, inflight: int, duration_s: float, interval_s: float, infer_args: dict) -> dict:
    """Keep ``inflight`` inferences in flight (closed loop) and poll the model's ready endpoint."""
    stop = threading.Event()
    completed = 0
    errors: list[str] = []
    lock = threading.Lock()

    def worker(index: int) -> None:
        nonlocal completed
        client = RestClient(server.http)
        seed = index * 100_000
        try:
            while not stop.is_set():
                seed += 1
                client.infer(seed=seed, **infer_args)
                with lock:
                    completed += 1
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(repr(error))
        finally:
            client.close()

    before = server.metrics()
    workers = [threading.Thread(target=worker, args=(index,), daemon=True) for index in range(inflight)]
    for thread in workers:
        thread.start()
    time.sleep(min(1.0, duration_s / 4))  # let every request reach the server
    latencies: list[float] = []
    failures = 0
    depths: list[float] = []
    poller = HttpConnection(server.http, timeout=10)
    path = f"/v2/models/{MODEL_NAME}/ready"
    poller.request("GET", path)  # opens the keep-alive connection
    deadline = time.perf_counter() + duration_s
    next_depth_check = time.perf_counter() + duration_s / 2
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        try:
            status, data = poller.request("GET", path)
            ok = status == 200 and json.loads(data).get("ready") is True
        except (OSError, http.client.HTTPException, ValueError):
            ok = False
        elapsed = time.perf_counter() - started
        if ok:
            latencies.append(elapsed)
        else:
            failures += 1
        if started >= next_depth_check:
            depths.append(server.metrics().get("predictor_queue_depth", 0.0))
            next_depth_check = deadline + 1
        time.sleep(max(0.0, interval_s - (time.perf_counter() - started)))
    poller.close()
    with lock:
        completed_in_window = completed
    stop.set()
    for thread in workers:
        thread.join(timeout=600)
    if errors:
        raise RuntimeError(f"inferences during the ready poll failed: {errors[0]}")
    after = server.metrics()
    result = summarize(latencies)
    result.update(
        inflight=inflight,
        steps=infer_args["steps"],
        duration_s=duration_s,
        poll_interval_ms=interval_s * 1000,
        failures=failures,
        inferences_completed=completed_in_window,
        queue_depth_midway=depths[0] if depths else None,
        batches=after.get("predictor_batch_size_count", 0) - before.get("predictor_batch_size_count", 0),
    )
    return result


def run_throughput(servers: dict[str, Server], specs: dict, image: dict, requests: int) -> dict:
    """(b): each server at each concurrency level, with the mean batch size it formed."""
    print("(b) throughput: closed loop over REST ...", flush=True)
    results: dict[str, list[dict]] = {}
    for key in ("batching", "no_batching"):
        server = servers[key]
        levels = []
        for concurrency in CONCURRENCY_LEVELS:
            closed_loop(lambda s=server: RestClient(s.http), concurrency, concurrency, image)  # warm-up
            before = server.metrics()
            level = closed_loop(lambda s=server: RestClient(s.http), concurrency, requests, image)
            after = server.metrics()
            batches = after.get("predictor_batch_size_count", 0) - before.get("predictor_batch_size_count", 0)
            items = after.get("predictor_batch_size_sum", 0) - before.get("predictor_batch_size_sum", 0)
            level["mean_batch_size"] = round(items / batches, 2) if batches else None
            levels.append(level)
            print(
                f"  {key:<12} c={concurrency:<3} {level['images_per_s']:8.2f} img/s  "
                f"p50 {level['p50_ms']:8.1f} ms  batch {level['mean_batch_size']}",
                flush=True,
            )
        results[specs[key].label] = levels
    return {"requests_per_level": requests, "servers": results}


def run_ready(servers: dict[str, Server], specs: dict, load: dict, seconds: float) -> dict:
    """(c): the ready endpoint's latency on each server while it is kept busy."""
    print(f"(c) ready latency with {READY_INFLIGHT} inferences in flight ...", flush=True)
    ready_results = {}
    for key in ("batching", "no_batching"):
        ready_results[specs[key].label] = ready_under_load(servers[key], READY_INFLIGHT, seconds, 0.01, load)
    p99s = [r["p99_ms"] for r in ready_results.values() if r.get("n")]
    return {
        "steps": load["steps"],
        "poll_interval_ms": 10.0,
        "servers": ready_results,
        "goal_p99_ms": READY_P99_GOAL_MS,
        "goal_met": (max(p99s) < READY_P99_GOAL_MS) if p99s else None,
    }
