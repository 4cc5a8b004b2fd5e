"""SQL persistence (SQLAlchemy 2 async): PostgreSQL schema-per-tenant and SQLite file-per-tenant (ADR 0005).

Composition root: ``factory = build_uow_factory(settings.database_url)``; then ``factory.for_tenant(id)`` /
``factory.platform()`` give units of work, and ``CheckpointSink(factory, tenant_id)`` checkpoints runs.
"""

from crewflow.adapters.sql.checkpoints import CheckpointSink
from crewflow.adapters.sql.engine import (
    PostgresDatabase,
    SqlDatabase,
    SqliteDatabase,
    create_tenant_schema,
    drop_tenant_schema,
    open_database,
    tenant_schema,
)
from crewflow.adapters.sql.uow import SqlPlatformUnitOfWork, SqlUnitOfWork, SqlUnitOfWorkFactory, build_uow_factory

__all__ = [
    "CheckpointSink",
    "PostgresDatabase",
    "SqlDatabase",
    "SqlPlatformUnitOfWork",
    "SqlUnitOfWork",
    "SqlUnitOfWorkFactory",
    "SqliteDatabase",
    "build_uow_factory",
    "create_tenant_schema",
    "drop_tenant_schema",
    "open_database",
    "tenant_schema",
]
