"""Time and identity, passed into the core instead of read from globals."""

from __future__ import annotations

from typing import Protocol

__all__ = ["Clock", "IdGenerator"]


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the epoch (wall clock; used for event times, deadlines and backoff)."""
        ...


class IdGenerator(Protocol):
    def new_id(self) -> str: ...
