"""SQL log store: execution events, chat messages and audit entries in the tenant's own tables.

The tables (``execution_events``, ``chat_messages``, ``audit_logs``) live with the rest of a tenant's data:
in its PostgreSQL schema or its SQLite file. Every operation runs in ``SqlDatabase.tenant_transaction``,
the same per-transaction tenant scoping the unit of work uses, so the SQL never names a tenant and one
tenant's statements cannot reach another's rows.

Appends are idempotent through the primary keys (``execution_id, seq`` for events, ``id`` for chat and
audit) with ``INSERT … ON CONFLICT DO NOTHING`` on both dialects.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from crewflow.adapters.logcursor import check_limit, decode_cursor, next_cursor
from crewflow.adapters.sql.engine import SqlDatabase
from crewflow.adapters.sql.tables import AUDIT_LOGS, CHAT_MESSAGES, EXECUTION_EVENTS
from crewflow.domain.errors import NotFound
from crewflow.domain.events import EventKind, ExecutionEvent
from crewflow.domain.logs import AuditEntry, ChatMessageRecord, Page

__all__ = ["SqlLogStore", "SqlTenantLogStore"]



async def _insert_ignoring_duplicates(conn: AsyncConnection, table: sa.Table, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    if conn.dialect.name == "postgresql":
        stmt: sa.Insert = postgresql.insert(table).on_conflict_do_nothing()
    elif conn.dialect.name == "sqlite":
        stmt = sqlite.insert(table).on_conflict_do_nothing()
    else:  # pragma: no cover - only the two dialects above are wired
        raise NotImplementedError(f"SQL log store does not support {conn.dialect.name}")
    await conn.execute(stmt, rows)


async def append_events_in(conn: AsyncConnection, events: Sequence[ExecutionEvent]) -> None:
    """Append events to the replay log inside the caller's (tenant-scoped) transaction; duplicates of an
    already stored (execution_id, seq) are ignored."""
    rows = [
        {"execution_id": e.execution_id, "seq": e.seq, "kind": str(e.kind), "at": e.at, "node_id": e.node_id,
         "data": dict(e.data)}
        for e in events
    ]
    await _insert_ignoring_duplicates(conn, EXECUTION_EVENTS, rows)


class SqlLogStore:
    """``LogStore`` on the relational database (the default: no extra service to run)."""

    def __init__(self, database: SqlDatabase, *, owns_database: bool = False) -> None:
        self._database = database
        self._owns_database = owns_database

    @property
    def database(self) -> SqlDatabase:
        return self._database

    def for_tenant(self, tenant_id: str) -> SqlTenantLogStore:
        return SqlTenantLogStore(self._database, tenant_id)

    async def drop_tenant(self, tenant_id: str) -> None:
        """Delete every log record of the tenant. The tables themselves belong to the tenant's schema (or
        file), which the relational store drops with the tenant; a tenant already gone is not an error."""
        if not await self._database.tenant_exists(tenant_id):
            return
        try:
            async with self._database.tenant_transaction(tenant_id) as conn:
                for table in (EXECUTION_EVENTS, CHAT_MESSAGES, AUDIT_LOGS):
                    await conn.execute(sa.delete(table))
        except NotFound:
            return

    async def close(self) -> None:
        if self._owns_database:
            await self._database.dispose()


class SqlTenantLogStore:
    """One tenant's view of the SQL log store (``TenantLogStore``)."""

    __slots__ = ("_database", "_tenant_id")

    def __init__(self, database: SqlDatabase, tenant_id: str) -> None:
        self._database = database
        self._tenant_id = tenant_id

    def __repr__(self) -> str:
        return f"SqlTenantLogStore(tenant_id={self._tenant_id!r})"

    async def append_events(self, events: Sequence[ExecutionEvent]) -> None:
        async with self._database.tenant_transaction(self._tenant_id) as conn:
            await append_events_in(conn, events)

    async def events_after(self, execution_id: str, after_seq: int = 0, limit: int = 1000) -> list[ExecutionEvent]:
        check_limit(limit)
        t = EXECUTION_EVENTS
        query = (
            sa.select(t.c.execution_id, t.c.seq, t.c.kind, t.c.at, t.c.node_id, t.c.data)
            .where(t.c.execution_id == execution_id, t.c.seq > after_seq)
            .order_by(t.c.seq)
            .limit(limit)
        )
        async with self._database.tenant_transaction(self._tenant_id) as conn:
            rows = (await conn.execute(query)).all()
        return [
            ExecutionEvent(r.execution_id, r.seq, EventKind(r.kind), r.at, r.node_id, _mapping(r.data)) for r in rows
        ]

    async def add_chat_message(self, message: ChatMessageRecord) -> None:
        row = {
            "id": message.id,
            "chat_id": message.chat_id,
            "role": message.role,
            "content": message.content,
            "created_at": message.created_at,
            "metadata": dict(message.metadata),
        }
        async with self._database.tenant_transaction(self._tenant_id) as conn:
            await _insert_ignoring_duplicates(conn, CHAT_MESSAGES, [row])

    async def chat_messages(self, chat_id: str, cursor: str | None = None, limit: int = 50) -> Page[ChatMessageRecord]:
        check_limit(limit)
        t = CHAT_MESSAGES
        query = sa.select(t.c.id, t.c.chat_id, t.c.role, t.c.content, t.c.created_at, t.c.metadata).where(
            t.c.chat_id == chat_id
        )
        if cursor is not None:
            at, last_id = decode_cursor(cursor)
            query = query.where(sa.or_(t.c.created_at > at, sa.and_(t.c.created_at == at, t.c.id > last_id)))
        query = query.order_by(t.c.created_at, t.c.id).limit(limit + 1)
        async with self._database.tenant_transaction(self._tenant_id) as conn:
            rows = (await conn.execute(query)).all()
        items = tuple(
            ChatMessageRecord(r.id, r.chat_id, r.role, r.content, r.created_at, _mapping(r.metadata))
            for r in rows[:limit]
        )
        return Page(items, next_cursor(items, len(rows) > limit))

    async def add_audit(self, entry: AuditEntry) -> None:
        row = {
            "id": entry.id,
            "action": entry.action,
            "created_at": entry.created_at,
            "actor_id": entry.actor_id,
            "object_type": entry.object_type,
            "object_id": entry.object_id,
            "request_id": entry.request_id,
            "client_addr": entry.client_addr,
            "details": dict(entry.details),
        }
        async with self._database.tenant_transaction(self._tenant_id) as conn:
            await _insert_ignoring_duplicates(conn, AUDIT_LOGS, [row])

    async def audit_entries(self, cursor: str | None = None, limit: int = 50) -> Page[AuditEntry]:
        check_limit(limit)
        t = AUDIT_LOGS
        query = sa.select(
            t.c.id, t.c.action, t.c.created_at, t.c.actor_id, t.c.object_type, t.c.object_id,
            t.c.request_id, t.c.client_addr, t.c.details,
        )  # fmt: skip
        if cursor is not None:
            at, last_id = decode_cursor(cursor)
            query = query.where(sa.or_(t.c.created_at < at, sa.and_(t.c.created_at == at, t.c.id < last_id)))
        query = query.order_by(t.c.created_at.desc(), t.c.id.desc()).limit(limit + 1)
        async with self._database.tenant_transaction(self._tenant_id) as conn:
            rows = (await conn.execute(query)).all()
        items = tuple(
            AuditEntry(
                id=r.id,
                action=r.action,
                created_at=r.created_at,
                actor_id=r.actor_id,
                object_type=r.object_type,
                object_id=r.object_id,
                request_id=r.request_id,
                client_addr=r.client_addr,
                details=_mapping(r.details),
            )
            for r in rows[:limit]
        )
        return Page(items, next_cursor(items, len(rows) > limit))

    async def purge_before(self, cutoff: float) -> int:
        removed = 0
        async with self._database.tenant_transaction(self._tenant_id) as conn:
            for table, column in (
                (EXECUTION_EVENTS, EXECUTION_EVENTS.c.at),
                (CHAT_MESSAGES, CHAT_MESSAGES.c.created_at),
                (AUDIT_LOGS, AUDIT_LOGS.c.created_at),
            ):
                result = await conn.execute(sa.delete(table).where(column < cutoff))
                removed += max(result.rowcount, 0)
        return removed

    async def purge_executions(self, execution_ids: Collection[str]) -> int:
        ids = sorted(set(execution_ids))
        if not ids:
            return 0
        removed = 0
        async with self._database.tenant_transaction(self._tenant_id) as conn:
            for start in range(0, len(ids), 500):  # bounded IN lists (SQLite's bound-parameter limit)
                chunk = ids[start : start + 500]
                stmt = sa.delete(EXECUTION_EVENTS).where(EXECUTION_EVENTS.c.execution_id.in_(chunk))
                result = await conn.execute(stmt)
                removed += max(result.rowcount, 0)
        return removed

    async def purge_chat_messages_before(self, cutoff: float) -> int:
        async with self._database.tenant_transaction(self._tenant_id) as conn:
            result = await conn.execute(sa.delete(CHAT_MESSAGES).where(CHAT_MESSAGES.c.created_at < cutoff))
        return max(result.rowcount, 0)


def _mapping(value: Any) -> Mapping[str, Any]:
    return dict(value) if value else {}

