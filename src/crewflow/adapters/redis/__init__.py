"""Redis adapters of the production deployment: the event bus (live fan-out and a short replay log), the
replay-first log store wrapper, the cache, rate limits, token revocations and login sessions. Every key is
built in ``keys``; every adapter shares the one client of ``build_redis_adapters``."""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis

from crewflow.adapters.redis.bus import RedisEventBus, RedisSubscription
from crewflow.adapters.redis.cache import RedisCache
from crewflow.adapters.redis.client import create_redis
from crewflow.adapters.redis.keys import DEFAULT_PREFIX
from crewflow.adapters.redis.limits import RedisRateLimiter, RedisTokenRevocations
from crewflow.adapters.redis.replay import ReplayFirstLogStore
from crewflow.adapters.redis.sessions import RedisSessionStore
from crewflow.ports.logstore import LogStore

__all__ = [
    "RedisAdapters",
    "RedisCache",
    "RedisEventBus",
    "RedisRateLimiter",
    "RedisSessionStore",
    "RedisSubscription",
    "RedisTokenRevocations",
    "ReplayFirstLogStore",
    "build_redis_adapters",
    "create_redis",
]


@dataclass(frozen=True, slots=True)
class RedisAdapters:
    redis: Redis
    bus: RedisEventBus
    cache: RedisCache
    limiter: RedisRateLimiter
    revocations: RedisTokenRevocations
    sessions: RedisSessionStore
    prefix: str = DEFAULT_PREFIX

    def replay_first(self, durable: LogStore) -> ReplayFirstLogStore:
        """``durable`` with replays served from the bus' streams while they cover them (WebSocket watches)."""
        return ReplayFirstLogStore(self.redis, durable, prefix=self.prefix)

    async def aclose(self) -> None:
        """End the bus' subscriptions, then close the client's connections."""
        try:
            await self.bus.aclose()
        finally:
            await self.redis.aclose()


def build_redis_adapters(url: str, *, prefix: str = DEFAULT_PREFIX, max_connections: int = 64,
                         bus_max_queue: int = 1000, stream_maxlen: int = 10_000,
                         retention_after_end: float = 600.0,
                         cache_default_ttl: float | None = 3600.0) -> RedisAdapters:  # fmt: skip
    """Every Redis adapter over one client for ``url``. Nothing connects until first used."""
    redis = create_redis(url, max_connections=max_connections)
    return RedisAdapters(
        redis=redis,
        bus=RedisEventBus(redis, prefix=prefix, max_queue=bus_max_queue, stream_maxlen=stream_maxlen,
                          retention_after_end=retention_after_end),
        cache=RedisCache(redis, prefix=prefix, default_ttl=cache_default_ttl),
        limiter=RedisRateLimiter(redis, prefix=prefix),
        revocations=RedisTokenRevocations(redis, prefix=prefix),
        sessions=RedisSessionStore(redis, prefix=prefix),
        prefix=prefix,
    )
