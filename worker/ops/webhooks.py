"""Webhook delivery: one attempt at a due outbox event, and the retry schedule (the loop that runs them, each on its
own, is worker/ops/webhook_pool.py).

Each event is claimed with one conditional UPDATE that counts the attempt and leases the row until the attempt
can no longer be in flight, so several loops never send one attempt twice at once, and an attempt cut short by a
crash is sent again when the lease runs out: at least once. A 2xx answer delivers the event; anything else (an
error status, a timeout, a refused address) schedules the next attempt `retry_base * 4**(attempt-1)` later (up to
6 h), until `webhook_max_attempts`. The address is checked again before every attempt and the connection goes to
the address that was checked (the Host header and TLS name stay the URL's), so a name re-pointed at a private
address after the webhook was accepted (DNS rebinding) is refused. Redirects are not followed. Every attempt on a
job is recorded as a `webhook` event of that job. Training and generation never wait for any of this.
"""

from __future__ import annotations

import http.client
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import urlsplit

from sqlalchemy import CursorResult, select, update
from sqlalchemy.orm import Session, sessionmaker

from storage import jobs, urls, webhooks
from storage.models import WebhookDelivery, utcnow
from storage.settings import Settings
from storage.states import DeliveryState
from worker.ops import webhook_http

logger = logging.getLogger(__name__)

MAX_RETRY_DELAY_SECONDS = 6 * 3600.0
CLAIM_BATCH = 16
USER_AGENT = "Styledrop-Webhooks/1"


@dataclass(frozen=True)
class Attempt:
    status: int | None  # HTTP status, None when no answer came
    error: str | None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def retry_delay(settings: Settings, attempt: int) -> float:
    return float(min(settings.webhook_retry_base_seconds * 4 ** max(attempt - 1, 0), MAX_RETRY_DELAY_SECONDS))


def post_signed(url: str, body: str, *, msg_id: str, secret: str, event: str, resource: str,
                settings: Settings) -> Attempt:
    """One attempt: check the address again, then POST `body` to the checked address with the signature."""
    try:
        address = webhooks.check_url(url, allow_private=settings.webhook_allow_private)[0]
    except webhooks.WebhookRefused as exc:
        return Attempt(None, f"refused: {exc.reason}")
    parts = urlsplit(url)
    timestamp = int(time.time())
    headers = {
        "Host": parts.netloc.rpartition("@")[2], "Content-Type": "application/json", "User-Agent": USER_AGENT,
        "webhook-id": msg_id, "webhook-timestamp": str(timestamp),
        "webhook-signature": webhooks.sign(secret, msg_id, timestamp, body),
        "Styledrop-Event": event, "Styledrop-Resource": resource,
    }
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:  # to the checked address; a wall-clock deadline and a bounded read (worker/ops/webhook_http.py)
        answer = webhook_http.post(str(address), port, path, body.encode(), headers,
                                   tls_host=parts.hostname if parts.scheme == "https" else None,
                                   deadline_seconds=settings.webhook_timeout_seconds)
    except (OSError, http.client.HTTPException) as exc:  # DeadlineExceeded is a TimeoutError, ssl errors OSErrors
        return Attempt(None, f"{type(exc).__name__}: {exc}"[:300])
    return Attempt(answer.status, None if 200 <= answer.status < 300 else f"the receiver answered {answer.status}")


def _claim(session: Session, delivery_id: str, settings: Settings) -> bool:
    now = utcnow()
    lease = timedelta(seconds=settings.webhook_timeout_seconds * 3 + 30)
    result = session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id == delivery_id, WebhookDelivery.state == DeliveryState.PENDING,
               WebhookDelivery.next_attempt_at <= now)
        .values(attempts=WebhookDelivery.attempts + 1, next_attempt_at=now + lease)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    assert isinstance(result, CursorResult)
    return result.rowcount == 1


def deliver_one(factory: sessionmaker[Session], settings: Settings, delivery_id: str) -> str | None:
    """Claim and attempt one due event; its outcome ("delivered", "retrying", "failed"), None when not claimed."""
    with factory() as s:
        if not _claim(s, delivery_id, settings):
            return None
        d = s.get(WebhookDelivery, delivery_id)
        assert d is not None
        secret = webhooks.user_secret(s, d.owner_id)
        s.commit()
        url, event, resource, attempt = d.url, d.event, d.resource, d.attempts
        body = urls.absolute_body(d.body, settings.public_base_url)  # the same bytes on every attempt
    result = post_signed(url, body, msg_id=delivery_id, secret=secret, event=event, resource=resource,
                         settings=settings)
    now = utcnow()
    next_at = None
    outcome: str
    if result.ok:
        outcome, values = DeliveryState.DELIVERED, {"state": DeliveryState.DELIVERED, "delivered_at": now}
    elif attempt >= settings.webhook_max_attempts:
        outcome, values = DeliveryState.FAILED, {"state": DeliveryState.FAILED}
    else:
        next_at = now + timedelta(seconds=retry_delay(settings, attempt))
        outcome, values = "retrying", {"next_attempt_at": next_at}
    with factory() as s:
        s.execute(update(WebhookDelivery).where(WebhookDelivery.id == delivery_id)
                  .values(last_status=result.status, last_error=result.error, **values)
                  .execution_options(synchronize_session=False))
        if resource == "job":
            d = s.get(WebhookDelivery, delivery_id)
            assert d is not None
            payload = {"webhook_id": delivery_id, "event": event, "attempt": attempt, "outcome": outcome,
                       "status_code": result.status, "error": result.error}
            if next_at is not None:
                payload["next_attempt_at"] = next_at.isoformat()
            jobs.add_event(s, d.resource_id, "webhook", payload)
        s.commit()
    log = logger.info if result.ok else logger.warning
    log("webhook %s (%s %s) attempt %d: %s %s", delivery_id, resource, event, attempt, outcome,
        result.error or result.status)
    return outcome


def due_ids(factory: sessionmaker[Session], limit: int = CLAIM_BATCH) -> list[str]:
    with factory() as s:
        return list(s.scalars(
            select(WebhookDelivery.id)
            .where(WebhookDelivery.state == DeliveryState.PENDING, WebhookDelivery.next_attempt_at <= utcnow())
            .order_by(WebhookDelivery.next_attempt_at).limit(limit)
        ))


def deliver_due(factory: sessionmaker[Session], settings: Settings,
                pool: ThreadPoolExecutor | None = None) -> dict[str, str]:
    """Attempt every event due now (one batch); {id: outcome} of the attempts this call made."""
    ids = due_ids(factory)
    if pool is None:
        outcomes = [deliver_one(factory, settings, i) for i in ids]
    else:
        outcomes = list(pool.map(lambda i: deliver_one(factory, settings, i), ids))
    return {i: o for i, o in zip(ids, outcomes, strict=True) if o is not None}
