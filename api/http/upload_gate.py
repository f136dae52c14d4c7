"""ASGI middleware that decides whether a style upload (`POST /v1/styles`, multipart) may be read at all, before
one byte of its body is: the caller is authenticated, the per-user job cap and the storage cap (charged the body's
`Content-Length` plus the adapter the job will write, storage/quotas.py) are checked, and the upload takes one of
the process's upload places (`max_concurrent_uploads_per_user`, `max_concurrent_uploads_total`) for as long as it
runs. A refusal is an RFC 9457 problem with `Connection: close`, sent without reading the body.

FastAPI parses a multipart body before it resolves a route's dependencies, so without this gate 8 concurrent
5-image uploads were read (and held) whole before anyone was authenticated or counted. The route still checks
everything again under the owner's lock (api/services/styles.py); this gate only refuses early and bounds how many
uploads are read at once. An upload with an `Idempotency-Key` skips the cap checks here: a retry of a request
that already created its job is answered by the route with that job, whatever the caps say now.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from dataclasses import dataclass

from sqlalchemy import func, select
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.requests import cookie_parser
from starlette.types import ASGIApp, Receive, Scope, Send

from api.http.problems import problem
from api.http.security import SESSION_COOKIE
from api.services import limits
from storage import quotas
from storage.error_codes import ErrorCode
from storage.models import TrainingJob
from storage.sessions import session_user
from storage.settings import Settings
from storage.states import JOB_UNFINISHED
from storage.users import authenticate_key

logger = logging.getLogger(__name__)

UPLOAD_PATHS = frozenset({"/v1/styles", "/v1/styles/"})
UPLOAD_RETRY_AFTER = "5"
JOB_RETRY_AFTER = "30"


@dataclass(frozen=True)
class Refusal:
    status: int
    code: ErrorCode
    message: str
    headers: dict[str, str]


class UploadPlaces:
    """Uploads being read in this process, per user and in total."""

    def __init__(self) -> None:
        self.held: Counter[str] = Counter()
        self.lock = threading.Lock()

    def take(self, user_id: str, *, per_user: int, total: int) -> bool:
        with self.lock:
            if sum(self.held.values()) >= total or self.held[user_id] >= per_user:
                return False
            self.held[user_id] += 1
            return True

    def give_back(self, user_id: str) -> None:
        with self.lock:
            self.held[user_id] -= 1
            if self.held[user_id] <= 0:
                del self.held[user_id]


def _content_length(headers: Headers) -> int | None:
    value = (headers.get("content-length") or "").strip()
    return int(value) if value.isascii() and value.isdigit() and len(value) < 20 else None


def _unauthorized(authorization: str, had_credentials: bool) -> Refusal:
    """The answer api/deps.py's `get_current_user` gives, in the same words."""
    challenge = {"WWW-Authenticate": "Bearer"}
    if authorization and authorization[:7].lower() != "bearer ":
        why = ("the Authorization header must be `Bearer <API key>`: add `Bearer ` before the key"
               if authorization.startswith("sd_") else
               "the Authorization header must be `Bearer <API key>` (other schemes are not accepted)")
        return Refusal(401, ErrorCode.BAD_AUTHORIZATION_SCHEME, why, challenge)
    return Refusal(401, ErrorCode.UNAUTHORIZED, "invalid, revoked or disabled API key" if had_credentials else
                   "missing API key", challenge)


def _check(scope: Scope, headers: Headers) -> tuple[str | None, Refusal | None]:
    """(the caller's id, a refusal or None), from the headers alone: one short database session."""
    app = scope["app"]
    settings: Settings = app.state.settings
    authorization = (headers.get("authorization") or "").strip()
    bearer = authorization[7:].strip() if authorization[:7].lower() == "bearer " else None
    token = cookie_parser(headers.get("cookie") or "").get(SESSION_COOKIE)
    with app.state.sessionmaker() as session:
        user = None
        if bearer is not None:  # as api/deps.py: a key, else a session cookie
            user = authenticate_key(session, bearer)
            session.commit()  # last_used_at
        elif token:
            user = session_user(session, token)
        if user is None:
            return None, _unauthorized(authorization, bearer is not None or bool(headers.get("cookie")))
        if headers.get("idempotency-key") is not None:
            return user.id, None
        active = session.scalar(select(func.count()).select_from(TrainingJob).where(
            TrainingJob.owner_id == user.id, TrainingJob.state.in_(JOB_UNFINISHED))) or 0
        cap = settings.max_concurrent_jobs_per_user
        if active >= cap:
            return user.id, Refusal(429, ErrorCode.TOO_MANY_JOBS,
                                    limits.too_many_jobs(settings, active, JOB_RETRY_AFTER),
                                    {"Retry-After": JOB_RETRY_AFTER})
        declared = _content_length(headers)
        if declared is not None:
            adding = declared + quotas.adapter_charge(session, settings)
            over = quotas.over_quota(session, settings, user.id, adding)
            if over is not None:
                return user.id, Refusal(413, ErrorCode.STORAGE_QUOTA_EXCEEDED,
                                        f"storage limit reached: you use {over[0]} "
                                        f"bytes and this upload (its body and the adapter it will train) adds up to "
                                        f"{adding} (the limit is {over[1]}); delete styles, adapters or generations "
                                        "you no longer need", {})
        return user.id, None


class UploadGate:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.places = UploadPlaces()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in UPLOAD_PATHS:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if not (headers.get("content-type") or "").lower().startswith("multipart/"):
            await self.app(scope, receive, send)
            return
        user_id, refusal = await run_in_threadpool(_check, scope, headers)
        settings: Settings = scope["app"].state.settings
        per_user, total = settings.max_concurrent_uploads_per_user, settings.max_concurrent_uploads_total
        if refusal is None and user_id is not None and not self.places.take(user_id, per_user=per_user, total=total):
            refusal = Refusal(429, ErrorCode.TOO_MANY_UPLOADS, "too many uploads are being read right now: at most "
                              f"{limits.limit(settings, 'max_concurrent_uploads_per_user')} of yours and "
                              f"{limits.limit(settings, 'max_concurrent_uploads_total')} in all; retry shortly",
                              {"Retry-After": UPLOAD_RETRY_AFTER})
        if refusal is not None:
            logger.info("upload refused before its body was read: %s", refusal.code)
            await problem(refusal.status, refusal.code, refusal.message, path=scope["path"],
                          headers={**refusal.headers, "Connection": "close"})(scope, receive, send)
            return
        assert user_id is not None
        try:  # the place is held until the route has answered
            await self.app(scope, receive, send)
        finally:
            self.places.give_back(user_id)
