"""/api/v1/tools — tool registration (admins): a name, a Dockerfile (or an image), and the JSON Schemas of
the tool's input and output. Building and running tools comes with the sandbox; a registered tool's
``build_status`` is ``registered`` until then. The tool's name is its id (flows and agents refer to it)."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, delete, get, patch, post
from litestar.params import JSONBody, QueryParameter

from crewflow.domain.auth import Identity
from crewflow.domain.execution import ToolRecord
from crewflow.domain.tenancy import Permission
from crewflow.entrypoints.http.agents import ID_PATTERN, LongText
from crewflow.entrypoints.http.audit_routes import audit_request
from crewflow.entrypoints.http.inputs import NO_NUL, PathId, check_json, invalid, valid_cursor
from crewflow.entrypoints.http.pagination import MAX_LIMIT, PageOut, page_out
from crewflow.entrypoints.http.security import require

__all__ = ["REGISTERED", "ToolController", "ToolIn", "ToolOut", "ToolPatch"]

REGISTERED = "registered"
ToolName = Annotated[str, msgspec.Meta(pattern=ID_PATTERN)]
Dockerfile = Annotated[str, msgspec.Meta(min_length=1, max_length=65_536, pattern=NO_NUL)]
Image = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9._/:@-]{0,499}$")]
Schema = dict[str, Any]
ToolId = PathId
Cursor = Annotated[str | None, QueryParameter(max_length=1024)]
Limit = Annotated[int, QueryParameter(ge=1, le=MAX_LIMIT)]


class ToolIn(msgspec.Struct, forbid_unknown_fields=True):
    name: ToolName
    input_schema: Schema
    output_schema: Schema
    dockerfile: Dockerfile | None = None
    docker_image: Image | None = None
    description: LongText = ""


class ToolPatch(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    input_schema: Schema | msgspec.UnsetType = msgspec.UNSET
    output_schema: Schema | msgspec.UnsetType = msgspec.UNSET
    dockerfile: Dockerfile | msgspec.UnsetType | None = msgspec.UNSET
    docker_image: Image | msgspec.UnsetType | None = msgspec.UNSET
    description: LongText | msgspec.UnsetType = msgspec.UNSET
    is_active: bool | msgspec.UnsetType = msgspec.UNSET


class ToolOut(msgspec.Struct):
    id: str
    name: str
    description: str
    dockerfile: str | None
    docker_image: str | None
    input_schema: Schema
    output_schema: Schema
    build_status: str
    is_active: bool
    version: int
    created_at: float
    updated_at: float

    @classmethod
    def of(cls, t: ToolRecord) -> ToolOut:
        return cls(t.id, t.name, t.description, t.dockerfile, t.docker_image, dict(t.input_schema),
                   dict(t.output_schema), t.build_status, t.is_active, t.version, t.created_at,
                   t.updated_at)  # fmt: skip


def _check_schema(field: str, schema: dict[str, Any]) -> None:
    """422 unless ``schema`` is a valid JSON Schema (by the metaschema of its ``$schema``, default 2020-12)."""
    import jsonschema

    check_json(schema, field)
    if not isinstance(schema.get("$schema", ""), str):
        raise invalid(f"{field}/$schema", "must be a URI naming a JSON Schema dialect")
    try:
        jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator).check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "/".join(str(p) for p in exc.absolute_path)
        raise invalid(f"{field}/{where}" if where else field, f"not a valid JSON Schema: {exc.message}") from None
    except (jsonschema.exceptions.UnknownType, RecursionError):
        raise invalid(field, "not a valid JSON Schema") from None


def _check_source(dockerfile: str | None, image: str | None) -> None:
    if dockerfile is None and image is None:
        raise invalid("dockerfile", "give a Dockerfile or a docker_image")


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
        _check_schema("input_schema", data.input_schema)
        _check_schema("output_schema", data.output_schema)
        _check_source(data.dockerfile, data.docker_image)
        container = request.app.state.container
        now = container.clock.now()
        tool = ToolRecord(id=data.name, name=data.name, created_at=now, updated_at=now, description=data.description,
                          docker_image=data.docker_image, input_schema=data.input_schema,
                          output_schema=data.output_schema, dockerfile=data.dockerfile,
                          build_status=REGISTERED)  # fmt: skip
        async with container.uow_factory.for_tenant(request.user.tenant_id) as uow:
            await uow.tools.add(tool)
            await uow.commit()
        await audit_request(request, "tool.register", object_type="tool", object_id=tool.id)
        return ToolOut.of(tool)

    @get("/{tool_id:str}", guards=[require(Permission.TOOLS_READ)])
    async def get_tool(self, request: Request[Identity, Any, Any], tool_id: ToolId) -> ToolOut:
        async with request.app.state.container.uow_factory.for_tenant(request.user.tenant_id) as uow:
            return ToolOut.of(await uow.tools.get(tool_id))

    @patch("/{tool_id:str}", guards=[require(Permission.TOOLS_WRITE)])
    async def update_tool(self, request: Request[Identity, Any, Any], tool_id: ToolId,
                          data: JSONBody[ToolPatch]) -> ToolOut:  # fmt: skip
        """A new version of the tool; changing its Dockerfile or image makes it ``registered`` again."""
        changes = {k: v for k, v in msgspec.structs.asdict(data).items() if v is not msgspec.UNSET}
        for field in ("input_schema", "output_schema"):
            if field in changes:
                _check_schema(field, changes[field])
        container = request.app.state.container
        async with container.uow_factory.for_tenant(request.user.tenant_id) as uow:
            current = await uow.tools.get(tool_id)
            updated = dataclasses.replace(current, **changes, version=current.version + 1,
                                          updated_at=container.clock.now())  # fmt: skip
            _check_source(updated.dockerfile, updated.docker_image)
            source_changed = (updated.dockerfile, updated.docker_image) != (current.dockerfile, current.docker_image)
            if source_changed:
                updated = dataclasses.replace(updated, build_status=REGISTERED)
            await uow.tools.update(updated)
            await uow.commit()
        await audit_request(request, "tool.update", object_type="tool", object_id=tool_id,
                            details={"fields": sorted(changes), "version": updated.version})  # fmt: skip
        return ToolOut.of(updated)

    @delete("/{tool_id:str}", guards=[require(Permission.TOOLS_WRITE)])
    async def delete_tool(self, request: Request[Identity, Any, Any], tool_id: ToolId) -> None:
        async with request.app.state.container.uow_factory.for_tenant(request.user.tenant_id) as uow:
            await uow.tools.delete(tool_id)
            await uow.commit()
        await audit_request(request, "tool.delete", object_type="tool", object_id=tool_id)
