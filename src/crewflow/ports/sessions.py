"""Login sessions: which tokens a user holds, so they can be listed and revoked one by one or all at once.

A session is recorded when a token is issued at login and forgotten at logout or revocation; it is kept at
most ``SESSION_TTL`` (24 h, the session cookie's life) or until its token expires, whichever is first.
Revoking a session also revokes its token id in ``TokenRevocations``: that is the application's job
(``crewflow.application.auth``); a store only remembers sessions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

__all__ = ["SESSION_TTL", "LoginSession", "SessionStore"]

SESSION_TTL = 24 * 3600.0


@dataclass(frozen=True, slots=True)
class LoginSession:
    jti: str
    user_id: str
    tenant_id: str
    created_at: float  # epoch seconds
    expires_at: float  # epoch seconds: the session is gone afterwards
    user_agent: str | None = None


class SessionStore(Protocol):
    async def record(self, session: LoginSession) -> None:
        """Remember a session until its ``expires_at``; recording the same ``jti`` again replaces it."""
        ...

    async def list_for_user(self, tenant_id: str, user_id: str) -> list[LoginSession]:
        """The user's live sessions, newest first."""
        ...

    async def remove(self, tenant_id: str, user_id: str, jti: str) -> LoginSession | None:
        """Forget one session of the user; the session, or None when the user has no live session ``jti``."""
        ...

    async def remove_all(self, tenant_id: str, user_id: str) -> list[LoginSession]:
        """Forget every session of the user; the live ones that were forgotten."""
        ...
