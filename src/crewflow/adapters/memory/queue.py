"""The in-process ``JobQueue`` of the embedded deployment: asyncio workers in the API process.

- Bounded concurrency: ``concurrency`` worker tasks (default 4) take jobs in FIFO order.
- The job id is the execution id: enqueuing an execution that is already queued or running is a no-op.
- ``cancel`` reaches the job wherever it is: a queued job starts with its cancel signal already set, a
  running one sees it set (the handler stops the engine), so the handler is always the one that records
  the cancellation.
- ``close`` stops taking jobs and cancels the running ones, waiting for their handlers to wind down (they
  record the interruption). Jobs still queued stay ``pending`` in the store.

Tool builds (``BuildTool``, the ``ToolBuildQueue`` port) wait on their own queue, taken by
``build_concurrency`` workers (default 1: builds are heavy and the engine serializes much of them anyway), so a
long build never holds a slot executions need. Enqueuing a build of a version that is queued or building is a
no-op; ``close`` cancels running builds (their handler records the failure).

The handler is ``handler(job, cancel)``: ``cancel`` is an ``asyncio.Event`` set when someone asks the job to
stop. The arq adapter calls the same handler from its worker, setting the event from a Redis signal.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog

from crewflow.ports.queue import BuildTool, RunExecution

__all__ = ["BuildHandler", "InProcessJobQueue", "JobHandler"]

JobHandler = Callable[[RunExecution, asyncio.Event], Awaitable[None]]
BuildHandler = Callable[[BuildTool], Awaitable[None]]
log = structlog.get_logger("crewflow.queue")


@dataclass(slots=True)
class _Job:
    job: RunExecution
    cancel: asyncio.Event = field(default_factory=asyncio.Event)
    running: bool = False


class InProcessJobQueue:
    def __init__(self, handler: JobHandler, *, concurrency: int = 4, build_handler: BuildHandler | None = None,
                 build_concurrency: int = 1) -> None:  # fmt: skip
        if concurrency < 1 or build_concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.handler = handler
        self.concurrency = concurrency
        self.build_handler = build_handler
        self.build_concurrency = build_concurrency
        self._builds: dict[tuple[str, str], BuildTool] = {}
        self._build_ready: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self._jobs: dict[tuple[str, str], _Job] = {}
        self._ready: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self._workers: list[asyncio.Task[None]] = []
        self._closed = False

    async def enqueue(self, job: RunExecution) -> None:
        if self._closed:
            raise RuntimeError("the job queue is closed")
        key = (job.tenant_id, job.execution_id)
        if key in self._jobs:
            return
        self._jobs[key] = _Job(job)
        self._ready.put_nowait(key)

    async def cancel(self, tenant_id: str, execution_id: str) -> bool:
        held = self._jobs.get((tenant_id, execution_id))
        if held is None:
            return False
        held.cancel.set()
        return True

    async def enqueue_build(self, job: BuildTool) -> None:
        if self.build_handler is None:
            raise RuntimeError("this job queue was not given a build handler")
        if self._closed:
            raise RuntimeError("the job queue is closed")
        key = (job.tenant_id, job.job_id)
        if key in self._builds:
            return
        self._builds[key] = job
        self._build_ready.put_nowait(key)

    def holds_build(self, tenant_id: str, job_id: str) -> bool:
        """Whether the build job (``BuildTool.job_id``) is queued or running here."""
        return (tenant_id, job_id) in self._builds

    def holds(self, tenant_id: str, execution_id: str) -> bool:
        """Whether the execution is queued or running here."""
        return (tenant_id, execution_id) in self._jobs

    async def start(self) -> None:
        if self._closed:
            raise RuntimeError("the job queue is closed")
        if self._workers:
            return
        self._workers = [asyncio.create_task(self._work(), name=f"crewflow-worker-{i}")
                         for i in range(self.concurrency)]  # fmt: skip
        if self.build_handler is not None:
            self._workers += [asyncio.create_task(self._build(self.build_handler), name=f"crewflow-builder-{i}")
                              for i in range(self.build_concurrency)]  # fmt: skip

    async def close(self) -> None:
        self._closed = True
        workers, self._workers = self._workers, []
        for worker in workers:
            worker.cancel()
        await asyncio.gather(*workers, return_exceptions=True)

    async def _work(self) -> None:
        while True:
            key = await self._ready.get()
            held = self._jobs.get(key)
            if held is None:
                continue
            held.running = True
            try:
                await self.handler(held.job, held.cancel)
            except asyncio.CancelledError:
                raise
            except Exception:  # a failed job must not take its worker down; the handler records run errors
                log.exception("queue.job_failed", tenant_id=key[0], execution_id=key[1])
            finally:
                self._jobs.pop(key, None)

    async def _build(self, handler: BuildHandler) -> None:
        while True:
            key = await self._build_ready.get()
            job = self._builds.get(key)
            if job is None:
                continue
            try:
                await handler(job)
            except asyncio.CancelledError:
                raise
            except Exception:  # the handler records build failures; this is a bug in it, logged, not fatal
                log.exception("queue.build_failed", tenant_id=key[0], job_id=key[1])
            finally:
                self._builds.pop(key, None)
