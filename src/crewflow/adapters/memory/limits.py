"""In-memory revoked-token store, fixed-window rate limiter (single process; Redis ones for clusters) and the
per-process cache of user status the token middleware reads."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from crewflow.domain.tenancy import Role
from crewflow.ports.auth import RateDecision

__all__ = ["MemoryRateLimiter", "MemoryTokenRevocations", "UserStatus", "UserStatusCache"]


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
    limit over a short span — the usual trade-off, accepted for its O(1) cost per request.

    At ``max_keys`` keys, only windows that have ended are forgotten; if every window is still running,
    the ones ending soonest go. Live counters are never reset wholesale (a flood of new keys, e.g. guessed
    e-mail addresses, must not wipe the brute-force counters of other keys)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, max_keys: int = 100_000) -> None:
        self._clock = clock
        self._windows: dict[str, tuple[float, int]] = {}  # key -> (end of its current window, count)
        self._max_keys = max_keys

    async def hit(self, key: str, limit: int, window: float) -> RateDecision:
        now = self._clock()
        end = now - (now % window) + window
        current_end, count = self._windows.get(key, (end, 0))
        if current_end != end:
            count = 0
        count += 1
        if key not in self._windows and len(self._windows) >= self._max_keys:
            self._evict(now)
        self._windows[key] = (end, count)
        if count > limit:
            return RateDecision(False, 0, end - now)
        return RateDecision(True, limit - count)

    def _evict(self, now: float) -> None:
        live = {k: v for k, v in self._windows.items() if v[0] > now}
        if len(live) >= self._max_keys:
            keep = sorted(live.items(), key=lambda item: item[1][0])[len(live) - self._max_keys // 2:]
            live = dict(keep)
        self._windows = live


@dataclass(frozen=True, slots=True)
class UserStatus:
    tenant_id: str
    role: Role
    is_active: bool


class UserStatusCache:
    """What the token middleware needs of a user (tenant, role, active), kept ``ttl`` seconds per process
    so an authenticated request does not read the users table every time. Changes made in this process
    call ``forget``; other processes see them through the "user changed" marker in the revocation store
    (ADR 0008), or at the latest after ``ttl``."""

    def __init__(self, ttl: float = 5.0, max_entries: int = 50_000,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self.ttl = ttl
        self._max = max_entries
        self._clock = clock
        self._entries: dict[str, tuple[float, UserStatus]] = {}

    def get(self, user_id: str) -> UserStatus | None:
        entry = self._entries.get(user_id)
        if entry is None:
            return None
        if entry[0] <= self._clock():
            self._entries.pop(user_id, None)
            return None
        return entry[1]

    def put(self, user_id: str, status: UserStatus) -> None:
        if len(self._entries) >= self._max and user_id not in self._entries:
            now = self._clock()
            self._entries = {k: v for k, v in self._entries.items() if v[0] > now}
            if len(self._entries) >= self._max:
                self._entries.clear()
        self._entries[user_id] = (self._clock() + self.ttl, status)

    def forget(self, user_id: str) -> None:
        self._entries.pop(user_id, None)
