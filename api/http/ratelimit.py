"""The per-user request rate limit, shared by every API process through Redis when the broker is Redis.

An in-process window (api.http.security.RateLimiter) lets each of N uvicorn workers grant the full budget, so N API
processes allowed N × the limit. With a Redis broker the window lives in Redis (one sorted set per user, updated
by one Lua script, so concurrent processes cannot both take the last slot); with the embedded broker there is
only one API process and the in-process window is exact.
"""

from __future__ import annotations

import logging
import secrets
import time
from typing import Protocol

from api.http.security import RateLimiter
from storage.settings import Settings

logger = logging.getLogger(__name__)

KEY_PREFIX = "styledrop:ratelimit:"

# KEYS[1] the user's window; ARGV: now (s), window (s), limit, a unique member. Returns -1 when allowed, else the
# seconds until the oldest hit leaves the window.
_SLIDING_WINDOW = """
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return tostring(tonumber(oldest[2]) + window - now)
end
redis.call('ZADD', KEYS[1], now, ARGV[4])
redis.call('EXPIRE', KEYS[1], math.ceil(window) + 1)
return '-1'
"""


class Limiter(Protocol):
    limit: int

    def hit(self, key: str) -> float | None: ...


class RedisRateLimiter:
    """At most `limit` calls per `window` seconds per key, counted in Redis across processes. When Redis cannot
    be reached the process falls back to its own window (logged) rather than refusing every request."""

    def __init__(self, url: str, limit: int, window: float = 60.0) -> None:
        import redis

        self.limit = limit
        self.window = window
        self._client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
        self._script = self._client.register_script(_SLIDING_WINDOW)
        self._fallback = RateLimiter(limit, window)

    def hit(self, key: str) -> float | None:
        import redis

        member = f"{time.time():.6f}:{secrets.token_hex(4)}"
        try:
            wait = float(self._script(keys=[KEY_PREFIX + key], args=[time.time(), self.window, self.limit, member]))
        except redis.RedisError as exc:
            logger.warning("rate limit: Redis unreachable (%s); counting in this process only", exc)
            return self._fallback.hit(key)
        return None if wait < 0 else max(wait, 0.0)


def make_rate_limiter(settings: Settings) -> Limiter:
    url = settings.broker_url
    if url is not None and url.startswith(("redis://", "rediss://", "unix://")):
        return RedisRateLimiter(url, settings.rate_limit_per_minute)
    return RateLimiter(settings.rate_limit_per_minute)
