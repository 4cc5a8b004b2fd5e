"""A namespaced key/value cache with time-to-live. In-memory by default, Redis in production."""

from __future__ import annotations

from typing import Protocol

__all__ = ["Cache"]


class Cache(Protocol):
    """Values are bytes so every backend stores them the same way. ``namespace`` keeps tenants (and uses)
    apart: the same key in two namespaces is two entries. ``ttl`` in seconds; ``None`` means the backend's
    default (which may be "no expiry")."""

    async def get(self, namespace: str, key: str) -> bytes | None: ...

    async def set(self, namespace: str, key: str, value: bytes, ttl: float | None = None) -> None: ...

    async def delete(self, namespace: str, key: str) -> None: ...
