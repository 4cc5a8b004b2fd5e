"""record_audit: one entry in the named tenant's audit log, secret-looking detail keys dropped."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from crewflow.application.audit import record_audit
from crewflow.domain.events import ExecutionEvent
from crewflow.domain.logs import AuditEntry, ChatMessageRecord, Page

pytestmark = pytest.mark.unit


class FakeTenantLog:
    def __init__(self) -> None:
        self.audit: list[AuditEntry] = []

    async def append_events(self, events: Sequence[ExecutionEvent]) -> None:
        raise NotImplementedError

    async def events_after(self, execution_id: str, after_seq: int = 0, limit: int = 1000) -> list[ExecutionEvent]:
        raise NotImplementedError

    async def add_chat_message(self, message: ChatMessageRecord) -> None:
        raise NotImplementedError

    async def chat_messages(self, chat_id: str, cursor: str | None = None, limit: int = 50) -> Page[ChatMessageRecord]:
        raise NotImplementedError

    async def add_audit(self, entry: AuditEntry) -> None:
        self.audit.append(entry)

    async def audit_entries(self, cursor: str | None = None, limit: int = 50) -> Page[AuditEntry]:
        return Page(tuple(reversed(self.audit)))

    async def purge_before(self, cutoff: float) -> int:
        return 0


class FakeLogStore:
    def __init__(self) -> None:
        self.tenants: dict[str, FakeTenantLog] = {}

    def for_tenant(self, tenant_id: str) -> FakeTenantLog:
        return self.tenants.setdefault(tenant_id, FakeTenantLog())

    async def drop_tenant(self, tenant_id: str) -> None:
        self.tenants.pop(tenant_id, None)

    async def close(self) -> None:
        return None


async def test_an_entry_goes_to_its_tenant_only_without_secret_details() -> None:
    store = FakeLogStore()
    details: dict[str, Any] = {"name": "gpt", "api_key": "sk-1", "Password": "p", "new_token": "t",
                               "client_secret": "s", "Authorization": "Bearer x", "priority": 2}  # fmt: skip
    entry = await record_audit(store, "t1", "provider.create", actor_id="u1", object_type="provider",
                               object_id="p1", request_id="r1", client_addr="10.0.0.1", details=details,
                               at=123.0)  # fmt: skip
    assert store.tenants["t1"].audit == [entry]
    assert "t2" not in store.tenants
    assert entry.details == {"name": "gpt", "priority": 2}
    assert (entry.action, entry.actor_id, entry.object_id, entry.request_id, entry.created_at) == (
        "provider.create", "u1", "p1", "r1", 123.0)  # fmt: skip
    second = await record_audit(store, "t1", "flow.delete", at=124.0)
    assert second.id != entry.id and second.details == {}
