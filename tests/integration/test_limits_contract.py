"""One contract per abuse-control port, each run against the in-memory adapter and the Redis one (the real
local server; a key prefix of its own per test, its keys deleted afterwards): the fixed-window rate limiter,
token revocations, and login sessions."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from api_support import bearer, make_user, served_client
from redis.asyncio import Redis

from crewflow.adapters.memory.limits import MemoryRateLimiter, MemoryTokenRevocations
from crewflow.adapters.memory.sessions import MemorySessionStore
from crewflow.adapters.redis import RedisRateLimiter, RedisSessionStore, RedisTokenRevocations, create_redis
from crewflow.bootstrap import build_api_container
from crewflow.domain.tenancy import Role
from crewflow.ports.auth import RateLimiter, TokenRevocations
from crewflow.ports.sessions import LoginSession, SessionStore
from crewflow.settings import Settings

pytestmark = pytest.mark.integration

API = "/api/v1"
REDIS_URL = "redis://127.0.0.1:6379/0"
DAY = 86_400.0  # windows this long never roll over during a test


@dataclass
class Adapters:
    limiter: RateLimiter
    revocations: TokenRevocations
    sessions: SessionStore


@pytest.fixture
async def redis_prefix() -> AsyncIterator[tuple[Redis, str]]:
    client = create_redis(REDIS_URL)
    prefix = f"crewflow-test-{uuid.uuid4().hex[:12]}"
    try:
        yield client, prefix
    finally:
        keys = [k async for k in client.scan_iter(match=f"{prefix}:*", count=500)]
        if keys:
            await client.delete(*keys)
        await client.aclose()


@pytest.fixture(params=["memory", "redis"])
def adapters(request: pytest.FixtureRequest, redis_prefix: tuple[Redis, str]) -> Adapters:
    if request.param == "memory":
        return Adapters(MemoryRateLimiter(), MemoryTokenRevocations(), MemorySessionStore())
    client, prefix = redis_prefix
    return Adapters(RedisRateLimiter(client, prefix=prefix), RedisTokenRevocations(client, prefix=prefix),
                    RedisSessionStore(client, prefix=prefix))  # fmt: skip


def key() -> str:
    return f"login:account:{uuid.uuid4().hex[:12]}"


# -- rate limiter ----------------------------------------------------------------------------------------
async def test_a_key_gets_limit_hits_per_window_counting_down(adapters: Adapters) -> None:
    k = key()
    decisions = [await adapters.limiter.hit(k, 3, DAY) for _ in range(5)]
    assert [d.allowed for d in decisions] == [True, True, True, False, False]
    assert [d.remaining for d in decisions] == [2, 1, 0, 0, 0]
    assert [d.retry_after for d in decisions[:3]] == [0.0, 0.0, 0.0]
    for refused in decisions[3:]:
        assert 0 < refused.retry_after <= DAY  # until the window's end
    assert (await adapters.limiter.hit(key(), 3, DAY)).remaining == 2  # other keys have their own budget


async def test_a_refused_key_is_allowed_again_in_the_next_window(adapters: Adapters) -> None:
    k = key()
    while (decision := await adapters.limiter.hit(k, 2, 0.5)).allowed:
        pass
    assert 0 < decision.retry_after <= 0.5
    await asyncio.sleep(decision.retry_after + 0.05)
    fresh = await adapters.limiter.hit(k, 2, 0.5)
    assert fresh.allowed
    assert fresh.remaining == 1


async def test_concurrent_hits_never_exceed_the_limit(adapters: Adapters) -> None:
    k = key()
    decisions = await asyncio.gather(*(adapters.limiter.hit(k, 10, DAY) for _ in range(40)))
    assert sum(d.allowed for d in decisions) == 10
    assert sorted(d.remaining for d in decisions if d.allowed) == list(range(10))


# -- revocations -----------------------------------------------------------------------------------------
async def test_a_revoked_token_stays_revoked_until_it_would_expire(adapters: Adapters) -> None:
    jti, other = uuid.uuid4().hex, uuid.uuid4().hex
    assert not await adapters.revocations.is_revoked(jti)
    await adapters.revocations.revoke(jti, time.time() + 3600)
    await adapters.revocations.revoke(other, time.time() + 0.3)
    assert await adapters.revocations.is_revoked(jti)
    assert await adapters.revocations.is_revoked(other)
    await asyncio.sleep(0.4)
    assert not await adapters.revocations.is_revoked(other)  # its token has expired anyway
    assert await adapters.revocations.is_revoked(jti)
    await adapters.revocations.revoke(uuid.uuid4().hex, time.time() - 10)  # already expired: harmless


# -- sessions --------------------------------------------------------------------------------------------
def session(tenant: str, user: str, created_at: float, ttl: float = 3600.0,
            agent: str | None = "Firefox") -> LoginSession:  # fmt: skip
    return LoginSession(uuid.uuid4().hex, user, tenant, created_at, created_at + ttl, agent)


async def test_sessions_are_listed_newest_first_per_user_and_tenant(adapters: Adapters) -> None:
    store = adapters.sessions
    now = time.time()
    t, other_tenant = "t" + uuid.uuid4().hex[:10], "t" + uuid.uuid4().hex[:10]
    first, second = session(t, "u1", now - 10), session(t, "u1", now, agent=None)
    theirs = session(other_tenant, "u1", now)  # the same user id in another tenant
    await store.record(first)
    await store.record(second)
    await store.record(session(t, "u2", now))
    await store.record(theirs)
    assert await store.list_for_user(t, "u1") == [second, first]
    assert await store.list_for_user(other_tenant, "u1") == [theirs]
    assert await store.list_for_user(t, "nobody") == []


async def test_removing_sessions_one_or_all(adapters: Adapters) -> None:
    store = adapters.sessions
    now = time.time()
    t = "t" + uuid.uuid4().hex[:10]
    a, b, c = (session(t, "u1", now - i) for i in range(3))
    for s in (a, b, c):
        await store.record(s)
    assert await store.remove("t-other", "u1", a.jti) is None  # another tenant cannot reach it
    assert await store.remove(t, "u2", a.jti) is None  # nor another user
    assert await store.remove(t, "u1", a.jti) == a
    assert await store.remove(t, "u1", a.jti) is None
    assert await store.list_for_user(t, "u1") == [b, c]
    assert sorted(s.jti for s in await store.remove_all(t, "u1")) == sorted([b.jti, c.jti])
    assert await store.list_for_user(t, "u1") == []
    assert await store.remove_all(t, "u1") == []


async def test_sessions_are_forgotten_when_they_expire(adapters: Adapters) -> None:
    store = adapters.sessions
    now = time.time()
    t = "t" + uuid.uuid4().hex[:10]
    short, long = session(t, "u1", now, ttl=0.3), session(t, "u1", now - 1)
    await store.record(short)
    await store.record(long)
    await store.record(session(t, "u1", now - 100, ttl=50))  # already over: not kept
    assert {s.jti for s in await store.list_for_user(t, "u1")} == {short.jti, long.jti}
    await asyncio.sleep(0.4)
    assert await store.list_for_user(t, "u1") == [long]
    assert await store.remove(t, "u1", short.jti) is None


async def test_redis_session_hash_expires_with_its_longest_session(redis_prefix: tuple[Redis, str]) -> None:
    client, prefix = redis_prefix
    store = RedisSessionStore(client, prefix=prefix)
    now = time.time()
    t = "t" + uuid.uuid4().hex[:10]
    await store.record(session(t, "u1", now, ttl=100))
    await store.record(session(t, "u1", now, ttl=50))  # a shorter one does not shorten the hash's life
    ttl = await client.pttl(f"{prefix}:{t}:sessions:u1")
    assert 50_000 < ttl <= 100_000


# -- sessions through the API ------------------------------------------------------------------------------
async def test_login_records_sessions_that_can_be_listed_and_revoked(
    tmp_path: Path, adapters: Adapters,
) -> None:
    settings = Settings(data_dir=str(tmp_path), extra={"CREWFLOW_JWT_SECRET": "x" * 40})
    container = await build_api_container(settings, bcrypt_rounds=4)
    container.revocations = adapters.revocations
    container.sessions = adapters.sessions  # type: ignore[attr-defined]  # what bootstrap wires
    try:
        tenant_id, _ = await make_user(container, Role.MEMBER)
        async with container.uow_factory.platform() as uow:
            user = (await uow.users.list_for_tenant(tenant_id, None, 10)).items[0]
        email = user.email
        _, stranger = await make_user(container, Role.ADMIN)
        credentials = {"email": email, "password": "pw-123456789"}
        async with served_client(container) as client:  # the server in this loop: it shares the Redis client
            laptop = (await client.post(f"{API}/auth/login", json=credentials,
                                        headers={"User-Agent": "Laptop"})).json()["access_token"]  # fmt: skip
            phone = (await client.post(f"{API}/auth/login", json=credentials,
                                       headers={"User-Agent": "Phone"})).json()["access_token"]  # fmt: skip
            listed = (await client.get(f"{API}/auth/sessions", headers=bearer(laptop))).json()
            assert [(s["user_agent"], s["current"]) for s in listed] == [("Phone", False), ("Laptop", True)]
            phone_jti = listed[0]["jti"]
            phone_session = f"{API}/auth/sessions/{phone_jti}"
            assert (await client.delete(phone_session, headers=bearer(stranger))).status_code == 404
            assert (await client.get(f"{API}/auth/me", headers=bearer(phone))).status_code == 200
            assert (await client.delete(phone_session, headers=bearer(laptop))).status_code == 204
            assert (await client.get(f"{API}/auth/me", headers=bearer(phone))).status_code == 401
            assert (await client.delete(phone_session, headers=bearer(laptop))).status_code == 404
            left = (await client.get(f"{API}/auth/sessions", headers=bearer(laptop))).json()
            assert [s["user_agent"] for s in left] == ["Laptop"]
            assert (await client.post(f"{API}/auth/logout", headers=bearer(laptop))).status_code == 204
        assert await adapters.sessions.list_for_user(tenant_id, user.id) == []  # logout forgot it
    finally:
        await container.aclose()
