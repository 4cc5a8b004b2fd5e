"""The Redis ``EventBus``: live execution events fanned out to every API instance, plus a short replay log.

Publishing a batch runs one Lua script per execution that, for each event in order, appends it to the
execution's stream with entry id ``<seq>-1`` and, only when the append succeeded, publishes it on the
execution's channel. Redis refuses an entry id not above the stream's last one, so a batch published twice
(a retried write, a resumed run) adds nothing and is not delivered live twice, and the stream is always in
seq order. A publish that fails (Redis away) is logged, not raised: the durable log already holds the
events and watchers catch up from it, so a Redis outage never fails a run. The stream is capped
(``stream_maxlen``, approximate trimming) and expires ``retention_after_end`` seconds after the run's
terminal event (``running_ttl`` while the run goes on, refreshed by every batch): it serves quick replays
(``ReplayFirstLogStore``); the durable log store stays the record.

Subscriptions are local: one pub/sub connection per bus instance subscribes to the channels this process'
subscribers want (reference-counted, unsubscribed when the last local subscriber leaves), and a reader task
fans each message out to bounded per-subscriber queues. A subscriber more than ``max_queue`` events behind
is dropped (its iterator ends before the terminal event, as with the in-memory bus), so a slow WebSocket
never slows the reader, other subscribers, or any publisher. A lost connection ends every subscription the
same way: consumers subscribe again and catch up from the log (``watch_execution`` does).

``subscribe`` registers at once; the Redis subscription follows asynchronously (``await sub.ready()`` waits
for it). Events published in between reach the subscriber through the log (``watch_execution`` replays after
subscribing and whenever the live feed skips a seq).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

import structlog
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from crewflow.adapters.feeds import BoundedFeed
from crewflow.adapters.redis.codec import decode_event, encode_event
from crewflow.adapters.redis.keys import DEFAULT_PREFIX, events_channel, events_stream
from crewflow.domain.events import ExecutionEvent

__all__ = ["RedisEventBus", "RedisSubscription", "read_stream"]

log = structlog.get_logger("crewflow.redis.bus")

# KEYS: stream, channel. ARGV: maxlen, ttl after the end (ms), ttl while running (ms), then per event
# (seq, payload, 1 if terminal else 0).
_PUBLISH = """
local added = 0
local ended = false
for i = 4, #ARGV, 3 do
  local r = redis.pcall('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], ARGV[i] .. '-1', 'e', ARGV[i + 1])
  if not (type(r) == 'table' and r.err) then
    redis.call('PUBLISH', KEYS[2], ARGV[i + 1])
    added = added + 1
  end
  if ARGV[i + 2] == '1' then ended = true end
end
if ended then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
elseif added > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
return added
"""


def _is_final(event: ExecutionEvent) -> bool:
    return event.node_id is None and event.kind.is_terminal_run


async def read_stream(redis: Redis, key: str, after_seq: int, limit: int) -> list[ExecutionEvent]:
    """Stream entries with seq > ``after_seq`` (at most ``limit``), in seq order."""
    if limit < 1:
        return []
    entries = await redis.xrange(key, min=f"{after_seq + 1}-0", max="+", count=limit)
    events: list[ExecutionEvent] = []
    for _entry_id, fields in entries:
        raw = fields.get(b"e")
        if raw is None:
            continue
        events.append(decode_event(raw))
    return events


class RedisSubscription(BoundedFeed):
    """Live events of one execution for one local subscriber. An async iterator; ``aclose`` unregisters."""

    __slots__ = ("_bus", "_channel", "_ready")

    def __init__(self, bus: RedisEventBus, channel: bytes, max_queue: int) -> None:
        super().__init__(max_queue)
        self._bus = bus
        self._channel = channel
        self._ready = asyncio.Event()

    async def ready(self) -> None:
        """Wait until Redis confirmed the subscription (or the subscription ended)."""
        await self._ready.wait()

    def _dropped(self) -> None:
        log.info("bus.subscriber_dropped", channel=self._channel.decode(errors="replace"))

    def _unregister(self) -> None:
        self._ready.set()
        self._bus._remove(self._channel, self)


class RedisEventBus:
    """Implements ``crewflow.ports.bus.EventBus`` over Redis pub/sub and streams."""

    def __init__(self, redis: Redis, *, prefix: str = DEFAULT_PREFIX, max_queue: int = 1000,
                 stream_maxlen: int = 10_000, retention_after_end: float = 600.0,
                 running_ttl: float = 24 * 3600.0) -> None:  # fmt: skip
        if max_queue < 1 or stream_maxlen < 1:
            raise ValueError("max_queue and stream_maxlen must be at least 1")
        if not (retention_after_end > 0 and running_ttl > 0):
            raise ValueError("retention_after_end and running_ttl must be positive")
        self.redis = redis
        self.prefix = prefix
        self.max_queue = max_queue
        self.stream_maxlen = stream_maxlen
        self.retention_after_end = retention_after_end
        self.running_ttl = running_ttl
        self._script = redis.register_script(_PUBLISH)
        self._subs: dict[bytes, list[RedisSubscription]] = {}
        self._remote: set[bytes] = set()  # channels SUBSCRIBE was sent for (and no UNSUBSCRIBE since)
        self._confirmed: set[bytes] = set()  # channels Redis confirmed
        self._pubsub: PubSub | None = None
        self._changed = asyncio.Event()
        self._control: asyncio.Task[None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._closed = False

    # -- publishing ----------------------------------------------------------------------------------------
    def stream_key(self, tenant_id: str, execution_id: str) -> str:
        return events_stream(tenant_id, execution_id, self.prefix)

    async def publish(self, tenant_id: str, events: Sequence[ExecutionEvent]) -> None:
        by_execution: dict[str, list[ExecutionEvent]] = {}
        for event in events:
            by_execution.setdefault(event.execution_id, []).append(event)
        for execution_id, batch in by_execution.items():
            args: list[Any] = [self.stream_maxlen, int(self.retention_after_end * 1000), int(self.running_ttl * 1000)]
            for event in batch:
                args.extend((event.seq, encode_event(event), 1 if _is_final(event) else 0))
            keys = [self.stream_key(tenant_id, execution_id), events_channel(tenant_id, execution_id, self.prefix)]
            try:
                await self._script(keys=keys, args=args)
            except (RedisError, OSError):
                # Live delivery is best effort: the durable log already has these events (the recorder writes
                # it first), watchers catch up from it, and a run must not fail because Redis is away.
                log.warning("bus.publish_failed", tenant_id=tenant_id, execution_id=execution_id,
                            first_seq=batch[0].seq, last_seq=batch[-1].seq, exc_info=True)  # fmt: skip

    async def replay(self, tenant_id: str, execution_id: str, after_seq: int = 0,
                     limit: int = 1000) -> list[ExecutionEvent]:  # fmt: skip
        """What the execution's stream still holds after ``after_seq`` (may be empty, or start later when it
        expired or was trimmed)."""
        return await read_stream(self.redis, self.stream_key(tenant_id, execution_id), after_seq, limit)

    # -- subscribing ---------------------------------------------------------------------------------------
    def subscribe(self, tenant_id: str, execution_id: str) -> RedisSubscription:
        if self._closed:
            raise RuntimeError("the event bus is closed")
        channel = events_channel(tenant_id, execution_id, self.prefix).encode()
        subscription = RedisSubscription(self, channel, self.max_queue)
        self._subs.setdefault(channel, []).append(subscription)
        if channel in self._confirmed:
            subscription._ready.set()
        else:
            self._changed.set()
            if self._control is None or self._control.done():
                self._control = asyncio.create_task(self._sync_channels(), name="crewflow-bus-control")
        return subscription

    def subscriber_count(self, tenant_id: str, execution_id: str) -> int:
        return len(self._subs.get(events_channel(tenant_id, execution_id, self.prefix).encode(), ()))

    def _remove(self, channel: bytes, subscription: RedisSubscription) -> None:
        subs = self._subs.get(channel)
        if subs is None:
            return
        if subscription in subs:
            subs.remove(subscription)
        if not subs:
            del self._subs[channel]
            if not self._closed:
                self._changed.set()

    async def _sync_channels(self) -> None:
        """Send SUBSCRIBE/UNSUBSCRIBE until Redis' channel set matches the local subscribers'. One task at
        a time sends commands; the reader only reads."""
        while not self._closed:
            self._changed.clear()
            wanted = set(self._subs)
            add, drop = wanted - self._remote, self._remote - wanted
            if not add and not drop:
                await self._changed.wait()
                continue
            try:
                pubsub = self._pubsub
                if pubsub is None:
                    pubsub = self._pubsub = self.redis.pubsub()
                if add:
                    await pubsub.subscribe(*add)
                    self._remote |= add
                if drop:
                    await pubsub.unsubscribe(*drop)
                    self._remote -= drop
                if self._reader is None or self._reader.done():
                    self._reader = asyncio.create_task(self._read(pubsub), name="crewflow-bus-reader")
            except (RedisError, OSError):
                log.warning("bus.subscribe_failed", exc_info=True)
                await self._reset()
                await asyncio.sleep(0.5)  # the server is away: retry (later subscribers) without spinning

    async def _read(self, pubsub: PubSub) -> None:
        try:
            while not self._closed:
                message = await pubsub.get_message(timeout=1.0)
                if message is not None:
                    self._dispatch(message)
        except asyncio.CancelledError:
            raise
        except (RedisError, OSError, RuntimeError):
            if not self._closed and self._pubsub is pubsub:  # not a connection already replaced
                log.warning("bus.connection_lost", exc_info=True)
                await self._reset()

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        channel = message.get("channel")
        if not isinstance(channel, bytes):
            return
        if kind == "message":
            subs = self._subs.get(channel)
            if not subs:
                return
            try:
                event = decode_event(message["data"])
            except (ValueError, TypeError):
                log.warning("bus.undecodable_message", channel=channel.decode(errors="replace"))
                return
            for subscription in tuple(subs):
                subscription.offer(event)
        elif kind == "subscribe":
            self._confirmed.add(channel)
            for subscription in self._subs.get(channel, ()):
                subscription._ready.set()
        elif kind == "unsubscribe":
            self._confirmed.discard(channel)

    async def _reset(self) -> None:
        """Forget the pub/sub connection and end every local subscription (their consumers resubscribe)."""
        pubsub, self._pubsub = self._pubsub, None
        self._remote.clear()
        self._confirmed.clear()
        for subs in list(self._subs.values()):
            for subscription in tuple(subs):
                subscription.end()
        if pubsub is not None:
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def aclose(self) -> None:
        """Stop the reader, end every subscription and return the pub/sub connection (not the client)."""
        self._closed = True
        self._changed.set()
        tasks = [t for t in (self._control, self._reader) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._reset()
