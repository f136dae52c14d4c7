"""The conditional state machine, events, queue positions, users/keys and concurrent generation claims."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from storage import claims, jobs, queue_order
from storage.db import make_engine, make_sessionmaker
from storage.job_params import JobParams
from storage.models import Generation, JobEvent, Style, TrainingJob, User, WebhookDelivery, utcnow
from storage.states import JOB_ACTIVE, JobState
from storage.users import authenticate_key, create_api_key, create_user

DB_KINDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.integration)]


@pytest.fixture(params=DB_KINDS)
def db(request: pytest.FixtureRequest) -> Iterator[sessionmaker[Session]]:
    url = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")
    engine = make_engine(url)
    try:
        yield make_sessionmaker(engine)
    finally:
        engine.dispose()


def _user(session: Session, name: str = "alice") -> User:
    return create_user(session, name)


def _job(session: Session, user: User, **kw: object) -> TrainingJob:
    style = Style(
        owner_id=user.id,
        image_key="styles/ab/abc.png",
        image_sha256="0" * 64,
        image_bytes=10,
        width=256,
        height=256,
        descriptor="watercolor painting",
    )
    session.add(style)
    session.flush()
    job = TrainingJob(style_id=style.id, owner_id=user.id, total_steps=100,
                      params=JobParams(steps=100, seed=0, descriptor=style.descriptor).to_json(), **kw)
    session.add(job)
    session.flush()
    return job


def _generation(session: Session, user: User, **kw: object) -> Generation:
    gen = Generation(owner_id=user.id, prompt="a cat", guidance_scale=4.0, steps=12, seed=1, **kw)
    session.add(gen)
    session.flush()
    return gen


def test_transition_changes_once_and_writes_one_event(db: sessionmaker[Session]) -> None:
    with db() as s:
        job = _job(s, _user(s))
        s.commit()
        now = utcnow()
        assert jobs.transition(s, job.id, expected="queued", new="running", started_at=now, worker_host="w1")
        assert job.state == "running" and job.worker_host == "w1"
        s.commit()
        # A second claimer still believing the job is queued loses, and writes nothing.
        assert not jobs.transition(s, job.id, expected="queued", new="running", worker_host="w2")
        s.commit()
    with db() as s:
        row = s.get(TrainingJob, job.id)
        assert row is not None and row.state == "running" and row.worker_host == "w1"
        assert row.started_at is not None and row.started_at.tzinfo is not None
        events = jobs.events_after(s, job.id, 0, 10)
        assert [(e.kind, e.payload) for e in events] == [("state", {"from": "queued", "to": "running"})]
        # Several possible sources: the event records the actual one.
        assert jobs.transition(s, job.id, expected=("running", "cancelling"), new="failed", error_code="oom")
        assert not jobs.transition(s, job.id, expected=JOB_ACTIVE, new="succeeded")
        s.commit()
        events = jobs.events_after(s, job.id, events[0].id, 10)
        assert [e.payload for e in events] == [{"from": "running", "to": "failed"}]


def test_transition_rejects_unknown_states_and_columns(db: sessionmaker[Session]) -> None:
    with db() as s:
        job = _job(s, _user(s))
        with pytest.raises(ValueError):
            jobs.transition(s, job.id, expected="queued", new="exploded")
        with pytest.raises(ValueError):
            jobs.transition(s, job.id, expected="succeeded", new="running")
        with pytest.raises(ValueError):
            jobs.transition(s, job.id, expected="queued", new="running", no_such_column=1)
        assert s.scalar(select(func.count()).select_from(JobEvent)) == 0


def test_events_after_is_a_cursor(db: sessionmaker[Session]) -> None:
    with db() as s:
        job = _job(s, _user(s))
        ids = [jobs.add_event(s, job.id, "progress", {"step": i}).id for i in range(5)]
        s.commit()
        assert ids == sorted(ids)
        page = jobs.events_after(s, job.id, ids[1], limit=2)
        assert [e.payload["step"] for e in page] == [2, 3]
        with pytest.raises(ValueError):
            jobs.add_event(s, job.id, "nonsense", {})


def test_a_phase_event_sends_a_progress_webhook_with_the_phase(db: sessionmaker[Session]) -> None:
    """A job waiting in a phase before its steps is progress to a webhook too; the body is the job as GET shows it,
    its phase included (and every event kind, `phase` and `picks` too, is one the table's constraint takes)."""
    phase = {"name": "rendering_candidates", "done": 4, "total": 40, "eta_seconds": 27.0}
    with db() as s:
        job = _job(s, _user(s), state=JobState.RUNNING, webhook="https://hooks.example/h", phase=phase)
        jobs.add_event(s, job.id, "phase", {"phase": "rendering_candidates", "done": 4, "total": 40,
                                            "eta_seconds": 27.0})
        jobs.add_event(s, job.id, "picks", {"picks": []})
        s.commit()
        (delivery,) = s.scalars(select(WebhookDelivery).where(WebhookDelivery.resource_id == job.id)).all()
    assert delivery.event == "progress" and json.loads(delivery.body)["phase"] == phase


def test_queue_position_and_reconciler_queries(db: sessionmaker[Session]) -> None:
    with db() as s:
        user = _user(s)
        t0 = utcnow() - timedelta(hours=1)
        a = _job(s, user, queued_at=t0)
        b = _job(s, user, queued_at=t0 + timedelta(seconds=1))
        c = _job(s, user, queued_at=t0 + timedelta(seconds=2), sent_at=utcnow())
        s.commit()
        assert [queue_order.queue_position(s, j) for j in (a, b, c)] == [1, 2, 3]
        assert jobs.transition(s, a.id, expected="queued", new="running", started_at=t0, heartbeat_at=t0)
        s.commit()
        assert [queue_order.queue_position(s, j) for j in (a, b, c)] == [0, 1, 2]
        assert [j.id for j in jobs.stale_rows(s, TrainingJob, timedelta(minutes=5))] == [a.id]
        assert jobs.stale_rows(s, TrainingJob, timedelta(hours=2)) == []
        assert [j.id for j in jobs.unsent_rows(s, TrainingJob, timedelta(minutes=5))] == [b.id]
        jobs.mark_sent(s, TrainingJob, b.id, "task-1")
        s.commit()
        assert jobs.unsent_rows(s, TrainingJob, timedelta(minutes=5)) == []


def test_reconciler_queries_treat_generations_like_jobs(db: sessionmaker[Session]) -> None:
    with db() as s:
        user = _user(s)
        t0 = utcnow() - timedelta(hours=1)
        running, unsent, sent = (_generation(s, user, queued_at=t0 + timedelta(seconds=i)) for i in range(3))
        s.commit()
        jobs.mark_sent(s, Generation, sent.id, "task-2")
        assert sent.sent_at is not None and sent.celery_task_id == "task-2"  # the loaded row, without a re-read
        assert jobs.transition_generation(s, running.id, expected="queued", new="running", started_at=t0,
                                          heartbeat_at=t0)
        s.commit()
        assert [g.id for g in jobs.stale_rows(s, Generation, timedelta(minutes=5))] == [running.id]
        assert jobs.stale_rows(s, Generation, timedelta(hours=2)) == []
        assert [g.id for g in jobs.unsent_rows(s, Generation, timedelta(minutes=5))] == [unsent.id]
        assert jobs.count_by_state(s, Generation) == {"queued": 2, "running": 1, "succeeded": 0, "failed": 0}
        with pytest.raises(ValueError):
            jobs.transition_generation(s, running.id, expected="running", new="cancelled")


def test_abandoned_generations_are_taken_over_live_ones_are_not(db: sessionmaker[Session]) -> None:
    with db() as s:
        user = _user(s)
        now, old = utcnow(), utcnow() - timedelta(minutes=10)
        live = _generation(s, user, state="running", worker_host="w1", heartbeat_at=now, attempts=1)
        dead = _generation(s, user, state="running", worker_host="w1", heartbeat_at=old, attempts=1)
        mine = _generation(s, user, state="running", worker_host="w2", heartbeat_at=now, attempts=1)
        s.commit()
        stale = timedelta(minutes=2)
        assert [claims.is_abandoned(g, worker_host="w2", older_than=stale) for g in (live, dead, mine)] == [
            False, True, True]
        assert claims.claim_generation_batch(s, first_id=live.id, limit=1, worker_host="w2", older_than=stale) == []
        s.commit()
        for gen in (dead, mine):
            (claimed,) = claims.claim_generation_batch(s, first_id=gen.id, limit=1, worker_host="w2",
                                                     older_than=stale)
            s.commit()
            assert (claimed.id, claimed.worker_host, claimed.attempts) == (gen.id, "w2", 2)
        assert s.get(Generation, live.id).worker_host == "w1"  # type: ignore[union-attr]
        assert claims.claim_generation_batch(s, first_id="nope", limit=1, worker_host="w2", older_than=stale) == []


def test_idempotency_key_unique_per_owner(db: sessionmaker[Session]) -> None:
    with db() as s:
        alice, bob = _user(s, "alice"), _user(s, "bob")
        _job(s, alice, idempotency_key="k1")
        _job(s, bob, idempotency_key="k1")
        _job(s, alice)
        _job(s, alice)  # NULL keys never collide
        s.commit()
        with pytest.raises(IntegrityError):
            _job(s, alice, idempotency_key="k1")


def test_generation_transition_and_claim(db: sessionmaker[Session]) -> None:
    with db() as s:
        user = _user(s)
        t0 = utcnow() - timedelta(minutes=1)
        gens = [_generation(s, user, queued_at=t0 + timedelta(seconds=i)) for i in range(5)]
        s.commit()
        claimed = claims.claim_generations(s, limit=3, worker_host="w1")
        s.commit()
        assert [g.id for g in claimed] == [gens[0].id, gens[1].id, gens[2].id]  # one user: oldest first
        assert all(g.state == "running" and g.attempts == 1 and g.worker_host == "w1" for g in claimed)
        assert claims.claim_generations(s, limit=1, worker_host="w2") == [s.get(Generation, gens[3].id)]
        assert jobs.transition_generation(
            s, gens[3].id, expected="running", new="succeeded", image_keys=["x"]
        )
        assert not jobs.transition_generation(s, gens[3].id, expected="running", new="failed")
        s.commit()
        assert s.get(Generation, gens[3].id).state == "succeeded"  # type: ignore[union-attr]


def test_api_keys(db: sessionmaker[Session]) -> None:
    with db() as s:
        user = _user(s)
        row, plaintext = create_api_key(s, user.id)
        s.commit()
        assert plaintext.startswith("sd_") and len(plaintext) == 43 and plaintext[3:11] == row.prefix
        assert row.key_hash != plaintext
        found = authenticate_key(s, plaintext)
        assert found is not None and found.id == user.id
        assert row.last_used_at is not None
        assert authenticate_key(s, plaintext[:-1] + ("0" if plaintext[-1] != "0" else "1")) is None
        assert authenticate_key(s, "nonsense") is None
        user.disabled = True
        s.commit()
        assert authenticate_key(s, plaintext) is None


@pytest.mark.integration
def test_concurrent_claims_never_share_a_row_on_postgres(pg_url: str) -> None:
    engine = make_engine(pg_url, pool_size=10)
    maker = make_sessionmaker(engine)
    try:
        with maker() as s:
            user = _user(s)
            t0 = utcnow() - timedelta(minutes=1)
            ids = [_generation(s, user, queued_at=t0 + timedelta(milliseconds=i)).id for i in range(60)]
            s.commit()

        n_threads = 6
        barrier = threading.Barrier(n_threads)
        results: dict[int, list[str]] = {i: [] for i in range(n_threads)}
        errors: list[BaseException] = []

        def claimer(i: int) -> None:
            try:
                barrier.wait()
                for _round in range(40):
                    with maker() as s:
                        got = claims.claim_generations(s, limit=4, worker_host=f"w{i}")
                        s.commit()
                        results[i].extend(g.id for g in got)
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=claimer, args=(i,)) for i in range(n_threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not errors
        everything = [gid for got in results.values() for gid in got]
        assert len(everything) == len(set(everything)) == len(ids)
        with maker() as s:
            rows = s.scalars(select(Generation)).all()
            assert all(r.state == "running" and r.attempts == 1 for r in rows)
            owner = {gid: i for i, got in results.items() for gid in got}
            assert all(r.worker_host == f"w{owner[r.id]}" for r in rows)
    finally:
        engine.dispose()


def test_claim_train_jobs_oldest_first_fair_across_users_and_matches_queue_position(
    db: sessionmaker[Session],
) -> None:
    with db() as s:
        alice, bob, carol = _user(s, "alice"), _user(s, "bob"), _user(s, "carol")
        t0 = utcnow() - timedelta(hours=1)
        at = [t0 + timedelta(seconds=i) for i in range(10)]
        a1, a2, a3 = (_job(s, alice, queued_at=at[i]) for i in (1, 2, 3))
        b1, b2 = (_job(s, bob, queued_at=at[i]) for i in (4, 5))
        _job(s, carol, state="running", queued_at=at[0], worker_host="w0", attempts=1)
        c1 = _job(s, carol, queued_at=at[0])  # oldest queued, but carol already has one running
        _job(s, alice, queued_at=at[0], cancel_requested_at=utcnow())  # never claimable
        worn = _job(s, bob, queued_at=at[0], attempts=3, max_attempts=3)  # left for its own message to fail
        s.commit()
        expected = [a1, b1, c1, a2, b2, a3]
        assert [queue_order.queue_position(s, j) for j in expected] == [1, 2, 3, 4, 5, 6]
        assert queue_order.queue_position(s, worn) == 0

        first = claims.claim_train_jobs(s, limit=4, worker="w1")
        s.commit()
        assert [j.id for j in first] == [j.id for j in expected[:4]]
        assert all(j.state == "running" and j.attempts == 1 and j.worker_host == "w1" for j in first)
        assert [queue_order.queue_position(s, j) for j in (b2, a3)] == [1, 2]
        rest = claims.claim_train_jobs(s, limit=10, worker="w2")
        s.commit()
        assert [j.id for j in rest] == [b2.id, a3.id]
        assert claims.claim_train_jobs(s, limit=1, worker="w3") == []
        assert claims.claim_train_jobs(s, limit=0, worker="w3") == []
        events = s.scalars(select(JobEvent).where(JobEvent.job_id == a1.id, JobEvent.kind == "state")).all()
        assert [e.payload for e in events] == [{"from": "queued", "to": "running"}]


@pytest.mark.integration
def test_concurrent_train_claims_never_share_a_job_on_postgres(pg_url: str) -> None:
    engine = make_engine(pg_url, pool_size=10)
    maker = make_sessionmaker(engine)
    try:
        with maker() as s:
            users = [_user(s, f"u{i}") for i in range(3)]
            t0 = utcnow() - timedelta(minutes=1)
            ids = [_job(s, users[i % 3], queued_at=t0 + timedelta(milliseconds=i)).id for i in range(45)]
            s.commit()
        n_threads = 5
        barrier = threading.Barrier(n_threads)
        results: dict[int, list[str]] = {i: [] for i in range(n_threads)}
        errors: list[BaseException] = []

        def claimer(i: int) -> None:
            try:
                barrier.wait()
                # Until the queue is empty: under load a claim can come back empty while the others hold the
                # rows it would take (SKIP LOCKED), so a fixed number of rounds could leave jobs unclaimed.
                for _ in range(500):
                    with maker() as s:
                        got = claims.claim_train_jobs(s, limit=3, worker=f"w{i}")
                        s.commit()
                        results[i].extend(j.id for j in got)
                        queued = s.scalar(select(func.count()).select_from(TrainingJob)
                                          .where(TrainingJob.state == JobState.QUEUED))
                    if not got and queued == 0:
                        break
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=claimer, args=(i,)) for i in range(n_threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not errors
        everything = [jid for got in results.values() for jid in got]
        assert sorted(everything) == sorted(ids)  # each job claimed exactly once
        with maker() as s:
            rows = s.scalars(select(TrainingJob)).all()
            owner = {jid: i for i, got in results.items() for jid in got}
            assert all(r.state == "running" and r.attempts == 1 and r.worker_host == f"w{owner[r.id]}" for r in rows)
            n_events = s.scalar(select(func.count()).select_from(JobEvent).where(JobEvent.kind == "state"))
            assert n_events == len(ids)
    finally:
        engine.dispose()
