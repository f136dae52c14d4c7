"""Domain errors raised by the service functions and the handlers that turn them into JSON responses.

Every error body is `{"detail": {"code": "...", "message": "..."}}`.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError

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


def install_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(OperationalError, _db_unavailable)
