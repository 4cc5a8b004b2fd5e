"""``crewflow migrate`` on the real local PostgreSQL (a fresh database per test) and on SQLite files.

The tests add a test-only tenant revision from a temporary versions directory: it adds a column and inserts
one marker row per schema into ``public.migration_marker`` (in the schema's migration transaction), so a
schema migrated twice would show two rows.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest
import sqlalchemy as sa

from crewflow.adapters.sql.engine import PostgresDatabase, SqliteDatabase
from crewflow.adapters.sql.migrate import MigrationOptions, ProgressEvent, migrate
from crewflow.adapters.sql.migrations import head_revision
from crewflow.adapters.sql.provisioning import PostgresProvisioner, SqliteProvisioner
from crewflow.domain.tenancy import Tenant, schema_name_for

pytestmark = pytest.mark.integration

ADMIN = {"host": "127.0.0.1", "port": 5432, "user": "postgres", "database": "postgres"}
TEST_REVISION = "x0001_marker"


@pytest.fixture
async def raw(pg_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(**{**ADMIN, "database": pg_url.rsplit("/", 1)[1]})
    try:
        yield conn
    finally:
        await conn.close()


def write_test_revision(directory: Path, *, sleep: float = 0.0, marker: bool = True) -> Path:
    """A tenant revision after the shipped head: adds ``agents.test_marker`` (and a marker row)."""
    directory.mkdir(parents=True, exist_ok=True)
    statements = ['op.add_column("agents", sa.Column("test_marker", sa.Text(), nullable=True))']
    if marker:
        statements.append('op.execute("INSERT INTO public.migration_marker (schema_name) VALUES (current_schema())")')
    if sleep:
        statements.append(f'op.execute("SELECT pg_sleep({sleep})")')
    body = "\n".join(f"    {s}" for s in statements)
    source = (
        textwrap.dedent(
            f'''\
        """Test only: add agents.test_marker and record that this schema ran the revision."""
        import sqlalchemy as sa
        from alembic import op

        revision = "{TEST_REVISION}"
        down_revision = "{head_revision("tenant")}"
        branch_labels = None
        depends_on = None


        def upgrade() -> None:
        '''
        )
        + body
        + '\n\n\ndef downgrade() -> None:\n    op.drop_column("agents", "test_marker")\n'
    )
    (directory / f"{TEST_REVISION}.py").write_text(source)
    return directory


def crewflow(*argv: str) -> subprocess.CompletedProcess[str]:
    """Run the real command line in a process of its own (it configures logging globally)."""
    return subprocess.run(
        [sys.executable, "-m", "crewflow.entrypoints.cli", *argv],
        capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "CREWFLOW_LOG_LEVEL": "warning"},
    )  # fmt: skip


def tenant(tid: str) -> Tenant:
    return Tenant(id=tid, slug=f"t-{tid}", name=tid, db_schema=schema_name_for(tid), created_at=datetime.now(UTC))


async def make_tenants(pg_url: str, count: int, prefix: str = "t") -> list[str]:
    """``count`` tenants at the shipped head (half provisioned, half created by ``create_all`` unstamped)."""
    db = PostgresDatabase(pg_url, pool_size=4)
    provisioner = PostgresProvisioner(db.engine)
    schemas = []
    try:
        for i in range(count):
            tid = f"{prefix}{i:04d}"
            if i % 2:
                await db.create_tenant(tid)  # no alembic_version: the baseline adopts it
            else:
                await provisioner.register(tenant(tid))
            schemas.append(schema_name_for(tid))
    finally:
        await db.dispose()
    return schemas


async def versions(raw: asyncpg.Connection, schemas: list[str]) -> dict[str, str]:
    return {s: await raw.fetchval(f'SELECT version_num FROM "{s}".alembic_version') for s in schemas}


async def markers(raw: asyncpg.Connection) -> dict[str, int]:
    rows = await raw.fetch("SELECT schema_name, count(*) FROM public.migration_marker GROUP BY 1")
    return {r[0]: r[1] for r in rows}


async def test_migrate_brings_public_and_every_tenant_schema_to_head_and_a_rerun_changes_nothing(
    pg_url: str, raw: asyncpg.Connection
) -> None:
    first = await migrate(pg_url)
    schemas = await make_tenants(pg_url, 6)

    second = await migrate(pg_url)
    third = await migrate(pg_url)

    assert first.ok
    assert [r.schema for r in first.upgraded] == ["public"]
    assert second.ok
    assert {r.schema for r in second.upgraded} == {s for i, s in enumerate(schemas) if i % 2}  # the unstamped
    assert third.ok
    assert third.upgraded == ()
    assert set(await versions(raw, schemas)) == set(schemas)
    assert set((await versions(raw, schemas)).values()) == {head_revision("tenant")}
    assert await raw.fetchval("SELECT version_num FROM public.alembic_version") == head_revision("public")


async def test_a_new_tenant_revision_runs_once_in_every_schema_including_spares(
    pg_url: str, raw: asyncpg.Connection, tmp_path: Path
) -> None:
    await migrate(pg_url)
    schemas = await make_tenants(pg_url, 8)
    db = PostgresDatabase(pg_url, pool_size=2)
    await PostgresProvisioner(db.engine, spare_pool_size=2).fill_spares()
    await db.dispose()
    spares = [r[0] for r in await raw.fetch("SELECT schema_name FROM public.tenant_schema_pool")]
    await raw.execute("CREATE TABLE public.migration_marker (schema_name text NOT NULL)")
    options = MigrationOptions(concurrency=3, version_locations={"tenant": (str(write_test_revision(tmp_path)),)})
    events: list[ProgressEvent] = []

    report = await migrate(pg_url, options, events.append)
    again = await migrate(pg_url, options)

    assert report.ok, report.failed
    assert {r.schema for r in report.upgraded} == {*schemas, *spares}
    assert again.upgraded == ()
    assert await markers(raw) == dict.fromkeys([*schemas, *spares], 1)
    assert set((await versions(raw, schemas + spares)).values()) == {TEST_REVISION}
    done = [e for e in events if e.kind == "done" and e.branch == "tenant"]
    assert [e.done for e in done] == list(range(1, len(schemas) + len(spares) + 1))
    assert done[-1].total == len(schemas) + len(spares)
    column = await raw.fetchval(
        "SELECT count(*) FROM information_schema.columns WHERE table_schema = $1 AND table_name = 'agents' "
        "AND column_name = 'test_marker'",
        schemas[0],
    )
    assert column == 1


@pytest.mark.parametrize(
    "program",
    [["-m", "crewflow.entrypoints.cli", "migrate"], ["-m", "crewflow.adapters.sql.migrate"]],
    ids=["crewflow-migrate", "runner-module"],
)
async def test_killing_migrate_half_way_and_running_it_again_finishes_every_schema_exactly_once(
    program: list[str], pg_url: str, raw: asyncpg.Connection, tmp_path: Path
) -> None:
    await migrate(pg_url)
    schemas = await make_tenants(pg_url, 40)
    await raw.execute("CREATE TABLE public.migration_marker (schema_name text NOT NULL)")
    versions_dir = write_test_revision(tmp_path / "versions", sleep=0.05)
    command = [
        sys.executable, *program, "--database-url", pg_url, "--concurrency", "2",
        "--tenant-versions", str(versions_dir),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    killed = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # noqa: ASYNC220
    try:
        for _ in range(3000):  # wait (bounded) until a few schemas are done, then kill without warning
            if sum((await markers(raw)).values()) >= 6 or killed.poll() is not None:
                break
            await asyncio.sleep(0.01)
        killed.send_signal(signal.SIGKILL)
    finally:
        killed.wait(timeout=60)
    after_kill = await markers(raw)

    assert killed.returncode == -signal.SIGKILL
    assert 0 < len(after_kill) < len(schemas), "the kill should land half-way"
    rerun = await asyncio.to_thread(
        subprocess.run, command, env=env, capture_output=True, text=True, timeout=300, check=False
    )

    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert await markers(raw) == dict.fromkeys(schemas, 1)
    assert set((await versions(raw, schemas)).values()) == {TEST_REVISION}
    assert f"{len(schemas) - len(after_kill)} upgraded" in rerun.stdout
    assert " 0 failed" in rerun.stdout


async def test_a_long_transaction_on_a_table_makes_its_schema_retry_until_it_ends(
    pg_url: str, raw: asyncpg.Connection, tmp_path: Path
) -> None:
    await migrate(pg_url)
    schemas = await make_tenants(pg_url, 4)
    await raw.execute("CREATE TABLE public.migration_marker (schema_name text NOT NULL)")
    busy = schemas[1]
    reader = await asyncpg.connect(**{**ADMIN, "database": pg_url.rsplit("/", 1)[1]})
    holding = reader.transaction()
    await holding.start()
    await reader.fetch(f'SELECT id FROM "{busy}".agents')  # holds ACCESS SHARE on agents until it ends
    retries: list[ProgressEvent] = []

    def on_progress(event: ProgressEvent) -> None:
        if event.kind == "retry":
            retries.append(event)

    options = MigrationOptions(
        concurrency=2, lock_timeout_ms=50, max_attempts=1000, backoff_max=0.1,
        version_locations={"tenant": (str(write_test_revision(tmp_path)),)},
    )  # fmt: skip
    running = asyncio.create_task(migrate(pg_url, options, on_progress))
    try:
        for _ in range(3000):  # bounded wait for the first lock timeout on the busy schema
            if retries or running.done():
                break
            await asyncio.sleep(0.01)
        # While the migration waits, other readers of the busy table are not blocked behind its ALTER.
        probe = await asyncpg.connect(**{**ADMIN, "database": pg_url.rsplit("/", 1)[1]})
        try:
            await probe.execute("SET statement_timeout = '5s'")
            assert await probe.fetchval(f'SELECT count(*) FROM "{busy}".agents') == 0
        finally:
            await probe.close()
    finally:
        await holding.rollback()
        await reader.close()
    report = await running

    assert retries, "the migration never hit the lock"
    assert {e.schema for e in retries} == {busy}
    assert report.ok, report.failed
    by_schema = {r.schema: r for r in report.results}
    assert by_schema[busy].attempts > 1
    assert by_schema[busy].after == TEST_REVISION
    assert await markers(raw) == dict.fromkeys(schemas, 1)


async def test_a_schema_that_fails_is_reported_while_every_other_schema_is_migrated(
    pg_url: str, raw: asyncpg.Connection, tmp_path: Path
) -> None:
    await migrate(pg_url)
    schemas = await make_tenants(pg_url, 6)
    await raw.execute("CREATE TABLE public.migration_marker (schema_name text NOT NULL)")
    broken, locked = schemas[2], schemas[4]
    await raw.execute(f'DROP TABLE "{broken}".agents')  # the revision's ADD COLUMN cannot work there
    holder = await asyncpg.connect(**{**ADMIN, "database": pg_url.rsplit("/", 1)[1]})
    holding = holder.transaction()
    await holding.start()
    await holder.fetch(f'SELECT id FROM "{locked}".agents')
    options = MigrationOptions(
        concurrency=2, lock_timeout_ms=20, max_attempts=3, backoff_base=0.01,
        version_locations={"tenant": (str(write_test_revision(tmp_path)),)},
    )  # fmt: skip
    try:
        report = await migrate(pg_url, options)
    finally:
        await holding.rollback()
        await holder.close()

    failed = {r.schema: r for r in report.failed}
    assert set(failed) == {broken, locked}
    assert "UndefinedTable" in (failed[broken].error or "")
    assert "gave up after 3 attempts" in (failed[locked].error or "")
    assert failed[broken].after == head_revision("tenant")  # left where it was
    healthy = [s for s in schemas if s not in failed]
    assert await markers(raw) == dict.fromkeys(healthy, 1)
    assert (await versions(raw, schemas))[broken] == head_revision("tenant")

    retry = await migrate(pg_url, options)  # the lock is gone now; the broken schema still fails alone

    assert {r.schema for r in retry.failed} == {broken}
    assert {r.schema for r in retry.upgraded} == {locked}


async def test_sqlite_migrate_upgrades_the_main_file_and_every_tenant_file_once(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'crewflow.db'}"
    db = SqliteDatabase(url)
    provisioner = SqliteProvisioner(db)
    for tid in ("alpha", "beta"):
        await provisioner.register(tenant(tid))
    await db.create_tenant("gamma")  # created without a version stamp: adopted by the baseline
    await db.dispose()
    options = MigrationOptions(version_locations={"tenant": (str(write_test_revision(tmp_path / "v", marker=False)),)})

    report = await migrate(url, options)
    again = await migrate(url, options)

    assert report.ok, report.failed
    assert {r.schema for r in report.upgraded} == {"public", "tenant_alpha", "tenant_beta", "tenant_gamma"}
    assert again.upgraded == ()
    db = SqliteDatabase(url)
    try:
        for tid in ("alpha", "beta", "gamma"):
            async with db.tenant_transaction(tid) as conn:
                assert await conn.scalar(sa.text("SELECT version_num FROM alembic_version")) == TEST_REVISION
                columns = {r[1] for r in await conn.execute(sa.text("PRAGMA table_info(agents)"))}
                assert "test_marker" in columns
    finally:
        await db.dispose()


def test_crewflow_migrate_exits_1_and_names_the_schema_that_failed(pg_url: str) -> None:
    assert crewflow("migrate", "--database-url", pg_url, "--quiet").returncode == 0
    schemas = asyncio.run(make_tenants(pg_url, 3))
    _admin_db(pg_url, f"UPDATE \"{schemas[0]}\".alembic_version SET version_num = 'from_the_future'")

    result = crewflow("migrate", "--database-url", pg_url, "--concurrency", "2")

    assert result.returncode == 1
    assert "1 failed" in result.stdout
    assert f"FAILED {schemas[0]}" in result.stderr
    assert "unknown revision 'from_the_future'" in result.stderr
    assert "Traceback" not in result.stderr
    bad = crewflow("migrate", "--database-url", pg_url, "--concurrency", "0")
    assert bad.returncode == 2
    assert "concurrency" in bad.stderr


def _admin_db(pg_url: str, sql: str) -> None:
    async def run() -> None:
        conn = await asyncpg.connect(**{**ADMIN, "database": pg_url.rsplit("/", 1)[1]})
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())


async def test_two_runners_at_once_still_migrate_each_schema_exactly_once(
    pg_url: str, raw: asyncpg.Connection, tmp_path: Path
) -> None:
    await migrate(pg_url)
    schemas = await make_tenants(pg_url, 12)
    await raw.execute("CREATE TABLE public.migration_marker (schema_name text NOT NULL)")
    options = MigrationOptions(
        concurrency=3, lock_timeout_ms=50, max_attempts=1000, backoff_max=0.1,
        version_locations={"tenant": (str(write_test_revision(tmp_path, sleep=0.02)),)},
    )  # fmt: skip

    first, second = await asyncio.gather(migrate(pg_url, options), migrate(pg_url, options))

    assert first.ok, first.failed
    assert second.ok, second.failed
    upgraded = [r.schema for r in (*first.upgraded, *second.upgraded) if r.branch == "tenant"]
    assert sorted(upgraded) == sorted(schemas)  # each schema upgraded by exactly one of the two
    assert await markers(raw) == dict.fromkeys(schemas, 1)


async def test_the_public_baseline_matches_the_platform_tables_of_the_code(
    pg_url: str, raw: asyncpg.Connection
) -> None:
    from crewflow.adapters.sql.tables import PUBLIC

    await migrate(pg_url)
    await raw.execute("CREATE SCHEMA reference")
    reference = sa.MetaData(naming_convention=PUBLIC.naming_convention)
    for table in PUBLIC.sorted_tables:
        table.to_metadata(reference, schema="reference", referred_schema_fn=lambda *_: "reference")
    database = PostgresDatabase(pg_url, pool_size=1)
    try:
        async with database.engine.begin() as conn:
            await conn.run_sync(reference.create_all)
    finally:
        await database.dispose()

    async def shape(schema: str) -> list[tuple[object, ...]]:
        columns = await raw.fetch(
            "SELECT table_name, column_name, data_type, character_maximum_length, is_nullable, column_default "
            "FROM information_schema.columns WHERE table_schema = $1 AND table_name IN ('tenants', 'users') "
            "ORDER BY 1, 2",
            schema,
        )
        constraints = await raw.fetch(
            "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE connamespace = $1::regnamespace AND conrelid::regclass::text NOT LIKE '%alembic%' "
            "AND conrelid::regclass::text NOT LIKE '%pool%' ORDER BY 2",
            schema,
        )
        indexes = await raw.fetch(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = $1 AND tablename IN ('tenants', 'users') "
            "ORDER BY 1",
            schema,
        )
        rows = [*columns, *constraints, *indexes]
        return [tuple(str(v).replace(f"{schema}.", "") if isinstance(v, str) else v for v in r) for r in rows]

    assert await shape("public") == await shape("reference")


async def test_a_migration_backend_killed_mid_schema_is_retried_on_a_new_connection(
    pg_url: str, raw: asyncpg.Connection, tmp_path: Path
) -> None:
    await migrate(pg_url)
    schemas = await make_tenants(pg_url, 6)
    await raw.execute("CREATE TABLE public.migration_marker (schema_name text NOT NULL)")
    options = MigrationOptions(
        concurrency=1, backoff_base=0.01,
        version_locations={"tenant": (str(write_test_revision(tmp_path, sleep=0.3)),)},
    )  # fmt: skip
    events: list[ProgressEvent] = []
    running = asyncio.create_task(migrate(pg_url, options, events.append))
    killed = 0
    try:
        for _ in range(3000):  # bounded wait until the runner sleeps inside a schema's transaction, then kill it
            killed = await raw.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE query LIKE '%pg_sleep(0.3)%' AND pid <> pg_backend_pid()"
            )
            if killed or running.done():
                break
            await asyncio.sleep(0.01)
    finally:
        report = await running

    assert killed == 1
    assert report.ok, report.failed
    assert [e.kind for e in events].count("retry") == 1
    assert max(r.attempts for r in report.results) == 2
    assert await markers(raw) == dict.fromkeys(schemas, 1)
