"""The resource API, black box: crews, flows (versions, validation), LLM providers (write-only keys) and tool
registration, over a real container (SQLite) and app; plus the provider registry and ``resolve_flow``."""

from __future__ import annotations

import base64
import json
import logging
import sqlite3
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from httpx import Response
from litestar.testing import AsyncTestClient

from crewflow.adapters.sql.migrate import migrate
from crewflow.application.catalog import resolve_flow
from crewflow.application.providers import RepositoryProviderRegistry
from crewflow.bootstrap import ApiContainer, build_api_container
from crewflow.domain.errors import FlowInvalid
from crewflow.domain.tenancy import Role, Tenant, User
from crewflow.entrypoints.http import create_app
from crewflow.ports.auth import RateDecision
from crewflow.ports.llm import ChatRequest, ChatResponse, ProviderConfig, TokenCallback
from crewflow.settings import Settings

pytestmark = pytest.mark.integration

PROBLEM = "application/problem+json"
API = "/api/v1"
KEY = "sk-proj-Zq8vN3xR7tLmK2pW9sYd4abcd"
OTHER_KEY = "sk-ant-Yh5tG8wE1qZ6nB3vC0xM7wxyz"


class Unlimited:
    """A ``RateLimiter`` that allows everything: these tests send more than 100 requests a minute."""

    async def hit(self, key: str, limit: int, window: float) -> RateDecision:
        return RateDecision(allowed=True, remaining=limit)


@pytest.fixture
async def container(tmp_path: Path) -> AsyncIterator[ApiContainer]:
    settings = Settings(data_dir=str(tmp_path), extra={"CREWFLOW_JWT_SECRET": "x" * 40})
    built = await build_api_container(settings, bcrypt_rounds=4)
    built.limiter = Unlimited()
    yield built
    await built.aclose()


@pytest.fixture
async def client(container: ApiContainer) -> AsyncIterator[AsyncTestClient[Any]]:
    async with AsyncTestClient(create_app(container)) as test_client:
        yield test_client


async def make_user(container: ApiContainer, role: Role, tenant_id: str | None = None) -> tuple[str, dict[str, str]]:
    """A tenant (new unless given) and a user of it; returns (tenant id, auth headers)."""
    if tenant_id is None:
        tenant_id = uuid.uuid4().hex[:12]
        await container.provisioner.register(Tenant(tenant_id, f"t-{tenant_id}", "T", f"tenant_{tenant_id}",
                                                    datetime.now(UTC)))  # fmt: skip
    user = User(uuid.uuid4().hex, tenant_id, f"{uuid.uuid4().hex[:8]}@example.com", role,
                container.hasher.hash("pw-123456789"))  # fmt: skip
    async with container.uow_factory.platform() as uow:
        await uow.users.add(user)
        await uow.commit()
    return tenant_id, {"Authorization": f"Bearer {container.tokens.issue(user.id, tenant_id, role).token}"}


def ok(response: Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json() if response.content else None


def problem(response: Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = response.json()
    return body


def agent(agent_id: str, **extra: Any) -> dict[str, Any]:
    return {"id": agent_id, "role": f"{agent_id} role", "goal": "do it", "provider": "scripted", **extra}


def flow_doc(**extra: Any) -> dict[str, Any]:
    """input -> write (saved agent 'writer') -> out."""
    return {
        "name": "Write a note",
        "nodes": [
            {"id": "in", "kind": "input"},
            {"id": "write", "kind": "agent", "agent": "writer", "task": "Write about {{ inputs.topic }}"},
            {"id": "out", "kind": "output"},
        ],
        "edges": ["in -> write", "write -> out"],
        **extra,
    }


async def walk(client: AsyncTestClient[Any], path: str, headers: dict[str, str], limit: int) -> list[Any]:
    """Every item of a list route, page by page."""
    items: list[Any] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": limit, **({"cursor": cursor} if cursor else {})}
        page = ok(await client.get(path, params=params, headers=headers))
        assert len(page["items"]) <= limit
        items.extend(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            return items


# -- pagination, on every list route ---------------------------------------------------------------------
@pytest.mark.parametrize("route", ["agents", "crews", "flows", "providers", "tools"])
async def test_lists_refuse_a_limit_over_100_and_a_forged_cursor_with_422(
    client: AsyncTestClient[Any], container: ApiContainer, route: str
) -> None:
    _, admin = await make_user(container, Role.ADMIN)
    assert ok(await client.get(f"{API}/{route}", params={"limit": 100}, headers=admin))["items"] == []
    problem(await client.get(f"{API}/{route}", params={"limit": 101}, headers=admin), 422)
    problem(await client.get(f"{API}/{route}", params={"limit": 0}, headers=admin), 422)
    forged = problem(await client.get(f"{API}/{route}", params={"cursor": "bm90LWEtY3Vyc29y"}, headers=admin), 422)
    assert forged["errors"][0]["field"] == "cursor"


# -- crews -------------------------------------------------------------------------------------------------
async def test_crews_crud_with_cursor_pagination(client: AsyncTestClient[Any], container: ApiContainer) -> None:
    _, admin = await make_user(container, Role.ADMIN)
    for agent_id in ("researcher", "writer"):
        ok(await client.post(f"{API}/agents", json=agent(agent_id), headers=admin), 201)
    tasks = [{"name": "research", "description": "Research {topic}", "agent": "researcher"},
             {"name": "write", "description": "Write it", "agent": "writer", "context": ["research"]}]  # fmt: skip
    for index in range(5):
        body = {"id": f"team-{index}", "agents": ["researcher", "writer"], "tasks": tasks}
        created = ok(await client.post(f"{API}/crews", json=body, headers=admin), 201)
        assert created["process"] == "sequential" and created["tasks"][1]["context"] == ["research"]
    assert [c["id"] for c in await walk(client, f"{API}/crews", admin, 2)] == [f"team-{i}" for i in range(5)]

    patched = ok(await client.patch(f"{API}/crews/team-0", json={"process": "hierarchical", "description": "d"},
                                    headers=admin))  # fmt: skip
    assert (patched["process"], patched["description"]) == ("hierarchical", "d")
    assert ok(await client.get(f"{API}/crews/team-0", headers=admin))["process"] == "hierarchical"
    assert (await client.delete(f"{API}/crews/team-0", headers=admin)).status_code == 204
    problem(await client.get(f"{API}/crews/team-0", headers=admin), 404)
    problem(await client.post(f"{API}/crews", json={"id": "team-1", "agents": ["researcher"], "tasks": tasks[:1]},
                              headers=admin), 409)  # fmt: skip


async def test_a_crew_of_unknown_agents_or_misassigned_tasks_is_422_naming_each_field(
    client: AsyncTestClient[Any], container: ApiContainer
) -> None:
    _, admin = await make_user(container, Role.ADMIN)
    ok(await client.post(f"{API}/agents", json=agent("writer"), headers=admin), 201)
    body = {"agents": ["writer", "ghost"], "tasks": [
        {"name": "a", "description": "x", "agent": "stranger"},
        {"name": "b", "description": "y", "context": ["later"]},
    ]}  # fmt: skip
    errors = problem(await client.post(f"{API}/crews", json=body, headers=admin), 422)["errors"]
    assert {e["field"] for e in errors} == {"agents[1]", "tasks[0].agent", "tasks[1].context"}
    assert ok(await client.get(f"{API}/crews", headers=admin))["items"] == []


# -- flows -------------------------------------------------------------------------------------------------
async def test_flows_are_versioned_and_a_stale_expected_version_is_409(
    client: AsyncTestClient[Any], container: ApiContainer
) -> None:
    _, admin = await make_user(container, Role.ADMIN)
    ok(await client.post(f"{API}/agents", json=agent("writer"), headers=admin), 201)
    created = ok(await client.post(f"{API}/flows", json=flow_doc(), headers=admin), 201)
    flow_id = created["id"]
    assert flow_id.startswith("write-a-note-") and created["current_version"] == 1
    assert created["definition"]["nodes"][1]["agent"] == "writer"

    v2 = ok(await client.put(f"{API}/flows/{flow_id}", json={"expected_version": 1,
                                                              "definition": flow_doc(description="second")},
                             headers=admin))  # fmt: skip
    assert (v2["current_version"], v2["description"]) == (2, "second")
    stale = problem(await client.put(f"{API}/flows/{flow_id}", json={"expected_version": 1,
                                                                      "definition": flow_doc(description="lost")},
                                     headers=admin), 409)  # fmt: skip
    assert "version 2" in stale["detail"]
    current = ok(await client.get(f"{API}/flows/{flow_id}", headers=admin))
    assert (current["current_version"], current["description"]) == (2, "second")

    versions = ok(await client.get(f"{API}/flows/{flow_id}/versions", headers=admin))["items"]
    assert [v["version"] for v in versions] == [2, 1]
    first = ok(await client.get(f"{API}/flows/{flow_id}/versions/1", headers=admin))
    assert "description" not in first["definition"] and first["definition"]["version"] == 1
    problem(await client.get(f"{API}/flows/{flow_id}/versions/3", headers=admin), 404)
    assert [f["id"] for f in ok(await client.get(f"{API}/flows", headers=admin))["items"]] == [flow_id]

    assert (await client.delete(f"{API}/flows/{flow_id}", headers=admin)).status_code == 204
    problem(await client.get(f"{API}/flows/{flow_id}", headers=admin), 404)
    problem(await client.get(f"{API}/flows/{flow_id}/versions", headers=admin), 404)


async def test_flows_list_pages_with_an_opaque_cursor(client: AsyncTestClient[Any], container: ApiContainer) -> None:
    _, admin = await make_user(container, Role.ADMIN)
    ok(await client.post(f"{API}/agents", json=agent("writer"), headers=admin), 201)
    ids = [ok(await client.post(f"{API}/flows", json=flow_doc(id=f"flow-{i}"), headers=admin), 201)["id"]
           for i in range(7)]  # fmt: skip
    assert [f["id"] for f in await walk(client, f"{API}/flows", admin, 3)] == sorted(ids)


async def test_an_invalid_flow_is_422_listing_every_problem_by_node_and_nothing_is_stored(
    client: AsyncTestClient[Any], container: ApiContainer
) -> None:
    _, admin = await make_user(container, Role.ADMIN)
    doc = flow_doc(nodes=[
        {"id": "in", "kind": "input"},
        {"id": "write", "kind": "agent", "agent": "nobody", "task": "Write"},
        {"id": "loop", "kind": "agent", "agent": "nobody", "task": "{{ nodes.ghost.output }}"},
        {"id": "out", "kind": "output"},
    ], edges=["in -> write", "write -> out", "loop -> loop"])  # fmt: skip
    errors = problem(await client.post(f"{API}/flows", json=doc, headers=admin), 422)["errors"]
    by_code = {(e["code"], tuple(e["nodes"])) for e in errors}
    assert ("unknown_agent", ("write",)) in by_code and ("unknown_agent", ("loop",)) in by_code
    assert ("cycle", ("loop",)) in by_code and ("unknown_reference", ("loop",)) in by_code
    # a shape problem names its location; a flow id that is not an id is refused
    shape = problem(await client.post(f"{API}/flows", json={"nodes": [{"id": "x", "kind": "nope"}]},
                                      headers=admin), 422)  # fmt: skip
    assert "nodes[0]" in shape["errors"][0]["where"]
    bad_id = problem(await client.post(f"{API}/flows", json={**flow_doc(), "id": "../etc"}, headers=admin), 422)
    assert [(e["code"], e["where"]) for e in bad_id["errors"] if e["code"] == "bad_id"] == [("bad_id", "id")]
    assert ok(await client.get(f"{API}/flows", headers=admin))["items"] == []


async def test_validate_answers_the_problem_list_for_unsaved_and_stored_flows(
    client: AsyncTestClient[Any], container: ApiContainer
) -> None:
    _, admin = await make_user(container, Role.ADMIN)
    ok(await client.post(f"{API}/agents", json=agent("writer"), headers=admin), 201)
    assert ok(await client.post(f"{API}/flows/validate", json=flow_doc(), headers=admin)) == {
        "valid": True, "problems": []}  # fmt: skip
    unsaved = ok(await client.post(f"{API}/flows/validate", json=flow_doc(edges=["in -> write", "out -> write"]),
                                   headers=admin))  # fmt: skip
    assert unsaved["valid"] is False
    assert {(p["code"], tuple(p["nodes"])) for p in unsaved["problems"]} >= {("output_has_children", ("out",))}
    assert ok(await client.get(f"{API}/flows", headers=admin))["items"] == []  # validate stores nothing

    flow_id = ok(await client.post(f"{API}/flows", json=flow_doc(), headers=admin), 201)["id"]
    assert ok(await client.post(f"{API}/flows/{flow_id}/validate", headers=admin))["valid"] is True
    # the catalog changes under a stored flow: its validation says so, naming the node
    assert (await client.delete(f"{API}/agents/writer", headers=admin)).status_code == 204
    stored = ok(await client.post(f"{API}/flows/{flow_id}/validate", params={"version": 1}, headers=admin))
    assert stored["valid"] is False
    assert [(p["code"], p["nodes"]) for p in stored["problems"]] == [("unknown_agent", ["write"])]
    problem(await client.post(f"{API}/flows/{flow_id}/validate", params={"version": 9}, headers=admin), 404)


async def test_resolve_flow_embeds_the_saved_agents_crews_and_tools_a_version_uses(
    client: AsyncTestClient[Any], container: ApiContainer
) -> None:
    tenant, admin = await make_user(container, Role.ADMIN)
    ok(await client.post(f"{API}/tools", json={"name": "wordcount", "dockerfile": "FROM python:3.12-slim",
                                               "input_schema": {"type": "object"},
                                               "output_schema": {"type": "object"}}, headers=admin), 201)  # fmt: skip
    ok(await client.post(f"{API}/agents", json=agent("writer", tools=["wordcount"]), headers=admin), 201)
    ok(await client.post(f"{API}/agents", json=agent("editor"), headers=admin), 201)
    ok(await client.post(f"{API}/crews", json={"id": "desk", "agents": ["editor"],
                                               "tasks": [{"name": "edit", "description": "Edit"}]},
                         headers=admin), 201)  # fmt: skip
    doc = flow_doc(nodes=[
        {"id": "in", "kind": "input"},
        {"id": "write", "kind": "agent", "agent": "writer", "task": "Write"},
        {"id": "edit", "kind": "crew", "crew": "desk"},
        {"id": "out", "kind": "output"},
    ], edges=["in -> write", "write -> edit", "edit -> out"])  # fmt: skip
    flow_id = ok(await client.post(f"{API}/flows", json=doc, headers=admin), 201)["id"]
    ok(await client.put(f"{API}/flows/{flow_id}", json={"expected_version": 1, "definition": doc}, headers=admin))

    async with container.uow_factory.for_tenant(tenant) as uow:
        flow = await resolve_flow(uow, flow_id)
        first = await resolve_flow(uow, flow_id, 1)
    assert (flow.id, flow.version, first.version) == (flow_id, 2, 1)
    assert set(flow.agents) == {"writer", "editor"} and set(flow.crews) == {"desk"}
    assert set(flow.tools) == {"wordcount"} and flow.agents["writer"].tools == ("wordcount",)

    assert (await client.delete(f"{API}/agents/editor", headers=admin)).status_code == 204
    async with container.uow_factory.for_tenant(tenant) as uow:
        with pytest.raises(FlowInvalid) as refused:
            await resolve_flow(uow, flow_id)
    assert [p.code for p in refused.value.problems] == ["unknown_agent"]


# -- providers ---------------------------------------------------------------------------------------------
def provider(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "kind": "scripted", "model": "m-1", **extra}


def everything_stored(data_dir: Path) -> list[bytes]:
    """The raw bytes of every file under the data directory, and an SQL dump of each SQLite database there."""
    files = [path for path in data_dir.rglob("*") if path.is_file()]
    dumps = [path.read_bytes() for path in files]
    for path in files:
        if path.read_bytes()[:16] == b"SQLite format 3\x00":
            with sqlite3.connect(path) as conn:
                dumps.append("\n".join(conn.iterdump()).encode())
    assert len(dumps) > len(files) > 1  # the platform database and the tenant's were both read
    return dumps


async def test_provider_keys_are_write_only_masked_on_read_and_absent_from_database_and_logs(
    client: AsyncTestClient[Any], container: ApiContainer, tmp_path: Path, caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    tenant, admin = await make_user(container, Role.ADMIN)
    responses = [await client.post(f"{API}/providers", json=provider("primary", api_key=KEY, kind="openai",
                                                                      base_url="https://llm.invalid/v1"),
                                   headers=admin)]  # fmt: skip
    created = ok(responses[0], 201)
    assert (created["api_key"], created["has_key"]) == ("sk-…abcd", True)
    provider_id = created["id"]
    responses += [
        await client.get(f"{API}/providers", headers=admin),
        await client.get(f"{API}/providers/{provider_id}", headers=admin),
        await client.patch(f"{API}/providers/{provider_id}", json={"model": "m-2"}, headers=admin),
        # refused requests carrying a key do not echo it either
        await client.post(f"{API}/providers", json=provider("primary", api_key=KEY), headers=admin),  # 409
        await client.post(f"{API}/providers", json=provider("x", api_key=KEY, kind="nope"), headers=admin),  # 422
        await client.patch(f"{API}/providers/{provider_id}", json={"api_key": KEY, "priority": -1}, headers=admin),
    ]
    assert [r.status_code for r in responses] == [201, 200, 200, 200, 409, 422, 422]
    for response in responses:
        assert KEY not in response.text and KEY[-12:] not in response.text
    kept = ok(await client.get(f"{API}/providers/{provider_id}", headers=admin))
    assert (kept["model"], kept["api_key"]) == ("m-2", "sk-…abcd")  # a PATCH without a key keeps it

    # the gateway's registry opens the key; the stored row holds only the sealed blob and the mask
    assert (await container.provider_registry.for_tenant(tenant)).providers[0].config.api_key == KEY
    dumps = everything_stored(tmp_path)
    assert any(b"primary" in dump for dump in dumps)  # the provider's row is in there
    assert all(KEY.encode() not in dump and KEY[-12:].encode() not in dump for dump in dumps)
    logged = caplog.text + "".join(capsys.readouterr())
    assert KEY not in logged and KEY[-12:] not in logged


async def test_provider_writes_reach_the_gateway_registry_at_once(
    client: AsyncTestClient[Any], container: ApiContainer
) -> None:
    tenant, admin = await make_user(container, Role.ADMIN)
    provider_id = ok(await client.post(f"{API}/providers", json=provider("main", api_key=KEY), headers=admin),
                     201)["id"]  # fmt: skip
    registry = container.provider_registry
    assert [(e.name, e.config.api_key) for e in (await registry.for_tenant(tenant)).providers] == [("main", KEY)]
    replaced = ok(await client.patch(f"{API}/providers/{provider_id}", json={"api_key": OTHER_KEY}, headers=admin))
    assert replaced["api_key"] == "sk-…wxyz"
    assert (await registry.for_tenant(tenant)).providers[0].config.api_key == OTHER_KEY
    removed = ok(await client.patch(f"{API}/providers/{provider_id}", json={"api_key": ""}, headers=admin))
    assert (removed["has_key"], removed["api_key"]) == (False, None)
    assert (await registry.for_tenant(tenant)).providers[0].config.api_key == ""
    ok(await client.patch(f"{API}/providers/{provider_id}", json={"is_active": False}, headers=admin))
    with pytest.raises(Exception, match="not found"):
        await registry.for_tenant(tenant)  # no active provider left


async def test_providers_reorder_sets_the_failover_order(client: AsyncTestClient[Any], container: ApiContainer) -> None:
    tenant, admin = await make_user(container, Role.ADMIN)
    ids = {name: ok(await client.post(f"{API}/providers", json=provider(name, priority=prio), headers=admin),
                    201)["id"] for name, prio in (("a", 1), ("b", 2), ("c", 3))}  # fmt: skip
    assert [p["name"] for p in ok(await client.get(f"{API}/providers", headers=admin))["items"]] == ["a", "b", "c"]
    await container.provider_registry.for_tenant(tenant)  # cached before the reorder
    answer = ok(await client.put(f"{API}/providers/order", json={"order": [ids["c"], ids["a"]]}, headers=admin))
    assert [(p["name"], p["priority"]) for p in answer] == [("c", 10), ("a", 20), ("b", 30)]
    assert [p["name"] for p in ok(await client.get(f"{API}/providers", headers=admin))["items"]] == ["c", "a", "b"]
    assert [e.name for e in (await container.provider_registry.for_tenant(tenant)).providers] == ["c", "a", "b"]
    problem(await client.put(f"{API}/providers/order", json={"order": [ids["a"], ids["a"]]}, headers=admin), 422)
    problem(await client.put(f"{API}/providers/order", json={"order": ["missing"]}, headers=admin), 404)
    assert (await client.delete(f"{API}/providers/{ids['b']}", headers=admin)).status_code == 204
    assert [p["name"] for p in ok(await client.get(f"{API}/providers", headers=admin))["items"]] == ["c", "a"]


class FakeClock:
    def __init__(self) -> None:
        self.at = 1000.0

    def now(self) -> float:
        return self.at


class FakeProvider:
    def __init__(self, config: ProviderConfig) -> None:
        self.config = config
        self.closed = False

    @property
    def name(self) -> str:
        return self.config.name

    async def complete(self, request: ChatRequest, on_token: TokenCallback | None = None) -> ChatResponse:
        return ChatResponse(content="ok", model=self.config.model, provider=self.config.name)

    async def close(self) -> None:
        self.closed = True


async def test_the_registry_caches_for_its_ttl_reuses_unchanged_adapters_and_closes_replaced_ones(
    client: AsyncTestClient[Any], container: ApiContainer
) -> None:
    tenant, admin = await make_user(container, Role.ADMIN)
    built: list[FakeProvider] = []

    def build(config: ProviderConfig) -> FakeProvider:
        built.append(FakeProvider(config))
        return built[-1]

    clock = FakeClock()
    registry = RepositoryProviderRegistry(container.uow_factory, container.cipher, build, clock, ttl=30)
    provider_id = ok(await client.post(f"{API}/providers", json=provider("main", api_key=KEY), headers=admin),
                     201)["id"]  # fmt: skip
    first = await registry.for_tenant(tenant)
    assert await registry.for_tenant(tenant) is first and len(built) == 1  # cached
    ok(await client.patch(f"{API}/providers/{provider_id}", json={"priority": 5}, headers=admin))
    clock.at += 29  # an edit made through another registry (process) shows once the entry expires
    assert (await registry.for_tenant(tenant)).providers[0].config.priority == 100
    clock.at += 2
    again = await registry.for_tenant(tenant)
    assert again.providers[0].config.priority == 5 and again.providers[0].provider is built[0]  # same adapter
    ok(await client.patch(f"{API}/providers/{provider_id}", json={"api_key": OTHER_KEY}, headers=admin))
    registry.invalidate(tenant)
    assert (await registry.for_tenant(tenant)).providers[0].provider is built[1]
    await registry.close()
    assert [p.closed for p in built] == [True, True]


# -- tools -------------------------------------------------------------------------------------------------
TOOL: dict[str, Any] = {
    "name": "wordcount",
    "description": "Count words",
    "dockerfile": "FROM python:3.12-slim\nCOPY tool.py /tool.py\nENTRYPOINT [\"python\", \"/tool.py\"]\n",
    "input_schema": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
    "output_schema": {"type": "object", "properties": {"words": {"type": "integer", "minimum": 0}}},
}


async def test_tools_are_registered_with_their_dockerfile_and_json_schemas(
    client: AsyncTestClient[Any], container: ApiContainer
) -> None:
    _, admin = await make_user(container, Role.ADMIN)
    created = ok(await client.post(f"{API}/tools", json=TOOL, headers=admin), 201)
    assert (created["id"], created["build_status"], created["version"]) == ("wordcount", "registered", 1)
    assert created["input_schema"] == TOOL["input_schema"] and created["dockerfile"] == TOOL["dockerfile"]
    problem(await client.post(f"{API}/tools", json=TOOL, headers=admin), 409)

    bad_schema = problem(await client.post(f"{API}/tools", json={**TOOL, "name": "t2", "output_schema": {
        "type": "object", "properties": {"words": {"type": "integr"}}}}, headers=admin), 422)  # fmt: skip
    assert bad_schema["errors"][0]["field"].startswith("output_schema")
    problem(await client.post(f"{API}/tools", json={**TOOL, "name": "t3", "input_schema": {"minimum": "zero"}},
                              headers=admin), 422)  # fmt: skip
    no_source = {k: v for k, v in TOOL.items() if k != "dockerfile"} | {"name": "t4"}
    assert problem(await client.post(f"{API}/tools", json=no_source, headers=admin), 422)["errors"][0]["field"] == \
        "dockerfile"  # fmt: skip
    problem(await client.post(f"{API}/tools", json={**TOOL, "name": "bad name"}, headers=admin), 422)

    patched = ok(await client.patch(f"{API}/tools/wordcount", json={"dockerfile": "FROM alpine:3.20\n"},
                                    headers=admin))  # fmt: skip
    assert (patched["version"], patched["build_status"], patched["dockerfile"]) == (2, "registered",
                                                                                     "FROM alpine:3.20\n")  # fmt: skip
    problem(await client.patch(f"{API}/tools/wordcount", json={"input_schema": {"type": 3}}, headers=admin), 422)
    assert [t["name"] for t in ok(await client.get(f"{API}/tools", headers=admin))["items"]] == ["wordcount"]
    assert (await client.delete(f"{API}/tools/wordcount", headers=admin)).status_code == 204
    problem(await client.get(f"{API}/tools/wordcount", headers=admin), 404)


# -- hostile inputs, on both backends ---------------------------------------------------------------------------
@pytest.fixture(params=["sqlite", "postgres"])
async def any_backend(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[ApiContainer]:
    database_url = None
    if request.param == "postgres":
        database_url = str(request.getfixturevalue("postgres_url"))
        assert (await migrate(database_url)).ok
    # no spare-schema pool: its refill task would run on the test client's loop and be closed from this one
    settings = Settings(data_dir=str(tmp_path), database_url=database_url, spare_schemas=0,
                        extra={"CREWFLOW_JWT_SECRET": "x" * 40})  # fmt: skip
    built = await build_api_container(settings, bcrypt_rounds=4)
    built.limiter = Unlimited()
    yield built
    await built.aclose()


async def register_admin(client: AsyncTestClient[Any]) -> dict[str, str]:
    """A new tenant's admin, through the API (the app runs on the client's event loop: on PostgreSQL the
    container's connections must not be used from the test's loop)."""
    email, password = f"{uuid.uuid4().hex[:8]}@example.com", "a long passphrase 1"
    ok(await client.post(f"{API}/auth/register", json={"tenant_name": "T", "slug": f"t-{uuid.uuid4().hex[:8]}",
                                                       "email": email, "password": password}), 201)  # fmt: skip
    token = ok(await client.post(f"{API}/auth/login", json={"email": email, "password": password}))["access_token"]
    return {"Authorization": f"Bearer {token}"}


async def test_hostile_inputs_get_4xx_problem_details_never_500(any_backend: ApiContainer) -> None:
    nul = "a\x00b"
    async with AsyncTestClient(create_app(any_backend)) as client:
        admin = await register_admin(client)
        ok(await client.post(f"{API}/agents", json=agent("writer"), headers=admin), 201)
        crew_task = {"agents": ["writer"], "tasks": [{"name": "t", "description": "d"}]}
        calls: list[tuple[str, str, Any]] = [
            ("POST", "/agents", agent("a1", goal=nul)),
            ("PATCH", "/agents/writer", {"backstory": nul}),
            ("POST", "/agents", agent("a2", provider="p\x07")),
            ("GET", "/agents/%00", None),
            ("GET", "/agents/%FF%FE", None),
            ("DELETE", f"/agents/{'a' * 300}", None),
            ("POST", "/crews", {**crew_task, "tasks": [{"name": nul, "description": "d"}]}),
            ("POST", "/crews", {**crew_task, "tasks": [{"name": "t", "description": nul}]}),
            ("POST", "/crews", {**crew_task, "agents": [nul]}),
            ("GET", "/crews/%00", None),
            ("POST", "/flows", flow_doc(name=nul)),
            ("POST", "/flows", flow_doc(description=nul)),
            ("POST", "/flows", {**flow_doc(), "agents": {"x": {"role": nul, "goal": "g"}}}),
            ("POST", "/flows", {**flow_doc(), "inputs": {nul: {"default": 1}}}),
            ("POST", "/flows/validate", {**flow_doc(), "inputs": {"topic": {"default": nul}}}),
            ("GET", "/flows/%00", None),
            ("GET", "/flows/%00/versions/1", None),
            ("POST", "/flows/%00/validate", None),
            ("PUT", "/flows/%00", {"expected_version": 1, "definition": flow_doc()}),
            ("PUT", "/flows/x", {"expected_version": 1, "definition": flow_doc(name=nul)}),
            ("POST", "/providers", provider("p", model=nul)),
            ("POST", "/providers", provider("p", base_url="http://a\x00b")),
            ("POST", "/providers", provider("p", api_key=nul)),
            ("POST", "/providers", provider("p", settings={"api_version": nul})),
            ("GET", "/providers/%00", None),
            ("PUT", "/providers/order", {"order": [nul]}),
            ("POST", "/tools", {**TOOL, "description": nul}),
            ("POST", "/tools", {**TOOL, "dockerfile": nul}),
            ("POST", "/tools", {**TOOL, "input_schema": {"description": nul}}),
            ("POST", "/tools", {**TOOL, "input_schema": {"properties": {nul: {}}}}),
            ("GET", "/tools/%00", None),
        ]
        for method, path, body in calls:
            response = await client.request(method, API + path, json=body, headers=admin)
            assert 400 <= response.status_code < 500, (method, path, response.status_code, response.text)
            assert response.headers["content-type"].startswith(PROBLEM)
        for depth in (100, 5000):  # beyond the edge's limit; beyond the JSON decoder's
            deep = "[" * depth + "]" * depth
            bodies = [("/flows", '{"name": "x", "inputs": {"t": {"default": %s}}, "nodes": []}'),
                      ("/flows/validate", '{"nodes": %s}'), ("/agents", '{"role": %s}'),
                      ("/tools", '{"name": "t", "input_schema": {"x": %s}, "output_schema": {}}')]
            for path, body in bodies:
                response = await client.post(API + path, content=(body % deep).encode(),
                                             headers={**admin, "content-type": "application/json"})  # fmt: skip
                assert response.status_code in (400, 422), (path, depth, response.text)
                assert response.headers["content-type"].startswith(PROBLEM)
        for route in ("agents", "crews", "flows", "providers", "tools"):
            for cursor in ("\x00", "%%%", "WyJhIiwiYiIsImMiXQ"):  # the last one decodes, to a list of 3 strings
                response = await client.get(f"{API}/{route}", params={"cursor": cursor}, headers=admin)
                assert response.status_code == 422, (route, cursor, response.text)


async def test_a_well_formed_cursor_carrying_a_nul_is_not_a_server_error(any_backend: ApiContainer) -> None:
    forged = base64.urlsafe_b64encode(json.dumps(["\x00"]).encode()).decode().rstrip("=")
    async with AsyncTestClient(create_app(any_backend)) as client:
        admin = await register_admin(client)
        for route in ("agents", "crews", "flows", "tools"):  # lists ordered by a text column
            response = await client.get(f"{API}/{route}", params={"cursor": forged}, headers=admin)
            assert response.status_code < 500, (route, response.text)


async def test_every_resource_round_trips_on_both_backends(any_backend: ApiContainer) -> None:
    async with AsyncTestClient(create_app(any_backend)) as client:
        admin = await register_admin(client)
        ok(await client.post(f"{API}/tools", json=TOOL, headers=admin), 201)
        ok(await client.post(f"{API}/agents", json=agent("writer", tools=["wordcount"]), headers=admin), 201)
        crew = {"id": "desk", "agents": ["writer"], "tasks": [{"name": "edit", "description": "Edit ✓"}]}
        assert ok(await client.post(f"{API}/crews", json=crew, headers=admin), 201)["tasks"][0]["description"] == \
            "Edit ✓"  # fmt: skip
        created = ok(await client.post(f"{API}/flows", json=flow_doc(id="note"), headers=admin), 201)
        edit = {"expected_version": 1, "definition": created["definition"]}
        v2 = ok(await client.put(f"{API}/flows/note", json=edit, headers=admin))
        assert v2["current_version"] == 2 and v2["definition"]["nodes"] == created["definition"]["nodes"]
        problem(await client.put(f"{API}/flows/note", json={"expected_version": 1, "definition": flow_doc()},
                                 headers=admin), 409)  # fmt: skip
        assert [v["version"] for v in ok(await client.get(f"{API}/flows/note/versions", headers=admin))["items"]] == \
            [2, 1]  # fmt: skip
        assert ok(await client.post(f"{API}/flows/note/validate", headers=admin))["valid"] is True
        first = ok(await client.post(f"{API}/providers", json=provider("a", api_key=KEY), headers=admin), 201)
        second = ok(await client.post(f"{API}/providers", json=provider("b"), headers=admin), 201)
        order = ok(await client.put(f"{API}/providers/order", json={"order": [second["id"], first["id"]]},
                                    headers=admin))  # fmt: skip
        assert [p["name"] for p in order] == ["b", "a"] and order[1]["api_key"] == "sk-…abcd"
        patched = ok(await client.patch(f"{API}/tools/wordcount", json={"description": "v2"}, headers=admin))
        assert patched["version"] == 2


async def test_resource_writes_are_audited_without_the_provider_key(
    client: AsyncTestClient[Any], container: ApiContainer
) -> None:
    _, admin = await make_user(container, Role.ADMIN)
    ok(await client.post(f"{API}/agents", json=agent("writer"), headers=admin), 201)
    ok(await client.patch(f"{API}/agents/writer", json={"goal": "better"}, headers=admin))
    crew = {"id": "desk", "agents": ["writer"], "tasks": [{"name": "edit", "description": "Edit"}]}
    ok(await client.post(f"{API}/crews", json=crew, headers=admin), 201)
    ok(await client.post(f"{API}/flows", json=flow_doc(id="note"), headers=admin), 201)
    ok(await client.put(f"{API}/flows/note", json={"expected_version": 1, "definition": flow_doc()}, headers=admin))
    provider_id = ok(await client.post(f"{API}/providers", json=provider("p", api_key=KEY), headers=admin), 201)["id"]
    ok(await client.patch(f"{API}/providers/{provider_id}", json={"api_key": OTHER_KEY}, headers=admin))
    ok(await client.put(f"{API}/providers/order", json={"order": [provider_id]}, headers=admin))
    ok(await client.post(f"{API}/tools", json=TOOL, headers=admin), 201)
    for path in ("/tools/wordcount", f"/providers/{provider_id}", "/flows/note", "/crews/desk", "/agents/writer"):
        assert (await client.delete(API + path, headers=admin)).status_code == 204
    problem(await client.delete(f"{API}/agents/writer", headers=admin), 404)  # a refused write is not logged

    response = await client.get(f"{API}/audit-logs", params={"limit": 100}, headers=admin)
    entries = ok(response)["items"]
    assert sorted((e["action"], e["object_id"]) for e in entries) == sorted([
        ("agent.create", "writer"), ("agent.update", "writer"), ("crew.create", "desk"), ("flow.create", "note"),
        ("flow.update", "note"), ("provider.create", provider_id), ("provider.update", provider_id),
        ("provider.reorder", None), ("tool.register", "wordcount"), ("tool.delete", "wordcount"),
        ("provider.delete", provider_id), ("flow.delete", "note"), ("crew.delete", "desk"), ("agent.delete", "writer"),
    ])  # fmt: skip
    assert next(e for e in entries if e["action"] == "flow.update")["details"] == {"version": 2}
    assert next(e for e in entries if e["action"] == "provider.update")["details"]["key_replaced"] is True
    assert KEY not in response.text and OTHER_KEY not in response.text
