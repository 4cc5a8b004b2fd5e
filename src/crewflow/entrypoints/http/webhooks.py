"""/api/v1/flows/{flow_id}/webhook — a flow's execution-end webhook and its delivery log.

``PUT`` creates or replaces it (201 when created): the secret is generated unless given, and a generated one
is in that response only (``secret``); no other response ever shows it. Admins and members (``flows:write``)
manage webhooks and read their deliveries; another tenant's flow is 404 like a missing one."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlsplit

import msgspec
from litestar import Controller, Request, Response, delete, get, put
from litestar.params import JSONBody, QueryParameter

from crewflow.application import webhooks as use_cases
from crewflow.domain.auth import Identity
from crewflow.domain.tenancy import Permission
from crewflow.entrypoints.http.audit_routes import audit_request
from crewflow.entrypoints.http.inputs import PathId, valid_cursor
from crewflow.entrypoints.http.pagination import MAX_LIMIT, PageOut, page_out
from crewflow.entrypoints.http.security import require
from crewflow.ports.webhooks import WEBHOOK_EVENTS, Webhook, WebhookDelivery

__all__ = ["DeliveryOut", "WebhookController", "WebhookIn", "WebhookOut"]

Cursor = Annotated[str | None, QueryParameter(max_length=1024)]
Limit = Annotated[int, QueryParameter(ge=1, le=MAX_LIMIT)]
Event = Annotated[str, msgspec.Meta(pattern="^(completed|failed|cancelled)$")]


class WebhookIn(msgspec.Struct, forbid_unknown_fields=True):
    url: Annotated[str, msgspec.Meta(min_length=1, max_length=use_cases.MAX_URL)]
    events: Annotated[list[Event], msgspec.Meta(min_length=1, max_length=3)] = msgspec.field(
        default_factory=lambda: list(WEBHOOK_EVENTS))
    secret: Annotated[str, msgspec.Meta(min_length=use_cases.MIN_SECRET, max_length=use_cases.MAX_SECRET)] | None = None
    rotate_secret: bool = False
    is_active: bool = True


class WebhookOut(msgspec.Struct, omit_defaults=True):
    flow_id: str
    url: str
    events: list[str]
    is_active: bool
    created_at: float
    updated_at: float
    secret: str | None = None  # only in the response that generated it

    @classmethod
    def of(cls, webhook: Webhook, secret: str | None = None) -> WebhookOut:
        return cls(webhook.flow_id, webhook.url, list(webhook.events), webhook.is_active, webhook.created_at,
                   webhook.updated_at, secret)  # fmt: skip


class DeliveryOut(msgspec.Struct):
    id: str
    execution_id: str
    event: str
    url: str
    status: str
    attempts: int
    response_status: int | None
    error: str | None
    next_attempt_at: float | None
    created_at: float
    updated_at: float
    payload: dict[str, Any]

    @classmethod
    def of(cls, d: WebhookDelivery) -> DeliveryOut:
        return cls(d.id, d.execution_id, d.event, d.url, str(d.status), d.attempts, d.response_status, d.error,
                   d.next_attempt_at, d.created_at, d.updated_at, dict(d.payload))  # fmt: skip


class WebhookController(Controller):
    path = "/flows/{flow_id:str}/webhook"
    tags = ["webhooks"]

    @put("/", guards=[require(Permission.FLOWS_WRITE)])
    async def put_webhook(self, request: Request[Identity, Any, Any], flow_id: PathId,
                          data: JSONBody[WebhookIn]) -> Response[WebhookOut]:  # fmt: skip
        """Create or replace the flow's webhook; 201 with the generated ``secret`` (shown once) on creation."""
        container = request.app.state.container
        cmd = use_cases.ConfigureWebhook(flow_id, data.url, tuple(data.events), data.secret, data.rotate_secret,
                                         data.is_active)  # fmt: skip
        done = await use_cases.configure_webhook(
            request.user.tenant_id, cmd, uow_factory=container.uow_factory, cipher=container.cipher,
            clock=container.clock, allow_private=use_cases.allow_private_from(container.settings.extra),
        )  # fmt: skip
        await audit_request(request, "flow.webhook.put", object_type="flow", object_id=flow_id, details={
            "host": urlsplit(done.webhook.url).hostname, "events": list(done.webhook.events),
            "is_active": done.webhook.is_active, "secret_changed": data.secret is not None or done.secret is not None,
        })  # fmt: skip
        return Response(WebhookOut.of(done.webhook, done.secret), status_code=201 if done.created else 200,
                        headers={"Cache-Control": "no-store"})  # fmt: skip

    @get("/", guards=[require(Permission.FLOWS_WRITE)])
    async def get_webhook(self, request: Request[Identity, Any, Any], flow_id: PathId) -> WebhookOut:
        container = request.app.state.container
        webhook = await use_cases.get_webhook(request.user.tenant_id, flow_id, uow_factory=container.uow_factory)
        return WebhookOut.of(webhook)

    @delete("/", guards=[require(Permission.FLOWS_WRITE)])
    async def delete_webhook(self, request: Request[Identity, Any, Any], flow_id: PathId) -> None:
        container = request.app.state.container
        await use_cases.delete_webhook(request.user.tenant_id, flow_id, uow_factory=container.uow_factory)
        await audit_request(request, "flow.webhook.delete", object_type="flow", object_id=flow_id)

    @get("/deliveries", guards=[require(Permission.FLOWS_WRITE)])
    async def list_deliveries(self, request: Request[Identity, Any, Any], flow_id: PathId, cursor: Cursor = None,
                              limit: Limit = 20) -> PageOut[DeliveryOut]:  # fmt: skip
        """The delivery log, newest first: each delivery's status, attempts, last response code and error."""
        container = request.app.state.container
        page = await valid_cursor(use_cases.list_deliveries(request.user.tenant_id, flow_id, cursor, limit,
                                                            uow_factory=container.uow_factory))  # fmt: skip
        return page_out(page, DeliveryOut.of)
