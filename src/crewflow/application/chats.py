"""Use cases: chat with one of the tenant's agents or crews.

A chat lives in the log store as its messages (``ChatMessageRecord``). There is no chats table: the first
message of a chat is a ``system`` message whose metadata names the participant (``agent`` or ``crew``),
the title and the creator; reading a chat reads that message, so another tenant's chat (or a made-up id)
is ``NotFound``.

Posting a message stores it and answers at once; the reply runs in the background on the agent runtime
(scripted offline, CrewAI over the failover gateway otherwise), one reply at a time per chat, and is
stored as an ``assistant`` message. Live frames go on the event bus under the chat's key
(``chat:<id>``): ``message`` (a stored message), ``reply.started``, ``reply.token`` (streamed text),
``reply.failed``. The bus does not buffer: a client subscribes (WebSocket) first, then reads the history,
and drops messages it already has by id.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from crewflow.application.executions import InvalidArguments
from crewflow.domain.errors import NodeExecutionError, NotFound, Problem
from crewflow.domain.events import EventKind, ExecutionEvent
from crewflow.domain.logs import ChatMessageRecord, Page
from crewflow.ports.bus import EventBus
from crewflow.ports.clock import Clock, IdGenerator
from crewflow.ports.logstore import LogStore
from crewflow.ports.runtime import AgentRuntime, AgentWork, CrewWork, NodeOutcome
from crewflow.ports.uow import UnitOfWorkFactory

__all__ = ["Chat", "ChatService", "PostedMessage", "chat_bus_key", "message_dict"]

log = structlog.get_logger("crewflow.chats")
_OPENED = "chat.opened"
_PAGE = 100


@dataclass(frozen=True, slots=True)
class Chat:
    id: str
    agent: str | None
    crew: str | None
    title: str
    created_at: float
    created_by: str | None


@dataclass(frozen=True, slots=True)
class PostedMessage:
    message: ChatMessageRecord
    reply_id: str  # the id the assistant's answer will be stored under


def chat_bus_key(chat_id: str) -> str:
    """The bus key of a chat's live frames (an execution id cannot contain ':'-prefixed 'chat')."""
    return f"chat:{chat_id}"


def message_dict(message: ChatMessageRecord) -> dict[str, Any]:
    return {"id": message.id, "chat_id": message.chat_id, "role": message.role, "content": message.content,
            "created_at": message.created_at, "metadata": dict(message.metadata)}  # fmt: skip


def _chat_of(first: ChatMessageRecord) -> Chat:
    meta = first.metadata
    return Chat(first.chat_id, meta.get("agent"), meta.get("crew"), str(meta.get("title") or ""), first.created_at,
                meta.get("created_by"))  # fmt: skip


class ChatService:
    def __init__(self, uow_factory: UnitOfWorkFactory, logstore: LogStore, bus: EventBus, runtime: AgentRuntime,
                 clock: Clock, ids: IdGenerator, *, history: int = 20) -> None:  # fmt: skip
        self.uow_factory = uow_factory
        self.logstore = logstore
        self.bus = bus
        self.runtime = runtime
        self.clock = clock
        self.ids = ids
        self.history = history
        self._seq: dict[tuple[str, str], int] = {}
        self._last_at: dict[tuple[str, str], float] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    # -- use cases ----------------------------------------------------------------------------------------
    async def open(self, tenant_id: str, *, agent: str | None, crew: str | None, title: str = "",
                   created_by: str | None = None) -> Chat:  # fmt: skip
        """Start a chat with exactly one of the tenant's agents or crews."""
        if (agent is None) == (crew is None):
            raise InvalidArguments([Problem("participant", "give exactly one of 'agent' and 'crew'", "agent")])
        async with self.uow_factory.for_tenant(tenant_id) as uow:
            try:
                if agent is not None:
                    await uow.agents.get(agent)
                else:
                    await uow.crews.get(crew or "")
            except NotFound as exc:
                field = "agent" if agent is not None else "crew"
                raise InvalidArguments([Problem("unknown", f"{exc.kind} {exc.ident!r} not found", field)]) from None
        chat_id = self.ids.new_id()
        who = f"agent {agent!r}" if agent is not None else f"crew {crew!r}"
        opened = ChatMessageRecord(self.ids.new_id(), chat_id, "system", f"Chat with {who}",
                                   self._now(tenant_id, chat_id),
                                   {"kind": _OPENED, "agent": agent, "crew": crew, "title": title,
                                    "created_by": created_by})  # fmt: skip
        await self.logstore.for_tenant(tenant_id).add_chat_message(opened)
        return _chat_of(opened)

    async def get(self, tenant_id: str, chat_id: str) -> Chat:
        page = await self.logstore.for_tenant(tenant_id).chat_messages(chat_id, None, 1)
        if not page.items or page.items[0].role != "system" or page.items[0].metadata.get("kind") != _OPENED:
            raise NotFound("chat", chat_id)
        return _chat_of(page.items[0])

    async def messages(self, tenant_id: str, chat_id: str, cursor: str | None = None,
                       limit: int = 50) -> Page[ChatMessageRecord]:  # fmt: skip
        """Oldest first; ``NotFound`` for a chat the tenant does not have."""
        await self.get(tenant_id, chat_id)
        return await self.logstore.for_tenant(tenant_id).chat_messages(chat_id, cursor, limit)

    async def post(self, tenant_id: str, chat_id: str, content: str, *, author: str | None = None) -> PostedMessage:
        """Store the user's message and start the reply in the background."""
        if self._closed:
            raise RuntimeError("the chat service is closed")
        chat = await self.get(tenant_id, chat_id)
        message = ChatMessageRecord(self.ids.new_id(), chat_id, "user", content, self._now(tenant_id, chat_id),
                                    {"author": author} if author else {})  # fmt: skip
        await self.logstore.for_tenant(tenant_id).add_chat_message(message)
        await self._frame(tenant_id, chat_id, EventKind.NODE_LOG, None, {"type": "message",
                                                                         "message": message_dict(message)})
        reply_id = self.ids.new_id()
        task = asyncio.create_task(self._reply(tenant_id, chat, message, reply_id), name=f"crewflow-chat-{reply_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return PostedMessage(message, reply_id)

    async def close(self) -> None:
        """Stop replies in progress (they are not stored) and refuse new messages."""
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def wait_idle(self) -> None:
        """Wait for the replies in progress (tests, graceful shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # -- the reply ----------------------------------------------------------------------------------------
    async def _reply(self, tenant_id: str, chat: Chat, message: ChatMessageRecord, reply_id: str) -> None:
        lock = self._locks.setdefault((tenant_id, chat.id), asyncio.Lock())
        async with lock:  # one answer at a time, in the order the messages came
            await self._frame(tenant_id, chat.id, EventKind.NODE_STARTED, reply_id,
                              {"type": "reply.started", "in_reply_to": message.id})  # fmt: skip
            try:
                outcome = await self._answer(tenant_id, chat, message, reply_id)
            except (NodeExecutionError, NotFound) as exc:
                log.warning("chat.reply_failed", tenant_id=tenant_id, chat_id=chat.id, error_type=type(exc).__name__)
                await self._frame(tenant_id, chat.id, EventKind.NODE_FAILED, reply_id,
                                  {"type": "reply.failed", "in_reply_to": message.id, "error": str(exc)})  # fmt: skip
                return
            except Exception:  # a runtime bug: the log keeps the details, the client is told it failed
                log.exception("chat.reply_crashed", tenant_id=tenant_id, chat_id=chat.id)
                await self._frame(tenant_id, chat.id, EventKind.NODE_FAILED, reply_id,
                                  {"type": "reply.failed", "in_reply_to": message.id, "error": "internal error"})
                return
            reply = ChatMessageRecord(reply_id, chat.id, "assistant", str(outcome.output),
                                      self._now(tenant_id, chat.id),
                                      {"in_reply_to": message.id, "input_tokens": outcome.input_tokens,
                                       "output_tokens": outcome.output_tokens, "cost": outcome.cost})  # fmt: skip
            await self.logstore.for_tenant(tenant_id).add_chat_message(reply)
            await self._frame(tenant_id, chat.id, EventKind.NODE_COMPLETED, reply_id,
                              {"type": "message", "message": message_dict(reply)})  # fmt: skip

    async def _answer(self, tenant_id: str, chat: Chat, message: ChatMessageRecord, reply_id: str) -> NodeOutcome:
        transcript = await self._transcript(tenant_id, chat.id, message.id)
        key = chat_bus_key(chat.id)
        async with self.uow_factory.for_tenant(tenant_id) as uow:
            if chat.agent is not None:
                agent = await uow.agents.get(chat.agent)
                task = (f"You are in a conversation.\n{transcript}\n\nReply to the user's last message:\n"
                        f"{message.content}")  # fmt: skip
                work = AgentWork(tenant_id, key, reply_id, 1, agent, task, "A helpful reply", {},
                                 {"message": message.content})  # fmt: skip
                crew_work = None
            else:
                crew = await uow.crews.get(chat.crew or "")
                agents = {a: await uow.agents.get(a) for a in crew.agents}
                crew_work = CrewWork(tenant_id, key, reply_id, 1, crew, agents,
                                     {"message": message.content, "history": transcript})  # fmt: skip
        loop = asyncio.get_running_loop()
        tokens: asyncio.Queue[str | None] = asyncio.Queue()

        def emit(kind: EventKind, data: Mapping[str, Any]) -> None:
            if kind == EventKind.NODE_TOKEN:  # runtimes may call from a worker thread (CrewAI)
                loop.call_soon_threadsafe(tokens.put_nowait, str(data.get("text", "")))

        async def pump() -> None:  # tokens go out in order, all before the reply's own frame
            while (text := await tokens.get()) is not None:
                await self._frame(tenant_id, chat.id, EventKind.NODE_TOKEN, reply_id,
                                  {"type": "reply.token", "text": text})  # fmt: skip

        pumping = asyncio.create_task(pump())
        try:
            if crew_work is not None:
                return await self.runtime.run_crew(crew_work, emit)
            return await self.runtime.run_agent(work, emit)
        finally:
            loop.call_soon(tokens.put_nowait, None)  # after tokens a worker thread scheduled before it ended
            await pumping

    async def _transcript(self, tenant_id: str, chat_id: str, up_to: str) -> str:
        """The last ``history`` user/assistant messages before ``up_to``, one per line."""
        store = self.logstore.for_tenant(tenant_id)
        lines: list[str] = []
        cursor: str | None = None
        while True:
            page = await store.chat_messages(chat_id, cursor, _PAGE)
            for item in page.items:
                if item.id == up_to:
                    return "\n".join(lines[-self.history :])
                if item.role in ("user", "assistant"):
                    lines.append(f"{item.role}: {item.content}")
            if page.next_cursor is None:
                return "\n".join(lines[-self.history :])
            cursor = page.next_cursor

    # -- frames -------------------------------------------------------------------------------------------
    def _now(self, tenant_id: str, chat_id: str) -> float:
        """Strictly increasing per chat, so history (ordered by time) keeps the order messages were made."""
        key = (tenant_id, chat_id)
        at = max(self.clock.now(), self._last_at.get(key, 0.0) + 1e-6)
        self._last_at[key] = at
        return at

    async def _frame(self, tenant_id: str, chat_id: str, kind: EventKind, reply_id: str | None,
                     data: dict[str, Any]) -> None:  # fmt: skip
        key = (tenant_id, chat_id)
        self._seq[key] = seq = self._seq.get(key, 0) + 1
        data = {**data, "reply_id": reply_id} if reply_id is not None else data
        event = ExecutionEvent(chat_bus_key(chat_id), seq, kind, self.clock.now(), reply_id, data)
        await self.bus.publish(tenant_id, [event])
