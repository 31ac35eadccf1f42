"""The playground in a real browser: headless Chromium driven by Selenium, against the real predictors.

Set PLAYGROUND_SCREENSHOTS=docs/img to save the README's screenshots from real output:
playground.png (side by side) and playground-router.png (router mode); docs/playground.md.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require_binary

WAIT_S = 180


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    chromium = require_binary("chromium")
    chromedriver = require_binary("chromedriver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    profile = tempfile.mkdtemp(prefix="playground-chromium-")
    for flag in (
        "--headless",
        "--no-sandbox",  # the tests may run as root
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--window-size=1280,1000",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def open_page(browser, playground):
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(playground.url)
    WebDriverWait(browser, 30).until(lambda d: d.execute_script("return document.body.dataset.ready === 'true'"))


def fill(browser, field: str, value: str) -> None:
    element = browser.find_element("id", field)
    element.clear()
    element.send_keys(value)


def choose_endpoints(browser, names: set[str]) -> None:
    for box in browser.find_elements("css selector", "#endpoint-list input[type=checkbox]"):
        if box.is_selected() != (box.get_attribute("value") in names):
            box.click()


def wait_for(browser, condition, timeout: float = WAIT_S):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, timeout).until(condition)


def image_width(browser, endpoint: str) -> int:
    return browser.execute_script(
        "const img = document.querySelector(`[data-endpoint='${arguments[0]}'] img.result-image`);"
        "return img && img.complete ? img.naturalWidth : 0;",
        endpoint,
    )


def card_text(browser, endpoint: str, selector: str) -> str:
    return browser.find_element("css selector", f"[data-endpoint='{endpoint}'] {selector}").text


def no_trace(browser) -> None:
    page = browser.find_element("tag name", "body").text
    assert "Traceback" not in page and 'File "' not in page, page


def save_screenshot(browser, path: Path) -> None:
    """A palette PNG of the page: the UI is flat colour, so 256 colours keep it small and exact enough."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    width = browser.get_window_size()["width"]
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(width, min(height + 140, 2400))  # + the window's chrome: the whole page
    image = Image.open(io.BytesIO(browser.get_screenshot_as_png())).convert("RGB")
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def test_generate_shows_both_images_and_both_latencies(browser, playground):
    open_page(browser, playground)
    fill(browser, "prompt", "a lighthouse at dawn, oil painting")
    fill(browser, "steps", "2")
    fill(browser, "width", "64")
    fill(browser, "height", "64")
    fill(browser, "guidance", "7.5")
    fill(browser, "seed", "42")
    choose_endpoints(browser, {"cpu-a", "cpu-b"})
    browser.find_element("id", "generate").click()

    wait_for(browser, lambda d: image_width(d, "cpu-a") > 0 and image_width(d, "cpu-b") > 0)
    for unit in ("cpu-a", "cpu-b"):
        assert image_width(browser, unit) == 64
        latency = card_text(browser, unit, ".latency")
        assert latency.endswith(" ms") and float(latency[:-3].replace(",", "")) > 0, latency
        assert card_text(browser, unit, ".unit") == unit
        assert card_text(browser, unit, ".device").startswith("cpu")
    assert not browser.find_element("id", "message").is_displayed()
    no_trace(browser)
    if folder := os.environ.get("PLAYGROUND_SCREENSHOTS"):
        save_screenshot(browser, Path(folder) / "playground.png")


def test_an_empty_prompt_shows_a_message_instead_of_results(browser, playground):
    open_page(browser, playground)
    fill(browser, "prompt", "   ")
    browser.find_element("id", "generate").click()
    message = browser.find_element("id", "message")
    wait_for(browser, lambda d: message.is_displayed(), timeout=10)
    assert message.text == "Enter a prompt: it is empty."
    assert browser.find_elements("css selector", "#results .card") == []
    no_trace(browser)


def test_an_empty_prompt_that_reaches_the_server_is_refused_with_the_same_message(browser, playground):
    """The page's own check bypassed (a stale page, a script): the server's 400 is shown the same way."""
    open_page(browser, playground)
    browser.execute_script("formProblem = () => null;")
    fill(browser, "prompt", " ")
    browser.find_element("id", "generate").click()
    message = browser.find_element("id", "message")
    wait_for(browser, lambda d: message.is_displayed(), timeout=30)
    assert message.text == "Enter a prompt: it is empty."
    no_trace(browser)


def test_a_server_that_is_down_gets_a_clear_message_and_the_other_still_renders(browser, playground):
    open_page(browser, playground)
    fill(browser, "prompt", "a red apple")
    choose_endpoints(browser, {"cpu-a", "down"})
    browser.find_element("id", "generate").click()
    wait_for(browser, lambda d: d.find_elements("css selector", "[data-endpoint='down'] .error"))
    wait_for(browser, lambda d: image_width(d, "cpu-a") > 0)
    error = card_text(browser, "down", ".error")
    assert error == f"cannot reach {playground.down_url}: connection refused (is the server running and listening on that port?)"
    assert card_text(browser, "cpu-a", ".latency").endswith(" ms")
    no_trace(browser)


def test_a_4xx_from_the_server_shows_its_message(browser, playground):
    open_page(browser, playground)
    fill(browser, "prompt", "a red apple")
    fill(browser, "width", "60")
    choose_endpoints(browser, {"cpu-b"})
    browser.find_element("id", "generate").click()
    wait_for(browser, lambda d: d.find_elements("css selector", "[data-endpoint='cpu-b'] .error"))
    assert card_text(browser, "cpu-b", ".error") == "HTTP 400 from cpu-b: request: width must be a multiple of 8, got 60"
    no_trace(browser)


def test_router_mode_shows_which_unit_served_each_request(browser, playground):
    from selenium.webdriver.support.ui import Select

    open_page(browser, playground)
    browser.find_element("id", "mode-router").click()
    fill(browser, "prompt", "a blue car")
    Select(browser.find_element("id", "router-endpoint")).select_by_value("router")
    fill(browser, "requests", "10")
    fill(browser, "concurrency", "4")
    browser.find_element("id", "run-router").click()

    wait_for(browser, lambda d: d.find_elements("css selector", "#unit-table tbody tr"))
    rows = {
        row.get_attribute("data-unit"): [cell.text for cell in row.find_elements("tag name", "td")]
        for row in browser.find_elements("css selector", "#unit-table tbody tr")
    }
    assert set(rows) == {"cpu-a", "cpu-b"}
    assert sum(int(cells[2]) for cells in rows.values()) == 10
    assert all(cells[1] == "cpu" and cells[4] != "–" for cells in rows.values())
    assert browser.find_element("id", "router-summary").text.startswith("10 of 10 requests to router succeeded")
    assert len(browser.find_elements("css selector", "#histogram .bin")) == 10
    no_trace(browser)
    if folder := os.environ.get("PLAYGROUND_SCREENSHOTS"):
        save_screenshot(browser, Path(folder) / "playground-router.png")
