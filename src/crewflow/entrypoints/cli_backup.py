"""``crewflow backup`` and ``crewflow restore`` (see ``crewflow.adapters.sql.backup``).

Exit codes: 0 success; 1 the operation failed (database unreachable, a dump or a tenant's restore failed);
2 invalid input, nothing changed (bad option, unknown tenant, corrupt or missing manifest, tenant exists
without ``--replace``). Errors are one line on stderr, never a traceback.

The database comes from ``--database-url``, else ``CREWFLOW_DATABASE_URL``, else the embedded SQLite file;
the MongoDB log store from ``--mongodb-url``, else ``CREWFLOW_MONGODB_URL`` (none: logs are in SQL).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

__all__ = ["cmd_backup", "cmd_restore", "register"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///.crewflow/crewflow.db"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    url_help = "database URL (default: $CREWFLOW_DATABASE_URL, else the embedded SQLite file)"
    mongo_help = "MongoDB log store URL (default: $CREWFLOW_MONGODB_URL; unset: the logs are in the database)"

    backup = subparsers.add_parser(
        "backup",
        help="back up tenants (their schema or file, platform rows and logs) into a new directory",
        description="PostgreSQL: pg_dump of batches of tenant schemas in one consistent snapshot; SQLite: an "
        "online copy of each tenant file. Written to DIR.partial and renamed to DIR when complete; rerun the "
        "same command to resume an interrupted backup.",
    )
    which = backup.add_mutually_exclusive_group(required=True)
    which.add_argument("--tenant", action="append", metavar="SLUG_OR_ID", help="a tenant to back up; repeatable")
    which.add_argument("--all", action="store_true", help="every tenant")
    backup.add_argument("--out", required=True, type=Path, metavar="DIR", help="the backup directory (must not exist)")
    backup.add_argument("--jobs", "-j", type=int, default=2,
                        help="dumps run at once (default 2; more only if the database has idle cores)")  # fmt: skip
    backup.add_argument("--schemas-per-dump", type=int, default=None, metavar="N",
                        help="schemas per pg_dump run (default: sized to the server's lock table)")  # fmt: skip
    backup.add_argument("--database-url", default=None, help=url_help)
    backup.add_argument("--mongodb-url", default=None, help=mongo_help)
    backup.add_argument("--quiet", "-q", action="store_true", help="no progress lines")
    backup.set_defaults(func=cmd_backup)

    restore = subparsers.add_parser(
        "restore",
        help="restore tenants from a backup directory (each tenant all or nothing)",
        description="Recreate each tenant's schema (or file), platform rows and logs from a backup, migrated to "
        "the current revision. Refuses a tenant that exists unless --replace. Every check runs before the first "
        "change.",
    )
    restore.add_argument("--from", dest="source", required=True, type=Path, metavar="DIR", help="backup directory")
    which = restore.add_mutually_exclusive_group(required=True)
    which.add_argument("--tenant", action="append", metavar="SLUG_OR_ID", help="a tenant to restore; repeatable")
    which.add_argument("--all", action="store_true", help="every tenant of the backup")
    restore.add_argument("--jobs", "-j", type=int, default=4, help="tenants restored at once (default 4)")
    restore.add_argument("--replace", action="store_true", help="overwrite tenants that exist (their data is lost)")
    restore.add_argument("--database-url", default=None, help=url_help)
    restore.add_argument("--mongodb-url", default=None, help=mongo_help)
    restore.add_argument("--quiet", "-q", action="store_true", help="no progress lines")
    restore.set_defaults(func=cmd_restore)


def _database_url(args: argparse.Namespace) -> str:
    url: str = args.database_url or os.environ.get("CREWFLOW_DATABASE_URL") or DEFAULT_DATABASE_URL
    return url


def _progress(args: argparse.Namespace) -> Callable[[str], None]:
    def say(line: str) -> None:
        if not args.quiet:
            print(line, file=sys.stderr, flush=True)

    return say


async def _with_log_store(args: argparse.Namespace, use: Callable[[Any], Coroutine[Any, Any, int]]) -> int:
    mongodb_url = args.mongodb_url or os.environ.get("CREWFLOW_MONGODB_URL")
    if not mongodb_url:
        return await use(None)
    from crewflow.adapters.mongo import MongoLogStore

    store = MongoLogStore.connect(mongodb_url)
    try:
        return await use(store)
    finally:
        await store.close()


def _run(command: str, work: Callable[[], Coroutine[Any, Any, int]]) -> int:
    """Run ``work``; the failures we expect become one line on stderr."""
    import asyncpg  # type: ignore[import-untyped]
    import sqlalchemy.exc

    from crewflow.adapters.sql.backup import BackupError

    errors: tuple[type[BaseException], ...] = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError,
                                               sqlalchemy.exc.SQLAlchemyError)  # fmt: skip
    try:
        from pymongo.errors import PyMongoError

        errors += (PyMongoError,)
    except ImportError:  # pragma: no cover - pymongo comes with beanie
        pass
    try:
        return asyncio.run(work())
    except BackupError as exc:
        print(f"crewflow {command}: {exc}", file=sys.stderr)
        return exc.code
    except ValueError as exc:  # e.g. a tenant id that cannot name a schema, an unparsable URL
        print(f"crewflow {command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"crewflow {command}: interrupted", file=sys.stderr)
        return 130
    except errors as exc:
        text = str(exc).strip()
        first = text.splitlines()[0] if text else type(exc).__name__
        print(f"crewflow {command}: {type(exc).__name__}: {first}", file=sys.stderr)
        return EXIT_FAILED


def cmd_backup(args: argparse.Namespace) -> int:
    from crewflow.adapters.sql.backup import backup

    async def work() -> int:
        async def use(log_store: Any) -> int:
            report = await backup(
                _database_url(args), args.out, tenants=None if args.all else args.tenant, jobs=args.jobs,
                schemas_per_dump=args.schemas_per_dump, log_store=log_store, progress=_progress(args),
            )  # fmt: skip
            reused = f", {report.reused} reused from an interrupted run" if report.reused else ""
            print(f"backed up {report.tenants} tenants to {report.out} ({report.dumps} dumps of up to "
                  f"{report.schemas_per_dump} schemas{reused}) in {report.seconds:.1f} s")  # fmt: skip
            return EXIT_OK

        return await _with_log_store(args, use)

    return _run("backup", work)


def cmd_restore(args: argparse.Namespace) -> int:
    from crewflow.adapters.sql.backup import restore

    async def work() -> int:
        async def use(log_store: Any) -> int:
            report = await restore(
                _database_url(args), args.source, tenants=None if args.all else args.tenant, jobs=args.jobs,
                replace=args.replace, log_store=log_store, progress=_progress(args),
            )  # fmt: skip
            upgraded = f", {len(report.upgraded)} migrated to the current revision" if report.upgraded else ""
            print(f"restored {len(report.restored)} tenants from {args.source}{upgraded} in {report.seconds:.1f} s")
            return EXIT_OK

        return await _with_log_store(args, use)

    return _run("restore", work)
