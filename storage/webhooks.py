"""Webhooks: which URLs may receive them, the per-user signing secret, Standard Webhooks signatures, and the
outbox that records each event in the same transaction as the change it reports.

Delivery is worker/ops/webhooks.py (a loop beside the reconciler): the outbox makes it at-least-once, because an event
row exists exactly when its state change was committed. A webhook body is the resource as `GET` returns it at the
moment of the event (storage/resources.py), so every retry of one event sends the same bytes with the same id.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import logging
import secrets
import socket
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import TypeVar
from urllib.parse import urlsplit

from pydantic import BaseModel
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from storage import resources, urls
from storage.models import WEBHOOK_EVENTS, Generation, TrainingJob, User, WebhookDelivery, utcnow
from storage.states import GENERATION_FINAL, JOB_FINAL, JobState

logger = logging.getLogger(__name__)

SECRET_PREFIX = "whsec_"
PROGRESS_MIN_SECONDS = 5.0  # progress webhooks of one resource at most this often

Row = TypeVar("Row", TrainingJob, Generation)
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Sequence[IPAddress]]


class WebhookRefused(ValueError):
    """A webhook URL that must not be called; `reason` says why in words a user can act on."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address `host` resolves to (IPv4 and IPv6)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError, ValueError) as exc:  # gaierror, IDNA errors, NUL characters
        raise WebhookRefused(f"the webhook host {host!r} does not resolve") from exc
    return list(dict.fromkeys(ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos))


NAT64_WELL_KNOWN = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052: the IPv4 address is the last 32 bits
NAT64_LOCAL_USE = ipaddress.IPv6Network("64:ff9b:1::/48")  # RFC 8215: a local translator, any RFC 6052 length
IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")  # RFC 4291 §2.5.5.1 (deprecated): ::a.b.c.d


def embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries and that a connection to it may end up at: IPv4-mapped,
    IPv4-compatible, NAT64 (well-known prefix), 6to4 and Teredo (server and client). Empty for a plain IPv6."""
    low32 = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.ipv4_mapped is not None:
        return [address.ipv4_mapped]
    if address in IPV4_COMPATIBLE or address in NAT64_WELL_KNOWN:
        return [low32]
    if address.sixtofour is not None:
        return [address.sixtofour]
    if address.teredo is not None:
        return list(address.teredo)
    return []


def _public(address: IPAddress) -> bool:
    """Whether a webhook may be sent to `address`: a global unicast address, judged for an IPv6 that embeds IPv4
    by the IPv4 it carries (64:ff9b::7f00:1 is 127.0.0.1 through a translator)."""
    if isinstance(address, ipaddress.IPv6Address):
        if address in NAT64_LOCAL_USE:
            return False  # where its IPv4 sits depends on the local prefix length; a local translator anyway
        inner = embedded_ipv4(address)
        if inner:
            return all(_public(v4) for v4 in inner)
    return address.is_global and not address.is_multicast


def check_url(url: str, *, allow_private: bool, resolver: Resolver | None = None) -> list[IPAddress]:
    """The addresses `url` may be called at. Refuses non-http(s) URLs, and (unless `allow_private`) hosts that
    resolve to any loopback, private, link-local or otherwise non-public address. Called when a webhook is set
    and again before every delivery attempt, so a name that later resolves elsewhere (DNS rebinding) is caught."""
    try:
        parts = urlsplit(url)
        port = parts.port if parts.port is not None else (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise WebhookRefused(f"the webhook is not a valid URL: {exc}") from exc
    if port == 0:
        raise WebhookRefused("the webhook URL names port 0, which no server listens on")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WebhookRefused("the webhook must be an http:// or https:// URL with a host")
    addresses = list((resolver or resolve)(parts.hostname, port))
    if not addresses:
        raise WebhookRefused(f"the webhook host {parts.hostname!r} does not resolve")
    if not allow_private:
        for address in addresses:
            if not _public(address):
                raise WebhookRefused(
                    f"the webhook host {parts.hostname!r} resolves to {address}, a loopback, private or link-local "
                    "address; webhooks must reach a public address (STYLEDROP_WEBHOOK_ALLOW_PRIVATE=true allows "
                    "them for local development)"
                )
    return addresses


def events_filter(events: Sequence[str] | None) -> list[str] | None:
    """The stored filter: None means every event; unknown names raise ValueError."""
    if events is None:
        return None
    unknown = [e for e in events if e not in WEBHOOK_EVENTS]
    if unknown:
        raise ValueError(f"unknown webhook events {unknown}; choose from {list(WEBHOOK_EVENTS)}")
    return [e for e in WEBHOOK_EVENTS if e in events]


# --- the signing secret and the signature ----------------------------------------------------------------------


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()


def user_secret(session: Session, user_id: str) -> str:
    """The user's signing secret, made on first use (race-safe: the first writer wins). The caller commits."""
    secret = session.scalar(select(User.webhook_secret).where(User.id == user_id))
    if secret is not None:  # the usual case: a read, no write lock
        return secret
    session.execute(update(User).where(User.id == user_id, User.webhook_secret.is_(None))
                    .values(webhook_secret=new_secret()).execution_options(synchronize_session=False))
    secret = session.scalar(select(User.webhook_secret).where(User.id == user_id))
    assert secret is not None
    return secret


def rotate_secret(session: Session, user_id: str) -> str:
    """A new secret; events not yet delivered are signed with it. The caller commits."""
    secret = new_secret()
    session.execute(update(User).where(User.id == user_id).values(webhook_secret=secret)
                    .execution_options(synchronize_session=False))
    return secret


def sign(secret: str, msg_id: str, timestamp: int, body: str) -> str:
    """The `webhook-signature` header value: `v1,` + base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}")), the key
    being the base64 part of `whsec_...` (Standard Webhooks)."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    mac = hmac.new(key, f"{msg_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


# --- the outbox ---------------------------------------------------------------------------------------------------


def _wanted(row: TrainingJob | Generation, event: str) -> bool:
    return row.webhook is not None and event in (row.webhook_events or WEBHOOK_EVENTS)


def _throttled(session: Session, resource_id: str) -> bool:
    since = utcnow() - timedelta(seconds=PROGRESS_MIN_SECONDS)
    recent = session.scalar(select(WebhookDelivery.id).where(
        WebhookDelivery.resource_id == resource_id, WebhookDelivery.event == "progress",
        WebhookDelivery.created_at > since).limit(1))
    return recent is not None


def _record(session: Session, kind: str, row: TrainingJob | Generation, event: str,
            view: BaseModel) -> WebhookDelivery:
    assert row.webhook is not None
    with urls.base_url(""):  # stored with root-relative URLs; the sender puts its base before them
        body = view.model_dump_json()
    delivery = WebhookDelivery(owner_id=row.owner_id, resource=kind, resource_id=row.id, event=event,
                               url=row.webhook, body=body)
    session.add(delivery)
    session.flush()
    logger.info("%s %s: webhook %s queued as %s", kind, row.id, event, delivery.id)
    return delivery


def _view(session: Session, row: TrainingJob | Generation) -> tuple[str, BaseModel]:
    """(the resource's name, the row as `GET` shows it)."""
    if isinstance(row, TrainingJob):
        return "job", resources.job_views(session, [row])[0]
    return "generation", resources.generation_views(session, [row])[0]


def queue_event(session: Session, model: type[Row], row_id: str, event: str) -> WebhookDelivery | None:
    """Queue `event` for the job or generation `row_id` when it has a webhook that wants it (progress: throttled)."""
    row = session.get(model, row_id)
    if row is None or not _wanted(row, event) or (event == "progress" and _throttled(session, row_id)):
        return None
    kind, view = _view(session, row)
    return _record(session, kind, row, event, view)


def state_changed(session: Session, model: type[Row], row_id: str, new: str) -> None:
    """The webhook event a state change is, if any: `start` when a worker took the row, `completed` when final."""
    if new == JobState.RUNNING:  # the same word in both machines
        queue_event(session, model, row_id, "start")
    elif new in (JOB_FINAL if model is TrainingJob else GENERATION_FINAL):
        queue_event(session, model, row_id, "completed")
