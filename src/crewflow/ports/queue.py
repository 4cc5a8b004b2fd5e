"""The job queue: executions are run by workers (in-process by default, arq workers in production)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

__all__ = ["JobQueue", "RunExecution"]


@dataclass(frozen=True, slots=True)
class RunExecution:
    """Run (or resume) one stored execution. The execution id is the job id: enqueuing twice runs once."""

    tenant_id: str
    execution_id: str
    request_id: str | None = None
    # W3C trace context (``traceparent``/``tracestate``) of whoever enqueued the job, so the worker's job
    # span continues the request's trace (``crewflow.adapters.telemetry``); None when tracing is off.
    trace_context: dict[str, str] | None = field(default=None, compare=False)  # not part of the job's identity


class JobQueue(Protocol):
    async def enqueue(self, job: RunExecution) -> None: ...

    async def cancel(self, tenant_id: str, execution_id: str) -> bool:
        """Ask whoever runs the execution to stop it; False when no worker holds it (not started/finished)."""
        ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...
