"""The in-process job queue, the in-memory event bus, and ``watch_execution``'s exactly-once merge of the
replay log with the live feed (fakes of the log store port, no database)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import pytest

from crewflow.adapters.memory.bus import MemoryEventBus
from crewflow.adapters.memory.queue import InProcessJobQueue
from crewflow.application.executions import watch_execution
from crewflow.domain.events import EventKind, ExecutionEvent
from crewflow.ports.queue import RunExecution

pytestmark = pytest.mark.unit


def event(seq: int, kind: EventKind = EventKind.NODE_LOG, execution_id: str = "e1") -> ExecutionEvent:
    return ExecutionEvent(execution_id, seq, kind, float(seq), None if kind.is_terminal_run else "n", {})


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


# -- bus -----------------------------------------------------------------------------------------------------
async def test_the_bus_delivers_from_the_moment_of_subscription_and_never_across_tenants() -> None:
    bus = MemoryEventBus()
    mine = bus.subscribe("t1", "e1")
    theirs = bus.subscribe("t2", "e1")  # the same execution id in another tenant
    await bus.publish("t1", [event(1), event(2)])  # before anyone iterates: still received
    await bus.publish("t2", [event(9)])
    assert [(await anext(mine)).seq, (await anext(mine)).seq] == [1, 2]
    assert (await anext(theirs)).seq == 9
    await bus.publish("t1", [event(3, EventKind.NODE_LOG, "other-execution")])
    await mine.aclose()
    await theirs.aclose()
    assert bus.subscriber_count("t1", "e1") == bus.subscriber_count("t2", "e1") == 0


async def test_a_subscriber_that_falls_behind_is_dropped_and_its_feed_ends() -> None:
    bus = MemoryEventBus(max_queue=2)
    slow = bus.subscribe("t1", "e1")
    await bus.publish("t1", [event(1), event(2), event(3)])
    assert [e.seq async for e in slow] == [1, 2]  # ends early: the consumer catches up from the log
    assert bus.subscriber_count("t1", "e1") == 0


# -- queue ---------------------------------------------------------------------------------------------------
class Recorder:
    def __init__(self) -> None:
        self.started: list[str] = []
        self.cancelled_at_start: list[str] = []
        self.interrupted: list[str] = []
        self.gate = asyncio.Event()
        self.cancel_seen: dict[str, asyncio.Event] = {}

    async def __call__(self, job: RunExecution, cancel: asyncio.Event) -> None:
        self.started.append(job.execution_id)
        if cancel.is_set():
            self.cancelled_at_start.append(job.execution_id)
            return
        try:
            waiter = asyncio.ensure_future(cancel.wait())
            gate = asyncio.ensure_future(self.gate.wait())
            await asyncio.wait({waiter, gate}, return_when=asyncio.FIRST_COMPLETED)
            if cancel.is_set():
                self.cancel_seen.setdefault(job.execution_id, asyncio.Event()).set()
            waiter.cancel()
            gate.cancel()
        except asyncio.CancelledError:
            self.interrupted.append(job.execution_id)
            raise


async def test_enqueuing_an_execution_twice_runs_it_once_and_concurrency_is_bounded() -> None:
    handler = Recorder()
    queue = InProcessJobQueue(handler, concurrency=2)
    await queue.start()
    for execution_id in ("a", "a", "b", "c", "d"):
        await queue.enqueue(RunExecution("t1", execution_id))
    await settle()
    assert handler.started == ["a", "b"]  # two workers, FIFO; the duplicate "a" was not queued again
    handler.gate.set()
    while queue.holds("t1", "d"):
        await asyncio.sleep(0)
    assert handler.started == ["a", "b", "c", "d"]
    await queue.close()


async def test_cancel_reaches_running_and_queued_jobs_and_close_interrupts_the_rest() -> None:
    handler = Recorder()
    queue = InProcessJobQueue(handler, concurrency=1)
    await queue.start()
    await queue.enqueue(RunExecution("t1", "running"))
    await queue.enqueue(RunExecution("t1", "queued"))
    await settle()
    assert await queue.cancel("t1", "queued")
    assert await queue.cancel("t1", "running")
    assert not await queue.cancel("t2", "running")  # another tenant's id is not this job
    assert not await queue.cancel("t1", "unknown")
    while queue.holds("t1", "queued"):
        await asyncio.sleep(0)
    assert handler.cancel_seen["running"].is_set()
    assert handler.cancelled_at_start == ["queued"]
    await queue.enqueue(RunExecution("t1", "last"))
    await settle()
    await queue.close()
    assert handler.interrupted == ["last"]
    with pytest.raises(RuntimeError):
        await queue.enqueue(RunExecution("t1", "after-close"))


# -- watch ---------------------------------------------------------------------------------------------------
class ListLog:
    """A ``TenantLogStore`` fake (only what ``watch_execution`` uses). ``snapshots``: what each successive
    read sees (the last one stays), i.e. the log growing while the run goes on."""

    def __init__(self, *snapshots: Sequence[ExecutionEvent]) -> None:
        self.snapshots = [list(s) for s in snapshots]

    @property
    def events(self) -> list[ExecutionEvent]:
        return self.snapshots[-1]

    def for_tenant(self, tenant_id: str) -> ListLog:
        return self

    async def events_after(self, execution_id: str, after_seq: int = 0, limit: int = 1000) -> list[ExecutionEvent]:
        current = self.snapshots[0] if len(self.snapshots) == 1 else self.snapshots.pop(0)
        return [e for e in current if e.execution_id == execution_id and e.seq > after_seq][:limit]


class ScriptedBus:
    """An ``EventBus`` fake: every subscription gets ``feed``, then ends (or, ``deaf``, never ends)."""

    def __init__(self, feed: Sequence[ExecutionEvent] = (), *, deaf: bool = False) -> None:
        self.feed = list(feed)
        self.deaf = deaf
        self.subscriptions = 0

    async def publish(self, tenant_id: str, events: Sequence[ExecutionEvent]) -> None:
        raise NotImplementedError

    def subscribe(self, tenant_id: str, execution_id: str) -> AsyncIterator[ExecutionEvent]:
        self.subscriptions += 1

        async def feed() -> AsyncIterator[ExecutionEvent]:
            for item in self.feed:
                yield item
            if self.deaf:
                await asyncio.Event().wait()

        return feed()


END = EventKind.RUN_COMPLETED


async def test_watch_drops_what_the_replay_gave_and_fills_a_live_gap_from_the_log() -> None:
    log = ListLog([event(1), event(2)], [event(1), event(2), event(3), event(4), event(5, END)])
    bus = ScriptedBus([event(2), event(3), event(5, END)], deaf=True)  # repeats 2, loses 4
    seen = [e.seq async for e in watch_execution("t1", "e1", logstore=log, bus=bus, quiet=None)]
    assert seen == [1, 2, 3, 4, 5]


async def test_watch_subscribes_again_when_the_bus_drops_it() -> None:
    log = ListLog([event(1), event(2)], [event(1), event(2), event(3), event(4, END)])
    bus = ScriptedBus([event(2)])  # the feed ends early, as for a slow subscriber
    seen = [e.seq async for e in watch_execution("t1", "e1", 1, logstore=log, bus=bus, quiet=None)]
    assert seen == [2, 3, 4]
    assert bus.subscriptions == 2


async def test_watch_reads_the_log_again_when_the_live_feed_is_quiet() -> None:
    log = ListLog([event(1), event(2)])
    bus = ScriptedBus(deaf=True)  # e.g. the run happens in a process this bus does not reach
    watcher = watch_execution("t1", "e1", logstore=log, bus=bus, quiet=0.01)
    assert [(await anext(watcher)).seq, (await anext(watcher)).seq] == [1, 2]
    log.events.extend([event(3), event(4, EventKind.RUN_FAILED)])
    assert [e.seq async for e in watcher] == [3, 4]
