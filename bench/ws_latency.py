"""WebSocket event latency: from an execution event's creation to its receipt by a WebSocket client, with the
checkpoint and the replay log (SQLite, embedded defaults) in the path, and lost/duplicated events.

    .venv/bin/python bench/ws_latency.py [--runs 20] [--nodes 10] [--words 20]

The API runs on uvicorn in a thread of this process (its own event loop); the client (httpx + websockets)
runs in the main thread. Each run executes a chain of ``--nodes`` scripted agents that stream their answer
word by word (``--words`` token events per node); the first node waits 0.3 s so the client is connected
before the run's events come, and only events created after the client connected count as live (the
earlier ones are replayed from the log, which is not what this measures). Latency = client receipt time -
the event's ``at`` (both ``time.time()`` on this machine). Event path: engine → checkpoint sink (SQL) →
log sink (SQL) → in-memory bus → WebSocket. Target (issue 6): p95 ≤ 5 ms, 0 lost events.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import uvicorn
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from crewflow.adapters.runtime import ScriptedRuntime
from crewflow.bootstrap import build_api_container
from crewflow.domain.execution import FlowRecord
from crewflow.domain.tenancy import Role, Tenant, User
from crewflow.entrypoints.http import create_app
from crewflow.ports.runtime import AgentWork, CrewWork, NodeEmitter, NodeOutcome
from crewflow.settings import Settings

FIRST_NODE_WAIT = 0.3


class Runtime:
    """Scripted, streaming; the first node waits a little so the client is connected before events flow."""

    def __init__(self, words: int) -> None:
        self.inner = ScriptedRuntime(stream=True, replies={"w": " ".join(["word"] * words)})

    async def run_agent(self, work: AgentWork, emit: NodeEmitter) -> NodeOutcome:
        if work.node_id == "n0":
            await asyncio.sleep(FIRST_NODE_WAIT)
        return await self.inner.run_agent(work, emit)

    async def run_crew(self, work: CrewWork, emit: NodeEmitter) -> NodeOutcome:
        return await self.inner.run_crew(work, emit)


def flow(nodes: int) -> dict[str, Any]:
    ids = [f"n{i}" for i in range(nodes)]
    return {
        "agents": {"w": {"role": "Writer", "goal": "Write", "provider": "scripted"}},
        "nodes": [{"id": "in", "kind": "input"}]
        + [{"id": n, "kind": "agent", "agent": "w", "task": "write"} for n in ids]
        + [{"id": "out", "kind": "output", "value": f"{{{{ nodes.{ids[-1]}.output }}}}"}],
        "edges": [f"{a} -> {b}" for a, b in zip(["in", *ids], [*ids, "out"], strict=True)],
    }


class Server:
    def __init__(self, data_dir: str, nodes: int, words: int) -> None:
        self.data_dir, self.nodes, self.words = data_dir, nodes, words
        self.ready = threading.Event()
        self.token = ""
        self.port = 0
        self.server: uvicorn.Server | None = None
        self.thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        settings = Settings(data_dir=self.data_dir, extra={"CREWFLOW_JWT_SECRET": "x" * 40,
                                                           "CREWFLOW_LOG_LEVEL": "warning"})  # fmt: skip
        container = await build_api_container(settings, bcrypt_rounds=4, runtime=Runtime(self.words))
        tenant = uuid.uuid4().hex[:12]
        await container.provisioner.register(Tenant(tenant, f"t-{tenant}", "T", f"tenant_{tenant}",
                                                    datetime.now(UTC)))  # fmt: skip
        user = User(uuid.uuid4().hex, tenant, "bench@example.com", Role.ADMIN, container.hasher.hash("pw"))
        async with container.uow_factory.platform() as uow:
            await uow.users.add(user)
            await uow.commit()
        now = container.clock.now()
        async with container.uow_factory.for_tenant(tenant) as uow:
            await uow.flows.add(FlowRecord("chain", "Chain", now, now), flow(self.nodes))
            await uow.commit()
        self.token = container.tokens.issue(user.id, tenant, Role.ADMIN).token
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(create_app(container), log_level="warning", lifespan="on"))
        task = asyncio.create_task(self.server.serve(sockets=[sock]))
        while not self.server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        self.ready.set()
        await task

    def start(self) -> None:
        self.thread.start()
        self.ready.wait()

    def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
        self.thread.join(30)


async def one_run(base: str, token: str) -> tuple[list[float], int, int]:
    """Latencies (s) of the live events, events received, and events lost or duplicated."""
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=f"http://{base}") as client:
        started = await client.post("/api/v1/flows/chain/execute", json={}, headers=headers)
        started.raise_for_status()
        execution_id = started.json()["execution_id"]
    latencies: list[float] = []
    seqs: list[int] = []
    async with connect(f"ws://{base}/api/v1/ws/executions/{execution_id}", additional_headers=headers) as ws:
        connected = time.time()
        try:
            async for message in ws:
                received = time.time()
                event = json.loads(message)
                seqs.append(event["seq"])
                if event["at"] > connected:
                    latencies.append(received - event["at"])
        except ConnectionClosed:
            pass
    expected = list(range(1, max(seqs, default=0) + 1))
    wrong = len(set(expected) - set(seqs)) + (len(seqs) - len(set(seqs)))
    return latencies, len(seqs), wrong


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000


async def main_async(args: argparse.Namespace, server: Server) -> int:
    base = f"127.0.0.1:{server.port}"
    await one_run(base, server.token)  # warm-up
    latencies: list[float] = []
    received = wrong = 0
    for _ in range(args.runs):
        lat, count, bad = await one_run(base, server.token)
        latencies += lat
        received += count
        wrong += bad
    print(f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} cores; "
          f"{args.runs} runs x {args.nodes} nodes x {args.words} tokens")  # fmt: skip
    print(f"events received {received}, live events measured {len(latencies)}, lost or duplicated {wrong}")
    print(f"latency ms: p50 {pct(latencies, 0.5):.2f}  p95 {pct(latencies, 0.95):.2f}  "
          f"p99 {pct(latencies, 0.99):.2f}  max {max(latencies) * 1000:.2f}  "
          f"mean {statistics.fmean(latencies) * 1000:.2f}")  # fmt: skip
    met = pct(latencies, 0.95) <= 5.0 and wrong == 0
    print(f"target p95 <= 5 ms and 0 lost: {'met' if met else 'NOT met'}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--words", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as data_dir:
        server = Server(data_dir, args.nodes, args.words)
        server.start()
        try:
            return asyncio.run(main_async(args, server))
        finally:
            server.stop()


if __name__ == "__main__":
    sys.exit(main())
