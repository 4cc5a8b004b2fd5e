"""Provider API keys at rest: sealed through the repository, never readable in the database or a dump, and
rotated to a new master key by ``rotate_keys`` / ``crewflow keys rotate``. Real SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest

from crewflow.adapters.crypto import AesGcmCipher
from crewflow.adapters.sql.uow import SqlUnitOfWorkFactory
from crewflow.application.keys import open_provider_key, rotate_keys, seal_provider_key
from crewflow.domain.execution import LLMProviderConfig
from crewflow.domain.tenancy import Tenant, schema_name_for
from crewflow.ports.secrets import DecryptionFailed, UnknownKeyId, mask

pytestmark = pytest.mark.integration

OLD = "old:" + base64.b64encode(b"o" * 32).decode()
NEW = "new:" + base64.b64encode(b"n" * 32).decode()
NewTenant = Callable[[], Awaitable[str]]


def _api_key(tag: str) -> str:
    return f"sk-live-{tag}-9f8e7d6c5b4a3f2e1d0c"


def _provider(provider_id: str, priority: int = 10) -> LLMProviderConfig:
    return LLMProviderConfig(id=provider_id, name=f"name-{provider_id}", provider_type="openai", model="gpt-x",
                             created_at=1.0, updated_at=2.0, priority=priority)  # fmt: skip


async def _register(factory: SqlUnitOfWorkFactory, tenant_id: str) -> None:
    async with factory.platform() as uow:
        await uow.tenants.add(Tenant(id=tenant_id, slug=f"t-{tenant_id}", name=tenant_id,
                                     db_schema=schema_name_for(tenant_id), created_at=datetime.now(UTC)))  # fmt: skip
        await uow.commit()


async def _store(factory: SqlUnitOfWorkFactory, cipher: AesGcmCipher, tenant_id: str,
                 providers: dict[str, str | None]) -> None:  # fmt: skip
    async with factory.for_tenant(tenant_id) as uow:
        for priority, (provider_id, api_key) in enumerate(providers.items()):
            provider = _provider(provider_id, priority)
            if api_key is not None:
                provider = seal_provider_key(cipher, tenant_id, provider, api_key)
            await uow.providers.add(provider)
        await uow.commit()


async def _providers(factory: SqlUnitOfWorkFactory, tenant_id: str) -> dict[str, LLMProviderConfig]:
    async with factory.for_tenant(tenant_id) as uow:
        return {p.id: p for p in (await uow.providers.list(limit=100)).items}


async def test_a_sealed_key_round_trips_through_the_repository_and_is_bound_to_its_tenant_and_provider(
    uow_factory: SqlUnitOfWorkFactory, new_tenant: NewTenant
) -> None:
    cipher = AesGcmCipher.from_setting(NEW)
    a, b = await new_tenant(), await new_tenant()
    await _store(uow_factory, cipher, a, {"p1": _api_key("a1"), "p2": _api_key("a2"), "nokey": None})
    stored = await _providers(uow_factory, a)
    assert open_provider_key(cipher, a, stored["p1"]) == _api_key("a1")
    assert open_provider_key(cipher, a, stored["nokey"]) is None
    assert stored["p1"].key_id == "new"
    assert _api_key("a1") not in repr(stored["p1"])
    # the blob of p1 copied onto p2, or into another tenant, does not open
    swapped = dataclasses.replace(stored["p2"], encrypted_key=stored["p1"].encrypted_key)
    with pytest.raises(DecryptionFailed):
        open_provider_key(cipher, a, swapped)
    with pytest.raises(DecryptionFailed):
        open_provider_key(cipher, b, stored["p1"])
    assert mask(_api_key("a1")) == "sk-…1d0c"


async def test_rotation_reseals_every_key_under_the_current_key_and_is_idempotent(
    uow_factory: SqlUnitOfWorkFactory, new_tenant: NewTenant, database_url: str
) -> None:
    before = AesGcmCipher.from_setting(OLD)
    a, b = await new_tenant(), await new_tenant()
    for tenant_id in (a, b):
        await _register(uow_factory, tenant_id)
    await _store(uow_factory, before, a, {"p1": _api_key("a1"), "p2": _api_key("a2"), "nokey": None})
    await _store(uow_factory, before, b, {"p1": _api_key("b1")})
    old_blob = (await _providers(uow_factory, a))["p1"].encrypted_key

    during = AesGcmCipher.from_setting(f"{NEW},{OLD}")
    # SQLite: a fresh database per test, so "every tenant" is exactly these two. The PostgreSQL database is
    # shared by the session's tests, whose leftovers are not ours to rotate: name the tenants there.
    scope = None if database_url.startswith("sqlite") else [a, b]
    progress: list[tuple[str, int]] = []
    report = await rotate_keys(uow_factory, during, tenant_ids=scope, on_tenant=lambda t, n: progress.append((t, n)))
    assert (report.tenants, report.rotated, report.already_current, report.without_key) == (2, 3, 0, 1)
    assert report.ok
    assert sorted(progress) == sorted([(a, 2), (b, 1)])

    after = AesGcmCipher.from_setting(NEW)  # the old key can now leave the keyring
    for tenant_id, expected in ((a, {"p1": "a1", "p2": "a2"}), (b, {"p1": "b1"})):
        stored = await _providers(uow_factory, tenant_id)
        for provider_id, tag in expected.items():
            assert stored[provider_id].key_id == "new"
            assert open_provider_key(after, tenant_id, stored[provider_id]) == _api_key(tag)
    assert (await _providers(uow_factory, a))["p1"].encrypted_key != old_blob

    again = await rotate_keys(uow_factory, during, tenant_ids=scope)
    assert (again.rotated, again.already_current) == (0, 3)


async def test_a_key_that_cannot_be_opened_is_reported_and_left_alone_while_the_others_rotate(
    uow_factory: SqlUnitOfWorkFactory, new_tenant: NewTenant
) -> None:
    tenant_id = await new_tenant()
    lost = "lost:" + base64.b64encode(b"l" * 32).decode()
    await _store(uow_factory, AesGcmCipher.from_setting(OLD), tenant_id, {"good": _api_key("g")})
    await _store(uow_factory, AesGcmCipher.from_setting(lost), tenant_id, {"orphan": _api_key("o")})
    orphan_before = (await _providers(uow_factory, tenant_id))["orphan"]

    report = await rotate_keys(uow_factory, AesGcmCipher.from_setting(f"{NEW},{OLD}"), tenant_ids=[tenant_id])
    assert report.rotated == 1
    assert [(f.tenant_id, f.provider_id) for f in report.failures] == [(tenant_id, "orphan")]
    assert "lost" in report.failures[0].reason
    assert _api_key("o") not in report.failures[0].reason
    stored = await _providers(uow_factory, tenant_id)
    assert stored["orphan"] == orphan_before
    assert stored["good"].key_id == "new"
    with pytest.raises(UnknownKeyId):
        open_provider_key(AesGcmCipher.from_setting(NEW), tenant_id, stored["orphan"])


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_no_raw_key_is_readable_in_a_pg_dump_or_any_column_of_the_providers_table(
    uow_factory: SqlUnitOfWorkFactory, new_tenant: NewTenant, database_url: str
) -> None:
    tenant_id = await new_tenant()
    secret = _api_key("dumped")
    await _store(uow_factory, AesGcmCipher.from_setting(NEW), tenant_id, {"p1": secret})
    dsn = database_url.replace("postgresql+asyncpg://", "postgresql://")
    schema = schema_name_for(tenant_id)

    pg_dump = ["pg_dump", "--no-owner", "-n", schema, dsn]
    dump = (await asyncio.to_thread(subprocess.run, pg_dump, capture_output=True, check=True)).stdout
    assert b"llm_providers" in dump  # the dump does contain the table and its row
    assert b"name-p1" in dump
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(f'SELECT t::text AS row_text FROM "{schema}".llm_providers AS t')  # every column
    finally:
        await conn.close()
    assert len(rows) == 1
    forms = {secret.encode(), secret.encode().hex().encode(), base64.b64encode(secret.encode()), b"9f8e7d6c5b4a"}
    for form in forms:
        assert form not in dump
        assert form.decode() not in rows[0]["row_text"]


async def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    code = "import sys; from crewflow.entrypoints.cli import main; sys.exit(main(sys.argv[1:]))"
    full_env = {k: v for k, v in os.environ.items() if k not in ("CREWFLOW_SECRET_KEY", "CREWFLOW_DATABASE_URL")}
    full_env.update(env)
    return await asyncio.to_thread(subprocess.run, [sys.executable, "-c", code, *args], capture_output=True,
                                   text=True, env=full_env, check=False)  # fmt: skip


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_the_keys_rotate_command_rotates_and_exits_zero(
    uow_factory: SqlUnitOfWorkFactory, new_tenant: NewTenant, database_url: str
) -> None:
    tenant_id = await new_tenant()
    await _register(uow_factory, tenant_id)
    await _store(uow_factory, AesGcmCipher.from_setting(OLD), tenant_id, {"p1": _api_key("cli")})

    result = await _cli(
        ["keys", "rotate"], {"CREWFLOW_SECRET_KEY": f"{NEW},{OLD}", "CREWFLOW_DATABASE_URL": database_url}
    )
    assert result.returncode == 0, result.stderr
    assert f"tenant {tenant_id}: 1 key(s) re-encrypted" in result.stdout
    stored = await _providers(uow_factory, tenant_id)
    assert open_provider_key(AesGcmCipher.from_setting(NEW), tenant_id, stored["p1"]) == _api_key("cli")
    for output in (result.stdout, result.stderr):
        assert _api_key("cli") not in output
        assert NEW.split(":")[1] not in output

    again = await _cli(["keys", "rotate", "--database-url", database_url, "--tenant", tenant_id],
                 {"CREWFLOW_SECRET_KEY": NEW})  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert "0 key(s) re-encrypted" in again.stdout


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_the_keys_rotate_command_refuses_a_missing_or_malformed_key_without_echoing_it(
    database_url: str,
) -> None:
    missing = await _cli(["keys", "rotate", "--database-url", database_url], {})
    assert missing.returncode == 2
    assert "CREWFLOW_SECRET_KEY is not set" in missing.stderr
    bad_value = "k1:" + base64.b64encode(b"sixteen-byte-key").decode()
    malformed = await _cli(["keys", "rotate", "--database-url", database_url], {"CREWFLOW_SECRET_KEY": bad_value})
    assert malformed.returncode == 2
    assert "32" in malformed.stderr
    assert bad_value.split(":")[1] not in malformed.stderr + malformed.stdout


async def test_the_keys_rotate_command_reports_a_database_without_tables_in_one_line(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"
    result = await _cli(["keys", "rotate", "--database-url", url], {"CREWFLOW_SECRET_KEY": NEW})
    assert result.returncode == 1
    assert "database error: no such table" in result.stderr
    assert "Traceback" not in result.stderr
