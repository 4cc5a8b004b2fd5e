"""/api/v1/agents — the pattern every resource controller follows: msgspec bodies, a guard per route, one
unit of work per request built for the caller's tenant (from the token, never from the path)."""

from __future__ import annotations

import dataclasses
import re
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, delete, get, patch, post
from litestar.params import JSONBody, QueryParameter

from crewflow.domain.agents import Agent
from crewflow.domain.auth import Identity
from crewflow.domain.tenancy import Permission
from crewflow.entrypoints.http.audit_routes import audit_request
from crewflow.entrypoints.http.inputs import NO_CONTROL_CHARS, NO_NUL, PathId, refused_as_invalid, valid_cursor
from crewflow.entrypoints.http.pagination import MAX_LIMIT, PageOut, page_out
from crewflow.entrypoints.http.security import require

__all__ = ["AgentController", "AgentIn", "AgentOut", "AgentPatch"]

ID_PATTERN = r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$"
Text = Annotated[str, msgspec.Meta(min_length=1, max_length=32_768, pattern=NO_NUL)]
LongText = Annotated[str, msgspec.Meta(max_length=32_768, pattern=NO_NUL)]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=NO_CONTROL_CHARS)]
AgentId = PathId


class AgentIn(msgspec.Struct, forbid_unknown_fields=True):
    role: Text
    goal: Text
    id: Annotated[str, msgspec.Meta(pattern=ID_PATTERN)] | None = None
    backstory: LongText = ""
    provider: Name | None = None
    model: Name | None = None
    tools: list[Name] = []
    allow_delegation: bool = False
    max_iter: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 20
    temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] | None = None
    cache: bool = True


class AgentPatch(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    role: Text | msgspec.UnsetType = msgspec.UNSET
    goal: Text | msgspec.UnsetType = msgspec.UNSET
    backstory: LongText | msgspec.UnsetType = msgspec.UNSET
    provider: Name | msgspec.UnsetType | None = msgspec.UNSET
    model: Name | msgspec.UnsetType | None = msgspec.UNSET
    tools: list[Name] | msgspec.UnsetType = msgspec.UNSET
    allow_delegation: bool | msgspec.UnsetType = msgspec.UNSET
    max_iter: Annotated[int, msgspec.Meta(ge=1, le=1000)] | msgspec.UnsetType = msgspec.UNSET
    temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] | msgspec.UnsetType | None = msgspec.UNSET
    cache: bool | msgspec.UnsetType = msgspec.UNSET


class AgentOut(msgspec.Struct):
    id: str
    role: str
    goal: str
    backstory: str
    provider: str | None
    model: str | None
    tools: list[str]
    allow_delegation: bool
    max_iter: int
    temperature: float | None
    cache: bool

    @classmethod
    def of(cls, agent: Agent) -> AgentOut:
        return cls(agent.id, agent.role, agent.goal, agent.backstory, agent.provider, agent.model, list(agent.tools),
                   agent.allow_delegation, agent.max_iter, agent.temperature, agent.cache)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "agent"


class AgentController(Controller):
    path = "/agents"
    tags = ["agents"]

    @get("/", guards=[require(Permission.AGENTS_READ)])
    async def list_agents(self, request: Request[Identity, Any, Any],
                          cursor: Annotated[str | None, QueryParameter(max_length=1024)] = None,
                          limit: Annotated[int, QueryParameter(ge=1, le=MAX_LIMIT)] = 20,
                          ) -> PageOut[AgentOut]:  # fmt: skip
        async with request.app.state.container.uow_factory.for_tenant(request.user.tenant_id) as uow:
            return page_out(await valid_cursor(uow.agents.list(cursor, limit)), AgentOut.of)

    @post("/", guards=[require(Permission.AGENTS_WRITE)])
    async def create_agent(self, request: Request[Identity, Any, Any], data: JSONBody[AgentIn]) -> AgentOut:
        container = request.app.state.container
        agent_id = data.id or f"{_slug(data.role)}-{container.ids.new_id()[:6]}"
        with refused_as_invalid():  # e.g. a role of blanks only
            agent = Agent(id=agent_id, role=data.role, goal=data.goal, backstory=data.backstory,
                          provider=data.provider, model=data.model, tools=tuple(data.tools),
                          allow_delegation=data.allow_delegation, max_iter=data.max_iter,
                          temperature=data.temperature, cache=data.cache)  # fmt: skip
        async with container.uow_factory.for_tenant(request.user.tenant_id) as uow:
            await uow.agents.add(agent, at=container.clock.now())
            await uow.commit()
        await audit_request(request, "agent.create", object_type="agent", object_id=agent.id)
        return AgentOut.of(agent)

    @get("/{agent_id:str}", guards=[require(Permission.AGENTS_READ)])
    async def get_agent(self, request: Request[Identity, Any, Any], agent_id: AgentId) -> AgentOut:
        async with request.app.state.container.uow_factory.for_tenant(request.user.tenant_id) as uow:
            return AgentOut.of(await uow.agents.get(agent_id))

    @patch("/{agent_id:str}", guards=[require(Permission.AGENTS_WRITE)])
    async def update_agent(self, request: Request[Identity, Any, Any], agent_id: AgentId,
                           data: JSONBody[AgentPatch]) -> AgentOut:  # fmt: skip
        container = request.app.state.container
        async with container.uow_factory.for_tenant(request.user.tenant_id) as uow:
            current = await uow.agents.get(agent_id)
            changes = {k: v for k, v in msgspec.structs.asdict(data).items() if v is not msgspec.UNSET}
            if "tools" in changes:
                changes["tools"] = tuple(changes["tools"])
            with refused_as_invalid():
                updated = dataclasses.replace(current, **changes)  # the domain re-validates in __post_init__
            await uow.agents.update(updated, at=container.clock.now())
            await uow.commit()
        await audit_request(request, "agent.update", object_type="agent", object_id=agent_id,
                            details={"fields": sorted(changes)})  # fmt: skip
        return AgentOut.of(updated)

    @delete("/{agent_id:str}", guards=[require(Permission.AGENTS_WRITE)])
    async def delete_agent(self, request: Request[Identity, Any, Any], agent_id: AgentId) -> None:
        async with request.app.state.container.uow_factory.for_tenant(request.user.tenant_id) as uow:
            await uow.agents.delete(agent_id)
            await uow.commit()
        await audit_request(request, "agent.delete", object_type="agent", object_id=agent_id)
