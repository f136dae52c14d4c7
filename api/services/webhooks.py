"""Webhooks as the API sees them: checking a `webhook` URL and its event filter when a job or generation is
created, and the user's signing secret."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.orm import Session

from api.http.errors import Invalid
from storage import webhooks
from storage.error_codes import ErrorCode
from storage.models import User
from storage.settings import Settings


def checked_webhook(
    url: str | None, events: Sequence[str] | None, *, settings: Settings
) -> tuple[str | None, list[str] | None]:
    """(url, stored filter) for a new job or generation; 422 `webhook_refused` for a URL that must not be called
    (not http(s), unresolvable, or a loopback/private/link-local address unless webhook_allow_private)."""
    if url is None or not url.strip():
        if events:
            raise Invalid("webhook_events_filter needs a webhook URL", code=ErrorCode.WEBHOOK_EVENTS_WITHOUT_URL)
        return None, None
    url = url.strip()
    if len(url) > 2048:
        raise Invalid("the webhook URL must be at most 2048 characters", code=ErrorCode.WEBHOOK_REFUSED)
    try:
        webhooks.check_url(url, allow_private=settings.webhook_allow_private)
        return url, webhooks.events_filter(list(events) if events else None)
    except webhooks.WebhookRefused as exc:
        raise Invalid(exc.reason, code=ErrorCode.WEBHOOK_REFUSED) from exc
    except ValueError as exc:
        raise Invalid(str(exc), code=ErrorCode.BAD_WEBHOOK_EVENTS) from exc


def signing_secret(*, session: Session, owner: User, rotate: bool = False) -> str:
    secret = (webhooks.rotate_secret if rotate else webhooks.user_secret)(session, owner.id)
    session.commit()
    return secret
