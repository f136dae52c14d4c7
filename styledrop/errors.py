"""Exceptions of the client: every error answer of the API raised as an `APIError` carrying its RFC 9457 problem.

The API answers every 4xx/5xx with a problem body (`application/problem+json`): `code` is the stable value to
match on, `detail` is written for a person, `title` is the status' reason phrase, `instance` the path and, for
validation errors, `errors` lists each refused field (README "Errors"). The subclass is chosen by HTTP status, so
`except NotFoundError` catches every 404 whatever its code (`not_found`, `version_not_found`, ...), and `.code`
tells them apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from http import HTTPStatus
from typing import Any


class StyledropError(Exception):
    """Base class of everything this client raises."""


class APIConnectionError(StyledropError):
    """The request did not get an answer (connection refused or reset, DNS, TLS), after the retries allowed."""


class APITimeoutError(APIConnectionError):
    """The request timed out, after the retries allowed."""


class WaitTimeoutError(StyledropError, TimeoutError):
    """`jobs.wait` / `generations.wait` ran out of time before the job or generation finished."""

    def __init__(self, message: str, last: Any = None) -> None:
        super().__init__(message)
        self.last = last  # the job or generation as last seen


class IntegrityError(StyledropError):
    """A downloaded file does not match its recorded checksum (nothing was written)."""


@dataclass(frozen=True)
class FieldError:
    """One refused field of a validation error: `field` is `body.<name>`, `query.<name>`, `header.<name>` or
    `path.<name>`."""

    field: str
    message: str
    type: str | None = None


def _default_code(status: int) -> str:
    """The code of an answer without a problem body (a proxy's page): its reason phrase in snake case, the same
    rule the service uses for errors without a code of their own."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        return "error"
    return phrase.lower().replace(" ", "_").replace("-", "_").replace("'", "")


class APIError(StyledropError):
    """An error answer of the API. `code`, `detail`, `title`, `instance` and `errors` come from the problem body;
    `retry_after` is the `Retry-After` header in seconds (429 and 503), when there was one."""

    def __init__(self, status: int, problem: Mapping[str, Any] | None, *, headers: Mapping[str, str] | None = None,
                 method: str = "", url: str = "") -> None:
        body = dict(problem or {})
        self.status = status
        self.code: str = str(body.get("code") or _default_code(status))
        self.title: str = str(body.get("title") or _title(status))
        self.detail: str = str(body.get("detail") or "")
        self.instance: str | None = body.get("instance")
        self.errors: list[FieldError] = [
            FieldError(field=str(e.get("field", "")), message=str(e.get("message", "")), type=e.get("type"))
            for e in body.get("errors") or [] if isinstance(e, Mapping)
        ]
        self.problem = body
        self.headers = dict(headers or {})
        self.method, self.url = method, url
        self.retry_after = parse_retry_after(self.headers.get("retry-after"))
        super().__init__(f"{status} {self.code}: {self.detail or self.title}")


def _title(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


class BadRequestError(APIError):
    """400: an unreadable request."""


class AuthenticationError(APIError):
    """401: a missing, unknown or revoked key (`unauthorized`, `bad_authorization_scheme`)."""


class PermissionDeniedError(APIError):
    """403: an admin route for a user, a failed CSRF check."""


class NotFoundError(APIError):
    """404: an unknown id, someone else's, or a path that does not exist."""


class ConflictError(APIError):
    """409: the resource's state refuses it (`job_final`, `style_busy`, `idempotency_mismatch`, ...)."""


class GoneError(APIError):
    """410: the stored file is gone."""


class PayloadTooLargeError(APIError):
    """413: a body, a file or the storage quota too large."""


class UnsupportedMediaTypeError(APIError):
    """415: an image or body type the service does not take."""


class UnprocessableEntityError(APIError):
    """422: a refused value; `errors` names the fields of a `validation_error`."""


class RateLimitError(APIError):
    """429: too many requests, jobs, streams, queued images or uploads; `retry_after` says when to try again."""


class InternalServerError(APIError):
    """5xx: the service failed (`internal_error`) or is unavailable."""


class ServiceUnavailableError(InternalServerError):
    """503: the database, broker or decoder is busy or down; `retry_after` says when to try again."""


_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequestError, 401: AuthenticationError, 403: PermissionDeniedError, 404: NotFoundError,
    409: ConflictError, 410: GoneError, 413: PayloadTooLargeError, 415: UnsupportedMediaTypeError,
    422: UnprocessableEntityError, 429: RateLimitError, 503: ServiceUnavailableError,
}


def error_class(status: int) -> type[APIError]:
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    return InternalServerError if status >= 500 else APIError


def parse_retry_after(value: str | None) -> float | None:
    """`Retry-After` in seconds: delay-seconds, or an HTTP-date (RFC 9110 section 10.2.3); None when absent or
    unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - datetime.now(UTC)).total_seconds(), 0.0)
