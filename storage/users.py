"""Users and API keys. Keys look like `sd_<prefix8><secret32>`; only their sha256 is stored."""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from storage.models import ApiKey, User, WebSession, utcnow

logger = logging.getLogger(__name__)

KEY_PREFIX = "sd_"
_PREFIX_LEN = 8
_SECRET_LEN = 32
KEY_LEN = len(KEY_PREFIX) + _PREFIX_LEN + _SECRET_LEN


LAST_USED_RESOLUTION = timedelta(minutes=1)


USER_NAME_MAX = 64
_USER_NAME = re.compile(r"[A-Za-z0-9_.@-]+")


class BadUserName(ValueError):
    """A user name the service refuses; the message names the value and the rule."""


def validate_user_name(name: str) -> str:
    """The one rule for user names, used by the admin API's schema, `styledrop users create` and create_user:
    1..64 of ASCII letters, digits and `_ . @ -` (no spaces, no look-alike or invisible characters)."""
    if not 1 <= len(name) <= USER_NAME_MAX or not _USER_NAME.fullmatch(name):
        raise BadUserName(
            f"user name {name!r} is not allowed: use 1..{USER_NAME_MAX} ASCII letters, digits and _ . @ -"
        )
    return name


def hash_key(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode()).hexdigest()


def create_user(session: Session, name: str, *, is_admin: bool = False) -> User:
    user = User(name=validate_user_name(name), is_admin=is_admin, disabled=False)
    session.add(user)
    session.flush()
    logger.info("created user %s (%s) admin=%s", user.id, name, is_admin)
    return user


def create_api_key(session: Session, user_id: str) -> tuple[ApiKey, str]:
    """A new key for `user_id`: the row, and the plaintext shown to the user exactly once."""
    prefix = secrets.token_hex(_PREFIX_LEN // 2)
    plaintext = f"{KEY_PREFIX}{prefix}{secrets.token_hex(_SECRET_LEN // 2)}"
    row = ApiKey(user_id=user_id, prefix=prefix, key_hash=hash_key(plaintext))
    session.add(row)
    session.flush()
    return row, plaintext


def revoke_api_key(session: Session, key_id: str) -> None:
    """Revoke the key and end every browser session that was opened by signing in with it."""
    row = session.get(ApiKey, key_id)
    if row is not None and row.revoked_at is None:
        now = utcnow()
        row.revoked_at = now
        session.execute(
            update(WebSession).where(WebSession.api_key_id == key_id, WebSession.revoked_at.is_(None))
            .values(revoked_at=now)
        )
        session.flush()


def authenticate_key(session: Session, plaintext: str) -> User | None:
    """The enabled user owning an unrevoked key, or None. Refreshes `last_used_at` (caller commits)."""
    found = find_key(session, plaintext)
    return found[1] if found is not None else None


def find_key(session: Session, plaintext: str) -> tuple[ApiKey, User] | None:
    """The unrevoked key `plaintext` and its enabled user, or None; the hash comparison is constant-time.
    Refreshes `last_used_at` (caller commits).

    One query fetches key and user together, and `last_used_at` is written at most once a minute per key: a write
    per request would cost a commit on every API call and serialise concurrent requests on the key's row.
    """
    if len(plaintext) != KEY_LEN or not plaintext.startswith(KEY_PREFIX):
        return None
    prefix = plaintext[len(KEY_PREFIX) : len(KEY_PREFIX) + _PREFIX_LEN]
    digest = hash_key(plaintext)
    candidates = session.execute(
        select(ApiKey, User).join(User, User.id == ApiKey.user_id)
        .where(ApiKey.prefix == prefix, ApiKey.revoked_at.is_(None))
    ).all()
    for key, user in candidates:
        if hmac.compare_digest(key.key_hash, digest):
            if user.disabled:
                return None
            now = utcnow()
            if key.last_used_at is None or now - key.last_used_at >= LAST_USED_RESOLUTION:
                key.last_used_at = now
                session.flush()
            return key, user
    return None
