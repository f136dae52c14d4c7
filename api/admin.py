"""Admin operations: every user's jobs, the overview (queues, workers, failures), users and keys (the account
operations themselves are storage.accounts, shared with `styledrop users`)."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta

from sqlalchemy import or_, select
from sqlalchemy.orm import Session, contains_eager, joinedload

from api import service
from api.errors import Conflict, Invalid, NotFound
from api.schemas import (
    AdminJobPublic,
    ApiKeyCreatedPublic,
    ApiKeyPublic,
    ErrorInfo,
    FailurePublic,
    OverviewPublic,
    UserCreatedPublic,
    UserPublic,
    WorkerPublic,
)
from storage import accounts, broker
from storage import jobs as jobstore
from storage.models import WORKER_ONLINE_WINDOW, ApiKey, Generation, TrainingJob, User, Worker, utcnow
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
    return service.job_views(session, jobs, AdminJobPublic)


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
    return service.job_views(session, jobs, AdminJobPublic)


def get_job(*, session: Session, job_id: str) -> TrainingJob:
    job = session.get(TrainingJob, job_id)
    if job is None:
        raise NotFound("job not found")
    return job


def list_users(*, session: Session) -> Sequence[User]:
    return accounts.list_users(session)


@contextmanager
def _account_errors() -> Iterator[None]:
    """storage.accounts errors as HTTP errors (the CLI prints the same messages)."""
    try:
        yield
    except (accounts.UserNotFound, accounts.KeyNotFound) as exc:
        raise NotFound(str(exc)) from exc
    except accounts.UserExists as exc:
        raise Conflict(str(exc), code="user_exists") from exc
    except accounts.KeyRevoked as exc:
        raise Conflict(str(exc), code="key_revoked") from exc
    except accounts.BadUserName as exc:
        raise Invalid(str(exc), code="bad_user_name") from exc


def _key_public(key: ApiKey, plaintext: str) -> ApiKeyCreatedPublic:
    return ApiKeyCreatedPublic(id=key.id, user_id=key.user_id, key=plaintext, created_at=key.created_at)


def key_public(key: ApiKey) -> ApiKeyPublic:
    return ApiKeyPublic(id=key.id, user_id=key.user_id, prefix=key.prefix, created_at=key.created_at,
                        last_used_at=key.last_used_at, revoked_at=key.revoked_at)


def user_public(user: User) -> UserPublic:
    return UserPublic(id=user.id, name=user.name, is_admin=user.is_admin, disabled=user.disabled,
                      created_at=user.created_at)


def add_user(*, session: Session, name: str, is_admin: bool) -> UserCreatedPublic:
    with _account_errors():
        user, key, plaintext = accounts.add_user(session, name=name, is_admin=is_admin)
    return UserCreatedPublic(user=user_public(user), key=_key_public(key, plaintext))


def list_keys(*, session: Session, user: str | None) -> list[ApiKeyPublic]:
    with _account_errors():
        user_id = accounts.find_user(session, user).id if user is not None else None
        return [key_public(k) for k in accounts.list_keys(session, user_id=user_id)]


def add_key(*, session: Session, user_id: str) -> ApiKeyCreatedPublic:
    with _account_errors():
        key, plaintext = accounts.add_key(session, user_id=user_id)
    return _key_public(key, plaintext)


def revoke_key(*, session: Session, key_id: str) -> None:
    with _account_errors():
        accounts.revoke_key(session, key_id=key_id)


def rotate_key(*, session: Session, key_id: str) -> ApiKeyCreatedPublic:
    with _account_errors():
        key, plaintext = accounts.rotate_key(session, key_id=key_id)
    return _key_public(key, plaintext)


def set_disabled(*, session: Session, user_id: str, disabled: bool) -> UserPublic:
    with _account_errors():
        return user_public(accounts.set_disabled(session, user_id=user_id, disabled=disabled))


def admin_job(*, session: Session, job: TrainingJob) -> AdminJobPublic:
    """One job as the admin views show it (with its owner's name)."""
    job = session.scalars(
        select(TrainingJob).options(joinedload(TrainingJob.owner)).where(TrainingJob.id == job.id)
        .execution_options(populate_existing=True)
    ).one()
    return service.job_views(session, [job], AdminJobPublic)[0]
