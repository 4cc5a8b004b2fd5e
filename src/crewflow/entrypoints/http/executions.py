"""/api/v1 execution routes: start a flow on the job queue (202 + Location), read executions with their node
runs, list a flow's executions, cancel, and page through an execution's events (the replay log).

The tenant is the token's; another tenant's flow or execution is the same 404 as a missing one."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.datastructures import ResponseHeader
from litestar.enums import RequestEncodingType
from litestar.exceptions import ValidationException
from litestar.params import BodyKwarg, HeaderParameter, PathParameter, QueryParameter
from litestar.status_codes import HTTP_202_ACCEPTED

from crewflow.application.catalog import resolve_flow
from crewflow.application.executions import (
    ExecuteFlow,
    ExecutionDetails,
    cancel_execution,
    execute_flow,
    execution_logs,
    get_execution,
    list_executions_for_flow,
)
from crewflow.domain.auth import Identity
from crewflow.domain.execution import Execution, NodeRun
from crewflow.domain.tenancy import Permission
from crewflow.entrypoints.http.audit_routes import audit_request
from crewflow.entrypoints.http.limits import request_meta
from crewflow.entrypoints.http.pagination import MAX_LIMIT, PageOut, page_out
from crewflow.entrypoints.http.security import require

__all__ = ["ExecuteIn", "ExecutionController", "ExecutionOut", "FlowExecutionController"]

FlowId = Annotated[str, PathParameter(description="the flow's id", max_length=128)]
ExecutionId = Annotated[str, PathParameter(description="the execution's id", max_length=128)]
IdempotencyKey = Annotated[str | None, HeaderParameter(name="Idempotency-Key", min_length=1, max_length=200,
                                                       description="the same key and body start one run only")]
Cursor = Annotated[str | None, QueryParameter(description="next_cursor of the previous page")]
Limit = Annotated[int, QueryParameter(ge=1, le=MAX_LIMIT)]


class ExecuteIn(msgspec.Struct, forbid_unknown_fields=True):
    inputs: dict[str, Any] = {}
    version: Annotated[int, msgspec.Meta(ge=1)] | None = None


class ExecuteOut(msgspec.Struct):
    execution_id: str
    status_url: str


class CancelOut(msgspec.Struct):
    execution_id: str
    status: str


class NodeRunOut(msgspec.Struct):
    node_id: str
    status: str
    attempts: int
    output: Any
    error: str | None
    started_at: float | None
    finished_at: float | None
    duration: float | None
    input_tokens: int
    output_tokens: int
    cost: float

    @classmethod
    def of(cls, run: NodeRun) -> NodeRunOut:
        return cls(run.node_id, str(run.status), run.attempt, run.output, run.error, run.started_at, run.finished_at,
                   run.duration, run.input_tokens, run.output_tokens, run.cost)  # fmt: skip


class ExecutionSummary(msgspec.Struct):
    id: str
    flow_id: str
    flow_version: int
    status: str
    created_at: float
    started_at: float | None
    finished_at: float | None
    error: str | None

    @classmethod
    def of(cls, e: Execution) -> ExecutionSummary:
        return cls(e.id, e.flow_id, e.flow_version, str(e.status), e.created_at, e.started_at, e.finished_at, e.error)


class ExecutionOut(msgspec.Struct):
    id: str
    flow_id: str
    flow_version: int
    status: str
    inputs: dict[str, Any]
    outputs: dict[str, Any] | None
    error: str | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    duration: float | None
    last_seq: int
    input_tokens: int
    output_tokens: int
    cost: float
    nodes: list[NodeRunOut]

    @classmethod
    def of(cls, details: ExecutionDetails) -> ExecutionOut:
        e = details.execution
        nodes = sorted(details.nodes, key=lambda r: (r.started_at is None, r.started_at or 0.0, r.node_id))
        duration = e.finished_at - e.started_at if e.started_at is not None and e.finished_at is not None else None
        return cls(
            id=e.id, flow_id=e.flow_id, flow_version=e.flow_version, status=str(e.status), inputs=dict(e.inputs),
            outputs=dict(e.outputs) if e.outputs is not None else None, error=e.error, created_at=e.created_at,
            started_at=e.started_at, finished_at=e.finished_at, duration=duration, last_seq=e.last_seq,
            input_tokens=sum(r.input_tokens for r in nodes), output_tokens=sum(r.output_tokens for r in nodes),
            cost=sum(r.cost for r in nodes), nodes=[NodeRunOut.of(r) for r in nodes],
        )  # fmt: skip


class EventOut(msgspec.Struct):
    execution_id: str
    seq: int
    kind: str
    at: float
    node_id: str | None
    data: dict[str, Any]


class LogPageOut(msgspec.Struct):
    items: list[EventOut]
    next_cursor: str | None = None


def _location(execution_id: str) -> str:
    return f"/api/v1/executions/{execution_id}"


class FlowExecutionController(Controller):
    path = "/flows/{flow_id:str}"
    tags = ["executions"]

    @post("/execute", guards=[require(Permission.FLOWS_EXECUTE)], status_code=HTTP_202_ACCEPTED,
          response_headers=[ResponseHeader(name="Location", documentation_only=True,
                                           description="the execution: /api/v1/executions/{id}")])
    async def execute(self, request: Request[Identity, Any, Any], flow_id: FlowId,
                      data: Annotated[ExecuteIn | None, BodyKwarg(media_type=RequestEncodingType.JSON)] = None,
                      idempotency_key: IdempotencyKey = None) -> Response[ExecuteOut]:  # fmt: skip
        """Start the flow (its current version unless ``version`` is given); the run happens on the job
        queue. Follow ``Location`` or the WebSocket ``/api/v1/ws/executions/{id}`` to watch it."""
        container = request.app.state.container
        data = data or ExecuteIn()
        command = ExecuteFlow(tenant_id=request.user.tenant_id, flow_id=flow_id, version=data.version,
                              inputs=data.inputs, idempotency_key=idempotency_key,
                              request_id=request_meta(request).request_id)  # fmt: skip
        cache = container.flow_cache
        accepted = await execute_flow(command, uow_factory=container.uow_factory, queue=container.queue,
                                      clock=container.clock, ids=container.ids,
                                      resolve=cache.resolve if cache is not None else resolve_flow)  # fmt: skip
        if not accepted.replayed:
            await audit_request(request, "execution.create", object_type="execution", object_id=accepted.execution_id,
                                details={"flow_id": flow_id, "version": data.version})  # fmt: skip
        location = _location(accepted.execution_id)
        return Response(ExecuteOut(accepted.execution_id, location), status_code=HTTP_202_ACCEPTED,
                        headers={"Location": location})  # fmt: skip

    @get("/executions", guards=[require(Permission.EXECUTIONS_READ)])
    async def list_executions(self, request: Request[Identity, Any, Any], flow_id: FlowId, cursor: Cursor = None,
                              limit: Limit = 20) -> PageOut[ExecutionSummary]:  # fmt: skip
        """The flow's executions, newest first."""
        try:
            page = await list_executions_for_flow(request.user.tenant_id, flow_id, cursor, limit,
                                                  uow_factory=request.app.state.container.uow_factory)  # fmt: skip
        except ValueError:  # a cursor the repository cannot decode
            bad = [{"key": "cursor", "message": "invalid cursor", "source": "query"}]
            raise ValidationException("the request is invalid", extra=bad) from None
        return page_out(page, ExecutionSummary.of)


class ExecutionController(Controller):
    path = "/executions/{execution_id:str}"
    tags = ["executions"]

    @get("/", guards=[require(Permission.EXECUTIONS_READ)])
    async def get_execution(self, request: Request[Identity, Any, Any], execution_id: ExecutionId) -> ExecutionOut:
        """Status, inputs, outputs, error, timings, and every node's run (attempts, tokens, cost)."""
        details = await get_execution(request.user.tenant_id, execution_id,
                                      uow_factory=request.app.state.container.uow_factory)  # fmt: skip
        return ExecutionOut.of(details)

    @post("/cancel", guards=[require(Permission.FLOWS_EXECUTE)], status_code=HTTP_202_ACCEPTED)
    async def cancel(self, request: Request[Identity, Any, Any], execution_id: ExecutionId) -> CancelOut:
        """Stop the run: no new node starts, running nodes are interrupted. ``status`` is ``cancelled`` when it
        is already recorded, ``running`` while the worker winds the run down. 409 when it already ended."""
        container = request.app.state.container
        status = await cancel_execution(request.user.tenant_id, execution_id, uow_factory=container.uow_factory,
                                        queue=container.queue, recorder=container.recorder)  # fmt: skip
        await audit_request(request, "execution.cancel", object_type="execution", object_id=execution_id)
        return CancelOut(execution_id, str(status))

    @get("/logs", guards=[require(Permission.EXECUTIONS_READ)])
    async def logs(self, request: Request[Identity, Any, Any], execution_id: ExecutionId,
                   cursor: Annotated[int | None, QueryParameter(ge=0, description="seq of the last event seen")] = None,
                   limit: Limit = 50) -> LogPageOut:  # fmt: skip
        """The execution's events, oldest first; pass ``next_cursor`` back as ``cursor`` for the next page."""
        container = request.app.state.container
        page = await execution_logs(request.user.tenant_id, execution_id, cursor or 0, limit,
                                    uow_factory=container.uow_factory, logstore=container.logstore)  # fmt: skip
        items = [EventOut(e.execution_id, e.seq, str(e.kind), e.at, e.node_id, dict(e.data)) for e in page.events]
        return LogPageOut(items, None if page.next_cursor is None else str(page.next_cursor))
