from __future__ import annotations

from fastapi import APIRouter, status

from api.http.deps import CurrentUser, KeyId, PagingDep, SessionDep, SettingsDep
from api.http.problems import problem_responses
from api.schemas import ApiKeyCreatedPublic, ApiKeyPage
from api.services import own_keys

router = APIRouter(prefix="/v1/keys", tags=["keys"], responses=problem_responses(401, 403, 404, 409))


@router.get("", response_model=ApiKeyPage)
def list_keys(user: CurrentUser, session: SessionDep, paging: PagingDep) -> ApiKeyPage:
    """The caller's own API keys (never their secrets), oldest first, a page at a time (follow `next`)."""
    return paging.page(ApiKeyPage, own_keys.list_own_keys(session=session, owner=user, limit=paging.fetch,
                                                          offset=paging.offset))


@router.post("", status_code=status.HTTP_201_CREATED, response_model=ApiKeyCreatedPublic)
def create_key(user: CurrentUser, session: SessionDep, settings: SettingsDep) -> ApiKeyCreatedPublic:
    """A new key for the caller; its secret is in this response only. 409 `too_many_keys` past
    STYLEDROP_MAX_ACTIVE_KEYS_PER_USER (20 by default) active keys."""
    return own_keys.create_own_key(session=session, settings=settings, owner=user)


@router.delete("/{key_id}", status_code=status.HTTP_204_NO_CONTENT)
def revoke_key(key_id: KeyId, user: CurrentUser, session: SessionDep) -> None:
    """Revoke one of the caller's keys (404 for another user's); sessions signed in with it end too."""
    own_keys.revoke_own_key(session=session, owner=user, key_id=key_id)
