"""Who runs what: the claims workers make and the takeover rule, in one place beside each other.

Training jobs are claimed in the database's order (`storage.queue_order.train_queue`: fair across users, then
oldest), never the broker's; `storage.queue_order.queue_positions` reports that same order. Generations are
claimed in batches, round-robin over users (`storage.queue_order.generation_queue`); the message is a wake-up.
A row a worker holds may be taken over when it is abandoned (`is_abandoned`: its worker is the claimer itself, or
its heartbeat is stale) — the reconciler's sweep (`storage.jobs.stale_rows`) applies the same rule in SQL. Every
claim is a conditional UPDATE; nothing here commits.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import CursorResult, func, or_, select, update
from sqlalchemy.orm import Session

from storage import webhooks
from storage.jobs import transition, transition_generation
from storage.models import Generation, TrainingJob, utcnow
from storage.queue_order import generation_queue, train_queue
from storage.states import GENERATION_ACTIVE, JOB_ACTIVE, GenerationState, JobState

logger = logging.getLogger(__name__)


def claim_train_jobs(session: Session, *, limit: int, worker: str) -> list[TrainingJob]:
    """Move up to `limit` queued jobs to running for `worker` (a worker_host), in queue order (`train_queue`).

    Each job is taken by one conditional UPDATE (`... WHERE state = 'queued'`) that also counts the attempt and
    writes the "state" event, so two claimers never get the same job: on PostgreSQL the candidates are first
    locked `FOR UPDATE SKIP LOCKED` (a concurrent claimer takes the next ones instead of waiting), on SQLite the
    write lock serialises claimers. Returns the claimed rows in claim order; the caller commits.
    """
    if limit < 1:
        return []
    q = train_queue()
    # A few spare candidates: on PostgreSQL some may be locked by a concurrent claimer.
    candidates = list(session.scalars(
        select(q.c.id).order_by(q.c.load, q.c.queued_at, q.c.id).limit(limit * 4 + 8)
    ))
    if candidates and session.get_bind().dialect.name == "postgresql":
        free = set(session.scalars(
            select(TrainingJob.id).where(TrainingJob.id.in_(candidates), TrainingJob.state == JobState.QUEUED)
            .with_for_update(skip_locked=True)
        ))
        candidates = [c for c in candidates if c in free]
    now = utcnow()
    claimed: list[str] = []
    for job_id in candidates:
        if len(claimed) == limit:
            break
        # step restarts at the checkpoint: a dead worker's steps after its last checkpoint are gone, and the job
        # shows the progress it will actually resume from
        if transition(session, job_id, expected=JobState.QUEUED, new=JobState.RUNNING,
                      attempts=TrainingJob.attempts + 1, worker_host=worker,
                      started_at=func.coalesce(TrainingJob.started_at, now), heartbeat_at=now,
                      step=func.coalesce(TrainingJob.checkpoint_step, 0), error_code=None, error_message=None):
            claimed.append(job_id)
    if not claimed:
        return []
    rows = {j.id: j for j in session.scalars(
        select(TrainingJob).where(TrainingJob.id.in_(claimed)).execution_options(populate_existing=True)
    )}
    return [rows[i] for i in claimed]


def claim_generations(session: Session, *, limit: int, worker_host: str) -> list[Generation]:
    """Atomically move up to `limit` queued generations to running, in `generation_queue` order (round-robin over
    users, oldest first within a user; the message that woke the worker is only a wake-up, as for training).

    Returns the rows this call claimed (possibly none). On PostgreSQL the candidates are locked with `FOR UPDATE
    SKIP LOCKED`, so concurrent claimers never share a row; on SQLite each row is taken by its own conditional
    UPDATE. The caller commits.
    """
    if limit < 1:
        return []
    now = utcnow()
    q = generation_queue()
    order = (q.c.turn, q.c.queued_at, q.c.id)
    # A few spare candidates: on PostgreSQL some may be locked by a concurrent claimer.
    ranked = list(session.scalars(select(q.c.id).order_by(*order).limit(limit * 4 + 8)))
    claim_values = {
        "state": GenerationState.RUNNING,
        "attempts": Generation.attempts + 1,
        "started_at": now,
        "heartbeat_at": now,
        "worker_host": worker_host,
        "step": 0,
    }
    claimed: list[str] = []
    bind = session.get_bind()
    if bind.dialect.name == "postgresql":
        free = set(session.scalars(
            select(Generation.id).where(Generation.id.in_(ranked), Generation.state == GenerationState.QUEUED)
            .with_for_update(skip_locked=True)
        )) if ranked else set()
        ids = [i for i in ranked if i in free][:limit]
        if ids:
            result = session.execute(
                update(Generation)
                .where(Generation.id.in_(ids), Generation.state == GenerationState.QUEUED)
                .values(**claim_values)
                .returning(Generation.id)
                .execution_options(synchronize_session=False)
            )
            claimed = list(result.scalars())
    else:
        for gen_id in ranked:
            if len(claimed) == limit:
                break
            result = session.execute(
                update(Generation)
                .where(Generation.id == gen_id, Generation.state == GenerationState.QUEUED)
                .values(**claim_values)
                .execution_options(synchronize_session=False)
            )
            assert isinstance(result, CursorResult)
            if result.rowcount == 1:
                claimed.append(gen_id)
    if not claimed:
        return []
    by_id = {g.id: g for g in session.scalars(
        select(Generation).where(Generation.id.in_(claimed)).execution_options(populate_existing=True))}
    rows = [by_id[i] for i in sorted(claimed, key=ranked.index)]
    for row in rows:
        webhooks.state_changed(session, Generation, row.id, GenerationState.RUNNING)
    logger.debug("%s claimed %d generations", worker_host, len(rows))
    return list(rows)


def last_seen(row: TrainingJob | Generation) -> datetime:
    """When the row's worker last showed life: its heartbeat, else its start, else its queueing (the Python twin
    of the expression `stale_rows` filters on)."""
    return row.heartbeat_at or row.started_at or row.queued_at


def is_abandoned(row: TrainingJob | Generation, *, worker_host: str, older_than: timedelta) -> bool:
    """A row a worker holds that nobody is running any more: its worker is `worker_host` (this process, which
    crashed out of it and lives on) or stopped beating more than `older_than` ago. Such a row may be taken over."""
    if row.state not in (JOB_ACTIVE if isinstance(row, TrainingJob) else GENERATION_ACTIVE):
        return False
    return row.worker_host == worker_host or last_seen(row) < utcnow() - older_than


def claim_generation_batch(
    session: Session, *, first_id: str, limit: int, worker_host: str, older_than: timedelta
) -> list[Generation]:
    """The generate task's claim: `first_id`, the message's row, requeued when it was abandoned (see
    `is_abandoned`); then up to `limit` queued generations in fair order (`claim_generations`), moved to running
    for `worker_host`. The caller commits."""
    gen = session.get(Generation, first_id)
    if gen is not None and is_abandoned(gen, worker_host=worker_host, older_than=older_than):
        logger.warning("generation %s: requeued (was running on %s, last seen %s)", gen.id, gen.worker_host,
                       last_seen(gen))
        transition_generation(session, first_id, expected=GenerationState.RUNNING, new=GenerationState.QUEUED)
    return claim_generations(session, limit=limit, worker_host=worker_host)


def queued_adapter_ids(session: Session, *, limit: int) -> list[str]:
    """The adapters the next `limit` queued generations will need, in claim order (a generate worker prefetches
    them into its host cache while it samples the current batch)."""
    q = generation_queue()
    rows = session.execute(
        select(Generation.adapter_id, Generation.subject_adapter_id)
        .join(q, q.c.id == Generation.id)
        .where(or_(Generation.adapter_id.is_not(None), Generation.subject_adapter_id.is_not(None)))
        .order_by(q.c.turn, q.c.queued_at, q.c.id)
        .limit(limit)
    ).all()
    return list(dict.fromkeys(a for row in rows for a in row if a is not None))
