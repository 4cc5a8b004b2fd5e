"""A bounded live feed of execution events for one local subscriber, shared by the event-bus adapters
(memory, Redis): an async iterator over a queue with room for ``max_queue`` events. A subscriber that falls
that far behind is dropped (its iterator ends early, which tells the consumer to catch up from the log store
and subscribe again) rather than slowing the run down or growing without bound."""

from __future__ import annotations

import asyncio
from typing import Self

from crewflow.domain.events import ExecutionEvent

__all__ = ["BoundedFeed"]


class BoundedFeed:
    """Subclasses say how to leave their bus (``_unregister``) and may react to being dropped (``_dropped``)."""

    __slots__ = ("_closed", "_queue")

    def __init__(self, max_queue: int) -> None:
        # one extra slot so the end-of-stream marker always fits after an overflow
        self._queue: asyncio.Queue[ExecutionEvent | None] = asyncio.Queue(max_queue + 1)
        self._closed = False

    def _unregister(self) -> None:
        raise NotImplementedError

    def _dropped(self) -> None:
        """Called once when the subscriber is dropped for falling behind."""

    def offer(self, event: ExecutionEvent) -> bool:
        """Queue an event; False (and the feed ends) when the subscriber is too far behind or gone."""
        if self._closed:
            return False
        if self._queue.qsize() >= self._queue.maxsize - 1:
            self._dropped()
            self.end()
            return False
        self._queue.put_nowait(event)
        return True

    def end(self) -> None:
        """End the feed (too slow a subscriber, a lost connection): the iterator stops after what is queued."""
        if self._closed:
            return
        self._closed = True
        self._unregister()
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
            self._unregister()
