"""Browser-test helpers: a Playwright page at a named width that records CSP violations, signing in through the
form, screenshots at phone and desktop width, and an API client with a user's key."""

from __future__ import annotations

from typing import Any

import httpx

from testkit.stack import BROWSER_ARTIFACTS, BrowserStack

WIDTHS = {"phone": (390, 844), "desktop": (1280, 900)}


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
