"""The playground's JSON API over real HTTP, against real predictors and a KServe-like router."""

from __future__ import annotations

import base64
import io
import socket

import requests
from PIL import Image

from tests.playground.conftest import start_playground, stop_playground

FORM = {"prompt": "a lighthouse at dawn", "steps": 2, "width": 64, "height": 64, "guidance": 7.5, "seed": 42}


def post(playground, path, body):
    return requests.post(f"{playground.url}{path}", json=body, timeout=180)


def png_size(data_url: str) -> tuple[int, int]:
    prefix = "data:image/png;base64,"
    assert data_url.startswith(prefix)
    return Image.open(io.BytesIO(base64.b64decode(data_url[len(prefix):]))).size


def test_one_prompt_to_two_units_returns_both_images_with_latency_unit_and_device(playground):
    response = post(playground, "/api/generate", {**FORM, "endpoints": ["cpu-a", "cpu-b"]})
    assert response.status_code == 200, response.text
    results = {result["endpoint"]: result for result in response.json()["results"]}
    assert set(results) == {"cpu-a", "cpu-b"}
    for name, result in results.items():
        assert result["ok"], result["error"]
        assert png_size(result["image"]) == (64, 64)
        assert result["latency_ms"] > 0
        assert (result["unit"], result["device"]) == (name, "cpu")
    assert results["cpu-a"]["image"] == results["cpu-b"]["image"]  # same model, same seed


def test_an_empty_prompt_is_refused_before_anything_is_sent(playground):
    response = post(playground, "/api/generate", {**FORM, "prompt": "   "})
    assert response.status_code == 400
    assert response.json() == {"error": "Enter a prompt: it is empty."}


def test_a_malformed_form_names_the_field(playground):
    response = post(playground, "/api/generate", {**FORM, "steps": "many"})
    assert response.status_code == 400 and "steps" in response.json()["error"]


def test_a_server_that_is_down_fails_its_own_card_only(playground):
    response = post(playground, "/api/generate", {**FORM, "endpoints": ["cpu-a", "down"]})
    assert response.status_code == 200
    cpu_a, down = response.json()["results"]
    assert cpu_a["ok"] and not down["ok"]
    assert down["error"] == f"cannot reach {playground.down_url}: connection refused (is the server running and listening on that port?)"


def test_the_servers_own_4xx_message_is_shown(playground):
    response = post(playground, "/api/generate", {**FORM, "width": 60, "endpoints": ["cpu-a", "router"]})
    direct, routed = response.json()["results"]
    assert direct["status"] == 400 and direct["error"] == "HTTP 400 from cpu-a: request: width must be a multiple of 8, got 60"
    assert routed["status"] == 400 and "instances[0]: width must be a multiple of 8, got 60" in routed["error"]


def test_an_unknown_endpoint_is_a_clear_400(playground):
    response = post(playground, "/api/generate", {**FORM, "endpoints": ["nope"]})
    assert response.status_code == 400 and "Unknown endpoint 'nope'" in response.json()["error"]


def test_router_mode_counts_requests_per_unit_through_the_splitter(playground):
    response = post(playground, "/api/router", {**FORM, "endpoint": "router", "requests": 12, "concurrency": 4})
    assert response.status_code == 200, response.text
    summary = response.json()
    assert (summary["requests"], summary["succeeded"], summary["failed"]) == (12, 12, 0)
    units = {row["unit"]: row for row in summary["units"]}
    assert set(units) == {"cpu-a", "cpu-b"}  # the seeded 50/50 split sends to both
    assert sum(row["count"] for row in units.values()) == 12
    assert all(row["device"] == "cpu" and row["p50"] > 0 for row in units.values())
    served = [result["unit"] for result in summary["results"]]
    assert sorted(set(served)) == ["cpu-a", "cpu-b"] and len(served) == 12
    assert set(summary["samples"]) == {"cpu-a", "cpu-b"}


def test_router_mode_on_a_dead_endpoint_reports_every_failure(playground):
    summary = post(playground, "/api/router", {**FORM, "endpoint": "down", "requests": 3}).json()
    assert (summary["succeeded"], summary["failed"], summary["units"]) == (0, 3, [])
    assert summary["errors"][0]["count"] == 3 and "connection refused" in summary["errors"][0]["error"]


def test_router_mode_caps_the_number_of_requests(playground):
    response = post(playground, "/api/router", {**FORM, "endpoint": "router", "requests": 41})
    assert response.status_code == 400 and "At most 40 requests" in response.json()["error"]


def test_unknown_paths_and_methods_answer_json_not_a_trace(playground):
    missing = requests.get(f"{playground.url}/nope", timeout=10)
    assert missing.status_code == 404 and missing.json() == {"error": "Not Found"}
    wrong = requests.get(f"{playground.url}/api/generate", timeout=10)
    assert wrong.status_code == 405 and "error" in wrong.json()


def test_the_page_works_under_a_path_prefix(playground):
    """The HTTPRoute serves it at /playground/ and strips the prefix: every URL in the page is relative."""
    page = requests.get(f"{playground.url}/", timeout=10).text
    script = requests.get(f"{playground.url}/static/app.js", timeout=10).text
    for text in (page, script):
        assert '"/static' not in text and '"/api' not in text
    assert 'src="static/app.js"' in page and 'post("api/generate"' in script


def test_an_endpoint_that_accepts_but_never_answers_times_out_with_a_message(tmp_path):
    """A hung server: the connection is accepted (listen backlog) and nothing ever comes back."""
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(8)
        url = f"http://127.0.0.1:{hung.getsockname()[1]}/v2/models/sd"
        instance = start_playground([f"hung={url}"], tmp_path, "--timeout", "1")
        try:
            response = post(instance, "/api/generate", FORM)
        finally:
            stop_playground(instance)
    (result,) = response.json()["results"]
    assert not result["ok"] and result["error"] == f"no answer from {url} within 1 s (timed out)"
