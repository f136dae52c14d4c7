"""Domain errors raised by the service functions and the handlers that turn them into JSON responses.

Every error body is `{"detail": {"code": "...", "message": "..."}}`.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

logger = logging.getLogger(__name__)


class ServiceError(Exception):
    """An error a service function raises for the caller to see; each kind below fixes its status and code."""

    status_code = 400
    code = "bad_request"

    def __init_subclass__(cls, *, status: int, code: str, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.status_code, cls.code = status, code

    def __init__(self, message: str, *, code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.headers = headers


class Unauthorized(ServiceError, status=401, code="unauthorized"): ...
class Forbidden(ServiceError, status=403, code="forbidden"): ...
class NotFound(ServiceError, status=404, code="not_found"): ...
class Conflict(ServiceError, status=409, code="conflict"): ...
class Gone(ServiceError, status=410, code="gone"): ...
class TooLarge(ServiceError, status=413, code="too_large"): ...
class UnsupportedMedia(ServiceError, status=415, code="unsupported_media_type"): ...
class Invalid(ServiceError, status=422, code="invalid"): ...
class RateLimited(ServiceError, status=429, code="rate_limited"): ...
class Unavailable(ServiceError, status=503, code="unavailable"): ...


def error_body(code: str, message: str) -> dict[str, dict[str, str]]:
    return {"detail": {"code": code, "message": message}}


async def _service_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    return JSONResponse(error_body(exc.code, exc.message), status_code=exc.status_code, headers=exc.headers)


Handler = Callable[[Request, Exception], Awaitable[JSONResponse]]


def _database_error(status: int, code: str, message: str, *, retry_after: str | None, what: str) -> Handler:
    """A handler answering one database failure the same way every time (and logging its first line)."""

    async def handle(request: Request, exc: Exception) -> JSONResponse:
        logger.warning("%s on %s %s: %s", what, request.method, request.url.path, str(exc).splitlines()[0][:200])
        headers = {"Retry-After": retry_after} if retry_after else None
        return JSONResponse(error_body(code, message), status_code=status, headers=headers)

    return handle


DATABASE_ERRORS: dict[type[Exception], Handler] = {
    OperationalError: _database_error(503, "database_unavailable", "the database cannot be reached; try again shortly",
                                      retry_after="5", what="database unavailable"),
    # Every pooled connection is in use (QueuePool timeout): the service is overloaded, not broken.
    PoolTimeout: _database_error(503, "database_busy", "the service is busy; try again shortly", retry_after="2",
                                 what="database pool exhausted"),
    # A value the database refuses (a NUL character, an out-of-range number) that no validator caught.
    DataError: _database_error(422, "bad_value", "a value in the request cannot be stored", retry_after=None,
                               what="database refused a value"),
}


MAX_ECHO_CHARS = 80


def _excerpt(value: Any) -> Any:
    """A short, JSON-safe excerpt of a value that failed validation (never the whole input, never NaN)."""
    if value is None or isinstance(value, bool | int):
        return value if not isinstance(value, int) or abs(value) < 2**63 else str(value)[:MAX_ECHO_CHARS] + "…"
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    text = value if isinstance(value, str) else json.dumps(jsonable_encoder(value), default=str, allow_nan=True)
    return text if len(text) <= MAX_ECHO_CHARS else text[:MAX_ECHO_CHARS] + "…"


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = []
    for error in exc.errors()[:20]:
        item = {k: v for k, v in error.items() if k not in ("input", "ctx", "url")}
        if "input" in error:
            item["input"] = _excerpt(error["input"])
        if "ctx" in error:
            item["ctx"] = {k: _excerpt(v) if v is None or isinstance(v, int | float) else str(v)[:MAX_ECHO_CHARS]
                           for k, v in error["ctx"].items()}
        errors.append(item)
    return JSONResponse({"detail": jsonable_encoder(errors)}, status_code=422)


def install_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _service_error)
    for exc_class, handler in DATABASE_ERRORS.items():
        app.add_exception_handler(exc_class, handler)
    app.add_exception_handler(RequestValidationError, _validation_error)
