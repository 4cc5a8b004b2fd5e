"""The run checkpoint: an ``EventSink`` that folds engine events into the execution row and per-node
``node_runs`` rows, through the unit of work, one transaction per batch.

The engine awaits ``publish`` before the run's next step, so once a node's start or result has been
published it is durable: a resumed run reads ``node_runs`` and never re-runs a completed node.

Folding rules: ``run.*`` events set the execution's status, times, outputs (``run.completed``) and error
(``run.failed`` / ``run.cancelled``); ``node.*`` events set the node's status, attempt, output, error,
times and a router's chosen branches; ``llm.attempt`` events add their tokens and cost to the node (a
``node.completed`` that carries ``input_tokens``/``output_tokens``/``cost`` sets the totals instead).
Every batch moves the execution's ``last_seq``. Events at or below the stored ``last_seq`` were checkpointed
already and are skipped, so publishing a batch again (a retry after a failed commit) changes nothing.

It depends on the ``UnitOfWorkFactory`` port only, so it works over any implementation of it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from crewflow.adapters.sql.logstore import append_events_in
from crewflow.adapters.sql.uow import SqlUnitOfWork
from crewflow.domain.events import EventKind, ExecutionEvent
from crewflow.domain.execution import NodeRun
from crewflow.domain.scheduler import NodeStatus, RunStatus
from crewflow.ports.uow import UnitOfWork, UnitOfWorkFactory

__all__ = ["CheckpointSink"]

_NODE_STATUS = {
    EventKind.NODE_STARTED: NodeStatus.RUNNING,
    EventKind.NODE_RETRYING: NodeStatus.RETRYING,
    EventKind.NODE_COMPLETED: NodeStatus.COMPLETED,
    EventKind.NODE_FAILED: NodeStatus.FAILED,
    EventKind.NODE_SKIPPED: NodeStatus.SKIPPED,
    EventKind.NODE_CANCELLED: NodeStatus.CANCELLED,
}
_RUN_STATUS = {
    EventKind.RUN_STARTED: RunStatus.RUNNING,
    EventKind.RUN_COMPLETED: RunStatus.COMPLETED,
    EventKind.RUN_FAILED: RunStatus.FAILED,
    EventKind.RUN_CANCELLED: RunStatus.CANCELLED,
}
_COUNTED = frozenset({EventKind.LLM_ATTEMPT})
_ENDED = frozenset({EventKind.NODE_COMPLETED, EventKind.NODE_FAILED, EventKind.NODE_SKIPPED, EventKind.NODE_CANCELLED})


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _float(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) and value > 0 else 0.0


@dataclass(slots=True)
class _RunChanges:
    last_seq: int
    status: RunStatus | None = None
    started_at: float | None = None
    finished_at: float | None = None
    outputs: Mapping[str, Any] | None = None
    error: str | None = None

    def apply(self, event: ExecutionEvent) -> None:
        self.last_seq = max(self.last_seq, event.seq)
        status = _RUN_STATUS.get(event.kind)
        if status is None:
            return
        self.status = status
        data = event.data
        if event.kind == EventKind.RUN_STARTED:
            self.started_at = event.at
        else:
            self.finished_at = event.at
        if event.kind == EventKind.RUN_COMPLETED:
            outputs = data.get("outputs")
            self.outputs = dict(outputs) if isinstance(outputs, Mapping) else {}
        elif event.kind == EventKind.RUN_FAILED:
            self.error = str(data.get("error") or "failed")
        elif event.kind == EventKind.RUN_CANCELLED:
            self.error = str(data.get("reason") or "cancelled")


def _fold_node(run: NodeRun, event: ExecutionEvent) -> NodeRun:
    data = event.data
    if event.kind == EventKind.LLM_ATTEMPT:
        return replace(
            run,
            input_tokens=run.input_tokens + _int(data.get("input_tokens")),
            output_tokens=run.output_tokens + _int(data.get("output_tokens")),
            cost=run.cost + _float(data.get("cost")),
        )
    status = _NODE_STATUS.get(event.kind)
    if status is None:  # node.token, node.log: the log store keeps them; nothing to checkpoint
        return run
    run = replace(run, status=status)
    attempt = data.get("attempt")
    if isinstance(attempt, int) and not isinstance(attempt, bool) and attempt >= 0:
        run = replace(run, attempt=attempt)
    if event.kind == EventKind.NODE_STARTED:
        return replace(run, started_at=event.at, finished_at=None, duration=None, output=None, error=None)
    if event.kind == EventKind.NODE_RETRYING:
        return replace(run, error=str(data.get("error") or ""))
    if event.kind in _ENDED:
        duration = data.get("duration")
        if not isinstance(duration, int | float) or isinstance(duration, bool):
            duration = None if run.started_at is None else max(0.0, event.at - run.started_at)
        run = replace(run, finished_at=event.at, duration=duration)
    if event.kind == EventKind.NODE_COMPLETED:
        branches = data.get("branches")
        run = replace(
            run,
            output=data.get("output"),
            error=None,
            branches=tuple(str(b) for b in branches) if isinstance(branches, list | tuple) else None,
        )
        if any(k in data for k in ("input_tokens", "output_tokens", "cost")):
            run = replace(
                run,
                input_tokens=_int(data.get("input_tokens")),
                output_tokens=_int(data.get("output_tokens")),
                cost=_float(data.get("cost")),
            )
    elif event.kind == EventKind.NODE_FAILED:
        run = replace(run, error=str(data.get("error") or "failed"))
    elif event.kind == EventKind.NODE_CANCELLED:
        run = replace(run, error=str(data.get("reason") or "cancelled"))
    return run


class CheckpointSink:
    """``EventSink`` writing run checkpoints for one tenant. Raises ``NotFound`` (and writes nothing) when
    the batch names an execution that was not added first (``uow.executions.add``)."""

    def __init__(self, uow_factory: UnitOfWorkFactory, tenant_id: str, *, store_events: bool = False) -> None:
        """``store_events``: also append the events to the SQL replay log in the same transaction (one
        commit per batch instead of two when the log store is this database)."""
        self._uow_factory = uow_factory
        self._tenant_id = tenant_id
        self._store_events = store_events

    async def publish(self, events: Sequence[ExecutionEvent]) -> None:
        if not events:
            return
        by_execution: dict[str, list[ExecutionEvent]] = {}
        for event in events:
            by_execution.setdefault(event.execution_id, []).append(event)
        async with self._uow_factory.for_tenant(self._tenant_id) as uow:
            for execution_id, batch in by_execution.items():
                await self._checkpoint(uow, execution_id, batch)
            if self._store_events:
                assert isinstance(uow, SqlUnitOfWork), "store_events needs the SQL unit of work"
                await append_events_in(uow.connection, events)
            await uow.commit()

    async def _checkpoint(self, uow: UnitOfWork, execution_id: str, events: list[ExecutionEvent]) -> None:
        stored = await uow.executions.get(execution_id)
        fresh = sorted((e for e in events if e.seq > stored.last_seq), key=lambda e: e.seq)
        if not fresh:
            return
        changes = _RunChanges(last_seq=stored.last_seq)
        node_events = [e for e in fresh if e.node_id is not None and (e.kind in _NODE_STATUS or e.kind in _COUNTED)]
        runs = await uow.node_runs.find_many(execution_id, {e.node_id for e in node_events if e.node_id})
        for event in fresh:
            changes.apply(event)
        for event in node_events:
            node_id = event.node_id or ""
            run = runs.get(node_id) or NodeRun(execution_id, node_id, NodeStatus.PENDING)
            runs[node_id] = _fold_node(run, event)
        await uow.executions.record_progress(
            execution_id,
            last_seq=changes.last_seq,
            status=changes.status,
            started_at=changes.started_at,
            finished_at=changes.finished_at,
            outputs=changes.outputs,
            error=changes.error,
        )
        await uow.node_runs.save_many(list(runs.values()))
