"""Server-sent event streams of job events, fed by one poller per API process.

A stream holds no database connection while it waits. One background task asks the database, every
`POLL_SECONDS`, for the newest event id and the state of every job that someone watches (one short query for all
streams); only a stream whose job has something new wakes up and reads its events, in a short session of its own.
Streams are counted per user and in total, and refused with 429 past `max_streams_per_user` /
`max_streams_total` (api/routes/jobs.py). The wire format and the keep-alive comments are FastAPI's
(`EventSourceResponse`); this module decides what to send and when.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field

from fastapi.routing import APIRoute
from fastapi.sse import ServerSentEvent
from pydantic import BaseModel
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.routing import Match
from starlette.types import Scope

from api.http.errors import RateLimited
from api.services import limits
from storage import jobs as jobstore
from storage.error_codes import ErrorCode
from storage.models import JobEvent, TrainingJob
from storage.states import JOB_FINAL

logger = logging.getLogger(__name__)

POLL_SECONDS = 0.5
RETRY_MS = 2000  # how long a browser waits before it reconnects (with Last-Event-ID)
EVENTS_PER_READ = 500


def wants_event_stream(headers: Headers) -> bool:
    return "text/event-stream" in headers.get("accept", "")


def _full(message: str) -> RateLimited:
    return RateLimited(message, code=ErrorCode.TOO_MANY_STREAMS, headers={"Retry-After": "10"})


class EventStreamRoute(APIRoute):
    """A route that answers only requests asking for `text/event-stream`: the stream and the JSON list of one
    resource share a URL (browsers' EventSource sends that Accept), and FastAPI streams SSE only from an endpoint
    that is itself a generator, so each is its own route and the router picks by Accept."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child_scope = super().matches(scope)
        if match is not Match.NONE and not wants_event_stream(Headers(scope=scope)):
            return Match.NONE, {}
        return match, child_scope


@dataclass(eq=False)
class _Watcher:
    job_id: str
    after: int
    wake: asyncio.Event = field(default_factory=asyncio.Event)


class StreamHub:
    """Counts open streams (thread-safe: sync routes admit them) and runs the shared poller (on the event loop)."""

    def __init__(self, factory: sessionmaker[Session], *, per_user: int, total: int) -> None:
        self.factory = factory
        self.per_user = per_user
        self.total = total
        self._lock = threading.Lock()
        self._by_user: dict[str, int] = {}
        self._open = 0
        self._watchers: set[_Watcher] = set()
        self._poller: asyncio.Task[None] | None = None

    @contextmanager
    def admitted(self, user_id: str) -> Iterator[None]:
        """Hold one stream's place for `user_id` while the block runs; 429 `too_many_streams` when there is none."""
        with self._lock:
            if self._open >= self.total:
                raise _full(f"the server has {self.total} event streams open, its limit "
                            f"({limits.setting_env('max_streams_total')}); poll GET /v1/jobs/{{id}} or retry shortly")
            mine = self._by_user.get(user_id, 0)
            if mine >= self.per_user:
                raise _full(f"you have {mine} event streams open; the limit is {self.per_user} "
                            f"({limits.setting_env('max_streams_per_user')}): close one first")
            self._by_user[user_id] = mine + 1
            self._open += 1
        try:
            yield
        finally:
            with self._lock:
                self._open -= 1
                left = self._by_user[user_id] - 1
                if left:
                    self._by_user[user_id] = left
                else:
                    del self._by_user[user_id]

    def _latest(self, job_ids: list[str]) -> dict[str, tuple[int, str | None]]:
        """{job id: (newest event id, state)} for the watched jobs, in one short session."""
        with self.factory() as session:
            states = dict(session.execute(select(TrainingJob.id, TrainingJob.state)
                                          .where(TrainingJob.id.in_(job_ids))).all())
            newest = dict(session.execute(select(JobEvent.job_id, func.max(JobEvent.id))
                                          .where(JobEvent.job_id.in_(job_ids)).group_by(JobEvent.job_id)).all())
        return {j: (int(newest.get(j) or 0), states.get(j)) for j in job_ids}

    async def _poll_forever(self) -> None:
        while self._watchers:
            watchers = list(self._watchers)
            try:
                latest = await run_in_threadpool(self._latest, sorted({w.job_id for w in watchers}))
            except Exception as exc:  # the database is down or busy: streams keep waiting, keep-alives go on
                logger.warning("event stream poller: %s", exc)
                latest = {}
            for w in watchers:
                newest, state = latest.get(w.job_id, (0, "unknown"))
                if newest > w.after or state is None or state in JOB_FINAL:
                    w.wake.set()
            await asyncio.sleep(POLL_SECONDS)
        self._poller = None

    def _watch(self, watcher: _Watcher) -> None:
        self._watchers.add(watcher)
        if self._poller is None:
            self._poller = asyncio.get_running_loop().create_task(self._poll_forever())

    @staticmethod
    async def _allowed(still_allowed: Callable[[], bool]) -> bool:
        try:
            return await run_in_threadpool(still_allowed)
        except Exception as exc:  # the database is down: keep the stream until it can tell
            logger.warning("event stream credential check: %s", str(exc).splitlines()[0][:200])
            return True

    def _read(self, job_id: str, after: int) -> tuple[list[JobEvent], str | None]:
        with self.factory() as session:
            events = list(jobstore.events_after(session, job_id, after, EVENTS_PER_READ))
            job = session.get(TrainingJob, job_id)
            return events, job.state if job is not None else None

    async def events(self, job_id: str, after: int, public: Callable[[JobEvent], BaseModel],
                     still_allowed: Callable[[], bool] | None = None,
                     recheck_seconds: float = 5.0) -> AsyncIterator[ServerSentEvent]:
        """The events of one admitted stream after event id `after` (`public`: an event as the API shows it), then
        an `end` event once the job is final. Every `recheck_seconds` `still_allowed` (run in a thread) is asked
        whether the caller's key or session still holds; when it does not (revoked, rotated, signed out, user
        disabled) the stream ends with an `end` event saying so. FastAPI frames them and sends the keep-alives
        (`EventSourceResponse`); the route's dependency gives the stream's place back however it ends."""
        watcher = _Watcher(job_id, after)
        loop = asyncio.get_running_loop()
        next_check = loop.time() + recheck_seconds
        try:
            yield ServerSentEvent(retry=RETRY_MS)
            self._watch(watcher)
            watcher.wake.set()  # read once at once: events before the stream opened
            while True:
                if still_allowed is not None:
                    with suppress(TimeoutError):
                        await asyncio.wait_for(watcher.wake.wait(), timeout=max(next_check - loop.time(), 0.01))
                    if loop.time() >= next_check:
                        next_check = loop.time() + recheck_seconds
                        if not await self._allowed(still_allowed):
                            yield ServerSentEvent(event="end", data={"state": None, "reason": ErrorCode.UNAUTHORIZED})
                            return
                    if not watcher.wake.is_set():
                        continue
                else:
                    await watcher.wake.wait()
                watcher.wake.clear()
                try:
                    events, state = await run_in_threadpool(self._read, job_id, watcher.after)
                except Exception as exc:  # database down or pool busy: the headers are sent, so keep waiting
                    logger.warning("event stream for job %s: %s", job_id, str(exc).splitlines()[0][:200])
                    await asyncio.sleep(POLL_SECONDS)
                    watcher.wake.set()
                    continue
                for event in events:
                    watcher.after = event.id
                    yield ServerSentEvent(id=str(event.id), event=event.kind, data=public(event))
                if len(events) == EVENTS_PER_READ:
                    watcher.wake.set()  # more to read
                elif state is None or state in JOB_FINAL:
                    yield ServerSentEvent(event="end", data={"state": state})
                    return
        finally:
            self._watchers.discard(watcher)
