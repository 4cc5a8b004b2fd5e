"""/api/v1/crews — CrewAI crews over the tenant's saved agents (the agents' permissions apply)."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Literal

import msgspec
from litestar import Controller, Request, delete, get, patch, post
from litestar.params import JSONBody, QueryParameter

from crewflow.application.catalog import check_crew
from crewflow.domain.agents import Crew, CrewTask, Process
from crewflow.domain.auth import Identity
from crewflow.domain.tenancy import Permission
from crewflow.entrypoints.http.agents import ID_PATTERN, LongText, Name, Text
from crewflow.entrypoints.http.audit_routes import audit_request
from crewflow.entrypoints.http.inputs import PathId, invalid_problems, refused_as_invalid, valid_cursor
from crewflow.entrypoints.http.pagination import MAX_LIMIT, PageOut, page_out
from crewflow.entrypoints.http.security import require

__all__ = ["CrewController", "CrewIn", "CrewOut", "CrewPatch"]

Ident = Annotated[str, msgspec.Meta(pattern=ID_PATTERN)]
ProcessName = Literal["sequential", "hierarchical"]
CrewId = PathId
Cursor = Annotated[str | None, QueryParameter(max_length=1024)]
Limit = Annotated[int, QueryParameter(ge=1, le=MAX_LIMIT)]


class CrewTaskIn(msgspec.Struct, forbid_unknown_fields=True):
    name: Name
    description: Text
    expected_output: LongText = ""
    agent: Name | None = None
    context: Annotated[list[Name], msgspec.Meta(max_length=100)] = []


Members = Annotated[list[Name], msgspec.Meta(min_length=1, max_length=100)]
Tasks = Annotated[list[CrewTaskIn], msgspec.Meta(min_length=1, max_length=100)]


class CrewIn(msgspec.Struct, forbid_unknown_fields=True):
    agents: Members
    tasks: Tasks
    id: Ident | None = None
    process: ProcessName = "sequential"
    description: LongText = ""
    manager_provider: Name | None = None


class CrewPatch(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    agents: Members | msgspec.UnsetType = msgspec.UNSET
    tasks: Tasks | msgspec.UnsetType = msgspec.UNSET
    process: ProcessName | msgspec.UnsetType = msgspec.UNSET
    description: LongText | msgspec.UnsetType = msgspec.UNSET
    manager_provider: Name | msgspec.UnsetType | None = msgspec.UNSET


class CrewTaskOut(msgspec.Struct):
    name: str
    description: str
    expected_output: str
    agent: str | None
    context: list[str]


class CrewOut(msgspec.Struct):
    id: str
    agents: list[str]
    tasks: list[CrewTaskOut]
    process: str
    description: str
    manager_provider: str | None

    @classmethod
    def of(cls, crew: Crew) -> CrewOut:
        tasks = [CrewTaskOut(t.name, t.description, t.expected_output, t.agent, list(t.context)) for t in crew.tasks]
        return cls(crew.id, list(crew.agents), tasks, crew.process.value, crew.description, crew.manager_provider)


def _tasks(tasks: list[CrewTaskIn]) -> tuple[CrewTask, ...]:
    return tuple(CrewTask(t.name, t.description, t.expected_output, t.agent, tuple(t.context)) for t in tasks)


class CrewController(Controller):
    path = "/crews"
    tags = ["crews"]

    @get("/", guards=[require(Permission.AGENTS_READ)])
    async def list_crews(self, request: Request[Identity, Any, Any], cursor: Cursor = None,
                         limit: Limit = 20) -> PageOut[CrewOut]:  # fmt: skip
        async with request.app.state.container.uow_factory.for_tenant(request.user.tenant_id) as uow:
            return page_out(await valid_cursor(uow.crews.list(cursor, limit)), CrewOut.of)

    @post("/", guards=[require(Permission.AGENTS_WRITE)])
    async def create_crew(self, request: Request[Identity, Any, Any], data: JSONBody[CrewIn]) -> CrewOut:
        container = request.app.state.container
        crew_id = data.id or f"crew-{container.ids.new_id()[:8]}"
        with refused_as_invalid():
            crew = Crew(id=crew_id, agents=tuple(data.agents), tasks=_tasks(data.tasks),
                        process=Process(data.process), description=data.description,
                        manager_provider=data.manager_provider)  # fmt: skip
        async with container.uow_factory.for_tenant(request.user.tenant_id) as uow:
            problems = await check_crew(uow, crew)
            if problems:
                raise invalid_problems(problems)
            await uow.crews.add(crew, at=container.clock.now())
            await uow.commit()
        await audit_request(request, "crew.create", object_type="crew", object_id=crew.id)
        return CrewOut.of(crew)

    @get("/{crew_id:str}", guards=[require(Permission.AGENTS_READ)])
    async def get_crew(self, request: Request[Identity, Any, Any], crew_id: CrewId) -> CrewOut:
        async with request.app.state.container.uow_factory.for_tenant(request.user.tenant_id) as uow:
            return CrewOut.of(await uow.crews.get(crew_id))

    @patch("/{crew_id:str}", guards=[require(Permission.AGENTS_WRITE)])
    async def update_crew(self, request: Request[Identity, Any, Any], crew_id: CrewId,
                          data: JSONBody[CrewPatch]) -> CrewOut:  # fmt: skip
        container = request.app.state.container
        async with container.uow_factory.for_tenant(request.user.tenant_id) as uow:
            current = await uow.crews.get(crew_id)
            changes = {k: v for k, v in msgspec.structs.asdict(data).items() if v is not msgspec.UNSET}
            if "agents" in changes:
                changes["agents"] = tuple(changes["agents"])
            if "tasks" in changes:
                changes["tasks"] = _tasks(changes["tasks"])
            if "process" in changes:
                changes["process"] = Process(changes["process"])
            with refused_as_invalid():
                updated = dataclasses.replace(current, **changes)
            problems = await check_crew(uow, updated)
            if problems:
                raise invalid_problems(problems)
            await uow.crews.update(updated, at=container.clock.now())
            await uow.commit()
        await audit_request(request, "crew.update", object_type="crew", object_id=crew_id,
                            details={"fields": sorted(changes)})  # fmt: skip
        return CrewOut.of(updated)

    @delete("/{crew_id:str}", guards=[require(Permission.AGENTS_WRITE)])
    async def delete_crew(self, request: Request[Identity, Any, Any], crew_id: CrewId) -> None:
        async with request.app.state.container.uow_factory.for_tenant(request.user.tenant_id) as uow:
            await uow.crews.delete(crew_id)
            await uow.commit()
        await audit_request(request, "crew.delete", object_type="crew", object_id=crew_id)
