"""``crewflow migrate``: upgrade ``public``, then every tenant schema, in parallel, one transaction each.

PostgreSQL (ADR 0006):

- ``public`` first, then every schema named ``tenant_*`` (and the provisioner's spare schemas), ``concurrency``
  at a time (default 8), each on its own connection and in its own transaction: many schemas in one
  transaction would run out of lock slots (``max_locks_per_transaction``).
- The version of a schema lives in that schema (``<schema>.alembic_version``) and is read at the start of
  its transaction, under a transaction-level advisory lock on the schema name, so the run is idempotent (a
  schema at head is left alone), resumable after being killed (a schema's DDL and its new version commit
  together or not at all) and safe against a second runner (it waits for the lock, then sees head).
- Every transaction starts with ``SET LOCAL lock_timeout`` (200 ms): an ``ALTER`` queued behind a long
  transaction would otherwise block every later read of that table. On a lock timeout (or deadlock) the
  schema is retried with exponential backoff and jitter; after ``max_attempts`` it is reported as failed.
- Any other error fails that schema only; the others go on. The report lists every schema's outcome.
- Each upgrade path (from revision → head) is rendered to SQL once with Alembic's offline mode and sent to
  each schema in one round-trip with ``search_path`` set to that schema: Alembic's ``op`` proxy is a module
  global, so Alembic's online mode cannot run concurrently in one process.
- A worker connection is replaced after ``recycle_after`` schemas: a backend caches the catalog entries of
  every table it touched, so one connection that walked 5,000 schemas would hold hundreds of MB.

SQLite (the embedded database, one file per tenant, ADR 0005): the main file, then every
``<main>.tenants/tenant_*.db`` file, one at a time, with Alembic's online mode, one transaction per file.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import asyncpg  # type: ignore[import-untyped]
import sqlalchemy as sa
from alembic.migration import MigrationContext
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import create_async_engine

from crewflow.adapters.sql.migrations import (
    Branch,
    head_revision,
    known_revisions,
    quote_schema,
    render_upgrade_sql,
    script_directory,
    upgrade_online,
)

__all__ = [
    "DEFAULT_DATABASE_URL",
    "SPARE_SCHEMA_PREFIX",
    "MigrationOptions",
    "MigrationReport",
    "ProgressCallback",
    "ProgressEvent",
    "SchemaResult",
    "asyncpg_connect_kwargs",
    "main",
    "migrate",
]

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///.crewflow/crewflow.db"
# Spare tenant schemas made ahead of time by the provisioner; migrated like tenant schemas.
SPARE_SCHEMA_PREFIX = "crewflow_spare_"

# SQLSTATEs worth a retry: lock_not_available (lock_timeout), deadlock_detected, serialization_failure.
_RETRYABLE = frozenset({"55P03", "40P01", "40001"})
_ADVISORY_CLASS = 0x6372_6577  # "crew": the advisory-lock namespace of the migration runner


@dataclass(frozen=True, slots=True)
class MigrationOptions:
    concurrency: int = 8
    lock_timeout_ms: int = 200
    max_attempts: int = 8
    backoff_base: float = 0.05  # seconds before the 2nd attempt; doubles each time, with jitter
    backoff_max: float = 2.0
    recycle_after: int = 250  # schemas served by one connection before it is replaced
    # Extra Alembic version directories (plugins, tests), appended to the shipped ones.
    version_locations: Mapping[Branch, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if self.lock_timeout_ms < 1:
            raise ValueError("lock_timeout_ms must be at least 1")
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.recycle_after < 1:
            raise ValueError("recycle_after must be at least 1")

    def locations(self, branch: Branch) -> tuple[str, ...]:
        return tuple(self.version_locations.get(branch, ()))


@dataclass(frozen=True, slots=True)
class SchemaResult:
    """What happened to one schema (or one SQLite file)."""

    schema: str
    branch: Branch
    before: str | None
    after: str | None
    attempts: int
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def upgraded(self) -> bool:
        return self.ok and self.before != self.after


@dataclass(frozen=True, slots=True)
class ProgressEvent:
    """``kind``: ``start`` (``total`` known), ``done`` (``result`` set) or ``retry`` (``attempt`` failed on a
    lock and will be retried)."""

    kind: Literal["start", "done", "retry"]
    branch: Branch
    total: int
    done: int
    failed: int
    schema: str | None = None
    result: SchemaResult | None = None
    attempt: int = 0


ProgressCallback = Callable[[ProgressEvent], None]


@dataclass(frozen=True, slots=True)
class MigrationReport:
    results: tuple[SchemaResult, ...]
    seconds: float

    @property
    def failed(self) -> tuple[SchemaResult, ...]:
        return tuple(r for r in self.results if not r.ok)

    @property
    def upgraded(self) -> tuple[SchemaResult, ...]:
        return tuple(r for r in self.results if r.upgraded)

    @property
    def ok(self) -> bool:
        return not self.failed


async def migrate(
    database_url: str | URL,
    options: MigrationOptions | None = None,
    progress: ProgressCallback | None = None,
) -> MigrationReport:
    """Upgrade ``public`` then every tenant schema (or SQLite file) to head; never raises for one schema."""
    options = options or MigrationOptions()
    url = make_url(database_url)
    backend = url.get_backend_name()
    started = time.perf_counter()
    if backend == "postgresql":
        results = await _PostgresRunner(url, options, progress).run()
    elif backend == "sqlite":
        results = await _SqliteRunner(url, options, progress).run()
    else:
        raise ValueError(f"unsupported database backend {backend!r}")
    return MigrationReport(tuple(results), time.perf_counter() - started)


def asyncpg_connect_kwargs(url: str | URL) -> dict[str, object]:
    """asyncpg ``connect()`` arguments from a SQLAlchemy URL (``postgresql+asyncpg://user:pw@host:port/db``)."""
    u = make_url(url)
    kwargs: dict[str, object] = {
        "host": u.host or "127.0.0.1",
        "port": u.port or 5432,
        "user": u.username or "postgres",
        "database": u.database or "postgres",
    }
    if u.password is not None:
        kwargs["password"] = u.password
    return kwargs


class _Tracker:
    def __init__(self, branch: Branch, total: int, progress: ProgressCallback | None) -> None:
        self.branch: Branch = branch
        self.total = total
        self.done = 0
        self.failed = 0
        self.progress = progress
        self._emit(ProgressEvent("start", branch, total, 0, 0))

    def _emit(self, event: ProgressEvent) -> None:
        if self.progress is not None:
            self.progress(event)

    def finished(self, result: SchemaResult) -> SchemaResult:
        self.done += 1
        self.failed += 0 if result.ok else 1
        self._emit(ProgressEvent("done", self.branch, self.total, self.done, self.failed, result.schema, result))
        return result

    def retry(self, schema: str, attempt: int) -> None:
        self._emit(ProgressEvent("retry", self.branch, self.total, self.done, self.failed, schema, attempt=attempt))


def _backoff(options: MigrationOptions, attempt: int) -> float:
    delay = min(options.backoff_max, options.backoff_base * 2.0 ** (attempt - 1))
    return delay * (0.5 + random.random() / 2)  # jitter, not cryptography


class _UnknownRevision(Exception):
    pass


# -- PostgreSQL ------------------------------------------------------------------------------------------
# An established connection that stopped working: the transaction did not commit, a new connection may.
_CONNECTION_LOST: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.InterfaceError,  # ConnectionDoesNotExistError, "connection is closed"
    asyncpg.PostgresConnectionError,  # SQLSTATE class 08
    asyncpg.AdminShutdownError,  # 57P01: pg_terminate_backend, fast shutdown
    asyncpg.CrashShutdownError,  # 57P02
)


class _Link:
    """A worker's connection: opened on demand, replaced after ``recycle_after`` schemas or when lost."""

    def __init__(self, connect: Callable[[], Awaitable[asyncpg.Connection]], recycle_after: int) -> None:
        self._connect = connect
        self._recycle_after = recycle_after
        self._conn: asyncpg.Connection | None = None
        self.served = 0

    async def get(self) -> asyncpg.Connection:
        if self._conn is not None and (self.served >= self._recycle_after or self._conn.is_closed()):
            await self.close()
        if self._conn is None:
            self._conn = await self._connect()
            self.served = 0
        return self._conn

    async def discard(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            await conn.close()


class _PostgresRunner:
    def __init__(self, url: URL, options: MigrationOptions, progress: ProgressCallback | None) -> None:
        self.connect_kwargs = asyncpg_connect_kwargs(url)
        self.options = options
        self.progress = progress
        self.heads: dict[Branch, str] = {}
        self.known: dict[Branch, frozenset[str]] = {}
        for branch in ("public", "tenant"):
            locations = options.locations(branch)
            self.heads[branch] = head_revision(branch, locations)
            self.known[branch] = known_revisions(script_directory(branch, locations))
        self._scripts: dict[tuple[Branch, str | None], str] = {}

    def _script(self, branch: Branch, from_revision: str | None) -> str:
        key = (branch, from_revision)
        script = self._scripts.get(key)
        if script is None:
            script = render_upgrade_sql(branch, from_revision, extra_version_locations=self.options.locations(branch))
            self._scripts[key] = script
        return script

    async def _connect(self) -> asyncpg.Connection:
        return await asyncpg.connect(**self.connect_kwargs)

    async def run(self) -> list[SchemaResult]:
        link = _Link(self._connect, self.options.recycle_after)
        try:
            await link.get()  # a database that cannot be reached fails the whole run here
            public = _Tracker("public", 1, self.progress)
            results = [public.finished(await self._upgrade(link, "public", "public", public))]
            if not results[0].ok:
                return results  # tenant schemas may depend on the platform tables: stop here
            conn = await link.get()
            schemas = [
                row[0]
                for row in await conn.fetch(
                    "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'tenant\\_%' OR nspname LIKE $1 "
                    "ORDER BY nspname",
                    SPARE_SCHEMA_PREFIX.replace("_", "\\_") + "%",
                )
            ]
        finally:
            await link.close()
        tracker = _Tracker("tenant", len(schemas), self.progress)
        queue: asyncio.Queue[str] = asyncio.Queue()
        for schema in schemas:
            queue.put_nowait(schema)
        tenant_results: list[SchemaResult] = []
        workers = [
            asyncio.create_task(self._worker(queue, tracker, tenant_results))
            for _ in range(min(self.options.concurrency, max(1, len(schemas))))
        ]
        try:
            await asyncio.gather(*workers)
        finally:
            for worker in workers:
                worker.cancel()
        tenant_results.sort(key=lambda r: r.schema)
        return results + tenant_results

    async def _worker(self, queue: asyncio.Queue[str], tracker: _Tracker, out: list[SchemaResult]) -> None:
        link = _Link(self._connect, self.options.recycle_after)
        try:
            while not queue.empty():
                schema = queue.get_nowait()
                out.append(tracker.finished(await self._upgrade(link, schema, "tenant", tracker)))
        finally:
            await link.close()

    async def _upgrade(self, link: _Link, schema: str, branch: Branch, tracker: _Tracker) -> SchemaResult:
        head = self.heads[branch]
        attempt = 0
        seen: list[str | None] = [None]  # the revision read in the last attempt, reported on failure
        while True:
            attempt += 1
            try:
                conn = await link.get()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                return SchemaResult(schema, branch, None, None, attempt, f"connect: {exc}")
            try:
                before = await self._upgrade_once(conn, schema, branch, head, seen)
                link.served += 1
                return SchemaResult(schema, branch, before, head, attempt)
            except _CONNECTION_LOST as exc:
                # The backend went away (terminated, restarted): nothing was committed; retry on a new connection.
                await link.discard()
                if attempt < self.options.max_attempts:
                    tracker.retry(schema, attempt)
                    await asyncio.sleep(_backoff(self.options, attempt))
                    continue
                return SchemaResult(schema, branch, seen[0], seen[0], attempt, f"connection lost: {exc}")
            except asyncpg.PostgresError as exc:
                sqlstate = getattr(exc, "sqlstate", None)
                if sqlstate in _RETRYABLE and attempt < self.options.max_attempts:
                    tracker.retry(schema, attempt)
                    await asyncio.sleep(_backoff(self.options, attempt))
                    continue
                reason = f"{type(exc).__name__} ({sqlstate}): {exc}"
                if sqlstate in _RETRYABLE:
                    reason = f"gave up after {attempt} attempts: {reason}"
                return SchemaResult(schema, branch, seen[0], seen[0], attempt, reason)
            except _UnknownRevision as exc:
                return SchemaResult(schema, branch, seen[0], seen[0], attempt, str(exc))

    async def _upgrade_once(
        self, conn: asyncpg.Connection, schema: str, branch: Branch, head: str, seen: list[str | None]
    ) -> str | None:
        """One transaction: returns the revision the schema had (it has ``head`` after the commit)."""
        async with conn.transaction():
            await conn.execute(
                "SELECT set_config('lock_timeout', $1, true), set_config('search_path', $2, true)",
                f"{self.options.lock_timeout_ms}ms",
                quote_schema(schema),
            )
            # One runner per schema at a time, even before the schema has a version row to lock (two runners
            # would otherwise race to create alembic_version). Waiting for it is bounded by lock_timeout.
            await conn.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", _ADVISORY_CLASS, schema)
            present, versioned = await conn.fetchrow(
                "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1), "
                "to_regclass('alembic_version') IS NOT NULL",
                schema,
            )
            if not present:
                raise _UnknownRevision(f"schema {schema} does not exist (dropped while migrating?)")
            current: str | None = None
            if versioned:
                rows = await conn.fetch("SELECT version_num FROM alembic_version FOR UPDATE")
                if len(rows) != 1:
                    raise _UnknownRevision(f"{schema}.alembic_version holds {len(rows)} rows, expected 1")
                current = rows[0][0]
            seen[0] = current
            if current == head:
                return current
            if current is not None and current not in self.known[branch]:
                raise _UnknownRevision(f"{schema} is at unknown revision {current!r} (written by newer code?)")
            await conn.execute(self._script(branch, current))
            return current


# -- SQLite ----------------------------------------------------------------------------------------------
class _SqliteRunner:
    def __init__(self, url: URL, options: MigrationOptions, progress: ProgressCallback | None) -> None:
        database = url.database
        if not database or database == ":memory:":
            raise ValueError("the SQLite store needs a file path, e.g. sqlite+aiosqlite:///crewflow.db")
        self.url = url
        self.path = Path(database)
        self.tenant_dir = Path(f"{database}.tenants")  # the layout of SqliteDatabase (ADR 0005)
        self.options = options
        self.progress = progress

    async def run(self) -> list[SchemaResult]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        public = _Tracker("public", 1, self.progress)
        results = [public.finished(await self._upgrade(self.url, "public", "public", public))]
        if not results[0].ok:
            return results
        files = sorted(self.tenant_dir.glob("tenant_*.db")) if self.tenant_dir.is_dir() else []
        tracker = _Tracker("tenant", len(files), self.progress)
        for file in files:
            result = await self._upgrade(self.url.set(database=str(file)), file.stem, "tenant", tracker)
            results.append(tracker.finished(result))
        return results

    async def _upgrade(self, url: URL, name: str, branch: Branch, tracker: _Tracker) -> SchemaResult:
        engine = create_async_engine(
            url, poolclass=sa.pool.NullPool, connect_args={"timeout": self.options.lock_timeout_ms / 1000}
        )

        @sa.event.listens_for(engine.sync_engine, "connect")
        def _autocommit_driver(dbapi_connection: object, _record: object) -> None:
            dbapi_connection.isolation_level = None  # type: ignore[attr-defined]  # SQLAlchemy emits BEGIN

        @sa.event.listens_for(engine.sync_engine, "begin")
        def _begin_immediate(connection: sa.Connection) -> None:
            connection.exec_driver_sql("BEGIN IMMEDIATE")

        locations = self.options.locations(branch)
        attempt = 0
        before: str | None = None
        try:
            while True:
                attempt += 1
                try:
                    async with engine.begin() as conn:
                        before = await conn.run_sync(_current_revision)
                        await conn.run_sync(_upgrade_sync, branch, locations)
                        after = await conn.run_sync(_current_revision)
                    return SchemaResult(name, branch, before, after, attempt)
                except OperationalError as exc:
                    if "locked" in str(exc.orig) and attempt < self.options.max_attempts:
                        tracker.retry(name, attempt)
                        await asyncio.sleep(_backoff(self.options, attempt))
                        continue
                    return SchemaResult(name, branch, before, before, attempt, f"{type(exc.orig).__name__}: {exc.orig}")
                except sa.exc.SQLAlchemyError as exc:
                    return SchemaResult(name, branch, before, before, attempt, f"{type(exc).__name__}: {exc}")
        finally:
            await engine.dispose()


def _current_revision(connection: sa.Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def _upgrade_sync(connection: sa.Connection, branch: Branch, locations: Sequence[str]) -> None:
    upgrade_online(connection, branch, extra_version_locations=locations)


# -- python -m crewflow.adapters.sql.migrate ---------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    """Plain-text runner (the ``crewflow migrate`` command adds a progress bar)."""
    parser = argparse.ArgumentParser(prog="python -m crewflow.adapters.sql.migrate", description=__doc__)
    parser.add_argument("--database-url", default=os.environ.get("CREWFLOW_DATABASE_URL", DEFAULT_DATABASE_URL))
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--lock-timeout-ms", type=int, default=200)
    parser.add_argument("--max-attempts", type=int, default=8)
    parser.add_argument(
        "--tenant-versions", action="append", default=[], metavar="DIR", help="extra tenant revision directory"
    )
    parser.add_argument(
        "--public-versions", action="append", default=[], metavar="DIR", help="extra public revision directory"
    )
    args = parser.parse_args(argv)
    try:
        options = MigrationOptions(
            concurrency=args.concurrency,
            lock_timeout_ms=args.lock_timeout_ms,
            max_attempts=args.max_attempts,
            version_locations={"tenant": tuple(args.tenant_versions), "public": tuple(args.public_versions)},
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    def show(event: ProgressEvent) -> None:
        if event.kind == "done" and event.result is not None:
            r = event.result
            state = "failed: " + (r.error or "") if not r.ok else ("upgraded" if r.upgraded else "at head")
            print(f"[{event.done}/{event.total}] {r.branch} {r.schema}: {state}", flush=True)

    report = asyncio.run(migrate(args.database_url, options, show))
    print(f"{len(report.results)} schemas, {len(report.upgraded)} upgraded, {len(report.failed)} failed "
          f"in {report.seconds:.1f} s")  # fmt: skip
    for failure in report.failed:
        print(f"FAILED {failure.schema}: {failure.error}", file=sys.stderr)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
