"""ASGI middleware that refuses hostile requests before any route, dependency or parser sees them.

- A NUL character in the path is a 404 (no id contains one; PostgreSQL cannot even compare with one) and in the
  query string a 422.
- A JSON body (or one without a Content-Type, which FastAPI parses as JSON) is bounded: a Content-Length over
  `max_json_bytes` is a 413 before one byte is read, and a chunked body is counted while it streams and cut off
  with a 413 as soon as it passes the limit. A big body would otherwise freeze the event loop while it is parsed
  and validated, and its 422 echoed it back whole. Any other body (multipart uploads) is bounded the same way by
  `max_body_bytes`; past it while streaming, the app's next read raises BodyTooLarge. (This replaces FastAPI's
  `max_body_size`, whose 413 is plain text sent from outside the app's error handlers.)
- A bounded JSON body is then checked once: NaN/Infinity, numbers that overflow to infinity (1e400), NUL
  characters and nesting deeper than `MAX_JSON_DEPTH` are a 422 (they made the error handler fail with a 500, or
  recursed until RecursionError, or cannot be stored by PostgreSQL). Syntax errors are left to the route, which
  answers them itself. The body is then replayed to the app unchanged.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.http.errors import BodyTooLarge
from api.http.problems import problem
from storage.error_codes import ErrorCode

logger = logging.getLogger(__name__)

MAX_JSON_DEPTH = 64
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class JsonRejected(ValueError):
    pass


def _is_json(content_type: str | None) -> bool:
    if content_type is None:
        return True  # FastAPI parses a body without a Content-Type as JSON
    media = content_type.split(";")[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def _reject_constant(name: str) -> Any:
    raise JsonRejected(f"{name} is not a number JSON allows")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise JsonRejected(f"the number {text[:20]}… is out of range")
    return value


def _check_tree(value: Any) -> None:
    """Depth and NUL check without recursion (the parser has already bounded the depth to Python's limit)."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise JsonRejected(f"the JSON is nested deeper than {MAX_JSON_DEPTH} levels")
        if isinstance(item, str):
            if "\x00" in item:
                raise JsonRejected("a string contains a NUL character")
        elif isinstance(item, dict):
            for key, child in item.items():
                if "\x00" in key:
                    raise JsonRejected("a key contains a NUL character")
                stack.append((child, depth + 1))
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)


def check_json(body: bytes) -> None:
    """Raise JsonRejected for JSON the service refuses; return for valid JSON and for text that is not JSON at all
    (the route answers that with its own 422)."""
    try:
        parsed = json.loads(body, parse_constant=_reject_constant, parse_float=_finite_float)
    except RecursionError:
        raise JsonRejected(f"the JSON is nested deeper than {MAX_JSON_DEPTH} levels") from None
    except JsonRejected:
        raise
    except ValueError:  # syntax or encoding: the route's own parser reports it
        return
    _check_tree(parsed)


class RequestGuard:
    def __init__(self, app: ASGIApp, *, max_json_bytes: int, max_body_bytes: int) -> None:
        self.app = app
        self.max_json_bytes = max_json_bytes
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if "\x00" in scope["path"]:
            await _answer(scope, receive, send, 404, ErrorCode.NOT_FOUND, "not found")
            return
        query: bytes = scope.get("query_string", b"")
        if b"\x00" in query or b"%00" in query:
            await _answer(scope, receive, send, 422, ErrorCode.BAD_QUERY, "the query string contains a NUL character")
            return
        headers = {k.lower(): v for k, v in scope["headers"]}
        if scope["method"] not in _BODY_METHODS:
            await self.app(scope, receive, send)
            return
        is_json = _is_json(_header(headers, b"content-type"))
        limit = self.max_json_bytes if is_json else self.max_body_bytes
        declared = _header(headers, b"content-length")
        if declared is not None and declared.strip().isascii() and declared.strip().isdigit() and \
                len(declared.strip()) < 20 and int(declared) > limit:
            await self._too_large(scope, receive, send, limit, is_json)
            return
        if not is_json:
            await self.app(scope, _bounded(receive, limit), send)
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_json_bytes:
                await self._too_large(scope, receive, send, self.max_json_bytes, True)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        try:
            check_json(body)
        except JsonRejected as exc:
            await _answer(scope, receive, send, 422, ErrorCode.BAD_JSON, str(exc))
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send, limit: int, is_json: bool) -> None:
        what = "JSON" if is_json else "request"
        logger.info("refused a %s body over %d bytes on %s", what, limit, scope["path"])
        await _answer(scope, receive, send, 413, ErrorCode.BODY_TOO_LARGE,
                      f"the {what} body is larger than the limit of {limit} bytes")


def _bounded(receive: Receive, limit: int) -> Receive:
    """`receive`, raising BodyTooLarge (a 413 problem) once the body has passed `limit` bytes."""
    size = 0

    async def bounded() -> Message:
        nonlocal size
        message = await receive()
        if message["type"] == "http.request":
            size += len(message.get("body", b""))
            if size > limit:
                raise BodyTooLarge(limit)
        return message

    return bounded


def _header(headers: dict[bytes, bytes], name: bytes) -> str | None:
    value = headers.get(name)
    return value.decode("latin-1") if value is not None else None


async def _answer(scope: Scope, receive: Receive, send: Send, status: int, code: ErrorCode, message: str) -> None:
    headers = {"Connection": "close"} if status == 413 else None
    await problem(status, code, message, path=scope["path"], headers=headers)(scope, receive, send)
