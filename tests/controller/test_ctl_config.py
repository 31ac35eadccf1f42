"""Config parsing: defaults, the example file, and errors that name the offending key."""

import json
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from controller.config import ConfigError, ControllerConfig, Prometheus, Timing, Unit, load_config, parse_config

ROOT = Path(__file__).resolve().parents[2]


def minimal() -> dict:
    return {
        "namespace": "sd21",
        "units": [
            {
                "name": "sd21-inf2",
                "pool": "cost",
                "instance_type": "inf2.xlarge",
                "price_per_hour": 0.7582,
                "max_throughput": 105,
                "latency_s": 0.67,
                "max_replicas": 4,
            },
            {
                "name": "sd21-g5-triton",
                "pool": "capacity",
                "instance_type": "g5.xlarge",
                "price_per_hour": 1.006,
                "max_throughput": 90,
                "latency_s": 0.68,
                "max_replicas": 4,
            },
        ],
        "router": {"name": "sd21-router"},
    }


def test_minimal_config_gets_documented_defaults():
    cfg = parse_config(minimal())
    assert isinstance(cfg, ControllerConfig)
    assert cfg.router.kind == "inferencegraph" and cfg.router.namespace == "sd21"
    assert cfg.timing == Timing()
    assert cfg.units[0].namespace == "sd21"  # unit namespace defaults to the top-level one
    assert cfg.units[0].min_replicas == 0 and cfg.units[0].startup_s == 300.0
    assert cfg.prometheus is None and not cfg.prewarm.enabled
    assert cfg.lease.enabled and cfg.lease.namespace == "sd21"
    assert [u.name for u in cfg.cost_units] == ["sd21-inf2"]
    assert cfg.unit("sd21-g5-triton").pool == "capacity"


def test_example_config_loads_with_table1_numbers():
    cfg = load_config(ROOT / "examples" / "controller.yaml")
    by_name = {u.name: u for u in cfg.units}
    assert set(by_name) == {"sd21-inf2", "sd21-trn1", "sd21-g5-triton", "sd21-g6-triton", "sd21-g5-cuda"}
    assert by_name["sd21-inf2"].pool == "cost" and by_name["sd21-inf2"].price_per_hour == 0.7582
    assert by_name["sd21-trn1"].max_throughput == 130 and by_name["sd21-g5-cuda"].latency_s == 0.92
    assert cfg.router.name == "sd21-router"


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d["units"][1].update(price_per_hour=0), "units[1].price_per_hour: must be > 0"),
        (lambda d: d["units"][0].update(pool="spot"), "units[0].pool: must be one of cost, capacity"),
        (lambda d: d["units"][0].pop("max_throughput"), "units[0].max_throughput: is required"),
        (lambda d: d["units"][0].update(max_replicas="many"), "units[0].max_replicas: must be an integer"),
        (lambda d: d["units"][0].update(min_replicas=9), "units[0].min_replicas: must be <= max_replicas"),
        (lambda d: d["units"][1].update(name="sd21-inf2"), "units[1].name: duplicate unit name"),
        (lambda d: d["units"][0].update(name="Bad_Name"), "units[0].name: must be a lowercase DNS-1123 name"),
        (lambda d: d["units"][0].update(colour="red"), "units[0].colour: unknown key"),
        (lambda d: d.update(units=[]), "units: must be a non-empty list"),
        (lambda d: d["units"][1].update(pool="cost"), "units: need at least one unit with pool: capacity"),
        (lambda d: d.pop("router"), "router: is required"),
        (lambda d: d["router"].update(kind="nginx"), "router.kind: must be one of"),
        (lambda d: d["router"].update(action="x"), "router.action: only valid with kind: alb-ingress"),
        (lambda d: d["units"][0].update(namespace="other"), "units[0].namespace: must equal router.namespace"),
        (lambda d: d.update(timing={"interval_s": -1}), "timing.interval_s: must be > 0"),
        (lambda d: d.update(timing={"max_weight_step": 0}), "timing.max_weight_step: must be >= 1"),
        (lambda d: d.update(timing={"interval_s": 60, "signal_max_age_s": 30}), "timing.signal_max_age_s"),
        (lambda d: d.update(timing={"fallback_hold": 3}), "timing.fallback_hold: unknown key"),
        (lambda d: d.update(thresholds={"headroom_ratio": 0.5}), "thresholds.headroom_ratio: must be >= 1"),
        (lambda d: d.update(prometheus={"url": "prom:9090"}), "prometheus.url: must start with http"),
        (lambda d: d.update(prewarm={"enabled": "yes"}), "prewarm.enabled: must be true or false"),
        (lambda d: d.update(lease={"duration_s": 5, "renew_s": 5}), "lease.renew_s: must be < duration_s"),
        (lambda d: d.update(metrics_port=70000), "metrics_port: must be <= 65535"),
        (lambda d: d.update(extra=1), "extra: unknown key"),
        (lambda d: d["units"][1].update(capacity_type="preemptible"), "units[1].capacity_type: must be on-demand or spot"),
        (lambda d: d.update(routing={"drop_cost_usd": -1}), "routing.drop_cost_usd: must be >= 0"),
    ],
)
def test_invalid_config_names_the_key(mutate, message):
    data = minimal()
    mutate(data)
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    assert str(err.value).startswith(message), str(err.value)


def test_alb_router_defaults_action_and_prometheus_empty_url_means_none():
    data = minimal()
    data["router"] = {"kind": "alb-ingress", "name": "sd21-ing"}
    data["prometheus"] = {"url": ""}
    cfg = parse_config(data)
    assert cfg.router.action == "weighted-routing"
    assert cfg.prometheus is None


def test_load_config_reports_file_and_yaml_errors(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("units: [\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(bad)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(ConfigError, match="empty"):
        load_config(empty)
    notmap = tmp_path / "list.yaml"
    notmap.write_text("- 1\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(notmap)


def test_throughput_unit_is_per_second_unless_the_config_says_per_minute():
    base = {
        "units": [
            {"name": "a", "pool": "cost", "instance_type": "x", "price_per_hour": 1, "max_throughput": 105,
             "latency_s": 0.7, "max_replicas": 2},
            {"name": "b", "pool": "capacity", "instance_type": "y", "price_per_hour": 2, "max_throughput": 90,
             "latency_s": 0.7, "max_replicas": 2},
        ],
        "router": {"name": "r"},
    }
    assert parse_config(base).per_second == 1
    assert parse_config({**base, "throughput_per": "minute"}).per_second == 60
    with pytest.raises(ConfigError, match="throughput_per: must be one of second, minute"):
        parse_config({**base, "throughput_per": "hour"})


GOLDEN = Path(__file__).with_name("ctl_config_golden.json")
PROM_ENV = " with TRAFFIC_CONTROLLER_PROMETHEUS_URL="


def shipped_configs() -> list[str]:
    """Every controller config the repository ships: YAML files with a top-level ``units`` list."""
    found = []
    for path in sorted([*ROOT.glob("controller/deploy/*.yaml"), *ROOT.glob("examples/**/*.yaml")]):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and isinstance(doc.get("units"), list):
                found.append(str(path.relative_to(ROOT)))
    return found


def as_plain(value):
    """JSON's view of a parsed config (tuples become lists), as stored in the golden file."""
    return json.loads(json.dumps(value))


def test_golden_covers_every_shipped_config():
    golden = json.loads(GOLDEN.read_text())
    assert shipped_configs() == sorted(k for k in golden if PROM_ENV not in k)


@pytest.mark.parametrize("key", sorted(json.loads(GOLDEN.read_text())))
def test_shipped_config_parses_to_the_values_the_hand_written_parser_gave(key):
    """ctl_config_golden.json holds what the hand-written parser (before pydantic) built from
    each shipped config, field by field; the file format did not change."""
    path, _, url = key.partition(PROM_ENV)
    env = {"TRAFFIC_CONTROLLER_PROMETHEUS_URL": url} if url else None
    cfg = load_config(ROOT / path, env=env)
    assert as_plain(cfg.model_dump()) == json.loads(GOLDEN.read_text())[key]


def test_every_error_in_the_file_is_reported_with_its_key_path():
    data = minimal()
    data["units"][1]["price_per_hour"] = -2
    data["units"][0]["max_replicas"] = "many"
    data["timing"] = {"api_retries": 21}
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    assert str(err.value).split("; ") == [
        "units[0].max_replicas: must be an integer, got 'many'",
        "units[1].price_per_hour: must be > 0",
        "timing.api_retries: must be <= 20",
    ]


@pytest.mark.parametrize(
    "value, message",
    [
        ("5", "must be a number, got '5'"),  # YAML "5" is a string: no silent conversion
        (True, "must be a number, got True"),
        (float("nan"), "must be finite"),
    ],
)
def test_numbers_must_be_yaml_numbers(value, message):
    data = minimal()
    data["units"][0]["latency_s"] = value
    with pytest.raises(ConfigError, match=rf"^units\[0\]\.latency_s: {message}"):
        parse_config(data)


def test_integral_floats_are_integers_and_null_sections_take_defaults():
    data = minimal()
    data["units"][0]["max_replicas"] = 4.0
    data.update(timing=None, prewarm=None, lease=None)
    cfg = parse_config(data)
    assert cfg.units[0].max_replicas == 4 and isinstance(cfg.units[0].max_replicas, int)
    assert cfg.timing == Timing() and cfg.lease.namespace == "sd21"


def test_measured_demand_makes_merit_order_the_default_strategy():
    data = minimal()
    data["prewarm"] = {"enabled": True}
    assert parse_config(data).routing.strategy == "proportional"
    data["prometheus"] = {"url": "http://prometheus:9090/"}
    cfg = parse_config(data)
    assert cfg.routing.strategy == "merit-order" and cfg.prometheus.url == "http://prometheus:9090"


def test_config_is_immutable():
    cfg = parse_config(minimal())
    with pytest.raises(ValidationError, match="frozen"):
        cfg.units[0].max_replicas = 99
    with pytest.raises(ValidationError, match="frozen"):
        cfg.timing = Timing(interval_s=1)


def section_models():
    return [ControllerConfig, *{f.annotation for f in ControllerConfig.model_fields.values()
                                if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel)},
            Prometheus, Unit]


@pytest.mark.parametrize("model", section_models(), ids=lambda m: m.__name__)
def test_every_key_is_documented_where_it_is_declared(model):
    undocumented = [name for name, f in model.model_fields.items() if not f.description]
    assert undocumented == []
