"""The in-memory ``SessionStore`` of the embedded deployment (one process)."""

from __future__ import annotations

import time
from collections.abc import Callable

from crewflow.ports.sessions import LoginSession

__all__ = ["MemorySessionStore"]


class MemorySessionStore:
    """Sessions per (tenant, user); expired ones are dropped when their user's sessions are read or written."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._sessions: dict[tuple[str, str], dict[str, LoginSession]] = {}

    def _live(self, tenant_id: str, user_id: str) -> dict[str, LoginSession]:
        key = (tenant_id, user_id)
        now = self._clock()
        sessions = {jti: s for jti, s in self._sessions.get(key, {}).items() if s.expires_at > now}
        if sessions:
            self._sessions[key] = sessions
        else:
            self._sessions.pop(key, None)
        return sessions

    async def record(self, session: LoginSession) -> None:
        if session.expires_at <= self._clock():
            return
        sessions = self._live(session.tenant_id, session.user_id)
        sessions[session.jti] = session
        self._sessions[(session.tenant_id, session.user_id)] = sessions

    async def list_for_user(self, tenant_id: str, user_id: str) -> list[LoginSession]:
        return sorted(self._live(tenant_id, user_id).values(), key=lambda s: (s.created_at, s.jti), reverse=True)

    async def remove(self, tenant_id: str, user_id: str, jti: str) -> LoginSession | None:
        sessions = self._live(tenant_id, user_id)
        removed = sessions.pop(jti, None)
        if not sessions:
            self._sessions.pop((tenant_id, user_id), None)
        return removed

    async def remove_all(self, tenant_id: str, user_id: str) -> list[LoginSession]:
        sessions = self._live(tenant_id, user_id)
        self._sessions.pop((tenant_id, user_id), None)
        return list(sessions.values())
