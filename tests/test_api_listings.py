"""Listings cost a fixed number of queries whatever their page size (counted with SQLAlchemy's cursor hook), and
the style page's gallery finds its adapter's images however many other images the user has."""

from __future__ import annotations

from typing import Any

import pytest

from storage.models import Adapter, Generation, User, utcnow
from storage.settings import Settings
from tests.helpers.app import add_users, app_client, bearer
from tests.helpers.db import count_queries
from tests.helpers.listings import add_work as _add_work

LISTINGS = ("/v1/styles", "/v1/jobs", "/v1/adapters", "/v1/generations", "/v1/admin/jobs")


def _queries(client: Any, engine: Any, path: str, **headers: str) -> int:
    with count_queries(engine) as statements:
        resp = client.get(path, headers=headers)
    assert resp.status_code == 200, (path, resp.text)
    return len(statements)


def test_listings_take_the_same_number_of_queries_for_1_and_20_rows(api_client: Any, api_keys: dict[str, str]) -> None:
    with api_client.app.state.sessionmaker() as session:
        admin = session.query(User).filter_by(name="admin").one()
        _add_work(session, admin, 40)  # 40 styles, jobs and generations; 20 adapters
    engine = api_client.app.state.engine
    auth = bearer(api_keys["admin"])
    api_client.get("/v1/styles", headers=auth)  # the key's last_used_at is written once a minute: not in the counts
    for path in LISTINGS:
        one, twenty = (_queries(api_client, engine, f"{path}?limit={n}", **auth) for n in (1, 20))
        assert len(api_client.get(f"{path}?limit=20", headers=auth).json()["items"]) == 20, path
        assert one == twenty, f"{path}: {one} queries for 1 row, {twenty} for 20"


def test_styles_page_takes_the_same_number_of_queries_for_2_and_20_styles(pages_client: Any) -> None:
    """2 styles, not 1: both lists then hold a queued job (whose queue position costs its one query) and a done one."""
    keys = add_users(pages_client, "two", "twenty", admin=())
    with pages_client.app.state.sessionmaker() as session:
        for name, n in (("two", 2), ("twenty", 20)):
            _add_work(session, session.query(User).filter_by(name=name).one(), n)
    engine = pages_client.app.state.engine
    counts = {}
    for name in ("two", "twenty"):
        pages_client.cookies.clear()
        assert pages_client.post("/signin", data={"api_key": keys[name]}, follow_redirects=False).status_code == 303
        page = pages_client.get("/styles")
        assert page.text.count('<li class="card style-card"') == (2 if name == "two" else 20)
        counts[name] = _queries(pages_client, engine, "/styles")
    assert counts["two"] == counts["twenty"], counts


def test_the_gallery_shows_its_adapters_images_behind_many_newer_ones(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from api.routes import pages

    monkeypatch.setattr(pages, "GALLERY_LIMIT", 3)  # the page's size; the bug needed more newer images than this
    with app_client(Settings(data_dir=tmp_path / "data", secret_key="x")) as client:
        keys = add_users(client, "alice", admin=())
        with client.app.state.sessionmaker() as session:
            alice = session.query(User).filter_by(name="alice").one()
            (adapter_id,) = _add_work(session, alice, 1)
            style_id = session.query(Adapter).filter_by(id=adapter_id).one().style_id
            mine = session.query(Generation).filter_by(adapter_id=adapter_id).one().id
            for i in range(5):  # newer images made without this adapter
                session.add(Generation(owner_id=alice.id, prompt=f"other {i}", guidance_scale=10.0, steps=12,
                                       seed=i, num_images=1, image_keys=[], queued_at=utcnow()))
            session.commit()
        client.post("/signin", data={"api_key": keys["alice"]}, follow_redirects=False)
        page = client.get(f"/styles/{style_id}")
        assert page.status_code == 200
        assert page.text.count("data-generation-id=") == 1 and f'data-generation-id="{mine}"' in page.text
