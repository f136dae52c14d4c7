"""Account administration shared by the admin API and `styledrop users ...`: one plain function per operation, so
the CLI and the HTTP routes run the same code (and the same validation). Functions commit; errors are
`AccountError` subclasses that the API maps to 404/409/422 and the CLI prints."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from storage.cancels import cancel_user_work
from storage.models import ApiKey, User
from storage.sessions import close_user_sessions
from storage.users import BadUserName, create_api_key, create_user, revoke_api_key, validate_user_name

logger = logging.getLogger(__name__)


class AccountError(Exception):
    """An account operation refused; the message says why."""


class UserNotFound(AccountError):
    pass


class KeyNotFound(AccountError):
    pass


class UserExists(AccountError):
    pass


class KeyRevoked(AccountError):
    pass


def add_user(session: Session, *, name: str, is_admin: bool) -> tuple[User, ApiKey, str]:
    """A new user and its first key (the plaintext is returned once). Raises BadUserName or UserExists."""
    validate_user_name(name)
    if session.scalar(select(User.id).where(User.name == name)) is not None:
        raise UserExists(f"a user named {name!r} exists")
    try:
        user = create_user(session, name, is_admin=is_admin)
        key, plaintext = create_api_key(session, user.id)
        session.commit()
    except IntegrityError as exc:  # a concurrent create of the same name
        session.rollback()
        raise UserExists(f"a user named {name!r} exists") from exc
    return user, key, plaintext


def find_user(session: Session, user: str) -> User:
    """A user by id or name."""
    row = session.scalar(select(User).where(or_(User.id == user, User.name == user)).limit(1))
    if row is None:
        raise UserNotFound(f"no user {user!r}")
    return row


def list_users(session: Session, *, limit: int | None = None, offset: int = 0) -> Sequence[User]:
    """Users, oldest first; a page with `limit`."""
    return session.scalars(select(User).order_by(User.created_at, User.name, User.id).limit(limit).offset(offset)).all()


def list_keys(session: Session, *, user_id: str | None = None, limit: int | None = None,
              offset: int = 0) -> Sequence[ApiKey]:
    """Keys (never their secrets), oldest first; of one user when `user_id` is given; a page with `limit`."""
    query = select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)
    if user_id is not None:
        query = query.where(ApiKey.user_id == user_id)
    return session.scalars(query.limit(limit).offset(offset)).all()


def active_keys(session: Session, user_id: str) -> int:
    """The user's keys that are not revoked."""
    return int(session.scalar(select(func.count()).select_from(ApiKey).where(
        ApiKey.user_id == user_id, ApiKey.revoked_at.is_(None))) or 0)


def add_key(session: Session, *, user_id: str) -> tuple[ApiKey, str]:
    if session.get(User, user_id) is None:
        raise UserNotFound(f"no user {user_id!r}")
    key, plaintext = create_api_key(session, user_id)
    session.commit()
    logger.info("new API key %s for user %s", key.id, user_id)
    return key, plaintext


def revoke_key(session: Session, *, key_id: str) -> ApiKey:
    """Revoke a key (idempotent); the browser sessions opened with it end too."""
    key = session.get(ApiKey, key_id)
    if key is None:
        raise KeyNotFound(f"no API key {key_id!r}")
    revoke_api_key(session, key_id)
    session.commit()
    logger.info("revoked API key %s", key_id)
    return key


def rotate_key(session: Session, *, key_id: str) -> tuple[ApiKey, str]:
    """Replace a live key: a new key for the same user, and the old one revoked, in one transaction."""
    old = session.get(ApiKey, key_id)
    if old is None:
        raise KeyNotFound(f"no API key {key_id!r}")
    if old.revoked_at is not None:
        raise KeyRevoked(f"API key {key_id!r} is already revoked; create a new one instead")
    key, plaintext = create_api_key(session, old.user_id)
    revoke_api_key(session, key_id)
    session.commit()
    logger.info("rotated API key %s -> %s", key_id, key.id)
    return key, plaintext


def set_disabled(session: Session, *, user_id: str, disabled: bool) -> User:
    """Disable (its keys stop working, its sessions end and its queued work is cancelled: nothing of a disabled
    user runs any more) or enable a user again."""
    user = session.get(User, user_id)
    if user is None:
        raise UserNotFound(f"no user {user_id!r}")
    user.disabled = disabled
    if disabled:
        close_user_sessions(session, user_id)
        cancel_user_work(session, user_id, running=False, why="Cancelled: the user was disabled.")
    session.commit()
    logger.info("user %s %s", user_id, "disabled" if disabled else "enabled")
    return user


__all__ = [
    "AccountError", "BadUserName", "KeyNotFound", "KeyRevoked", "UserExists", "UserNotFound", "add_key", "add_user",
    "find_user", "list_keys", "list_users", "revoke_key", "rotate_key", "set_disabled",
]
