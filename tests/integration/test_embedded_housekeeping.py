"""The embedded server (in-process queue, no arq worker) runs the worker crons itself: an execution a stopped
process left ``running`` is resumed from its checkpoints once its lease has run out."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from api_support import make_user

from crewflow.bootstrap import build_api_container
from crewflow.domain.execution import Execution, FlowRecord, NodeRun
from crewflow.domain.scheduler import NodeStatus, RunStatus
from crewflow.settings import Settings

pytestmark = pytest.mark.integration

FLOW = {
    "id": "pair",
    "agents": {"w": {"role": "Writer", "goal": "Write", "provider": "scripted"}},
    "nodes": [
        {"id": "first", "kind": "agent", "agent": "w", "task": "one"},
        {"id": "second", "kind": "agent", "agent": "w", "task": "two {{ nodes.first.output }}"},
    ],
    "edges": [{"source": "first", "target": "second"}],
}


async def test_a_run_left_running_by_a_stopped_process_is_resumed_by_the_embedded_server(tmp_path: Path) -> None:
    settings = Settings.from_env({"CREWFLOW_DATA_DIR": str(tmp_path), "CREWFLOW_HOUSEKEEPING_INTERVAL": "0.2"})
    container = await build_api_container(settings, bcrypt_rounds=4)
    try:
        await container.start()  # what the app's start-up does
        tenant, _ = await make_user(container)
        now = container.clock.now()
        async with container.uow_factory.for_tenant(tenant) as uow:
            await uow.flows.add(FlowRecord("pair", "Pair", now, now), FLOW)
            await uow.executions.add(Execution("e-left", "pair", 1, created_at=now - 60, status=RunStatus.RUNNING,
                                               started_at=now - 60))  # fmt: skip
            # what the stopped process had checkpointed: `first` done; its lease ran out a while ago
            await uow.node_runs.save(NodeRun("e-left", "first", status=NodeStatus.COMPLETED, output="from before",
                                               attempt=1, started_at=now - 59, finished_at=now - 58))  # fmt: skip
            assert await uow.executions.claim("e-left", "stopped-process", until=now - 30, now=now - 60)
            await uow.commit()
        for _ in range(200):
            async with container.uow_factory.for_tenant(tenant) as uow:
                execution = await uow.executions.get("e-left")
                runs = {r.node_id: r for r in (await uow.node_runs.list_for_execution("e-left")).items}
            if execution.status.is_terminal:
                break
            await asyncio.sleep(0.05)
        assert execution.status == RunStatus.COMPLETED
        assert runs["first"].output == "from before"  # the completed node was not run again
        assert runs["second"].status == NodeStatus.COMPLETED
        assert "from before" in str(runs["second"].output)
    finally:
        await container.aclose()
