"""The log store: execution events (the replay log and run checkpoints), chat messages and audit entries.

A ``TenantLogStore`` is built for one tenant by ``LogStore.for_tenant``; none of its methods takes a
tenant id. Adapters: SQL (same database as the rest, the default) and MongoDB (beanie)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Protocol

from crewflow.domain.events import ExecutionEvent
from crewflow.domain.logs import AuditEntry, ChatMessageRecord, Page

__all__ = ["LogStore", "TenantLogStore"]


class TenantLogStore(Protocol):
    async def append_events(self, events: Sequence[ExecutionEvent]) -> None:
        """Store events; appending an event whose (execution_id, seq) is already stored is a no-op."""
        ...

    async def events_after(self, execution_id: str, after_seq: int = 0, limit: int = 1000) -> list[ExecutionEvent]:
        """Events of one execution with seq > after_seq, in seq order."""
        ...

    async def add_chat_message(self, message: ChatMessageRecord) -> None: ...

    async def chat_messages(self, chat_id: str, cursor: str | None = None, limit: int = 50) -> Page[ChatMessageRecord]:
        """Oldest first."""
        ...

    async def add_audit(self, entry: AuditEntry) -> None: ...

    async def audit_entries(self, cursor: str | None = None, limit: int = 50) -> Page[AuditEntry]:
        """Newest first."""
        ...

    async def purge_before(self, cutoff: float) -> int:
        """Delete everything created before ``cutoff`` (epoch seconds); returns how many records went."""
        ...

    async def purge_executions(self, execution_ids: Collection[str]) -> int:
        """Delete every event of these executions (the retention cleanup, after their rows went); returns
        how many events went."""
        ...

    async def purge_chat_messages_before(self, cutoff: float) -> int:
        """Delete chat messages created before ``cutoff`` (audit entries are kept); returns how many went."""
        ...


class LogStore(Protocol):
    def for_tenant(self, tenant_id: str) -> TenantLogStore: ...

    async def drop_tenant(self, tenant_id: str) -> None: ...

    async def close(self) -> None: ...
