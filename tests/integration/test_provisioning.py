"""Tenant provisioning on the real local PostgreSQL (a fresh database per test) and on SQLite files."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest
import sqlalchemy as sa

from crewflow.adapters.sql.engine import PostgresDatabase, SqliteDatabase
from crewflow.adapters.sql.migrate import migrate
from crewflow.adapters.sql.migrations import head_revision, render_upgrade_sql
from crewflow.adapters.sql.provisioning import (
    PostgresProvisioner,
    SqliteProvisioner,
    render_tenant_ddl,
)
from crewflow.adapters.sql.tables import TENANT
from crewflow.domain.errors import Conflict
from crewflow.domain.tenancy import Tenant, schema_name_for

pytestmark = pytest.mark.integration

ADMIN = {"host": "127.0.0.1", "port": 5432, "user": "postgres", "database": "postgres"}


@pytest.fixture
async def db(pg_url: str) -> AsyncIterator[PostgresDatabase]:
    report = await migrate(pg_url)
    assert report.ok, report.failed
    database = PostgresDatabase(pg_url, pool_size=4)
    try:
        yield database
    finally:
        await database.dispose()


@pytest.fixture
async def raw(pg_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(**{**ADMIN, "database": pg_url.rsplit("/", 1)[1]})
    try:
        yield conn
    finally:
        await conn.close()


def crewflow(*argv: str) -> subprocess.CompletedProcess[str]:
    """Run the real command line in a process of its own (it configures logging globally)."""
    return subprocess.run(
        [sys.executable, "-m", "crewflow.entrypoints.cli", *argv],
        capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "CREWFLOW_LOG_LEVEL": "warning"},
    )  # fmt: skip


def tenant(tid: str | None = None, slug: str | None = None) -> Tenant:
    tid = tid or uuid.uuid4().hex[:12]
    return Tenant(
        id=tid,
        slug=slug or f"t-{tid}",
        name=f"Tenant {tid}",
        db_schema=schema_name_for(tid),
        created_at=datetime.now(UTC),
    )


async def schema_exists(raw: asyncpg.Connection, schema: str) -> bool:
    return bool(await raw.fetchval("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)", schema))


async def catalog(raw: asyncpg.Connection, schema: str) -> dict[str, list[tuple[object, ...]]]:
    """Columns, constraints and indexes of a schema, with the schema name taken out."""
    columns = await raw.fetch(
        "SELECT table_name, column_name, data_type, character_maximum_length, is_nullable, column_default "
        "FROM information_schema.columns WHERE table_schema = $1 ORDER BY table_name, ordinal_position",
        schema,
    )
    constraints = await raw.fetch(
        "SELECT c.conrelid::regclass::text, c.conname, pg_get_constraintdef(c.oid) FROM pg_constraint c "
        "JOIN pg_namespace n ON n.oid = c.connamespace WHERE n.nspname = $1 ORDER BY 1, 2",
        schema,
    )
    indexes = await raw.fetch(
        "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = $1 ORDER BY 1, 2", schema
    )

    def clean(rows: list[asyncpg.Record]) -> list[tuple[object, ...]]:
        return [tuple(str(v).replace(f"{schema}.", "") if isinstance(v, str) else v for v in r) for r in rows]

    return {"columns": clean(columns), "constraints": clean(constraints), "indexes": clean(indexes)}


async def test_registering_a_tenant_creates_its_schema_tables_indexes_version_and_row(
    db: PostgresDatabase, raw: asyncpg.Connection
) -> None:
    provisioner = PostgresProvisioner(db.engine)
    t = tenant()

    result = await provisioner.register(t)

    assert result.schema == t.db_schema
    assert not result.from_spare
    tables = {r[0] for r in await raw.fetch("SELECT tablename FROM pg_tables WHERE schemaname = $1", t.db_schema)}
    assert tables == {*TENANT.tables, "alembic_version"}
    indexes = {r[0] for r in await raw.fetch("SELECT indexname FROM pg_indexes WHERE schemaname = $1", t.db_schema)}
    expected = {str(ix.name) for table in TENANT.tables.values() for ix in table.indexes}
    assert expected
    assert expected <= indexes
    assert await raw.fetchval(f'SELECT version_num FROM "{t.db_schema}".alembic_version') == head_revision("tenant")
    assert [x.id for x in await provisioner.list_tenants()] == [t.id]


async def test_the_pre_rendered_ddl_builds_exactly_the_schema_the_migrations_build(
    db: PostgresDatabase, raw: asyncpg.Connection
) -> None:
    provisioned = await PostgresProvisioner(db.engine).create_schema("viaddl")
    async with raw.transaction():
        await raw.execute('CREATE SCHEMA "tenant_viamigrations"; SET LOCAL search_path TO "tenant_viamigrations"')
        await raw.execute(render_upgrade_sql("tenant", None))

    from_ddl = await catalog(raw, provisioned)
    from_migrations = await catalog(raw, "tenant_viamigrations")

    assert from_ddl["columns"], "nothing was created"
    assert from_ddl == from_migrations


async def test_a_failure_in_the_middle_of_the_ddl_leaves_no_schema_and_no_row(
    db: PostgresDatabase, raw: asyncpg.Connection
) -> None:
    broken = sa.MetaData()
    for table in TENANT.sorted_tables[:5]:
        table.to_metadata(broken)
    sa.Table("broken", broken, sa.Column("x", sa.Integer, server_default=sa.text("no_such_function()")))
    for table in TENANT.sorted_tables[5:]:
        table.to_metadata(broken)
    ddl = render_tenant_ddl(broken)
    assert ddl.body.index("CREATE TABLE broken") > ddl.body.index("CREATE TABLE")  # tables come before it
    t = tenant()

    with pytest.raises(asyncpg.UndefinedFunctionError):
        await PostgresProvisioner(db.engine, ddl=ddl).register(t)

    assert not await schema_exists(raw, t.db_schema)
    assert await raw.fetchval("SELECT count(*) FROM public.tenants") == 0


async def test_a_taken_slug_rolls_back_the_schema_created_for_the_newcomer(
    db: PostgresDatabase, raw: asyncpg.Connection
) -> None:
    provisioner = PostgresProvisioner(db.engine)
    await provisioner.register(tenant(slug="acme"))
    newcomer = tenant(slug="acme")

    with pytest.raises(Conflict):
        await provisioner.register(newcomer)

    assert not await schema_exists(raw, newcomer.db_schema)
    assert await raw.fetchval("SELECT count(*) FROM public.tenants") == 1


async def test_registering_the_same_tenant_twice_is_a_conflict(db: PostgresDatabase) -> None:
    provisioner = PostgresProvisioner(db.engine)
    t = tenant()
    await provisioner.register(t)

    with pytest.raises(Conflict):
        await provisioner.register(t)
    assert len(await provisioner.list_tenants()) == 1


async def test_a_tenant_whose_schema_does_not_match_its_id_is_refused(db: PostgresDatabase) -> None:
    t = tenant()
    wrong = Tenant(id=t.id, slug=t.slug, name=t.name, db_schema="public", created_at=t.created_at)

    with pytest.raises(ValueError, match="must live in schema"):
        await PostgresProvisioner(db.engine).register(wrong)


async def test_dropping_a_tenant_removes_its_schema_data_row_and_users(
    db: PostgresDatabase, raw: asyncpg.Connection
) -> None:
    provisioner = PostgresProvisioner(db.engine)
    t = tenant()
    other = tenant()
    await provisioner.register(t)
    await provisioner.register(other)
    await raw.execute(
        "INSERT INTO public.users (id, tenant_id, email, role, created_at) VALUES ($1, $2, $3, 'admin', now())",
        "u1",
        t.id,
        "a@example.com",
    )
    await raw.execute(
        f"INSERT INTO \"{t.db_schema}\".idempotency_keys (key, request_hash, created_at) VALUES ('k', 'h', 1)"
    )

    assert await provisioner.drop(t.id) is True

    assert not await schema_exists(raw, t.db_schema)
    assert await raw.fetchval("SELECT count(*) FROM public.tenants WHERE id = $1", t.id) == 0
    assert await raw.fetchval("SELECT count(*) FROM public.users WHERE tenant_id = $1", t.id) == 0
    assert await schema_exists(raw, other.db_schema)  # the neighbour is untouched
    assert await provisioner.drop(t.id) is False


async def test_a_spare_schema_is_renamed_into_place_and_the_pool_refills_in_the_background(
    db: PostgresDatabase, raw: asyncpg.Connection
) -> None:
    provisioner = PostgresProvisioner(db.engine, spare_pool_size=2, refill_interval=60)
    assert await provisioner.fill_spares() == 2
    spares = {r[0] for r in await raw.fetch("SELECT schema_name FROM public.tenant_schema_pool")}
    t = tenant()
    try:
        result = await provisioner.register(t)  # also starts the refill loop, woken by the take

        assert result.from_spare
        assert await raw.fetchval(f'SELECT version_num FROM "{t.db_schema}".alembic_version') == head_revision("tenant")
        assert await catalog(raw, t.db_schema) == await catalog(
            raw, await PostgresProvisioner(db.engine).create_schema("reference")
        )
        for _ in range(500):  # bounded wait for the background refill (interval 60 s: only the wake-up can do it)
            now = {r[0] for r in await raw.fetch("SELECT schema_name FROM public.tenant_schema_pool")}
            if len(now) == 2 and now != spares:
                break
            await asyncio.sleep(0.02)
        assert len(now) == 2
        assert len(now & spares) == 1  # one was taken, a new one replaced it
    finally:
        await provisioner.aclose()
    assert await provisioner.drain_spares() == 2
    assert await raw.fetchval("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'crewflow_spare_%'") == 0


async def test_concurrent_registrations_take_distinct_spares(db: PostgresDatabase, raw: asyncpg.Connection) -> None:
    provisioner = PostgresProvisioner(db.engine, spare_pool_size=4, refill_interval=60)
    await provisioner.fill_spares()
    spares = {r[0] for r in await raw.fetch("SELECT schema_name FROM public.tenant_schema_pool")}
    tenants = [tenant() for _ in range(4)]
    try:
        results = await asyncio.gather(*(provisioner.register(t) for t in tenants))
    finally:
        await provisioner.aclose()

    assert all(r.from_spare for r in results)
    assert {r.schema for r in results} == {t.db_schema for t in tenants}
    for t in tenants:
        assert await schema_exists(raw, t.db_schema)
    for spare in spares:  # every original spare was renamed into a tenant
        assert not await schema_exists(raw, spare)


async def test_a_spare_left_at_another_revision_is_dropped_not_handed_out(
    db: PostgresDatabase, raw: asyncpg.Connection
) -> None:
    provisioner = PostgresProvisioner(db.engine, spare_pool_size=1, refill_interval=60)
    await provisioner.fill_spares()
    spare = await raw.fetchval("SELECT schema_name FROM public.tenant_schema_pool")
    await raw.execute(f"UPDATE \"{spare}\".alembic_version SET version_num = 'older'")
    t = tenant()
    try:
        result = await provisioner.register(t)
    finally:
        await provisioner.aclose()

    assert not result.from_spare
    assert not await schema_exists(raw, spare)
    assert await raw.fetchval(f'SELECT version_num FROM "{t.db_schema}".alembic_version') == head_revision("tenant")


async def test_sqlite_registration_creates_a_stamped_tenant_file_and_drop_removes_it(tmp_path: Path) -> None:
    db = SqliteDatabase(f"sqlite+aiosqlite:///{tmp_path / 'crewflow.db'}")
    provisioner = SqliteProvisioner(db, owns_db=True)
    t = tenant()
    try:
        await provisioner.register(t)
        file = db.tenant_file(t.id)
        assert file.exists()
        async with db.tenant_transaction(t.id) as conn:
            version = await conn.scalar(sa.text("SELECT version_num FROM alembic_version"))
            tables = set(await conn.scalars(sa.text("SELECT name FROM sqlite_master WHERE type = 'table'")))
        assert version == head_revision("tenant")
        assert set(TENANT.tables) <= tables
        assert [x.id for x in await provisioner.list_tenants()] == [t.id]

        with pytest.raises(Conflict):
            await provisioner.register(tenant(slug=t.slug))

        assert await provisioner.drop(t.id) is True
        assert not file.exists()
        assert await provisioner.list_tenants() == []
        assert await provisioner.drop(t.id) is False
    finally:
        await provisioner.aclose()


def test_tenants_cli_creates_lists_and_drops_a_tenant_on_postgres(pg_url: str) -> None:
    assert crewflow("migrate", "--database-url", pg_url, "--quiet").returncode == 0
    created = crewflow("tenants", "create", "acme", "--name", "Acme", "--id", "acme-1", "--database-url", pg_url)
    assert created.returncode == 0, created.stderr
    assert "created tenant acme-1" in created.stdout

    listed = crewflow("tenants", "list", "--json", "--database-url", pg_url)
    assert listed.returncode == 0
    lines = listed.stdout.strip().splitlines()
    assert len(lines) == 1
    assert '"db_schema": "tenant_acme_1"' in lines[0]

    refused = crewflow("tenants", "drop", "acme", "--database-url", pg_url)  # no --yes
    assert refused.returncode == 2
    assert "without --yes" in refused.stderr
    assert crewflow("tenants", "drop", "acme", "--yes", "--database-url", pg_url).returncode == 0
    after = crewflow("tenants", "list", "--database-url", pg_url)
    assert after.returncode == 0
    assert "no tenants" in after.stdout


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["tenants", "create", "Not A Slug"], "tenant slug"),
        (["tenants", "create", "fine", "--id", "UPPER_case"], "cannot name a schema"),
        (["tenants", "drop", "nobody", "--yes"], "no tenant"),
    ],
)
def test_tenants_cli_rejects_bad_input_with_one_line_and_exit_2(argv: list[str], message: str, tmp_path: Path) -> None:
    result = crewflow(*argv, "--database-url", f"sqlite+aiosqlite:///{tmp_path / 'crewflow.db'}")

    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_tenants_cli_on_an_unmigrated_postgres_database_says_to_migrate(pg_url: str) -> None:
    result = crewflow("tenants", "create", "acme", "--database-url", pg_url)

    assert result.returncode == 1
    assert "crewflow migrate" in result.stderr


async def test_a_pooled_connection_is_replaced_after_serving_its_budget_of_tenants(pg_url: str) -> None:
    from crewflow.adapters.sql.catalog_budget import limit_tenants_per_connection

    await migrate(pg_url)
    database = PostgresDatabase(pg_url, pool_size=1)
    limit_tenants_per_connection(database.engine, max_tenants=3)
    provisioner = PostgresProvisioner(database.engine)
    tenants = [tenant() for _ in range(7)]
    try:
        for t in tenants:
            await provisioner.register(t)
        pids = []
        for t in tenants:
            async with database.tenant_transaction(t.id) as conn:
                pids.append(await conn.scalar(sa.text("SELECT pg_backend_pid()")))
                assert await conn.scalar(sa.text("SELECT count(*) FROM agents")) == 0
    finally:
        await database.dispose()

    # one backend for tenants 1-3, a fresh one for 4-6, another for the 7th
    assert pids[0] == pids[1] == pids[2]
    assert pids[3] == pids[4] == pids[5] != pids[2]
    assert pids[6] != pids[5]
