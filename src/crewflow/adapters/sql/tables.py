"""SQLAlchemy Core tables: ``PUBLIC`` (platform scope) and ``TENANT`` (one copy per tenant).

``TENANT`` tables carry no schema and no tenant id column. On PostgreSQL every tenant owns a schema
``tenant_<id>`` holding one copy of them, and the unit of work selects it per transaction with
``SET LOCAL search_path``; on SQLite every tenant owns one database file holding one copy (ADR 0005). The
same table objects therefore serve every tenant, and queries never mention the tenant.

``PUBLIC`` tables are qualified with the ``public`` schema; the SQLite adapter maps that schema to the main
database with ``schema_translate_map``.

Times of per-tenant records are epoch seconds (``DOUBLE PRECISION``), like ``Clock.now()`` and the
domain's event and log records: exact round trips and identical behaviour on both backends. Times of the
platform tables are timezone-aware ``datetime``s (``timestamptz``), like the ``Tenant``/``User`` records.

Always select explicit columns (``select(table)`` does; never ``text("SELECT *")``): during a rolling
migration PostgreSQL rejects a cached plan whose result type changed.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

__all__ = [
    "AGENTS",
    "AUDIT_LOGS",
    "CHAT_MESSAGES",
    "CREWS",
    "EXECUTIONS",
    "EXECUTION_EVENTS",
    "FLOWS",
    "FLOW_VERSIONS",
    "FLOW_WEBHOOKS",
    "IDEMPOTENCY_KEYS",
    "LLM_PROVIDERS",
    "NAMING_CONVENTION",
    "NODE_RUNS",
    "PUBLIC",
    "PUBLIC_SCHEMA",
    "TENANT",
    "TENANTS",
    "TOOLS",
    "USERS",
    "WEBHOOK_DELIVERIES",
    "UTCDateTime",
]

PUBLIC_SCHEMA = "public"

# Deterministic constraint and index names, so migrations (Alembic) can name them in every tenant schema.
NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """``timestamptz`` that always hands back an aware UTC ``datetime`` (SQLite would drop the zone)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    @property
    def python_type(self) -> type[datetime]:
        return datetime

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: pass an aware UTC datetime")
        return value.astimezone(UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _json() -> sa.JSON:
    # Plain JSON (not JSONB): keeps the document as written (key order) and needs no GIN indexes here.
    return sa.JSON(none_as_null=True)


ID = sa.String(64)
EPOCH: sa.Double[float] = sa.Double()

# -- platform scope --------------------------------------------------------------------------------------
PUBLIC = sa.MetaData(schema=PUBLIC_SCHEMA, naming_convention=NAMING_CONVENTION)

TENANTS = sa.Table(
    "tenants",
    PUBLIC,
    sa.Column("id", ID, primary_key=True),
    sa.Column("slug", sa.String(48), nullable=False, unique=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("db_schema", sa.String(63), nullable=False, unique=True),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Index(None, "created_at", "id"),
)

# E-mail is unique across the platform (stored lower-cased): login takes an e-mail and a password and must
# find exactly one account, whose row then names the tenant that goes into the JWT.
USERS = sa.Table(
    "users",
    PUBLIC,
    sa.Column("id", ID, primary_key=True),
    sa.Column("tenant_id", ID, sa.ForeignKey("public.tenants.id", ondelete="CASCADE"), nullable=False),
    sa.Column("email", sa.String(320), nullable=False, unique=True),
    sa.Column("password_hash", sa.String(255), nullable=False, server_default=""),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("is_active", sa.Boolean(), nullable=False, server_default=sa.true()),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Index(None, "tenant_id", "email"),
)

# -- tenant scope (schema-less: one copy per tenant schema / per tenant database file) -------------------
TENANT = sa.MetaData(naming_convention=NAMING_CONVENTION)

AGENTS = sa.Table(
    "agents",
    TENANT,
    sa.Column("id", sa.String(128), primary_key=True),
    sa.Column("role", sa.Text(), nullable=False),
    sa.Column("goal", sa.Text(), nullable=False),
    sa.Column("backstory", sa.Text(), nullable=False, server_default=""),
    sa.Column("provider", sa.String(128)),
    sa.Column("model", sa.String(200)),
    sa.Column("tools", _json(), nullable=False),
    sa.Column("allow_delegation", sa.Boolean(), nullable=False, server_default=sa.false()),
    sa.Column("max_iter", sa.Integer(), nullable=False, server_default="20"),
    sa.Column("temperature", sa.Double()),
    sa.Column("cache", sa.Boolean(), nullable=False, server_default=sa.true()),
    sa.Column("created_at", EPOCH, nullable=False),
    sa.Column("updated_at", EPOCH, nullable=False),
)

CREWS = sa.Table(
    "crews",
    TENANT,
    sa.Column("id", sa.String(128), primary_key=True),
    sa.Column("description", sa.Text(), nullable=False, server_default=""),
    sa.Column("process", sa.String(16), nullable=False),
    sa.Column("agents", _json(), nullable=False),
    sa.Column("tasks", _json(), nullable=False),
    sa.Column("manager_provider", sa.String(128)),
    sa.Column("created_at", EPOCH, nullable=False),
    sa.Column("updated_at", EPOCH, nullable=False),
)

FLOWS = sa.Table(
    "flows",
    TENANT,
    sa.Column("id", sa.String(128), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("description", sa.Text(), nullable=False, server_default=""),
    sa.Column("current_version", sa.Integer(), nullable=False),
    sa.Column("is_active", sa.Boolean(), nullable=False, server_default=sa.true()),
    sa.Column("created_at", EPOCH, nullable=False),
    sa.Column("updated_at", EPOCH, nullable=False),
    sa.Index(None, "updated_at", "id"),
)

FLOW_VERSIONS = sa.Table(
    "flow_versions",
    TENANT,
    sa.Column("flow_id", sa.String(128), sa.ForeignKey("flows.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("version", sa.Integer(), primary_key=True),
    sa.Column("definition", _json(), nullable=False),
    sa.Column("created_at", EPOCH, nullable=False),
    sa.Column("created_by", ID),
)

# No foreign key to flows: an execution (and its checkpoints) outlives the flow it ran, and a run started
# from a flow file need not have saved the flow first.
EXECUTIONS = sa.Table(
    "executions",
    TENANT,
    sa.Column("id", ID, primary_key=True),
    sa.Column("flow_id", sa.String(128), nullable=False),
    sa.Column("flow_version", sa.Integer(), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("inputs", _json(), nullable=False),
    sa.Column("outputs", _json()),
    sa.Column("error", sa.Text()),
    sa.Column("started_at", EPOCH),
    sa.Column("finished_at", EPOCH),
    sa.Column("created_at", EPOCH, nullable=False),
    # Lease of a distributed worker (claimed with worker_id until lease_expires_at) and the last event seq.
    sa.Column("worker_id", sa.String(128)),
    sa.Column("lease_expires_at", EPOCH),
    sa.Column("last_seq", sa.BigInteger(), nullable=False, server_default="0"),
    sa.Index(None, "flow_id", "created_at", "id"),
    sa.Index(None, "created_at", "id"),
    sa.Index(None, "status", "lease_expires_at"),
)

NODE_RUNS = sa.Table(
    "node_runs",
    TENANT,
    sa.Column("execution_id", ID, sa.ForeignKey("executions.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("node_id", sa.String(128), primary_key=True),
    sa.Column("attempt", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("output", _json()),
    sa.Column("branches", _json()),  # a router's chosen children, needed to replay it after a crash
    sa.Column("error", sa.Text()),
    sa.Column("started_at", EPOCH),
    sa.Column("finished_at", EPOCH),
    sa.Column("duration", sa.Double()),
    sa.Column("input_tokens", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("output_tokens", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("cost", sa.Double(), nullable=False, server_default="0"),
)

LLM_PROVIDERS = sa.Table(
    "llm_providers",
    TENANT,
    sa.Column("id", ID, primary_key=True),
    sa.Column("name", sa.String(128), nullable=False, unique=True),
    sa.Column("provider_type", sa.String(32), nullable=False),
    sa.Column("base_url", sa.String(500)),
    sa.Column("model", sa.String(200), nullable=False),
    sa.Column("config", _json(), nullable=False),
    sa.Column("priority", sa.Integer(), nullable=False, server_default="100"),
    sa.Column("encrypted_key", sa.LargeBinary()),  # AES-256-GCM blob, never the raw key
    sa.Column("key_id", sa.String(64)),  # which master key encrypted it (rotation)
    sa.Column("price_input_per_1k", sa.Double(), nullable=False, server_default="0"),
    sa.Column("price_output_per_1k", sa.Double(), nullable=False, server_default="0"),
    sa.Column("budget", sa.Double()),
    sa.Column("is_active", sa.Boolean(), nullable=False, server_default=sa.true()),
    sa.Column("created_at", EPOCH, nullable=False),
    sa.Column("updated_at", EPOCH, nullable=False),
    sa.Index(None, "priority", "id"),
    sa.Index(None, "key_id"),
)

TOOLS = sa.Table(
    "tools",
    TENANT,
    sa.Column("id", ID, primary_key=True),
    sa.Column("name", sa.String(128), nullable=False, unique=True),
    sa.Column("description", sa.Text(), nullable=False, server_default=""),
    sa.Column("docker_image", sa.String(500)),
    sa.Column("input_schema", _json(), nullable=False),
    sa.Column("output_schema", _json(), nullable=False),
    sa.Column("dockerfile", sa.Text()),
    sa.Column("build_status", sa.String(16), nullable=False, server_default="none"),
    sa.Column("is_active", sa.Boolean(), nullable=False, server_default=sa.true()),
    sa.Column("version", sa.Integer(), nullable=False, server_default="1"),
    sa.Column("created_at", EPOCH, nullable=False),
    sa.Column("updated_at", EPOCH, nullable=False),
    # t0002: the sandbox (script entry point, build context and results, limits, warm pool)
    sa.Column("script", sa.Text()),
    sa.Column("context", _json()),
    sa.Column("image_digest", sa.String(500)),
    sa.Column("build_error", sa.Text()),
    sa.Column("build_log", sa.Text()),
    sa.Column("built_at", EPOCH),
    sa.Column("limits", _json()),
    sa.Column("warm_pool", sa.Integer(), nullable=False, server_default="0"),
)

# t0002: a flow's webhook (notified when an execution of the flow ends; the HMAC secret sealed by the
# secret cipher) and the delivery log of every notification.
FLOW_WEBHOOKS = sa.Table(
    "flow_webhooks",
    TENANT,
    sa.Column("flow_id", sa.String(128), sa.ForeignKey("flows.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("url", sa.String(2000), nullable=False),
    sa.Column("encrypted_secret", sa.LargeBinary(), nullable=False),
    sa.Column("key_id", sa.String(64), nullable=False),
    sa.Column("events", _json(), nullable=False),
    sa.Column("is_active", sa.Boolean(), nullable=False, server_default=sa.true()),
    sa.Column("created_at", EPOCH, nullable=False),
    sa.Column("updated_at", EPOCH, nullable=False),
)

WEBHOOK_DELIVERIES = sa.Table(
    "webhook_deliveries",
    TENANT,
    sa.Column("id", ID, primary_key=True),
    sa.Column("flow_id", sa.String(128), nullable=False),
    sa.Column("execution_id", ID, nullable=False),
    sa.Column("event", sa.String(32), nullable=False),
    sa.Column("url", sa.String(2000), nullable=False),
    sa.Column("payload", _json(), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # pending | delivered | failed
    sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("response_status", sa.Integer()),
    sa.Column("error", sa.Text()),
    sa.Column("next_attempt_at", EPOCH),
    sa.Column("created_at", EPOCH, nullable=False),
    sa.Column("updated_at", EPOCH, nullable=False),
    sa.Index(None, "execution_id"),
    sa.Index(None, "status", "next_attempt_at"),
    sa.Index(None, "created_at"),
)

IDEMPOTENCY_KEYS = sa.Table(
    "idempotency_keys",
    TENANT,
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("request_hash", sa.String(128), nullable=False),
    sa.Column("response", _json()),
    sa.Column("created_at", EPOCH, nullable=False),
    sa.Index(None, "created_at"),
)

# -- log tables (the SQL log store; MongoDB replaces them in production) ---------------------------------
EXECUTION_EVENTS = sa.Table(
    "execution_events",
    TENANT,
    sa.Column("execution_id", ID, primary_key=True),
    sa.Column("seq", sa.BigInteger(), primary_key=True, autoincrement=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("at", EPOCH, nullable=False),
    sa.Column("node_id", sa.String(128)),
    sa.Column("data", _json(), nullable=False),
    sa.Index(None, "at"),
)

CHAT_MESSAGES = sa.Table(
    "chat_messages",
    TENANT,
    sa.Column("id", ID, primary_key=True),
    sa.Column("chat_id", ID, nullable=False),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("content", sa.Text(), nullable=False),
    sa.Column("created_at", EPOCH, nullable=False),
    sa.Column("metadata", _json(), nullable=False),
    sa.Index(None, "chat_id", "created_at", "id"),
    sa.Index(None, "created_at"),
)

AUDIT_LOGS = sa.Table(
    "audit_logs",
    TENANT,
    sa.Column("id", ID, primary_key=True),
    sa.Column("action", sa.String(64), nullable=False),
    sa.Column("created_at", EPOCH, nullable=False),
    sa.Column("actor_id", ID),
    sa.Column("object_type", sa.String(32)),
    sa.Column("object_id", sa.String(128)),
    sa.Column("request_id", sa.String(64)),
    sa.Column("client_addr", sa.String(64)),
    sa.Column("details", _json(), nullable=False),
    sa.Index(None, "created_at", "id"),
    sa.Index(None, "actor_id"),
    sa.Index(None, "object_type", "object_id"),
)
