"""The audit log: one helper every use case and route calls to record a write or a login attempt.

    await record_audit(logstore, tenant_id, "flow.create", actor_id=identity.user_id, object_type="flow",
                       object_id=flow.id, request_id=rid, client_addr=addr, details={"name": name}, at=clock.now())

Entries go to the tenant's own audit log (``TenantLogStore.add_audit``), never to another tenant's. Details
must not carry secrets (passwords, tokens, provider keys): keys that look like one are dropped here as a
last line of defence, but callers should not pass them in the first place."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from crewflow.domain.logs import AuditEntry
from crewflow.ports.logstore import LogStore

__all__ = ["SECRET_KEYS", "record_audit"]

# Detail keys never stored, whatever their value (compared lower-cased, as substrings).
SECRET_KEYS = ("password", "token", "secret", "api_key", "apikey", "authorization", "cookie")


def _scrub(details: Mapping[str, Any] | None) -> dict[str, Any]:
    if not details:
        return {}
    return {k: v for k, v in details.items() if not any(s in k.lower() for s in SECRET_KEYS)}


async def record_audit(
    logstore: LogStore,
    tenant_id: str,
    action: str,
    *,
    actor_id: str | None = None,
    object_type: str | None = None,
    object_id: str | None = None,
    request_id: str | None = None,
    client_addr: str | None = None,
    details: Mapping[str, Any] | None = None,
    at: float,
    entry_id: str | None = None,
) -> AuditEntry:
    """Append one entry to ``tenant_id``'s audit log and return it. ``action`` is ``<object>.<verb>``
    (``user.invite``, ``auth.login.failed``); ``at`` is epoch seconds from the caller's clock."""
    entry = AuditEntry(
        id=entry_id or uuid.uuid4().hex,
        action=action,
        created_at=at,
        actor_id=actor_id,
        object_type=object_type,
        object_id=object_id,
        request_id=request_id,
        client_addr=client_addr,
        details=_scrub(details),
    )
    await logstore.for_tenant(tenant_id).add_audit(entry)
    return entry
