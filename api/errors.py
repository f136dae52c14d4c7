"""Domain errors raised by the service functions and the handlers that turn them into JSON responses.

Every error body is `{"detail": {"code": "...", "message": "..."}}`.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

logger = logging.getLogger(__name__)


class ServiceError(Exception):
    status_code = 400
    code = "bad_request"

    def __init__(self, message: str, *, code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.headers = headers


class Unauthorized(ServiceError):
    status_code = 401
    code = "unauthorized"


class Forbidden(ServiceError):
    status_code = 403
    code = "forbidden"


class NotFound(ServiceError):
    status_code = 404
    code = "not_found"


class Conflict(ServiceError):
    status_code = 409
    code = "conflict"


class Invalid(ServiceError):
    status_code = 422
    code = "invalid"


class TooLarge(ServiceError):
    status_code = 413
    code = "too_large"


class UnsupportedMedia(ServiceError):
    status_code = 415
    code = "unsupported_media_type"


class Gone(ServiceError):
    status_code = 410
    code = "gone"


class RateLimited(ServiceError):
    status_code = 429
    code = "rate_limited"


class Unavailable(ServiceError):
    status_code = 503
    code = "unavailable"


def error_body(code: str, message: str) -> dict[str, dict[str, str]]:
    return {"detail": {"code": code, "message": message}}


async def _service_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    return JSONResponse(error_body(exc.code, exc.message), status_code=exc.status_code, headers=exc.headers)


async def _db_unavailable(request: Request, exc: Exception) -> JSONResponse:
    logger.warning("database unavailable on %s %s: %s", request.method, request.url.path, exc)
    return JSONResponse(
        error_body("database_unavailable", "the database cannot be reached; try again shortly"),
        status_code=503,
        headers={"Retry-After": "5"},
    )


async def _db_busy(request: Request, exc: Exception) -> JSONResponse:
    # Every pooled connection is in use (QueuePool timeout): the service is overloaded, not broken.
    logger.warning("database pool exhausted on %s %s: %s", request.method, request.url.path, exc)
    return JSONResponse(
        error_body("database_busy", "the service is busy; try again shortly"),
        status_code=503,
        headers={"Retry-After": "2"},
    )


async def _db_data_error(request: Request, exc: Exception) -> JSONResponse:
    # A value the database refuses (a NUL character, an out-of-range number) that no validator caught.
    logger.warning("database refused a value on %s %s: %s", request.method, request.url.path,
                   str(exc).splitlines()[0][:200])
    return JSONResponse(error_body("bad_value", "a value in the request cannot be stored"), status_code=422)


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
    app.add_exception_handler(OperationalError, _db_unavailable)
    app.add_exception_handler(PoolTimeout, _db_busy)
    app.add_exception_handler(DataError, _db_data_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
