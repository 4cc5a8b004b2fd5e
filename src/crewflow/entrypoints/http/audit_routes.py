"""/api/v1/audit-logs — the tenant's audit log, newest first, for admins; and ``audit_request``, the one-line
way for a route to record a write with the caller, request id and client address filled in."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, get
from litestar.params import FromQuery, QueryParameter

from crewflow.application.audit import record_audit
from crewflow.domain.auth import Identity
from crewflow.domain.logs import AuditEntry
from crewflow.domain.tenancy import Permission
from crewflow.entrypoints.http.limits import invalid_cursor_is_422, request_meta
from crewflow.entrypoints.http.pagination import MAX_LIMIT, PageOut, page_out
from crewflow.entrypoints.http.security import identity_of, require

__all__ = ["AuditController", "AuditEntryOut", "audit_request"]


class AuditEntryOut(msgspec.Struct):
    id: str
    action: str
    created_at: float
    actor_id: str | None
    object_type: str | None
    object_id: str | None
    request_id: str | None
    client_addr: str | None
    details: dict[str, Any]

    @classmethod
    def of(cls, e: AuditEntry) -> AuditEntryOut:
        return cls(e.id, e.action, e.created_at, e.actor_id, e.object_type, e.object_id, e.request_id,
                   e.client_addr, dict(e.details))  # fmt: skip


async def audit_request(request: Request[Any, Any, Any], action: str, *, object_type: str | None = None,
                        object_id: str | None = None, details: Mapping[str, Any] | None = None) -> None:  # fmt: skip
    """Record ``action`` in the caller's tenant audit log: actor, request id and client address come from
    the request. Call it after the write committed. Never put secrets in ``details``."""
    identity = identity_of(request)
    container = request.app.state.container
    meta = request_meta(request)
    await record_audit(container.logstore, identity.tenant_id, action, actor_id=identity.user_id,
                       object_type=object_type, object_id=object_id, request_id=meta.request_id,
                       client_addr=meta.client_addr, details=details, at=container.clock.now())  # fmt: skip


class AuditController(Controller):
    path = "/audit-logs"
    tags = ["audit"]

    @get("/", guards=[require(Permission.AUDIT_READ)])
    async def list_audit_logs(self, request: Request[Identity, Any, Any], cursor: FromQuery[str | None] = None,
                              limit: Annotated[int, QueryParameter(ge=1, le=MAX_LIMIT)] = 50,
                              ) -> PageOut[AuditEntryOut]:  # fmt: skip
        store = request.app.state.container.logstore.for_tenant(request.user.tenant_id)
        with invalid_cursor_is_422():
            page = await store.audit_entries(cursor, limit)
        return page_out(page, AuditEntryOut.of)
