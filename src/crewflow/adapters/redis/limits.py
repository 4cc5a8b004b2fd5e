"""Redis rate limiter and token revocations, shared by every API instance.

``RedisRateLimiter`` has the in-memory limiter's semantics (``crewflow.adapters.memory.limits``): fixed
windows aligned to the clock (Redis' clock, so every instance agrees), at most ``limit`` hits per window,
``remaining`` after this hit, and ``retry_after`` = time left in the window when refused. One Lua script
per hit keeps the read-modify-write atomic across instances. A key's counter expires with its window.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from redis.asyncio import Redis

from crewflow.adapters.redis.keys import DEFAULT_PREFIX, rate_limit_key, revoked_key
from crewflow.ports.auth import RateDecision

__all__ = ["RedisRateLimiter", "RedisTokenRevocations"]

# KEYS: the counter. ARGV: window (ms). Returns {count in the current window, ms until the window ends}.
_HIT = """
local window = tonumber(ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local start = now - (now % window)
local current = redis.call('HMGET', KEYS[1], 's', 'n')
local count = 0
if current[1] and tonumber(current[1]) == start then count = tonumber(current[2]) end
count = count + 1
redis.call('HSET', KEYS[1], 's', start, 'n', count)
redis.call('PEXPIREAT', KEYS[1], start + window)
return {count, start + window - now}
"""


class RedisRateLimiter:
    """Implements ``crewflow.ports.auth.RateLimiter``; windows are whole milliseconds (at least 1 ms)."""

    def __init__(self, redis: Redis, *, prefix: str = DEFAULT_PREFIX) -> None:
        self.redis = redis
        self.prefix = prefix
        self._hit = redis.register_script(_HIT)

    async def hit(self, key: str, limit: int, window: float) -> RateDecision:
        if not window > 0:
            raise ValueError("window must be positive")
        window_ms = max(1, round(window * 1000))
        count, left_ms = await self._hit(keys=[rate_limit_key(key, self.prefix)], args=[window_ms])
        count, left_ms = int(count), int(left_ms)
        if count > limit:
            return RateDecision(False, 0, left_ms / 1000)
        return RateDecision(True, limit - count)


class RedisTokenRevocations:
    """Implements ``crewflow.ports.auth.TokenRevocations``: one key per revoked id, expiring when the token
    would have (a revocation of an already expired token stores nothing)."""

    def __init__(self, redis: Redis, *, prefix: str = DEFAULT_PREFIX, clock: Callable[[], float] = time.time) -> None:
        self.redis = redis
        self.prefix = prefix
        self._clock = clock

    async def revoke(self, jti: str, expires_at: float) -> None:
        ttl_ms = int((expires_at - self._clock()) * 1000)
        if ttl_ms > 0:
            await self.redis.set(revoked_key(jti, self.prefix), b"1", px=ttl_ms)

    async def is_revoked(self, jti: str) -> bool:
        return bool(await self.redis.exists(revoked_key(jti, self.prefix)))
