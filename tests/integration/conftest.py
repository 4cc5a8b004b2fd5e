"""Shared fixtures of the integration tests: real databases, never mocks.

- ``postgres_url`` (session): a fresh, uniquely named PostgreSQL database on 127.0.0.1:5432 (user postgres,
  trust auth) as ``postgresql+asyncpg://postgres@127.0.0.1:5432/<name>``, dropped at the end of the run.
- ``sqlite_url`` (per test): ``sqlite+aiosqlite:///<tmp>/crewflow.db`` in the test's temporary directory.
- ``database_url`` (per test, parametrized ``sqlite`` / ``postgres``): one of the two; a test using it (or a
  fixture built on it) runs once per backend.
- ``uow_factory``: a ``SqlUnitOfWorkFactory`` on ``database_url`` with the platform tables created.
- ``new_tenant``: ``await new_tenant()`` creates the storage (schema or file) of a fresh tenant id and
  returns the id; every tenant created this way is dropped after the test.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import asyncpg
import pytest

from crewflow.adapters.sql.uow import SqlUnitOfWorkFactory, build_uow_factory

PG_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
BACKENDS = ["sqlite", "postgres"]


def _admin(sql: str) -> None:
    """Run one statement on the maintenance database, from a thread of its own (a test loop may be running)."""

    async def run() -> None:
        conn = await asyncpg.connect(PG_ADMIN_DSN)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, run()).result()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    name = f"crewflow_test_{uuid.uuid4().hex[:12]}"
    _admin(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    finally:
        _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test alone (unmigrated), dropped after it."""
    name = f"crewflow_t_{uuid.uuid4().hex[:12]}"
    _admin(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    finally:
        _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'crewflow.db'}"


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest) -> str:
    if request.param == "postgres":
        return str(request.getfixturevalue("postgres_url"))
    return str(request.getfixturevalue("sqlite_url"))


@pytest.fixture
async def uow_factory(database_url: str) -> AsyncIterator[SqlUnitOfWorkFactory]:
    factory = build_uow_factory(database_url, pool_size=4)
    await factory.create_platform_schema()
    try:
        yield factory
    finally:
        await factory.close()


@pytest.fixture
async def new_tenant(uow_factory: SqlUnitOfWorkFactory) -> AsyncIterator[Callable[[], Awaitable[str]]]:
    created: list[str] = []

    async def create() -> str:
        tenant_id = uuid.uuid4().hex[:16]
        await uow_factory.create_tenant_storage(tenant_id)
        created.append(tenant_id)
        return tenant_id

    try:
        yield create
    finally:
        for tenant_id in created:
            await uow_factory.drop_tenant_storage(tenant_id)
