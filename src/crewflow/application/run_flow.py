"""Use case: run a flow and record it (execution row, node checkpoints, events) in a tenant's store."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from crewflow.application.engine import Engine, EventListener
from crewflow.application.results import RunResult
from crewflow.domain.execution import Execution
from crewflow.domain.flow import Flow
from crewflow.domain.graph import Graph
from crewflow.ports.events import EventSink
from crewflow.ports.uow import UnitOfWorkFactory

__all__ = ["run_recorded"]


async def run_recorded(
    engine: Engine,
    uow_factory: UnitOfWorkFactory,
    tenant_id: str,
    flow: Flow,
    inputs: Mapping[str, Any],
    *,
    sinks: Sequence[EventSink],
    listeners: Sequence[EventListener] = (),
    graph: Graph | None = None,
    **options: Any,
) -> RunResult:
    """The execution row is committed before the run starts, so every checkpoint has a row to land on and
    a crash leaves a visible, resumable execution rather than nothing."""
    execution_id = engine.ids.new_id()
    execution = Execution(id=execution_id, flow_id=flow.id, flow_version=flow.version,
                          created_at=engine.clock.now(), inputs=dict(inputs))  # fmt: skip
    async with uow_factory.for_tenant(tenant_id) as uow:
        await uow.executions.add(execution)
        await uow.commit()
    return await engine.run(flow, inputs, tenant_id=tenant_id, execution_id=execution_id, sinks=sinks,
                            listeners=listeners, graph=graph, **options)  # fmt: skip
