"""``python -m predictor.bench``: what serving costs, measured against the bare pipeline.

One run measures, against one model (a tiny random Stable Diffusion pipeline built in a temp
dir unless ``--model_dir`` is given):

(a) latency: the diffusers pipeline called directly in this process, interleaved with the same
    image requested over KServe v2 REST and gRPC from a server started as a subprocess; p50/p90
    and the ratio served/direct (goal: p50 ratio <= 1.10);
(b) throughput: closed-loop REST clients at concurrency 1/4/16 against a server with dynamic
    batching and one without; images/s and latency percentiles;
(c) ``/v2/models/{name}/ready`` latency while 16 long inferences are in flight (goal p99 < 50 ms).

It prints tables, writes ``--out DIR/bench.json`` (and ``bench.md``, the same tables in
Markdown) and always stops the servers it started. Performance goals are reported, never
asserted: this is a benchmark, not a test.

This process must not import kserve (nor predictor modules that do): kserve and
``tritonclient.grpc`` clash in one process (protobuf descriptors). The servers are the real
``python -m predictor`` in subprocesses.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import http.client
import io
import json
import os
import platform
import re
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MODEL_NAME = "sd"
PROMPT = "a photo of an astronaut riding a horse on mars"
LATENCY_RATIO_GOAL = 1.10
READY_P99_GOAL_MS = 50.0
CONCURRENCY_LEVELS = (1, 4, 16)
READY_INFLIGHT = 16
PNG_COMPRESS_LEVEL = 1


# ----------------------------------------------------------------------------- statistics


def percentile(samples: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default) of a non-empty list."""
    ordered = sorted(samples)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * q / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize(seconds: list[float]) -> dict[str, float]:
    """Milliseconds: p50, p90, p99, mean, min, max and the sample count."""
    if not seconds:
        return {"n": 0}
    ms = [value * 1000.0 for value in seconds]
    return {
        "n": len(ms),
        "p50_ms": round(percentile(ms, 50), 3),
        "p90_ms": round(percentile(ms, 90), 3),
        "p99_ms": round(percentile(ms, 99), 3),
        "mean_ms": round(statistics.fmean(ms), 3),
        "min_ms": round(min(ms), 3),
        "max_ms": round(max(ms), 3),
    }


# ----------------------------------------------------------------------------- servers


def free_ports(count: int) -> list[int]:
    """Distinct free loopback ports (all sockets stay open until every port is chosen)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass
class ServerSpec:
    """A server's batching flags; None leaves the flag out (the predictor's default)."""

    label: str
    max_batch_size: int | None
    batch_wait_ms: float | None


@dataclass
class Server:
    """A ``python -m predictor`` subprocess on free loopback ports."""

    spec: ServerSpec
    model_dir: str
    device: str
    dtype: str
    log_path: Path
    env: dict[str, str]
    extra_args: list[str] = field(default_factory=list)
    process: subprocess.Popen | None = None
    http_port: int = 0
    grpc_port: int = 0
    _log_file: Any = None

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "predictor",
            "--model_name",
            MODEL_NAME,
            "--model_dir",
            self.model_dir,
            "--http_port",
            str(self.http_port),
            "--grpc_port",
            str(self.grpc_port),
            "--device",
            self.device,
            "--dtype",
            self.dtype,
            *(["--max_batch_size", str(self.spec.max_batch_size)] if self.spec.max_batch_size is not None else []),
            *(["--batch_wait_ms", str(self.spec.batch_wait_ms)] if self.spec.batch_wait_ms is not None else []),
            "--max_queue_size",
            str(max(64, 2 * READY_INFLIGHT)),
            *self.extra_args,
        ]

    def start(self) -> None:
        self.http_port, self.grpc_port = free_ports(2)
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            self.command(), cwd=REPO, env=self.env, stdout=self._log_file, stderr=subprocess.STDOUT
        )

    def wait_ready(self, timeout: float) -> None:
        import requests

        deadline = time.monotonic() + timeout
        with requests.Session() as session:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"server {self.spec.label} exited with {self.process.returncode}:\n{self.log_tail()}"
                    )
                try:
                    reply = session.get(f"{self.http}/v2/models/{MODEL_NAME}/ready", timeout=2)
                    if reply.status_code == 200 and reply.json().get("ready"):
                        return
                except (requests.RequestException, ValueError):
                    pass
                time.sleep(0.1)
        raise RuntimeError(f"server {self.spec.label} not ready after {timeout:.0f}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def cpu_seconds(self) -> float:
        """CPU time (user + system, all threads) the server process has used so far (Linux /proc)."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def metrics(self) -> dict[str, float]:
        """The predictor's own Prometheus samples (``predictor_*``), summed over labels."""
        import requests

        text = requests.get(f"{self.http}/metrics", timeout=5).text
        values: dict[str, float] = {}
        for line in text.splitlines():
            match = re.match(r"^(predictor_[a-z_]+)(?:\{[^}]*\})?\s+([0-9.eE+-]+)$", line)
            if match and "_bucket" not in match.group(1):
                values[match.group(1)] = values.get(match.group(1), 0.0) + float(match.group(2))
        return values


# ----------------------------------------------------------------------------- clients


def v2_rest_body(prompt: str, steps: int, height: int, width: int, seed: int) -> dict:
    return {
        "inputs": [{"name": "prompt", "datatype": "BYTES", "shape": [1], "data": [prompt]}],
        "parameters": {"num_inference_steps": steps, "height": height, "width": width, "seed": seed},
    }


class HttpConnection:
    """One keep-alive HTTP/1.1 connection through ``http.client``.

    The benchmark measures the server, so its client should cost little: on the 2-core machine
    ``requests`` spent ~1.6 ms of CPU per v2 call against ~0.5 ms for ``http.client``.
    """

    def __init__(self, base_url: str, timeout: float = 600.0):
        parsed = urllib.parse.urlsplit(base_url)
        self.host, self.port, self.timeout = parsed.hostname, parsed.port, timeout
        self.conn: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        for attempt in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                self.conn.request(method, path, body=body, headers=headers)
                reply = self.conn.getresponse()
                return reply.status, reply.read()
            except (http.client.HTTPException, ConnectionError):
                self.close()  # e.g. the server closed an idle keep-alive connection: reconnect once
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class RestClient:
    """v2 REST infer over one keep-alive connection (one client per thread)."""

    def __init__(self, base_url: str):
        self.http = HttpConnection(base_url)
        self.path = f"/v2/models/{MODEL_NAME}/infer"

    def infer(self, steps: int, height: int, width: int, seed: int) -> None:
        body = json.dumps(v2_rest_body(PROMPT, steps, height, width, seed)).encode()
        status, data = self.http.request("POST", self.path, body)
        if status != 200:
            raise RuntimeError(f"REST infer: HTTP {status}: {data[:300]!r}")
        outputs = json.loads(data)["outputs"]
        if outputs[0]["name"] != "image" or len(outputs[0]["data"]) != 1:
            raise RuntimeError(f"REST infer: unexpected outputs {str(outputs)[:300]}")

    def close(self) -> None:
        self.http.close()


class FixedBodyClient:
    """v2 REST infer of one fixed request body (the classifier's text) over one keep-alive connection."""

    def __init__(self, base_url: str, body: bytes):
        self.http = HttpConnection(base_url)
        self.path = f"/v2/models/{MODEL_NAME}/infer"
        self.body = body

    def infer(self, **_ignored: Any) -> None:
        status, data = self.http.request("POST", self.path, self.body)
        if status != 200:
            raise RuntimeError(f"REST infer: HTTP {status}: {data[:300]!r}")

    def close(self) -> None:
        self.http.close()


CLASSIFIER_BODY = json.dumps(
    {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["what a lovely day for a benchmark"]}]}
).encode()


class GrpcClient:
    """v2 gRPC through tritonclient (never imported alongside kserve)."""

    def __init__(self, target: str):
        import numpy as np
        import tritonclient.grpc as grpcclient

        self._grpc = grpcclient
        self.client = grpcclient.InferenceServerClient(url=target)
        self.prompt = np.array([PROMPT.encode()], dtype=np.object_)

    def infer(self, steps: int, height: int, width: int, seed: int) -> None:
        tensor = self._grpc.InferInput("prompt", [1], "BYTES")
        tensor.set_data_from_numpy(self.prompt)
        result = self.client.infer(
            MODEL_NAME,
            [tensor],
            outputs=[self._grpc.InferRequestedOutput("image")],
            parameters={"num_inference_steps": steps, "height": height, "width": width, "seed": seed},
            client_timeout=600,
        )
        images = result.as_numpy("image")
        if images is None or images.shape[0] != 1:
            raise RuntimeError("gRPC infer: no image in the response")

    def close(self) -> None:
        self.client.close()


class DirectPipeline:
    """The diffusers pipeline loaded and called as the server's DiffusersBackend does."""

    def __init__(self, model_dir: str, device: str, dtype: str):
        import torch
        from diffusers import AutoPipelineForText2Image

        self._torch = torch
        kwargs: dict[str, Any] = {"torch_dtype": torch_dtype(dtype, device)}
        index = Path(model_dir) / "model_index.json"
        if index.is_file() and "safety_checker" in json.loads(index.read_text()):
            kwargs.update(safety_checker=None, requires_safety_checker=False)
        pipeline = AutoPipelineForText2Image.from_pretrained(model_dir, **kwargs)
        pipeline = pipeline.to(device)
        pipeline.set_progress_bar_config(disable=True)
        self.pipeline = pipeline
        self.last_image = None

    def infer(self, steps: int, height: int, width: int, seed: int) -> None:
        torch = self._torch
        generators = [torch.Generator(device="cpu").manual_seed(seed)]
        with torch.inference_mode():
            output = self.pipeline(
                prompt=[PROMPT],
                negative_prompt=None,
                num_inference_steps=steps,
                guidance_scale=7.5,
                height=height,
                width=width,
                generator=generators,
            )
        self.last_image = output.images[0]

    def encode_last(self) -> str:
        """PNG + base64 as the server encodes each image (timed apart from the pipeline call).

        The level mirrors ``predictor.pipelines.text_to_image.PNG_COMPRESS_LEVEL`` (not imported:
        that module imports kserve).
        """
        buffer = io.BytesIO()
        self.last_image.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
        return base64.b64encode(buffer.getvalue()).decode("ascii")


def torch_dtype(name: str, device: str):
    """Same rule as the server: 'auto' is float16 on CUDA and float32 elsewhere."""
    import torch

    if name == "auto":
        name = "float16" if device == "cuda" else "float32"
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


# ----------------------------------------------------------------------------- (a) latency


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


# ----------------------------------------------------------------------------- (d) default vs no batching


DEFAULT_VS_ONE = ("default", "max_batch_size_1")
LONE_P50_GOAL = 1.05  # default server's p50 at concurrency 1 / --max_batch_size 1's
THROUGHPUT_GOALS = {"tiny_sd": 2.0, "tiny_classifier": 1.5}  # at concurrency 16, default / --max_batch_size 1


def default_vs_one(
    servers: dict[str, Server], make_client: Callable[[Server], Any], infer_args: dict, rounds: int,
    lone_requests: int, loaded_requests: int, loaded_concurrency: int = 16,
) -> dict:  # fmt: skip
    """The default server against ``--max_batch_size 1``, interleaved: each round runs, on each server
    in turn (the order alternating), ``lone_requests`` at concurrency 1 (latency, server CPU per
    request) then ``loaded_requests`` at ``loaded_concurrency`` (throughput)."""
    lone: dict[str, list[float]] = {key: [] for key in servers}
    cpu = {key: 0.0 for key in servers}
    loaded_wall = {key: 0.0 for key in servers}
    batches: dict[str, list[float]] = {key: [0.0, 0.0] for key in servers}
    for server in servers.values():  # warm-up: connections, first-call costs
        closed_loop(lambda s=server: make_client(s), 1, 3, infer_args)
    for round_index in range(rounds):
        order = list(servers) if round_index % 2 == 0 else list(reversed(servers))
        for key in order:
            server = servers[key]
            cpu_before = server.cpu_seconds()
            level = closed_loop(lambda s=server: make_client(s), 1, lone_requests, infer_args, keep_samples=True)
            cpu[key] += server.cpu_seconds() - cpu_before
            lone[key] += level["samples_s"]
            before = server.metrics()
            level = closed_loop(lambda s=server: make_client(s), loaded_concurrency, loaded_requests, infer_args)
            after = server.metrics()
            loaded_wall[key] += level["wall_s"]
            for index, name in enumerate(("predictor_batch_size_count", "predictor_batch_size_sum")):
                batches[key][index] += after.get(name, 0) - before.get(name, 0)
    result: dict[str, Any] = {"servers": {}}
    for key in servers:
        stats = summarize(lone[key])
        result["servers"][key] = {
            "c1_p50_ms": stats["p50_ms"],
            "c1_p90_ms": stats["p90_ms"],
            "c1_cpu_ms_per_request": round(1000 * cpu[key] / len(lone[key]), 3),
            f"c{loaded_concurrency}_requests_per_s": round(rounds * loaded_requests / loaded_wall[key], 2),
            f"c{loaded_concurrency}_mean_batch": round(batches[key][1] / batches[key][0], 2)
            if batches[key][0]
            else None,
        }
    default, one = (result["servers"][key] for key in DEFAULT_VS_ONE)
    result["c1_p50_ratio"] = round(default["c1_p50_ms"] / one["c1_p50_ms"], 3)
    rate = f"c{loaded_concurrency}_requests_per_s"
    result[f"c{loaded_concurrency}_throughput_ratio"] = round(default[rate] / one[rate], 3)
    result["rounds"], result["lone_requests"], result["loaded_requests"] = rounds, lone_requests, loaded_requests
    return result


def build_tiny_classifier(directory: Path, env: dict[str, str]) -> str:
    """predictor.tiny_models' tiny BERT text classifier, built in a subprocess (it imports transformers)."""
    subprocess.run(
        [sys.executable, "-m", "predictor.tiny_models", str(directory), "--task", "text-classification"],
        cwd=REPO, env=env, check=True, capture_output=True,
    )  # fmt: skip
    return str(directory)


# ----------------------------------------------------------------------------- reporting


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_tables(report: dict) -> str:
    lines: list[str] = []
    meta = report["meta"]
    lines.append(
        f"Model: {meta['model']}; device {meta['device']} ({meta['device_name']}); dtype {meta['dtype']}; "
        f"{meta['height']}x{meta['width']}, {meta['steps']} steps; torch {meta['torch']}, "
        f"{meta['torch_threads']} intra-op thread(s) in both processes; {meta['cpu']}."
    )
    if "latency" in report:
        lat = report["latency"]
        lines += [
            "",
            f"(a) Latency, interleaved, {lat['repeats']} rounds (ms; ratio = served / direct)",
            "",
            "| path | p50 | p90 | mean | p50 ratio | p90 ratio | paired ratio |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for name, stats in lat["samples"].items():
            ratios = [lat[key].get(name) for key in ("ratio_p50", "ratio_p90", "ratio_paired_median")]
            lines.append(
                f"| {lat['labels'][name]} | {_fmt(stats['p50_ms'])} | {_fmt(stats['p90_ms'])} | "
                f"{_fmt(stats['mean_ms'])} | " + " | ".join(_fmt(r, 3) if r else "1" for r in ratios) + " |"
            )
        lines += [
            "",
            "p50 ratio = p50(served) / p50(direct), the goal's measure; paired ratio = median over rounds of "
            "served / direct within the round.",
        ]
        server_mean = lat.get("server_pipeline_mean_ms")
        lines += [
            "",
            f"PNG+base64 encode of one image (in the bench process): p50 {_fmt(lat['encode']['p50_ms'], 2)} ms. "
            f"Mean pipeline call inside the no-batching server during (a): {_fmt(server_mean)} ms "
            f"(direct mean {_fmt(lat['samples']['direct']['mean_ms'])} ms).",
            f"Serving overhead (served mean - mean pipeline call in the server): REST "
            f"{_fmt(lat['overhead_mean_ms']['rest'])} ms, gRPC {_fmt(lat['overhead_mean_ms']['grpc'])} ms; "
            f"client CPU per call (bench thread, p50): REST {_fmt(lat['client_cpu']['rest'].get('p50_ms'), 2)} ms, "
            f"gRPC {_fmt(lat['client_cpu']['grpc'].get('p50_ms'), 2)} ms.",
            f"Goal p50 ratio <= {LATENCY_RATIO_GOAL}: REST {_met(lat['goal_met']['rest'])}, "
            f"gRPC {_met(lat['goal_met']['grpc'])}.",
        ]
    if "throughput" in report:
        tp = report["throughput"]
        lines += [
            "",
            f"(b) Throughput, closed loop over REST, {tp['requests_per_level']} requests per level",
            "",
            "| server | concurrency | images/s | p50 ms | p90 ms | mean batch |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for label, levels in tp["servers"].items():
            for level in levels:
                lines.append(
                    f"| {label} | {level['concurrency']} | {_fmt(level['images_per_s'], 2)} | "
                    f"{_fmt(level['p50_ms'])} | {_fmt(level['p90_ms'])} | {_fmt(level.get('mean_batch_size'), 2)} |"
                )
    if "ready" in report:
        ready = report["ready"]
        lines += [
            "",
            f"(c) `/v2/models/{MODEL_NAME}/ready` latency with {READY_INFLIGHT} inferences in flight "
            f"({ready['steps']} steps each), polled every {_fmt(ready['poll_interval_ms'], 0)} ms",
            "",
            "| server | polls | p50 ms | p99 ms | max ms | failures | images done | queue depth midway |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for label, stats in ready["servers"].items():
            lines.append(
                f"| {label} | {stats['n']} | {_fmt(stats.get('p50_ms'), 2)} | {_fmt(stats.get('p99_ms'), 2)} | "
                f"{_fmt(stats.get('max_ms'), 2)} | {stats['failures']} | {stats['inferences_completed']} | "
                f"{_fmt(stats['queue_depth_midway'], 0)} |"
            )
        lines.append(f"Goal p99 < {READY_P99_GOAL_MS:.0f} ms: {_met(ready['goal_met'])}.")
    if "default_vs_one" in report:
        lines += default_vs_one_markdown(report["default_vs_one"])
    return "\n".join(lines) + "\n"


def default_vs_one_markdown(section: dict) -> list[str]:
    model = next(iter(section["models"].values()))
    lines = [
        "",
        f"(d) Default server against `--max_batch_size 1`, REST, {model['rounds']} interleaved round(s) of "
        "concurrency 1 then 16 on each server",
        "",
        "| model | server | c=1 p50 ms | c=1 p90 ms | c=1 server CPU ms/request | c=16 requests/s | c=16 mean batch |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for model_key, measured in section["models"].items():
        for key, stats in measured["servers"].items():
            lines.append(
                f"| {model_key} | {section['servers'][key]} | {_fmt(stats['c1_p50_ms'], 2)} | "
                f"{_fmt(stats['c1_p90_ms'], 2)} | {_fmt(stats['c1_cpu_ms_per_request'], 2)} | "
                f"{_fmt(stats['c16_requests_per_s'], 1)} | {_fmt(stats['c16_mean_batch'], 2)} |"
            )
    lines.append("")
    for model_key, measured in section["models"].items():
        goal = section["goals"]["c16_throughput_ratio_min"].get(model_key, 2.0)
        lines.append(
            f"{model_key}: c=1 p50 default / max_batch_size 1 = {measured['c1_p50_ratio']:.3f} (goal <= "
            f"{LONE_P50_GOAL}: {_met(measured['goal_met']['c1_p50'])}); c=16 throughput ratio "
            f"{measured['c16_throughput_ratio']:.2f} (goal >= {goal}: {_met(measured['goal_met']['c16_throughput'])})."
        )
    return lines


def _met(value: bool | None) -> str:
    return "n/a" if value is None else ("met" if value else "NOT met")


# ----------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m predictor.bench", description=__doc__.splitlines()[0].split(": ", 1)[-1]
    )
    parser.add_argument(
        "--model_dir",
        default=None,
        help="Model to serve; default: build predictor.tiny's tiny random SD in a temp dir. For real-size GPU "
        "timings without a checkpoint, build one with `python -m predictor.loadtest.realsize DIR`.",
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--dtype", choices=("auto", "float32", "float16", "bfloat16"), default="auto")
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--steps", type=int, default=2, help="num_inference_steps for (a) and (b).")
    parser.add_argument("--repeats", type=int, default=40, help="Interleaved rounds in (a).")
    parser.add_argument("--requests", type=int, default=96, help="Requests per concurrency level in (b).")
    parser.add_argument("--ready_steps", type=int, default=20, help="Steps of each in-flight inference in (c).")
    parser.add_argument("--ready_seconds", type=float, default=6.0, help="How long (c) polls.")
    parser.add_argument("--gap_ms", type=float, default=30.0, help="Idle time before each call in (a).")
    parser.add_argument("--batch_size", type=int, default=8, help="--max_batch_size of the batching server.")
    parser.add_argument("--batch_wait_ms", type=float, default=10.0, help="--batch_wait_ms of the batching server.")
    parser.add_argument(
        "--torch_threads",
        type=int,
        default=0,
        help="torch intra-op threads in this process and the servers (OMP_NUM_THREADS); 0: torch's default here.",
    )
    parser.add_argument("--parts", default="a,b,c,d", help="Which measurements to run, e.g. 'a' or 'a,d'.")
    parser.add_argument("--d_rounds", type=int, default=3, help="Interleaved rounds of (d).")
    parser.add_argument("--quick", action="store_true", help="Tiny counts: a smoke run, not a measurement.")
    parser.add_argument("--out", default=None, help="Directory for bench.json, bench.md and the server logs.")
    parser.add_argument(
        "--server_args", default="", help="Extra arguments for both servers, one string (e.g. for experiments)."
    )
    parser.add_argument(
        "--server_env", action="append", default=[], metavar="KEY=VALUE", help="Extra environment for both servers."
    )
    parser.add_argument("--startup_timeout", type=float, default=300.0, help="Seconds to wait for a server.")
    return parser


def resolve_device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise SystemExit("predictor.bench: --device cuda but torch.cuda.is_available() is False")
    return requested


def _install_signal_cleanup() -> None:
    def stop(signum, _frame):
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop)


def run(args: argparse.Namespace, argv: list[str]) -> dict:
    parts = {part.strip() for part in args.parts.split(",") if part.strip()}
    if not parts <= {"a", "b", "c", "d"}:
        raise SystemExit(f"predictor.bench: --parts takes a, b, c and d, got {args.parts!r}")
    if args.quick:
        args.d_rounds = 1
        args.repeats = min(args.repeats, 3)
        args.requests = min(args.requests, 16)
        args.ready_steps = min(args.ready_steps, 2)
        args.ready_seconds = min(args.ready_seconds, 0.5)
    started_at = time.time()

    import torch

    device = resolve_device(args.device)
    if args.torch_threads > 0:
        torch.set_num_threads(args.torch_threads)
    threads = torch.get_num_threads()

    with ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="predictor-bench-")))
        out_dir = Path(args.out) if args.out else scratch
        out_dir.mkdir(parents=True, exist_ok=True)
        if args.model_dir:
            model_dir, model_label = str(Path(args.model_dir).resolve()), args.model_dir
        else:
            from predictor.tiny import build_tiny_sd

            model_dir, model_label = str(build_tiny_sd(scratch / "tiny-sd")), "tiny random SD (predictor.tiny)"

        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        for item in args.server_env:
            key, sep, value = item.partition("=")
            if not sep:
                raise SystemExit(f"predictor.bench: --server_env takes KEY=VALUE, got {item!r}")
            env[key] = value
        extra = shlex.split(args.server_args)
        specs = {
            "batching": ServerSpec(
                f"batching (max_batch_size {args.batch_size}, batch_wait_ms {args.batch_wait_ms:g})",
                args.batch_size,
                args.batch_wait_ms,
            ),
            "no_batching": ServerSpec("no batching (max_batch_size 1)", 1, 0.0),
        }
        servers: dict[str, Server] = {}
        for key, spec in specs.items() if parts & {"a", "b", "c"} else ():
            server = Server(spec, model_dir, device, args.dtype, out_dir / f"server-{key}.log", env, extra)
            stack.callback(server.stop)
            atexit.register(server.stop)
            servers[key] = server
            server.start()
            print(f"started {spec.label}: pid {server.process.pid}, http {server.http}, grpc {server.grpc}", flush=True)

        direct = DirectPipeline(model_dir, device, args.dtype) if "a" in parts else None
        for server in servers.values():
            server.wait_ready(args.startup_timeout)
        print(f"servers ready after {time.time() - started_at:.1f}s", flush=True)

        image = {"steps": args.steps, "height": args.height, "width": args.width}
        report: dict[str, Any] = {
            "meta": {
                "command": " ".join(["python -m predictor.bench", shlex.join(argv)]).strip(),
                "model": model_label,
                "device": device,
                "device_name": _device_name(device),
                "dtype": str(torch_dtype(args.dtype, device)).removeprefix("torch."),
                "cpu": f"{platform.processor() or platform.machine()}, {_usable_cores()} of {os.cpu_count()} cores usable",
                "torch": torch.__version__,
                "torch_threads": threads,
                "python": platform.python_version(),
                "servers": {key: server.command()[2:] for key, server in servers.items()},
                "server_env": args.server_env,
                "quick": args.quick,
                "loadavg_start": [round(x, 2) for x in os.getloadavg()],
                **image,
            }
        }

        if "a" in parts:
            print("(a) latency: direct vs REST vs gRPC, interleaved ...", flush=True)
            no_batch, batch = servers["no_batching"], servers["batching"]
            rest, grpc, rest_batch = RestClient(no_batch.http), GrpcClient(no_batch.grpc), RestClient(batch.http)
            encode_times: list[float] = []

            def time_encode() -> None:
                started = time.perf_counter()
                direct.encode_last()
                encode_times.append(time.perf_counter() - started)

            client_cpu: dict[str, list[float]] = {"rest": [], "grpc": []}

            def with_cpu(name: str, infer: Callable[..., None]) -> Callable[[int], None]:
                """The call, also recording the CPU time this (the client's) thread spent on it."""

                def call(round_index: int) -> None:
                    started = time.thread_time()
                    infer(seed=1, **image)
                    if round_index >= 0:  # not a warm-up round
                        client_cpu[name].append(time.thread_time() - started)

                return call

            calls = {
                "direct": lambda i: direct.infer(seed=1, **image),
                "rest": with_cpu("rest", rest.infer),
                "grpc": with_cpu("grpc", grpc.infer),
                "rest_batching": lambda i: rest_batch.infer(seed=1, **image),
            }
            before = no_batch.metrics()
            samples = measure_latency(calls, args.repeats, 2 if args.quick else 3, args.gap_ms / 1000, time_encode)
            after = no_batch.metrics()
            for client in (rest, grpc, rest_batch):
                client.close()
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
            calls_in_server = after.get("predictor_pipeline_seconds_count", 0) - before.get(
                "predictor_pipeline_seconds_count", 0
            )
            seconds_in_server = after.get("predictor_pipeline_seconds_sum", 0) - before.get(
                "predictor_pipeline_seconds_sum", 0
            )
            server_mean = round(1000 * seconds_in_server / calls_in_server, 3) if calls_in_server else None
            report["latency"] = {
                "repeats": args.repeats,
                "gap_ms": args.gap_ms,
                "labels": {
                    "direct": "direct pipeline call (this process)",
                    "rest": "v2 REST, no-batching server",
                    "grpc": "v2 gRPC, no-batching server",
                    "rest_batching": f"v2 REST, batching server (waits up to {args.batch_wait_ms:g} ms)",
                },
                "samples": stats,
                "ratio_p50": ratio50,
                "ratio_p90": ratio90,
                "ratio_paired_median": paired,
                "encode": summarize(encode_times),
                "server_pipeline_mean_ms": server_mean,
                # what serving adds to a request: served mean minus the mean pipeline call in the server
                "overhead_mean_ms": {
                    name: round(stats[name]["mean_ms"] - server_mean, 3) if server_mean else None
                    for name in ("rest", "grpc")
                },
                "client_cpu": {name: summarize(values) for name, values in client_cpu.items()},
                "goal_ratio_p50": LATENCY_RATIO_GOAL,
                "goal_met": {name: ratio50[name] <= LATENCY_RATIO_GOAL for name in ("rest", "grpc")},
            }
            del direct
            _print_section(report, "latency")

        if "b" in parts:
            print("(b) throughput: closed loop over REST ...", flush=True)
            results: dict[str, list[dict]] = {}
            for key in ("batching", "no_batching"):
                server = servers[key]
                levels = []
                for concurrency in CONCURRENCY_LEVELS:
                    closed_loop(lambda s=server: RestClient(s.http), concurrency, concurrency, image)  # warm-up
                    before = server.metrics()
                    level = closed_loop(lambda s=server: RestClient(s.http), concurrency, args.requests, image)
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
            report["throughput"] = {"requests_per_level": args.requests, "servers": results}

        if "c" in parts:
            print(f"(c) ready latency with {READY_INFLIGHT} inferences in flight ...", flush=True)
            load = {**image, "steps": args.ready_steps}
            ready_results = {}
            for key in ("batching", "no_batching"):
                ready_results[specs[key].label] = ready_under_load(
                    servers[key], READY_INFLIGHT, args.ready_seconds, 0.01, load
                )
            p99s = [r["p99_ms"] for r in ready_results.values() if r.get("n")]
            report["ready"] = {
                "steps": args.ready_steps,
                "poll_interval_ms": 10.0,
                "servers": ready_results,
                "goal_p99_ms": READY_P99_GOAL_MS,
                "goal_met": (max(p99s) < READY_P99_GOAL_MS) if p99s else None,
            }

        if "d" in parts:
            for server in servers.values():  # (a)-(c) are over: their servers must not share the CPU with (d)
                server.stop()
            report["default_vs_one"] = run_default_vs_one(args, model_dir, scratch, out_dir, env, extra, device, stack)

        report["meta"]["duration_s"] = round(time.time() - started_at, 1)
        report["meta"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
        if "kserve" in sys.modules:  # would break tritonclient.grpc in this process
            raise RuntimeError("predictor.bench imported kserve")

        markdown = markdown_tables(report)
        print()
        print(markdown)
        if args.out:
            (out_dir / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
            (out_dir / "bench.md").write_text(f"`{report['meta']['command']}`\n\n" + markdown)
            print(f"wrote {out_dir / 'bench.json'} and {out_dir / 'bench.md'}")
        return report


def run_default_vs_one(
    args: argparse.Namespace, sd_dir: str, scratch: Path, out_dir: Path, env: dict[str, str], extra: list[str],
    device: str, stack: ExitStack,
) -> dict:  # fmt: skip
    """(d): on the tiny SD model and the tiny classifier, the default server against --max_batch_size 1."""
    print("(d) default server vs --max_batch_size 1 (tiny SD, tiny classifier), interleaved ...", flush=True)
    image = {"steps": args.steps, "height": args.height, "width": args.width}
    sd_key = "sd_model" if args.model_dir else "tiny_sd"
    models = {
        sd_key: (sd_dir, lambda server: RestClient(server.http), image, (40, 96)),
        "tiny_classifier": (
            build_tiny_classifier(scratch / "tiny-classifier", env),
            lambda server: FixedBodyClient(server.http, CLASSIFIER_BODY), {}, (150, 320),
        ),
    }  # fmt: skip
    specs = {
        "default": ServerSpec("default flags", None, None),
        "max_batch_size_1": ServerSpec("--max_batch_size 1", 1, None),
    }
    servers: dict[str, dict[str, Server]] = {}
    for model_key, (model_dir, *_rest) in models.items():
        servers[model_key] = {}
        for key, spec in specs.items():
            server = Server(
                spec, model_dir, device, args.dtype, out_dir / f"server-d-{model_key}-{key}.log", env, extra
            )
            stack.callback(server.stop)
            atexit.register(server.stop)
            server.start()
            servers[model_key][key] = server
    for pair in servers.values():
        for server in pair.values():
            server.wait_ready(args.startup_timeout)
    result: dict[str, Any] = {
        "servers": {key: spec.label for key, spec in specs.items()},
        "goals": {"c1_p50_ratio_max": LONE_P50_GOAL, "c16_throughput_ratio_min": THROUGHPUT_GOALS},
        "models": {},
    }
    for model_key, (_dir, make_client, infer_args, (lone, loaded)) in models.items():
        if args.quick:
            lone, loaded = 4, 16
        measured = default_vs_one(servers[model_key], make_client, infer_args, args.d_rounds, lone, loaded)
        goal = THROUGHPUT_GOALS.get(model_key, 2.0)
        measured["goal_met"] = {
            "c1_p50": measured["c1_p50_ratio"] <= LONE_P50_GOAL,
            "c16_throughput": measured["c16_throughput_ratio"] >= goal,
        }
        result["models"][model_key] = measured
        for server in servers[model_key].values():
            server.stop()
        print(
            f"  {model_key:<16} c=1 p50 ratio {measured['c1_p50_ratio']:.3f}  "
            f"c=16 throughput ratio {measured['c16_throughput_ratio']:.2f}",
            flush=True,
        )
    return result


def _print_section(report: dict, key: str) -> None:
    lat = report[key]
    for name, stats in lat["samples"].items():
        ratio = lat["ratio_p50"].get(name)
        print(
            f"  {name:<14} p50 {stats['p50_ms']:8.2f} ms  p90 {stats['p90_ms']:8.2f} ms"
            + (f"  ratio p50 {ratio:.3f}" if ratio else ""),
            flush=True,
        )


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # what taskset / a cgroup cpuset leaves this process
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _device_name(device: str) -> str:
    if device == "cuda":
        import torch

        return torch.cuda.get_device_name(0)
    return f"{platform.processor() or platform.machine()} x{_usable_cores()}"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    _install_signal_cleanup()
    run(args, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
