"""The in-memory rate limiter and user status cache, on a fake clock."""

from __future__ import annotations

import pytest

from crewflow.adapters.memory.limits import MemoryRateLimiter, UserStatus, UserStatusCache
from crewflow.domain.tenancy import Role

pytestmark = pytest.mark.unit


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def test_a_key_gets_limit_hits_per_window_then_waits_for_the_next_one() -> None:
    clock = FakeClock(1000.0)
    limiter = MemoryRateLimiter(clock)
    decisions = [await limiter.hit("k", 3, 60) for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.remaining for d in decisions[:3]] == [2, 1, 0]
    assert decisions[3].retry_after == pytest.approx(20.0)  # the window started at 960 and ends at 1020
    clock.now = 1020.0
    assert (await limiter.hit("k", 3, 60)).allowed
    assert (await limiter.hit("other", 3, 60)).remaining == 2


async def test_a_flood_of_new_keys_does_not_reset_running_counters() -> None:
    clock = FakeClock(1000.0)
    limiter = MemoryRateLimiter(clock, max_keys=10)
    for _ in range(5):
        await limiter.hit("login:account:victim", 5, 900)
    for i in range(50):  # many short-window keys, as an attacker guessing addresses would create
        await limiter.hit(f"flood-{i}", 100, 60)
    assert not (await limiter.hit("login:account:victim", 5, 900)).allowed


async def test_ended_windows_are_forgotten_first() -> None:
    clock = FakeClock(1000.0)
    limiter = MemoryRateLimiter(clock, max_keys=2)
    await limiter.hit("old", 1, 10)
    clock.now = 1100.0
    await limiter.hit("a", 1, 60)
    await limiter.hit("b", 1, 60)  # "old" ended long ago: it goes, "a" stays
    assert not (await limiter.hit("a", 1, 60)).allowed


def test_user_status_is_cached_for_its_ttl_and_can_be_forgotten() -> None:
    clock = FakeClock(0.0)
    cache = UserStatusCache(ttl=5.0, clock=clock)
    status = UserStatus("t1", Role.MEMBER, True)
    cache.put("u1", status)
    assert cache.get("u1") == status
    clock.now = 5.0
    assert cache.get("u1") is None
    cache.put("u1", status)
    cache.forget("u1")
    assert cache.get("u1") is None
