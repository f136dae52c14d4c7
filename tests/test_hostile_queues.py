"""One user cannot take the generation queue from the others: batches are filled round-robin over users (checked
against the queue positions the API shows), unfinished images are capped per user (429 `too_many_queued_images`),
generations can be cancelled (queued at once; running ones too, and the worker stops sampling), an admin can cancel
all of a user's work, and disabling a user cancels their queued work. SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from storage import cancels, claims
from storage.db import make_engine, make_sessionmaker
from storage.error_codes import FailureCode
from storage.models import Generation, TrainingJob, User, utcnow
from storage.queue_order import generation_queue_positions
from storage.users import create_user
from testkit.images import png_bytes
from tests.helpers.app import bearer
from tests.helpers.versions import style_with_versions


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url"))
    yield make_sessionmaker(engine)
    engine.dispose()


def _gens(s: Session, owner: User, n: int, start: float) -> list[Generation]:
    t0 = utcnow() - timedelta(hours=1)
    rows = [Generation(owner_id=owner.id, prompt="p", guidance_scale=3.0, steps=12, seed=1, num_images=4,
                       queued_at=t0 + timedelta(seconds=start + i)) for i in range(n)]
    s.add_all(rows)
    s.flush()
    return rows


def test_a_flood_costs_another_user_at_most_one_batch(db: sessionmaker[Session]) -> None:
    with db() as s:
        flood, bob, carol = (create_user(s, n) for n in ("flood", "bob", "carol"))
        floods = _gens(s, flood, 60, start=0)  # two `samples` calls' worth, all older than the others
        bobs = _gens(s, bob, 2, start=100)
        (carols,) = _gens(s, carol, 1, start=200)
        s.commit()
        positions = generation_queue_positions(s, [*floods, *bobs, carols])
        assert positions[carols.id] == 3 and positions[bobs[0].id] == 2 and positions[bobs[1].id] == 5
        assert positions[floods[1].id] == 4  # oldest first within a user
        batch = claims.claim_generations(s, limit=4, worker_host="w1")  # generate_batch_size 4
        s.commit()
        assert [g.id for g in batch] == [floods[0].id, bobs[0].id, carols.id, floods[1].id]
        # each claim starts the round again over what still waits; the positions show that same order
        now = generation_queue_positions(s, [*floods, *bobs])
        assert now[floods[2].id] == 1 and now[bobs[1].id] == 2
        nxt = claims.claim_generations(s, limit=2, worker_host="w1")
        assert [g.id for g in nxt] == [floods[2].id, bobs[1].id]


def _post(client: Any, key: str, n: int, **extra: Any) -> Any:
    return client.post("/v1/generations", headers=bearer(key), json={"prompt": "a house", "num_images": n, **extra})


def test_unfinished_images_are_capped_per_user_samples_included(api_client: Any, api_keys: dict[str, str]) -> None:
    api_client.app.state.settings = api_client.app.state.settings.model_copy(
        update={"max_unfinished_images_per_user": 6})
    alice = api_keys["alice"]
    first = _post(api_client, alice, 4)
    assert first.status_code == 202, first.text
    refused = _post(api_client, alice, 3)
    assert refused.status_code == 429 and refused.json()["code"] == "too_many_queued_images"
    assert int(refused.headers["Retry-After"]) > 0 and "the limit is 6" in refused.json()["detail"]
    assert _post(api_client, api_keys["bob"], 4).status_code == 202  # another user's own budget
    style_id, _ = style_with_versions(api_client, alice, 1)
    samples = api_client.post(f"/v1/styles/{style_id}/samples", headers=bearer(alice),
                              json={"prompts": 2, "images_per_prompt": 2, "steps": 2})
    assert samples.status_code == 429 and samples.json()["code"] == "too_many_queued_images"
    with api_client.app.state.sessionmaker() as s:
        assert len(s.scalars(select(Generation)).all()) == 2  # nothing of the refused samples was written
    cancelled = api_client.post(f"/v1/generations/{first.json()['id']}/cancel", headers=bearer(alice))
    assert cancelled.status_code == 202 and cancelled.json()["state"] == "failed"
    assert cancelled.json()["error"]["code"] == FailureCode.CANCELLED
    assert _post(api_client, alice, 3).status_code == 202  # the cancelled images no longer count


def test_cancel_generation_queued_running_final_and_others(api_client: Any, api_keys: dict[str, str]) -> None:
    alice, bob = api_keys["alice"], api_keys["bob"]
    queued = _post(api_client, alice, 1).json()["id"]
    running = _post(api_client, alice, 1).json()["id"]
    factory = api_client.app.state.sessionmaker
    with factory() as s:
        s.get(Generation, queued).queued_at = utcnow()  # `running` is now the oldest: claimed first
        s.commit()
        assert [g.id for g in claims.claim_generations(s, limit=1, worker_host="w")] == [running]
        s.commit()
    assert api_client.post(f"/v1/generations/{queued}/cancel", headers=bearer(bob)).status_code == 404
    for gen_id in (queued, running):
        resp = api_client.post(f"/v1/generations/{gen_id}/cancel", headers=bearer(alice))
        assert resp.status_code == 202 and resp.json()["state"] == "failed", resp.text
    again = api_client.post(f"/v1/generations/{queued}/cancel", headers=bearer(alice))
    assert again.status_code == 409 and again.json()["code"] == "generation_final"
    with factory() as s:  # the worker's finish is conditional on `running`: its images are never attached
        from storage import jobs

        assert not jobs.transition_generation(s, running, expected="running", new="succeeded", image_keys=["x"])
        assert s.get(Generation, running).error_code == FailureCode.CANCELLED  # type: ignore[union-attr]


def test_admin_cancels_all_of_a_user_and_disabling_cancels_queued_work(
        api_client: Any, api_keys: dict[str, str]) -> None:
    alice, bob, admin = api_keys["alice"], api_keys["bob"], bearer(api_keys["admin"])
    for key in (alice, bob):
        for _ in range(2):
            assert _post(api_client, key, 1).status_code == 202
    up = api_client.post("/v1/styles", headers=bearer(bob), data={"descriptor": "ink"},
                         files={"image": ("s.png", png_bytes(), "image/png")})
    assert up.status_code == 202  # bob's training job: queued
    factory = api_client.app.state.sessionmaker
    with factory() as s:
        ids = {u.name: u.id for u in s.scalars(select(User))}
        claims.claim_generations(s, limit=1, worker_host="w")  # one of alice's runs
        s.commit()
    assert api_client.post("/v1/admin/users/nobody/cancel-work", headers=admin).status_code == 404
    assert api_client.post(f"/v1/admin/users/{ids['alice']}/cancel-work", headers=bearer(alice)).status_code == 403
    done = api_client.post(f"/v1/admin/users/{ids['alice']}/cancel-work", headers=admin)
    assert done.status_code == 200 and done.json() == {"generations": 2, "jobs": 0}
    assert api_client.post(f"/v1/admin/users/{ids['bob']}/disable", headers=admin).status_code == 200
    with factory() as s:
        gens = s.scalars(select(Generation)).all()
        assert {(g.state, g.error_code) for g in gens} == {("failed", FailureCode.CANCELLED)}
        job = s.scalars(select(TrainingJob).where(TrainingJob.owner_id == ids["bob"])).one()
        assert job.state == "cancelled"


def test_a_running_generation_cancelled_mid_loop_stops_the_sampler(worker_runtime, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The real generate task on the tiny model: the row is cancelled at the first round; the worker stops
    sampling at that round's progress write instead of rendering the other 11, and stores no image."""
    import worker.tasks as tasks
    from tests.helpers.db import make_generation
    from worker import progress

    rt = worker_runtime
    with rt.session_factory() as s:
        owner = create_user(s, "alice").id
        s.commit()
    gen_id = make_generation(rt, owner, None, steps=12)
    rounds: list[int] = []
    original = progress.StepRecorder.__call__

    def cancel_then_record(self: progress.StepRecorder, done: int, total: int) -> None:
        rounds.append(done)
        if done == 1:
            with rt.session_factory() as s:  # what POST /v1/generations/{id}/cancel does, meanwhile
                assert cancels.cancel_generation(s, gen_id)
                s.commit()
        original(self, done, total)

    monkeypatch.setattr(progress.StepRecorder, "__call__", cancel_then_record)
    assert tasks.run_generate(rt, gen_id) == "done"
    assert rounds == [1]
    with rt.session_factory() as s:
        gen = s.get(Generation, gen_id)
        assert gen is not None and gen.state == "failed" and gen.error_code == FailureCode.CANCELLED
        assert not gen.image_keys
