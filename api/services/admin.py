"""Admin views of the work: every user's jobs, the overview (queues, workers online, failures, counts).
"""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import or_, select
from sqlalchemy.orm import Session, contains_eager, joinedload

from api.http.errors import NotFound
from api.schemas import (
    AdminJobPublic,
    FailurePublic,
    OverviewPublic,
    WorkerPublic,
)
from storage import broker
from storage import jobs as jobstore
from storage.models import (
    WORKER_ONLINE_WINDOW,
    Generation,
    TrainingJob,
    User,
    Worker,
    utcnow,
)
from storage.resources import job_views
from storage.settings import Settings
from storage.states import JOB_ACTIVE, JobState

logger = logging.getLogger(__name__)


def list_jobs(
    *, session: Session, state: str | None, user: str | None, limit: int, offset: int
) -> list[AdminJobPublic]:
    query = select(TrainingJob).join(TrainingJob.owner).options(contains_eager(TrainingJob.owner))
    if state is not None:
        query = query.where(TrainingJob.state == state)
    if user is not None:
        query = query.where(or_(User.name == user, User.id == user))
    jobs = session.scalars(
        query.order_by(TrainingJob.queued_at.desc(), TrainingJob.id.desc()).limit(limit).offset(offset)
    ).all()
    return job_views(session, jobs, AdminJobPublic)


def overview(*, session: Session, settings: Settings) -> OverviewPublic:
    depths: dict[str, int] | None
    queue_error: str | None = None
    try:
        depths = broker.queue_depths(settings)
    except Exception as exc:  # the overview must render while the broker is down
        logger.warning("queue depths unavailable: %s", exc)
        depths, queue_error = None, f"broker unreachable: {exc}"
    now = utcnow()
    workers = session.scalars(
        select(Worker).where(Worker.heartbeat_at >= now - WORKER_ONLINE_WINDOW)
        .order_by(Worker.kind, Worker.id)
    ).all()
    failures = session.scalars(
        select(TrainingJob).options(joinedload(TrainingJob.owner))
        .where(TrainingJob.state == JobState.FAILED, TrainingJob.finished_at >= now - timedelta(hours=24))
        .order_by(TrainingJob.finished_at.desc()).limit(100)
    ).all()
    return OverviewPublic(
        queue_depths=depths,
        queue_error=queue_error,
        workers_online=[WorkerPublic.model_validate(w) for w in workers],
        running_jobs=_active_jobs(session),
        failures_24h=[FailurePublic.model_validate(job) for job in failures],
        job_counts=jobstore.count_by_state(session, TrainingJob),
        generation_counts=jobstore.count_by_state(session, Generation),
    )


def _active_jobs(session: Session) -> list[AdminJobPublic]:
    jobs = session.scalars(
        select(TrainingJob).options(joinedload(TrainingJob.owner))
        .where(TrainingJob.state.in_(JOB_ACTIVE)).order_by(TrainingJob.started_at)
    ).all()
    return job_views(session, jobs, AdminJobPublic)


def get_job(*, session: Session, job_id: str) -> TrainingJob:
    job = session.get(TrainingJob, job_id)
    if job is None:
        raise NotFound("job not found")
    return job


def admin_job(*, session: Session, job: TrainingJob) -> AdminJobPublic:
    """One job as the admin views show it (with its owner's name)."""
    job = session.scalars(
        select(TrainingJob).options(joinedload(TrainingJob.owner)).where(TrainingJob.id == job.id)
        .execution_options(populate_existing=True)
    ).one()
    return job_views(session, [job], AdminJobPublic)[0]
