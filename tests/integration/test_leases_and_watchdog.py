"""Execution leases, crash-safe resume and the watchdog/cleanup, on SQLite and PostgreSQL with the in-process
queue: two runners never run one execution together, a runner whose lease expired is taken over and the run
resumes (completed nodes never again, the in-flight node once more with the same idempotency key), the
watchdog re-enqueues or fails abandoned executions, and the retention purge deletes only old data of the
tenants it is given. Multi-process kill -9 runs are in test_worker_kill9.py."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from crewflow.adapters.memory.bus import MemoryEventBus
from crewflow.adapters.memory.queue import InProcessJobQueue
from crewflow.adapters.runtime import ScriptedRuntime
from crewflow.adapters.sql.checkpoints import CheckpointSink
from crewflow.adapters.sql.logstore import SqlLogStore
from crewflow.adapters.sql.uow import SqlUnitOfWorkFactory
from crewflow.adapters.system import SystemClock, UuidGenerator
from crewflow.application.engine import Engine
from crewflow.application.executions import ExecutionRecorder, ExecutionRunner
from crewflow.application.watchdog import (
    count_starts,
    purge_expired,
    recover_expired,
    retention_days_from,
)
from crewflow.domain.events import EventKind, ExecutionEvent
from crewflow.domain.execution import Execution, FlowRecord, IdempotencyRecord, NodeRun
from crewflow.domain.logs import AuditEntry, ChatMessageRecord
from crewflow.domain.scheduler import NodeStatus, RunStatus
from crewflow.ports.clock import Clock
from crewflow.ports.queue import RunExecution
from crewflow.ports.runtime import AgentWork, CrewWork, NodeEmitter, NodeOutcome

pytestmark = pytest.mark.integration

NewTenant = Callable[[], Awaitable[str]]
AGENT = {"role": "Writer", "goal": "Write", "provider": "scripted"}
CHAIN = {
    "id": "chain",
    "agents": {"w": AGENT},
    "nodes": [
        {"id": "in", "kind": "input"},
        {"id": "a", "kind": "agent", "agent": "w", "task": "step a"},
        {"id": "b", "kind": "agent", "agent": "w", "task": "step b"},
        {"id": "c", "kind": "agent", "agent": "w", "task": "step c"},
        {"id": "out", "kind": "output"},
    ],
    "edges": ["in -> a", "a -> b", "b -> c", "c -> out"],
}
DAY = 86_400.0


class CountingRuntime:
    """An agent runtime that records every call (node, idempotency key, attempt) and can hold a node until
    its gate opens, so a test knows exactly which node is in flight."""

    def __init__(self, hold: str | None = None) -> None:
        self.calls: list[tuple[str, str, int]] = []
        self.started: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self.gate = asyncio.Event()
        self.hold = hold

    async def run_agent(self, work: AgentWork, emit: NodeEmitter) -> NodeOutcome:
        return await self._run(work.node_id, work.idempotency_key, work.attempt)

    async def run_crew(self, work: CrewWork, emit: NodeEmitter) -> NodeOutcome:
        return await self._run(work.node_id, work.idempotency_key, work.attempt)

    async def _run(self, node_id: str, key: str, attempt: int) -> NodeOutcome:
        self.calls.append((node_id, key, attempt))
        self.started[node_id].set()
        if node_id == self.hold:
            await self.gate.wait()
        return NodeOutcome(output=f"{node_id} done")

    def nodes(self) -> list[str]:
        return [node for node, _, _ in self.calls]


@dataclass
class OffsetClock:
    """The system clock moved by ``offset`` seconds: a worker living later than the others."""

    offset: float = 0.0

    def now(self) -> float:
        return SystemClock().now() + self.offset


@dataclass
class FixedClock:
    at: float

    def now(self) -> float:
        return self.at


@dataclass
class ListQueue:
    """A ``JobQueue`` that only keeps what was enqueued (for checks of what the watchdog decided)."""

    jobs: list[RunExecution] = field(default_factory=list)

    async def enqueue(self, job: RunExecution) -> None:
        self.jobs.append(job)

    async def cancel(self, tenant_id: str, execution_id: str) -> bool:
        return False

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None


@dataclass
class World:
    uow_factory: SqlUnitOfWorkFactory
    tenant: str
    logstore: SqlLogStore
    bus: MemoryEventBus = field(default_factory=MemoryEventBus)

    def recorder(self, clock: Clock | None = None) -> ExecutionRecorder:
        return ExecutionRecorder(
            lambda tenant_id: CheckpointSink(self.uow_factory, tenant_id, store_events=True),
            self.logstore, self.bus, clock or SystemClock(), checkpoints_store_events=True,
        )  # fmt: skip

    def runner(self, runtime: CountingRuntime | ScriptedRuntime, worker_id: str, *, lease: float = 30.0,
               clock: Clock | None = None) -> ExecutionRunner:  # fmt: skip
        engine = Engine(runtime, clock=SystemClock(), ids=UuidGenerator())
        return ExecutionRunner(self.uow_factory, engine, self.recorder(clock), worker_id=worker_id,
                               lease_seconds=lease)  # fmt: skip

    async def add_execution(self, execution_id: str, *, created_at: float | None = None,
                            status: RunStatus = RunStatus.PENDING) -> RunExecution:  # fmt: skip
        async with self.uow_factory.for_tenant(self.tenant) as uow:
            await uow.executions.add(Execution(execution_id, "chain", 1, created_at=created_at or SystemClock().now(),
                                               status=status))  # fmt: skip
            await uow.commit()
        return RunExecution(self.tenant, execution_id)

    async def execution(self, execution_id: str) -> Execution:
        async with self.uow_factory.for_tenant(self.tenant) as uow:
            return await uow.executions.get(execution_id)

    async def node_runs(self, execution_id: str) -> dict[str, NodeRun]:
        async with self.uow_factory.for_tenant(self.tenant) as uow:
            page = await uow.node_runs.list_for_execution(execution_id)
        return {run.node_id: run for run in page.items}

    async def events(self, execution_id: str) -> list[ExecutionEvent]:
        return await self.logstore.for_tenant(self.tenant).events_after(execution_id)


@pytest.fixture
async def world(uow_factory: SqlUnitOfWorkFactory, new_tenant: NewTenant) -> World:
    tenant = await new_tenant()
    async with uow_factory.for_tenant(tenant) as uow:
        await uow.flows.add(FlowRecord("chain", "Chain", 1.0, 1.0), CHAIN)
        await uow.commit()
    return World(uow_factory, tenant, SqlLogStore(uow_factory.database))


def assert_one_clean_log(events: list[ExecutionEvent], final: EventKind) -> None:
    """Seqs 1..n without gap or repeat, exactly one terminal event, at the end."""
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    terminal = [e for e in events if e.node_id is None and e.kind.is_terminal_run]
    assert [e.kind for e in terminal] == [final]
    assert events[-1] is terminal[0]


# -- leases --------------------------------------------------------------------------------------------------
async def test_two_runners_competing_for_one_execution_run_it_once(world: World) -> None:
    job = await world.add_execution("e-race")
    first, second = CountingRuntime(), CountingRuntime()
    await asyncio.gather(world.runner(first, "worker-1", lease=3.0)(job, asyncio.Event()),
                         world.runner(second, "worker-2", lease=3.0)(job, asyncio.Event()))  # fmt: skip
    assert sorted([first.nodes(), second.nodes()]) == [[], ["a", "b", "c"]]
    execution = await world.execution("e-race")
    assert execution.status == RunStatus.COMPLETED
    assert (execution.worker_id, execution.lease_expires_at) == (None, None)  # released at the end
    events = await world.events("e-race")
    assert_one_clean_log(events, EventKind.RUN_COMPLETED)
    assert await count_starts(world.logstore, world.tenant, "e-race") == 1


async def test_a_job_for_an_execution_another_live_worker_holds_is_dropped(world: World) -> None:
    job = await world.add_execution("e-held")
    holder, late = CountingRuntime(hold="b"), CountingRuntime()
    running = asyncio.create_task(world.runner(holder, "holder", lease=3.0)(job, asyncio.Event()))
    await asyncio.wait_for(holder.started["b"].wait(), 30)
    # the late runner waits out one lease (the holder might have died), sees it renewed, and gives up
    await world.runner(late, "late", lease=3.0)(job, asyncio.Event())
    assert late.calls == []
    assert (await world.execution("e-held")).worker_id == "holder"
    holder.gate.set()
    await asyncio.wait_for(running, 30)
    assert holder.nodes() == ["a", "b", "c"]
    assert (await world.execution("e-held")).status == RunStatus.COMPLETED


async def test_a_job_retried_while_a_dead_workers_lease_runs_out_waits_for_it_and_runs(world: World) -> None:
    job = await world.add_execution("e-retried")
    now = SystemClock().now()
    async with world.uow_factory.for_tenant(world.tenant) as uow:  # a worker that died a moment ago
        assert await uow.executions.claim("e-retried", "dead", until=now + 1.0, now=now)
        await uow.commit()
    runtime = CountingRuntime()
    await world.runner(runtime, "retry", lease=5.0)(job, asyncio.Event())
    assert runtime.nodes() == ["a", "b", "c"]
    assert (await world.execution("e-retried")).status == RunStatus.COMPLETED


async def test_a_job_is_dropped_at_once_when_the_holders_lease_is_longer_than_its_own(world: World) -> None:
    job = await world.add_execution("e-long-lease")
    now = SystemClock().now()
    async with world.uow_factory.for_tenant(world.tenant) as uow:
        assert await uow.executions.claim("e-long-lease", "other", until=now + 3600, now=now)
        await uow.commit()
    runtime = CountingRuntime()
    await world.runner(runtime, "short", lease=5.0)(job, asyncio.Event())
    assert runtime.calls == []
    assert (await world.execution("e-long-lease")).worker_id == "other"


async def test_a_runner_whose_lease_expired_is_taken_over_and_the_run_resumes_where_it_was(world: World) -> None:
    job = await world.add_execution("e-takeover")
    stalled = CountingRuntime(hold="b")  # node b never finishes on the first worker
    first = asyncio.create_task(world.runner(stalled, "first", lease=0.9)(job, asyncio.Event()))
    await asyncio.wait_for(stalled.started["b"].wait(), 30)
    assert (await world.node_runs("e-takeover"))["b"].status == NodeStatus.RUNNING  # b's start is checkpointed

    # a second worker whose clock is far past the first one's lease: to it, that lease has expired
    fresh = CountingRuntime()
    await world.runner(fresh, "second", lease=30.0, clock=OffsetClock(3600.0))(job, asyncio.Event())
    # the first worker's next renewal finds the lease taken: it interrupts its run and writes nothing more
    await asyncio.wait_for(first, 30)

    assert stalled.nodes() == ["a", "b"]
    assert fresh.nodes() == ["b", "c"]  # a completed before: never again; b was in flight: once more
    first_b = next(call for call in stalled.calls if call[0] == "b")
    second_b = next(call for call in fresh.calls if call[0] == "b")
    assert first_b[1] == second_b[1] == "e-takeover:b"  # the same idempotency key both times
    execution = await world.execution("e-takeover")
    assert execution.status == RunStatus.COMPLETED
    assert execution.outputs == {"out": "c done"}
    assert execution.worker_id is None
    events = await world.events("e-takeover")
    assert_one_clean_log(events, EventKind.RUN_COMPLETED)  # nothing of the first worker's interruption
    assert await count_starts(world.logstore, world.tenant, "e-takeover") == 2
    runs = await world.node_runs("e-takeover")
    assert {node: run.status for node, run in runs.items()} == dict.fromkeys(
        ["in", "a", "b", "c", "out"], NodeStatus.COMPLETED)  # fmt: skip


async def test_a_worker_that_lost_its_lease_stops_writing_at_its_next_renewal(world: World) -> None:
    job = await world.add_execution("e-cut-off")
    runtime = CountingRuntime(hold="b")
    runner = world.runner(runtime, "cut-off", lease=0.9)
    task = asyncio.create_task(runner(job, asyncio.Event()))
    await asyncio.wait_for(runtime.started["b"].wait(), 30)
    last_seq = (await world.execution("e-cut-off")).last_seq
    # another worker took the execution over (its lease expired meanwhile, seen from that worker's clock)
    async with world.uow_factory.for_tenant(world.tenant) as uow:
        assert await uow.executions.claim("e-cut-off", "other", until=SystemClock().now() + 3600,
                                          now=SystemClock().now() + 3600)  # fmt: skip
        await uow.commit()
    await asyncio.wait_for(task, 30)  # the renewal fails, the run is interrupted
    execution = await world.execution("e-cut-off")
    assert (execution.status, execution.last_seq, execution.worker_id) == (RunStatus.RUNNING, last_seq, "other")
    assert [e.seq for e in await world.events("e-cut-off")][-1] == last_seq  # no "cancelled" written over it


class _RenewalsFail:
    """A unit of work whose lease renewals fail like an unreachable database; everything else is real."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    async def __aenter__(self) -> _RenewalsFail:
        await self._inner.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self._inner.__aexit__(*exc)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    @property
    def executions(self) -> Any:
        repository = self._inner.executions

        class Repository:
            def __getattr__(self, name: str) -> Any:
                return getattr(repository, name)

            async def renew(self, *args: Any, **kwargs: Any) -> bool:
                raise ConnectionError("the database is unreachable")

        return Repository()


@dataclass
class RenewalsFailFactory:
    inner: SqlUnitOfWorkFactory

    def for_tenant(self, tenant_id: str) -> Any:
        return _RenewalsFail(self.inner.for_tenant(tenant_id))

    def platform(self) -> Any:
        return self.inner.platform()


async def test_a_worker_that_cannot_renew_stops_writing_before_its_lease_ends(world: World) -> None:
    job = await world.add_execution("e-unreachable")
    runtime = CountingRuntime(hold="b")
    engine = Engine(runtime, clock=SystemClock(), ids=UuidGenerator())
    runner = ExecutionRunner(RenewalsFailFactory(world.uow_factory), engine, world.recorder(),
                             worker_id="cut-off", lease_seconds=0.9)  # fmt: skip
    task = asyncio.create_task(runner(job, asyncio.Event()))
    await asyncio.wait_for(runtime.started["b"].wait(), 30)
    claimed = await world.execution("e-unreachable")
    await asyncio.wait_for(task, 30)  # no renewal gets through: at 5/6 of the lease the run stops itself
    execution = await world.execution("e-unreachable")
    assert execution.status == RunStatus.RUNNING  # no "cancelled" written: a successor resumes it
    assert execution.last_seq == claimed.last_seq
    assert (execution.worker_id, execution.lease_expires_at) == ("cut-off", claimed.lease_expires_at)
    assert [e.seq for e in await world.events("e-unreachable")][-1] == claimed.last_seq


async def test_a_worker_shutting_down_leaves_the_run_to_its_successor_when_asked_to(world: World) -> None:
    job = await world.add_execution("e-shutdown")
    runtime = CountingRuntime(hold="b")
    engine = Engine(runtime, clock=SystemClock(), ids=UuidGenerator())
    stopping = ExecutionRunner(world.uow_factory, engine, world.recorder(), worker_id="stopping",
                               resume_on_shutdown=True)  # fmt: skip
    task = asyncio.create_task(stopping(job, asyncio.Event()))
    await asyncio.wait_for(runtime.started["b"].wait(), 30)
    before = await world.execution("e-shutdown")
    task.cancel()  # the worker shuts down
    with pytest.raises(asyncio.CancelledError):
        await task
    after = await world.execution("e-shutdown")
    assert (after.status, after.last_seq) == (RunStatus.RUNNING, before.last_seq)  # nothing recorded
    assert (after.worker_id, after.lease_expires_at) == (None, None)  # released: the next worker claims at once

    successor = CountingRuntime()
    await world.runner(successor, "successor")(job, asyncio.Event())
    assert successor.nodes() == ["b", "c"]
    assert (await world.execution("e-shutdown")).status == RunStatus.COMPLETED
    assert_one_clean_log(await world.events("e-shutdown"), EventKind.RUN_COMPLETED)


async def test_by_default_a_worker_shutting_down_records_the_run_interrupted(world: World) -> None:
    job = await world.add_execution("e-embedded")
    runtime = CountingRuntime(hold="b")
    task = asyncio.create_task(world.runner(runtime, "embedded")(job, asyncio.Event()))
    await asyncio.wait_for(runtime.started["b"].wait(), 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    execution = await world.execution("e-embedded")
    assert (execution.status, execution.error, execution.worker_id) == (RunStatus.CANCELLED, "interrupted", None)
    assert_one_clean_log(await world.events("e-embedded"), EventKind.RUN_CANCELLED)


# -- the watchdog ------------------------------------------------------------------------------------------
async def _abandon_mid_run(world: World, execution_id: str, *, created_at: float | None = None) -> None:
    """The state a kill -9 leaves: a and b's start checkpointed, then nothing; the lease runs out."""
    job = await world.add_execution(execution_id, created_at=created_at)
    runtime = CountingRuntime(hold="b")
    task = asyncio.create_task(world.runner(runtime, "doomed", lease=0.9)(job, asyncio.Event()))
    await asyncio.wait_for(runtime.started["b"].wait(), 30)
    now = SystemClock().now()
    async with world.uow_factory.for_tenant(world.tenant) as uow:  # a "dead" holder whose lease ran out
        assert await uow.executions.claim(execution_id, "dead", until=now - 1, now=now + 3600)
        await uow.commit()
    await asyncio.wait_for(task, 30)  # the real runner sees it lost the lease and stops without writing
    execution = await world.execution(execution_id)
    assert (execution.status, execution.worker_id) == (RunStatus.RUNNING, "dead")


async def test_the_watchdog_requeues_an_abandoned_run_which_resumes_on_a_live_worker(world: World) -> None:
    await _abandon_mid_run(world, "e-rescued")
    runtime = CountingRuntime()
    queue = InProcessJobQueue(world.runner(runtime, "live"), concurrency=1)
    await queue.start()
    try:
        report = await recover_expired([world.tenant], uow_factory=world.uow_factory, queue=queue,
                                       recorder=world.recorder(), clock=SystemClock())  # fmt: skip
        assert report.requeued == ((world.tenant, "e-rescued"),)
        assert report.failed == ()
        for _ in range(300):
            if (await world.execution("e-rescued")).status.is_terminal:
                break
            await asyncio.sleep(0.05)
    finally:
        await queue.close()
    assert runtime.nodes() == ["b", "c"]
    assert (await world.execution("e-rescued")).status == RunStatus.COMPLETED
    assert_one_clean_log(await world.events("e-rescued"), EventKind.RUN_COMPLETED)
    # nothing is left to rescue
    again = await recover_expired([world.tenant], uow_factory=world.uow_factory, queue=ListQueue(),
                                  recorder=world.recorder(), clock=SystemClock())  # fmt: skip
    assert (again.requeued, again.failed) == ((), ())


async def test_the_watchdog_fails_a_run_that_died_too_often_or_is_too_old(world: World) -> None:
    await _abandon_mid_run(world, "e-crashy")
    await _abandon_mid_run(world, "e-ancient", created_at=SystemClock().now() - 3 * DAY)
    queue = ListQueue()
    report = await recover_expired([world.tenant], uow_factory=world.uow_factory, queue=queue,
                                   recorder=world.recorder(), clock=SystemClock(),
                                   max_recoveries=0, max_age=DAY)  # fmt: skip
    assert sorted(report.failed) == [(world.tenant, "e-ancient"), (world.tenant, "e-crashy")]
    assert (report.requeued, queue.jobs) == ((), [])
    for execution_id, words in (("e-crashy", "1 attempt"), ("e-ancient", "within 86400 s")):
        execution = await world.execution(execution_id)
        assert execution.status == RunStatus.FAILED
        assert execution.error is not None
        assert words in execution.error
        assert execution.worker_id is None
        events = await world.events(execution_id)
        assert_one_clean_log(events, EventKind.RUN_FAILED)
        assert events[-1].data["starts"] == 1


async def test_the_watchdog_leaves_live_leases_and_fresh_jobs_alone_and_requeues_lost_jobs(world: World) -> None:
    now = SystemClock().now()
    await world.add_execution("e-fresh")  # just enqueued: its worker has not claimed it yet
    await world.add_execution("e-lost", created_at=now - 3600)  # its job was lost before anyone claimed it
    await world.add_execution("e-live")
    async with world.uow_factory.for_tenant(world.tenant) as uow:
        assert await uow.executions.claim("e-live", "busy", until=now + 3600, now=now)
        await uow.commit()
    await world.add_execution("e-done", created_at=now - 3600, status=RunStatus.COMPLETED)
    queue = ListQueue()
    report = await recover_expired([world.tenant], uow_factory=world.uow_factory, queue=queue,
                                   recorder=world.recorder(), clock=SystemClock(), unclaimed_grace=600)  # fmt: skip
    assert (report.requeued, report.failed) == (((world.tenant, "e-lost"),), ())
    assert queue.jobs == [RunExecution(world.tenant, "e-lost")]
    assert (await world.execution("e-live")).worker_id == "busy"
    assert (await world.execution("e-lost")).worker_id is None  # released for the worker that takes the job


# -- retention -------------------------------------------------------------------------------------------------
async def test_purge_removes_only_data_older_than_the_retention_of_the_tenants_given(
    world: World, new_tenant: NewTenant
) -> None:
    now = 1_000 * DAY
    other = World(world.uow_factory, await new_tenant(), world.logstore)
    for place in (world, other):
        async with place.uow_factory.for_tenant(place.tenant) as uow:
            for execution_id, created, finished, status in (
                ("old-done", now - 40 * DAY, now - 40 * DAY, RunStatus.COMPLETED),
                ("old-failed", now - 35 * DAY, now - 34 * DAY, RunStatus.FAILED),
                ("recent-done", now - 40 * DAY, now - 2 * DAY, RunStatus.COMPLETED),  # ended recently: kept
                ("old-running", now - 40 * DAY, None, RunStatus.RUNNING),  # the watchdog's business, not purge's
            ):
                await uow.executions.add(Execution(execution_id, "chain", 1, created_at=created, status=status,
                                                   finished_at=finished))  # fmt: skip
                await uow.node_runs.save(NodeRun(execution_id, "a", NodeStatus.COMPLETED, output="x"))
            await uow.idempotency.add(IdempotencyRecord("old-key", "h", now - 31 * DAY))
            await uow.idempotency.add(IdempotencyRecord("new-key", "h", now - 1 * DAY))
            await uow.commit()
        logs = place.logstore.for_tenant(place.tenant)
        for execution_id in ("old-done", "old-failed", "recent-done", "old-running"):
            await logs.append_events([ExecutionEvent(execution_id, s, EventKind.NODE_LOG, now - 40 * DAY + s, "a")
                                      for s in (1, 2)])  # fmt: skip
        await logs.add_chat_message(ChatMessageRecord("m-old", "chat", "user", "hi", now - 31 * DAY))
        await logs.add_chat_message(ChatMessageRecord("m-new", "chat", "user", "hi", now - 29 * DAY))
        await logs.add_audit(AuditEntry("a-old", "flow.create", now - 300 * DAY))

    report = await purge_expired([world.tenant], uow_factory=world.uow_factory, logstore=world.logstore,
                                 clock=FixedClock(now), retention_days=30)  # fmt: skip
    assert (report.executions, report.events, report.chat_messages, report.idempotency_keys) == (2, 4, 1, 1)

    async with world.uow_factory.for_tenant(world.tenant) as uow:
        assert sorted(e.id for e in (await uow.executions.list()).items) == ["old-running", "recent-done"]
        assert await uow.node_runs.find("old-done", "a") is None
        assert await uow.node_runs.find("recent-done", "a") is not None
        assert await uow.idempotency.find("old-key") is None
        assert await uow.idempotency.find("new-key") is not None
    logs = world.logstore.for_tenant(world.tenant)
    assert await logs.events_after("old-done") == []
    assert len(await logs.events_after("recent-done")) == 2
    assert [m.id for m in (await logs.chat_messages("chat")).items] == ["m-new"]
    assert [a.id for a in (await logs.audit_entries()).items] == ["a-old"]  # audit entries are kept

    async with other.uow_factory.for_tenant(other.tenant) as uow:  # the tenant not given: untouched
        assert len((await uow.executions.list()).items) == 4
    assert len(await other.logstore.for_tenant(other.tenant).events_after("old-done")) == 2
    again = await purge_expired([world.tenant], uow_factory=world.uow_factory, logstore=world.logstore,
                                clock=FixedClock(now), retention_days=30)  # fmt: skip
    assert (again.executions, again.events, again.chat_messages, again.idempotency_keys) == (0, 0, 0, 0)


def test_the_retention_setting_defaults_to_30_days_and_refuses_nonsense() -> None:
    assert retention_days_from({}) == 30.0
    assert retention_days_from({"CREWFLOW_RETENTION_DAYS": "7.5"}) == 7.5
    for bad in ("0", "-1", "soon"):
        with pytest.raises(ValueError, match="CREWFLOW_RETENTION_DAYS"):
            retention_days_from({"CREWFLOW_RETENTION_DAYS": bad})


async def test_a_tenant_without_storage_is_skipped_and_the_others_still_get_their_pass(world: World) -> None:
    """A tenant listed while its schema/file is created or dropped must not stop the crons for everyone."""
    await _abandon_mid_run(world, "e-after-a-missing-tenant")
    queue = ListQueue()
    report = await recover_expired(["no-such-tenant", world.tenant], uow_factory=world.uow_factory, queue=queue,
                                   recorder=world.recorder(), clock=SystemClock())  # fmt: skip
    assert report.requeued == ((world.tenant, "e-after-a-missing-tenant"),)
    purged = await purge_expired(["no-such-tenant", world.tenant], uow_factory=world.uow_factory,
                                 logstore=world.logstore, clock=SystemClock(), retention_days=1)  # fmt: skip
    assert purged.executions == 0  # nothing old enough; the pass ran through both
