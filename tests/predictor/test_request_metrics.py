"""predictor_requests_total and predictor_request_seconds: what the unit dashboard's request rate,
latency and outcome panels read, counted on the real server over REST v2 and v1."""

from __future__ import annotations

import re

import requests

from tests.predictor.harness import v2_body


def samples(server, name: str) -> dict[str, float]:
    """label set -> value for one metric on /metrics (model sd)."""
    text = requests.get(f"{server.http}/metrics", timeout=5).text
    found = {}
    for match in re.finditer(rf"^{name}\{{([^}}]*)\}} (\S+)$", text, flags=re.M):
        if 'model_name="sd"' in match[1]:
            found[match[1]] = float(match[2])
    return found


def outcome(server, which: str) -> float:
    return sum(v for labels, v in samples(server, "predictor_requests_total").items() if f'outcome="{which}"' in labels)


def latency_count(server) -> float:
    return sum(samples(server, "predictor_request_seconds_count").values())


def test_answered_requests_are_counted_ok_and_timed_on_v2_and_v1(server):
    ok, timed = outcome(server, "ok"), latency_count(server)
    assert requests.post(f"{server.http}/v2/models/sd/infer", json=v2_body(["one"]), timeout=60).status_code == 200
    assert requests.post(f"{server.http}/v1/models/sd:predict", json={"instances": [{"prompt": "two"}]},
                         timeout=60).status_code == 200
    assert outcome(server, "ok") == ok + 2
    assert latency_count(server) == timed + 2
    assert all('device="cpu"' in labels for labels in samples(server, "predictor_request_seconds_count"))


def test_bad_input_is_counted_by_outcome_and_not_timed(server):
    bad, timed = outcome(server, "invalid_input"), latency_count(server)
    response = requests.post(f"{server.http}/v2/models/sd/infer", json=v2_body([""]), timeout=30)
    assert response.status_code == 400
    assert outcome(server, "invalid_input") == bad + 1
    assert latency_count(server) == timed


def test_every_outcome_and_rejection_series_exists_from_the_start(server):
    """A counter first scraped after its first increment hides that increment from rate()."""
    from predictor.metrics import OUTCOMES, REJECTION_REASONS

    requests_total = samples(server, "predictor_requests_total")
    rejected = samples(server, "predictor_requests_rejected_total")
    for which in OUTCOMES:
        assert any(f'outcome="{which}"' in labels for labels in requests_total), which
    for reason in REJECTION_REASONS:
        assert any(f'reason="{reason}"' in labels for labels in rejected), reason
