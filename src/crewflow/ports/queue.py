"""The job queue: executions are run by workers (in-process by default, arq workers in production); so are
tool image builds (``BuildTool``), which may take minutes and must not hold an HTTP request."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

__all__ = ["BuildTool", "JobQueue", "RunExecution", "ToolBuildQueue"]


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


@dataclass(frozen=True, slots=True)
class BuildTool:
    """Build the image of one version of a tenant's tool (``crewflow.application.tools.ToolService.run_build``).
    ``job_id`` names the job across tenants (tool ids are per tenant): enqueuing the same version while its
    build is queued or running is a no-op."""

    tenant_id: str
    tool_id: str
    version: int
    request_id: str | None = None
    trace_context: dict[str, str] | None = field(default=None, compare=False)  # as ``RunExecution``'s

    @property
    def job_id(self) -> str:
        return f"build:{self.tenant_id}:{self.tool_id}:{self.version}"


class ToolBuildQueue(Protocol):
    """Where tool builds wait for a worker. A separate port from ``JobQueue`` so a queue can run executions
    without taking builds (the in-process queue takes both when given a build handler)."""

    async def enqueue_build(self, job: BuildTool) -> None: ...
