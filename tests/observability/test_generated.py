"""Dashboards and alerts use only metric names the code exports, and the committed files are current."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

from observability import names
from observability.__main__ import generated_files
from observability.dashboards import dashboards, queries
from observability.rules import alerts
from tests.conftest import require_binary

ROOT = Path(__file__).resolve().parents[2]
METRIC = re.compile(r"\b(?:predictor|traffic_controller)_[a-z_]+\b")


def all_queries() -> list[tuple[str, str]]:
    found = [(f"{stem}: {title}", expr) for stem, model in dashboards().items() for title, expr in queries(model)]
    return found + [(f"alert {alert.name}", alert.expr) for alert in alerts()]


def test_every_metric_name_in_a_query_is_one_the_code_exports() -> None:
    exported = names.predictor_series() | names.controller_series()
    used = {(where, name) for where, expr in all_queries() for name in METRIC.findall(expr)}
    assert used, "no metric names found in the queries"
    unknown = sorted((where, name) for where, name in used if name not in exported)
    assert unknown == []


def test_the_name_check_catches_a_misspelled_metric() -> None:
    exported = names.predictor_series() | names.controller_series()
    assert "predictor_request_seconds_bucket" in exported and "traffic_controller_leader" in exported
    assert not {"predictor_requests_rejected", "traffic_controller_weights_percent"} & exported


def test_the_committed_dashboards_and_rules_are_what_the_code_generates() -> None:
    for path, text in generated_files().items():
        assert path.is_file(), f"{path} missing: run python -m observability"
        assert path.read_text() == text, f"{path} is out of date: run python -m observability"
    result = subprocess.run([sys.executable, "-m", "observability", "--check"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_dashboards_are_labelled_for_the_grafana_sidecar() -> None:
    kustomization = yaml.safe_load((ROOT / "deploy" / "monitoring" / "kustomization.yaml").read_text())
    (generator,) = kustomization["configMapGenerator"]
    assert generator["options"]["labels"] == {"grafana_dashboard": "1"}
    files = {Path(f).stem for f in generator["files"]}
    assert files == set(dashboards())


def test_promtool_accepts_the_rules(tmp_path: Path) -> None:
    promtool = require_binary("promtool")
    rule = yaml.safe_load((ROOT / "deploy" / "monitoring" / "prometheusrule.yaml").read_text())
    rules_file = tmp_path / "rules.yml"
    rules_file.write_text(yaml.safe_dump(rule["spec"]))
    result = subprocess.run([promtool, "check", "rules", str(rules_file)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in result.stdout


def test_every_alert_has_a_section_in_the_operating_guide() -> None:
    guide = (ROOT / "docs" / "operating.md").read_text()
    headings = set(re.findall(r"^### (\S+)$", guide, flags=re.M))
    assert {alert.name for alert in alerts()} <= headings
    for alert in alerts():
        assert alert.rule()["annotations"]["runbook_url"] == f"docs/operating.md#{alert.name.lower()}"
