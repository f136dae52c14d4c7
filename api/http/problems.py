"""The one error shape of the JSON API: RFC 9457 problem details, served as `application/problem+json`.

Every 4xx/5xx of /v1/*, /healthz, /readyz and /metrics — a service error, a validation error, an unknown route or
method, a body over the limit, a rate limit, an outage or a bug — answers

    {"type": "about:blank", "title": "Not Found", "status": 404, "detail": "style not found",
     "code": "not_found", "instance": "/v1/styles/abc"}

`code` is the stable value for programs (the `title` is only the status' reason phrase and `detail` is written for
a person, so neither is meant to be matched); validation errors add `errors`, one `{field, message}` per field.
`type` is `about:blank` because `code` already says what kind of problem it is (RFC 9457 section 4.2.1).
The HTML pages render their own error pages and never come here.
"""

from __future__ import annotations

from collections.abc import Callable
from http import HTTPStatus
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from storage.error_codes import ErrorCode

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_REF = "#/components/schemas/Problem"


class ProblemField(BaseModel):
    field: str = Field(description="Where the bad value is: `body.<name>`, `query.<name>`, `header.<name>` or "
                                   "`path.<name>` (dotted for nested values, e.g. `body.webhook_events_filter.1`).")
    message: str = Field(description='Why it was refused, e.g. "must not be empty".')
    type: str | None = Field(None, description="The validator's error type (e.g. `missing`, `string_too_long`).")
    input: Any = Field(None, description="A short excerpt of the refused value, when there was one.")


class Problem(BaseModel):
    """RFC 9457 problem details: the body of every error response."""

    type: str = Field("about:blank", description="Always `about:blank`: `code` names the kind of problem.")
    title: str = Field(description="The HTTP status' reason phrase, e.g. `Not Found`.")
    status: int = Field(description="The HTTP status code, repeated.")
    detail: str = Field(description="What went wrong this time, written for a person.")
    code: str = Field(description="A stable machine-readable code, e.g. `not_found`, `validation_error`, "
                                  "`rate_limited` (the README lists them).")
    instance: str = Field(description="The request's path.")
    errors: list[ProblemField] | None = Field(None, description="Validation errors only: each refused field.")


class ProblemResponse(JSONResponse):
    media_type = PROBLEM_MEDIA_TYPE


_RFC_9110_TITLES = {413: "Content Too Large", 422: "Unprocessable Content"}  # Python 3.11 has the older names


def title_for(status: int) -> str:
    try:
        return _RFC_9110_TITLES.get(status) or HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def code_for(status: int) -> str:
    """The code of an error that has none of its own: the reason phrase in snake case (405 method_not_allowed)."""
    known = {400: ErrorCode.BAD_REQUEST, 404: ErrorCode.NOT_FOUND, 405: ErrorCode.METHOD_NOT_ALLOWED,
             413: ErrorCode.TOO_LARGE, 415: ErrorCode.UNSUPPORTED_MEDIA_TYPE, 422: ErrorCode.INVALID,
             429: ErrorCode.RATE_LIMITED, 500: ErrorCode.INTERNAL_ERROR, 503: ErrorCode.UNAVAILABLE}
    return known.get(status) or title_for(status).lower().replace(" ", "_").replace("-", "_").replace("'", "")


def problem_body(status: int, code: str, detail: str, *, path: str, errors: list[dict[str, Any]] | None = None,
                 **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"type": "about:blank", "title": title_for(status), "status": status, "detail": detail,
                            "code": code, "instance": quote(path, safe="/:@!$&'()*+,;=-._~")}
    if errors is not None:
        body["errors"] = errors
    return {**body, **extra}


def problem(status: int, code: str, detail: str, *, path: str, headers: dict[str, str] | None = None,
            errors: list[dict[str, Any]] | None = None, **extra: Any) -> ProblemResponse:
    """The problem+json response (`extra`: further members, e.g. /readyz's `checks`)."""
    return ProblemResponse(problem_body(status, code, detail, path=path, errors=errors, **extra),
                           status_code=status, headers=headers)


# --- OpenAPI -----------------------------------------------------------------------------------------------------

_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before trying again.", "schema": {"type": "integer"}}}
_DESCRIPTIONS: dict[int, str] = {
    400: "The request could not be read (e.g. a malformed multipart body).",
    401: "No API key, or not a valid one (`unauthorized`, `bad_authorization_scheme`).",
    403: "Not allowed (`forbidden`; `csrf_failed` for a cookie session without its token).",
    404: "No such resource, or not yours (`not_found`).",
    409: "The resource's state does not allow it (`conflict`, `job_final`, `idempotency_mismatch`, ...).",
    410: "The resource existed but its data is gone (`gone`).",
    413: "The body or a file is over its limit (`body_too_large`, `too_large`, `storage_quota_exceeded`).",
    415: "Not a content type or image format this accepts.",
    422: "A field is invalid (`validation_error`, with `errors` naming each field; or a specific code).",
    429: "Too many requests, jobs, queued images, uploads at once or event streams (`rate_limited`, "
         "`too_many_jobs`, `too_many_queued_images`, `too_many_uploads`, `too_many_streams`).",
    500: "An unexpected error; it was logged (`internal_error`).",
    503: "The database is unreachable or busy, or the service is not ready (`database_unavailable`, "
         "`database_busy`, `not_ready`, `decoder_busy`).",
}
ALWAYS = (422, 500, 503)  # a NUL in any query string, a bug, a database outage: possible on every operation


def problem_responses(*statuses: int, **described: str) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a router or route: each status (and ALWAYS) documented as a Problem; `described` gives
    a route's own description of a status (`s503="..."`). A route's `responses` replace its router's entry for
    the same status, so a route documenting a status passes it here too."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in sorted(set(statuses) | set(ALWAYS)):
        description = described.get(f"s{status}") or _DESCRIPTIONS.get(status, title_for(status))
        entry: dict[str, Any] = {"description": description,
                                 "content": {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": PROBLEM_REF}}}}
        if status in (429, 503):
            entry["headers"] = _RETRY_AFTER
        out[status] = entry
    return out


def install_problem_schema(app: FastAPI) -> None:
    """Add the Problem schema to the generated OpenAPI document (the responses above refer to it by `$ref`)."""
    build: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            definitions = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update(definitions.pop("$defs", {}))
            components["Problem"] = definitions
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
