"""The conventions SDK users expect: every listing is `{"items", "next"}` and following `next` walks it whole; URLs in
answers are absolute (the request's address, or STYLEDROP_PUBLIC_URL)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from storage.models import Adapter, JobEvent, TrainingJob, User
from storage.settings import Settings
from storage.states import JobState
from storage.users import create_api_key
from tests.helpers.app import add_users, app_client, bearer
from tests.helpers.listings import add_work

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
