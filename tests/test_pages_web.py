"""The web pages in-process: sign-in/out, redirects, the admin 403 page, CSRF on cookie requests, rendering."""

from __future__ import annotations

import json
import re

from fastapi.testclient import TestClient

from api.http.security import SESSION_COOKIE
from testkit.images import style_png
from tests.helpers.pages import META, finished_generations, make_style, sign_in, trained


def test_signed_out_visitor_is_sent_to_sign_in(pages_client: TestClient) -> None:
    for path, target in (("/", "/signin"), ("/styles", "/signin?next=/styles"), ("/admin", "/signin?next=/admin"),
                         ("/styles/new", "/signin?next=/styles/new"), ("/styles/abc", "/signin?next=/styles/abc"),
                         ("/keys", "/signin?next=/keys"), ("/gallery?page=2", "/signin?next=/gallery%3Fpage%3D2")):
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
    assert refused.status_code == 403 and refused.json()["code"] == "csrf_failed"
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


# --- dead ends, the gallery, own API keys --------------------------------------------------------------------


def test_style_page_offers_a_way_on_after_a_cancel_and_after_a_deleted_adapter(pages_client: TestClient,
                                                                               pages_keys) -> None:
    style_id, job_id = make_style(pages_client, pages_keys["alice"], "pencil sketch")
    token = sign_in(pages_client, pages_keys["alice"])
    waiting = pages_client.get(f"/styles/{style_id}").text
    assert "The generate form opens when training has finished." in waiting
    assert 'data-action="confirm-cancel"' in waiting and "Stop this training?" in waiting
    # Train again while it trains: refused with a reason, nothing queued
    busy = pages_client.post(f"/v1/styles/{style_id}/jobs", json={}, headers={"X-CSRF-Token": token})
    assert busy.status_code == 409 and "still training" in busy.text

    assert pages_client.post(f"/v1/jobs/{job_id}/cancel", headers={"X-CSRF-Token": token}).status_code == 202
    cancelled = pages_client.get(f"/styles/{style_id}").text
    assert "The generate form opens when training has finished." not in cancelled
    assert "Training was cancelled, so there is no adapter to generate with." in cancelled
    # Train again, with the last job's steps to change
    assert re.search(r'<input id="train-steps" type="number" min="1" max="\d+"\s+value="20"', cancelled)
    assert '<button type="button" id="train-again">Train again</button>' in cancelled

    again = pages_client.post(f"/v1/styles/{style_id}/jobs", json={}, headers={"X-CSRF-Token": token})
    assert again.status_code == 202, again.text
    new_job = again.json()
    assert new_job["id"] != job_id and new_job["state"] == "queued" and new_job["total_steps"] == 20
    assert new_job["style_id"] == style_id
    assert f'data-job-id="{new_job["id"]}"' in pages_client.get(f"/styles/{style_id}").text

    adapter_id = trained(pages_client, new_job["id"])
    ready = pages_client.get(f"/styles/{style_id}").text
    assert f'id="delete-adapter" data-adapter-id="{adapter_id}"' in ready and "<fieldset >" in ready
    assert pages_client.delete(f"/v1/adapters/{adapter_id}", headers={"X-CSRF-Token": token}).status_code == 204
    deleted = pages_client.get(f"/styles/{style_id}").text
    assert "The adapter of this training was deleted." in deleted
    assert "The generate form opens" not in deleted and "<fieldset disabled>" in deleted
    assert re.search(r'id="train-again"[^>]*>Train again', deleted)


def test_train_again_checks_its_input_and_the_owner(pages_client: TestClient, pages_keys) -> None:
    style_id, job_id = make_style(pages_client, pages_keys["alice"], "charcoal")
    alice = {"Authorization": f"Bearer {pages_keys['alice']}"}
    admin = {"Authorization": f"Bearer {pages_keys['admin']}"}
    pages_client.post(f"/v1/jobs/{job_id}/cancel", headers=alice)
    assert pages_client.post(f"/v1/styles/{style_id}/jobs", json={}, headers=admin).status_code == 404
    bad = pages_client.post(f"/v1/styles/{style_id}/jobs", json={"steps": 0}, headers=alice)
    assert bad.status_code == 422 and "steps" in bad.text
    too_many = pages_client.post(f"/v1/styles/{style_id}/jobs", json={"steps": 10**9}, headers=alice)
    assert too_many.status_code == 422 and "steps must be between 1 and" in too_many.text
    ok = pages_client.post(f"/v1/styles/{style_id}/jobs", json={"steps": 7, "seed": 5}, headers=alice)
    assert ok.status_code == 202 and ok.json()["total_steps"] == 7 and ok.json()["params"]["seed"] == 5
    assert pages_client.post(f"/v1/styles/{style_id}/jobs", headers=alice).status_code == 409  # no body is fine
    events = pages_client.get(f"/v1/jobs/{ok.json()['id']}/events", headers=alice).json()["items"]
    assert [e["payload"]["to"] for e in events if e["kind"] == "state"] == ["queued"]


def test_gallery_groups_by_style_and_version_pages_and_names_downloads(pages_client: TestClient,
                                                                        pages_keys) -> None:
    style_id, job1 = make_style(pages_client, pages_keys["alice"], "Ink <wash> / Poster!")
    v1 = trained(pages_client, job1, minutes_ago=200)
    alice = {"Authorization": f"Bearer {pages_keys['alice']}"}
    job2 = pages_client.post(f"/v1/styles/{style_id}/jobs", json={}, headers=alice).json()["id"]
    v2 = trained(pages_client, job2, minutes_ago=100)
    finished_generations(pages_client, pages_keys["alice"], v1, [f"old {i}" for i in range(20)], start_minutes_ago=90)
    finished_generations(pages_client, pages_keys["alice"], None, ["plain <b>one</b>"], start_minutes_ago=60)
    finished_generations(pages_client, pages_keys["alice"], v2, [f"new {i}" for i in range(10)], start_minutes_ago=30)
    finished_generations(pages_client, pages_keys["admin"], None, ["not alice's"], start_minutes_ago=5)
    dog = pages_client.post("/v1/styles", headers=alice, data={"kind": "subject", "class_word": "dog",
                                                               "descriptor": "sks dog", "steps": "5"},
                            files={"image": ("d.png", style_png(), "image/png")})
    assert dog.status_code == 202, dog.text
    dog_v1 = trained(pages_client, dog.json()["job"]["id"], minutes_ago=300)
    sign_in(pages_client, pages_keys["alice"])

    first = pages_client.get("/gallery")
    assert first.status_code == 200
    html = first.text
    assert '<a href="/gallery">Gallery</a>' in html and '<a href="/keys">API keys</a>' in html
    heads = re.findall(r'<section class="gallery-group" aria-label="([^"]*)">', html)
    # newest first: v2's 10, the base-model one, then 13 of v1's 20 (24 a page)
    assert heads == ["Ink &lt;wash&gt; / Poster! · adapter v2", "Base model (no style)",
                     "Ink &lt;wash&gt; / Poster! · adapter v1"], heads
    assert html.count('class="shot"') == 48  # 24 generations of 2 images
    assert "plain &lt;b&gt;one&lt;/b&gt;" in html and "<b>one</b>" not in html and "not alice" not in html
    assert html.index(">new 9<") < html.index(">new 0<") < html.index(">old 19<")
    assert 'download="ink-wash-poster-109-1.png"' in html  # new 9: seed 109, second image
    assert 'download="base-model-100-0.png"' in html
    assert 'rel="next" href="/gallery?page=2"' in html and 'rel="prev"' not in html
    reuse = re.search(r"data-settings='([^']*)'", html)
    assert reuse is not None
    settings = json.loads(reuse.group(1).replace("&#34;", '"'))
    assert settings == {"adapter_id": v2, "prompt": "new 9", "negative_prompt": "blurry", "style_strength": 1.5,
                        "guidance_scale": 8.0, "text_guidance": None, "subject_adapter_id": None,
                        "subject_weight": None, "steps": 6, "seed": 109, "num_images": 2, "strength": None}
    # the form offers what the API takes: each style once, its versions (newest first, the default marked) in a
    # second menu; subjects only in the subject menu
    for needle in ('<label for="negative_prompt">', '<label for="gen_steps">Steps</label>', 'id="curl-box"',
                   '<option value="" data-versions="[]">Base model (no style)</option>',
                   '<select id="gen_version" name="adapter_id" disabled>'):
        assert needle in html, needle
    menu = html[html.index('<select id="gen_style">'):html.index("</select>", html.index('<select id="gen_style">'))]
    options = re.findall(r"<option value=\"(\w*)\" data-versions='([^']*)'>([^<]*)</option>", menu)
    assert [(sid, label) for sid, _, label in options] == [(style_id, "Ink &lt;wash&gt; / Poster!")]
    assert json.loads(options[0][1].replace("&#34;", '"')) == [[v2, "v2 (default)"], [v1, "v1"]]
    subject_menu = html[html.index('<select id="gen_subject"'):]
    assert f'<option value="{dog_v1}">sks dog (dog)</option>' in subject_menu[:subject_menu.index("</select>")]
    assert "sks dog" not in menu

    second = pages_client.get("/gallery?page=2").text
    assert second.count('class="shot"') == 14 and ">old 6<" in second and ">old 0<" in second
    assert 'rel="prev" href="/gallery?page=1"' in second and 'rel="next"' not in second
    for bad in ("0", "-1", "abc", "99999999999"):
        assert pages_client.get(f"/gallery?page={bad}").status_code == 404, bad
    assert "No images on" in pages_client.get("/gallery?page=3").text

    style_page = pages_client.get(f"/styles/{style_id}").text
    assert style_page.count('class="shot"') == 24 and "Base model" not in style_page  # this style's newest 12
    assert '<a href="/gallery">All your images →</a>' in style_page


def test_gallery_offers_delete_on_each_generation(pages_client: TestClient, pages_keys) -> None:
    finished_generations(pages_client, pages_keys["alice"], None, ["x", "y"], start_minutes_ago=1)
    sign_in(pages_client, pages_keys["alice"])
    html = pages_client.get("/gallery").text
    assert html.count('data-action="delete-generation"') == html.count('class="shot"') == 4  # two images each


def test_own_api_keys_list_create_revoke_and_others_are_404(pages_client: TestClient, pages_keys) -> None:
    alice = {"Authorization": f"Bearer {pages_keys['alice']}"}
    admin = {"Authorization": f"Bearer {pages_keys['admin']}"}
    mine = pages_client.get("/v1/keys", headers=alice).json()["items"]
    assert len(mine) == 1 and mine[0]["prefix"] == pages_keys["alice"][3:11] and "key" not in mine[0]
    made = pages_client.post("/v1/keys", headers=alice)
    assert made.status_code == 201 and made.json()["key"].startswith("sd_")
    new_key, new_id = made.json()["key"], made.json()["id"]
    assert pages_client.get("/v1/styles", headers={"Authorization": f"Bearer {new_key}"}).status_code == 200
    assert [k["id"] for k in pages_client.get("/v1/keys", headers=alice).json()["items"]] == [mine[0]["id"], new_id]
    assert all("key" not in k for k in pages_client.get("/v1/keys", headers=alice).json()["items"])
    assert pages_client.delete(f"/v1/keys/{new_id}", headers=admin).status_code == 404  # not the admin's own
    assert pages_client.delete("/v1/keys/nope", headers=alice).status_code == 404
    assert pages_client.delete(f"/v1/keys/{new_id}", headers=alice).status_code == 204
    assert pages_client.get("/v1/styles", headers={"Authorization": f"Bearer {new_key}"}).status_code == 401
    assert len(pages_client.get("/v1/keys", headers=admin).json()["items"]) == 1  # the admin sees only its own here
    # the page: linked from the header, a table the script fills
    sign_in(pages_client, pages_keys["alice"])
    page = pages_client.get("/keys")
    assert page.status_code == 200 and 'id="own-keys"' in page.text and "Keys of alice" in page.text
    pages_client.cookies.clear()
    assert pages_client.get("/keys", follow_redirects=False).headers["location"] == "/signin?next=/keys"


def test_finished_job_shows_its_total_time(pages_client: TestClient, pages_keys) -> None:
    style_id, job_id = make_style(pages_client, pages_keys["alice"], "gouache")
    trained(pages_client, job_id)
    sign_in(pages_client, pages_keys["alice"])
    html = pages_client.get(f"/styles/{style_id}").text
    assert re.search(r'· took\s+<span data-role="took" data-seconds="75.0">75 s</span>', html)
