"""``WS /api/v1/ws/executions/{execution_id}?last_seq=N`` — an execution's events, live (and
``WS /api/v1/ws/chats/{chat_id}`` — a chat's live frames, see ``chat_events``; same authentication).

Protocol (server → client): one JSON text message per event, ``{"execution_id", "seq", "kind", "at",
"node_id", "data"}``, every event with seq > ``last_seq`` exactly once and in seq order (the replay log,
then the live stream); after the run's terminal event (``run.completed|failed|cancelled``) the server
closes with 1000. To resume after a disconnect, reconnect with ``last_seq`` = the last seq received.

Authentication, the same token as the HTTP API, from (first found):
1. ``Authorization: Bearer <token>`` (API clients);
2. the session cookie (the same-origin canvas; a cookie-authenticated socket whose ``Origin`` is another
   host is refused, against cross-site WebSocket hijacking);
3. otherwise the first client message, ``{"token": "<token>"}``, within 10 s (browser code that holds a
   token but cannot set headers). Tokens are not accepted in the query string: URLs end up in access logs.

The connection is accepted before it is checked, so browsers see the close codes: 4401 authentication
failed, 4403 role or origin not allowed, 4404 no such execution for the caller's tenant (another tenant's
execution is the same 4404). The stream stops as soon as the client disconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any, cast
from urllib.parse import urlsplit

import structlog
from litestar import WebSocket, websocket
from litestar.connection import ASGIConnection
from litestar.exceptions import WebSocketDisconnect
from litestar.handlers import send_websocket_stream
from litestar.params import PathParameter, QueryParameter

from crewflow.application.chats import chat_bus_key
from crewflow.application.executions import ExecutionDetails, get_execution, watch_execution
from crewflow.domain.auth import Identity, Unauthenticated
from crewflow.domain.errors import NotFound
from crewflow.domain.events import ExecutionEvent
from crewflow.domain.tenancy import Permission
from crewflow.entrypoints.http.security import SESSION_COOKIE, TokenAuthMiddleware

if TYPE_CHECKING:
    from crewflow.bootstrap import ApiContainer

__all__ = ["CLOSE_FORBIDDEN", "CLOSE_NOT_FOUND", "CLOSE_UNAUTHENTICATED", "chat_events", "execution_events"]

CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_NOT_FOUND = 4404
AUTH_MESSAGE_TIMEOUT = 10.0
log = structlog.get_logger("crewflow.ws")


class _Refused(Exception):
    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason
        super().__init__(reason)


def _same_origin(socket: WebSocket[Any, Any, Any]) -> bool:
    origin = socket.headers.get("origin")
    if not origin:
        return True  # not a browser: cookies are not sent cross-site by anything else
    return urlsplit(origin).netloc.lower() == socket.headers.get("host", "").lower()


async def _verify(socket: WebSocket[Any, Any, Any], token: str | None) -> Identity:
    """The same checks as every HTTP request (signature, expiry, revocation, user still active, current
    role), by the same middleware code. ``token`` None: take it from the header or cookie."""
    scope: dict[str, Any] = dict(socket.scope)
    if token is not None:  # a connection whose only credential is this token (and no cached headers)
        scope["headers"] = [(b"authorization", f"Bearer {token}".encode())]
        scope["state"] = {}
    try:
        result = await TokenAuthMiddleware(socket.app).authenticate_request(ASGIConnection(cast(Any, scope)))
    except Unauthenticated:
        raise _Refused(CLOSE_UNAUTHENTICATED, "authentication failed") from None
    return cast(Identity, result.user)


async def _authenticate(socket: WebSocket[Any, Any, Any]) -> Identity:
    header = socket.headers.get("authorization", "")
    if header[:7].lower() == "bearer ":
        return await _verify(socket, None)
    if socket.cookies.get(SESSION_COOKIE):
        if not _same_origin(socket):
            raise _Refused(CLOSE_FORBIDDEN, "cross-origin request")
        return await _verify(socket, None)
    try:
        async with asyncio.timeout(AUTH_MESSAGE_TIMEOUT):
            message = await socket.receive_json()
    except (TimeoutError, ValueError):
        raise _Refused(CLOSE_UNAUTHENTICATED, "authentication required") from None
    token = message.get("token") if isinstance(message, dict) else None
    if not isinstance(token, str) or not token:
        raise _Refused(CLOSE_UNAUTHENTICATED, "authentication required")
    return await _verify(socket, token)


async def _send_event(socket: WebSocket[Any, Any, Any], event: ExecutionEvent) -> None:
    await socket.send_json(event.to_dict())


async def _send_json(socket: WebSocket[Any, Any, Any], frame: dict[str, Any]) -> None:
    await socket.send_json(frame)


async def _admit(socket: WebSocket[Any, Any, Any], check: Callable[[Identity], Awaitable[object]]) -> Identity | None:
    """Accept, authenticate, check the role and that ``check`` finds the object in the caller's tenant
    (``NotFound`` → 4404). None when the socket was refused (and closed) or went away."""
    await socket.accept()
    try:
        identity = await _authenticate(socket)
        if not identity.can(Permission.EXECUTIONS_READ):
            raise _Refused(CLOSE_FORBIDDEN, "your role does not allow this")
        try:
            await check(identity)
        except NotFound as exc:
            raise _Refused(CLOSE_NOT_FOUND, f"{exc.kind} not found") from None
    except _Refused as refused:
        await socket.close(code=refused.code, reason=refused.reason)
        return None
    except WebSocketDisconnect:
        return None
    return identity


@websocket("/ws/executions/{execution_id:str}", opt={"public": True})
async def execution_events(
    socket: WebSocket[Any, Any, Any],
    execution_id: Annotated[str, PathParameter(description="the execution to watch", max_length=128)],
    last_seq: Annotated[int, QueryParameter(ge=0, description="resume after this event seq")] = 0,
) -> None:
    """Stream an execution's events (replay after ``last_seq``, then live) until its terminal event."""
    container: ApiContainer = socket.app.state.container
    found: list[ExecutionDetails] = []

    async def check(who: Identity) -> None:
        found.append(await get_execution(who.tenant_id, execution_id, uow_factory=container.uow_factory))

    identity = await _admit(socket, check)
    if identity is None:
        return
    execution = found[0].execution
    if execution.status.is_terminal and last_seq >= execution.last_seq:  # nothing left to send, ever
        with contextlib.suppress(WebSocketDisconnect):
            await socket.close(code=1000, reason="execution finished")
        return
    # replays come from the bus' recent-event streams when it keeps them (Redis), else the durable log
    events = watch_execution(identity.tenant_id, execution_id, last_seq,
                             logstore=container.watch_logstore or container.logstore, bus=container.bus)  # fmt: skip
    try:
        await send_websocket_stream(socket, events, close=False, send_handler=_send_event,
                                    listen_for_disconnect=True, warn_on_data_discard=False)  # fmt: skip
    finally:
        await events.aclose()
    if socket.connection_state != "disconnect":
        with contextlib.suppress(WebSocketDisconnect):
            await socket.close(code=1000, reason="execution finished")


async def _chat_frames(live: AsyncIterator[ExecutionEvent]) -> AsyncGenerator[dict[str, Any], None]:
    async for event in live:
        yield {"seq": event.seq, **event.data}


@websocket("/ws/chats/{chat_id:str}", opt={"public": True})
async def chat_events(
    socket: WebSocket[Any, Any, Any],
    chat_id: Annotated[str, PathParameter(description="the chat to follow", max_length=128)],
) -> None:
    """A chat's live frames (``message``, ``reply.started``, ``reply.token``, ``reply.failed``) until the client
    leaves. No replay: wait for the first frame, ``{"type": "ready"}`` (subscribed from then on), then read
    ``GET /chats/{id}/messages`` and drop message ids already seen, then post."""
    container: ApiContainer = socket.app.state.container
    identity = await _admit(socket, lambda who: container.chats.get(who.tenant_id, chat_id))
    if identity is None:
        return
    live = container.bus.subscribe(identity.tenant_id, chat_bus_key(chat_id))
    frames = _chat_frames(live)
    with contextlib.suppress(WebSocketDisconnect):
        await socket.send_json({"type": "ready", "chat_id": chat_id})
    try:
        await send_websocket_stream(socket, frames, close=False, send_handler=_send_json,
                                    listen_for_disconnect=True, warn_on_data_discard=False)  # fmt: skip
    finally:
        await frames.aclose()
        closer = getattr(live, "aclose", None)
        if closer is not None:
            await closer()
    if socket.connection_state != "disconnect":  # the bus dropped a subscriber that fell behind
        with contextlib.suppress(WebSocketDisconnect):
            await socket.close(code=1013, reason="fell behind; reconnect and reload the history")
