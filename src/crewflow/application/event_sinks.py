"""Event sinks made of other ports: the log store's replay log."""

from __future__ import annotations

from collections.abc import Sequence

from crewflow.domain.events import ExecutionEvent
from crewflow.ports.logstore import TenantLogStore

__all__ = ["LogStoreSink"]


class LogStoreSink:
    """Appends every event to the tenant's execution log (replay for late WebSocket clients, audit)."""

    def __init__(self, store: TenantLogStore) -> None:
        self.store = store

    async def publish(self, events: Sequence[ExecutionEvent]) -> None:
        await self.store.append_events(events)
