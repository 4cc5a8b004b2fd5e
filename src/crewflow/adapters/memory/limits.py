"""In-memory revoked-token store and fixed-window rate limiter (single process; Redis ones for clusters)."""

from __future__ import annotations

import time
from collections.abc import Callable

from crewflow.ports.auth import RateDecision

__all__ = ["MemoryRateLimiter", "MemoryTokenRevocations"]


class MemoryTokenRevocations:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._revoked: dict[str, float] = {}
        self._clock = clock

    async def revoke(self, jti: str, expires_at: float) -> None:
        self._revoked[jti] = expires_at
        if len(self._revoked) > 10_000:
            now = self._clock()
            self._revoked = {k: v for k, v in self._revoked.items() if v > now}

    async def is_revoked(self, jti: str) -> bool:
        until = self._revoked.get(jti)
        return until is not None and until > self._clock()


class MemoryRateLimiter:
    """Fixed windows per key. Windows are aligned to the clock, so a burst at a boundary can reach twice the
    limit over a short span — the usual trade-off, accepted for its O(1) cost per request."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, max_keys: int = 100_000) -> None:
        self._clock = clock
        self._windows: dict[str, tuple[float, int]] = {}
        self._max_keys = max_keys

    async def hit(self, key: str, limit: int, window: float) -> RateDecision:
        now = self._clock()
        start = now - (now % window)
        current_start, count = self._windows.get(key, (start, 0))
        if current_start != start:
            count = 0
        count += 1
        if len(self._windows) >= self._max_keys and key not in self._windows:
            self._windows = {k: v for k, v in self._windows.items() if v[0] == start}
        self._windows[key] = (start, count)
        if count > limit:
            return RateDecision(False, 0, start + window - now)
        return RateDecision(True, limit - count)
