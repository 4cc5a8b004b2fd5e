"""Job dispatch on Redis: enqueue-to-start latency, throughput and idle CPU of crewflow's arq worker (wake-up
list + one-script claim, ``CrewflowWorker``) against arq's ``Worker`` with its default settings, in one run.

    .venv/bin/python bench/dispatch.py [--jobs 10000] [--workers 2] [--concurrency 10] [--latency-jobs 300]
                                       [--rate 50] [--arq-jobs 2000] [--idle 5] [--real 0] [--redis-url URL]

For each kind, ``--workers`` worker processes (this script with ``--role worker``) take no-op jobs from a
queue of their own; the job carries its enqueue time (``time.time_ns()`` read just before the enqueue call,
so the enqueue itself is part of the latency) and the handler records its start time. Both are on this
machine's clock.

- **latency**: ``--latency-jobs`` jobs enqueued one by one at ``--rate`` per second (well under capacity):
  p50/p95/p99 of start - enqueue.
- **throughput**: ``--jobs`` jobs enqueued as fast as this process can (64 enqueues in flight), jobs/s =
  jobs / (last start - first enqueue). arq's default worker takes ``--arq-jobs`` (it is far slower).
- **idle CPU**: after the runs, each worker's CPU time (``/proc/<pid>/stat``) over ``--idle`` seconds with
  nothing queued, as % of one core.
- **real executions** (``--real N``, needs PostgreSQL on 127.0.0.1:5432): N one-node flows through
  ``execute_flow`` (execution row committed, then enqueued) and two ``crewflow worker`` processes running
  ``ExecutionRunner``: enqueue → the node's ``node.started`` event, and the run's end.

"arq default" = ``arq.worker.Worker`` with only the function, queue name and Redis settings given: 0.5 s
poll, pickle jobs, results kept an hour, ``max_jobs`` 10 (``--concurrency`` applies to both kinds; its
default is arq's 10). Ratios are printed (ours vs arq); targets: p50 ≤ 2 ms, ≥ 3,000 jobs/s with 2 workers,
idle worker < 2 % of a core. Every Redis key of the run is deleted at the end (never FLUSHDB).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import platform
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REDIS_URL = "redis://127.0.0.1:6379/0"
KINDS = ("crewflow", "arq-default")
FLUSH_EVERY = 0.02  # seconds between a worker's pushes of the start times it recorded
IN_FLIGHT = 64  # enqueues in flight during the throughput run


# -- helpers shared by both roles -------------------------------------------------------------------------------
def results_key(queue: str) -> str:
    return f"{queue}:bench:starts"


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0-1) by the nearest-rank method; ``values`` need not be sorted."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q * len(ordered))))
    return ordered[rank - 1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, from ``/proc/<pid>/stat``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat(5))
    return ticks / os.sysconf("SC_CLK_TCK")


async def stop_all(processes: list[asyncio.subprocess.Process]) -> None:
    """SIGTERM, then wait (30 s at most before SIGKILL)."""
    for process in processes:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            await asyncio.wait_for(process.wait(), 30)
        except TimeoutError:
            process.kill()
            await process.wait()


@dataclass
class Recorder:
    """Worker side: keeps (enqueue ns, start ns) pairs and pushes them to Redis every ``FLUSH_EVERY``."""

    redis: Any
    key: str
    pending: list[str] = field(default_factory=list)

    def record(self, enqueued_ns: int) -> None:
        self.pending.append(f"{enqueued_ns} {time.time_ns()}")

    async def flush_forever(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_EVERY)
            await self.flush()

    async def flush(self) -> None:
        if self.pending:
            batch, self.pending = self.pending, []
            await self.redis.rpush(self.key, *batch)


# -- the worker role ------------------------------------------------------------------------------------------
async def run_worker(kind: str, queue: str, redis_url: str, concurrency: int) -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_url)
    recorder = Recorder(client, results_key(queue))
    flusher = asyncio.create_task(recorder.flush_forever())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    try:
        if kind == "crewflow":
            from crewflow.adapters.arq.worker import CrewflowWorker
            from crewflow.ports.queue import RunExecution

            async def handler(job: RunExecution, cancel: asyncio.Event) -> None:
                recorder.record(int(job.request_id or 0))

            worker = CrewflowWorker(handler, redis_url=redis_url, queue_name=queue, concurrency=concurrency)
            serving = asyncio.create_task(worker.serve())
            await stop.wait()
            worker.stop()
            await serving
        else:
            from arq.connections import RedisSettings
            from arq.worker import Worker, func

            async def noop(ctx: dict[str, Any], enqueued_ns: int) -> None:
                recorder.record(enqueued_ns)

            arq_worker = Worker([func(noop, name="noop")], queue_name=queue, handle_signals=False,
                                redis_settings=RedisSettings.from_dsn(redis_url), max_jobs=concurrency)  # fmt: skip
            main = asyncio.create_task(arq_worker.main())
            await stop.wait()
            main.cancel()
            await asyncio.gather(main, return_exceptions=True)
            await arq_worker.close()
    finally:
        flusher.cancel()
        await recorder.flush()
        await client.aclose()


# -- the bench role -------------------------------------------------------------------------------------------
@dataclass
class KindResult:
    kind: str
    latencies_ms: list[float]
    throughput_jobs: int
    throughput_per_s: float
    enqueue_per_s: float
    cpu_ms_per_job: float  # the workers' CPU time (all of them) per job during the throughput run
    drain_per_s: float  # a queue filled beforehand, drained: first start to last start
    idle_cpu_pct: list[float]

    @property
    def p50(self) -> float:
        return percentile(self.latencies_ms, 0.50)

    @property
    def p95(self) -> float:
        return percentile(self.latencies_ms, 0.95)

    @property
    def p99(self) -> float:
        return percentile(self.latencies_ms, 0.99)


class Bench:
    def __init__(self, kind: str, redis_url: str) -> None:
        import redis.asyncio as aioredis

        self.kind = kind
        self.redis_url = redis_url
        self.queue = f"bench-dispatch:{kind}:{uuid.uuid4().hex[:8]}"
        self.redis = aioredis.Redis.from_url(redis_url)
        self.job_ids: list[str] = []
        self.workers: list[asyncio.subprocess.Process] = []
        self._arq: Any = None
        self._ours: Any = None

    async def start(self, workers: int, concurrency: int, prefill: int) -> float:
        """Enqueue ``prefill`` jobs, then start the workers; answers the drain rate (jobs/s from the first
        start to the last one: the workers' own throughput, without this process enqueuing meanwhile)."""
        if self.kind == "crewflow":
            from crewflow.adapters.arq.queue import ArqJobQueue

            self._ours = ArqJobQueue(self.redis_url, queue_name=self.queue)
            await self._ours.start()
        else:
            from arq.connections import RedisSettings, create_pool

            self._arq = await create_pool(RedisSettings.from_dsn(self.redis_url), default_queue_name=self.queue)
        await self.burst(prefill)
        for _ in range(workers):
            self.workers.append(await asyncio.create_subprocess_exec(
                sys.executable, __file__, "--role", "worker", "--kind", self.kind, "--queue", self.queue,
                "--redis-url", self.redis_url, "--concurrency", str(concurrency),
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            ))  # fmt: skip
        pairs = await self.collect(prefill, timeout=600)  # also the warm-up: every worker up and connected
        starts = sorted(start for _, start in pairs)
        return (len(starts) - 1) / ((starts[-1] - starts[0]) / 1e9)

    async def enqueue(self) -> None:
        job_id = uuid.uuid4().hex
        self.job_ids.append(job_id)
        now = time.time_ns()
        if self._ours is not None:
            from crewflow.ports.queue import RunExecution

            await self._ours.enqueue(RunExecution("bench", job_id, str(now)))
        else:
            await self._arq.enqueue_job("noop", now, _job_id=job_id)

    async def burst(self, count: int) -> int:
        """Enqueue ``count`` jobs as fast as possible, ``IN_FLIGHT`` at a time."""
        remaining = count

        async def lane() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                await self.enqueue()

        await asyncio.gather(*(lane() for _ in range(min(IN_FLIGHT, count))))
        return count

    async def collect(self, count: int, timeout: float) -> list[tuple[int, int]]:
        """Wait until ``count`` start records arrived, take them off the list."""
        key = results_key(self.queue)
        deadline = time.monotonic() + timeout
        while await self.redis.llen(key) < count:
            for process in self.workers:
                if process.returncode is not None:
                    raise RuntimeError(f"a {self.kind} worker exited with {process.returncode}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.kind}: {await self.redis.llen(key)} of {count} jobs started")
            await asyncio.sleep(0.01)
        raw = await self.redis.lpop(key, count)
        return [(int(a), int(b)) for a, b in (item.split() for item in raw)]

    async def latency(self, jobs: int, rate: float) -> list[float]:
        started = time.monotonic()
        for i in range(jobs):
            delay = started + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await self.enqueue()
        pairs = await self.collect(jobs, timeout=60 + jobs / rate)
        return [(start - enq) / 1e6 for enq, start in pairs]

    async def throughput(self, jobs: int) -> tuple[float, float, float]:
        """Jobs/s from the first enqueue to the last start, enqueue rate, and the workers' CPU ms per job."""
        cpu = sum(cpu_seconds(p.pid) for p in self.workers)
        began = time.monotonic()
        await self.burst(jobs)
        enqueue_rate = jobs / (time.monotonic() - began)
        pairs = await self.collect(jobs, timeout=600)
        cpu_ms = 1000 * (sum(cpu_seconds(p.pid) for p in self.workers) - cpu) / jobs
        first = min(enq for enq, _ in pairs)
        last = max(start for _, start in pairs)
        return jobs / ((last - first) / 1e9), enqueue_rate, cpu_ms

    async def idle_cpu(self, seconds: float) -> list[float]:
        await asyncio.sleep(1.0)  # let the last jobs' bookkeeping finish
        before = [(cpu_seconds(p.pid), time.monotonic()) for p in self.workers]
        await asyncio.sleep(seconds)
        return [100 * (cpu_seconds(p.pid) - cpu) / (time.monotonic() - at)
                for p, (cpu, at) in zip(self.workers, before, strict=True)]  # fmt: skip

    async def close(self) -> None:
        await stop_all(self.workers)
        if self._ours is not None:
            await self._ours.close()
        if self._arq is not None:
            await self._arq.aclose()
        keys = [key async for key in self.redis.scan_iter(match=f"{self.queue}*")]
        from arq.constants import in_progress_key_prefix, job_key_prefix, result_key_prefix, retry_key_prefix

        prefixes = (job_key_prefix, result_key_prefix, in_progress_key_prefix, retry_key_prefix)
        keys += [f"{prefix}{job_id}" for job_id in self.job_ids for prefix in prefixes]
        for i in range(0, len(keys), 1000):
            await self.redis.delete(*keys[i:i + 1000])
        await self.redis.aclose()


async def measure(kind: str, args: argparse.Namespace) -> KindResult:
    bench = Bench(kind, args.redis_url)
    try:
        jobs = args.jobs if kind == "crewflow" else min(args.jobs, args.arq_jobs)
        drain = await bench.start(args.workers, args.concurrency, prefill=jobs)
        latencies = await bench.latency(args.latency_jobs, args.rate)
        per_s, enqueue_rate, cpu_ms = await bench.throughput(jobs)
        idle = await bench.idle_cpu(args.idle)
    finally:
        await bench.close()
    return KindResult(kind, latencies, jobs, per_s, enqueue_rate, cpu_ms, drain, idle)


# -- real executions ----------------------------------------------------------------------------------------------
async def measure_real(count: int, redis_url: str) -> dict[str, float]:
    """``count`` one-node flows through execute_flow and two ``crewflow worker`` processes on a scratch
    PostgreSQL database: enqueue → node.started, enqueue → run end (ms, p50/p95)."""
    import asyncpg  # type: ignore[import-untyped]

    from crewflow.adapters.arq.queue import ArqJobQueue
    from crewflow.adapters.crypto.aesgcm import generate_key
    from crewflow.adapters.sql import open_database
    from crewflow.adapters.sql.logstore import SqlLogStore
    from crewflow.adapters.sql.migrate import migrate
    from crewflow.adapters.sql.provisioning import open_provisioner
    from crewflow.adapters.sql.uow import SqlUnitOfWorkFactory
    from crewflow.adapters.system import SystemClock, UuidGenerator
    from crewflow.application.executions import ExecuteFlow, execute_flow
    from crewflow.domain.events import EventKind
    from crewflow.domain.execution import FlowRecord
    from crewflow.domain.tenancy import Tenant

    name = f"crewflow_bench_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect("postgresql://postgres@127.0.0.1:5432/postgres")
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    queue_name = f"bench-dispatch:real:{uuid.uuid4().hex[:8]}"
    workers: list[asyncio.subprocess.Process] = []
    executed: list[str] = []
    queue = ArqJobQueue(redis_url, queue_name=queue_name)
    database = None
    try:
        assert (await migrate(url)).ok
        provisioner = open_provisioner(url)
        tenant_id = uuid.uuid4().hex[:12]
        await provisioner.register(Tenant(tenant_id, f"b-{tenant_id}", "bench", f"tenant_{tenant_id}",
                                          datetime.now(UTC)))  # fmt: skip
        await provisioner.aclose()
        database = open_database(url, pool_size=4)
        uow_factory = SqlUnitOfWorkFactory(database)
        clock, ids = SystemClock(), UuidGenerator()
        flow = {"name": "one", "agents": {"w": {"role": "W", "goal": "g", "provider": "scripted"}},
                "nodes": [{"id": "a", "kind": "agent", "agent": "w", "task": "say hi"}], "edges": []}  # fmt: skip
        async with uow_factory.for_tenant(tenant_id) as uow:
            await uow.flows.add(FlowRecord("one", "one", clock.now(), clock.now()), flow)
            await uow.commit()
        env = {k: v for k, v in os.environ.items() if not k.startswith("CREWFLOW_")}
        env.update({"CREWFLOW_DATABASE_URL": url, "CREWFLOW_REDIS_URL": redis_url, "CREWFLOW_QUEUE": queue_name,
                    "CREWFLOW_SECRET_KEY": generate_key(), "CREWFLOW_DB_POOL_SIZE": "8",
                    "CREWFLOW_LOG_LEVEL": "warning"})  # fmt: skip
        crewflow = str(Path(sys.executable).with_name("crewflow"))
        for _ in range(2):
            workers.append(await asyncio.create_subprocess_exec(crewflow, "worker", "--concurrency", "4", env=env,
                                                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        await queue.start()
        from crewflow.entrypoints.worker import check_workers

        deadline = time.monotonic() + 60
        while len(await check_workers(redis_url, queue_name, max_age=10)) < len(workers):  # both up
            if time.monotonic() > deadline:
                raise TimeoutError("the crewflow workers did not start within 60 s")
            await asyncio.sleep(0.1)
        logstore = SqlLogStore(database)
        node_ms: list[float] = []
        end_ms: list[float] = []
        for _ in range(count):
            enqueued = time.time()
            accepted = await execute_flow(ExecuteFlow(tenant_id, "one"), uow_factory=uow_factory, queue=queue,
                                          clock=clock, ids=ids)  # fmt: skip
            executed.append(accepted.execution_id)
            deadline = time.monotonic() + 60
            while True:
                events = await logstore.for_tenant(tenant_id).events_after(accepted.execution_id, 0, 100)
                started = [e for e in events if e.kind == EventKind.NODE_STARTED]
                ended = [e for e in events if e.node_id is None and e.kind.is_terminal_run]
                if started and ended:
                    node_ms.append((started[0].at - enqueued) * 1000)
                    end_ms.append((ended[0].at - enqueued) * 1000)
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError("a real execution did not finish within 60 s")
                await asyncio.sleep(0.002)
        return {"node_p50": percentile(node_ms, 0.5), "node_p95": percentile(node_ms, 0.95),
                "end_p50": percentile(end_ms, 0.5), "end_p95": percentile(end_ms, 0.95)}  # fmt: skip
    finally:
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(redis_url)
        for _ in range(100):  # a job's bookkeeping ends just after its run: let the last ones finish first
            if not await client.zcard(queue_name):
                break
            await asyncio.sleep(0.05)
        await stop_all(workers)
        await queue.close()
        if database is not None:
            await database.dispose()
        from arq.constants import in_progress_key_prefix, job_key_prefix, retry_key_prefix

        keys = [key async for key in client.scan_iter(match=f"{queue_name}*")]
        keys += [f"{prefix}{job_id}" for job_id in executed
                 for prefix in (job_key_prefix, in_progress_key_prefix, retry_key_prefix)]  # fmt: skip
        if keys:
            await client.delete(*keys)
        await client.aclose()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


# -- report -------------------------------------------------------------------------------------------------------
def report(results: dict[str, KindResult], args: argparse.Namespace) -> list[str]:
    ours, arq = results["crewflow"], results["arq-default"]
    lines = [
        f"dispatch bench {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()} {os.cpu_count()} cores, "
        f"{args.workers} worker processes x concurrency {args.concurrency}, Redis {args.redis_url}",
        f"{'kind':<12} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'jobs/s':>7} {'drain/s':>7} {'(jobs)':>6} "
        f"{'enq/s':>6} {'CPU ms/job':>10}  idle CPU % per worker",
    ]
    for r in (ours, arq):
        idle = ", ".join(f"{c:.2f}" for c in r.idle_cpu_pct)
        lines.append(f"{r.kind:<12} {r.p50:7.2f} {r.p95:7.2f} {r.p99:7.2f} {r.throughput_per_s:7.0f} "
                     f"{r.drain_per_s:7.0f} {r.throughput_jobs:6d} {r.enqueue_per_s:6.0f} {r.cpu_ms_per_job:10.3f}  "
                     f"{idle}")  # fmt: skip
    lines.append(f"ratios: p50 arq-default / crewflow = {arq.p50 / ours.p50:.0f}x, "
                 f"p95 {arq.p95 / ours.p95:.0f}x; throughput crewflow / arq-default = "
                 f"{ours.throughput_per_s / arq.throughput_per_s:.1f}x (drained queue "
                 f"{ours.drain_per_s / arq.drain_per_s:.1f}x); worker CPU per job crewflow / arq-default = "
                 f"{ours.cpu_ms_per_job / arq.cpu_ms_per_job:.2f}")  # fmt: skip
    idle_max = max(ours.idle_cpu_pct)
    lines.append(
        f"targets: p50 <= 2 ms {'met' if ours.p50 <= 2 else 'MISSED'} ({ours.p50:.2f}); "
        f">= 3000 jobs/s {'met' if ours.throughput_per_s >= 3000 else 'MISSED'} ({ours.throughput_per_s:.0f}, "
        f"drained {ours.drain_per_s:.0f}); "
        f"idle < 2 % of a core {'met' if idle_max < 2 else 'MISSED'} ({idle_max:.2f})"
    )
    return lines


async def bench_main(args: argparse.Namespace) -> int:
    results: dict[str, KindResult] = {}
    for kind in KINDS:
        print(f"measuring {kind} ...", file=sys.stderr)
        results[kind] = await measure(kind, args)
    for line in report(results, args):
        print(line)
    if args.real:
        print(f"measuring {args.real} real executions (PostgreSQL, 2 crewflow workers) ...", file=sys.stderr)
        real = await measure_real(args.real, args.redis_url)
        print(f"real one-node executions ({args.real}): execute_flow (row committed, enqueued) -> node.started "
              f"p50 {real['node_p50']:.1f} ms, p95 {real['node_p95']:.1f} ms; -> run end p50 {real['end_p50']:.1f} ms, "
              f"p95 {real['end_p95']:.1f} ms")  # fmt: skip
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--jobs", type=int, default=10_000, help="jobs of the throughput run (crewflow)")
    parser.add_argument("--arq-jobs", type=int, default=2_000, help="cap on the throughput run of arq default")
    parser.add_argument("--workers", type=int, default=2, help="worker processes per kind")
    parser.add_argument("--concurrency", type=int, default=10, help="jobs at once per worker (arq's default 10)")
    parser.add_argument("--latency-jobs", type=int, default=300)
    parser.add_argument("--rate", type=float, default=50.0, help="jobs per second of the latency run")
    parser.add_argument("--idle", type=float, default=5.0, help="seconds of idleness measured")
    parser.add_argument("--real", type=int, default=0, help="real one-node executions (needs PostgreSQL)")
    parser.add_argument("--redis-url", default=REDIS_URL)
    parser.add_argument("--role", choices=["bench", "worker"], default="bench", help=argparse.SUPPRESS)
    parser.add_argument("--kind", choices=KINDS, default="crewflow", help=argparse.SUPPRESS)
    parser.add_argument("--queue", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role == "worker":
        asyncio.run(run_worker(args.kind, args.queue, args.redis_url, args.concurrency))
        return 0
    if min(args.jobs, args.arq_jobs, args.workers, args.concurrency, args.latency_jobs) < 1 or args.rate <= 0:
        parser.error("counts must be at least 1 and --rate above 0")
    return asyncio.run(bench_main(args))


if __name__ == "__main__":
    sys.exit(main())
