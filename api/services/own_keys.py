"""A user's own API keys (the /keys page and /v1/keys): list, create (the secret shown once), revoke.

Through storage.accounts like the admin routes, but scoped to the caller: another user's key id is a 404.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from api.http.errors import NotFound
from api.schemas import ApiKeyCreatedPublic, ApiKeyPublic
from api.services.accounts import key_public
from storage import accounts
from storage.models import ApiKey, User


def list_own_keys(*, session: Session, owner: User) -> list[ApiKeyPublic]:
    return [key_public(k) for k in accounts.list_keys(session, user_id=owner.id)]


def create_own_key(*, session: Session, owner: User) -> ApiKeyCreatedPublic:
    key, plaintext = accounts.add_key(session, user_id=owner.id)
    return ApiKeyCreatedPublic(id=key.id, user_id=key.user_id, key=plaintext, created_at=key.created_at)


def revoke_own_key(*, session: Session, owner: User, key_id: str) -> None:
    """Revoke one of the caller's keys (idempotent); the browser sessions opened with it end too."""
    key = session.get(ApiKey, key_id)
    if key is None or key.user_id != owner.id:
        raise NotFound("API key not found")
    accounts.revoke_key(session, key_id=key_id)
