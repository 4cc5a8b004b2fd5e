"""Registering and dropping tenants: the tenant's schema, every tenant table and its ``public.tenants`` row.

PostgreSQL (ADR 0006):

- The tenant tables' DDL is rendered once from ``tables.TENANT`` (schema-less), together with an
  ``alembic_version`` table stamped at the current tenant head. Registering a tenant sends
  ``CREATE SCHEMA "tenant_<id>"; SET LOCAL search_path TO "tenant_<id>"; <DDL>`` in one round-trip and inserts
  the tenant row, in one transaction: all or nothing. The schema name is the only value spliced into the
  SQL; it comes from :func:`crewflow.adapters.sql.engine.tenant_schema` and is validated again and quoted.
- Optionally a pool of spare schemas (``crewflow_spare_<hex>``, listed in ``public.tenant_schema_pool``) is
  kept full in the background; registering then takes one with ``FOR UPDATE SKIP LOCKED`` and renames it
  (``ALTER SCHEMA … RENAME``) in the transaction that inserts the tenant row. A spare is only taken if its
  own ``alembic_version`` says it is at the head this code expects; ``crewflow migrate`` upgrades spares
  like tenant schemas.
- Dropping a tenant deletes its row (its users cascade) and ``DROP SCHEMA … CASCADE`` in one transaction.

SQLite (one file per tenant, ADR 0005): the file is created by ``SqliteDatabase.create_tenant`` and stamped
at the tenant head; then the row is inserted; if that fails the new file is removed again.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import sqlalchemy as sa
import structlog
from alembic.migration import MigrationContext
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.schema import CreateIndex, CreateTable

from crewflow.adapters.sql.engine import PostgresDatabase, SqlDatabase, SqliteDatabase, open_database, tenant_schema
from crewflow.adapters.sql.migrate import SPARE_SCHEMA_PREFIX
from crewflow.adapters.sql.migrations import head_revision, quote_schema, script_directory
from crewflow.adapters.sql.tables import TENANT, TENANTS
from crewflow.domain.errors import Conflict
from crewflow.domain.tenancy import Tenant
from crewflow.ports.provisioning import Provisioned, TenantProvisioner

__all__ = [
    "PostgresProvisioner",
    "Provisioned",
    "SqliteProvisioner",
    "TenantDDL",
    "TenantProvisioner",
    "open_provisioner",
    "render_tenant_ddl",
]

log = structlog.get_logger(__name__)

_REVISION = re.compile(r"^[A-Za-z0-9_]{1,32}$")
_TENANT_COLUMNS = ("id", "slug", "name", "db_schema", "created_at")
# Fixed SQL (the only identifiers spliced anywhere are validated, quoted schema names).
_INSERT_TENANT = "INSERT INTO public.tenants (id, slug, name, db_schema, created_at) VALUES ($1, $2, $3, $4, $5)"
_DELETE_TENANT = "DELETE FROM public.tenants WHERE id = $1 RETURNING id"
_LIST_TENANTS = "SELECT id, slug, name, db_schema, created_at FROM public.tenants ORDER BY created_at, id"
_TAKE_SPARE = (
    "DELETE FROM public.tenant_schema_pool WHERE schema_name = (SELECT schema_name FROM public.tenant_schema_pool "
    "ORDER BY created_at, schema_name LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING schema_name"
)
_COUNT_SPARES = "SELECT count(*) FROM public.tenant_schema_pool"
_ADD_SPARE = "INSERT INTO public.tenant_schema_pool (schema_name) VALUES ($1)"


@dataclass(frozen=True, slots=True)
class TenantDDL:
    """Schema-less DDL of every tenant table, indexes and the stamped ``alembic_version``, rendered once."""

    body: str
    revision: str
    statements: int

    def script_for(self, schema: str) -> str:
        """The whole provisioning script for one schema (run it inside a transaction)."""
        quoted = quote_schema(schema)
        return f"CREATE SCHEMA {quoted};\nSET LOCAL search_path TO {quoted};\n{self.body}"


def render_tenant_ddl(
    metadata: sa.MetaData = TENANT, *, revision: str | None = None, dialect: Dialect | None = None
) -> TenantDDL:
    """Render ``CREATE TABLE``/``CREATE INDEX`` of every table in ``metadata`` (dependency order) and the
    ``alembic_version`` table stamped at ``revision`` (default: the tenant head of the shipped migrations)."""
    dialect = dialect or postgresql.asyncpg.dialect()  # type: ignore[no-untyped-call]
    revision = revision or head_revision("tenant")
    if not _REVISION.match(revision):
        raise ValueError(f"unexpected revision id {revision!r}")
    statements: list[str] = []
    for table in metadata.sorted_tables:
        if table.schema is not None:
            raise ValueError(f"tenant table {table.name} must be schema-less, has schema {table.schema!r}")
        statements.append(str(CreateTable(table).compile(dialect=dialect)).strip())
        for index in sorted(table.indexes, key=lambda ix: str(ix.name)):
            statements.append(str(CreateIndex(index).compile(dialect=dialect)).strip())
    statements.append(
        "CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL, "
        "CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num))"
    )
    statements.append(f"INSERT INTO alembic_version (version_num) VALUES ('{revision}')")  # noqa: S608 - checked
    return TenantDDL(";\n".join(statements) + ";\n", revision, len(statements))


def _tenant_from_row(row: Any) -> Tenant:
    return Tenant(id=row[0], slug=row[1], name=row[2], db_schema=row[3], created_at=row[4])


def _check(tenant: Tenant) -> str:
    schema = tenant_schema(tenant.id)
    if tenant.db_schema != schema:
        raise ValueError(f"tenant {tenant.id!r} must live in schema {schema!r}, not {tenant.db_schema!r}")
    return schema


# -- PostgreSQL ------------------------------------------------------------------------------------------
class PostgresProvisioner:
    """Provisioning on a SQLAlchemy ``AsyncEngine`` (asyncpg); the SQL goes through the driver connection so
    a multi-statement script is one round-trip (simple query protocol)."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        ddl: TenantDDL | None = None,
        spare_pool_size: int = 0,
        refill_interval: float = 5.0,
        auto_refill: bool = True,
        owns_engine: bool = False,
    ) -> None:
        if spare_pool_size < 0:
            raise ValueError("spare_pool_size must be >= 0")
        self.engine = engine
        self.ddl = ddl or render_tenant_ddl()
        self.spare_pool_size = spare_pool_size
        self.refill_interval = refill_interval
        self.auto_refill = auto_refill
        self._owns_engine = owns_engine
        self._refill_task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    @contextlib.asynccontextmanager
    async def _driver(self) -> AsyncIterator[Any]:
        """The asyncpg connection under a pooled SQLAlchemy connection (SQLAlchemy starts no transaction on it
        because nothing is executed through SQLAlchemy)."""
        async with self.engine.connect() as conn:
            raw = await conn.get_raw_connection()
            try:
                yield raw.driver_connection
            except (OSError, asyncpg.InterfaceError):
                raw.invalidate()
                raise

    # -- tenants --
    async def create_schema(self, tenant_id: str) -> str:
        """Only the schema, its tables and its version stamp (no tenant row); ``Conflict`` if it exists."""
        schema = tenant_schema(tenant_id)
        async with self._driver() as conn:
            try:
                async with conn.transaction():
                    await conn.execute(self.ddl.script_for(schema))
            except asyncpg.DuplicateSchemaError:
                raise Conflict(f"tenant schema {schema} already exists") from None
        return schema

    async def register(self, tenant: Tenant) -> Provisioned:
        schema = _check(tenant)
        from_spare = False
        async with self._driver() as conn:
            try:
                async with conn.transaction():
                    if self.spare_pool_size:
                        from_spare = await self._take_spare(conn, schema)
                    if not from_spare:
                        await conn.execute(self.ddl.script_for(schema))
                    await conn.execute(_INSERT_TENANT, tenant.id, tenant.slug, tenant.name, schema, tenant.created_at)
            except asyncpg.DuplicateSchemaError:
                raise Conflict(f"tenant schema {schema} already exists") from None
            except asyncpg.UniqueViolationError as exc:
                raise Conflict(f"tenant {tenant.id!r} or slug {tenant.slug!r} already exists") from exc
        if self.spare_pool_size and self.auto_refill:
            self.start()  # the first registration starts the background refill (no-op when it runs)
        if from_spare:
            self._wake.set()
        log.info("tenant.provisioned", tenant_id=tenant.id, schema=schema, from_spare=from_spare)
        return Provisioned(tenant, schema, from_spare)

    async def _take_spare(self, conn: Any, schema: str) -> bool:
        while True:
            spare = await conn.fetchval(_TAKE_SPARE)
            if spare is None:
                return False
            try:
                version = await conn.fetchval(f"SELECT version_num FROM {quote_schema(spare)}.alembic_version")  # noqa: S608
            except asyncpg.UndefinedTableError:  # its schema vanished: forget the row
                continue
            if version == self.ddl.revision:
                await conn.execute(f"ALTER SCHEMA {quote_schema(spare)} RENAME TO {quote_schema(schema)}")
                return True
            # A spare from before a deploy (another head): drop it with this transaction and try the next.
            await conn.execute(f"DROP SCHEMA {quote_schema(spare)} CASCADE")

    async def drop(self, tenant_id: str) -> bool:
        schema = tenant_schema(tenant_id)
        async with self._driver() as conn, conn.transaction():
            deleted = await conn.fetchval(_DELETE_TENANT, tenant_id)
            existed = await conn.fetchval("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)", schema)
            if existed:
                await conn.execute(f"DROP SCHEMA {quote_schema(schema)} CASCADE")
        log.info("tenant.dropped", tenant_id=tenant_id, schema=schema, row=deleted is not None, schema_existed=existed)
        return deleted is not None or bool(existed)

    async def list_tenants(self) -> list[Tenant]:
        async with self._driver() as conn:
            rows = await conn.fetch(_LIST_TENANTS)
        return [_tenant_from_row(r) for r in rows]

    # -- spare pool --
    async def spare_count(self) -> int:
        async with self._driver() as conn:
            return int(await conn.fetchval(_COUNT_SPARES))

    async def fill_spares(self) -> int:
        """Create spares until the pool holds ``spare_pool_size``; returns how many were created."""
        created = 0
        while await self.spare_count() < self.spare_pool_size:
            name = SPARE_SCHEMA_PREFIX + secrets.token_hex(8)
            async with self._driver() as conn, conn.transaction():
                await conn.execute(self.ddl.script_for(name))
                await conn.execute(_ADD_SPARE, name)
            created += 1
        return created

    async def drain_spares(self) -> int:
        """Drop every spare schema (e.g. before removing the pool); returns how many were dropped."""
        dropped = 0
        while True:
            async with self._driver() as conn, conn.transaction():
                spare = await conn.fetchval(_TAKE_SPARE)
                if spare is None:
                    return dropped
                await conn.execute(f"DROP SCHEMA IF EXISTS {quote_schema(spare)} CASCADE")
            dropped += 1

    def start(self) -> None:
        """Keep the spare pool full in the background (no-op when ``spare_pool_size`` is 0). ``register``
        calls it, so a provisioner built outside the event loop (``open_provisioner``) refills on first use."""
        if self.spare_pool_size and self._refill_task is None:
            self._refill_task = asyncio.create_task(self._refill_loop(), name="crewflow-spare-schemas")

    async def _refill_loop(self) -> None:
        while True:
            self._wake.clear()  # before filling: a take during the fill wakes the next round at once
            try:
                await self.fill_spares()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("tenant.spare_pool.refill_failed", error=str(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.refill_interval)

    async def aclose(self) -> None:
        task, self._refill_task = self._refill_task, None
        if task is not None:
            loop = task.get_loop()
            if loop is asyncio.get_running_loop():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            elif not loop.is_closed():  # started on another loop (e.g. a server's start-up loop): stop it there
                loop.call_soon_threadsafe(task.cancel)
        if self._owns_engine:
            await self.engine.dispose()


# -- SQLite ----------------------------------------------------------------------------------------------
class SqliteProvisioner:
    """The embedded store: a file per tenant plus a row in the main file (two files, so not one
    transaction: a failed row insert removes the new file again)."""

    def __init__(self, db: SqliteDatabase, *, owns_db: bool = False) -> None:
        self.db = db
        self._owns_db = owns_db
        self._ready = False

    async def _ensure_platform(self) -> None:
        if not self._ready:
            await self.db.create_platform_schema()  # idempotent; `crewflow migrate` adopts and stamps it
            self._ready = True

    async def create_schema(self, tenant_id: str) -> str:
        await self.db.create_tenant(tenant_id)  # Conflict if the file exists
        try:
            async with self.db.tenant_transaction(tenant_id) as conn:
                await conn.run_sync(_stamp_tenant_head)
        except BaseException:
            await self.db.drop_tenant(tenant_id)
            raise
        return tenant_schema(tenant_id)

    async def register(self, tenant: Tenant) -> Provisioned:
        schema = _check(tenant)
        await self._ensure_platform()
        async with self.db.platform_transaction() as conn:
            taken = await conn.scalar(
                sa.select(sa.func.count()).where(sa.or_(TENANTS.c.id == tenant.id, TENANTS.c.slug == tenant.slug))
            )
        if taken:
            raise Conflict(f"tenant {tenant.id!r} or slug {tenant.slug!r} already exists")
        await self.create_schema(tenant.id)
        try:
            async with self.db.platform_transaction() as conn:
                await conn.execute(
                    TENANTS.insert().values(
                        id=tenant.id, slug=tenant.slug, name=tenant.name, db_schema=schema, created_at=tenant.created_at
                    )
                )
        except sa.exc.IntegrityError as exc:
            await self.db.drop_tenant(tenant.id)
            raise Conflict(f"tenant {tenant.id!r} or slug {tenant.slug!r} already exists") from exc
        except BaseException:
            await self.db.drop_tenant(tenant.id)
            raise
        return Provisioned(tenant, schema, False)

    async def drop(self, tenant_id: str) -> bool:
        await self._ensure_platform()
        existed = await self.db.tenant_exists(tenant_id)
        async with self.db.platform_transaction() as conn:
            result = await conn.execute(sa.delete(TENANTS).where(TENANTS.c.id == tenant_id))
        await self.db.drop_tenant(tenant_id)
        return bool(result.rowcount) or existed

    async def list_tenants(self) -> list[Tenant]:
        await self._ensure_platform()
        async with self.db.platform_transaction() as conn:
            rows = (
                await conn.execute(
                    sa.select(*(TENANTS.c[c] for c in _TENANT_COLUMNS)).order_by(TENANTS.c.created_at, TENANTS.c.id)
                )
            ).all()
        return [_tenant_from_row(r) for r in rows]

    async def aclose(self) -> None:
        if self._owns_db:
            await self.db.dispose()


def _stamp_tenant_head(connection: sa.Connection) -> None:
    MigrationContext.configure(connection).stamp(script_directory("tenant"), "head")


def open_provisioner(database_url: str, *, spare_pool_size: int = 0, pool_size: int = 4) -> TenantProvisioner:
    """A provisioner owning its own database handle (for the CLI and the benchmark)."""
    db: SqlDatabase = open_database(database_url, pool_size=pool_size)
    if isinstance(db, PostgresDatabase):
        return PostgresProvisioner(db.engine, spare_pool_size=spare_pool_size, owns_engine=True)
    if isinstance(db, SqliteDatabase):
        return SqliteProvisioner(db, owns_db=True)
    raise TypeError(f"no provisioner for {type(db).__name__}")
