"""A user's own API keys (the /keys page and /v1/keys): list, create (the secret shown once), revoke.

Through storage.accounts like the admin routes, but scoped to the caller: another user's key id is a 404.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from api.http.errors import Conflict, NotFound
from api.schemas import ApiKeyCreatedPublic, ApiKeyPublic
from api.services import limits
from api.services.accounts import key_public
from api.services.uploads import lock_owner
from storage import accounts
from storage.error_codes import ErrorCode
from storage.models import ApiKey, User
from storage.settings import Settings


def list_own_keys(*, session: Session, owner: User, limit: int | None = None, offset: int = 0) -> list[ApiKeyPublic]:
    return [key_public(k) for k in accounts.list_keys(session, user_id=owner.id, limit=limit, offset=offset)]


def create_own_key(*, session: Session, settings: Settings, owner: User) -> ApiKeyCreatedPublic:
    """A new key, unless the caller already has `max_active_keys_per_user` (409 `too_many_keys`: revoke one)."""
    lock_owner(session, owner)  # two concurrent creations cannot both pass the count
    active = accounts.active_keys(session, owner.id)
    if active >= settings.max_active_keys_per_user:
        session.rollback()
        raise Conflict(f"you have {active} active API keys; the limit is "
                       f"{limits.limit(settings, 'max_active_keys_per_user')}: revoke one you no longer use first",
                       code=ErrorCode.TOO_MANY_KEYS)
    key, plaintext = accounts.add_key(session, user_id=owner.id)
    return ApiKeyCreatedPublic(id=key.id, user_id=key.user_id, key=plaintext, created_at=key.created_at)


def revoke_own_key(*, session: Session, owner: User, key_id: str) -> None:
    """Revoke one of the caller's keys (idempotent); the browser sessions opened with it end too."""
    key = session.get(ApiKey, key_id)
    if key is None or key.user_id != owner.id:
        raise NotFound("API key not found")
    accounts.revoke_key(session, key_id=key_id)
