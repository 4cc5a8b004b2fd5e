"""/api/v1/chats — chat with one of the tenant's agents or crews: open a chat, post messages (the reply is
computed in the background and streamed on ``WS /api/v1/ws/chats/{id}``), read the history (oldest first,
cursor pagination). Another tenant's chat is the same 404 as a missing one."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, get, post
from litestar.exceptions import ValidationException
from litestar.params import FromQuery, JSONBody, PathParameter, QueryParameter
from litestar.status_codes import HTTP_202_ACCEPTED

from crewflow.application.chats import Chat
from crewflow.domain.auth import Identity
from crewflow.domain.logs import ChatMessageRecord
from crewflow.domain.tenancy import Permission
from crewflow.entrypoints.http.audit_routes import audit_request
from crewflow.entrypoints.http.pagination import MAX_LIMIT, PageOut, page_out
from crewflow.entrypoints.http.security import require

__all__ = ["ChatController", "ChatIn", "ChatOut", "MessageIn", "MessageOut"]

ChatId = Annotated[str, PathParameter(description="the chat's id", max_length=128)]
Ident = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


class ChatIn(msgspec.Struct, forbid_unknown_fields=True):
    """Exactly one of ``agent`` and ``crew`` (ids of the tenant's saved agents and crews)."""

    agent: Ident | None = None
    crew: Ident | None = None
    title: Annotated[str, msgspec.Meta(max_length=200)] = ""


class ChatOut(msgspec.Struct):
    id: str
    agent: str | None
    crew: str | None
    title: str
    created_at: float
    created_by: str | None

    @classmethod
    def of(cls, chat: Chat) -> ChatOut:
        return cls(chat.id, chat.agent, chat.crew, chat.title, chat.created_at, chat.created_by)


class MessageIn(msgspec.Struct, forbid_unknown_fields=True):
    content: Annotated[str, msgspec.Meta(min_length=1, max_length=32_768)]


class MessageOut(msgspec.Struct):
    id: str
    chat_id: str
    role: str
    content: str
    created_at: float
    metadata: dict[str, Any]

    @classmethod
    def of(cls, m: ChatMessageRecord) -> MessageOut:
        return cls(m.id, m.chat_id, m.role, m.content, m.created_at, dict(m.metadata))


class PostedOut(msgspec.Struct):
    message: MessageOut
    reply_id: str


class ChatController(Controller):
    path = "/chats"
    tags = ["chats"]

    @post("/", guards=[require(Permission.FLOWS_EXECUTE)])
    async def open_chat(self, request: Request[Identity, Any, Any], data: JSONBody[ChatIn]) -> ChatOut:
        chats = request.app.state.container.chats
        chat = await chats.open(request.user.tenant_id, agent=data.agent, crew=data.crew, title=data.title,
                                created_by=request.user.user_id)  # fmt: skip
        await audit_request(request, "chat.create", object_type="chat", object_id=chat.id,
                            details={"agent": chat.agent, "crew": chat.crew})  # fmt: skip
        return ChatOut.of(chat)

    @get("/{chat_id:str}", guards=[require(Permission.EXECUTIONS_READ)])
    async def get_chat(self, request: Request[Identity, Any, Any], chat_id: ChatId) -> ChatOut:
        return ChatOut.of(await request.app.state.container.chats.get(request.user.tenant_id, chat_id))

    @get("/{chat_id:str}/messages", guards=[require(Permission.EXECUTIONS_READ)])
    async def list_messages(self, request: Request[Identity, Any, Any], chat_id: ChatId,
                            cursor: FromQuery[str | None] = None,
                            limit: Annotated[int, QueryParameter(ge=1, le=MAX_LIMIT)] = 50,
                            ) -> PageOut[MessageOut]:  # fmt: skip
        """The history, oldest first (the first message is the chat's opening ``system`` message)."""
        try:
            page = await request.app.state.container.chats.messages(request.user.tenant_id, chat_id, cursor, limit)
        except ValueError:  # a cursor the log store cannot decode
            bad = [{"key": "cursor", "message": "invalid cursor", "source": "query"}]
            raise ValidationException("the request is invalid", extra=bad) from None
        return page_out(page, MessageOut.of)

    @post("/{chat_id:str}/messages", guards=[require(Permission.FLOWS_EXECUTE)], status_code=HTTP_202_ACCEPTED)
    async def post_message(self, request: Request[Identity, Any, Any], chat_id: ChatId,
                           data: JSONBody[MessageIn]) -> PostedOut:  # fmt: skip
        """Store the message; the reply (stored under ``reply_id``) streams on the chat's WebSocket."""
        posted = await request.app.state.container.chats.post(request.user.tenant_id, chat_id, data.content,
                                                              author=request.user.user_id)  # fmt: skip
        await audit_request(request, "chat.message", object_type="chat", object_id=chat_id,
                            details={"message_id": posted.message.id})  # fmt: skip
        return PostedOut(MessageOut.of(posted.message), posted.reply_id)
