"""The LLM unit set (examples/llm/controller-llm.yaml) plans and simulates with the unchanged controller."""

from __future__ import annotations

import json
import subprocess
import sys

from .conftest import REPO

CONFIG = REPO / "examples" / "llm" / "controller-llm.yaml"
TOKENS_PER_REQUEST = 256  # the config's unit of work: one completion of 256 new tokens
# The table in the config's header: USD per 1k generated tokens per unit.
USD_PER_1K_TOKENS = {"llm-inf2-vllm": 0.000514, "llm-g5-vllm": 0.000237, "llm-c7g-llama": 0.002240}


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "controller", *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )


def test_plan_gives_each_engine_its_cost_per_1k_tokens_and_the_cost_pool_is_the_cheapest():
    completed = _cli("plan", "--config", str(CONFIG), "--format", "json")
    assert completed.returncode == 0, completed.stderr
    units = {unit["name"]: unit for unit in json.loads(completed.stdout)["units"]}
    assert set(units) == set(USD_PER_1K_TOKENS)
    for name, expected in USD_PER_1K_TOKENS.items():
        per_request = units[name]["usd_per_million_requests"] / 1e6
        assert abs(per_request / TOKENS_PER_REQUEST * 1000 - expected) < 5e-7, name
    cheapest = min(USD_PER_1K_TOKENS, key=USD_PER_1K_TOKENS.get)
    assert [name for name, unit in units.items() if unit["pool"] == "cost"] == [cheapest]
    assert all(unit["scale_target"] >= 1 for unit in units.values())


def test_simulate_runs_every_policy_on_an_llm_demand_trace(tmp_path):
    trace = tmp_path / "burst.csv"
    made = subprocess.run(
        [sys.executable, "-m", "controller.traces", "burst", "--out", str(trace), "--hours", "1",
         "--base", "3", "--peak", "8", "--step", "60"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    completed = _cli("simulate", "--config", str(CONFIG), "--trace", str(trace), "--out", str(tmp_path / "sim"), "--no-plots")
    assert completed.returncode == 0, completed.stderr
    summary = json.loads((tmp_path / "sim" / "summary.json").read_text())
    assert set(summary["policies"]) == {"static", "seed-two-state", "controller", "oracle"}
    assert [unit["name"] if isinstance(unit, dict) else unit for unit in summary["units"]] == list(USD_PER_1K_TOKENS)
