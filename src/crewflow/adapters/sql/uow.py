"""SQL units of work: one connection and one transaction each, rolled back unless ``commit()`` is called."""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING, Self

from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from crewflow.adapters.sql.engine import SqlDatabase, open_database, tenant_schema
from crewflow.adapters.sql.repositories import (
    Session,
    SqlAgentRepository,
    SqlCrewRepository,
    SqlExecutionRepository,
    SqlFlowRepository,
    SqlIdempotencyRepository,
    SqlNodeRunRepository,
    SqlProviderRepository,
    SqlTenantRepository,
    SqlToolRepository,
    SqlUserRepository,
)
from crewflow.adapters.sql.webhooks import SqlWebhookRepository

__all__ = ["SqlPlatformUnitOfWork", "SqlUnitOfWork", "SqlUnitOfWorkFactory", "build_uow_factory"]


class _SqlTransaction:
    """Opens its transaction on ``__aenter__``; ``commit()``/``rollback()`` end it, and so does leaving the
    block (rolling back). It cannot be reused, and repositories refuse to work once it has ended."""

    def __init__(self, database: SqlDatabase) -> None:
        self._database = database
        self._session = Session(database.dialect_name)
        self._entered = False

    async def _begin(self) -> AsyncConnection:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        if self._entered:
            raise RuntimeError("a unit of work can be entered only once; ask the factory for a new one")
        self._entered = True
        self._session.attach(await self._begin())
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._end(commit=False)

    async def commit(self) -> None:
        await self._end(commit=True)

    async def rollback(self) -> None:
        await self._end(commit=False)

    async def _end(self, *, commit: bool) -> None:
        conn = self._session.detach()
        if conn is None:
            return
        try:
            if commit:
                await conn.commit()
            else:
                try:
                    await conn.rollback()
                except DBAPIError:
                    await conn.invalidate()  # the connection is broken: never hand it out again
        finally:
            await conn.close()


class SqlUnitOfWork(_SqlTransaction):
    def __init__(self, database: SqlDatabase, tenant_id: str) -> None:
        tenant_schema(tenant_id)  # reject an unusable tenant id before any I/O
        super().__init__(database)
        self._tenant_id = tenant_id
        s = self._session
        self._agents = SqlAgentRepository(s)
        self._crews = SqlCrewRepository(s)
        self._flows = SqlFlowRepository(s)
        self._executions = SqlExecutionRepository(s)
        self._node_runs = SqlNodeRunRepository(s)
        self._providers = SqlProviderRepository(s)
        self._tools = SqlToolRepository(s)
        self._idempotency = SqlIdempotencyRepository(s)
        self._webhooks = SqlWebhookRepository(s)

    async def _begin(self) -> AsyncConnection:
        return await self._database.begin_tenant(self._tenant_id)

    @property
    def connection(self) -> AsyncConnection:
        """The open connection (for SQL adapters that join this transaction, e.g. the SQL log store)."""
        return self._session.conn

    @property
    def tenant_id(self) -> str:
        return self._tenant_id

    @property
    def agents(self) -> SqlAgentRepository:
        return self._agents

    @property
    def crews(self) -> SqlCrewRepository:
        return self._crews

    @property
    def flows(self) -> SqlFlowRepository:
        return self._flows

    @property
    def executions(self) -> SqlExecutionRepository:
        return self._executions

    @property
    def node_runs(self) -> SqlNodeRunRepository:
        return self._node_runs

    @property
    def providers(self) -> SqlProviderRepository:
        return self._providers

    @property
    def tools(self) -> SqlToolRepository:
        return self._tools

    @property
    def idempotency(self) -> SqlIdempotencyRepository:
        return self._idempotency

    @property
    def webhooks(self) -> SqlWebhookRepository:
        return self._webhooks


class SqlPlatformUnitOfWork(_SqlTransaction):
    def __init__(self, database: SqlDatabase) -> None:
        super().__init__(database)
        self._tenants = SqlTenantRepository(self._session)
        self._users = SqlUserRepository(self._session)

    async def _begin(self) -> AsyncConnection:
        return await self._database.begin_platform()

    @property
    def tenants(self) -> SqlTenantRepository:
        return self._tenants

    @property
    def users(self) -> SqlUserRepository:
        return self._users


class SqlUnitOfWorkFactory:
    """Implements ``crewflow.ports.uow.UnitOfWorkFactory`` over a ``SqlDatabase``."""

    def __init__(self, database: SqlDatabase) -> None:
        self.database = database

    def for_tenant(self, tenant_id: str) -> SqlUnitOfWork:
        return SqlUnitOfWork(self.database, tenant_id)

    def platform(self) -> SqlPlatformUnitOfWork:
        return SqlPlatformUnitOfWork(self.database)

    async def create_platform_schema(self) -> None:
        await self.database.create_platform_schema()

    async def create_tenant_storage(self, tenant_id: str) -> None:
        """Create the tenant's schema (PostgreSQL) or database file (SQLite) with every tenant table."""
        await self.database.create_tenant(tenant_id)

    async def drop_tenant_storage(self, tenant_id: str) -> None:
        await self.database.drop_tenant(tenant_id)

    async def close(self) -> None:
        await self.database.dispose()


def build_uow_factory(database_url: str, *, pool_size: int = 20) -> SqlUnitOfWorkFactory:
    """The composition root's entry point: ``postgresql+asyncpg://…`` or ``sqlite+aiosqlite:///path.db``."""
    return SqlUnitOfWorkFactory(open_database(database_url, pool_size=pool_size))


if TYPE_CHECKING:  # the adapters implement the ports (checked by mypy, no runtime cost)
    from crewflow.ports.uow import PlatformUnitOfWork, UnitOfWork, UnitOfWorkFactory

    def _implements(f: SqlUnitOfWorkFactory, u: SqlUnitOfWork, p: SqlPlatformUnitOfWork) -> None:
        _f: UnitOfWorkFactory = f
        _u: UnitOfWork = u
        _p: PlatformUnitOfWork = p
