"""Alembic migrations for crewflow: one script directory for ``public``, one for every tenant schema.

Two independent revision histories (``public/`` and ``tenant/``), each with its own ``alembic_version``
table: ``public.alembic_version`` for the platform tables and ``<tenant schema>.alembic_version`` inside
every tenant schema, so the version of each schema is stored in that schema and nowhere else (ADR 0006).

Tenant revisions are written schema-less (``op.add_column("agents", ...)``): they run with
``search_path`` set to the one tenant schema, in that schema's own transaction. The PostgreSQL runner
(:mod:`crewflow.adapters.sql.migrate`) renders each upgrade path to SQL once with Alembic's offline mode
and replays it in every schema, so tenant revisions must be expressible as SQL (no reads into Python);
data changes are written as SQL statements (``op.execute("UPDATE ...")``).

Developers use the ``alembic`` command line on one schema::

    alembic -c src/crewflow/adapters/sql/migrations/alembic.ini -n tenant -x schema=tenant_dev upgrade head
    alembic -c src/crewflow/adapters/sql/migrations/alembic.ini -n tenant revision -m "add x"
"""

from __future__ import annotations

import asyncio
import io
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Final, Literal

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

__all__ = [
    "BRANCHES",
    "MIGRATIONS_DIR",
    "Branch",
    "alembic_config",
    "head_revision",
    "known_revisions",
    "quote_schema",
    "render_upgrade_sql",
    "run_env",
    "script_directory",
    "upgrade_online",
    "validate_schema_name",
]

Branch = Literal["public", "tenant"]
BRANCHES: Final[tuple[Branch, ...]] = ("public", "tenant")
MIGRATIONS_DIR: Final[Path] = Path(__file__).resolve().parent
VERSION_TABLE: Final[str] = "alembic_version"

# Schemas the migration runner and the provisioner create: lowercase, digits, '_' (PostgreSQL's 63-byte limit).
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def validate_schema_name(name: str) -> str:
    """Return ``name`` if it is a schema name crewflow creates; raise ``ValueError`` otherwise."""
    if not _SCHEMA_NAME.match(name):
        raise ValueError(f"invalid schema name {name!r}: expected 1-63 of [a-z0-9_], not starting with a digit")
    return name


def quote_schema(name: str) -> str:
    """The validated schema name as a double-quoted SQL identifier."""
    return '"' + validate_schema_name(name) + '"'


def alembic_config(
    branch: Branch,
    *,
    extra_version_locations: Sequence[str | os.PathLike[str]] = (),
    output_buffer: io.StringIO | None = None,
) -> Config:
    """An Alembic ``Config`` for one branch, built in code (no ini file needed)."""
    if branch not in BRANCHES:
        raise ValueError(f"unknown migration branch {branch!r}")
    cfg = Config(output_buffer=output_buffer)
    location = MIGRATIONS_DIR / branch
    cfg.set_main_option("script_location", str(location))
    cfg.set_main_option("path_separator", "os")
    locations = [str(location / "versions"), *(str(Path(p).resolve()) for p in extra_version_locations)]
    cfg.set_main_option("version_locations", os.pathsep.join(locations))
    cfg.attributes["branch"] = branch
    return cfg


def script_directory(branch: Branch, extra_version_locations: Sequence[str | os.PathLike[str]] = ()) -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config(branch, extra_version_locations=extra_version_locations))


def head_revision(branch: Branch, extra_version_locations: Sequence[str | os.PathLike[str]] = ()) -> str:
    """The single head of a branch (a branch with two heads is an error to fix with ``alembic merge``)."""
    head = script_directory(branch, extra_version_locations).get_current_head()
    if head is None:
        raise RuntimeError(f"migration branch {branch!r} has no revision")
    return head


def known_revisions(script: ScriptDirectory) -> frozenset[str]:
    return frozenset(s.revision for s in script.walk_revisions())


def render_upgrade_sql(
    branch: Branch,
    from_revision: str | None,
    *,
    dialect_name: str = "postgresql",
    extra_version_locations: Sequence[str | os.PathLike[str]] = (),
) -> str:
    """The SQL that upgrades one schema from ``from_revision`` (None: empty) to head, via Alembic offline mode.

    The SQL is schema-less (tables and ``alembic_version`` unqualified) and carries no BEGIN/COMMIT: run it
    inside a transaction whose ``search_path`` is the target schema.
    """
    buffer = io.StringIO()
    cfg = alembic_config(branch, extra_version_locations=extra_version_locations, output_buffer=buffer)
    cfg.attributes["dialect_name"] = dialect_name
    target = "head" if from_revision is None else f"{from_revision}:head"
    command.upgrade(cfg, target, sql=True)
    return buffer.getvalue()


def upgrade_online(
    connection: sa.Connection,
    branch: Branch,
    *,
    schema: str | None = None,
    extra_version_locations: Sequence[str | os.PathLike[str]] = (),
) -> None:
    """Upgrade one database/schema to head through Alembic's online mode on an open (sync) connection.

    Used for SQLite files and by the ``alembic`` command line; run it from ``AsyncConnection.run_sync``.
    Not safe to run concurrently in one process (Alembic's ``op``/``context`` proxies are module globals).
    """
    cfg = alembic_config(branch, extra_version_locations=extra_version_locations)
    cfg.attributes["connection"] = connection
    cfg.attributes["schema"] = schema
    command.upgrade(cfg, "head")


def run_env(branch: Branch) -> None:
    """The body of both ``env.py`` files."""
    from alembic import context

    from crewflow.adapters.sql.tables import PUBLIC, TENANT

    config = context.config
    target_metadata = PUBLIC if branch == "public" else TENANT
    x_args = context.get_x_argument(as_dictionary=True)

    if context.is_offline_mode():
        dialect_name = config.attributes.get("dialect_name") or x_args.get("dialect", "postgresql")
        context.configure(
            dialect_name=dialect_name,
            target_metadata=target_metadata,
            literal_binds=True,
            transactional_ddl=False,  # the runner owns the transaction
            version_table=VERSION_TABLE,
            version_table_schema=None,  # resolved through search_path: the version lives in its schema
        )
        with context.begin_transaction():
            context.run_migrations()
        return

    schema: str | None = config.attributes.get("schema") or x_args.get("schema")
    if branch == "public" and schema is None:
        schema = "public"

    def run(connection: sa.Connection) -> None:
        is_postgres = connection.dialect.name == "postgresql"
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            version_table=VERSION_TABLE,
            version_table_schema=schema if is_postgres else None,
            transaction_per_migration=False,
        )
        with context.begin_transaction():
            if is_postgres and schema is not None:
                context.execute(f"SET LOCAL search_path TO {quote_schema(schema)}")
            context.run_migrations()

    given = config.attributes.get("connection")
    if given is not None:
        run(given)
        return

    from sqlalchemy.ext.asyncio import create_async_engine

    url = x_args.get("url") or os.environ.get("CREWFLOW_DATABASE_URL")
    if not url:
        raise RuntimeError("no database: pass -x url=... or set CREWFLOW_DATABASE_URL")

    async def run_async() -> None:
        engine = create_async_engine(url, poolclass=sa.pool.NullPool)
        try:
            async with engine.connect() as connection:
                await connection.run_sync(run)
                await connection.commit()
        finally:
            await engine.dispose()

    asyncio.run(run_async())
