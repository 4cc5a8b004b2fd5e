"""The event bus: live execution events fanned out to WebSocket clients on any API instance."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Protocol

from crewflow.domain.events import ExecutionEvent

__all__ = ["EventBus"]


class EventBus(Protocol):
    async def publish(self, tenant_id: str, events: Sequence[ExecutionEvent]) -> None: ...

    def subscribe(self, tenant_id: str, execution_id: str) -> AsyncIterator[ExecutionEvent]:
        """Live events of one execution from the moment of subscription (subscribe before replaying the log,
        then drop duplicates by seq)."""
        ...
