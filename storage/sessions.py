"""Server-side browser sessions. The cookie carries only a random token; the `sessions` row is keyed by its sha256.

A session is valid while its row is unrevoked and unexpired, the API key it was opened with is unrevoked and its
user is enabled: sign-out, key revocation, disabling the user and expiry each end it at the next request.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from datetime import timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from storage.models import ApiKey, User, WebSession, utcnow

logger = logging.getLogger(__name__)

TOKEN_BYTES = 32
MAX_TOKEN_LEN = 128  # a cookie longer than any token we issue is not looked up at all


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def open_session(session: Session, *, user_id: str, api_key_id: str | None, max_age: timedelta) -> str:
    """A new session row; returns the cookie token (shown to the browser only). The caller commits. The user's
    expired rows go at the same time, so the table stays about as big as the sessions that can still be used."""
    session.execute(delete(WebSession).where(WebSession.user_id == user_id, WebSession.expires_at < utcnow()))
    token = secrets.token_urlsafe(TOKEN_BYTES)
    session.add(WebSession(id=_token_hash(token), user_id=user_id, api_key_id=api_key_id,
                           expires_at=utcnow() + max_age))
    session.flush()
    return token


def session_user(session: Session, token: str) -> User | None:
    """The user of a live session token, or None (unknown, signed out, expired, key revoked, user disabled)."""
    if not token or len(token) > MAX_TOKEN_LEN:
        return None
    row = session.execute(
        select(WebSession, User).join(User, User.id == WebSession.user_id)
        .where(WebSession.id == _token_hash(token))
    ).first()
    if row is None:
        return None
    web, user = row
    if web.revoked_at is not None or web.expires_at <= utcnow() or user.disabled:
        return None
    if web.api_key_id is not None:
        key = session.get(ApiKey, web.api_key_id)
        if key is None or key.revoked_at is not None:
            return None
    return user


def close_session(session: Session, token: str) -> bool:
    """Sign-out: revoke the session of `token`; True when a live one was ended. The caller commits."""
    if not token or len(token) > MAX_TOKEN_LEN:
        return False
    result = session.execute(
        update(WebSession).where(WebSession.id == _token_hash(token), WebSession.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    return bool(getattr(result, "rowcount", 0))


def close_user_sessions(session: Session, user_id: str) -> int:
    """End every live session of a user (used when the user is disabled). The caller commits."""
    result = session.execute(
        update(WebSession).where(WebSession.user_id == user_id, WebSession.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    count = int(getattr(result, "rowcount", 0) or 0)
    logger.info("ended %d session(s) of user %s", count, user_id)
    return count
