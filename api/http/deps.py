"""Request dependencies as `Annotated` aliases: settings, the DB session, the blob store and the caller."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from typing import Annotated

from fastapi import Depends, Header, Path, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session, sessionmaker

from api.http.errors import Forbidden, RateLimited, Unauthorized
from api.http.pagination import Paging
from api.http.polling import Wait, prefer_wait
from api.http.ratelimit import Limiter
from api.http.security import CSRF_HEADER, SAFE_METHODS, SESSION_COOKIE, check_csrf
from api.schemas import ADAPTER_ID, GENERATION_EXAMPLE, JOB_EXAMPLE, KEY_EXAMPLE, MAX_OFFSET, STYLE_ID, USER_ID
from api.services import limits
from storage.blobs import BlobStore
from storage.error_codes import ErrorCode
from storage.models import User
from storage.sessions import session_user
from storage.settings import Settings
from storage.users import authenticate_key

logger = logging.getLogger(__name__)

_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer sd_...`")


def get_settings_dep(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_sessionmaker(request: Request) -> sessionmaker[Session]:
    factory: sessionmaker[Session] = request.app.state.sessionmaker
    return factory


def get_session(request: Request) -> Iterator[Session]:
    with request.app.state.sessionmaker() as session:
        yield session


def get_blobs(request: Request) -> BlobStore:
    blobs: BlobStore = request.app.state.blobs
    return blobs


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
SessionDep = Annotated[Session, Depends(get_session)]
SessionFactoryDep = Annotated[sessionmaker[Session], Depends(get_sessionmaker)]
BlobsDep = Annotated[BlobStore, Depends(get_blobs)]
BearerDep = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
# Path parameters, each with an example for the OpenAPI document.
StyleId = Annotated[str, Path(description="A style's (or subject's) id.", examples=[STYLE_ID])]
AdapterId = Annotated[str, Path(description="An adapter's id.", examples=[ADAPTER_ID])]
GenerationId = Annotated[str, Path(description="A generation's id.", examples=[GENERATION_EXAMPLE["id"]])]
JobId = Annotated[str, Path(description="A training job's id.", examples=[JOB_EXAMPLE["id"]])]
KeyId = Annotated[str, Path(description="An API key's id (not the key).", examples=[KEY_EXAMPLE["id"]])]
UserId = Annotated[str, Path(description="A user's id.", examples=[USER_ID])]
ImageIndex = Annotated[int, Path(ge=0, le=MAX_OFFSET, description="0-based image number.", examples=[0])]

# A page of a listing (api/http/pagination.py); an offset past a database integer is a 422.
DEFAULT_LIMIT = 50
MAX_LIMIT = 200
ADMIN_DEFAULT_LIMIT = 100
ADMIN_MAX_LIMIT = 500
LIMIT_DOC = "Items per page."
OFFSET_DOC = "Items to skip (follow `next` rather than counting)."
PageOffset = Annotated[int, Query(ge=0, le=MAX_OFFSET, description=OFFSET_DOC)]


def _paging(
    request: Request,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description=LIMIT_DOC)] = DEFAULT_LIMIT,
    offset: PageOffset = 0,
) -> Paging:
    return Paging(request, limit, offset)


def _admin_paging(
    request: Request,
    limit: Annotated[int, Query(ge=1, le=ADMIN_MAX_LIMIT, description=LIMIT_DOC)] = ADMIN_DEFAULT_LIMIT,
    offset: PageOffset = 0,
) -> Paging:
    return Paging(request, limit, offset)


PagingDep = Annotated[Paging, Depends(_paging)]
AdminPagingDep = Annotated[Paging, Depends(_admin_paging)]


def _user_from_cookie(request: Request, session: Session) -> User | None:
    value = request.cookies.get(SESSION_COOKIE)
    if not value:
        return None
    return session_user(session, value)


def _require_csrf(request: Request) -> None:
    """Cookie-authenticated state changes must carry the session's CSRF token in `X-CSRF-Token` (a cross-site
    form or script cannot read it). Bearer-key requests need none: browsers never attach those by themselves."""
    if not check_csrf(request.app.state.secret, request.cookies[SESSION_COOKIE], request.headers.get(CSRF_HEADER)):
        logger.warning("refused %s %s: missing or wrong CSRF token", request.method, request.url.path)
        raise Forbidden(f"missing or invalid {CSRF_HEADER} header (reload the page and try again)",
                        code=ErrorCode.CSRF_FAILED)


def current_user_from_cookie(request: Request, session: Session) -> User | None:
    """The signed-in user of a page request (cookie only), or None."""
    return _user_from_cookie(request, session)


def get_current_user(request: Request, session: SessionDep, bearer: BearerDep) -> User:
    """The caller, from `Authorization: Bearer <key>` or else a live `styledrop_session` cookie."""
    user: User | None = None
    if bearer is not None:
        user = authenticate_key(session, bearer.credentials)
        if user is not None:
            session.commit()  # last_used_at
    elif request.cookies.get(SESSION_COOKIE):
        user = _user_from_cookie(request, session)
        if user is not None and request.method not in SAFE_METHODS:
            _require_csrf(request)
    authorization = request.headers.get("authorization")
    if user is None and bearer is None and authorization:  # a key sent without its scheme, or another scheme
        raise Unauthorized(
            "the Authorization header must be `Bearer <API key>`: add `Bearer ` before the key"
            if authorization.strip().startswith("sd_") else
            "the Authorization header must be `Bearer <API key>` (other schemes are not accepted)",
            code=ErrorCode.BAD_AUTHORIZATION_SCHEME, headers={"WWW-Authenticate": "Bearer"})
    if user is None:
        reason = "invalid, revoked or disabled API key" if bearer or request.cookies else "missing API key"
        raise Unauthorized(reason, headers={"WWW-Authenticate": "Bearer"})
    return user


CurrentUser = Annotated[User, Depends(get_current_user)]


def credential_check(request: Request, user_id: str) -> Callable[[], bool]:
    """A check a long-lived response (an event stream) repeats: does the credential this request came with — its
    API key, else its session cookie — still name the enabled user `user_id`? (Revoked or rotated keys, ended
    sessions and disabled users fail it.) Runs in a short session of its own each time."""
    authorization = request.headers.get("authorization") or ""
    key = authorization[7:].strip() if authorization[:7].lower() == "bearer " else None
    token = request.cookies.get(SESSION_COOKIE)
    factory: sessionmaker[Session] = request.app.state.sessionmaker

    def still_allowed() -> bool:
        with factory() as session:
            user = authenticate_key(session, key) if key else session_user(session, token) if token else None
            session.rollback()  # a check, not a use: last_used_at is left as the request wrote it
            return user is not None and user.id == user_id

    return still_allowed


def get_admin_user(user: CurrentUser) -> User:
    if not user.is_admin:
        raise Forbidden("this needs an admin key")
    return user


AdminUser = Annotated[User, Depends(get_admin_user)]


def get_rate_limited_user(request: Request, user: CurrentUser) -> User:
    """The caller, after counting this request against its per-minute budget (429 with Retry-After)."""
    limiter: Limiter = request.app.state.rate_limiter
    wait = limiter.hit(user.id)
    if wait is not None:
        retry = max(1, math.ceil(wait))
        raise RateLimited(
            f"more than {limiter.limit} requests per minute ({limits.setting_env('rate_limit_per_minute')}); "
            f"retry in {retry} s", headers={"Retry-After": str(retry)}
        )
    return user


RateLimitedUser = Annotated[User, Depends(get_rate_limited_user)]


def get_metrics_access(request: Request, session: SessionDep, bearer: BearerDep, settings: SettingsDep) -> None:
    """/metrics needs an admin key (or an admin's session) unless `metrics_public` says the port is private:
    the numbers name job ids and queue depths, and each scrape runs queries."""
    if not settings.metrics_public:
        get_admin_user(get_current_user(request, session, bearer))


MetricsAccess = Annotated[None, Depends(get_metrics_access)]


def get_wait(
    request: Request,
    settings: SettingsDep,
    wait: Annotated[float | None, Query(ge=0, description=(
        "Block up to this many seconds for the result; larger values than STYLEDROP_MAX_WAIT_SECONDS (60 by "
        "default) wait that long. The same as `Prefer: wait=N`; this parameter wins when both are given."))] = None,
    prefer: Annotated[str | None, Header(alias="Prefer", description=(
        "RFC 7240 preferences: `wait=N` blocks up to N seconds, as `?wait=N` (answered with `Preference-Applied: "
        "wait=N`, N as clamped); other preferences are ignored."))] = None,
) -> Wait:
    """How long the request may block: `?wait=`, else `Prefer: wait=`, clamped to `max_wait_seconds`."""
    if wait is not None:
        return Wait(min(wait, settings.max_wait_seconds))
    preferred = prefer_wait(request.headers.getlist("prefer")) if prefer is not None else None
    if preferred is None:
        return Wait(0.0)
    return Wait(min(float(preferred), settings.max_wait_seconds), preferred=True)


WaitDep = Annotated[Wait, Depends(get_wait)]
