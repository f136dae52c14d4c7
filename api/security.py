"""Session cookies (an HMAC-signed API key id) and the per-user request rate limiter."""

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


def _mac(secret: bytes, key_id: str) -> str:
    return hmac.new(secret, f"session:{key_id}".encode(), hashlib.sha256).hexdigest()


def sign_session(secret: bytes, key_id: str) -> str:
    """The `styledrop_session` cookie value for API key `key_id`."""
    return f"{key_id}.{_mac(secret, key_id)}"


def unsign_session(secret: bytes, value: str) -> str | None:
    """The API key id in a cookie value, or None when the signature does not match."""
    key_id, _, mac = value.partition(".")
    if not key_id or not mac or not hmac.compare_digest(mac, _mac(secret, key_id)):
        return None
    return key_id


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
