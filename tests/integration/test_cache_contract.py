"""One contract for every ``Cache`` adapter: in-memory and Redis (the real local server, a key prefix of its
own per test, its keys deleted afterwards)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from crewflow.adapters.cache.memory import MemoryCache
from crewflow.adapters.redis import RedisCache, create_redis
from crewflow.adapters.redis.keys import cache_key
from crewflow.ports.cache import Cache

pytestmark = pytest.mark.integration

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture(params=["memory", "redis"])
async def cache(request: pytest.FixtureRequest) -> AsyncIterator[Cache]:
    if request.param == "memory":
        yield MemoryCache(default_ttl=60.0)
        return
    client = create_redis(REDIS_URL)
    prefix = f"crewflow-test-{uuid.uuid4().hex[:12]}"
    try:
        yield RedisCache(client, prefix=prefix, default_ttl=60.0)
    finally:
        keys = [k async for k in client.scan_iter(match=f"{prefix}:*", count=500)]
        if keys:
            await client.delete(*keys)
        await client.aclose()


def ns() -> str:
    return "t" + uuid.uuid4().hex[:12]


async def test_get_returns_what_was_set_and_none_for_a_missing_key(cache: Cache) -> None:
    space = ns()
    assert await cache.get(space, "k") is None
    await cache.set(space, "k", b"\x00binary\xff")
    assert await cache.get(space, "k") == b"\x00binary\xff"
    await cache.set(space, "k", b"replaced")
    assert await cache.get(space, "k") == b"replaced"


async def test_namespaces_keep_equal_keys_apart(cache: Cache) -> None:
    a, b = ns(), ns()
    await cache.set(a, "flow:f1:v1", b"of a")
    await cache.set(b, "flow:f1:v1", b"of b")
    await cache.set(f"llm:{a}", "flow:f1:v1", b"llm of a")
    # namespace "x:y" + key "z" is not namespace "x" + key "y:z"
    await cache.set(f"{a}:y", "z", b"split one way")
    assert await cache.get(a, "y:z") is None
    assert await cache.get(a, "flow:f1:v1") == b"of a"
    assert await cache.get(b, "flow:f1:v1") == b"of b"
    assert await cache.get(f"llm:{a}", "flow:f1:v1") == b"llm of a"
    await cache.delete(a, "flow:f1:v1")
    assert await cache.get(a, "flow:f1:v1") is None
    assert await cache.get(b, "flow:f1:v1") == b"of b"


async def test_an_entry_expires_after_its_ttl(cache: Cache) -> None:
    space = ns()
    await cache.set(space, "short", b"v", ttl=0.2)
    await cache.set(space, "long", b"v", ttl=60)
    assert await cache.get(space, "short") == b"v"
    await asyncio.sleep(0.3)
    assert await cache.get(space, "short") is None
    assert await cache.get(space, "long") == b"v"


async def test_delete_of_a_missing_key_is_harmless(cache: Cache) -> None:
    space = ns()
    await cache.delete(space, "never-set")
    await cache.set(space, "k", b"v")
    await cache.delete(space, "k")
    await cache.delete(space, "k")
    assert await cache.get(space, "k") is None


def test_redis_cache_keys_of_a_tenant_sit_under_the_tenant() -> None:
    assert cache_key("t1", "flow:f:v2") == "crewflow:t1:cache::flow:f:v2"
    assert cache_key("llm:t1", "abc") == "crewflow:t1:cache:llm:abc"
    assert cache_key("not a tenant!", "abc") == "crewflow:cache:not a tenant!:abc"
    assert cache_key("a:b:t1", "k") == "crewflow:t1:cache:a%3Ab:k"
