"""The repository contract: one suite, run against SQLite and a real PostgreSQL (fresh database per run).

Every test gets the ``uow_factory`` of one backend (see conftest.py) and fresh tenants from ``new_tenant``.
"""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa

from crewflow.adapters.sql.uow import SqlUnitOfWork, SqlUnitOfWorkFactory, build_uow_factory
from crewflow.domain.agents import Agent, Crew, CrewTask, Process
from crewflow.domain.errors import Conflict, NotFound
from crewflow.domain.execution import (
    Execution,
    FlowRecord,
    IdempotencyRecord,
    LLMProviderConfig,
    NodeRun,
    ToolRecord,
)
from crewflow.domain.scheduler import NodeStatus, RunStatus
from crewflow.domain.tenancy import Role, Tenant, User, schema_name_for

pytestmark = pytest.mark.integration

NewTenant = Callable[[], Awaitable[str]]
DEFINITION = {"id": "f", "nodes": [{"id": "in", "kind": "input"}, {"id": "out", "kind": "output"}],
              "edges": [{"source": "in", "target": "out"}]}  # fmt: skip


def _agent(agent_id: str = "researcher", **kw: Any) -> Agent:
    fields: dict[str, Any] = {"role": "Researcher", "goal": "Find facts", "backstory": "Curious",
                              "provider": "main", "model": "gpt-x", "tools": ("search", "fetch"),
                              "allow_delegation": True, "max_iter": 7, "temperature": 0.3, "cache": False}  # fmt: skip
    fields.update(kw)
    return Agent(id=agent_id, **fields)


def _crew(crew_id: str = "team", **kw: Any) -> Crew:
    fields: dict[str, Any] = {
        "agents": ("researcher", "writer"),
        "tasks": (CrewTask("research", "Research {{ inputs.topic }}", "notes", "researcher"),
                  CrewTask("write", "Write it up", "an article", "writer", context=("research",))),
        "process": Process.HIERARCHICAL, "description": "A team", "manager_provider": "main",
    }  # fmt: skip
    fields.update(kw)
    return Crew(id=crew_id, **fields)


def _flow(flow_id: str = "pipeline", at: float = 1000.0) -> FlowRecord:
    return FlowRecord(id=flow_id, name=f"Flow {flow_id}", description="does things", created_at=at, updated_at=at)


def _execution(execution_id: str = "e1", flow_id: str = "pipeline", created_at: float = 2000.0) -> Execution:
    return Execution(id=execution_id, flow_id=flow_id, flow_version=1, created_at=created_at,
                     inputs={"topic": "owls", "n": 3})  # fmt: skip


def _provider(provider_id: str = "p1", name: str = "main", priority: int = 10, **kw: Any) -> LLMProviderConfig:
    fields: dict[str, Any] = {
        "provider_type": "openai", "model": "gpt-x", "created_at": 10.0, "updated_at": 10.0,
        "base_url": "http://127.0.0.1:9/v1", "config": {"timeout": 30}, "priority": priority,
        "price_input_per_1k": 0.5, "price_output_per_1k": 1.5, "budget": 100.0,
        "encrypted_key": b"\x00sealed\xffblob", "key_id": "k1",
    }  # fmt: skip
    fields.update(kw)
    return LLMProviderConfig(id=provider_id, name=name, **fields)


def _tool(tool_id: str = "t1", name: str = "search", **kw: Any) -> ToolRecord:
    fields: dict[str, Any] = {
        "created_at": 10.0, "updated_at": 10.0, "description": "web search", "docker_image": "tools/search:1",
        "input_schema": {"type": "object"}, "output_schema": {"type": "string"}, "dockerfile": "FROM scratch",
        "build_status": "ready", "version": 2,
    }  # fmt: skip
    fields.update(kw)
    return ToolRecord(id=tool_id, name=name, **fields)


def _run(node_id: str = "research", execution_id: str = "e1", **kw: Any) -> NodeRun:
    fields: dict[str, Any] = {"status": NodeStatus.COMPLETED, "attempt": 2, "output": {"text": "done", "n": [1, 2]},
                              "started_at": 2001.0, "finished_at": 2003.5, "duration": 2.5, "input_tokens": 120,
                              "output_tokens": 45, "cost": 0.0123}  # fmt: skip
    fields.update(kw)
    return NodeRun(execution_id=execution_id, node_id=node_id, **fields)


# -- CRUD ------------------------------------------------------------------------------------------------
async def test_agents_round_trip_every_field_and_support_update_and_delete(
    uow_factory: SqlUnitOfWorkFactory, new_tenant: NewTenant
) -> None:
    tenant = await new_tenant()
    async with uow_factory.for_tenant(tenant) as uow:
        await uow.agents.add(_agent(), at=1.0)
        await uow.commit()
    async with uow_factory.for_tenant(tenant) as uow:
        assert await uow.agents.get("researcher") == _agent()
        await uow.agents.update(_agent(goal="Find better facts", tools=()), at=2.0)
        await uow.commit()
    async with uow_factory.for_tenant(tenant) as uow:
        assert await uow.agents.get("researcher") == _agent(goal="Find better facts", tools=())
        await uow.agents.delete("researcher")
        with pytest.raises(NotFound):
            await uow.agents.get("researcher")
        with pytest.raises(NotFound):
            await uow.agents.update(_agent(), at=3.0)
        with pytest.raises(NotFound):
            await uow.agents.delete("researcher")


async def test_adding_an_existing_id_is_a_conflict_and_the_unit_of_work_stays_usable(
    uow_factory: SqlUnitOfWorkFactory, new_tenant: NewTenant
) -> None:
    tenant = await new_tenant()
    async with uow_factory.for_tenant(tenant) as uow:
        await uow.agents.add(_agent(), at=1.0)
        with pytest.raises(Conflict):
            await uow.agents.add(_agent(role="Other"), at=2.0)
        await uow.agents.add(_agent("writer"), at=2.0)
        await uow.commit()
    async with uow_factory.for_tenant(tenant) as uow:
        assert [a.id for a in (await uow.agents.list()).items] == ["researcher", "writer"]
        assert (await uow.agents.get("researcher")).role == "Researcher"


async def test_crews_round_trip_every_field_and_support_update_and_delete(
    uow_factory: SqlUnitOfWorkFactory, new_tenant: NewTenant
) -> None:
    tenant = await new_tenant()
    async with uow_factory.for_tenant(tenant) as uow:
        await uow.crews.add(_crew(), at=1.0)
        with pytest.raises(Conflict):
            await uow.crews.add(_crew(), at=1.0)
        await uow.commit()
    async with uow_factory.for_tenant(tenant) as uow:
        assert await uow.crews.get("team") == _crew()
        await uow.crews.update(_crew(process=Process.SEQUENTIAL, manager_provider=None), at=2.0)
        assert await uow.crews.get("team") == _crew(process=Process.SEQUENTIAL, manager_provider=None)
        await uow.crews.delete("team")
        with pytest.raises(NotFound):
            await uow.crews.get("team")


async def test_flow_versions_are_immutable_and_editing_adds_the_next_version(
    uow_factory: SqlUnitOfWorkFactory, new_tenant: NewTenant
) -> None:
    tenant = await new_tenant()
    edited = {**DEFINITION, "description": "edited"}
    async with uow_factory.for_tenant(tenant) as uow:
        await uow.flows.add(_flow(), DEFINITION, created_by="u1")
        await uow.commit()
    async with uow_factory.for_tenant(tenant) as uow:
        assert await uow.flows.get("pipeline") == _flow()
        first = await uow.flows.get_version("pipeline")
        assert (first.version, first.definition, first.created_by) == (1, DEFINITION, "u1")
        record = await uow.flows.add_version("pipeline", edited, expected_version=1, at=1500.0, name="Renamed")
        assert (record.current_version, record.name, record.updated_at) == (2, "Renamed", 1500.0)
        assert record.description == "does things"
        await uow.commit()
    async with uow_factory.for_tenant(tenant) as uow:
        assert (await uow.flows.get("pipeline")).current_version == 2
        assert (await uow.flows.get_version("pipeline")).definition == edited
        assert (await uow.flows.get_version("pipeline", 1)).definition == DEFINITION
        assert [v.version for v in (await uow.flows.list_versions("pipeline")).items] == [2, 1]
        with pytest.raises(NotFound):
            await uow.flows.get_version("pipeline", 3)
        await uow.flows.set_active("pipeline", False, at=1600.0)
        assert not (await uow.flows.get("pipeline")).is_active
        await uow.flows.delete("pipeline")
        with pytest.raises(NotFound):
            await uow.flows.get("pipeline")
        with pytest.raises(NotFound):
            await uow.flows.get_version("pipeline", 1)
        assert (await uow.flows.list_versions("pipeline")).items == ()


async def test_editing_a_flow_from_a_stale_version_is_a_conflict(
    uow_factory: SqlUnitOfWorkFactory, new_tenant: NewTenant
) -> None:
    tenant = await new_tenant()
    async with uow_factory.for_tenant(tenant) as uow:
        await uow.flows.add(_flow(), DEFINITION)
        await uow.commit()
    async with uow_factory.for_tenant(tenant) as uow:
        await uow.flows.add_version("pipeline", {"by": "alice"}, expected_version=1, at=1.0)
        await uow.commit()
    async with uow_factory.for_tenant(tenant) as uow:
        with pytest.raises(Conflict):
            await uow.flows.add_version("pipeline", {"by": "bob"}, expected_version=1, at=2.0)
        with pytest.raises(NotFound):
            await uow.flows.add_version("missing", {"by": "bob"}, expected_version=1, at=2.0)
    async with uow_factory.for_tenant(tenant) as uow:
        current = await uow.flows.get_version("pipeline")
        assert (current.version, current.definition) == (2, {"by": "alice"})


async def test_concurrent_edits_of_one_version_let_exactly_one_win(
    uow_factory: SqlUnitOfWorkFactory, new_tenant: NewTenant
) -> None:
    tenant = await new_tenant()
    async with uow_factory.for_tenant(tenant) as uow:
        await uow.flows.add(_flow(), DEFINITION)
        await uow.commit()

    async def edit(author: str) -> None:
        async with uow_factory.for_tenant(tenant) as uow:
            await uow.flows.add_version("pipeline", {"by": author}, expected_version=1, at=1.0)
            await uow.commit()

    results = await asyncio.gather(edit("alice"), edit("bob"), return_exceptions=True)
    assert sorted(type(r).__name__ for r in results) == ["Conflict", "NoneType"]
    winner = "alice" if results[0] is None else "bob"
    async with uow_factory.for_tenant(tenant) as uow:
        assert (await uow.flows.get_version("pipeline")).definition == {"by": winner}
        assert [v.version for v in (await uow.flows.list_versions("pipeline")).items] == [2, 1]


async def test_many_concurrent_units_of_work_on_one_tenant_all_commit(
    uow_factory: SqlUnitOfWorkFactory, new_tenant: NewTenant
) -> None:
    tenant = await new_tenant()

    async def write(index: int) -> None:
        async with uow_factory.for_tenant(tenant) as uow:
            await uow.executions.add(_execution(f"c-{index:02d}", created_at=float(index)))
            await uow.node_runs.save(_run("n", execution_id=f"c-{index:02d}"))
            assert (await uow.executions.get(f"c-{index:02d}")).created_at == float(index)
            await uow.commit()

    await asyncio.gather(*(write(i) for i in range(24)))  # more than the pool holds: callers queue
    async with uow_factory.for_tenant(tenant) as uow:
        page = await uow.executions.list(limit=100)
    assert [e.id for e in page.items] == [f"c-{i:02d}" for i in reversed(range(24))]


async def test_executions_record_progress_and_list_per_flow_newest_first(
    uow_factory: SqlUnitOfWorkFactory, new_tenant: NewTenant
) -> None:
    tenant = await new_tenant()
    async with uow_factory.for_tenant(tenant) as uow:
        await uow.executions.add(_execution("e1", "pipeline", 10.0))
        await uow.executions.add(_execution("e2", "other", 20.0))
        await uow.executions.add(_execution("e3", "pipeline", 30.0))
        with pytest.raises(Conflict):
            await uow.executions.add(_execution("e1"))
        await uow.commit()
    async with uow_factory.for_tenant(tenant) as uow:
        assert await uow.executions.get("e1") == _execution("e1", "pipeline", 10.0)
        await uow.executions.record_progress("e1", status=RunStatus.RUNNING, last_seq=1, started_at=11.0)
        await uow.executions.record_progress("e1", status=RunStatus.COMPLETED, last_seq=9, finished_at=12.0,
                                             outputs={"out": "owls are great"})  # fmt: skip
        e1 = await uow.executions.get("e1")
        assert (e1.status, e1.last_seq, e1.started_at, e1.finished_at) == (RunStatus.COMPLETED, 9, 11.0, 12.0)
        assert (e1.outputs, e1.error) == ({"out": "owls are great"}, None)
        leased = replace(_execution("e2", "other", 20.0), worker_id="w1", lease_expires_at=99.0,
                         status=RunStatus.RUNNING)  # fmt: skip
        await uow.executions.update(leased)
        assert await uow.executions.get("e2") == leased
        with pytest.raises(NotFound):
            await uow.executions.record_progress("nope", status=RunStatus.FAILED, last_seq=1)
        assert [e.id for e in (await uow.executions.list_for_flow("pipeline")).items] == ["e3", "e1"]
        assert [e.id for e in (await uow.executions.list()).items] == ["e3", "e2", "e1"]
        running = await uow.executions.list(status=RunStatus.RUNNING)
        assert [e.id for e in running.items] == ["e2"]


async def test_node_runs_are_checkpoints_replaced_per_node_and_deleted_with_their_execution(
    uow_factory: SqlUnitOfWorkFactory, new_tenant: NewTenant
) -> None:
    tenant = await new_tenant()
    async with uow_factory.for_tenant(tenant) as uow:
        await uow.executions.add(_execution())
        assert await uow.node_runs.find("e1", "research") is None
        with pytest.raises(NotFound):
            await uow.node_runs.get("e1", "research")
        await uow.node_runs.save(_run(status=NodeStatus.RUNNING, output=None, finished_at=None, duration=None))
        await uow.node_runs.save(_run())
        await uow.node_runs.save_many([_run("route", branches=("a", "b")), _run("write", output="text")])
        await uow.commit()
    async with uow_factory.for_tenant(tenant) as uow:
        assert await uow.node_runs.get("e1", "research") == _run()
        assert (await uow.node_runs.get("e1", "route")).branches == ("a", "b")
        found = await uow.node_runs.find_many("e1", ["route", "write", "absent"])
        assert sorted(found) == ["route", "write"]
        assert found["write"] == _run("write", output="text")
        assert await uow.node_runs.find_many("e1", []) == {}
        assert [r.node_id for r in (await uow.node_runs.list_for_execution("e1")).items] == [
            "research", "route", "write"]  # fmt: skip
    async with uow_factory.for_tenant(tenant) as uow:
        with pytest.raises(NotFound):
            await uow.node_runs.save(_run(execution_id="missing"))
    async with uow_factory.for_tenant(tenant) as uow:
        await uow.executions.delete("e1")
        assert (await uow.node_runs.list_for_execution("e1")).items == ()
        with pytest.raises(NotFound):
            await uow.executions.get("e1")


async def _lease(uow_factory: SqlUnitOfWorkFactory, tenant: str, action: str, execution_id: str, worker: str,
                 *, until: float = 0.0, now: float = 0.0) -> bool:  # fmt: skip
    """One lease operation in its own committed unit of work, like a worker does it."""
    async with uow_factory.for_tenant(tenant) as uow:
        repo = uow.executions
        if action == "claim":
            won = await repo.claim(execution_id, worker, until=until, now=now)
        elif action == "renew":
            won = await repo.renew(execution_id, worker, until=until)
        else:
            won = await repo.release(execution_id, worker)
        await uow.commit()
    return won


async def test_an_execution_lease_is_held_by_one_worker_until_it_expires_or_is_released(
    uow_factory: SqlUnitOfWorkFactory, new_tenant: NewTenant
) -> None:
    tenant = await new_tenant()
    async with uow_factory.for_tenant(tenant) as uow:
        await uow.executions.add(_execution("e1"))
        await uow.executions.add(replace(_execution("done"), status=RunStatus.COMPLETED))
        await uow.commit()
    assert await _lease(uow_factory, tenant, "claim", "e1", "w1", until=100.0, now=50.0)
    assert not await _lease(uow_factory, tenant, "claim", "e1", "w2", until=110.0, now=60.0)  # w1's lease is live
    assert await _lease(uow_factory, tenant, "claim", "e1", "w1", until=120.0, now=60.0)  # its holder may re-claim
    assert await _lease(uow_factory, tenant, "renew", "e1", "w1", until=130.0)
    assert not await _lease(uow_factory, tenant, "renew", "e1", "w2", until=999.0)  # only the holder renews
    async with uow_factory.for_tenant(tenant) as uow:
        e1 = await uow.executions.get("e1")
    assert (e1.worker_id, e1.lease_expires_at) == ("w1", 130.0)

    assert await _lease(uow_factory, tenant, "claim", "e1", "w2", until=200.0, now=130.0)  # expired: taken over
    assert not await _lease(uow_factory, tenant, "renew", "e1", "w1", until=300.0)  # the old holder lost it
    assert not await _lease(uow_factory, tenant, "release", "e1", "w1")
    assert await _lease(uow_factory, tenant, "release", "e1", "w2")
    async with uow_factory.for_tenant(tenant) as uow:
        e1 = await uow.executions.get("e1")
    assert (e1.worker_id, e1.lease_expires_at) == (None, None)
    assert await _lease(uow_factory, tenant, "claim", "e1", "w3", until=400.0, now=0.0)  # released: free at once

    assert not await _lease(uow_factory, tenant, "claim", "done", "w1", until=100.0, now=50.0)  # finished
    assert not await _lease(uow_factory, tenant, "claim", "missing", "w1", until=100.0, now=50.0)
    async with uow_factory.for_tenant(tenant) as uow:
        assert (await uow.executions.get("done")).worker_id is None


async def test_concurrent_claims_of_one_execution_let_exactly_one_worker_win(
    uow_factory: SqlUnitOfWorkFactory, new_tenant: NewTenant
) -> None:
    tenant = await new_tenant()
    async with uow_factory.for_tenant(tenant) as uow:
        await uow.executions.add(_execution("e1"))
        await uow.commit()
    results = await asyncio.gather(
        *(_lease(uow_factory, tenant, "claim", "e1", f"w{i}", until=100.0, now=1.0) for i in range(6)),
        return_exceptions=True,
    )
    won = [f"w{i}" for i, r in enumerate(results) if r is True]
    assert len(won) == 1, results  # the others lost (False) or, on SQLite, found the database busy
    async with uow_factory.for_tenant(tenant) as uow:
        assert (await uow.executions.get("e1")).worker_id == won[0]


async def test_expired_leases_and_never_claimed_executions_are_listed_for_the_watchdog(
    uow_factory: SqlUnitOfWorkFactory, new_tenant: NewTenant
) -> None:
    tenant = await new_tenant()

    def leased(execution_id: str, created: float, worker: str | None, expires: float | None,
               status: RunStatus = RunStatus.RUNNING) -> Execution:  # fmt: skip
        return replace(_execution(execution_id, created_at=created), status=status, worker_id=worker,
                       lease_expires_at=expires)  # fmt: skip

    async with uow_factory.for_tenant(tenant) as uow:
        for execution in [
            leased("expired-b", 20.0, "w1", 90.0),
            leased("expired-a", 10.0, "w2", 100.0),  # expires exactly now: expired
            leased("live", 5.0, "w3", 101.0),
            leased("finished", 1.0, "w4", 10.0, RunStatus.FAILED),
            leased("unclaimed-old", 30.0, None, None, RunStatus.PENDING),
            leased("unclaimed-new", 80.0, None, None, RunStatus.PENDING),
        ]:
            await uow.executions.add(execution)
        await uow.commit()
    async with uow_factory.for_tenant(tenant) as uow:
        expired = await uow.executions.list_expired(100.0)
        assert [e.id for e in expired] == ["expired-a", "expired-b"]  # oldest first
        assert expired[0].worker_id == "w2"
        both = await uow.executions.list_expired(100.0, unclaimed_before=50.0)
        assert [e.id for e in both] == ["expired-a", "expired-b", "unclaimed-old"]
        assert [e.id for e in await uow.executions.list_expired(100.0, 1, unclaimed_before=50.0)] == ["expired-a"]
        with pytest.raises(ValueError, match="limit"):
            await uow.executions.list_expired(100.0, 0)


async def test_finished_executions_are_listed_by_age_and_deleted_with_their_checkpoints(
    uow_factory: SqlUnitOfWorkFactory, new_tenant: NewTenant
) -> None:
    tenant = await new_tenant()
    async with uow_factory.for_tenant(tenant) as uow:
        await uow.executions.add(replace(_execution("old-done", created_at=10.0), status=RunStatus.COMPLETED,
                                         finished_at=20.0))  # fmt: skip
        await uow.executions.add(replace(_execution("old-failed", created_at=11.0), status=RunStatus.FAILED))
        # created before the cutoff but ended after it: kept
        await uow.executions.add(replace(_execution("long-run", created_at=12.0), status=RunStatus.CANCELLED,
                                         finished_at=500.0))  # fmt: skip
        await uow.executions.add(replace(_execution("old-running", created_at=13.0), status=RunStatus.RUNNING))
        await uow.node_runs.save(_run(execution_id="old-done"))
        await uow.commit()
    async with uow_factory.for_tenant(tenant) as uow:
        assert await uow.executions.list_finished_before(100.0) == ["old-done", "old-failed"]
        assert await uow.executions.list_finished_before(100.0, 1) == ["old-done"]
        assert await uow.executions.delete_many(["old-done", "old-failed", "never-existed"]) == 2
        assert await uow.executions.delete_many([]) == 0
        await uow.commit()
    async with uow_factory.for_tenant(tenant) as uow:
        assert await uow.node_runs.find("old-done", "research") is None
        assert [e.id for e in (await uow.executions.list()).items] == ["old-running", "long-run"]
        assert await uow.executions.list_finished_before(1e12) == ["long-run"]


async def test_providers_keep_their_sealed_key_and_list_in_failover_order(
    uow_factory: SqlUnitOfWorkFactory, new_tenant: NewTenant
) -> None:
    tenant = await new_tenant()
    async with uow_factory.for_tenant(tenant) as uow:
        await uow.providers.add(_provider("p1", "main", 20))
        await uow.providers.add(_provider("p2", "backup", 10, encrypted_key=None, key_id=None, budget=None))
        with pytest.raises(Conflict):
            await uow.providers.add(_provider("p3", "main", 5))
        await uow.commit()
    async with uow_factory.for_tenant(tenant) as uow:
        stored = await uow.providers.get("p1")
        assert stored == _provider("p1", "main", 20)
        assert stored.encrypted_key == b"\x00sealed\xffblob"
        assert "sealed" not in repr(stored)
        assert (await uow.providers.get_by_name("backup")).id == "p2"
        assert [p.name for p in (await uow.providers.list()).items] == ["backup", "main"]
        await uow.providers.update(_provider("p1", "main", 1, encrypted_key=b"new", key_id="k2", is_active=False))
        assert await uow.providers.get("p1") == _provider("p1", "main", 1, encrypted_key=b"new", key_id="k2",
                                                          is_active=False)  # fmt: skip
        await uow.providers.delete("p2")
        with pytest.raises(NotFound):
            await uow.providers.get_by_name("backup")
    async with uow_factory.for_tenant(tenant) as uow:
        with pytest.raises(Conflict):
            await uow.providers.update(_provider("p2", "main"))  # renaming onto another provider's name


async def test_tools_round_trip_and_names_are_unique(uow_factory: SqlUnitOfWorkFactory, new_tenant: NewTenant) -> None:
    tenant = await new_tenant()
    async with uow_factory.for_tenant(tenant) as uow:
        await uow.tools.add(_tool("t1", "search"))
        await uow.tools.add(_tool("t2", "calc", docker_image=None, dockerfile=None, build_status="none"))
        with pytest.raises(Conflict):
            await uow.tools.add(_tool("t3", "search"))
        await uow.commit()
    async with uow_factory.for_tenant(tenant) as uow:
        assert await uow.tools.get("t1") == _tool("t1", "search")
        assert (await uow.tools.get_by_name("calc")).id == "t2"
        assert [t.name for t in (await uow.tools.list()).items] == ["calc", "search"]
        await uow.tools.update(_tool("t1", "search", version=3, is_active=False))
        assert (await uow.tools.get("t1")).version == 3
        await uow.tools.delete("t2")
        with pytest.raises(NotFound):
            await uow.tools.get("t2")


async def test_idempotency_keys_are_stored_once_and_purged_by_age(
    uow_factory: SqlUnitOfWorkFactory, new_tenant: NewTenant
) -> None:
    tenant = await new_tenant()
    async with uow_factory.for_tenant(tenant) as uow:
        assert await uow.idempotency.find("k1") is None
        await uow.idempotency.add(IdempotencyRecord("k1", "h1", 100.0, {"status": 201, "body": {"id": "x"}}))
        await uow.idempotency.add(IdempotencyRecord("k2", "h2", 200.0))
        with pytest.raises(Conflict):
            await uow.idempotency.add(IdempotencyRecord("k1", "other", 300.0))
        await uow.commit()
    async with uow_factory.for_tenant(tenant) as uow:
        assert await uow.idempotency.find("k1") == IdempotencyRecord(
            "k1", "h1", 100.0, {"status": 201, "body": {"id": "x"}}
        )
        assert await uow.idempotency.purge_before(150.0) == 1
        assert await uow.idempotency.find("k1") is None
        await uow.idempotency.delete("k2")
        with pytest.raises(NotFound):
            await uow.idempotency.delete("k2")


async def test_tenants_and_users_live_in_the_platform_scope(uow_factory: SqlUnitOfWorkFactory) -> None:
    suffix = uuid.uuid4().hex[:10]
    tenant = Tenant(f"t{suffix}", f"acme-{suffix}", "Acme", schema_name_for(f"t{suffix}"),
                    datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC))  # fmt: skip
    user = User(f"u{suffix}", tenant.id, f"Ada.{suffix}@Example.com", Role.ADMIN, "hash",
                created_at=datetime(2026, 1, 2, tzinfo=UTC))  # fmt: skip
    async with uow_factory.platform() as uow:
        await uow.tenants.add(tenant)
        with pytest.raises(Conflict):
            await uow.tenants.add(Tenant(f"x{suffix}", tenant.slug, "Other", f"tenant_x{suffix}", tenant.created_at))
        await uow.users.add(user)
        with pytest.raises(Conflict):
            await uow.users.add(User(f"v{suffix}", tenant.id, user.email.upper(), Role.VIEWER))
        await uow.commit()
    async with uow_factory.platform() as uow:
        assert await uow.tenants.get(tenant.id) == tenant
        assert await uow.tenants.get_by_slug(tenant.slug) == tenant
        found = await uow.users.get_by_email(f"  ada.{suffix}@EXAMPLE.com ")
        assert (found.id, found.email, found.role, found.tenant_id) == (user.id, user.email.lower(), Role.ADMIN,
                                                                        tenant.id)  # fmt: skip
        assert found.created_at == user.created_at
        await uow.users.update(User(user.id, tenant.id, found.email, Role.VIEWER, "hash2", is_active=False))
        updated = await uow.users.get(user.id)
        assert (updated.role, updated.password_hash, updated.is_active) == (Role.VIEWER, "hash2", False)
        assert [u.id for u in (await uow.users.list_for_tenant(tenant.id)).items] == [user.id]
        await uow.commit()
    async with uow_factory.platform() as uow:
        with pytest.raises(NotFound):
            await uow.users.add(User(f"w{suffix}", f"missing{suffix}", f"w{suffix}@example.com", Role.MEMBER))
    async with uow_factory.platform() as uow:
        await uow.tenants.delete(tenant.id)
        await uow.commit()
    async with uow_factory.platform() as uow:
        with pytest.raises(NotFound):
            await uow.tenants.get(tenant.id)
        with pytest.raises(NotFound):
            await uow.users.get(user.id)


# -- pagination ------------------------------------------------------------------------------------------
async def test_cursor_pagination_walks_every_record_once_in_order(
    uow_factory: SqlUnitOfWorkFactory, new_tenant: NewTenant
) -> None:
    tenant = await new_tenant()
    ids = [f"agent-{i:02d}" for i in (5, 1, 7, 3, 2, 6, 4)]
    async with uow_factory.for_tenant(tenant) as uow:
        for agent_id in ids:
            await uow.agents.add(_agent(agent_id), at=1.0)
        # identical creation times: ties are broken by id, newest (highest) first
        for index, execution_id in enumerate(["x-a", "x-c", "x-b", "x-d", "x-e"]):
            await uow.executions.add(_execution(execution_id, created_at=50.0 if index < 3 else float(index)))
        await uow.commit()
    async with uow_factory.for_tenant(tenant) as uow:
        seen: list[str] = []
        cursor: str | None = None
        pages = 0
        while True:
            page = await uow.agents.list(cursor, limit=3)
            seen.extend(a.id for a in page.items)
            pages += 1
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        assert seen == sorted(ids)
        assert pages == 3

        first = await uow.executions.list(limit=2)
        second = await uow.executions.list(first.next_cursor, limit=2)
        third = await uow.executions.list(second.next_cursor, limit=2)
        order = [e.id for e in first.items + second.items + third.items]
        assert order == ["x-c", "x-b", "x-a", "x-e", "x-d"]
        assert third.next_cursor is None

        with pytest.raises(ValueError, match="cursor"):
            await uow.agents.list("not a cursor", limit=3)
        crafted = base64.urlsafe_b64encode(b'["late", 3]').decode()  # wrong types for (created_at, id)
        with pytest.raises(ValueError, match="cursor"):
            await uow.executions.list(crafted, limit=2)
        assert len((await uow.agents.list(limit=3)).items) == 3  # refused before reaching the database
        for bad in (0, 101):
            with pytest.raises(ValueError, match="limit"):
                await uow.agents.list(limit=bad)


# -- transactions ----------------------------------------------------------------------------------------
async def test_an_exception_rolls_back_everything_in_the_unit_of_work(
    uow_factory: SqlUnitOfWorkFactory, new_tenant: NewTenant
) -> None:
    tenant = await new_tenant()

    async def fail_half_way() -> None:
        async with uow_factory.for_tenant(tenant) as uow:
            await uow.agents.add(_agent(), at=1.0)
            await uow.flows.add(_flow(), DEFINITION)
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await fail_half_way()
    async with uow_factory.for_tenant(tenant) as uow:
        await uow.agents.add(_agent("uncommitted"), at=1.0)  # left without commit(): rolled back too
    async with uow_factory.for_tenant(tenant) as uow:
        assert (await uow.agents.list()).items == ()
        assert (await uow.flows.list()).items == ()


async def test_a_unit_of_work_ends_with_commit_and_is_used_once(
    uow_factory: SqlUnitOfWorkFactory, new_tenant: NewTenant
) -> None:
    tenant = await new_tenant()
    uow = uow_factory.for_tenant(tenant)
    async with uow:
        await uow.agents.add(_agent(), at=1.0)
        await uow.commit()
        with pytest.raises(RuntimeError, match="not open"):
            await uow.agents.get("researcher")
    with pytest.raises(RuntimeError, match="once"):
        async with uow:
            pass
    with pytest.raises(ValueError, match="tenant id"):
        uow_factory.for_tenant("")


async def test_tenant_storage_is_created_once_and_dropping_it_removes_everything(
    uow_factory: SqlUnitOfWorkFactory, new_tenant: NewTenant
) -> None:
    tenant = await new_tenant()
    with pytest.raises(Conflict):
        await uow_factory.create_tenant_storage(tenant)
    async with uow_factory.for_tenant(tenant) as uow:
        await uow.agents.add(_agent(), at=1.0)
        await uow.commit()
    await uow_factory.drop_tenant_storage(tenant)
    assert not await uow_factory.database.tenant_exists(tenant)
    with pytest.raises(NotFound, match="tenant storage"):
        async with uow_factory.for_tenant(tenant):
            pass
    await uow_factory.create_tenant_storage(tenant)
    async with uow_factory.for_tenant(tenant) as uow:
        assert (await uow.agents.list()).items == ()


# -- isolation -------------------------------------------------------------------------------------------
async def _populate(uow: SqlUnitOfWork) -> None:
    await uow.agents.add(_agent(), at=1.0)
    await uow.crews.add(_crew(), at=1.0)
    await uow.flows.add(_flow(), DEFINITION)
    await uow.executions.add(_execution())
    await uow.node_runs.save(_run())
    await uow.providers.add(_provider())
    await uow.tools.add(_tool())
    await uow.idempotency.add(IdempotencyRecord("k1", "h1", 100.0, {"ok": True}))


async def _snapshot(uow: SqlUnitOfWork) -> list[Any]:
    return [
        await uow.agents.get("researcher"), await uow.crews.get("team"), await uow.flows.get("pipeline"),
        await uow.flows.get_version("pipeline"), await uow.executions.get("e1"),
        await uow.node_runs.get("e1", "research"), await uow.providers.get("p1"), await uow.tools.get("t1"),
        await uow.idempotency.find("k1"),
    ]  # fmt: skip


async def _require(outcome: Awaitable[bool | int]) -> None:
    """A lease or bulk operation reports what it did instead of raising: nothing, here, is ``NotFound``."""
    if not await outcome:
        raise NotFound("execution", "e1")


async def test_data_of_one_tenant_is_invisible_to_another_through_every_repository(
    uow_factory: SqlUnitOfWorkFactory, new_tenant: NewTenant
) -> None:
    owner, other = await new_tenant(), await new_tenant()
    async with uow_factory.for_tenant(owner) as uow:
        await _populate(uow)
        await uow.commit()
    async with uow_factory.for_tenant(owner) as uow:
        before = await _snapshot(uow)

    reads: list[Callable[[SqlUnitOfWork], Awaitable[Any]]] = [
        lambda u: u.agents.get("researcher"),
        lambda u: u.crews.get("team"),
        lambda u: u.flows.get("pipeline"),
        lambda u: u.flows.get_version("pipeline"),
        lambda u: u.flows.get_version("pipeline", 1),
        lambda u: u.executions.get("e1"),
        lambda u: u.node_runs.get("e1", "research"),
        lambda u: u.providers.get("p1"),
        lambda u: u.providers.get_by_name("main"),
        lambda u: u.tools.get("t1"),
        lambda u: u.tools.get_by_name("search"),
    ]
    writes: list[Callable[[SqlUnitOfWork], Awaitable[Any]]] = [
        lambda u: u.agents.update(_agent(goal="hijacked"), at=9.0),
        lambda u: u.agents.delete("researcher"),
        lambda u: u.crews.update(_crew(description="hijacked"), at=9.0),
        lambda u: u.crews.delete("team"),
        lambda u: u.flows.add_version("pipeline", {"hijacked": True}, expected_version=1, at=9.0),
        lambda u: u.flows.set_active("pipeline", False, at=9.0),
        lambda u: u.flows.delete("pipeline"),
        lambda u: u.executions.update(_execution()),
        lambda u: u.executions.record_progress("e1", status=RunStatus.CANCELLED, last_seq=99),
        lambda u: u.executions.delete("e1"),
        lambda u: _require(u.executions.claim("e1", "intruder", until=1e12, now=1e11)),
        lambda u: _require(u.executions.renew("e1", "intruder", until=1e12)),
        lambda u: _require(u.executions.release("e1", "intruder")),
        lambda u: _require(u.executions.delete_many(["e1"])),
        lambda u: u.node_runs.save(_run(output="hijacked")),
        lambda u: u.providers.update(_provider(model="hijacked")),
        lambda u: u.providers.delete("p1"),
        lambda u: u.tools.update(_tool(description="hijacked")),
        lambda u: u.tools.delete("t1"),
        lambda u: u.idempotency.delete("k1"),
    ]
    for operation in reads + writes:
        async with uow_factory.for_tenant(other) as uow:  # a fresh unit of work per attempt
            with pytest.raises(NotFound):
                await operation(uow)
            await uow.commit()

    async with uow_factory.for_tenant(other) as uow:
        assert (await uow.agents.list()).items == ()
        assert (await uow.crews.list()).items == ()
        assert (await uow.flows.list()).items == ()
        assert (await uow.flows.list_versions("pipeline")).items == ()
        assert (await uow.executions.list()).items == ()
        assert (await uow.executions.list_for_flow("pipeline")).items == ()
        assert (await uow.node_runs.list_for_execution("e1")).items == ()
        assert await uow.node_runs.find("e1", "research") is None
        assert await uow.node_runs.find_many("e1", ["research"]) == {}
        assert (await uow.providers.list()).items == ()
        assert (await uow.tools.list()).items == ()
        assert await uow.idempotency.find("k1") is None
        assert await uow.idempotency.purge_before(1e12) == 0
        assert await uow.executions.list_expired(1e12, unclaimed_before=1e12) == []
        assert await uow.executions.list_finished_before(1e12) == []
        await uow.commit()

    # the same ids are free to use in the other tenant, and doing so changes nothing of the owner's
    async with uow_factory.for_tenant(other) as uow:
        await uow.agents.add(_agent(goal="Other goal"), at=5.0)
        await uow.providers.add(_provider(model="other-model"))
        await uow.commit()
    async with uow_factory.for_tenant(owner) as uow:
        assert await _snapshot(uow) == before
        assert [a.goal for a in (await uow.agents.list()).items] == ["Find facts"]


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_postgres_tenant_scope_ends_with_the_transaction(
    uow_factory: SqlUnitOfWorkFactory, new_tenant: NewTenant
) -> None:
    """The schema is chosen with SET LOCAL: a pooled connection carries no tenant into its next use."""
    tenant = await new_tenant()
    async with uow_factory.for_tenant(tenant) as uow:
        path = await uow.connection.scalar(sa.text("SHOW search_path"))
        assert path == f'"{schema_name_for(tenant)}"'
        await uow.commit()
    for _ in range(4):  # pool_size=4: every pooled connection, including the one just used
        async with uow_factory.platform() as platform:
            default = await platform.users.list_for_tenant(tenant)
            assert default.items == ()
    engine = uow_factory.database.engine  # type: ignore[attr-defined]
    conns = [await engine.connect() for _ in range(4)]
    try:
        paths = {await c.scalar(sa.text("SHOW search_path")) for c in conns}
    finally:
        for c in conns:
            await c.close()
    assert paths == {'"$user", public'}


async def test_postgres_statements_prepared_for_one_tenant_read_the_next_tenants_schema(postgres_url: str) -> None:
    """One pooled connection, so asyncpg reuses its prepared statements across tenants: the schema of each
    transaction still decides what they read (PostgreSQL re-plans them when search_path changes)."""
    factory = build_uow_factory(postgres_url, pool_size=1)
    tenants = [uuid.uuid4().hex[:16] for _ in range(2)]
    try:
        for tenant in tenants:
            await factory.create_tenant_storage(tenant)
        async with factory.for_tenant(tenants[0]) as uow:
            await uow.agents.add(_agent(goal="first"), at=1.0)
            await uow.commit()
        for _ in range(3):
            async with factory.for_tenant(tenants[0]) as uow:
                assert (await uow.agents.get("researcher")).goal == "first"
                assert len((await uow.agents.list()).items) == 1
            async with factory.for_tenant(tenants[1]) as uow:
                with pytest.raises(NotFound):
                    await uow.agents.get("researcher")
                assert (await uow.agents.list()).items == ()
    finally:
        for tenant in tenants:
            await factory.drop_tenant_storage(tenant)
        await factory.close()


async def test_database_errors_do_not_carry_the_values_written(
    uow_factory: SqlUnitOfWorkFactory, new_tenant: NewTenant
) -> None:
    """A sealed key (or any run data) must not leak through the text of a database error."""
    tenant = await new_tenant()
    async with uow_factory.for_tenant(tenant) as uow:
        with pytest.raises(NotFound) as caught:
            await uow.node_runs.save(_run(execution_id="missing", output="secret-output-7f3a"))
    cause = caught.value.__cause__ or caught.value.__context__
    assert cause is not None
    assert "secret-output-7f3a" not in str(cause)


async def test_database_transactions_for_other_sql_adapters_commit_or_roll_back_and_keep_the_scope(
    uow_factory: SqlUnitOfWorkFactory, new_tenant: NewTenant
) -> None:
    """``SqlDatabase.tenant_transaction`` (used by the SQL log store) scopes and ends like a unit of work."""
    owner, other = await new_tenant(), await new_tenant()
    database = uow_factory.database
    events = sa.table("execution_events", sa.column("execution_id"), sa.column("seq"), sa.column("kind"),
                      sa.column("at"), sa.column("data", sa.JSON()))  # fmt: skip
    row = {"execution_id": "e1", "seq": 1, "kind": "run.started", "at": 1.0, "data": {}}
    async with database.tenant_transaction(owner) as conn:
        await conn.execute(events.insert().values(row))

    async def fail() -> None:
        async with database.tenant_transaction(owner) as conn:
            await conn.execute(events.insert().values({**row, "seq": 2}))
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await fail()
    count = sa.select(sa.func.count()).select_from(events)
    async with database.tenant_transaction(owner) as conn:
        assert await conn.scalar(count) == 1
    async with database.tenant_transaction(other) as conn:
        assert await conn.scalar(count) == 0
