"""Smoke test of ``python -m bench --quick``: it runs end to end and writes its report.

Only the shape of bench.json is checked, never a timing: performance goals are reported by the
benchmark itself (docs/benchmarks.md), not asserted by tests.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LATENCY_PATHS = ("direct", "rest", "grpc", "rest_batching")
SERVERS = ("batching (max_batch_size 8, batch_wait_ms 10)", "no batching (max_batch_size 1)")


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


# ~2.5 min on 2 quiet cores; pytest's limit sits above the run's own 480 s, whose failure shows the output
@pytest.mark.timeout(540)
def test_quick_bench_writes_a_complete_report(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    completed = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--device", "cpu", "--out", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=480,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    report = json.loads((out / "bench.json").read_text())
    assert (out / "bench.md").read_text().startswith("`python -m bench")

    meta = report["meta"]
    assert meta["quick"] is True and meta["device"] == "cpu"
    assert (meta["height"], meta["width"], meta["steps"]) == (64, 64, 2)
    assert meta["torch_threads"] >= 1

    latency = report["latency"]
    for path in LATENCY_PATHS:
        stats = latency["samples"][path]
        assert stats["n"] == latency["repeats"] > 0
        assert all(_positive(stats[key]) for key in ("p50_ms", "p90_ms", "mean_ms")), stats
    for path in ("rest", "grpc", "rest_batching"):
        assert all(_positive(latency[key][path]) for key in ("ratio_p50", "ratio_p90", "ratio_paired_median"))
    assert set(latency["goal_met"]) == {"rest", "grpc"}
    assert _positive(latency["server_pipeline_mean_ms"])
    assert set(latency["overhead_mean_ms"]) == {"rest", "grpc"}
    for path in ("rest", "grpc"):
        assert latency["client_cpu"][path]["n"] == latency["repeats"]
        assert _positive(latency["client_cpu"][path]["p50_ms"])

    throughput = report["throughput"]["servers"]
    assert set(throughput) == set(SERVERS)
    for levels in throughput.values():
        assert [level["concurrency"] for level in levels] == [1, 4, 16]
        for level in levels:
            assert level["requests"] == report["throughput"]["requests_per_level"]
            assert _positive(level["images_per_s"]) and _positive(level["p50_ms"])
            assert _positive(level["mean_batch_size"])

    ready = report["ready"]["servers"]
    assert set(ready) == set(SERVERS)
    for stats in ready.values():
        assert stats["n"] > 0 and stats["failures"] == 0
        assert all(_positive(stats[key]) for key in ("p50_ms", "p99_ms", "max_ms"))
    assert isinstance(report["ready"]["goal_met"], bool)

    # (d): the default server against --max_batch_size 1, on both tiny models
    section = report["default_vs_one"]
    assert set(section["models"]) == {"tiny_sd", "tiny_classifier"}
    for measured in section["models"].values():
        assert set(measured["servers"]) == {"default", "max_batch_size_1"}
        for stats in measured["servers"].values():
            assert all(_positive(stats[key]) for key in ("c1_p50_ms", "c1_cpu_ms_per_request", "c16_requests_per_s"))
        assert _positive(measured["c1_p50_ratio"]) and _positive(measured["c16_throughput_ratio"])
        assert set(measured["goal_met"]) == {"c1_p50", "c16_throughput"}
    assert "(d) Default server against `--max_batch_size 1`" in (out / "bench.md").read_text()

    # the benchmark stopped its servers: no predictor it started is left behind
    for server_args in meta["servers"].values():
        port = server_args[server_args.index("--http_port") + 1]
        assert subprocess.run(["pgrep", "-f", "--", f"--http_port {port} "], capture_output=True).returncode != 0
