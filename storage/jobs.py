"""The job and generation state machines and the queries api/ and worker/ share.

Every state change is ONE conditional UPDATE (`... WHERE id = :id AND state IN (:expected)`); the caller
learns from the return value whether it won. A job transition that changed a row also writes one
`job_events` row of kind "state". Nothing here commits: the caller owns the transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import CursorResult, and_, case, func, or_, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.orm.util import identity_key

from storage.models import (
    EVENT_KINDS,
    GENERATION_STATES,
    JOB_STATES,
    Generation,
    JobEvent,
    TrainingJob,
    utcnow,
)

logger = logging.getLogger(__name__)

TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
ACTIVE: frozenset[str] = frozenset({"running", "cancelling"})

# The legal edges; `failed`/`cancelled` → `queued` is an admin retry.
JOB_TRANSITIONS: dict[str, frozenset[str]] = {
    "queued": frozenset({"running", "cancelled", "failed"}),
    "running": frozenset({"queued", "cancelling", "succeeded", "failed", "cancelled"}),
    "cancelling": frozenset({"cancelled", "succeeded", "failed", "queued"}),
    "succeeded": frozenset(),
    "failed": frozenset({"queued"}),
    "cancelled": frozenset({"queued"}),
}
GENERATION_TRANSITIONS: dict[str, frozenset[str]] = {
    "queued": frozenset({"running", "failed"}),
    "running": frozenset({"queued", "succeeded", "failed"}),
    "succeeded": frozenset(),
    "failed": frozenset({"queued"}),
}

_JOB_COLUMNS = frozenset(TrainingJob.__table__.columns.keys()) - {"id", "state"}
_GENERATION_COLUMNS = frozenset(Generation.__table__.columns.keys()) - {"id", "state"}


def _as_states(
    expected: str | Collection[str], new: str, valid: tuple[str, ...], edges: dict[str, frozenset[str]]
) -> tuple[str, ...]:
    states = (expected,) if isinstance(expected, str) else tuple(expected)
    if not states:
        raise ValueError("expected must name at least one state")
    for state in (*states, new):
        if state not in valid:
            raise ValueError(f"unknown state {state!r}")
    for state in states:
        if new not in edges[state]:
            raise ValueError(f"illegal transition {state} -> {new}")
    return states


def _check_fields(fields: dict[str, Any], allowed: frozenset[str]) -> None:
    unknown = set(fields) - allowed
    if unknown:
        raise ValueError(f"unknown columns {sorted(unknown)}")


def _set_loaded(session: Session, model: type[TrainingJob] | type[Generation], row_id: str,
                values: dict[str, Any]) -> None:
    """Mirror an UPDATE that bypassed the ORM into a loaded copy of the row, without a re-read."""
    obj = session.identity_map.get(identity_key(model, row_id))
    if obj is not None:
        for key, value in values.items():
            set_committed_value(obj, key, value)


def _expire(session: Session, model: type[TrainingJob] | type[Generation], row_id: str) -> None:
    """Make a loaded copy of the row re-read its columns on next access (the UPDATE bypassed the ORM)."""
    obj = session.identity_map.get(identity_key(model, row_id))
    if obj is not None:
        session.expire(obj)


def transition(
    session: Session, job_id: str, *, expected: str | Collection[str], new: str, **fields: Any
) -> bool:
    """Move job `job_id` from one of `expected` to `new`, setting `fields` in the same UPDATE.

    Returns True when this call changed the row (and wrote one "state" event), False when the job was not in
    an expected state (someone else moved it first, or it is already final).
    """
    states = _as_states(expected, new, JOB_STATES, JOB_TRANSITIONS)
    _check_fields(fields, _JOB_COLUMNS)
    previous: str | None = states[0] if len(states) == 1 else None
    if previous is None:
        # Several possible sources: lock the row so the event's "from" is exact. The UPDATE below is still
        # the guard that decides.
        previous = session.scalar(select(TrainingJob.state).where(TrainingJob.id == job_id).with_for_update())
        if previous not in states:
            return False
    result = session.execute(
        update(TrainingJob)
        .where(TrainingJob.id == job_id, TrainingJob.state.in_(states))
        .values(state=new, **fields)
        .execution_options(synchronize_session=False)
    )
    assert isinstance(result, CursorResult)
    if result.rowcount != 1:
        return False
    _expire(session, TrainingJob, job_id)
    add_event(session, job_id, "state", {"from": previous, "to": new})
    logger.info("job %s: %s -> %s", job_id, previous, new)
    return True


def add_event(session: Session, job_id: str, kind: str, payload: dict[str, Any]) -> JobEvent:
    if kind not in EVENT_KINDS:
        raise ValueError(f"unknown event kind {kind!r}")
    event = JobEvent(job_id=job_id, kind=kind, payload=payload)
    session.add(event)
    session.flush()
    return event


def events_after(session: Session, job_id: str, after_id: int = 0, limit: int = 100) -> Sequence[JobEvent]:
    """Events of `job_id` with id > `after_id`, oldest first (the SSE cursor)."""
    return session.scalars(
        select(JobEvent)
        .where(JobEvent.job_id == job_id, JobEvent.id > after_id)
        .order_by(JobEvent.id)
        .limit(limit)
    ).all()


def _train_queue() -> Any:
    """Claimable queued jobs with their claim order: the database's, never the broker's.

    Fair across users: a job's `load` is its owner's running jobs plus the owner's queued jobs ahead of it, so the
    user with the fewest running jobs goes first, then the oldest job. Sorting every claimable job by (load,
    queued_at, id) gives exactly the order of claiming one job at a time with that rule, so a batch claim
    (`limit` > 1) and `queue_position` agree with single claims.
    """
    running = (
        select(TrainingJob.owner_id, func.count().label("n"))
        .where(TrainingJob.state.in_(ACTIVE))
        .group_by(TrainingJob.owner_id)
        .subquery()
    )
    ahead = func.row_number().over(partition_by=TrainingJob.owner_id, order_by=(TrainingJob.queued_at, TrainingJob.id))
    return (
        select(TrainingJob.id, TrainingJob.queued_at, (func.coalesce(running.c.n, 0) + ahead - 1).label("load"))
        .outerjoin(running, running.c.owner_id == TrainingJob.owner_id)
        .where(TrainingJob.state == "queued", TrainingJob.cancel_requested_at.is_(None),
               TrainingJob.attempts < TrainingJob.max_attempts)
        .subquery()
    )


def queue_position(session: Session, job: TrainingJob) -> int:
    """1 for the next job `claim_train_jobs` will claim; 0 when `job` is not waiting to be claimed."""
    if job.state != "queued":
        return 0
    q = _train_queue()
    mine = session.execute(select(q.c.load, q.c.queued_at).where(q.c.id == job.id)).one_or_none()
    if mine is None:
        return 0
    ahead = session.scalar(
        select(func.count()).select_from(q).where(or_(
            q.c.load < mine.load,
            and_(q.c.load == mine.load, q.c.queued_at < mine.queued_at),
            and_(q.c.load == mine.load, q.c.queued_at == mine.queued_at, q.c.id < job.id),
        ))
    )
    return int(ahead or 0) + 1


def claim_train_jobs(session: Session, *, limit: int, worker: str) -> list[TrainingJob]:
    """Move up to `limit` queued jobs to running for `worker` (a worker_host), in queue order (`_train_queue`).

    Each job is taken by one conditional UPDATE (`... WHERE state = 'queued'`) that also counts the attempt and
    writes the "state" event, so two claimers never get the same job: on PostgreSQL the candidates are first
    locked `FOR UPDATE SKIP LOCKED` (a concurrent claimer takes the next ones instead of waiting), on SQLite the
    write lock serialises claimers. Returns the claimed rows in claim order; the caller commits.
    """
    if limit < 1:
        return []
    q = _train_queue()
    # A few spare candidates: on PostgreSQL some may be locked by a concurrent claimer.
    candidates = list(session.scalars(
        select(q.c.id).order_by(q.c.load, q.c.queued_at, q.c.id).limit(limit * 4 + 8)
    ))
    if candidates and session.get_bind().dialect.name == "postgresql":
        free = set(session.scalars(
            select(TrainingJob.id).where(TrainingJob.id.in_(candidates), TrainingJob.state == "queued")
            .with_for_update(skip_locked=True)
        ))
        candidates = [c for c in candidates if c in free]
    now = utcnow()
    claimed: list[str] = []
    for job_id in candidates:
        if len(claimed) == limit:
            break
        if transition(session, job_id, expected="queued", new="running", attempts=TrainingJob.attempts + 1,
                      worker_host=worker, started_at=func.coalesce(TrainingJob.started_at, now), heartbeat_at=now,
                      error_code=None, error_message=None):
            claimed.append(job_id)
    if not claimed:
        return []
    rows = {j.id: j for j in session.scalars(
        select(TrainingJob).where(TrainingJob.id.in_(claimed)).execution_options(populate_existing=True)
    )}
    return [rows[i] for i in claimed]


def transition_generation(
    session: Session, generation_id: str, *, expected: str | Collection[str], new: str, **fields: Any
) -> bool:
    """The generation counterpart of `transition` (no event rows)."""
    states = _as_states(expected, new, GENERATION_STATES, GENERATION_TRANSITIONS)
    _check_fields(fields, _GENERATION_COLUMNS)
    result = session.execute(
        update(Generation)
        .where(Generation.id == generation_id, Generation.state.in_(states))
        .values(state=new, **fields)
        .execution_options(synchronize_session=False)
    )
    assert isinstance(result, CursorResult)
    if result.rowcount != 1:
        return False
    _expire(session, Generation, generation_id)
    return True


def claim_generations(session: Session, *, first_id: str, limit: int, worker_host: str) -> list[Generation]:
    """Atomically move `first_id` and up to `limit - 1` other queued generations (oldest first) to running.

    Returns the rows this call claimed (possibly none, possibly without `first_id` when another worker has
    it). On PostgreSQL the candidates are locked with `FOR UPDATE SKIP LOCKED`, so concurrent claimers never
    share a row; on SQLite each row is taken by its own conditional UPDATE. The caller commits.
    """
    if limit < 1:
        return []
    now = utcnow()
    first_first = case((Generation.id == first_id, 0), else_=1)
    candidates = (
        select(Generation.id)
        .where(Generation.state == "queued")
        .order_by(first_first, Generation.queued_at, Generation.id)
        .limit(limit)
    )
    claim_values = {
        "state": "running",
        "attempts": Generation.attempts + 1,
        "started_at": now,
        "heartbeat_at": now,
        "worker_host": worker_host,
    }
    claimed: list[str] = []
    bind = session.get_bind()
    if bind.dialect.name == "postgresql":
        ids = list(session.scalars(candidates.with_for_update(skip_locked=True)))
        if ids:
            result = session.execute(
                update(Generation)
                .where(Generation.id.in_(ids), Generation.state == "queued")
                .values(**claim_values)
                .returning(Generation.id)
                .execution_options(synchronize_session=False)
            )
            claimed = list(result.scalars())
    else:
        for gen_id in session.scalars(candidates).all():
            result = session.execute(
                update(Generation)
                .where(Generation.id == gen_id, Generation.state == "queued")
                .values(**claim_values)
                .execution_options(synchronize_session=False)
            )
            assert isinstance(result, CursorResult)
            if result.rowcount == 1:
                claimed.append(gen_id)
    if not claimed:
        return []
    rows = session.scalars(
        select(Generation)
        .where(Generation.id.in_(claimed))
        .order_by(first_first, Generation.queued_at, Generation.id)
        .execution_options(populate_existing=True)
    ).all()
    logger.debug("%s claimed %d generations", worker_host, len(rows))
    return list(rows)


def _cutoff(older_than: timedelta | datetime) -> datetime:
    return utcnow() - older_than if isinstance(older_than, timedelta) else older_than


def stale_running_jobs(session: Session, older_than: timedelta | datetime) -> Sequence[TrainingJob]:
    """Running or cancelling jobs whose last heartbeat (or start) is older than `older_than`."""
    cutoff = _cutoff(older_than)
    seen = func.coalesce(TrainingJob.heartbeat_at, TrainingJob.started_at, TrainingJob.queued_at)
    return session.scalars(
        select(TrainingJob)
        .where(TrainingJob.state.in_(ACTIVE), seen < cutoff)
        .order_by(TrainingJob.queued_at)
    ).all()


def queued_jobs_without_recent_send(
    session: Session, older_than: timedelta | datetime, limit: int = 100
) -> Sequence[TrainingJob]:
    """Queued jobs queued before the cutoff whose task message was never sent, or last sent before it."""
    cutoff = _cutoff(older_than)
    return session.scalars(
        select(TrainingJob)
        .where(
            TrainingJob.state == "queued",
            TrainingJob.queued_at < cutoff,
            or_(TrainingJob.sent_at.is_(None), TrainingJob.sent_at < cutoff),
        )
        .order_by(TrainingJob.queued_at)
        .limit(limit)
    ).all()


def stale_running_generations(session: Session, older_than: timedelta | datetime) -> Sequence[Generation]:
    cutoff = _cutoff(older_than)
    seen = func.coalesce(Generation.heartbeat_at, Generation.started_at, Generation.queued_at)
    return session.scalars(
        select(Generation).where(Generation.state == "running", seen < cutoff).order_by(Generation.queued_at)
    ).all()


def queued_generations_without_recent_send(
    session: Session, older_than: timedelta | datetime, limit: int = 100
) -> Sequence[Generation]:
    cutoff = _cutoff(older_than)
    return session.scalars(
        select(Generation)
        .where(
            Generation.state == "queued",
            Generation.queued_at < cutoff,
            or_(Generation.sent_at.is_(None), Generation.sent_at < cutoff),
        )
        .order_by(Generation.queued_at)
        .limit(limit)
    ).all()


def mark_job_sent(session: Session, job_id: str, celery_task_id: str | None = None) -> None:
    """Record that a task message for `job_id` was just handed to the broker."""
    values: dict[str, Any] = {"sent_at": utcnow()}
    if celery_task_id is not None:
        values["celery_task_id"] = celery_task_id
    session.execute(
        update(TrainingJob)
        .where(TrainingJob.id == job_id)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    _set_loaded(session, TrainingJob, job_id, values)


def mark_generation_sent(session: Session, generation_id: str, celery_task_id: str | None = None) -> None:
    values: dict[str, Any] = {"sent_at": utcnow()}
    if celery_task_id is not None:
        values["celery_task_id"] = celery_task_id
    session.execute(
        update(Generation)
        .where(Generation.id == generation_id)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    _set_loaded(session, Generation, generation_id, values)
