"""/api/v1/flows — flow documents (docs/flow-format.md) stored as immutable versions, and validation.

An edit (``PUT``) adds a version and must name the version it was based on (``expected_version``): a
stale one is 409. ``POST /flows/validate`` checks an unsaved document, ``POST /flows/{id}/validate`` a
stored version, both against the tenant's catalog as it is now; they answer the problem list (200)."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
import structlog
from litestar import Controller, Request, delete, get, post, put
from litestar.params import JSONBody, PathParameter, QueryParameter
from litestar.status_codes import HTTP_200_OK

from crewflow.application.catalog import FlowCheck, check_flow, create_flow, update_flow, validate_stored_flow
from crewflow.domain.auth import Identity
from crewflow.domain.execution import FlowRecord, FlowVersion
from crewflow.domain.tenancy import Permission
from crewflow.entrypoints.http.audit_routes import audit_request
from crewflow.entrypoints.http.inputs import PathId, check_json, valid_cursor
from crewflow.entrypoints.http.pagination import MAX_LIMIT, PageOut, page_out
from crewflow.entrypoints.http.security import require

__all__ = ["FlowController", "FlowOut", "FlowUpdate", "ValidationOut", "invalidate_flow"]

log = structlog.get_logger("crewflow.http.flows")

FlowId = PathId
VersionNumber = Annotated[int, PathParameter(ge=1, le=2**31 - 1)]
Cursor = Annotated[str | None, QueryParameter(max_length=1024)]
Limit = Annotated[int, QueryParameter(ge=1, le=MAX_LIMIT)]
Document = dict[str, Any]


class FlowUpdate(msgspec.Struct, forbid_unknown_fields=True):
    expected_version: Annotated[int, msgspec.Meta(ge=1, le=2**31 - 2)]
    definition: Document


class FlowSummary(msgspec.Struct):
    id: str
    name: str
    description: str
    current_version: int
    is_active: bool
    created_at: float
    updated_at: float

    @classmethod
    def of(cls, flow: FlowRecord) -> FlowSummary:
        return cls(flow.id, flow.name, flow.description, flow.current_version, flow.is_active, flow.created_at,
                   flow.updated_at)  # fmt: skip


class FlowOut(msgspec.Struct):
    id: str
    name: str
    description: str
    current_version: int
    is_active: bool
    created_at: float
    updated_at: float
    definition: Document

    @classmethod
    def of(cls, flow: FlowRecord, version: FlowVersion) -> FlowOut:
        return cls(flow.id, flow.name, flow.description, flow.current_version, flow.is_active, flow.created_at,
                   flow.updated_at, dict(version.definition))  # fmt: skip


class FlowVersionSummary(msgspec.Struct):
    flow_id: str
    version: int
    created_at: float
    created_by: str | None

    @classmethod
    def of(cls, version: FlowVersion) -> FlowVersionSummary:
        return cls(version.flow_id, version.version, version.created_at, version.created_by)


class FlowVersionOut(msgspec.Struct):
    flow_id: str
    version: int
    created_at: float
    created_by: str | None
    definition: Document

    @classmethod
    def of(cls, version: FlowVersion) -> FlowVersionOut:
        return cls(version.flow_id, version.version, version.created_at, version.created_by,
                   dict(version.definition))  # fmt: skip


class ProblemOut(msgspec.Struct):
    code: str
    where: str
    message: str
    nodes: list[str]
    edge: list[str] | None


class ValidationOut(msgspec.Struct):
    valid: bool
    problems: list[ProblemOut]

    @classmethod
    def of(cls, check: FlowCheck) -> ValidationOut:
        problems = [ProblemOut(p.code, p.where, p.message, list(p.node_ids), list(p.edge) if p.edge else None)
                    for p in check.problems]  # fmt: skip
        return cls(check.valid, problems)


async def invalidate_flow(request: Request[Identity, Any, Any], flow_id: str) -> None:
    """After a committed change of a flow: drop its cached current-version pointer (``flow_cache``), so every
    API instance and worker resolves the new state. A cache failure does not fail the (committed) request:
    the pointer expires on its own shortly (``CachedFlowResolver.pointer_ttl``)."""
    flow_cache = request.app.state.container.flow_cache
    if flow_cache is None:
        return
    try:
        await flow_cache.invalidate(request.user.tenant_id, flow_id)
    except Exception:
        log.warning("flow_cache.invalidate_failed", tenant_id=request.user.tenant_id, flow_id=flow_id, exc_info=True)


class FlowController(Controller):
    path = "/flows"
    tags = ["flows"]

    @get("/", guards=[require(Permission.FLOWS_READ)])
    async def list_flows(self, request: Request[Identity, Any, Any], cursor: Cursor = None,
                         limit: Limit = 20) -> PageOut[FlowSummary]:  # fmt: skip
        async with request.app.state.container.uow_factory.for_tenant(request.user.tenant_id) as uow:
            return page_out(await valid_cursor(uow.flows.list(cursor, limit)), FlowSummary.of)

    @post("/", guards=[require(Permission.FLOWS_WRITE)])
    async def create_flow(self, request: Request[Identity, Any, Any], data: JSONBody[Document]) -> FlowOut:
        """Body: a flow document. 422 lists every problem, each naming its node or edge."""
        check_json(data)
        container = request.app.state.container
        async with container.uow_factory.for_tenant(request.user.tenant_id) as uow:
            record = await create_flow(uow, data, at=container.clock.now(), limits=container.engine.limits,
                                       new_id=lambda slug: f"{slug}-{container.ids.new_id()[:6]}",
                                       created_by=request.user.user_id)  # fmt: skip
            version = await uow.flows.get_version(record.id, 1)
            await uow.commit()
        await invalidate_flow(request, record.id)  # a deleted flow's id may be taken again
        await audit_request(request, "flow.create", object_type="flow", object_id=record.id, details={"version": 1})
        return FlowOut.of(record, version)

    @post("/validate", guards=[require(Permission.FLOWS_WRITE)], status_code=HTTP_200_OK)
    async def validate_document(self, request: Request[Identity, Any, Any], data: JSONBody[Document]) -> ValidationOut:
        """Check an unsaved flow document; nothing is stored."""
        check_json(data)
        container = request.app.state.container
        async with container.uow_factory.for_tenant(request.user.tenant_id) as uow:
            return ValidationOut.of(await check_flow(uow, data, limits=container.engine.limits))

    @get("/{flow_id:str}", guards=[require(Permission.FLOWS_READ)])
    async def get_flow(self, request: Request[Identity, Any, Any], flow_id: FlowId) -> FlowOut:
        async with request.app.state.container.uow_factory.for_tenant(request.user.tenant_id) as uow:
            record = await uow.flows.get(flow_id)
            return FlowOut.of(record, await uow.flows.get_version(flow_id, record.current_version))

    @put("/{flow_id:str}", guards=[require(Permission.FLOWS_WRITE)])
    async def update_flow(self, request: Request[Identity, Any, Any], flow_id: FlowId,
                          data: JSONBody[FlowUpdate]) -> FlowOut:  # fmt: skip
        """Save a new version; 409 when ``expected_version`` is no longer the current one."""
        check_json(data.definition, "definition")
        container = request.app.state.container
        async with container.uow_factory.for_tenant(request.user.tenant_id) as uow:
            record = await update_flow(uow, flow_id, data.definition, expected_version=data.expected_version,
                                       at=container.clock.now(), limits=container.engine.limits,
                                       created_by=request.user.user_id)  # fmt: skip
            version = await uow.flows.get_version(flow_id, record.current_version)
            await uow.commit()
        await invalidate_flow(request, flow_id)
        await audit_request(request, "flow.update", object_type="flow", object_id=flow_id,
                            details={"version": record.current_version})  # fmt: skip
        return FlowOut.of(record, version)

    @delete("/{flow_id:str}", guards=[require(Permission.FLOWS_WRITE)])
    async def delete_flow(self, request: Request[Identity, Any, Any], flow_id: FlowId) -> None:
        async with request.app.state.container.uow_factory.for_tenant(request.user.tenant_id) as uow:
            await uow.flows.delete(flow_id)
            await uow.commit()
        await invalidate_flow(request, flow_id)
        await audit_request(request, "flow.delete", object_type="flow", object_id=flow_id)

    @post("/{flow_id:str}/validate", guards=[require(Permission.FLOWS_READ)], status_code=HTTP_200_OK)
    async def validate_flow(self, request: Request[Identity, Any, Any], flow_id: FlowId,
                            version: Annotated[int | None, QueryParameter(ge=1, le=2**31 - 1)] = None,
                            ) -> ValidationOut:  # fmt: skip
        """Check a stored version (the current one by default) against the catalog as it is now."""
        container = request.app.state.container
        async with container.uow_factory.for_tenant(request.user.tenant_id) as uow:
            check = await validate_stored_flow(uow, flow_id, version, limits=container.engine.limits)
            return ValidationOut.of(check)

    @get("/{flow_id:str}/versions", guards=[require(Permission.FLOWS_READ)])
    async def list_versions(self, request: Request[Identity, Any, Any], flow_id: FlowId, cursor: Cursor = None,
                            limit: Limit = 20) -> PageOut[FlowVersionSummary]:  # fmt: skip
        """Newest first."""
        async with request.app.state.container.uow_factory.for_tenant(request.user.tenant_id) as uow:
            await uow.flows.get(flow_id)  # 404 for a missing or another tenant's flow, not an empty list
            return page_out(await valid_cursor(uow.flows.list_versions(flow_id, cursor, limit)),
                            FlowVersionSummary.of)  # fmt: skip

    @get("/{flow_id:str}/versions/{version:int}", guards=[require(Permission.FLOWS_READ)])
    async def get_version(self, request: Request[Identity, Any, Any], flow_id: FlowId,
                          version: VersionNumber) -> FlowVersionOut:  # fmt: skip
        async with request.app.state.container.uow_factory.for_tenant(request.user.tenant_id) as uow:
            return FlowVersionOut.of(await uow.flows.get_version(flow_id, version))
