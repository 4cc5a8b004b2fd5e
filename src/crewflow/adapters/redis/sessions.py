"""The Redis ``SessionStore``: one hash per user (``crewflow:{tenant}:sessions:{user}``), field = token id,
value = the session (msgspec JSON). Redis 7.0 cannot expire single hash fields, so each value carries its
expiry: reads skip (and delete) expired fields, and the hash itself expires with its longest-lived session."""

from __future__ import annotations

import time
from collections.abc import Callable

import msgspec
from redis.asyncio import Redis

from crewflow.adapters.redis.keys import DEFAULT_PREFIX, sessions_key
from crewflow.ports.sessions import LoginSession

__all__ = ["RedisSessionStore"]


class _Wire(msgspec.Struct, array_like=True, frozen=True):
    jti: str
    user_id: str
    tenant_id: str
    created_at: float
    expires_at: float
    user_agent: str | None = None


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(_Wire).decode

# KEYS: the hash. ARGV: field, value, expiry of the hash (epoch ms). Extends the hash's expiry, never shortens it.
_RECORD = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local at = tonumber(ARGV[3])
local ttl = redis.call('PEXPIRETIME', KEYS[1])
if ttl < 0 or ttl < at then redis.call('PEXPIREAT', KEYS[1], at) end
return 1
"""


def _session(raw: bytes) -> LoginSession | None:
    try:
        w = _decode(raw)
    except msgspec.DecodeError:
        return None
    return LoginSession(w.jti, w.user_id, w.tenant_id, w.created_at, w.expires_at, w.user_agent)


class RedisSessionStore:
    """Implements ``crewflow.ports.sessions.SessionStore``."""

    def __init__(self, redis: Redis, *, prefix: str = DEFAULT_PREFIX, clock: Callable[[], float] = time.time) -> None:
        self.redis = redis
        self.prefix = prefix
        self._clock = clock
        self._record = redis.register_script(_RECORD)

    async def record(self, session: LoginSession) -> None:
        if session.expires_at <= self._clock():
            return
        value = _encode(_Wire(session.jti, session.user_id, session.tenant_id, session.created_at,
                              session.expires_at, session.user_agent))  # fmt: skip
        await self._record(keys=[sessions_key(session.tenant_id, session.user_id, self.prefix)],
                           args=[session.jti, value, int(session.expires_at * 1000)])  # fmt: skip

    async def _live(self, key: str) -> dict[str, LoginSession]:
        now = self._clock()
        live: dict[str, LoginSession] = {}
        stale: list[bytes] = []
        stored: dict[bytes, bytes] = await self.redis.hgetall(key)  # type: ignore[misc]  # redis-py's sync|async union
        for field, raw in stored.items():
            session = _session(raw)
            if session is None or session.expires_at <= now:
                stale.append(field)
            else:
                live[session.jti] = session
        if stale:
            await self.redis.hdel(key, *stale)  # type: ignore[misc, arg-type]
        return live

    async def list_for_user(self, tenant_id: str, user_id: str) -> list[LoginSession]:
        live = await self._live(sessions_key(tenant_id, user_id, self.prefix))
        return sorted(live.values(), key=lambda s: (s.created_at, s.jti), reverse=True)

    async def remove(self, tenant_id: str, user_id: str, jti: str) -> LoginSession | None:
        key = sessions_key(tenant_id, user_id, self.prefix)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hget(key, jti)
            pipe.hdel(key, jti)
            raw, _ = await pipe.execute()
        if raw is None:
            return None
        session = _session(raw)
        return session if session is not None and session.expires_at > self._clock() else None

    async def remove_all(self, tenant_id: str, user_id: str) -> list[LoginSession]:
        key = sessions_key(tenant_id, user_id, self.prefix)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(key)
            pipe.delete(key)
            raw, _ = await pipe.execute()
        now = self._clock()
        sessions = [s for s in map(_session, raw.values()) if s is not None and s.expires_at > now]
        return sorted(sessions, key=lambda s: (s.created_at, s.jti), reverse=True)
