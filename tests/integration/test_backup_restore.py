"""``crewflow backup`` / ``crewflow restore`` on the real local PostgreSQL (a fresh database per test), on
SQLite files, and with the MongoDB log store (the in-process fake, as in the log store contract test).

Every round trip fills every tenant table (through the repositories and the log store; a table they do not
reach yet gets a generic row), snapshots every table of the tenant plus its platform rows, drops the
tenant, restores it and compares the snapshots row for row.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import sqlalchemy as sa

import crewflow.adapters.sql.backup as backup_module
from crewflow.adapters.sql.backup import BackupError, backup, read_manifest, restore
from crewflow.adapters.sql.engine import SqlDatabase, open_database, tenant_schema
from crewflow.adapters.sql.logstore import SqlLogStore
from crewflow.adapters.sql.migrate import asyncpg_connect_kwargs, migrate
from crewflow.adapters.sql.migrations import alembic_config, head_revision
from crewflow.adapters.sql.provisioning import open_provisioner, render_tenant_ddl
from crewflow.adapters.sql.tables import TENANT, TENANTS, USERS
from crewflow.adapters.sql.uow import build_uow_factory
from crewflow.domain.agents import Agent, Crew, CrewTask
from crewflow.domain.events import EventKind, ExecutionEvent
from crewflow.domain.execution import (
    Execution,
    FlowRecord,
    IdempotencyRecord,
    LLMProviderConfig,
    NodeRun,
    ToolRecord,
)
from crewflow.domain.logs import AuditEntry, ChatMessageRecord
from crewflow.domain.scheduler import NodeStatus, RunStatus
from crewflow.domain.tenancy import Role, Tenant, User

pytestmark = pytest.mark.integration

T0 = float(int(time.time()) - 600) + 0.125  # recent (the MongoDB TTL index keeps 30 days), exact in binary


# -- helpers ---------------------------------------------------------------------------------------------
def crewflow(*argv: str) -> subprocess.CompletedProcess[str]:
    """The real command line in a process of its own (it configures logging globally)."""
    return subprocess.run(
        [sys.executable, "-m", "crewflow.entrypoints.cli", *argv],
        capture_output=True, text=True, timeout=600, check=False,
        env={**os.environ, "CREWFLOW_LOG_LEVEL": "warning", "CREWFLOW_MONGODB_URL": ""},
    )  # fmt: skip


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


async def register(url: str, slug: str) -> str:
    tenant_id = uuid.uuid4().hex[:16]
    provisioner = open_provisioner(url, pool_size=2)
    try:
        await provisioner.register(
            Tenant(tenant_id, slug, f"Tenant {slug}", tenant_schema(tenant_id), datetime.now(UTC))
        )
    finally:
        await provisioner.aclose()
    return tenant_id


async def drop(url: str, tenant_id: str) -> None:
    provisioner = open_provisioner(url, pool_size=2)
    try:
        assert await provisioner.drop(tenant_id)
    finally:
        await provisioner.aclose()


def _value(column: sa.Column[Any], n: int) -> Any:
    """A value for a column no repository fills yet (used only for tables the test cannot reach otherwise)."""
    kind = column.type
    if isinstance(kind, sa.Boolean):
        return n % 2 == 0
    if isinstance(kind, sa.Integer):
        return 40 + n
    if isinstance(kind, sa.Float | sa.Double | sa.Numeric):
        return T0 + n / 8
    if isinstance(kind, sa.JSON):
        return {"k": [n, 'é "q" \u2019', None], "nested": {"ok": True}}
    if isinstance(kind, sa.LargeBinary):
        return bytes(range(256)) * 2
    if isinstance(kind, sa.String) and kind.length:
        return f"{column.name}-{n}"[: kind.length]
    return f"{column.name} {n} \n tab\t quote' backslash\\ ü"


async def populate(url: str, tenant_id: str, slug: str, *, log_store: Any = None) -> None:
    """Rows in every tenant table (repositories, the log store, then a generic row for any table left empty)
    and users in ``public.users``."""
    factory = build_uow_factory(url, pool_size=2)
    try:
        admin = User(uuid.uuid4().hex, tenant_id, f"{slug}-admin@example.com", Role.ADMIN, "argon2$hash'\"",
                     created_at=datetime.now(UTC))  # fmt: skip
        viewer = User(uuid.uuid4().hex, tenant_id, f"{slug}-viewer@example.com", Role.VIEWER, "", is_active=False,
                      created_at=datetime.now(UTC))  # fmt: skip
        async with factory.platform() as p:
            await p.users.add(admin)
            await p.users.add(viewer)
            await p.commit()
        async with factory.for_tenant(tenant_id) as uow:
            await uow.agents.add(Agent("researcher", "Researcher", "find facts about 'tide' mills", "ünïcode",
                                       tools=("search", "fetch"), temperature=0.3), at=T0)  # fmt: skip
            await uow.agents.add(Agent("writer", "Writer", "write", provider="primary", max_iter=3), at=T0 + 1)
            await uow.crews.add(Crew("crew", ("researcher", "writer"),
                                     (CrewTask("t1", "research", agent="researcher"),
                                      CrewTask("t2", "write", "a text", "writer", ("t1",)))), at=T0)  # fmt: skip
            await uow.flows.add(FlowRecord("flow", "Research", T0, T0, "a flow"), {"nodes": [{"id": "a"}]},
                                created_by=admin.id)  # fmt: skip
            await uow.flows.add_version("flow", {"nodes": [{"id": "a"}, {"id": "b"}], "edges": [["a", "b"]]},
                                        expected_version=1, at=T0 + 2, created_by=admin.id)  # fmt: skip
            await uow.executions.add(Execution("run-1", "flow", 2, T0 + 3, RunStatus.COMPLETED, {"topic": "mills"},
                                               {"b": {"text": "done"}}, None, T0 + 3, T0 + 9, 4))  # fmt: skip
            await uow.executions.add(Execution("run-2", "flow", 1, T0 + 4, RunStatus.FAILED, {}, None, "boom\nline 2"))
            await uow.node_runs.save_many([
                NodeRun("run-1", "a", NodeStatus.COMPLETED, 0, {"text": "facts"}, None, None, T0 + 3, T0 + 5, 2.0,
                        120, 45, 0.00123),
                NodeRun("run-1", "b", NodeStatus.COMPLETED, 1, "plain output", ("x",), None, T0 + 5, T0 + 9, 4.0),
            ])  # fmt: skip
            await uow.providers.add(LLMProviderConfig("prov", "primary", "openai", "gpt-4o-mini", T0, T0,
                                                      "https://api.example.com/v1", {"timeout": 30}, 1, 0.00015,
                                                      0.0006, 12.5, True, bytes(range(256)), "k1"))  # fmt: skip
            await uow.tools.add(ToolRecord("tool", "search", T0, T0, "searches", input_schema={"type": "object"}))
            await uow.idempotency.add(IdempotencyRecord("idem-1", "sha256:abc", T0, {"status": 201, "body": {}}))
            await uow.commit()
        logs = (
            log_store.for_tenant(tenant_id)
            if log_store is not None
            else SqlLogStore(factory.database).for_tenant(tenant_id)
        )
        await logs.append_events([
            ExecutionEvent("run-1", seq, EventKind.NODE_LOG, T0 + seq, "a", {"line": f"step {seq} \u2018quoted\u2019"})
            for seq in range(1, 5)
        ])  # fmt: skip
        await logs.add_chat_message(ChatMessageRecord("m1", "chat-1", "user", "hello 'world'", T0, {"lang": "en"}))
        await logs.add_chat_message(ChatMessageRecord("m2", "chat-1", "assistant", "hi", T0 + 1, {}))
        await logs.add_audit(AuditEntry("a1", "flow.create", T0, admin.id, "flow", "flow", "req-1", "10.0.0.1",
                                        {"name": "Research"}))  # fmt: skip
        await _fill_empty_tables(factory.database, tenant_id)
    finally:
        await factory.close()


async def _fill_empty_tables(db: SqlDatabase, tenant_id: str) -> None:
    async with db.tenant_transaction(tenant_id) as conn:
        for table in TENANT.sorted_tables:  # dependency order: referenced rows exist before their referrers
            if await conn.scalar(sa.select(sa.func.count()).select_from(table)):
                continue
            row: dict[str, Any] = {}
            for n, column in enumerate(table.columns):
                reference = next(iter(column.foreign_keys), None)
                if reference is not None:
                    row[column.name] = await conn.scalar(sa.select(reference.column).limit(1))
                else:
                    row[column.name] = _value(column, n)
            await conn.execute(table.insert().values(**row))


Snapshot = dict[str, list[tuple[Any, ...]]]


async def snapshot(url: str, tenant_id: str) -> Snapshot:
    """Every row of every tenant table and of ``alembic_version``, and the tenant's platform rows."""
    db = open_database(url, pool_size=2)
    try:
        out: Snapshot = {}
        async with db.tenant_transaction(tenant_id) as conn:
            for table in TENANT.sorted_tables:
                order = list(table.primary_key.columns) or list(table.columns)
                out[table.name] = [tuple(r) for r in (await conn.execute(sa.select(table).order_by(*order))).all()]
            version = await conn.execute(sa.text("SELECT version_num FROM alembic_version"))
            out["alembic_version"] = [tuple(r) for r in version.all()]
        async with db.platform_transaction() as conn:
            tenant = await conn.execute(sa.select(TENANTS).where(TENANTS.c.id == tenant_id))
            out["public.tenants"] = [tuple(r) for r in tenant.all()]
            users = await conn.execute(sa.select(USERS).where(USERS.c.tenant_id == tenant_id).order_by(USERS.c.id))
            out["public.users"] = [tuple(r) for r in users.all()]
        return out
    finally:
        await db.dispose()


async def pg_catalog(url: str, schema: str) -> list[tuple[str, str]]:
    """Index definitions and constraints of a schema (names included), to compare the restored DDL."""
    conn = await asyncpg.connect(**asyncpg_connect_kwargs(url))
    try:
        rows = await conn.fetch(
            "SELECT indexname, replace(indexdef, $1, 'S') FROM pg_indexes WHERE schemaname = $1 "
            "UNION ALL SELECT conname, pg_get_constraintdef(c.oid) FROM pg_constraint c "
            "JOIN pg_namespace n ON n.oid = c.connamespace WHERE n.nspname = $1 ORDER BY 1, 2",
            schema,
        )
        return [(r[0], r[1]) for r in rows]
    finally:
        await conn.close()


async def schema_exists(url: str, schema: str) -> bool:
    conn = await asyncpg.connect(**asyncpg_connect_kwargs(url))
    try:
        return bool(await conn.fetchval("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)", schema))
    finally:
        await conn.close()


async def tenant_ids(url: str) -> list[str]:
    provisioner = open_provisioner(url, pool_size=2)
    try:
        return sorted(t.id for t in await provisioner.list_tenants())
    finally:
        await provisioner.aclose()


@pytest.fixture
async def pg(pg_url: str) -> str:
    report = await migrate(pg_url)
    assert report.ok, report.failed
    return pg_url


@pytest.fixture
async def sqlite(sqlite_url: str) -> str:
    report = await migrate(sqlite_url)
    assert report.ok, report.failed
    return sqlite_url


def assert_every_table_filled(before: Snapshot) -> None:
    empty = [name for name, rows in before.items() if not rows]
    assert not empty, f"the test left tables empty: {empty}"


# -- PostgreSQL ------------------------------------------------------------------------------------------
async def test_backup_all_then_restore_one_tenant_row_for_row(pg: str, tmp_path: Path) -> None:
    acme, beta = await register(pg, "acme"), await register(pg, "beta")
    await populate(pg, acme, "acme")
    await populate(pg, beta, "beta")
    before_acme, before_beta = await snapshot(pg, acme), await snapshot(pg, beta)
    catalog = await pg_catalog(pg, tenant_schema(acme))
    assert_every_table_filled(before_acme)

    result = await asyncio.to_thread(crewflow, "backup", "--all", "--out", str(tmp_path / "b"), "--database-url", pg)
    assert result.returncode == 0, result.stderr
    assert "backed up 2 tenants" in result.stdout
    assert not (tmp_path / "b.partial").exists()
    assert (tmp_path / "b").stat().st_mode & 0o777 == 0o700  # password hashes inside: the owner only
    manifest = read_manifest(tmp_path / "b")
    assert manifest.backend == "postgresql"
    assert manifest.log_store == "sql"
    assert {(t.id, t.slug, t.revision) for t in manifest.tenants} == {
        (acme, "acme", head_revision("tenant")), (beta, "beta", head_revision("tenant"))
    }  # fmt: skip
    assert set(manifest.files) == {n for t in manifest.tenants for n in t.files()}

    await drop(pg, acme)
    assert not await schema_exists(pg, tenant_schema(acme))
    result = await asyncio.to_thread(crewflow, "restore", "--from", str(tmp_path / "b"), "--tenant", "acme",
                                     "--database-url", pg)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "restored 1 tenants" in result.stdout
    assert await snapshot(pg, acme) == before_acme
    assert await pg_catalog(pg, tenant_schema(acme)) == catalog
    assert await snapshot(pg, beta) == before_beta  # the other tenant of the backup was not touched

    # the restored tenant works through the application's own adapters
    factory = build_uow_factory(pg, pool_size=2)
    try:
        async with factory.for_tenant(acme) as uow:
            assert (await uow.flows.get("flow")).current_version == 2
            assert (await uow.providers.get("prov")).encrypted_key == bytes(range(256))
        async with factory.platform() as p:
            assert (await p.users.get_by_email("acme-admin@example.com")).tenant_id == acme
    finally:
        await factory.close()


async def test_restore_refuses_an_existing_tenant_unless_replace(pg: str, tmp_path: Path) -> None:
    acme = await register(pg, "acme")
    await populate(pg, acme, "acme")
    before = await snapshot(pg, acme)
    await backup(pg, tmp_path / "b", tenants=["acme"])
    factory = build_uow_factory(pg, pool_size=2)
    try:
        async with factory.for_tenant(acme) as uow:  # the tenant changes after the backup
            await uow.agents.add(Agent("late", "Late", "arrives after the backup"), at=T0 + 50)
            await uow.flows.delete("flow")
            await uow.commit()
    finally:
        await factory.close()
    changed = await snapshot(pg, acme)
    assert changed != before

    result = await asyncio.to_thread(crewflow, "restore", "--from", str(tmp_path / "b"), "--tenant", acme,
                                     "--database-url", pg)  # fmt: skip
    assert result.returncode == 2
    assert "already exists; pass --replace" in one_error_line(result)
    assert await snapshot(pg, acme) == changed

    report = await restore(pg, tmp_path / "b", tenants=["acme"], replace=True)
    assert report.restored == (acme,)
    assert await snapshot(pg, acme) == before


async def test_a_slug_or_email_taken_by_another_tenant_is_refused_before_any_change(pg: str, tmp_path: Path) -> None:
    acme = await register(pg, "acme")
    await populate(pg, acme, "acme")
    await backup(pg, tmp_path / "b", tenants=[acme])
    await drop(pg, acme)
    other = await register(pg, "acme")  # the slug went to a new tenant meanwhile
    with pytest.raises(BackupError, match="slug 'acme' belongs to another tenant") as caught:
        await restore(pg, tmp_path / "b", tenants=[acme], replace=True)
    assert caught.value.code == 2
    assert await tenant_ids(pg) == [other]
    assert not await schema_exists(pg, tenant_schema(acme))


async def test_a_restore_failing_midway_leaves_nothing(pg: str, tmp_path: Path) -> None:
    """The platform rows are inserted last, in the transaction that created the schema: a row the database
    rejects (here a user without a role) rolls the whole tenant back."""
    acme = await register(pg, "acme")
    await populate(pg, acme, "acme")
    await backup(pg, tmp_path / "b", tenants=[acme])
    await drop(pg, acme)
    manifest_path = tmp_path / "b" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    public = tmp_path / "b" / manifest["tenants"][0]["public"]
    rows = json.loads(public.read_text())
    rows["users"][0]["role"] = None
    public.write_text(json.dumps(rows))
    manifest["files"][manifest["tenants"][0]["public"]] = backup_module._file_record(public)  # a consistent edit
    manifest_path.write_text(json.dumps(manifest))

    with pytest.raises(BackupError, match=r"psql: .*role") as caught:
        await restore(pg, tmp_path / "b", tenants=[acme])
    assert caught.value.code == 1
    assert await tenant_ids(pg) == []
    assert not await schema_exists(pg, tenant_schema(acme))


@pytest.mark.parametrize("damage", ["missing", "not-json", "wrong-format", "archive-corrupt", "archive-missing"])
async def test_a_damaged_backup_is_refused_and_nothing_changes(pg: str, tmp_path: Path, damage: str) -> None:
    acme = await register(pg, "acme")
    await populate(pg, acme, "acme")
    await backup(pg, tmp_path / "b", tenants=[acme])
    await drop(pg, acme)
    manifest_path = tmp_path / "b" / "manifest.json"
    archive = tmp_path / "b" / read_manifest(tmp_path / "b").tenants[0].archive
    expected = {
        "missing": "manifest.json is missing",
        "not-json": "not a valid crewflow backup manifest",
        "wrong-format": "format version 99 is not supported",
        "archive-corrupt": "is corrupt (checksum mismatch)",
        "archive-missing": "is missing from",
    }[damage]
    if damage == "missing":
        manifest_path.unlink()
    elif damage == "not-json":
        manifest_path.write_text(manifest_path.read_text()[:-40])  # truncated
    elif damage == "wrong-format":
        manifest_path.write_text(manifest_path.read_text().replace('"version": 1', '"version": 99'))
    elif damage == "archive-corrupt":
        data = bytearray(archive.read_bytes())
        data[len(data) // 2] ^= 0xFF
        archive.write_bytes(bytes(data))
    else:
        archive.unlink()

    result = await asyncio.to_thread(crewflow, "restore", "--from", str(tmp_path / "b"), "--all", "--database-url", pg)
    assert result.returncode == 2
    assert expected in one_error_line(result)
    assert await tenant_ids(pg) == []
    assert not await schema_exists(pg, tenant_schema(acme))


async def test_cli_errors_are_one_line(pg: str, tmp_path: Path) -> None:
    await register(pg, "acme")
    unknown = await asyncio.to_thread(crewflow, "backup", "--tenant", "nope", "--out", str(tmp_path / "b"),
                                      "--database-url", pg)  # fmt: skip
    assert unknown.returncode == 2
    assert "no tenant with id or slug 'nope'" in one_error_line(unknown)
    assert not (tmp_path / "b").exists()
    (tmp_path / "taken").mkdir()
    taken = await asyncio.to_thread(crewflow, "backup", "--all", "--out", str(tmp_path / "taken"), "--database-url", pg)
    assert taken.returncode == 2
    assert "already exists" in one_error_line(taken)
    down = await asyncio.to_thread(crewflow, "backup", "--all", "--out", str(tmp_path / "c"),
                                   "--database-url", "postgresql+asyncpg://postgres@127.0.0.1:1/nothing")  # fmt: skip
    assert down.returncode == 1
    one_error_line(down)


async def test_an_interrupted_backup_resumes_from_its_journal(
    pg: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = [await register(pg, f"t{n}") for n in range(3)]
    for n, tenant_id in enumerate(ids):
        await populate(pg, tenant_id, f"t{n}")
    real = backup_module._run_tool
    calls = 0

    async def fail_second_dump(args: Any, env: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise BackupError("pg_dump failed: simulated crash")
        await real(args, env)

    monkeypatch.setattr(backup_module, "_run_tool", fail_second_dump)
    with pytest.raises(BackupError, match="simulated crash"):
        await backup(pg, tmp_path / "b", jobs=1, schemas_per_dump=1)
    assert not (tmp_path / "b").exists()
    assert (tmp_path / "b.partial" / "journal.jsonl").read_text().count("\n") == 1

    monkeypatch.setattr(backup_module, "_run_tool", real)
    report = await backup(pg, tmp_path / "b", jobs=1, schemas_per_dump=1)
    assert (report.tenants, report.reused, report.dumps) == (3, 1, 2)
    assert not (tmp_path / "b.partial").exists()
    assert sorted(t.id for t in read_manifest(tmp_path / "b").tenants) == sorted(ids)
    befores = {tenant_id: await snapshot(pg, tenant_id) for tenant_id in ids}
    for tenant_id in ids:
        await drop(pg, tenant_id)
    report2 = await restore(pg, tmp_path / "b", jobs=2)
    assert sorted(report2.restored) == sorted(ids)
    for tenant_id in ids:
        assert await snapshot(pg, tenant_id) == befores[tenant_id]


async def test_a_schema_backed_up_at_an_older_revision_is_migrated_on_restore(pg: str, tmp_path: Path) -> None:
    """A tenant schema at the baseline revision (built with the baseline migration) comes back at head."""
    import io

    from alembic import command

    buffer = io.StringIO()
    command.upgrade(alembic_config("tenant", output_buffer=buffer), "t0001", sql=True)
    tenant_id = uuid.uuid4().hex[:16]
    schema = tenant_schema(tenant_id)
    conn = await asyncpg.connect(**asyncpg_connect_kwargs(pg))
    try:
        async with conn.transaction():
            await conn.execute(f'CREATE SCHEMA "{schema}"; SET LOCAL search_path TO "{schema}";\n{buffer.getvalue()}')
            await conn.execute(f'INSERT INTO "{schema}".agents (id, role, goal, tools, created_at, updated_at) '
                               "VALUES ('old', 'Old', 'kept', '[]', 1.5, 2.5)")  # fmt: skip
            await conn.execute("INSERT INTO public.tenants (id, slug, name, db_schema, created_at) "
                               "VALUES ($1, 'old', 'Old', $2, now())", tenant_id, schema)  # fmt: skip
    finally:
        await conn.close()
    await backup(pg, tmp_path / "b", tenants=["old"])
    assert read_manifest(tmp_path / "b").tenants[0].revision == "t0001"
    await drop(pg, tenant_id)

    report = await restore(pg, tmp_path / "b", tenants=["old"])
    assert report.upgraded == (tenant_id,)
    after = await snapshot(pg, tenant_id)  # reads every table of head: fails if the upgrade did not run
    assert after["alembic_version"] == [(head_revision("tenant"),)]
    assert [(r[0], r[1], r[2]) for r in after["agents"]] == [("old", "Old", "kept")]


async def test_a_superuser_restore_keeps_the_application_role_as_owner(pg: str, tmp_path: Path) -> None:
    """The application connects as its own role; a restore run by a superuser must hand the schema and its
    tables back to that role, or the application could not read its own tenant."""
    role = f"crewflow_app_{uuid.uuid4().hex[:8]}"
    acme = await register(pg, "acme")
    schema = tenant_schema(acme)
    conn = await asyncpg.connect(**asyncpg_connect_kwargs(pg))
    try:
        await conn.execute(f'CREATE ROLE "{role}" NOLOGIN')
        try:
            await conn.execute(f'ALTER SCHEMA "{schema}" OWNER TO "{role}"')
            for table in [*TENANT.tables, "alembic_version"]:
                await conn.execute(f'ALTER TABLE "{schema}"."{table}" OWNER TO "{role}"')
            await backup(pg, tmp_path / "b", tenants=[acme])
            await drop(pg, acme)
            await restore(pg, tmp_path / "b", tenants=[acme])
            owners = await conn.fetch(
                "SELECT DISTINCT pg_get_userbyid(c.relowner) FROM pg_class c JOIN pg_namespace n "
                "ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relkind = 'r'",
                schema,
            )
            assert [r[0] for r in owners] == [role]
            assert await conn.fetchval("SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = $1",
                                       schema) == role  # fmt: skip
        finally:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            await conn.execute(f'DROP ROLE "{role}"')
    finally:
        await conn.close()


# -- MongoDB log store (in-process fake) -----------------------------------------------------------------
class BeanieCompatibleFakeDatabase:
    """mongomock-motor database accepting the keyword arguments beanie 2 passes to ``list_collection_names``
    (the same shim as tests/integration/test_logstore_contract.py)."""

    def __init__(self, database: Any) -> None:
        self._database = database

    def __getattr__(self, name: str) -> Any:
        return getattr(self._database, name)

    def __getitem__(self, name: str) -> Any:
        return self._database[name]

    async def list_collection_names(self, *, authorizedCollections: bool = False, nameOnly: bool = False,
                                    **kwargs: Any) -> list[str]:  # fmt: skip
        return list(await self._database.list_collection_names(**kwargs))


@pytest.fixture
async def mongo_store() -> AsyncIterator[Any]:
    from mongomock_motor import AsyncMongoMockClient

    from crewflow.adapters.mongo import MongoLogStore

    store = MongoLogStore(BeanieCompatibleFakeDatabase(AsyncMongoMockClient(tz_aware=True)["crewflow_backup"]))
    try:
        yield store
    finally:
        await store.close()


async def mongo_documents(store: Any, tenant_id: str) -> dict[str, list[dict[str, Any]]]:
    from crewflow.adapters.mongo.logstore import collection_names

    return {
        name: [doc async for doc in store.database[name].find({}).sort("_id", 1)]
        for name in collection_names(tenant_id)
    }


async def test_mongodb_logs_are_backed_up_and_restored(pg: str, tmp_path: Path, mongo_store: Any) -> None:
    from crewflow.adapters.mongo.logstore import collection_names

    acme, beta = await register(pg, "acme"), await register(pg, "beta")
    await populate(pg, acme, "acme", log_store=mongo_store)
    await populate(pg, beta, "beta", log_store=mongo_store)
    docs_acme, docs_beta = await mongo_documents(mongo_store, acme), await mongo_documents(mongo_store, beta)
    assert all(docs_acme.values())
    before = await snapshot(pg, acme)

    await backup(pg, tmp_path / "b", log_store=mongo_store)
    manifest = read_manifest(tmp_path / "b")
    assert manifest.log_store == "mongodb"
    assert all(t.logs for t in manifest.tenants)
    with pytest.raises(BackupError, match="holds MongoDB logs"):
        await restore(pg, tmp_path / "b", tenants=[acme])

    await drop(pg, acme)
    await mongo_store.drop_tenant(acme)
    assert not any((await mongo_documents(mongo_store, acme)).values())
    await restore(pg, tmp_path / "b", tenants=["acme"], log_store=mongo_store)
    assert await snapshot(pg, acme) == before
    assert await mongo_documents(mongo_store, acme) == docs_acme
    assert await mongo_documents(mongo_store, beta) == docs_beta
    names = set(await mongo_store.database.list_collection_names())
    assert not [n for n in names if "__restore_" in n]  # no staging collection left behind
    indexes = await mongo_store.database[collection_names(acme)[0]].index_information()
    assert "events_execution_seq" in indexes  # the adapter's indexes were rebuilt on the restored collection
    events = await mongo_store.for_tenant(acme).events_after("run-1")
    assert [e.seq for e in events] == [1, 2, 3, 4]

    # --replace swaps the logs too: documents added after the backup are gone again
    await mongo_store.for_tenant(acme).add_audit(AuditEntry("late", "flow.delete", T0 + 99))
    await restore(pg, tmp_path / "b", tenants=[acme], replace=True, log_store=mongo_store)
    assert await mongo_documents(mongo_store, acme) == docs_acme


# -- SQLite (embedded) -----------------------------------------------------------------------------------
async def test_sqlite_round_trip_replace_and_refusals(sqlite: str, tmp_path: Path) -> None:
    acme, beta = await register(sqlite, "acme"), await register(sqlite, "beta")
    await populate(sqlite, acme, "acme")
    await populate(sqlite, beta, "beta")
    before_acme, before_beta = await snapshot(sqlite, acme), await snapshot(sqlite, beta)
    assert_every_table_filled(before_acme)

    result = await asyncio.to_thread(crewflow, "backup", "--all", "--out", str(tmp_path / "b"),
                                     "--database-url", sqlite)  # fmt: skip
    assert result.returncode == 0, result.stderr
    manifest = read_manifest(tmp_path / "b")
    assert manifest.backend == "sqlite"
    assert {t.revision for t in manifest.tenants} == {head_revision("tenant")}

    await drop(sqlite, acme)
    result = await asyncio.to_thread(crewflow, "restore", "--from", str(tmp_path / "b"), "--tenant", "acme",
                                     "--database-url", sqlite)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert await snapshot(sqlite, acme) == before_acme
    assert await snapshot(sqlite, beta) == before_beta

    # an existing tenant is refused, then replaced (its file and rows), leaving no staging files behind
    factory = build_uow_factory(sqlite, pool_size=2)
    try:
        async with factory.for_tenant(beta) as uow:
            await uow.agents.delete("writer")
            await uow.commit()
    finally:
        await factory.close()
    changed = await snapshot(sqlite, beta)
    with pytest.raises(BackupError, match="already exists; pass --replace") as caught:
        await restore(sqlite, tmp_path / "b", tenants=["beta"])
    assert caught.value.code == 2
    assert await snapshot(sqlite, beta) == changed
    await restore(sqlite, tmp_path / "b", tenants=["beta"], replace=True)
    assert await snapshot(sqlite, beta) == before_beta
    tenant_dir = Path(str(sa.make_url(sqlite).database) + ".tenants")
    leftovers = await asyncio.to_thread(lambda: [p.name for p in tenant_dir.iterdir() if p.name.startswith(".")])
    assert leftovers == []

    # a PostgreSQL-only mistake: a SQLite backup cannot go into PostgreSQL (and vice versa)
    (tmp_path / "b" / "manifest.json").unlink()
    missing = await asyncio.to_thread(crewflow, "restore", "--from", str(tmp_path / "b"), "--all", "--replace",
                                      "--database-url", sqlite)  # fmt: skip
    assert missing.returncode == 2
    assert "manifest.json is missing" in one_error_line(missing)
    assert await snapshot(sqlite, beta) == before_beta


# -- scale: 1,000 tenant schemas -------------------------------------------------------------------------
SCALE_TENANTS = int(os.environ.get("CREWFLOW_BACKUP_SCALE_TENANTS", "1000"))


async def build_tenants(url: str, count: int, *, per_transaction: int = 5, connections: int = 4) -> list[str]:
    """``count`` tenants fast: the tenant DDL rendered once, run into ``per_transaction`` schemas per
    transaction on ``connections`` connections, each with its platform row and a few rows."""
    ddl = render_tenant_ddl()
    ids = [f"s{n:05d}{uuid.uuid4().hex[:6]}" for n in range(count)]
    queue: asyncio.Queue[list[str]] = asyncio.Queue()
    for i in range(0, count, per_transaction):
        queue.put_nowait(ids[i : i + per_transaction])

    async def worker() -> None:
        conn = await asyncpg.connect(**asyncpg_connect_kwargs(url))
        try:
            while not queue.empty():
                chunk = queue.get_nowait()
                async with conn.transaction():
                    for tenant_id in chunk:
                        schema = tenant_schema(tenant_id)
                        await conn.execute(ddl.script_for(schema))
                        await conn.execute(
                            f'INSERT INTO "{schema}".agents (id, role, goal, tools, created_at, updated_at) '
                            f"VALUES ('a1', 'R', 'G', '[]', 1.0, 2.0), ('a2', 'R2', 'G2', '[\"x\"]', 3.0, 4.0); "
                            f'INSERT INTO "{schema}".flows (id, name, current_version, created_at, updated_at) '
                            f"VALUES ('f1', 'Flow', 1, 1.0, 1.0); "
                            f'INSERT INTO "{schema}".flow_versions (flow_id, version, definition, created_at) '
                            f"VALUES ('f1', 1, '{{\"nodes\": []}}', 1.0)"
                        )  # fmt: skip
                        await conn.execute(
                            "INSERT INTO public.tenants (id, slug, name, db_schema, created_at) "
                            "VALUES ($1, $2, $2, $3, now())",
                            tenant_id, f"scale-{tenant_id}", schema,
                        )  # fmt: skip
        finally:
            await conn.close()

    await asyncio.gather(*(worker() for _ in range(connections)))
    return ids


async def test_backup_all_of_1000_tenant_schemas_and_restore_one(pg: str, tmp_path: Path) -> None:
    started = time.perf_counter()
    ids = await build_tenants(pg, SCALE_TENANTS)
    built = time.perf_counter() - started
    target = ids[len(ids) // 2]
    await populate(pg, target, "target")
    before = await snapshot(pg, target)

    started = time.perf_counter()
    report = await backup(pg, tmp_path / "b")  # default: 2 jobs, batches sized to the lock table
    backup_seconds = time.perf_counter() - started
    assert report.tenants == len(ids)
    assert report.dumps > 1  # batched: one pg_dump of every schema would run out of lock slots
    manifest = read_manifest(tmp_path / "b")
    assert len(manifest.tenants) == len(ids)

    await drop(pg, target)
    started = time.perf_counter()
    restored = await restore(pg, tmp_path / "b", tenants=[target])
    restore_seconds = time.perf_counter() - started
    assert restored.restored == (target,)
    assert await snapshot(pg, target) == before
    print(
        f"\n{len(ids)} tenant schemas: built in {built:.1f} s; backup --all {backup_seconds:.1f} s "
        f"({report.dumps} pg_dump runs of up to {report.schemas_per_dump} schemas, 2 jobs); "
        f"restore of one tenant {restore_seconds:.2f} s"
    )
