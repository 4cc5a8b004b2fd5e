"""Broken object- and function-level authorization, as a matrix over the app's own route table.

BOLA: every route that names an object (a path parameter) is called by another tenant's admin with the
owner's ids: each answers the same 404 as for an id that does not exist, and the owner's data is unchanged.
BFLA: viewers cannot call any write route, members cannot touch providers, tools (but may test-run one, as
they may run flows), users or the audit log.
Both matrices are checked against the app's routes, so a new route without a row fails here."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from litestar import Litestar
from litestar.routes import HTTPRoute
from litestar.testing import AsyncTestClient

from crewflow.bootstrap import ApiContainer, build_api_container
from crewflow.domain.tenancy import Role, Tenant, User
from crewflow.entrypoints.http import create_app
from crewflow.ports.auth import RateDecision
from crewflow.settings import Settings

pytestmark = pytest.mark.integration

API = "/api/v1"
SECRET_GOAL = "tenant A's secret goal"
KEY = "sk-proj-Zq8vN3xR7tLmK2pW9sYd4abcd"
TERMINAL = {"completed", "failed", "cancelled"}
NOT_OBJECT_ROUTES = re.compile(r"^/api/v1/schema|^/assets/|^/api-docs/")  # OpenAPI + renderers, the canvas files


class Unlimited:
    """A ``RateLimiter`` that allows everything: the matrix sends more than 100 requests a minute."""

    async def hit(self, key: str, limit: int, window: float) -> RateDecision:
        return RateDecision(allowed=True, remaining=limit)


@dataclass(frozen=True, slots=True)
class World:
    tenant_a: str
    admin_a: dict[str, str]
    member_a: dict[str, str]
    viewer_a: dict[str, str]
    admin_b: dict[str, str]
    member_a_id: str
    flow_id: str
    provider_id: str
    execution_id: str
    chat_id: str | None  # None while the app has no chat routes


@dataclass(frozen=True, slots=True)
class Call:
    method: str
    template: str  # under /api/v1, with "{}" for each path parameter
    args: tuple[str, ...] = ()
    body: Any = None

    @property
    def path(self) -> str:
        return API + self.template.format(*self.args)

    @property
    def key(self) -> tuple[str, str]:
        return self.method, API + self.template


async def make_user(container: ApiContainer, role: Role,
                    tenant_id: str | None = None) -> tuple[str, str, dict[str, str]]:  # fmt: skip
    """A tenant (new unless given) and a user of it; returns (tenant id, user id, auth headers)."""
    if tenant_id is None:
        tenant_id = uuid.uuid4().hex[:12]
        await container.provisioner.register(Tenant(tenant_id, f"t-{tenant_id}", "T", f"tenant_{tenant_id}",
                                                    datetime.now(UTC)))  # fmt: skip
    user = User(uuid.uuid4().hex, tenant_id, f"{uuid.uuid4().hex[:8]}@example.com", role,
                container.hasher.hash("pw-123456789"))  # fmt: skip
    async with container.uow_factory.platform() as uow:
        await uow.users.add(user)
        await uow.commit()
    headers = {"Authorization": f"Bearer {container.tokens.issue(user.id, tenant_id, role).token}"}
    return tenant_id, user.id, headers


async def send(client: AsyncTestClient[Any], call: Call, headers: dict[str, str]) -> Any:
    if call.body is None:
        return await client.request(call.method, call.path, headers=headers)
    return await client.request(call.method, call.path, json=call.body, headers=headers)


def expect(response: Any, status: int) -> Any:
    assert response.status_code == status, response.text
    return response.json() if response.content else None


FLOW: dict[str, Any] = {
    "name": "Note",
    "inputs": {"topic": {"default": "tides"}},
    "nodes": [
        {"id": "in", "kind": "input"},
        {"id": "write", "kind": "agent", "agent": "writer", "task": "Write about {{ inputs.topic }}"},
        {"id": "out", "kind": "output"},
    ],
    "edges": ["in -> write", "write -> out"],
}
CREW = {"id": "desk", "agents": ["writer"], "tasks": [{"name": "edit", "description": "Edit"}]}
TOOL = {"name": "wordcount", "dockerfile": "FROM alpine:3.20\n", "input_schema": {"type": "object"},
        "output_schema": {"type": "object"}}  # fmt: skip


@pytest.fixture
async def container(tmp_path: Path) -> AsyncIterator[ApiContainer]:
    settings = Settings(data_dir=str(tmp_path), extra={"CREWFLOW_JWT_SECRET": "x" * 40})
    built = await build_api_container(settings, bcrypt_rounds=4)
    built.limiter = Unlimited()
    yield built
    await built.aclose()


@pytest.fixture
def app(container: ApiContainer) -> Litestar:
    return create_app(container)


@pytest.fixture
async def client(app: Litestar) -> AsyncIterator[AsyncTestClient[Any]]:
    async with AsyncTestClient(app) as test_client:
        yield test_client


@pytest.fixture
async def world(app: Litestar, container: ApiContainer, client: AsyncTestClient[Any]) -> World:
    """Tenant A with one of everything (an agent, a crew, a tool, a provider with a key, a flow at version 2,
    a finished execution) and users of each role; tenant B with an admin."""
    tenant_a, _, admin_a = await make_user(container, Role.ADMIN)
    _, member_id, member_a = await make_user(container, Role.MEMBER, tenant_a)
    _, _, viewer_a = await make_user(container, Role.VIEWER, tenant_a)
    _, _, admin_b = await make_user(container, Role.ADMIN)
    expect(await client.post(f"{API}/agents", json={"id": "writer", "role": "Writer", "goal": SECRET_GOAL,
                                                    "provider": "scripted"}, headers=admin_a), 201)  # fmt: skip
    expect(await client.post(f"{API}/crews", json=CREW, headers=admin_a), 201)
    expect(await client.post(f"{API}/tools", json=TOOL, headers=admin_a), 201)
    provider = expect(await client.post(f"{API}/providers", json={"name": "main", "kind": "scripted", "model": "m",
                                                                  "api_key": KEY}, headers=admin_a), 201)  # fmt: skip
    flow_id = expect(await client.post(f"{API}/flows", json=FLOW, headers=admin_a), 201)["id"]
    expect(await client.put(f"{API}/flows/{flow_id}", json={"expected_version": 1, "definition": FLOW},
                            headers=admin_a), 200)  # fmt: skip
    execution_id = expect(await client.post(f"{API}/flows/{flow_id}/execute", json={}, headers=admin_a),
                          202)["execution_id"]  # fmt: skip
    for _ in range(1000):  # the run is offline (scripted) and short; wait for it to settle
        status = expect(await client.get(f"{API}/executions/{execution_id}", headers=admin_a), 200)["status"]
        if status in TERMINAL:
            break
        await asyncio.sleep(0.01)
    assert status in TERMINAL
    chat_id = None
    if ("POST", f"{API}/chats") in route_keys(app, {"POST"}):
        chat_id = expect(await client.post(f"{API}/chats", json={"agent": "writer"}, headers=admin_a), 201)["id"]
    return World(tenant_a, admin_a, member_a, viewer_a, admin_b, member_id, flow_id, provider["id"], execution_id,
                 chat_id)  # fmt: skip


def object_calls(w: World) -> list[Call]:
    """Every route naming an object of tenant A, with a valid body where it takes one."""
    f, p, e, u, c = w.flow_id, w.provider_id, w.execution_id, w.member_a_id, w.chat_id or "no-chat-routes"
    return [
        Call("GET", "/agents/{}", ("writer",)),
        Call("PATCH", "/agents/{}", ("writer",), {"goal": "stolen"}),
        Call("DELETE", "/agents/{}", ("writer",)),
        Call("GET", "/crews/{}", ("desk",)),
        Call("PATCH", "/crews/{}", ("desk",), {"description": "stolen"}),
        Call("DELETE", "/crews/{}", ("desk",)),
        Call("GET", "/flows/{}", (f,)),
        Call("PUT", "/flows/{}", (f,), {"expected_version": 2, "definition": {**FLOW, "name": "stolen"}}),
        Call("DELETE", "/flows/{}", (f,)),
        Call("GET", "/flows/{}/versions", (f,)),
        Call("GET", "/flows/{}/versions/{}", (f, "1")),
        Call("POST", "/flows/{}/validate", (f,)),
        Call("POST", "/flows/{}/execute", (f,), {}),
        Call("GET", "/flows/{}/executions", (f,)),
        Call("GET", "/providers/{}", (p,)),
        Call("PATCH", "/providers/{}", (p,), {"api_key": "sk-attacker-000000000000", "base_url": "http://evil.invalid"}),
        Call("DELETE", "/providers/{}", (p,)),
        Call("PUT", "/providers/order", (), {"order": [p]}),
        Call("GET", "/tools/{}", ("wordcount",)),
        Call("PATCH", "/tools/{}", ("wordcount",), {"dockerfile": "FROM evil\n"}),
        Call("DELETE", "/tools/{}", ("wordcount",)),
        Call("POST", "/tools/{}/build", ("wordcount",)),
        Call("POST", "/tools/{}/rebuild", ("wordcount",)),
        Call("GET", "/tools/{}/status", ("wordcount",)),
        Call("POST", "/tools/{}/test", ("wordcount",), {"input": {}}),
        Call("GET", "/executions/{}", (e,)),
        Call("POST", "/executions/{}/cancel", (e,)),
        Call("GET", "/executions/{}/logs", (e,)),
        Call("PATCH", "/users/{}", (u,), {"role": "admin"}),
        Call("DELETE", "/users/{}", (u,)),
        Call("GET", "/chats/{}", (c,)),
        Call("GET", "/chats/{}/messages", (c,)),
        Call("POST", "/chats/{}/messages", (c,), {"content": "hello"}),
        Call("DELETE", "/auth/sessions/{}", ("0123456789abcdef0123456789abcdef",)),
        Call("PUT", "/flows/{}/webhook", (f,), {"url": "https://hooks.example.com/crewflow"}),
        Call("GET", "/flows/{}/webhook", (f,)),
        Call("DELETE", "/flows/{}/webhook", (f,)),
        Call("GET", "/flows/{}/webhook/deliveries", (f,)),
    ]


def missing(call: Call) -> Call:
    """The same call naming objects that exist nowhere."""
    if call.template == "/providers/order":
        return Call(call.method, call.template, (), {"order": ["no-such-provider"]})
    args = tuple("1" if a.isdigit() else f"missing-{a[:8]}" for a in call.args)
    return Call(call.method, call.template, args, call.body)


def route_keys(app: Litestar, methods: Iterable[str]) -> set[tuple[str, str]]:
    keys: set[tuple[str, str]] = set()
    for route in app.routes:
        if isinstance(route, HTTPRoute) and not NOT_OBJECT_ROUTES.match(route.path):
            template = re.sub(r"\{[^}]+\}", "{}", route.path)
            keys |= {(m, template) for m in route.methods if m in methods}
    return keys


async def snapshot(client: AsyncTestClient[Any], container: ApiContainer, w: World) -> list[Any]:
    """Everything tenant A has, as its admin sees it."""
    reads = ["/agents", "/agents/writer", "/crews", "/crews/desk", "/tools", "/tools/wordcount", "/providers",
             f"/providers/{w.provider_id}", "/flows", f"/flows/{w.flow_id}", f"/flows/{w.flow_id}/versions",
             f"/flows/{w.flow_id}/executions", f"/executions/{w.execution_id}", f"/executions/{w.execution_id}/logs",
             "/users", "/audit-logs"]  # fmt: skip
    if w.chat_id is not None:
        reads += [f"/chats/{w.chat_id}", f"/chats/{w.chat_id}/messages"]
    state = [expect(await client.get(API + path, headers=w.admin_a), 200) for path in reads]
    registry = await container.provider_registry.for_tenant(w.tenant_a)
    state.append([(e.name, e.config.base_url, e.config.api_key == KEY) for e in registry.providers])
    return state


# -- BOLA ----------------------------------------------------------------------------------------------------
async def test_every_object_route_answers_another_tenant_404_like_a_missing_object_and_changes_nothing(
    app: Litestar, client: AsyncTestClient[Any], container: ApiContainer, world: World
) -> None:
    routes = route_keys(app, {"GET", "POST", "PUT", "PATCH", "DELETE"})
    calls = [c for c in object_calls(world) if c.key in routes]  # rows of routes this app has
    object_routes = {k for k in routes if "{}" in k[1]}
    uncovered = object_routes - {c.key for c in calls}
    assert len(object_routes) > 20 and not uncovered, f"routes without a BOLA row: {uncovered}"
    before = await snapshot(client, container, world)
    for call in calls:
        theirs = await send(client, call, world.admin_b)
        nowhere = await send(client, missing(call), world.admin_b)
        assert theirs.status_code == nowhere.status_code == 404, (call, theirs.text, nowhere.text)
        assert theirs.headers["content-type"].startswith("application/problem+json")
        body = theirs.json()
        assert {k: v for k, v in body.items() if k != "detail"} == {k: v for k, v in nowhere.json().items()
                                                                    if k != "detail"}  # fmt: skip
        assert SECRET_GOAL not in theirs.text and KEY not in theirs.text
    assert await snapshot(client, container, world) == before


async def test_lists_never_show_another_tenants_objects(client: AsyncTestClient[Any], world: World) -> None:
    for route in ("/agents", "/crews", "/flows", "/providers", "/tools"):  # (chats have no list route)
        assert expect(await client.get(API + route, headers=world.admin_b), 200)["items"] == [], route
    users = expect(await client.get(f"{API}/users", headers=world.admin_b), 200)["items"]
    assert world.member_a_id not in {u["id"] for u in users}


# -- BFLA ----------------------------------------------------------------------------------------------------
def write_calls(w: World) -> list[Call]:
    """Every write route, with a body that would succeed for an admin."""
    creates = [
        Call("POST", "/agents", (), {"id": "new-agent", "role": "R", "goal": "G"}),
        Call("POST", "/crews", (), {**CREW, "id": "new-crew"}),
        Call("POST", "/flows", (), {**FLOW, "id": "new-flow"}),
        Call("POST", "/flows/validate", (), FLOW),
        Call("POST", "/providers", (), {"name": "new", "kind": "scripted", "model": "m"}),
        Call("POST", "/tools", (), {**TOOL, "name": "newtool"}),
        Call("POST", "/users", (), {"email": "new@example.com", "role": "viewer", "password": "a long passphrase 1"}),
        Call("POST", "/chats", (), {"agent": "writer"}),
    ]
    return creates + [c for c in object_calls(w) if c.method != "GET" and c.template != "/flows/{}/validate"
                      and not c.template.startswith("/auth/")]  # one's own sessions: every role  # fmt: skip


async def test_a_viewer_cannot_write_anything(
    app: Litestar, client: AsyncTestClient[Any], container: ApiContainer, world: World
) -> None:
    present = route_keys(app, {"POST", "PUT", "PATCH", "DELETE"})
    calls = [c for c in write_calls(world) if c.key in present]
    writes = {(method, path) for method, path in present
              if not path.startswith(f"{API}/auth/")  # one's own session and password: every role
              and path != f"{API}/flows/{{}}/validate"}  # reads a stored flow: viewers may  # fmt: skip
    uncovered = writes - {c.key for c in calls}
    assert len(writes) > 20 and not uncovered, f"write routes without a BFLA row: {uncovered}"
    before = await snapshot(client, container, world)
    for call in calls:
        response = await send(client, call, world.viewer_a)
        assert response.status_code == 403, (call, response.text)
        assert response.json()["title"] == "Forbidden"
    assert await snapshot(client, container, world) == before


async def test_a_member_cannot_manage_providers_tools_or_users(
    client: AsyncTestClient[Any], container: ApiContainer, world: World
) -> None:
    admin_only = [c for c in write_calls(world) + object_calls(world)
                  if c.template.split("/")[1] in ("providers", "tools", "users")
                  and c.template != "/tools/{}/test"]  # fmt: skip
    admin_only += [Call("GET", "/providers"), Call("GET", "/tools"), Call("GET", "/users"), Call("GET", "/audit-logs")]
    before = await snapshot(client, container, world)
    for call in admin_only:
        response = await send(client, call, world.member_a)
        assert response.status_code == 403, (call, response.text)
    assert await snapshot(client, container, world) == before
    # what the seed's matrix does allow a member: agents and flows
    expect(await client.patch(f"{API}/agents/writer", json={"backstory": "b"}, headers=world.member_a), 200)
    expect(await client.post(f"{API}/crews", json={**CREW, "id": "member-crew"}, headers=world.member_a), 201)
    expect(await client.post(f"{API}/flows", json={**FLOW, "id": "member-flow"}, headers=world.member_a), 201)
    # a member may try a tool (flows:execute); this one is not built yet, so it cannot run
    unbuilt = await client.post(f"{API}/tools/wordcount/test", json={"input": {}}, headers=world.member_a)
    assert unbuilt.status_code == 409, unbuilt.text
