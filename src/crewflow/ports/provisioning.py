"""Creating and removing a tenant's storage (a PostgreSQL schema, a SQLite file) with its platform row."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from crewflow.domain.tenancy import Tenant

__all__ = ["Provisioned", "TenantProvisioner"]


@dataclass(frozen=True, slots=True)
class Provisioned:
    tenant: Tenant
    schema: str
    from_spare: bool


class TenantProvisioner(Protocol):
    async def register(self, tenant: Tenant) -> Provisioned:
        """Create the tenant's storage and its ``public.tenants`` row, all or nothing; ``Conflict`` if the id,
        slug or schema is taken."""
        ...

    async def drop(self, tenant_id: str) -> bool:
        """Remove the tenant row, its users and its storage; False if there was nothing to remove."""
        ...

    async def list_tenants(self) -> list[Tenant]: ...

    async def aclose(self) -> None: ...
