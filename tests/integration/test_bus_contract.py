"""One contract for every ``EventBus`` adapter (in-memory and Redis on the real local server), plus what
only the Redis bus promises: the per-execution replay stream (duplicates refused, order kept, capped,
expiring after the terminal event), ``ReplayFirstLogStore`` (the stream while it covers a range, the durable
log otherwise) and delivery across API instances, down to a WebSocket-style watcher that reconnects with its
last seq and still gets every event exactly once.

Every Redis test uses its own key prefix and deletes its keys; nothing is flushed (the server is shared)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from crewflow.adapters.memory.bus import MemoryEventBus
from crewflow.adapters.redis import RedisEventBus, ReplayFirstLogStore, create_redis
from crewflow.adapters.sql.engine import SqliteDatabase
from crewflow.adapters.sql.logstore import SqlLogStore
from crewflow.application.executions import watch_execution
from crewflow.domain.events import EventKind, ExecutionEvent
from crewflow.ports.bus import EventBus
from crewflow.ports.logstore import TenantLogStore

pytestmark = pytest.mark.integration

REDIS_URL = "redis://127.0.0.1:6379/0"


def event(seq: int, kind: EventKind = EventKind.NODE_LOG, execution_id: str = "e1") -> ExecutionEvent:
    node = None if kind.is_terminal_run else "n"
    return ExecutionEvent(execution_id, seq, kind, 1000.0 + seq, node, {"seq": seq, "text": f"event {seq}"})


def run(n: int, execution_id: str = "e1") -> list[ExecutionEvent]:
    """A whole run: n - 1 node events, then the terminal event."""
    return [event(s, execution_id=execution_id) for s in range(1, n)] + [event(n, EventKind.RUN_COMPLETED,
                                                                               execution_id)]  # fmt: skip


async def ready(subscription: AsyncIterator[ExecutionEvent]) -> None:
    """Wait until a subscription is live (Redis confirms subscriptions asynchronously; memory is at once)."""
    wait = getattr(subscription, "ready", None)
    if wait is not None:
        await asyncio.wait_for(wait(), 10)


async def take(subscription: AsyncIterator[ExecutionEvent], n: int) -> list[ExecutionEvent]:
    return [await asyncio.wait_for(anext(subscription), 10) for _ in range(n)]


async def drain(subscription: AsyncIterator[ExecutionEvent]) -> list[ExecutionEvent]:
    """Everything until the feed ends."""

    async def collect() -> list[ExecutionEvent]:
        return [e async for e in subscription]

    return await asyncio.wait_for(collect(), 10)


# -- fixtures ------------------------------------------------------------------------------------------
@pytest.fixture
async def redis_prefix() -> AsyncIterator[tuple[Redis, str]]:
    """A client and a key prefix of this test alone; every key under it is deleted afterwards."""
    client = create_redis(REDIS_URL)
    prefix = f"crewflow-test-{uuid.uuid4().hex[:12]}"
    try:
        yield client, prefix
    finally:
        keys = [k async for k in client.scan_iter(match=f"{prefix}:*", count=500)]
        if keys:
            await client.delete(*keys)
        await client.aclose()


@dataclass
class BusKit:
    """Builds buses of one adapter; Redis buses share the test's prefix (one deployment, many instances)."""

    make: Callable[..., EventBus]
    redis: Redis | None
    prefix: str | None


@pytest.fixture(params=["memory", "redis"])
async def kit(request: pytest.FixtureRequest, redis_prefix: tuple[Redis, str]) -> AsyncIterator[BusKit]:
    if request.param == "memory":
        yield BusKit(lambda **kw: MemoryEventBus(**kw), None, None)
        return
    client, prefix = redis_prefix
    made: list[RedisEventBus] = []

    def make(**kw: Any) -> RedisEventBus:
        bus = RedisEventBus(client, prefix=prefix, **kw)
        made.append(bus)
        return bus

    try:
        yield BusKit(make, client, prefix)
    finally:
        for bus in made:
            await bus.aclose()


def tenant() -> str:
    return "t" + uuid.uuid4().hex[:12]


# -- the contract --------------------------------------------------------------------------------------
async def test_events_arrive_in_order_from_the_moment_of_subscription(kit: BusKit) -> None:
    bus = kit.make()
    t = tenant()
    await bus.publish(t, [event(1)])  # before anyone listens: nobody gets it live
    sub = bus.subscribe(t, "e1")
    await ready(sub)
    await bus.publish(t, [event(2), event(3)])
    await bus.publish(t, [event(4), event(5, EventKind.RUN_COMPLETED)])
    assert [e.seq for e in await take(sub, 4)] == [2, 3, 4, 5]
    await sub.aclose()  # type: ignore[attr-defined]


async def test_events_round_trip_unchanged(kit: BusKit) -> None:
    bus = kit.make()
    t = tenant()
    sub = bus.subscribe(t, "e1")
    await ready(sub)
    sent = ExecutionEvent("e1", 7, EventKind.NODE_COMPLETED, 1234.5, "writer",
                          {"output": {"text": "ünïcode", "n": [1, 2.5, None, True]}})  # fmt: skip
    await bus.publish(t, [sent])
    assert await take(sub, 1) == [sent]
    await sub.aclose()  # type: ignore[attr-defined]


async def test_executions_and_tenants_are_isolated(kit: BusKit) -> None:
    bus = kit.make()
    a, b = tenant(), tenant()
    mine = bus.subscribe(a, "e1")
    other_execution = bus.subscribe(a, "e2")
    theirs = bus.subscribe(b, "e1")  # the same execution id in another tenant
    for sub in (mine, other_execution, theirs):
        await ready(sub)
    await bus.publish(b, [event(1), event(2, EventKind.RUN_FAILED)])
    await bus.publish(a, [event(1, execution_id="e2")])
    await bus.publish(a, [event(1), event(2), event(3, EventKind.RUN_COMPLETED)])
    assert [e.seq for e in await take(mine, 3)] == [1, 2, 3]
    assert [(e.execution_id, e.seq) for e in await take(other_execution, 1)] == [("e2", 1)]
    got_b = await take(theirs, 2)
    assert [(e.seq, e.kind) for e in got_b] == [(1, EventKind.NODE_LOG), (2, EventKind.RUN_FAILED)]
    # nothing else is queued for anyone: a marker published last is the next thing each one sees
    await bus.publish(a, [event(9, execution_id="e2")])
    await bus.publish(b, [event(9)])
    assert (await take(other_execution, 1))[0].seq == 9
    assert (await take(theirs, 1))[0].seq == 9
    for sub in (mine, other_execution, theirs):
        await sub.aclose()  # type: ignore[attr-defined]


async def test_a_slow_subscriber_is_dropped_without_blocking_publishers_or_others(kit: BusKit) -> None:
    bus = kit.make(max_queue=3)
    t = tenant()
    slow = bus.subscribe(t, "e1")
    fast = bus.subscribe(t, "e1")
    await ready(slow)
    await ready(fast)
    received: list[int] = []
    for seq in range(1, 11):  # the fast one keeps up; the slow one never reads
        await bus.publish(t, [event(seq)])
        received.append((await take(fast, 1))[0].seq)
    assert received == list(range(1, 11))
    assert [e.seq for e in await drain(slow)] == [1, 2, 3]  # its feed ends early: it catches up from the log
    await fast.aclose()  # type: ignore[attr-defined]


async def test_closing_a_subscription_unregisters_it(kit: BusKit) -> None:
    bus = kit.make()
    t = tenant()
    sub = bus.subscribe(t, "e1")
    await ready(sub)
    assert bus.subscriber_count(t, "e1") == 1  # type: ignore[attr-defined]
    await sub.aclose()  # type: ignore[attr-defined]
    assert bus.subscriber_count(t, "e1") == 0  # type: ignore[attr-defined]
    again = bus.subscribe(t, "e1")  # subscribing again after the last one left works
    await ready(again)
    await bus.publish(t, [event(1)])
    assert [e.seq for e in await take(again, 1)] == [1]
    await again.aclose()  # type: ignore[attr-defined]


# -- Redis only: the replay stream ---------------------------------------------------------------------
async def test_the_stream_refuses_duplicates_and_a_duplicate_is_not_delivered_live_again(
    redis_prefix: tuple[Redis, str],
) -> None:
    client, prefix = redis_prefix
    bus = RedisEventBus(client, prefix=prefix, retention_after_end=120)
    t = tenant()
    sub = bus.subscribe(t, "e1")
    await sub.ready()
    events = run(5)
    await bus.publish(t, events[:3])
    await bus.publish(t, events[:3])  # a retried batch
    await bus.publish(t, [events[1]])  # an old event late
    key = bus.stream_key(t, "e1")
    assert await client.pttl(key) > 120_000  # running: the long TTL
    await bus.publish(t, events[3:])
    assert [e.seq for e in await drain_until_final(sub)] == [1, 2, 3, 4, 5]
    assert await bus.replay(t, "e1") == events
    assert [e.seq for e in await bus.replay(t, "e1", after_seq=3)] == [4, 5]
    assert [e.seq for e in await bus.replay(t, "e1", after_seq=1, limit=2)] == [2, 3]
    assert 0 < await client.pttl(key) <= 120_000  # ended: expires after the retention
    await sub.aclose()
    await bus.aclose()


async def drain_until_final(sub: AsyncIterator[ExecutionEvent]) -> list[ExecutionEvent]:
    out: list[ExecutionEvent] = []
    while not out or not out[-1].kind.is_terminal_run:
        out.extend(await take(sub, 1))
    return out


async def test_the_stream_is_capped(redis_prefix: tuple[Redis, str]) -> None:
    client, prefix = redis_prefix
    bus = RedisEventBus(client, prefix=prefix, stream_maxlen=10)
    t = tenant()
    for start in range(1, 1001, 100):
        await bus.publish(t, [event(s) for s in range(start, start + 100)])
    kept = await bus.replay(t, "e1", limit=2000)
    assert len(kept) < 1000  # approximate trimming keeps a little more than 10, never everything
    assert kept[-1].seq == 1000
    assert [e.seq for e in kept] == list(range(kept[0].seq, 1001))
    await bus.aclose()


# -- Redis only: replay-first log store ----------------------------------------------------------------
class CountingLog:
    """The durable tenant log store, counting the reads that reach it."""

    def __init__(self, inner: TenantLogStore) -> None:
        self.inner = inner
        self.reads = 0

    async def events_after(self, execution_id: str, after_seq: int = 0, limit: int = 1000) -> list[ExecutionEvent]:
        self.reads += 1
        return await self.inner.events_after(execution_id, after_seq, limit)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@dataclass
class Durable:
    store: SqlLogStore
    tenant_id: str


@pytest.fixture
async def durable(tmp_path: Path) -> AsyncIterator[Durable]:
    database = SqliteDatabase(f"sqlite+aiosqlite:///{tmp_path / 'log.db'}")
    await database.create_platform_schema()
    t = tenant()
    await database.create_tenant(t)
    store = SqlLogStore(database, owns_database=True)
    try:
        yield Durable(store, t)
    finally:
        await store.close()


async def test_replay_first_serves_contiguous_stream_ranges_and_falls_back_to_the_durable_log(
    redis_prefix: tuple[Redis, str], durable: Durable,
) -> None:
    client, prefix = redis_prefix
    t = durable.tenant_id
    bus = RedisEventBus(client, prefix=prefix)
    events = run(8)
    await durable.store.for_tenant(t).append_events(events)  # the recorder's order: the log first, then the bus
    await bus.publish(t, events[3:])  # the stream holds 4..8 only (say it was trimmed)
    replay_first = ReplayFirstLogStore(client, durable.store, prefix=prefix)
    store = replay_first.for_tenant(t)
    counting = CountingLog(durable.store.for_tenant(t))
    store._durable = counting  # observe which reads reach the durable store

    assert [e.seq for e in await store.events_after("e1", 3)] == [4, 5, 6, 7, 8]
    assert await store.events_after("e1", 5, limit=2) == events[5:7]
    assert counting.reads == 0
    assert await store.events_after("e1", 0) == events  # the stream starts too late: the durable log
    assert counting.reads == 1
    assert await store.events_after("e1", 8) == []  # nothing after the end in the stream: asks the log
    assert counting.reads == 2
    assert await store.events_after("other-execution", 0) == []
    # a hole in the stream ends the answer early; the next read (from the hole) goes to the durable log
    await client.xdel(bus.stream_key(t, "e1"), "6-1")
    assert [e.seq for e in await store.events_after("e1", 3)] == [4, 5]
    assert counting.reads == 3
    assert [e.seq for e in await store.events_after("e1", 5)] == [6, 7, 8]
    assert counting.reads == 4
    # after the stream expired, everything comes from the durable log
    await client.delete(bus.stream_key(t, "e1"))
    assert await store.events_after("e1", 3) == events[3:]
    await bus.aclose()


# -- Redis only: two API instances -----------------------------------------------------------------------
async def test_two_instances_each_get_every_event_once_in_order(redis_prefix: tuple[Redis, str]) -> None:
    _, prefix = redis_prefix
    clients = [create_redis(REDIS_URL) for _ in range(3)]
    api_a, api_b = (RedisEventBus(c, prefix=prefix) for c in clients[:2])
    worker = RedisEventBus(clients[2], prefix=prefix)  # the publisher: a worker process
    t = tenant()
    try:
        sub_a, sub_b = api_a.subscribe(t, "e1"), api_b.subscribe(t, "e1")
        await sub_a.ready()
        await sub_b.ready()
        events = run(60)
        for start in range(0, 60, 7):
            await worker.publish(t, events[start:start + 7])
        got_a, got_b = await asyncio.gather(drain_until_final(sub_a), drain_until_final(sub_b))
        assert got_a == events
        assert got_b == events
        await sub_a.aclose()
        await sub_b.aclose()
    finally:
        for bus in (api_a, api_b, worker):
            await bus.aclose()
        for c in clients:
            await c.aclose()


async def test_a_watcher_reconnecting_to_another_instance_with_last_seq_gets_every_event_once(
    redis_prefix: tuple[Redis, str], durable: Durable,
) -> None:
    """``watch_execution`` (the WebSocket's loop) over ``ReplayFirstLogStore``: the run is written like the
    recorder does (durable log, then the bus) by a worker; a client watches through API instance A, drops
    after a few events, and reconnects through instance B with its last seq while the run goes on."""
    _, prefix = redis_prefix
    clients = [create_redis(REDIS_URL) for _ in range(3)]
    api_a, api_b = (RedisEventBus(c, prefix=prefix) for c in clients[:2])
    worker_bus = RedisEventBus(clients[2], prefix=prefix)
    t = durable.tenant_id
    log_a = ReplayFirstLogStore(clients[0], durable.store, prefix=prefix)
    log_b = ReplayFirstLogStore(clients[1], durable.store, prefix=prefix)
    events = run(40)
    half_seen = asyncio.Event()
    resume = asyncio.Event()

    async def worker() -> None:
        for start in range(0, 40, 4):
            batch = events[start:start + 4]
            await durable.store.for_tenant(t).append_events(batch)
            await worker_bus.publish(t, batch)
            if start == 12:
                await half_seen.wait()  # the first connection has seen events; it drops now
                resume.set()
            await asyncio.sleep(0)

    received: list[ExecutionEvent] = []
    try:
        running = asyncio.create_task(worker())
        first = watch_execution(t, "e1", 0, logstore=log_a, bus=api_a, quiet=0.5)
        async for e in first:
            received.append(e)
            if e.seq == 10:
                half_seen.set()
                break
        await first.aclose()
        await resume.wait()
        last_seq = received[-1].seq
        async for e in watch_execution(t, "e1", last_seq, logstore=log_b, bus=api_b, quiet=0.5):
            received.append(e)
        await running
    finally:
        for bus in (api_a, api_b, worker_bus):
            await bus.aclose()
        for c in clients:
            await c.aclose()
    assert [e.seq for e in received] == list(range(1, 41))
    assert received == events


async def test_publishing_while_redis_is_unreachable_does_not_fail_the_run() -> None:
    client = create_redis("redis://127.0.0.1:1/0")  # nothing listens there
    bus = RedisEventBus(client, prefix=f"crewflow-test-{uuid.uuid4().hex[:12]}")
    try:
        await bus.publish(tenant(), run(3))  # logged, not raised: the durable log has the events
    finally:
        await bus.aclose()
        await client.aclose()
