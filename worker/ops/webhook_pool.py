"""The webhook delivery loop: every due event is sent on its own, so a slow or hostile receiver delays only its
own events.

A bounded thread pool runs the attempts (`worker.ops.webhooks.deliver_one`); the loop hands it due events as slots
free up instead of waiting for a whole batch, at most `PER_OWNER` of one user's at a time (oldest first within a
user), so one user's receivers can hold at most that many of the `SENDERS` slots. Each attempt ends within its
wall-clock deadline (`webhook_timeout_seconds`, worker/ops/webhook_http.py), so a slot is never held for longer.

It runs as `styledrop webhooks`, a process of its own that `styledrop up` supervises (never inside the supervisor,
whose death would take every child with it), or beside a stand-alone `styledrop reconcile`.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from storage.models import WebhookDelivery, utcnow
from storage.settings import Settings
from storage.states import DeliveryState
from worker.ops import webhooks

logger = logging.getLogger(__name__)

SENDERS = 16  # attempts in flight at once
PER_OWNER = 2  # of which one user's at most


def due_by_owner(factory: sessionmaker[Session], *, limit: int, per_owner: int,
                 busy: dict[str, str]) -> list[tuple[str, str]]:
    """(delivery id, owner id) of up to `limit` due events, oldest first, at most `per_owner` per user counting the
    ones already in flight (`busy`: id → owner), in one query."""
    if limit < 1:
        return []
    rank = func.row_number().over(partition_by=WebhookDelivery.owner_id,
                                  order_by=(WebhookDelivery.next_attempt_at, WebhookDelivery.id)).label("rank")
    due = (select(WebhookDelivery.id, WebhookDelivery.owner_id, WebhookDelivery.next_attempt_at, rank)
           .where(WebhookDelivery.state == DeliveryState.PENDING, WebhookDelivery.next_attempt_at <= utcnow())
           .subquery())
    with factory() as s:
        rows = s.execute(select(due.c.id, due.c.owner_id).where(due.c.rank <= per_owner + len(busy))
                         .order_by(due.c.next_attempt_at, due.c.id)).all()
    held: dict[str, int] = {}
    for owner in busy.values():
        held[owner] = held.get(owner, 0) + 1
    picked: list[tuple[str, str]] = []
    for delivery_id, owner in rows:
        if len(picked) == limit:
            break
        if delivery_id in busy or held.get(owner, 0) >= per_owner:
            continue
        held[owner] = held.get(owner, 0) + 1
        picked.append((delivery_id, owner))
    return picked


class DeliveryPool:
    """Attempts in flight, each on its own thread; `fill` hands the pool what is due and has a free slot."""

    def __init__(self, factory: sessionmaker[Session], settings: Settings, *, senders: int = SENDERS,
                 per_owner: int = PER_OWNER) -> None:
        self.factory, self.settings, self.senders, self.per_owner = factory, settings, senders, per_owner
        self.executor = ThreadPoolExecutor(senders, thread_name_prefix="webhook")
        self.busy: dict[str, str] = {}  # delivery id → owner id
        self.lock = threading.Lock()
        self.freed = threading.Event()  # a slot came free: look again without waiting out the poll

    def fill(self) -> int:
        """Start the due events that fit; how many were started."""
        with self.lock:
            busy = dict(self.busy)
        picked = due_by_owner(self.factory, limit=self.senders - len(busy), per_owner=self.per_owner, busy=busy)
        with self.lock:
            self.busy.update(picked)
        for delivery_id, _owner in picked:
            self.executor.submit(self._attempt, delivery_id)
        return len(picked)

    def _attempt(self, delivery_id: str) -> None:
        try:
            webhooks.deliver_one(self.factory, self.settings, delivery_id)
        except Exception:
            logger.exception("webhook %s: delivery attempt failed", delivery_id)
        finally:
            with self.lock:
                self.busy.pop(delivery_id, None)
            self.freed.set()

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)


def run_forever(factory: sessionmaker[Session], settings: Settings, stop: threading.Event) -> None:
    """Deliver due events until `stop` is set: look again every `webhook_poll_seconds`, or as soon as an attempt
    ends; errors are logged, not raised."""
    pool = DeliveryPool(factory, settings)
    try:
        while not stop.is_set():
            pool.freed.clear()
            try:
                pool.fill()
            except Exception:
                logger.exception("webhook delivery pass failed")
            pool.freed.wait(settings.webhook_poll_seconds)
            stop.wait(0.05)  # a burst of attempts ending at once is one look, not one each
    finally:
        pool.close()


def start_thread(factory: sessionmaker[Session], settings: Settings,
                 stop: threading.Event) -> threading.Thread:
    thread = threading.Thread(target=run_forever, args=(factory, settings, stop), name="webhooks", daemon=True)
    thread.start()
    return thread
