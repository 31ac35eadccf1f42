"""The load tester against the real predictor (tiny model) over REST and gRPC: small rates, short stages."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from tests.loadtest.conftest import REPO
from tests.loadtest.test_report_apply import CONFIG


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_stages_against_the_tiny_server(tiny_server, tmp_path, protocol):
    url = tiny_server.http_url if protocol == "rest" else tiny_server.grpc_url
    served_before = tiny_server.metric("predictor_batch_size_sum")
    out = tmp_path / "out"
    command = [
        sys.executable,
        "-m",
        "loadtest",
        "run",
        "--url",
        url,
        "--model",
        "sd",
        "--rates",
        "1,2",
        "--stage-seconds",
        "3",
        "--steps",
        "2",
        "--height",
        "64",
        "--width",
        "64",
        "--seed",
        "1",
        "--slo",
        "30",
        "--timeout",
        "30",
        "--max-duration",
        "60",
        "--unit",
        "sd21-g5-cuda",
        "--out",
        str(out),
    ]
    # The gRPC client runs in its own process: kserve and grpc stubs never share one here anyway.
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr

    result = json.loads((out / "result.json").read_text())
    assert result["target"]["protocol"] == protocol
    stages = result["stages"]
    assert 1 <= len(stages) <= 2
    assert stages[0]["scheduled"] == 3 and (len(stages) == 1 or stages[1]["scheduled"] == 6)
    ok = sum(s["ok"] for s in stages)
    sent = sum(s["sent"] for s in stages)
    assert ok >= 1
    for s in stages:
        assert s["ok"] + sum(s["errors"].values()) + s["dropped"] == s["scheduled"]
        if s["ok"]:
            assert 0 < s["latency_s"]["p50"] <= s["latency_s"]["p90"] <= s["latency_s"]["p99"]
    # Every success (and the probe request) really ran on the server's pipeline.
    served = tiny_server.metric("predictor_batch_size_sum") - served_before
    assert ok + 1 <= served <= sent + 1

    png = (out / "result.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    rows = (out / "requests.csv").read_text().splitlines()
    assert len(rows) == 1 + sum(s["scheduled"] for s in stages)
    if result["unit"]:  # a busy machine may break already at 1 request/s
        assert result["unit"]["name"] == "sd21-g5-cuda" and result["unit"]["max_throughput"] > 0
        config = tmp_path / "controller.yaml"
        config.write_text(CONFIG)
        applied = subprocess.run(
            [
                sys.executable,
                "-m",
                "loadtest",
                "apply",
                "--result",
                str(out / "result.json"),
                "--config",
                str(config),
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert applied.returncode == 0, applied.stderr
        unit = next(u for u in yaml.safe_load(config.read_text())["units"] if u["name"] == "sd21-g5-cuda")
        assert unit["max_throughput"] == pytest.approx(result["unit"]["max_throughput"], rel=1e-3)
