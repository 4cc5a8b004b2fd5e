"""Unit of Work: one transaction over the repositories of one tenant (or of the platform).

    async with uow_factory.for_tenant(tenant_id) as uow:
        await uow.flows.add(...)
        await uow.commit()          # without this, leaving the block rolls everything back

Leaving the block by an exception always rolls back. A unit of work is used once.
"""

from __future__ import annotations

from types import TracebackType
from typing import Protocol, Self

from crewflow.ports.repositories import (
    AgentRepository,
    CrewRepository,
    ExecutionRepository,
    FlowRepository,
    IdempotencyRepository,
    NodeRunRepository,
    ProviderRepository,
    TenantRepository,
    ToolRepository,
    UserRepository,
)
from crewflow.ports.webhooks import WebhookRepository

__all__ = ["PlatformUnitOfWork", "UnitOfWork", "UnitOfWorkFactory"]


class _Transactional(Protocol):
    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    async def commit(self) -> None: ...

    async def rollback(self) -> None: ...


class UnitOfWork(_Transactional, Protocol):
    """The repositories of one tenant, sharing one transaction."""

    @property
    def tenant_id(self) -> str: ...
    @property
    def agents(self) -> AgentRepository: ...
    @property
    def crews(self) -> CrewRepository: ...
    @property
    def flows(self) -> FlowRepository: ...
    @property
    def executions(self) -> ExecutionRepository: ...
    @property
    def node_runs(self) -> NodeRunRepository: ...
    @property
    def providers(self) -> ProviderRepository: ...
    @property
    def tools(self) -> ToolRepository: ...
    @property
    def idempotency(self) -> IdempotencyRepository: ...
    @property
    def webhooks(self) -> WebhookRepository: ...


class PlatformUnitOfWork(_Transactional, Protocol):
    """Platform-wide records (the ``public`` schema): tenants and users."""

    @property
    def tenants(self) -> TenantRepository: ...
    @property
    def users(self) -> UserRepository: ...


class UnitOfWorkFactory(Protocol):
    def for_tenant(self, tenant_id: str) -> UnitOfWork:
        """A new unit of work whose repositories see only this tenant's data."""
        ...

    def platform(self) -> PlatformUnitOfWork: ...

    async def close(self) -> None:
        """Release connections (end of the process)."""
        ...
