"""The job and generation state machines (their vocabulary is `storage.states`) and the queries api/ and worker/
share. `transition` (jobs) and `transition_generation` share one conditional UPDATE; the reconciler's queries
(`stale_rows`, `unsent_rows`) and `mark_sent` take the model, so jobs and generations follow one rule. Claims and
the takeover rule are in `storage.claims`.

Every state change is ONE conditional UPDATE (`... WHERE id = :id AND state IN (:expected)`); the caller
learns from the return value whether it won. A job transition that changed a row also writes one
`job_events` row of kind "state". Nothing here commits: the caller owns the transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, TypeVar

from sqlalchemy import CursorResult, func, or_, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.orm.util import identity_key

from storage import webhooks
from storage.models import Generation, JobEvent, TrainingJob, utcnow
from storage.states import (
    GENERATION_ACTIVE,
    GENERATION_TRANSITIONS,
    JOB_ACTIVE,
    JOB_TRANSITIONS,
    EventKind,
    GenerationState,
    JobState,
)

logger = logging.getLogger(__name__)

Stateful = TypeVar("Stateful", bound=TrainingJob | Generation)
_QUEUED = JobState.QUEUED  # the same word in both machines (GenerationState.QUEUED == "queued")


@dataclass(frozen=True)
class _Machine:
    """What the generic queries need to know about one table with a `state` column."""

    states: type[StrEnum]
    edges: Mapping[Any, frozenset[Any]]
    active: frozenset[str]  # a worker holds the row; its heartbeat says whether that worker is alive
    columns: frozenset[str]  # settable together with a transition (ORM attribute names)


_MACHINES: dict[type, _Machine] = {
    TrainingJob: _Machine(JobState, JOB_TRANSITIONS, JOB_ACTIVE,
                          frozenset(TrainingJob.__mapper__.column_attrs.keys()) - {"id", "state"}),
    Generation: _Machine(GenerationState, GENERATION_TRANSITIONS, GENERATION_ACTIVE,
                         frozenset(Generation.__mapper__.column_attrs.keys()) - {"id", "state"}),
}


def _checked(model: type, expected: str | Collection[str], new: str, fields: dict[str, Any]) -> tuple[str, ...]:
    """The expected states as a tuple, after refusing unknown states, illegal edges and unknown columns."""
    machine = _MACHINES[model]
    states = (expected,) if isinstance(expected, str) else tuple(expected)
    if not states:
        raise ValueError("expected must name at least one state")
    for state in (*states, new):
        if state not in machine.states.__members__.values():
            raise ValueError(f"unknown state {state!r}")
    for state in states:
        if new not in machine.edges[state]:
            raise ValueError(f"illegal transition {state} -> {new}")
    unknown = set(fields) - machine.columns
    if unknown:
        raise ValueError(f"unknown columns {sorted(unknown)}")
    return states


def _update_one(session: Session, model: type[Stateful], row_id: str, *conditions: Any, **values: Any) -> bool:
    """One conditional UPDATE of row `row_id` (where `conditions` hold); True when it changed the row."""
    result = session.execute(
        update(model).where(model.id == row_id, *conditions).values(**values)
        .execution_options(synchronize_session=False)
    )
    assert isinstance(result, CursorResult)
    if result.rowcount != 1:
        return False
    # The UPDATE bypassed the ORM: a loaded copy of the row re-reads its columns on next access.
    obj = session.identity_map.get(identity_key(model, row_id))
    if obj is not None:
        session.expire(obj)
    return True


def transition(
    session: Session, job_id: str, *, expected: str | Collection[str], new: str, held_by: str | None = None,
    **fields: Any
) -> bool:
    """Move job `job_id` from one of `expected` to `new`, setting `fields` in the same UPDATE; with `held_by` (a
    worker_host), only while that worker holds the job (a worker frozen past the stale window must not end a job
    that another worker took over).

    Returns True when this call changed the row (and wrote one "state" event), False when the job was not in
    an expected state (someone else moved it first, or it is already final) or is no longer `held_by`'s.
    """
    mine = () if held_by is None else (TrainingJob.worker_host == held_by,)
    states = _checked(TrainingJob, expected, new, fields)
    previous: str | None = states[0] if len(states) == 1 else None
    if previous is None:
        # Several possible sources: lock the row so the event's "from" is exact. The UPDATE below is still
        # the guard that decides.
        previous = session.scalar(select(TrainingJob.state).where(TrainingJob.id == job_id).with_for_update())
        if previous not in states:
            return False
    if not _update_one(session, TrainingJob, job_id, TrainingJob.state.in_(states), *mine, state=new, **fields):
        return False
    add_event(session, job_id, EventKind.STATE, {"from": previous, "to": new})
    logger.info("job %s: %s -> %s", job_id, previous, new)
    return True


def transition_generation(
    session: Session, generation_id: str, *, expected: str | Collection[str], new: str,
    held_by: str | None = None, **fields: Any
) -> bool:
    """The generation counterpart of `transition` (generations write no event rows, but may queue a webhook).
    `held_by` (a worker_host): only while that worker holds the row (a worker that was frozen past the stale
    window finds its row taken over, perhaps running elsewhere, and must not finish it)."""
    states = _checked(Generation, expected, new, fields)
    mine = () if held_by is None else (Generation.worker_host == held_by,)
    if not _update_one(session, Generation, generation_id, Generation.state.in_(states), *mine, state=new,
                       **fields):
        return False
    webhooks.state_changed(session, Generation, generation_id, new)
    return True


def record_generation_step(session: Session, generation_id: str, step: int, worker_host: str) -> bool:
    """Progress of a running generation this worker holds (also its heartbeat); False when it is no longer ours."""
    if not _update_one(session, Generation, generation_id, Generation.state == GenerationState.RUNNING,
                       Generation.worker_host == worker_host, step=step, heartbeat_at=utcnow()):
        return False
    webhooks.queue_event(session, Generation, generation_id, "progress")
    return True


def add_event(session: Session, job_id: str, kind: str, payload: dict[str, Any]) -> JobEvent:
    if kind not in EventKind.__members__.values():
        raise ValueError(f"unknown event kind {kind!r}")
    event = JobEvent(job_id=job_id, kind=kind, payload=payload)
    session.add(event)
    session.flush()
    if kind in (EventKind.STATE, EventKind.PROGRESS, EventKind.PHASE):  # its webhook commits with the change
        if kind == EventKind.STATE:
            webhooks.state_changed(session, TrainingJob, job_id, str(payload.get("to")))
        else:  # a phase is progress too: the job's body carries it
            webhooks.queue_event(session, TrainingJob, job_id, "progress")
    return event


def events_after(session: Session, job_id: str, after_id: int = 0, limit: int = 100) -> Sequence[JobEvent]:
    """Events of `job_id` with id > `after_id`, oldest first (the SSE cursor)."""
    return session.scalars(
        select(JobEvent)
        .where(JobEvent.job_id == job_id, JobEvent.id > after_id)
        .order_by(JobEvent.id)
        .limit(limit)
    ).all()


def count_events(session: Session, job_id: str, kind: str) -> int:
    return int(session.scalar(select(func.count()).select_from(JobEvent)
                              .where(JobEvent.job_id == job_id, JobEvent.kind == kind)) or 0)


def _cutoff(older_than: timedelta | datetime) -> datetime:
    return utcnow() - older_than if isinstance(older_than, timedelta) else older_than


def stale_rows(session: Session, model: type[Stateful], older_than: timedelta | datetime) -> Sequence[Stateful]:
    """Rows a worker holds (running, or cancelling for jobs) whose last heartbeat (or start) is older than
    `older_than`: their worker is presumed dead."""
    seen = func.coalesce(model.heartbeat_at, model.started_at, model.queued_at)
    return session.scalars(
        select(model)
        .where(model.state.in_(_MACHINES[model].active), seen < _cutoff(older_than))
        .order_by(model.queued_at)
    ).all()


def unsent_rows(
    session: Session, model: type[Stateful], older_than: timedelta | datetime, limit: int = 100
) -> Sequence[Stateful]:
    """Queued rows queued before the cutoff whose task message was never sent, or last sent before it."""
    cutoff = _cutoff(older_than)
    return session.scalars(
        select(model)
        .where(model.state == _QUEUED, model.queued_at < cutoff, or_(model.sent_at.is_(None), model.sent_at < cutoff))
        .order_by(model.queued_at)
        .limit(limit)
    ).all()


def mark_sent(session: Session, model: type[Stateful], row_id: str, celery_task_id: str | None = None) -> None:
    """Record that a task message for the row was just handed to the broker (also on a loaded copy of it, so
    the caller needs no re-read)."""
    values: dict[str, Any] = {"sent_at": utcnow()}
    if celery_task_id is not None:
        values["celery_task_id"] = celery_task_id
    session.execute(
        update(model).where(model.id == row_id).values(**values).execution_options(synchronize_session=False)
    )
    obj = session.identity_map.get(identity_key(model, row_id))
    if obj is not None:
        for key, value in values.items():
            set_committed_value(obj, key, value)


def count_by_state(session: Session, model: type[TrainingJob] | type[Generation]) -> dict[str, int]:
    """Rows per state, every state of the model present (zero when none)."""
    counts = dict.fromkeys(map(str, _MACHINES[model].states), 0)
    for state, count in session.execute(select(model.state, func.count()).group_by(model.state)):
        counts[state] = int(count)
    return counts
