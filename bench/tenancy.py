"""Tenancy on PostgreSQL: provisioning, migrating many tenant schemas, reads with many tenants, backend memory.

    .venv/bin/python bench/tenancy.py [--quick] [--json results.json]

Creates its own database on 127.0.0.1:5432 (user postgres) and drops it at the end. Measures:

1. Provisioning one tenant (p50/p95 over ``--provision`` tenants per method): SQLAlchemy ``create_all`` in
   one transaction (``engine.create_tenant_schema``), the pre-rendered DDL in one round-trip (schema only,
   then with the ``public.tenants`` row = ``register``), and ``register`` taking a spare schema from the
   pool (``ALTER SCHEMA … RENAME``).
2. A typical read of one tenant through the unit of work (``agents.get`` + ``agents.list(limit=20)`` +
   ``flows.list(limit=20)`` in one transaction) with 1 tenant present and with ``--tenants`` present.
3. ``crewflow migrate`` of every tenant schema with a revision adding one column (concurrency 8), and the
   linear extrapolation to 5,000 schemas.
4. Memory of one pooled connection (pool_size=1) after serving that read for each of ``--memory-tenants``
   tenants: ``RssAnon``/``VmRSS`` of the backend from ``/proc/<pid>/status`` and the sum of
   ``pg_backend_memory_contexts``; without a bound and with ``limit_tenants_per_connection``.

``--quick`` is a CI-sized run (a few tenants of each); full numbers are in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from crewflow.adapters.sql.catalog_budget import limit_tenants_per_connection
from crewflow.adapters.sql.engine import PostgresDatabase, create_tenant_schema
from crewflow.adapters.sql.migrate import MigrationOptions, migrate
from crewflow.adapters.sql.migrations import head_revision
from crewflow.adapters.sql.provisioning import PostgresProvisioner
from crewflow.adapters.sql.tables import TENANT
from crewflow.adapters.sql.uow import SqlUnitOfWork, SqlUnitOfWorkFactory
from crewflow.domain.agents import Agent
from crewflow.domain.errors import NotFound
from crewflow.domain.tenancy import Tenant, schema_name_for

HOST, PORT, USER = "127.0.0.1", 5432, "postgres"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary_ms(values: list[float]) -> dict[str, float]:
    return {"p50_ms": round(pct(values, 0.5) * 1000, 3), "p95_ms": round(pct(values, 0.95) * 1000, 3), "n": len(values)}


def tenant(tid: str) -> Tenant:
    return Tenant(id=tid, slug=tid, name=tid, db_schema=schema_name_for(tid), created_at=datetime.now(UTC))


async def admin(sql: str) -> None:
    conn = await asyncpg.connect(host=HOST, port=PORT, user=USER, database="postgres")
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def timed(fn: Callable[[], Awaitable[Any]]) -> float:
    started = time.perf_counter()
    await fn()
    return time.perf_counter() - started


# -- 1. provisioning --------------------------------------------------------------------------------------
async def bench_provisioning(url: str, n: int) -> dict[str, Any]:
    """The four ways, interleaved tenant by tenant so each sees the same (shared, noisy) machine."""
    db = PostgresDatabase(url, pool_size=2)
    plain = PostgresProvisioner(db.engine)
    pooled = PostgresProvisioner(db.engine, spare_pool_size=n, auto_refill=False)  # no refill DDL while timing
    times: dict[str, list[float]] = {"create_all": [], "ddl_schema_only": [], "ddl_register": [], "spare_register": []}
    out: dict[str, Any] = {}
    try:
        for tid in (f"warm-{i}" for i in range(3)):  # warm the pool and the server's caches
            await plain.register(tenant(tid))
        fill_started = time.perf_counter()
        await pooled.fill_spares()
        out["spare_fill_per_schema_ms"] = round((time.perf_counter() - fill_started) / n * 1000, 3)
        for i in range(n):
            times["create_all"].append(await timed(lambda i=i: create_tenant_schema(db.engine, f"ca-{i:05d}")))
            times["ddl_schema_only"].append(await timed(lambda i=i: plain.create_schema(f"dd-{i:05d}")))
            times["ddl_register"].append(await timed(lambda i=i: plain.register(tenant(f"dr-{i:05d}"))))
            started = time.perf_counter()
            result = await pooled.register(tenant(f"sp-{i:05d}"))
            times["spare_register"].append(time.perf_counter() - started)
            assert result.from_spare, "the pool ran dry"
        out.update({key: summary_ms(values) for key, values in times.items()})
        out["drop"] = summary_ms([await timed(lambda i=i: plain.drop(f"dr-{i:05d}")) for i in range(min(n, 50))])
    finally:
        await db.dispose()
    return out


# -- 2. reads ---------------------------------------------------------------------------------------------
async def seed(factory: SqlUnitOfWorkFactory, tenant_id: str) -> None:
    async with factory.for_tenant(tenant_id) as uow:
        for i in range(50):
            await uow.agents.add(Agent(id=f"agent-{i:03d}", role="researcher", goal="find things"), at=time.time())
        await uow.commit()


async def read_in(uow: SqlUnitOfWork) -> None:
    with contextlib.suppress(NotFound):  # only the seeded tenant has agents
        await uow.agents.get("agent-007")
    await uow.agents.list(limit=20)
    await uow.flows.list(limit=20)


async def typical_read(factory: SqlUnitOfWorkFactory, tenant_id: str) -> None:
    async with factory.for_tenant(tenant_id) as uow:
        await read_in(uow)


async def bench_reads(url_a: str, url_b: str, tenant_id: str, n: int) -> tuple[dict[str, float], dict[str, float]]:
    """The same read of the same tenant in two databases, alternating A, B, A, B… so both see the same load."""
    a = SqlUnitOfWorkFactory(PostgresDatabase(url_a, pool_size=2))
    b = SqlUnitOfWorkFactory(PostgresDatabase(url_b, pool_size=2))
    times_a: list[float] = []
    times_b: list[float] = []
    try:
        for _ in range(200):
            await typical_read(a, tenant_id)
            await typical_read(b, tenant_id)
        for _ in range(n):
            times_a.append(await timed(lambda: typical_read(a, tenant_id)))
            times_b.append(await timed(lambda: typical_read(b, tenant_id)))
        return summary_ms(times_a), summary_ms(times_b)
    finally:
        await a.close()
        await b.close()


async def new_database(name: str) -> str:
    """Create a migrated database holding the seeded ``reader`` tenant; returns its URL."""
    await admin(f'CREATE DATABASE "{name}"')
    url = f"postgresql+asyncpg://{USER}@{HOST}:{PORT}/{name}"
    assert (await migrate(url)).ok
    db = PostgresDatabase(url, pool_size=2)
    try:
        await PostgresProvisioner(db.engine).register(tenant("reader"))
        await seed(SqlUnitOfWorkFactory(db), "reader")
    finally:
        await db.dispose()
    return url


# -- tenants in bulk --------------------------------------------------------------------------------------
async def top_up(url: str, target: int, concurrency: int = 4) -> float:
    """Register tenants until ``target`` tenant schemas exist; returns seconds taken."""
    conn = await asyncpg.connect(host=HOST, port=PORT, user=USER, database=url.rsplit("/", 1)[1])
    try:
        existing = await conn.fetchval("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'tenant\\_%'")
    finally:
        await conn.close()
    missing = target - existing
    if missing <= 0:
        return 0.0
    db = PostgresDatabase(url, pool_size=concurrency)
    provisioner = PostgresProvisioner(db.engine)
    queue = [f"bulk-{uuid.uuid4().hex[:12]}" for _ in range(missing)]
    started = time.perf_counter()

    async def worker() -> None:
        while queue:
            await provisioner.register(tenant(queue.pop()))

    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        await db.dispose()
    return time.perf_counter() - started


# -- 3. migration -----------------------------------------------------------------------------------------
def bench_revision(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "b0001_bench_column.py").write_text(
        '"""Benchmark only: one added column."""\n'
        "import sqlalchemy as sa\nfrom alembic import op\n\n"
        f'revision = "b0001_bench"\ndown_revision = "{head_revision("tenant")}"\n'
        "branch_labels = None\ndepends_on = None\n\n\n"
        "def upgrade() -> None:\n"
        '    op.add_column("agents", sa.Column("bench_note", sa.Text(), nullable=True))\n\n\n'
        "def downgrade() -> None:\n"
        '    op.drop_column("agents", "bench_note")\n'
    )
    return directory


async def bench_migration(url: str, versions: Path, concurrency: int) -> dict[str, Any]:
    options = MigrationOptions(concurrency=concurrency, version_locations={"tenant": (str(versions),)})
    report = await migrate(url, options)
    tenants = [r for r in report.results if r.branch == "tenant"]
    if report.failed:
        raise RuntimeError(f"migration failed: {report.failed[:3]}")
    retries = sum(r.attempts - 1 for r in tenants)
    again = await migrate(url, options)
    return {
        "schemas": len(tenants),
        "upgraded": len(report.upgraded),
        "seconds": round(report.seconds, 2),
        "schemas_per_s": round(len(tenants) / report.seconds, 1),
        "extrapolated_5000_s": round(report.seconds / len(tenants) * 5000, 1),
        "lock_retries": retries,
        "rerun_seconds_all_at_head": round(again.seconds, 2),
        "concurrency": concurrency,
    }


# -- 4. backend memory ------------------------------------------------------------------------------------
async def backend_memory(conn: AsyncConnection) -> dict[str, float]:
    """Memory of the backend behind ``conn`` (asked inside the tenant transaction that just read)."""
    pid = await conn.scalar(sa.text("SELECT pg_backend_pid()"))
    contexts = await conn.scalar(sa.text("SELECT sum(total_bytes) FROM pg_backend_memory_contexts"))
    status: dict[str, float] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():  # noqa: ASYNC240 - procfs, instant
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon"):
                status[key] = round(int(value.split()[0]) / 1024, 1)  # kB -> MiB
    except OSError:  # not the same machine / no permission: the memory-context numbers still apply
        pass
    return {"pid": float(pid), "contexts_mib": round(float(contexts) / 2**20, 1), **status}


async def read_every_table(uow: SqlUnitOfWork) -> None:
    """The worst case: a request path that touches every tenant table."""
    for table in TENANT.sorted_tables:
        await uow.connection.execute(sa.select(*table.primary_key.columns).limit(1))


async def bench_memory(
    url: str, tenant_ids: list[str], max_tenants: int | None, *, every_table: bool = False
) -> dict[str, Any]:
    db = PostgresDatabase(url, pool_size=1, max_overflow=0)
    if max_tenants is not None:
        limit_tenants_per_connection(db.engine, max_tenants)
    factory = SqlUnitOfWorkFactory(db)
    samples = []
    checkpoints = {1, *(int(len(tenant_ids) * f) for f in (0.125, 0.25, 0.5, 0.75)), len(tenant_ids)}
    if max_tenants is not None:  # also just before each replacement, where a bounded backend peaks
        checkpoints |= set(range(max_tenants, len(tenant_ids) + 1, max_tenants))
    started = time.perf_counter()
    try:
        for i, tid in enumerate(tenant_ids, start=1):
            async with factory.for_tenant(tid) as uow:
                await (read_every_table(uow) if every_table else read_in(uow))
                if i in checkpoints:
                    samples.append({"tenants_served": i, **await backend_memory(uow.connection)})
    finally:
        await factory.close()
    return {
        "bound": f"limit_tenants_per_connection({max_tenants})" if max_tenants else "none",
        "read": "every tenant table" if every_table else "typical read",
        "seconds": round(time.perf_counter() - started, 2),
        "backends_used": len({s["pid"] for s in samples}),
        "samples": sorted(samples, key=lambda s: s["tenants_served"]),
        "max_rss_anon_mib": max((s.get("RssAnon", 0.0) for s in samples), default=0.0),
        "max_contexts_mib": max(s["contexts_mib"] for s in samples),
    }


# -- main -------------------------------------------------------------------------------------------------
def step(label: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {label}", file=sys.stderr, flush=True)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    name = f"crewflow_bench_{uuid.uuid4().hex[:10]}"
    single = f"{name}_single"  # stays at one tenant: the reference for reads
    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "loadavg_start": os.getloadavg()},
        "params": vars(args),
    }
    try:
        step("databases")
        url = await new_database(name)
        url_single = await new_database(single)
        conn = await asyncpg.connect(host=HOST, port=PORT, user=USER, database=name)
        results["machine"]["postgres"] = await conn.fetchval("SHOW server_version")
        await conn.close()

        step("reads: 1 tenant vs 1 tenant (the noise floor)")
        floor_a, floor_b = await bench_reads(url_single, url, "reader", args.reads)

        step(f"provisioning x{args.provision} per method")
        results["provisioning"] = await bench_provisioning(url, args.provision)

        step(f"top up to {args.tenants} tenants")
        results["create_tenants_seconds"] = round(await top_up(url, args.tenants), 1)
        step(f"reads: 1 tenant vs {args.tenants} tenants")
        reads_1, reads_n = await bench_reads(url_single, url, "reader", args.reads)
        results["reads"] = {
            "tenants_1": reads_1,
            f"tenants_{args.tenants}": reads_n,
            "ratio_p50": round(reads_n["p50_ms"] / reads_1["p50_ms"], 3),
            "ratio_p95": round(reads_n["p95_ms"] / reads_1["p95_ms"], 3),
            "noise_floor_ratio_p50": round(floor_b["p50_ms"] / floor_a["p50_ms"], 3),
            "noise_floor_ratio_p95": round(floor_b["p95_ms"] / floor_a["p95_ms"], 3),
        }

        step(f"migrate {args.tenants} schemas (+1 column)")
        with tempfile.TemporaryDirectory() as tmp:
            results["migration"] = await bench_migration(url, bench_revision(Path(tmp)), args.concurrency)

        step(f"top up to {args.memory_tenants} tenants")
        await top_up(url, args.memory_tenants)
        conn = await asyncpg.connect(host=HOST, port=PORT, user=USER, database=name)
        schemas = await conn.fetch("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'tenant\\_%' ORDER BY 1")
        # ids are [a-z0-9-] and their schema writes '-' as '_': the id is recovered from the schema name
        tenant_ids = [r[0].removeprefix("tenant_").replace("_", "-") for r in schemas][: args.memory_tenants]
        await conn.close()
        step(f"backend memory over {len(tenant_ids)} tenants")
        results["memory"] = [
            await bench_memory(url, tenant_ids, None),
            await bench_memory(url, tenant_ids, None, every_table=True),
            await bench_memory(url, tenant_ids, args.budget, every_table=True),
        ]
    finally:
        step_end = time.perf_counter()
        await admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin(f'DROP DATABASE IF EXISTS "{single}" WITH (FORCE)')
        results["drop_database_seconds"] = round(time.perf_counter() - step_end, 1)
        results["machine"]["loadavg_end"] = os.getloadavg()
    return results


def report(results: dict[str, Any]) -> None:
    prov = results.get("provisioning", {})
    print("\n## Provisioning one tenant (ms)")
    for key in ("create_all", "ddl_schema_only", "ddl_register", "spare_register", "drop"):
        if key in prov:
            print(f"  {key:<18} p50 {prov[key]['p50_ms']:8.2f}   p95 {prov[key]['p95_ms']:8.2f}   (n={prov[key]['n']})")
    if "spare_fill_per_schema_ms" in prov:
        print(f"  spare pool refill: {prov['spare_fill_per_schema_ms']} ms per spare (background)")
    if "reads" in results:
        r = results["reads"]
        print("\n## Typical read of one tenant (ms)")
        for key, value in r.items():
            if isinstance(value, dict):
                print(f"  {key:<14} p50 {value['p50_ms']:.3f}   p95 {value['p95_ms']:.3f}")
        print(f"  ratio p50 {r['ratio_p50']}   ratio p95 {r['ratio_p95']}   (same measurement with 1 tenant in both: "
              f"p50 {r['noise_floor_ratio_p50']}, p95 {r['noise_floor_ratio_p95']})")  # fmt: skip
    if "migration" in results:
        m = results["migration"]
        print(f"\n## Migration (+1 column), concurrency {m['concurrency']}")
        print(f"  {m['schemas']} schemas in {m['seconds']} s = {m['schemas_per_s']} schemas/s; "
              f"5,000 schemas ~ {m['extrapolated_5000_s']} s; lock retries {m['lock_retries']}; "
              f"rerun (all at head) {m['rerun_seconds_all_at_head']} s")  # fmt: skip
    for mem in results.get("memory", []):
        print(f"\n## One pooled connection, {mem['read']}, bound: {mem['bound']} ({mem['backends_used']} backends)")
        for s in mem["samples"]:
            print(f"  after {s['tenants_served']:>5} tenants: RssAnon {s.get('RssAnon', '?')} MiB, "
                  f"VmRSS {s.get('VmRSS', '?')} MiB, memory contexts {s['contexts_mib']} MiB")  # fmt: skip
    print(f"\nload average at start {results['machine']['loadavg_start']}, end {results['machine']['loadavg_end']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="CI-sized run")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--provision", type=int, default=None, help="tenants per provisioning method")
    parser.add_argument("--tenants", type=int, default=None, help="tenants present for reads and migration")
    parser.add_argument("--memory-tenants", type=int, default=None, help="tenants served by one connection")
    parser.add_argument("--reads", type=int, default=None, help="timed reads per measurement")
    parser.add_argument("--concurrency", type=int, default=8, help="migration concurrency")
    parser.add_argument("--budget", type=int, default=None, help="tenants per connection before it is replaced")
    args = parser.parse_args()
    defaults = (
        {"provision": 20, "tenants": 100, "memory_tenants": 200, "reads": 300, "budget": 50}
        if args.quick
        else {"provision": 100, "tenants": 1000, "memory_tenants": 2000, "reads": 3000, "budget": 250}
    )
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.json = str(args.json) if args.json else None
    results = asyncio.run(run(args))
    report(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
