from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, status
from pydantic import BaseModel, ConfigDict, Field

from api.http.deps import AdminPagingDep, AdminUser, JobId, KeyId, SessionDep, SettingsDep, UserId
from api.http.problems import problem_responses
from api.routes.jobs import StateFilter
from api.schemas import (
    AdminJobPage,
    AdminJobPublic,
    ApiKeyCreatedPublic,
    ApiKeyPage,
    OverviewPublic,
    UserCreate,
    UserCreatedPublic,
    UserPage,
    UserPublic,
)
from api.services import accounts, jobs
from api.services import admin as admin_views

router = APIRouter(prefix="/v1/admin", tags=["admin"], responses=problem_responses(401, 403, 404, 409))


@router.get("/jobs", response_model=AdminJobPage)
def admin_list_jobs(
    _: AdminUser,
    session: SessionDep,
    paging: AdminPagingDep,
    state: StateFilter = None,
    user: Annotated[str | None, Query(description="A user name or id.")] = None,
) -> AdminJobPage:
    """Every user's jobs, newest first, a page at a time (follow `next`)."""
    return paging.page(AdminJobPage, admin_views.list_jobs(session=session, state=state, user=user,
                                                           limit=paging.fetch, offset=paging.offset))


@router.get("/overview", response_model=OverviewPublic)
def admin_get_overview(_: AdminUser, session: SessionDep, settings: SettingsDep) -> OverviewPublic:
    """Queue depths, workers online (heartbeat in the last 60 s) with their cache stats, running jobs,
    failures in the last 24 h and job counts by state."""
    return admin_views.overview(session=session, settings=settings)


@router.post("/jobs/{job_id}/cancel", status_code=status.HTTP_202_ACCEPTED, response_model=AdminJobPublic)
def admin_cancel_job(job_id: JobId, _: AdminUser, session: SessionDep) -> AdminJobPublic:
    """Cancel any user's job: queued → cancelled at once; running → cancelling until its worker stops it."""
    job = jobs.cancel_job(session=session, job=admin_views.get_job(session=session, job_id=job_id))
    return admin_views.admin_job(session=session, job=job)


@router.post("/jobs/{job_id}/retry", status_code=status.HTTP_202_ACCEPTED, response_model=AdminJobPublic)
def admin_retry_job(job_id: JobId, _: AdminUser, session: SessionDep, settings: SettingsDep) -> AdminJobPublic:
    """failed or cancelled → queued (error cleared, attempts reset, resumes from its checkpoint), sent again."""
    job = jobs.retry_job(session=session, settings=settings, job_id=job_id)
    return admin_views.admin_job(session=session, job=job)


@router.get("/users", response_model=UserPage)
def admin_list_users(_: AdminUser, session: SessionDep, paging: AdminPagingDep) -> UserPage:
    """Every user, oldest first, a page at a time (follow `next`)."""
    found = accounts.list_users(session=session, limit=paging.fetch, offset=paging.offset)
    return paging.page(UserPage, [UserPublic.model_validate(u) for u in found])


@router.post("/users", status_code=status.HTTP_201_CREATED, response_model=UserCreatedPublic)
def admin_create_user(body: UserCreate, _: AdminUser, session: SessionDep) -> UserCreatedPublic:
    """Create a user and its first API key (the key is shown only in this response)."""
    return accounts.add_user(session=session, name=body.name, is_admin=body.is_admin)


@router.post("/users/{user_id}/keys", status_code=status.HTTP_201_CREATED, response_model=ApiKeyCreatedPublic)
def admin_create_key(user_id: UserId, _: AdminUser, session: SessionDep) -> ApiKeyCreatedPublic:
    """A new API key for any user (shown only in this response); admins are not held to the per-user key limit."""
    return accounts.add_key(session=session, user_id=user_id)


@router.post("/users/{user_id}/disable", response_model=UserPublic)
def admin_disable_user(user_id: UserId, _: AdminUser, session: SessionDep) -> UserPublic:
    """Its keys stop working and its browser sessions end at once; its data stays."""
    return accounts.set_disabled(session=session, user_id=user_id, disabled=True)


class CancelledWorkPublic(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"generations": 3, "jobs": 1}]})

    generations: int = Field(description="Generations cancelled (they end failed, error code cancelled_on_request).")
    jobs: int = Field(description="Training jobs cancelled (queued) or asked to stop (running).")


@router.post("/users/{user_id}/cancel-work", response_model=CancelledWorkPublic)
def admin_cancel_user_work(user_id: UserId, _: AdminUser, session: SessionDep) -> CancelledWorkPublic:
    """Cancel everything of this user that is queued or running (generations and training jobs)."""
    done = accounts.cancel_all_work(session=session, user_id=user_id)
    return CancelledWorkPublic(generations=done.generations, jobs=done.jobs)


@router.post("/users/{user_id}/enable", response_model=UserPublic)
def admin_enable_user(user_id: UserId, _: AdminUser, session: SessionDep) -> UserPublic:
    """A disabled user's keys work again (browser sessions ended by disabling stay ended)."""
    return accounts.set_disabled(session=session, user_id=user_id, disabled=False)


@router.get("/keys", response_model=ApiKeyPage)
def admin_list_keys(
    _: AdminUser, session: SessionDep, paging: AdminPagingDep,
    user: Annotated[str | None, Query(description="A user name or id.")] = None,
) -> ApiKeyPage:
    """Every user's keys (never their secrets), oldest first, a page at a time (follow `next`)."""
    return paging.page(ApiKeyPage, accounts.list_keys(session=session, user=user, limit=paging.fetch,
                                                      offset=paging.offset))


@router.delete("/keys/{key_id}", status_code=status.HTTP_204_NO_CONTENT)
def admin_revoke_key(key_id: KeyId, _: AdminUser, session: SessionDep) -> None:
    """The key stops working, and so do the browser sessions signed in with it."""
    accounts.revoke_key(session=session, key_id=key_id)


@router.post("/keys/{key_id}/rotate", status_code=status.HTTP_201_CREATED, response_model=ApiKeyCreatedPublic)
def admin_rotate_key(key_id: KeyId, _: AdminUser, session: SessionDep) -> ApiKeyCreatedPublic:
    """A new key for the same user (shown only in this response); the old one is revoked."""
    return accounts.rotate_key(session=session, key_id=key_id)
