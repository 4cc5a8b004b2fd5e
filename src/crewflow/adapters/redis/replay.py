"""``ReplayFirstLogStore``: replays of execution events from the Redis stream while it still covers them,
from the durable log store otherwise.

A WebSocket on any API instance replays a run's recent events from Redis (one ``XRANGE``) instead of the
database; after the stream expired or was trimmed, or for a range it does not hold from its start, the same
call reads the durable store. ``events_after`` answers from the stream only when the stream's first event
after ``after_seq`` is exactly ``after_seq + 1``, and only the contiguous run of events from there (a hole
ends the answer early: the next call, from the last event given, falls back to the durable store).

The stream is written after the durable log (``ExecutionRecorder``: log, then bus), so it never holds an
event the log lacks, but it may lag it by the batch being published: an answer from the stream can end
before the log's last event. ``watch_execution`` is built for that (the live feed or its next catch-up read
brings the rest); code that needs "everything stored so far" (``last_stored_seq``, paged log reads of the
API) must use the durable store itself. Everything but ``events_after`` goes to the durable store.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from crewflow.adapters.redis.bus import read_stream
from crewflow.adapters.redis.keys import DEFAULT_PREFIX, events_stream, tenant_pattern
from crewflow.domain.events import ExecutionEvent
from crewflow.domain.logs import AuditEntry, ChatMessageRecord, Page
from crewflow.ports.logstore import LogStore, TenantLogStore

__all__ = ["ReplayFirstLogStore", "ReplayFirstTenantLogStore"]

log = structlog.get_logger("crewflow.redis.replay")


class ReplayFirstTenantLogStore:
    __slots__ = ("_durable", "_prefix", "_redis", "_tenant_id")

    def __init__(self, redis: Redis, durable: TenantLogStore, tenant_id: str, prefix: str) -> None:
        self._redis = redis
        self._durable = durable
        self._tenant_id = tenant_id
        self._prefix = prefix

    async def events_after(self, execution_id: str, after_seq: int = 0, limit: int = 1000) -> list[ExecutionEvent]:
        try:
            recent = await read_stream(self._redis, events_stream(self._tenant_id, execution_id, self._prefix),
                                       after_seq, limit)  # fmt: skip
        except (RedisError, OSError, ValueError):  # Redis away, or an entry that does not decode
            log.warning("replay.stream_unreadable", tenant_id=self._tenant_id, execution_id=execution_id,
                        exc_info=True)  # fmt: skip
            recent = []
        if recent and recent[0].seq == after_seq + 1:
            contiguous = [recent[0]]
            for event in recent[1:]:
                if event.seq != contiguous[-1].seq + 1:
                    break
                contiguous.append(event)
            return contiguous
        return await self._durable.events_after(execution_id, after_seq, limit)

    async def append_events(self, events: Sequence[ExecutionEvent]) -> None:
        await self._durable.append_events(events)

    async def add_chat_message(self, message: ChatMessageRecord) -> None:
        await self._durable.add_chat_message(message)

    async def chat_messages(self, chat_id: str, cursor: str | None = None, limit: int = 50) -> Page[ChatMessageRecord]:
        return await self._durable.chat_messages(chat_id, cursor, limit)

    async def add_audit(self, entry: AuditEntry) -> None:
        await self._durable.add_audit(entry)

    async def audit_entries(self, cursor: str | None = None, limit: int = 50) -> Page[AuditEntry]:
        return await self._durable.audit_entries(cursor, limit)

    async def purge_before(self, cutoff: float) -> int:
        return await self._durable.purge_before(cutoff)

    async def purge_executions(self, execution_ids: Collection[str]) -> int:
        if execution_ids:
            await self._redis.delete(*(events_stream(self._tenant_id, e, self._prefix) for e in execution_ids))
        return await self._durable.purge_executions(execution_ids)

    async def purge_chat_messages_before(self, cutoff: float) -> int:
        return await self._durable.purge_chat_messages_before(cutoff)


class ReplayFirstLogStore:
    """Implements ``LogStore`` around ``durable``; ``close`` closes ``durable`` (not the Redis client)."""

    def __init__(self, redis: Redis, durable: LogStore, *, prefix: str = DEFAULT_PREFIX) -> None:
        self.redis = redis
        self.durable = durable
        self.prefix = prefix

    def for_tenant(self, tenant_id: str) -> ReplayFirstTenantLogStore:
        return ReplayFirstTenantLogStore(self.redis, self.durable.for_tenant(tenant_id), tenant_id, self.prefix)

    async def drop_tenant(self, tenant_id: str) -> None:
        """Drop the durable log and every Redis key of the tenant (streams, sessions, cache entries)."""
        batch: list[bytes] = []
        async for key in self.redis.scan_iter(match=tenant_pattern(tenant_id, self.prefix), count=500):
            batch.append(key)
            if len(batch) >= 500:
                await self.redis.unlink(*batch)
                batch.clear()
        if batch:
            await self.redis.unlink(*batch)
        await self.durable.drop_tenant(tenant_id)

    async def close(self) -> None:
        await self.durable.close()


if TYPE_CHECKING:  # the adapters implement the port (checked by mypy)
    def _implements(s: ReplayFirstLogStore, t: ReplayFirstTenantLogStore) -> None:
        _s: LogStore = s
        _t: TenantLogStore = t
