"""Server-sent event streams of job events, fed by one poller per API process.

A stream holds no database connection while it waits. One background task asks the database, every
`POLL_SECONDS`, for the newest event id and the state of every job that someone watches (one short query for all
streams); only a stream whose job has something new wakes up and reads its events, in a short session of its own.
Streams are counted per user and in total, and refused with 429 past `max_streams_per_user` /
`max_streams_total` (api/routes/jobs.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from storage import jobs as jobstore
from storage.models import JobEvent, TrainingJob
from storage.states import JOB_FINAL

logger = logging.getLogger(__name__)

POLL_SECONDS = 0.5
KEEPALIVE_SECONDS = 15.0
EVENTS_PER_READ = 500


class StreamLimit(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


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

    @property
    def open_streams(self) -> int:
        return self._open

    def admit(self, user_id: str) -> Callable[[], None]:
        """Count one stream for `user_id` or raise StreamLimit; returns its idempotent release function."""
        with self._lock:
            if self._open >= self.total:
                raise StreamLimit(f"the server has {self.total} event streams open, its limit; poll "
                                  "GET /v1/jobs/{id} or retry shortly")
            mine = self._by_user.get(user_id, 0)
            if mine >= self.per_user:
                raise StreamLimit(f"you have {mine} event streams open (the limit is {self.per_user}); "
                                  "close one first")
            self._by_user[user_id] = mine + 1
            self._open += 1
        released = False

        def release() -> None:
            nonlocal released
            with self._lock:
                if released:
                    return
                released = True
                self._open -= 1
                left = self._by_user[user_id] - 1
                if left:
                    self._by_user[user_id] = left
                else:
                    del self._by_user[user_id]

        return release

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

    def _read(self, job_id: str, after: int) -> tuple[list[JobEvent], str | None]:
        with self.factory() as session:
            events = list(jobstore.events_after(session, job_id, after, EVENTS_PER_READ))
            job = session.get(TrainingJob, job_id)
            return events, job.state if job is not None else None

    def stream(self, job_id: str, after: int, release: Callable[[], None],
               render: Callable[[JobEvent], str]) -> AsyncIterator[str]:
        """The SSE body for one admitted stream; `release` runs when it ends, however it ends."""
        gen = self._stream(job_id, after, release, render)
        weakref.finalize(gen, release)  # a body that is never iterated (client gone first) still gives back its place
        return gen

    async def _stream(self, job_id: str, after: int, release: Callable[[], None],
                      render: Callable[[JobEvent], str]) -> AsyncIterator[str]:
        watcher = _Watcher(job_id, after)
        try:
            yield "retry: 2000\n\n"
            self._watch(watcher)
            watcher.wake.set()  # read once at once: events before the stream opened
            while True:
                try:
                    await asyncio.wait_for(watcher.wake.wait(), timeout=KEEPALIVE_SECONDS)
                except TimeoutError:
                    yield ": keep-alive\n\n"
                    continue
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
                    yield f"id: {event.id}\nevent: {event.kind}\ndata: {render(event)}\n\n"
                if len(events) == EVENTS_PER_READ:
                    watcher.wake.set()  # more to read
                elif state is None or state in JOB_FINAL:
                    yield f"event: end\ndata: {json.dumps({'state': state})}\n\n"
                    return
        finally:
            self._watchers.discard(watcher)
            release()
