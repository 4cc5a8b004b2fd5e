"""Databases: how a transaction is scoped to one tenant, on PostgreSQL and on SQLite (ADR 0005).

- PostgreSQL: one schema ``tenant_<id>`` per tenant. A tenant transaction starts with
  ``set_config('search_path', '"tenant_<id>"', true)`` (``SET LOCAL``): the scope ends with the transaction,
  so nothing leaks to the next user of a pooled connection and PgBouncer transaction pooling is safe.
  Statements stay textually identical across tenants, so asyncpg's prepared-statement cache keeps hitting
  with thousands of tenants (schema-qualified SQL would make every tenant a new statement and thrash it).
  ``public`` is not on the tenant search path: platform tables are always schema-qualified.
- SQLite: one database file per tenant next to the main file (``<main>.tenants/tenant_<id>.db``), opened
  through its own small engine; the main file holds the platform tables (``public`` is mapped to it).

``SqlDatabase.tenant_transaction`` / ``platform_transaction`` give other SQL adapters (the SQL log store,
migrations) the same scoping as the unit of work.
"""

from __future__ import annotations

import asyncio
import re
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from crewflow.adapters.sql.tables import PUBLIC, PUBLIC_SCHEMA, TENANT
from crewflow.domain.errors import Conflict, NotFound
from crewflow.domain.tenancy import schema_name_for

__all__ = [
    "PostgresDatabase",
    "SqlDatabase",
    "SqliteDatabase",
    "create_tenant_schema",
    "drop_tenant_schema",
    "open_database",
    "tenant_schema",
]

_SCHEMA = re.compile(r"^tenant_[a-z0-9_]{1,55}$")


def tenant_schema(tenant_id: str) -> str:
    """The validated schema name of a tenant (``ValueError`` if the id cannot name one safely)."""
    schema = schema_name_for(tenant_id)
    if not _SCHEMA.match(schema):  # defence in depth: this name is spliced into DDL and search_path
        raise ValueError(f"tenant id {tenant_id!r} cannot name a schema")
    return schema


def _quoted(engine: AsyncEngine | AsyncConnection, schema: str) -> str:
    return engine.dialect.identifier_preparer.quote_identifier(schema)


class SqlDatabase(ABC):
    """A relational database holding the platform tables and one copy of the tenant tables per tenant."""

    dialect_name: str

    @abstractmethod
    async def begin_tenant(self, tenant_id: str) -> AsyncConnection:
        """A connection inside a new transaction that sees only this tenant's tables. The caller commits
        or rolls back, then closes it. ``NotFound`` when the tenant has no storage (never provisioned, or
        dropped)."""

    @abstractmethod
    async def begin_platform(self) -> AsyncConnection:
        """A connection inside a new transaction on the platform tables."""

    @abstractmethod
    async def create_platform_schema(self) -> None:
        """Create the platform tables if missing (idempotent; production uses the migrations)."""

    @abstractmethod
    async def create_tenant(self, tenant_id: str) -> None:
        """Create the tenant's schema (or file) with every tenant table, all or nothing. ``Conflict`` if it
        already exists."""

    @abstractmethod
    async def drop_tenant(self, tenant_id: str) -> None:
        """Remove the tenant's schema (or file) and everything in it; no error if it does not exist."""

    @abstractmethod
    async def tenant_exists(self, tenant_id: str) -> bool: ...

    @abstractmethod
    async def dispose(self) -> None: ...

    @asynccontextmanager
    async def tenant_transaction(self, tenant_id: str) -> AsyncIterator[AsyncConnection]:
        """Commit when the block ends normally, roll back when it raises."""
        conn = await self.begin_tenant(tenant_id)
        async with _finishing(conn):
            yield conn

    @asynccontextmanager
    async def platform_transaction(self) -> AsyncIterator[AsyncConnection]:
        conn = await self.begin_platform()
        async with _finishing(conn):
            yield conn


@asynccontextmanager
async def _finishing(conn: AsyncConnection) -> AsyncIterator[None]:
    try:
        yield
    except BaseException:
        with suppress(DBAPIError):
            await conn.rollback()
        await conn.close()
        raise
    try:
        await conn.commit()
    finally:
        await conn.close()


# -- PostgreSQL ------------------------------------------------------------------------------------------
async def create_tenant_schema(engine: AsyncEngine, tenant_id: str) -> None:
    """Create ``tenant_<id>`` and every tenant table in one transaction (all or nothing).

    Raises ``Conflict`` when the schema already exists. A faster provisioning path may replace this one;
    the signature stays."""
    schema = tenant_schema(tenant_id)
    async with engine.connect() as conn:
        try:
            async with conn.begin():
                await conn.execute(sa.text(f"CREATE SCHEMA {_quoted(conn, schema)}"))
                scoped = await conn.execution_options(schema_translate_map={None: schema})
                await scoped.run_sync(TENANT.create_all, checkfirst=False)
        except DBAPIError as exc:
            if getattr(exc.orig, "sqlstate", None) == "42P06":  # duplicate_schema
                raise Conflict(f"tenant schema {schema} already exists") from None
            raise


async def drop_tenant_schema(engine: AsyncEngine, tenant_id: str) -> None:
    """Drop ``tenant_<id>`` and everything in it (no error if it does not exist)."""
    schema = tenant_schema(tenant_id)
    async with engine.begin() as conn:
        await conn.execute(sa.text(f"DROP SCHEMA IF EXISTS {_quoted(conn, schema)} CASCADE"))


_SCOPE = sa.text(
    "SELECT set_config('search_path', :path, true), "
    "EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = :schema)"
)


class PostgresDatabase(SqlDatabase):
    dialect_name = "postgresql"

    def __init__(
        self, url: str | URL, *, pool_size: int = 20, max_overflow: int = 0, pool_recycle: int = 1800,
        prepared_statement_cache_size: int = 100, **engine_kw: Any,
    ) -> None:  # fmt: skip
        """``pool_recycle`` (seconds) bounds the catalog caches a backend accumulates while serving many
        tenants. Behind PgBouncer in transaction mode without prepared-statement support (< 1.21), pass
        ``prepared_statement_cache_size=0``."""
        if pool_size < 1:
            raise ValueError("pool_size must be at least 1")
        connect_args = dict(engine_kw.pop("connect_args", {}))
        connect_args.setdefault("prepared_statement_cache_size", prepared_statement_cache_size)
        engine_kw.setdefault("hide_parameters", True)  # sealed keys and run data never reach errors or logs
        self.engine = create_async_engine(
            url, pool_size=pool_size, max_overflow=max_overflow, pool_recycle=pool_recycle,
            connect_args=connect_args, **engine_kw,
        )  # fmt: skip

    async def begin_tenant(self, tenant_id: str) -> AsyncConnection:
        schema = tenant_schema(tenant_id)
        conn = await self.engine.connect()
        try:
            await conn.begin()
            # one round trip: scope the transaction (SET LOCAL) and check the schema exists
            row = (await conn.execute(_SCOPE, {"path": _quoted(self.engine, schema), "schema": schema})).one()
            if not row[1]:
                raise NotFound("tenant storage", tenant_id)
        except BaseException:
            await conn.close()
            raise
        return conn

    async def begin_platform(self) -> AsyncConnection:
        conn = await self.engine.connect()
        await conn.begin()
        return conn

    async def create_platform_schema(self) -> None:
        async with self.engine.begin() as conn:
            await conn.run_sync(PUBLIC.create_all, checkfirst=True)

    async def create_tenant(self, tenant_id: str) -> None:
        await create_tenant_schema(self.engine, tenant_id)

    async def drop_tenant(self, tenant_id: str) -> None:
        await drop_tenant_schema(self.engine, tenant_id)

    async def tenant_exists(self, tenant_id: str) -> bool:
        schema = tenant_schema(tenant_id)
        async with self.engine.connect() as conn:
            found = await conn.scalar(sa.text("SELECT 1 FROM pg_namespace WHERE nspname = :s").bindparams(s=schema))
        return found is not None

    async def dispose(self) -> None:
        await self.engine.dispose()


# -- SQLite ----------------------------------------------------------------------------------------------
def _sqlite_engine(url: URL, **kw: Any) -> AsyncEngine:
    # hide_parameters: sealed keys and run data never reach error messages or logs
    engine = create_async_engine(url, connect_args={"timeout": 30}, hide_parameters=True, **kw)

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, emit BEGIN (see the "begin" hook), and set per-connection pragmas.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in ("foreign_keys=ON", "busy_timeout=30000", "journal_mode=WAL", "synchronous=NORMAL"):
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        # IMMEDIATE takes the write lock up front: two writers wait for each other (busy_timeout) instead of
        # one failing with "database is locked" when it upgrades a read transaction.
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _remove_database_files(base: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{base}{suffix}").unlink(missing_ok=True)


class SqliteDatabase(SqlDatabase):
    """The embedded store: platform tables in the main file, each tenant in its own file."""

    dialect_name = "sqlite"

    def __init__(self, url: str | URL, *, pool_size: int = 5, max_open_tenants: int = 64) -> None:
        self.url = make_url(url)
        database = self.url.database
        if not database or database == ":memory:" or database.startswith("file:"):
            raise ValueError("the SQLite store needs a file path, e.g. sqlite+aiosqlite:///crewflow.db")
        self.path = Path(database)
        self.tenant_dir = Path(f"{database}.tenants")
        self.pool_size = pool_size
        self.max_open_tenants = max_open_tenants
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.engine = _sqlite_engine(self.url, pool_size=pool_size, max_overflow=pool_size)
        self._platform = self.engine.execution_options(schema_translate_map={PUBLIC_SCHEMA: None})
        self._tenants: OrderedDict[str, AsyncEngine] = OrderedDict()
        self._lock = asyncio.Lock()

    def tenant_file(self, tenant_id: str) -> Path:
        return self.tenant_dir / f"{tenant_schema(tenant_id)}.db"

    async def _tenant_engine(self, tenant_id: str) -> AsyncEngine:
        schema = tenant_schema(tenant_id)
        engine = self._tenants.get(schema)
        if engine is not None:
            self._tenants.move_to_end(schema)
            return engine
        async with self._lock:
            engine = self._tenants.get(schema)
            if engine is None:
                url = self.url.set(database=str(self.tenant_dir / f"{schema}.db"))
                engine = _sqlite_engine(url, pool_size=2, max_overflow=6)
                self._tenants[schema] = engine
                while len(self._tenants) > self.max_open_tenants:
                    _, evicted = self._tenants.popitem(last=False)
                    await evicted.dispose()  # connections in use are closed when they are returned
            return engine

    async def begin_tenant(self, tenant_id: str) -> AsyncConnection:
        if not self.tenant_file(tenant_id).exists():
            raise NotFound("tenant storage", tenant_id)
        engine = await self._tenant_engine(tenant_id)
        conn = await engine.connect()
        try:
            await conn.begin()
        except BaseException:
            await conn.close()
            raise
        return conn

    async def begin_platform(self) -> AsyncConnection:
        conn = await self._platform.connect()
        try:
            await conn.begin()
        except BaseException:
            await conn.close()
            raise
        return conn

    async def create_platform_schema(self) -> None:
        async with self._platform.begin() as conn:
            await conn.run_sync(PUBLIC.create_all, checkfirst=True)

    async def create_tenant(self, tenant_id: str) -> None:
        file = self.tenant_file(tenant_id)
        self.tenant_dir.mkdir(parents=True, exist_ok=True)
        try:
            file.touch(exist_ok=False)
        except FileExistsError:
            raise Conflict(f"tenant storage {file.name} already exists") from None
        try:
            engine = await self._tenant_engine(tenant_id)
            async with engine.begin() as conn:
                await conn.run_sync(TENANT.create_all, checkfirst=False)
        except BaseException:
            await self.drop_tenant(tenant_id)
            raise

    async def drop_tenant(self, tenant_id: str) -> None:
        schema = tenant_schema(tenant_id)
        async with self._lock:
            engine = self._tenants.pop(schema, None)
        if engine is not None:
            await engine.dispose()
        _remove_database_files(self.tenant_file(tenant_id))

    async def tenant_exists(self, tenant_id: str) -> bool:
        return self.tenant_file(tenant_id).exists()

    async def dispose(self) -> None:
        async with self._lock:
            engines = list(self._tenants.values())
            self._tenants.clear()
        for engine in engines:
            await engine.dispose()
        await self.engine.dispose()


def open_database(database_url: str, *, pool_size: int = 20) -> SqlDatabase:
    """``postgresql+asyncpg://…`` → ``PostgresDatabase``; ``sqlite+aiosqlite:///path.db`` → ``SqliteDatabase``."""
    url = make_url(database_url)
    backend = url.get_backend_name()
    if backend == "postgresql":
        if url.get_driver_name() != "asyncpg":
            raise ValueError("PostgreSQL URLs must use the asyncpg driver: postgresql+asyncpg://…")
        return PostgresDatabase(url, pool_size=pool_size)
    if backend == "sqlite":
        if url.get_driver_name() != "aiosqlite":
            raise ValueError("SQLite URLs must use the aiosqlite driver: sqlite+aiosqlite:///path.db")
        return SqliteDatabase(url, pool_size=min(pool_size, 5))
    raise ValueError(f"unsupported database backend {backend!r} (use postgresql+asyncpg or sqlite+aiosqlite)")
