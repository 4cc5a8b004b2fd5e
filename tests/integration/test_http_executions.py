"""Execution routes: execute (202 + Location, Idempotency-Key), read with node runs, list per flow, cancel,
logs with cursor pagination, and tenant isolation on every route and on the WebSocket.

The app runs on a real uvicorn server in the test's event loop (the in-process job queue runs there too);
agents are ``scripted`` (offline)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_support import bearer as auth
from api_support import make_user
from api_support import served_client as serve
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from crewflow.adapters.runtime import ScriptedRuntime
from crewflow.adapters.sql.checkpoints import CheckpointSink
from crewflow.adapters.sql.migrate import migrate
from crewflow.application.executions import ExecuteFlow, ExecutionRecorder, ExecutionRunner, execute_flow, get_execution
from crewflow.bootstrap import ApiContainer, build_api_container
from crewflow.domain.codec import flow_from_dict
from crewflow.domain.execution import FlowRecord
from crewflow.domain.flow import Flow
from crewflow.domain.tenancy import Role
from crewflow.ports.queue import RunExecution
from crewflow.settings import Settings
from crewflow.testing.llm_server import Fault, LLMTestServer

pytestmark = pytest.mark.integration

FLOW: dict[str, Any] = {
    "name": "Two steps",
    "inputs": {"topic": {"required": True}},
    "agents": {"w": {"role": "Writer", "goal": "Write", "provider": "scripted"}},
    "nodes": [
        {"id": "in", "kind": "input"},
        {"id": "research", "kind": "agent", "agent": "w", "task": "research {{ inputs.topic }}"},
        {"id": "write", "kind": "agent", "agent": "w", "task": "write up: {{ nodes.research.output }}"},
        {"id": "out", "kind": "output", "value": "{{ nodes.write.output }}"},
    ],
    "edges": ["in -> research", "research -> write", "write -> out"],
}
TERMINAL = {"completed", "failed", "cancelled"}


async def _container(tmp_path: Path, runtime: ScriptedRuntime | None = None,
                     database_url: str | None = None) -> ApiContainer:  # fmt: skip
    if database_url is not None:
        assert (await migrate(database_url)).ok
    settings = Settings(data_dir=str(tmp_path), database_url=database_url,
                        extra={"CREWFLOW_JWT_SECRET": "x" * 40})  # fmt: skip
    return await build_api_container(settings, bcrypt_rounds=4, runtime=runtime)


@pytest.fixture(params=["sqlite", "postgres"])
async def container(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ApiContainer]:
    """The API on the embedded SQLite file, and on PostgreSQL (schema per tenant)."""
    url = str(request.getfixturevalue("postgres_url")) if request.param == "postgres" else None
    built = await _container(tmp_path, database_url=url)
    yield built
    await built.aclose()


@pytest.fixture
async def slow_container(tmp_path: Path) -> AsyncIterator[ApiContainer]:
    """Every agent takes an hour: a run stays mid-node until it is cancelled."""
    built = await _container(tmp_path, ScriptedRuntime(latency=3600))
    yield built
    await built.aclose()


async def store_flow(container: ApiContainer, tenant_id: str, flow_id: str = "two") -> None:
    now = container.clock.now()
    async with container.uow_factory.for_tenant(tenant_id) as uow:
        await uow.flows.add(FlowRecord(flow_id, "Two steps", now, now), FLOW)
        await uow.commit()


async def execute(client: httpx.AsyncClient, token: str, body: dict[str, Any] | None = None,
                  flow_id: str = "two", **headers: str) -> httpx.Response:  # fmt: skip
    body = {"inputs": {"topic": "owls"}} if body is None else body
    return await client.post(f"/api/v1/flows/{flow_id}/execute", json=body, headers=auth(token, **headers))


async def wait_until(client: httpx.AsyncClient, token: str, execution_id: str, statuses: set[str],
                     node: str | None = None) -> dict[str, Any]:  # fmt: skip
    """Poll GET /executions/{id} until the run (or one of its nodes) reaches one of ``statuses``."""
    while True:
        response = await client.get(f"/api/v1/executions/{execution_id}", headers=auth(token))
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        if node is None and body["status"] in statuses:
            return body
        if node is not None and any(n["node_id"] == node and n["status"] in statuses for n in body["nodes"]):
            return body
        await asyncio.sleep(0.02)


async def test_execute_answers_202_with_location_and_the_execution_shows_outputs_and_node_runs(
    container: ApiContainer,
) -> None:
    tenant, token = await make_user(container)
    await store_flow(container, tenant)
    async with serve(container) as client:
        response = await execute(client, token)
        assert response.status_code == 202, response.text
        execution_id = response.json()["execution_id"]
        assert response.headers["location"] == f"/api/v1/executions/{execution_id}"
        done = await wait_until(client, token, execution_id, TERMINAL)
    assert done["status"] == "completed"
    assert done["inputs"] == {"topic": "owls"}
    assert done["outputs"] == {"out": "[Writer] write up: [Writer] research owls"}
    assert done["error"] is None
    assert done["flow_version"] == 1
    assert done["started_at"] <= done["finished_at"]
    nodes = {n["node_id"]: n for n in done["nodes"]}
    assert set(nodes) == {"in", "research", "write", "out"}
    assert all(n["status"] == "completed" for n in nodes.values())
    assert nodes["research"]["attempts"] == 1
    assert nodes["research"]["output"] == "[Writer] research owls"
    # tokens and cost are checkpointed from llm.attempt events (the gateway's); scripted agents make none
    assert {k: nodes["write"][k] for k in ("input_tokens", "output_tokens", "cost")} == {
        "input_tokens": 0, "output_tokens": 0, "cost": 0.0}
    assert nodes["write"]["duration"] >= 0


async def test_an_idempotency_key_replayed_with_the_same_body_starts_one_run_and_with_another_body_conflicts(
    container: ApiContainer,
) -> None:
    tenant, token = await make_user(container)
    await store_flow(container, tenant)
    async with serve(container) as client:
        first = await execute(client, token, **{"Idempotency-Key": "k-1"})
        again = await execute(client, token, **{"Idempotency-Key": "k-1"})
        other = await execute(client, token, {"inputs": {"topic": "bats"}}, **{"Idempotency-Key": "k-1"})
        fresh = await execute(client, token, **{"Idempotency-Key": "k-2"})
        assert first.status_code == again.status_code == fresh.status_code == 202
        assert again.json()["execution_id"] == first.json()["execution_id"]
        assert fresh.json()["execution_id"] != first.json()["execution_id"]
        assert other.status_code == 409
        assert other.headers["content-type"].startswith("application/problem+json")
        for response in (first, fresh):
            await wait_until(client, token, response.json()["execution_id"], TERMINAL)
        listed = (await client.get("/api/v1/flows/two/executions", headers=auth(token))).json()
        audit = (await client.get("/api/v1/audit-logs", headers=auth(token))).json()
    created = sorted([first.json()["execution_id"], fresh.json()["execution_id"]])
    assert sorted(e["id"] for e in listed["items"]) == created
    assert sorted(e["object_id"] for e in audit["items"] if e["action"] == "execution.create") == created


async def test_bad_execute_requests_are_refused_before_anything_runs(container: ApiContainer) -> None:
    tenant, token = await make_user(container)
    await store_flow(container, tenant)
    async with serve(container) as client:
        missing = await execute(client, token, {"inputs": {}})
        assert missing.status_code == 422
        assert missing.json()["errors"] == [{"field": "inputs.topic", "message": "is required", "source": "body"}]
        assert (await execute(client, token, {"inputs": {"topic": "x"}, "version": 7})).status_code == 404
        assert (await execute(client, token, flow_id="nope")).status_code == 404
        assert (await execute(client, token, {"inputs": {"topic": "x"}, "bogus": 1})).status_code == 422
        listed = (await client.get("/api/v1/flows/two/executions", headers=auth(token))).json()
    assert listed["items"] == []


async def test_cancelling_a_slow_run_interrupts_it_and_it_ends_cancelled(slow_container: ApiContainer) -> None:
    tenant, token = await make_user(slow_container)
    await store_flow(slow_container, tenant)
    async with serve(slow_container) as client:
        execution_id = (await execute(client, token)).json()["execution_id"]
        await wait_until(client, token, execution_id, {"running"}, node="research")
        cancelled = await client.post(f"/api/v1/executions/{execution_id}/cancel", headers=auth(token))
        assert cancelled.status_code == 202, cancelled.text
        done = await wait_until(client, token, execution_id, TERMINAL)
        again = await client.post(f"/api/v1/executions/{execution_id}/cancel", headers=auth(token))
        logs = (await client.get(f"/api/v1/executions/{execution_id}/logs", params={"limit": 100},
                                 headers=auth(token))).json()  # fmt: skip
        audit = (await client.get("/api/v1/audit-logs", headers=auth(token))).json()
    assert [(e["action"], e["object_id"]) for e in audit["items"] if e["action"] == "execution.cancel"] == [
        ("execution.cancel", execution_id)]
    assert done["status"] == "cancelled"
    nodes = {n["node_id"]: n["status"] for n in done["nodes"]}
    assert nodes["research"] == "cancelled"
    assert nodes.get("write", "cancelled") == "cancelled"
    assert again.status_code == 409
    assert logs["items"][-1]["kind"] == "run.cancelled"


async def test_logs_are_paged_by_seq_without_gaps_or_repeats(container: ApiContainer) -> None:
    tenant, token = await make_user(container)
    await store_flow(container, tenant)
    async with serve(container) as client:
        execution_id = (await execute(client, token)).json()["execution_id"]
        done = await wait_until(client, token, execution_id, TERMINAL)
        seqs: list[int] = []
        cursor: str | None = None
        pages = 0
        while True:
            params: dict[str, Any] = {"limit": 3} | ({"cursor": cursor} if cursor else {})
            page = (await client.get(f"/api/v1/executions/{execution_id}/logs", params=params,
                                     headers=auth(token))).json()  # fmt: skip
            assert len(page["items"]) <= 3
            seqs.extend(e["seq"] for e in page["items"])
            pages += 1
            cursor = page["next_cursor"]
            if cursor is None:
                break
        bad = await client.get(f"/api/v1/executions/{execution_id}/logs", params={"cursor": "x"}, headers=auth(token))
    assert seqs == list(range(1, done["last_seq"] + 1))
    assert pages > 1
    assert bad.status_code == 422


async def test_another_tenants_execution_is_404_on_every_route_and_4404_on_the_websocket(
    container: ApiContainer,
) -> None:
    tenant_a, token_a = await make_user(container)
    _, token_b = await make_user(container)
    await store_flow(container, tenant_a)
    async with serve(container) as client:
        execution_id = (await execute(client, token_a)).json()["execution_id"]
        await wait_until(client, token_a, execution_id, TERMINAL)
        for target in (execution_id, "no-such-execution"):
            assert (await client.get(f"/api/v1/executions/{target}", headers=auth(token_b))).status_code == 404
            assert (await client.post(f"/api/v1/executions/{target}/cancel",
                                      headers=auth(token_b))).status_code == 404  # fmt: skip
            assert (await client.get(f"/api/v1/executions/{target}/logs", headers=auth(token_b))).status_code == 404
        assert (await client.get("/api/v1/flows/two/executions", headers=auth(token_b))).status_code == 404
        assert (await execute(client, token_b)).status_code == 404
        base = str(client.base_url).replace("http://", "ws://")
        for target in (execution_id, "no-such-execution"):
            async with connect(f"{base}/api/v1/ws/executions/{target}", additional_headers=auth(token_b)) as ws:
                with pytest.raises(ConnectionClosed):
                    await ws.recv()
                assert ws.close_code == 4404
        # nothing changed for the owner
        mine = await client.get(f"/api/v1/executions/{execution_id}", headers=auth(token_a))
    assert mine.json()["status"] == "completed"


async def test_viewers_read_executions_but_cannot_execute_or_cancel(container: ApiContainer) -> None:
    tenant, admin = await make_user(container)
    _, viewer = await make_user(container, Role.VIEWER, tenant)
    await store_flow(container, tenant)
    async with serve(container) as client:
        execution_id = (await execute(client, admin)).json()["execution_id"]
        assert (await execute(client, viewer)).status_code == 403
        await wait_until(client, viewer, execution_id, TERMINAL)
        denied = await client.post(f"/api/v1/executions/{execution_id}/cancel", headers=auth(viewer))
        listed = await client.get("/api/v1/flows/two/executions", headers=auth(viewer))
    assert denied.status_code == 403
    assert [e["id"] for e in listed.json()["items"]] == [execution_id]


class FlakyLog:
    """A log store whose ``fail_on``-th append of events fails once (a store failing mid-run)."""

    def __init__(self, real: Any, fail_on: int) -> None:
        self.real = real
        self.appends = 0
        self.fail_on = fail_on

    def for_tenant(self, tenant_id: str) -> FlakyLog:
        self.store = self.real.for_tenant(tenant_id)
        return self

    async def append_events(self, events: Any) -> None:
        self.appends += 1
        if self.appends == self.fail_on:
            raise OSError("disk full")
        await self.store.append_events(events)

    async def events_after(self, execution_id: str, after_seq: int = 0, limit: int = 1000) -> Any:
        return await self.store.events_after(execution_id, after_seq, limit)


async def test_a_run_whose_store_fails_midway_ends_failed_without_internals(container: ApiContainer) -> None:
    tenant, _ = await make_user(container)
    await store_flow(container, tenant)
    # the very first batch fails (before any node task exists, so the engine has nothing left running)
    recorder = ExecutionRecorder(lambda t: CheckpointSink(container.uow_factory, t), FlakyLog(container.logstore, 1),
                                 container.bus, container.clock)  # fmt: skip
    accepted = await execute_flow(ExecuteFlow(tenant, "two", inputs={"topic": "owls"}),
                                  uow_factory=container.uow_factory, queue=container.queue, clock=container.clock,
                                  ids=container.ids)  # fmt: skip
    await ExecutionRunner(container.uow_factory, container.engine, recorder)(
        RunExecution(tenant, accepted.execution_id), asyncio.Event())
    details = await get_execution(tenant, accepted.execution_id, uow_factory=container.uow_factory)
    events = await container.logstore.for_tenant(tenant).events_after(accepted.execution_id)
    assert details.execution.status == "failed"
    assert details.execution.error == "internal error while running the flow"
    assert [(e.seq, e.kind) for e in events] == [(2, "run.failed")]  # after the checkpointed run.started


async def test_a_worker_resumes_an_interrupted_execution_from_its_checkpoints(tmp_path: Path) -> None:
    runtime = ScriptedRuntime()
    container = await _container(tmp_path, runtime)
    try:
        tenant, _ = await make_user(container)
        await store_flow(container, tenant)
        accepted = await execute_flow(ExecuteFlow(tenant, "two", inputs={"topic": "owls"}),
                                      uow_factory=container.uow_factory, queue=container.queue,
                                      clock=container.clock, ids=container.ids)  # fmt: skip
        execution_id = accepted.execution_id
        # a first worker ran the execution until 'research' completed, then died (its events stored, no end)
        first = await container.engine.run(_two_steps(), {"topic": "owls"}, execution_id=execution_id)
        cut = next(i for i, e in enumerate(first.events) if e.kind == "node.completed" and e.node_id == "research")
        for sink in container.recorder.sinks(tenant):
            await sink.publish(first.events[: cut + 1])
        runtime.calls.clear()

        await ExecutionRunner(container.uow_factory, container.engine, container.recorder)(
            RunExecution(tenant, execution_id), asyncio.Event())

        details = await get_execution(tenant, execution_id, uow_factory=container.uow_factory)
        events = await container.logstore.for_tenant(tenant).events_after(execution_id)
    finally:
        await container.aclose()
    assert [node for node, _ in runtime.calls] == ["write"]  # the completed node did not run again
    assert details.execution.status == "completed"
    assert details.execution.outputs == first.outputs
    assert [e.seq for e in events] == list(range(1, len(events) + 1))  # the log continues without a gap
    assert events[-1].kind == "run.completed"


def _two_steps() -> Flow:
    return flow_from_dict(FLOW, flow_id="two")


async def test_concurrent_requests_with_one_idempotency_key_start_one_run(container: ApiContainer) -> None:
    tenant, token = await make_user(container)
    await store_flow(container, tenant)
    async with serve(container) as client:
        responses = await asyncio.gather(*(execute(client, token, **{"Idempotency-Key": "same"}) for _ in range(6)))
        assert {r.status_code for r in responses} == {202}, [r.text for r in responses]
        ids = {r.json()["execution_id"] for r in responses}
        assert len(ids) == 1
        await wait_until(client, token, ids.pop(), TERMINAL)
        listed = (await client.get("/api/v1/flows/two/executions", headers=auth(token))).json()
    assert len(listed["items"]) == 1


PRIMARY_KEY = "sk-primary-SECRET-4e1f0a9b7c"
BACKUP_KEY = "sk-backup-SECRET-9d8c7b6a5f"


async def test_an_agent_on_the_tenants_llm_providers_runs_through_the_gateway_and_fails_over(
    container: ApiContainer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))  # CrewAI's own files, offline
    monkeypatch.setenv("CREWAI_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-dummy-not-used")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    _, token = await make_user(container)
    async with LLMTestServer(api_key=None) as llm, serve(container) as client:
        llm.provider("primary").api_key = PRIMARY_KEY
        llm.provider("backup").api_key = BACKUP_KEY
        llm.provider("primary").fail(Fault.server_error(500, times=None))
        llm.provider("backup").script("Final Answer: tide mills grind grain")
        for name, key, priority in (("primary", PRIMARY_KEY, 1), ("backup", BACKUP_KEY, 2)):
            created = await client.post("/api/v1/providers", headers=auth(token), json={
                "name": name, "kind": "openai", "model": f"{name}-model", "api_key": key,
                "base_url": llm.openai_base_url(name), "priority": priority,
                "price_input_per_1k": 0.01, "price_output_per_1k": 0.03})  # fmt: skip
            assert created.status_code == 201, created.text
        agent = {"id": "researcher", "role": "Researcher", "goal": "Find facts"}  # no provider: the tenant's chain
        assert (await client.post("/api/v1/agents", json=agent, headers=auth(token))).status_code == 201
        flow = {"id": "ask", "nodes": [{"id": "in", "kind": "input"},
                                       {"id": "q", "kind": "agent", "agent": "researcher", "task": "Tide mills?"},
                                       {"id": "out", "kind": "output", "value": "{{ nodes.q.output }}"}],
                "edges": ["in -> q", "q -> out"]}  # fmt: skip
        assert (await client.post("/api/v1/flows", json=flow, headers=auth(token))).status_code == 201
        execution_id = (await execute(client, token, {}, flow_id="ask")).json()["execution_id"]
        done = await wait_until(client, token, execution_id, TERMINAL)
        logs = (await client.get(f"/api/v1/executions/{execution_id}/logs", params={"limit": 100},
                                 headers=auth(token))).json()  # fmt: skip
    assert done["status"] == "completed", done["error"]
    assert done["outputs"] == {"out": "tide mills grind grain"}
    attempts = [(e["data"].get("provider"), e["data"].get("outcome"))
                for e in logs["items"] if e["kind"] == "llm.attempt"]  # fmt: skip
    assert ("backup", "success") in attempts
    assert any(provider == "primary" and outcome != "success" for provider, outcome in attempts)
    q = next(n for n in done["nodes"] if n["node_id"] == "q")
    assert q["input_tokens"] > 0
    assert q["cost"] > 0
    text = json.dumps([done, logs])
    assert PRIMARY_KEY not in text
    assert BACKUP_KEY not in text


async def test_an_idempotency_key_longer_than_200_characters_is_422(container: ApiContainer) -> None:
    tenant, token = await make_user(container)
    await store_flow(container, tenant)
    async with serve(container) as client:
        assert (await execute(client, token, **{"Idempotency-Key": "k" * 200})).status_code == 202
        assert (await execute(client, token, **{"Idempotency-Key": "k" * 201})).status_code == 422
