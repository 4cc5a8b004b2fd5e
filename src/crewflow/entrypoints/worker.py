"""The ``crewflow worker`` process: runs executions from the Redis queue (arq) until SIGTERM/SIGINT.

It is wired like the API minus HTTP (``bootstrap.build_worker_container``) and calls the same job handler as
the embedded in-process queue, ``ExecutionRunner``. On SIGTERM it stops taking jobs, gives running ones
``grace`` seconds, then interrupts them (their completed nodes stay checkpointed) and queues them again for
another worker. ``check_workers`` reads the heartbeats for ``crewflow worker check``.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

from crewflow.settings import Settings, number_setting

if TYPE_CHECKING:
    from arq.cron import CronJob

    from crewflow.bootstrap import WorkerContainer
    from crewflow.ports.runtime import AgentRuntime

__all__ = ["WorkerOptions", "WorkerStatus", "check_workers", "cron_jobs", "run_worker"]

log = structlog.get_logger("crewflow.worker")


def _seconds(settings: Settings, variable: str, default: float) -> float:
    return number_setting(settings.extra, variable, default, low=0, high=86_400)


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    """How one worker process runs. ``from_settings`` reads the ``CREWFLOW_WORKER_*`` variables."""

    queue: str
    concurrency: int = 4
    burst: bool = False
    grace: float = 0.0  # seconds running jobs get to finish after SIGTERM before they are interrupted
    poll_delay: float = 0.5  # fallback poll; the wake-up list usually starts jobs within milliseconds
    lease: float = 30.0  # a dead worker's jobs are retried after this long
    heartbeat: float = 5.0

    @classmethod
    def from_settings(cls, settings: Settings, *, queue: str | None = None, concurrency: int | None = None,
                      burst: bool = False, grace: float | None = None) -> WorkerOptions:  # fmt: skip
        from crewflow.bootstrap import lease_seconds, queue_name, worker_concurrency

        concurrency = worker_concurrency(settings) if concurrency is None else concurrency
        if concurrency < 1:
            raise ValueError("--concurrency must be at least 1")
        if grace is not None and grace < 0:
            raise ValueError("--grace must not be negative")
        options = cls(
            queue=queue or queue_name(settings),
            concurrency=concurrency,
            burst=burst,
            grace=_seconds(settings, "CREWFLOW_WORKER_GRACE", 0.0) if grace is None else grace,
            poll_delay=_seconds(settings, "CREWFLOW_WORKER_POLL", 0.5),
            lease=lease_seconds(settings),
            heartbeat=_seconds(settings, "CREWFLOW_WORKER_HEARTBEAT", 5.0),
        )
        if not 0 < options.heartbeat < options.lease:
            raise ValueError("CREWFLOW_WORKER_HEARTBEAT must be above 0 and below CREWFLOW_WORKER_LEASE")
        if options.poll_delay <= 0:
            raise ValueError("CREWFLOW_WORKER_POLL must be above 0")
        return options


async def tenant_ids(container: WorkerContainer) -> list[str]:
    """Every tenant's id, read afresh for each cron pass (tenants come and go)."""
    from crewflow.application.webhooks import tenant_ids as all_tenant_ids

    return await all_tenant_ids(container.core.uow_factory)


def cron_jobs(container: WorkerContainer, queue: str | None = None) -> list[CronJob]:
    """Housekeeping every worker schedules; arq runs each occurrence once across all workers (the job id
    names the occurrence; the queue name is part of it, so deployments sharing a Redis do not skip each
    other's occurrences). ``recover_expired`` every 30 s re-enqueues executions whose worker died (or
    ends them ``failed`` after too many recoveries); ``purge_expired`` hourly deletes what is older than
    ``CREWFLOW_RETENTION_DAYS`` (default 30); ``deliver_due`` every 30 s retries flow webhooks whose next
    attempt is due (also those a stopped process left pending); every 5 minutes each worker removes tool
    containers its host's dead processes left behind (ADR 0014)."""
    from arq.cron import cron

    from crewflow.adapters.sandbox import reap_orphans
    from crewflow.application.watchdog import purge_expired, recover_expired, retention_days_from
    from crewflow.application.webhooks import deliver_due
    from crewflow.bootstrap import lease_seconds, queue_name

    core = container.core
    retention = retention_days_from(core.settings.extra)
    queue = queue or queue_name(core.settings)  # the worker's queue (default: CREWFLOW_QUEUE)
    hold = min(10.0, lease_seconds(core.settings))  # the watchdog's hold may not outlast the workers' lease

    async def recover(ctx: dict[str, Any]) -> None:
        report = await recover_expired(await tenant_ids(container), uow_factory=core.uow_factory,
                                       queue=container.queue, recorder=core.recorder, clock=core.clock,
                                       hold_seconds=hold)  # fmt: skip
        if report.requeued or report.failed:
            log.info("watchdog.recovered", requeued=len(report.requeued), failed=len(report.failed))

    async def purge(ctx: dict[str, Any]) -> None:
        report = await purge_expired(await tenant_ids(container), uow_factory=core.uow_factory,
                                     logstore=core.logstore, clock=core.clock, retention_days=retention)  # fmt: skip
        log.info("retention.purged", executions=report.executions, events=report.events,
                 chat_messages=report.chat_messages, idempotency_keys=report.idempotency_keys)  # fmt: skip

    async def webhooks(ctx: dict[str, Any]) -> None:
        await deliver_due(core.webhooks, await tenant_ids(container))

    async def reap(ctx: dict[str, Any]) -> None:
        removed = await reap_orphans(core.settings.extra)
        if removed:
            log.info("sandbox.reaped", containers=removed)

    return [
        cron(recover, name=f"{queue}:crewflow.watchdog.recover_expired", second={0, 30}, unique=True, timeout=300,
             max_tries=1),
        cron(purge, name=f"{queue}:crewflow.watchdog.purge_expired", minute=17, second=0, unique=True, timeout=3600,
             max_tries=1),
        cron(webhooks, name=f"{queue}:crewflow.webhooks.deliver_due", second={15, 45}, unique=True, timeout=300,
             max_tries=1),
        # every worker, not once per deployment: a container's owner is a process on the reaping host
        cron(reap, name=f"{queue}:crewflow.sandbox.reap_orphans:{container.worker_id}", minute=set(range(0, 60, 5)),
             second=40, unique=False, timeout=120, max_tries=1),
    ]


async def run_worker(settings: Settings, options: WorkerOptions, *, runtime: AgentRuntime | None = None,
                     worker_id: str | None = None) -> dict[str, Any]:  # fmt: skip
    """Run a worker until SIGTERM/SIGINT (or, with ``burst``, until the queue is empty); returns its counts."""
    import os

    from crewflow.adapters.arq.worker import CrewflowWorker
    from crewflow.adapters.metrics.prometheus import serve_metrics_from_env
    from crewflow.adapters.telemetry import bind_job_context, configure_tracing
    from crewflow.bootstrap import build_worker_container

    if not settings.redis_url:
        raise ValueError("CREWFLOW_REDIS_URL is not set: workers take executions from the Redis queue")
    configure_tracing(service_name="crewflow-worker")  # before CrewAI is imported; OTEL_SERVICE_NAME wins
    container = await build_worker_container(settings, runtime=runtime, worker_id=worker_id)
    stop_metrics = None
    try:
        stop_metrics = serve_metrics_from_env(os.environ, container.core.metrics)  # CREWFLOW_METRICS_PORT
        worker = CrewflowWorker(
            bind_job_context(container.runner, metrics=container.core.metrics),
            redis_url=settings.redis_url,
            queue_name=options.queue,
            concurrency=options.concurrency,
            worker_id=container.worker_id,
            burst=options.burst,
            cron_jobs=cron_jobs(container, options.queue),
            poll_delay=options.poll_delay,
            lease=options.lease,
            heartbeat=options.heartbeat,
            grace=options.grace,
            ctx={"container": container},
            build_handler=container.tool_service.run_build,
        )
        loop = asyncio.get_running_loop()
        signals = (signal.SIGTERM, signal.SIGINT)
        for signum in signals:
            loop.add_signal_handler(signum, worker.stop)
        try:
            await worker.serve()
        finally:
            for signum in signals:
                loop.remove_signal_handler(signum)
        return {"worker_id": worker.worker_id, "complete": worker.jobs_complete, "failed": worker.jobs_failed,
                "retried": worker.jobs_retried, "requeued": len(worker.interrupted)}  # fmt: skip
    finally:
        if stop_metrics is not None:
            stop_metrics()
        await container.aclose()


@dataclass(frozen=True, slots=True)
class WorkerStatus:
    worker_id: str
    age: float  # seconds since its last heartbeat


async def check_workers(redis_url: str, queue: str, max_age: float) -> list[WorkerStatus]:
    """Workers of ``queue`` whose heartbeat is at most ``max_age`` seconds old, freshest first."""
    import redis.asyncio as aioredis

    from crewflow.adapters.arq.queue import QueueKeys

    keys = QueueKeys(queue)
    client = aioredis.Redis.from_url(redis_url, socket_connect_timeout=3, socket_timeout=3)
    try:
        now_ms = time.time() * 1000
        fresh: Sequence[tuple[bytes, float]] = await client.zrangebyscore(
            keys.workers, now_ms - max_age * 1000, "+inf", withscores=True
        )
    finally:
        await client.aclose()
    statuses = [WorkerStatus(member.decode(), max(0.0, (now_ms - score) / 1000)) for member, score in fresh]
    return sorted(statuses, key=lambda s: s.age)
