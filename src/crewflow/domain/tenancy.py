"""Tenants, users and the role/permission matrix of the platform."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from crewflow.domain.errors import PermissionDenied

__all__ = ["PERMISSIONS", "Permission", "Role", "Tenant", "User", "schema_name_for"]


class Permission(StrEnum):
    AGENTS_READ = "agents:read"
    AGENTS_WRITE = "agents:write"
    FLOWS_READ = "flows:read"
    FLOWS_WRITE = "flows:write"
    FLOWS_EXECUTE = "flows:execute"
    EXECUTIONS_READ = "executions:read"
    USERS_MANAGE = "users:manage"
    PROVIDERS_READ = "providers:read"
    PROVIDERS_WRITE = "providers:write"
    TOOLS_READ = "tools:read"
    TOOLS_WRITE = "tools:write"
    AUDIT_READ = "audit:read"


class Role(StrEnum):
    ADMIN = "admin"
    MEMBER = "member"
    VIEWER = "viewer"

    def allows(self, permission: Permission | str) -> bool:
        granted = PERMISSIONS[self]
        return "*" in granted or str(permission) in granted

    def require(self, permission: Permission | str) -> None:
        if not self.allows(permission):
            raise PermissionDenied(str(permission))


# The seed's matrix, verbatim: admin has everything, member reads/writes agents and flows and executes
# flows, viewer only reads. Permissions beyond the seed's list (users, providers, tools, audit) are
# therefore admin-only.
PERMISSIONS: dict[Role, frozenset[str]] = {
    Role.ADMIN: frozenset({"*"}),
    Role.MEMBER: frozenset(
        {
            Permission.AGENTS_READ,
            Permission.AGENTS_WRITE,
            Permission.FLOWS_READ,
            Permission.FLOWS_WRITE,
            Permission.FLOWS_EXECUTE,
            Permission.EXECUTIONS_READ,
        }
    ),
    Role.VIEWER: frozenset({Permission.AGENTS_READ, Permission.FLOWS_READ, Permission.EXECUTIONS_READ}),
}

_TENANT_ID = re.compile(r"^[a-z0-9-]{1,55}$")
_SLUG = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,46}[a-z0-9])?$")


def schema_name_for(tenant_id: str) -> str:
    """The PostgreSQL schema of a tenant: ``tenant_<id>`` with ``-`` written ``_``.

    The mapping is one-to-one (two tenants never share a schema): ids are lowercase letters, digits and
    ``-`` only (a uuid, its hex, a slug); anything else, ``_`` included, is refused rather than folded."""
    if not _TENANT_ID.fullmatch(tenant_id):
        raise ValueError(f"tenant id {tenant_id!r} cannot name a schema (1-55 of a-z, 0-9, '-')")
    return f"tenant_{tenant_id.replace('-', '_')}"


@dataclass(frozen=True, slots=True)
class Tenant:
    id: str
    slug: str
    name: str
    db_schema: str
    created_at: datetime

    def __post_init__(self) -> None:
        if not _SLUG.fullmatch(self.slug):
            raise ValueError(
                f"tenant slug {self.slug!r} must be 1-48 lowercase letters, digits or '-', "
                "not starting or ending with '-'"
            )


@dataclass(frozen=True, slots=True)
class User:
    id: str
    tenant_id: str
    email: str
    role: Role
    password_hash: str = ""
    is_active: bool = True
    created_at: datetime | None = None

    def can(self, permission: Permission | str) -> bool:
        return self.is_active and self.role.allows(permission)
