"""(a): the pipeline called directly against the same image served over REST and gRPC, interleaved."""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from bench.clients import GrpcClient, RestClient
from bench.direct import DirectPipeline
from bench.measure import measure_latency
from bench.report import print_latency
from bench.servers import Server
from bench.stats import summarize

LATENCY_RATIO_GOAL = 1.10


def run_latency(args: argparse.Namespace, servers: dict[str, Server], direct: DirectPipeline, image: dict) -> dict:
    """Direct call, REST and gRPC on the no-batching server, REST on the batching one: one round each in turn."""
    print("(a) latency: direct vs REST vs gRPC, interleaved ...", flush=True)
    no_batch, batch = servers["no_batching"], servers["batching"]
    rest, grpc, rest_batch = RestClient(no_batch.http), GrpcClient(no_batch.grpc), RestClient(batch.http)
    encode_times: list[float] = []

    def time_encode() -> None:
        started = time.perf_counter()
        direct.encode_last()
        encode_times.append(time.perf_counter() - started)

    client_cpu: dict[str, list[float]] = {"rest": [], "grpc": []}
    calls = {
        "direct": lambda i: direct.infer(seed=1, **image),
        "rest": _with_cpu(client_cpu["rest"], rest.infer, image),
        "grpc": _with_cpu(client_cpu["grpc"], grpc.infer, image),
        "rest_batching": lambda i: rest_batch.infer(seed=1, **image),
    }
    before = no_batch.metrics()
    samples = measure_latency(calls, args.repeats, 2 if args.quick else 3, args.gap_ms / 1000, time_encode)
    after = no_batch.metrics()
    for client in (rest, grpc, rest_batch):
        client.close()
    result = latency_section(samples, _server_pipeline_mean_ms(before, after))
    result.update(
        repeats=args.repeats,
        gap_ms=args.gap_ms,
        labels={
            "direct": "direct pipeline call (this process)",
            "rest": "v2 REST, no-batching server",
            "grpc": "v2 gRPC, no-batching server",
            "rest_batching": f"v2 REST, batching server (waits up to {args.batch_wait_ms:g} ms)",
        },
        encode=summarize(encode_times),
        client_cpu={name: summarize(values) for name, values in client_cpu.items()},
    )
    print_latency(result)
    return result


def _with_cpu(cpu_samples: list[float], infer: Callable[..., None], image: dict) -> Callable[[int], None]:
    """The call, also recording the CPU time this (the client's) thread spent on it."""

    def call(round_index: int) -> None:
        started = time.thread_time()
        infer(seed=1, **image)
        if round_index >= 0:  # not a warm-up round
            cpu_samples.append(time.thread_time() - started)

    return call


def _server_pipeline_mean_ms(before: dict[str, float], after: dict[str, float]) -> float | None:
    """Mean pipeline call inside the server between two metrics scrapes."""
    calls = after.get("predictor_pipeline_seconds_count", 0) - before.get("predictor_pipeline_seconds_count", 0)
    seconds = after.get("predictor_pipeline_seconds_sum", 0) - before.get("predictor_pipeline_seconds_sum", 0)
    return round(1000 * seconds / calls, 3) if calls else None


def latency_section(samples: dict[str, list[float]], server_mean: float | None) -> dict:
    """Statistics of each path and its ratios to the direct call."""
    stats = {name: summarize(values) for name, values in samples.items()}
    base50, base90 = stats["direct"]["p50_ms"], stats["direct"]["p90_ms"]
    ratio50 = {name: round(s["p50_ms"] / base50, 3) for name, s in stats.items() if name != "direct"}
    ratio90 = {name: round(s["p90_ms"] / base90, 3) for name, s in stats.items() if name != "direct"}
    # median over rounds of served/direct within the round: robust to the machine drifting between rounds
    paired = {
        name: round(statistics.median(v / d for v, d in zip(values, samples["direct"], strict=True)), 3)
        for name, values in samples.items()
        if name != "direct"
    }
    return {
        "samples": stats,
        "ratio_p50": ratio50,
        "ratio_p90": ratio90,
        "ratio_paired_median": paired,
        "server_pipeline_mean_ms": server_mean,
        # what serving adds to a request: served mean minus the mean pipeline call in the server
        "overhead_mean_ms": {
            name: round(stats[name]["mean_ms"] - server_mean, 3) if server_mean else None for name in ("rest", "grpc")
        },
        "goal_ratio_p50": LATENCY_RATIO_GOAL,
        "goal_met": {name: ratio50[name] <= LATENCY_RATIO_GOAL for name in ("rest", "grpc")},
    }
