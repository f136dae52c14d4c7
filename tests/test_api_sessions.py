"""Browser sessions are server-side rows: sign-out, key revocation or rotation, disabling the user
and expiry each end a session, also for a copy of the cookie; admins manage keys and users through the API.

SQLite and PostgreSQL (api_client), sign-in through the real form.
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import func, select, update

from api.http.security import CSRF_HEADER, SESSION_COOKIE
from storage.models import ApiKey, User, WebSession, utcnow
from storage.users import hash_key

META = re.compile(r'<meta name="csrf-token" content="([0-9a-f]{64})">')


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def sign_in(client: Any, key: str) -> tuple[str, str]:
    """Sign in through the form; the cookie value and the page's CSRF token."""
    client.cookies.clear()
    resp = client.post("/signin", data={"api_key": key}, follow_redirects=False)
    assert resp.status_code == 303, resp.text
    cookie = client.cookies.get(SESSION_COOKIE)
    token = META.search(client.get("/styles").text)
    assert cookie and token
    return cookie, token.group(1)


def key_id(client: Any, plaintext: str) -> str:
    with client.app.state.sessionmaker() as session:
        return str(session.scalar(select(ApiKey.id).where(ApiKey.key_hash == hash_key(plaintext))))


def user_id(client: Any, name: str) -> str:
    with client.app.state.sessionmaker() as session:
        return str(session.scalar(select(User.id).where(User.name == name)))


def use_cookie(client: Any, cookie: str) -> None:
    client.cookies.clear()
    client.cookies.set(SESSION_COOKIE, cookie)


def test_old_cookie_after_sign_out_is_401_and_cannot_create_keys(api_client, api_keys) -> None:
    cookie, csrf = sign_in(api_client, api_keys["admin"])
    assert "." not in cookie and api_keys["admin"] not in cookie  # opaque: no key id, no signature to reuse
    assert api_client.get("/v1/admin/users").status_code == 200
    out = api_client.post("/signout", data={"csrf_token": csrf}, follow_redirects=False)
    assert out.status_code == 303

    use_cookie(api_client, cookie)  # the attacker kept a copy
    assert api_client.get("/v1/admin/users").status_code == 401
    with api_client.app.state.sessionmaker() as session:
        keys_before = session.scalar(select(func.count()).select_from(ApiKey))
    made = api_client.post(f"/v1/admin/users/{user_id(api_client, 'bob')}/keys", headers={CSRF_HEADER: csrf})
    assert made.status_code == 401
    with api_client.app.state.sessionmaker() as session:
        assert session.scalar(select(func.count()).select_from(ApiKey)) == keys_before
        row = session.scalars(select(WebSession)).one()
        assert row.revoked_at is not None and len(row.id) == 64 and row.id != cookie  # only the hash is stored
    assert api_client.get("/styles", follow_redirects=False).status_code == 303  # pages: back to sign-in
    api_client.cookies.clear()


def test_revoking_or_rotating_a_key_ends_its_sessions(api_client, api_keys) -> None:
    admin = bearer(api_keys["admin"])
    alice_key = key_id(api_client, api_keys["alice"])
    cookie, _ = sign_in(api_client, api_keys["alice"])
    other_cookie, _ = sign_in(api_client, api_keys["bob"])
    api_client.cookies.clear()
    assert api_client.delete(f"/v1/admin/keys/{alice_key}", headers=admin).status_code == 204
    use_cookie(api_client, cookie)
    assert api_client.get("/v1/styles").status_code == 401
    use_cookie(api_client, other_cookie)
    assert api_client.get("/v1/styles").status_code == 200  # bob's session is untouched

    # rotate: the session opened with the old key ends, the new key works, the old one does not
    bob_key = key_id(api_client, api_keys["bob"])
    api_client.cookies.clear()
    rotated = api_client.post(f"/v1/admin/keys/{bob_key}/rotate", headers=admin)
    assert rotated.status_code == 201, rotated.text
    new_key = rotated.json()["key"]
    assert rotated.json()["user_id"] == user_id(api_client, "bob") and new_key != api_keys["bob"]
    assert api_client.get("/v1/styles", headers=bearer(api_keys["bob"])).status_code == 401
    assert api_client.get("/v1/styles", headers=bearer(new_key)).status_code == 200
    use_cookie(api_client, other_cookie)
    assert api_client.get("/v1/styles").status_code == 401
    api_client.cookies.clear()
    assert api_client.post(f"/v1/admin/keys/{bob_key}/rotate", headers=admin).status_code == 409  # already revoked
    assert api_client.post("/v1/admin/keys/nope/rotate", headers=admin).status_code == 404

    listed = api_client.get("/v1/admin/keys", params={"user": "bob"}, headers=admin)
    assert listed.status_code == 200
    rows = listed.json()["items"]
    assert [r["revoked_at"] is not None for r in rows] == [True, False]
    assert all("key" not in r and "key_hash" not in r for r in rows)
    assert rows[1]["prefix"] == new_key[3:11]
    assert api_client.get("/v1/admin/keys", headers=bearer(api_keys["alice"])).status_code == 401  # revoked above


def test_disabled_user_loses_keys_and_sessions(api_client, api_keys) -> None:
    admin = bearer(api_keys["admin"])
    cookie, _ = sign_in(api_client, api_keys["alice"])
    api_client.cookies.clear()
    alice = user_id(api_client, "alice")
    resp = api_client.post(f"/v1/admin/users/{alice}/disable", headers=admin)
    assert resp.status_code == 200 and resp.json()["disabled"] is True
    assert api_client.get("/v1/styles", headers=bearer(api_keys["alice"])).status_code == 401
    use_cookie(api_client, cookie)
    assert api_client.get("/v1/styles").status_code == 401
    api_client.cookies.clear()
    signin = api_client.post("/signin", data={"api_key": api_keys["alice"]}, follow_redirects=False)
    assert signin.status_code == 401

    assert api_client.post(f"/v1/admin/users/{alice}/enable", headers=admin).json()["disabled"] is False
    assert api_client.get("/v1/styles", headers=bearer(api_keys["alice"])).status_code == 200
    use_cookie(api_client, cookie)
    assert api_client.get("/v1/styles").status_code == 401  # a session ended by disabling stays ended
    api_client.cookies.clear()
    assert api_client.post("/v1/admin/users/nope/disable", headers=admin).status_code == 404
    assert api_client.post(f"/v1/admin/users/{alice}/disable", headers=bearer(api_keys["bob"])).status_code == 403


def test_sessions_expire(api_client, api_keys) -> None:
    resp = api_client.post("/signin", data={"api_key": api_keys["alice"]}, follow_redirects=False)
    settings = api_client.app.state.settings
    assert f"Max-Age={settings.session_max_age_seconds}" in resp.headers["set-cookie"]
    with api_client.app.state.sessionmaker() as session:
        row = session.scalars(select(WebSession)).one()
        lifetime = row.expires_at - row.created_at
        assert abs(lifetime.total_seconds() - settings.session_max_age_seconds) < 5
    assert api_client.get("/v1/styles").status_code == 200
    with api_client.app.state.sessionmaker() as session:  # the browser kept the cookie past its expiry
        session.execute(update(WebSession).values(expires_at=utcnow()))
        session.commit()
    assert api_client.get("/v1/styles").status_code == 401
    api_client.post("/signin", data={"api_key": api_keys["alice"]}, follow_redirects=False)
    with api_client.app.state.sessionmaker() as session:  # the expired row went with the next sign-in
        assert session.scalars(select(WebSession)).one().expires_at > utcnow()
    api_client.cookies.clear()


def test_admin_user_names_follow_one_rule(api_client, api_keys) -> None:
    admin = bearer(api_keys["admin"])
    for bad in ("", "a b", "x" * 65, "ädmin", "admin\u200b", "a/b"):
        resp = api_client.post("/v1/admin/users", json={"name": bad}, headers=admin)
        assert resp.status_code == 422, bad
    assert api_client.post("/v1/admin/users", json={"name": "carol.c@x-y_z"}, headers=admin).status_code == 201
    assert api_client.post("/v1/admin/users", json={"name": "carol.c@x-y_z"}, headers=admin).status_code == 409
