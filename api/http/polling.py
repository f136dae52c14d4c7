"""Waiting for and polling unfinished work, as clients of Replicate-like APIs expect.

- `Prefer: wait=N` (RFC 7240) beside `?wait=N`: block up to N seconds for a result, at most `max_wait_seconds`
  (larger values are clamped); an answer that honoured the header says so with `Preference-Applied: wait=N`.
- `Retry-After` on an unfinished job or generation: its `eta_seconds`, rounded up, within `RETRY_AFTER_MIN` ..
  `RETRY_AFTER_MAX` seconds (`UNKNOWN_ETA_SECONDS` while there is nothing to estimate from).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from fastapi import Response

from storage.resources import JobPublic
from storage.states import JOB_FINAL

RETRY_AFTER_MIN = 1
RETRY_AFTER_MAX = 30
UNKNOWN_ETA_SECONDS = 2.0

RETRY_AFTER_DOC = (f"Seconds before polling again: the estimate `eta_seconds` rounded up, within {RETRY_AFTER_MIN}.."
                   f"{RETRY_AFTER_MAX} ({UNKNOWN_ETA_SECONDS:g} s without an estimate). Only while unfinished.")
RETRY_AFTER_HEADER: dict[str, Any] = {"Retry-After": {"description": RETRY_AFTER_DOC, "schema": {"type": "integer"}}}


def retry_after(eta: float | None) -> int:
    """Seconds a client should wait before polling work whose estimate is `eta` seconds."""
    seconds = math.ceil(eta if eta is not None else UNKNOWN_ETA_SECONDS)
    return int(min(max(seconds, RETRY_AFTER_MIN), RETRY_AFTER_MAX))


def set_retry_after(response: Response, eta: float | None, *, final: bool) -> None:
    """`Retry-After` from the estimate while the work is unfinished; none once it is final."""
    if not final:
        response.headers["Retry-After"] = str(retry_after(eta))


def polled(response: Response, job: JobPublic) -> JobPublic:
    """`job`, with `Retry-After` on the answer while it is unfinished."""
    set_retry_after(response, job.eta_seconds, final=job.state in JOB_FINAL)
    return job


def prefer_wait(values: list[str]) -> int | None:
    """The `wait` preference of the `Prefer` header(s) (RFC 7240 §2 and §4.3: comma-separated preferences, each
    `name[=value]` with optional `;parameters`, the first of a name counting), or None. A value that is not a whole
    number of seconds is ignored, as §2 asks of preferences a server does not understand."""
    for value in values:
        for preference in value.split(","):
            name, _, rest = preference.split(";", 1)[0].partition("=")
            if name.strip().lower() != "wait":
                continue
            seconds = rest.strip().strip('"')
            return int(seconds) if seconds.isascii() and seconds.isdigit() and len(seconds) <= 9 else None
    return None


@dataclass(frozen=True)
class Wait:
    """How long a request may block for its result: `seconds` (already clamped), and whether `Prefer` asked."""

    seconds: float
    preferred: bool = False

    def applied(self, response: Response) -> None:
        """Say which preference was honoured (RFC 7240 §3)."""
        if self.preferred:
            response.headers["Preference-Applied"] = f"wait={math.floor(self.seconds)}"
