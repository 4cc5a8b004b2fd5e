"""HTTP plumbing shared by the HTTP provider adapters: one aiohttp session (one connector, kept-alive
connections) per provider and event loop, typed errors for every failure, and a Server-Sent Events reader.

Errors never carry credentials: the text of an error body is redacted with the provider's secrets before it
goes into an exception message.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import msgspec

from crewflow.domain.failover import (
    ConnectionFailed,
    MalformedResponse,
    ProviderError,
    ServerError,
    Timeout,
    error_for_status,
    parse_retry_after,
    redact,
)
from crewflow.ports.llm import ProviderConfig

__all__ = ["HttpTransport", "SseEvent", "decode_json", "encode_json", "iter_sse"]

_MAX_ERROR_TEXT = 300
_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()


def encode_json(value: Any) -> bytes:
    return _encoder.encode(value)


def decode_json(data: bytes, *, provider: str) -> Any:
    try:
        return _decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise MalformedResponse(f"response is not valid JSON ({exc})", provider=provider) from None


class SseEvent(msgspec.Struct, frozen=True):
    event: str | None
    data: str


async def iter_sse(content: aiohttp.StreamReader) -> AsyncIterator[SseEvent]:
    """Events of a ``text/event-stream`` body (``event:``/``data:`` fields; comments and ids ignored)."""
    event: str | None = None
    data: list[str] = []
    async for raw in content:
        line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        if not line:
            if data:
                yield SseEvent(event, "\n".join(data))
            event, data = None, []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            data.append(value)
        elif name == "event":
            event = value
    if data:
        yield SseEvent(event, "\n".join(data))


def _error_message(body: bytes) -> str:
    """The provider's own error message if the body is the usual ``{"error": {"message": ...}}`` shape."""
    text = body.decode("utf-8", errors="replace")
    try:
        data = _decoder.decode(body)
    except msgspec.DecodeError:
        return text[:_MAX_ERROR_TEXT] or "no body"
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return str(err["message"])[:_MAX_ERROR_TEXT]
        if isinstance(err, str):
            return err[:_MAX_ERROR_TEXT]
    return text[:_MAX_ERROR_TEXT]


def _retry_after(headers: Mapping[str, str]) -> float | None:
    ms = headers.get("retry-after-ms")
    if ms is not None:
        seconds = parse_retry_after(ms)
        if seconds is not None:
            return seconds / 1000.0
    return parse_retry_after(headers.get("Retry-After"))


class HttpTransport:
    """Connection reuse for one provider: a ``ClientSession`` per event loop, created on first use and
    closed by ``close()``. Never one session per call."""

    def __init__(self, *, provider: str, timeout: float, connect_timeout: float = 5.0, max_connections: int = 100,
                 secrets: tuple[str, ...] = ()) -> None:  # fmt: skip
        self.provider = provider
        self._secrets = tuple(s for s in secrets if s)
        self._max_connections = max_connections
        self._timeout = aiohttp.ClientTimeout(total=timeout, sock_connect=connect_timeout)
        self._stream_timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout, sock_read=timeout)
        self._sessions: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aiohttp.ClientSession] = (
            weakref.WeakKeyDictionary()
        )
        self._last: tuple[asyncio.AbstractEventLoop, aiohttp.ClientSession] | None = None

    @classmethod
    def for_provider(cls, config: ProviderConfig) -> HttpTransport:
        """The transport of one configured provider: its timeouts and pool size; its key kept out of errors."""
        return cls(provider=config.name, timeout=config.timeout, connect_timeout=config.connect_timeout,
                   max_connections=config.max_connections, secrets=(config.api_key,))  # fmt: skip

    def _session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        last = self._last
        if last is not None and last[0] is loop and not last[1].closed:
            return last[1]
        session = self._sessions.get(loop)
        if session is None or session.closed:
            connector = aiohttp.TCPConnector(limit=self._max_connections, keepalive_timeout=30, ttl_dns_cache=300)
            session = aiohttp.ClientSession(connector=connector, timeout=self._timeout, raise_for_status=False,
                                            skip_auto_headers=("User-Agent",))  # fmt: skip
            self._sessions[loop] = session
        self._last = (loop, session)
        return session

    def _fail(self, status: int, body: bytes, headers: Mapping[str, str]) -> ProviderError:
        message = redact(_error_message(body), self._secrets)
        return error_for_status(status, message, provider=self.provider, retry_after=_retry_after(headers))

    def _translate(self, exc: BaseException) -> ProviderError:
        text = redact(f"{type(exc).__name__}: {exc}", self._secrets)[:_MAX_ERROR_TEXT]
        if isinstance(exc, TimeoutError):
            return Timeout(f"no answer in time ({text})", provider=self.provider)
        if isinstance(exc, aiohttp.ClientPayloadError):
            return ServerError(f"response cut short ({text})", provider=self.provider)
        return ConnectionFailed(text, provider=self.provider)

    async def post_json(self, url: str, headers: Mapping[str, str], body: Any) -> Any:
        """POST a JSON body and return the decoded JSON answer, or raise a ``ProviderError``."""
        session = self._session()
        try:
            async with session.post(url, data=encode_json(body), headers=headers) as resp:
                data = await resp.read()
                if resp.status >= 300:
                    raise self._fail(resp.status, data, resp.headers)
        except ProviderError:
            raise
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise self._translate(exc) from None
        return decode_json(data, provider=self.provider)

    @asynccontextmanager
    async def stream(self, url: str, headers: Mapping[str, str], body: Any) -> AsyncIterator[AsyncIterator[SseEvent]]:
        """POST a JSON body and yield its SSE events; a read gap longer than the timeout raises ``Timeout``."""
        session = self._session()
        try:
            async with session.post(url, data=encode_json(body), headers=headers, timeout=self._stream_timeout) as resp:
                if resp.status >= 300:
                    raise self._fail(resp.status, await resp.read(), resp.headers)
                ctype = resp.headers.get("Content-Type", "")
                if "text/event-stream" not in ctype:
                    raise MalformedResponse(f"expected an event stream, got {ctype or 'no content type'}",
                                            provider=self.provider)  # fmt: skip
                yield self._guarded(iter_sse(resp.content))
        except ProviderError:
            raise
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise self._translate(exc) from None

    async def _guarded(self, events: AsyncIterator[SseEvent]) -> AsyncIterator[SseEvent]:
        try:
            async for event in events:
                yield event
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise self._translate(exc) from None

    async def close(self) -> None:
        """Close the session of the running loop (sessions of other, finished loops are dropped)."""
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        sessions = list(self._sessions.items())
        self._sessions.clear()
        self._last = None
        for owner, session in sessions:
            if owner is loop and not session.closed:
                await session.close()
