"""Hardening: security headers on pages, /metrics access, the Secure cookie behind a TLS proxy,
the rate limit shared across API processes through Redis, and descriptors made only of invisible characters."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from api.http.security import SESSION_COOKIE
from storage.models import Style
from storage.settings import Settings
from testkit.images import style_png
from testkit.stack import free_port
from tests.helpers.app import app_client, bearer
from tests.helpers.db import API_REDIS_URL

INLINE_SCRIPT = re.compile(r"<script(?![^>]*\ssrc=)[^>]*>", re.I)
INLINE_HANDLER = re.compile(r"<[^>]+\son[a-z]+\s*=", re.I)
INLINE_STYLE = re.compile(r"<[^>]+\sstyle\s*=", re.I)


def post_style(client: Any, key: str, descriptor: str = "watercolor painting") -> Any:
    return client.post("/v1/styles", headers=bearer(key), data={"descriptor": descriptor, "steps": "3"},
                       files={"image": ("s.png", style_png(size=64), "image/png")})


def test_pages_send_csp_nosniff_and_frame_ancestors(pages_client: TestClient, pages_keys) -> None:
    signin = pages_client.get("/signin")
    assert post_style(pages_client, pages_keys["admin"]).status_code == 202
    pages_client.post("/signin", data={"api_key": pages_keys["admin"]}, follow_redirects=False)
    style_id = pages_client.get("/v1/styles").json()["items"][0]["id"]
    pages = [signin] + [pages_client.get(p) for p in ("/styles", "/styles/new", f"/styles/{style_id}", "/admin",
                                                      "/styles/nope", "/gallery", "/keys")]
    for page in pages:
        assert page.headers["content-type"].startswith("text/html"), page.url
        csp = page.headers["content-security-policy"]
        directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
        assert directives["script-src"] == "'self'" and directives["style-src"] == "'self'"
        assert directives["frame-ancestors"] == "'none'" and directives["object-src"] == "'none'"
        assert "unsafe" not in csp
        assert page.headers["x-content-type-options"] == "nosniff"
        assert page.headers["referrer-policy"] == "same-origin"
        # the policy holds only if the pages need no inline code: no inline script, handler or style attribute
        assert not INLINE_SCRIPT.search(page.text), page.url
        assert not INLINE_HANDLER.search(page.text), page.url
        assert not INLINE_STYLE.search(page.text), page.url
        assert "javascript:" not in page.text
    for path in ("/v1/styles", "/static/styledrop.js", "/healthz"):
        assert pages_client.get(path).headers["x-content-type-options"] == "nosniff", path
    assert "content-security-policy" not in pages_client.get("/docs").headers  # Swagger UI needs inline script
    pages_client.cookies.clear()


def test_metrics_public_setting_opens_metrics(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", secret_key="s", metrics_public=True)
    with app_client(settings) as client:
        resp = client.get("/metrics")
    assert resp.status_code == 200 and "styledrop_jobs" in resp.text


def test_session_cookie_secure_over_https_and_by_setting(tmp_path: Path, pages_keys, pages_client) -> None:
    with TestClient(pages_client.app, base_url="https://testserver") as tls:
        resp = tls.post("/signin", data={"api_key": pages_keys["alice"]}, follow_redirects=False)
        assert resp.status_code == 303 and "Secure" in resp.headers["set-cookie"]
    forced = Settings(data_dir=pages_client.app.state.settings.data_dir, secret_key="pages-secret",
                      cookie_secure=True)
    with app_client(forced) as plain:
        resp = plain.post("/signin", data={"api_key": pages_keys["alice"]}, follow_redirects=False)
        assert resp.status_code == 303 and "Secure" in resp.headers["set-cookie"]


def test_secure_cookie_behind_a_tls_proxy_with_uvicorn_proxy_headers(tmp_path: Path) -> None:
    """The README's proxy set-up, for real: uvicorn trusts X-Forwarded-Proto from --forwarded-allow-ips, so a
    sign-in forwarded by a TLS proxy gets a Secure cookie, and the same header from an untrusted peer does not."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("STYLEDROP_") and k not in {"DATABASE_URL", "BROKER_URL"}}
    env.update({"STYLEDROP_DATA_DIR": str(tmp_path / "data"), "STYLEDROP_SECRET_KEY": "proxy-secret",
                "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    made = subprocess.run([sys.executable, "-m", "worker.cli", "migrate"], env=env, capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    made = subprocess.run([sys.executable, "-m", "worker.cli", "users", "create", "pat"], env=env,
                          capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()

    def sign_in(trusted: str) -> str:
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "api.main:create_app", "--factory", "--port", str(port),
             "--proxy-headers", "--forwarded-allow-ips", trusted],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            for _ in range(300):
                try:
                    httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                    break
                except httpx.HTTPError:
                    time.sleep(0.1)
            resp = httpx.post(f"http://127.0.0.1:{port}/signin", data={"api_key": key},
                              headers={"X-Forwarded-Proto": "https"}, timeout=10)
            assert resp.status_code == 303
            return resp.headers["set-cookie"]
        finally:
            proc.terminate()
            proc.wait(timeout=20)

    assert "Secure" in sign_in("127.0.0.1")
    assert "Secure" not in sign_in("10.9.9.9")  # a header from a peer that is not the proxy is ignored


def test_rate_limit_is_shared_by_two_api_processes_through_redis(tmp_path: Path, api_redis) -> None:
    from api.http.ratelimit import RedisRateLimiter
    from storage.users import create_api_key, create_user

    settings = Settings(data_dir=tmp_path / "data", database_url=f"sqlite:///{tmp_path / 'shared.db'}",
                        broker_url=API_REDIS_URL, secret_key="s", rate_limit_per_minute=3,
                        max_concurrent_jobs_per_user=50)
    with app_client(settings) as one, app_client(settings, migrate=False) as two:
        assert isinstance(one.app.state.rate_limiter, RedisRateLimiter)
        with one.app.state.sessionmaker() as session:
            keys = {}
            for name in ("alice", "bob"):
                _, keys[name] = create_api_key(session, create_user(session, name).id)
            session.commit()
        answers = [post_style(client, keys["alice"]).status_code for client in (one, two, one, two, one)]
        assert answers == [202, 202, 202, 429, 429]  # per process, each would have allowed 3
        refused = post_style(two, keys["alice"])
        assert refused.status_code == 429 and 1 <= int(refused.headers["Retry-After"]) <= 60
        assert post_style(two, keys["bob"]).status_code == 202  # per user
        with one.app.state.sessionmaker() as session:
            assert session.scalar(select(func.count()).select_from(Style)) == 4


@pytest.mark.parametrize("descriptor", [
    "\u200b", "\u200b\u200c\u200d\u2060\ufeff", "\u00a0\u3000\u200b", "\x01\x02\x7f", "\u202e\u2066 \u2069",
])
def test_descriptor_of_only_invisible_characters_is_422(pages_client: TestClient, pages_keys,
                                                        descriptor: str) -> None:
    resp = post_style(pages_client, pages_keys["alice"], descriptor)
    assert resp.status_code == 422, resp.text
    assert "descriptor" in resp.json()["detail"]
    with pages_client.app.state.sessionmaker() as session:
        assert session.scalar(select(func.count()).select_from(Style)) == 0
    assert pages_client.cookies.get(SESSION_COOKIE) is None


def test_descriptor_with_visible_text_among_invisible_is_kept(pages_client: TestClient, pages_keys) -> None:
    resp = post_style(pages_client, pages_keys["alice"], "\u200b水彩画\u200b")
    assert resp.status_code == 202, resp.text
