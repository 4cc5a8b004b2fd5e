"""Backups of many tenant schemas: per-schema ``pg_dump -n`` against batched dumps, and one-tenant restores.

    .venv/bin/python bench/backup.py [--tenants 1000] [--jobs 2] [--sample 20] [--batch-sizes N ...]

Creates its own database on 127.0.0.1:5432 (user postgres) with ``--tenants`` tenant schemas (the tenant
DDL rendered once, a few rows each, platform rows) and drops it at the end. Measures:

1. ``pg_dump -Fc -n <schema>`` of one schema per run: ``--sample`` runs one at a time and ``--sample`` runs
   ``--jobs`` at a time, extrapolated to every tenant.
2. ``crewflow backup --all`` (``adapters.sql.backup.backup``) with the automatic batch size (half the
   server's lock table across the jobs) and with ``--batch-sizes``, ``--jobs`` dumps at once.
3. The restore of one tenant out of the batched backup (drop, then ``restore``), median of 5; then the
   restore of ``--restore-many`` tenants at once (throughput).

Not measured here on purpose: one ``pg_dump`` of the whole database. At 1,000 schemas it needs ≈16,000 locks
of a 6,400-slot lock table and fails with "out of shared memory" (field notes), and while it fills the table
every other session of the server can fail the same way.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
from sqlalchemy.engine import make_url

from crewflow.adapters.sql.backup import backup, libpq_target, restore
from crewflow.adapters.sql.engine import tenant_schema
from crewflow.adapters.sql.migrate import asyncpg_connect_kwargs, migrate
from crewflow.adapters.sql.provisioning import open_provisioner, render_tenant_ddl

ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


async def build(url: str, count: int, connections: int = 4, per_transaction: int = 5) -> list[str]:
    ddl = render_tenant_ddl()
    ids = [f"b{n:05d}{uuid.uuid4().hex[:6]}" for n in range(count)]
    queue: asyncio.Queue[list[str]] = asyncio.Queue()
    for i in range(0, count, per_transaction):
        queue.put_nowait(ids[i : i + per_transaction])

    async def worker() -> None:
        conn = await asyncpg.connect(**asyncpg_connect_kwargs(url))
        try:
            while not queue.empty():
                chunk = queue.get_nowait()
                async with conn.transaction():
                    for tenant_id in chunk:
                        schema = tenant_schema(tenant_id)
                        await conn.execute(ddl.script_for(schema))
                        await conn.execute(
                            f'INSERT INTO "{schema}".agents (id, role, goal, tools, created_at, updated_at) '
                            "VALUES ('a1', 'R', 'G', '[]', 1.0, 2.0), ('a2', 'R2', 'G2', '[]', 3.0, 4.0)"
                        )
                        await conn.execute(
                            "INSERT INTO public.tenants (id, slug, name, db_schema, created_at) "
                            "VALUES ($1, $2, $2, $3, now())",
                            tenant_id,
                            f"bench-{tenant_id}",
                            schema,
                        )
        finally:
            await conn.close()

    await asyncio.gather(*(worker() for _ in range(connections)))
    return ids


async def pg_dump_one(uri: str, env: dict[str, str], schema: str, out: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        "pg_dump", "--format=custom", f"--schema={schema}", f"--file={out}", f"--dbname={uri}", env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await proc.communicate()
    if proc.returncode:
        raise RuntimeError(err.decode())


async def run(args: argparse.Namespace) -> None:
    name = f"crewflow_bench_backup_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(ADMIN_DSN)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    work = Path(tempfile.mkdtemp(prefix="crewflow-bench-backup-"))
    rows: list[tuple[str, str]] = []
    try:
        assert (await migrate(url)).ok
        started = time.perf_counter()
        ids = await build(url, args.tenants)
        print(f"built {len(ids)} tenant schemas in {time.perf_counter() - started:.1f} s", flush=True)
        uri, env = libpq_target(make_url(url))
        schemas = [tenant_schema(i) for i in ids]

        # 1. one schema per pg_dump run
        sample = schemas[: args.sample]
        started = time.perf_counter()
        for n, schema in enumerate(sample):
            await pg_dump_one(uri, env, schema, work / f"one-{n}.dump")
        serial = (time.perf_counter() - started) / len(sample)
        semaphore = asyncio.Semaphore(args.jobs)

        async def limited(n: int, schema: str) -> None:
            async with semaphore:
                await pg_dump_one(uri, env, schema, work / f"par-{n}.dump")

        started = time.perf_counter()
        await asyncio.gather(*(limited(n, s) for n, s in enumerate(sample)))
        parallel = (time.perf_counter() - started) / len(sample)
        for label, per in (("1 at a time", serial), (f"{args.jobs} at a time", parallel)):
            total = f"{per * len(ids):.0f} s for {len(ids)} (extrapolated)"
            rows.append((f"pg_dump -n, one schema per run, {label}", f"{per:.2f} s/schema → {total}"))
        print(rows[-2:], flush=True)

        # 2. batched (crewflow backup --all)
        main_out: Path | None = None
        for size in [None, *args.batch_sizes]:
            out = work / f"batched-{size or 'auto'}"
            report = await backup(url, out, jobs=args.jobs, schemas_per_dump=size)
            label = f"crewflow backup --all, {report.schemas_per_dump} schemas per pg_dump" + (
                " (automatic)" if size is None else ""
            )
            rows.append((label, f"{report.seconds:.1f} s ({report.dumps} pg_dump runs, {args.jobs} jobs)"))
            print(rows[-1], flush=True)
            if main_out is None:
                main_out = out
        assert main_out is not None

        # 3. restores
        provisioner = open_provisioner(url, pool_size=2)
        try:
            one: list[float] = []
            for tenant_id in ids[1:6]:
                await provisioner.drop(tenant_id)
                started = time.perf_counter()
                await restore(url, main_out, tenants=[tenant_id])
                one.append(time.perf_counter() - started)
            rows.append(("restore of one tenant from the batched backup (median of 5)",
                         f"{statistics.median(one):.2f} s"))  # fmt: skip
            many = ids[10 : 10 + args.restore_many]
            for tenant_id in many:
                await provisioner.drop(tenant_id)
            started = time.perf_counter()
            await restore(url, main_out, tenants=many, jobs=args.jobs)
            seconds = time.perf_counter() - started
            rows.append((f"restore of {len(many)} tenants, {args.jobs} jobs",
                         f"{seconds:.1f} s ({seconds / len(many) * 1000:.0f} ms/tenant)"))  # fmt: skip
        finally:
            await provisioner.aclose()

    finally:
        shutil.rmtree(work, ignore_errors=True)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()

    print(f"\n{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, {os.cpu_count()} cores, "
          f"load {os.getloadavg()[0]:.2f}, {args.tenants} tenant schemas")  # fmt: skip
    print("\n| what | result |\n|---|---|")
    for what, result in rows:
        print(f"| {what} | {result} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--sample", type=int, default=20, help="per-schema dumps timed (then extrapolated)")
    parser.add_argument("--batch-sizes", type=int, nargs="*", default=[],
                        help="also time these batch sizes (large ones can fill the server's lock table)")  # fmt: skip
    parser.add_argument("--restore-many", type=int, default=50)
    asyncio.run(run(parser.parse_args()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
