"""The generate form in headless Chromium against the real service (tiny model): the style strength slider
reaches −1 (no style), λB is sent when given, and a subject trained through the API is mixed in with its γ —
the request the page makes is the one the API documents, and it renders."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from testkit.images import style_png
from testkit.stack import BrowserStack

pytestmark = [pytest.mark.browser, pytest.mark.timeout(600)]


def _trained_adapter(client: httpx.Client, **form: str) -> str:
    images = [("image", (f"{n}.png", style_png((60 + 50 * n, 120, 200 - 50 * n)), "image/png")) for n in range(2)]
    created = client.post("/v1/styles", data={"steps": "4", **form}, files=images)
    assert created.status_code == 202, created.text
    job_id = created.json()["job"]["id"]
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["state"] in ("succeeded", "failed", "cancelled"):
            assert job["state"] == "succeeded", job
            return str(job["adapter_id"])
        time.sleep(1)
    raise AssertionError(f"job {job_id} did not finish")


def test_the_form_sends_no_style_text_guidance_and_a_subject(browser: Any, browser_stack: BrowserStack,
                                                           browser_keys: dict[str, str]) -> None:
    key = browser_keys["alice"]
    with httpx.Client(base_url=browser_stack.url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
        style = _trained_adapter(client, descriptor="blue poster", caption="a tower in blue poster style")
        subject = _trained_adapter(client, kind="subject", class_word="dog")

    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(30_000)
    page = context.new_page()
    page.goto(browser_stack.url + "/signin")
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_load_state()
    page.goto(browser_stack.url + "/gallery")

    page.locator("#style_strength").focus()
    page.keyboard.press("Home")  # the slider's minimum is the engine's "no style"
    assert page.locator("#style_strength_out").inner_text() == "-1.0"
    for _ in range(10):
        page.keyboard.press("ArrowRight")
    assert page.locator("#style_strength_out").inner_text() == "0.0"  # the adapter as trained
    page.locator("#gen_style").select_option(label="blue poster")  # each style once; its default version follows
    assert page.locator("#gen_version").input_value() == style
    page.locator("#gen_subject").select_option(value=subject)
    page.locator("#subject_weight").focus()
    for _ in range(4):
        page.keyboard.press("ArrowRight")
    assert page.locator("#subject_weight_out").inner_text() == "0.7"
    page.get_by_label("Text guidance λB").fill("5")
    page.get_by_label("Prompt", exact=True).fill("a photo of sks dog in blue poster style")
    page.get_by_label("Steps").fill("3")
    with page.expect_response(lambda r: r.url.endswith("/v1/generations") and r.request.method == "POST") as posted:
        page.get_by_role("button", name="Generate").click()
    assert posted.value.status == 202, posted.value.text()
    gen = posted.value.json()
    assert (gen["adapter_id"], gen["subject_adapter_id"], gen["style_strength"]) == (style, subject, 0.0)
    assert (gen["subject_weight"], gen["text_guidance"]) == (0.7, 5.0)
    page.locator(f'.shot[data-generation-id="{gen["id"]}"] img').wait_for(timeout=120_000)
    context.close()
