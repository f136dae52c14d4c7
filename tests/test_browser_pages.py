"""The pages in headless Chromium (Playwright, sync API) against the real service with the tiny model.

`python -m worker.cli up --model tiny` runs once for this module (API + train worker + generate worker); the tests
run in file order and share it: (a) upload → live progress → previews → generate → download, (b) a refused upload,
(d) admin page access, (c) an admin cancels another user's running job. Every test saves screenshots of its last
page at 390 px and 1280 px under test-artifacts/.
"""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from testkit.images import style_png
from testkit.stack import BrowserStack
from tests.helpers.browser import api, new_page, screenshots, sign_in

logger = logging.getLogger(__name__)

pytestmark = [pytest.mark.browser, pytest.mark.timeout(600)]

TRAIN_TIMEOUT_MS = 480_000  # a deadline, not a measurement: a shared 2-core machine can be slow

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
    image_file = tmp_path / "stripes.png"  # not `style_png`: that name is the image helper
    image_file.write_bytes(style_png((30, 120, 200)))
    page.set_input_files("#image", str(image_file))
    # Arrow functions, not expression strings: Playwright polls an expression with eval(), which the pages' CSP
    # (rightly) forbids; a function is compiled once through the DevTools protocol.
    page.wait_for_function("() => document.querySelector('#file-list .file-meta').textContent.includes('256×256 px')")
    assert page.locator("#file-list img").is_visible()
    assert re.search(r"stripes\.png · \d+(\.\d)? K?B · 256×256 px", page.locator("#file-list .file-meta").inner_text())
    page.get_by_label("Style descriptor").fill("blue stripes poster")
    page.get_by_label("Content caption").fill("vertical stripes")
    page.get_by_text("Advanced options").click()
    page.get_by_label("Training steps").fill("16")
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
    assert job.locator('[data-role="step"]').inner_text() == "16"
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
    page.get_by_label("Prompt", exact=True).fill("a lighthouse")
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
        page.get_by_role("link", name="Download adapter v1 (.safetensors)").click()
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
    page.wait_for_function(
        "() => document.querySelector('#file-list .file-meta').textContent.includes('cannot preview')")
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


# --- queue position, dead ends, the gallery, admin and API keys at 390 px ---------------------------------------

# Counts the SSE messages each EventSource delivers, so a test knows the `queued` replay has arrived.
SSE_RECORDER = """
window.__sse = 0;
const NativeEventSource = window.EventSource;
window.EventSource = class extends NativeEventSource {
  addEventListener(kind, fn, opts) { super.addEventListener(kind, (e) => { fn(e); window.__sse += 1; }, opts); }
};
"""
# Records every text a pending generation card shows (it changes faster than a test polls).
PENDING_RECORDER = """
window.__pending = [];
document.addEventListener('DOMContentLoaded', () => {
  new MutationObserver(() => {
    for (const p of document.querySelectorAll('.shot.pending p')) {
      const t = p.textContent;
      if (t && window.__pending[window.__pending.length - 1] !== t) window.__pending.push(t);
    }
  }).observe(document.body, { childList: true, subtree: true, characterData: true });
});
"""


def wait_state(client: httpx.Client, job_id: str, states: set[str], stack: BrowserStack, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while (job := client.get(f"/v1/jobs/{job_id}").json())["state"] not in states:
        assert time.monotonic() < deadline, f"job {job_id} stayed {job['state']}\n{stack.logs()}"
        time.sleep(0.3)
    return job


def no_sideways_scroll(page: Any) -> None:
    width = page.viewport_size["width"]
    assert page.evaluate("() => document.documentElement.scrollWidth") <= width


def test_g_queue_position_stays_live_cancel_is_confirmed_and_a_cancelled_style_trains_again(
    browser: Any, browser_stack: BrowserStack, browser_keys: dict[str, str]
) -> None:
    with (api(browser_stack, browser_keys["bob"]) as bob, api(browser_stack, browser_keys["alice"]) as alice,
          api(browser_stack, browser_keys["admin"]) as admin):
        # The worker is busy with the admin's job; bob's and alice's wait (each user has none running: oldest first).
        png = {"image": ("q.png", style_png((200, 120, 30)), "image/png")}
        long_job = admin.post("/v1/styles", files=png, data={"descriptor": "hog", "steps": "3000"}).json()["job"]["id"]
        wait_state(admin, long_job, {"running"}, browser_stack)
        ahead = bob.post("/v1/styles", files=png, data={"descriptor": "ahead", "steps": "20"}).json()["job"]["id"]
        mine = alice.post("/v1/styles", files=png, data={"descriptor": "amber queue", "steps": "10"}).json()
        assert alice.get(f"/v1/jobs/{mine['job']['id']}").json()["queue_position"] == 2

        page = new_page(browser, "phone")
        page.add_init_script(SSE_RECORDER)
        sign_in(page, browser_stack, browser_keys["alice"], path=f"/styles/{mine['style']['id']}")
        detail = page.locator('.job [data-role="detail"]')
        page.wait_for_function("() => window.__sse >= 1")  # the stream replayed the job's `queued` event
        assert detail.inner_text() == "position 2 in the queue"
        assert page.get_by_text("The generate form opens when training has finished.").is_visible()
        bob.post(f"/v1/jobs/{ahead}/cancel")
        page.wait_for_function(
            "() => document.querySelector('.job [data-role=\"detail\"]').textContent === 'position 1 in the queue'")

        # Cancelling asks first; "Keep training" changes nothing.
        page.get_by_role("button", name="Cancel training").click()
        assert page.get_by_text("Stop this training?").is_visible()
        page.get_by_role("button", name="Keep training").click()
        assert page.get_by_text("Stop this training?").is_hidden()
        assert alice.get(f"/v1/jobs/{mine['job']['id']}").json()["state"] == "queued"
        page.get_by_role("button", name="Cancel training").click()
        page.get_by_role("button", name="Yes, stop training").click()
        page.wait_for_selector('.job[data-state="cancelled"]')
        # the page learns the final state from the cancel answer, then fetches the job: the way on follows
        page.get_by_text("Training was cancelled, so there is no adapter to generate with.").wait_for()
        assert page.get_by_text("The generate form opens when training has finished.").count() == 0
        no_sideways_scroll(page)

        admin.post(f"/v1/jobs/{long_job}/cancel")  # free the worker for the new job
        page.get_by_role("button", name="Train again").click()
        page.wait_for_selector(f'.job[data-job-id]:not([data-job-id="{mine["job"]["id"]}"])')
        try:
            page.wait_for_selector('.job[data-state="succeeded"]', timeout=TRAIN_TIMEOUT_MS)
        except Exception:
            pytest.fail(f"the second training did not finish in the page\n{browser_stack.logs()}")
        job = page.locator(".job")
        assert job.locator('[data-axis="x-min"]').text_content() == "0"
        assert job.locator('[data-axis="x-max"]').text_content() == "10"
        y_max = float(job.locator('[data-axis="y-max"]').text_content())
        y_min = float(job.locator('[data-axis="y-min"]').text_content())
        assert y_max > y_min > 0
        assert "loss" in job.locator("figure.loss svg").text_content()
        assert re.fullmatch(r"\d+ s|\d+ min \d+ s", job.locator('[data-role="took"]').inner_text())
        assert job.locator('[data-role="took-wrap"]').is_visible()

        # Delete the adapter from the page: the page says so and offers training again, not a wait.
        page.on("dialog", lambda dialog: dialog.accept())
        page.get_by_role("button", name="Delete adapter").click()
        page.get_by_text("The adapter of this training was deleted.").wait_for()
        assert page.get_by_role("button", name="Train again").is_visible()
        assert page.get_by_label("Prompt", exact=True).is_disabled()  # inside the disabled fieldset
        assert page.get_by_role("link", name=re.compile("Download adapter")).is_hidden()
        screenshots(page, "g-dead-end")
        page.context.close()


def test_h_gallery_download_reuse_generate_without_adapter_and_curl(
    browser: Any, browser_stack: BrowserStack, browser_keys: dict[str, str]
) -> None:
    import subprocess

    page = new_page(browser, "phone")
    page.add_init_script(PENDING_RECORDER)
    sign_in(page, browser_stack, browser_keys["alice"])
    page.get_by_role("link", name="Gallery").click()
    page.wait_for_url("**/gallery")
    group = page.get_by_role("region", name="blue stripes poster · adapter v1")
    assert group.get_by_text("a lighthouse").first.is_visible()
    assert "seed 7 · strength 2.5" in group.locator(".shot").first.inner_text()
    with page.expect_download() as got:
        group.get_by_role("link", name="Download").first.click()
    assert got.value.suggested_filename == "blue-stripes-poster-7-0.png"
    assert got.value.path().read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    group.get_by_role("button", name="Use these settings again").first.click()
    assert page.get_by_label("Prompt", exact=True).input_value() == "a lighthouse"
    assert page.get_by_label("Seed").input_value() == "7"
    assert page.locator("#style_strength_out").inner_text() == "2.5"
    assert page.locator("#gen_style option:checked").inner_text() == "blue stripes poster"
    assert page.locator("#gen_version option:checked").inner_text() == "v1 (default)"

    page.locator("#gen_style").select_option(label="Base model (no style)")
    assert page.locator("#gen_version").is_disabled()
    page.get_by_label("Negative prompt").fill("blurry")
    page.get_by_label("Steps").fill("4")
    with page.expect_response(lambda r: r.url.endswith("/v1/generations") and r.request.method == "POST") as posted:
        page.get_by_role("button", name="Generate").click()
    assert posted.value.status == 202, posted.value.text()
    gen = posted.value.json()
    assert (gen["adapter_id"], gen["negative_prompt"], gen["steps"], gen["seed"]) == (None, "blurry", 4, 7)
    page.locator(f'.shot[data-generation-id="{gen["id"]}"] img').wait_for(timeout=120_000)
    shown = page.evaluate("window.__pending")
    assert shown and all(re.fullmatch(r"a lighthouse: (queued, (position \d+|waiting for a worker)|generating.*)", t)
                         for t in shown), shown
    card = page.locator(f'.shot[data-generation-id="{gen["id"]}"]')
    assert card.get_by_role("link", name="Download").get_attribute("download") == "base-model-7-0.png"

    # The curl snippet is the request just made, and it runs as shown.
    page.get_by_text("This request with curl").click()
    snippet = page.locator("#curl-snippet").inner_text()
    assert '"negative_prompt":"blurry"' in snippet and '"steps":4' in snippet and "adapter_id" not in snippet
    ran = subprocess.run(["bash", "-c", snippet], capture_output=True, text=True, timeout=120,
                         env={"STYLEDROP_KEY": browser_keys["alice"], "PATH": "/usr/bin:/bin"})
    again = json.loads(ran.stdout)
    assert (again["prompt"], again["steps"], again["seed"], again["state"]) == ("a lighthouse", 4, 7, "succeeded")
    no_sideways_scroll(page)

    page.reload()
    heads = page.locator(".gallery-group h3").all_inner_texts()
    assert heads[0].startswith("Base model (no style)") and "blue stripes poster · adapter v1" in heads[1]
    delete = page.locator(f'.shot[data-generation-id="{again["id"]}"]').get_by_role("button", name="Delete")
    assert delete.count() == 1
    page.on("dialog", lambda dialog: dialog.accept())
    delete.click()
    page.locator(f'.shot[data-generation-id="{again["id"]}"]').wait_for(state="detached")
    page.set_viewport_size({"width": 1280, "height": 900})
    assert page.locator(".gallery-layout .card").first.bounding_box()["width"] < 700  # form beside the images
    screenshots(page, "h-gallery")
    page.context.close()


def test_i_admin_at_phone_width_and_own_api_keys(browser: Any, browser_stack: BrowserStack,
                                                  browser_keys: dict[str, str]) -> None:
    page = new_page(browser, "phone")
    sign_in(page, browser_stack, browser_keys["admin"], path="/signin?next=/admin")
    rows = page.locator("#workers tbody tr")
    page.get_by_text("Adapters in memory").first.wait_for()
    assert rows.count() >= 2
    for i in range(rows.count()):
        box = rows.nth(i).bounding_box()
        cache = rows.nth(i).locator("td.cache").bounding_box()
        assert box["height"] < 200, box
        assert cache["x"] >= 0 and cache["x"] + cache["width"] <= 390, cache  # on screen, not scrolled off
    text = page.locator("main").inner_text()
    assert "gpu_resident" not in text and "On the GPU" not in text  # a CPU stack
    assert "Hit rate" in text
    page.locator('#admin-jobs tr[data-state="succeeded"]').first.wait_for()
    for row in page.locator('#admin-jobs tr[data-state="succeeded"]').all():
        error = row.locator("td").nth(11)  # Job, User, State, ..., Attempts, Worker, Run, Error
        assert error.inner_text() == "" and "err" not in (error.get_attribute("class") or "")
    # Every admin table fits 390 px: rows become labelled blocks, nothing scrolls sideways
    page.locator("#admin-users tbody tr").first.wait_for()
    for table in ("#workers", "#admin-jobs", "#admin-users", "#admin-keys"):
        assert page.evaluate(f"() => document.querySelector('{table}').scrollWidth") <= 390, table
    assert page.evaluate("() => document.querySelector('#admin-jobs').closest('.table-wrap').scrollWidth <= "
                         "document.querySelector('#admin-jobs').closest('.table-wrap').clientWidth")
    no_sideways_scroll(page)
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", page.locator("#admin-updated").inner_text())
    screenshots(page, "i-admin-phone")
    page.context.close()

    page = new_page(browser, "phone")
    page.on("dialog", lambda dialog: dialog.accept())
    sign_in(page, browser_stack, browser_keys["alice"])
    page.get_by_role("link", name="API keys").click()
    page.wait_for_url("**/keys")
    assert page.get_by_role("heading", name="Your API keys").is_visible()
    keys = page.locator("#own-keys tbody tr")
    keys.first.wait_for()
    before = keys.count()
    assert keys.first.locator("td").first.inner_text() == f"sd_{browser_keys['alice'][3:11]}…"
    page.get_by_role("button", name="Create a new key").click()
    shown = page.locator("#new-key-value")
    shown.wait_for()
    new_key = shown.inner_text().strip()
    assert new_key.startswith("sd_") and new_key != browser_keys["alice"]
    page.wait_for_function(f"() => document.querySelectorAll('#own-keys tbody tr').length === {before + 1}")
    page.get_by_role("button", name="Copy").click()  # the clipboard, or (no permission) the key selected
    page.wait_for_function("() => document.querySelector('#new-key-copied').textContent !== ''")
    with api(browser_stack, new_key) as client:
        assert client.get("/v1/styles").status_code == 200
        page.get_by_role("button", name=f"Revoke key sd_{new_key[3:11]}…").click()
        page.locator('#own-keys tr[data-state="revoked"]').wait_for()
        assert client.get("/v1/styles").status_code == 401
    assert page.url.endswith("/keys")  # signed in with the other key: still here
    no_sideways_scroll(page)
    screenshots(page, "i-keys-phone")
    page.context.close()


def test_j_several_captioned_images_a_subject_a_webhook_and_an_html_404(
    browser: Any, browser_stack: BrowserStack, browser_keys: dict[str, str], tmp_path: Path
) -> None:
    files = []
    for n, color in enumerate([(200, 40, 40), (40, 40, 200)]):
        files.append(tmp_path / f"ref{n}.png")
        files[-1].write_bytes(style_png(color))
    with api(browser_stack, browser_keys["alice"]) as alice:
        # 1280 px: a style from two images, the first captioned; a webhook the service refuses says why
        page = new_page(browser)
        sign_in(page, browser_stack, browser_keys["alice"], path="/signin?next=/styles/new")
        page.set_input_files("#image", [str(f) for f in files])
        assert page.locator("#file-list .file-item").count() == 2
        assert page.locator("#file-info").inner_text().startswith("2 of at most 5 images")
        page.get_by_label("Caption of image 1 (optional)").fill("a red fox")
        page.get_by_label("Style descriptor").fill("two tone print")
        page.get_by_text("Advanced options").click()
        page.get_by_label("Training steps").fill("4")
        page.get_by_label("Webhook URL").fill("http://127.0.0.1:9/hook")
        page.get_by_role("button", name="Upload and train").click()
        error = page.locator("#form-error")
        error.wait_for(state="visible")
        assert "webhook" in error.inner_text() and page.url.endswith("/styles/new")  # sent, refused, nothing made
        page.get_by_label("Webhook URL").fill("")
        page.get_by_role("button", name="Upload and train").click()
        page.wait_for_url(re.compile(r"/styles/[0-9a-f]{32}$"))
        style = alice.get(f"/v1/styles/{page.url.rsplit('/', 1)[1]}").json()
        assert style["captions"] == ["a red fox", None] and style["kind"] == "style"
        assert page.get_by_role("heading", name="Reference (2 images)").is_visible()
        assert page.get_by_text("a red fox").is_visible()
        assert page.locator("#job-title").inner_text().startswith("Training v1 · first training")

        # 390 px: a subject from one photo (no captions: it trains on "a photo of sks dog")
        phone = new_page(browser, "phone")
        sign_in(phone, browser_stack, browser_keys["alice"], path="/signin?next=/styles/new")
        phone.get_by_label("A subject").check()
        assert phone.get_by_label("Style descriptor").is_hidden()
        phone.set_input_files("#image", str(files[0]))
        assert phone.locator("#file-list input.caption").count() == 0
        phone.get_by_label("Class word").fill("dog")
        no_sideways_scroll(phone)
        phone.get_by_text("Advanced options").click()
        phone.get_by_label("Training steps").fill("4")
        phone.get_by_role("button", name="Upload and train").click()
        phone.wait_for_url(re.compile(r"/styles/[0-9a-f]{32}$"))
        subject = alice.get(f"/v1/styles/{phone.url.rsplit('/', 1)[1]}").json()
        assert (subject["kind"], subject["class_word"]) == ("subject", "dog")
        assert phone.get_by_role("heading", name="Subject photos").is_visible()
        no_sideways_scroll(phone)

    # A mistyped path is a page at both widths, with the site's links; the API keeps its JSON
    for p in (page, phone):
        response = p.goto(browser_stack.url + "/stlyes")
        assert response.status == 404 and response.headers["content-type"].startswith("text/html")
        assert p.get_by_role("heading", name="Page not found").is_visible()
        assert p.get_by_role("link", name="Gallery").is_visible() or p.viewport_size["width"] < 720
        no_sideways_scroll(p)
    assert httpx.get(browser_stack.url + "/stlyes").headers["content-type"] == "application/problem+json"
    screenshots(phone, "j-not-found")
    page.context.close()
    phone.context.close()
