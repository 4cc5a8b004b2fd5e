"""The in-memory ``EventBus`` of the embedded deployment: live execution events fanned out to the WebSocket
clients of this process.

Subscriptions are keyed by (tenant, execution): an event published for one tenant never reaches a subscriber
of another, even for the same execution id. ``subscribe`` registers at once (not on first iteration), so a
caller can subscribe, then replay the log store, then iterate, without losing what is published meanwhile.

Each subscriber has a bounded queue. A subscriber that falls more than ``max_queue`` events behind is dropped
rather than slowing the run down or growing without bound: its iterator ends early (before the run's terminal
event), which tells the consumer to catch up from the log store and subscribe again. Iterators should be
closed (``aclose``) when the consumer stops early; that unregisters them.
"""

from __future__ import annotations

from collections.abc import Sequence

from crewflow.adapters.feeds import BoundedFeed
from crewflow.domain.events import ExecutionEvent

__all__ = ["MemoryEventBus", "MemorySubscription"]

_Key = tuple[str, str]


class MemorySubscription(BoundedFeed):
    """Live events of one execution, from the moment it was created. An async iterator."""

    __slots__ = ("_bus", "_key")

    def __init__(self, bus: MemoryEventBus, key: _Key, max_queue: int) -> None:
        super().__init__(max_queue)
        self._bus = bus
        self._key = key

    def _unregister(self) -> None:
        self._bus._remove(self._key, self)


class MemoryEventBus:
    def __init__(self, *, max_queue: int = 1000) -> None:
        if max_queue < 1:
            raise ValueError("max_queue must be at least 1")
        self.max_queue = max_queue
        self._subscribers: dict[_Key, list[MemorySubscription]] = {}

    async def publish(self, tenant_id: str, events: Sequence[ExecutionEvent]) -> None:
        for event in events:
            for subscription in tuple(self._subscribers.get((tenant_id, event.execution_id), ())):
                subscription.offer(event)

    def subscribe(self, tenant_id: str, execution_id: str) -> MemorySubscription:
        key = (tenant_id, execution_id)
        subscription = MemorySubscription(self, key, self.max_queue)
        self._subscribers.setdefault(key, []).append(subscription)
        return subscription

    def subscriber_count(self, tenant_id: str, execution_id: str) -> int:
        """How many live subscriptions an execution has (for health checks and tests)."""
        return len(self._subscribers.get((tenant_id, execution_id), ()))

    def _remove(self, key: _Key, subscription: MemorySubscription) -> None:
        subscribers = self._subscribers.get(key)
        if subscribers is None:
            return
        if subscription in subscribers:
            subscribers.remove(subscription)
        if not subscribers:
            del self._subscribers[key]
