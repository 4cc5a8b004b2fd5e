"""Event sinks made of other ports: the log store's replay log and the live event bus."""

from __future__ import annotations

from collections.abc import Sequence

from crewflow.domain.events import ExecutionEvent
from crewflow.ports.bus import EventBus
from crewflow.ports.logstore import TenantLogStore

__all__ = ["BusSink", "LogStoreSink"]


class LogStoreSink:
    """Appends every event to the tenant's execution log (replay for late WebSocket clients, audit)."""

    def __init__(self, store: TenantLogStore) -> None:
        self.store = store

    async def publish(self, events: Sequence[ExecutionEvent]) -> None:
        await self.store.append_events(events)


class BusSink:
    """Publishes every event on the live bus for one tenant. Put it after the log store's sink: an event a
    subscriber sees live is then always in the replay log too (reconnects replay, then drop duplicates)."""

    def __init__(self, bus: EventBus, tenant_id: str) -> None:
        self.bus = bus
        self.tenant_id = tenant_id

    async def publish(self, events: Sequence[ExecutionEvent]) -> None:
        await self.bus.publish(self.tenant_id, events)
