"""The checkpoint sink persists runs of the real engine through the unit of work (SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from crewflow.adapters.runtime import ScriptedRuntime
from crewflow.adapters.sql.checkpoints import CheckpointSink
from crewflow.adapters.sql.uow import SqlUnitOfWorkFactory
from crewflow.adapters.system import SystemClock, UuidGenerator
from crewflow.application.engine import Engine, Resume
from crewflow.domain.codec import flow_from_dict
from crewflow.domain.errors import NotFound
from crewflow.domain.events import EventKind, ExecutionEvent
from crewflow.domain.execution import Execution, NodeRun
from crewflow.domain.flow import Flow
from crewflow.domain.scheduler import NodeStatus, RunStatus

pytestmark = pytest.mark.integration

NewTenant = Callable[[], Awaitable[str]]
AGENT = {"role": "Analyst", "goal": "Analyse", "provider": "scripted"}


def _flow() -> Flow:
    return flow_from_dict({
        "id": "report",
        "agents": {"a": AGENT},
        "nodes": [
            {"id": "in", "kind": "input"},
            {"id": "research", "kind": "agent", "agent": "a", "task": "research {{ inputs.topic }}",
             "retry": {"max_attempts": 3, "initial_delay": 0.0, "jitter": 0}},
            {"id": "route", "kind": "router", "routes": [{"when": "inputs.long", "to": "long"}], "default": "short"},
            {"id": "long", "kind": "agent", "agent": "a", "task": "write long"},
            {"id": "short", "kind": "agent", "agent": "a", "task": "write short"},
            {"id": "out", "kind": "output"},
        ],
        "edges": ["in -> research", "research -> route", "route -> long", "route -> short", "long -> out",
                  "short -> out"],
    })  # fmt: skip


def _engine(runtime: ScriptedRuntime) -> Engine:
    return Engine(runtime, clock=SystemClock(), ids=UuidGenerator())


async def _add_execution(uow_factory: SqlUnitOfWorkFactory, tenant: str, execution_id: str) -> None:
    async with uow_factory.for_tenant(tenant) as uow:
        await uow.executions.add(Execution(execution_id, "report", 1, created_at=1.0, inputs={"topic": "owls"}))
        await uow.commit()


async def _node_runs(uow_factory: SqlUnitOfWorkFactory, tenant: str, execution_id: str) -> dict[str, NodeRun]:
    async with uow_factory.for_tenant(tenant) as uow:
        page = await uow.node_runs.list_for_execution(execution_id)
    return {run.node_id: run for run in page.items}


async def test_a_run_of_the_engine_is_checkpointed_node_by_node(
    uow_factory: SqlUnitOfWorkFactory, new_tenant: NewTenant
) -> None:
    tenant = await new_tenant()
    await _add_execution(uow_factory, tenant, "run-1")
    runtime = ScriptedRuntime(failures={"research": 1})
    sink = CheckpointSink(uow_factory, tenant)
    result = await _engine(runtime).run(_flow(), {"topic": "owls", "long": False}, execution_id="run-1",
                                        tenant_id=tenant, sinks=[sink])  # fmt: skip
    assert result.ok

    async with uow_factory.for_tenant(tenant) as uow:
        execution = await uow.executions.get("run-1")
    assert execution.status == RunStatus.COMPLETED
    assert execution.last_seq == len(result.events) == result.events[-1].seq
    assert execution.outputs == dict(result.outputs)
    assert (execution.started_at, execution.finished_at) == (result.started_at, result.finished_at)
    assert execution.error is None

    runs = await _node_runs(uow_factory, tenant, "run-1")
    assert {n: r.status for n, r in runs.items()} == {n: r.status for n, r in result.nodes.items()}
    assert runs["long"].status == NodeStatus.SKIPPED
    research = runs["research"]
    assert (research.attempt, research.output, research.error) == (2, result.nodes["research"].output, None)
    assert research.started_at == result.nodes["research"].started_at
    assert research.finished_at == result.nodes["research"].finished_at
    assert research.duration is not None
    assert research.duration >= 0
    assert runs["route"].branches == ("short",)


async def test_checkpoints_are_enough_to_resume_without_re_running_completed_nodes(
    uow_factory: SqlUnitOfWorkFactory, new_tenant: NewTenant
) -> None:
    tenant = await new_tenant()
    first = await _engine(ScriptedRuntime()).run(_flow(), {"topic": "owls"}, execution_id="run-2")
    # the process "crashed" right after the router's result was checkpointed
    cut = next(i for i, e in enumerate(first.events) if e.kind == EventKind.NODE_COMPLETED and e.node_id == "route")
    await _add_execution(uow_factory, tenant, "run-2")
    sink = CheckpointSink(uow_factory, tenant)
    await sink.publish(first.events[: cut + 1])

    runs = await _node_runs(uow_factory, tenant, "run-2")
    completed = {n: r.output for n, r in runs.items() if r.status == NodeStatus.COMPLETED}
    branches = {n: r.branches for n, r in runs.items() if r.branches is not None}
    async with uow_factory.for_tenant(tenant) as uow:
        last_seq = (await uow.executions.get("run-2")).last_seq
    assert set(completed) == {"in", "research", "route"}
    assert last_seq == first.events[cut].seq

    runtime = ScriptedRuntime()
    resumed = await _engine(runtime).run(
        _flow(), {"topic": "owls"}, execution_id="run-2", tenant_id=tenant, sinks=[sink],
        resume=Resume(completed, {n: list(b) for n, b in branches.items()}, last_seq),
    )  # fmt: skip
    assert resumed.ok
    assert [node for node, _ in runtime.calls] == ["short"]
    assert resumed.outputs == first.outputs
    async with uow_factory.for_tenant(tenant) as uow:
        execution = await uow.executions.get("run-2")
    assert execution.status == RunStatus.COMPLETED
    assert execution.last_seq > last_seq


def _event(seq: int, kind: EventKind, node_id: str | None = None, **data: Any) -> ExecutionEvent:
    return ExecutionEvent("run-3", seq, kind, 100.0 + seq, node_id, data)


async def test_llm_attempts_add_up_per_node_and_a_batch_published_twice_counts_once(
    uow_factory: SqlUnitOfWorkFactory, new_tenant: NewTenant
) -> None:
    tenant = await new_tenant()
    await _add_execution(uow_factory, tenant, "run-3")
    sink = CheckpointSink(uow_factory, tenant)
    batch = [
        _event(1, EventKind.RUN_STARTED, inputs={"topic": "owls"}),
        _event(2, EventKind.NODE_STARTED, "a", attempt=1),
        _event(
            3,
            EventKind.LLM_ATTEMPT,
            "a",
            provider="p1",
            input_tokens=100,
            output_tokens=0,
            cost=0.0,
            outcome="rate_limited",
        ),
        _event(
            4,
            EventKind.LLM_ATTEMPT,
            "a",
            provider="p2",
            input_tokens=100,
            output_tokens=40,
            cost=0.25,
            outcome="success",
        ),
        _event(5, EventKind.NODE_TOKEN, "a", text="hello "),
    ]
    await sink.publish(batch)
    await sink.publish(batch)
    end = [
        _event(6, EventKind.NODE_COMPLETED, "a", attempt=1, output="hello", duration=4.0),
        _event(7, EventKind.RUN_FAILED, error="node 'b' failed: boom"),
    ]
    await sink.publish(end)
    await sink.publish(batch + end)

    run = (await _node_runs(uow_factory, tenant, "run-3"))["a"]
    assert (run.status, run.attempt, run.output, run.duration) == (NodeStatus.COMPLETED, 1, "hello", 4.0)
    assert (run.input_tokens, run.output_tokens, run.cost) == (200, 40, 0.25)
    assert (run.started_at, run.finished_at) == (102.0, 106.0)
    async with uow_factory.for_tenant(tenant) as uow:
        execution = await uow.executions.get("run-3")
    assert (execution.status, execution.last_seq, execution.error) == (RunStatus.FAILED, 7, "node 'b' failed: boom")
    assert (execution.started_at, execution.finished_at) == (101.0, 107.0)


async def test_events_of_an_execution_unknown_to_the_tenant_are_refused_and_nothing_is_written(
    uow_factory: SqlUnitOfWorkFactory, new_tenant: NewTenant
) -> None:
    owner, other = await new_tenant(), await new_tenant()
    await _add_execution(uow_factory, owner, "run-3")
    with pytest.raises(NotFound):
        await CheckpointSink(uow_factory, other).publish([_event(1, EventKind.RUN_STARTED)])
    async with uow_factory.for_tenant(owner) as uow:
        execution = await uow.executions.get("run-3")
        assert (execution.status, execution.last_seq) == (RunStatus.PENDING, 0)
    async with uow_factory.for_tenant(other) as uow:
        assert (await uow.executions.list()).items == ()
