"""The pages in headless Chromium (Playwright, sync API) against the real service with the tiny model.

`python -m worker.cli up --model tiny` runs once for this module (API + train worker + generate worker); the tests
run in file order and share it: (a) upload → live progress → previews → generate → download, (b) a refused upload,
(d) admin page access, (c) an admin cancels another user's running job. Every test saves screenshots of its last
page at 390 px and 1280 px under test-artifacts/.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers.images import style_png
from tests.helpers.stack import BROWSER_ARTIFACTS, BrowserStack

logger = logging.getLogger(__name__)

pytestmark = [pytest.mark.browser, pytest.mark.timeout(600)]

WIDTHS = {"phone": (390, 844), "desktop": (1280, 900)}
TRAIN_TIMEOUT_MS = 240_000

# Records every value the page gives a <progress> element, to prove the bar moved without a reload.
PROGRESS_RECORDER = """
window.__bars = [];
document.addEventListener('DOMContentLoaded', () => {
  new MutationObserver((records) => {
    for (const r of records) {
      if (r.target.tagName === 'PROGRESS') window.__bars.push(Number(r.target.getAttribute('value')));
    }
  }).observe(document.body, { attributes: true, subtree: true, attributeFilter: ['value'] });
});
"""


def new_page(browser: Any, width: str = "desktop") -> Any:
    w, h = WIDTHS[width]
    context = browser.new_context(viewport={"width": w, "height": h}, accept_downloads=True)
    context.set_default_timeout(30_000)
    page = context.new_page()
    # The pages run under a strict Content-Security-Policy: anything it blocks is a bug (checked in screenshots()).
    page.csp_violations = []
    page.on("console", lambda msg: page.csp_violations.append(msg.text)
            if "Content Security Policy" in msg.text else None)
    return page


def sign_in(page: Any, stack: BrowserStack, key: str, path: str = "/signin") -> None:
    page.goto(stack.url + path)
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_load_state()


def screenshots(page: Any, name: str) -> None:
    """The last page at phone and desktop width; and nothing the page did was blocked by its CSP."""
    assert not page.csp_violations, page.csp_violations
    BROWSER_ARTIFACTS.mkdir(exist_ok=True)
    for label, (w, h) in WIDTHS.items():
        page.set_viewport_size({"width": w, "height": h})
        page.wait_for_timeout(150)
        page.screenshot(path=str(BROWSER_ARTIFACTS / f"{name}-{label}-{w}.png"), full_page=True)


def api(stack: BrowserStack, key: str) -> httpx.Client:
    return httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {key}"}, timeout=30)


def test_a_upload_watch_training_generate_and_download(
    browser: Any, browser_stack: BrowserStack, browser_keys: dict[str, str], tmp_path: Path
) -> None:
    page = new_page(browser)
    page.add_init_script(PROGRESS_RECORDER)
    sign_in(page, browser_stack, browser_keys["alice"])
    assert page.url == browser_stack.url + "/styles"
    assert page.get_by_role("heading", name="My styles").is_visible()

    page.get_by_role("link", name="New style").first.click()
    page.wait_for_url("**/styles/new")
    style_png = tmp_path / "stripes.png"
    style_png.write_bytes(style_png((30, 120, 200)))
    page.set_input_files("#image", str(style_png))
    # Arrow functions, not expression strings: Playwright polls an expression with eval(), which the pages' CSP
    # (rightly) forbids; a function is compiled once through the DevTools protocol.
    page.wait_for_function("() => document.querySelector('#file-info').textContent.includes('256×256 px')")
    assert page.locator("#preview-img").is_visible()
    assert re.search(r"stripes\.png · \d+(\.\d)? K?B · 256×256 px", page.locator("#file-info").inner_text())
    page.get_by_label("Style descriptor").fill("blue stripes poster")
    page.get_by_label("Content caption").fill("vertical stripes")
    page.get_by_text("Advanced options").click()
    page.get_by_label("Training steps").fill("40")
    page.get_by_label("Seed", exact=True).fill("3")
    page.get_by_role("button", name="Upload and train").click()
    page.wait_for_url(re.compile(r"/styles/[0-9a-f]{32}$"))
    style_url = page.url

    navigations: list[str] = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url) if frame == page.main_frame else None)
    job = page.locator(".job[data-job-id]")
    try:
        page.wait_for_selector('.job[data-state="succeeded"]', timeout=TRAIN_TIMEOUT_MS)
    except Exception:
        screenshots(page, "a-training-timeout")
        pytest.fail(f"training did not finish in the page\n{browser_stack.logs()}")
    assert navigations == [], f"the page reloaded: {navigations}"
    assert page.url == style_url
    bars: list[float] = page.evaluate("window.__bars")
    assert any(0 < v < 1 for v in bars), f"the bar never showed partial progress: {bars}"
    assert bars[-1] == 1 and bars == sorted(bars), bars
    assert job.locator('[data-role="pct"]').inner_text() == "100%"
    assert job.locator('[data-role="step"]').inner_text() == "40"
    assert page.locator('[data-role="loss"] polyline').get_attribute("points").count(",") >= 5  # a loss curve
    previews = job.locator('[data-role="previews"] img')
    previews.first.wait_for()
    assert previews.count() == 2
    page.wait_for_function(
        "() => [...document.querySelectorAll('.previews img')].every((i) => i.complete && i.naturalWidth > 0)"
    )
    assert job.get_by_role("button", name="Cancel training").is_hidden()

    # Generate with a chosen style strength, moved with the keyboard (1.0 → 2.5).
    assert page.locator("#gen-form fieldset").is_enabled()
    page.get_by_label("Prompt").fill("a lighthouse")
    page.locator("#style_strength").focus()
    for _ in range(15):
        page.keyboard.press("ArrowRight")
    assert page.locator("#style_strength_out").inner_text() == "2.5"
    page.get_by_label("Seed").last.fill("7")
    with page.expect_response(lambda r: r.url.endswith("/v1/generations") and r.request.method == "POST") as posted:
        page.get_by_role("button", name="Generate").click()
    assert posted.value.status == 202, posted.value.text()
    generated = posted.value.json()
    assert generated["style_strength"] == 2.5 and generated["seed"] == 7
    shot = page.locator(f'.gallery .shot[data-generation-id="{generated["id"]}"] img')
    shot.wait_for(timeout=120_000)
    page.wait_for_function(
        "() => [...document.querySelectorAll('.gallery img')].every((i) => i.complete && i.naturalWidth)"
    )
    assert "strength 2.5" in page.locator(".gallery .shot").first.inner_text()
    assert navigations == []

    with page.expect_download() as download_info:
        page.get_by_role("link", name="Download adapter (.safetensors)").click()
    download = download_info.value
    assert download.suggested_filename.startswith("blue-stripes-poster-")
    assert download.suggested_filename.endswith(".safetensors")
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)
    data = saved.read_bytes()
    header_len = int.from_bytes(data[:8], "little")
    assert data[8:9] == b"{" and 8 + header_len < len(data)

    page.goto(browser_stack.url + "/styles")
    card = page.locator(".style-card").first
    assert card.get_by_role("link", name="blue stripes poster").is_visible()
    card.locator('.job[data-state="succeeded"] [data-role="previews"] img').first.wait_for()
    screenshots(page, "a-styles")
    page.goto(style_url)
    page.locator(".gallery img").first.wait_for()
    screenshots(page, "a-style-page")
    page.context.close()


def test_b_refused_upload_shows_the_reason(browser: Any, browser_stack: BrowserStack,
                                           browser_keys: dict[str, str]) -> None:
    page = new_page(browser, "phone")
    sign_in(page, browser_stack, browser_keys["alice"])
    page.goto(browser_stack.url + "/styles/new")
    page.set_input_files("#image", files=[{"name": "notes.png", "mimeType": "image/png",
                                           "buffer": b"these are my notes, not a picture\n"}])
    page.wait_for_function("() => document.querySelector('#file-info').textContent.includes('cannot preview')")
    page.get_by_label("Style descriptor").fill("anything")
    page.get_by_role("button", name="Upload and train").click()
    error = page.locator("#form-error")
    error.wait_for(state="visible")
    assert "not a PNG, JPEG, WebP or GIF image" in error.inner_text()
    assert page.url.endswith("/styles/new")
    screenshots(page, "b-refused-upload")
    page.context.close()


def test_d_admin_page_needs_an_admin_and_a_signed_in_visitor(browser: Any, browser_stack: BrowserStack,
                                                             browser_keys: dict[str, str]) -> None:
    page = new_page(browser, "phone")
    response = page.goto(browser_stack.url + "/admin")
    assert page.url == browser_stack.url + "/signin?next=/admin"
    assert response is not None and response.status == 200
    page.goto(browser_stack.url + "/styles")
    assert page.url == browser_stack.url + "/signin?next=/styles"

    sign_in(page, browser_stack, browser_keys["alice"], path="/signin?next=/admin")
    assert page.url == browser_stack.url + "/admin"
    assert page.get_by_role("heading", name="Admins only").is_visible()
    assert page.get_by_role("link", name="Admin").count() == 0
    response = page.goto(browser_stack.url + "/admin")
    assert response is not None and response.status == 403

    # Sign out, then an admin signing in from the redirect lands on the admin page.
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url("**/signin")
    page.goto(browser_stack.url + "/admin")
    sign_in(page, browser_stack, browser_keys["admin"], path="/signin?next=/admin")
    assert page.url == browser_stack.url + "/admin"
    page.wait_for_function("() => document.querySelector('#admin-updated').textContent !== '—'")
    page.goto(browser_stack.url + "/signin")  # a signed-in visitor is sent on
    assert page.url == browser_stack.url + "/styles"
    page.goto(browser_stack.url + "/admin")
    page.context.close()
    alice = new_page(browser, "phone")
    sign_in(alice, browser_stack, browser_keys["alice"], path="/signin?next=/admin")
    screenshots(alice, "d-admin-403")
    alice.context.close()


def test_c_admin_cancels_another_users_running_job(browser: Any, browser_stack: BrowserStack,
                                                   browser_keys: dict[str, str]) -> None:
    with api(browser_stack, browser_keys["bob"]) as bob:
        created = bob.post("/v1/styles", files={"image": ("long.png", style_png((90, 200, 60)), "image/png")},
                           data={"descriptor": "green long run", "steps": "3000", "seed": "1"})
        assert created.status_code == 202, created.text
        job_id = created.json()["job"]["id"]
        deadline = time.monotonic() + 120
        while (current := bob.get(f"/v1/jobs/{job_id}").json())["state"] != "running" or current["step"] == 0:
            assert time.monotonic() < deadline, f"bob's job never started\n{browser_stack.logs()}"
            time.sleep(0.3)

        page = new_page(browser)
        sign_in(page, browser_stack, browser_keys["admin"], path="/signin?next=/admin")
        page.get_by_label("User").select_option("bob")
        page.get_by_label("State").select_option("running")
        row = page.locator(f'#admin-jobs tr[data-job-id="{job_id}"]')
        row.wait_for()
        assert row.get_attribute("data-state") == "running"
        cells = row.locator("td").all_inner_texts()
        assert cells[1] == "bob" and cells[8] == "1/3" and cells[9] != "—", cells  # user, attempts, worker
        assert page.locator("#workers tbody tr").count() >= 2  # train + generate workers online
        assert "train" in page.locator("#queue-depths").inner_text()

        page.get_by_label("State").select_option("")
        row.get_by_role("button", name=f"Cancel job {job_id[:8]} of bob").click()
        page.wait_for_selector(f'#admin-jobs tr[data-job-id="{job_id}"][data-state="cancelled"]', timeout=90_000)
        job = bob.get(f"/v1/jobs/{job_id}").json()
        assert job["state"] == "cancelled" and 0 < job["step"] < 3000, job
        assert row.get_by_role("button", name=f"Retry job {job_id[:8]} of bob").is_visible()
        screenshots(page, "c-admin")
        page.context.close()


def test_e_api_docs_render_offline_with_the_demo_banner_on_pages(browser: Any, browser_stack: BrowserStack) -> None:
    page = new_page(browser)
    outside: list[str] = []

    def only_this_service(route: Any) -> None:
        if route.request.url.startswith(browser_stack.url):
            route.continue_()
        else:  # what a machine without internet access would see: nothing from a CDN arrives
            outside.append(route.request.url)
            route.abort()

    page.route("**/*", only_this_service)
    page.goto(browser_stack.url + "/docs")
    page.locator(".opblock-summary-path", has_text="/v1/styles").first.wait_for()
    assert page.locator(".opblock").count() >= 10
    assert outside == []
    page.goto(browser_stack.url + "/signin")
    assert page.get_by_role("note").filter(has_text="Demo model.").is_visible()  # `up --model tiny`
    page.context.close()


def test_f_admin_rotates_a_key_and_disables_a_user_from_the_page(browser: Any, browser_stack: BrowserStack,
                                                                 browser_keys: dict[str, str]) -> None:
    with api(browser_stack, browser_keys["admin"]) as admin:
        made = admin.post("/v1/admin/users", json={"name": "erin"})
        assert made.status_code == 201, made.text
        erin_key, erin_key_id = made.json()["key"]["key"], made.json()["key"]["id"]
    erin = new_page(browser, "phone")
    sign_in(erin, browser_stack, erin_key)
    assert erin.url == browser_stack.url + "/styles"

    page = new_page(browser)
    page.on("dialog", lambda dialog: dialog.accept())  # the confirm() before rotate and disable
    sign_in(page, browser_stack, browser_keys["admin"], path="/signin?next=/admin")
    label = f"sd_{erin_key[3:11]}…"
    page.get_by_role("button", name=f"Rotate key {label} of erin").click()
    page.wait_for_selector(f'#admin-keys tr[data-key-id="{erin_key_id}"][data-state="revoked"]')
    new_key = page.locator("#new-key-value").inner_text().strip()
    assert new_key.startswith("sd_") and new_key != erin_key

    erin.reload()  # the session opened with the rotated key has ended
    assert erin.url.startswith(browser_stack.url + "/signin")
    with api(browser_stack, new_key) as client:
        assert client.get("/v1/styles").status_code == 200
        page.get_by_role("button", name="Disable erin").click()
        page.get_by_role("button", name="Enable erin").wait_for()
        assert client.get("/v1/styles").status_code == 401
    screenshots(page, "e-admin-accounts")
    screenshots(erin, "e-signed-out")
    page.context.close()
    erin.context.close()
