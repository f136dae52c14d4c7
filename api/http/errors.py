"""Domain errors raised by the service functions, and the handlers that turn every error into one shape.

Every 4xx/5xx body is an RFC 9457 problem (`application/problem+json`, api/http/problems.py): service errors, database
outages, validation errors, Starlette's 404/405 and body limits, and unhandled exceptions (a generic 500; the
traceback goes to the log, never to the client).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import DataError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from api.http.problems import ProblemResponse, code_for, problem
from storage.error_codes import ErrorCode

logger = logging.getLogger(__name__)


class ServiceError(Exception):
    """An error a service function raises for the caller to see; each kind below fixes its status and code.
    `field` names the refused input (`body.descriptor`), for the problem's `errors` list."""

    status_code = 400
    code: ErrorCode = ErrorCode.BAD_REQUEST

    def __init_subclass__(cls, *, status: int, code: ErrorCode, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.status_code, cls.code = status, code

    def __init__(self, message: str, *, code: ErrorCode | None = None, headers: dict[str, str] | None = None,
                 field: str | None = None, extensions: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.extensions = extensions or {}  # further members of the problem (e.g. `used`, `allowed`)
        if code is not None:
            self.code = code
        self.headers = headers
        self.field = field


class Unauthorized(ServiceError, status=401, code=ErrorCode.UNAUTHORIZED): ...
class Forbidden(ServiceError, status=403, code=ErrorCode.FORBIDDEN): ...
class NotFound(ServiceError, status=404, code=ErrorCode.NOT_FOUND): ...
class Conflict(ServiceError, status=409, code=ErrorCode.CONFLICT): ...
class Gone(ServiceError, status=410, code=ErrorCode.GONE): ...
class TooLarge(ServiceError, status=413, code=ErrorCode.TOO_LARGE): ...
class UnsupportedMedia(ServiceError, status=415, code=ErrorCode.UNSUPPORTED_MEDIA_TYPE): ...
class Invalid(ServiceError, status=422, code=ErrorCode.INVALID): ...
class RateLimited(ServiceError, status=429, code=ErrorCode.RATE_LIMITED): ...
class Unavailable(ServiceError, status=503, code=ErrorCode.UNAVAILABLE): ...


class BodyTooLarge(HTTPException):
    """A request body that passes its limit while it streams (api/http/request_guard.py). A FastAPI HTTPException,
    because FastAPI's body reader passes those on as they are and turns any other exception into a 400."""

    code = ErrorCode.BODY_TOO_LARGE

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than the limit of {limit} bytes",
                         headers={"Connection": "close"})


Handler = Callable[[Request, Exception], Awaitable[ProblemResponse]]


async def _service_error(request: Request, exc: Exception) -> ProblemResponse:
    assert isinstance(exc, ServiceError)
    errors = [{"field": exc.field, "message": exc.message}] if exc.field else None
    return problem(exc.status_code, exc.code, exc.message, path=request.url.path, headers=exc.headers,
                   errors=errors, **exc.extensions)


def _database_error(status: int, code: ErrorCode, message: str, *, retry_after: str | None, what: str) -> Handler:
    """A handler answering one database failure the same way every time (and logging its first line)."""

    async def handle(request: Request, exc: Exception) -> ProblemResponse:
        logger.warning("%s on %s %s: %s", what, request.method, request.url.path, str(exc).splitlines()[0][:200])
        headers = {"Retry-After": retry_after} if retry_after else None
        return problem(status, code, message, path=request.url.path, headers=headers)

    return handle


DATABASE_ERRORS: dict[type[Exception], Handler] = {
    OperationalError: _database_error(503, ErrorCode.DATABASE_UNAVAILABLE,
                                      "the database cannot be reached; try again shortly", retry_after="5",
                                      what="database unavailable"),
    # Every pooled connection is in use (QueuePool timeout): the service is overloaded, not broken.
    PoolTimeout: _database_error(503, ErrorCode.DATABASE_BUSY, "the service is busy; try again shortly",
                                 retry_after="2", what="database pool exhausted"),
    # A value the database refuses (a NUL character, an out-of-range number) that no validator caught.
    DataError: _database_error(422, ErrorCode.BAD_VALUE, "a value in the request cannot be stored",
                               retry_after=None, what="database refused a value"),
}


async def _http_error(request: Request, exc: Exception) -> ProblemResponse:
    """Starlette's and FastAPI's HTTPExceptions: an unknown route (404), a wrong method (405, with `Allow`), an
    unreadable form (400), a body over the limit (413, BodyTooLarge)."""
    assert isinstance(exc, StarletteHTTPException)
    status, path, headers = exc.status_code, request.url.path, dict(exc.headers or {})
    detail = exc.detail if isinstance(exc.detail, str) else json.dumps(jsonable_encoder(exc.detail))
    if status == 404 and detail == "Not Found":
        detail = f"nothing is at {path} (/docs lists the API's routes)"
    elif status == 405 and detail == "Method Not Allowed":
        allowed = _allowed_methods(request) or (exc.headers or {}).get("Allow", "")
        headers["Allow"] = allowed
        detail = f"{request.method} is not allowed on {path}" + (f"; use {allowed}" if allowed else "")
    return problem(status, getattr(exc, "code", None) or code_for(status), detail, path=path, headers=headers)


def _allowed_methods(request: Request) -> str:
    """Every method some route takes at this path. Starlette's `Allow` names only the first route that matched the
    path (`POST` for /v1/styles, which takes GET too)."""
    routes = request.app.router.routes
    return ", ".join(method for method in ("GET", "POST", "PUT", "PATCH", "DELETE")
                     if any(route.matches({**request.scope, "method": method})[0] == Match.FULL for route in routes))


async def _internal_error(request: Request, exc: Exception) -> ProblemResponse:
    """Any exception no other handler took: logged with its traceback, answered with a message that says nothing
    about the code."""
    logger.error("unhandled %s on %s %s", type(exc).__name__, request.method, request.url.path, exc_info=exc)
    return problem(500, ErrorCode.INTERNAL_ERROR,
                   "an unexpected error occurred; it has been logged, please try again later",
                   path=request.url.path)


# --- validation errors -------------------------------------------------------------------------------------------

MAX_ECHO_CHARS = 80
MAX_ERRORS = 20


def _excerpt(value: Any) -> Any:
    """A short, JSON-safe excerpt of a value that failed validation (never the whole input, never NaN)."""
    if value is None or isinstance(value, bool | int):
        return value if not isinstance(value, int) or abs(value) < 2**63 else str(value)[:MAX_ECHO_CHARS] + "…"
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    text = value if isinstance(value, str) else json.dumps(jsonable_encoder(value), default=str, allow_nan=True)
    return text if len(text) <= MAX_ECHO_CHARS else text[:MAX_ECHO_CHARS] + "…"


_PLAIN: dict[str, str] = {
    "int_parsing": "must be a whole number", "int_type": "must be a whole number",
    "int_from_float": "must be a whole number", "float_parsing": "must be a number", "float_type": "must be a number",
    "finite_number": "must be a finite number", "bool_parsing": "must be true or false",
    "bool_type": "must be true or false", "string_type": "must be a string", "list_type": "must be a list",
    "dict_type": "must be a JSON object", "model_type": "must be a JSON object", "model_attributes_type":
    "must be a JSON object", "extra_forbidden": "is not a field this accepts", "string_unicode": "must be text",
}
_BOUNDS = {"greater_than_equal": ("ge", "must be at least {}"), "less_than_equal": ("le", "must be at most {}"),
           "greater_than": ("gt", "must be greater than {}"), "less_than": ("lt", "must be less than {}"),
           "string_too_long": ("max_length", "must be at most {} characters"),
           "too_long": ("max_length", "must have at most {} items"),
           "too_short": ("min_length", "must have at least {} items")}


def _field_message(error: Mapping[str, Any], body: Any) -> tuple[str, str]:
    """(dotted location, why) for one validation error, in words rather than the validator's."""
    loc, kind, ctx = tuple(error.get("loc", ())), str(error.get("type", "")), error.get("ctx") or {}
    if kind == "json_invalid":  # FastAPI puts the character position after "body"
        return "body", f"is not valid JSON ({ctx.get('error', 'syntax error')})"
    field = ".".join(str(part) for part in loc) or "body"
    if kind == "missing":
        # FastAPI reports an empty form field as missing: say which it was.
        sent = len(loc) == 2 and loc[0] == "body" and isinstance(body, Mapping) and loc[1] in body
        return field, "must not be empty" if sent else "is required"
    if kind == "string_too_short":
        least = ctx.get("min_length", 1)
        return field, "must not be empty" if least == 1 else f"must be at least {least} characters"
    if kind in _BOUNDS and _BOUNDS[kind][0] in ctx:
        key, text = _BOUNDS[kind]
        return field, text.format(ctx[key])
    if kind in ("enum", "literal_error") and "expected" in ctx:
        return field, f"must be one of {ctx['expected']}"
    if kind in _PLAIN:
        return field, _PLAIN[kind]
    message = str(error.get("msg", "is invalid")).removeprefix("Value error, ")
    return field, message[:1].lower() + message[1:]


async def _validation_error(request: Request, exc: Exception) -> ProblemResponse:
    assert isinstance(exc, RequestValidationError)
    errors = []
    for error in exc.errors()[:MAX_ERRORS]:
        field, message = _field_message(error, exc.body)
        item: dict[str, Any] = {"field": field, "message": message, "type": error.get("type")}
        if "input" in error and error.get("type") != "missing":
            item["input"] = _excerpt(error["input"])
        errors.append(item)
    listed = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:3])
    detail = listed if len(errors) == 1 else f"{len(exc.errors())} values are invalid: {listed}" + (
        "; …" if len(errors) > 3 else "")
    return problem(422, ErrorCode.VALIDATION_ERROR, detail, path=request.url.path, errors=jsonable_encoder(errors))


def install_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _service_error)
    for exc_class, handler in DATABASE_ERRORS.items():
        app.add_exception_handler(exc_class, handler)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _internal_error)  # Starlette's ServerErrorMiddleware calls it
