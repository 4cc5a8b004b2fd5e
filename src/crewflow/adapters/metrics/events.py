"""Metrics read from execution events: an ``EventSink`` decorator that forwards every batch to the sink it
wraps, then counts what the batch says happened.

- ``flow_executions_total{status}`` and ``flow_execution_duration_seconds{status}``: each terminal run event
  (``run.completed`` / ``run.failed`` / ``run.cancelled``), including the ones recorded for runs that never
  started (cancelled while queued) — they go through the same sinks;
- ``llm_request_duration_seconds{provider}``: each ``llm.attempt`` that reached a provider (not cache hits).

Counted after the wrapped sink stored the batch, so a batch that failed to store is not counted (the
engine retries or fails the run, and the final event is counted once it is stored)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from crewflow.domain.events import EventKind, ExecutionEvent
from crewflow.ports.events import EventSink
from crewflow.ports.metrics import Metrics

__all__ = ["RunMetricsSink", "count_runs"]

_STATUS = {EventKind.RUN_COMPLETED: "completed", EventKind.RUN_FAILED: "failed",
           EventKind.RUN_CANCELLED: "cancelled"}  # fmt: skip


class RunMetricsSink:
    """One per run (``ExecutionRecorder.sinks`` builds the sinks for each job), so it can remember when the
    run started."""

    def __init__(self, inner: EventSink, metrics: Metrics) -> None:
        self.inner = inner
        self.metrics = metrics
        self._started_at: float | None = None

    async def publish(self, events: Sequence[ExecutionEvent]) -> None:
        await self.inner.publish(events)
        metrics = self.metrics
        for event in events:
            if event.node_id is None:
                if event.kind == EventKind.RUN_STARTED:
                    self._started_at = event.at
                    continue
                status = _STATUS.get(event.kind)
                if status is not None:
                    metrics.inc("flow_executions_total", {"status": status})
                    if self._started_at is not None:
                        metrics.observe("flow_execution_duration_seconds", max(0.0, event.at - self._started_at),
                                        {"status": status})  # fmt: skip
            elif event.kind == EventKind.LLM_ATTEMPT:
                provider, latency_ms = event.data.get("provider"), event.data.get("latency_ms")
                if (isinstance(provider, str) and isinstance(latency_ms, int | float)
                        and event.data.get("outcome") != "cache_hit"):  # fmt: skip
                    metrics.observe("llm_request_duration_seconds", latency_ms / 1000.0, {"provider": provider})


def count_runs(sinks: Callable[[str], EventSink], metrics: Metrics) -> Callable[[str], EventSink]:
    """Wrap a per-tenant sink factory (e.g. ``ExecutionRecorder``'s checkpoints) so each sink it builds is
    counted by a ``RunMetricsSink``."""

    def build(tenant_id: str) -> EventSink:
        return RunMetricsSink(sinks(tenant_id), metrics)

    return build
