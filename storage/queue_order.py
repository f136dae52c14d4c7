"""The order work is taken in, and where a queued row stands in it (its queue position).

Training jobs: the database's order, never the broker's (`train_queue`: fair across users, then oldest);
`storage.claims.claim_train_jobs` claims in it and `queue_positions` reports it. Generations: round-robin over
users, oldest first within a user (`generation_queue`), so a batch takes one row of every waiting user before a
second of anyone's: one user's flood costs another user at most the batch already running. Only reads: this
module sits below the state machine (`storage.jobs`) and the claims, so the resource views (`storage.resources`)
can show positions without importing them.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from storage.models import Generation, TrainingJob
from storage.states import JOB_ACTIVE, GenerationState, JobState


def train_queue() -> Any:
    """Claimable queued jobs with their claim order: the database's, never the broker's.

    Fair across users: a job's `load` is its owner's running jobs plus the owner's queued jobs ahead of it, so the
    user with the fewest running jobs goes first, then the oldest job. Sorting every claimable job by (load,
    queued_at, id) gives exactly the order of claiming one job at a time with that rule, so a batch claim
    (`limit` > 1) and `queue_position` agree with single claims.
    """
    running = (
        select(TrainingJob.owner_id, func.count().label("n"))
        .where(TrainingJob.state.in_(JOB_ACTIVE))
        .group_by(TrainingJob.owner_id)
        .subquery()
    )
    ahead = func.row_number().over(partition_by=TrainingJob.owner_id, order_by=(TrainingJob.queued_at, TrainingJob.id))
    return (
        select(TrainingJob.id, TrainingJob.queued_at, (func.coalesce(running.c.n, 0) + ahead - 1).label("load"))
        .outerjoin(running, running.c.owner_id == TrainingJob.owner_id)
        .where(TrainingJob.state == JobState.QUEUED, TrainingJob.cancel_requested_at.is_(None),
               TrainingJob.attempts < TrainingJob.max_attempts)
        .subquery()
    )


def queue_positions(session: Session, job_ids: Collection[str]) -> dict[str, int]:
    """The queue position of each of `job_ids` waiting to be claimed (1 = the next `claim_train_jobs` takes, in
    `train_queue` order), in one query whatever their number; the others are left out."""
    if not job_ids:
        return {}
    q = train_queue()
    ranked = select(q.c.id, func.row_number().over(order_by=(q.c.load, q.c.queued_at, q.c.id)).label("n")).subquery()
    rows = session.execute(select(ranked.c.id, ranked.c.n).where(ranked.c.id.in_(list(job_ids))))
    return {job_id: int(n) for job_id, n in rows}


def queue_position(session: Session, job: TrainingJob) -> int:
    """1 for the next job `claim_train_jobs` will claim; 0 when `job` is not waiting to be claimed."""
    return queue_positions(session, [job.id]).get(job.id, 0) if job.state == JobState.QUEUED else 0


def generation_queue() -> Any:
    """Queued generations with their claim order `(turn, queued_at, id)`: `turn` is the row's place among its
    owner's queued rows (1 = the owner's oldest), so every user's oldest comes before anyone's second — round-robin
    over users, oldest first within a user, whatever order the requests (or the broker's messages) came in."""
    turn = func.row_number().over(partition_by=Generation.owner_id, order_by=(Generation.queued_at, Generation.id))
    return (select(Generation.id, Generation.queued_at, turn.label("turn"))
            .where(Generation.state == GenerationState.QUEUED).subquery())


def generation_queue_positions(session: Session, gens: Sequence[Generation]) -> dict[str, int]:
    """Queue positions (1 = next) of the queued ones among `gens` in `generation_queue` order, in one query
    whatever their number."""
    ids = [g.id for g in gens if g.state == GenerationState.QUEUED]
    if not ids:
        return {}
    q = generation_queue()
    ordered = select(q.c.id, func.row_number().over(order_by=(q.c.turn, q.c.queued_at, q.c.id)).label("n")).subquery()
    rows = session.execute(select(ordered.c.id, ordered.c.n).where(ordered.c.id.in_(ids)))
    return {gen_id: int(n) for gen_id, n in rows}
