"""Where execution events go besides the caller: the log store (checkpoints, replay) and the bus (live)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from crewflow.domain.events import ExecutionEvent

__all__ = ["EventSink"]


class EventSink(Protocol):
    async def publish(self, events: Sequence[ExecutionEvent]) -> None:
        """Persist/forward events in order. The engine awaits this before the next step of the run, so a
        sink that stores events is also the run's checkpoint."""
        ...
