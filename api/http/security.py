"""The session cookie name and CSRF tokens (the session itself is a `sessions` row: storage/sessions.py), the
secret that derives them, and the in-process request rate limiter."""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import threading
import time
from collections import deque
from pathlib import Path

from storage.settings import Settings

logger = logging.getLogger(__name__)

SESSION_COOKIE = "styledrop_session"


def load_secret(settings: Settings) -> bytes:
    """settings.secret_key, or a random secret kept in `<data_dir>/secret_key` (created 0600 on first use)."""
    if settings.secret_key:
        return settings.secret_key.encode()
    path = Path(settings.data_dir) / "secret_key"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_bytes().strip()
    with os.fdopen(fd, "wb") as fh:
        secret = secrets.token_hex(32).encode()
        fh.write(secret)
    logger.info("generated a session secret in %s", path)
    return secret


CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def _mac(secret: bytes, message: str) -> str:
    return hmac.new(secret, message.encode(), hashlib.sha256).hexdigest()


def csrf_token(secret: bytes, session_value: str) -> str:
    """The CSRF token of one session: an HMAC of its (HttpOnly, so unreadable to scripts) cookie value. Pages
    render it into `<meta name="csrf-token">` and forms; scripts send it back as `X-CSRF-Token`."""
    return _mac(secret, f"csrf:{session_value}")


def check_csrf(secret: bytes, session_value: str, token: str | None) -> bool:
    """True when `token` is the CSRF token of the session whose cookie value is `session_value`."""
    return bool(token) and hmac.compare_digest(str(token), csrf_token(secret, session_value))


class RateLimiter:
    """An in-process sliding window: at most `limit` calls per `window` seconds per key."""

    def __init__(self, limit: int, window: float = 60.0) -> None:
        self.limit = limit
        self.window = window
        self._hits: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def hit(self, key: str) -> float | None:
        """Record a call; None when allowed, else the seconds until the next call would be."""
        now = time.monotonic()
        with self._lock:
            hits = self._hits.setdefault(key, deque())
            while hits and hits[0] <= now - self.window:
                hits.popleft()
            if len(hits) >= self.limit:
                return max(hits[0] + self.window - now, 0.0)
            hits.append(now)
            return None
