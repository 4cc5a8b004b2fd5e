"""``CrewflowWorker``: an arq worker that runs ``RunExecution`` jobs with the same handler as the in-process
queue (``handler(job, cancel)``), woken by Redis instead of sleeping between polls.

What it changes in arq's ``Worker`` (0.26 to 0.28), and why:

- **Wake-up instead of a fixed poll.** arq polls the queue every ``poll_delay`` (0.5 s): a job waits 250 ms
  on average, and a worker starts at most ``max_jobs`` jobs per poll. Here a background task waits on the
  queue's wake-up list with ``BLPOP`` (enqueue pushes a token) and the loop polls as soon as a token
  arrives or one of its jobs ends while it was full; ``poll_delay`` remains as the fallback poll (deferred
  and retried jobs, lost tokens). The ``BLPOP`` is only issued while the worker has a free slot, and a
  worker that reads more due jobs than it can start passes a token on, so a busy worker never swallows the
  wake-up of an idle one.
- **One-round-trip claim.** A job is claimed by a Lua script (in-progress key, not yet due, queue entry —
  arq's WATCH/MULTI checks, atomically) that also sets ``running:{execution}`` to this worker's id and
  reports whether a cancel was already requested.
- **Short leases.** arq's in-progress key lives ``job_timeout + 10 s``; a crashed worker's job would wait
  that long. Here it lives ``lease`` seconds (30) and the heartbeat renews it — with ``running`` keys and
  the worker's heartbeat key — every ``heartbeat`` seconds, so a killed worker's job is retried by another
  worker within a lease.
- **Cancel.** Each worker listens on its own cancel channel; a cancel request for one of its executions
  sets that job's ``cancel`` event. The heartbeat also checks ``cancel:{execution}`` keys of running jobs,
  in case a pub/sub message was lost.
- **Graceful stop.** ``stop()`` (SIGTERM) stops taking jobs, lets running jobs finish for ``grace``
  seconds, then cancels them: the handler records the interruption (the run stays resumable) and arq keeps
  a cancelled job queued (``retry_jobs``); the worker then makes sure each interrupted job is queued and
  not marked in progress, and wakes the other workers so they resume it at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import redis.asyncio as aioredis
import structlog
from arq.connections import RedisSettings, create_pool
from arq.constants import abort_jobs_ss
from arq.cron import CronJob
from arq.utils import timestamp_ms
from arq.worker import Worker, func
from redis.exceptions import RedisError

from crewflow.adapters.arq.queue import (
    BUILD_TOOL,
    DEFAULT_QUEUE,
    RUN_EXECUTION,
    WAKE_TOKENS,
    QueueKeys,
    build_from_payload,
    job_deserializer,
    job_from_payload,
    job_serializer,
)
from crewflow.ports.queue import BuildTool, RunExecution

__all__ = ["BuildHandler", "CrewflowWorker", "JobHandler", "new_worker_id"]

JobHandler = Callable[[RunExecution, asyncio.Event], Awaitable[None]]
BuildHandler = Callable[[BuildTool], Awaitable[None]]
log = structlog.get_logger("crewflow.worker")

# Claims up to ARGV[4] of the job ids ARGV[8..] in one round trip: for each, arq's checks (not in progress, still
# queued, due) then its in-progress key and crewflow's running key (value: the worker id), both for one lease;
# answers a flat list of (job id, score, cancel requested). Keys are built from the prefixes in ARGV, so the
# script needs a single Redis (not Redis Cluster), like arq's own queue.
# KEYS: queue; ARGV: now ms, lease ms, worker id, limit, in-progress prefix, running prefix, cancel prefix, ids…
_CLAIM = """
local claimed = {}
local limit = tonumber(ARGV[4])
local now = tonumber(ARGV[1])
local n = 0
for i = 8, #ARGV do
  if n >= limit then break end
  local id = ARGV[i]
  local progress = ARGV[5] .. id
  if redis.call('exists', progress) == 0 then
    local score = redis.call('zscore', KEYS[1], id)
    if score and tonumber(score) <= now then
      redis.call('psetex', progress, ARGV[2], '1')
      redis.call('psetex', ARGV[6] .. id, ARGV[2], ARGV[3])
      claimed[#claimed + 1] = id
      claimed[#claimed + 1] = score
      claimed[#claimed + 1] = redis.call('exists', ARGV[7] .. id)
      n = n + 1
    end
  end
end
return claimed
"""

# KEYS: running; ARGV: worker id
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then redis.call('del', KEYS[1]) end
return 0
"""

# arq's finish of a successful job that keeps no result, plus the release of the running key, in one script
# KEYS: in-progress, retry, job, abort set, queue, running; ARGV: job id, worker id
_FINISH = """
redis.call('del', KEYS[1], KEYS[2], KEYS[3])
redis.call('zrem', KEYS[4], ARGV[1])
redis.call('zrem', KEYS[5], ARGV[1])
if redis.call('get', KEYS[6]) == ARGV[2] then redis.call('del', KEYS[6]) end
return 0
"""

# KEYS: job, in-progress, queue, wake; ARGV: job id, now ms, wake-token cap
_REQUEUE = """
if redis.call('exists', KEYS[1]) == 0 then return 0 end
redis.call('del', KEYS[2])
redis.call('zadd', KEYS[3], 'NX', ARGV[2], ARGV[1])
redis.call('lpush', KEYS[4], '1')
redis.call('ltrim', KEYS[4], 0, tonumber(ARGV[3]) - 1)
return 1
"""


def new_worker_id() -> str:
    """``host:pid:random``: stable for the process, unique across restarts and hosts."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class CrewflowWorker(Worker):
    """Runs ``RunExecution`` jobs of ``queue_name`` with ``handler``, ``concurrency`` at a time.

    ``serve()`` runs until ``stop()`` (or, with ``burst``, until the queue is empty) and then shuts down
    gracefully. Signals are the caller's business (``crewflow worker`` maps SIGTERM/SIGINT to ``stop``)."""

    def __init__(
        self,
        handler: JobHandler,
        *,
        redis_url: str,
        queue_name: str = DEFAULT_QUEUE,
        concurrency: int = 4,
        worker_id: str | None = None,
        burst: bool = False,
        cron_jobs: Sequence[CronJob] | None = None,
        poll_delay: float = 0.5,
        wake: bool = True,
        lease: float = 30.0,
        heartbeat: float = 5.0,
        job_timeout: float = 86_400.0,
        max_tries: int = 10,
        grace: float = 0.0,
        ctx: dict[str, Any] | None = None,
        build_handler: BuildHandler | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if not 0 < heartbeat < lease:
            raise ValueError("the heartbeat must be shorter than the lease")
        self.handler = handler
        self.redis_url = redis_url
        self.keys = QueueKeys(queue_name)
        self.worker_id = worker_id or new_worker_id()
        self.wake_enabled = wake
        self.lease_s = lease
        self.heartbeat_s = heartbeat
        self.grace_s = grace
        self.build_handler = build_handler
        functions = [func(self._run_execution, name=RUN_EXECUTION, keep_result=0)]
        if build_handler is not None:  # a tool build failing is recorded on the tool; never retried blindly
            functions.append(func(self._build_tool, name=BUILD_TOOL, keep_result=0, max_tries=1))
        super().__init__(
            functions,
            queue_name=queue_name,
            cron_jobs=cron_jobs,
            redis_settings=RedisSettings.from_dsn(redis_url),
            burst=burst,
            handle_signals=False,
            max_jobs=concurrency,
            job_timeout=job_timeout,
            keep_result=0,
            poll_delay=poll_delay,
            max_tries=max_tries,
            health_check_interval=heartbeat,
            ctx=ctx,
            job_serializer=job_serializer,
            job_deserializer=job_deserializer,
            log_results=False,
        )
        self.in_progress_timeout_s = lease  # renewed by the heartbeat (arq: job timeout + 10 s)
        self._cancels: dict[str, asyncio.Event] = {}
        self._wake = asyncio.Event()
        self._capacity = asyncio.Event()
        self._capacity.set()
        self._stopping = False
        self._stop_now = asyncio.Event()
        self._saturated = False
        self._background: list[asyncio.Task[None]] = []
        self._wake_client: aioredis.Redis | None = None
        self._pubsub: Any = None
        self._claim: Any = None
        self._release: Any = None
        self._finish: Any = None
        self._released: set[str] = set()  # jobs whose finish already released their running key
        self._requeue: Any = None
        self.started_at = time.time()
        self.interrupted: list[str] = []  # job ids cancelled by the last shutdown and queued again

    # -- lifecycle --------------------------------------------------------------------------------------
    async def serve(self) -> None:
        """Take jobs until ``stop()`` (burst: until the queue is empty), then shut down gracefully."""
        try:
            await self.main()
        finally:
            await asyncio.shield(self._shutdown())

    def stop(self) -> None:
        """Stop taking jobs and shut down (running jobs get ``grace`` seconds, then are interrupted and
        queued again). A second call skips what is left of the grace period."""
        if self._stopping:
            self._stop_now.set()
            return
        log.info("worker.stopping", worker_id=self.worker_id, running=self._running_count())
        self._stopping = True
        self.allow_pick_jobs = False
        self._wake.set()

    async def main(self) -> None:
        if self._pool is None:
            self._pool = await create_pool(
                self.redis_settings, job_serializer=job_serializer, job_deserializer=job_deserializer,
                default_queue_name=self.queue_name, expires_extra_ms=self.expires_extra_ms,
            )  # fmt: skip
        self._claim = self.pool.register_script(_CLAIM)
        self._release = self.pool.register_script(_RELEASE)
        self._finish = self.pool.register_script(_FINISH)
        self._requeue = self.pool.register_script(_REQUEUE)
        self.ctx["redis"] = self.pool
        self.ctx["worker_id"] = self.worker_id
        if self.on_startup:
            await self.on_startup(self.ctx)
        # Subscribed before the first claim, so no cancel aimed at this worker can be missed.
        self._pubsub = self.pool.pubsub(ignore_subscribe_messages=True)
        await self._pubsub.subscribe(self.keys.cancel_channel(self.worker_id))
        await self._beat()
        self._background = [asyncio.create_task(self._listen_cancels(), name="crewflow-worker-cancels"),
                            asyncio.create_task(self._heartbeats(), name="crewflow-worker-heartbeat")]  # fmt: skip
        if self.wake_enabled:
            self._wake_client = aioredis.Redis.from_url(self.redis_url)
            self._background.append(asyncio.create_task(self._wait_for_tokens(), name="crewflow-worker-wake"))
        log.info("worker.started", worker_id=self.worker_id, queue=self.queue_name, concurrency=self.max_jobs)
        while not self._stopping:
            self._wake.clear()
            try:
                await self._poll_iteration()
                if self.burst and await self._burst_done():
                    return
            except (RedisError, OSError) as exc:  # Redis restarting: running jobs go on, polling resumes
                log.warning("worker.poll_failed", worker_id=self.worker_id, error=str(exc))
                await asyncio.sleep(1.0)
                continue
            if self._stopping:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_delay_s)

    async def _burst_done(self) -> bool:
        if 0 <= self.max_burst_jobs <= self._jobs_started() or await self.pool.zcard(self.queue_name) == 0:
            await asyncio.gather(*self.tasks.values())
            return True
        return False

    async def _shutdown(self) -> None:
        self._stopping = True
        self.allow_pick_jobs = False
        running = [t for t in self.tasks.values() if not t.done()]
        if running and self.grace_s > 0:  # until they all end, the grace runs out, or a second stop()
            ended: asyncio.Future[Any] = asyncio.gather(*running, return_exceptions=True)
            stop_now: asyncio.Future[Any] = asyncio.ensure_future(self._stop_now.wait())
            waits: list[asyncio.Future[Any]] = [ended, stop_now]
            await asyncio.wait(waits, timeout=self.grace_s, return_when=asyncio.FIRST_COMPLETED)
            stop_now.cancel()
        cancelled = [job_id for job_id, t in self.tasks.items() if not t.done()]
        for task in self.tasks.values():
            task.cancel()  # the handler records the interruption; arq keeps a cancelled job queued
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        self.tasks.clear()
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        if self._pool is None:
            return
        with contextlib.suppress(RedisError, OSError):
            for job_id in cancelled:  # queued again unless it ended meanwhile (arq removed its job key)
                if await self._requeue(keys=[self.keys.job(job_id), self.keys.in_progress(job_id), self.queue_name,
                                             self.keys.wake], args=[job_id, timestamp_ms(), WAKE_TOKENS]):  # fmt: skip
                    self.interrupted.append(job_id)
            async with self.pool.pipeline(transaction=False) as pipe:
                pipe.zrem(self.keys.workers, self.worker_id)
                pipe.delete(self.keys.worker(self.worker_id), self.health_check_key)
                await pipe.execute()
        if self.interrupted:
            log.info("worker.requeued", worker_id=self.worker_id, jobs=self.interrupted)
        if self._pubsub is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._pubsub.aclose()
        if self._wake_client is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._wake_client.aclose()
        if self.on_shutdown:
            await self.on_shutdown(self.ctx)
        await self.pool.aclose(close_connection_pool=True)
        self._pool = None
        log.info("worker.stopped", worker_id=self.worker_id, complete=self.jobs_complete, failed=self.jobs_failed,
                 retried=self.jobs_retried)  # fmt: skip

    # -- claiming jobs ----------------------------------------------------------------------------------
    async def start_jobs(self, job_ids: list[bytes]) -> None:
        """arq's ``start_jobs`` with one script claiming every job this worker has room for in one round trip
        (and taking their ``running`` keys).

        The due jobs read by one poll are tried in random order: workers polling at the same moment read the
        same oldest ``queue_read_limit`` ids, and would otherwise all race for the same first ones. A read
        that came back full means more are due: the loop polls again at once instead of waiting."""
        if self._stopping or not self.allow_pick_jobs:
            return
        if len(job_ids) >= self.queue_read_limit:
            self._wake.set()
        # a job running here stays in the queue until it ends: skip it
        candidates = [i for i in (b.decode() for b in job_ids) if i not in self._cancels]
        if not candidates:
            return
        room = self.max_jobs - self.job_counter
        if room <= 0:
            self._saturated = True
            await self._pass_wake_token()  # due jobs are left: another worker may have room
            return
        random.shuffle(candidates)
        # Cancel events exist before the running keys do: a cancel can be published the moment they are set.
        events = {job_id: asyncio.Event() for job_id in candidates}
        self._cancels.update(events)
        reply: list[Any] = []
        try:
            reply = await self._claim(keys=[self.queue_name], args=[
                timestamp_ms(), int(self.lease_s * 1000), self.worker_id, room, self.keys.in_progress(""),
                self.keys.running(""), self.keys.cancel(""), *candidates])  # fmt: skip
        finally:
            claimed = {reply[i].decode(): (int(float(reply[i + 1])), bool(reply[i + 2]))
                       for i in range(0, len(reply), 3)}  # fmt: skip
            for job_id, event in events.items():
                if job_id not in claimed and self._cancels.get(job_id) is event:
                    del self._cancels[job_id]
        for job_id, (score, cancel_requested) in claimed.items():
            cancel = events[job_id]
            if cancel_requested:
                cancel.set()
            await self.sem.acquire()
            self.job_counter += 1
            task = self.loop.create_task(self._run_claimed(job_id, score, cancel))
            task.add_done_callback(self._job_done)
            self.tasks[job_id] = task
        if self.job_counter >= self.max_jobs:
            self._capacity.clear()
            if len(candidates) > len(claimed):
                self._saturated = True
                await self._pass_wake_token()

    async def _run_claimed(self, job_id: str, score: int, cancel: asyncio.Event) -> None:
        try:
            await self.run_job(job_id, score)
        finally:
            if self._cancels.get(job_id) is cancel:
                del self._cancels[job_id]
            if job_id in self._released:
                self._released.discard(job_id)
            else:
                with contextlib.suppress(RedisError, OSError):
                    await self._release(keys=[self.keys.running(job_id)], args=[self.worker_id])

    async def finish_job(self, job_id: str, finish: bool, result_data: bytes | None, result_timeout_s: float | None,
                         keep_result_forever: bool, incr_score: int | None,
                         keep_in_progress: float | None) -> None:  # fmt: skip
        """arq's ``finish_job``; the common case (a finished job, no result kept, not a cron job) is one
        script that also releases the running key."""
        if not finish or result_data is not None or keep_in_progress is not None:
            await super().finish_job(job_id, finish, result_data, result_timeout_s, keep_result_forever, incr_score,
                                     keep_in_progress)  # fmt: skip
            return
        await self._finish(keys=[self.keys.in_progress(job_id), self.keys.retry(job_id), self.keys.job(job_id),
                                 abort_jobs_ss, self.queue_name, self.keys.running(job_id)],
                           args=[job_id, self.worker_id])  # fmt: skip
        self._released.add(job_id)

    def _job_done(self, _: asyncio.Task[None]) -> None:
        self.job_counter -= 1
        self.sem.release()
        if not self._stopping:
            self._capacity.set()
        if self._saturated or self.burst:
            self._saturated = False
            self._wake.set()  # due jobs were left behind when this worker was full

    async def _run_execution(self, ctx: dict[str, Any], payload: dict[str, Any]) -> None:
        job = job_from_payload(payload)
        cancel = self._cancels.get(ctx["job_id"])
        if cancel is None:  # not claimed through start_jobs (cannot happen today): still honour cancel keys
            cancel = asyncio.Event()
            if await self.pool.exists(self.keys.cancel(job.execution_id)):
                cancel.set()
        await self.handler(job, cancel)

    async def _build_tool(self, ctx: dict[str, Any], payload: dict[str, Any]) -> None:
        assert self.build_handler is not None
        await self.build_handler(build_from_payload(payload))

    # -- background tasks -------------------------------------------------------------------------------
    async def _pass_wake_token(self) -> None:
        with contextlib.suppress(RedisError, OSError):
            async with self.pool.pipeline(transaction=False) as pipe:
                pipe.lpush(self.keys.wake, "1")
                pipe.ltrim(self.keys.wake, 0, WAKE_TOKENS - 1)
                await pipe.execute()

    async def _wait_for_tokens(self) -> None:
        """BLPOP the wake-up list while this worker has room; a token makes the main loop poll now."""
        assert self._wake_client is not None
        while True:
            await self._capacity.wait()
            try:
                token = await self._wake_client.blpop([self.keys.wake], timeout=5)  # type: ignore[misc]
            except (RedisError, OSError) as exc:
                log.warning("worker.wake_failed", worker_id=self.worker_id, error=str(exc))
                await asyncio.sleep(1.0)
                continue
            if not token:
                continue
            if self.job_counter >= self.max_jobs or not self.allow_pick_jobs:
                await self._pass_wake_token()  # it arrived after this worker filled up: for another one
            else:
                self._wake.set()

    async def _listen_cancels(self) -> None:
        while True:
            try:
                async for message in self._pubsub.listen():
                    if message.get("type") != "message":
                        continue
                    data = message["data"]
                    event = self._cancels.get(data.decode() if isinstance(data, bytes) else str(data))
                    if event is not None:
                        event.set()
            except (RedisError, OSError) as exc:  # the heartbeat's cancel-key check covers the gap
                log.warning("worker.cancel_channel_lost", worker_id=self.worker_id, error=str(exc))
                await asyncio.sleep(1.0)
                with contextlib.suppress(RedisError, OSError):
                    await self._pubsub.subscribe(self.keys.cancel_channel(self.worker_id))

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            try:
                await self._beat()
            except (RedisError, OSError) as exc:
                log.warning("worker.heartbeat_failed", worker_id=self.worker_id, error=str(exc))

    def _running_count(self) -> int:
        return sum(not t.done() for t in self.tasks.values())

    async def _beat(self) -> None:
        """Renew this worker's heartbeat and its jobs' leases; set the cancel event of any running job whose
        cancel key exists (a pub/sub message can be lost on a reconnect)."""
        now_ms = int(time.time() * 1000)
        lease_ms = int(self.lease_s * 1000)
        running = [job_id for job_id, t in self.tasks.items() if not t.done()]
        info = {"worker_id": self.worker_id, "pid": os.getpid(), "host": socket.gethostname(),
                "queue": self.queue_name, "concurrency": self.max_jobs, "running": len(running),
                "complete": self.jobs_complete, "failed": self.jobs_failed, "retried": self.jobs_retried,
                "started_at": self.started_at}  # fmt: skip
        async with self.pool.pipeline(transaction=False) as pipe:
            pipe.psetex(self.keys.worker(self.worker_id), lease_ms, json.dumps(info))
            pipe.zadd(self.keys.workers, {self.worker_id: now_ms})
            pipe.zremrangebyscore(self.keys.workers, 0, now_ms - 3_600_000)  # forget workers gone for an hour
            for job_id in running:
                pipe.pexpire(self.keys.in_progress(job_id), lease_ms)
                pipe.pexpire(self.keys.running(job_id), lease_ms)
                pipe.exists(self.keys.cancel(job_id))
            results = await pipe.execute()
        for index, job_id in enumerate(running):
            if results[3 + 3 * index + 2]:
                event = self._cancels.get(job_id)
                if event is not None and not event.is_set():
                    event.set()
