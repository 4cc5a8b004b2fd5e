"""kill -9 of the worker running an execution: two ``crewflow worker`` processes on PostgreSQL and real Redis,
a chain of four agent nodes whose provider is a local LLMTestServer answering slowly, the holder of the run
killed (SIGKILL) while a node's request is in flight. The other worker takes the job over once the dead
worker's leases run out (the queue's retry, or the watchdog, run here as the cron would) and resumes the run:
it completes, and the server's request log shows each node that had completed before the kill asked once,
the in-flight node at most twice. The cluster harness is bench/chaos.py's."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import ModuleType

import pytest

from crewflow.domain.scheduler import NodeStatus, RunStatus
from crewflow.testing.llm_server import Fault, LLMTestServer

pytestmark = pytest.mark.integration

NODES = 4
DEADLINE = 55.0  # seconds to wait for a state, at most; the test fails rather than hang


def _chaos_module() -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "bench" / "chaos.py"
    spec = importlib.util.spec_from_file_location("crewflow_bench_chaos", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


async def _until(check: Callable[[], Awaitable[bool]], what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        await asyncio.sleep(0.1)


async def test_a_run_whose_worker_is_killed_mid_node_completes_on_the_other_worker(pg_url: str, tmp_path: Path) -> None:
    chaos = _chaos_module()
    async with LLMTestServer(api_key=None) as llm:
        for i in range(1, NODES + 1):
            llm.provider(f"p{i}").api_key = None
            llm.provider(f"p{i}").fail(Fault.hang(delay=1.0, times=None))  # every answer takes a second
        config = chaos.ClusterConfig(pg_url, workers=2, concurrency=2, lease=2.0, heartbeat=0.5, nodes=NODES,
                                     delay=1.0, llm_url=llm.url, log_dir=str(tmp_path))  # fmt: skip
        cluster = chaos.Cluster(config)
        try:
            await cluster.setup()
            cluster.start_workers()
            [execution_id] = await cluster.submit(1)

            async def second_node_in_flight() -> bool:
                async with cluster.uow_factory.for_tenant(cluster.tenant_id) as uow:
                    run = await uow.node_runs.find(execution_id, "n2")
                return run is not None and run.status == NodeStatus.RUNNING

            await _until(second_node_in_flight, "node n2 to start")
            holder = (await cluster.executions())[execution_id].worker_id
            assert holder is not None
            victim = int(holder.split(":")[1])
            assert victim in cluster.alive()
            assert cluster.kill(victim) is not None  # SIGKILL: no clean-up of any kind
            survivor = cluster.alive()
            assert len(survivor) == 1

            async def finished() -> bool:
                # the watchdog runs as the worker's cron job would: it rescues the run when the queue's
                # retry cannot (e.g. the job was dropped as a duplicate while its holder was still alive)
                await cluster.watchdog()
                return str((await cluster.executions())[execution_id].status) in chaos.TERMINAL

            await _until(finished, "the run to finish on the surviving worker")
            execution = (await cluster.executions())[execution_id]
            history = await cluster.node_history(execution_id)
        finally:
            await cluster.close()
        asked = {f"n{i}": len(llm.requests(provider=f"p{i}")) for i in range(1, NODES + 1)}

    seen = f"asked={asked} history={history} error={execution.error!r}"  # what a failure shows
    assert execution.status == RunStatus.COMPLETED, seen
    assert execution.worker_id is None
    assert execution.outputs is not None
    assert execution.outputs.get("out"), seen  # the last node's answer
    assert asked["n1"] == 1, seen  # completed before the kill: never asked again
    assert 1 <= asked["n2"] <= 2, seen  # in flight at the kill: asked again once at most
    assert asked["n3"] == asked["n4"] == 1, seen
    completed_again, in_flight_again = chaos.rerun_counts(history)
    assert completed_again == 0, seen
    assert in_flight_again == 1, seen
    started = [node for kind, node in history if kind == "node.started"]
    assert started == ["in", "n1", "n2", "n2", "n3", "n4", "out"], seen  # n2: killed worker, then survivor
