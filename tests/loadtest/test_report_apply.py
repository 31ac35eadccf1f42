"""The result document, the plot, and applying a result to the controller config."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from loadtest.analysis import Criteria, StageStats, evaluate
from loadtest.apply import ApplyError, apply_result, format_number, update_unit_text
from loadtest.plot import plot_result
from loadtest.report import SCHEMA, build_result, load_result, summary_text, write_json

REPO = Path(__file__).resolve().parents[2]

CONFIG = """\
# Controller config (comments and layout must survive)
namespace: sd21
units:
  - name: sd21-inf2
    pool: cost              # cheapest
    instance_type: inf2.xlarge
    price_per_hour: 0.7582
    max_throughput: 105     # seed Table 1
    latency_s: 0.67
    max_replicas: 10
  - name: sd21-g5-cuda
    pool: capacity
    instance_type: g5.xlarge
    price_per_hour: 1.0060
    max_throughput: 60
    latency_s: 0.92
    max_replicas: 10
router:
  kind: inferencegraph
  name: sd21-router
"""


def synthetic_stage(index, offered, achieved, p90) -> StageStats:
    lat = {"p50": p90 * 0.7, "p90": p90, "p99": p90 * 1.1, "mean": p90 * 0.75, "min": p90 * 0.5, "max": p90 * 1.2}
    return StageStats(
        index=index,
        target_rps=offered,
        duration_s=10,
        scheduled=int(offered * 10),
        sent=int(offered * 10),
        ok=int(achieved * 10),
        dropped=0,
        errors={"503": 2} if index == 2 else {},
        offered_rps=offered,
        achieved_rps=achieved,
        error_rate=0.05 if index == 2 else 0.0,
        service_window_s=10,
        latency_s=lat,
        send_lag_p99_s=0.002,
    )


def make_result(replicas=1, unit="sd21-g5-cuda", stages=None):
    stages = stages or [synthetic_stage(0, 1, 1, 0.4), synthetic_stage(1, 2, 2, 0.6), synthetic_stage(2, 4, 2.5, 1.4)]
    criteria = Criteria()
    return build_result(
        stages=stages,
        evaluation=evaluate(stages, criteria),
        criteria=criteria,
        target={"url": "http://x", "protocol": "rest", "model": "sd"},
        settings={},
        replicas=replicas,
        utilization=0.7,
        unit_name=unit,
        started_at=1000.0,
        finished_at=1042.0,
        stop_reason="breaking point",
    )


# --------------------------------------------------------------------------- result document


def test_result_names_the_breaking_point_and_the_unit_capacity():
    result = make_result()
    assert result["schema"] == SCHEMA
    assert result["breaking_point"]["found"] and result["breaking_point"]["stage"] == 2
    assert set(result["breaking_point"]["reasons"]) >= {"latency", "throughput", "errors"}
    assert result["max_sustainable"]["stage"] == 1
    assert result["unit"] == {
        "name": "sd21-g5-cuda",
        "max_throughput": 2.0,
        "latency_s": 0.6,
        "latency_stat": "p90",
        "lower_bound": False,
    }
    targets = result["scale_targets"]
    assert targets["rps"] == pytest.approx(1.4) and targets["scale_metric"] == "rps" and targets["scale_target"] == 1
    assert targets["concurrency"] == pytest.approx(2.0 * 0.45 * 0.7)
    assert targets["inferenceservice"]["spec"]["predictor"] == {"scaleMetric": "rps", "scaleTarget": 1}
    assert [s["sustainable"] for s in result["stages"]] == [True, True, False]
    assert result["elapsed_s"] == 42.0
    json.dumps(result)  # serialisable as is
    text = summary_text(result)
    assert "breaking point: stage 3" in text and "max_throughput: 2" in text


def test_per_replica_figures_divide_by_the_replicas():
    result = make_result(replicas=2)
    assert result["unit"]["max_throughput"] == 1.0
    assert result["max_sustainable"]["achieved_rps"] == 2.0


def test_result_without_a_sustainable_stage_has_no_unit():
    result = make_result(stages=[synthetic_stage(0, 4, 2, 3.0)])
    assert result["unit"] is None and result["max_sustainable"] is None and result["scale_targets"] is None
    with pytest.raises(ApplyError, match="no measured unit capacity"):
        apply_result(result, "/nonexistent.yaml")


def test_load_result_checks_the_schema(tmp_path):
    good = tmp_path / "r.json"
    write_json(make_result(), good)
    assert load_result(good)["unit"]["max_throughput"] == 2.0
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema": "other"}')
    with pytest.raises(ValueError, match="not a load-test result"):
        load_result(bad)
    with pytest.raises(ValueError, match="cannot read"):
        load_result(tmp_path / "missing.json")


def test_plot_writes_a_png(tmp_path):
    path = plot_result(make_result(), tmp_path / "sub" / "plot.png")
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 10_000


# --------------------------------------------------------------------------- apply


@pytest.mark.parametrize(
    ("value", "text"),
    [(2.0, "2"), (105.0, "105"), (0.67, "0.67"), (2.106444, "2.106"), (0.000123456, "0.0001235"), (123456.7, "123500")],
)
def test_format_number(value, text):
    assert format_number(value) == text
    assert yaml.safe_load(f"x: {text}")["x"] == pytest.approx(value, rel=1e-3)


@pytest.mark.parametrize("value", [0.0, -1.0, float("nan"), float("inf")])
def test_format_number_refuses_bad_values(value):
    with pytest.raises(ApplyError):
        format_number(value)


def test_update_changes_only_the_two_values_of_that_unit():
    updated, old = update_unit_text(CONFIG, "sd21-inf2", {"max_throughput": 3.25, "latency_s": 0.8123})
    assert old == {"max_throughput": "105", "latency_s": "0.67"}
    expected = CONFIG.replace("max_throughput: 105     # seed", "max_throughput: 3.25     # seed").replace(
        "latency_s: 0.67", "latency_s: 0.8123"
    )
    assert updated == expected
    data = yaml.safe_load(updated)
    assert data["units"][1]["max_throughput"] == 60  # the other unit is untouched


def test_missing_keys_are_added_under_the_unit():
    text = "units:\n  - name: a\n    pool: cost\n  - name: b\n    pool: capacity\n"
    updated, old = update_unit_text(text, "a", {"max_throughput": 2.0, "latency_s": 0.5})
    assert old == {"max_throughput": None, "latency_s": None}
    assert (
        updated == "units:\n  - name: a\n    max_throughput: 2\n    latency_s: 0.5\n    pool: cost\n"
        "  - name: b\n    pool: capacity\n"
    )


def test_unknown_unit_lists_the_known_ones():
    with pytest.raises(ApplyError, match="sd21-inf2, sd21-g5-cuda"):
        update_unit_text(CONFIG, "nope", {"max_throughput": 1.0})


@pytest.mark.parametrize("text", ["", "- a\n- b\n", "units: 3\n", "units: [\n"])
def test_configs_without_units_are_refused(text):
    with pytest.raises(ApplyError):
        update_unit_text(text, "a", {"max_throughput": 1.0})


def test_apply_result_writes_validates_and_keeps_the_mode(tmp_path):
    config = tmp_path / "controller.yaml"
    config.write_text(CONFIG)
    config.chmod(0o640)
    diff, name = apply_result(make_result(), config)
    assert name == "sd21-g5-cuda"
    assert "-    max_throughput: 60\n" in diff and "+    max_throughput: 2\n" in diff
    data = yaml.safe_load(config.read_text())
    assert (data["units"][1]["max_throughput"], data["units"][1]["latency_s"]) == (2, 0.6)
    assert config.stat().st_mode & 0o777 == 0o640
    # The edited file is what the controller's own parser accepts.
    from controller.config import load_config

    assert load_config(config).unit("sd21-g5-cuda").max_throughput == 2.0


def test_apply_converts_to_a_per_minute_config(tmp_path):
    config = tmp_path / "controller.yaml"
    config.write_text("throughput_per: minute\n" + CONFIG)
    apply_result(make_result(), config)
    from controller.config import load_config

    assert load_config(config).unit("sd21-g5-cuda").max_throughput == 120.0  # 2 requests/s


def test_apply_dry_run_does_not_write(tmp_path):
    config = tmp_path / "controller.yaml"
    config.write_text(CONFIG)
    diff, _ = apply_result(make_result(), config, unit="sd21-inf2", dry_run=True)
    assert diff and config.read_text() == CONFIG


def test_apply_refuses_an_edit_the_controller_rejects(tmp_path):
    config = tmp_path / "controller.yaml"
    config.write_text(CONFIG.replace("pool: capacity", "pool: nonsense"))
    with pytest.raises(ApplyError, match="does not validate"):
        apply_result(make_result(), config)
    assert "max_throughput: 60" in config.read_text()


BAD_UNITS = [
    ("pool: capacity", "pool: nonsense", "units[1].pool: must be one of cost, capacity, got 'nonsense'"),
    ("price_per_hour: 1.0060", "price_per_hour: 0", "units[1].price_per_hour: must be > 0"),
    ("max_replicas: 10\nrouter", "max_replicas: 0\nrouter", "units[1].max_replicas: must be >= 1"),
    ("    instance_type: g5.xlarge\n", "", "units[1].instance_type: is required"),
    ("- name: sd21-g5-cuda", "- name: sd21-inf2", "units[1].name: duplicate unit name 'sd21-inf2' (also units[0])"),
    ("latency_s: 0.92", "latency_s: fast", "units[1].latency_s: must be a number, got 'fast'"),
]


@pytest.mark.parametrize(("old", "new", "message"), BAD_UNITS)
def test_apply_names_what_is_wrong_in_a_bad_config_as_the_controller_does(tmp_path, old, new, message):
    config = tmp_path / "controller.yaml"
    bad = CONFIG.replace(old, new, 1)
    config.write_text(bad)
    with pytest.raises(ApplyError, match=re.escape(message)):
        apply_result(make_result(), config, unit="sd21-inf2")
    assert config.read_text() == bad  # nothing written
    # the controller rejects the same file: the check is never stricter than the controller
    from controller.config import ConfigError, parse_config

    with pytest.raises(ConfigError):
        parse_config(yaml.safe_load(bad))


def test_apply_checks_the_config_without_the_controller_package(tmp_path):
    """loadtest reads the documented file format itself: with `controller` unimportable a bad
    config is still refused, and a good one is still written."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(CONFIG.replace("pool: capacity", "pool: nonsense"))
    good = tmp_path / "good.yaml"
    good.write_text(CONFIG)
    result = tmp_path / "result.json"
    write_json(make_result(), result)
    code = (
        "import sys; sys.modules['controller'] = None\n"
        "from loadtest.apply import ApplyError, apply_result\n"
        "from loadtest.report import load_result\n"
        "result = load_result(sys.argv[1])\n"
        "try:\n    apply_result(result, sys.argv[2])\nexcept ApplyError as error:\n    print('refused:', error)\n"
        "apply_result(result, sys.argv[3])\n"
        "assert 'controller.config' not in sys.modules\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(result), str(bad), str(good)], cwd=REPO, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "refused: the updated config does not validate: units[1].pool" in done.stdout
    assert yaml.safe_load(good.read_text())["units"][1]["max_throughput"] == 2


def test_apply_needs_a_unit_name(tmp_path):
    config = tmp_path / "controller.yaml"
    config.write_text(CONFIG)
    with pytest.raises(ApplyError, match="pass --unit"):
        apply_result(make_result(unit=None), config)


def test_apply_command_line(tmp_path):
    result_path = tmp_path / "result.json"
    write_json(make_result(unit=None), result_path)
    config = tmp_path / "controller.yaml"
    config.write_text(CONFIG)
    command = [
        sys.executable,
        "-m",
        "loadtest",
        "apply",
        "--result",
        str(result_path),
        "--config",
        str(config),
        "--unit",
        "sd21-inf2",
    ]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "updated" in done.stdout and "sd21-inf2" in done.stdout
    assert yaml.safe_load(config.read_text())["units"][0]["max_throughput"] == 2
    again = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and "already has" in again.stdout
    missing = subprocess.run(command[:-1] + ["nope"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "no unit named 'nope'" in missing.stderr
