"""Flow use cases over a tenant's catalog: validate a flow document, store it as immutable versions, and
resolve a stored version into a runnable ``Flow``.

A flow document (see ``crewflow.domain.codec`` and docs/flow-format.md) may embed its agents, crews and
tools, or refer to the tenant's saved ones by id; providers are referred to by name. Validation checks every
reference against both. ``resolve_flow`` embeds the saved ones a version uses, so the engine runs a
self-contained flow.

Every function takes an open tenant ``UnitOfWork``; the ones that write leave the commit to the caller.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from crewflow.domain.agents import Crew, ToolLimits, ToolRef
from crewflow.domain.codec import flow_from_dict, flow_to_dict
from crewflow.domain.errors import FlowInvalid, NotFound, Problem
from crewflow.domain.execution import FlowRecord, ToolRecord
from crewflow.domain.flow import Flow, FlowLimits, NodeKind
from crewflow.domain.logs import Page
from crewflow.domain.validation import BUILTIN_PROVIDERS, NODE_ID, Catalog, validate_flow
from crewflow.ports.uow import UnitOfWork

__all__ = [
    "MAX_FLOW_NAME",
    "RESERVED_FLOW_IDS",
    "FlowCheck",
    "check_crew",
    "check_flow",
    "create_flow",
    "load_catalog",
    "resolve_flow",
    "tool_limits",
    "tool_ref",
    "update_flow",
    "validate_stored_flow",
]

MAX_FLOW_NAME = 200
RESERVED_FLOW_IDS = frozenset({"validate"})  # /flows/validate is an action, not a flow
_PAGE = 100
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class FlowCheck:
    """A parsed document (``None`` when its shape is wrong) and every problem found in it."""

    flow: Flow | None
    problems: tuple[Problem, ...]

    @property
    def valid(self) -> bool:
        return self.flow is not None and not self.problems


async def _all(fetch: Callable[[str | None, int], Awaitable[Page[T]]]) -> AsyncIterator[T]:
    cursor: str | None = None
    while True:
        page = await fetch(cursor, _PAGE)
        for item in page.items:
            yield item
        if page.next_cursor is None:
            return
        cursor = page.next_cursor


async def load_catalog(uow: UnitOfWork) -> Catalog:
    """The ids of the tenant's saved agents, crews and (active) tools, and the names of its active providers."""
    agents = [a.id async for a in _all(uow.agents.list)]
    crews = [c.id async for c in _all(uow.crews.list)]
    tools = [t.id async for t in _all(uow.tools.list) if t.is_active]
    providers = [p.name async for p in _all(uow.providers.list) if p.is_active]
    return Catalog(agents=frozenset(agents), crews=frozenset(crews), tools=frozenset(tools),
                   providers=frozenset(providers))  # fmt: skip


def _identity_problems(flow: Flow) -> list[Problem]:
    problems: list[Problem] = []
    if not NODE_ID.fullmatch(flow.id) or flow.id in RESERVED_FLOW_IDS:
        problems.append(Problem("bad_id", "flow ids start with a letter or '_' and use letters, digits, '_' or "
                                "'-' (at most 64); 'validate' is reserved", "id"))  # fmt: skip
    if len(flow.name) > MAX_FLOW_NAME:
        problems.append(Problem("name_too_long", f"the name is {len(flow.name)} characters; the limit is "
                                f"{MAX_FLOW_NAME}", "name"))  # fmt: skip
    # What a tool runs comes from the tenant's registered tools (admins, tools:write), never from a flow
    # document, which any member may write (flows:write); flow files run locally may define it.
    for tool in flow.tools.values():
        if tool.image is not None or tool.script is not None:
            problems.append(Problem("inline_tool_code", "a flow stored on the server cannot give a tool's image or "
                                    "script; register the tool (POST /api/v1/tools) and refer to it by id",
                                    f"tools.{tool.id}"))  # fmt: skip
    return problems


async def check_flow(uow: UnitOfWork, document: Any, *, limits: FlowLimits | None = None,
                     flow_id: str | None = None, catalog: Catalog | None = None) -> FlowCheck:  # fmt: skip
    """Parse ``document`` and validate it against the tenant's catalog; never raises for a bad document."""
    try:
        flow = flow_from_dict(document, flow_id=flow_id)
    except FlowInvalid as exc:  # FlowFormatError: the shape is wrong, the graph cannot be checked yet
        return FlowCheck(None, exc.problems)
    catalog = catalog if catalog is not None else await load_catalog(uow)
    problems = _identity_problems(flow) + validate_flow(flow, limits, catalog)
    return FlowCheck(flow, tuple(problems))


async def check_crew(uow: UnitOfWork, crew: Crew) -> list[Problem]:
    """What is wrong with a crew about to be saved: members that are not saved agents, tasks assigned to
    someone outside the crew, context from a task that is not an earlier one, an unknown manager provider."""
    problems: list[Problem] = []
    for index, member in enumerate(crew.agents):
        if await _find(uow.agents.get, member) is None:
            problems.append(Problem("unknown_agent", f"'{member}' is not a saved agent", f"agents[{index}]"))
    if len(set(crew.agents)) != len(crew.agents):
        problems.append(Problem("duplicate_agent", "an agent is listed more than once", "agents"))
    earlier: set[str] = set()
    for index, task in enumerate(crew.tasks):
        where = f"tasks[{index}]"
        if task.name in earlier:
            problems.append(Problem("duplicate_task", f"task name '{task.name}' is used twice", f"{where}.name"))
        if task.agent is not None and task.agent not in crew.agents:
            problems.append(Problem("unknown_agent", f"'{task.agent}' is not in the crew", f"{where}.agent"))
        for ctx in task.context:
            if ctx not in earlier:
                problems.append(Problem("bad_context", f"'{ctx}' is not an earlier task", f"{where}.context"))
        earlier.add(task.name)
    manager = crew.manager_provider
    if manager is not None and manager not in BUILTIN_PROVIDERS:
        provider = await _find(uow.providers.get_by_name, manager)
        if provider is None or not provider.is_active:
            problems.append(Problem("unknown_provider", f"'{manager}' is not a provider", "manager_provider"))
    return problems


def _valid(check: FlowCheck) -> Flow:
    if check.flow is None or check.problems:
        raise FlowInvalid(check.problems)
    return check.flow


async def create_flow(uow: UnitOfWork, document: Any, *, at: float, new_id: Callable[[str], str],
                      limits: FlowLimits | None = None, created_by: str | None = None) -> FlowRecord:  # fmt: skip
    """Store a new flow at version 1. Its id is the document's ``id``, else ``new_id(slug of its name)``.
    Raises ``FlowInvalid`` listing every problem, ``Conflict`` when the id is taken."""
    flow_id = None
    if isinstance(document, Mapping) and not document.get("id"):
        name = document.get("name")
        flow_id = new_id(_slug(name) if isinstance(name, str) else "flow")
    flow = _valid(await check_flow(uow, document, limits=limits, flow_id=flow_id))
    record = FlowRecord(id=flow.id, name=flow.name, created_at=at, updated_at=at, description=flow.description)
    await uow.flows.add(record, _definition(flow, 1), created_by=created_by)
    return record


async def update_flow(uow: UnitOfWork, flow_id: str, document: Any, *, expected_version: int, at: float,
                      limits: FlowLimits | None = None, created_by: str | None = None) -> FlowRecord:  # fmt: skip
    """Add version ``expected_version + 1``. Raises ``NotFound`` (missing or another tenant's flow) before
    anything else, then ``FlowInvalid``, then ``Conflict`` when someone saved a version meanwhile."""
    await uow.flows.get(flow_id)
    flow = _valid(await check_flow(uow, document, limits=limits, flow_id=flow_id))
    return await uow.flows.add_version(flow_id, _definition(flow, expected_version + 1),
                                       expected_version=expected_version, at=at, name=flow.name,
                                       description=flow.description, created_by=created_by)  # fmt: skip


async def validate_stored_flow(uow: UnitOfWork, flow_id: str, version: int | None = None, *,
                               limits: FlowLimits | None = None) -> FlowCheck:  # fmt: skip
    """A stored version (the current one by default) checked against the tenant's catalog as it is now."""
    stored = await uow.flows.get_version(flow_id, version)
    return await check_flow(uow, stored.definition, limits=limits, flow_id=flow_id)


async def resolve_flow(uow: UnitOfWork, flow_id: str, version: int | None = None, *,
                       limits: FlowLimits | None = None) -> Flow:  # fmt: skip
    """The stored version (current by default) as a self-contained ``Flow``: the tenant's saved agents,
    crews and tools it uses are embedded (the document's own definitions win), ``version`` is the stored
    version number. Raises ``NotFound`` for a missing flow or version, ``FlowInvalid`` when the flow no
    longer validates (e.g. an agent or provider it uses was deleted since it was saved)."""
    stored = await uow.flows.get_version(flow_id, version)
    flow = flow_from_dict(stored.definition, flow_id=flow_id)
    crews = dict(flow.crews)
    for crew_id in {n.crew for n in flow.nodes if n.kind == NodeKind.CREW and n.crew} - set(crews):
        if (crew := await _find(uow.crews.get, crew_id)) is not None:
            crews[crew_id] = crew
    agents = dict(flow.agents)
    wanted = {n.agent for n in flow.nodes if n.kind == NodeKind.AGENT and n.agent}
    wanted |= {member for crew in crews.values() for member in crew.agents}
    for agent_id in wanted - set(agents):
        if (agent := await _find(uow.agents.get, agent_id)) is not None:
            agents[agent_id] = agent
    tools = dict(flow.tools)
    wanted = {n.tool for n in flow.nodes if n.kind == NodeKind.TOOL and n.tool}
    wanted |= {tool for agent in agents.values() for tool in agent.tools}
    for tool_id in wanted - set(tools):
        if (record := await _find(uow.tools.get, tool_id)) is not None and record.is_active:
            tools[tool_id] = tool_ref(record)
    resolved = dataclasses.replace(flow, version=stored.version, agents=agents, crews=crews, tools=tools)
    providers = frozenset([p.name async for p in _all(uow.providers.list) if p.is_active])
    problems = validate_flow(resolved, limits, Catalog(providers=providers))
    if problems:
        raise FlowInvalid(problems)
    return resolved


def tool_limits(overrides: Mapping[str, Any]) -> ToolLimits:
    """The sandbox's default limits with a tool's overrides. Raises ``ValueError`` for a value out of range;
    keys that are not limits are ignored (they are refused when a tool is saved)."""
    known = {f.name for f in dataclasses.fields(ToolLimits)}
    return ToolLimits(**{k: v for k, v in overrides.items() if k in known})


def tool_ref(record: ToolRecord) -> ToolRef:
    """What the sandbox runs for a saved tool: the image of its last successful build (else the prebuilt
    ``docker_image``), its script, limits and warm-pool size."""
    return ToolRef(id=record.id, description=record.description, input_schema=dict(record.input_schema),
                   output_schema=dict(record.output_schema), image=record.image_digest or record.docker_image,
                   script=record.script, limits=tool_limits(record.limits), warm_pool=record.warm_pool,
                   version=record.version)  # fmt: skip


async def _find(get: Callable[[str], Awaitable[T]], ident: str) -> T | None:
    try:
        return await get(ident)
    except NotFound:
        return None


def _definition(flow: Flow, version: int) -> dict[str, Any]:
    return flow_to_dict(dataclasses.replace(flow, version=version))


def _slug(text: str) -> str:
    slug = "-".join("".join(c if c.isalnum() and c.isascii() else " " for c in text.lower()).split())[:40]
    return slug if slug[:1].isalpha() else f"flow-{slug}".rstrip("-")
