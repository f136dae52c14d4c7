"""A human feedback round through the style page in headless Chromium, against `styledrop up --model tiny` with
real workers: make samples, tick two, start round 2 (while it trains, nothing else to start), see v2 with its
scores and v1's samples as history with the used picks marked, generate with a chosen version, keep v1 as the
default; the page stays a bounded height at 1280 and 390 px."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from testkit.images import style_png
from testkit.stack import BrowserStack
from tests.helpers.browser import api, new_page, screenshots, sign_in

pytestmark = [pytest.mark.browser, pytest.mark.timeout(600)]


def _items(answer: httpx.Response) -> list[Any]:
    """A listing's rows: a bare array, or the {"items": [...], "next": ...} envelope."""
    body = answer.json()
    return body if isinstance(body, list) else body["items"]


def _until(what: str, check: Any, stack: BrowserStack, timeout: float = 240) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"{what} did not happen\n{stack.logs()}")


def test_a_human_round_from_the_style_page(browser: Any, browser_stack: BrowserStack,
                                           browser_keys: dict[str, str]) -> None:
    client: httpx.Client = api(browser_stack, browser_keys["alice"])
    r = client.post("/v1/styles", files={"image": ("s.png", style_png((30, 160, 90)), "image/png")},
                    data={"descriptor": "green stripes", "steps": "4", "seed": "2"})
    assert r.status_code == 202, r.text
    style = r.json()["style"]["id"]
    _until("v1", lambda: client.get(f"/v1/jobs/{r.json()['job']['id']}").json()["state"] == "succeeded",
           browser_stack)

    page = new_page(browser)
    sign_in(page, browser_stack, browser_keys["alice"])
    page.goto(f"{browser_stack.url}/styles/{style}")
    assert page.locator('#rounds tr[data-version="1"] td[data-label="Default"] .badge').inner_text() == "default"
    assert page.locator("#job-title").inner_text() == "Trained v1 · first training"
    assert page.locator("#start-round").count() == 0 and page.get_by_text("No samples of v1 yet.").is_visible()
    page.get_by_role("button", name="Make samples").click()
    # The set's progress while it renders (GET /v1/styles/{id}/samples): "Samples 0/10 · 0% · ETA …".
    page.wait_for_function("() => /^Samples \\d+\\/10/.test(document.querySelector('#samples-progress').textContent)")
    # The page waits for every sample and reloads: 10 feedback prompts, 2 images each, each with a tick box.
    page.wait_for_function("() => document.querySelectorAll('#samples .pick').length === 20", timeout=300_000)
    boxes = page.locator("#samples .pick")
    boxes.nth(0).check()
    boxes.nth(3).check()
    picked = [(boxes.nth(i).get_attribute("data-generation-id"), int(boxes.nth(i).get_attribute("data-index") or -1))
              for i in (0, 3)]
    page.locator("#picked-count").filter(has_text="2 picked").wait_for()
    page.get_by_role("button", name="Start round 2").click()
    # The page reloads on the queued round: it says which version it trains, and offers nothing else to start
    page.locator("#round-busy").wait_for()
    assert page.locator("#job-title").inner_text() == "Training v2 · feedback round from 2 picked images"
    for control in ("#make-samples", "#start-round", "#automatic-round", "#samples .pick"):
        assert page.locator(control).count() == 0, control
    assert page.locator('.sample-set[data-version="1"] .badge.used').count() == 2
    round_job = _until("a round job", lambda: next((j for j in _items(client.get("/v1/jobs"))
                                                    if j["params"].get("round")), None), browser_stack)
    assert round_job["params"]["round"]["selection"] == [{"generation_id": g, "index": i} for g, i in picked]
    _until("v2", lambda: client.get(f"/v1/jobs/{round_job['id']}").json()["state"] == "succeeded", browser_stack)

    # The page watching the round's job reloads itself when it succeeds, with the new version in the table.
    page.wait_for_selector('#rounds tr[data-version="2"]', timeout=60_000)
    v2_row = page.locator('#rounds tr[data-version="2"]')
    assert v2_row.locator('td[data-label="Default"] .badge').inner_text() == "default"  # the newest, until chosen
    assert all(c != "–" for c in v2_row.locator('td[data-label^="CLIP"]').all_inner_texts())  # both scores shown
    assert page.locator('#rounds tr[data-version="1"]').count() == 1  # the history keeps v1
    # v1's samples are history now: collapsed, read-only, the two picks marked; round 3 starts from v2's samples
    earlier = page.locator('.sample-set[data-version="1"]')
    assert earlier.get_attribute("open") is None and earlier.locator(".pick").count() == 0
    assert "used in a round" in earlier.locator("summary").inner_text()
    assert page.get_by_role("button", name="Make samples of v2").is_visible()
    assert page.locator("#start-round").count() == 0 and page.get_by_text("Round 3: train v3").is_visible()
    assert page.get_by_role("button", name="Delete adapter v2").is_visible()
    assert page.get_by_role("link", name="Download adapter v2 (.safetensors)").is_visible()

    # Generate with v1 although v2 is the default: the version menu
    versions = {v["version"]: v["id"] for v in _items(client.get(f"/v1/styles/{style}/versions"))}
    assert page.locator("#gen_version option:checked").inner_text() == "v2 (default)"
    page.locator("#gen_version").select_option(label="v1")
    page.get_by_label("Prompt", exact=True).fill("a kite")
    with page.expect_response(lambda r: r.url.endswith("/v1/generations") and r.request.method == "POST") as posted:
        page.get_by_role("button", name="Generate").click()
    assert posted.value.status == 202 and posted.value.json()["adapter_id"] == versions[1], posted.value.text()

    # Bounded height, nothing sideways, at both widths (samples live in collapsed, scrolling boxes)
    for width, most in ((1280, 3000), (390, 5500)):  # 5,949 and 7,648 px when samples flooded the page
        page.set_viewport_size({"width": width, "height": 900})
        page.wait_for_timeout(150)
        height = page.evaluate("() => document.documentElement.scrollHeight")
        assert height <= most, (width, height)
        assert page.evaluate("() => document.documentElement.scrollWidth") <= width
    page.set_viewport_size({"width": 1280, "height": 900})

    page.get_by_role("button", name="Make v1 the default").click()
    page.wait_for_function(
        "() => document.querySelector('#rounds tr[data-version=\"1\"] td[data-label=Default] .badge') !== null")
    assert client.get(f"/v1/styles/{style}").json()["default_version"] == 1
    screenshots(page, "rounds")
