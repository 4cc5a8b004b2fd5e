"""Authentication and abuse-control ports: password hashing, tokens, revocations, rate limits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from crewflow.domain.auth import Identity
from crewflow.domain.tenancy import Role

__all__ = ["IssuedToken", "PasswordHasher", "RateDecision", "RateLimiter", "TokenRevocations", "TokenService"]


class PasswordHasher(Protocol):
    def hash(self, password: str) -> str: ...

    def verify(self, password: str, hashed: str) -> bool:
        """Constant-time with respect to the password; ``hashed`` may be the dummy hash."""
        ...

    @property
    def dummy_hash(self) -> str:
        """A valid hash of a random password, verified against when a user does not exist, so a login
        for an unknown e-mail takes as long as one for a known e-mail."""
        ...


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: str
    jti: str
    expires_at: float


class TokenService(Protocol):
    def issue(self, user_id: str, tenant_id: str, role: Role) -> IssuedToken: ...

    def verify(self, token: str) -> Identity:
        """Raise ``Unauthenticated`` unless signature, algorithm, issuer, audience and expiry all check."""
        ...


class TokenRevocations(Protocol):
    async def revoke(self, jti: str, expires_at: float) -> None:
        """Remember ``jti`` as revoked until the token would have expired anyway."""
        ...

    async def is_revoked(self, jti: str) -> bool: ...


@dataclass(frozen=True, slots=True)
class RateDecision:
    allowed: bool
    remaining: int
    retry_after: float = 0.0


class RateLimiter(Protocol):
    async def hit(self, key: str, limit: int, window: float) -> RateDecision:
        """Count one request under ``key``; at most ``limit`` per ``window`` seconds."""
        ...
