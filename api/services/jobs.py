"""Training jobs: the views (in a fixed number of queries per page), listing, cancel, admin retry, events and
previews.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.http.errors import Conflict, NotFound
from api.schemas import JobPublic
from api.services import queue
from api.services.lookup import get_owned
from api.services.uploads import lock_owner
from storage import jobs as jobstore
from storage.dispatch import dispatch
from storage.error_codes import ErrorCode
from storage.models import (
    JobEvent,
    TrainingJob,
    User,
    utcnow,
)
from storage.resources import job_views
from storage.settings import Settings
from storage.states import JOB_FINAL, JOB_UNFINISHED, EventKind, JobState, WorkKind

logger = logging.getLogger(__name__)


def job_public(session: Session, job: TrainingJob) -> JobPublic:
    return job_views(session, [job])[0]


def list_jobs(*, session: Session, owner: User, state: str | None, limit: int, offset: int) -> list[JobPublic]:
    query = select(TrainingJob).where(TrainingJob.owner_id == owner.id)
    if state is not None:
        query = query.where(TrainingJob.state == state)
    return job_views(session, session.scalars(
        query.order_by(TrainingJob.queued_at.desc(), TrainingJob.id.desc()).limit(limit).offset(offset)
    ).all())


def get_job(*, session: Session, owner: User, job_id: str) -> TrainingJob:
    return get_owned(session, TrainingJob, job_id, owner, "job")


def request_cancel(session: Session, job: TrainingJob) -> bool:
    """queued → cancelled or running → cancelling (conditional); False when the job is already final."""
    for _ in range(3):  # the state may move under us; each try is one conditional UPDATE
        now = utcnow()
        if job.state == JobState.CANCELLING:
            return True
        if job.state == JobState.QUEUED and jobstore.transition(
            session, job.id, expected=JobState.QUEUED, new=JobState.CANCELLED, cancel_requested_at=now,
            finished_at=now,
        ):
            return True
        if job.state == JobState.RUNNING and jobstore.transition(
            session, job.id, expected=JobState.RUNNING, new=JobState.CANCELLING, cancel_requested_at=now
        ):
            return True
        if job.state in JOB_FINAL:
            return False
        session.refresh(job)
    return job.state in (JobState.CANCELLING, JobState.CANCELLED)


# "the job has already succeeded", not "the job is already succeeded"
STATE_PHRASES: dict[str, str] = {
    JobState.QUEUED: "is still queued", JobState.RUNNING: "is still running", JobState.CANCELLING: "is being cancelled",
    JobState.SUCCEEDED: "has already succeeded", JobState.FAILED: "has already failed",
    JobState.CANCELLED: "has already been cancelled",
}


def cancel_job(*, session: Session, job: TrainingJob) -> TrainingJob:
    """Cancel `job` (already authorised). Raises Conflict when it is final."""
    if not request_cancel(session, job):
        session.rollback()
        raise Conflict(f"the job {STATE_PHRASES.get(job.state, 'is ' + job.state)}", code=ErrorCode.JOB_FINAL)
    session.commit()
    session.refresh(job)
    logger.info("job %s: cancel requested (now %s)", job.id, job.state)
    return job


def retry_job(*, session: Session, settings: Settings, job_id: str) -> TrainingJob:
    """Admin retry: failed|cancelled → queued, error cleared, attempts reset (the history stays in events)."""
    job = session.get(TrainingJob, job_id)
    if job is None:
        raise NotFound("job not found")
    previous_attempts = job.attempts
    owner = session.get(User, job.owner_id)
    assert owner is not None
    lock_owner(session, owner)  # as a retrain: one unfinished job per style, checked until the commit
    busy = session.scalar(select(TrainingJob.id).where(
        TrainingJob.style_id == job.style_id, TrainingJob.id != job.id, TrainingJob.state.in_(JOB_UNFINISHED)))
    if busy is not None:
        session.rollback()
        raise Conflict(f"the style has another unfinished job ({busy}); cancel it or wait for it before retrying "
                       "this one", code=ErrorCode.STYLE_BUSY)
    if not jobstore.transition(
        session, job.id, expected=(JobState.FAILED, JobState.CANCELLED), new=JobState.QUEUED, error_code=None,
        error_message=None, cancel_requested_at=None, finished_at=None, heartbeat_at=None, attempts=0,
        queued_at=utcnow(), sent_at=None,
    ):
        session.rollback()
        raise Conflict(f"only failed or cancelled jobs can be retried; this one {STATE_PHRASES[job.state]}",
                       code=ErrorCode.NOT_RETRYABLE)
    jobstore.add_event(
        session, job.id, EventKind.LOG, {"message": "retried by an admin", "previous_attempts": previous_attempts}
    )
    session.commit()
    dispatch(session, WorkKind.TRAIN, job.id, queue.sender(settings))
    session.refresh(job)
    return job


def job_events(*, session: Session, job_id: str, after: int, limit: int) -> Sequence[JobEvent]:
    return jobstore.events_after(session, job_id, after, limit)


def job_events_after(*, session: Session, job_id: str, after: int, limit: int) -> Sequence[JobEvent]:
    """Up to `limit` events with an id above `after`, oldest first."""
    return jobstore.events_after(session, job_id, after, limit)


def preview_index(*, session: Session, job_id: str, event_id: int) -> int:
    """The n of a preview event in /v1/jobs/{id}/previews/{n}: previews of the job before it."""
    return int(session.scalar(select(func.count()).select_from(JobEvent).where(
        JobEvent.job_id == job_id, JobEvent.kind == EventKind.PREVIEW, JobEvent.id < event_id)) or 0)


def preview_key(*, session: Session, job_id: str, n: int) -> str:
    event = session.scalars(
        select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.kind == EventKind.PREVIEW)
        .order_by(JobEvent.id).offset(n).limit(1)
    ).first()
    key = (event.payload or {}).get("image_key") if event is not None else None
    if not isinstance(key, str):
        raise NotFound("preview not found")
    return key
