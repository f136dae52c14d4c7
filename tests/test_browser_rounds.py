"""A human feedback round through the style page in headless Chromium, against `styledrop up --model tiny` with
real workers: make samples, tick two, start round 2, see v2 with its scores, keep v1 as the default."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from testkit.images import style_png
from testkit.stack import BrowserStack
from tests.helpers.browser import api, new_page, screenshots, sign_in

pytestmark = [pytest.mark.browser, pytest.mark.timeout(600)]


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
    assert page.locator('#rounds tr[data-version="1"] .badge').inner_text() == "default"
    assert not page.locator("#start-round").is_visible()
    page.get_by_role("button", name="Make samples").click()
    # The page waits for every sample and reloads: 10 feedback prompts, 2 images each, each with a tick box.
    page.wait_for_function("() => document.querySelectorAll('#samples .pick').length === 20", timeout=300_000)
    boxes = page.locator("#samples .pick")
    boxes.nth(0).check()
    boxes.nth(3).check()
    picked = [(boxes.nth(i).get_attribute("data-generation-id"), int(boxes.nth(i).get_attribute("data-index") or -1))
              for i in (0, 3)]
    page.get_by_role("button", name="Start round 2").click()
    page.wait_for_selector('.job[data-job-id]')
    round_job = _until("a round job", lambda: next((j for j in client.get("/v1/jobs").json()["items"]
                                                    if j["params"].get("round")), None), browser_stack)
    assert round_job["params"]["round"]["selection"] == [{"generation_id": g, "index": i} for g, i in picked]
    _until("v2", lambda: client.get(f"/v1/jobs/{round_job['id']}").json()["state"] == "succeeded", browser_stack)

    # The page watching the round's job reloads itself when it succeeds, with the new version in the table.
    page.wait_for_selector('#rounds tr[data-version="2"]', timeout=60_000)
    v2_row = page.locator('#rounds tr[data-version="2"]')
    assert v2_row.locator(".badge").inner_text() == "default"  # the newest, until the user chooses
    assert all(c != "–" for c in v2_row.locator("td").all_inner_texts()[:2])  # both scores shown
    page.get_by_role("button", name="Make v1 the default").click()
    page.wait_for_function("() => document.querySelector('#rounds tr[data-version=\"1\"] .badge') !== null")
    assert client.get(f"/v1/styles/{style}").json()["default_version"] == 1
    screenshots(page, "rounds")
