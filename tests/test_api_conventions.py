"""The conventions SDK users expect: every listing is `{"items", "next"}` and following `next` walks it whole; URLs in
answers are absolute (the request's address, or STYLEDROP_PUBLIC_URL); `Prefer: wait` works as `?wait=`; `Retry-After`
follows the estimate; a generation names the style and version it uses."""

from __future__ import annotations

import math
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from api.http.polling import prefer_wait, retry_after
from storage import claims
from storage import jobs as jobstore
from storage.models import Adapter, Generation, JobEvent, TrainingJob, User, utcnow
from storage.settings import Settings
from storage.states import JobState
from storage.users import create_api_key
from testkit.images import png_bytes
from tests.helpers.app import add_users, app_client, bearer
from tests.helpers.listings import add_work
from tests.helpers.versions import style_with_versions

PUBLIC = "https://styledrop.example.com/base"


def _walk(client: Any, url: str, headers: dict[str, str], base: str) -> tuple[list[dict[str, Any]], int]:
    """Every item of a listing by following `next` from `url`; (items, pages)."""
    items: list[dict[str, Any]] = []
    pages = 0
    next_url: str | None = url
    while next_url is not None:
        resp = client.get(next_url, headers=headers)
        assert resp.status_code == 200, (next_url, resp.text)
        body = resp.json()
        assert set(body) == {"items", "next"}, body
        items += body["items"]
        pages += 1
        next_url = body["next"]
        if next_url is not None:
            assert next_url.startswith(base + "/v1/"), next_url
            next_url = next_url.removeprefix(base)  # the TestClient's own address stands in for the public one
        assert pages < 50, "next never ends"
    return items, pages


def _fill(client: Any) -> dict[str, Any]:
    """alice: 7 styles (jobs, generations; 4 adapters), 3 more versions (and jobs) of one style, 4 more keys, 9
    job events."""
    keys = add_users(client, "admin", "alice", "bob")
    with client.app.state.sessionmaker() as session:
        alice = session.query(User).filter_by(name="alice").one()
        adapter_ids = add_work(session, alice, 7)
        first = session.get(Adapter, adapter_ids[0])
        assert first is not None
        for v in (2, 3, 4):  # each version its own (round) job
            round_job = TrainingJob(style_id=first.style_id, owner_id=alice.id, total_steps=10, params={},
                                    state=JobState.SUCCEEDED)
            session.add(round_job)
            session.flush()
            session.add(Adapter(version=v, owner_id=alice.id, style_id=first.style_id, job_id=round_job.id,
                                blob_key="adapters/aa/a.st", sha256="0" * 64, bytes=1, base_model="tiny", rank=4,
                                alpha=4.0, targets=["to_q"], descriptor="d", train_prompt="p", steps=10, seed=0,
                                engine_version="t"))
        for _ in range(4):
            create_api_key(session, alice.id)
        job = session.query(TrainingJob).filter_by(owner_id=alice.id, state=JobState.QUEUED).first()
        assert job is not None
        for i in range(9):
            session.add(JobEvent(job_id=job.id, kind="log", payload={"message": f"line {i}"}))
        session.commit()
        return {"keys": keys, "style": first.style_id, "job": job.id}


@pytest.mark.parametrize("public_url", [None, PUBLIC])
def test_every_listing_is_an_envelope_whose_next_walks_it_whole(tmp_path: Path, public_url: str | None) -> None:
    settings = Settings(data_dir=tmp_path / "data", secret_key="x", public_url=public_url)
    base = public_url or "http://testserver"
    with app_client(settings) as client:
        made = _fill(client)
        alice, admin = bearer(made["keys"]["alice"]), bearer(made["keys"]["admin"])
        expected = {  # listing -> (headers, how many it holds)
            "/v1/styles": (alice, 7), "/v1/jobs": (alice, 10), "/v1/generations": (alice, 7),
            "/v1/adapters": (alice, 7), f"/v1/styles/{made['style']}/versions": (alice, 4),
            "/v1/keys": (alice, 5), f"/v1/jobs/{made['job']}/events": (alice, 9),
            "/v1/admin/jobs": (admin, 10), "/v1/admin/users": (admin, 3), "/v1/admin/keys": (admin, 7),
        }
        for path, (headers, total) in expected.items():
            whole = client.get(f"{path}?limit=100", headers=headers).json()
            assert whole["next"] is None and len(whole["items"]) == total, path
            walked, pages = _walk(client, f"{path}?limit=3", headers, base)
            assert walked == whole["items"], path  # same order, nothing cut, nothing twice
            assert pages == -(-total // 3), path
            exact = client.get(f"{path}?limit={total}", headers=headers).json()
            assert exact["next"] is None, path  # a page that ends the listing promises no next page
        # the filters travel with `next`
        page = client.get("/v1/admin/jobs?user=alice&state=queued&limit=1", headers=admin).json()
        assert "user=alice" in page["next"] and "state=queued" in page["next"] and "offset=1" in page["next"]
        events = client.get(f"/v1/jobs/{made['job']}/events?limit=4", headers=alice).json()
        assert events["next"] == f"{base}/v1/jobs/{made['job']}/events?after={events['items'][-1]['id']}&limit=4"


@pytest.mark.parametrize("public_url", [None, PUBLIC])
def test_urls_in_answers_are_absolute(tmp_path: Path, public_url: str | None) -> None:
    settings = Settings(data_dir=tmp_path / "data", secret_key="x", public_url=public_url)
    base = public_url or "http://testserver"
    with app_client(settings) as client:
        made = _fill(client)
        alice = bearer(made["keys"]["alice"])
        style = client.get("/v1/styles?limit=1", headers=alice).json()["items"][0]
        assert style["image_url"] == f"{base}/v1/styles/{style['id']}/image"
        adapter = client.get("/v1/adapters?limit=1", headers=alice).json()["items"][0]
        assert adapter["file_url"] == f"{base}/v1/adapters/{adapter['id']}/file"
        created = client.post("/v1/generations", json={"prompt": "a cat", "steps": 2}, headers=alice)
        assert created.status_code == 202, created.text
        assert created.headers["Location"] == f"{base}/v1/generations/{created.json()['id']}"


def test_behind_a_proxy_the_request_address_is_used(tmp_path: Path) -> None:
    """Without STYLEDROP_PUBLIC_URL the URLs follow the address the request came to, root path included."""
    settings = Settings(data_dir=tmp_path / "data", secret_key="x")
    with app_client(settings, base_url="https://api.example.org", root_path="/sd") as client:
        keys = add_users(client, "alice", admin=())
        with client.app.state.sessionmaker() as session:
            add_work(session, session.query(User).filter_by(name="alice").one(), 2)
        page = client.get("/v1/styles?limit=1", headers=bearer(keys["alice"])).json()
        assert page["items"][0]["image_url"].startswith("https://api.example.org/sd/v1/styles/")
        assert page["next"] == "https://api.example.org/sd/v1/styles?offset=1&limit=1"


def test_public_url_must_be_an_http_url() -> None:
    with pytest.raises(ValueError, match="STYLEDROP_PUBLIC_URL"):
        Settings(public_url="styledrop.example.com")
    assert Settings(public_url="https://x.example/").public_url == "https://x.example"
    assert Settings(host="0.0.0.0", port=9000).public_base_url == "http://127.0.0.1:9000"


# --- Prefer: wait, Retry-After, the echoed style and version ----------------------------------------------------


def test_prefer_wait_is_parsed_as_rfc_7240_says() -> None:
    assert prefer_wait(["wait=5"]) == 5
    assert prefer_wait(["respond-async, wait=10"]) == 10
    assert prefer_wait(["handling=lenient", 'Wait="7"; x=1']) == 7  # names are case-insensitive; a quoted value
    assert prefer_wait(["wait=3", "wait=9"]) == 3  # the first wait counts
    assert prefer_wait(["wait=abc"]) is None and prefer_wait(["wait=-1"]) is None and prefer_wait(["wait"]) is None
    assert prefer_wait(["respond-async"]) is None and prefer_wait([]) is None


def test_prefer_wait_blocks_like_query_wait_and_says_so(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", secret_key="x", max_wait_seconds=1.5)
    with app_client(settings) as client:
        alice = bearer(add_users(client, "alice", admin=())["alice"])

        def post(url: str = "/v1/generations", **headers: str) -> tuple[Any, float]:
            started = time.monotonic()
            resp = client.post(url, headers={**alice, **headers}, json={"prompt": "a cat", "steps": 2})
            assert resp.status_code == 202, resp.text  # no worker: it never finishes
            return resp, time.monotonic() - started

        resp, took = post(Prefer="respond-async, wait=1")
        assert resp.headers["Preference-Applied"] == "wait=1" and 1.0 <= took < 1.5 + 1.0
        resp, took = post(Prefer="wait=3600")  # clamped to STYLEDROP_MAX_WAIT_SECONDS, and the answer says so
        assert resp.headers["Preference-Applied"] == "wait=1" and took >= 1.5
        resp, took = post("/v1/generations?wait=0", Prefer="wait=1")  # the query parameter wins
        assert "Preference-Applied" not in resp.headers and took < 1.0
        resp, took = post(Prefer="wait=soon")  # not understood: ignored (RFC 7240 §2)
        assert "Preference-Applied" not in resp.headers and took < 1.0
        client.app.state.waiters.per_user = 0  # no waiting place left for alice: answered at once, not honoured
        resp, took = post(Prefer="wait=1")
        assert "Preference-Applied" not in resp.headers and took < 1.0


def test_retry_after_follows_the_estimate(tmp_path: Path) -> None:
    assert [retry_after(e) for e in (None, 0.0, 0.2, 2.0, 7.1, 29.5, 600.0)] == [2, 1, 1, 2, 8, 30, 30]
    with app_client(Settings(data_dir=tmp_path / "data", secret_key="x")) as client:
        alice = bearer(add_users(client, "alice", admin=())["alice"])
        created = client.post("/v1/generations", headers=alice, json={"prompt": "a cat", "steps": 12})
        gen_id = created.json()["id"]
        assert created.json()["eta_seconds"] is None and created.headers["Retry-After"] == "2"  # nothing to go on
        factory = client.app.state.sessionmaker
        with factory() as s:  # running for 10 s, half done: about 10 s to go
            claims.claim_generations(s, limit=1, worker_host="w")
            jobstore.record_generation_step(s, gen_id, 6, "w")
            s.execute(update(Generation).where(Generation.id == gen_id)
                      .values(started_at=utcnow() - timedelta(seconds=10)))
            s.commit()
        polled = client.get(f"/v1/generations/{gen_id}", headers=alice)
        eta = polled.json()["eta_seconds"]
        assert 10 <= eta < 12 and polled.headers["Retry-After"] == str(math.ceil(eta))
        with factory() as s:  # 100 s for one step of 12: far off, polled at the range's top
            s.execute(update(Generation).where(Generation.id == gen_id)
                      .values(step=1, started_at=utcnow() - timedelta(seconds=100)))
            s.commit()
        assert client.get(f"/v1/generations/{gen_id}", headers=alice).headers["Retry-After"] == "30"
        with factory() as s:
            jobstore.transition_generation(s, gen_id, expected="running", new="succeeded", image_keys=[],
                                           finished_at=utcnow())
            s.commit()
        assert "Retry-After" not in client.get(f"/v1/generations/{gen_id}", headers=alice).headers

        style = client.post("/v1/styles", headers=alice, data={"descriptor": "ink", "steps": "3"},
                            files={"image": ("s.png", png_bytes(), "image/png")})
        assert style.status_code == 202 and style.headers["Retry-After"] == "2"
        job_id = style.json()["job"]["id"]
        with factory() as s:
            s.execute(update(TrainingJob).where(TrainingJob.id == job_id).values(state="running", eta_seconds=7.2))
            s.commit()
        assert client.get(f"/v1/jobs/{job_id}", headers=alice).headers["Retry-After"] == "8"
        cancelled = client.post(f"/v1/jobs/{job_id}/cancel", headers=alice)
        assert cancelled.json()["state"] == "cancelling" and cancelled.headers["Retry-After"] == "8"
        with factory() as s:
            s.execute(update(TrainingJob).where(TrainingJob.id == job_id).values(state="cancelled"))
            s.commit()
        assert "Retry-After" not in client.get(f"/v1/jobs/{job_id}", headers=alice).headers


def test_a_generation_echoes_its_style_and_version(tmp_path: Path) -> None:
    with app_client(Settings(data_dir=tmp_path / "data", secret_key="x")) as client:
        key = add_users(client, "alice", admin=())["alice"]
        alice = bearer(key)
        style_id, (v1, v2) = style_with_versions(client, key, 2)

        def generate(**names: Any) -> dict[str, Any]:
            resp = client.post("/v1/generations", headers=alice, json={"prompt": "a cat", **names})
            assert resp.status_code == 202, resp.text
            return dict(resp.json())

        named = generate(style_id=style_id, version=1)
        assert (named["style_id"], named["version"], named["adapter_id"]) == (style_id, 1, v1)
        assert client.get(f"/v1/generations/{named['id']}", headers=alice).json() | {"eta_seconds": None} \
            == named | {"eta_seconds": None}
        default = generate(style_id=style_id)  # the default version: the newest
        assert (default["style_id"], default["version"]) == (style_id, 2)
        by_adapter = generate(adapter_id=v2)
        assert (by_adapter["style_id"], by_adapter["version"]) == (style_id, 2)
        plain = generate()
        assert plain["style_id"] is None and plain["version"] is None
        listed = client.get("/v1/generations", headers=alice).json()["items"]
        assert [(g["style_id"], g["version"]) for g in listed] == [(None, None), (style_id, 2), (style_id, 2),
                                                                   (style_id, 1)]
