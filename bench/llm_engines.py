"""Text-generation engines compared on one Llama-shaped model: transformers (fp32) vs llama.cpp (f16, q4_0).

    python -m bench.llm_engines [--out DIR] [--max_tokens 64] [--levels 1,4,16]

Builds a random-weight Llama (``modelbuild.tiny_models.build_causal_lm`` with larger sizes: 8
layers, hidden 512, ~23 M parameters, 92 MB in fp32; no hub), converts it to GGUF f16 and
quantizes that to q4_0 with llama.cpp (``modelbuild.gguf_convert``), then serves each variant in
turn with ``python -m predictor`` (one server at a time, so they never share the cores) and runs
closed-loop streaming OpenAI completions at each concurrency level: every client sends its next
request when the previous one ends, ``--requests_per_client`` times. Reported per engine and level:
generated tokens/s over the level's wall time, time to first token (first streamed text) p50/p90,
and request latency p50. Every request generates exactly ``--max_tokens`` tokens (the model
never writes its end token). Prints a Markdown table and writes ``DIR/llm_engines.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
SIZES = {"hidden_size": 512, "intermediate_size": 1408, "layers": 8, "heads": 8, "kv_heads": 4}
PROMPT = "the quick brown fox jumps over the lazy dog and keeps on running "  # 64 byte tokens + <s>


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def build_models(root: Path) -> dict[str, Path]:
    from modelbuild.gguf_convert import convert_llama, quantize
    from modelbuild.tiny_models import build_causal_lm

    hf = build_causal_lm(root / "transformers", seed=0, **SIZES)
    f16 = convert_llama(hf, root / "f16" / "model-f16.gguf", "f16")
    (root / "q4_0").mkdir()
    q4 = quantize(f16, root / "q4_0" / "model-q4_0.gguf", "q4_0")
    return {"transformers fp32": hf, "llama.cpp f16": f16.parent, "llama.cpp q4_0": q4.parent}


def start_server(model_dir: Path, log_path: Path, threads: int, max_batch: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [
        sys.executable, "-m", "predictor", "--model_name", "llm", "--model_dir", str(model_dir),
        "--device", "cpu", "--http_port", str(port), "--grpc_port", str(free_port()),
        "--max_batch_size", str(max_batch), "--batch_wait_ms", "10", "--max_queue_size", "256",
        "--threads", str(threads), "--dtype", "float32",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    log = open(log_path, "wb")  # noqa: SIM115 - closed with the process
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {log_path.read_text()[-2000:]}")
        try:
            if requests.get(f"{url}/v2/models/llm/ready", timeout=2).status_code == 200:
                return process, url
        except requests.RequestException:
            pass
        time.sleep(0.5)
    process.kill()
    raise RuntimeError("server not ready in 300 s")


def stream_once(session: requests.Session, url: str, max_tokens: int) -> tuple[float, float, int]:
    """(time to first text, total latency, completion tokens) of one streamed completion."""
    body = {
        "model": "llm", "prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0, "stream": True,
        "stream_options": {"include_usage": True},
    }  # fmt: skip
    started = time.perf_counter()
    first = None
    tokens = 0
    with session.post(f"{url}/openai/v1/completions", json=body, stream=True, timeout=600) as response:
        response.raise_for_status()
        # chunk_size=None: lines as they arrive (the default 512-byte reads would delay the first token)
        for line in response.iter_lines(chunk_size=None, decode_unicode=True):
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if first is None and chunk["choices"] and chunk["choices"][0]["text"]:
                first = time.perf_counter() - started
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    return first if first is not None else float("nan"), time.perf_counter() - started, tokens


def run_level(url: str, concurrency: int, per_client: int, max_tokens: int) -> dict:
    results: list[tuple[float, float, int]] = []
    lock = threading.Lock()

    def client():
        with requests.Session() as session:
            for _ in range(per_client):
                outcome = stream_once(session, url, max_tokens)
                with lock:
                    results.append(outcome)

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    ttft = sorted(r[0] for r in results)
    latency = sorted(r[1] for r in results)
    tokens = sum(r[2] for r in results)
    return {
        "concurrency": concurrency,
        "requests": len(results),
        "tokens": tokens,
        "wall_s": round(wall, 3),
        "tokens_per_s": round(tokens / wall, 1),
        "ttft_p50_ms": round(1000 * statistics.median(ttft), 1),
        "ttft_p90_ms": round(1000 * ttft[max(0, math.ceil(0.9 * len(ttft)) - 1)], 1),  # nearest rank
        "latency_p50_s": round(statistics.median(latency), 3),
        "ttft_s": [round(value, 4) for value in ttft],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench-out/llm")
    parser.add_argument("--max_tokens", type=int, default=64)
    parser.add_argument("--levels", default="1,4,16")
    parser.add_argument("--requests_per_client", type=int, default=2)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--engines", default="transformers fp32,llama.cpp f16,llama.cpp q4_0")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    levels = [int(level) for level in args.levels.split(",")]
    report: dict = {"model": SIZES, "max_tokens": args.max_tokens, "threads": args.threads, "engines": {}}
    with tempfile.TemporaryDirectory() as scratch:
        models = build_models(Path(scratch))
        report["sizes_mb"] = {
            name: round(sum(f.stat().st_size for f in path.iterdir() if f.suffix in (".safetensors", ".gguf")) / 1e6, 1)
            for name, path in models.items()
        }
        for name in args.engines.split(","):
            process, url = start_server(
                models[name], out / f"server-{name.replace(' ', '-')}.log", args.threads, max(levels)
            )
            try:
                stream_once(requests.Session(), url, 4)  # first-request effects out of the figures
                report["engines"][name] = [
                    run_level(url, level, args.requests_per_client, args.max_tokens) for level in levels
                ]
            finally:
                process.terminate()
                process.wait(timeout=30)
            print(f"{name}: {report['engines'][name]}", flush=True)
    (out / "llm_engines.json").write_text(json.dumps(report, indent=1))
    print(f"\nModel: Llama {SIZES}; sizes {report['sizes_mb']} MB; {args.max_tokens} new tokens per request; "
          f"{args.threads} threads\n")  # fmt: skip
    print("| engine | concurrency | tokens/s | TTFT p50 (ms) | TTFT p90 (ms) | latency p50 (s) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, rows in report["engines"].items():
        for row in rows:
            print(
                f"| {name} | {row['concurrency']} | {row['tokens_per_s']} | {row['ttft_p50_ms']} | "
                f"{row['ttft_p90_ms']} | {row['latency_p50_s']} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
