"""Users and API keys, for admins (the same storage functions `styledrop users` calls).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from sqlalchemy.orm import Session

from api.http.errors import Conflict, Invalid, NotFound
from api.schemas import (
    ApiKeyCreatedPublic,
    ApiKeyPublic,
    UserCreatedPublic,
    UserPublic,
)
from storage import accounts
from storage.cancels import CancelledWork, cancel_user_work
from storage.error_codes import ErrorCode
from storage.models import (
    ApiKey,
    User,
)

logger = logging.getLogger(__name__)


def list_users(*, session: Session, limit: int | None = None, offset: int = 0) -> Sequence[User]:
    return accounts.list_users(session, limit=limit, offset=offset)


@contextmanager
def _account_errors() -> Iterator[None]:
    """storage.accounts errors as HTTP errors (the CLI prints the same messages)."""
    try:
        yield
    except (accounts.UserNotFound, accounts.KeyNotFound) as exc:
        raise NotFound(str(exc)) from exc
    except accounts.UserExists as exc:
        raise Conflict(str(exc), code=ErrorCode.USER_EXISTS) from exc
    except accounts.KeyRevoked as exc:
        raise Conflict(str(exc), code=ErrorCode.KEY_REVOKED) from exc
    except accounts.BadUserName as exc:
        raise Invalid(str(exc), code=ErrorCode.BAD_USER_NAME) from exc


def _key_public(key: ApiKey, plaintext: str) -> ApiKeyCreatedPublic:
    return ApiKeyCreatedPublic(id=key.id, user_id=key.user_id, key=plaintext, created_at=key.created_at)


def key_public(key: ApiKey) -> ApiKeyPublic:
    return ApiKeyPublic.model_validate(key)


def user_public(user: User) -> UserPublic:
    return UserPublic.model_validate(user)


def add_user(*, session: Session, name: str, is_admin: bool) -> UserCreatedPublic:
    with _account_errors():
        user, key, plaintext = accounts.add_user(session, name=name, is_admin=is_admin)
    return UserCreatedPublic(user=user_public(user), key=_key_public(key, plaintext))


def list_keys(*, session: Session, user: str | None, limit: int | None = None, offset: int = 0) -> list[ApiKeyPublic]:
    with _account_errors():
        user_id = accounts.find_user(session, user).id if user is not None else None
        return [key_public(k) for k in accounts.list_keys(session, user_id=user_id, limit=limit, offset=offset)]


def add_key(*, session: Session, user_id: str) -> ApiKeyCreatedPublic:
    with _account_errors():
        key, plaintext = accounts.add_key(session, user_id=user_id)
    return _key_public(key, plaintext)


def revoke_key(*, session: Session, key_id: str) -> None:
    with _account_errors():
        accounts.revoke_key(session, key_id=key_id)


def rotate_key(*, session: Session, key_id: str) -> ApiKeyCreatedPublic:
    with _account_errors():
        key, plaintext = accounts.rotate_key(session, key_id=key_id)
    return _key_public(key, plaintext)


def cancel_all_work(*, session: Session, user_id: str) -> CancelledWork:
    """An admin's "cancel all of this user": queued and running generations and training jobs."""
    if session.get(User, user_id) is None:
        raise NotFound(f"no user {user_id!r}")
    done = cancel_user_work(session, user_id, running=True, why="Cancelled by an admin.")
    session.commit()
    return done


def set_disabled(*, session: Session, user_id: str, disabled: bool) -> UserPublic:
    with _account_errors():
        return user_public(accounts.set_disabled(session, user_id=user_id, disabled=disabled))
