"""The web pages in-process: sign-in/out, redirects, the admin 403 page, CSRF on cookie requests, rendering."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from api.security import SESSION_COOKIE
from tests.helpers.images import style_png

META = re.compile(r'<meta name="csrf-token" content="([0-9a-f]{64})">')


def sign_in(client: TestClient, key: str, next_path: str = "/styles") -> str:
    """Sign in through the form; return the page's CSRF token."""
    resp = client.post("/signin", data={"api_key": key, "next": next_path}, follow_redirects=False)
    assert resp.status_code == 303, resp.text
    assert resp.headers["location"] == next_path
    page = client.get("/styles")
    assert page.status_code == 200
    match = META.search(page.text)
    assert match, "no csrf-token meta tag"
    return match.group(1)


def test_signed_out_visitor_is_sent_to_sign_in(pages_client: TestClient) -> None:
    for path, target in (("/", "/signin"), ("/styles", "/signin?next=/styles"), ("/admin", "/signin?next=/admin"),
                         ("/styles/new", "/signin?next=/styles/new"), ("/styles/abc", "/signin?next=/styles/abc")):
        resp = pages_client.get(path, follow_redirects=False)
        assert resp.status_code == 303, path
        assert resp.headers["location"] == target
    page = pages_client.get("/signin?next=/admin")
    assert page.status_code == 200
    assert '<label for="api_key">API key</label>' in page.text
    assert 'name="next" value="/admin"' in page.text


def test_sign_in_sets_an_httponly_lax_cookie_and_sign_out_clears_it(pages_client: TestClient, pages_keys) -> None:
    resp = pages_client.post("/signin", data={"api_key": pages_keys["alice"]}, follow_redirects=False)
    assert resp.status_code == 303 and resp.headers["location"] == "/styles"
    cookie = resp.headers["set-cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=")
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Path=/" in cookie
    assert "Secure" not in cookie  # plain http here; https requests get Secure

    page = pages_client.get("/styles")
    assert page.status_code == 200 and "My styles" in page.text and "alice" in page.text
    assert "Admin</a>" not in page.text  # no admin link for a non-admin
    token = META.search(page.text)
    assert token
    assert pages_client.get("/v1/styles").status_code == 200  # the JSON API accepts the cookie
    assert pages_client.get("/signin", follow_redirects=False).headers["location"] == "/styles"

    assert pages_client.post("/signout", data={"csrf_token": "0" * 64}, follow_redirects=False).status_code == 403
    out = pages_client.post("/signout", data={"csrf_token": token.group(1)}, follow_redirects=False)
    assert out.status_code == 303 and out.headers["location"] == "/signin"
    assert f'{SESSION_COOKIE}=""' in out.headers["set-cookie"] or "Max-Age=0" in out.headers["set-cookie"]
    assert pages_client.get("/styles", follow_redirects=False).status_code == 303
    assert pages_client.get("/v1/styles").status_code == 401


def test_sign_in_refuses_bad_keys_foreign_origins_and_open_redirects(pages_client: TestClient, pages_keys) -> None:
    bad = pages_client.post("/signin", data={"api_key": "sd_" + "0" * 40}, follow_redirects=False)
    assert bad.status_code == 401 and "not valid" in bad.text and "set-cookie" not in bad.headers
    assert pages_client.post("/signin", data={"api_key": ""}, follow_redirects=False).status_code == 401
    foreign = pages_client.post("/signin", data={"api_key": pages_keys["alice"]}, follow_redirects=False,
                                headers={"Origin": "https://evil.example"})
    assert foreign.status_code == 403 and "set-cookie" not in foreign.headers
    for target in ("//evil.example/x", "https://evil.example/", "/\\evil.example"):
        resp = pages_client.post("/signin", data={"api_key": pages_keys["alice"], "next": target},
                                 follow_redirects=False)
        assert resp.headers["location"] == "/styles", target


def test_sign_in_is_the_api_key_check(pages_client: TestClient, pages_keys, monkeypatch) -> None:
    """Sign-in compares hashes in constant time like the API, and refuses a disabled user's key."""
    import storage.users
    from storage.models import User

    compared: list[str] = []
    real = storage.users.hmac.compare_digest

    def spy(a: str, b: str) -> bool:
        compared.append(b)
        return real(a, b)

    monkeypatch.setattr(storage.users.hmac, "compare_digest", spy)
    signed_in = pages_client.post("/signin", data={"api_key": pages_keys["alice"]}, follow_redirects=False)
    assert signed_in.status_code == 303 and len(compared) == 1
    pages_client.cookies.clear()
    with pages_client.app.state.sessionmaker() as session:
        session.query(User).filter_by(name="alice").update({"disabled": True})
        session.commit()
    refused = pages_client.post("/signin", data={"api_key": pages_keys["alice"]}, follow_redirects=False)
    assert refused.status_code == 401 and "set-cookie" not in refused.headers


def test_admin_page_is_403_for_non_admins_and_renders_for_admins(pages_client: TestClient, pages_keys) -> None:
    sign_in(pages_client, pages_keys["alice"])
    resp = pages_client.get("/admin")
    assert resp.status_code == 403 and "Admins only" in resp.text
    pages_client.cookies.clear()
    sign_in(pages_client, pages_keys["admin"])
    resp = pages_client.get("/admin")
    assert resp.status_code == 200
    for needle in ('id="admin-jobs"', '<label for="filter-state">State</label>',
                   '<label for="filter-user">User</label>', 'id="queue-depths"', 'id="workers"', "Admin</a>"):
        assert needle in resp.text


def test_cookie_post_needs_the_csrf_token_and_bearer_does_not(pages_client: TestClient, pages_keys) -> None:
    token = sign_in(pages_client, pages_keys["admin"])
    refused = pages_client.post("/v1/admin/users", json={"name": "carol"})
    assert refused.status_code == 403 and refused.json()["detail"]["code"] == "csrf_failed"
    wrong = pages_client.post("/v1/admin/users", json={"name": "carol"}, headers={"X-CSRF-Token": "f" * 64})
    assert wrong.status_code == 403
    ok = pages_client.post("/v1/admin/users", json={"name": "carol"}, headers={"X-CSRF-Token": token})
    assert ok.status_code == 201, ok.text
    # Other methods too: DELETE without the token is refused before the route runs.
    assert pages_client.delete("/v1/styles/nope").status_code == 403
    assert pages_client.delete("/v1/styles/nope", headers={"X-CSRF-Token": token}).status_code == 404
    # GETs (and the SSE stream) need no token.
    assert pages_client.get("/v1/admin/jobs").status_code == 200

    pages_client.cookies.clear()
    bearer = {"Authorization": f"Bearer {pages_keys['admin']}"}
    assert pages_client.post("/v1/admin/users", json={"name": "dave"}, headers=bearer).status_code == 201


def test_tokens_differ_per_session(pages_client: TestClient, pages_keys) -> None:
    first = sign_in(pages_client, pages_keys["alice"])
    stale = dict(pages_client.cookies)
    pages_client.cookies.clear()
    second = sign_in(pages_client, pages_keys["alice"])
    assert first != second
    pages_client.cookies.clear()
    pages_client.cookies.update(stale)
    assert pages_client.delete("/v1/styles/nope", headers={"X-CSRF-Token": second}).status_code == 403
    assert pages_client.delete("/v1/styles/nope", headers={"X-CSRF-Token": first}).status_code == 404


def test_pages_render_styles_and_style_page(pages_client: TestClient, pages_keys) -> None:
    bearer = {"Authorization": f"Bearer {pages_keys['alice']}"}
    created = pages_client.post(
        "/v1/styles", headers=bearer, files={"image": ("s.png", style_png(), "image/png")},
        data={"descriptor": "ink <b>wash</b>", "content": "a cat", "steps": "20"},
    )
    assert created.status_code == 202, created.text
    style_id, job_id = created.json()["style"]["id"], created.json()["job"]["id"]
    sign_in(pages_client, pages_keys["alice"])

    listing = pages_client.get("/styles").text
    assert f'data-job-id="{job_id}"' in listing and f'href="/styles/{style_id}"' in listing
    assert "ink &lt;b&gt;wash&lt;/b&gt;" in listing and "<b>wash</b>" not in listing  # escaped
    assert 'data-state="queued"' in listing and "<progress" in listing

    page = pages_client.get(f"/styles/{style_id}")
    assert page.status_code == 200
    for needle in ('<label for="prompt">Prompt</label>', 'id="style_strength"', '<label for="guidance_scale">',
                   '<label for="num_images">', '<label for="init_image">', '<label for="mask">', 'id="gallery"',
                   'id="delete-style"', f'data-job-id="{job_id}"'):
        assert needle in page.text, needle
    assert "<fieldset disabled>" in page.text  # no adapter yet

    new = pages_client.get("/styles/new")
    assert new.status_code == 200
    for needle in ('<label for="descriptor">', '<label for="content">', '<label for="steps">', '<label for="seed">',
                   'id="dropzone"', 'type="file"'):
        assert needle in new.text, needle

    assert pages_client.get("/static/styledrop.js").status_code == 200
    assert pages_client.get("/static/styledrop.css").status_code == 200

    pages_client.cookies.clear()
    sign_in(pages_client, pages_keys["admin"])
    other = pages_client.get(f"/styles/{style_id}")
    assert other.status_code == 404 and "Style not found" in other.text
