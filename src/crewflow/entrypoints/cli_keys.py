"""``crewflow keys rotate``: re-seal every tenant's provider API keys under the current master key.

Rotation procedure (ADR 0007): put the new key first in ``CREWFLOW_SECRET_KEY`` and keep the old one after
it (``new:<b64>,old:<b64>``), deploy, run ``crewflow keys rotate``, then remove the old key.

Exit codes: 0 every key is under the current key; 1 some keys could not be re-sealed (listed on stderr);
2 bad configuration (no or malformed ``CREWFLOW_SECRET_KEY``, unusable database URL).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from crewflow.ports.secrets import SecretCipher, SecretKeyMisconfigured
from crewflow.ports.uow import UnitOfWorkFactory

__all__ = ["handler", "register"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = subparsers.add_parser("keys", help="provider API key encryption (AES-256-GCM)")
    commands = keys.add_subparsers(dest="keys_command", metavar="COMMAND", required=True)
    rotate = commands.add_parser(
        "rotate",
        help="re-encrypt every tenant's provider keys with the current key of CREWFLOW_SECRET_KEY",
        description="Re-encrypt provider API keys sealed with an older key of the CREWFLOW_SECRET_KEY keyring "
        "with its current (first) key. Idempotent: run it again after an interruption.",
    )
    rotate.add_argument(
        "--database-url",
        default=None,
        help="database URL (default: $CREWFLOW_DATABASE_URL, else the embedded SQLite file)",
    )
    rotate.add_argument("--tenant", action="append", dest="tenants", metavar="ID", help="only this tenant (repeatable)")
    rotate.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    from crewflow.adapters.crypto import AesGcmCipher
    from crewflow.settings import Settings

    try:
        cipher = AesGcmCipher.from_env()
    except SecretKeyMisconfigured as exc:
        print(f"crewflow keys rotate: {exc}", file=sys.stderr)
        return EXIT_USAGE
    database_url = (
        args.database_url or os.environ.get("CREWFLOW_DATABASE_URL") or Settings.from_env().effective_database_url
    )
    from sqlalchemy.exc import ArgumentError, DBAPIError

    from crewflow.adapters.sql.uow import build_uow_factory

    try:
        factory = build_uow_factory(database_url, pool_size=2)
    except (ValueError, ArgumentError) as exc:  # the messages name the problem, never the URL (it may hold a password)
        print(f"crewflow keys rotate: unusable database URL: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return asyncio.run(_rotate(factory, cipher, args.tenants))
    except DBAPIError as exc:
        # The driver's message only: SQLAlchemy's text would repeat the statement and its parameters.
        reason = str(exc.orig).strip().splitlines()[0] if str(exc.orig).strip() else type(exc.orig).__name__
        print(f"crewflow keys rotate: database error: {reason} (is the database migrated?)", file=sys.stderr)
        return EXIT_FAILED


async def _rotate(factory: UnitOfWorkFactory, cipher: SecretCipher, tenants: list[str] | None) -> int:
    from crewflow.application.keys import rotate_keys

    try:
        report = await rotate_keys(
            factory,
            cipher,
            tenant_ids=tenants,
            on_tenant=lambda tenant_id, rotated: print(f"tenant {tenant_id}: {rotated} key(s) re-encrypted"),
        )
    finally:
        await factory.close()
    for failure in report.failures:
        where = f"tenant {failure.tenant_id}" + (f" provider {failure.provider_id}" if failure.provider_id else "")
        print(f"{where}: {failure.reason}", file=sys.stderr)
    print(
        f"{report.tenants} tenant(s): {report.rotated} key(s) re-encrypted with key {report.current_key_id!r}, "
        f"{report.already_current} already current, {report.without_key} provider(s) without a key, "
        f"{len(report.failures)} failure(s)"
    )
    return EXIT_OK if report.ok else EXIT_FAILED
