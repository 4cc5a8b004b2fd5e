"""WS /api/v1/ws/executions/{id}: every event exactly once and in order (replay log, then live), reconnects
with ``last_seq`` without gaps or duplicates, and clear close codes for authentication failures.

A real uvicorn server runs the app in the test's event loop; agents are gated by the test (a fake of the
``AgentRuntime`` port that waits for the test to open each node's gate), so "mid-run" is a state the test
controls, not a race."""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_support import bearer, make_user
from api_support import served as serve
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from crewflow.adapters.runtime import ScriptedRuntime
from crewflow.adapters.sql.migrate import migrate
from crewflow.bootstrap import ApiContainer, build_api_container
from crewflow.domain.execution import FlowRecord
from crewflow.entrypoints.http.security import SESSION_COOKIE
from crewflow.ports.runtime import AgentWork, CrewWork, NodeEmitter, NodeOutcome
from crewflow.settings import Settings

pytestmark = pytest.mark.integration


class GatedRuntime:
    """Scripted answers, but each node waits until the test opens its gate; ``started[node]`` is set when
    the node's work begins."""

    def __init__(self) -> None:
        self.inner = ScriptedRuntime(stream=True)
        self.gates: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self.started: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)

    async def run_agent(self, work: AgentWork, emit: NodeEmitter) -> NodeOutcome:
        self.started[work.node_id].set()
        await self.gates[work.node_id].wait()
        return await self.inner.run_agent(work, emit)

    async def run_crew(self, work: CrewWork, emit: NodeEmitter) -> NodeOutcome:
        self.started[work.node_id].set()
        await self.gates[work.node_id].wait()
        return await self.inner.run_crew(work, emit)


CHAIN: dict[str, Any] = {
    "name": "Chain",
    "inputs": {"topic": {"required": True}},
    "agents": {"w": {"role": "Writer", "goal": "Write", "provider": "scripted"}},
    "nodes": [
        {"id": "in", "kind": "input"},
        {"id": "a", "kind": "agent", "agent": "w", "task": "first about {{ inputs.topic }}"},
        {"id": "b", "kind": "agent", "agent": "w", "task": "second: {{ nodes.a.output }}"},
        {"id": "c", "kind": "agent", "agent": "w", "task": "third: {{ nodes.b.output }}"},
        {"id": "out", "kind": "output", "value": "{{ nodes.c.output }}"},
    ],
    "edges": ["in -> a", "a -> b", "b -> c", "c -> out"],
}


@pytest.fixture
def gated() -> GatedRuntime:
    return GatedRuntime()


@pytest.fixture(params=["sqlite", "postgres"])
async def container(request: pytest.FixtureRequest, tmp_path: Path, gated: GatedRuntime) -> AsyncIterator[ApiContainer]:
    """The API on the embedded SQLite file, and on PostgreSQL (the replay log in its tenant schema)."""
    url = str(request.getfixturevalue("postgres_url")) if request.param == "postgres" else None
    if url is not None:
        assert (await migrate(url)).ok
    settings = Settings(data_dir=str(tmp_path), database_url=url, extra={"CREWFLOW_JWT_SECRET": "x" * 40})
    built = await build_api_container(settings, bcrypt_rounds=4, runtime=gated)
    yield built
    await built.aclose()


async def store_flow(container: ApiContainer, tenant_id: str, flow_id: str = "chain",
                     document: dict[str, Any] | None = None) -> None:  # fmt: skip
    now = container.clock.now()
    async with container.uow_factory.for_tenant(tenant_id) as uow:
        await uow.flows.add(FlowRecord(flow_id, "Chain", now, now), document or CHAIN)
        await uow.commit()


async def execute(base: str, token: str, flow_id: str = "chain") -> str:
    async with httpx.AsyncClient(base_url=f"http://{base}") as client:
        response = await client.post(f"/api/v1/flows/{flow_id}/execute", json={"inputs": {"topic": "owls"}},
                                     headers=bearer(token))  # fmt: skip
    assert response.status_code == 202, response.text
    return str(response.json()["execution_id"])


async def logged_events(base: str, token: str, execution_id: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    cursor: str | None = None
    async with httpx.AsyncClient(base_url=f"http://{base}") as client:
        while True:
            params = {"limit": 100} | ({"cursor": cursor} if cursor else {})
            page = (await client.get(f"/api/v1/executions/{execution_id}/logs", params=params,
                                     headers=bearer(token))).json()  # fmt: skip
            events.extend(page["items"])
            cursor = page["next_cursor"]
            if cursor is None:
                return events


async def read_until(ws: ClientConnection, stop: Any = None) -> tuple[list[dict[str, Any]], int | None]:
    """Events until ``stop(event)`` is true (the socket stays open) or the server closes (its close code)."""
    events: list[dict[str, Any]] = []
    try:
        async for message in ws:
            event = json.loads(message)
            events.append(event)
            if stop is not None and stop(event):
                return events, None
    except ConnectionClosed:
        pass
    return events, ws.close_code


def ws_url(base: str, execution_id: str, last_seq: int | None = None) -> str:
    query = "" if last_seq is None else f"?last_seq={last_seq}"
    return f"ws://{base}/api/v1/ws/executions/{execution_id}{query}"


def open_gates(gated: GatedRuntime) -> None:
    for node in ("a", "b", "c"):
        gated.gates[node].set()


async def test_every_event_arrives_exactly_once_in_order_across_replay_and_live(
    container: ApiContainer, gated: GatedRuntime
) -> None:
    tenant, token = await make_user(container)
    await store_flow(container, tenant)
    async with serve(container) as base:
        execution_id = await execute(base, token)
        await gated.started["a"].wait()  # mid-run: some events are only in the log, the rest come live
        async with connect(ws_url(base, execution_id), additional_headers=bearer(token)) as ws:
            gated.gates["a"].set()
            gated.gates["b"].set()
            gated.gates["c"].set()
            received, code = await read_until(ws)
        logged = await logged_events(base, token, execution_id)
    assert code == 1000
    seqs = [e["seq"] for e in received]
    assert seqs == list(range(1, len(received) + 1))
    assert received == logged  # the same events, nothing more, nothing less
    assert received[-1]["kind"] == "run.completed"
    assert received[-1]["data"]["outputs"] == {"out": logged[-1]["data"]["outputs"]["out"]}
    assert [e["node_id"] for e in received if e["kind"] == "node.started"] == ["in", "a", "b", "c", "out"]
    assert any(e["kind"] == "node.token" for e in received)


async def test_a_client_reconnecting_with_last_seq_mid_run_misses_nothing_and_gets_nothing_twice(
    container: ApiContainer, gated: GatedRuntime
) -> None:
    tenant, token = await make_user(container)
    await store_flow(container, tenant)
    async with serve(container) as base:
        execution_id = await execute(base, token)
        async with connect(ws_url(base, execution_id), additional_headers=bearer(token)) as ws:
            gated.gates["a"].set()
            first, code = await read_until(ws, lambda e: e["kind"] == "node.completed" and e["node_id"] == "a")
        assert code is None
        # while the client is away, node b runs and finishes, and c starts
        gated.gates["b"].set()
        await gated.started["c"].wait()
        last_seq = first[-1]["seq"]
        async with connect(ws_url(base, execution_id, last_seq), additional_headers=bearer(token)) as ws:
            gated.gates["c"].set()
            second, code = await read_until(ws)
        logged = await logged_events(base, token, execution_id)
    assert code == 1000
    assert second[0]["seq"] == last_seq + 1
    assert first + second == logged
    assert [e["seq"] for e in first + second] == list(range(1, len(logged) + 1))
    assert any(e["node_id"] == "b" and e["kind"] == "node.completed" for e in second)


async def test_a_finished_run_is_replayed_whole_then_closed_normally(container: ApiContainer,
                                                                      gated: GatedRuntime) -> None:  # fmt: skip
    tenant, token = await make_user(container)
    await store_flow(container, tenant)
    open_gates(gated)
    async with serve(container) as base:
        execution_id = await execute(base, token)
        async with connect(ws_url(base, execution_id), additional_headers=bearer(token)) as ws:
            everything, code = await read_until(ws)
        async with connect(ws_url(base, execution_id, everything[-3]["seq"]),
                           additional_headers=bearer(token)) as ws:  # fmt: skip
            tail, tail_code = await read_until(ws)
        async with connect(ws_url(base, execution_id, everything[-1]["seq"] + 5),
                           additional_headers=bearer(token)) as ws:  # fmt: skip
            beyond, beyond_code = await read_until(ws)  # a last_seq past the end: closed at once, not left open
    assert code == tail_code == beyond_code == 1000
    assert tail == everything[-2:]
    assert beyond == []


async def test_authentication_failures_close_with_4401(container: ApiContainer, gated: GatedRuntime) -> None:
    tenant, token = await make_user(container)
    await store_flow(container, tenant)
    open_gates(gated)
    async with serve(container) as base:
        execution_id = await execute(base, token)
        url = ws_url(base, execution_id)
        async with connect(url, additional_headers=bearer("not.a.token")) as ws:
            assert (await read_until(ws)) == ([], 4401)
        async with connect(url) as ws:  # no header, no cookie: the first message must carry the token
            await ws.send(json.dumps({"token": token + "x"}))
            assert (await read_until(ws)) == ([], 4401)
        async with connect(url) as ws:
            await ws.send(json.dumps({"hello": "world"}))
            assert (await read_until(ws)) == ([], 4401)
        async with connect(url) as ws:  # the same token as a first message works
            await ws.send(json.dumps({"token": token}))
            events, code = await read_until(ws)
        assert code == 1000
        assert events[-1]["kind"] == "run.completed"


async def test_the_session_cookie_works_from_the_same_origin_only(container: ApiContainer,
                                                                   gated: GatedRuntime) -> None:  # fmt: skip
    tenant, token = await make_user(container)
    await store_flow(container, tenant)
    open_gates(gated)
    async with serve(container) as base:
        execution_id = await execute(base, token)
        cookie = {"Cookie": f"{SESSION_COOKIE}={token}"}
        async with connect(ws_url(base, execution_id), additional_headers=cookie, origin=f"http://{base}") as ws:
            events, code = await read_until(ws)
        assert code == 1000
        assert events[-1]["kind"] == "run.completed"
        async with connect(ws_url(base, execution_id), additional_headers=cookie,
                           origin="http://evil.example") as ws:  # fmt: skip
            assert (await read_until(ws)) == ([], 4403)


async def test_the_stream_stops_when_the_client_goes_away(container: ApiContainer, gated: GatedRuntime) -> None:
    tenant, token = await make_user(container)
    await store_flow(container, tenant)
    async with serve(container) as base:
        execution_id = await execute(base, token)
        await gated.started["a"].wait()
        async with connect(ws_url(base, execution_id), additional_headers=bearer(token)) as ws:
            await read_until(ws, lambda e: e["kind"] == "node.started" and e["node_id"] == "a")
            assert container.bus.subscriber_count(tenant, execution_id) == 1  # type: ignore[attr-defined]
        while container.bus.subscriber_count(tenant, execution_id):  # type: ignore[attr-defined]
            await asyncio.sleep(0.01)  # the server notices the disconnect and unsubscribes
        open_gates(gated)
