"""Per-key request rate limits: a token bucket of ``per_minute`` tokens refilled continuously.

The bucket lives in Redis when the broker is Redis (one atomic Lua script, so every API
process and machine shares it), in process memory otherwise (the embedded single-machine
set-up, where gunicorn's processes then each allow the rate: documented in docs/security.md).
If Redis cannot be reached the limiter fails open: a rate limit protects capacity, and an
outage of the broker must not also take the API down.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger(__name__)

WARN_EVERY_S = 60.0
RETRY_REDIS_AFTER_S = 5.0


@dataclass(frozen=True)
class Decision:
    """The outcome of one request against its key's bucket."""

    allowed: bool
    limit: int
    remaining: int
    # Seconds until the bucket is full again, and until one request is allowed.
    reset_seconds: float
    retry_after_seconds: float


class RateLimiter(Protocol):
    def hit(self, key: str) -> Decision: ...


def _decision(allowed: bool, tokens: float, per_minute: int) -> Decision:
    rate = per_minute / 60.0
    return Decision(
        allowed=allowed,
        limit=per_minute,
        remaining=max(int(tokens), 0),
        reset_seconds=max(per_minute - tokens, 0.0) / rate,
        retry_after_seconds=0.0 if allowed else max(1.0 - tokens, 0.0) / rate,
    )


class MemoryLimiter:
    """Buckets in this process (thread-safe)."""

    def __init__(self, per_minute: int, clock=time.monotonic):
        self.per_minute = per_minute
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}

    def hit(self, key: str) -> Decision:
        rate = self.per_minute / 60.0
        now = self._clock()
        with self._lock:
            tokens, stamp = self._buckets.get(key, (float(self.per_minute), now))
            tokens = min(float(self.per_minute), tokens + max(now - stamp, 0.0) * rate)
            allowed = tokens >= 1.0
            if allowed:
                tokens -= 1.0
            self._buckets[key] = (tokens, now)
            if len(self._buckets) > 100_000:  # forget idle keys (their buckets are full)
                self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < 60.0}
        return _decision(allowed, tokens, self.per_minute)


# KEYS[1] bucket; ARGV: per_minute, now (seconds, float). Returns {allowed, tokens*1000}:
# Lua numbers become integers on the way out, so tokens travel in thousandths.
_BUCKET_LUA = """
local capacity = tonumber(ARGV[1])
local rate = capacity / 60.0
local now = tonumber(ARGV[2])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'stamp')
local tokens = tonumber(state[1])
local stamp = tonumber(state[2])
if tokens == nil or stamp == nil then
  tokens = capacity
  stamp = now
end
local elapsed = now - stamp
if elapsed < 0 then elapsed = 0 end
tokens = math.min(capacity, tokens + elapsed * rate)
local allowed = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'stamp', tostring(now))
redis.call('EXPIRE', KEYS[1], 61)
return {allowed, math.floor(tokens * 1000)}
"""


class RedisLimiter:
    """Buckets in Redis, shared by every API process; fails open when Redis is down."""

    PREFIX = "dorado:ratelimit:"

    def __init__(self, per_minute: int, url: str, clock=time.time):
        import redis  # the client side of the broker; only needed when Redis is configured

        self.per_minute = per_minute
        self._clock = clock
        self._client = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        self._script = self._client.register_script(_BUCKET_LUA)
        self._last_warning = 0.0
        self._skip_until = 0.0

    def hit(self, key: str) -> Decision:
        if time.monotonic() < self._skip_until:
            return self._open()
        try:
            allowed, milli = self._script(
                keys=[self.PREFIX + key], args=[self.per_minute, repr(self._clock())]
            )
        except Exception as exc:  # redis errors, timeouts: fail open
            now = time.monotonic()
            # Do not make every request wait for a timeout while Redis is away.
            self._skip_until = now + RETRY_REDIS_AFTER_S
            if now - self._last_warning > WARN_EVERY_S:
                self._last_warning = now
                log.warning(
                    "rate limiter: Redis unreachable (%s); requests are not limited "
                    "until it is back",
                    exc,
                )
            return self._open()
        return _decision(bool(allowed), int(milli) / 1000.0, self.per_minute)

    def _open(self) -> Decision:
        return Decision(True, self.per_minute, self.per_minute, 0.0, 0.0)


def open_limiter(per_minute: int, broker_url: str) -> RateLimiter | None:
    """The limiter for these settings; None when limiting is off (``per_minute`` <= 0)."""
    if per_minute <= 0:
        return None
    if broker_url.startswith(("redis://", "rediss://")):
        return RedisLimiter(per_minute, broker_url)
    return MemoryLimiter(per_minute)


def header_seconds(seconds: float) -> str:
    """Seconds for a ``retry-after`` header: whole, rounded up, at least 1."""
    return str(max(1, math.ceil(seconds)))
