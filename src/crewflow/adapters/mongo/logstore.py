"""MongoDB log store through beanie 2 (PyMongo's async driver).

Every tenant has its own collections ``execution_logs_<tenant>``, ``chat_messages_<tenant>`` and
``audit_logs_<tenant>``. Beanie binds a document class to one collection, so the three document classes
are built per tenant on first use and ``init_beanie`` creates their indexes (an idempotent
``createIndexes``); a bounded LRU keeps the classes of recently used tenants (measured with beanie 2.2 and
pydantic 2.12: ≈140 KiB and ≈13 ms of class building per tenant on first use, so 256 cached ≈ 36 MiB).
Every document also carries ``tenant_id`` and every query filters on it, so a collection-name mistake
cannot leak another tenant's rows.

Indexes per collection: (tenant_id, created_at); a TTL index on created_at (30 days by default); a unique
key (execution_id + seq for events, the record id for chat and audit) that makes writes idempotent; and
the index the list query sorts on.

beanie and pymongo are imported lazily: importing crewflow does not import them.
"""

from __future__ import annotations

import asyncio
import re
from collections import OrderedDict
from collections.abc import Collection, Sequence
from datetime import UTC, datetime
from typing import Any

from crewflow.adapters.logcursor import check_limit, decode_cursor, next_cursor
from crewflow.domain.events import EventKind, ExecutionEvent
from crewflow.domain.logs import AuditEntry, ChatMessageRecord, Page

__all__ = ["DEFAULT_TTL_DAYS", "MongoLogStore", "collection_names"]

DEFAULT_TTL_DAYS = 30
_DUPLICATE_KEY = 11000
_TENANT = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def collection_names(tenant_id: str) -> tuple[str, str, str]:
    """(execution_logs_<t>, chat_messages_<t>, audit_logs_<t>). The id is used verbatim (no lossy mapping
    that could make two tenants share a collection), so it must be 1-64 letters, digits, '_' or '-'."""
    if not _TENANT.match(tenant_id):
        raise ValueError(f"tenant id {tenant_id!r} cannot name a MongoDB collection")
    return f"execution_logs_{tenant_id}", f"chat_messages_{tenant_id}", f"audit_logs_{tenant_id}"


def _as_datetime(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, tz=UTC)



class _Models:
    """The three beanie document classes of one tenant."""

    __slots__ = ("audit", "chat", "events")

    def __init__(self, events: Any, chat: Any, audit: Any) -> None:
        self.events = events
        self.chat = chat
        self.audit = audit

    @property
    def all(self) -> tuple[Any, Any, Any]:
        return self.events, self.chat, self.audit


def _build_models(tenant_id: str, ttl_seconds: int) -> _Models:
    """Fresh document classes bound to this tenant's collections.

    Each class derives from ``beanie.Document`` directly: beanie's ``init_beanie`` writes field expressions
    onto every initialised class *and its document parents*, so tenant classes sharing a common Document
    base would inherit ``id = "_id"`` as a default (measured with beanie 2.2). Fields are declared here once
    and copied into each class.
    """
    from beanie import Document
    from pymongo import ASCENDING, DESCENDING, IndexModel

    events_name, chat_name, audit_name = collection_names(tenant_id)
    suffix = re.sub(r"\W", "_", tenant_id)

    def common_indexes(prefix: str) -> list[IndexModel]:
        return [
            IndexModel([("tenant_id", ASCENDING), ("created_at", ASCENDING)], name=f"{prefix}_tenant_created"),
            IndexModel([("created_at", ASCENDING)], name=f"{prefix}_ttl", expireAfterSeconds=ttl_seconds),
        ]

    def make(kind: str, collection: str, fields: dict[str, Any], defaults: dict[str, Any],
             indexes: list[IndexModel]) -> Any:  # fmt: skip
        class_name = f"{kind}_{suffix}"
        settings = type(
            "Settings",
            (),
            {
                "__module__": __name__,
                "__qualname__": f"{class_name}.Settings",
                "name": collection,
                "indexes": indexes,
                "use_state_management": False,
                "keep_nulls": True,
            },
        )
        namespace: dict[str, Any] = {
            "__module__": __name__,
            "__qualname__": class_name,
            "__annotations__": dict(fields),
            "Settings": settings,
            **defaults,
        }
        return type(class_name, (Document,), namespace)

    events = make(
        "ExecutionLog",
        events_name,
        {
            "tenant_id": str,
            "execution_id": str,
            "seq": int,
            "kind": str,
            "node_id": str | None,
            "data": dict[str, Any],
            "at": float,
            "created_at": datetime,
        },
        {"node_id": None},
        [
            *common_indexes("events"),
            IndexModel(
                [("tenant_id", ASCENDING), ("execution_id", ASCENDING), ("seq", ASCENDING)],
                name="events_execution_seq",
                unique=True,
            ),
        ],
    )
    chat = make(
        "ChatMessage",
        chat_name,
        {
            "tenant_id": str,
            "record_id": str,
            "chat_id": str,
            "role": str,
            "content": str,
            "metadata": dict[str, Any],
            "at": float,
            "created_at": datetime,
        },
        {},
        [
            *common_indexes("chat"),
            IndexModel([("tenant_id", ASCENDING), ("record_id", ASCENDING)], name="chat_record", unique=True),
            IndexModel(
                [("tenant_id", ASCENDING), ("chat_id", ASCENDING), ("at", ASCENDING), ("record_id", ASCENDING)],
                name="chat_list",
            ),
        ],
    )
    audit = make(
        "AuditLog",
        audit_name,
        {
            "tenant_id": str,
            "record_id": str,
            "action": str,
            "actor_id": str | None,
            "object_type": str | None,
            "object_id": str | None,
            "request_id": str | None,
            "client_addr": str | None,
            "details": dict[str, Any],
            "at": float,
            "created_at": datetime,
        },
        {"actor_id": None, "object_type": None, "object_id": None, "request_id": None, "client_addr": None},
        [
            *common_indexes("audit"),
            IndexModel([("tenant_id", ASCENDING), ("record_id", ASCENDING)], name="audit_record", unique=True),
            IndexModel([("tenant_id", ASCENDING), ("at", DESCENDING), ("record_id", DESCENDING)], name="audit_list"),
        ],
    )
    return _Models(events, chat, audit)


async def _insert_ignoring_duplicates(model: Any, documents: list[Any]) -> None:
    """Insert, treating "already stored" (duplicate key) as success; any other write error propagates."""
    if not documents:
        return
    from pymongo.errors import BulkWriteError

    try:
        await model.insert_many(documents, ordered=False)
    except BulkWriteError as exc:
        errors = exc.details.get("writeErrors", [])
        if not errors or any(error.get("code") != _DUPLICATE_KEY for error in errors):
            raise


class MongoLogStore:
    """``LogStore`` on MongoDB. Build with ``MongoLogStore.connect(url)`` or pass a database object
    (PyMongo ``AsyncDatabase``, or anything beanie's ``init_beanie`` accepts)."""

    def __init__(self, database: Any, *, ttl_days: int = DEFAULT_TTL_DAYS, client: Any = None,
                 max_cached_tenants: int = 256) -> None:  # fmt: skip
        if ttl_days < 1:
            raise ValueError("ttl_days must be at least 1")
        self._database = database
        self._client = client  # closed by close() when this store opened it
        self._ttl_seconds = ttl_days * 86_400
        self._max_cached = max_cached_tenants
        self._models: OrderedDict[str, _Models] = OrderedDict()
        self._lock = asyncio.Lock()

    @classmethod
    def connect(cls, url: str, *, database: str | None = None, ttl_days: int = DEFAULT_TTL_DAYS) -> MongoLogStore:
        """Open a client for ``url`` (``mongodb://host/dbname``; ``database`` overrides the URL's)."""
        from pymongo import AsyncMongoClient

        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(url, tz_aware=True)
        db = client[database] if database else client.get_default_database("crewflow")
        return cls(db, ttl_days=ttl_days, client=client)

    @property
    def database(self) -> Any:
        return self._database

    def __repr__(self) -> str:  # the URL may carry credentials: never show it
        return f"MongoLogStore(database={getattr(self._database, 'name', '?')!r})"

    def for_tenant(self, tenant_id: str) -> MongoTenantLogStore:
        collection_names(tenant_id)  # validate now, not on first use
        return MongoTenantLogStore(self, tenant_id)

    async def models_for(self, tenant_id: str) -> _Models:
        models = self._models.get(tenant_id)
        if models is not None:
            self._models.move_to_end(tenant_id)
            return models
        async with self._lock:
            models = self._models.get(tenant_id)
            if models is None:
                from beanie import init_beanie

                models = _build_models(tenant_id, self._ttl_seconds)
                await init_beanie(database=self._database, document_models=list(models.all))
                self._models[tenant_id] = models
                while len(self._models) > self._max_cached:
                    self._models.popitem(last=False)
            return models

    async def drop_tenant(self, tenant_id: str) -> None:
        async with self._lock:
            self._models.pop(tenant_id, None)
            for name in collection_names(tenant_id):
                await self._database[name].drop()

    async def close(self) -> None:
        self._models.clear()
        if self._client is not None:
            await self._client.close()
            self._client = None


class MongoTenantLogStore:
    """One tenant's view of the MongoDB log store (``TenantLogStore``)."""

    __slots__ = ("_store", "_tenant_id")

    def __init__(self, store: MongoLogStore, tenant_id: str) -> None:
        self._store = store
        self._tenant_id = tenant_id

    def __repr__(self) -> str:
        return f"MongoTenantLogStore(tenant_id={self._tenant_id!r})"

    async def append_events(self, events: Sequence[ExecutionEvent]) -> None:
        models = await self._store.models_for(self._tenant_id)
        docs = [
            models.events(
                tenant_id=self._tenant_id,
                execution_id=event.execution_id,
                seq=event.seq,
                kind=str(event.kind),
                node_id=event.node_id,
                data=dict(event.data),
                at=event.at,
                created_at=_as_datetime(event.at),
            )
            for event in events
        ]
        await _insert_ignoring_duplicates(models.events, docs)

    async def events_after(self, execution_id: str, after_seq: int = 0, limit: int = 1000) -> list[ExecutionEvent]:
        check_limit(limit)
        models = await self._store.models_for(self._tenant_id)
        found = (
            await models.events.find(
                {"tenant_id": self._tenant_id, "execution_id": execution_id, "seq": {"$gt": after_seq}}
            )
            .sort([("seq", 1)])
            .limit(limit)
            .to_list()
        )
        return [
            ExecutionEvent(doc.execution_id, doc.seq, EventKind(doc.kind), doc.at, doc.node_id, dict(doc.data))
            for doc in found
        ]

    async def add_chat_message(self, message: ChatMessageRecord) -> None:
        models = await self._store.models_for(self._tenant_id)
        doc = models.chat(
            tenant_id=self._tenant_id,
            record_id=message.id,
            chat_id=message.chat_id,
            role=message.role,
            content=message.content,
            metadata=dict(message.metadata),
            at=message.created_at,
            created_at=_as_datetime(message.created_at),
        )
        await _insert_ignoring_duplicates(models.chat, [doc])

    async def chat_messages(self, chat_id: str, cursor: str | None = None, limit: int = 50) -> Page[ChatMessageRecord]:
        check_limit(limit)
        models = await self._store.models_for(self._tenant_id)
        query: dict[str, Any] = {"tenant_id": self._tenant_id, "chat_id": chat_id}
        if cursor is not None:
            at, record_id = decode_cursor(cursor)
            query["$or"] = [{"at": {"$gt": at}}, {"at": at, "record_id": {"$gt": record_id}}]
        found = await models.chat.find(query).sort([("at", 1), ("record_id", 1)]).limit(limit + 1).to_list()
        items = tuple(
            ChatMessageRecord(d.record_id, d.chat_id, d.role, d.content, d.at, dict(d.metadata)) for d in found[:limit]
        )
        return Page(items, next_cursor(items, len(found) > limit))

    async def add_audit(self, entry: AuditEntry) -> None:
        models = await self._store.models_for(self._tenant_id)
        doc = models.audit(
            tenant_id=self._tenant_id,
            record_id=entry.id,
            action=entry.action,
            actor_id=entry.actor_id,
            object_type=entry.object_type,
            object_id=entry.object_id,
            request_id=entry.request_id,
            client_addr=entry.client_addr,
            details=dict(entry.details),
            at=entry.created_at,
            created_at=_as_datetime(entry.created_at),
        )
        await _insert_ignoring_duplicates(models.audit, [doc])

    async def audit_entries(self, cursor: str | None = None, limit: int = 50) -> Page[AuditEntry]:
        check_limit(limit)
        models = await self._store.models_for(self._tenant_id)
        query: dict[str, Any] = {"tenant_id": self._tenant_id}
        if cursor is not None:
            at, record_id = decode_cursor(cursor)
            query["$or"] = [{"at": {"$lt": at}}, {"at": at, "record_id": {"$lt": record_id}}]
        found = await models.audit.find(query).sort([("at", -1), ("record_id", -1)]).limit(limit + 1).to_list()
        items = tuple(
            AuditEntry(
                id=d.record_id,
                action=d.action,
                created_at=d.at,
                actor_id=d.actor_id,
                object_type=d.object_type,
                object_id=d.object_id,
                request_id=d.request_id,
                client_addr=d.client_addr,
                details=dict(d.details),
            )
            for d in found[:limit]
        )
        return Page(items, next_cursor(items, len(found) > limit))

    async def purge_before(self, cutoff: float) -> int:
        models = await self._store.models_for(self._tenant_id)
        removed = 0
        for model in models.all:
            result = await model.find({"tenant_id": self._tenant_id, "at": {"$lt": cutoff}}).delete()
            removed += result.deleted_count if result is not None else 0
        return removed

    async def purge_executions(self, execution_ids: Collection[str]) -> int:
        ids = sorted(set(execution_ids))
        if not ids:
            return 0
        models = await self._store.models_for(self._tenant_id)
        result = await models.events.find({"tenant_id": self._tenant_id, "execution_id": {"$in": ids}}).delete()
        return result.deleted_count if result is not None else 0

    async def purge_chat_messages_before(self, cutoff: float) -> int:
        models = await self._store.models_for(self._tenant_id)
        result = await models.chat.find({"tenant_id": self._tenant_id, "at": {"$lt": cutoff}}).delete()
        return result.deleted_count if result is not None else 0

