from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.sse import EventSourceResponse, ServerSentEvent

from api.http.deps import BlobsDep, CurrentUser, ImageIndex, JobId, PagingDep, SessionDep, credential_check
from api.http.errors import Invalid
from api.http.openapi import binary_response
from api.http.pagination import cursor_page
from api.http.polling import RETRY_AFTER_HEADER, polled
from api.http.problems import problem_responses
from api.http.streams import EventStreamRoute, StreamHub
from api.schemas import MAX_OFFSET, JobEventPage, JobEventPublic, JobPage, JobPublic
from api.services import jobs, lookup, rounds
from storage import urls
from storage.error_codes import ErrorCode
from storage.models import JobEvent
from storage.states import JobState

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=problem_responses(401, 403, 404, 409, 410, 429))

StateFilter = Annotated[JobState | None, Query(description="Only jobs in this state.")]


def event_public(event: JobEvent, preview_n: int | None = None) -> JobEventPublic:
    """A preview event shows the preview's URL instead of the store's internal key (`preview_n`: its index, for
    events written before the worker recorded it); URLs stored in a payload (a `picks` event's) become absolute."""
    payload = dict(event.payload or {})
    if event.kind == "preview":
        payload.pop("image_key", None)
        n = payload.get("n", preview_n)
        if isinstance(n, int):
            payload["n"] = n
            payload["url"] = urls.absolute(f"/v1/jobs/{event.job_id}/previews/{n}")
    payload = urls.absolute_urls(payload)
    return JobEventPublic.model_validate(event).model_copy(update={"payload": payload})


def _event_cursor(
    after: Annotated[int, Query(ge=0, le=MAX_OFFSET, description="Only events with a larger id.")] = 0,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> int:
    """Where a listing or a stream starts: after `?after`, or after a `Last-Event-ID` when that is later (ASCII
    digits only: int() also takes '²'-like digits and refuses 5,000 of them with ValueError), clamped to the
    largest cursor."""
    value = (last_event_id or "").strip()
    if not value:
        return after
    if not (value.isascii() and value.isdigit()) or len(value) > 20:
        raise Invalid("Last-Event-ID must be an event id (up to 20 ASCII digits)", code=ErrorCode.BAD_LAST_EVENT_ID)
    return max(after, min(int(value), MAX_OFFSET))


EventCursor = Annotated[int, Depends(_event_cursor)]


def _admitted_stream(job_id: str, request: Request, user: CurrentUser, session: SessionDep,
                     after: EventCursor) -> Iterator[AsyncIterator[ServerSentEvent]]:
    """Check the job and take one of the caller's stream places (429 when there is none) before a byte is sent;
    the place is given back when the request ends, whether or not the stream ever started."""
    jobs.get_job(session=session, owner=user, job_id=job_id)
    hub: StreamHub = request.app.state.streams
    with hub.admitted(user.id):
        session.close()  # the stream must not keep the request's pooled connection for its whole life
        yield hub.events(job_id, after, event_public, still_allowed=credential_check(request, user.id),
                         recheck_seconds=request.app.state.settings.stream_recheck_seconds)


@router.get("", response_model=JobPage)
def list_jobs(user: CurrentUser, session: SessionDep, paging: PagingDep, state: StateFilter = None) -> JobPage:
    """Your jobs, newest first, a page at a time (follow `next`)."""
    return paging.page(JobPage, jobs.list_jobs(session=session, owner=user, state=state, limit=paging.fetch,
                                               offset=paging.offset))


_POLL: dict[int | str, dict[str, Any]] = {200: {"description": "The job.", "headers": RETRY_AFTER_HEADER}}


@router.get("/{job_id}", response_model=JobPublic, responses=_POLL)
def get_job(job_id: JobId, user: CurrentUser, session: SessionDep, response: Response) -> JobPublic:
    """One of your training jobs: state, step, loss, ETA, queue position, its adapter once trained. While it is
    unfinished the answer has `Retry-After` (from `eta_seconds`)."""
    return polled(response, jobs.job_public(session, jobs.get_job(session=session, owner=user, job_id=job_id)))


@router.post("/{job_id}/cancel", status_code=202, response_model=JobPublic,
             responses={202: {"description": "Cancelled, or stopping.", "headers": RETRY_AFTER_HEADER}})
def cancel_job(job_id: JobId, user: CurrentUser, session: SessionDep, response: Response) -> JobPublic:
    """queued → cancelled at once; running → cancelling until the worker stops it; final → 409."""
    job = jobs.get_job(session=session, owner=user, job_id=job_id)
    return polled(response, jobs.job_public(session, jobs.cancel_job(session=session, job=job)))


async def job_event_stream(
    stream: Annotated[AsyncIterator[ServerSentEvent], Depends(_admitted_stream)],
) -> AsyncIterator[ServerSentEvent]:
    async for event in stream:
        yield event


# Added before the JSON list: the router takes the first route that matches, and this one matches only SSE
# requests. Left out of the schema: the list's operation documents both (one path and method, one operation).
router.add_api_route("/{job_id}/events", job_event_stream, methods=["GET"], response_class=EventSourceResponse,
                     route_class_override=EventStreamRoute, include_in_schema=False)


@router.get(
    "/{job_id}/events",
    response_model=JobEventPage,
    responses={200: {"content": {"text/event-stream": {}}, "description": "A page of events, or SSE when asked."}},
)
def list_job_events(
    job_id: JobId,
    request: Request,
    user: CurrentUser,
    session: SessionDep,
    after: EventCursor,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> JobEventPage:
    """Progress, state, log and preview events, oldest first. With `Accept: text/event-stream`: a server-sent
    event stream (`id:` = event id, `event:` = kind) that honours `Last-Event-ID` and ends with an `end`
    event once the job is final. Open streams are limited per user and per server (429).

    A page holds at most `limit` events; when more follow, `next` is the URL of the events after the last one
    shown (`?after=ID`; follow it until `next` is null). Preview events carry `url` (the preview image);
    `webhook` events record each webhook delivery attempt."""
    jobs.get_job(session=session, owner=user, job_id=job_id)
    events = jobs.job_events_after(session=session, job_id=job_id, after=after, limit=limit + 1)
    legacy = {e.id: jobs.preview_index(session=session, job_id=job_id, event_id=e.id)
              for e in events[:limit] if e.kind == "preview" and "n" not in (e.payload or {})}
    return cursor_page(JobEventPage, request, [event_public(e, legacy.get(e.id)) for e in events], limit=limit,
                       cursor="id")


@router.get("/{job_id}/previews/{n}", response_class=Response, responses=binary_response("image/png", "A preview PNG."))
def get_job_preview(job_id: JobId, n: ImageIndex, user: CurrentUser, session: SessionDep, blobs: BlobsDep) -> Response:
    """The n-th (0-based) preview image the training job rendered."""
    jobs.get_job(session=session, owner=user, job_id=job_id)
    key = jobs.preview_key(session=session, job_id=job_id, n=n)
    return Response(lookup.read_blob(blobs, key, what="preview"), media_type="image/png")


@router.get("/{job_id}/picks/{n}", response_class=Response,
            responses=binary_response("image/png", "A picked image, PNG."))
def get_job_pick(job_id: JobId, n: ImageIndex, user: CurrentUser, session: SessionDep, blobs: BlobsDep) -> Response:
    """The n-th (0-based) image an automatic round kept to train on (the job's `picks`)."""
    job = jobs.get_job(session=session, owner=user, job_id=job_id)
    return Response(lookup.read_blob(blobs, rounds.pick_key(job, n), what="pick"), media_type="image/png")
