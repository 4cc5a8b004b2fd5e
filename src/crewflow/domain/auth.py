"""Who is calling: the identity a verified token carries, and the errors of authentication."""

from __future__ import annotations

from dataclasses import dataclass

from crewflow.domain.errors import DomainError
from crewflow.domain.tenancy import Permission, Role

__all__ = ["Identity", "RateLimited", "Unauthenticated"]


@dataclass(frozen=True, slots=True)
class Identity:
    """The caller of a request. The tenant comes from here only, never from a path or a body."""

    user_id: str
    tenant_id: str
    role: Role
    jti: str
    expires_at: float

    def can(self, permission: Permission | str) -> bool:
        return self.role.allows(permission)


class Unauthenticated(DomainError):
    """No credentials, or credentials that do not verify (bad signature, expired, revoked, unknown user).
    The message is deliberately generic: it never says which check failed to an attacker."""

    def __init__(self, reason: str = "authentication required") -> None:
        super().__init__(reason)


class RateLimited(DomainError):
    def __init__(self, retry_after: float, what: str = "requests") -> None:
        self.retry_after = retry_after
        super().__init__(f"too many {what}; retry after {max(1, round(retry_after))}s")
