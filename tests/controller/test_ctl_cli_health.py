"""Entry points (python -m controller ...) and the metrics/health endpoints."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import types
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

import controller.__main__ as cli
from controller.metrics import HealthServer, Metrics
from tests.servers import start_process

from .ctl_world import INTERVAL, NS, config_dict

ROOT = Path(__file__).resolve().parents[2]


def write_config(tmp_path, **overrides) -> Path:
    path = tmp_path / "controller.yaml"
    path.write_text(yaml.safe_dump(config_dict(**overrides)))
    return path


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_health_endpoints_follow_the_loop_and_the_api(world, clock):
    ctl = world.controller()
    server = HealthServer(ctl.metrics, "127.0.0.1", 0).start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        assert get(base + "/healthz")[0] == 200
        assert get(base + "/readyz") == (503, "kubernetes API not reachable\n")  # nothing read yet
        world.inf2_outage()
        ctl.step()
        assert get(base + "/readyz")[0] == 200
        code, text = get(base + "/metrics")
        assert code == 200
        for line in (
            'traffic_controller_mode{mode="capacity-optimized"} 1.0',
            'traffic_controller_switches_total{to="capacity-optimized"} 1.0',
            'traffic_controller_weight_percent{unit="sd21-inf2"}',
            "traffic_controller_signal_age_seconds 0.0",
            "traffic_controller_leader 1.0",
            'traffic_controller_unit_capacity_errors{unit="sd21-inf2"} 6.0',  # 3 events + 3 NodeClaims
            'traffic_controller_errors_total{source="kubernetes"} 0.0',
        ):
            assert line in text, line
        status = json.loads(get(base + "/status")[1])
        assert status["mode"] == "capacity-optimized" and status["action"] == "applied" and status["leader"]
        assert get(base + "/nope")[0] == 404
        clock.advance(10_000)  # the loop has not beaten for far too long
        assert get(base + "/healthz")[0] == 503
    finally:
        server.stop()


def test_a_standby_replica_is_ready_when_it_reaches_the_api(world, clock):
    a = world.controller(identity="a")
    b = world.controller(identity="b")
    a.step()
    assert b.step().action == "standby"
    assert b.metrics.ready() and "traffic_controller_leader 0.0" in b.metrics.render().decode()
    world.fake.fail(r"/leases", status=503, times=100)
    for _ in range(3):
        clock.advance(5)
        b.step()
    assert not b.metrics.ready()
    assert 'traffic_controller_errors_total{source="lease"} 3.0' in b.metrics.render().decode()


def test_liveness_fails_when_the_loop_stops_beating():
    now = [0.0]
    m = Metrics(["a"], clock=lambda: now[0], liveness_s=120)
    assert m.live()
    now[0] = 119
    assert m.live()
    m.heartbeat()
    now[0] = 200
    assert m.live()
    now[0] = 240
    assert not m.live()


def test_run_once_prints_the_decision_and_writes_the_weights(world, clock, tmp_path, capsys):
    cfg = write_config(tmp_path)
    world.inf2_outage()
    rc = cli.main(["run", "--config", str(cfg), "--kubeconfig", str(world.kubeconfig), "--once", "--identity", "cli"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["action"] == "applied" and out["mode"] == "capacity-optimized" and out["switched"]
    assert world.weights()["sd21-inf2"] < 100
    lease = world.fake.get("coordination.k8s.io/v1", "Lease", "traffic-controller", NS)
    assert lease["spec"].get("holderIdentity") is None  # --once gives the lease back


def test_run_once_dry_run_in_a_subprocess_writes_nothing(world, tmp_path):
    cfg = write_config(tmp_path)
    world.inf2_outage()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "controller",
            "run",
            "--config",
            str(cfg),
            "--kubeconfig",
            str(world.kubeconfig),
            "--once",
            "--dry-run",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["action"] == "dry-run" and out["switched"] and out["message"].startswith("would set")
    assert world.fake.writes() == []


def test_config_errors_exit_2_with_the_key_path(tmp_path, capsys):
    bad = write_config(tmp_path, timing={"interval_s": -1})
    assert cli.main(["run", "--config", str(bad), "--once"]) == 2
    assert "config error: timing.interval_s: must be > 0" in capsys.readouterr().err


def test_unreachable_api_in_once_mode_is_an_error_not_a_traceback(tmp_path, capsys):
    cfg = write_config(tmp_path, timing={"api_retries": 0, "api_timeout_s": 1})
    kc = tmp_path / "kc"
    kc.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "x",
                "clusters": [{"name": "x", "cluster": {"server": "http://127.0.0.1:9"}}],
                "users": [{"name": "x", "user": {"token": "t"}}],
                "contexts": [{"name": "x", "context": {"cluster": "x", "user": "x"}}],
            }
        )
    )
    assert cli.main(["run", "--config", str(cfg), "--kubeconfig", str(kc), "--once", "--dry-run"]) == 1
    assert json.loads(capsys.readouterr().out)["action"] == "error"


def test_plan_and_simulate_dispatch_lazily(monkeypatch, capsys):
    seen = {}
    fake_module = types.ModuleType("fake_planner")
    fake_module.main = lambda argv: seen.setdefault("argv", argv) and 0
    monkeypatch.setitem(sys.modules, "fake_planner", fake_module)
    monkeypatch.setitem(cli._DELEGATED, "plan", "fake_planner")
    assert cli.main(["plan", "--config", "x.yaml"]) == 0
    assert seen["argv"] == ["--config", "x.yaml"]
    monkeypatch.setitem(cli._DELEGATED, "simulate", "controller.not_there")
    assert cli.main(["simulate"]) == 2
    assert "controller.not_there is not installed" in capsys.readouterr().err


def test_usage_errors(capsys):
    assert cli.main([]) == 2
    assert cli.main(["--help"]) == 0
    with pytest.raises(SystemExit) as exc:
        cli.main(["bogus"])
    assert exc.value.code == 2


def test_long_running_mode_serves_metrics_and_stops_on_sigterm(world, tmp_path):
    cfg = write_config(
        tmp_path, timing={"interval_s": 0.2, "signal_max_age_s": 5}, lease={"duration_s": 2, "renew_s": 0.5}
    )
    command = [sys.executable, "-m", "controller", "run", "--config", str(cfg), "--kubeconfig", str(world.kubeconfig),
               "--metrics-port", "0", "--log-level", "INFO"]  # fmt: skip
    with start_process(command, tmp_path / "controller.log", env={"PYTHONPATH": str(ROOT)}) as ctl:
        ctl.wait_until(lambda: "is leader" in ctl.logs(), "leader", timeout=60)
        port = re.search(r"metrics and health on port (\d+)", ctl.logs())
        assert port, ctl.logs()
        assert get(f"http://127.0.0.1:{port[1]}/healthz")[0] == 200
        ctl.process.terminate()
        assert ctl.process.wait(timeout=15) == 0
    lease = world.fake.get("coordination.k8s.io/v1", "Lease", "traffic-controller", NS)
    assert lease["spec"].get("holderIdentity") is None  # released on SIGTERM


def test_interval_constant_is_what_the_scenarios_assume():
    assert INTERVAL == config_dict()["timing"]["interval_s"]
