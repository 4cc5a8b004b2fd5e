"""The cache-aside flow resolver on a real database (SQLite and PostgreSQL) and each cache adapter (in
memory, Redis on the local server under a prefix of its own): hits after the first lookup, the result of
``resolve_flow`` unchanged, the current version followed only after invalidation, deleted flows gone, tenants
apart, and the flow routes invalidating on every change."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from api_support import bearer, make_user
from litestar.testing import AsyncTestClient

from crewflow.adapters.cache.memory import MemoryCache
from crewflow.adapters.metrics import InMemoryMetrics
from crewflow.adapters.redis import RedisCache, create_redis
from crewflow.adapters.sql.uow import SqlUnitOfWorkFactory
from crewflow.application.catalog import create_flow, resolve_flow, update_flow
from crewflow.application.flow_cache import CachedFlowResolver
from crewflow.bootstrap import build_api_container
from crewflow.domain.errors import NotFound
from crewflow.domain.tenancy import Role
from crewflow.entrypoints.http import create_app
from crewflow.ports.cache import Cache
from crewflow.settings import Settings

pytestmark = pytest.mark.integration

REDIS_URL = "redis://127.0.0.1:6379/0"


def document(task: str) -> dict[str, Any]:
    return {
        "id": "note",
        "name": "Note",
        "agents": {"writer": {"role": "Writer", "goal": "Write", "provider": "scripted"}},
        "nodes": [{"id": "in", "kind": "input"}, {"id": "write", "kind": "agent", "agent": "writer", "task": task},
                  {"id": "out", "kind": "output"}],
        "edges": ["in -> write", "write -> out"],
    }  # fmt: skip


@pytest.fixture(params=["memory", "redis"])
async def cache(request: pytest.FixtureRequest) -> AsyncIterator[Cache]:
    if request.param == "memory":
        yield MemoryCache()
        return
    client = create_redis(REDIS_URL)
    prefix = f"crewflow-test-{uuid.uuid4().hex[:12]}"
    try:
        yield RedisCache(client, prefix=prefix)
    finally:
        keys = [k async for k in client.scan_iter(match=f"{prefix}:*", count=500)]
        if keys:
            await client.delete(*keys)
        await client.aclose()


def hits(metrics: InMemoryMetrics, result: str) -> float:
    return metrics.counter("cache_hits_total", cache="flows", result=result)


async def save(uow_factory: SqlUnitOfWorkFactory, tenant_id: str, task: str) -> None:
    async with uow_factory.for_tenant(tenant_id) as uow:
        await create_flow(uow, document(task), at=1.0, new_id=lambda s: s)
        await uow.commit()


async def test_lookups_hit_after_the_first_and_resolve_the_same_flow(
    uow_factory: SqlUnitOfWorkFactory, new_tenant: Callable[[], Awaitable[str]], cache: Cache,
) -> None:
    tenant_id = await new_tenant()
    await save(uow_factory, tenant_id, "first")
    metrics = InMemoryMetrics()
    resolver = CachedFlowResolver(cache, metrics)
    async with uow_factory.for_tenant(tenant_id) as uow:
        expected = await resolve_flow(uow, "note")
        first = await resolver.resolve(uow, "note")
        again = await resolver.resolve(uow, "note")
        pinned = await resolver.resolve(uow, "note", 1)
    assert first == again == pinned == expected
    assert (hits(metrics, "miss"), hits(metrics, "hit")) == (1, 2)


async def test_a_new_version_is_followed_once_the_flow_is_invalidated(
    uow_factory: SqlUnitOfWorkFactory, new_tenant: Callable[[], Awaitable[str]], cache: Cache,
) -> None:
    tenant_id = await new_tenant()
    await save(uow_factory, tenant_id, "first")
    resolver = CachedFlowResolver(cache, pointer_ttl=3600)
    async with uow_factory.for_tenant(tenant_id) as uow:
        assert (await resolver.resolve(uow, "note")).version == 1
        await update_flow(uow, "note", document("second"), expected_version=1, at=2.0)
        await uow.commit()
    async with uow_factory.for_tenant(tenant_id) as uow:
        assert (await resolver.resolve(uow, "note")).version == 1  # cache-aside: stale until invalidated
        await resolver.invalidate(tenant_id, "note")
        current = await resolver.resolve(uow, "note")
        assert current.version == 2
        assert current.node("write").task == "second"
        assert (await resolver.resolve(uow, "note", 1)).node("write").task == "first"
        with pytest.raises(NotFound):
            await resolver.resolve(uow, "note", 3)


async def test_a_deleted_flow_is_not_found_after_invalidation_even_by_version(
    uow_factory: SqlUnitOfWorkFactory, new_tenant: Callable[[], Awaitable[str]], cache: Cache,
) -> None:
    tenant_id = await new_tenant()
    await save(uow_factory, tenant_id, "first")
    resolver = CachedFlowResolver(cache)
    async with uow_factory.for_tenant(tenant_id) as uow:
        await resolver.resolve(uow, "note")
        await uow.flows.delete("note")
        await uow.commit()
    await resolver.invalidate(tenant_id, "note")
    async with uow_factory.for_tenant(tenant_id) as uow:
        for version in (None, 1):
            with pytest.raises(NotFound):
                await resolver.resolve(uow, "note", version)


async def test_tenants_with_the_same_flow_id_never_share_entries(
    uow_factory: SqlUnitOfWorkFactory, new_tenant: Callable[[], Awaitable[str]], cache: Cache,
) -> None:
    a, b = await new_tenant(), await new_tenant()
    await save(uow_factory, a, "of a")
    await save(uow_factory, b, "of b")
    resolver = CachedFlowResolver(cache)
    for _ in range(2):
        async with uow_factory.for_tenant(a) as uow:
            assert (await resolver.resolve(uow, "note")).node("write").task == "of a"
        async with uow_factory.for_tenant(b) as uow:
            assert (await resolver.resolve(uow, "note")).node("write").task == "of b"
    tenant_c = await new_tenant()
    async with uow_factory.for_tenant(tenant_c) as uow:
        with pytest.raises(NotFound):
            await resolver.resolve(uow, "note")


async def test_the_flow_routes_invalidate_on_every_change(tmp_path: Path) -> None:
    settings = Settings(data_dir=str(tmp_path), extra={"CREWFLOW_JWT_SECRET": "x" * 40})
    container = await build_api_container(settings, bcrypt_rounds=4)
    resolver = CachedFlowResolver(MemoryCache(), pointer_ttl=3600)
    container.flow_cache = resolver  # what bootstrap wires
    try:
        tenant_id, token = await make_user(container, Role.MEMBER)
        async with AsyncTestClient(app=create_app(container)) as client:

            async def resolved(version: int | None = None) -> Any:
                async with container.uow_factory.for_tenant(tenant_id) as uow:
                    return await resolver.resolve(uow, "note", version)

            created = await client.post("/api/v1/flows", json=document("first"), headers=bearer(token))
            assert created.status_code == 201
            assert (await resolved()).version == 1
            body = {"expected_version": 1, "definition": document("second")}
            assert (await client.put("/api/v1/flows/note", json=body, headers=bearer(token))).status_code == 200
            assert (await resolved()).node("write").task == "second"
            assert (await client.delete("/api/v1/flows/note", headers=bearer(token))).status_code == 204
            with pytest.raises(NotFound):
                await resolved(2)
            # the id taken again: the new flow's version 1, not the old one's
            again = await client.post("/api/v1/flows", json=document("third"), headers=bearer(token))
            assert again.status_code == 201
            assert (await resolved()).node("write").task == "third"
    finally:
        await container.aclose()
