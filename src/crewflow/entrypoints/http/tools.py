"""/api/v1/tools — a tenant's tools: registration (admins) with the JSON Schemas of the tool's input and
output and what it runs — a Dockerfile (with small context files) built into an image, a prebuilt image, or
a Python ``script``; image builds on the job queue (``build``/``rebuild``, 202) watched through ``status``
(build status, image, error, log tail); and ``test``, one run of the tool with an input document, for the
roles that may run flows. The tool's name is its id (flows and agents refer to it). The use cases are in
``crewflow.application.tools``."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, delete, get, patch, post
from litestar.params import JSONBody, QueryParameter
from litestar.status_codes import HTTP_202_ACCEPTED

from crewflow.application.tools import (
    MAX_SCRIPT_BYTES,
    MAX_WARM_POOL,
    REGISTERED,
    ToolDraft,
    ToolService,
    ToolTestResult,
)
from crewflow.domain.auth import Identity
from crewflow.domain.execution import ToolRecord
from crewflow.domain.tenancy import Permission
from crewflow.entrypoints.http.agents import ID_PATTERN, LongText
from crewflow.entrypoints.http.audit_routes import audit_request
from crewflow.entrypoints.http.inputs import NO_NUL, PathId, check_json, valid_cursor
from crewflow.entrypoints.http.limits import request_meta
from crewflow.entrypoints.http.pagination import MAX_LIMIT, PageOut, page_out
from crewflow.entrypoints.http.security import require

__all__ = [
    "REGISTERED",
    "ToolController",
    "ToolIn",
    "ToolOut",
    "ToolPatch",
    "ToolStatusOut",
    "ToolTestIn",
    "ToolTestOut",
    "tool_service",
]

ToolName = Annotated[str, msgspec.Meta(pattern=ID_PATTERN)]
Dockerfile = Annotated[str, msgspec.Meta(min_length=1, max_length=65_536, pattern=NO_NUL)]
Image = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9._/:@-]{0,499}$")]
Script = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_SCRIPT_BYTES, pattern=NO_NUL)]
FileName = Annotated[str, msgspec.Meta(min_length=1, max_length=300, pattern=NO_NUL)]
FileText = Annotated[str, msgspec.Meta(max_length=1_048_576, pattern=NO_NUL)]
Context = Annotated[dict[FileName, FileText], msgspec.Meta(max_length=64)]
Limits = dict[Annotated[str, msgspec.Meta(max_length=64)], Any]
WarmPool = Annotated[int, msgspec.Meta(ge=0, le=MAX_WARM_POOL)]
Schema = dict[str, Any]
ToolId = PathId
Cursor = Annotated[str | None, QueryParameter(max_length=1024)]
Limit = Annotated[int, QueryParameter(ge=1, le=MAX_LIMIT)]
LogLines = Annotated[int, QueryParameter(ge=0, le=2000)]


class ToolIn(msgspec.Struct, forbid_unknown_fields=True):
    name: ToolName
    input_schema: Schema
    output_schema: Schema
    dockerfile: Dockerfile | None = None
    docker_image: Image | None = None
    script: Script | None = None
    context: Context = {}
    limits: Limits = {}
    warm_pool: WarmPool = 0
    description: LongText = ""


class ToolPatch(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    input_schema: Schema | msgspec.UnsetType = msgspec.UNSET
    output_schema: Schema | msgspec.UnsetType = msgspec.UNSET
    dockerfile: Dockerfile | msgspec.UnsetType | None = msgspec.UNSET
    docker_image: Image | msgspec.UnsetType | None = msgspec.UNSET
    script: Script | msgspec.UnsetType | None = msgspec.UNSET
    context: Context | msgspec.UnsetType = msgspec.UNSET
    limits: Limits | msgspec.UnsetType = msgspec.UNSET
    warm_pool: WarmPool | msgspec.UnsetType = msgspec.UNSET
    description: LongText | msgspec.UnsetType = msgspec.UNSET
    is_active: bool | msgspec.UnsetType = msgspec.UNSET


class ToolOut(msgspec.Struct):
    id: str
    name: str
    description: str
    dockerfile: str | None
    docker_image: str | None
    script: str | None
    context: dict[str, str]
    input_schema: Schema
    output_schema: Schema
    limits: dict[str, Any]
    warm_pool: int
    build_status: str
    image_digest: str | None
    build_error: str | None
    built_at: float | None
    is_active: bool
    version: int
    created_at: float
    updated_at: float

    @classmethod
    def of(cls, t: ToolRecord) -> ToolOut:
        return cls(t.id, t.name, t.description, t.dockerfile, t.docker_image, t.script, dict(t.context),
                   dict(t.input_schema), dict(t.output_schema), dict(t.limits), t.warm_pool, t.build_status,
                   t.image_digest, t.build_error, t.built_at, t.is_active, t.version, t.created_at,
                   t.updated_at)  # fmt: skip


class ToolStatusOut(msgspec.Struct):
    """A tool's build state. ``log_tail`` holds the last lines of the current (or last) build's log; poll
    this while ``build_status`` is ``queued`` or ``building`` to watch the build."""

    id: str
    version: int
    build_status: str
    image: str | None
    build_error: str | None
    built_at: float | None
    log_tail: list[str]

    @classmethod
    def of(cls, t: ToolRecord, lines: int = 50) -> ToolStatusOut:
        tail = (t.build_log or "").splitlines()[-lines:] if lines else []
        return cls(t.id, t.version, t.build_status, t.image_digest or t.docker_image, t.build_error, t.built_at,
                   tail)  # fmt: skip


class ToolTestIn(msgspec.Struct, forbid_unknown_fields=True):
    input: Any


class ToolTestOut(msgspec.Struct):
    ok: bool
    output: Any
    error: str | None
    logs: list[str]
    duration: float

    @classmethod
    def of(cls, r: ToolTestResult) -> ToolTestOut:
        return cls(r.ok, r.output, r.error, list(r.logs), r.duration)


def tool_service(container: Any) -> ToolService:
    """The container's ``tool_service`` (wired by the composition root with the build queue, image builder
    and sandbox)."""
    service: ToolService = container.tool_service
    return service


def _changes(data: ToolPatch) -> dict[str, Any]:
    return {k: v for k, v in msgspec.structs.asdict(data).items() if v is not msgspec.UNSET}


class ToolController(Controller):
    path = "/tools"
    tags = ["tools"]

    @get("/", guards=[require(Permission.TOOLS_READ)])
    async def list_tools(self, request: Request[Identity, Any, Any], cursor: Cursor = None,
                         limit: Limit = 20) -> PageOut[ToolOut]:  # fmt: skip
        async with request.app.state.container.uow_factory.for_tenant(request.user.tenant_id) as uow:
            return page_out(await valid_cursor(uow.tools.list(cursor, limit)), ToolOut.of)

    @post("/", guards=[require(Permission.TOOLS_WRITE)])
    async def register_tool(self, request: Request[Identity, Any, Any], data: JSONBody[ToolIn]) -> ToolOut:
        check_json(data.input_schema, "input_schema")
        check_json(data.output_schema, "output_schema")
        check_json(data.limits, "limits")
        draft = ToolDraft(name=data.name, input_schema=data.input_schema, output_schema=data.output_schema,
                          description=data.description, dockerfile=data.dockerfile, docker_image=data.docker_image,
                          script=data.script, context=data.context, limits=data.limits,
                          warm_pool=data.warm_pool)  # fmt: skip
        tool = await tool_service(request.app.state.container).register(request.user.tenant_id, draft)
        await audit_request(request, "tool.register", object_type="tool", object_id=tool.id)
        return ToolOut.of(tool)

    @get("/{tool_id:str}", guards=[require(Permission.TOOLS_READ)])
    async def get_tool(self, request: Request[Identity, Any, Any], tool_id: ToolId) -> ToolOut:
        return ToolOut.of(await tool_service(request.app.state.container).get(request.user.tenant_id, tool_id))

    @patch("/{tool_id:str}", guards=[require(Permission.TOOLS_WRITE)])
    async def update_tool(self, request: Request[Identity, Any, Any], tool_id: ToolId,
                          data: JSONBody[ToolPatch]) -> ToolOut:  # fmt: skip
        """A new version of the tool; changing its Dockerfile or context files makes it ``registered`` (to be
        built) again."""
        changes = _changes(data)
        for field in ("input_schema", "output_schema", "limits"):
            if field in changes:
                check_json(changes[field], field)
        service = tool_service(request.app.state.container)
        updated = await service.update(request.user.tenant_id, tool_id, changes)
        await audit_request(request, "tool.update", object_type="tool", object_id=tool_id,
                            details={"fields": sorted(changes), "version": updated.version})  # fmt: skip
        return ToolOut.of(updated)

    @delete("/{tool_id:str}", guards=[require(Permission.TOOLS_WRITE)])
    async def delete_tool(self, request: Request[Identity, Any, Any], tool_id: ToolId) -> None:
        await tool_service(request.app.state.container).delete(request.user.tenant_id, tool_id)
        await audit_request(request, "tool.delete", object_type="tool", object_id=tool_id)

    @post("/{tool_id:str}/build", guards=[require(Permission.TOOLS_WRITE)], status_code=HTTP_202_ACCEPTED)
    async def build_tool(self, request: Request[Identity, Any, Any], tool_id: ToolId) -> ToolStatusOut:
        """Queue a build of the tool's current version (409 when it is built or being built, or when no image
        builder is available here). A tool without a Dockerfile needs no build and comes back ``ready``."""
        return await self._build(request, tool_id, rebuild=False)

    @post("/{tool_id:str}/rebuild", guards=[require(Permission.TOOLS_WRITE)], status_code=HTTP_202_ACCEPTED)
    async def rebuild_tool(self, request: Request[Identity, Any, Any], tool_id: ToolId) -> ToolStatusOut:
        """Build the tool's current version again, even if it is built (e.g. to pick up a new base image)."""
        return await self._build(request, tool_id, rebuild=True)

    async def _build(self, request: Request[Identity, Any, Any], tool_id: str, *, rebuild: bool) -> ToolStatusOut:
        service = tool_service(request.app.state.container)
        tool = await service.request_build(request.user.tenant_id, tool_id, rebuild=rebuild,
                                           request_id=request_meta(request).request_id)  # fmt: skip
        await audit_request(request, "tool.rebuild" if rebuild else "tool.build", object_type="tool",
                            object_id=tool_id, details={"version": tool.version, "status": tool.build_status})
        return ToolStatusOut.of(tool)

    @get("/{tool_id:str}/status", guards=[require(Permission.TOOLS_READ)])
    async def tool_status(self, request: Request[Identity, Any, Any], tool_id: ToolId,
                          lines: LogLines = 50) -> ToolStatusOut:  # fmt: skip
        """Build status, the image to run, the last build error and the last ``lines`` lines of the build log."""
        tool = await tool_service(request.app.state.container).get(request.user.tenant_id, tool_id)
        return ToolStatusOut.of(tool, lines)

    @post("/{tool_id:str}/test", guards=[require(Permission.FLOWS_EXECUTE)], status_code=200)
    async def test_tool(self, request: Request[Identity, Any, Any], tool_id: ToolId,
                        data: JSONBody[ToolTestIn]) -> ToolTestOut:  # fmt: skip
        """Run the tool once in the sandbox with its limits. The input must match the tool's input schema
        (422 naming the JSON path); 409 when the tool cannot run yet. The tool failing is a 200 with ``ok``
        false and the reason."""
        check_json(data.input, "input")
        result = await tool_service(request.app.state.container).test_run(request.user.tenant_id, tool_id, data.input)
        await audit_request(request, "tool.test", object_type="tool", object_id=tool_id,
                            details={"ok": result.ok, "duration": round(result.duration, 3)})  # fmt: skip
        return ToolTestOut.of(result)
