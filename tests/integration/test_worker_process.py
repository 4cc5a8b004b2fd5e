"""Production mode end to end: the API (built with ``CREWFLOW_REDIS_URL``, served on a real uvicorn server)
only enqueues; two ``crewflow worker`` subprocesses run the flows against a fresh PostgreSQL database.

Covers the README acceptance (serve enqueues, separate workers run the flows), cancel through Redis, a
worker stopped with SIGTERM mid-run (its execution is queued again and finished by the other worker), a
worker killed with SIGKILL (its lease expires and the other worker takes the execution over), and the exit
codes of ``crewflow worker check``."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from api_support import bearer, make_user, served_client

from crewflow.adapters.arq.queue import ArqJobQueue
from crewflow.adapters.crypto.aesgcm import generate_key
from crewflow.adapters.sql.migrate import migrate
from crewflow.application.executions import get_execution
from crewflow.bootstrap import ApiContainer, build_api_container, build_worker_container
from crewflow.domain.events import EventKind
from crewflow.domain.execution import FlowRecord
from crewflow.entrypoints.worker import check_workers, cron_jobs, tenant_ids
from crewflow.settings import Settings

pytestmark = pytest.mark.integration

REDIS_URL = "redis://127.0.0.1:6379/0"
CREWFLOW = str(Path(sys.executable).with_name("crewflow"))
WAIT = 60.0  # upper bound for what should happen within a few seconds (two processes on a shared machine)
TERMINAL = {"completed", "failed", "cancelled"}

SHORT: dict[str, Any] = {
    "name": "Two steps",
    "inputs": {"topic": {"required": True}},
    "agents": {"w": {"role": "Writer", "goal": "Write", "provider": "scripted"}},
    "nodes": [
        {"id": "in", "kind": "input"},
        {"id": "research", "kind": "agent", "agent": "w", "task": "research {{ inputs.topic }}"},
        {"id": "write", "kind": "agent", "agent": "w", "task": "write up: {{ nodes.research.output }}"},
        {"id": "out", "kind": "output", "value": "{{ nodes.write.output }}"},
    ],
    "edges": ["in -> research", "research -> write", "write -> out"],
}


@dataclass
class Stack:
    container: ApiContainer
    env: dict[str, str]
    queue: str
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)

    def start_worker(self, *args: str, **env: str) -> subprocess.Popen[bytes]:
        log = Path(self.env["CREWFLOW_DATA_DIR"]) / f"worker-{len(self.workers)}.log"
        handle = log.open("wb")
        process = subprocess.Popen([CREWFLOW, "worker", "--concurrency", "2", *args], env={**self.env, **env},
                                   stdout=handle, stderr=subprocess.STDOUT)  # fmt: skip
        handle.close()
        self.workers.append(process)
        self.logs.append(log)
        return process

    def worker_log(self, process: subprocess.Popen[bytes]) -> str:
        return self.logs[self.workers.index(process)].read_text(errors="replace")

    async def wait_for_workers(self, count: int) -> None:
        async def ready() -> None:
            while len(await check_workers(REDIS_URL, self.queue, max_age=5)) < count:
                for process in self.workers:
                    assert process.poll() is None, self.worker_log(process)
                await asyncio.sleep(0.1)

        await asyncio.wait_for(ready(), WAIT)

    def by_worker_id(self, worker_id: str) -> subprocess.Popen[bytes]:
        pid = int(worker_id.split(":")[-2])  # host:pid:random
        return next(p for p in self.workers if p.pid == pid)


def _env(tmp_path: Path, database_url: str, queue: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CREWFLOW_")}
    env.update({
        "CREWFLOW_DATA_DIR": str(tmp_path),
        "CREWFLOW_DATABASE_URL": database_url,
        "CREWFLOW_REDIS_URL": REDIS_URL,
        "CREWFLOW_QUEUE": queue,
        "CREWFLOW_SECRET_KEY": generate_key(),
        "CREWFLOW_JWT_SECRET": "j" * 48,
        "CREWFLOW_SPARE_SCHEMAS": "0",
        "CREWFLOW_DB_POOL_SIZE": "4",
        "CREWFLOW_WORKER_HEARTBEAT": "0.5",
        "CREWFLOW_WORKER_LEASE": "3",
        "CREWFLOW_WORKER_POLL": "0.5",
        "CREWFLOW_LOG_FORMAT": "json",
        **extra,
    })  # fmt: skip
    return env


async def _stack(tmp_path: Path, pg_url: str, **extra: str) -> AsyncIterator[Stack]:
    assert (await migrate(pg_url)).ok
    queue = f"crewflow-test:{uuid.uuid4().hex[:12]}"
    env = _env(tmp_path, pg_url, queue, **extra)
    container = await build_api_container(Settings.from_env(env), bcrypt_rounds=4)
    stack = Stack(container, env, queue)
    try:
        yield stack
    finally:
        for process in stack.workers:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in stack.workers:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        await container.aclose()
        client = aioredis.Redis.from_url(REDIS_URL)
        keys = [key async for key in client.scan_iter(match=f"{queue}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


@pytest.fixture
async def stack(tmp_path: Path, pg_url: str) -> AsyncIterator[Stack]:
    async for built in _stack(tmp_path, pg_url, CREWFLOW_SCRIPTED_LATENCY="0.05"):
        yield built


@pytest.fixture
async def slow_stack(tmp_path: Path, pg_url: str) -> AsyncIterator[Stack]:
    """Each scripted answer takes 1.5 s: a run is mid-node long enough to stop its worker."""
    async for built in _stack(tmp_path, pg_url, CREWFLOW_SCRIPTED_LATENCY="1.5"):
        yield built


async def store_flow(container: ApiContainer, tenant_id: str, flow_id: str, body: Mapping[str, Any]) -> None:
    now = container.clock.now()
    async with container.uow_factory.for_tenant(tenant_id) as uow:
        await uow.flows.add(FlowRecord(flow_id, str(body["name"]), now, now), dict(body))
        await uow.commit()


@dataclass
class Api:
    """The API server of the stack, as one user of one tenant."""

    client: httpx.AsyncClient
    container: ApiContainer
    tenant_id: str
    token: str

    async def execute(self, flow_id: str, topic: str = "owls") -> str:
        response = await self.client.post(f"/api/v1/flows/{flow_id}/execute", json={"inputs": {"topic": topic}},
                                          headers=bearer(self.token))  # fmt: skip
        assert response.status_code == 202, response.text
        execution_id: str = response.json()["execution_id"]
        return execution_id

    async def cancel(self, execution_id: str) -> httpx.Response:
        return await self.client.post(f"/api/v1/executions/{execution_id}/cancel", headers=bearer(self.token))

    async def wait_for(self, execution_id: str, statuses: set[str], node: str | None = None) -> dict[str, Any]:
        """Wait until the run, or ``node``, reaches one of ``statuses`` (reading the database: polling the
        API would hit its rate limit); then answer the API's view of the execution."""

        async def reached() -> None:
            while True:
                details = await get_execution(self.tenant_id, execution_id, uow_factory=self.container.uow_factory)
                if node is None and details.execution.status in statuses:
                    return
                if node is not None and any(n.node_id == node and n.status in statuses for n in details.nodes):
                    return
                await asyncio.sleep(0.05)

        await asyncio.wait_for(reached(), WAIT)
        response = await self.client.get(f"/api/v1/executions/{execution_id}", headers=bearer(self.token))
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body


@asynccontextmanager
async def api(stack: Stack, flow: Mapping[str, Any] = SHORT) -> AsyncIterator[Api]:
    """The API served, with a new tenant and user, and ``flow`` stored as ``two``."""
    tenant_id, token = await make_user(stack.container)
    await store_flow(stack.container, tenant_id, "two", flow)
    async with served_client(stack.container) as client:
        yield Api(client, stack.container, tenant_id, token)


async def holder(stack: Stack, execution_id: str) -> str:
    queue = stack.container.queue.inner  # type: ignore[attr-defined]  # behind the tracing decorator
    assert isinstance(queue, ArqJobQueue)

    async def held() -> str:
        while (worker_id := await queue.holder(execution_id)) is None:
            await asyncio.sleep(0.02)
        return worker_id

    return await asyncio.wait_for(held(), WAIT)


def run_check(env: Mapping[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CREWFLOW, "worker", "check", *args], env=dict(env), capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip


# -- tests --------------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def completed_runs(metrics_text: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics_text.splitlines()
               if line.startswith('flow_executions_total{status="completed"}'))  # fmt: skip


async def test_serve_enqueues_and_two_worker_processes_run_the_flows(stack: Stack) -> None:
    assert isinstance(stack.container.queue.inner, ArqJobQueue)  # type: ignore[attr-defined]  # runs nothing here
    ports = [free_port(), free_port()]
    for port in ports:
        stack.start_worker(CREWFLOW_METRICS_PORT=str(port), CREWFLOW_METRICS_ADDR="127.0.0.1")
    await stack.wait_for_workers(2)
    async with api(stack) as user:
        ids = [await user.execute("two", topic=f"topic {i}") for i in range(6)]
        done = [await user.wait_for(execution_id, TERMINAL) for execution_id in ids]
    assert [d["status"] for d in done] == ["completed"] * 6
    assert [d["outputs"] for d in done] == [{"out": f"[Writer] write up: [Writer] research topic {i}"}
                                            for i in range(6)]  # fmt: skip
    for d in done:
        assert {n["node_id"]: n["status"] for n in d["nodes"]} == {
            "in": "completed", "research": "completed", "write": "completed", "out": "completed"}
    # each worker serves its own metrics (CREWFLOW_METRICS_PORT); together they counted the six runs
    async with httpx.AsyncClient() as scraper:
        scraped = [(await scraper.get(f"http://127.0.0.1:{port}/metrics")).text for port in ports]
    assert sum(completed_runs(text) for text in scraped) == 6


async def test_cancel_through_the_api_stops_a_run_in_a_worker_process(slow_stack: Stack) -> None:
    stack = slow_stack
    stack.start_worker()
    await stack.wait_for_workers(1)
    async with api(stack) as user:
        execution_id = await user.execute("two")
        await user.wait_for(execution_id, {"running"}, node="research")
        await holder(stack, execution_id)
        response = await user.cancel(execution_id)
        assert response.status_code == 202, response.text
        done = await user.wait_for(execution_id, TERMINAL)
    assert done["status"] == "cancelled"
    assert {n["node_id"]: n["status"] for n in done["nodes"]}["research"] == "cancelled"


async def test_sigterm_requeues_the_running_execution_and_the_other_worker_finishes_it(slow_stack: Stack) -> None:
    stack = slow_stack
    stack.start_worker()
    stack.start_worker()
    await stack.wait_for_workers(2)
    async with api(stack) as user:
        execution_id = await user.execute("two")
        await user.wait_for(execution_id, {"completed"}, node="research")
        first = stack.by_worker_id(await holder(stack, execution_id))
        first.send_signal(signal.SIGTERM)  # mid-run: "write" is running
        assert await asyncio.to_thread(first.wait, WAIT) == 0, stack.worker_log(first)
        done = await user.wait_for(execution_id, TERMINAL)
        events = await stack.container.logstore.for_tenant(user.tenant_id).events_after(execution_id, 0, 1000)
    log = stack.worker_log(first)
    assert "worker.requeued" in log and execution_id in log, log
    assert done["status"] == "completed", done
    assert done["outputs"] == {"out": "[Writer] write up: [Writer] research owls"}
    # resumed, not restarted: one more run.started, "research" (done before the stop) never ran again
    assert [e.kind for e in events if e.node_id is None].count(EventKind.RUN_STARTED) == 2
    assert [(e.kind, e.node_id) for e in events].count((EventKind.NODE_STARTED, "research")) == 1
    assert not any(e.kind == EventKind.RUN_CANCELLED for e in events)


async def test_a_killed_worker_s_execution_is_taken_over_after_its_lease(slow_stack: Stack) -> None:
    stack = slow_stack
    stack.start_worker()
    stack.start_worker()
    await stack.wait_for_workers(2)
    async with api(stack) as user:
        execution_id = await user.execute("two")
        await user.wait_for(execution_id, {"running"}, node="research")
        victim_id = await holder(stack, execution_id)
        victim = stack.by_worker_id(victim_id)
        victim.kill()  # no shutdown at all: nothing recorded, the lease in Redis just stops being renewed
        victim.wait(WAIT)
        done = await user.wait_for(execution_id, TERMINAL)
    assert done["status"] == "completed", done
    assert done["outputs"] == {"out": "[Writer] write up: [Writer] research owls"}


async def test_worker_check_exit_codes(stack: Stack) -> None:
    unhealthy = run_check(stack.env)
    assert unhealthy.returncode == 1
    assert "no worker heartbeat" in unhealthy.stderr and len(unhealthy.stderr.strip().splitlines()) == 1
    process = stack.start_worker()
    await stack.wait_for_workers(1)
    healthy = run_check(stack.env)
    assert healthy.returncode == 0, healthy.stderr
    assert "1 worker(s) alive" in healthy.stdout
    process.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(process.wait, WAIT) == 0
    assert run_check(stack.env).returncode == 1  # a stopped worker removes its heartbeat
    env = {k: v for k, v in stack.env.items() if k != "CREWFLOW_REDIS_URL"}
    usage = run_check(env)
    assert usage.returncode == 2
    assert usage.stderr.strip().startswith("crewflow worker: CREWFLOW_REDIS_URL is not set")
    unreachable = run_check({**stack.env, "CREWFLOW_REDIS_URL": "redis://127.0.0.1:1/0"})
    assert unreachable.returncode == 1
    assert unreachable.stderr.startswith("crewflow worker: Redis error:")
    assert len(unreachable.stderr.strip().splitlines()) == 1


async def test_the_worker_crons_run_against_the_stack(stack: Stack) -> None:
    """Each cron job a worker schedules runs once, directly: the watchdog, retention and webhook passes over
    every tenant of the stack's database (nothing to recover, purge or deliver in a fresh one) and the
    sandbox's orphan reaper."""
    tenant, _ = await make_user(stack.container)
    container = await build_worker_container(Settings.from_env(stack.env))
    try:
        assert tenant in await tenant_ids(container)
        jobs = cron_jobs(container, stack.queue)
        # named after the queue: deployments sharing a Redis each run every occurrence
        assert sorted(job.name for job in jobs) == [
            f"{stack.queue}:crewflow.sandbox.reap_orphans:{container.worker_id}",  # every worker: its host's
            f"{stack.queue}:crewflow.watchdog.purge_expired",
            f"{stack.queue}:crewflow.watchdog.recover_expired",
            f"{stack.queue}:crewflow.webhooks.deliver_due",
        ]
        for job in jobs:
            await job.coroutine({})
    finally:
        await container.aclose()


async def test_two_api_instances_and_two_workers_share_one_redis(slow_stack: Stack) -> None:
    """An execution started on instance A and run by a worker process is watched on instance B over the
    WebSocket; the watcher drops mid-run and reconnects to A with ``last_seq``: every event exactly once, in
    order, ending with the run's end (live events cross instances through the Redis bus, replays come from
    its streams or the log)."""
    import json

    from api_support import served
    from websockets.asyncio.client import connect

    for _ in range(2):
        slow_stack.start_worker()
    await slow_stack.wait_for_workers(2)
    other = await build_api_container(Settings.from_env(slow_stack.env), bcrypt_rounds=4)
    try:
        async with api(slow_stack) as user, served(other) as address_b, served(slow_stack.container) as address_a:
            execution_id = await user.execute("two")
            url = "ws://{}/api/v1/ws/executions/" + execution_id
            seen: list[dict[str, Any]] = []
            async with connect(url.format(address_b), additional_headers=bearer(user.token)) as ws:
                async for message in ws:  # until the first token of the second agent node: mid-run
                    seen.append(json.loads(message))
                    if seen[-1].get("node_id") == "write":
                        break
            assert seen and seen[-1]["kind"] != "run.completed"
            last_seq = seen[-1]["seq"]
            async with connect(url.format(address_a) + f"?last_seq={last_seq}",
                               additional_headers=bearer(user.token)) as ws:  # fmt: skip
                seen.extend([json.loads(message) async for message in ws])
            done = await user.wait_for(execution_id, TERMINAL)
            stored = await slow_stack.container.logstore.for_tenant(user.tenant_id).events_after(execution_id)
    finally:
        await other.aclose()
    assert done["status"] == "completed"
    assert [e["seq"] for e in seen] == list(range(1, len(seen) + 1))  # exactly once, in order, no gap
    assert seen[0]["kind"] == "run.started" and seen[-1]["kind"] == "run.completed"
    assert [e.seq for e in stored] == [e["seq"] for e in seen]  # the watcher missed nothing the log has
