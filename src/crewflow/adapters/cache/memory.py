"""An in-process cache: TTL per entry, least-recently-used eviction beyond ``max_entries``."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

__all__ = ["MemoryCache"]


class MemoryCache:
    """Implements ``crewflow.ports.cache.Cache``. ``clock`` is a monotonic time source (seconds)."""

    def __init__(self, *, max_entries: int = 10_000, default_ttl: float | None = 3600.0,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._max = max_entries
        self._default_ttl = default_ttl
        self._clock = clock
        self._data: OrderedDict[tuple[str, str], tuple[float | None, bytes]] = OrderedDict()

    async def get(self, namespace: str, key: str) -> bytes | None:
        k = (namespace, key)
        item = self._data.get(k)
        if item is None:
            return None
        expires, value = item
        if expires is not None and self._clock() >= expires:
            del self._data[k]
            return None
        self._data.move_to_end(k)
        return value

    async def set(self, namespace: str, key: str, value: bytes, ttl: float | None = None) -> None:
        ttl = self._default_ttl if ttl is None else ttl
        expires = None if ttl is None else self._clock() + ttl
        k = (namespace, key)
        self._data[k] = (expires, value)
        self._data.move_to_end(k)
        while len(self._data) > self._max:
            self._data.popitem(last=False)

    async def delete(self, namespace: str, key: str) -> None:
        self._data.pop((namespace, key), None)

    def __len__(self) -> int:
        return len(self._data)
