from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Annotated, Literal, get_args

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from api import service
from api.deps import BlobsDep, CurrentUser, SessionDep, SessionFactoryDep
from api.schemas import MAX_OFFSET, JobEventPublic, JobPublic
from storage import jobs as jobstore
from storage.models import JOB_STATES, JobEvent, TrainingJob

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

SSE_POLL_SECONDS = 0.5
SSE_KEEPALIVE_SECONDS = 15.0
JobState = Literal["queued", "running", "cancelling", "succeeded", "failed", "cancelled"]
assert set(get_args(JobState)) == set(JOB_STATES)
StateFilter = Annotated[JobState | None, Query(description="Only jobs in this state.")]


def event_public(event: JobEvent) -> JobEventPublic:
    return JobEventPublic(id=event.id, job_id=event.job_id, kind=event.kind, created_at=event.created_at,
                          payload=event.payload or {})


@router.get("", response_model=list[JobPublic])
def list_jobs(
    user: CurrentUser,
    session: SessionDep,
    state: StateFilter = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> list[JobPublic]:
    """Your jobs, newest first."""
    jobs = service.list_jobs(session=session, owner=user, state=state, limit=limit, offset=offset)
    return [service.job_public(session, job) for job in jobs]


@router.get("/{job_id}", response_model=JobPublic)
def get_job(job_id: str, user: CurrentUser, session: SessionDep) -> JobPublic:
    return service.job_public(session, service.get_job(session=session, owner=user, job_id=job_id))


@router.post("/{job_id}/cancel", status_code=202, response_model=JobPublic)
def cancel_job(job_id: str, user: CurrentUser, session: SessionDep) -> JobPublic:
    """queued → cancelled at once; running → cancelling until the worker stops it; final → 409."""
    job = service.get_job(session=session, owner=user, job_id=job_id)
    return service.job_public(session, service.cancel_job(session=session, job=job))


def _poll(factory: sessionmaker[Session], job_id: str, after: int) -> tuple[list[JobEvent], str | None]:
    with factory() as session:
        events = list(jobstore.events_after(session, job_id, after, 500))
        state = session.get(TrainingJob, job_id)
        return events, state.state if state is not None else None


async def _stream(factory: sessionmaker[Session], request: Request, job_id: str, after: int) -> AsyncIterator[str]:
    loop = asyncio.get_running_loop()
    last_sent = loop.time()
    yield "retry: 2000\n\n"
    while True:
        events, state = await run_in_threadpool(_poll, factory, job_id, after)
        for event in events:
            after = event.id
            data = json.dumps(event_public(event).model_dump(mode="json"))
            yield f"id: {event.id}\nevent: {event.kind}\ndata: {data}\n\n"
            last_sent = loop.time()
        if state is None or (state in jobstore.TERMINAL and not events):
            yield f"event: end\ndata: {json.dumps({'state': state})}\n\n"
            return
        if await request.is_disconnected():
            return
        if loop.time() - last_sent > SSE_KEEPALIVE_SECONDS:
            yield ": keep-alive\n\n"
            last_sent = loop.time()
        await asyncio.sleep(SSE_POLL_SECONDS)


@router.get(
    "/{job_id}/events",
    response_model=list[JobEventPublic],
    responses={200: {"content": {"text/event-stream": {}}, "description": "JSON list, or SSE when asked."}},
)
def job_events(
    job_id: str,
    request: Request,
    user: CurrentUser,
    session: SessionDep,
    factory: SessionFactoryDep,
    after: Annotated[int, Query(ge=0, le=MAX_OFFSET, description="Only events with a larger id.")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> list[JobEventPublic] | StreamingResponse:
    """Progress, state, log and preview events, oldest first. With `Accept: text/event-stream`: a server-sent
    event stream (`id:` = event id, `event:` = kind) that honours `Last-Event-ID` and ends with an `end`
    event once the job is final."""
    service.get_job(session=session, owner=user, job_id=job_id)
    if last_event_id is not None and last_event_id.strip().isdigit():
        after = max(after, min(int(last_event_id.strip()), MAX_OFFSET))
    if "text/event-stream" in request.headers.get("accept", ""):
        return StreamingResponse(
            _stream(factory, request, job_id, after),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    return [event_public(e) for e in service.job_events(session=session, job_id=job_id, after=after, limit=limit)]


@router.get("/{job_id}/previews/{n}", response_class=Response,
            responses={200: {"content": {"image/png": {}}, "description": "A preview PNG."}})
def job_preview(job_id: str, n: int, user: CurrentUser, session: SessionDep, blobs: BlobsDep) -> Response:
    """The n-th (0-based) preview image the training job rendered."""
    service.get_job(session=session, owner=user, job_id=job_id)
    key = service.preview_key(session=session, job_id=job_id, n=n)
    return Response(service.read_blob(blobs, key, what="preview"), media_type="image/png")
