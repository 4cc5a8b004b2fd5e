"""``ArqJobQueue`` and ``CrewflowWorker`` on the real Redis (127.0.0.1:6379), workers in the test's loop.

Every test uses its own queue name and deletes its keys (and arq's keys of its job ids) afterwards."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import msgspec
import pytest
import redis.asyncio as aioredis

from crewflow.adapters.arq.queue import ArqJobQueue, QueueKeys, job_from_payload, job_payload
from crewflow.adapters.arq.worker import CrewflowWorker
from crewflow.entrypoints.worker import check_workers
from crewflow.ports.queue import BuildTool, RunExecution

pytestmark = pytest.mark.integration

REDIS_URL = "redis://127.0.0.1:6379/0"
WAIT = 10.0  # generous upper bound for something that should happen at once; never a latency assertion


@dataclass
class Recorder:
    """A job handler that records each call and, for jobs named in ``block``, waits until released or
    cancelled (then it returns normally, like ``ExecutionRunner`` recording the cancellation)."""

    calls: list[tuple[str, str]] = field(default_factory=list)  # (execution id, how it ended)
    started: dict[str, asyncio.Event] = field(default_factory=dict)
    ended: dict[str, asyncio.Event] = field(default_factory=dict)
    release: dict[str, asyncio.Event] = field(default_factory=dict)
    block: set[str] = field(default_factory=set)
    seen_cancelled_at_start: list[str] = field(default_factory=list)
    running_now: int = 0
    most_at_once: int = 0

    def _event(self, table: dict[str, asyncio.Event], key: str) -> asyncio.Event:
        return table.setdefault(key, asyncio.Event())

    async def __call__(self, job: RunExecution, cancel: asyncio.Event) -> None:
        key = job.execution_id
        if cancel.is_set():
            self.seen_cancelled_at_start.append(key)
        self._event(self.started, key).set()
        self.running_now += 1
        self.most_at_once = max(self.most_at_once, self.running_now)
        outcome = "done"
        try:
            if key in self.block:
                release = asyncio.ensure_future(self._event(self.release, key).wait())
                cancelled = asyncio.ensure_future(cancel.wait())
                try:
                    await asyncio.wait({release, cancelled}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    release.cancel()
                    cancelled.cancel()
                outcome = "cancelled" if cancel.is_set() else "released"
        except asyncio.CancelledError:
            outcome = "interrupted"
            raise
        finally:
            self.running_now -= 1
            self.calls.append((key, outcome))
            self._event(self.ended, key).set()

    def has_ended(self, key: str) -> bool:
        return self._event(self.ended, key).is_set()

    def free(self, key: str) -> None:
        """Let the blocked job ``key`` return (now, or as soon as it starts)."""
        self._event(self.release, key).set()

    async def wait_started(self, key: str) -> None:
        await asyncio.wait_for(self._event(self.started, key).wait(), WAIT)

    async def wait_ended(self, key: str) -> None:
        await asyncio.wait_for(self._event(self.ended, key).wait(), WAIT)


@pytest.fixture
async def redis_client() -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(REDIS_URL)
    yield client
    await client.aclose()


@pytest.fixture
async def queue_name(redis_client: aioredis.Redis) -> AsyncIterator[str]:
    name = f"crewflow-test:{uuid.uuid4().hex[:12]}"
    yield name
    keys = [key async for key in redis_client.scan_iter(match=f"{name}*")]
    if keys:
        await redis_client.delete(*keys)


@pytest.fixture
async def queue(queue_name: str, redis_client: aioredis.Redis) -> AsyncIterator[ArqJobQueue]:
    q = ArqJobQueue(REDIS_URL, queue_name=queue_name)
    await q.start()
    used: list[str] = []
    original = q.enqueue_new

    async def tracking(job: RunExecution) -> bool:
        used.append(job.execution_id)
        return await original(job)

    q.enqueue_new = tracking  # type: ignore[method-assign]
    yield q
    await q.close()
    keys = QueueKeys(queue_name)
    arq_keys = [k for job_id in used for k in (keys.job(job_id), keys.result(job_id), keys.in_progress(job_id),
                                                keys.retry(job_id))]  # fmt: skip
    if arq_keys:
        await redis_client.delete(*arq_keys)


WorkerFactory = Callable[..., Awaitable[CrewflowWorker]]


@pytest.fixture
async def start_worker(queue_name: str) -> AsyncIterator[WorkerFactory]:
    running: list[tuple[CrewflowWorker, asyncio.Task[None]]] = []

    async def start(handler: Recorder, **options: object) -> CrewflowWorker:
        worker = CrewflowWorker(handler, redis_url=REDIS_URL, queue_name=queue_name, **options)  # type: ignore[arg-type]
        task = asyncio.create_task(worker.serve())
        running.append((worker, task))
        while worker._pool is None or not worker._background:  # subscribed, first heartbeat sent
            if task.done():
                task.result()
            await asyncio.sleep(0.005)
        return worker

    yield start
    for worker, _ in running:
        worker.stop()
        worker.stop()  # no grace left
    await asyncio.gather(*(task for _, task in running), return_exceptions=True)


def new_job(tenant: str = "t1") -> RunExecution:
    return RunExecution(tenant, uuid.uuid4().hex, "req-1")


# -- serialization ------------------------------------------------------------------------------------------
def test_a_job_travels_as_json_and_unknown_fields_are_ignored() -> None:
    job = RunExecution("t", "e", None)
    payload = job_payload(job)
    decoded = msgspec.json.decode(msgspec.json.encode({**payload, "trace_context": {"traceparent": "00-x"},
                                                       "from_the_future": 1}))  # fmt: skip
    assert job_from_payload(decoded) == job


# -- enqueue ---------------------------------------------------------------------------------------------------
async def test_enqueuing_twice_runs_once_and_a_finished_execution_can_be_enqueued_again(
    queue: ArqJobQueue, start_worker: WorkerFactory
) -> None:
    handler = Recorder()
    job = new_job()
    handler.block.add(job.execution_id)
    assert await queue.enqueue_new(job) is True
    assert await queue.enqueue_new(job) is False  # queued: the same job id
    await start_worker(handler)
    await handler.wait_started(job.execution_id)
    assert await queue.enqueue_new(job) is False  # running
    handler.free(job.execution_id)
    await handler.wait_ended(job.execution_id)
    assert handler.calls == [(job.execution_id, "released")]

    # finished: no result is kept, so the watchdog (or a replayed request) can enqueue the execution again
    handler.ended.pop(job.execution_id)
    handler.started.pop(job.execution_id)
    handler.block.discard(job.execution_id)
    for _ in range(100):  # arq removes the finished job's key right after the handler returns
        if await queue.enqueue_new(job):
            break
        await asyncio.sleep(0.02)
    else:
        pytest.fail("the finished execution could not be enqueued again")
    await handler.wait_ended(job.execution_id)
    assert handler.calls == [(job.execution_id, "released"), (job.execution_id, "done")]


async def test_an_idle_worker_starts_a_job_on_the_wake_up_signal_not_the_fallback_poll(
    queue: ArqJobQueue, start_worker: WorkerFactory
) -> None:
    handler = Recorder()
    await start_worker(handler, poll_delay=600)  # the fallback poll would come in 10 minutes
    await asyncio.sleep(0.1)  # the worker is now blocked on the wake-up list
    job = new_job()
    await queue.enqueue(job)
    await handler.wait_started(job.execution_id)


async def test_a_full_worker_passes_the_wake_up_on_so_an_idle_one_takes_the_job(
    queue: ArqJobQueue, start_worker: WorkerFactory
) -> None:
    busy, idle = Recorder(), Recorder()
    first, second = new_job(), new_job()
    busy.block.add(first.execution_id)
    busy_worker = await start_worker(busy, concurrency=1, poll_delay=600)
    await queue.enqueue(first)
    await busy.wait_started(first.execution_id)
    idle_worker = await start_worker(idle, concurrency=1, poll_delay=600)
    await asyncio.sleep(0.1)
    await queue.enqueue(second)
    await idle.wait_ended(second.execution_id)
    assert idle.calls == [(second.execution_id, "done")]
    assert first.execution_id not in [c[0] for c in idle.calls]
    assert await queue.holder(first.execution_id) == busy_worker.worker_id
    assert busy_worker.worker_id != idle_worker.worker_id
    busy.free(first.execution_id)
    await busy.wait_ended(first.execution_id)


async def test_concurrency_bounds_the_jobs_one_worker_runs_at_once(
    queue: ArqJobQueue, start_worker: WorkerFactory
) -> None:
    handler = Recorder()
    jobs = [new_job() for _ in range(5)]
    handler.block.update(j.execution_id for j in jobs)
    worker = await start_worker(handler, concurrency=2)
    for job in jobs:
        await queue.enqueue(job)
    async def two_started() -> None:  # any two: jobs enqueued in the same millisecond are ordered by id
        while sum(e.is_set() for e in handler.started.values()) < 2:
            await asyncio.sleep(0.01)

    await asyncio.wait_for(two_started(), WAIT)
    await asyncio.sleep(0.3)  # time enough to (wrongly) start a third
    assert sum(e.is_set() for e in handler.started.values()) == 2
    assert worker._running_count() == 2
    for job in jobs:
        handler.free(job.execution_id)
    for job in jobs:
        await handler.wait_ended(job.execution_id)  # each freed slot takes the next job
    assert sorted(c[0] for c in handler.calls) == sorted(j.execution_id for j in jobs)
    assert handler.most_at_once == 2


# -- cancel -----------------------------------------------------------------------------------------------------
async def test_cancel_of_a_queued_job_answers_false_and_the_job_starts_cancelled(
    queue: ArqJobQueue, start_worker: WorkerFactory
) -> None:
    handler = Recorder()
    job = new_job()
    await queue.enqueue(job)
    assert await queue.cancel(job.tenant_id, job.execution_id) is False  # no worker holds it
    await start_worker(handler)
    await handler.wait_ended(job.execution_id)
    assert handler.seen_cancelled_at_start == [job.execution_id]


async def test_cancel_of_a_running_job_reaches_its_worker(queue: ArqJobQueue, start_worker: WorkerFactory) -> None:
    handler = Recorder()
    job, other = new_job(), new_job()
    handler.block.update({job.execution_id, other.execution_id})
    worker = await start_worker(handler)
    await queue.enqueue(job)
    await queue.enqueue(other)
    await handler.wait_started(job.execution_id)
    await handler.wait_started(other.execution_id)
    assert await queue.holder(job.execution_id) == worker.worker_id
    assert await queue.cancel(job.tenant_id, job.execution_id) is True
    await handler.wait_ended(job.execution_id)
    assert handler.calls == [(job.execution_id, "cancelled")]
    assert not handler.has_ended(other.execution_id)  # only that execution
    for _ in range(100):
        if await queue.holder(job.execution_id) is None:
            break
        await asyncio.sleep(0.01)
    assert await queue.holder(job.execution_id) is None  # released when the job ended
    assert await queue.cancel(job.tenant_id, job.execution_id) is False
    handler.free(other.execution_id)
    await handler.wait_ended(other.execution_id)


async def test_a_lost_cancel_message_is_caught_by_the_heartbeat(
    queue: ArqJobQueue, start_worker: WorkerFactory, redis_client: aioredis.Redis
) -> None:
    handler = Recorder()
    job = new_job()
    handler.block.add(job.execution_id)
    await start_worker(handler, heartbeat=0.2, lease=2.0)
    await queue.enqueue(job)
    await handler.wait_started(job.execution_id)
    # the cancel key without its pub/sub message, as after a dropped subscription
    await redis_client.set(QueueKeys(queue.queue_name).cancel(job.execution_id), "1", px=60_000)
    await handler.wait_ended(job.execution_id)
    assert handler.calls == [(job.execution_id, "cancelled")]


# -- stop, leases, heartbeats --------------------------------------------------------------------------------
async def test_stop_interrupts_running_jobs_and_another_worker_runs_them_again(
    queue: ArqJobQueue, start_worker: WorkerFactory
) -> None:
    first, second = Recorder(), Recorder()
    job = new_job()
    first.block.add(job.execution_id)
    stopping = await start_worker(first)
    await queue.enqueue(job)
    await first.wait_started(job.execution_id)
    await start_worker(second, poll_delay=600)  # only the requeue's wake-up can start it there
    stopping.stop()
    await first.wait_ended(job.execution_id)
    assert first.calls == [(job.execution_id, "interrupted")]
    await second.wait_ended(job.execution_id)
    assert second.calls == [(job.execution_id, "done")]
    assert stopping.interrupted == [job.execution_id]


async def test_a_dead_workers_job_is_taken_over_when_its_lease_expires(
    queue: ArqJobQueue, queue_name: str, start_worker: WorkerFactory
) -> None:
    doomed, survivor = Recorder(), Recorder()
    job = new_job()
    doomed.block.add(job.execution_id)
    dead = await start_worker(doomed, heartbeat=0.2, lease=1.0)
    await queue.enqueue(job)
    await doomed.wait_started(job.execution_id)
    # the worker "dies": its heartbeat stops renewing leases and it takes nothing more (no clean shutdown)
    for task in dead._background:
        task.cancel()
    dead.allow_pick_jobs = False
    await start_worker(survivor, poll_delay=0.2, heartbeat=0.2, lease=1.0)
    await survivor.wait_ended(job.execution_id)
    assert survivor.calls == [(job.execution_id, "done")]
    doomed.free(job.execution_id)


async def test_heartbeats_make_check_healthy_and_a_stopped_worker_leaves(
    queue_name: str, start_worker: WorkerFactory
) -> None:
    assert await check_workers(REDIS_URL, queue_name, max_age=5) == []
    worker = await start_worker(Recorder(), heartbeat=0.2, lease=1.0)
    alive = await check_workers(REDIS_URL, queue_name, max_age=5)
    assert [w.worker_id for w in alive] == [worker.worker_id]
    worker.stop()
    for _ in range(200):
        if not await check_workers(REDIS_URL, queue_name, max_age=5):
            break
        await asyncio.sleep(0.01)
    assert await check_workers(REDIS_URL, queue_name, max_age=5) == []


async def test_jobs_of_another_queue_are_not_taken(queue: ArqJobQueue, start_worker: WorkerFactory,
                                                   redis_client: aioredis.Redis) -> None:  # fmt: skip
    other = ArqJobQueue(REDIS_URL, queue_name=f"{queue.queue_name}-other")
    handler = Recorder()
    job = new_job()
    try:
        await start_worker(handler, poll_delay=0.1)
        await other.enqueue(job)
        await asyncio.sleep(0.5)
        assert handler.calls == []
    finally:
        await other.close()
        keys = QueueKeys(other.queue_name)
        await redis_client.delete(other.queue_name, keys.wake, keys.job(job.execution_id))


async def test_a_burst_worker_runs_what_is_queued_then_stops(queue: ArqJobQueue, queue_name: str) -> None:
    handler = Recorder()
    jobs = [new_job() for _ in range(3)]
    for job in jobs:
        await queue.enqueue(job)
    worker = CrewflowWorker(handler, redis_url=REDIS_URL, queue_name=queue_name, burst=True)
    await asyncio.wait_for(worker.serve(), WAIT)
    assert sorted(c[0] for c in handler.calls) == sorted(j.execution_id for j in jobs)
    assert worker.jobs_complete == 3
    assert await check_workers(REDIS_URL, queue_name, max_age=60) == []  # it left the heartbeat set


async def test_with_a_grace_period_a_stopping_worker_lets_its_job_finish(
    queue: ArqJobQueue, start_worker: WorkerFactory
) -> None:
    handler = Recorder()
    job = new_job()
    handler.block.add(job.execution_id)
    worker = await start_worker(handler, grace=30)
    await queue.enqueue(job)
    await handler.wait_started(job.execution_id)
    worker.stop()
    handler.free(job.execution_id)  # it ends within the grace period: not interrupted, not queued again
    await handler.wait_ended(job.execution_id)
    assert handler.calls == [(job.execution_id, "released")]


# -- tool builds ----------------------------------------------------------------------------------------------
async def test_a_tool_build_job_reaches_the_workers_build_handler_once(
    queue: ArqJobQueue, start_worker: WorkerFactory, redis_client: aioredis.Redis, queue_name: str
) -> None:
    builds: list[BuildTool] = []
    built = asyncio.Event()

    async def build(job: BuildTool) -> None:
        builds.append(job)
        built.set()

    job = BuildTool("t1", f"wordcount-{uuid.uuid4().hex[:6]}", 3, "req-9", {"traceparent": "00-abc"})
    try:
        await queue.enqueue_build(job)
        await queue.enqueue_build(job)  # the same version while it is queued: no second build
        await start_worker(Recorder(), build_handler=build)
        await asyncio.wait_for(built.wait(), 10)
        await asyncio.sleep(0.2)  # a duplicate would have started by now
        assert builds == [job]
    finally:
        keys = QueueKeys(queue_name)
        await redis_client.delete(keys.job(job.job_id), keys.result(job.job_id), keys.in_progress(job.job_id),
                                  keys.retry(job.job_id))  # fmt: skip
