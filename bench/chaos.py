"""Chaos benchmark: runs on several ``crewflow worker`` processes (PostgreSQL + Redis) while workers are
killed with SIGKILL at random and restarted.

    .venv/bin/python bench/chaos.py --runs 50                # 3 workers, a kill every ~2 s
    .venv/bin/python bench/chaos.py --runs 1000 --workers 3 --json

Each run is a chain of ``--nodes`` agent nodes (offline ``scripted`` agents answering in ``--delay`` seconds,
word by word; ``--llm`` puts each node on its own provider of a local LLMTestServer instead). Every
``--kill-every`` seconds (exponentially distributed) a worker that holds a run is killed with SIGKILL and
started again ``--restart-after`` seconds later. The watchdog (``recover_expired``) runs every
``--watchdog-every`` seconds, as the worker's cron job does. Afterwards, from the event log of every run:

- **terminal**: share of runs that reached completed/failed/cancelled (target 100 %);
- **completed nodes re-run**: a ``node.started`` after that node's ``node.completed`` (target 0);
- **stuck**: runs not terminal when the bench gave up (``--timeout``) (target 0);
- also: in-flight nodes run again (at-least-once, expected after kills), kills, run attempts.

It makes a fresh PostgreSQL database (dropped at the end) unless ``--database-url`` is given, and a unique
Redis queue name whose keys it deletes at the end (never FLUSHDB). The pieces are importable:
``tests/integration/test_worker_kill9.py`` uses ``Cluster``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

PG_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
TERMINAL = frozenset({"completed", "failed", "cancelled"})


# -- the cluster ----------------------------------------------------------------------------------------------
@dataclass
class ClusterConfig:
    database_url: str
    redis_url: str = "redis://127.0.0.1:6379/0"
    workers: int = 3
    concurrency: int = 4
    lease: float = 2.0  # CREWFLOW_WORKER_LEASE: the Redis job lease and the execution lease
    heartbeat: float = 0.5
    poll: float = 0.25
    nodes: int = 4
    delay: float = 0.3  # seconds one node takes (scripted latency, or the LLM server's slow answer)
    llm_url: str | None = None  # base URL of an LLMTestServer: node i uses provider "p<i>" on it
    queue: str = field(default_factory=lambda: f"crewflow:chaos:{uuid.uuid4().hex[:10]}")
    log_dir: str | None = None


def chain_flow(nodes: int, llm: bool) -> dict[str, Any]:
    agents = {f"w{i}": {"role": f"Writer {i}", "goal": "Write one step",
                        "provider": f"p{i}" if llm else "scripted"} for i in range(1, nodes + 1)}  # fmt: skip
    chain = [{"id": f"n{i}", "kind": "agent", "agent": f"w{i}", "task": f"Step {i} of run {{{{ inputs.run }}}}"}
             for i in range(1, nodes + 1)]  # fmt: skip
    ids = ["in", *(n["id"] for n in chain), "out"]
    return {
        "id": "chaos",
        "inputs": {"run": {"required": True}},
        "agents": agents,
        "nodes": [{"id": "in", "kind": "input"}, *chain, {"id": "out", "kind": "output"}],
        "edges": [f"{a} -> {b}" for a, b in itertools.pairwise(ids)],
    }


class Cluster:
    """A tenant with the chain flow in a migrated database, and ``crewflow worker`` processes on one queue."""

    def __init__(self, config: ClusterConfig) -> None:
        self.config = config
        self.tenant_id = uuid.uuid4().hex[:16]
        self.procs: dict[int, subprocess.Popen[bytes]] = {}  # slot -> process
        self.kills = 0
        self._tmp = tempfile.TemporaryDirectory(prefix="crewflow-chaos-")
        self.data_dir = self._tmp.name
        self.log_dir = Path(config.log_dir or self.data_dir)
        self._opened: list[Any] = []

    # -- set-up and tear-down --
    async def setup(self) -> None:
        from crewflow.adapters.arq.queue import ArqJobQueue
        from crewflow.adapters.sql.logstore import SqlLogStore
        from crewflow.adapters.sql.migrate import migrate
        from crewflow.adapters.sql.provisioning import open_provisioner
        from crewflow.adapters.sql.uow import build_uow_factory
        from crewflow.adapters.system import SystemClock, UuidGenerator
        from crewflow.domain.execution import FlowRecord, LLMProviderConfig
        from crewflow.domain.tenancy import Tenant, schema_name_for

        report = await migrate(self.config.database_url)
        if not report.ok:
            raise RuntimeError("migrating the benchmark database failed")
        self.provisioner = open_provisioner(self.config.database_url)
        await self.provisioner.register(Tenant(self.tenant_id, f"chaos-{self.tenant_id}", "Chaos", schema_name_for(
            self.tenant_id), datetime.now(UTC)))  # fmt: skip
        self.uow_factory = build_uow_factory(self.config.database_url, pool_size=4)
        self.logstore = SqlLogStore(self.uow_factory.database)
        self.queue = ArqJobQueue(self.config.redis_url, queue_name=self.config.queue)
        await self.queue.start()
        self.clock, self.ids = SystemClock(), UuidGenerator()
        now = self.clock.now()
        async with self.uow_factory.for_tenant(self.tenant_id) as uow:
            if self.config.llm_url:
                for i in range(1, self.config.nodes + 1):
                    base_url = f"{self.config.llm_url}/p/p{i}/v1"
                    await uow.providers.add(LLMProviderConfig(
                        id=f"p{i}", name=f"p{i}", provider_type="openai", model=f"model-{i}", created_at=now,
                        updated_at=now, base_url=base_url, config={"timeout": 60}))  # fmt: skip
            await uow.flows.add(FlowRecord("chaos", "Chaos chain", now, now),
                                chain_flow(self.config.nodes, bool(self.config.llm_url)))  # fmt: skip
            await uow.commit()

    async def close(self) -> None:
        self.stop_workers()
        with contextlib.suppress(Exception):
            await self._delete_redis_keys()
        with contextlib.suppress(Exception):
            await self.queue.close()
        with contextlib.suppress(Exception):
            await self.provisioner.drop(self.tenant_id)
        with contextlib.suppress(Exception):
            await self.provisioner.aclose()
        with contextlib.suppress(Exception):
            await self.uow_factory.close()
        self._tmp.cleanup()

    async def _delete_redis_keys(self) -> None:
        """This queue's keys and arq's keys of this tenant's executions; nothing else."""
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(self.config.redis_url)
        try:
            doomed = [key async for key in client.scan_iter(match=f"{self.config.queue}*", count=500)]
            for execution_id in await self.execution_ids():
                doomed += [f"arq:{kind}:{execution_id}" for kind in ("job", "in-progress", "retry", "result")]
            for start in range(0, len(doomed), 500):
                await client.delete(*doomed[start : start + 500])
        finally:
            await client.aclose()

    # -- workers --
    def worker_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CREWFLOW_")}
        env.update({
            "CREWFLOW_DATABASE_URL": self.config.database_url, "CREWFLOW_REDIS_URL": self.config.redis_url,
            "CREWFLOW_QUEUE": self.config.queue, "CREWFLOW_DATA_DIR": self.data_dir,
            "CREWFLOW_WORKER_CONCURRENCY": str(self.config.concurrency),
            "CREWFLOW_WORKER_LEASE": str(self.config.lease), "CREWFLOW_WORKER_HEARTBEAT": str(self.config.heartbeat),
            "CREWFLOW_WORKER_POLL": str(self.config.poll), "CREWFLOW_DB_POOL_SIZE": "3",
            "CREWFLOW_SPARE_SCHEMAS": "0", "CREWFLOW_LOG_LEVEL": "info", "CREWFLOW_LOG_FORMAT": "json",
            "CREWFLOW_SCRIPTED_LATENCY": "0" if self.config.llm_url else str(self.config.delay),
            "CREWFLOW_JWT_SECRET": "chaos-" + "x" * 40,
            # CrewAI (only with --llm): offline, its files in the temporary directory
            "XDG_DATA_HOME": str(Path(self.data_dir) / "xdg"), "CREWAI_DISABLE_TELEMETRY": "true",
            "OTEL_SDK_DISABLED": "true", "OPENAI_API_KEY": "sk-not-used", "OPENAI_BASE_URL": "http://127.0.0.1:9/v1",
        })  # fmt: skip
        return env

    def start_worker(self, slot: int) -> subprocess.Popen[bytes]:
        command = [str(Path(sys.executable).parent / "crewflow"), "worker", "--queue", self.config.queue]
        log = (self.log_dir / f"worker-{slot}.log").open("ab")
        proc = subprocess.Popen(command, env=self.worker_env(), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
        log.close()
        self.procs[slot] = proc
        return proc

    def start_workers(self) -> None:
        for slot in range(self.config.workers):
            self.start_worker(slot)

    def kill(self, pid: int) -> int | None:
        """SIGKILL the worker process ``pid`` (one of ours); returns its slot."""
        for slot, proc in self.procs.items():
            if proc.pid == pid and proc.poll() is None:
                proc.kill()
                proc.wait()
                self.kills += 1
                return slot
        return None

    def stop_workers(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def alive(self) -> list[int]:
        return [proc.pid for proc in self.procs.values() if proc.poll() is None]

    # -- runs --
    async def submit(self, runs: int, start: int = 0) -> list[str]:
        from crewflow.application.executions import ExecuteFlow, execute_flow

        ids = []
        for i in range(start, start + runs):
            accepted = await execute_flow(ExecuteFlow(self.tenant_id, "chaos", inputs={"run": i}),
                                          uow_factory=self.uow_factory, queue=self.queue, clock=self.clock,
                                          ids=self.ids)  # fmt: skip
            ids.append(accepted.execution_id)
        return ids

    async def execution_ids(self) -> list[str]:
        found: list[str] = []
        cursor = None
        async with self.uow_factory.for_tenant(self.tenant_id) as uow:
            while True:
                page = await uow.executions.list(cursor, 100)
                found += [e.id for e in page.items]
                if page.next_cursor is None:
                    return found
                cursor = page.next_cursor

    async def executions(self) -> dict[str, Any]:
        from crewflow.domain.execution import Execution

        found: dict[str, Execution] = {}
        cursor = None
        async with self.uow_factory.for_tenant(self.tenant_id) as uow:
            while True:
                page = await uow.executions.list(cursor, 100)
                found.update((e.id, e) for e in page.items)
                if page.next_cursor is None:
                    return found
                cursor = page.next_cursor

    async def holders(self) -> dict[int, list[str]]:
        """pid -> executions it holds a live lease of (worker ids are ``host:pid:random``)."""
        held: dict[int, list[str]] = {}
        now = time.time()
        for execution in (await self.executions()).values():
            if execution.status in TERMINAL or not execution.worker_id:
                continue
            if (execution.lease_expires_at or 0) <= now:
                continue
            with contextlib.suppress(IndexError, ValueError):
                held.setdefault(int(execution.worker_id.split(":")[1]), []).append(execution.id)
        return held

    async def watchdog(self) -> Any:
        from crewflow.application.watchdog import recover_expired

        recorder = _recorder(self)
        # as the worker's cron job would run it: default grace for never-claimed runs (a queue backlog is not
        # a lost job), the watchdog's own hold no longer than a worker's lease (a worker that meets it waits)
        return await recover_expired([self.tenant_id], uow_factory=self.uow_factory, queue=self.queue,
                                     recorder=recorder, clock=self.clock, max_recoveries=10,
                                     hold_seconds=self.config.lease)  # fmt: skip

    async def node_history(self, execution_id: str) -> list[tuple[str, str]]:
        """(kind, node) of every node.started/node.completed event, in order."""
        store = self.logstore.for_tenant(self.tenant_id)
        out: list[tuple[str, str]] = []
        after = 0
        while batch := await store.events_after(execution_id, after, 1000):
            out += [(str(e.kind), e.node_id) for e in batch
                    if e.node_id and str(e.kind) in ("node.started", "node.completed")]  # fmt: skip
            after = batch[-1].seq
        return out


def _recorder(cluster: Cluster) -> Any:
    from crewflow.adapters.memory.bus import MemoryEventBus
    from crewflow.adapters.sql.checkpoints import CheckpointSink
    from crewflow.application.executions import ExecutionRecorder

    return ExecutionRecorder(lambda t: CheckpointSink(cluster.uow_factory, t, store_events=True), cluster.logstore,
                             MemoryEventBus(), cluster.clock, checkpoints_store_events=True)  # fmt: skip


def rerun_counts(history: Sequence[tuple[str, str]]) -> tuple[int, int]:
    """(completed nodes started again, in-flight nodes started again) in one run's node history."""
    completed: set[str] = set()
    started: Counter[str] = Counter()
    completed_again = in_flight_again = 0
    for kind, node in history:
        if kind == "node.started":
            if node in completed:
                completed_again += 1
            elif started[node]:
                in_flight_again += 1
            started[node] += 1
        else:
            completed.add(node)
    return completed_again, in_flight_again


# -- database of a run ------------------------------------------------------------------------------------
async def _admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def fresh_database() -> AsyncIterator[str]:
    name = f"crewflow_chaos_{uuid.uuid4().hex[:10]}"
    await _admin(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    finally:
        await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# -- the benchmark --------------------------------------------------------------------------------------------
@dataclass
class ChaosResult:
    runs: int
    terminal: int
    completed: int
    failed: int
    cancelled: int
    stuck: int
    completed_nodes_rerun: int
    in_flight_nodes_rerun: int
    kills: int
    attempts: int  # run.started events over all runs (1 per run without a kill)
    seconds: float

    @property
    def terminal_pct(self) -> float:
        return 100.0 * self.terminal / self.runs if self.runs else 100.0

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "terminal_pct": self.terminal_pct}


async def chaos(config: ClusterConfig, runs: int, *, kill_every: float, restart_after: float,
                watchdog_every: float, timeout: float, seed: int, progress: bool = True) -> ChaosResult:  # fmt: skip
    rng = random.Random(seed)
    cluster = Cluster(config)
    started = time.monotonic()
    try:
        await cluster.setup()
        cluster.start_workers()
        ids = await cluster.submit(runs)
        restarts: list[tuple[float, int]] = []
        next_kill = time.monotonic() + rng.expovariate(1 / kill_every)
        next_watchdog = time.monotonic() + watchdog_every
        deadline = time.monotonic() + timeout
        statuses: dict[str, str] = {}
        while time.monotonic() < deadline:
            executions = await cluster.executions()
            statuses = {i: str(executions[i].status) for i in ids}
            done = sum(s in TERMINAL for s in statuses.values())
            if done == runs:
                break
            now = time.monotonic()
            for at, slot in [r for r in restarts if r[0] <= now]:
                restarts.remove((at, slot))
                cluster.start_worker(slot)
            if now >= next_kill:  # kill a worker that holds a run (when none does, try again next round)
                held = {pid: e for pid, e in (await cluster.holders()).items() if pid in cluster.alive()}
                if held:
                    slot = cluster.kill(rng.choice(sorted(held)))
                    if slot is not None:
                        restarts.append((now + restart_after, slot))
                    next_kill = now + rng.expovariate(1 / kill_every)
            if now >= next_watchdog:
                await cluster.watchdog()
                next_watchdog = now + watchdog_every
            if progress:
                print(f"\r{done}/{runs} terminal, {cluster.kills} kills, {len(cluster.alive())} workers up  ",
                      end="", file=sys.stderr, flush=True)  # fmt: skip
            await asyncio.sleep(0.2)
        if progress:
            print(file=sys.stderr)
        for _, slot in restarts:  # leave no slot dead (not needed for the figures, tidy for the logs)
            cluster.start_worker(slot)
        seconds = time.monotonic() - started
        rerun = in_flight = attempts = 0
        store = cluster.logstore.for_tenant(cluster.tenant_id)
        for execution_id in ids:
            history = await cluster.node_history(execution_id)
            completed_again, in_flight_again = rerun_counts(history)
            rerun += completed_again
            in_flight += in_flight_again
            after = 0
            while batch := await store.events_after(execution_id, after, 1000):
                attempts += sum(1 for e in batch if str(e.kind) == "run.started" and e.node_id is None)
                after = batch[-1].seq
        count = Counter(statuses.values())
        terminal = sum(count[s] for s in TERMINAL)
        return ChaosResult(runs, terminal, count["completed"], count["failed"], count["cancelled"], runs - terminal,
                           rerun, in_flight, cluster.kills, attempts, seconds)  # fmt: skip
    finally:
        await cluster.close()


def report(result: ChaosResult, config: ClusterConfig) -> str:
    return "\n".join([
        f"chaos: {result.runs} runs of {config.nodes} nodes on {config.workers} workers x {config.concurrency}, "
        f"lease {config.lease:g} s, {result.kills} kill -9, {result.seconds:.1f} s",
        f"  runs reaching a terminal state: {result.terminal_pct:.1f} % ({result.completed} completed, "
        f"{result.failed} failed, {result.cancelled} cancelled)   target 100 %",
        f"  completed nodes re-run:        {result.completed_nodes_rerun}   target 0",
        f"  runs left stuck:               {result.stuck}   target 0",
        f"  in-flight nodes run again:     {result.in_flight_nodes_rerun} (at-least-once, after kills)",
        f"  run attempts:                  {result.attempts} ({result.attempts - result.runs} resumes)",
    ])  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=4, help="runs per worker at once")
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--delay", type=float, default=0.3, help="seconds per node")
    parser.add_argument("--lease", type=float, default=2.0)
    parser.add_argument("--kill-every", type=float, default=2.0, help="mean seconds between kills")
    parser.add_argument("--restart-after", type=float, default=1.0)
    parser.add_argument("--watchdog-every", type=float, default=2.0)
    parser.add_argument("--timeout", type=float, default=600.0, help="give up (runs left are 'stuck') after this")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--llm", action="store_true", help="nodes call a local LLMTestServer (CrewAI path)")
    parser.add_argument("--database-url", default=None, help="a migrated-or-empty PostgreSQL URL (default: fresh)")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON line at the end")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.workers < 1 or args.nodes < 1:
        parser.error("--runs, --workers and --nodes must be at least 1")

    async def run() -> ChaosResult:
        async with contextlib.AsyncExitStack() as stack:
            url = args.database_url or await stack.enter_async_context(fresh_database())
            llm_url = None
            if args.llm:
                from crewflow.testing.llm_server import Fault, LLMTestServer

                server = await stack.enter_async_context(LLMTestServer(api_key=None))
                for i in range(1, args.nodes + 1):
                    server.provider(f"p{i}").api_key = None
                    server.provider(f"p{i}").fail(Fault.hang(delay=args.delay, times=None))  # answers after delay
                llm_url = server.url
            config = ClusterConfig(url, args.redis_url, workers=args.workers, concurrency=args.concurrency,
                                   lease=args.lease, heartbeat=min(0.5, args.lease / 4), nodes=args.nodes,
                                   delay=args.delay, llm_url=llm_url)  # fmt: skip
            result = await chaos(config, args.runs, kill_every=args.kill_every, restart_after=args.restart_after,
                                 watchdog_every=args.watchdog_every, timeout=args.timeout, seed=args.seed)  # fmt: skip
            print(report(result, config))
            if args.json:
                print(json.dumps(result.to_dict()))
            return result

    result = asyncio.run(run())
    return 0 if (result.stuck == 0 and result.completed_nodes_rerun == 0) else 1


if __name__ == "__main__":
    sys.exit(main())
