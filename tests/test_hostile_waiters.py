"""`?wait=` waiters cost the database one query per poll for all of them (api/waiters.py), not one per waiter per
poll, and one user may only have `max_waiters_per_user` waiting at once. SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from api.http import waiters as waiters_module
from api.http.waiters import GenerationWaiters
from storage import claims
from storage import jobs as jobstore
from storage.db import make_engine, make_sessionmaker
from storage.models import Generation
from storage.users import create_user
from tests.helpers.app import bearer
from tests.helpers.db import count_queries


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest) -> Iterator[Engine]:
    e = make_engine(request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url"))
    yield e
    e.dispose()


def _queued(factory: sessionmaker[Session], owner: str, n: int) -> list[str]:
    with factory() as s:
        rows = [Generation(owner_id=owner, prompt="p", guidance_scale=3.0, steps=4, seed=i) for i in range(n)]
        s.add_all(rows)
        s.commit()
        return [g.id for g in rows]


def _finish(factory: sessionmaker[Session], gen_id: str) -> None:
    with factory() as s:
        assert jobstore.transition_generation(s, gen_id, expected="queued", new="failed", error_code="x")
        s.commit()


async def _never() -> bool:
    return False


def test_one_query_per_poll_for_every_waiter(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(waiters_module, "POLL_SECONDS", 0.05)
    factory = make_sessionmaker(engine)
    with factory() as s:
        owner = create_user(s, "alice").id
        s.commit()
    ids = _queued(factory, owner, 30)
    hub = GenerationWaiters(factory, per_user=100)

    async def scenario(statements: list[str]) -> list[bool | None]:
        tasks = [asyncio.create_task(hub.wait(owner, i, 30, _never)) for i in ids]
        while hub.polls < 5:
            await asyncio.sleep(0.01)
        # 30 waiters, nothing else running: every statement so far is a poll, one per round
        polls, reads = hub.polls, len(statements)
        assert polls - 1 <= reads <= polls, statements
        assert all(q.lstrip().upper().startswith("SELECT") for q in statements)
        await asyncio.to_thread(_finish, factory, ids[0])
        first = await tasks[0]  # woken by a poll once its generation is final
        assert first is True and not any(t.done() for t in tasks[1:])
        for gen_id in ids[1:]:
            await asyncio.to_thread(_finish, factory, gen_id)
        return [first, *[await t for t in tasks[1:]]]

    with count_queries(engine) as statements:
        results = asyncio.run(asyncio.wait_for(scenario(statements), timeout=60))
    assert results == [True] * 30


def test_waiters_are_capped_per_user(engine: Engine) -> None:
    factory = make_sessionmaker(engine)
    with factory() as s:
        alice, bob = create_user(s, "alice").id, create_user(s, "bob").id
        s.commit()
    (a1, a2, a3), (b1,) = _queued(factory, alice, 3), _queued(factory, bob, 1)
    hub = GenerationWaiters(factory, per_user=2)

    async def scenario() -> list[bool | None]:
        held = [asyncio.create_task(hub.wait(alice, g, 0.5, _never)) for g in (a1, a2)]
        await asyncio.sleep(0)  # both admitted
        over = await hub.wait(alice, a3, 0.5, _never)  # answered at once: not waited
        bob_waited = await hub.wait(bob, b1, 0.1, _never)  # another user's own places
        return [over, bob_waited, *[await t for t in held]]

    assert asyncio.run(scenario()) == [None, False, False, False]


def test_wait_answers_the_finished_generation(api_client: Any, api_keys: dict[str, str]) -> None:
    factory = api_client.app.state.sessionmaker

    def worker() -> None:  # a generate worker: takes the queued row and finishes it
        for _ in range(400):
            with factory() as s:
                got = claims.claim_generations(s, limit=1, worker_host="w")
                if got:
                    jobstore.transition_generation(s, got[0].id, expected="running", new="succeeded", image_keys=[])
                    s.commit()
                    return
            time.sleep(0.05)

    thread = threading.Thread(target=worker)
    thread.start()
    resp = api_client.post("/v1/generations?wait=30", headers=bearer(api_keys["alice"]), json={"prompt": "a"})
    thread.join()
    assert resp.status_code == 200 and resp.json()["state"] == "succeeded", resp.text
    with factory() as s:
        assert s.scalars(select(Generation.state)).all() == ["succeeded"]
