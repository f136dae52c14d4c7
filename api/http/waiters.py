"""`POST /v1/generations?wait=N` waiters, served by one poller per API process (as the event streams are,
api/streams.py): a waiter holds no database connection; one background task asks, every `POLL_SECONDS`, for the
state of every generation someone waits on (one short query for all of them) and wakes the waiters whose
generation is final. Each user may have `max_waiters_per_user` waiting at once in a process; a request past that is
answered at once (202 with `Location` and `Retry-After`, as a request without `wait`), never refused: its
generation has already been queued.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from storage.models import Generation
from storage.states import GENERATION_FINAL

logger = logging.getLogger(__name__)

POLL_SECONDS = 0.5
DISCONNECT_CHECK_SECONDS = 1.0  # how often a waiter asks whether its client has gone


@dataclass(eq=False)
class _Waiter:
    generation_id: str
    done: asyncio.Event = field(default_factory=asyncio.Event)


class GenerationWaiters:
    """The waiters of one API process (all on its event loop) and their shared poller."""

    def __init__(self, factory: sessionmaker[Session], *, per_user: int) -> None:
        self.factory, self.per_user = factory, per_user
        self._by_user: dict[str, int] = {}
        self._waiters: set[_Waiter] = set()
        self._poller: asyncio.Task[None] | None = None
        self.polls = 0  # queries made, for tests and metrics: one per round whatever the number of waiters

    def _final(self, ids: list[str]) -> set[str]:
        """The ids among `ids` whose generation is final or gone, in one short session."""
        with self.factory() as session:
            states = dict(session.execute(select(Generation.id, Generation.state).where(Generation.id.in_(ids))).all())
        return {i for i in ids if states.get(i) is None or states[i] in GENERATION_FINAL}

    async def _poll_forever(self) -> None:
        while self._waiters:
            await asyncio.sleep(POLL_SECONDS)
            waiters = list(self._waiters)
            if not waiters:
                break
            try:
                self.polls += 1
                final = await run_in_threadpool(self._final, sorted({w.generation_id for w in waiters}))
            except Exception as exc:  # the database is down or busy: waiters wait on until their deadline
                logger.warning("generation waiter poller: %s", exc)
                continue
            for w in waiters:
                if w.generation_id in final:
                    w.done.set()
        self._poller = None

    async def wait(self, user_id: str, generation_id: str, seconds: float,
                   disconnected: Callable[[], Awaitable[bool]]) -> bool | None:
        """Wait up to `seconds` for the generation to be final: True when it is, False when time ran out or the
        client went away, None when `user_id` already has `per_user` waiters here (not waited at all)."""
        if self._by_user.get(user_id, 0) >= self.per_user:
            return None
        self._by_user[user_id] = self._by_user.get(user_id, 0) + 1
        waiter = _Waiter(generation_id)
        self._waiters.add(waiter)
        if self._poller is None:
            self._poller = asyncio.get_running_loop().create_task(self._poll_forever())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        try:
            while (left := deadline - loop.time()) > 0:
                try:
                    await asyncio.wait_for(waiter.done.wait(), timeout=min(left, DISCONNECT_CHECK_SECONDS))
                    return True
                except TimeoutError:
                    if await disconnected():
                        return False
            return False
        finally:
            self._waiters.discard(waiter)
            left_for_user = self._by_user[user_id] - 1
            if left_for_user:
                self._by_user[user_id] = left_for_user
            else:
                del self._by_user[user_id]
