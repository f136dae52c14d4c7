"""Absolute URLs in what the service answers and sends.

The resources name their own URLs (`image_urls`, a preview event's `url`, ...) as paths under the base URL of the
answer being written: the API sets that base for each request (`STYLEDROP_PUBLIC_URL`, else the address the request
came to; api/http/urls.py), so every URL a client reads can be followed as it is. Outside a request the base is empty
and the paths stay root-relative: that is how the webhook outbox stores a body (storage/webhooks.py), and
`absolute_body` gives it the worker's base (`Settings.public_base_url`) when it is sent (worker/ops/webhooks.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

_BASE: ContextVar[str] = ContextVar("styledrop_base_url", default="")

# The keys of a resource body whose values are the service's own URLs (paths until a base is given).
URL_KEYS = frozenset({"image_urls", "image_url", "file_url", "url"})


def absolute(path: str) -> str:
    """`path` ("/v1/...") under the current answer's base URL (root-relative when there is none)."""
    return _BASE.get() + path


def current_base() -> str:
    return _BASE.get()


@contextmanager
def base_url(base: str) -> Iterator[None]:
    """Answers written inside this block carry URLs under `base` ("" for root-relative paths)."""
    token = _BASE.set(base.rstrip("/"))
    try:
        yield
    finally:
        _BASE.reset(token)


def _rebase(value: Any, base: str, *, is_url: bool = False) -> Any:
    if isinstance(value, dict):
        return {k: _rebase(v, base, is_url=k in URL_KEYS) for k, v in value.items()}
    if isinstance(value, list):
        return [_rebase(v, base, is_url=is_url) for v in value]
    if is_url and isinstance(value, str) and value.startswith("/"):
        return base.rstrip("/") + value
    return value


def absolute_urls(value: Any) -> Any:
    """A stored payload (an event's, say an automatic round's `picks`) with its root-relative URLs under the
    current answer's base URL."""
    return _rebase(value, _BASE.get())


def absolute_body(body: str, base: str) -> str:
    """A stored JSON body (root-relative URLs) with its URLs under `base`; compact, as pydantic writes it."""
    return json.dumps(_rebase(json.loads(body), base), separators=(",", ":"), ensure_ascii=False)
