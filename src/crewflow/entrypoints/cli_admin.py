"""``crewflow migrate`` and ``crewflow tenants list|create|drop``.

Exit codes: 0 success; 1 the operation failed (a schema could not be migrated, the database is unreachable
or not migrated yet); 2 invalid input (bad option, bad slug, unknown or taken tenant, drop without
``--yes``). Errors are one readable line on stderr, never a traceback.

Every handler reads ``--database-url``, else ``CREWFLOW_DATABASE_URL``, else the embedded SQLite file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from crewflow.adapters.sql.migrate import ProgressEvent
    from crewflow.adapters.sql.provisioning import TenantProvisioner

__all__ = ["cmd_migrate", "cmd_tenants_create", "cmd_tenants_drop", "cmd_tenants_list", "register"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///.crewflow/crewflow.db"
T = TypeVar("T")


class _Failed(Exception):
    """An operational failure reported as one line with ``code``."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    url_help = "database URL (default: $CREWFLOW_DATABASE_URL, else the embedded SQLite file)"

    migrate = subparsers.add_parser(
        "migrate",
        help="upgrade the platform schema, then every tenant schema, to the latest revision",
        description="Upgrade public, then every tenant schema in parallel, one transaction per schema. "
        "Idempotent and resumable: run it again after an interruption. Exit 1 if any schema failed.",
    )
    migrate.add_argument("--database-url", default=None, help=url_help)
    migrate.add_argument("--concurrency", type=int, default=8, help="schemas migrated at once (default 8)")
    migrate.add_argument("--lock-timeout-ms", type=int, default=200, help="lock_timeout per attempt (default 200)")
    migrate.add_argument("--max-attempts", type=int, default=8, help="attempts per schema on lock timeouts")
    migrate.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    migrate.add_argument("--tenant-versions", action="append", default=[], metavar="DIR",
                         help="an extra directory of tenant revisions (plugins); repeatable")  # fmt: skip
    migrate.set_defaults(func=cmd_migrate)

    tenants = subparsers.add_parser("tenants", help="list, create or drop tenants")
    commands = tenants.add_subparsers(dest="tenants_command", metavar="COMMAND", required=True)

    listing = commands.add_parser("list", help="list tenants")
    listing.add_argument("--database-url", default=None, help=url_help)
    listing.add_argument("--json", action="store_true", help="print JSON lines")
    listing.set_defaults(func=cmd_tenants_list)

    create = commands.add_parser("create", help="register a tenant: its row, schema (or file) and tables")
    create.add_argument("slug", help="1-48 lowercase letters, digits or '-'")
    create.add_argument("--name", default=None, help="display name (default: the slug)")
    create.add_argument("--id", dest="tenant_id", default=None, help="tenant id (default: a random one)")
    create.add_argument("--database-url", default=None, help=url_help)
    create.set_defaults(func=cmd_tenants_create)

    drop = commands.add_parser("drop", help="remove a tenant and ALL its data")
    drop.add_argument("tenant", help="tenant id or slug")
    drop.add_argument("--yes", action="store_true", help="confirm: this deletes every record of the tenant")
    drop.add_argument("--database-url", default=None, help=url_help)
    drop.set_defaults(func=cmd_tenants_drop)


def _database_url(args: argparse.Namespace) -> str:
    url: str = getattr(args, "database_url", None) or os.environ.get("CREWFLOW_DATABASE_URL") or DEFAULT_DATABASE_URL
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        raise _Failed(f"invalid database URL {url!r}", EXIT_USAGE) from None
    if parsed.get_backend_name() not in ("postgresql", "sqlite"):
        raise _Failed(f"unsupported database {parsed.get_backend_name()!r}: use postgresql+asyncpg or sqlite+aiosqlite",
                      EXIT_USAGE)  # fmt: skip
    if parsed.get_backend_name() == "sqlite" and parsed.database:
        os.makedirs(os.path.dirname(os.path.abspath(parsed.database)), exist_ok=True)
    return url


def _run(command: str, work: Callable[[], Coroutine[Any, Any, int]]) -> int:
    """Run ``work`` and turn the failures we expect into one line on stderr."""
    import asyncpg  # type: ignore[import-untyped]
    import sqlalchemy.exc

    from crewflow.domain.errors import Conflict, NotFound

    try:
        return asyncio.run(work())
    except _Failed as exc:
        print(f"crewflow {command}: {exc}", file=sys.stderr)
        return exc.code
    except (Conflict, NotFound, ValueError) as exc:
        print(f"crewflow {command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except asyncpg.UndefinedTableError as exc:
        print(
            f"crewflow {command}: the database is not migrated ({exc}); run `crewflow migrate` first", file=sys.stderr
        )
        return EXIT_FAILED
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, sqlalchemy.exc.SQLAlchemyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"crewflow {command}: database error: {first}", file=sys.stderr)
        return EXIT_FAILED


# -- migrate ---------------------------------------------------------------------------------------------
def cmd_migrate(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

    from crewflow.adapters.sql.migrate import MigrationOptions, migrate

    async def work() -> int:
        url = _database_url(args)
        try:
            options = MigrationOptions(
                concurrency=args.concurrency, lock_timeout_ms=args.lock_timeout_ms, max_attempts=args.max_attempts,
                version_locations={"tenant": tuple(args.tenant_versions)},
            )  # fmt: skip
        except ValueError as exc:
            raise _Failed(str(exc), EXIT_USAGE) from None
        console = Console(stderr=True)
        bar = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[note]}"), TimeElapsedColumn(),
            console=console, disable=args.quiet, transient=False,
        )  # fmt: skip
        tasks: dict[str, TaskID] = {}
        retries = 0

        def on_progress(event: ProgressEvent) -> None:
            nonlocal retries
            key = event.branch
            if event.kind == "start":
                tasks[key] = bar.add_task(f"{key} schemas", total=event.total, note="")
                return
            if event.kind == "retry":
                retries += 1
            note = f"{event.failed} failed" if event.failed else ""
            note += f"{', ' if note else ''}{retries} lock retries" if retries else ""
            bar.update(tasks[key], completed=event.done, note=note)

        with bar:
            report = await migrate(url, options, on_progress)
        upgraded, failed = len(report.upgraded), len(report.failed)
        print(
            f"{len(report.results)} schemas: {upgraded} upgraded, {len(report.results) - upgraded - failed} "
            f"already at head, {failed} failed ({report.seconds:.1f} s)"
        )
        for failure in report.failed:
            print(f"FAILED {failure.schema} (at {failure.before or 'no revision'}): {failure.error}", file=sys.stderr)
        return EXIT_OK if report.ok else EXIT_FAILED

    return _run("migrate", work)


# -- tenants ---------------------------------------------------------------------------------------------
async def _with_provisioner(args: argparse.Namespace, use: Callable[[TenantProvisioner], Awaitable[T]]) -> T:
    from crewflow.adapters.sql.provisioning import open_provisioner

    provisioner = open_provisioner(_database_url(args), pool_size=2)
    try:
        return await use(provisioner)
    finally:
        await provisioner.aclose()


def cmd_tenants_list(args: argparse.Namespace) -> int:
    async def work() -> int:
        tenants = await _with_provisioner(args, lambda p: p.list_tenants())
        if args.json:
            for t in tenants:
                print(json.dumps({"id": t.id, "slug": t.slug, "name": t.name, "db_schema": t.db_schema,
                                  "created_at": t.created_at.isoformat()}))  # fmt: skip
            return EXIT_OK
        if not tenants:
            print("no tenants")
            return EXIT_OK
        from rich.console import Console
        from rich.table import Table

        table = Table("id", "slug", "name", "schema", "created")
        for t in tenants:
            table.add_row(t.id, t.slug, t.name, t.db_schema, t.created_at.strftime("%Y-%m-%d %H:%M:%S"))
        Console().print(table)
        return EXIT_OK

    return _run("tenants list", work)


def cmd_tenants_create(args: argparse.Namespace) -> int:
    from crewflow.domain.tenancy import Tenant

    async def work() -> int:
        tenant_id = args.tenant_id or uuid.uuid4().hex[:16]
        from crewflow.adapters.sql.engine import tenant_schema

        schema = tenant_schema(tenant_id)  # ValueError on an id that cannot name a schema
        tenant = Tenant(id=tenant_id, slug=args.slug, name=args.name or args.slug, db_schema=schema,
                        created_at=datetime.now(UTC))  # fmt: skip
        result = await _with_provisioner(args, lambda p: p.register(tenant))
        print(f"created tenant {tenant.id} (slug {tenant.slug}, schema {result.schema})")
        return EXIT_OK

    return _run("tenants create", work)


def cmd_tenants_drop(args: argparse.Namespace) -> int:
    async def work() -> int:
        async def drop(p: TenantProvisioner) -> str:
            matches = [t for t in await p.list_tenants() if args.tenant in (t.id, t.slug)]
            if not matches:
                raise _Failed(f"no tenant with id or slug {args.tenant!r}", EXIT_USAGE)
            target = matches[0]
            if not args.yes:
                raise _Failed(f"refusing to drop tenant {target.id} ({target.slug}) and all its data without --yes",
                              EXIT_USAGE)  # fmt: skip
            await p.drop(target.id)
            return f"dropped tenant {target.id} (slug {target.slug}, schema {target.db_schema})"

        print(await _with_provisioner(args, drop))
        return EXIT_OK

    return _run("tenants drop", work)
