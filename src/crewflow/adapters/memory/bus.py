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

import asyncio
from collections.abc import Sequence
from typing import Self

from crewflow.domain.events import ExecutionEvent

__all__ = ["MemoryEventBus", "MemorySubscription"]

_Key = tuple[str, str]


class MemorySubscription:
    """Live events of one execution, from the moment it was created. An async iterator."""

    __slots__ = ("_bus", "_closed", "_key", "_queue")

    def __init__(self, bus: MemoryEventBus, key: _Key, max_queue: int) -> None:
        self._bus = bus
        self._key = key
        # one extra slot so the end-of-stream marker always fits after an overflow
        self._queue: asyncio.Queue[ExecutionEvent | None] = asyncio.Queue(max_queue + 1)
        self._closed = False

    def offer(self, event: ExecutionEvent) -> bool:
        """Queue an event; False (and the subscription ends) when the subscriber is too far behind."""
        if self._closed:
            return False
        if self._queue.qsize() >= self._queue.maxsize - 1:
            self._end()
            return False
        self._queue.put_nowait(event)
        return True

    def _end(self) -> None:
        self._closed = True
        self._bus._remove(self._key, self)
        self._queue.put_nowait(None)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> ExecutionEvent:
        if self._closed and self._queue.empty():
            raise StopAsyncIteration
        event = await self._queue.get()
        if event is None:
            raise StopAsyncIteration
        return event

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
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
