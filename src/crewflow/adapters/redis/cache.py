"""The Redis ``Cache``: one string key per entry (``crewflow:{namespace}:cache:{key}``) with a millisecond
TTL, so entries expire in Redis itself and every process sees the same ones."""

from __future__ import annotations

from redis.asyncio import Redis

from crewflow.adapters.redis.keys import DEFAULT_PREFIX, cache_key

__all__ = ["RedisCache"]


class RedisCache:
    """Implements ``crewflow.ports.cache.Cache``. ``default_ttl`` (seconds) applies when ``set`` gets none;
    ``None`` keeps such entries until deleted (or evicted by Redis' ``maxmemory`` policy)."""

    def __init__(self, redis: Redis, *, prefix: str = DEFAULT_PREFIX, default_ttl: float | None = 3600.0) -> None:
        self.redis = redis
        self.prefix = prefix
        self.default_ttl = default_ttl

    async def get(self, namespace: str, key: str) -> bytes | None:
        value = await self.redis.get(cache_key(namespace, key, self.prefix))
        return None if value is None else bytes(value)

    async def set(self, namespace: str, key: str, value: bytes, ttl: float | None = None) -> None:
        ttl = self.default_ttl if ttl is None else ttl
        name = cache_key(namespace, key, self.prefix)
        if ttl is None:
            await self.redis.set(name, value)
        elif ttl <= 0:
            await self.redis.delete(name)  # already expired
        else:
            await self.redis.set(name, value, px=max(1, int(ttl * 1000)))

    async def delete(self, namespace: str, key: str) -> None:
        await self.redis.delete(cache_key(namespace, key, self.prefix))
